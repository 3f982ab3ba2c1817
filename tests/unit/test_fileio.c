/* tests/unit/test_fileio.c: storage/fileio through both backends.
 *
 * Every case runs once on io_uring (when this kernel allows it) and once on
 * the thread pool (FILEIO_FORCE_FALLBACK). */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>

#include "storage/fileio.h"
#include "test.h"

static uv_loop_t loop;
static pthread_t loop_thread;
static unsigned mode_flags; /* flags for fileio_init() in the current pass */
static bool mode_uring;     /* what fileio_uses_uring() must say in it */
static char *dir;
static int completions; /* callbacks run so far, to order events */

struct rec {
  int64_t result;
  int calls;
  int seq; /* value of completions when the callback ran */
};

static void on_done(void *data, int64_t result) {
  struct rec *r = data;
  CHECK(pthread_equal(pthread_self(), loop_thread));
  r->result = result;
  r->calls++;
  r->seq = ++completions;
}

static fileio *open_fio(void) {
  fileio *f = NULL;
  CHECK_OK(fileio_init(&loop, mode_flags, &f));
  CHECK(f != NULL);
  CHECK(fileio_uses_uring(f) == mode_uring);
  CHECK_EQ_INT(fileio_inflight(f), 0);
  return f;
}

struct close_rec {
  int calls;
  int seq;
};

static void on_closed(void *data) {
  struct close_rec *c = data;
  CHECK(pthread_equal(pthread_self(), loop_thread));
  c->calls++;
  c->seq = ++completions;
}

/* Runs the loop until nothing is left; the loop must then be idle. */
static void run_loop(void) {
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK(!uv_loop_alive(&loop));
}

static void close_fio(fileio *f) {
  struct close_rec c = {0};
  fileio_close(f, on_closed, &c);
  CHECK_EQ_INT(c.calls, 0); /* never from inside fileio_close() */
  run_loop();
  CHECK_EQ_INT(c.calls, 1);
}

static int open_tmp(const char *name, int flags) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, flags | O_CLOEXEC, 0600);
  CHECK(fd >= 0);
  return fd;
}

static void fill_random(uint8_t *buf, size_t len) {
  for (size_t i = 0; i < len; i++) {
    buf[i] = (uint8_t)test_rand();
  }
}

static void test_basic(void) {
  fileio *f = open_fio();
  int fd = open_tmp("basic", O_RDWR | O_CREAT | O_TRUNC);
  static const char a[] = "hello, ", b[] = "world";
  struct rec w1 = {0}, w2 = {0}, s1 = {0}, s2 = {0};
  CHECK_OK(fileio_write(f, fd, a, 7, 0, &w1, on_done));
  CHECK_OK(fileio_write(f, fd, b, 5, 7, &w2, on_done));
  CHECK_EQ_INT(fileio_inflight(f), 2);
  CHECK_EQ_INT(w1.calls + w2.calls, 0); /* never from inside the call */
  run_loop();
  CHECK_EQ_INT(w1.calls, 1);
  CHECK_EQ_INT(w1.result, 7);
  CHECK_EQ_INT(w2.calls, 1);
  CHECK_EQ_INT(w2.result, 5);
  CHECK_EQ_INT(fileio_inflight(f), 0);

  CHECK_OK(fileio_fsync(f, fd, false, &s1, on_done));
  CHECK_OK(fileio_fsync(f, fd, true, &s2, on_done));
  run_loop();
  CHECK_EQ_INT(s1.calls, 1);
  CHECK_EQ_INT(s1.result, 0);
  CHECK_EQ_INT(s2.calls, 1);
  CHECK_EQ_INT(s2.result, 0);

  char buf[32] = {0};
  struct rec r1 = {0}, r2 = {0}, r3 = {0};
  CHECK_OK(fileio_read(f, fd, buf, sizeof buf, 0, &r1, on_done));
  run_loop();
  CHECK_EQ_INT(r1.result, 12); /* short read at end of file, as it is */
  CHECK(memcmp(buf, "hello, world", 12) == 0);
  CHECK_OK(fileio_read(f, fd, buf, 4, 3, &r2, on_done));
  CHECK_OK(fileio_read(f, fd, buf + 8, 4, 12, &r3, on_done));
  run_loop();
  CHECK_EQ_INT(r2.result, 4);
  CHECK(memcmp(buf, "lo, ", 4) == 0);
  CHECK_EQ_INT(r3.result, 0); /* end of file */

  /* Zero-length transfers are legal and transfer nothing. */
  struct rec z = {0};
  CHECK_OK(fileio_read(f, fd, NULL, 0, 0, &z, on_done));
  run_loop();
  CHECK_EQ_INT(z.calls, 1);
  CHECK_EQ_INT(z.result, 0);

  close(fd);
  close_fio(f);
}

