/* tests/unit/test_wal.c: storage/wal.c, the raft log's file: appends in
 * order and durable across reopen, segment rotation (and a record larger
 * than a segment), truncate, reset, compact, a torn tail repaired and
 * zeroed, corruption refused, close with appends staged. */
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <uv.h>

#include "storage/wal.h"
#include "test.h"

static uv_loop_t loop;

/* The model: what the log must hold. */
#define MAXREC 4096
struct rec {
  uint64_t index, term;
  uint8_t type;
  size_t len;
  uint8_t *data;
};
static struct rec model[MAXREC + 1]; /* by index */
static uint64_t m_first, m_last;

static void model_reset(void) {
  for (size_t i = 0; i <= MAXREC; i++) {
    free(model[i].data);
    model[i].data = NULL;
  }
  m_first = m_last = 0;
}

static void fill(uint8_t *p, size_t len, uint64_t index, uint64_t term) {
  for (size_t i = 0; i < len; i++) {
    p[i] = (uint8_t)(index * 31 + term * 7 + i);
  }
}

/* Callbacks: each append's status, in call order. */
static int statuses[MAXREC];
static int n_cb, n_req;
static int cb_order_bad;

static void on_cb(void *data, int status) {
  int want = (int)(intptr_t)data;
  if (want != n_cb) {
    cb_order_bad = 1;
  }
  statuses[n_cb++] = status;
}

/* Appends records first..last (term, sizes from size_of) as one call. */
static void append(wal *w, uint64_t first, uint64_t last, uint64_t term,
                   size_t (*size_of)(uint64_t)) {
  size_t n = (size_t)(last - first + 1);
  struct wal_record *r = calloc(n, sizeof *r);
  for (size_t i = 0; i < n; i++) {
    uint64_t idx = first + i;
    CHECK(idx <= MAXREC);
    free(model[idx].data);
    size_t len = size_of(idx);
    model[idx] = (struct rec){.index = idx,
                              .term = term,
                              .type = (uint8_t)(1 + idx % 3),
                              .len = len,
                              .data = malloc(len ? len : 1)};
    fill(model[idx].data, len, idx, term);
    r[i] = (struct wal_record){
        .index = idx, .term = term, .type = model[idx].type, .data = model[idx].data, .len = len};
  }
  CHECK_OK(wal_append(w, r, n, on_cb, (void *)(intptr_t)n_req));
  n_req++;
  free(r);
  if (m_last == 0) {
    m_first = first;
  }
  m_last = last;
}

