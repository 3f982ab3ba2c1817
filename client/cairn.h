/* client/cairn.h: libcairn, the C client of Cairn (and of etcd: it speaks
 * the etcd v3 gRPC API and nothing else, so it works against both).
 *
 * Messages. Requests and responses are etcd's own protobuf messages, as
 * protobuf-c generates them from wire/proto/ (Etcdserverpb__RangeRequest,
 * Mvccpb__KeyValue, ...), the way etcd's Go client hands out etcdserverpb
 * types. Build a request with its *__INIT macro; read a response's fields
 * directly. The generated headers are installed next to this one.
 *
 * Two APIs:
 * - the asynchronous API (cairn_client) runs on a libuv loop the caller
 *   owns and drives;
 * - the blocking API (cairn_sync) owns a loop on a thread of its own and
 *   offers the same calls as functions that wait for their answer.
 *
 * Threading. Every cairn_client function, and every function on the objects
 * it creates (watches, keep-alives, informers, transactions being built),
 * must be called on the thread that runs the client's loop. Callbacks run on
 * that thread, from the loop, never inside the function that caused them,
 * so a callback may call any function of this header except cairn_sync_*.
 * Every cairn_sync function may be called from any thread, concurrently,
 * except from inside a callback of the sync client's own loop (those get
 * CAIRN_EINVAL rather than a deadlock).
 *
 * Errors. A function returns 0 or a negative CAIRN_E* code
 * (common/cairn_error.h; cairn_strerror() has the text) for what it can
 * tell at once: invalid arguments (CAIRN_EINVAL), no memory (CAIRN_ENOMEM),
 * a client that is closing (CAIRN_ESTOPPED), a bound reached (CAIRN_EBUSY).
 * A function that takes a callback and returns an error never calls the
 * callback. Everything else arrives in the callback as a gRPC status code
 * (enum grpc_status: 0 OK, 4 DEADLINE_EXCEEDED, 14 UNAVAILABLE, ...) and
 * the server's text byte for byte ("etcdserver: mvcc: required revision has
 * been compacted"); failures on our side use grpc-go's texts
 * ("context deadline exceeded", "context canceled").
 *
 * Endpoints, failover and retries. A client has one or more endpoints
 * ("http://10.0.0.1:2379", "https://name:2379", "host:port" is plaintext),
 * and one HTTP/2 connection to each endpoint it uses. Calls go to the
 * current endpoint; when its connection fails (refused, reset, TLS failure,
 * keep-alive PING unanswered) the client moves to the next endpoint in
 * order, skipping endpoints that failed in the last second. A call is
 * retried, on the next endpoint, with backoff (25 ms doubling to 1 s), until
 * its deadline:
 * - read-only calls (Range, LeaseTimeToLive, LeaseLeases, MemberList,
 *   Status, HashKV; cairn_unary with idempotent=true) on any UNAVAILABLE:
 *   a failed connection or etcd's unavailable errors ("etcdserver: no
 *   leader", "etcdserver: leader changed", "etcdserver: request timed out",
 *   "etcdserver: server stopped", ...);
 * - every other call only when the outcome is known to be "not done": the
 *   connection failed before the request was sent, or the server refused it
 *   without proposing it ("etcdserver: not leader", "etcdserver: no leader",
 *   "etcdserver: rpc not supported for learner"). A write whose connection
 *   broke after it was sent ends with UNAVAILABLE and the transport's text;
 *   the caller decides (etcd's Go client does the same).
 * Watches, lease keep-alives and informers reconnect by themselves (below).
 *
 * Deadlines. Every unary call has one: its own timeout_ms, else the
 * client's request_timeout_ms (default 5 s); retries happen within it. On
 * expiry the callback gets DEADLINE_EXCEEDED "context deadline exceeded".
 *
 * Ownership. The library copies every argument it keeps (keys, requests,
 * option strings) before the function returns. Response messages handed to
 * a callback are valid during the callback only; the blocking API hands
 * them to the caller, who frees them with cairn_response_free().
 *
 * Bounds. Calls at once per endpoint connection (65536: CAIRN_EBUSY), the
 * size of one response message (max_recv_message_bytes, default 64 MiB:
 * the call fails with RESOURCE_EXHAUSTED), bytes queued to send per stream
 * (8 MiB), an informer's mirror (max_keys and max_bytes: the informer stops
 * with RESOURCE_EXHAUSTED), a watch's undelivered events (the HTTP/2 stream
 * window: the server waits). */