/* Many reads and writes at once, at random offsets of one file. */
static void test_concurrent(void) {
  enum { BLOCK = 4096 };
  const size_t nblocks = FILEIO_INFLIGHT_MAX;
  const int rounds = test_small() ? 2 : 6;
  fileio *f = open_fio();
  int fd = open_tmp("concurrent", O_RDWR | O_CREAT | O_TRUNC);
  uint8_t *want = malloc(nblocks * BLOCK);
  uint8_t *got = malloc(nblocks * BLOCK);
  struct rec *recs = calloc(nblocks, sizeof *recs);
  size_t *perm = malloc(nblocks * sizeof *perm);
  CHECK(want && got && recs && perm);

  for (int round = 0; round < rounds; round++) {
    fill_random(want, nblocks * BLOCK);
    for (size_t i = 0; i < nblocks; i++) {
      perm[i] = i;
    }
    for (size_t i = nblocks; i > 1; i--) {
      size_t j = test_rand_below(i);
      size_t t = perm[i - 1];
      perm[i - 1] = perm[j];
      perm[j] = t;
    }
    memset(recs, 0, nblocks * sizeof *recs);
    for (size_t i = 0; i < nblocks; i++) {
      size_t b = perm[i];
      CHECK_OK(fileio_write(f, fd, want + b * BLOCK, BLOCK, b * BLOCK, &recs[b], on_done));
    }
    CHECK_EQ_INT(fileio_inflight(f), nblocks);
    run_loop();
    for (size_t b = 0; b < nblocks; b++) {
      CHECK_EQ_INT(recs[b].calls, 1);
      CHECK_EQ_INT(recs[b].result, BLOCK);
    }
    struct rec sync = {0};
    CHECK_OK(fileio_fsync(f, fd, true, &sync, on_done));
    run_loop();
    CHECK_EQ_INT(sync.result, 0);

    memset(got, 0, nblocks * BLOCK);
    memset(recs, 0, nblocks * sizeof *recs);
    for (size_t i = 0; i < nblocks; i++) {
      size_t b = perm[nblocks - 1 - i];
      CHECK_OK(fileio_read(f, fd, got + b * BLOCK, BLOCK, b * BLOCK, &recs[b], on_done));
    }
    run_loop();
    for (size_t b = 0; b < nblocks; b++) {
      CHECK_EQ_INT(recs[b].calls, 1);
      CHECK_EQ_INT(recs[b].result, BLOCK);
    }
    CHECK(memcmp(want, got, nblocks * BLOCK) == 0);
  }
  free(perm);
  free(recs);
  free(got);
  free(want);
  close(fd);
  close_fio(f);
}

/* At FILEIO_INFLIGHT_MAX the next operation is refused with CAIRN_EBUSY and
 * its callback never runs; once completions come in, room is back. */
