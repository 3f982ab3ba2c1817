/* raft/raftnode_int.h: the member's state, shared by the files of raft/
 * that make up raftnode (raftnode.c: proposals, snapshots, stop; and the
 * files that add to it). Internal to raft/. */
#ifndef CAIRN_RAFTNODE_INT_H
#define CAIRN_RAFTNODE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>

#include "fsm.h"
#include "memberid.h"
#include "pending.h"
#include "raftnode.h"
#include "storage/fileio.h"

/* A proposal's life: PENDING from raft_apply() until raft's callback (then
 * DONE, queued for delivery) or until its deadline (then ABANDONED: the
 * proposer was told CAIRN_ETIMEOUT, but raft still holds the request, whose
 * memory must live until raft's callback). */
enum proposal_state {
  PROPOSAL_PENDING,
  PROPOSAL_ABANDONED,
  PROPOSAL_APPLIED, /* raft applied the entry; its result comes with the batch's flush */
  PROPOSAL_DONE
};

struct proposal {
  struct raft_apply req; /* raft's until on_raft_applied() */
  raftnode *node;
  uint64_t request_id;
  enum proposal_state state;
  uint64_t deadline_ms; /* loop time */
  int status;           /* DONE: what the proposer gets */
  bool has_result;
  struct mvcc_result result;
  void *data;
  raftnode_propose_cb cb;
  struct proposal *prev, *next; /* PENDING: the deadline queue; DONE: the delivery queue */
};

struct queue {
  struct proposal *head, *tail;
};

/* RUNNING -> DRAINING (raftnode_stop: waiting for raft to be closable) ->
 * CLOSING (raft_close called, then libuv handles). A failed start goes
 * straight to CLOSING. */
enum node_state { NODE_RUNNING, NODE_DRAINING, NODE_CLOSING };

typedef int (*snapshot_put_fn)(struct raft_io *io, unsigned trailing,
                               struct raft_io_snapshot_put *req,
                               const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb);

struct raftnode {
  uv_loop_t *loop;
  mvcc_store *store;
  struct raft raft;
  struct raft *r; /* &raft, reachable through a const raftnode */
  struct raft_io io;
  struct raftlog *log; /* io's log (raftlog.c); closes with io */
  struct raft_uv_transport transport;
  struct fsm fsm;
  fileio *fio; /* checkpoints */
  struct memberid_cluster ids;
  enum node_state state;
  unsigned request_timeout_ms;

  /* Request ids as etcd makes them: 16 bits of the member id, then a
   * counter started from the clock (milliseconds << 8), so that ids do not
   * repeat across restarts. */
  uint64_t id_prefix;
  uint64_t id_suffix;

  unsigned outstanding;       /* proposals raft holds: PENDING and ABANDONED */
  struct queue pending;       /* PENDING, in deadline order */
  struct queue done;          /* DONE, in completion order */
  struct pending_table table; /* request id -> PENDING proposal */

  uv_timer_t timeout_timer;
  uv_timer_t deliver_timer;
  uv_timer_t flush_timer; /* applies the state machine's queued batch */
  uv_timer_t stop_timer;
  unsigned handles_open;

  void (*applied_cb)(void *data, int64_t revision);
  void *applied_data;
  /* The log's appends (write + sync), timed for /metrics. */
  int (*append)(struct raft_io *io, struct raft_io_append *req, const struct raft_entry entries[],
                unsigned n, raft_io_append_cb cb);
  void (*append_cb)(void *data, double seconds);
  void *append_data;
  void (*op_cb)(void *data, const struct mvcc_op *op, const struct mvcc_result *result);
  void *op_data;
  void (*apply_time_cb)(void *data, double seconds);
  void *apply_time_data;
  void (*answered_cb)(void *data); /* raftnode_on_answered() */
  void *answered_data;
  bool in_flush_timer; /* fsm_flush() from the flush timer (not from inside libraft) */
  bool notify_pending;
  int64_t notify_revision;

  /* The snapshot gate: raft's snapshot_put, held until a checkpoint made the
   * store durable up to the snapshot. */
  snapshot_put_fn snapshot_put;
  struct {
    bool pending;
    unsigned trailing;
    struct raft_io_snapshot_put *req;
    const struct raft_snapshot *snapshot;
    raft_io_snapshot_put_cb cb;
  } put;

  /* Linearizable reads (readindex.c): reads waiting for a barrier, the
   * barrier in flight, and waiters for the applied index. */
  struct raftnode_reads *reads;

  /* Membership (membership.c): the member table as applied here, the
   * leader's queue of table writes and raft changes, the transfer. */
  struct membership *mem;

  /* A store behind raft's snapshot (snapshot_install.c): the owner's
   * listener, and whether it must hear (again) what is needed. */
  struct {
    raftnode_store_needed_cb cb;
    void *data;
    bool notify;
  } install;

  uint64_t stop_deadline_ms;
  void (*closed_cb)(void *data);
  void *closed_data;
};

/* Why this member cannot lead a request now: CAIRN_ENOT_LEADER (another
 * member leads) or CAIRN_ENO_LEADER (none known). raftnode.c. */
int raftnode_not_leader(raftnode *n);

/* readindex.c: a barrier in flight (raft must not close under it); failing
 * every waiting read with CAIRN_ESTOPPED at a stop. */
bool readindex_busy(const raftnode *n);
void readindex_stop(raftnode *n);

/* raftnode.c: runs deliver() at the next loop turn (the applied listener,
 * the store-needed listener, the proposers' outcomes). */
void raftnode_schedule_delivery(raftnode *n);

/* snapshot_install.c: the state machine's on_behind (inside libraft:
 * bookkeeping only), and the store-needed listener's call from deliver(). */
void snapinstall_on_behind(void *ctx);
void snapinstall_deliver(raftnode *n);

#endif
