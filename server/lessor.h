/* server/lessor.h: lease expiry, renewal and checkpoints (etcd's lessor).
 *
 * The store (storage/mvcc.h) is the record of which leases exist, their
 * granted TTL and their last checkpointed remaining TTL. The lessor keeps, in
 * memory, when each lease expires, and on the raft leader it drives expiry:
 * a lease whose time is up is revoked by proposing MVCC_OP_LEASE_REVOKE
 * through raft (retried until it is applied or the member stops leading).
 *
 * Time is the loop's monotonic clock (uv_now). On a follower no lease
 * expires; when a member becomes leader it first commits a barrier through
 * raft (so that it has applied every entry of earlier terms), then reloads
 * every lease from the store with expiry = now + remaining + election
 * timeout, where remaining is the last checkpoint if there is one, else the
 * granted TTL (the "restore rule", see docs/leases.md).
 *
 * Remaining TTLs across a restart (kill -9 included): the leader checkpoints
 * every live lease's remaining TTL through raft (MVCC_OP_LEASE_CHECKPOINT)
 * every LESSOR_CHECKPOINT_INTERVAL_MS, at most LESSOR_CHECKPOINTS_PER_TICK
 * per tick. A renewal clears the checkpoint (remaining_ms = -1, "full TTL"),
 * proposed before the keepalive is answered, as etcd does, so a restart never
 * shortens a lease that a client renewed. A checkpoint of -1 applied on the
 * leader is a renewal: that is how a keepalive received by a follower reaches
 * the leader (once the apply path calls lessor_applied() on every member).
 *
 * Threading: the loop thread only. Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_LESSOR_H
#define CAIRN_LESSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/mvcc.h"

struct server;
struct lessor;

/* Leases a member holds at most; a grant beyond it is refused with
 * CAIRN_ETOO_MANY_REQUESTS ("etcdserver: too many requests"). Leases already
 * in the store are all loaded whatever their number. */
#define LESSOR_LEASES_MAX 524288u
/* LeaseKeepAlive streams open at once on a member; the next one is ended
 * with CAIRN_ETOO_MANY_REQUESTS. */
#define LESSOR_KEEPALIVE_STREAMS_MAX 10000u
/* Renewals waiting for raft (a checkpoint clear, or a follower's renewal),
 * on the whole member; beyond it a keepalive gets CAIRN_ETOO_MANY_REQUESTS. */
#define LESSOR_RENEWS_INFLIGHT_MAX 1024u
/* How often the leader records each live lease's remaining TTL. */
#define LESSOR_CHECKPOINT_INTERVAL_MS 5000u
/* Checkpoints proposed per tick at most (LESSOR_TICK_MS), and in flight at
 * most: 500 per second. With more leases than that per interval, each lease
 * is checkpointed less often (every n / 500 seconds). */
#define LESSOR_CHECKPOINTS_PER_TICK 50u
#define LESSOR_CHECKPOINTS_INFLIGHT_MAX 256u
/* A lease renewed less than this long ago is not checkpointed: its record
 * (-1, full TTL) is within this much of the truth. */
#define LESSOR_CHECKPOINT_MIN_GAIN_MS 1000u
/* Revocations of expired leases in flight at most; the others wait their
 * turn in the expiry heap. A failed revocation is retried after
 * LESSOR_REVOKE_RETRY_MS. */
#define LESSOR_REVOKES_INFLIGHT_MAX 256u
#define LESSOR_REVOKE_RETRY_MS 500u
/* The lessor's periodic work: leadership changes, checkpoints. Expiry has a
 * timer of its own armed at the earliest expiry. */
#define LESSOR_TICK_MS 100u
/* etcd's MaxLeaseTTL, seconds. */
#define LESSOR_TTL_MAX_S 9000000000ll

/* Creates the lessor of s, loads every lease from s->store and sets
 * s->lessor. s->loop and s->store must be set; s->raft may be set later (the
 * member counts as a follower while it is NULL). Errors: CAIRN_ENOMEM, or the
 * store's error. */
int lessor_init(struct server *s);

/* Stops the timers and frees the lessor once every proposal it made has
 * called back (raftnode_stop() makes them call back). Sets s->lessor to NULL. */
void lessor_close(struct lessor *l);

/* The smallest TTL a lease gets, seconds: ceil(1.5 x election timeout). */
int64_t lessor_min_ttl(const struct lessor *l);

/* Reserves room for one grant: CAIRN_ETOO_MANY_REQUESTS when the member
 * holds LESSOR_LEASES_MAX leases, counting grants in flight. Every 0 return
 * is matched by one lessor_grant_done() when the grant's outcome is known. */
int lessor_grant_begin(struct lessor *l);
void lessor_grant_done(struct lessor *l);

/* Picks a positive 63-bit lease id that neither the store nor the lessor
 * knows. Errors: CAIRN_EIO (no randomness), the store's error. */
int lessor_pick_id(struct lessor *l, int64_t *id);

/* Tells the lessor about a lease op applied to the store on this member
 * (grant, revoke, checkpoint; other ops are ignored), whoever proposed it.
 * The lease service calls it from its own proposals' callbacks; the apply
 * path should call it for every applied lease op on every member, so that a
 * leader learns of grants, revocations and renewals proposed by other
 * members. Calling it twice for one op is harmless. */
void lessor_applied(struct lessor *l, const struct mvcc_op *op, const struct mvcc_result *r);

/* Renews lease id (a keepalive). Returns 0 and sets *ttl when the answer is
 * known now: the lease's TTL in seconds, or 0 for an unknown or expired lease
 * (etcd's answer). Returns 1 when the renewal goes through raft (the leader
 * clearing a checkpoint, or a renewal received by a follower): cb then runs
 * once with 0 and the TTL (0 for an unknown lease), or a CAIRN_E* code.
 * Errors (cb never called): CAIRN_ETOO_MANY_REQUESTS
 * (LESSOR_RENEWS_INFLIGHT_MAX), CAIRN_ENOMEM, server_propose's errors. */
typedef void (*lessor_renew_cb)(void *data, int status, int64_t ttl);
int lessor_renew(struct lessor *l, int64_t id, int64_t *ttl, void *data, lessor_renew_cb cb);

/* The remaining TTL of lease (as read from the store by the caller), in
 * milliseconds, >= 0. The leader answers from its expiry times; a follower
 * estimates it from the lease's record (last checkpoint, else the TTL). */
int64_t lessor_remaining_ms(struct lessor *l, const struct mvcc_lease *lease);

/* Accounts LeaseKeepAlive streams: CAIRN_ETOO_MANY_REQUESTS beyond
 * LESSOR_KEEPALIVE_STREAMS_MAX. Every 0 return is matched by one
 * lessor_stream_close(). */
int lessor_stream_open(struct lessor *l);
void lessor_stream_close(struct lessor *l);

/* Reloads every lease from the store after its data was replaced
 * (mvcc_replace: a store transfer); a leader restarts their expiry as on
 * promotion. Errors: the store's (the old view is then gone: empty). */
int lessor_store_replaced(struct lessor *l);

/* For /metrics: the number of leases this member knows. */
void lessor_stats(const struct lessor *l, uint64_t *leases);

#endif