static void wait_cbs(void) {
  while (n_cb < n_req) {
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK(!cb_order_bad);
  for (int i = 0; i < n_cb; i++) {
    CHECK_EQ_INT(statuses[i], 0);
  }
}

static bool closed;
static void on_closed(void *data) {
  (void)data;
  closed = true;
}

static void close_wal(wal *w) {
  closed = false;
  wal_close(w, on_closed, NULL);
  while (!closed) {
    uv_run(&loop, UV_RUN_ONCE);
  }
}

static wal *open_wal(const char *dir, size_t seg) {
  struct wal_options o = {.segment_bytes = seg};
  wal *w = NULL;
  CHECK_OK(wal_open(&loop, dir, &o, &w));
  return w;
}

/* The log on disk equals the model from `from` to m_last. */
static void check_log(wal *w, uint64_t from) {
  struct wal_record *r;
  size_t n;
  CHECK_OK(wal_read_all(w, &r, &n));
  CHECK_EQ_INT(wal_last_index(w), m_last);
  if (m_last == 0) {
    CHECK_EQ_INT(n, 0);
    free(r);
    return;
  }
  CHECK(n > 0);
  CHECK_EQ_INT(r[n - 1].index, m_last);
  CHECK(r[0].index <= from);
  CHECK_EQ_INT(wal_first_index(w), r[0].index);
  for (size_t i = 0; i < n; i++) {
    struct rec *m = &model[r[i].index];
    CHECK_EQ_INT(r[i].index, r[0].index + i);
    CHECK_EQ_INT(r[i].term, m->term);
    CHECK_EQ_INT(r[i].type, m->type);
    CHECK_EQ_INT(r[i].len, m->len);
    CHECK(m->len == 0 || memcmp(r[i].data, m->data, m->len) == 0);
  }
  free(r);
}

static size_t small(uint64_t i) {
  return (size_t)(i % 7) * 13;
}
static size_t mixed(uint64_t i) {
  return i % 50 == 0 ? 9000 + (size_t)(i % 5) * 1000 : (size_t)(i % 11) * 37;
}
static size_t huge(uint64_t i) {
  (void)i;
  return 200u << 10;
}

static void reset_cbs(void) {
  n_cb = n_req = 0;
  cb_order_bad = 0;
}

/* A fresh directory, model and callback record, and a wal on them. */
static wal *begin(char **dir, size_t seg) {
  *dir = test_tmpdir("wal");
  model_reset();
  reset_cbs();
  return open_wal(*dir, seg);
}

/* Closes w, opens the directory again and checks the log against the
 * model; returns the new wal. */
static wal *reopen_check(wal *w, const char *dir, size_t seg, uint64_t from) {
  close_wal(w);
  w = open_wal(dir, seg);
  check_log(w, from);
  return w;
}

static void test_basic(void) {
  char *dir;
  wal *w = begin(&dir, 0);
  CHECK_EQ_INT(wal_last_index(w), 0);
  append(w, 1, 1, 1, small);
  append(w, 2, 5, 1, small);
  append(w, 6, 40, 2, mixed);
  wait_cbs();
  check_log(w, 1);
  w = reopen_check(w, dir, 0, 1);
  CHECK_EQ_INT(wal_first_index(w), 1);
  /* Wrong index, type 0: refused, nothing staged. */
  struct wal_record bad = {.index = 42, .term = 2, .type = 1, .data = "x", .len = 1};
  CHECK_ERR(wal_append(w, &bad, 1, on_cb, NULL), CAIRN_EINVAL);
  bad.index = 41;
  bad.type = 0;
  CHECK_ERR(wal_append(w, &bad, 1, on_cb, NULL), CAIRN_EINVAL);
  append(w, 41, 41, 3, small);
  wait_cbs();
  w = reopen_check(w, dir, 0, 1);
  close_wal(w);
  test_rmdir(dir);
}

/* Small segments: many rotations, and one record larger than a segment. */
static void test_rotation(void) {
  char *dir = test_tmpdir("wal");
  model_reset();
  reset_cbs();
  size_t seg = 64u << 10;
  wal *w = open_wal(dir, seg);
  uint64_t next = 1;
  for (int k = 0; k < 60; k++) {
    uint64_t n = 1 + test_rand_below(30);
    append(w, next, next + n - 1, 1 + (uint64_t)k / 10, mixed);
    next += n;
    if (test_rand_below(4) == 0) {
      wait_cbs();
    }
  }
  append(w, next, next, 9, huge);
  next++;
  append(w, next, next + 3, 9, small);
  next += 4;
  wait_cbs();
  check_log(w, 1);
  w = reopen_check(w, dir, seg, 1);
  close_wal(w);
  test_rmdir(dir);
}

static void test_truncate(void) {
  char *dir = test_tmpdir("wal");
  size_t seg = 32u << 10;
  for (int pass = 0; pass < 2; pass++) {
    model_reset();
    reset_cbs();
    wal *w = open_wal(dir, seg);
    append(w, 1, 100, 1, mixed);
    append(w, 101, 300, 1, small);
    wait_cbs();
    /* Within the last segment, then across segments; staged right behind
     * appends on the second pass (ordering). */
    uint64_t at = pass == 0 ? 290 : 40;
    if (pass == 1) {
      append(w, 301, 310, 1, small);
    }
    CHECK_OK(wal_truncate(w, at));
    m_last = at - 1;
    append(w, at, at + 20, 2, mixed);
    wait_cbs();
    check_log(w, 1);
    close_wal(w);
    w = open_wal(dir, seg);
    check_log(w, 1);
    /* Truncating everything: the next append starts at the given index. */
    CHECK_OK(wal_truncate(w, 1));
    m_last = 0;
    append(w, 1, 3, 3, small);
    wait_cbs();
    close_wal(w);
    w = open_wal(dir, seg);
    check_log(w, 1);
    close_wal(w);
    test_rmdir(dir);
    dir = test_tmpdir("wal");
  }
  test_rmdir(dir);
}

static int count_segments(const char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "ls '%s' | grep -c '\\.wal$'", dir);
  FILE *p = popen(cmd, "r");
  int n = 0;
  CHECK(fscanf(p, "%d", &n) == 1);
  pclose(p);
  return n;
}

