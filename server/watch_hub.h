/* server/watch_hub.h: the watch hub, which delivers the store's changes to
 * every watch stream (etcd's Watch service; etcd-wire.md section 4).
 *
 * Model. The hub keeps one live position in the change feed (mvcc_changes).
 * When raft applies a write (raftnode_on_applied) the hub reads the new
 * changes once, over the whole key space, in bounded batches, and hands each
 * event to the watchers whose range holds its key, found through an interval
 * index of the live ("synced") watchers: no per-event scan of all watchers.
 * Each watcher gets one WatchResponse per revision holding that revision's
 * events for it.
 *
 * A watcher whose start revision is in the past, or whose stream could not
 * take a response (grpc_call_send said CAIRN_EBUSY: the stream's bounded send
 * queue is full), is "unsynced": it leaves the index and catches up by
 * reading the feed for its own range from its own position, a bounded step at
 * a time from a libuv idle handle (and only while its stream is writable),
 * then rejoins the live set when it reaches the hub's position. Nothing is
 * buffered per stream beyond the send queue of the gRPC layer and a small
 * queue of control replies.
 *
 * Guarantees on one watch: events in revision order, no gap, no duplicate;
 * the created reply goes out before any event; the events of one revision are
 * never split across responses unless the revision is larger than
 * WATCH_REVISION_EVENTS_MAX events or WATCH_REVISION_BYTES_MAX bytes (then it
 * goes out in parts, marked fragment=true but the last when the watcher asked
 * for fragments), or the watcher asked for fragments and the response is
 * larger than the request limit. A response's header.revision is a revision
 * up to which this watcher has been sent everything: progress replies are
 * only sent for watchers that are live. See docs/watch.md.
 *
 * Threading: the loop thread only. Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_WATCH_HUB_H
#define CAIRN_WATCH_HUB_H

#include <stdbool.h>
#include <stdint.h>

#include "server/server.h"

/* ---- bounds (docs/watch.md says what happens at each) --------------------- */

/* Watch streams open at once; one more is refused with RESOURCE_EXHAUSTED
 * "etcdserver: too many requests". */
#define WATCH_STREAMS_MAX 65536u
/* Watchers on one stream, and in the whole hub; a create beyond either gets a
 * created+canceled reply with watch_id -1 and cancel_reason
 * "etcdserver: too many requests". */
#define WATCH_STREAM_WATCHERS_MAX 10000u
#define WATCH_HUB_WATCHERS_MAX 1000000u
/* Control replies (created, canceled, progress) queued on a stream whose send
 * queue is full. A client that sends this many requests without reading
 * has its stream ended with RESOURCE_EXHAUSTED "etcdserver: too many
 * requests". */
#define WATCH_STREAM_CTRL_MAX 1024u
/* Events asked of one change-feed read. The size adapts between MIN and MAX
 * so that a read holds about WATCH_FEED_BATCH_BYTES of keys and values. */
#define WATCH_FEED_BATCH_EVENTS_MAX 1000u
#define WATCH_FEED_BATCH_EVENTS_MIN 16u
#define WATCH_FEED_BATCH_BYTES (4u * 1024u * 1024u)
/* Whole revisions the live reader delivers together, as one response per
 * watcher: up to this many bytes of keys and values (prev_kv included). A
 * larger revision goes alone. */
#define WATCH_LIVE_GROUP_BYTES (256u * 1024u)
/* One revision's events held in memory before it goes out in parts. */
#define WATCH_REVISION_EVENTS_MAX 10000u
#define WATCH_REVISION_BYTES_MAX (64u * 1024u * 1024u)
/* Change-feed reads in one step of one reader (the live reader or one
 * catching-up watcher). */
#define WATCH_STEP_READS_MAX 16u
/* Time the hub's idle callback works before it yields to the loop; at least
 * one step runs per callback. */
#define WATCH_TICK_BUDGET_US 5000u
/* Progress notifications (progress_notify): etcd's default interval,
 * overridden by CAIRN_WATCH_PROGRESS_INTERVAL_MS (at least 10 ms). */
#define WATCH_PROGRESS_INTERVAL_MS_DEFAULT 600000u
#define WATCH_PROGRESS_INTERVAL_MS_MIN 10u
/* Streams opened with the "hasleader" header are ended with UNAVAILABLE
 * "etcdserver: no leader" after this many election timeouts without a
 * leader (etcd's maxNoLeaderCnt). */
