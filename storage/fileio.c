/* storage/fileio.c: the backend-independent half of fileio: argument checks,
 * the bounded slot array, backend choice and the close sequence. */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/cairn_assert.h"
#include "fileio_int.h"

enum fileio_state {
  FILEIO_OPEN = 1, /* accepting operations */
  FILEIO_DRAINING, /* fileio_close() called; waiting for the ones in flight */
  FILEIO_CLOSING   /* backend closing its handles */
};

struct fileio {
  uv_loop_t *loop;
  const struct fileio_backend *backend;
  void *backend_state;
  enum fileio_state state;
  unsigned inflight;
  struct fileio_op *free_ops; /* the slots not in flight */
  void (*close_cb)(void *data);
  void *close_data;
  struct fileio_op ops[FILEIO_INFLIGHT_MAX];
};

static bool env_forces_fallback(void) {
  const char *v = getenv("CAIRN_NO_URING");
  return v != NULL && strcmp(v, "1") == 0;
}

int fileio_init(uv_loop_t *loop, unsigned flags, fileio **out) {
  CAIRN_ASSERT(loop != NULL && out != NULL);
  if ((flags & ~FILEIO_FORCE_FALLBACK) != 0) {
    return CAIRN_EINVAL;
  }
  fileio *f = calloc(1, sizeof *f);
  if (f == NULL) {
    return CAIRN_ENOMEM;
  }
  f->loop = loop;
  f->state = FILEIO_OPEN;
  for (uint32_t i = FILEIO_INFLIGHT_MAX; i-- > 0;) {
    f->ops[i].f = f;
    f->ops[i].index = i;
    f->ops[i].next_free = f->free_ops;
    f->free_ops = &f->ops[i];
  }

  int rc = CAIRN_EIO;
  if ((flags & FILEIO_FORCE_FALLBACK) == 0 && !env_forces_fallback()) {
    /* A kernel without io_uring (or a sandbox that forbids it) is normal:
     * fall back without a word, fileio_uses_uring() tells. */
    rc = fileio_uring_backend.init(f, loop, &f->backend_state);
    if (rc == 0) {
      f->backend = &fileio_uring_backend;
    }
  }
  if (f->backend == NULL) {
    rc = fileio_pool_backend.init(f, loop, &f->backend_state);
    if (rc != 0) {
      goto err_after_alloc;
    }
    f->backend = &fileio_pool_backend;
  }
  *out = f;
  return 0;

err_after_alloc:
  free(f);
  return rc;
}

bool fileio_uses_uring(const fileio *f) {
  return f->backend == &fileio_uring_backend;
}

uv_loop_t *fileio_loop(const fileio *f) {
  return f->loop;
}

unsigned fileio_inflight(const fileio *f) {
  return f->inflight;
}

/* FSYNC_PACED, on a pool thread: the write-back a range at a time, then
 * fdatasync. The result goes in op->offset's place: len is unused. */
