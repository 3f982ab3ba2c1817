/* raft/raftnode.h: the libraft glue. A member's raft (canonical raft 0.15 with
 * its libuv backend) whose state machine is the MVCC store.
 *
 * Every write is an mvcc_op (storage/mvcc.h) proposed through raft; when its
 * entry commits, the state machine applies it into the store and the
 * proposer's callback gets the op's result. Reads are served from the store by
 * the caller. All libraft calls stay in raft/ (see ../shared/docs/raft-notes.md
 * for the library's traps, and docs/raft.md for this glue).
 *
 * Threading: one loop thread; every callback runs on it, always from the loop
 * and never from inside the call that caused it, nor from inside libraft
 * (so a callback may call raftnode_propose() or raftnode_stop()).
 *
 * Process: neither raft nor libuv ignores SIGPIPE, and a member can die of one
 * when a peer goes away: the daemon must ignore SIGPIPE at start-up.
 *
 * Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_RAFTNODE_H
#define CAIRN_RAFTNODE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "storage/mvcc.h"

typedef struct raftnode raftnode;

/* Peer URLs: http(s)://host:port, where raft listens and is reached (its own
 * protocol, not etcd's); host must be an IPv4 address for libraft 0.15's TCP
 * transport. A member with several URLs uses its first, sorted. */
struct raftnode_member {
  const char *name;
  const char *peer_url; /* "http://127.0.0.1:2380"; several entries with one name: several URLs */
};

/* Defaults for the options left 0. */
#define RAFTNODE_HEARTBEAT_MS_DEFAULT 100u
#define RAFTNODE_ELECTION_MS_DEFAULT 1000u
/* --snapshot-count's default: 10000, not etcd 3.4's 100000. libraft keeps
 * every entry since the last snapshot in memory, and a Cairn snapshot is a
 * marker (the store is the LMDB file), not a copy of the store: frequent
 * snapshots cost little and bound memory (docs/raft.md). */
#define RAFTNODE_SNAPSHOT_COUNT_DEFAULT 10000u
/* Entries kept in the log behind each snapshot, so that a follower a little
 * behind catches up from the log (etcd's snapshot catch-up entries): this
 * many, or the snapshot count if smaller (so that small --snapshot-count
 * settings really truncate the log). A follower further behind is sent the
 * snapshot and fetches a store (raftnode_on_store_needed). */
#define RAFTNODE_SNAPSHOT_TRAILING 5000u

struct raftnode_options {
  const char *name;     /* this member's name (--name) */
  const char *data_dir; /* raft's log goes to <data_dir>/raft (created); the store is apart */
  const struct raftnode_member *initial_cluster; /* --initial-cluster */
  size_t n_initial_cluster;
  const char *cluster_token;   /* --initial-cluster-token; NULL: "etcd-cluster" */
  bool new_cluster;            /* --initial-cluster-state new */
  unsigned heartbeat_ms;       /* --heartbeat-interval, 0: 100 */
  unsigned election_ms;        /* --election-timeout, 0: 1000 */
  uint64_t snapshot_count;     /* --snapshot-count: entries between snapshots, 0: 100000 */
  unsigned request_timeout_ms; /* a proposal's deadline; 0: 5000 + 2 * election_ms (etcd's) */
  /* Membership (raft/membership.c): this member's client URLs
   * (--advertise-client-urls), published in the member table with its name
   * (by itself when it leads; a follower asks the leader through
   * /cairnserverpb.Internal/Publish). Copied at start. */
  const char *const *client_urls;
  size_t n_client_urls;
};

/* The outcome of a proposal. status is 0 when the op was applied: result is
 * then the op's mvcc result (result->err holds its own etcd outcome), in
 * memory valid during the callback only: the callback must
 * mvcc_result_free(result), or take the result over by copying the struct
 * (which moves its arena) and not freeing it. Otherwise result is NULL and
 * status is CAIRN_ELEADER_CHANGED or CAIRN_ETIMEOUT (outcome unknown: the
 * entry may still commit), CAIRN_ESTOPPED (the member stopped before the
 * outcome was known: unknown as well), or CAIRN_EIO (applied, but its result
 * was lost: a bug, reported on stderr). */
