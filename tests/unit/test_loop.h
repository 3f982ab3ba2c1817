/* tests/unit/test_loop.h: running a libuv loop until a condition holds, for
 * the unit tests that drive raft members on one loop. */
#ifndef CAIRN_TEST_LOOP_H
#define CAIRN_TEST_LOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>

static inline uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void test_loop_tick(uv_timer_t *t) {
  (void)t;
}

/* Runs loop until pred(arg) holds or ms pass; a ticking timer keeps the loop
 * from sleeping in poll. pred still holds when it returns true. */
static inline bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, unsigned ms) {
  uint64_t end = now_ms() + ms;
  for (;;) {
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, test_loop_tick, 2, 2);
    bool ok;
    while (!(ok = pred(arg)) && now_ms() < end) {
      uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* the close completes in this turn */
    /* That turn may have run other callbacks too (a snapshot's checkpoint
     * starting, say): the caller acts on pred, so it must still hold. */
    if (!ok || pred(arg)) {
      return ok;
    }
  }
}

#endif