static void test_bound(void) {
  fileio *f = open_fio();
  int fd = open_tmp("bound", O_RDWR | O_CREAT | O_TRUNC);
  CHECK_EQ_INT(write(fd, "abcdefgh", 8), 8);
  struct rec *recs = calloc(FILEIO_INFLIGHT_MAX + 3, sizeof *recs);
  char *bufs = calloc(FILEIO_INFLIGHT_MAX + 3, 8);
  CHECK(recs && bufs);
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    if (i % 3 == 2) {
      CHECK_OK(fileio_fsync(f, fd, i % 2 == 0, &recs[i], on_done));
    } else {
      CHECK_OK(fileio_read(f, fd, bufs + i * 8, 8, 0, &recs[i], on_done));
    }
  }
  CHECK_EQ_INT(fileio_inflight(f), FILEIO_INFLIGHT_MAX);
  unsigned x = FILEIO_INFLIGHT_MAX;
  CHECK_ERR(fileio_read(f, fd, bufs + x * 8, 8, 0, &recs[x], on_done), CAIRN_EBUSY);
  CHECK_ERR(fileio_write(f, fd, "z", 1, 0, &recs[x + 1], on_done), CAIRN_EBUSY);
  CHECK_ERR(fileio_fsync(f, fd, false, &recs[x + 2], on_done), CAIRN_EBUSY);
  CHECK_EQ_INT(fileio_inflight(f), FILEIO_INFLIGHT_MAX);
  run_loop();
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    CHECK_EQ_INT(recs[i].calls, 1);
    CHECK_EQ_INT(recs[i].result, i % 3 == 2 ? 0 : 8);
    if (i % 3 != 2) {
      CHECK(memcmp(bufs + i * 8, "abcdefgh", 8) == 0);
    }
  }
  for (unsigned i = x; i < x + 3; i++) {
    CHECK_EQ_INT(recs[i].calls, 0); /* refused ops never call back */
  }
  CHECK_EQ_INT(fileio_inflight(f), 0);
  CHECK_OK(fileio_read(f, fd, bufs, 8, 0, &recs[x], on_done));
  run_loop();
  CHECK_EQ_INT(recs[x].calls, 1);
  free(bufs);
  free(recs);
  close(fd);
  close_fio(f);
}

/* At the bound, every callback submits one follow-up: its own slot is free
 * when it runs, so the follow-up is never refused. */
struct chain {
  fileio *f;
  int fd;
  char buf[8];
  int remaining;
  int done;
  int refused;
};

static void on_chain(void *data, int64_t result) {
  struct chain *c = data;
  CHECK_EQ_INT(result, 8);
  CHECK(memcmp(c->buf, "abcdefgh", 8) == 0);
  c->done++;
  if (c->remaining > 0) {
    c->remaining--;
    int rc = fileio_read(c->f, c->fd, c->buf, 8, 0, c, on_chain);
    if (rc != 0) {
      c->refused++;
    }
  }
}

static void test_chain_at_bound(void) {
  fileio *f = open_fio();
  int fd = open_tmp("chain", O_RDWR | O_CREAT | O_TRUNC);
  CHECK_EQ_INT(write(fd, "abcdefgh", 8), 8);
  const int follow_ups = test_small() ? 8 : 40;
  struct chain *chains = calloc(FILEIO_INFLIGHT_MAX, sizeof *chains);
  CHECK(chains);
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    chains[i].f = f;
    chains[i].fd = fd;
    chains[i].remaining = follow_ups;
    CHECK_OK(fileio_read(f, fd, chains[i].buf, 8, 0, &chains[i], on_chain));
  }
  run_loop();
  for (unsigned i = 0; i < FILEIO_INFLIGHT_MAX; i++) {
    CHECK_EQ_INT(chains[i].refused, 0);
    CHECK_EQ_INT(chains[i].done, follow_ups + 1);
  }
  free(chains);
  close(fd);
  close_fio(f);
}

/* fileio_close() with operations in flight: they complete with their real
 * results, then close_cb runs; new ones are refused meanwhile. */