static void test_reset_compact(void) {
  size_t seg = 32u << 10;
  char *dir;
  wal *w = begin(&dir, seg);
  for (uint64_t i = 1; i <= 600; i += 20) {
    append(w, i, i + 19, 1, mixed);
    wait_cbs();
  }
  int before = count_segments(dir);
  CHECK(before > 4);
  CHECK_OK(wal_compact(w, 400));
  append(w, 601, 610, 1, small); /* runs after the compaction: a barrier */
  wait_cbs();
  CHECK(count_segments(dir) < before);
  close_wal(w);
  w = open_wal(dir, seg);
  CHECK(wal_first_index(w) > 1 && wal_first_index(w) <= 401);
  check_log(w, 401);
  /* Reset: an installed snapshot at 1000 replaces the log. */
  CHECK_OK(wal_reset(w, 1001));
  CHECK_EQ_INT(wal_last_index(w), 0);
  struct wal_record bad = {.index = 611, .term = 2, .type = 1, .data = "x", .len = 1};
  CHECK_ERR(wal_append(w, &bad, 1, on_cb, NULL), CAIRN_EINVAL);
  model_reset();
  append(w, 1001, 1010, 5, small);
  wait_cbs();
  close_wal(w);
  w = open_wal(dir, seg);
  CHECK_EQ_INT(wal_first_index(w), 1001);
  check_log(w, 1001);
  close_wal(w);
  test_rmdir(dir);
}

/* The last used segment's path (highest sequence with a header). */
static void last_segment(const char *dir, char *out, size_t cap) {
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && for f in $(ls *.wal | sort -r); do "
           "if [ \"$(head -c 8 $f)\" = CAIRNWAL ]; then echo $f; break; fi; done",
           dir);
  FILE *p = popen(cmd, "r");
  char name[64] = {0};
  CHECK(fgets(name, sizeof name, p) != NULL);
  pclose(p);
  name[strcspn(name, "\n")] = 0;
  snprintf(out, cap, "%s/%s", dir, name);
}

static void test_torn_tail(void) {
  char *dir;
  wal *w = begin(&dir, 0);
  append(w, 1, 5, 1, small); /* one write: block 1 */
  wait_cbs();
  append(w, 6, 8, 1, huge); /* one write over many blocks, from block 2 */
  wait_cbs();
  close_wal(w);
  char path[600];
  last_segment(dir, path, sizeof path);
  int fd = open(path, O_RDWR);
  CHECK(fd >= 0);
  /* The crash: the big write's first block never reached the disk, its
   * later blocks did. The log ends at 5 and the rest must be zeroed. */
  uint8_t zero[WAL_BLOCK] = {0};
  CHECK(pwrite(fd, zero, sizeof zero, 2 * WAL_BLOCK) == (ssize_t)sizeof zero);
  close(fd);
  w = open_wal(dir, 0);
  CHECK_EQ_INT(wal_last_index(w), 5);
  m_last = 5;
  check_log(w, 1);
  fd = open(path, O_RDONLY);
  uint8_t buf[WAL_BLOCK];
  for (off_t off = 2 * WAL_BLOCK; off < 2 * WAL_BLOCK + (off_t)(3 * huge(0)); off += WAL_BLOCK) {
    CHECK(pread(fd, buf, sizeof buf, off) == (ssize_t)sizeof buf);
    CHECK(memcmp(buf, zero, sizeof buf) == 0);
  }
  close(fd);
  append(w, 6, 7, 2, small);
  wait_cbs();
  close_wal(w);
  /* A flipped byte in the last record: it is dropped, the rest stays. */
  fd = open(path, O_RDWR);
  uint8_t b;
  CHECK(pread(fd, &b, 1, 2 * WAL_BLOCK + 40) == 1);
  b ^= 0x5a;
  CHECK(pwrite(fd, &b, 1, 2 * WAL_BLOCK + 40) == 1);
  close(fd);
  w = open_wal(dir, 0);
  m_last = 5;
  check_log(w, 1);
  append(w, 6, 6, 3, small);
  wait_cbs();
  w = reopen_check(w, dir, 0, 1);
  close_wal(w);
  test_rmdir(dir);
}

