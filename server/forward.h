/* server/forward.h: any member serves any request.
 *
 * Writes (KV Put, DeleteRange, Txn, Compact), lease calls (Grant, Revoke,
 * TimeToLive, Leases, the KeepAlive stream) and membership changes go
 * through the leader: a follower hands the call, message for message, to the
 * leader's client URL (from the replicated member table) over the gRPC
 * client, marked "cairn-forwarded" so that it is never forwarded twice, and
 * relays the answer with its own member id in the response header. Before
 * answering a forwarded write it waits (at most the request timeout) until
 * its own store reached the write's revision, as an etcd follower answers
 * after its own apply: a client that writes through a member then reads it
 * serializably there, or watches there, sees its write.
 *
 * Linearizable reads (Range without serializable, read-only Txn on the
 * leader) wait for the read index: on the leader raftnode_read_index(); on a
 * follower the leader's index from /cairnserverpb.Internal/ReadIndex (one
 * call in flight, the reads that arrive meanwhile share the next), then
 * raftnode_wait_applied().
 *
 * A member that knows no leader holds a forwarded call until one is elected,
 * at most FORWARD_NO_LEADER_WAIT_ELECTIONS election timeouts, then answers
 * etcd's "etcdserver: no leader". A call with the "hasleader: true" header
 * (clientv3.WithRequireLeader) on a member without a leader is refused with
 * the same error at once, as etcd's interceptor does.
 *
 * Bounds: calls held by this module (forwarded or waiting for a read index)
 * FORWARD_CALLS_MAX; beyond it "etcdserver: too many requests". */
#ifndef CAIRN_FORWARD_H
#define CAIRN_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/server.h"

#define FORWARD_CALLS_MAX 65536u
#define FORWARD_NO_LEADER_WAIT_ELECTIONS 3u
/* The request header that marks a forwarded call. */
#define FORWARD_HEADER "cairn-forwarded"

/* Installs the router and registers /cairnserverpb.Internal/ReadIndex.
 * After every service registered its methods. */
int forward_init(struct server *s);

/* Cancels what is in flight (every held call is answered) and closes the
 * connections to the leader; done runs from the loop. */
void forward_close(struct server *s, void (*done)(void *data), void *data);

/* At shutdown (SIGTERM), a leader of several voters hands leadership to
 * another voter first (etcd's leadership transfer on shutdown), so that the
 * cluster does not wait an election timeout: done runs once the transfer
 * finished, failed, or took two election timeouts; at once when this
 * member does not lead. */
void forward_handoff(struct server *s, void (*done)(void *data), void *data);

/* A read that must be linearizable: returns false when the read may be
 * served at once (a single voter that leads); otherwise true, and
 * fn(call, msg, len, ctx) runs once this member's store has reached the
 * read index (msg copied), or the call is failed with etcd's error. A call
 * given here must have server_read_gate_closed() in its on_close. */
typedef void (*server_read_fn)(grpc_call *call, const uint8_t *msg, size_t len, void *ctx);
/* Whether a linearizable read must wait (not a single voter that leads). */
bool server_read_gate_needed(struct server *s);
bool server_read_gate(struct server *s, grpc_call *call, const uint8_t *msg, size_t len,
                      server_read_fn fn, void *ctx);
void server_read_gate_closed(struct server *s, grpc_call *call);

/* The same confirmation without a call (the /health probe): cb(data, 0)
 * once this member's store reached the read index, or a CAIRN_E* code
 * (no leader, timeout, leader changed) within about timeout_ms. cb runs
 * from the loop, never inside this call. Errors (cb not called):
 * CAIRN_ETOO_MANY_REQUESTS, CAIRN_ESTOPPED, raftnode_read_index's. */
int server_linearize(struct server *s, uint64_t timeout_ms, void (*cb)(void *data, int status),
                     void *data);

#endif
