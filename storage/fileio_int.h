/* storage/fileio_int.h: what fileio.c shares with its backends (uring.c,
 * fileio_pool.c). Not part of the public API.
 *
 * fileio.c owns the operation slots, the in-flight bound and the close
 * sequence; a backend only moves an accepted operation to the kernel or a
 * worker thread and reports its completion on the loop. */
#ifndef CAIRN_FILEIO_INT_H
#define CAIRN_FILEIO_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "fileio.h"

enum fileio_op_type { FILEIO_OP_READ = 1, FILEIO_OP_WRITE, FILEIO_OP_FSYNC, FILEIO_OP_FSYNC_PACED };

/* One operation slot. fileio.c fills it; the backend only reads it. */
struct fileio_op {
  fileio *f;
  enum fileio_op_type type;
  int fd;
  bool datasync;   /* FSYNC: fdatasync instead of fsync */
  void *buf;       /* READ target; WRITE source (never written to) */
  uint32_t len;    /* <= FILEIO_IO_BYTES_MAX */
  uint64_t offset; /* <= INT64_MAX */
  uint32_t index;  /* this slot's position in the fileio's slot array */
  bool busy;       /* in flight */
  void *data;
  fileio_cb cb;
  struct fileio_op *next_free;
  uv_work_t work;       /* FSYNC_PACED: run by fileio.c on the thread pool */
  int64_t paced_result; /* FSYNC_PACED: set on the pool thread */
};

struct fileio_backend {
  /* Sets up the backend for f on loop; on success *state is the backend's
   * own object. Returns 0 or a negative CAIRN_E* code (nothing to undo). */
  int (*init)(fileio *f, uv_loop_t *loop, void **state);
  /* Starts op. 0: accepted, fileio_complete() will be called for it later
   * from the loop. CAIRN_EBUSY: not accepted, nothing happened. */
  int (*submit)(void *state, struct fileio_op *op);
  /* Called once, when nothing is in flight and no more ops will come: closes
   * the backend's handles, frees state, then calls fileio_backend_closed()
   * from a later loop callback. */
  void (*close)(void *state);
};

extern const struct fileio_backend fileio_uring_backend;
extern const struct fileio_backend fileio_pool_backend;

/* Backend to fileio.c, on the loop thread: op finished with result (bytes, 0
 * or a negative errno). Runs the op's callback. */
void fileio_complete(struct fileio_op *op, int64_t result);

/* Backend to fileio.c, on the loop thread: the backend is gone; finishes
 * fileio_close(). */
void fileio_backend_closed(fileio *f);

#endif