static void test_close_inflight(void) {
  enum { N = 100, LEN = 512 };
  fileio *f = open_fio();
  int fd = open_tmp("close", O_RDWR | O_CREAT | O_TRUNC);
  uint8_t *data = malloc(N * LEN);
  CHECK(data);
  fill_random(data, N * LEN);
  struct rec recs[N + 1];
  memset(recs, 0, sizeof recs);
  for (int i = 0; i < N; i++) {
    CHECK_OK(fileio_write(f, fd, data + i * LEN, LEN, (uint64_t)i * LEN, &recs[i], on_done));
  }
  CHECK_OK(fileio_fsync(f, fd, false, &recs[N], on_done));
  struct close_rec c = {0};
  completions = 0;
  fileio_close(f, on_closed, &c);
  /* Refused from now on, callbacks never called. */
  struct rec late = {0};
  CHECK_ERR(fileio_read(f, fd, data, 1, 0, &late, on_done), CAIRN_ESTOPPED);
  CHECK_ERR(fileio_write(f, fd, data, 1, 0, &late, on_done), CAIRN_ESTOPPED);
  CHECK_ERR(fileio_fsync(f, fd, true, &late, on_done), CAIRN_ESTOPPED);
  CHECK_EQ_INT(c.calls, 0);
  run_loop();
  CHECK_EQ_INT(late.calls, 0);
  CHECK_EQ_INT(c.calls, 1);
  CHECK_EQ_INT(c.seq, N + 2); /* after every op's callback */
  for (int i = 0; i <= N; i++) {
    CHECK_EQ_INT(recs[i].calls, 1);
    CHECK_EQ_INT(recs[i].result, i < N ? LEN : 0);
  }
  /* The data really is there. */
  uint8_t *back = malloc(N * LEN);
  CHECK(back);
  CHECK_EQ_INT(pread(fd, back, N * LEN, 0), N * LEN);
  CHECK(memcmp(back, data, N * LEN) == 0);
  free(back);
  free(data);
  close(fd);
}

/* The last callback closes the fileio; an idle fileio closes too. */
struct close_in_cb {
  fileio *f;
  struct close_rec closed;
  int calls;
};

static void on_done_then_close(void *data, int64_t result) {
  struct close_in_cb *c = data;
  CHECK_EQ_INT(result, 0);
  c->calls++;
  fileio_close(c->f, on_closed, &c->closed);
  CHECK_EQ_INT(c->closed.calls, 0);
}

static void test_close_from_callback(void) {
  int fd = open_tmp("closecb", O_RDWR | O_CREAT | O_TRUNC);
  struct close_in_cb c = {0};
  c.f = open_fio();
  CHECK_OK(fileio_fsync(c.f, fd, true, &c, on_done_then_close));
  run_loop();
  CHECK_EQ_INT(c.calls, 1);
  CHECK_EQ_INT(c.closed.calls, 1);

  /* Closed while another op is still in flight. */
  struct close_in_cb d = {0};
  struct rec other = {0};
  d.f = open_fio();
  CHECK_OK(fileio_fsync(d.f, fd, false, &d, on_done_then_close));
  CHECK_OK(fileio_fsync(d.f, fd, true, &other, on_done));
  run_loop();
  CHECK_EQ_INT(d.calls, 1);
  CHECK_EQ_INT(other.calls, 1);
  CHECK_EQ_INT(d.closed.calls, 1);
  close(fd);

  /* Nothing ever submitted. */
  close_fio(open_fio());
}

/* Bad descriptors and misuse give a negative result or a negative return,
 * never a crash; a refused call never calls back. */