#ifndef CAIRN_CLIENT_H
#define CAIRN_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cairn_error.h"
#include "rpc.pb-c.h" /* Etcdserverpb__*, and through it Mvccpb__* (kv.pb-c.h) */

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CAIRN_BUILDING_LIBRARY)
#define CAIRN_API __attribute__((visibility("default")))
#else
#define CAIRN_API
#endif

/* Version of the library (CMake's project version). Static storage. */
CAIRN_API const char *cairn_version(void);

/* ---- configuration -------------------------------------------------------- */

/* Defaults of struct cairn_config (a field left 0). */
#define CAIRN_DEFAULT_DIAL_TIMEOUT_MS 2000u       /* etcdctl's --dial-timeout */
#define CAIRN_DEFAULT_REQUEST_TIMEOUT_MS 5000u    /* etcdctl's --command-timeout */
#define CAIRN_DEFAULT_KEEPALIVE_TIME_MS 10000u    /* idle time before a PING */
#define CAIRN_DEFAULT_KEEPALIVE_TIMEOUT_MS 6000u  /* unanswered PING: connection dead */
#define CAIRN_ENDPOINTS_MAX 64u

struct cairn_config {
  const char *const *endpoints; /* n_endpoints of them, 1..CAIRN_ENDPOINTS_MAX */
  size_t n_endpoints;

  /* TLS, for https:// endpoints (refused with CAIRN_EINVAL otherwise). */
  const char *ca_file;       /* PEM CA bundle; NULL: the system's */
  const char *cert_file;     /* PEM client certificate, with key_file */
  const char *key_file;
  const char *server_name;   /* SNI and name checked; NULL: the endpoint's host */
  bool insecure_skip_verify; /* accept any server certificate */

  uint64_t dial_timeout_ms;      /* connect + TLS handshake to one endpoint */
  uint64_t request_timeout_ms;   /* default deadline of a unary call */
  uint64_t keepalive_time_ms;    /* HTTP/2 PING after this long without a frame */
  uint64_t keepalive_timeout_ms; /* PING unanswered this long: the connection is dead */
  size_t max_recv_message_bytes; /* 0: 64 MiB */
};

/* Per-call options; NULL means all defaults. */
struct cairn_call_opts {
  uint64_t timeout_ms;  /* 0: the client's request_timeout_ms */
  const char *endpoint; /* non-NULL: only this endpoint (one of the client's,
                         * as given in the config), no failover (Status,
                         * Defragment and snapshots of one member) */
};

/* ---- the asynchronous client ---------------------------------------------- */

typedef struct cairn_client cairn_client;

/* Creates a client on loop. Nothing connects until the first call. The
 * config and its strings are copied; TLS files are read here. Errors:
 * CAIRN_EINVAL (no endpoint, a bad endpoint, TLS options without https://,
 * unreadable TLS files; the reason on stderr), CAIRN_ENOMEM. On success the
 * caller ends the client with cairn_client_close() before closing the loop. */
CAIRN_API int cairn_client_new(uv_loop_t *loop, const struct cairn_config *cfg,
                               cairn_client **out);

/* Closes the client: pending calls end with CANCELLED "grpc: the client
 * connection is closing"; watches, keep-alives and informers that were not
 * stopped end the same way (their end callbacks run); then closed_cb(data)
 * runs from the loop and the client is freed. Once. closed_cb may be NULL. */
CAIRN_API void cairn_client_close(cairn_client *c, void (*closed_cb)(void *data), void *data);

CAIRN_API uv_loop_t *cairn_client_loop(const cairn_client *c);

/* The endpoint calls go to now ("host:port"). Static for the client's life. */
CAIRN_API const char *cairn_client_endpoint(const cairn_client *c);

/* The outcome of a call. msg is the response message (cast it to the type
 * the function names), NULL unless code is 0; message is "" when code is 0.
 * endpoint is the "host:port" that answered or failed last. All valid
 * during the callback only. */
struct cairn_result {
  int code;
  const char *message;
  const ProtobufCMessage *msg;
  const char *endpoint;
};
typedef void (*cairn_cb)(void *data, const struct cairn_result *r);

