/* storage/checkpoint.c: fsync of the data file, then of the sync marker,
 * reporting what they cover. */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cairn_assert.h"

enum checkpoint_state { CP_DATA_SYNC, CP_MARKER_WRITE, CP_MARKER_SYNC };

struct checkpoint {
  enum checkpoint_state state;
  fileio *f;
  int marker_fd;
  uint64_t index;
  int64_t revision;
  uint8_t marker[MVCC_SYNC_MARKER_BYTES];
  void *data;
  checkpoint_cb cb;
};

static void checkpoint_done(struct checkpoint *c, int status) {
  checkpoint_cb cb = c->cb;
  void *cb_data = c->data;
  uint64_t index = c->index;
  int64_t revision = c->revision;
  free(c);
  if (status != 0) {
    cb(cb_data, status, 0, 0);
    return;
  }
  cb(cb_data, 0, index, revision);
}

/* Each step's completion submits the next: data fsync, marker write, marker
 * fsync. If the fileio refuses the marker steps (it is closing, or full), the
 * data is still durable and the checkpoint reports it: the marker merely
 * stays at an older transaction, which can only make mvcc_open() refuse the
 * store after a machine crash, never accept a torn one. */
static void on_step(void *data, int64_t result) {
  struct checkpoint *c = data;
  static const char *what[] = {"fsync data file", "write sync marker", "fsync sync marker"};
  if (result < 0 || (c->state == CP_MARKER_WRITE && result != MVCC_SYNC_MARKER_BYTES)) {
    fprintf(stderr, "cairn: checkpoint: %s: %s\n", what[c->state],
            result < 0 ? strerror((int)-result) : "short write");
    checkpoint_done(c, CAIRN_EIO);
    return;
  }
  int rc = 0;
  switch (c->state) {
    case CP_DATA_SYNC:
      c->state = CP_MARKER_WRITE;
      rc = fileio_write(c->f, c->marker_fd, c->marker, sizeof c->marker, 0, c, on_step);
      break;
    case CP_MARKER_WRITE:
      c->state = CP_MARKER_SYNC;
      rc = fileio_fsync(c->f, c->marker_fd, true, c, on_step);
      break;
    case CP_MARKER_SYNC:
      checkpoint_done(c, 0);
      return;
  }
  if (rc != 0) {
    checkpoint_done(c, 0);
  }
}

int checkpoint_start(mvcc_store *s, fileio *f, void *data, checkpoint_cb cb) {
  CAIRN_ASSERT(s != NULL && f != NULL && cb != NULL);
  int fd = mvcc_fd(s);
  int marker_fd = mvcc_sync_marker_fd(s);
  if (fd < 0 || marker_fd < 0) {
    return CAIRN_EIO;
  }
  struct checkpoint *c = malloc(sizeof *c);
  if (c == NULL) {
    return CAIRN_ENOMEM;
  }
  /* Captured before the sync is submitted: everything these values cover
   * was committed (written to the page cache) before the fsync starts, so
   * the fsync covers it. The marker names the same LMDB transaction. */
  c->state = CP_DATA_SYNC;
  c->f = f;
  c->marker_fd = marker_fd;
  c->index = mvcc_applied_index(s);
  c->revision = mvcc_current_revision(s);
  mvcc_sync_marker(s, c->marker);
  c->data = data;
  c->cb = cb;
  /* fdatasync suffices: it also flushes the file size when the file grew,
   * which is all the metadata LMDB needs to read its pages back. */
  int rc = fileio_fsync_paced(f, fd, c, on_step);
  if (rc != 0) {
    free(c);
    return rc;
  }
  return 0;
}