static void test_corrupt(void) {
  size_t seg = 32u << 10;
  char *dir;
  wal *w = begin(&dir, seg);
  for (uint64_t i = 1; i <= 300; i += 20) {
    append(w, i, i + 19, 1, mixed);
    wait_cbs();
  }
  close_wal(w);
  /* A bad record in a segment that is not the last: refused. */
  char cmd[700];
  snprintf(cmd, sizeof cmd, "cd '%s' && ls *.wal | sort | head -1", dir);
  FILE *p = popen(cmd, "r");
  char name[64] = {0};
  CHECK(fgets(name, sizeof name, p) != NULL);
  pclose(p);
  name[strcspn(name, "\n")] = 0;
  char path[600];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_RDWR);
  uint8_t b;
  CHECK(pread(fd, &b, 1, WAL_BLOCK + 60) == 1);
  b ^= 0xff;
  CHECK(pwrite(fd, &b, 1, WAL_BLOCK + 60) == 1);
  close(fd);
  wal *w2 = NULL;
  struct wal_options o = {.segment_bytes = seg};
  CHECK_ERR(wal_open(&loop, dir, &o, &w2), CAIRN_ECORRUPT);
  /* A missing middle segment: a gap, refused too. */
  fd = open(path, O_RDWR);
  b ^= 0xff;
  CHECK(pwrite(fd, &b, 1, WAL_BLOCK + 60) == 1);
  close(fd);
  snprintf(cmd, sizeof cmd, "cd '%s' && rm $(ls *.wal | sort | sed -n 2p)", dir);
  CHECK(system(cmd) == 0);
  CHECK_ERR(wal_open(&loop, dir, &o, &w2), CAIRN_ECORRUPT);
  uv_run(&loop, UV_RUN_NOWAIT);
  test_rmdir(dir);
}

/* Close with appends staged behind the write in flight: every callback runs
 * once, in order, each 0 (written) or CAIRN_ESTOPPED (not), never 0 after a
 * canceled one; what was acknowledged is there after reopen. */
static void test_close_staged(void) {
  char *dir;
  wal *w = begin(&dir, 0);
  for (uint64_t i = 1; i <= 200; i += 10) {
    append(w, i, i + 9, 1, mixed);
  }
  closed = false;
  wal_close(w, on_closed, NULL);
  while (!closed) {
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK_EQ_INT(n_cb, n_req);
  CHECK(!cb_order_bad);
  int acked = 0;
  for (int i = 0; i < n_cb; i++) {
    CHECK(statuses[i] == 0 || statuses[i] == CAIRN_ESTOPPED);
    if (statuses[i] == 0) {
      CHECK_EQ_INT(acked, i);
      acked++;
    }
  }
  w = open_wal(dir, 0);
  CHECK(wal_last_index(w) >= (uint64_t)acked * 10);
  m_last = wal_last_index(w);
  if (m_last > 0) {
    check_log(w, 1);
  }
  close_wal(w);
  test_rmdir(dir);
}

/* A disk that refuses the next segment (a file size limit here: EFBIG; a
 * full disk gives ENOSPC the same way): the write that needs it fails, the
 * log refuses every later append, nothing acknowledged is lost. */
static void test_write_error(void) {
  size_t seg = 64u << 10;
  char *dir;
  wal *w = begin(&dir, seg);
  append(w, 1, 20, 1, small);
  wait_cbs();
  struct rlimit old, lim;
  CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
  lim = old;
  lim.rlim_cur = 16u << 10; /* below a segment: the next spare cannot be made */
  CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  uint64_t next = 21;
  int failed_at = -1;
  for (int k = 0; k < 200 && failed_at < 0; k++) {
    append(w, next, next + 9, 1, mixed);
    next += 10;
    while (n_cb < n_req) {
      uv_run(&loop, UV_RUN_ONCE);
    }
    if (statuses[n_cb - 1] != 0) {
      failed_at = n_cb - 1;
    }
  }
  CHECK(failed_at > 0);
  CHECK_EQ_INT(statuses[failed_at], CAIRN_EIO);
  struct wal_record r = {.index = next, .term = 1, .type = 1, .data = "x", .len = 1};
  CHECK_ERR(wal_append(w, &r, 1, on_cb, NULL), CAIRN_EIO);
  close_wal(w);
  CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
  /* Every acknowledged record is there after a reopen. */
  w = open_wal(dir, seg);
  CHECK(wal_last_index(w) >= 20 + (uint64_t)(failed_at - 1) * 10);
  m_last = wal_last_index(w);
  check_log(w, 1);
  close_wal(w);
  test_rmdir(dir);
}

int main(void) {
  test_seed("test_wal");
  CHECK_OK(uv_loop_init(&loop));
  TEST_RUN(test_basic);
  TEST_RUN(test_rotation);
  TEST_RUN(test_truncate);
  TEST_RUN(test_reset_compact);
  TEST_RUN(test_torn_tail);
  TEST_RUN(test_corrupt);
  TEST_RUN(test_close_staged);
  signal(SIGXFSZ, SIG_IGN); /* writes past RLIMIT_FSIZE fail with EFBIG instead */
  TEST_RUN(test_write_error);
  model_reset();
  CHECK_OK(uv_loop_close(&loop));
  printf("test_wal: ok\n");
  return 0;
}
