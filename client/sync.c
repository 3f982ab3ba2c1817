/* client/sync.c: the blocking API (cairn_sync, client/cairn.h).
 *
 * A sync client owns a loop and a thread that runs it, with a cairn_client
 * on that loop. A blocking function builds a request on its own stack,
 * queues it (under s->mu) and wakes the loop (uv_async_send); the loop
 * thread takes the queue, runs each request's start function, and whoever
 * finishes the request (the start function itself, or the call's callback
 * later) stores the outcome and signals the request's condition variable.
 * The caller waits on it, then returns.
 *
 * Bounds: at most SYNC_QUEUE_MAX requests wait in the queue; a caller
 * finding it full waits (on s->space) until the loop drains it. The loop
 * takes at most SYNC_QUEUE_MAX per wakeup.
 *
 * A request from the loop thread itself (a callback of this client) would
 * wait for the loop it blocks: it gets CAIRN_EINVAL instead.
 *
 * Close: the closing flag (under s->mu) refuses new requests; the loop
 * fails the queued ones (CANCELLED for calls, CAIRN_ESTOPPED for runs),
 * closes the client (its calls in flight end with CANCELLED, their
 * waiters wake), then closes the async handle; the loop runs dry, the
 * thread ends, cairn_sync_close() joins it and frees everything. */
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"

#define SYNC_QUEUE_MAX 1024u

struct sync_req;
typedef int (*sync_start_fn)(cairn_client *c, struct sync_req *r);

struct sync_req {
  struct sync_req *next;
  sync_start_fn start;
  bool is_call; /* finished by a callback (else when start returns) */
  /* Inputs of the start functions. */
  int (*run_fn)(cairn_client *c, void *data);
  void *run_data;
  const char *path;
  const ProtobufCMessage *req;
  const ProtobufCMessageDescriptor *desc;
  bool idempotent;
  const struct cairn_call_opts *opts;
  const char *snap_path;
  /* Outcome. */
  bool done;
  int rc; /* as the blocking function returns it */
  ProtobufCMessage *msg;
  uint64_t bytes;
  struct cairn_error err;
  pthread_cond_t cv;
};

struct cairn_sync {
  uv_loop_t loop;
  uv_async_t async;
  pthread_t thread;
  cairn_client *c;
  pthread_mutex_t mu;
  pthread_cond_t space;
  struct sync_req *head, *tail;
  unsigned n_queued;
  bool closing;        /* under mu */
  bool close_started;  /* loop thread only */
};

/* ---- the loop side ------------------------------------------------------------ */

static void req_finish(cairn_sync *s, struct sync_req *r, int rc, const char *message,
                       const char *endpoint) {
  pthread_mutex_lock(&s->mu);
  r->rc = rc;
  r->err.code = rc;
  snprintf(r->err.message, sizeof r->err.message, "%s", message ? message : "");
  snprintf(r->err.endpoint, sizeof r->err.endpoint, "%s", endpoint ? endpoint : "");
  r->done = true;
  pthread_cond_signal(&r->cv);
  pthread_mutex_unlock(&s->mu);
}

static void sync_call_cb(void *data, const struct cairn_result *res) {
  struct sync_req *r = data;
  cairn_sync *s = r->run_data;
  int rc = res->code;
  if (rc == 0 && res->msg) {
    /* The message lives during this callback only: a copy for the caller. */
    uint8_t *buf;
    size_t len;
    if (cairn__pack(res->msg, &buf, &len) == 0) {
      r->msg = protobuf_c_message_unpack(res->msg->descriptor, NULL, len, buf);
      free(buf);
    }
    if (!r->msg) {
      rc = CAIRN_ENOMEM;
    }
  }
  req_finish(s, r, rc, rc == CAIRN_ENOMEM ? cairn_strerror(rc) : res->message, res->endpoint);
}

