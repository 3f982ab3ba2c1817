/* storage/wal.c: the raft log's write-ahead file. The format, the
 * durability rules and the threads are described in wal.h. */
#include "storage/wal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cairn_assert.h"
#include "common/crc32c.h"

#define SEG_MAGIC "CAIRNWAL"
#define SEG_VERSION 1u
#define SEG_HDR_BYTES 36u /* magic 8, version 4, zero 4, seq 8, first 8, crc 4 */
#define REC_HDR 32u       /* len 4, type 1, zero 3, index 8, term 8, crc 4, zero 4 */
/* A new segment is zeroed this much per write: the log's writes wait behind
 * one such write at most. */
#define ZERO_CHUNK (256u << 10)
#define BUF_MIN (16u << 10)
#define POOL_BUFS 4               /* write buffers kept for reuse */
#define POOL_BUF_MAX (256u << 10) /* larger ones are freed after their write */

/* ---- little-endian fields ------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) {
    v = v << 8 | p[i];
  }
  return v;
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) {
    v = v << 8 | p[i];
  }
  return v;
}

static uint64_t round_up(uint64_t v, uint64_t to) {
  return (v + to - 1) / to * to;
}

static size_t rec_bytes(size_t len) {
  return REC_HDR + (size_t)round_up(len, 8);
}

/* ---- state ----------------------------------------------------------------- */

/* A used segment. The last one is the one being written (fd open). */
struct seg {
  uint64_t seq;
  uint64_t first; /* index of its first record */
  uint64_t last;  /* first - 1 while it has none */
  uint64_t size;  /* file length */
  uint64_t end;   /* next write offset, block aligned */
  int fd;         /* -1 unless it is the last segment */
};

enum op_kind { OP_WRITE, OP_TRUNCATE, OP_RESET, OP_COMPACT };

struct op {
  struct op *next;
  enum op_kind kind;
  uint64_t arg;         /* TRUNCATE, RESET: index; COMPACT: upto */
  uint8_t *buf;         /* WRITE: encoded records (block-aligned memory) */
  size_t len;           /* bytes of records */
  size_t cap;           /* bytes allocated, a multiple of WAL_BLOCK */
  uint64_t first, last; /* WRITE: indexes of its records */
  uint64_t req_seq;     /* WRITE: the last append request it completes */
};

struct req {
  struct req *next;
  uint64_t seq;
  wal_append_cb cb;
  void *data;
};

struct wal {
  uv_loop_t *loop;
  char dir[PATH_MAX];
  uint64_t seg_bytes;

  /* Loop thread only. */
  uint64_t first, last, next; /* the log as the appends see it */
  struct req *reqs, *reqs_tail;
  uint64_t req_seq;
  uv_async_t async;
  bool closing;
  void (*close_cb)(void *);
  void *close_data;
  void (*idle_cb)(void *, int); /* wal_after_appends() */
  void *idle_data;

  /* Shared, under mu. */
  pthread_mutex_t mu;
  pthread_cond_t cv_work;  /* the writer: ops staged, or stop */
  pthread_cond_t cv_spare; /* the writer: a spare (or its error) is ready */
  pthread_cond_t cv_prep;  /* the preparer: a spare is wanted, or stop */
  struct op *ops, *ops_tail;
  bool stop;
  bool busy; /* the writer is processing ops outside mu */
  uint64_t done_seq, ok_seq;
  int err; /* sticky: set by the first failed write */
  bool spare_ready;
  uint64_t spare_seq;
  int spare_err;
  uint64_t next_seq;
  uint8_t *pool[POOL_BUFS]; /* write buffers for reuse */
  size_t pool_cap[POOL_BUFS];
  unsigned npool;

  /* The writer's (the thread processing ops; at open and in
   * wal_append_sync(), the loop thread). */
  struct seg *segs;
  size_t nsegs, segs_cap;
  int dir_fd;
  bool direct;
  uint8_t *hdr_block; /* one aligned block */

  pthread_t writer, preparer;
  bool threads;
};

static int errno_code(int e) {
  return e == ENOSPC || e == EDQUOT ? CAIRN_ENOSPACE : CAIRN_EIO;
}

static void seg_path(const wal *w, uint64_t seq, char *out, size_t cap) {
  snprintf(out, cap, "%s/%016" PRIx64 ".wal", w->dir, seq);
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t k = pwrite(fd, p, len, (off_t)off);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -errno;
    }
    p += k;
    len -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

static int pread_all(int fd, void *buf, size_t len, uint64_t off) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t k = pread(fd, p, len, (off_t)off);
    if (k < 0) {
      if (errno == EINTR) {
        continue;
      }
      return -errno;
    }
    if (k == 0) {
      return -EIO;
    }
    p += k;
    len -= (size_t)k;
    off += (uint64_t)k;
  }
  return 0;
}

/* Opens a segment for writing: O_DSYNC, and O_DIRECT where allowed. */
static int open_for_write(wal *w, const char *path) {
  int fd = -1;
  if (w->direct) {
    fd = open(path, O_RDWR | O_DSYNC | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL) {
      w->direct = false;
    }
  }
  if (fd < 0 && !w->direct) {
    fd = open(path, O_RDWR | O_DSYNC | O_CLOEXEC);
  }
  return fd < 0 ? -errno : fd;
}

/* pwrite_all on a segment descriptor; a file system that refuses O_DIRECT
 * writes (EINVAL) gets them buffered from then on (still O_DSYNC). */
static int seg_write(wal *w, int fd, const void *buf, size_t len, uint64_t off) {
  int rc = pwrite_all(fd, buf, len, off);
  if (rc == -EINVAL && w->direct) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) {
      w->direct = false;
      rc = pwrite_all(fd, buf, len, off);
    }
  }
  return rc;
}

