/* raft/raftnode.h: the libraft glue. A member's raft (canonical raft 0.15 with
 * its libuv backend) whose state machine is the MVCC store.
 *
 * Every write is an mvcc_op (storage/mvcc.h) proposed through raft; when its
 * entry commits, the state machine applies it into the store and the
 * proposer's callback gets the op's result. Reads are served from the store by
 * the caller. All libraft calls stay in raft/ (see ../shared/docs/raft-notes.md
 * for the library's traps).
 *
 * Threading: one loop thread; every callback runs on it.
 * Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_RAFTNODE_H
#define CAIRN_RAFTNODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "storage/mvcc.h"

typedef struct raftnode raftnode;

struct raftnode_member {
  const char *name;
  const char *peer_url; /* "http://127.0.0.1:2380" */
};

struct raftnode_options {
  const char *name;     /* this member's name (--name) */
  const char *data_dir; /* raft's log goes to <data_dir>/raft, the store is the caller's */
  const struct raftnode_member *initial_cluster; /* --initial-cluster */
  size_t n_initial_cluster;
  const char *cluster_token; /* --initial-cluster-token */
  bool new_cluster;          /* --initial-cluster-state new */
  unsigned heartbeat_ms;     /* --heartbeat-interval, default 100 */
  unsigned election_ms;      /* --election-timeout, default 1000 */
  uint64_t snapshot_count;   /* --snapshot-count: entries between snapshots */
};

/* The outcome of a proposal. result is the op's mvcc result (the callee owns
 * it: the callback must mvcc_result_free() it, or take it over). status is 0
 * when the op was applied (result->err then holds its own etcd outcome),
 * or CAIRN_ELEADER_CHANGED / CAIRN_ETIMEOUT (outcome unknown),
 * CAIRN_ENO_LEADER, CAIRN_ESTOPPED; result is then NULL. */
typedef void (*raftnode_propose_cb)(void *data, int status, struct mvcc_result *result);

/* Starts the member: opens (or bootstraps) the raft log, replays committed
 * entries into store (skipping what the store already holds), and starts
 * raft on loop. Member and cluster ids are derived from names, peer URLs and
 * the token, as etcd does. Errors: CAIRN_EIO (message on stderr). */
int raftnode_start(uv_loop_t *loop, mvcc_store *store, const struct raftnode_options *opts,
                   raftnode **out);

/* Proposes op; cb runs when its entry is applied here (or the outcome is
 * unknown). The op is encoded at once: its memory may be freed on return.
 * Errors (cb never called): CAIRN_ENO_LEADER / CAIRN_ENOT_LEADER (this
 * member cannot propose now), CAIRN_ETOO_MANY_REQUESTS (RAFTNODE_INFLIGHT_MAX
 * proposals pending), CAIRN_ENOMEM, CAIRN_ESTOPPED. */
#define RAFTNODE_INFLIGHT_MAX 4096u
int raftnode_propose(raftnode *n, const struct mvcc_op *op, void *data, raftnode_propose_cb cb);

/* Called after every applied entry that changed the store (revision moved),
 * with the new current revision: the watch hub's wake-up. One listener. */
void raftnode_on_applied(raftnode *n, void (*cb)(void *data, int64_t revision), void *data);

/* State for headers, Status and /metrics. */
struct raftnode_status {
  uint64_t cluster_id;
  uint64_t member_id;
  uint64_t leader_id; /* 0: no leader known */
  uint64_t term;
  uint64_t commit_index;
  uint64_t applied_index;
  bool is_leader;
};
void raftnode_status(const raftnode *n, struct raftnode_status *out);

/* Stops raft cleanly (waits for in-flight proposals, whose callbacks get
 * their outcome or CAIRN_ESTOPPED; avoids libraft 0.15's close crashes), then
 * runs closed_cb on the loop and frees n. */
void raftnode_stop(raftnode *n, void (*closed_cb)(void *data), void *data);

#endif
