/* bench/cairn_bench/bench.c: the request runner and the helpers every
 * workload uses (bench.h). */
#include "bench.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common/cairn_error.h"

uint64_t bench_now_ns(void) {
  return uv_hrtime();
}

double bench_cpu_s(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) {
    return 0.0;
  }
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* splitmix64: seeded by --seed, so a run's key sequence can be repeated. */
uint64_t bench_rand(struct bench *b) {
  uint64_t z = (b->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t bench_pick_key(struct bench *b, uint64_t seq) {
  if (b->cfg.sequential) {
    return seq % b->cfg.key_space;
  }
  /* The modulo bias is below 2^-38 for any key space we accept. */
  return bench_rand(b) % b->cfg.key_space;
}

const uint8_t *bench_key(struct bench *b, uint64_t i) {
  /* Formatted by hand: snprintf per request would cost more than the rest
   * of building the request. The digits are written right to left into the
   * key_size bytes after the prefix, zero-padded (main.c checked that the
   * largest index fits). */
  uint8_t *p = b->key_buf + b->key_len;
  for (unsigned n = 0; n < b->cfg.key_size; n++) {
    *--p = (uint8_t)('0' + i % 10u);
    i /= 10u;
  }
  return b->key_buf;
}

void bench_error(struct bench *b, const char *what, int status, const char *message) {
  if (b->have_error) {
    return;
  }
  b->have_error = true;
  snprintf(b->first_error, sizeof b->first_error, "%s: %s (gRPC status %d)", what,
           message && message[0] ? message : "(no message)", status);
}

int bench_pack(struct bench *b, const ProtobufCMessage *msg, const uint8_t **out, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  if (n > b->scratch_cap) {
    /* Only when a message is larger than main.c sized the scratch for. */
    uint8_t *p = realloc(b->scratch, n);
    if (!p) {
      return CAIRN_ENOMEM;
    }
    b->scratch = p;
    b->scratch_cap = n;
  }
  size_t w = protobuf_c_message_pack(msg, b->scratch);
  CAIRN_ASSERT(w == n);
  *out = b->scratch;
  *len = w;
  return 0;
}

/* ---- the response arena ---- */

static void *arena_alloc(void *data, size_t size) {
  struct bench_arena *a = data;
  size_t need = (size + 15u) & ~(size_t)15u;
  if (need >= size && need <= sizeof a->buf - a->used) {
    void *p = a->buf + a->used;
    a->used += need;
    return p;
  }
  a->spilled++;
  return malloc(size);
}

static void arena_free(void *data, void *ptr) {
  struct bench_arena *a = data;
  uint8_t *p = ptr;
  if (p >= a->buf && p < a->buf + sizeof a->buf) {
    return; /* released all at once by the reset */
  }
  free(ptr);
}

static struct bench_arena *arena_get(struct bench *b) {
  if (!b->arena) {
    b->arena = malloc(sizeof *b->arena);
    if (!b->arena) {
      return NULL;
    }
    b->arena->used = 0;
    b->arena->spilled = 0;
    b->arena->allocator.alloc = arena_alloc;
    b->arena->allocator.free = arena_free;
    b->arena->allocator.allocator_data = b->arena;
  }
  return b->arena;
}

ProtobufCMessage *bench_unpack(struct bench *b, const ProtobufCMessageDescriptor *d,
                               const uint8_t *msg, size_t len) {
  struct bench_arena *a = arena_get(b);
  if (!a) {
    return NULL;
  }
  /* One unpacked message at a time: the callbacks that decode never nest. */
  CAIRN_ASSERT(a->used == 0 && a->spilled == 0);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, &a->allocator, len, msg);
  if (!m) {
    a->used = 0;
    a->spilled = 0;
  }
  return m;
}

void bench_unpacked_free(struct bench *b, ProtobufCMessage *m) {
  struct bench_arena *a = b->arena;
  if (!m) {
    return;
  }
  if (a->spilled) {
    /* Walks the message to free the spilled parts; arena parts are skipped. */
    protobuf_c_message_free_unpacked(m, &a->allocator);
  }
  a->used = 0;
  a->spilled = 0;
}

/* ---- the runner ---- */

static bool phase_more(struct bench *b, struct bench_phase *p, uint64_t now) {
  if (p->ok == 0 && p->errors >= BENCH_FAILFAST_ERRORS) {
    return false;
  }
  if (p->total > 0) {
    return p->issued < p->total;
  }
  (void)b;
  return now < p->deadline_ns;
}

static void phase_check_end(struct bench *b, struct bench_phase *p, uint64_t now) {
  if (!p->done && p->completed == p->issued && !phase_more(b, p, now)) {
    p->done = true;
    p->t_end_ns = now;
  }
}

void bench_kick(struct bench *b) {
  struct bench_phase *p = b->phase;
  if (!p || p->done) {
    return;
  }
  uint64_t now = bench_now_ns();
  while (b->n_idle > 0 && phase_more(b, p, now) && (!p->gate || p->gate(b))) {
    struct bench_slot *s = &b->slots[b->idle[--b->n_idle]];
    CAIRN_ASSERT(!s->busy);
    s->busy = true;
    s->seq = p->issued++;
    s->also = NULL;
    s->t0_ns = bench_now_ns();
    int rc = p->issue(s);
    if (rc < 0) {
      /* Nothing started: a failure now, and the slot is idle again. */
      if (!p->errors_private) {
        bench_error(b, "start request", cairn_grpc_code(rc), cairn_strerror(rc));
      }
      s->busy = false;
      p->completed++;
      p->errors++;
      if (p->measured) {
        b->errors++;
      }
      b->idle[b->n_idle++] = (unsigned)(s - b->slots);
    }
    now = bench_now_ns();
  }
  phase_check_end(b, p, now);
}

void bench_slot_done(struct bench_slot *s, int status, const char *message) {
  struct bench *b = s->b;
  struct bench_phase *p = b->phase;
  uint64_t now = bench_now_ns();
  CAIRN_ASSERT(s->busy && p);
  s->busy = false;
  p->completed++;
  if (status == GRPC_OK) {
    p->ok++;
    if (p->measured) {
      hist_record(&b->lat, now - s->t0_ns);
      if (s->also) {
        hist_record(s->also, now - s->t0_ns);
      }
    }
  } else {
    p->errors++;
    if (p->measured) {
      b->errors++;
    }
    if (!p->errors_private) {
      bench_error(b, p->name, status, message);
    }
  }
  b->idle[b->n_idle++] = (unsigned)(s - b->slots);
  bench_kick(b);
}

static void progress_cb(uv_timer_t *t) {
  struct bench *b = t->data;
  struct bench_phase *p = b->phase;
  if (!p || p->done || b->cfg.quiet) {
    return;
  }
  uint64_t now = bench_now_ns();
  double el = (double)(now - p->t_start_ns) / 1e9;
  double dt = (double)(now - b->progress_last_ns) / 1e9;
  double rate = dt > 0 ? (double)(p->completed - b->progress_last_done) / dt : 0.0;
  b->progress_last_ns = now;
  b->progress_last_done = p->completed;
  if (p->measured) {
    fprintf(stderr, "%s: %.1f s, %" PRIu64 " done, %.0f/s, p99 %.3f ms, %" PRIu64 " errors\n",
            p->name, el, p->completed, rate, (double)hist_quantile_ns(&b->lat, 0.99) / 1e6,
            p->errors);
  } else {
    fprintf(stderr, "%s: %.1f s, %" PRIu64 " done, %.0f/s\n", p->name, el, p->completed, rate);
  }
}

static void wake_cb(uv_timer_t *t) {
  (void)t; /* only ends uv_run(UV_RUN_ONCE) */
}

int bench_run_phase(struct bench *b, struct bench_phase *p) {
  CAIRN_ASSERT(p->issue && (p->total > 0 || p->deadline_ns > 0));
  b->phase = p;
  p->issued = p->completed = p->ok = p->errors = 0;
  p->done = false;
  p->t_start_ns = bench_now_ns();
  b->progress_last_ns = p->t_start_ns;
  b->progress_last_done = 0;
  b->n_idle = 0;
  for (unsigned i = b->cfg.clients; i > 0; i--) {
    b->idle[b->n_idle++] = i - 1;
  }
  if (p->deadline_ns > 0) {
    /* Ends the phase if every slot is idle when the time is up (a gated
     * phase): the runner only notices the deadline when something happens. */
    uv_timer_start(&b->wait_timer, wake_cb, (p->deadline_ns - p->t_start_ns) / 1000000u + 1u, 0);
  }
  uv_timer_start(&b->progress_timer, progress_cb, 1000, 1000);
  bench_kick(b);
  while (!p->done) {
    uv_run(&b->loop, UV_RUN_ONCE);
    if (!p->done && p->deadline_ns > 0 && b->n_idle == b->cfg.clients) {
      phase_check_end(b, p, bench_now_ns());
    }
  }
  uv_timer_stop(&b->progress_timer);
  uv_timer_stop(&b->wait_timer);
  b->phase = NULL;
  if (p->ok == 0 && p->errors > 0) {
    fprintf(stderr, "cairn-bench: %s: every request failed (%" PRIu64 "); first error: %s\n",
            p->name, p->errors, b->first_error);
    return CAIRN_EIO;
  }
  return 0;
}

bool bench_wait(struct bench *b, const bool *flag, uint64_t deadline_ns) {
  while (!*flag) {
    uint64_t now = bench_now_ns();
    if (deadline_ns > 0 && now >= deadline_ns) {
      return false;
    }
    if (deadline_ns > 0) {
      uv_timer_start(&b->wait_timer, wake_cb, (deadline_ns - now) / 1000000u + 1u, 0);
    }
    uv_run(&b->loop, UV_RUN_ONCE);
  }
  uv_timer_stop(&b->wait_timer);
  return true;
}
