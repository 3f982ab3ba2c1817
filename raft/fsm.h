/* raft/fsm.h: the raft state machine (struct raft_fsm, version 1) whose state
 * is the MVCC store. Internal to raft/: raftnode.c drives it.
 *
 * apply: the entry's index is raft_last_applied() + 1. An entry at or below
 * the store's applied index is a replay (after a restart raft replays every
 * entry since its last snapshot) and is skipped without being decoded.
 * Otherwise the command is decoded and queued; fsm_flush() applies every
 * queued command in one mvcc_apply() (one LMDB transaction per batch) under
 * its index and the term the proposer encoded, and each result goes to
 * on_result, never through raft's result pointer (which reaches the leader's
 * callback only and would leak on followers). on_queued asks the owner to
 * flush soon (raftnode.c flushes at the next loop turn); a full queue
 * (FSM_BATCH_MAX) is flushed at once, and a snapshot flushes first.
 *
 * Failures: a transient one (CAIRN_ENOMEM, CAIRN_EBUSY while a snapshot
 * export holds the map) makes apply return an error; raft then keeps the
 * entry and tries it again at its next apply pass. A permanent one (an entry
 * that does not decode, a disk error) halts the state machine: apply_error
 * is set, the message printed once, and nothing more is applied.
 *
 * snapshot: raft's snapshot holds only a small marker (the raft index, the
 * store's applied index and revision); the data stays in LMDB. The rule that
 * raft truncates only what is durable in LMDB is enforced by raftnode.c,
 * which puts a checkpoint (an fsync of the data file) before raft writes the
 * snapshot.
 *
 * restore: accepted when the store already holds everything the marker
 * covers (always the case at start-up after a clean run, a process crash, or
 * a machine crash after which the store opened); otherwise refused: the store
 * is behind raft's snapshot (a lost or replaced data file, or an install
 * from a leader, which needs a transfer of the store: not done yet). */
#ifndef CAIRN_FSM_H
#define CAIRN_FSM_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>

#include "storage/mvcc.h"

/* The snapshot marker: "CAIRNSNP", version, then four 64-bit values, all
 * little endian. */
#define FSM_SNAPSHOT_MAGIC "CAIRNSNP"
#define FSM_SNAPSHOT_VERSION 1u
#define FSM_SNAPSHOT_BYTES 48u

/* Entries applied in one LMDB transaction at most. */
#define FSM_BATCH_MAX 1024u

/* result: owned by the callee (mvcc_result_free it or keep it). */
typedef void (*fsm_result_cb)(void *ctx, uint64_t request_id, uint64_t index,
                              struct mvcc_result *result);
/* The store's revision moved to revision. */
typedef void (*fsm_revision_cb)(void *ctx, int64_t revision);
/* The queue went from empty to not empty: call fsm_flush() soon. */
typedef void (*fsm_queued_cb)(void *ctx);
/* Every applied op with its result (valid during the call), then the
 * batch's apply time. Set after fsm_init(); NULL: not wanted. */
typedef void (*fsm_op_cb)(void *ctx, const struct mvcc_op *op, const struct mvcc_result *result);
typedef void (*fsm_batch_cb)(void *ctx, double seconds, size_t entries);

struct command;
struct fsm_queued {
  uint64_t index;
  uint64_t request_id;
  struct mvcc_op op;
  struct command *cmd;
};

struct fsm {
  struct raft_fsm raft_fsm; /* give &raft_fsm to raft_init() */
  struct raft *raft;
  mvcc_store *store;
  void *ctx;
  fsm_result_cb on_result;
  fsm_revision_cb on_revision;
  fsm_queued_cb on_queued;
  fsm_op_cb on_op;
  fsm_batch_cb on_batch;
  struct fsm_queued queue[FSM_BATCH_MAX];
  size_t n_queued;
  uint64_t batches; /* LMDB transactions that applied entries */
  bool starting;     /* set by the caller around raft_start(): restores are its own */
  int apply_error;   /* 0, or the CAIRN_E* code that halted the state machine */
  int restore_error; /* 0, or why the last restore was refused */
};

void fsm_init(struct fsm *f, struct raft *r, mvcc_store *store, void *ctx, fsm_result_cb on_result,
              fsm_revision_cb on_revision, fsm_queued_cb on_queued);

/* Applies the queued commands in one batch. 0 (also when nothing is
 * queued), or CAIRN_ENOMEM / CAIRN_EBUSY (transient: the queue stays, call
 * again later), or the error that halted the state machine (every queued
 * command was then answered with a result carrying that error). */
int fsm_flush(struct fsm *f);

/* Releases what the queue holds (at close, after a final flush). */
void fsm_close(struct fsm *f);

struct fsm_marker {
  uint64_t raft_index;  /* the snapshot's last entry */
  uint64_t store_index; /* the store's applied index then */
  int64_t revision;     /* the store's revision then */
  uint64_t reserved;    /* 0 */
};

/* Marker (de)serialization, exposed for tests. decode: CAIRN_ECORRUPT. */
void fsm_marker_encode(const struct fsm_marker *m, uint8_t out[FSM_SNAPSHOT_BYTES]);
int fsm_marker_decode(const void *buf, size_t len, struct fsm_marker *out);

#endif
