/* storage/fileio_pool.c: the thread-pool backend of fileio, for kernels or
 * sandboxes without io_uring. Each operation is one uv_queue_work() request:
 * a worker runs pread/pwrite/fsync/fdatasync and the loop runs the callback.
 * libuv's pool is shared with uv_fs_* and getaddrinfo and has
 * UV_THREADPOOL_SIZE threads (4 by default); fileio's own bound
 * (FILEIO_INFLIGHT_MAX) caps what one fileio queues on it. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "../common/cairn_assert.h"
#include "fileio_int.h"

struct pool_work {
  uv_work_t req;
  struct fileio_op *op;
  int64_t result; /* written by the worker, read on the loop after it */
};

struct pool_state {
  fileio *f;
  /* Never started: closing it is how pool_close() reaches the loop later,
   * since close must not finish from inside fileio_close(). */
  uv_idle_t closer;
  struct pool_work works[FILEIO_INFLIGHT_MAX]; /* indexed by op->index */
};

static int pool_init(fileio *f, uv_loop_t *loop, void **state) {
  struct pool_state *s = calloc(1, sizeof *s);
  if (s == NULL) {
    return CAIRN_ENOMEM;
  }
  s->f = f;
  uv_idle_init(loop, &s->closer);
  s->closer.data = s;
  *state = s;
  return 0;
}

/* On a worker thread. */
static void work(uv_work_t *req) {
  struct pool_work *w = req->data;
  const struct fileio_op *op = w->op;
  ssize_t n = 0;
  switch (op->type) {
    case FILEIO_OP_READ:
      do {
        n = pread(op->fd, op->buf, op->len, (off_t)op->offset);
      } while (n < 0 && errno == EINTR);
      break;
    case FILEIO_OP_WRITE:
      do {
        n = pwrite(op->fd, op->buf, op->len, (off_t)op->offset);
      } while (n < 0 && errno == EINTR);
      break;
    case FILEIO_OP_FSYNC:
      do {
        n = op->datasync ? fdatasync(op->fd) : fsync(op->fd);
      } while (n < 0 && errno == EINTR);
      break;
    case FILEIO_OP_FSYNC_PACED: /* fileio.c runs these */
      CAIRN_ASSERT(false);
      break;
  }
  w->result = n < 0 ? -(int64_t)errno : (int64_t)n;
}

/* On the loop. */
static void after_work(uv_work_t *req, int status) {
  struct pool_work *w = req->data;
  /* fileio never cancels a request: every op completes for real. */
  CAIRN_ASSERT(status == 0);
  struct fileio_op *op = w->op;
  int64_t result = w->result;
  w->op = NULL;
  fileio_complete(op, result);
}

static int pool_submit(void *state, struct fileio_op *op) {
  struct pool_state *s = state;
  CAIRN_ASSERT(op->index < FILEIO_INFLIGHT_MAX);
  struct pool_work *w = &s->works[op->index];
  CAIRN_ASSERT(w->op == NULL);
  w->op = op;
  w->result = 0;
  w->req.data = w;
  int rc = uv_queue_work(s->closer.loop, &w->req, work, after_work);
  /* uv_queue_work only fails on a NULL work function. */
  CAIRN_ASSERT(rc == 0);
  return 0;
}

static void on_closer_closed(uv_handle_t *handle) {
  struct pool_state *s = handle->data;
  fileio *f = s->f;
  free(s);
  fileio_backend_closed(f);
}

static void pool_close(void *state) {
  struct pool_state *s = state;
  uv_close((uv_handle_t *)&s->closer, on_closer_closed);
}

const struct fileio_backend fileio_pool_backend = {
    .init = pool_init,
    .submit = pool_submit,
    .close = pool_close,
};