static int sync_dir(wal *w) {
  return fsync(w->dir_fd) == 0 ? 0 : -errno;
}

/* ---- scanning ------------------------------------------------------------- */

struct scan {
  uint64_t last; /* last good index (first - 1 if none) */
  uint64_t stop; /* offset where the records end */
  bool torn;     /* stopped on a bad record, not on zeros */
};

/* fn: called per record with its offset; nonzero stops the scan. */
typedef int (*rec_fn)(void *ctx, uint64_t off, const struct wal_record *r);

static int scan_seg(int fd, uint64_t size, uint64_t first, rec_fn fn, void *ctx, struct scan *s) {
  s->last = first - 1;
  s->stop = WAL_BLOCK;
  s->torn = false;
  if (size <= WAL_BLOCK) {
    return 0;
  }
  const uint8_t *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) {
    return -errno;
  }
  madvise((void *)m, size, MADV_SEQUENTIAL);
  uint64_t pos = WAL_BLOCK;
  uint64_t expect = first;
  while (pos + 8 <= size) {
    const uint8_t *h = m + pos;
    if (h[4] == 0) { /* no record here: padding, or the end */
      if (pos % WAL_BLOCK == 0) {
        break;
      }
      pos = round_up(pos, WAL_BLOCK);
      continue;
    }
    uint32_t len = get32(h);
    bool ok = pos + REC_HDR <= size && len <= WAL_RECORD_MAX && pos + rec_bytes(len) <= size &&
              h[5] == 0 && h[6] == 0 && h[7] == 0;
    if (ok) {
      uint32_t crc = crc32c_update(crc32c_update(0, h, 24), h + REC_HDR, len);
      ok = get64(h + 8) == expect && get32(h + 24) == crc && get32(h + 28) == 0;
    }
    if (!ok) {
      s->torn = true;
      break;
    }
    struct wal_record r = {
        .index = expect, .term = get64(h + 16), .type = h[4], .data = h + REC_HDR, .len = len};
    s->last = expect;
    if (fn != NULL && fn(ctx, pos, &r) != 0) {
      break;
    }
    expect++;
    pos += rec_bytes(len);
  }
  s->stop = pos;
  munmap((void *)m, size);
  return 0;
}

/* A ZERO_CHUNK buffer of zeros, page aligned, mapped for the call and
 * unmapped after: the heap (which keeps freed memory, server/main.c) does
 * not grow by it. NULL when out of memory. */