typedef void (*raftnode_propose_cb)(void *data, int status, struct mvcc_result *result);

/* Starts the member: computes the ids (raft/memberid.h), opens the raft log
 * in <data_dir>/raft, bootstraps it from the initial cluster when it is new
 * and opts->new_cluster is set (every member with the same configuration),
 * replays committed entries into store (skipping what the store already
 * holds), and starts raft on loop. store must stay open until the closed_cb
 * of raftnode_stop() has run.
 * Errors: CAIRN_EINVAL (bad options, a peer URL whose host is not an IPv4
 * address, or no raft log and not a new cluster: joining an existing cluster
 * is not supported yet), CAIRN_ECORRUPT (the store and the raft log
 * disagree: the store is behind raft's snapshot, or holds entries while the
 * raft log is empty), CAIRN_ENOMEM, CAIRN_EIO; the reason is on stderr. On error *out is NULL, and what was set up may still
 * be closing on the loop: run the loop (uv_run until it returns) before
 * closing it. */
int raftnode_start(uv_loop_t *loop, mvcc_store *store, const struct raftnode_options *opts,
                   raftnode **out);

/* Proposes op; cb runs when its entry is applied here, or its outcome is
 * unknown (see raftnode_propose_cb). The op is encoded at once (raft/
 * command.h): its memory may be freed on return. op->raft_index and
 * op->raft_term are ignored (raft sets them).
 * Errors (cb never called): CAIRN_ENO_LEADER / CAIRN_ENOT_LEADER (this
 * member is not the leader: no leader known / another one is),
 * CAIRN_ETOO_MANY_REQUESTS (RAFTNODE_INFLIGHT_MAX proposals in flight,
 * including timed-out ones raft has not settled yet), CAIRN_ESTOPPED
 * (raftnode_stop() was called), CAIRN_EIO (the state machine halted: see
 * raftnode_status().apply_error), the encoder's CAIRN_EINVAL /
 * CAIRN_ETOO_MANY_OPS / CAIRN_ETOO_LARGE, CAIRN_ENOMEM. */
#define RAFTNODE_INFLIGHT_MAX 4096u
int raftnode_propose(raftnode *n, const struct mvcc_op *op, void *data, raftnode_propose_cb cb);

/* The watch hub's wake-up: cb runs after applied entries changed the store
 * (the revision moved), with the new current revision. Coalesced: at most
 * once per loop turn, with the latest revision, and before the proposal
 * callbacks of the same entries, except those answered early (below). One
 * listener; cb NULL removes it. */
void raftnode_on_applied(raftnode *n, void (*cb)(void *data, int64_t revision), void *data);

/* Called after each successful append to the raft log (its write and sync)
 * with its duration: etcd's etcd_disk_wal_fsync_duration_seconds. One
 * listener; NULL removes it. */
void raftnode_on_append(raftnode *n, void (*cb)(void *data, double seconds), void *data);

/* Called on every member for every op its state machine applied, with the
 * op's result (both valid during the call only), whoever proposed it: how a
 * leader's lessor learns of lease ops other members proposed. And after
 * each applied batch, its apply time. One listener each; NULL removes it. */
void raftnode_on_op_applied(raftnode *n,
                            void (*cb)(void *data, const struct mvcc_op *op,
                                       const struct mvcc_result *result),
                            void *data);
void raftnode_on_apply_time(raftnode *n, void (*cb)(void *data, double seconds), void *data);

/* Early answers (raft/fsm.h): a batch of key-value ops has its proposal
 * callbacks run once its ops ran, before its LMDB commit; then cb runs, for
 * the owner to send the answers now (the commit follows at once, on this
 * thread, before anything else runs). The callbacks must not read the store
 * nor write it. Without a listener (cb NULL, the default), every batch is
 * answered after its commit. */
