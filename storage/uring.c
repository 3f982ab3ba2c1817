/* storage/uring.c: the io_uring backend of fileio.
 *
 * One ring per fileio. Each accepted operation becomes one SQE, submitted at
 * once (io_uring_enter per operation: the storage engine issues few, large
 * operations, so batching would buy little). The ring signals completions on
 * an eventfd registered with io_uring_register_eventfd(); a uv_poll_t watches
 * it, and on readiness the loop drains the CQ and runs the callbacks.
 *
 * Sizing: the SQ has FILEIO_INFLIGHT_MAX entries and the CQ twice that (the
 * kernel's default), so with at most FILEIO_INFLIGHT_MAX operations in flight
 * the CQ can never overflow. The SQ can only fill if the kernel refused to
 * take SQEs (io_uring_enter failed with EAGAIN/EBUSY/ENOMEM); the SQEs left
 * in it are then resubmitted by a retry timer, and a new operation that finds
 * the SQ full is refused with CAIRN_EBUSY. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <liburing.h>

#include "../common/cairn_assert.h"
#include "fileio_int.h"

/* io_uring_enter calls tried in a row before the retry timer takes over. */
#define URING_SUBMIT_TRIES_MAX 8u
/* Period of the retry timer while SQEs wait in the SQ. */
#define URING_RETRY_MS 1u
/* CQEs handled per eventfd wakeup before the loop gets control back. */
#define URING_DRAIN_MAX FILEIO_INFLIGHT_MAX

struct uring_state {
  fileio *f;
  struct io_uring ring;
  int efd;
  uv_poll_t poll;   /* watches efd; referenced only while ops are in flight */
  uv_timer_t retry; /* runs only while SQEs wait in the SQ */
  unsigned pending; /* ops in the ring whose CQE has not been handled */
  unsigned handles_open;
  bool closing;
};

static void on_poll(uv_poll_t *handle, int status, int events);

/* Hands the SQ to the kernel. Interrupted calls are retried at once; a kernel
 * short of resources (EAGAIN, EBUSY, ENOMEM) gets retried by the timer. Any
 * other error means the ring itself is broken (EBADF, EFAULT, EINVAL): a bug
 * here, and the accepted operations could never complete, so abort. */
static void on_retry(uv_timer_t *timer);

static void flush(struct uring_state *s) {
  for (unsigned i = 0; i < URING_SUBMIT_TRIES_MAX && io_uring_sq_ready(&s->ring) > 0; i++) {
    int rc = io_uring_submit(&s->ring);
    if (rc >= 0 || rc == -EINTR) {
      continue;
    }
    if (rc == -EAGAIN || rc == -EBUSY || rc == -ENOMEM) {
      break;
    }
    fprintf(stderr, "%s:%d: fileio: io_uring_submit failed on a ring it owns: %s\n", __FILE__,
            __LINE__, strerror(-rc));
    abort();
  }
  if (io_uring_sq_ready(&s->ring) > 0) {
    if (!uv_is_active((uv_handle_t *)&s->retry)) {
      uv_timer_start(&s->retry, on_retry, URING_RETRY_MS, URING_RETRY_MS);
    }
  } else if (uv_is_active((uv_handle_t *)&s->retry)) {
    uv_timer_stop(&s->retry);
  }
}

static void on_retry(uv_timer_t *timer) {
  flush(timer->data);
}

static void on_init_failed_close(uv_handle_t *handle) {
  struct uring_state *s = handle->data;
  if (--s->handles_open == 0) {
    free(s);
  }
}

static int uring_init(fileio *f, uv_loop_t *loop, void **state) {
  struct uring_state *s = calloc(1, sizeof *s);
  if (s == NULL) {
    return CAIRN_ENOMEM;
  }
  s->f = f;
  int rc = io_uring_queue_init(FILEIO_INFLIGHT_MAX, &s->ring, 0);
  if (rc < 0) {
    goto err_after_alloc;
  }
  s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->efd < 0) {
    goto err_after_ring;
  }
  if (io_uring_register_eventfd(&s->ring, s->efd) < 0) {
    goto err_after_efd;
  }
  if (uv_poll_init(loop, &s->poll, s->efd) != 0) {
    goto err_after_efd;
  }
  uv_timer_init(loop, &s->retry);
  s->poll.data = s;
  s->retry.data = s;
  s->handles_open = 2;
  if (uv_poll_start(&s->poll, UV_READABLE, on_poll) != 0) {
    goto err_after_handles;
  }
  /* An idle fileio must not keep the loop alive; see uring_submit(). */
  uv_unref((uv_handle_t *)&s->poll);
  *state = s;
  return 0;