static void test_errors(void) {
  fileio *f = open_fio();
  char buf[16];
  int rdonly = open_tmp("ro", O_RDWR | O_CREAT | O_TRUNC);
  close(rdonly);
  rdonly = open_tmp("ro", O_RDONLY);
  int wronly = open_tmp("wo", O_WRONLY | O_CREAT | O_TRUNC);
  int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  CHECK(dirfd >= 0);
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  int unused = dup(rdonly); /* a number certainly closed below */
  CHECK(unused >= 0);
  close(unused);

  struct rec r[12];
  memset(r, 0, sizeof r);
  CHECK_OK(fileio_read(f, -1, buf, sizeof buf, 0, &r[0], on_done));
  CHECK_OK(fileio_read(f, unused, buf, sizeof buf, 0, &r[1], on_done));
  CHECK_OK(fileio_write(f, rdonly, "x", 1, 0, &r[2], on_done));
  CHECK_OK(fileio_read(f, wronly, buf, sizeof buf, 0, &r[3], on_done));
  CHECK_OK(fileio_read(f, dirfd, buf, sizeof buf, 0, &r[4], on_done));
  CHECK_OK(fileio_fsync(f, -1, false, &r[5], on_done));
  CHECK_OK(fileio_fsync(f, unused, true, &r[6], on_done));
  CHECK_OK(fileio_fsync(f, pipefd[0], false, &r[7], on_done));
  CHECK_OK(fileio_write(f, -5, "x", 1, 0, &r[8], on_done));
  CHECK_OK(fileio_write(f, wronly, "x", 1, (uint64_t)INT64_MAX - 1, &r[9], on_done));
  run_loop();
  CHECK_EQ_INT(r[0].result, -EBADF);
  CHECK_EQ_INT(r[1].result, -EBADF);
  CHECK_EQ_INT(r[2].result, -EBADF);
  CHECK_EQ_INT(r[3].result, -EBADF);
  CHECK_EQ_INT(r[4].result, -EISDIR);
  CHECK_EQ_INT(r[5].result, -EBADF);
  CHECK_EQ_INT(r[6].result, -EBADF);
  CHECK_EQ_INT(r[7].result, -EINVAL); /* a pipe cannot be synced */
  CHECK_EQ_INT(r[8].result, -EBADF);
  CHECK_EQ_INT(r[9].result, -EFBIG); /* beyond the largest file size */
  for (int i = 0; i < 10; i++) {
    CHECK_EQ_INT(r[i].calls, 1);
  }

  /* Refused at the call: no callback. */
  CHECK_ERR(fileio_read(f, rdonly, buf, 1, (uint64_t)INT64_MAX + 1, &r[10], on_done), CAIRN_EINVAL);
  CHECK_ERR(fileio_write(f, wronly, "x", 1, UINT64_MAX, &r[10], on_done), CAIRN_EINVAL);
  CHECK_ERR(fileio_read(f, rdonly, NULL, 1, 0, &r[10], on_done), CAIRN_EINVAL);
  CHECK_ERR(fileio_write(f, wronly, NULL, 4, 0, &r[10], on_done), CAIRN_EINVAL);
  CHECK_EQ_INT(fileio_inflight(f), 0);
  run_loop();
  CHECK_EQ_INT(r[10].calls, 0);

  fileio *g = NULL;
  CHECK_ERR(fileio_init(&loop, 0x80u, &g), CAIRN_EINVAL);
  CHECK(g == NULL);

  close(pipefd[0]);
  close(pipefd[1]);
  close(dirfd);
  close(wronly);
  close(rdonly);
  close_fio(f);
}

/* A file size limit makes the kernel cut a write short: the short count is
 * reported as it is, and the next write fails with EFBIG. */