void raftnode_on_answered(raftnode *n, void (*cb)(void *data), void *data);

/* State for headers, Status and /metrics. */
struct raftnode_status {
  uint64_t cluster_id;
  uint64_t member_id;
  uint64_t leader_id; /* 0: no leader known */
  uint64_t term;
  uint64_t commit_index;
  uint64_t applied_index;
  bool is_leader;
  uint64_t apply_batches; /* LMDB transactions that applied raft entries */
  int apply_error; /* 0, or the CAIRN_E* code that halted the state machine */
  /* The store is behind raft's snapshot (raftnode_on_store_needed): it holds
   * an older state and applies nothing until a store is fetched, or it is
   * applying the entries held meanwhile. applied_index is then the store's
   * (what reads from it reflect), not raft's. */
  bool store_behind;
};
void raftnode_status(const raftnode *n, struct raftnode_status *out);

/* ---- a store behind raft's snapshot (raft/snapshot_install.c) ------------ */

/* raft's snapshot holds only a marker; the data is the store. When the
 * leader installs a snapshot here because this member is too far behind (or
 * at start-up raft's snapshot on disk is newer than the store: a member that
 * crashed before its transfer finished, or lost its data file, in a cluster
 * with other voters), the store is "behind": it keeps serving what it has
 * (serializable reads, at its own revision), applies nothing, and the
 * entries raft commits meanwhile are held in order. cb(data, index, term)
 * then runs from the loop: the owner must fetch a store whose applied index
 * is at least index (mvcc_snapshot_export of another member's store: the
 * leader's, or any member's that far), put it in place with mvcc_replace,
 * and call raftnode_store_replaced. term is the term of raft's snapshot
 * (0 if unknown). cb runs again if what is needed moves (a later snapshot,
 * or held entries dropped at their bound), and after a replaced store that
 * was not far enough. While behind, raftnode_propose refuses with
 * CAIRN_ENOT_CAPABLE (a leader that is behind cannot answer proposals until
 * it caught up) and raft takes no snapshot. One listener; NULL removes it;
 * set while behind, cb runs soon. */
typedef void (*raftnode_store_needed_cb)(void *data, uint64_t index, uint64_t term);
void raftnode_on_store_needed(raftnode *n, raftnode_store_needed_cb cb, void *data);

/* Whether raft's snapshot gate has a checkpoint of the store in flight (an
 * installed snapshot is made durable that way too): mvcc_replace() and
 * mvcc_defrag() must wait until this is false (they change the data file
 * under a checkpoint), as for the owner's own checkpoints. */
bool raftnode_store_busy(const raftnode *n);

/* After mvcc_replace() of the store given to raftnode_start (no checkpoint of
 * it in flight: see raftnode_store_busy): re-reads the store's applied index and revision and, if
 * they reach what was needed, resumes: the held entries are applied (those
 * the new store already has are skipped as replays), a batch per loop turn;
 * the applied listener (raftnode_on_applied) hears of the new revision.
 * Errors: CAIRN_ENOT_CAPABLE (the store is still behind: the store-needed
 * callback runs again), CAIRN_EINVAL (the store was not behind). */
int raftnode_store_replaced(raftnode *n);

/* Whether the store is behind or still catching up (as store_behind). */
bool raftnode_store_behind(const raftnode *n);

/* ---- linearizable reads (raft/readindex.c) ------------------------------- */

/* status 0: the store now holds every entry committed before the read began
 * (its applied index reached the read index): serve the read from it.
 * Otherwise CAIRN_ELEADER_CHANGED (leadership was lost while confirming),
 * CAIRN_ETIMEOUT (not applied within the deadline), CAIRN_ESTOPPED. */
typedef void (*raftnode_read_cb)(void *data, int status, uint64_t index);