static void sync_snap_cb(void *data, const struct cairn_result *res, uint64_t bytes) {
  struct sync_req *r = data;
  r->bytes = bytes;
  req_finish(r->run_data, r, res->code, res->message, res->endpoint);
}

static int start_run(cairn_client *c, struct sync_req *r) {
  return r->run_fn(c, r->run_data);
}

static int start_unary(cairn_client *c, struct sync_req *r) {
  return cairn_unary(c, r->path, r->req, r->desc, r->idempotent, r->opts, sync_call_cb, r);
}

static int start_txn(cairn_client *c, struct sync_req *r) {
  return cairn_txn(c, (const Etcdserverpb__TxnRequest *)r->req, r->opts, sync_call_cb, r);
}

static int start_snapshot(cairn_client *c, struct sync_req *r) {
  return cairn_snapshot_save(c, r->snap_path, r->opts, sync_snap_cb, r);
}

static void on_client_closed(void *data) {
  cairn_sync *s = data;
  uv_close((uv_handle_t *)&s->async, NULL);
}

static void on_async(uv_async_t *a) {
  cairn_sync *s = a->data;
  pthread_mutex_lock(&s->mu);
  struct sync_req *list = s->head;
  s->head = s->tail = NULL;
  s->n_queued = 0;
  bool closing = s->closing;
  pthread_cond_broadcast(&s->space);
  pthread_mutex_unlock(&s->mu);
  /* Bounded by SYNC_QUEUE_MAX: the queue's size. */
  while (list) {
    struct sync_req *r = list;
    list = r->next;
    if (closing) {
      req_finish(s, r, r->is_call ? GRPC_CANCELLED : CAIRN_ESTOPPED,
                 r->is_call ? GRPC_CLIENT_CLOSING_TEXT : cairn_strerror(CAIRN_ESTOPPED), "");
      continue;
    }
    if (r->is_call) {
      r->run_data = s; /* the callbacks find the sync client here */
    }
    int rc = r->start(s->c, r);
    if (!r->is_call || rc != 0) {
      req_finish(s, r, rc, rc < 0 ? cairn_strerror(rc) : "", "");
    }
  }
  if (closing && !s->close_started) {
    s->close_started = true;
    cairn_client_close(s->c, on_client_closed, s);
  }
}

static void *sync_thread(void *arg) {
  cairn_sync *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* ---- the callers' side ---------------------------------------------------------- */

int cairn_sync_new(const struct cairn_config *cfg, cairn_sync **out) {
  if (!out) {
    return CAIRN_EINVAL;
  }
  cairn_sync *s = calloc(1, sizeof *s);
  if (!s) {
    return CAIRN_ENOMEM;
  }
  int rc = uv_loop_init(&s->loop);
  if (rc != 0) {
    free(s);
    return CAIRN_ENOMEM;
  }
  rc = cairn_client_new(&s->loop, cfg, &s->c);
  if (rc != 0) {
    goto err_after_loop;
  }
  uv_async_init(&s->loop, &s->async, on_async);
  s->async.data = s;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->space, NULL);
  if (pthread_create(&s->thread, NULL, sync_thread, s) != 0) {
    rc = CAIRN_EIO;
    goto err_after_client;
  }
  *out = s;
  return 0;

err_after_client:
  /* No thread: close on this thread, running the loop here. */
  cairn_client_close(s->c, NULL, NULL);
  uv_close((uv_handle_t *)&s->async, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->space);
err_after_loop:
  uv_run(&s->loop, UV_RUN_DEFAULT);
  uv_loop_close(&s->loop);
  free(s);
  return rc;
}