static void test_short_write(void) {
  enum { LIMIT = 10000, LEN = 25000 };
  fileio *f = open_fio();
  int fd = open_tmp("short", O_RDWR | O_CREAT | O_TRUNC);
  uint8_t *buf = malloc(LEN);
  CHECK(buf);
  fill_random(buf, LEN);
  struct rlimit saved, lim;
  CHECK(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  lim = saved;
  lim.rlim_cur = LIMIT;
  void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  struct rec a = {0}, b = {0};
  CHECK_OK(fileio_write(f, fd, buf, LEN, 0, &a, on_done));
  run_loop();
  CHECK_EQ_INT(a.result, LIMIT);
  CHECK_OK(fileio_write(f, fd, buf + LIMIT, LEN - LIMIT, LIMIT, &b, on_done));
  run_loop();
  CHECK_EQ_INT(b.result, -EFBIG);
  CHECK(setrlimit(RLIMIT_FSIZE, &saved) == 0);
  signal(SIGXFSZ, old);
  free(buf);
  close(fd);
  close_fio(f);
}

/* fileio_fsync_paced: a file with MiBs of dirty pages syncs (result 0, the
 * callback from the loop, counted in flight, drained by a close), on either
 * backend (it runs on the thread pool); errors are the kernel's. */
static void test_paced(void) {
  fileio *f = open_fio();
  int fd = open_tmp("paced", O_RDWR | O_CREAT | O_TRUNC);
  size_t len = 3u << 20; /* several FILEIO_PACE_BYTES ranges */
  uint8_t *buf = malloc(len);
  CHECK(buf != NULL);
  fill_random(buf, len);
  CHECK(pwrite(fd, buf, len, 0) == (ssize_t)len);
  struct rec s = {0};
  CHECK_OK(fileio_fsync_paced(f, fd, &s, on_done));
  CHECK_EQ_INT(fileio_inflight(f), 1);
  CHECK_EQ_INT(s.calls, 0);
  run_loop();
  CHECK_EQ_INT(s.calls, 1);
  CHECK_EQ_INT(s.result, 0);
  CHECK_EQ_INT(fileio_inflight(f), 0);

  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  struct rec e1 = {0}, e2 = {0}, last = {0};
  CHECK_OK(fileio_fsync_paced(f, -1, &e1, on_done));
  CHECK_OK(fileio_fsync_paced(f, pipefd[0], &e2, on_done));
  run_loop();
  CHECK_EQ_INT(e1.result, -EBADF);
  CHECK_EQ_INT(e2.result, -EINVAL); /* a pipe cannot be synced */

  /* In flight at close: completes for real before the close callback. */
  CHECK(pwrite(fd, buf, len, (off_t)len) == (ssize_t)len);
  CHECK_OK(fileio_fsync_paced(f, fd, &last, on_done));
  struct close_rec c = {0};
  fileio_close(f, on_closed, &c);
  CHECK_ERR(fileio_fsync_paced(f, fd, &e1, on_done), CAIRN_ESTOPPED);
  run_loop();
  CHECK_EQ_INT(last.calls, 1);
  CHECK_EQ_INT(last.result, 0);
  CHECK_EQ_INT(c.calls, 1);
  close(pipefd[0]);
  close(pipefd[1]);
  close(fd);
  free(buf);
}

static void run_pass(unsigned flags, bool uring) {
  mode_flags = flags;
  mode_uring = uring;
  printf(" backend: %s\n", uring ? "io_uring" : "thread pool");
  TEST_RUN(test_basic);
  TEST_RUN(test_concurrent);
  TEST_RUN(test_bound);
  TEST_RUN(test_chain_at_bound);
  TEST_RUN(test_close_inflight);
  TEST_RUN(test_close_from_callback);
  TEST_RUN(test_errors);
  TEST_RUN(test_short_write);
  TEST_RUN(test_paced);
}

int main(void) {
  test_seed("test_fileio");
  CHECK_OK(uv_loop_init(&loop));
  loop_thread = pthread_self();
  dir = test_tmpdir("fileio");
  /* This test sets CAIRN_NO_URING itself (below): ignore the caller's. */
  unsetenv("CAIRN_NO_URING");

  fileio *probe = NULL;
  CHECK_OK(fileio_init(&loop, 0, &probe));
  bool have_uring = fileio_uses_uring(probe);
  close_fio(probe);
  if (have_uring) {
    run_pass(0, true);
  } else {
    printf(" io_uring is not available here: thread pool only\n");
  }
  run_pass(FILEIO_FORCE_FALLBACK, false);

  /* CAIRN_NO_URING=1 forces the fallback for a whole process. */
  CHECK_OK(setenv("CAIRN_NO_URING", "1", 1));
  CHECK_OK(fileio_init(&loop, 0, &probe));
  CHECK(!fileio_uses_uring(probe));
  close_fio(probe);
  CHECK_OK(setenv("CAIRN_NO_URING", "0", 1));
  CHECK_OK(fileio_init(&loop, 0, &probe));
  CHECK(fileio_uses_uring(probe) == have_uring);
  close_fio(probe);
  unsetenv("CAIRN_NO_URING");

  CHECK_OK(uv_loop_close(&loop));
  test_rmdir(dir);
  printf("test_fileio: ok\n");
  return 0;
}
