/* storage/checkpoint.h: making the applied state durable, so that the raft
 * log can be truncated.
 *
 * The store commits with MDB_NOSYNC: a committed batch is in the page cache,
 * not necessarily on disk, and until it is, the raft log is its durable
 * record. A checkpoint takes the store's applied index and current revision
 * at the call, then fsyncs the data file through fileio (io_uring or the
 * thread pool: the loop never waits on the disk). When the sync completes
 * with status 0, every batch committed before the call is on disk, and the
 * raft log may be truncated up to durable_index: replaying from
 * durable_index + 1 rebuilds the rest. Then the sync marker (mvcc.h) is
 * written and synced, so that after a machine crash mvcc_open() knows the
 * data file is whole up to this point.
 *
 * Ordering: checkpoints may overlap, and their callbacks may run in any
 * order; each reports the values it captured, so a later callback can report
 * a smaller index than an earlier one. Keep the largest durable_index seen.
 *
 * Lifetime: the store must stay open, and must not be defragmented (which
 * replaces the data file and its descriptor), until every checkpoint's
 * callback has run. */
#ifndef CAIRN_CHECKPOINT_H
#define CAIRN_CHECKPOINT_H

#include <stdint.h>

#include "fileio.h"
#include "mvcc.h"

/* status 0: durable_index and durable_revision (as captured at
 * checkpoint_start()) are durable. status CAIRN_EIO: the sync failed, with
 * the reason on stderr; durable_index and durable_revision are then 0 and
 * nothing may be truncated. After a failed fsync the kernel may have dropped
 * the dirty pages, so the file's content is not to be trusted beyond the
 * last successful checkpoint: treat it as a disk failure. */
typedef void (*checkpoint_cb)(void *data, int status, uint64_t durable_index,
                              int64_t durable_revision);

/* Starts a checkpoint of s through f; cb runs on f's loop when it is done.
 * Called on the loop thread that drives s. Errors (cb is then never called):
 * CAIRN_EBUSY (f has FILEIO_INFLIGHT_MAX operations in flight: retry later),
 * CAIRN_ESTOPPED (f is closing), CAIRN_ENOMEM, CAIRN_EIO (the store has no
 * data file descriptor). */
int checkpoint_start(mvcc_store *s, fileio *f, void *data, checkpoint_cb cb);

#endif