/* Bounds: reads waiting at once (for a barrier or for the applied index). */
#define RAFTNODE_READS_MAX 65536u

/* On the leader: confirms leadership with a barrier entry (one barrier for
 * every read that arrived while the previous one was in flight), then waits
 * until the store applied it; a single-voter cluster needs no barrier (the
 * commit index at the call is the read index). cb runs from the loop, never
 * inside this call. Errors (cb not called): CAIRN_ENOT_LEADER /
 * CAIRN_ENO_LEADER (ask the leader: /cairnserverpb.Internal/ReadIndex, then
 * raftnode_wait_applied()), CAIRN_ETOO_MANY_REQUESTS, CAIRN_ESTOPPED,
 * CAIRN_ENOMEM. */
int raftnode_read_index(raftnode *n, void *data, raftnode_read_cb cb);

/* Waits until this member's store has applied every entry up to index (a
 * read index from the leader), at most timeout_ms (then CAIRN_ETIMEOUT).
 * cb runs from the loop, never inside this call. Errors as above. */
int raftnode_wait_applied(raftnode *n, uint64_t index, uint64_t timeout_ms, void *data,
                          raftnode_read_cb cb);

/* Whether this member is a learner (etcd's: it serves serializable Range
 * and Status only). Cheap unless this member is a raft stand-by. */
bool raftnode_self_is_learner(raftnode *n);

/* Voting members in the current configuration. */
unsigned raftnode_voters(const raftnode *n);

/* ---- membership (raft/membership.c) -------------------------------------- */

/* The replicated member table (a meta value of the store, written through
 * raft by the leader, so snapshots of the store carry it) joined with
 * libraft's configuration. See docs/raft.md, "Membership". */
struct raftnode_member_info {
  uint64_t id;
  const char *name; /* "" until the member published itself (etcd's "unstarted") */
  const char *const *peer_urls;
  size_t n_peer_urls;
  const char *const *client_urls;
  size_t n_client_urls;
  bool is_learner;
};

/* The members, ordered by id (as etcd's MemberList), in one allocation
 * (*out) the caller frees with raftnode_members_free(). Before the table
 * was written (a new cluster's first moments) the members come from the
 * initial cluster; on a joining member that has not received the table
 * yet, from raft's configuration (peer URL http://<raft address>).
 * Errors: CAIRN_ENOMEM. */
int raftnode_members(raftnode *n, struct raftnode_member_info **out, size_t *n_out);
void raftnode_members_free(struct raftnode_member_info *members);

/* The first client URL of member id into buf (NUL-terminated): how a
 * follower reaches its leader. Errors: CAIRN_EMEMBER_NOT_FOUND (no such
 * member), CAIRN_EINVAL (the member has published no client URL yet, or buf
 * is too small). */
int raftnode_member_client_url(raftnode *n, uint64_t id, char *buf, size_t cap);

/* Whether this member's own name and client URLs (raftnode_options) are in
 * the table as applied here: a follower publishes until this holds. */
bool raftnode_self_published(raftnode *n);

/* The outcome of a membership call: status 0 or a CAIRN_E* code; id is the
 * member concerned (the new member's for raftnode_member_add). cb runs from
 * the loop, never inside the call that started it. */
typedef void (*raftnode_member_cb)(void *data, int status, uint64_t id);

/* Bounds: membership calls waiting on the leader at once. */
#define RAFTNODE_MEMBER_CALLS_MAX 64u

/* All of the following run on the leader only, in order, one table write
 * at a time. Errors returned at once (cb never called): CAIRN_ENOT_LEADER /
 * CAIRN_ENO_LEADER, CAIRN_ESTOPPED, CAIRN_ETOO_MANY_REQUESTS (at
 * RAFTNODE_MEMBER_CALLS_MAX), CAIRN_EINVAL (bad arguments), CAIRN_ENOMEM.
 * Errors through cb: etcd's (below), and CAIRN_ELEADER_CHANGED /
 * CAIRN_ETIMEOUT / CAIRN_ESTOPPED (outcome unknown, as for proposals). */

