/* storage/snapshot_stream.c: chunked snapshot reader and writer on fileio. */
#include "snapshot_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/cairn_assert.h"

#define SNAPSTREAM_TMP_SUFFIX ".tmp"

/* ---- reader ---- */

struct snapstream_reader {
  fileio *f;
  int fd;
  char *path; /* for messages */
  uint64_t size;
  uint64_t offset; /* bytes delivered */
  uint8_t *buf;
  size_t chunk_bytes;
  size_t want;   /* bytes of the chunk being read */
  size_t filled; /* of those, read so far */
  bool pending;
  bool closed; /* closed while pending: free on completion */
  int error;   /* sticky */
  void *data;
  snapstream_read_cb cb;
};

int snapstream_reader_open(fileio *f, const char *path, size_t chunk_bytes,
                           snapstream_reader **out) {
  CAIRN_ASSERT(f != NULL && path != NULL && out != NULL);
  if (chunk_bytes > SNAPSTREAM_CHUNK_MAX) {
    return CAIRN_EINVAL;
  }
  if (chunk_bytes == 0) {
    chunk_bytes = SNAPSTREAM_CHUNK_DEFAULT;
  }
  int rc = CAIRN_ENOMEM;
  snapstream_reader *r = calloc(1, sizeof *r);
  if (r == NULL) {
    goto err;
  }
  r->path = strdup(path);
  if (r->path == NULL) {
    goto err_after_alloc;
  }
  r->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (r->fd < 0) {
    fprintf(stderr, "snapstream: open %s: %s\n", path, strerror(errno));
    rc = CAIRN_EIO;
    goto err_after_path;
  }
  struct stat st;
  if (fstat(r->fd, &st) != 0) {
    fprintf(stderr, "snapstream: stat %s: %s\n", path, strerror(errno));
    rc = CAIRN_EIO;
    goto err_after_open;
  }
  if (!S_ISREG(st.st_mode)) {
    rc = CAIRN_EINVAL;
    goto err_after_open;
  }
  r->size = (uint64_t)st.st_size;
  /* No bigger than the file needs (a small snapshot, a small buffer), and
   * never 0 so that the end-of-file chunk has a valid pointer too. */
  r->chunk_bytes = chunk_bytes;
  size_t buf_bytes = r->size < chunk_bytes ? (size_t)r->size : chunk_bytes;
  r->buf = malloc(buf_bytes > 0 ? buf_bytes : 1);
  if (r->buf == NULL) {
    rc = CAIRN_ENOMEM;
    goto err_after_open;
  }
  r->f = f;
  *out = r;
  return 0;

err_after_open:
  close(r->fd);
err_after_path:
  free(r->path);
err_after_alloc:
  free(r);
err:
  return rc;
}

uint64_t snapstream_reader_size(const snapstream_reader *r) {
  return r->size;
}

uint64_t snapstream_reader_offset(const snapstream_reader *r) {
  return r->offset;
}

static void reader_free(snapstream_reader *r) {
  close(r->fd);
  free(r->buf);
  free(r->path);
  free(r);
}

static void on_reader_read(void *data, int64_t result);

static void reader_deliver(snapstream_reader *r, int status, size_t len) {
  r->pending = false;
  if (status != 0) {
    r->error = status;
  }
  snapstream_read_cb cb = r->cb;
  void *data = r->data;
  r->cb = NULL;
  r->data = NULL;
  cb(data, status, status == 0 ? r->buf : NULL, len);
}

