/* storage/checkpoint.c: fsync of the data file, reporting what it covers. */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cairn_assert.h"

struct checkpoint {
  uint64_t index;
  int64_t revision;
  void *data;
  checkpoint_cb cb;
};

static void on_synced(void *data, int64_t result) {
  struct checkpoint *c = data;
  checkpoint_cb cb = c->cb;
  void *cb_data = c->data;
  uint64_t index = c->index;
  int64_t revision = c->revision;
  free(c);
  if (result < 0) {
    fprintf(stderr, "cairn: checkpoint: fsync %s: %s\n", MVCC_DATA_FILE, strerror((int)-result));
    cb(cb_data, CAIRN_EIO, 0, 0);
    return;
  }
  cb(cb_data, 0, index, revision);
}

int checkpoint_start(mvcc_store *s, fileio *f, void *data, checkpoint_cb cb) {
  CAIRN_ASSERT(s != NULL && f != NULL && cb != NULL);
  int fd = mvcc_fd(s);
  if (fd < 0) {
    return CAIRN_EIO;
  }
  struct checkpoint *c = malloc(sizeof *c);
  if (c == NULL) {
    return CAIRN_ENOMEM;
  }
  /* Captured before the sync is submitted: everything these values cover
   * was committed (written to the page cache) before the fsync starts, so
   * the fsync covers it. */
  c->index = mvcc_applied_index(s);
  c->revision = mvcc_current_revision(s);
  c->data = data;
  c->cb = cb;
  /* fdatasync suffices: it also flushes the file size when the file grew,
   * which is all the metadata LMDB needs to read its pages back. */
  int rc = fileio_fsync(f, fd, true, c, on_synced);
  if (rc != 0) {
    free(c);
    return rc;
  }
  return 0;
}