/* Queues r and waits for its outcome. */
static int sync_submit(cairn_sync *s, struct sync_req *r, struct cairn_error *err) {
  if (!s) {
    return CAIRN_EINVAL;
  }
  if (pthread_equal(pthread_self(), s->thread)) {
    return CAIRN_EINVAL; /* from the loop's own thread: it would wait for itself */
  }
  pthread_cond_init(&r->cv, NULL);
  pthread_mutex_lock(&s->mu);
  /* Waits for room: bounded by the loop draining the queue at each wakeup. */
  while (!s->closing && s->n_queued >= SYNC_QUEUE_MAX) {
    pthread_cond_wait(&s->space, &s->mu);
  }
  if (s->closing) {
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&r->cv);
    int rc = r->is_call ? GRPC_CANCELLED : CAIRN_ESTOPPED;
    if (err) {
      memset(err, 0, sizeof *err);
      err->code = rc;
      snprintf(err->message, sizeof err->message, "%s",
               r->is_call ? GRPC_CLIENT_CLOSING_TEXT : cairn_strerror(rc));
    }
    return rc;
  }
  r->next = NULL;
  if (s->tail) {
    s->tail->next = r;
  } else {
    s->head = r;
  }
  s->tail = r;
  s->n_queued++;
  uv_async_send(&s->async);
  while (!r->done) {
    pthread_cond_wait(&r->cv, &s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  pthread_cond_destroy(&r->cv);
  if (err) {
    *err = r->err;
  }
  return r->rc;
}

void cairn_sync_close(cairn_sync *s) {
  if (!s) {
    return;
  }
  CAIRN_ASSERT(!pthread_equal(pthread_self(), s->thread));
  pthread_mutex_lock(&s->mu);
  s->closing = true;
  pthread_cond_broadcast(&s->space);
  pthread_mutex_unlock(&s->mu);
  uv_async_send(&s->async);
  pthread_join(s->thread, NULL);
  int rc = uv_loop_close(&s->loop);
  CAIRN_ASSERT(rc == 0);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->space);
  free(s);
}

int cairn_sync_run(cairn_sync *s, int (*fn)(cairn_client *c, void *data), void *data) {
  if (!fn) {
    return CAIRN_EINVAL;
  }
  struct sync_req r = {.start = start_run, .run_fn = fn, .run_data = data};
  return sync_submit(s, &r, NULL);
}

int cairn_sync_unary(cairn_sync *s, const char *path, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *resp_desc, bool idempotent,
                     const struct cairn_call_opts *opts, ProtobufCMessage **out,
                     struct cairn_error *err) {
  struct sync_req r = {.start = start_unary,
                       .is_call = true,
                       .path = path,
                       .req = req,
                       .desc = resp_desc,
                       .idempotent = idempotent,
                       .opts = opts};
  if (out) {
    *out = NULL;
  }
  int rc = sync_submit(s, &r, err);
  if (rc == 0 && out) {
    *out = r.msg;
  } else {
    cairn_response_free(r.msg);
  }
  return rc;
}

/* The typed calls: the same paths and retry rules as their asynchronous
 * twins (kv.c, lease.c, cluster.c). */
#define SYNC_UNARY(s, path, req, desc, idem, opts, out, err) \
  cairn_sync_unary(s, path, (req), desc, idem, opts, (ProtobufCMessage **)(out), err)

int cairn_sync_range(cairn_sync *s, const Etcdserverpb__RangeRequest *req,
                     const struct cairn_call_opts *opts, Etcdserverpb__RangeResponse **out,
                     struct cairn_error *err) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return SYNC_UNARY(s, "/etcdserverpb.KV/Range", &req->base,
                    &etcdserverpb__range_response__descriptor, true, opts, out, err);
}

int cairn_sync_put(cairn_sync *s, const Etcdserverpb__PutRequest *req,
                   const struct cairn_call_opts *opts, Etcdserverpb__PutResponse **out,
                   struct cairn_error *err) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return SYNC_UNARY(s, "/etcdserverpb.KV/Put", &req->base, &etcdserverpb__put_response__descriptor,
                    false, opts, out, err);
}

