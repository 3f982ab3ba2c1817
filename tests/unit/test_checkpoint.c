/* tests/unit/test_checkpoint.c: checkpoints of a store through both fileio
 * backends report the applied index and revision captured at the call. */
#include <stdbool.h>

#include "storage/checkpoint.h"
#include "test.h"

static uv_loop_t loop;
static unsigned mode_flags;
static bool mode_uring;
static mvcc_store *st;
static uint64_t next_index = 1;

static void run_loop(void) {
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK(!uv_loop_alive(&loop));
}

static fileio *open_fio(void) {
  fileio *f = NULL;
  CHECK_OK(fileio_init(&loop, mode_flags, &f));
  CHECK(fileio_uses_uring(f) == mode_uring);
  return f;
}

static void on_fio_closed(void *data) {
  *(int *)data += 1;
}

static void close_fio(fileio *f) {
  int closed = 0;
  fileio_close(f, on_fio_closed, &closed);
  run_loop();
  CHECK_EQ_INT(closed, 1);
}

/* Applies n puts in one batch, raft indexes next_index.. */
static void apply_puts(size_t n) {
  struct mvcc_op ops[16];
  struct mvcc_result res[16];
  char keys[16][32], vals[16][32];
  CHECK(n <= 16);
  memset(ops, 0, sizeof ops);
  for (size_t i = 0; i < n; i++) {
    snprintf(keys[i], sizeof keys[i], "k%03u", (unsigned)test_rand_below(50));
    snprintf(vals[i], sizeof vals[i], "v%" PRIu64, test_rand());
    ops[i].type = MVCC_OP_PUT;
    ops[i].raft_index = next_index++;
    ops[i].raft_term = 1;
    ops[i].u.put.key = (struct mvcc_bytes){(const uint8_t *)keys[i], strlen(keys[i])};
    ops[i].u.put.value = (struct mvcc_bytes){(const uint8_t *)vals[i], strlen(vals[i])};
  }
  CHECK_OK(mvcc_apply(st, ops, n, res));
  for (size_t i = 0; i < n; i++) {
    CHECK_OK(res[i].err);
    mvcc_result_free(&res[i]);
  }
  CHECK_EQ_INT(mvcc_applied_index(st), next_index - 1);
}

struct ckpt {
  int calls;
  int status;
  uint64_t index;
  int64_t revision;
};

static void on_ckpt(void *data, int status, uint64_t index, int64_t revision) {
  struct ckpt *c = data;
  c->calls++;
  c->status = status;
  c->index = index;
  c->revision = revision;
}

static void test_reports_applied_state(void) {
  fileio *f = open_fio();
  for (int round = 0; round < 5; round++) {
    apply_puts(1 + (size_t)test_rand_below(16));
    uint64_t want_index = mvcc_applied_index(st);
    int64_t want_rev = mvcc_current_revision(st);
    struct ckpt c = {0};
    CHECK_OK(checkpoint_start(st, f, &c, on_ckpt));
    CHECK_EQ_INT(c.calls, 0); /* from the loop, later */
    run_loop();
    CHECK_EQ_INT(c.calls, 1);
    CHECK_OK(c.status);
    CHECK_EQ_INT(c.index, want_index);
    CHECK_EQ_INT(c.revision, want_rev);
  }
  close_fio(f);
}

/* Overlapping checkpoints each report what they captured. */
static void test_overlapping(void) {
  fileio *f = open_fio();
  apply_puts(3);
  uint64_t i1 = mvcc_applied_index(st);
  int64_t r1 = mvcc_current_revision(st);
  struct ckpt a = {0}, b = {0};
  CHECK_OK(checkpoint_start(st, f, &a, on_ckpt));
  apply_puts(5); /* committed after a's call: not covered by a */
  uint64_t i2 = mvcc_applied_index(st);
  int64_t r2 = mvcc_current_revision(st);
  CHECK(i2 > i1 && r2 > r1);
  CHECK_OK(checkpoint_start(st, f, &b, on_ckpt));
  run_loop();
  CHECK_EQ_INT(a.calls, 1);
  CHECK_OK(a.status);
  CHECK_EQ_INT(a.index, i1);
  CHECK_EQ_INT(a.revision, r1);
  CHECK_EQ_INT(b.calls, 1);
  CHECK_OK(b.status);
  CHECK_EQ_INT(b.index, i2);
  CHECK_EQ_INT(b.revision, r2);
  close_fio(f);
}

/* At fileio's bound, and once it is closing, checkpoints are refused and
 * their callbacks never run. */
static void test_refused(void) {
  fileio *f = open_fio();
  struct ckpt *cs = calloc(FILEIO_INFLIGHT_MAX + 1, sizeof *cs);
  CHECK(cs);
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    CHECK_OK(checkpoint_start(st, f, &cs[i], on_ckpt));
  }
  CHECK_ERR(checkpoint_start(st, f, &cs[FILEIO_INFLIGHT_MAX], on_ckpt), CAIRN_EBUSY);
  run_loop();
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    CHECK_EQ_INT(cs[i].calls, 1);
    CHECK_OK(cs[i].status);
    CHECK_EQ_INT(cs[i].index, mvcc_applied_index(st));
  }
  CHECK_EQ_INT(cs[FILEIO_INFLIGHT_MAX].calls, 0);

  /* A checkpoint in flight when fileio_close() is called still completes. */
  struct ckpt before = {0}, after = {0};
  CHECK_OK(checkpoint_start(st, f, &before, on_ckpt));
  int closed = 0;
  fileio_close(f, on_fio_closed, &closed);
  CHECK_ERR(checkpoint_start(st, f, &after, on_ckpt), CAIRN_ESTOPPED);
  run_loop();
  CHECK_EQ_INT(closed, 1);
  CHECK_EQ_INT(before.calls, 1);
  CHECK_OK(before.status);
  CHECK_EQ_INT(after.calls, 0);
  free(cs);
}

static void run_pass(unsigned flags, bool uring) {
  mode_flags = flags;
  mode_uring = uring;
  printf(" backend: %s\n", uring ? "io_uring" : "thread pool");
  TEST_RUN(test_reports_applied_state);
  TEST_RUN(test_overlapping);
  TEST_RUN(test_refused);
}

int main(void) {
  test_seed("test_checkpoint");
  CHECK_OK(uv_loop_init(&loop));
  char *dir = test_tmpdir("checkpoint");
  CHECK_OK(mvcc_open(dir, NULL, &st));
  unsetenv("CAIRN_NO_URING");
  fileio *probe;
  CHECK_OK(fileio_init(&loop, 0, &probe));
  bool have_uring = fileio_uses_uring(probe);
  close_fio(probe);
  if (have_uring) {
    run_pass(0, true);
  } else {
    printf(" io_uring is not available here: thread pool only\n");
  }
  run_pass(FILEIO_FORCE_FALLBACK, false);

  /* What was checkpointed is what a reopened store has applied. */
  uint64_t index = mvcc_applied_index(st);
  int64_t rev = mvcc_current_revision(st);
  mvcc_close(st);
  CHECK_OK(mvcc_open(dir, NULL, &st));
  CHECK_EQ_INT(mvcc_applied_index(st), index);
  CHECK_EQ_INT(mvcc_current_revision(st), rev);
  mvcc_close(st);

  CHECK_OK(uv_loop_close(&loop));
  test_rmdir(dir);
  printf("test_checkpoint: ok\n");
  return 0;
}