static uint8_t *chunk_alloc(void) {
  void *p = mmap(NULL, ZERO_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void chunk_free(uint8_t *p) {
  if (p != NULL) {
    munmap(p, ZERO_CHUNK);
  }
}

/* Zeroes [from, size) of a segment wherever it is not zero already, then
 * syncs: what follows the last good record must never read as records. */
static int zero_tail(const char *path, uint64_t from, uint64_t size) {
  if (from >= size) {
    return 0;
  }
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return -errno;
  }
  uint8_t *buf = chunk_alloc();
  int rc = buf == NULL ? -ENOMEM : 0;
  bool wrote = false;
  for (uint64_t off = from; rc == 0 && off < size;) {
    size_t n = (size_t)(size - off < ZERO_CHUNK ? size - off : ZERO_CHUNK);
    rc = pread_all(fd, buf, n, off);
    bool dirty = false;
    for (size_t i = 0; rc == 0 && i < n && !dirty; i++) {
      dirty = buf[i] != 0;
    }
    if (rc == 0 && dirty) {
      memset(buf, 0, n);
      rc = pwrite_all(fd, buf, n, off);
      wrote = true;
    }
    off += n;
  }
  if (rc == 0 && wrote && fdatasync(fd) != 0) {
    rc = -errno;
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  chunk_free(buf);
  return rc;
}

/* ---- segments --------------------------------------------------------------- */

static int push_seg(wal *w, struct seg s) {
  if (w->nsegs == w->segs_cap) {
    size_t cap = w->segs_cap ? w->segs_cap * 2 : 8;
    struct seg *n = realloc(w->segs, cap * sizeof *n);
    if (n == NULL) {
      return -ENOMEM;
    }
    w->segs = n;
    w->segs_cap = cap;
  }
  w->segs[w->nsegs++] = s;
  return 0;
}

static int delete_seg(wal *w, struct seg *s) {
  char path[PATH_MAX + 32];
  seg_path(w, s->seq, path, sizeof path);
  if (s->fd >= 0) {
    close(s->fd);
    s->fd = -1;
  }
  return unlink(path) == 0 || errno == ENOENT ? 0 : -errno;
}

/* Creates segment seq: size bytes of zeros, synced with its directory entry.
 * Direct writes where allowed, so that the zeros do not pass through (and
 * stay in) the page cache. stop (may be NULL) aborts between chunks. */
static int make_segment(wal *w, uint64_t seq, uint64_t size, const bool *stop) {
  char path[PATH_MAX + 32];
  seg_path(w, seq, path, sizeof path);
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_DIRECT, 0600);
  if (fd < 0 && errno == EINVAL) {
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  }
  if (fd < 0) {
    return -errno;
  }
  void *zero = chunk_alloc(); /* zeros: fresh anonymous memory */
  int rc = zero != NULL ? 0 : -ENOMEM;
  for (uint64_t off = 0; rc == 0 && off < size; off += ZERO_CHUNK) {
    if (stop != NULL && __atomic_load_n(stop, __ATOMIC_RELAXED)) {
      rc = -ECANCELED;
      break;
    }
    size_t n = (size_t)(size - off < ZERO_CHUNK ? size - off : ZERO_CHUNK);
    rc = pwrite_all(fd, zero, n, off);
    if (rc == -EINVAL) {
      int fl = fcntl(fd, F_GETFL);
      if (fl >= 0 && fcntl(fd, F_SETFL, fl & ~O_DIRECT) == 0) {
        rc = pwrite_all(fd, zero, n, off);
      }
    }
  }
  chunk_free(zero);
  if (rc == 0 && fdatasync(fd) != 0) {
    rc = -errno;
  }
  close(fd);
  if (rc == 0) {
    rc = sync_dir(w);
  }
  if (rc != 0) {
    unlink(path);
  }
  return rc;
}

/* Takes the spare segment (waiting for the preparer) and makes it the one
 * being written, with first as its first index. A write larger than a spare
 * gets a segment of its own size, made here. */
static int activate_segment(wal *w, uint64_t first, uint64_t need) {
  uint64_t seq = 0;
  uint64_t size = w->seg_bytes;
  int rc = 0;
  if (need + WAL_BLOCK > w->seg_bytes) {
    size = WAL_BLOCK + round_up(need, WAL_BLOCK);
    pthread_mutex_lock(&w->mu);
    seq = w->next_seq++;
    pthread_mutex_unlock(&w->mu);
    rc = make_segment(w, seq, size, NULL);
  } else {
    pthread_mutex_lock(&w->mu);
    pthread_cond_signal(&w->cv_prep);
    while (!w->spare_ready && w->spare_err == 0 && !w->stop) {
      pthread_cond_wait(&w->cv_spare, &w->mu);
    }
    if (w->stop && !w->spare_ready && w->spare_err == 0) {
      rc = -ECANCELED;
    } else if (w->spare_ready) {
      seq = w->spare_seq;
      w->spare_ready = false;
    } else {
      rc = w->spare_err;
      w->spare_err = 0;
    }
    pthread_cond_signal(&w->cv_prep); /* make the next one */
    pthread_mutex_unlock(&w->mu);
  }
  if (rc != 0) {
    return rc;
  }
  char path[PATH_MAX + 32];
  seg_path(w, seq, path, sizeof path);
  int fd = open_for_write(w, path);
  if (fd < 0) {
    return fd;
  }
  uint8_t *h = w->hdr_block;
  memset(h, 0, WAL_BLOCK);
  memcpy(h, SEG_MAGIC, 8);
  put32(h + 8, SEG_VERSION);
  put64(h + 16, seq);
  put64(h + 24, first);
  put32(h + 32, crc32c_update(0, h, 32));
  rc = seg_write(w, fd, h, WAL_BLOCK, 0);
  if (rc == 0) {
    struct seg s = {
        .seq = seq, .first = first, .last = first - 1, .size = size, .end = WAL_BLOCK, .fd = fd};
    rc = push_seg(w, s);
  }
  if (rc != 0) {
    close(fd);
    return rc;
  }
  if (w->nsegs >= 2 && w->segs[w->nsegs - 2].fd >= 0) {
    close(w->segs[w->nsegs - 2].fd);
    w->segs[w->nsegs - 2].fd = -1;
  }
  return 0;
}

/* ---- the writer's operations ----------------------------------------------- */

static int do_write(wal *w, struct op *op) {
  size_t padded = (size_t)round_up(op->len, WAL_BLOCK);
  struct seg *s = w->nsegs > 0 ? &w->segs[w->nsegs - 1] : NULL;
  if (s == NULL || s->last + 1 != op->first || s->end + padded > s->size) {
    int rc = activate_segment(w, op->first, padded);
    if (rc != 0) {
      return rc;
    }
    s = &w->segs[w->nsegs - 1];
  } else if (s->fd < 0) { /* a truncation made an older segment the last */
    char path[PATH_MAX + 32];
    seg_path(w, s->seq, path, sizeof path);
    s->fd = open_for_write(w, path);
    if (s->fd < 0) {
      return s->fd;
    }
  }
  memset(op->buf + op->len, 0, padded - op->len);
  int rc = seg_write(w, s->fd, op->buf, padded, s->end);
  if (rc == 0) {
    s->end += padded;
    s->last = op->last;
  }
  return rc;
}

struct find_ctx {
  uint64_t index;
  uint64_t off;
};

static int find_rec(void *ctx, uint64_t off, const struct wal_record *r) {
  struct find_ctx *f = ctx;
  if (r->index == f->index) {
    f->off = off;
    return 1;
  }
  return 0;
}

/* Drops the records >= index: later segments go first (so that a crash
 * midway leaves a shorter, contiguous log), then the tail of the segment
 * that holds index is zeroed. */
static int do_truncate(wal *w, uint64_t index) {
  int rc = 0;
  bool deleted = false;
  while (rc == 0 && w->nsegs > 0 && w->segs[w->nsegs - 1].first >= index) {
    rc = delete_seg(w, &w->segs[w->nsegs - 1]);
    w->nsegs--;
    deleted = true;
  }
  if (rc == 0 && deleted) {
    rc = sync_dir(w);
  }
  if (rc != 0 || w->nsegs == 0 || w->segs[w->nsegs - 1].last < index) {
    return rc;
  }
  struct seg *s = &w->segs[w->nsegs - 1];
  char path[PATH_MAX + 32];
  seg_path(w, s->seq, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return -errno;
  }
  struct find_ctx f = {.index = index, .off = 0};
  struct scan sc;
  rc = scan_seg(fd, s->size, s->first, find_rec, &f, &sc);
  close(fd);
  if (rc == 0 && f.off == 0) {
    rc = -EIO; /* the record must be there */
  }
  if (rc == 0) {
    rc = zero_tail(path, f.off, s->end);
  }
  if (rc == 0 && s->fd < 0) {
    s->fd = open_for_write(w, path);
    rc = s->fd < 0 ? s->fd : 0;
  }
  if (rc == 0) {
    s->last = index - 1;
    s->end = round_up(f.off, WAL_BLOCK);
  }
  return rc;
}

static int do_reset(wal *w) {
  int rc = 0;
  size_t i = 0;
  for (; i < w->nsegs && rc == 0; i++) { /* oldest first: a crash leaves a suffix */
    rc = delete_seg(w, &w->segs[i]);
  }
  if (i > 0 && i < w->nsegs) {
    memmove(w->segs, w->segs + i, (w->nsegs - i) * sizeof *w->segs);
  }
  w->nsegs -= i;
  return rc == 0 ? sync_dir(w) : rc;
}

static int do_compact(wal *w, uint64_t upto) {
  int rc = 0;
  size_t i = 0;
  for (; i + 1 < w->nsegs && w->segs[i].last <= upto && rc == 0; i++) {
    rc = delete_seg(w, &w->segs[i]);
  }
  if (i > 0 && i < w->nsegs) {
    memmove(w->segs, w->segs + i, (w->nsegs - i) * sizeof *w->segs);
  }
  w->nsegs -= i;
  return rc;
}

static int run_op(wal *w, struct op *op) {
  switch (op->kind) {
    case OP_WRITE:
      return do_write(w, op);
    case OP_TRUNCATE:
      return do_truncate(w, op->arg);
    case OP_RESET:
      return do_reset(w);
    case OP_COMPACT:
      return do_compact(w, op->arg);
  }
  return -EINVAL;
}

static void free_ops(struct op *op) {
  while (op != NULL) {
    struct op *next = op->next;
    free(op->buf);
    free(op);
    op = next;
  }
}

/* Runs a list of ops (the caller has claimed the writer role: busy). */
static void run_ops(wal *w, struct op *list) {
  for (struct op *op = list; op != NULL; op = op->next) {
    pthread_mutex_lock(&w->mu);
    int err = w->err;
    pthread_mutex_unlock(&w->mu);
    int rc = err != 0 ? err : run_op(w, op);
    if (rc == -ECANCELED) {
      return; /* closing while waiting for a spare: the rest is canceled */
    }
    if (rc != 0 && err == 0) {
      fprintf(stderr, "cairn: raft log %s: %s\n", w->dir, strerror(-rc));
    }
    pthread_mutex_lock(&w->mu);
    if (rc != 0 && w->err == 0) {
      w->err = rc == -ENOMEM ? CAIRN_ENOMEM : errno_code(-rc);
    }
    if (op->kind == OP_WRITE) {
      w->done_seq = op->req_seq;
      if (rc == 0) {
        w->ok_seq = op->req_seq;
      }
    }
    pthread_mutex_unlock(&w->mu);
  }
}

/* Frees written ops, keeping small buffers for reuse; mu not held. */
static void recycle_ops(wal *w, struct op *op) {
  pthread_mutex_lock(&w->mu);
  for (struct op *o = op; o != NULL; o = o->next) {
    if (o->buf != NULL && o->cap <= POOL_BUF_MAX && w->npool < POOL_BUFS) {
      w->pool[w->npool] = o->buf;
      w->pool_cap[w->npool++] = o->cap;
      o->buf = NULL;
    }
  }
  pthread_mutex_unlock(&w->mu);
  free_ops(op);
}

static void *writer_main(void *arg) {
  wal *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->stop && w->ops == NULL) {
      pthread_cond_wait(&w->cv_work, &w->mu);
    }
    if (w->stop) {
      break;
    }
    struct op *list = w->ops;
    w->ops = w->ops_tail = NULL;
    w->busy = true;
    pthread_mutex_unlock(&w->mu);
    run_ops(w, list);
    uv_async_send(&w->async);
    recycle_ops(w, list);
    pthread_mutex_lock(&w->mu);
    w->busy = false;
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

static void *preparer_main(void *arg) {
  wal *w = arg;
  pthread_mutex_lock(&w->mu);
  for (;;) {
    while (!w->stop && (w->spare_ready || w->spare_err != 0)) {
      pthread_cond_wait(&w->cv_prep, &w->mu);
    }
    if (w->stop) {
      break;
    }
    uint64_t seq = w->next_seq++;
    pthread_mutex_unlock(&w->mu);
    int rc = make_segment(w, seq, w->seg_bytes, &w->stop);
    pthread_mutex_lock(&w->mu);
    if (rc == 0) {
      w->spare_ready = true;
      w->spare_seq = seq;
    } else if (!w->stop) {
      fprintf(stderr, "cairn: raft log %s: new segment: %s\n", w->dir, strerror(-rc));
      w->spare_err = rc;
    }
    pthread_cond_broadcast(&w->cv_spare);
  }
  pthread_mutex_unlock(&w->mu);
  return NULL;
}

/* ---- the loop side ---------------------------------------------------------- */

/* Runs the callbacks of the appends the writer has finished, in order. */
static void deliver(wal *w, int rest_status) {
  pthread_mutex_lock(&w->mu);
  uint64_t done = w->done_seq, ok = w->ok_seq;
  int err = w->err != 0 ? w->err : CAIRN_EIO;
  pthread_mutex_unlock(&w->mu);
  while (w->reqs != NULL && (w->reqs->seq <= done || rest_status != 0)) {
    struct req *r = w->reqs;
    w->reqs = r->next;
    if (w->reqs == NULL) {
      w->reqs_tail = NULL;
    }
    int status = r->seq <= ok ? 0 : r->seq <= done ? err : rest_status;
    r->cb(r->data, status);
    free(r);
  }
  if (w->reqs == NULL && w->idle_cb != NULL) {
    void (*cb)(void *, int) = w->idle_cb;
    w->idle_cb = NULL;
    cb(w->idle_data, rest_status != 0 ? CAIRN_ESTOPPED : 0);
  }
}

bool wal_idle(const wal *w) {
  return w->reqs == NULL;
}

void wal_after_appends(wal *w, void (*cb)(void *data, int status), void *data) {
  CAIRN_ASSERT(w->reqs != NULL && w->idle_cb == NULL);
  w->idle_cb = cb;
  w->idle_data = data;
}

static void on_async(uv_async_t *a) {
  deliver(a->data, 0);
}

static struct op *new_op(enum op_kind kind, uint64_t arg) {
  struct op *op = calloc(1, sizeof *op);
  if (op != NULL) {
    op->kind = kind;
    op->arg = arg;
  }
  return op;
}

/* Appends an op to the staged list; mu held. */
static void stage(wal *w, struct op *op) {
  if (w->ops_tail != NULL) {
    w->ops_tail->next = op;
  } else {
    w->ops = op;
  }
  w->ops_tail = op;
  pthread_cond_signal(&w->cv_work);
}

/* Gives op room for need bytes; mu held (the buffer pool). A new op takes
 * a pooled buffer when one is large enough. */
static int ensure_cap(wal *w, struct op *op, size_t need) {
  if (op->cap >= need) {
    return 0;
  }
  if (op->cap == 0) {
    for (unsigned i = 0; i < w->npool; i++) {
      if (w->pool_cap[i] >= need) {
        op->buf = w->pool[i];
        op->cap = w->pool_cap[i];
        w->npool--;
        w->pool[i] = w->pool[w->npool];
        w->pool_cap[i] = w->pool_cap[w->npool];
        return 0;
      }
    }
  }
  size_t cap = op->cap ? op->cap : BUF_MIN;
  while (cap < need) {
    cap *= 2;
  }
  void *buf;
  if (posix_memalign(&buf, WAL_BLOCK, cap) != 0) {
    return CAIRN_ENOMEM;
  }
  if (op->len > 0) {
    memcpy(buf, op->buf, op->len);
  }
  free(op->buf);
  op->buf = buf;
  op->cap = cap;
  return 0;
}

static void encode(uint8_t *p, const struct wal_record *r) {
  memset(p, 0, REC_HDR);
  put32(p, (uint32_t)r->len);
  p[4] = r->type;
  put64(p + 8, r->index);
  put64(p + 16, r->term);
  if (r->len > 0) {
    memcpy(p + REC_HDR, r->data, r->len);
  }
  put32(p + 24, crc32c_update(crc32c_update(0, p, 24), p + REC_HDR, r->len));
  memset(p + REC_HDR + r->len, 0, rec_bytes(r->len) - REC_HDR - r->len);
}

/* recs continue the log (in sequence, type not 0, not too large). */
static int check_records(const wal *w, const struct wal_record *recs, size_t n) {
  if (n == 0) {
    return CAIRN_EINVAL;
  }
  uint64_t expect = w->last != 0 ? w->last + 1 : w->next != 0 ? w->next : recs[0].index;
  if (expect == 0) {
    return CAIRN_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (recs[i].index != expect + i || recs[i].type == 0) {
      return CAIRN_EINVAL;
    }
    if (recs[i].len > WAL_RECORD_MAX) {
      return CAIRN_ETOO_LARGE;
    }
  }
  return 0;
}

/* Encodes recs into staged write ops (mu held), each at most WAL_WRITE_BYTES
 * unless one record is larger. list/tail: where new ops go. */
static int encode_into(wal *w, struct op **head, struct op **tail, const struct wal_record *recs,
                       size_t n, uint64_t req_seq) {
  for (size_t i = 0; i < n; i++) {
    size_t b = rec_bytes(recs[i].len);
    struct op *op = *tail;
    if (op == NULL || op->kind != OP_WRITE || (op->len > 0 && op->len + b > WAL_WRITE_BYTES)) {
      op = new_op(OP_WRITE, 0);
      if (op == NULL) {
        return CAIRN_ENOMEM;
      }
      op->first = recs[i].index;
      if (*tail != NULL) {
        (*tail)->next = op;
      } else {
        *head = op;
      }
      *tail = op;
    }
    if (ensure_cap(w, op, (size_t)round_up(op->len + b, WAL_BLOCK)) != 0) {
      return CAIRN_ENOMEM;
    }
    encode(op->buf + op->len, &recs[i]);
    op->len += b;
    op->last = recs[i].index;
    op->req_seq = req_seq;
  }
  return 0;
}

int wal_append(wal *w, const struct wal_record *recs, size_t n, wal_append_cb cb, void *data) {
  if (w->closing) {
    return CAIRN_ESTOPPED;
  }
  int rc = check_records(w, recs, n);
  if (rc != 0) {
    return rc;
  }
  struct req *r = malloc(sizeof *r);
  if (r == NULL) {
    return CAIRN_ENOMEM;
  }
  pthread_mutex_lock(&w->mu);
  if (w->err != 0) {
    rc = CAIRN_EIO;
  } else {
    /* Appends go into the last staged write while the writer is busy with
     * the one before: that is where batches come from. */
    struct op *head = NULL, *tail = w->ops_tail;
    struct op *before = tail;
    rc = encode_into(w, &head, &tail, recs, n, w->req_seq + 1);
    if (rc == 0) {
      if (head != NULL) {
        if (before != NULL) {
          before->next = head;
        } else {
          w->ops = head;
        }
      }
      w->ops_tail = tail;
      pthread_cond_signal(&w->cv_work);
    } else {
      /* Out of memory halfway: the new ops are dropped, but records may
       * have gone into the op that was staged last, so the log fails
       * (every later append is refused) rather than write a hole. */
      free_ops(before != NULL ? before->next : head);
      if (before != NULL) {
        before->next = NULL;
      } else {
        w->ops = NULL;
      }
      w->ops_tail = before;
      w->err = CAIRN_ENOMEM;
    }
  }
  pthread_mutex_unlock(&w->mu);
  if (rc != 0) {
    free(r);
    return rc;
  }
  r->seq = ++w->req_seq;
  r->cb = cb;
  r->data = data;
  r->next = NULL;
  if (w->reqs_tail != NULL) {
    w->reqs_tail->next = r;
  } else {
    w->reqs = r;
  }
  w->reqs_tail = r;
  if (w->last == 0) {
    w->first = recs[0].index;
  }
  w->last = recs[n - 1].index;
  return 0;
}

static int stage_op(wal *w, enum op_kind kind, uint64_t arg) {
  if (w->closing) {
    return CAIRN_ESTOPPED;
  }
  struct op *op = new_op(kind, arg);
  if (op == NULL) {
    return CAIRN_ENOMEM;
  }
  pthread_mutex_lock(&w->mu);
  stage(w, op);
  pthread_mutex_unlock(&w->mu);
  return 0;
}

int wal_truncate(wal *w, uint64_t index) {
  if (index == 0) {
    return CAIRN_EINVAL;
  }
  int rc = stage_op(w, OP_TRUNCATE, index);
  if (rc == 0) {
    if (w->last != 0 && index <= w->first) {
      w->first = w->last = 0;
    } else if (w->last != 0 && index <= w->last) {
      w->last = index - 1;
    }
    w->next = index;
  }
  return rc;
}

int wal_reset(wal *w, uint64_t next_index) {
  if (next_index == 0) {
    return CAIRN_EINVAL;
  }
  int rc = stage_op(w, OP_RESET, next_index);
  if (rc == 0) {
    w->first = w->last = 0;
    w->next = next_index;
  }
  return rc;
}

int wal_compact(wal *w, uint64_t upto) {
  return stage_op(w, OP_COMPACT, upto);
}

uint64_t wal_first_index(const wal *w) {
  return w->last != 0 ? w->first : 0;
}

uint64_t wal_last_index(const wal *w) {
  return w->last;
}

/* Claims the writer role on the calling thread (nothing staged or running). */
static void claim(wal *w) {
  pthread_mutex_lock(&w->mu);
  CAIRN_ASSERT(!w->busy && w->ops == NULL);
  w->busy = true;
  pthread_mutex_unlock(&w->mu);
}

static void unclaim(wal *w) {
  pthread_mutex_lock(&w->mu);
  w->busy = false;
  pthread_mutex_unlock(&w->mu);
}

int wal_append_sync(wal *w, const struct wal_record *recs, size_t n) {
  int rc = check_records(w, recs, n);
  if (rc != 0) {
    return rc;
  }
  claim(w);
  struct op *head = NULL, *tail = NULL;
  pthread_mutex_lock(&w->mu);
  rc = encode_into(w, &head, &tail, recs, n, 0);
  pthread_mutex_unlock(&w->mu);
  for (struct op *op = head; rc == 0 && op != NULL; op = op->next) {
    rc = do_write(w, op);
    if (rc < 0 && rc > -4096) {
      fprintf(stderr, "cairn: raft log %s: %s\n", w->dir, strerror(-rc));
      rc = rc == -ENOMEM ? CAIRN_ENOMEM : errno_code(-rc);
    }
  }
  free_ops(head);
  unclaim(w);
  if (rc == 0) {
    if (w->last == 0) {
      w->first = recs[0].index;
    }
    w->last = recs[n - 1].index;
  }
  return rc;
}

struct collect {
  struct wal_record *recs;
  uint8_t *data;
  size_t n, bytes;
};

static int count_rec(void *ctx, uint64_t off, const struct wal_record *r) {
  (void)off;
  struct collect *c = ctx;
  c->n++;
  c->bytes += r->len;
  return 0;
}

static int copy_rec(void *ctx, uint64_t off, const struct wal_record *r) {
  (void)off;
  struct collect *c = ctx;
  struct wal_record *d = &c->recs[c->n++];
  *d = *r;
  d->data = c->data;
  if (r->len > 0) {
    memcpy(c->data, r->data, r->len);
  }
  c->data += r->len;
  return 0;
}

static int scan_all(wal *w, rec_fn fn, void *ctx) {
  for (size_t i = 0; i < w->nsegs; i++) {
    char path[PATH_MAX + 32];
    seg_path(w, w->segs[i].seq, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return CAIRN_EIO;
    }
    struct scan sc;
    int rc = scan_seg(fd, w->segs[i].size, w->segs[i].first, fn, ctx, &sc);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    if (rc != 0 || sc.last != w->segs[i].last) {
      return CAIRN_EIO;
    }
  }
  return 0;
}

int wal_read_all(wal *w, struct wal_record **out, size_t *n) {
  claim(w);
  struct collect c = {0};
  int rc = scan_all(w, count_rec, &c);
  uint8_t *block = NULL;
  if (rc == 0) {
    block = malloc(c.n * sizeof(struct wal_record) + c.bytes + 1);
    rc = block == NULL ? CAIRN_ENOMEM : 0;
  }
  if (rc == 0) {
    struct collect d = {.recs = (struct wal_record *)(void *)block,
                        .data = block + c.n * sizeof(struct wal_record)};
    rc = scan_all(w, copy_rec, &d);
    if (rc == 0 && d.n != c.n) {
      rc = CAIRN_EIO;
    }
  }
  unclaim(w);
  if (rc != 0) {
    free(block);
    return rc;
  }
  *out = (struct wal_record *)(void *)block;
  *n = c.n;
  return 0;
}

/* ---- open and close ---------------------------------------------------------- */

struct found {
  uint64_t seq;
  uint64_t size;
};

static int cmp_found(const void *a, const void *b) {
  uint64_t x = ((const struct found *)a)->seq, y = ((const struct found *)b)->seq;
  return x < y ? -1 : x > y;
}

static int list_segments(wal *w, struct found **out, size_t *n) {
  DIR *d = opendir(w->dir);
  if (d == NULL) {
    return -errno;
  }
  struct found *f = NULL;
  size_t cnt = 0, cap = 0;
  struct dirent *e;
  int rc = 0;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    char *endp;
    if (strlen(e->d_name) != 20 || strcmp(e->d_name + 16, ".wal") != 0) {
      continue;
    }
    uint64_t seq = strtoull(e->d_name, &endp, 16);
    if (endp != e->d_name + 16) {
      continue;
    }
    struct stat st;
    if (fstatat(dirfd(d), e->d_name, &st, 0) != 0) {
      rc = -errno;
      break;
    }
    if (cnt == cap) {
      cap = cap ? cap * 2 : 16;
      struct found *nf = realloc(f, cap * sizeof *nf);
      if (nf == NULL) {
        rc = -ENOMEM;
        break;
      }
      f = nf;
    }
    f[cnt++] = (struct found){.seq = seq, .size = (uint64_t)st.st_size};
  }
  closedir(d);
  if (rc != 0) {
    free(f);
    return rc;
  }
  if (cnt > 0) {
    qsort(f, cnt, sizeof *f, cmp_found);
  }
  *out = f;
  *n = cnt;
  return 0;
}