static void on_reader_read(void *data, int64_t result) {
  snapstream_reader *r = data;
  CAIRN_ASSERT(r->pending);
  if (r->closed) {
    reader_free(r);
    return;
  }
  if (result < 0) {
    fprintf(stderr, "snapstream: read %s: %s\n", r->path, strerror((int)-result));
    reader_deliver(r, CAIRN_EIO, 0);
    return;
  }
  if (r->want == 0) {
    reader_deliver(r, 0, 0); /* the end of the file */
    return;
  }
  if (result == 0) {
    fprintf(stderr, "snapstream: read %s: file shorter than its size at open (%" PRIu64 " bytes)\n",
            r->path, r->size);
    reader_deliver(r, CAIRN_EIO, 0);
    return;
  }
  CAIRN_ASSERT((uint64_t)result <= r->want - r->filled);
  r->filled += (size_t)result;
  if (r->filled < r->want) {
    /* This callback's fileio slot is free, so only a closing fileio can
     * refuse the rest. */
    int rc = fileio_read(r->f, r->fd, r->buf + r->filled, r->want - r->filled,
                         r->offset + r->filled, r, on_reader_read);
    if (rc != 0) {
      reader_deliver(r, rc, 0);
    }
    return;
  }
  r->offset += r->want;
  CAIRN_ASSERT(r->offset <= r->size);
  reader_deliver(r, 0, r->want);
}

int snapstream_reader_next(snapstream_reader *r, void *data, snapstream_read_cb cb) {
  CAIRN_ASSERT(cb != NULL && !r->closed);
  if (r->pending) {
    return CAIRN_EBUSY;
  }
  if (r->error != 0) {
    return r->error;
  }
  uint64_t left = r->size - r->offset;
  r->want = left < r->chunk_bytes ? (size_t)left : r->chunk_bytes;
  r->filled = 0;
  /* At the end, a 0-byte read still goes through fileio, so that the
   * callback comes from the loop like any other. */
  int rc = fileio_read(r->f, r->fd, r->buf, r->want, r->offset, r, on_reader_read);
  if (rc != 0) {
    return rc;
  }
  r->pending = true;
  r->data = data;
  r->cb = cb;
  return 0;
}

void snapstream_reader_close(snapstream_reader *r) {
  if (r == NULL) {
    return;
  }
  CAIRN_ASSERT(!r->closed);
  if (r->pending) {
    r->closed = true; /* on_reader_read() frees it */
    return;
  }
  reader_free(r);
}

/* ---- writer ---- */

enum writer_state {
  W_OPEN = 1, /* idle, accepting writes */
  W_WRITING,  /* a write is pending */
  W_SYNCING,  /* finish: the file's fsync is pending */
  W_DIRSYNC,  /* finish: renamed, the directory's fsync is pending */
  W_FAILED,   /* an operation failed; only abort is left */
  W_ABORTED   /* aborted while an operation was pending */
};

struct snapstream_writer {
  fileio *f;
  enum writer_state state;
  int fd;
  int dirfd;
  char *final_path;
  char *tmp_path;
  uint64_t size;      /* bytes appended by completed writes */
  const uint8_t *src; /* the pending write */
  size_t len;
  size_t done;
  int error; /* sticky, with W_FAILED */
  void *data;
  snapstream_write_cb cb;
  uv_fs_t dirsync;
};

/* The legal moves; anything else is a bug in this file. */
static void writer_set_state(snapstream_writer *w, enum writer_state next) {
  bool ok = false;
  switch (w->state) {
    case W_OPEN:
      ok = next == W_WRITING || next == W_SYNCING;
      break;
    case W_WRITING:
      ok = next == W_OPEN || next == W_FAILED || next == W_ABORTED;
      break;
    case W_SYNCING:
      ok = next == W_DIRSYNC || next == W_FAILED;
      break;
    case W_DIRSYNC:
      ok = next == W_FAILED;
      break;
    case W_FAILED:
    case W_ABORTED:
      break;
  }
  CAIRN_ASSERT(ok);
  w->state = next;
}