#define WATCH_NO_LEADER_CHECKS 3u

/* etcd's cancel_reason texts for refused creates (mvcc/watcher.go). They are
 * cancel reasons on a created reply, not gRPC errors, so they are not in the
 * CAIRN_E* table. */
#define WATCH_REASON_DUPLICATE_ID "mvcc: duplicate watch ID provided on the WatchStream"
#define WATCH_REASON_EMPTY_RANGE "mvcc: watcher range is empty"

struct watch_hub;
struct watch_stream;

/* A create request, decoded from WatchCreateRequest. The bytes belong to the
 * caller; the hub copies what it keeps. */
struct watch_create_req {
  struct mvcc_bytes key;       /* empty: "\0", the smallest key */
  struct mvcc_bytes range_end; /* empty: the key alone; "\0": every key >= key */
  int64_t start_revision;      /* <= 0: the current revision + 1 */
  int64_t watch_id;            /* 0: the hub picks the lowest free id */
  bool progress_notify;
  bool prev_kv;
  bool fragment;
  bool no_put;    /* filter NOPUT */
  bool no_delete; /* filter NODELETE */
};

/* Creates the hub for s (s->store, s->raft, s->loop, s->cfg must be set),
 * registers it with raftnode_on_applied() and sets s->watch. Errors:
 * CAIRN_ENOMEM. */
int watch_hub_init(struct server *s);

/* Ends every stream's association with the hub (their calls are left to the
 * gRPC server's shutdown), clears the hub's raft listener, closes the hub's
 * libuv handles and frees the hub once they are closed (the loop must run).
 * Sets s->watch to NULL. s->raft must be the live node or NULL: close the
 * hub before raftnode_stop(), or set s->raft to NULL once the node is
 * freed. Calls of the functions below on this hub's streams are not allowed
 * afterwards; on_close of a call is (it finds no stream). */
void watch_hub_close(struct watch_hub *h);

/* A new revision was applied (the raftnode_on_applied listener; tests call it
 * directly). The hub reads and delivers the changes soon after, from its
 * idle handle. */
void watch_hub_notify(struct watch_hub *h, int64_t revision);

/* Opens the hub's state for a Watch call. With hasleader (the client's
 * "hasleader: true" metadata) the stream is refused when this member knows
 * no leader, and ended later if it has none for WATCH_NO_LEADER_CHECKS
 * election timeouts. The hub keeps call until watch_hub_stream_close().
 * Errors (nothing was created): CAIRN_ENO_LEADER, CAIRN_ETOO_MANY_REQUESTS
 * (WATCH_STREAMS_MAX), CAIRN_ENOMEM. */
int watch_hub_stream_open(struct watch_hub *h, grpc_call *call, bool hasleader,
                          struct watch_stream **out);

/* The call is over (its on_close): frees the stream and its watchers. */
void watch_hub_stream_close(struct watch_stream *st);

/* The three requests of a stream. Each answers on the stream as etcd does;
 * none fails (a refused create is answered created+canceled). */
void watch_hub_create(struct watch_stream *st, const struct watch_create_req *req);
void watch_hub_cancel(struct watch_stream *st, int64_t watch_id);
/* progress_request: {header.revision = the hub's delivered revision,
 * watch_id = -1}, sent once every watcher of the stream is live (as etcd
 * 3.5 does; 3.4 answered at once even for watchers still catching up). */
void watch_hub_progress(struct watch_stream *st);

/* The revision up to which every live watcher has been sent everything.
 * Physical compaction (mvcc_compact_step) at revision C removes C's own
 * deletes from the change feed, which the live reader may not have read
 * yet (raft notifies the hub after a batch of entries, which may hold a
 * write at C and the compaction at C): the compactor should wait until this
 * is >= C. Watchers catching up are not waited for; a compaction passing
 * them cancels them with compact_revision, as in etcd. */
int64_t watch_hub_delivered_revision(struct watch_hub *h);

/* Counters for /metrics: watchers, streams, and watchers not in the live set
 * (catching up, or on a stream whose send queue is full). Any pointer may be
 * NULL. */
void watch_hub_stats(const struct watch_hub *h, uint64_t *watchers, uint64_t *streams,
                     uint64_t *slow);

#endif