/* Any unary method: path "/etcdserverpb.KV/Range", req packed as it is,
 * the response unpacked with resp_desc; idempotent: may be retried on any
 * UNAVAILABLE (see the retry rules above). cb runs exactly once. Errors:
 * CAIRN_EINVAL (bad path, NULL req or resp_desc), CAIRN_ESTOPPED, CAIRN_EBUSY,
 * CAIRN_ENOMEM. */
CAIRN_API int cairn_unary(cairn_client *c, const char *path, const ProtobufCMessage *req,
                          const ProtobufCMessageDescriptor *resp_desc, bool idempotent,
                          const struct cairn_call_opts *opts, cairn_cb cb, void *data);

/* KV. r->msg is Etcdserverpb__RangeResponse, __PutResponse,
 * __DeleteRangeResponse, __TxnResponse, __CompactionResponse. */
CAIRN_API int cairn_range(cairn_client *c, const Etcdserverpb__RangeRequest *req,
                          const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_put(cairn_client *c, const Etcdserverpb__PutRequest *req,
                        const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_delete(cairn_client *c, const Etcdserverpb__DeleteRangeRequest *req,
                           const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_txn(cairn_client *c, const Etcdserverpb__TxnRequest *req,
                        const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_compact(cairn_client *c, int64_t revision, bool physical,
                            const struct cairn_call_opts *opts, cairn_cb cb, void *data);

/* Shorthands: one key, linearizable (cairn_get); a key and value without
 * lease (cairn_put_kv). Same results as cairn_range and cairn_put. */
CAIRN_API int cairn_get(cairn_client *c, const void *key, size_t key_len,
                        const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_put_kv(cairn_client *c, const void *key, size_t key_len, const void *value,
                           size_t value_len, const struct cairn_call_opts *opts, cairn_cb cb,
                           void *data);

/* The range_end that makes [key, range_end) the prefix key: key with its
 * last byte below 0xff incremented and what follows dropped; "\0" (length 1,
 * every key from key on) when key is empty or all 0xff. out must hold
 * key_len bytes (1 if key_len is 0). Returns the length written. */
CAIRN_API size_t cairn_prefix_end(const void *key, size_t key_len, uint8_t *out);

/* ---- transactions ------------------------------------------------------ */

/* A transaction being built: compares, then the operations of the success
 * branch (then = true) and of the failure branch. Every function copies its
 * arguments. Errors are sticky, as LMDB's: after a failed add (CAIRN_ENOMEM,
 * CAIRN_EINVAL) every later add and cairn_txn_commit() return that error. */
/* (A struct tag, not a typedef: cairn_txn is also the function that sends
 * a TxnRequest, and C gives both one namespace.) */
struct cairn_txn;

enum cairn_cmp { CAIRN_CMP_EQUAL, CAIRN_CMP_GREATER, CAIRN_CMP_LESS, CAIRN_CMP_NOT_EQUAL };

/* NULL when out of memory. Free with cairn_txn_free(). */
CAIRN_API struct cairn_txn *cairn_txn_new(void);
CAIRN_API void cairn_txn_free(struct cairn_txn *t);

/* Compares of one key (range_end NULL) or of a range [key, range_end). */
CAIRN_API int cairn_txn_if_value(struct cairn_txn *t, const void *key, size_t key_len,
                                 const void *range_end, size_t range_end_len, enum cairn_cmp op,
                                 const void *value, size_t value_len);
CAIRN_API int cairn_txn_if_version(struct cairn_txn *t, const void *key, size_t key_len,
                                   const void *range_end, size_t range_end_len, enum cairn_cmp op,
                                   int64_t version);
CAIRN_API int cairn_txn_if_create_revision(struct cairn_txn *t, const void *key, size_t key_len,
                                           const void *range_end, size_t range_end_len,
                                           enum cairn_cmp op, int64_t revision);
CAIRN_API int cairn_txn_if_mod_revision(struct cairn_txn *t, const void *key, size_t key_len,
                                        const void *range_end, size_t range_end_len,
                                        enum cairn_cmp op, int64_t revision);
CAIRN_API int cairn_txn_if_lease(struct cairn_txn *t, const void *key, size_t key_len,
                                 const void *range_end, size_t range_end_len, enum cairn_cmp op,
                                 int64_t lease);

/* Operations; the request is deep-copied. */
CAIRN_API int cairn_txn_range(struct cairn_txn *t, bool then, const Etcdserverpb__RangeRequest *req);
CAIRN_API int cairn_txn_put(struct cairn_txn *t, bool then, const Etcdserverpb__PutRequest *req);
CAIRN_API int cairn_txn_delete(struct cairn_txn *t, bool then, const Etcdserverpb__DeleteRangeRequest *req);
/* A nested transaction: inner is consumed (freed by t) even on error. */
CAIRN_API int cairn_txn_nest(struct cairn_txn *t, bool then, struct cairn_txn *inner);

/* The request built so far (owned by t, valid until the next add or free),
 * or NULL after a sticky error. */
CAIRN_API const Etcdserverpb__TxnRequest *cairn_txn_request(const struct cairn_txn *t);

/* cairn_txn(c, cairn_txn_request(t), ...); the sticky error if any. t may
 * be freed as soon as this returns. */
CAIRN_API int cairn_txn_commit(cairn_client *c, const struct cairn_txn *t,
                               const struct cairn_call_opts *opts, cairn_cb cb, void *data);

/* ---- leases ----------------------------------------------------------- */

/* r->msg: Etcdserverpb__LeaseGrantResponse (id 0: the server picks),
 * __LeaseRevokeResponse, __LeaseTimeToLiveResponse (keys: the attached
 * keys too), __LeaseLeasesResponse. */
CAIRN_API int cairn_lease_grant(cairn_client *c, int64_t ttl_s, int64_t id,
                                const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_lease_revoke(cairn_client *c, int64_t id, const struct cairn_call_opts *opts,
                                 cairn_cb cb, void *data);
CAIRN_API int cairn_lease_time_to_live(cairn_client *c, int64_t id, bool keys,
                                       const struct cairn_call_opts *opts, cairn_cb cb,
                                       void *data);
CAIRN_API int cairn_lease_leases(cairn_client *c, const struct cairn_call_opts *opts,
                                 cairn_cb cb, void *data);

/* Automatic keep-alive of one lease, until cairn_keepalive_stop() or the
 * lease's end. A renewal goes out every TTL/3 (of the TTL the last answer
 * gave) over a LeaseKeepAlive stream that the client shares among its
 * keep-alives; when the stream fails (connection lost, leader lost) it is
 * opened again on the next endpoint, with backoff, and renewals go on: a
 * leader change costs no more than the time to reconnect. A stream that
 * leaves a renewal unanswered until the next is due (at least 1 s) is
 * taken for stuck (a member that lost its leader still answers PINGs) and
 * opened again on the next endpoint. The keep-alive
 * ends when the server answers TTL <= 0 (the lease expired or was revoked:
 * on_end with NOT_FOUND "etcdserver: requested lease not found") or the
 * client closes (CANCELLED). */
typedef struct cairn_keepalive cairn_keepalive;
struct cairn_keepalive_handlers {
  /* Each answer: the lease's remaining TTL in seconds. May be NULL. */
  void (*on_renewed)(void *data, int64_t id, int64_t ttl_s);
  /* The keep-alive is over (not after cairn_keepalive_stop()); the handle
   * is freed when it returns. Required. */
  void (*on_end)(void *data, int64_t id, int code, const char *message);
};
/* Errors: CAIRN_EINVAL (id <= 0, no on_end), CAIRN_ESTOPPED, CAIRN_ENOMEM.
 * *out (may be NULL) is the handle, valid until on_end or stop. */
CAIRN_API int cairn_keepalive_start(cairn_client *c, int64_t id,
                                    const struct cairn_keepalive_handlers *h, void *data,
                                    cairn_keepalive **out);
/* Stops renewing (the lease itself is left to expire or to be revoked);
 * no callback runs afterwards; the handle is freed. */
CAIRN_API void cairn_keepalive_stop(cairn_keepalive *ka);

/* ---- watch ------------------------------------------------------------- */

/* A watch that survives disconnects. It streams with "hasleader: true" (a
 * member that loses its leader ends the stream) and, when the stream ends
 * for any reason but compaction, cancellation or the client's close, opens
 * it again on the next endpoint from the revision after the last one it
 * delivered (or after the created revision when nothing was delivered
 * yet), with backoff. Events are delivered once each, in revision order:
 * nothing missed, nothing twice. */
typedef struct cairn_watch cairn_watch;

struct cairn_watch_opts {
  const void *key; /* required, non-empty unless range_end is "\0" */
  size_t key_len;
  const void *range_end; /* NULL: key alone; cairn_prefix_end() for a prefix */
  size_t range_end_len;
  int64_t start_revision; /* 0: from now */
  bool prev_kv;
  bool progress_notify; /* the server's periodic empty updates */
  bool no_put, no_delete;
};

struct cairn_watch_update {
  /* Every event of the watch up to this revision has been delivered. It is
   * the header's revision when the update carries everything up to it, and
   * the last revision whose events are all delivered when the server sends
   * a catch-up in parts (etcd sends at most 1000 revisions at a time, each
   * with the current header): so it may be below the store's revision. */
  int64_t revision;
  /* Events in revision order, each with kv->mod_revision greater than any
   * delivered before; none on a progress update. */
  Mvccpb__Event *const *events;
  size_t n_events;
  /* The header of the server's response this update came from (cluster
   * and member IDs, the store's revision then, raft term); NULL if the
   * server sent none. */
  const Etcdserverpb__ResponseHeader *header;
};

struct cairn_watch_handlers {
  /* Valid during the callback only. Required. */
  void (*on_update)(void *data, const struct cairn_watch_update *u);
  /* The watch is over (not after cairn_watch_stop()): compaction
   * (OUT_OF_RANGE "etcdserver: mvcc: required revision has been
   * compacted", compact_revision the oldest revision left: start a new
   * watch from it, or list again), the client's close (CANCELLED), or a
   * refusal no retry can mend (INVALID_ARGUMENT, PERMISSION_DENIED, ...).
   * The handle is freed when it returns. Required. */
  void (*on_end)(void *data, int code, const char *message, int64_t compact_revision);
};

/* Errors: CAIRN_EINVAL (no key, missing handlers), CAIRN_ESTOPPED,
 * CAIRN_ENOMEM. *out (may be NULL) is the handle. */
CAIRN_API int cairn_watch_start(cairn_client *c, const struct cairn_watch_opts *opts,
                                const struct cairn_watch_handlers *h, void *data,
                                cairn_watch **out);
/* Stops: no callback afterwards; the handle is freed. */
CAIRN_API void cairn_watch_stop(cairn_watch *w);
/* The highest revision delivered (events or progress), 0 before any. */
CAIRN_API int64_t cairn_watch_revision(const cairn_watch *w);

/* ---- informer: a prefix mirrored in memory ----------------------------- */

/* Lists the prefix (in pages of CAIRN_INFORMER_PAGE_KEYS, all at the first
 * page's revision), then watches it from the next revision, keeping a
 * local map equal to the prefix at the informer's revision. After a
 * compaction, or when the watch could not be resumed for relist_after_ms,
 * it lists again and delivers only the differences (adds, updates, deletes)
 * against its map. It never gives up on its own: unavailable endpoints are
 * retried with backoff (on_error reports each failure, for logs). */
typedef struct cairn_informer cairn_informer;

#define CAIRN_INFORMER_PAGE_KEYS 1000u
#define CAIRN_DEFAULT_INFORMER_MAX_KEYS 1000000u
#define CAIRN_DEFAULT_INFORMER_MAX_BYTES ((size_t)1 << 30)
#define CAIRN_DEFAULT_INFORMER_RELIST_AFTER_MS 30000u

struct cairn_informer_opts {
  const void *prefix; /* may be empty: every key */
  size_t prefix_len;
  size_t max_keys;          /* 0: CAIRN_DEFAULT_INFORMER_MAX_KEYS */
  size_t max_bytes;         /* keys + values; 0: CAIRN_DEFAULT_INFORMER_MAX_BYTES */
  uint64_t relist_after_ms; /* 0: CAIRN_DEFAULT_INFORMER_RELIST_AFTER_MS */
};

struct cairn_informer_handlers {
  /* A key appeared, changed, or went. kv and old are valid during the
   * callback only. Each may be NULL. */
  void (*on_add)(void *data, const Mvccpb__KeyValue *kv);
  void (*on_update)(void *data, const Mvccpb__KeyValue *old, const Mvccpb__KeyValue *kv);
  void (*on_delete)(void *data, const Mvccpb__KeyValue *old);
  /* The map is the prefix at revision: after the first list, after each
   * re-list, and after each batch of watch events (a batch: one watch
   * update, so every event of one revision comes before on_synced).
   * relisted says this follows a list. May be NULL. */
  void (*on_synced)(void *data, int64_t revision, bool relisted);
  /* A failure the informer retries (it goes on); for logs. May be NULL. */
  void (*on_error)(void *data, int code, const char *message);
  /* The informer is over: max_keys or max_bytes reached
   * (RESOURCE_EXHAUSTED), or the client's close (CANCELLED). Not after
   * cairn_informer_stop(). The handle is freed when it returns. Required. */
  void (*on_end)(void *data, int code, const char *message);
};

/* Errors: CAIRN_EINVAL, CAIRN_ESTOPPED, CAIRN_ENOMEM. */
CAIRN_API int cairn_informer_start(cairn_client *c, const struct cairn_informer_opts *opts,
                                   const struct cairn_informer_handlers *h, void *data,
                                   cairn_informer **out);
/* No callback afterwards; the map is freed. */
CAIRN_API void cairn_informer_stop(cairn_informer *inf);
/* The revision the map stands at; 0 before the first list completed. */
CAIRN_API int64_t cairn_informer_revision(const cairn_informer *inf);
CAIRN_API size_t cairn_informer_size(const cairn_informer *inf);
/* One key of the map, or NULL. Valid until control returns to the loop. */
CAIRN_API const Mvccpb__KeyValue *cairn_informer_get(const cairn_informer *inf, const void *key,
                                                     size_t key_len);
/* Every key of the map in key order, all at cairn_informer_revision()
 * (nothing changes the map while it runs). fn returns nonzero to stop early;
 * that value is returned. fn must not stop the informer. */
CAIRN_API int cairn_informer_foreach(const cairn_informer *inf,
                                     int (*fn)(void *data, const Mvccpb__KeyValue *kv),
                                     void *data);

/* ---- cluster and maintenance ------------------------------------------ */

/* r->msg: Etcdserverpb__MemberListResponse, __MemberAddResponse,
 * __MemberRemoveResponse, __MemberUpdateResponse, __MemberPromoteResponse,
 * __StatusResponse, __DefragmentResponse, __MoveLeaderResponse. Status and
 * Defragment concern one member: pass opts->endpoint to choose it. */
CAIRN_API int cairn_member_list(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                                void *data);
CAIRN_API int cairn_member_add(cairn_client *c, const char *const *peer_urls, size_t n,
                               bool is_learner, const struct cairn_call_opts *opts, cairn_cb cb,
                               void *data);
CAIRN_API int cairn_member_remove(cairn_client *c, uint64_t id, const struct cairn_call_opts *opts,
                                  cairn_cb cb, void *data);
CAIRN_API int cairn_member_update(cairn_client *c, uint64_t id, const char *const *peer_urls,
                                  size_t n, const struct cairn_call_opts *opts, cairn_cb cb,
                                  void *data);
CAIRN_API int cairn_member_promote(cairn_client *c, uint64_t id,
                                   const struct cairn_call_opts *opts, cairn_cb cb, void *data);
CAIRN_API int cairn_status(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                           void *data);
CAIRN_API int cairn_defragment(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                               void *data);
CAIRN_API int cairn_move_leader(cairn_client *c, uint64_t target_id,
                                const struct cairn_call_opts *opts, cairn_cb cb, void *data);

/* Saves a snapshot of one member's store (opts->endpoint, else the current
 * endpoint) to path: streamed to "<path>.part", checked against the
 * SHA-256 the server appends (etcd's format), fsynced, then renamed to
 * path. The deadline (opts->timeout_ms; 0 here means none) covers the
 * whole transfer. cb: r->msg is NULL; on success *bytes is the file's size.
 * On failure the .part file is removed. Errors: CAIRN_EINVAL (path NULL or
 * too long), CAIRN_ESTOPPED, CAIRN_ENOMEM. */
typedef void (*cairn_snapshot_cb)(void *data, const struct cairn_result *r, uint64_t bytes);
CAIRN_API int cairn_snapshot_save(cairn_client *c, const char *path,
                                  const struct cairn_call_opts *opts, cairn_snapshot_cb cb,
                                  void *data);

/* Frees a response message the blocking API returned (any type; NULL is
 * allowed). */
CAIRN_API void cairn_response_free(ProtobufCMessage *msg);

/* ---- the blocking API -------------------------------------------------- */

/* A client on a loop of its own, run by a thread the library starts.
 * Every function below waits for its answer and returns:
 *   0                 success (*out, where given, is the caller's to free
 *                     with cairn_response_free());
 *   a negative CAIRN_E* the call could not start (invalid arguments, ...);
 *   a positive gRPC status code, with err->message the server's text.
 * err may be NULL. Thread-safe (see the top of this file). */
typedef struct cairn_sync cairn_sync;

#define CAIRN_ERROR_MESSAGE_MAX 512u
struct cairn_error {
  int code;                              /* as returned */
  char message[CAIRN_ERROR_MESSAGE_MAX]; /* "" on success; cut to fit */
  char endpoint[128];                    /* the endpoint that answered or failed last */
};

/* Starts the thread. Errors: those of cairn_client_new(), CAIRN_ENOMEM,
 * CAIRN_EIO (no thread). */
CAIRN_API int cairn_sync_new(const struct cairn_config *cfg, cairn_sync **out);
/* Closes the client (as cairn_client_close()) and joins the thread. Calls
 * still waiting in other threads return CANCELLED first. */
CAIRN_API void cairn_sync_close(cairn_sync *s);

/* Runs fn(client, data) on the sync client's loop thread and waits for it
 * to return: the way to start watches, keep-alives and informers (their
 * callbacks then run on that thread) and to read an informer's map
 * consistently. fn must not block. Returns fn's return value, or
 * CAIRN_ESTOPPED when the client is closing, CAIRN_EINVAL from the loop
 * thread itself. */
CAIRN_API int cairn_sync_run(cairn_sync *s, int (*fn)(cairn_client *c, void *data), void *data);

CAIRN_API int cairn_sync_unary(cairn_sync *s, const char *path, const ProtobufCMessage *req,
                               const ProtobufCMessageDescriptor *resp_desc, bool idempotent,
                               const struct cairn_call_opts *opts, ProtobufCMessage **out,
                               struct cairn_error *err);
CAIRN_API int cairn_sync_range(cairn_sync *s, const Etcdserverpb__RangeRequest *req,
                               const struct cairn_call_opts *opts,
                               Etcdserverpb__RangeResponse **out, struct cairn_error *err);
CAIRN_API int cairn_sync_put(cairn_sync *s, const Etcdserverpb__PutRequest *req,
                             const struct cairn_call_opts *opts, Etcdserverpb__PutResponse **out,
                             struct cairn_error *err);
CAIRN_API int cairn_sync_delete(cairn_sync *s, const Etcdserverpb__DeleteRangeRequest *req,
                                const struct cairn_call_opts *opts,
                                Etcdserverpb__DeleteRangeResponse **out, struct cairn_error *err);
CAIRN_API int cairn_sync_txn(cairn_sync *s, const struct cairn_txn *t, const struct cairn_call_opts *opts,
                             Etcdserverpb__TxnResponse **out, struct cairn_error *err);
CAIRN_API int cairn_sync_compact(cairn_sync *s, int64_t revision, bool physical,
                                 const struct cairn_call_opts *opts, struct cairn_error *err);
CAIRN_API int cairn_sync_lease_grant(cairn_sync *s, int64_t ttl_s, int64_t id,
                                     const struct cairn_call_opts *opts,
                                     Etcdserverpb__LeaseGrantResponse **out,
                                     struct cairn_error *err);
CAIRN_API int cairn_sync_lease_revoke(cairn_sync *s, int64_t id,
                                      const struct cairn_call_opts *opts,
                                      struct cairn_error *err);
CAIRN_API int cairn_sync_member_list(cairn_sync *s, const struct cairn_call_opts *opts,
                                     Etcdserverpb__MemberListResponse **out,
                                     struct cairn_error *err);
CAIRN_API int cairn_sync_status(cairn_sync *s, const struct cairn_call_opts *opts,
                                Etcdserverpb__StatusResponse **out, struct cairn_error *err);
/* *bytes (may be NULL) is the snapshot's size. */
CAIRN_API int cairn_sync_snapshot_save(cairn_sync *s, const char *path,
                                       const struct cairn_call_opts *opts, uint64_t *bytes,
                                       struct cairn_error *err);

#ifdef __cplusplus
}
#endif
#endif