int snapstream_writer_open(fileio *f, const char *final_path, snapstream_writer **out) {
  CAIRN_ASSERT(f != NULL && final_path != NULL && out != NULL);
  size_t n = strlen(final_path);
  if (n == 0 || final_path[n - 1] == '/') {
    return CAIRN_EINVAL;
  }
  int rc = CAIRN_ENOMEM;
  snapstream_writer *w = calloc(1, sizeof *w);
  if (w == NULL) {
    goto err;
  }
  w->final_path = strdup(final_path);
  if (w->final_path == NULL) {
    goto err_after_alloc;
  }
  w->tmp_path = malloc(n + sizeof SNAPSTREAM_TMP_SUFFIX);
  if (w->tmp_path == NULL) {
    goto err_after_final;
  }
  memcpy(w->tmp_path, final_path, n);
  memcpy(w->tmp_path + n, SNAPSTREAM_TMP_SUFFIX, sizeof SNAPSTREAM_TMP_SUFFIX);
  w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (w->fd < 0) {
    if (errno == EEXIST) {
      rc = CAIRN_EBUSY;
    } else {
      fprintf(stderr, "snapstream: create %s: %s\n", w->tmp_path, strerror(errno));
      rc = CAIRN_EIO;
    }
    goto err_after_tmp;
  }
  w->dirfd = -1;
  w->f = f;
  w->state = W_OPEN;
  *out = w;
  return 0;

err_after_tmp:
  free(w->tmp_path);
err_after_final:
  free(w->final_path);
err_after_alloc:
  free(w);
err:
  return rc;
}

uint64_t snapstream_writer_size(const snapstream_writer *w) {
  return w->size;
}

static void writer_free(snapstream_writer *w) {
  if (w->fd >= 0) {
    close(w->fd);
  }
  if (w->dirfd >= 0) {
    close(w->dirfd);
  }
  free(w->tmp_path);
  free(w->final_path);
  free(w);
}

static void writer_call(snapstream_writer *w, int status) {
  snapstream_write_cb cb = w->cb;
  void *data = w->data;
  w->cb = NULL;
  w->data = NULL;
  cb(data, status);
}

/* A write failed: the writer keeps the error and waits for abort. */
static void writer_fail(snapstream_writer *w, int status) {
  writer_set_state(w, W_FAILED);
  w->error = status;
  writer_call(w, status);
}

/* finish failed: remove what exists, report, free (finish consumed w). */
static void writer_finish_failed(snapstream_writer *w, int status, bool renamed) {
  writer_set_state(w, W_FAILED);
  unlink(renamed ? w->final_path : w->tmp_path);
  writer_call(w, status);
  writer_free(w);
}

static void on_writer_write(void *data, int64_t result) {
  snapstream_writer *w = data;
  if (w->state == W_ABORTED) {
    writer_free(w);
    return;
  }
  CAIRN_ASSERT(w->state == W_WRITING);
  if (result <= 0) {
    /* A write that moves nothing would loop forever: treat it as the
     * failure it is. */
    fprintf(stderr, "snapstream: write %s: %s\n", w->tmp_path,
            result < 0 ? strerror((int)-result) : "no progress");
    writer_fail(w, CAIRN_EIO);
    return;
  }
  CAIRN_ASSERT((uint64_t)result <= w->len - w->done);
  w->done += (size_t)result;
  if (w->done < w->len) {
    int rc = fileio_write(w->f, w->fd, w->src + w->done, w->len - w->done, w->size + w->done, w,
                          on_writer_write);
    if (rc != 0) {
      writer_fail(w, rc);
    }
    return;
  }
  w->size += w->len;
  w->src = NULL;
  writer_set_state(w, W_OPEN);
  writer_call(w, 0);
}

int snapstream_writer_write(snapstream_writer *w, const void *buf, size_t len, void *data,
                            snapstream_write_cb cb) {
  CAIRN_ASSERT(cb != NULL && w->state != W_ABORTED);
  if (w->state == W_FAILED) {
    return w->error;
  }
  if (w->state != W_OPEN) {
    return CAIRN_EBUSY;
  }
  if (buf == NULL || len == 0 || len > SNAPSTREAM_CHUNK_MAX) {
    return CAIRN_EINVAL;
  }
  int rc = fileio_write(w->f, w->fd, buf, len, w->size, w, on_writer_write);
  if (rc != 0) {
    return rc;
  }
  writer_set_state(w, W_WRITING);
  w->src = buf;
  w->len = len;
  w->done = 0;
  w->data = data;
  w->cb = cb;
  return 0;
}