/* Reads a segment's header: 1 used (first set), 0 unused (all zeros), -1
 * not a valid header. */
static int read_header(wal *w, const char *path, uint64_t seq, uint64_t *first) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return -1;
  }
  uint8_t *h = w->hdr_block;
  int rc = pread_all(fd, h, WAL_BLOCK, 0);
  close(fd);
  if (rc != 0) {
    return -1;
  }
  bool zero = true;
  for (size_t i = 0; i < WAL_BLOCK && zero; i++) {
    zero = h[i] == 0;
  }
  if (zero) {
    return 0;
  }
  if (memcmp(h, SEG_MAGIC, 8) != 0 || get32(h + 8) != SEG_VERSION || get64(h + 16) != seq ||
      get32(h + 32) != crc32c_update(0, h, 32) || get64(h + 24) == 0) {
    return -1;
  }
  *first = get64(h + 24);
  return 1;
}

/* A used segment found at open. */
struct used {
  uint64_t seq, first, size;
};

static int cmp_used(const void *a, const void *b) {
  const struct used *x = a, *y = b;
  if (x->first != y->first) {
    return x->first < y->first ? -1 : 1;
  }
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Segments are ordered by their first index (a segment made for one large
 * write may get a later sequence number than the spare used after it). */
static int load(wal *w) {
  struct found *f = NULL;
  size_t n = 0;
  int rc = list_segments(w, &f, &n);
  if (rc != 0) {
    fprintf(stderr, "cairn: raft log %s: %s\n", w->dir, strerror(-rc));
    return CAIRN_EIO;
  }
  w->next_seq = n > 0 ? f[n - 1].seq + 1 : 1;
  struct used *u = calloc(n ? n : 1, sizeof *u);
  if (u == NULL) {
    free(f);
    return CAIRN_ENOMEM;
  }
  size_t nu = 0;
  char path[PATH_MAX + 32];
  for (size_t i = 0; i < n && rc == 0; i++) {
    seg_path(w, f[i].seq, path, sizeof path);
    uint64_t first = 0;
    int kind = read_header(w, path, f[i].seq, &first);
    if (kind == 1) {
      u[nu++] = (struct used){.seq = f[i].seq, .first = first, .size = f[i].size};
    } else if (kind == -1) {
      /* A header write torn by a crash (nothing after it was written) or a
       * damaged file: kept aside for a person to look at. A damaged segment
       * inside the log shows as a gap below and stops the start. */
      char aside[PATH_MAX + 48];
      snprintf(aside, sizeof aside, "%s.broken", path);
      fprintf(stderr, "cairn: raft log %s: bad segment header, renamed to %s\n", path, aside);
      if (rename(path, aside) != 0) {
        rc = CAIRN_EIO;
      }
    } else if (!w->spare_ready && f[i].size == w->seg_bytes) {
      w->spare_ready = true; /* a zeroed spare from before: used next */
      w->spare_seq = f[i].seq;
    } else if (unlink(path) != 0) {
      rc = CAIRN_EIO;
    }
  }
  if (nu > 1) {
    qsort(u, nu, sizeof *u, cmp_used);
  }
  for (size_t i = 0; i < nu && rc == 0; i++) {
    seg_path(w, u[i].seq, path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct scan sc;
    int e = fd < 0 ? -errno : scan_seg(fd, u[i].size, u[i].first, NULL, NULL, &sc);
    if (fd >= 0) {
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      close(fd);
    }
    if (e != 0) {
      fprintf(stderr, "cairn: raft log %s: %s\n", path, strerror(-e));
      rc = CAIRN_EIO;
      break;
    }
    if (w->nsegs > 0 && w->segs[w->nsegs - 1].last + 1 != u[i].first) {
      fprintf(stderr,
              "cairn: raft log %s: starts at %" PRIu64 ", the log before ends at %" PRIu64 "\n",
              path, u[i].first, w->segs[w->nsegs - 1].last);
      rc = CAIRN_ECORRUPT;
      break;
    }
    if (i + 1 < nu && sc.torn) {
      fprintf(stderr, "cairn: raft log %s: bad record after index %" PRIu64 "\n", path, sc.last);
      rc = CAIRN_ECORRUPT;
      break;
    }
    if (i + 1 == nu) {
      /* The write in flight at a crash may have left blocks after the last
       * good record (torn or not): zero them. */
      e = zero_tail(path, sc.stop, u[i].size);
      if (e != 0) {
        fprintf(stderr, "cairn: raft log %s: %s\n", path, strerror(-e));
        rc = CAIRN_EIO;
        break;
      }
    }
    struct seg sg = {.seq = u[i].seq,
                     .first = u[i].first,
                     .last = sc.last,
                     .size = u[i].size,
                     .end = round_up(sc.stop, WAL_BLOCK),
                     .fd = -1};
    if (push_seg(w, sg) != 0) {
      rc = CAIRN_ENOMEM;
    }
  }
  free(u);
  free(f);
  if (rc == 0 && sync_dir(w) != 0) {
    rc = CAIRN_EIO;
  }
  if (rc == 0 && w->nsegs > 0) {
    struct seg *s = &w->segs[w->nsegs - 1];
    seg_path(w, s->seq, path, sizeof path);
    s->fd = open_for_write(w, path);
    if (s->fd < 0) {
      fprintf(stderr, "cairn: raft log %s: %s\n", path, strerror(-s->fd));
      rc = CAIRN_EIO;
    }
  }
  if (rc == 0) {
    /* The loop's view: the first non-empty segment to the last. */
    for (size_t i = 0; i < w->nsegs; i++) {
      if (w->segs[i].last >= w->segs[i].first) {
        if (w->last == 0) {
          w->first = w->segs[i].first;
        }
        w->last = w->segs[i].last;
      }
    }
    if (w->nsegs > 0 && w->last == 0) {
      w->next = w->segs[w->nsegs - 1].first;
    }
  }
  return rc;
}

static void release(wal *w) {
  for (size_t i = 0; i < w->nsegs; i++) {
    if (w->segs[i].fd >= 0) {
      close(w->segs[i].fd);
    }
  }
  free(w->segs);
  if (w->dir_fd >= 0) {
    close(w->dir_fd);
  }
  free(w->hdr_block);
  for (unsigned i = 0; i < w->npool; i++) {
    free(w->pool[i]);
  }
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv_work);
  pthread_cond_destroy(&w->cv_spare);
  pthread_cond_destroy(&w->cv_prep);
  free(w);
}

static void release_handle(uv_handle_t *h) {
  release(h->data);
}

int wal_open(uv_loop_t *loop, const char *dir, const struct wal_options *opt, wal **out) {
  wal *w = calloc(1, sizeof *w);
  if (w == NULL) {
    return CAIRN_ENOMEM;
  }
  if ((size_t)snprintf(w->dir, sizeof w->dir, "%s", dir) >= sizeof w->dir) {
    free(w);
    return CAIRN_EINVAL;
  }
  w->loop = loop;
  w->seg_bytes = round_up(
      opt != NULL && opt->segment_bytes ? opt->segment_bytes : WAL_SEGMENT_BYTES, WAL_BLOCK);
  if (w->seg_bytes < 4 * WAL_BLOCK) {
    w->seg_bytes = 4 * WAL_BLOCK;
  }
  w->direct = true;
  w->dir_fd = -1;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv_work, NULL);
  pthread_cond_init(&w->cv_spare, NULL);
  pthread_cond_init(&w->cv_prep, NULL);
  void *hb = NULL;
  if (posix_memalign(&hb, WAL_BLOCK, WAL_BLOCK) != 0) {
    release(w);
    return CAIRN_ENOMEM;
  }
  w->hdr_block = hb;
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "cairn: raft log %s: mkdir: %s\n", dir, strerror(errno));
    release(w);
    return CAIRN_EIO;
  }
  w->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (w->dir_fd < 0) {
    fprintf(stderr, "cairn: raft log %s: %s\n", dir, strerror(errno));
    release(w);
    return CAIRN_EIO;
  }
  int rc = load(w);
  if (rc == 0 && uv_async_init(loop, &w->async, on_async) != 0) {
    rc = CAIRN_EIO;
  }
  w->async.data = w;
  if (rc != 0) {
    release(w);
    return rc;
  }
  if (pthread_create(&w->writer, NULL, writer_main, w) != 0) {
    w->closing = true;
    /* The handle's memory is w: the loop frees it when done with it. */
    uv_close((uv_handle_t *)&w->async, release_handle);
    return CAIRN_EIO;
  }
  if (pthread_create(&w->preparer, NULL, preparer_main, w) != 0) {
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv_work);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->writer, NULL);
    w->closing = true;
    uv_close((uv_handle_t *)&w->async, release_handle);
    return CAIRN_EIO;
  }
  w->threads = true;
  *out = w;
  return 0;
}

static void on_closed(uv_handle_t *h) {
  wal *w = h->data;
  deliver(w, CAIRN_ESTOPPED);
  void (*cb)(void *) = w->close_cb;
  void *data = w->close_data;
  release(w);
  if (cb != NULL) {
    cb(data);
  }
}

void wal_close(wal *w, void (*cb)(void *data), void *data) {
  CAIRN_ASSERT(!w->closing);
  w->closing = true;
  w->close_cb = cb;
  w->close_data = data;
  pthread_mutex_lock(&w->mu);
  __atomic_store_n(&w->stop, true, __ATOMIC_RELAXED);
  pthread_cond_broadcast(&w->cv_work);
  pthread_cond_broadcast(&w->cv_prep);
  pthread_cond_broadcast(&w->cv_spare);
  pthread_mutex_unlock(&w->mu);
  if (w->threads) {
    pthread_join(w->writer, NULL);
    pthread_join(w->preparer, NULL);
  }
  /* Staged ops were never written: their appends are canceled. */
  free_ops(w->ops);
  w->ops = w->ops_tail = NULL;
  uv_close((uv_handle_t *)&w->async, on_closed);
}
