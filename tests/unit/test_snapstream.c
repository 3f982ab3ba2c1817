/* tests/unit/test_snapstream.c: the chunked snapshot writer and reader, on
 * both fileio backends. Files of random content are written in random chunk
 * sizes and read back in other random chunk sizes. */
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>

#include "storage/mvcc.h"
#include "storage/snapshot_stream.h"
#include "test.h"

static uv_loop_t loop;
static unsigned mode_flags;
static bool mode_uring;
static char *dir;

static fileio *open_fio(void) {
  fileio *f = NULL;
  CHECK_OK(fileio_init(&loop, mode_flags, &f));
  CHECK(fileio_uses_uring(f) == mode_uring);
  return f;
}

static void run_loop(void) {
  CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
  CHECK(!uv_loop_alive(&loop));
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

static char *path_in_dir(const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *p = malloc(n);
  CHECK(p);
  snprintf(p, n, "%s/%s", dir, name);
  return p;
}

static bool exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static char *tmp_of(const char *final_path) {
  size_t n = strlen(final_path) + 5;
  char *p = malloc(n);
  CHECK(p);
  snprintf(p, n, "%s.tmp", final_path);
  return p;
}

/* ---- writing a whole buffer through the writer, chunk by chunk ---- */

struct write_job {
  snapstream_writer *w;
  const uint8_t *src;
  size_t total;
  size_t sent;
  size_t chunk_max; /* chunks are 1..chunk_max bytes */
  size_t in_flight; /* size of the pending chunk */
  int status;
  bool finished;
};

static void on_job_finished(void *data, int status) {
  struct write_job *j = data;
  CHECK(!j->finished);
  j->finished = true;
  j->status = status;
}

static void job_next(struct write_job *j);

static void on_job_written(void *data, int status) {
  struct write_job *j = data;
  CHECK_OK(status);
  j->sent += j->in_flight;
  CHECK_EQ_INT(snapstream_writer_size(j->w), j->sent);
  job_next(j);
}

static void job_next(struct write_job *j) {
  if (j->sent == j->total) {
    CHECK_OK(snapstream_writer_finish(j->w, j, on_job_finished));
    return;
  }
  size_t left = j->total - j->sent;
  size_t n = 1 + (size_t)test_rand_below(j->chunk_max);
  j->in_flight = n < left ? n : left;
  CHECK_OK(snapstream_writer_write(j->w, j->src + j->sent, j->in_flight, j, on_job_written));
  /* One outstanding operation per writer. */
  CHECK_ERR(snapstream_writer_write(j->w, j->src, 1, j, on_job_written), CAIRN_EBUSY);
  CHECK_ERR(snapstream_writer_finish(j->w, j, on_job_finished), CAIRN_EBUSY);
}

static void write_file(fileio *f, const char *path, const uint8_t *src, size_t total,
                       size_t chunk_max) {
  struct write_job j = {0};
  j.src = src;
  j.total = total;
  j.chunk_max = chunk_max;
  CHECK_OK(snapstream_writer_open(f, path, &j.w));
  char *tmp = tmp_of(path);
  CHECK(exists(tmp));
  job_next(&j);
  run_loop();
  CHECK(j.finished);
  CHECK_OK(j.status);
  CHECK(!exists(tmp));
  free(tmp);
  struct stat st;
  CHECK(stat(path, &st) == 0);
  CHECK_EQ_INT(st.st_size, total);
}

/* ---- reading a whole file through the reader ---- */

struct read_job {
  snapstream_reader *r;
  uint8_t *dst;
  size_t cap;
  size_t got;
  size_t chunk_bytes;
  int eofs; /* 0-length chunks seen */
  bool failed;
};

static void on_job_chunk(void *data, int status, const uint8_t *chunk, size_t len) {
  struct read_job *j = data;
  CHECK_OK(status);
  CHECK(chunk != NULL);
  if (len == 0) {
    CHECK_EQ_INT(j->got, snapstream_reader_size(j->r));
    if (++j->eofs < 3) {
      /* The end stays the end. */
      CHECK_OK(snapstream_reader_next(j->r, j, on_job_chunk));
    }
    return;
  }
  CHECK_EQ_INT(j->eofs, 0);
  CHECK(j->got + len <= j->cap);
  /* Every chunk is full but the last. */
  size_t left = (size_t)snapstream_reader_size(j->r) - j->got;
  CHECK_EQ_INT(len, left < j->chunk_bytes ? left : j->chunk_bytes);
  memcpy(j->dst + j->got, chunk, len);
  j->got += len;
  CHECK_EQ_INT(snapstream_reader_offset(j->r), j->got);
  CHECK_OK(snapstream_reader_next(j->r, j, on_job_chunk));
  CHECK_ERR(snapstream_reader_next(j->r, j, on_job_chunk), CAIRN_EBUSY);
}

static void read_file(fileio *f, const char *path, const uint8_t *want, size_t total,
                      size_t chunk_bytes) {
  struct read_job j = {0};
  j.cap = total;
  j.dst = malloc(total > 0 ? total : 1);
  CHECK(j.dst);
  j.chunk_bytes = chunk_bytes;
  CHECK_OK(snapstream_reader_open(f, path, chunk_bytes, &j.r));
  CHECK_EQ_INT(snapstream_reader_size(j.r), total);
  CHECK_EQ_INT(snapstream_reader_offset(j.r), 0);
  CHECK_OK(snapstream_reader_next(j.r, &j, on_job_chunk));
  CHECK_ERR(snapstream_reader_next(j.r, &j, on_job_chunk), CAIRN_EBUSY);
  run_loop();
  CHECK_EQ_INT(j.eofs, 3);
  CHECK_EQ_INT(j.got, total);
  CHECK(total == 0 || memcmp(j.dst, want, total) == 0);
  snapstream_reader_close(j.r);
  free(j.dst);
}

static uint8_t *random_bytes(size_t n) {
  uint8_t *b = malloc(n > 0 ? n : 1);
  CHECK(b);
  for (size_t i = 0; i < n; i++) {
    b[i] = (uint8_t)test_rand();
  }
  return b;
}

static void test_roundtrip(void) {
  fileio *f = open_fio();
  char *path = path_in_dir("snap");
  /* Edge sizes, then random ones. */
  size_t sizes[] = {0, 1, 4095, 4096, 4097, SNAPSTREAM_CHUNK_MAX, SNAPSTREAM_CHUNK_MAX + 1, 0, 0};
  size_t n_sizes = sizeof sizes / sizeof sizes[0];
  sizes[n_sizes - 2] = (size_t)test_rand_below(3u * 1024 * 1024);
  sizes[n_sizes - 1] = (size_t)test_rand_below(9u * 1024 * 1024);
  if (test_small()) {
    n_sizes -= 1; /* skip the largest random size */
  }
  for (size_t i = 0; i < n_sizes; i++) {
    size_t total = sizes[i];
    uint8_t *src = random_bytes(total);
    /* Writer chunks: tiny, medium or up to the maximum. */
    size_t wmax[] = {16, 64 * 1024, SNAPSTREAM_CHUNK_MAX};
    size_t chunk_max = wmax[test_rand_below(3)];
    if (total > 256 * 1024 && chunk_max < 4096) {
      chunk_max = 4096; /* keep the number of round trips sane */
    }
    write_file(f, path, src, total, chunk_max);
    /* Read back in chunk sizes: 1..64 KiB, the default, the maximum. */
    size_t rchunks[] = {1 + (size_t)test_rand_below(64 * 1024), 0, SNAPSTREAM_CHUNK_MAX};
    for (size_t k = 0; k < 3; k++) {
      size_t cb = rchunks[k] == 0 ? SNAPSTREAM_CHUNK_DEFAULT : rchunks[k];
      read_file(f, path, src, total, cb);
    }
    CHECK(unlink(path) == 0);
    free(src);
  }
  /* A few tiny reads of a small file: 1-byte chunks. */
  uint8_t *small = random_bytes(300);
  write_file(f, path, small, 300, 7);
  read_file(f, path, small, 300, 1);
  /* finish replaces an existing file at final_path. */
  uint8_t *other = random_bytes(5000);
  write_file(f, path, other, 5000, 1000);
  read_file(f, path, other, 5000, 4096);
  CHECK(unlink(path) == 0);
  free(other);
  free(small);
  free(path);
  close_fio(f);
}

static int calls;
static void on_write_never(void *data, int status) {
  (void)data;
  (void)status;
  calls++;
}
static void on_read_never(void *data, int status, const uint8_t *chunk, size_t len) {
  (void)data;
  (void)status;
  (void)chunk;
  (void)len;
  calls++;
}

static void test_abort(void) {
  fileio *f = open_fio();
  char *path = path_in_dir("aborted");
  char *tmp = tmp_of(path);
  uint8_t *buf = random_bytes(SNAPSTREAM_CHUNK_MAX);

  /* Right after open. */
  snapstream_writer *w;
  CHECK_OK(snapstream_writer_open(f, path, &w));
  CHECK(exists(tmp));
  snapstream_writer_abort(w);
  CHECK(!exists(tmp));
  CHECK(!exists(path));

  /* After some writes. */
  CHECK_OK(snapstream_writer_open(f, path, &w));
  calls = 0;
  CHECK_OK(snapstream_writer_write(w, buf, 1000, NULL, on_write_never));
  run_loop();
  CHECK_EQ_INT(calls, 1);
  CHECK_EQ_INT(snapstream_writer_size(w), 1000);
  snapstream_writer_abort(w);
  CHECK(!exists(tmp));
  CHECK(!exists(path));

  /* With a write pending: its callback never runs. */
  CHECK_OK(snapstream_writer_open(f, path, &w));
  calls = 0;
  CHECK_OK(snapstream_writer_write(w, buf, SNAPSTREAM_CHUNK_MAX, NULL, on_write_never));
  snapstream_writer_abort(w);
  CHECK(!exists(tmp));
  run_loop();
  CHECK_EQ_INT(calls, 0);
  CHECK(!exists(tmp));
  CHECK(!exists(path));

  /* A temporary file already there: EBUSY, and it is left alone. */
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  CHECK(fd >= 0);
  close(fd);
  w = NULL;
  CHECK_ERR(snapstream_writer_open(f, path, &w), CAIRN_EBUSY);
  CHECK(w == NULL);
  CHECK(exists(tmp));
  CHECK(unlink(tmp) == 0);

  free(buf);
  free(tmp);
  free(path);
  close_fio(f);
}

static void test_misuse(void) {
  fileio *f = open_fio();
  char *path = path_in_dir("misuse");
  uint8_t *buf = random_bytes(SNAPSTREAM_CHUNK_MAX + 1);
  snapstream_writer *w;
  CHECK_OK(snapstream_writer_open(f, path, &w));
  calls = 0;
  CHECK_ERR(snapstream_writer_write(w, buf, 0, NULL, on_write_never), CAIRN_EINVAL);
  CHECK_ERR(snapstream_writer_write(w, buf, SNAPSTREAM_CHUNK_MAX + 1, NULL, on_write_never),
            CAIRN_EINVAL);
  CHECK_ERR(snapstream_writer_write(w, NULL, 10, NULL, on_write_never), CAIRN_EINVAL);
  run_loop();
  CHECK_EQ_INT(calls, 0);
  snapstream_writer_abort(w);

  snapstream_reader *r = NULL;
  CHECK_ERR(snapstream_reader_open(f, path, SNAPSTREAM_CHUNK_MAX + 1, &r), CAIRN_EINVAL);
  fprintf(stderr, "(an error message about a missing file is expected next)\n");
  CHECK_ERR(snapstream_reader_open(f, path, 0, &r), CAIRN_EIO);   /* no such file */
  CHECK_ERR(snapstream_reader_open(f, dir, 0, &r), CAIRN_EINVAL); /* a directory */
  CHECK(r == NULL);
  CHECK_ERR(snapstream_writer_open(f, "", &w), CAIRN_EINVAL);

  /* A writer on a closing fileio is refused, and so is a reader's next. */
  write_file(f, path, buf, 100, 50);
  CHECK_OK(snapstream_reader_open(f, path, 10, &r));
  CHECK_OK(snapstream_writer_open(f, path, &w)); /* path.tmp is free again */
  int closed = 0;
  fileio_close(f, on_fio_closed, &closed);
  CHECK_ERR(snapstream_writer_write(w, buf, 10, NULL, on_write_never), CAIRN_ESTOPPED);
  CHECK_ERR(snapstream_writer_finish(w, NULL, on_write_never), CAIRN_ESTOPPED);
  CHECK_ERR(snapstream_reader_next(r, NULL, on_read_never), CAIRN_ESTOPPED);
  snapstream_writer_abort(w);
  snapstream_reader_close(r);
  run_loop();
  CHECK_EQ_INT(closed, 1);
  CHECK_EQ_INT(calls, 0);
  CHECK(unlink(path) == 0);
  free(buf);
  free(path);
}

/* A reader closed with a next pending; a file that shrinks under a reader. */
struct shrink {
  snapstream_reader *r;
  int status;
  int chunks;
};

static void on_shrink_chunk(void *data, int status, const uint8_t *chunk, size_t len) {
  struct shrink *s = data;
  s->chunks++;
  s->status = status;
  if (status != 0) {
    CHECK(chunk == NULL && len == 0);
  }
}

static void test_reader_edges(void) {
  fileio *f = open_fio();
  char *path = path_in_dir("edges");
  uint8_t *buf = random_bytes(100000);
  write_file(f, path, buf, 100000, 100000);

  snapstream_reader *r;
  CHECK_OK(snapstream_reader_open(f, path, 65536, &r));
  calls = 0;
  CHECK_OK(snapstream_reader_next(r, NULL, on_read_never));
  snapstream_reader_close(r);
  run_loop();
  CHECK_EQ_INT(calls, 0);

  struct shrink s = {0};
  CHECK_OK(snapstream_reader_open(f, path, 65536, &s.r));
  CHECK(truncate(path, 70000) == 0);
  CHECK_OK(snapstream_reader_next(s.r, &s, on_shrink_chunk));
  run_loop();
  CHECK_EQ_INT(s.chunks, 1);
  CHECK_OK(s.status);
  fprintf(stderr, "(an error message about a short file is expected next)\n");
  CHECK_OK(snapstream_reader_next(s.r, &s, on_shrink_chunk));
  run_loop();
  CHECK_EQ_INT(s.chunks, 2);
  CHECK_EQ_INT(s.status, CAIRN_EIO);
  /* Sticky. */
  CHECK_ERR(snapstream_reader_next(s.r, &s, on_shrink_chunk), CAIRN_EIO);
  snapstream_reader_close(s.r);
  run_loop();
  CHECK_EQ_INT(s.chunks, 2);

  CHECK(unlink(path) == 0);
  free(buf);
  free(path);
  close_fio(f);
}

/* The kernel cuts a write short at a file size limit: the writer continues
 * the chunk, gets EFBIG, fails with CAIRN_EIO and stays failed. */
static int last_status;
static void on_write_status(void *data, int status) {
  (void)data;
  calls++;
  last_status = status;
}

static void test_short_write(void) {
  enum { LIMIT = 10000, LEN = 25000 };
  fileio *f = open_fio();
  char *path = path_in_dir("short");
  char *tmp = tmp_of(path);
  uint8_t *buf = random_bytes(LEN);
  snapstream_writer *w;
  CHECK_OK(snapstream_writer_open(f, path, &w));
  struct rlimit saved, lim;
  CHECK(getrlimit(RLIMIT_FSIZE, &saved) == 0);
  lim = saved;
  lim.rlim_cur = LIMIT;
  void (*old)(int) = signal(SIGXFSZ, SIG_IGN);
  CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
  calls = 0;
  fprintf(stderr, "(an error message about a file too large is expected next)\n");
  CHECK_OK(snapstream_writer_write(w, buf, LEN, NULL, on_write_status));
  run_loop();
  CHECK(setrlimit(RLIMIT_FSIZE, &saved) == 0);
  signal(SIGXFSZ, old);
  CHECK_EQ_INT(calls, 1);
  CHECK_EQ_INT(last_status, CAIRN_EIO);
  CHECK_EQ_INT(snapstream_writer_size(w), 0);
  struct stat st;
  CHECK(stat(tmp, &st) == 0);
  CHECK_EQ_INT(st.st_size, LIMIT); /* the first, short, part did land */
  CHECK_ERR(snapstream_writer_write(w, buf, 1, NULL, on_write_status), CAIRN_EIO);
  CHECK_ERR(snapstream_writer_finish(w, NULL, on_write_status), CAIRN_EIO);
  snapstream_writer_abort(w);
  CHECK(!exists(tmp));
  CHECK(!exists(path));
  free(buf);
  free(tmp);
  free(path);
  close_fio(f);
}

/* A real snapshot: exported by the store, streamed from a reader into a
 * writer chunk by chunk (as a transfer between members would), imported into
 * a new directory; the copy has the same state. */
struct pump {
  snapstream_reader *r;
  snapstream_writer *w;
  int status;
  bool done;
};

static void pump_read(struct pump *p);

static void on_pump_finished(void *data, int status) {
  struct pump *p = data;
  p->status = status;
  p->done = true;
}

static void on_pump_written(void *data, int status) {
  struct pump *p = data;
  CHECK_OK(status);
  pump_read(p); /* only now may the reader's chunk be replaced */
}

static void on_pump_chunk(void *data, int status, const uint8_t *chunk, size_t len) {
  struct pump *p = data;
  CHECK_OK(status);
  if (len == 0) {
    CHECK_OK(snapstream_writer_finish(p->w, p, on_pump_finished));
    return;
  }
  CHECK_OK(snapstream_writer_write(p->w, chunk, len, p, on_pump_written));
}

static void pump_read(struct pump *p) {
  CHECK_OK(snapstream_reader_next(p->r, p, on_pump_chunk));
}

static void test_mvcc_snapshot_transfer(void) {
  fileio *f = open_fio();
  char *base = test_tmpdir("snapxfer");
  char src_dir[600], dst_dir[600], exported[600], received[600];
  snprintf(src_dir, sizeof src_dir, "%s/store-src", base);
  snprintf(dst_dir, sizeof dst_dir, "%s/store-dst", base);
  snprintf(exported, sizeof exported, "%s/exported.snap", base);
  snprintf(received, sizeof received, "%s/received.snap", base);
  mvcc_store *s;
  CHECK_OK(mvcc_open(src_dir, NULL, &s));
  char key[32], val[64];
  for (uint64_t i = 1; i <= 300; i++) {
    snprintf(key, sizeof key, "key-%04u", (unsigned)test_rand_below(100));
    snprintf(val, sizeof val, "value-%" PRIu64, test_rand());
    struct mvcc_op op = {0};
    struct mvcc_result res;
    op.type = MVCC_OP_PUT;
    op.raft_index = i;
    op.raft_term = 2;
    op.u.put.key = (struct mvcc_bytes){(const uint8_t *)key, strlen(key)};
    op.u.put.value = (struct mvcc_bytes){(const uint8_t *)val, strlen(val)};
    CHECK_OK(mvcc_apply(s, &op, 1, &res));
    CHECK_OK(res.err);
    mvcc_result_free(&res);
  }
  int64_t rev = mvcc_current_revision(s);
  CHECK_OK(mvcc_snapshot_export(s, exported));
  mvcc_close(s);

  struct pump p = {0};
  CHECK_OK(snapstream_reader_open(f, exported, 4096 + (size_t)test_rand_below(65536), &p.r));
  CHECK(snapstream_reader_size(p.r) > 0);
  CHECK_OK(snapstream_writer_open(f, received, &p.w));
  pump_read(&p);
  run_loop();
  CHECK(p.done);
  CHECK_OK(p.status);
  snapstream_reader_close(p.r);

  /* Byte for byte the same file. */
  FILE *a = fopen(exported, "rb"), *b = fopen(received, "rb");
  CHECK(a && b);
  int ca, cb;
  do {
    ca = fgetc(a);
    cb = fgetc(b);
    CHECK_EQ_INT(ca, cb);
  } while (ca != EOF);
  fclose(a);
  fclose(b);

  CHECK_OK(mvcc_snapshot_import(dst_dir, received));
  CHECK_OK(mvcc_open(dst_dir, NULL, &s));
  CHECK_EQ_INT(mvcc_applied_index(s), 300);
  CHECK_EQ_INT(mvcc_current_revision(s), rev);
  struct mvcc_range_req rq = {0};
  rq.key = (struct mvcc_bytes){(const uint8_t *)key, strlen(key)};
  struct mvcc_result res;
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 1);
  CHECK_EQ_INT(res.u.range.kvs[0].value.len, strlen(val));
  CHECK(memcmp(res.u.range.kvs[0].value.data, val, strlen(val)) == 0);
  mvcc_result_free(&res);
  mvcc_close(s);

  test_rmdir(base);
  close_fio(f);
}

static void run_pass(unsigned flags, bool uring) {
  mode_flags = flags;
  mode_uring = uring;
  printf(" backend: %s\n", uring ? "io_uring" : "thread pool");
  TEST_RUN(test_roundtrip);
  TEST_RUN(test_abort);
  TEST_RUN(test_misuse);
  TEST_RUN(test_reader_edges);
  TEST_RUN(test_short_write);
  TEST_RUN(test_mvcc_snapshot_transfer);
}

int main(void) {
  test_seed("test_snapstream");
  CHECK_OK(uv_loop_init(&loop));
  dir = test_tmpdir("snapstream");
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
  CHECK_OK(uv_loop_close(&loop));
  test_rmdir(dir);
  printf("test_snapstream: ok\n");
  return 0;
}