int cairn_sync_delete(cairn_sync *s, const Etcdserverpb__DeleteRangeRequest *req,
                      const struct cairn_call_opts *opts, Etcdserverpb__DeleteRangeResponse **out,
                      struct cairn_error *err) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return SYNC_UNARY(s, "/etcdserverpb.KV/DeleteRange", &req->base,
                    &etcdserverpb__delete_range_response__descriptor, false, opts, out, err);
}

int cairn_sync_txn(cairn_sync *s, const struct cairn_txn *t, const struct cairn_call_opts *opts,
                   Etcdserverpb__TxnResponse **out, struct cairn_error *err) {
  if (!t) {
    return CAIRN_EINVAL;
  }
  const Etcdserverpb__TxnRequest *req = cairn_txn_request(t);
  if (!req) {
    /* The sticky error: cairn_txn_commit() would return it. */
    return cairn_txn_commit(NULL, t, NULL, NULL, NULL);
  }
  /* Through cairn_txn(), which decides whether the txn is read-only. */
  struct sync_req r = {.start = start_txn, .is_call = true, .req = &req->base, .opts = opts};
  if (out) {
    *out = NULL;
  }
  int rc = sync_submit(s, &r, err);
  if (rc == 0 && out) {
    *out = (Etcdserverpb__TxnResponse *)r.msg;
  } else {
    cairn_response_free(r.msg);
  }
  return rc;
}

int cairn_sync_compact(cairn_sync *s, int64_t revision, bool physical,
                       const struct cairn_call_opts *opts, struct cairn_error *err) {
  Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
  req.revision = revision;
  req.physical = physical;
  return SYNC_UNARY(s, "/etcdserverpb.KV/Compact", &req.base,
                    &etcdserverpb__compaction_response__descriptor, false, opts, NULL, err);
}

int cairn_sync_lease_grant(cairn_sync *s, int64_t ttl_s, int64_t id,
                           const struct cairn_call_opts *opts,
                           Etcdserverpb__LeaseGrantResponse **out, struct cairn_error *err) {
  Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
  req.ttl = ttl_s;
  req.id = id;
  return SYNC_UNARY(s, "/etcdserverpb.Lease/LeaseGrant", &req.base,
                    &etcdserverpb__lease_grant_response__descriptor, false, opts, out, err);
}

int cairn_sync_lease_revoke(cairn_sync *s, int64_t id, const struct cairn_call_opts *opts,
                            struct cairn_error *err) {
  Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
  req.id = id;
  return SYNC_UNARY(s, "/etcdserverpb.Lease/LeaseRevoke", &req.base,
                    &etcdserverpb__lease_revoke_response__descriptor, false, opts, NULL, err);
}

int cairn_sync_member_list(cairn_sync *s, const struct cairn_call_opts *opts,
                           Etcdserverpb__MemberListResponse **out, struct cairn_error *err) {
  Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
  return SYNC_UNARY(s, "/etcdserverpb.Cluster/MemberList", &req.base,
                    &etcdserverpb__member_list_response__descriptor, true, opts, out, err);
}

int cairn_sync_status(cairn_sync *s, const struct cairn_call_opts *opts,
                      Etcdserverpb__StatusResponse **out, struct cairn_error *err) {
  Etcdserverpb__StatusRequest req = ETCDSERVERPB__STATUS_REQUEST__INIT;
  return SYNC_UNARY(s, "/etcdserverpb.Maintenance/Status", &req.base,
                    &etcdserverpb__status_response__descriptor, true, opts, out, err);
}

int cairn_sync_snapshot_save(cairn_sync *s, const char *path, const struct cairn_call_opts *opts,
                             uint64_t *bytes, struct cairn_error *err) {
  if (!path) {
    return CAIRN_EINVAL;
  }
  struct sync_req r = {.start = start_snapshot, .is_call = true, .snap_path = path, .opts = opts};
  int rc = sync_submit(s, &r, err);
  if (bytes) {
    *bytes = rc == 0 ? r.bytes : 0;
  }
  return rc;
}