err_after_handles:
  io_uring_queue_exit(&s->ring);
  close(s->efd);
  /* s is freed when both handles are closed. */
  uv_close((uv_handle_t *)&s->poll, on_init_failed_close);
  uv_close((uv_handle_t *)&s->retry, on_init_failed_close);
  return CAIRN_EIO;
err_after_efd:
  close(s->efd);
err_after_ring:
  io_uring_queue_exit(&s->ring);
err_after_alloc:
  free(s);
  return CAIRN_EIO;
}

static int uring_submit(void *state, struct fileio_op *op) {
  struct uring_state *s = state;
  CAIRN_ASSERT(!s->closing);
  struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
  if (sqe == NULL) {
    flush(s);
    sqe = io_uring_get_sqe(&s->ring);
    if (sqe == NULL) {
      return CAIRN_EBUSY;
    }
  }
  switch (op->type) {
    case FILEIO_OP_READ:
      io_uring_prep_read(sqe, op->fd, op->buf, op->len, op->offset);
      break;
    case FILEIO_OP_WRITE:
      io_uring_prep_write(sqe, op->fd, op->buf, op->len, op->offset);
      break;
    case FILEIO_OP_FSYNC:
      io_uring_prep_fsync(sqe, op->fd, op->datasync ? IORING_FSYNC_DATASYNC : 0);
      break;
    case FILEIO_OP_FSYNC_PACED: /* fileio.c runs these */
      CAIRN_ASSERT(false);
      break;
  }
  io_uring_sqe_set_data(sqe, op);
  /* From here the SQE is in the ring and cannot be taken back: the op is
   * accepted even if the kernel does not take it yet (flush retries). */
  if (s->pending++ == 0) {
    uv_ref((uv_handle_t *)&s->poll);
  }
  flush(s);
  return 0;
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  (void)status; /* on a poll error, draining is still the right thing */
  (void)events;
  struct uring_state *s = handle->data;
  /* Reset the eventfd before draining: a CQE posted after this read raises
   * it again, so no completion can be missed. */
  uint64_t count;
  ssize_t n = read(s->efd, &count, sizeof count);
  (void)n; /* EAGAIN: a spurious wakeup or already reset */

  for (unsigned handled = 0;; handled++) {
    struct io_uring_cqe *cqe;
    if (io_uring_peek_cqe(&s->ring, &cqe) != 0) {
      break;
    }
    if (handled == URING_DRAIN_MAX) {
      /* Bounded work per wakeup: leave the rest for the next iteration. */
      eventfd_write(s->efd, 1);
      break;
    }
    struct fileio_op *op = io_uring_cqe_get_data(cqe);
    int64_t result = cqe->res;
    io_uring_cqe_seen(&s->ring, cqe);
    CAIRN_ASSERT(op != NULL && s->pending > 0);
    if (--s->pending == 0) {
      uv_unref((uv_handle_t *)&s->poll);
    }
    fileio_complete(op, result);
    if (s->closing) {
      /* The callback closed the fileio and it was the last op: nothing is
       * left in the ring, and s must not be used past this point. */
      return;
    }
  }
}

static void on_handle_closed(uv_handle_t *handle) {
  struct uring_state *s = handle->data;
  if (--s->handles_open > 0) {
    return;
  }
  fileio *f = s->f;
  io_uring_queue_exit(&s->ring);
  close(s->efd);
  free(s);
  fileio_backend_closed(f);
}

static void uring_close(void *state) {
  struct uring_state *s = state;
  CAIRN_ASSERT(!s->closing && s->pending == 0);
  s->closing = true;
  uv_close((uv_handle_t *)&s->poll, on_handle_closed);
  uv_close((uv_handle_t *)&s->retry, on_handle_closed);
}

const struct fileio_backend fileio_uring_backend = {
    .init = uring_init,
    .submit = uring_submit,
    .close = uring_close,
};