static void paced_work(uv_work_t *w) {
  struct fileio_op *op = w->data;
  struct stat st;
  int64_t result = 0;
  if (fstat(op->fd, &st) != 0) {
    result = -(int64_t)errno;
  }
  for (off_t off = 0; result == 0 && off < st.st_size; off += FILEIO_PACE_BYTES) {
    int n;
    do {
      n = sync_file_range(
          op->fd, off, FILEIO_PACE_BYTES,
          SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      result = -(int64_t)errno;
    }
  }
  if (result == 0) {
    int n;
    do {
      n = fdatasync(op->fd);
    } while (n < 0 && errno == EINTR);
    result = n < 0 ? -(int64_t)errno : 0;
  }
  op->paced_result = result;
}

static void paced_after(uv_work_t *w, int status) {
  struct fileio_op *op = w->data;
  CAIRN_ASSERT(status == 0); /* never canceled */
  fileio_complete(op, op->paced_result);
}

/* Takes a slot and hands it to the backend. */
static int submit(fileio *f, enum fileio_op_type type, int fd, void *buf, size_t len,
                  uint64_t offset, bool datasync, void *data, fileio_cb cb) {
  CAIRN_ASSERT(cb != NULL);
  if (f->state != FILEIO_OPEN) {
    return CAIRN_ESTOPPED;
  }
  if (offset > (uint64_t)INT64_MAX || (buf == NULL && len > 0)) {
    return CAIRN_EINVAL;
  }
  if (f->free_ops == NULL) {
    CAIRN_DEBUG_ASSERT(f->inflight == FILEIO_INFLIGHT_MAX);
    return CAIRN_EBUSY;
  }
  struct fileio_op *op = f->free_ops;
  op->type = type;
  op->fd = fd;
  op->buf = buf;
  op->len = (uint32_t)(len > FILEIO_IO_BYTES_MAX ? FILEIO_IO_BYTES_MAX : len);
  op->offset = offset;
  op->datasync = datasync;
  op->data = data;
  op->cb = cb;
  int rc;
  if (type == FILEIO_OP_FSYNC_PACED) {
    op->work.data = op;
    rc = uv_queue_work(f->loop, &op->work, paced_work, paced_after) == 0 ? 0 : CAIRN_EIO;
  } else {
    rc = f->backend->submit(f->backend_state, op);
  }
  if (rc != 0) {
    return rc;
  }
  f->free_ops = op->next_free;
  op->next_free = NULL;
  op->busy = true;
  f->inflight++;
  CAIRN_ASSERT(f->inflight <= FILEIO_INFLIGHT_MAX);
  return 0;
}

int fileio_read(fileio *f, int fd, void *buf, size_t len, uint64_t offset, void *data,
                fileio_cb cb) {
  return submit(f, FILEIO_OP_READ, fd, buf, len, offset, false, data, cb);
}

int fileio_write(fileio *f, int fd, const void *buf, size_t len, uint64_t offset, void *data,
                 fileio_cb cb) {
  /* The cast only lets READ and WRITE share a slot field; a write's buffer
   * is never written to. */
  return submit(f, FILEIO_OP_WRITE, fd, (void *)(uintptr_t)buf, len, offset, false, data, cb);
}

int fileio_fsync(fileio *f, int fd, bool datasync, void *data, fileio_cb cb) {
  return submit(f, FILEIO_OP_FSYNC, fd, NULL, 0, 0, datasync, data, cb);
}

int fileio_fsync_paced(fileio *f, int fd, void *data, fileio_cb cb) {
  return submit(f, FILEIO_OP_FSYNC_PACED, fd, NULL, 0, 0, true, data, cb);
}

/* Once draining and idle, the backend may go. */
static void maybe_finish_close(fileio *f) {
  if (f->state == FILEIO_DRAINING && f->inflight == 0) {
    f->state = FILEIO_CLOSING;
    f->backend->close(f->backend_state);
  }
}

void fileio_complete(struct fileio_op *op, int64_t result) {
  fileio *f = op->f;
  CAIRN_ASSERT(f->inflight > 0 && op->busy && op->cb != NULL);
  fileio_cb cb = op->cb;
  void *data = op->data;
  /* Free the slot before the callback, so that the callback can always
   * submit a follow-up operation. */
  memset(op, 0, sizeof *op);
  op->f = f;
  op->index = (uint32_t)(op - f->ops);
  op->next_free = f->free_ops;
  f->free_ops = op;
  f->inflight--;
  cb(data, result);
  maybe_finish_close(f);
}

void fileio_close(fileio *f, void (*close_cb)(void *data), void *data) {
  CAIRN_ASSERT(f->state == FILEIO_OPEN);
  f->state = FILEIO_DRAINING;
  f->close_cb = close_cb;
  f->close_data = data;
  maybe_finish_close(f);
}

void fileio_backend_closed(fileio *f) {
  CAIRN_ASSERT(f->state == FILEIO_CLOSING && f->inflight == 0);
  void (*close_cb)(void *) = f->close_cb;
  void *data = f->close_data;
  free(f);
  if (close_cb != NULL) {
    close_cb(data);
  }
}