static void on_writer_dirsync(uv_fs_t *req) {
  snapstream_writer *w = req->data;
  CAIRN_ASSERT(w->state == W_DIRSYNC);
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  if (result < 0) {
    fprintf(stderr, "snapstream: fsync directory of %s: %s\n", w->final_path,
            uv_strerror((int)result));
    writer_finish_failed(w, CAIRN_EIO, true);
    return;
  }
  writer_call(w, 0);
  writer_free(w);
}

/* The directory holding path, opened for fsync. */
static int open_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    return open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  if (slash == path) {
    return open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  }
  size_t n = (size_t)(slash - path);
  char *dir = malloc(n + 1);
  if (dir == NULL) {
    errno = ENOMEM;
    return -1;
  }
  memcpy(dir, path, n);
  dir[n] = '\0';
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int saved = errno;
  free(dir);
  errno = saved;
  return fd;
}

static void on_writer_sync(void *data, int64_t result) {
  snapstream_writer *w = data;
  CAIRN_ASSERT(w->state == W_SYNCING);
  if (result < 0) {
    fprintf(stderr, "snapstream: fsync %s: %s\n", w->tmp_path, strerror((int)-result));
    writer_finish_failed(w, CAIRN_EIO, false);
    return;
  }
  /* close, rename and open only touch metadata: done here on the loop. The
   * directory's fsync is the slow part and goes to the thread pool. */
  int fd = w->fd;
  w->fd = -1;
  if (close(fd) != 0) {
    fprintf(stderr, "snapstream: close %s: %s\n", w->tmp_path, strerror(errno));
    writer_finish_failed(w, CAIRN_EIO, false);
    return;
  }
  if (rename(w->tmp_path, w->final_path) != 0) {
    fprintf(stderr, "snapstream: rename %s: %s\n", w->tmp_path, strerror(errno));
    writer_finish_failed(w, CAIRN_EIO, false);
    return;
  }
  w->dirfd = open_parent_dir(w->final_path);
  if (w->dirfd < 0) {
    fprintf(stderr, "snapstream: open directory of %s: %s\n", w->final_path, strerror(errno));
    writer_finish_failed(w, CAIRN_EIO, true);
    return;
  }
  writer_set_state(w, W_DIRSYNC);
  w->dirsync.data = w;
  int rc = uv_fs_fsync(fileio_loop(w->f), &w->dirsync, w->dirfd, on_writer_dirsync);
  if (rc != 0) {
    fprintf(stderr, "snapstream: fsync directory of %s: %s\n", w->final_path, uv_strerror(rc));
    writer_finish_failed(w, CAIRN_EIO, true);
  }
}

int snapstream_writer_finish(snapstream_writer *w, void *data, snapstream_write_cb cb) {
  CAIRN_ASSERT(cb != NULL && w->state != W_ABORTED);
  if (w->state == W_FAILED) {
    return w->error;
  }
  if (w->state != W_OPEN) {
    return CAIRN_EBUSY;
  }
  int rc = fileio_fsync(w->f, w->fd, false, w, on_writer_sync);
  if (rc != 0) {
    return rc;
  }
  writer_set_state(w, W_SYNCING);
  w->data = data;
  w->cb = cb;
  return 0;
}

void snapstream_writer_abort(snapstream_writer *w) {
  if (w == NULL) {
    return;
  }
  /* After a successful finish the writer is gone; SYNCING and DIRSYNC here
   * would be a use after hand-over. */
  CAIRN_ASSERT(w->state == W_OPEN || w->state == W_WRITING || w->state == W_FAILED);
  unlink(w->tmp_path);
  if (w->state == W_WRITING) {
    writer_set_state(w, W_ABORTED); /* on_writer_write() frees it */
    w->cb = NULL;
    w->data = NULL;
    return;
  }
  writer_free(w);
}
