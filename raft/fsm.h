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
 * export holds the map) with a full queue holds the entry and those after it
 * in order (as while catching up after a store transfer) until the queue
 * drains; apply does not return an error for it, because libraft 0.15 turns
 * an apply error on a follower's heartbeat path into "unavailable". A
 * permanent one (an entry
 * that does not decode, a disk error) halts the state machine: apply_error
 * is set, the message printed once, and nothing more is applied.
 *
 * snapshot: raft's snapshot holds only a small marker (the raft index, the
 * store's applied index and revision); the data stays in LMDB. The rule that
 * raft truncates only what is durable in LMDB is enforced by raftnode.c,
 * which puts a checkpoint (an fsync of the data file) before raft writes the
 * snapshot.
 *
 * restore: when the store already holds everything the marker covers
 * (always the case at start-up after a clean run, a process crash, or a
 * machine crash after which the store opened) there is nothing to load.
 * Otherwise the store is behind raft's snapshot: an install from the leader
 * (raft has already replaced its log, so refusing would not help: libraft
 * 0.15 takes the next InstallSnapshot for that index as done), or, at
 * start-up, a member that crashed before its store transfer finished or
 * whose data file was lost. The restore then succeeds and the state machine
 * is BEHIND: it remembers what the store must reach (the marker's store
 * index and revision), applies nothing, holds the entries raft hands it in
 * order (FSM_HELD_BYTES_MAX), refuses snapshots, and tells the owner
 * (on_behind) so that a store at or past that point is fetched from another
 * member. fsm_store_replaced() then resumes: CATCHING_UP applies the held
 * entries (those the new store has are replays, skipped) a batch per flush,
 * then CURRENT. Past the hold bound the held entries are dropped and the
 * store must reach the newest dropped one instead (on_behind again). At
 * start-up with nobody to fetch from (can_fetch false: a single member) a
 * store behind the snapshot is refused with CAIRN_ECORRUPT, as before.
 *
 * Why not let apply fail while behind: libraft 0.15 retries a failed apply
 * only at the next commit, and a failure in the heartbeat path makes the
 * follower unavailable (recvCb -> convertToUnavailable); so apply always
 * accepts, and holding the entries is the state machine's job. */
#ifndef CAIRN_FSM_H
#define CAIRN_FSM_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>

#include "storage/mvcc.h"

/* The snapshot marker: "CAIRNSNP", version, then four 64-bit values, all
 * little endian. Version 1 is those 48 bytes; version 2 (a store with a
 * member table, raft/membertable.h) is followed by the table, whose length
 * is the fourth value (reserved). */
#define FSM_SNAPSHOT_MAGIC "CAIRNSNP"
#define FSM_SNAPSHOT_VERSION 1u
#define FSM_SNAPSHOT_VERSION_TABLE 2u
#define FSM_SNAPSHOT_BYTES 48u
#define FSM_SNAPSHOT_TABLE_MAX (1u << 20)

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
/* Early answers: a batch of key-value ops only (put, delete, txn, range) is
 * answered once its ops have run and before its LMDB commit, which then
 * overlaps the answers' trip to the clients instead of preceding it. The
 * entries are durable in the raft log already, which is what a write's
 * success means; a commit that fails after the answers halts the store, and
 * the entries are applied again from the log at the next start. Nothing
 * reads the batch's data before the commit: the loop thread is in it, and
 * fsm_store_holds() counts the batch as queued until it is done. Set after
 * fsm_init() (NULL: no early answers); called after on_op and on_result of
 * the batch's ops, before the commit: the results are out, send them. */
typedef void (*fsm_answered_cb)(void *ctx);
/* Asked before a batch is answered early: false when the owner has answers
 * of earlier batches still to deliver (they may read the store: not inside
 * a batch), and the batch is then answered after its commit. NULL: yes. */
typedef bool (*fsm_may_answer_cb)(void *ctx);

struct command;
struct fsm_queued {
  uint64_t index;
  uint64_t request_id;
  struct mvcc_op op;
  struct command *cmd;
};

/* The store's state relative to raft (see restore above). */
enum fsm_store_state { FSM_STORE_CURRENT, FSM_STORE_BEHIND, FSM_STORE_CATCHING_UP };

/* Bytes of entries held while the store is behind. Past it they are
 * dropped, and the store to fetch must hold them instead. */
#define FSM_HELD_BYTES_MAX (256u * 1024u * 1024u)

/* An entry raft handed over while the store was behind: its raw command. */
struct fsm_held {
  struct fsm_held *next;
  uint64_t index;
  size_t len;
  uint8_t data[];
};

/* The store went BEHIND, or what it must reach moved: fetch a store whose
 * applied index is at least need_index. Called from inside libraft: defer
 * anything but bookkeeping. */
typedef void (*fsm_behind_cb)(void *ctx);

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
  fsm_answered_cb on_answered;
  fsm_may_answer_cb may_answer;
  struct fsm_queued queue[FSM_BATCH_MAX];
  size_t n_queued;
  size_t n_answered; /* queued entries answered early by a flush that failed after */
  uint64_t batches;  /* LMDB transactions that applied entries */
  bool starting;     /* set by the caller around raft_start(): restores are its own */
  int apply_error;   /* 0, or the CAIRN_E* code that halted the state machine */
  int restore_error; /* 0, or why the last restore was refused */

  /* The store behind raft (see restore above). */
  bool can_fetch; /* set by the owner: other voters exist to fetch a store from */
  fsm_behind_cb on_behind;
  enum fsm_store_state store_state;
  uint64_t need_index;   /* BEHIND: the store's applied index must reach this */
  int64_t need_revision; /* ... and its revision this */
  uint64_t marker_index; /* the raft index of the snapshot that put it behind */
  struct fsm_held *held_head, *held_tail;
  size_t n_held;
  size_t held_bytes;
  uint64_t held_dropped; /* entries dropped at the bound, ever */
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

/* After the owner replaced the store's data (mvcc_replace) while BEHIND:
 * 0 when the store reaches need_index and need_revision (CATCHING_UP, or
 * CURRENT if nothing is held; held entries the store has are dropped, and
 * on_revision reports the new revision); CAIRN_ENOT_CAPABLE when it still
 * does not (still BEHIND: fetch again); CAIRN_EINVAL when not BEHIND. */
int fsm_store_replaced(struct fsm *f);

/* Whether the store holds every entry raft applied up to index (false while
 * BEHIND or CATCHING_UP, and while a queued command at or below it waits
 * for its flush). */
bool fsm_store_holds(const struct fsm *f, uint64_t index);

struct fsm_marker {
  uint64_t raft_index;  /* the snapshot's last entry */
  uint64_t store_index; /* the store's applied index then */
  int64_t revision;     /* the store's revision then */
  uint64_t reserved;    /* 0, or (version 2) the length of the member table that follows */
};

/* Marker (de)serialization, exposed for tests. decode: CAIRN_ECORRUPT. */
void fsm_marker_encode(const struct fsm_marker *m, uint8_t out[FSM_SNAPSHOT_BYTES]);
int fsm_marker_decode(const void *buf, size_t len, struct fsm_marker *out);

#endif