/* Records a member's name and client URLs (unchanged: done without an
 * entry). cb: CAIRN_EMEMBER_NOT_FOUND. */
int raftnode_publish(raftnode *n, uint64_t id, const char *name, const char *const *client_urls,
                     size_t n_client_urls, void *data, raftnode_member_cb cb);

/* etcd's MemberAdd: a voter or a learner with these peer URLs, no name and
 * no client URL until it starts and publishes. Its id is memberid_added()
 * of the URLs. A voter is a raft stand-by until it has caught up, then the
 * leader makes it a voter (MemberList reports it as a voter from the start,
 * as etcd). cb: CAIRN_EMEMBER_BAD_URLS (checked at once: returned, not
 * through cb), CAIRN_EMEMBER_EXIST, CAIRN_EPEER_URL_EXIST,
 * CAIRN_ETOO_MANY_LEARNERS, CAIRN_EMEMBER_NOT_ENOUGH_STARTED. */
int raftnode_member_add(raftnode *n, const char *const *peer_urls, size_t n_peer_urls,
                        bool is_learner, void *data, raftnode_member_cb cb);

/* etcd's MemberRemove, the leader itself included (it steps down once
 * raft's change commits; a removed member is told through
 * raftnode_on_removed()). cb: CAIRN_EMEMBER_NOT_FOUND,
 * CAIRN_EMEMBER_NOT_ENOUGH_STARTED. */
int raftnode_member_remove(raftnode *n, uint64_t id, void *data, raftnode_member_cb cb);

/* etcd's MemberUpdate: new peer URLs (raft dials the member there from now
 * on; the member itself must be restarted with them). cb:
 * CAIRN_EMEMBER_BAD_URLS (returned at once), CAIRN_EMEMBER_NOT_FOUND,
 * CAIRN_EPEER_URL_EXIST. */
int raftnode_member_update(raftnode *n, uint64_t id, const char *const *peer_urls,
                           size_t n_peer_urls, void *data, raftnode_member_cb cb);

/* etcd's MemberPromote of a learner that is in sync (its log within 90% of
 * the leader's, etcd's rule). cb: CAIRN_EMEMBER_NOT_FOUND,
 * CAIRN_EMEMBER_NOT_LEARNER, CAIRN_ELEARNER_NOT_READY,
 * CAIRN_EMEMBER_NOT_ENOUGH_STARTED. */
int raftnode_member_promote(raftnode *n, uint64_t id, void *data, raftnode_member_cb cb);

/* etcd's MoveLeader: raft's leadership transfer to target, a voting member
 * (this member itself: done at once). Returned at once:
 * CAIRN_EBAD_LEADER_TRANSFEREE (not a voting member, or not a raft voter
 * yet), CAIRN_ETOO_MANY_REQUESTS (a transfer runs). cb: 0 once target
 * leads, CAIRN_ETIMEOUT_LEADER_TRANSFER if it did not within an election
 * timeout. */
int raftnode_move_leader(raftnode *n, uint64_t target, void *data, raftnode_member_cb cb);

/* cb runs once when this member finds itself removed from the cluster (and,
 * when it led, after raft's change committed and it stepped down): etcd
 * stops such a member. One listener; NULL removes it. */
void raftnode_on_removed(raftnode *n, void (*cb)(void *data), void *data);

/* Stops raft cleanly: new proposals get CAIRN_ESTOPPED at once; the ones in
 * flight get their outcome, waiting for them at most the request timeout
 * (then CAIRN_ESTOPPED); raft is closed only once no apply and no snapshot
 * is in flight and from outside any raft callback (libraft 0.15's close
 * crashes). Then closed_cb(data) runs on the loop and n is freed. Calling it
 * twice is a bug (asserted). */
void raftnode_stop(raftnode *n, void (*closed_cb)(void *data), void *data);

#endif
