/* server/kv_service.c: etcdserverpb.KV (Range, Put, DeleteRange, Txn,
 * Compact) and the physical compaction that follows a Compact.
 *
 * Reads are served from the store; writes are validated with the store's
 * own checks (etcd's errors before anything is proposed), then proposed
 * through raft and answered when applied. */
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "server/metrics.h"
#include "server/forward.h"
#include "server/server.h"
#include "server/watch_hub.h"

#define PATH_RANGE "/etcdserverpb.KV/Range"
#define PATH_PUT "/etcdserverpb.KV/Put"
#define PATH_DELETE "/etcdserverpb.KV/DeleteRange"
#define PATH_TXN "/etcdserverpb.KV/Txn"
#define PATH_COMPACT "/etcdserverpb.KV/Compact"

/* ---- protobuf -> storage -------------------------------------------------- */

static struct mvcc_bytes bytes_of(ProtobufCBinaryData b) {
  return (struct mvcc_bytes){b.data, b.len};
}

static void range_from_pb(const Etcdserverpb__RangeRequest *r, struct mvcc_range_req *q) {
  memset(q, 0, sizeof *q);
  q->key = bytes_of(r->key);
  q->range_end = bytes_of(r->range_end);
  q->limit = r->limit;
  q->revision = r->revision;
  q->sort_order = (enum mvcc_sort_order)r->sort_order;
  q->sort_target = (enum mvcc_sort_target)r->sort_target;
  q->keys_only = r->keys_only;
  q->count_only = r->count_only;
  q->min_mod_revision = r->min_mod_revision;
  q->max_mod_revision = r->max_mod_revision;
  q->min_create_revision = r->min_create_revision;
  q->max_create_revision = r->max_create_revision;
}

static void put_from_pb(const Etcdserverpb__PutRequest *r, struct mvcc_put_req *q) {
  memset(q, 0, sizeof *q);
  q->key = bytes_of(r->key);
  q->value = bytes_of(r->value);
  q->lease = r->lease;
  q->prev_kv = r->prev_kv;
  q->ignore_value = r->ignore_value;
  q->ignore_lease = r->ignore_lease;
}

static void delete_from_pb(const Etcdserverpb__DeleteRangeRequest *r, struct mvcc_delete_req *q) {
  memset(q, 0, sizeof *q);
  q->key = bytes_of(r->key);
  q->range_end = bytes_of(r->range_end);
  q->prev_kv = r->prev_kv;
}

/* Nesting is bounded by the store's own check (max_txn_ops levels); this
 * bound only keeps the conversion's recursion finite before that check. */
#define TXN_DEPTH_MAX 256u

static int txn_from_pb(const Etcdserverpb__TxnRequest *r, struct scratch *sc,
                       struct mvcc_txn_req *t, unsigned depth);

static int ops_from_pb(Etcdserverpb__RequestOp **in, size_t n, struct scratch *sc,
                       const struct mvcc_request_op **out, unsigned depth) {
  struct mvcc_request_op *ops = n ? scratch_alloc(sc, n * sizeof *ops) : NULL;
  if (n && ops == NULL) {
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    switch (in[i]->request_case) {
      case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
        ops[i].type = MVCC_REQUEST_RANGE;
        range_from_pb(in[i]->request_range, &ops[i].u.range);
        break;
      case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
        ops[i].type = MVCC_REQUEST_PUT;
        put_from_pb(in[i]->request_put, &ops[i].u.put);
        break;
      case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
        ops[i].type = MVCC_REQUEST_DELETE;
        delete_from_pb(in[i]->request_delete_range, &ops[i].u.del);
        break;
      case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN: {
        struct mvcc_txn_req *t = scratch_alloc(sc, sizeof *t);
        if (t == NULL) {
          return CAIRN_ENOMEM;
        }
        int rc = txn_from_pb(in[i]->request_txn, sc, t, depth + 1);
        if (rc != 0) {
          return rc;
        }
        ops[i].type = MVCC_REQUEST_TXN;
        ops[i].u.txn = t;
        break;
      }
      default:
        ops[i].type = MVCC_REQUEST_NONE; /* refused by the store as etcd does */
        break;
    }
  }
  *out = ops;
  return 0;
}

static int txn_from_pb(const Etcdserverpb__TxnRequest *r, struct scratch *sc,
                       struct mvcc_txn_req *t, unsigned depth) {
  memset(t, 0, sizeof *t);
  if (depth > TXN_DEPTH_MAX) {
    return CAIRN_ETOO_MANY_OPS;
  }
  struct mvcc_compare *cmps = r->n_compare ? scratch_alloc(sc, r->n_compare * sizeof *cmps) : NULL;
  if (r->n_compare && cmps == NULL) {
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < r->n_compare; i++) {
    const Etcdserverpb__Compare *c = r->compare[i];
    cmps[i].result = (enum mvcc_compare_result)c->result;
    cmps[i].target = (enum mvcc_compare_target)c->target;
    cmps[i].key = bytes_of(c->key);
    cmps[i].range_end = bytes_of(c->range_end);
    switch (c->target_union_case) {
      case ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION:
        cmps[i].number = c->version;
        break;
      case ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION:
        cmps[i].number = c->create_revision;
        break;
      case ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION:
        cmps[i].number = c->mod_revision;
        break;
      case ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE:
        cmps[i].value = bytes_of(c->value);
        break;
      case ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE:
        cmps[i].number = c->lease;
        break;
      default:
        break;
    }
  }
  t->compares = cmps;
  t->n_compares = r->n_compare;
  int rc = ops_from_pb(r->success, r->n_success, sc, &t->success, depth);
  if (rc == 0) {
    rc = ops_from_pb(r->failure, r->n_failure, sc, &t->failure, depth);
  }
  t->n_success = r->n_success;
  t->n_failure = r->n_failure;
  return rc;
}

/* ---- storage -> protobuf -------------------------------------------------- */

static Mvccpb__KeyValue **kvs_to_pb(const struct mvcc_kv *kvs, size_t n, struct scratch *sc) {
  if (n == 0) {
    return NULL;
  }
  Mvccpb__KeyValue **ptrs = scratch_alloc(sc, n * sizeof *ptrs);
  Mvccpb__KeyValue *vals = scratch_alloc(sc, n * sizeof *vals);
  if (ptrs == NULL || vals == NULL) {
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    server_kv_to_pb(&kvs[i], &vals[i]);
    ptrs[i] = &vals[i];
  }
  return ptrs;
}

/* A response header: full at the top of a response; inside a Txn etcd fills
 * the revision only (s NULL). */
static Etcdserverpb__ResponseHeader *header_at(struct server *s, struct scratch *sc,
                                               int64_t revision) {
  Etcdserverpb__ResponseHeader *h = scratch_alloc(sc, sizeof *h);
  if (h == NULL) {
    return NULL;
  }
  etcdserverpb__response_header__init(h);
  if (s != NULL) {
    server_header(s, h);
  }
  h->revision = revision;
  return h;
}

static int range_to_pb(struct server *s, const struct mvcc_range_resp *r, struct scratch *sc,
                       Etcdserverpb__RangeResponse *out, bool with_header) {
  etcdserverpb__range_response__init(out);
  out->header = with_header ? header_at(s, sc, r->revision) : NULL;
  out->kvs = kvs_to_pb(r->kvs, r->n_kvs, sc);
  if ((with_header && out->header == NULL) || (r->n_kvs && out->kvs == NULL)) {
    return CAIRN_ENOMEM;
  }
  out->n_kvs = r->n_kvs;
  out->more = r->more;
  out->count = r->count;
  return 0;
}

static int put_to_pb(struct server *s, const struct mvcc_put_resp *r, struct scratch *sc,
                     Etcdserverpb__PutResponse *out) {
  etcdserverpb__put_response__init(out);
  out->header = header_at(s, sc, r->revision);
  if (out->header == NULL) {
    return CAIRN_ENOMEM;
  }
  if (r->has_prev_kv) {
    out->prev_kv = scratch_alloc(sc, sizeof *out->prev_kv);
    if (out->prev_kv == NULL) {
      return CAIRN_ENOMEM;
    }
    server_kv_to_pb(&r->prev_kv, out->prev_kv);
  }
  return 0;
}

static int delete_to_pb(struct server *s, const struct mvcc_delete_resp *r, struct scratch *sc,
                        Etcdserverpb__DeleteRangeResponse *out) {
  etcdserverpb__delete_range_response__init(out);
  out->header = header_at(s, sc, r->revision);
  out->deleted = r->deleted;
  out->prev_kvs = kvs_to_pb(r->prev_kvs, r->n_prev_kvs, sc);
  out->n_prev_kvs = r->n_prev_kvs;
  return out->header == NULL || (r->n_prev_kvs && out->prev_kvs == NULL) ? CAIRN_ENOMEM : 0;
}

static int txn_to_pb(struct server *s, const struct mvcc_txn_resp *r, struct scratch *sc,
                     Etcdserverpb__TxnResponse *out, bool top) {
  etcdserverpb__txn_response__init(out);
  /* As etcd: a nested txn's header is present but empty. */
  if (top) {
    out->header = header_at(s, sc, r->revision);
  } else {
    out->header = scratch_alloc(sc, sizeof *out->header);
    if (out->header != NULL) {
      etcdserverpb__response_header__init(out->header);
    }
  }
  if (out->header == NULL) {
    return CAIRN_ENOMEM;
  }
  out->succeeded = r->succeeded;
  out->n_responses = r->n_responses;
  if (r->n_responses == 0) {
    return 0;
  }
  out->responses = scratch_alloc(sc, r->n_responses * sizeof *out->responses);
  if (out->responses == NULL) {
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < r->n_responses; i++) {
    const struct mvcc_response_op *ro = &r->responses[i];
    Etcdserverpb__ResponseOp *po = scratch_alloc(sc, sizeof *po);
    if (po == NULL) {
      return CAIRN_ENOMEM;
    }
    etcdserverpb__response_op__init(po);
    out->responses[i] = po;
    int rc = 0;
    switch (ro->type) {
      case MVCC_REQUEST_RANGE:
        po->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE;
        po->response_range = scratch_alloc(sc, sizeof *po->response_range);
        rc = po->response_range ? range_to_pb(NULL, &ro->u.range, sc, po->response_range, true)
                                : CAIRN_ENOMEM;
        break;
      case MVCC_REQUEST_PUT:
        po->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT;
        po->response_put = scratch_alloc(sc, sizeof *po->response_put);
        rc = po->response_put ? put_to_pb(NULL, &ro->u.put, sc, po->response_put) : CAIRN_ENOMEM;
        break;
      case MVCC_REQUEST_DELETE:
        po->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE;
        po->response_delete_range = scratch_alloc(sc, sizeof *po->response_delete_range);
        rc = po->response_delete_range
                 ? delete_to_pb(NULL, &ro->u.del, sc, po->response_delete_range)
                 : CAIRN_ENOMEM;
        break;
      case MVCC_REQUEST_TXN:
        po->response_case = ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN;
        po->response_txn = scratch_alloc(sc, sizeof *po->response_txn);
        rc = po->response_txn ? txn_to_pb(NULL, ro->u.txn, sc, po->response_txn, false)
                              : CAIRN_ENOMEM;
        break;
      default:
        break;
    }
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

/* ---- physical compaction waiters ------------------------------------------ */

/* Calls waiting for the physical end of a compaction (Compact with
 * physical=true). At the bound the call is answered at once: the compacted
 * revision already holds for every read. */
#define COMPACT_WAITERS_MAX 64u

struct compact_waiter {
  grpc_call *call;
  uint8_t *reply;
  size_t reply_len;
};
static struct compact_waiter waiters[COMPACT_WAITERS_MAX];
static size_t n_waiters;

static void kv_reply(struct server *s, const char *path, grpc_call *call,
                     const ProtobufCMessage *msg);

static int compaction_wait(struct server *s, grpc_call *call, const ProtobufCMessage *reply) {
  if (n_waiters == COMPACT_WAITERS_MAX) {
    kv_reply(s, PATH_COMPACT, call, reply);
    return 0;
  }
  size_t n = protobuf_c_message_get_packed_size(reply);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  protobuf_c_message_pack(reply, buf);
  waiters[n_waiters++] = (struct compact_waiter){call, buf, n};
  return 0;
}

static void compaction_release(struct server *s) {
  for (size_t i = 0; i < n_waiters; i++) {
    if (grpc_call_send(waiters[i].call, waiters[i].reply, waiters[i].reply_len) == 0) {
      metrics_count_request(s->metrics, PATH_COMPACT, GRPC_OK);
      grpc_call_finish(waiters[i].call, GRPC_OK, NULL);
    }
    free(waiters[i].reply);
  }
  n_waiters = 0;
}

/* ---- the calls ------------------------------------------------------------ */


/* Every finished call is counted for /metrics. */
static void kv_reply(struct server *s, const char *path, grpc_call *call,
                     const ProtobufCMessage *msg) {
  metrics_count_request(s->metrics, path, GRPC_OK);
  server_reply(call, msg);
}

static void kv_fail(struct server *s, const char *path, grpc_call *call, int err) {
  metrics_count_request(s->metrics, path, cairn_grpc_code(err));
  server_fail(call, err);
}

static void kv_bad_request(struct server *s, const char *path, grpc_call *call) {
  metrics_count_request(s->metrics, path, GRPC_INTERNAL);
  grpc_call_finish(call, GRPC_INTERNAL, "grpc: error unmarshalling request");
}

static void kv_range_serve(struct server *s, grpc_call *call,
                           const Etcdserverpb__RangeRequest *req) {
  struct mvcc_range_req q;
  range_from_pb(req, &q);
  struct mvcc_result res;
  int rc = mvcc_range(s->store, &q, &res);
  if (rc != 0) {
    kv_fail(s, PATH_RANGE, call, rc);
  } else {
    struct scratch sc = {0};
    Etcdserverpb__RangeResponse out;
    rc = range_to_pb(s, &res.u.range, &sc, &out, true);
    if (rc == 0) {
      metrics_inc(s->metrics, METRIC_MVCC_RANGE);
      kv_reply(s, PATH_RANGE, call, &out.base);
    } else {
      kv_fail(s, PATH_RANGE, call, rc);
    }
    scratch_free(&sc);
  }
  mvcc_result_free(&res);
}

/* A linearizable Range once the read index is reached (server/forward.h). */
static void kv_range_linearized(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__RangeRequest *req = etcdserverpb__range_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(s, PATH_RANGE, call);
    return;
  }
  kv_range_serve(s, call, req);
  etcdserverpb__range_request__free_unpacked(req, NULL);
}

static void kv_range(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__RangeRequest *req = etcdserverpb__range_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(s, PATH_RANGE, call);
    return;
  }
  if (!req->serializable && server_read_gate_needed(s)) {
    etcdserverpb__range_request__free_unpacked(req, NULL);
    (void)server_read_gate(s, call, msg, len, kv_range_linearized, s);
    return;
  }
  kv_range_serve(s, call, req);
  etcdserverpb__range_request__free_unpacked(req, NULL);
}

static void kv_read_close(grpc_call *call, void *ctx) {
  server_read_gate_closed(ctx, call);
}

/* Whether an op adds data (refused while the NOSPACE alarm is raised, as
 * etcd's capped applier does). */
static bool adds_data(const struct mvcc_op *op);

static bool request_ops_add_data(const struct mvcc_request_op *ops, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (ops[i].type == MVCC_REQUEST_PUT) {
      return true;
    }
    if (ops[i].type == MVCC_REQUEST_TXN) {
      struct mvcc_op sub = {.type = MVCC_OP_TXN};
      sub.u.txn = *ops[i].u.txn;
      if (adds_data(&sub)) {
        return true;
      }
    }
  }
  return false;
}

static bool adds_data(const struct mvcc_op *op) {
  switch (op->type) {
    case MVCC_OP_PUT:
    case MVCC_OP_LEASE_GRANT:
      return true;
    case MVCC_OP_TXN:
      return request_ops_add_data(op->u.txn.success, op->u.txn.n_success) ||
             request_ops_add_data(op->u.txn.failure, op->u.txn.n_failure);
    default:
      return false;
  }
}

enum write_kind { WRITE_PUT, WRITE_DELETE, WRITE_TXN, WRITE_COMPACT };

struct pending_write {
  grpc_call *call;
  const char *path;
  enum write_kind kind;
  bool physical;
  bool cancelled;
};

static void on_written(struct server *s, void *data, int status, struct mvcc_result *res) {
  struct pending_write *w = data;
  if (w->cancelled) {
    free(w);
    if (res != NULL) {
      mvcc_result_free(res);
    }
    return;
  }
  grpc_call_set_user(w->call, NULL);
  if (status != 0) {
    kv_fail(s, w->path, w->call, status);
    free(w);
    return;
  }
  if (res->err != 0) {
    kv_fail(s, w->path, w->call, res->err);
  } else {
    struct scratch sc = {0};
    int rc = 0;
    switch (w->kind) {
      case WRITE_PUT: {
        metrics_inc(s->metrics, METRIC_MVCC_PUT);
        Etcdserverpb__PutResponse out;
        rc = put_to_pb(s, &res->u.put, &sc, &out);
        if (rc == 0) {
          kv_reply(s, w->path, w->call, &out.base);
        }
        break;
      }
      case WRITE_DELETE: {
        metrics_inc(s->metrics, METRIC_MVCC_DELETE);
        Etcdserverpb__DeleteRangeResponse out;
        rc = delete_to_pb(s, &res->u.del, &sc, &out);
        if (rc == 0) {
          kv_reply(s, w->path, w->call, &out.base);
        }
        break;
      }
      case WRITE_TXN: {
        metrics_inc(s->metrics, METRIC_MVCC_TXN);
        Etcdserverpb__TxnResponse out;
        rc = txn_to_pb(s, &res->u.txn, &sc, &out, true);
        if (rc == 0) {
          kv_reply(s, w->path, w->call, &out.base);
        }
        break;
      }
      case WRITE_COMPACT: {
        Etcdserverpb__CompactionResponse out;
        etcdserverpb__compaction_response__init(&out);
        out.header = header_at(s, &sc, res->u.revision);
        rc = out.header ? 0 : CAIRN_ENOMEM;
        server_compaction_kick(s);
        if (rc == 0 && w->physical) {
          /* physical: answered when the compaction steps are done. */
          rc = compaction_wait(s, w->call, &out.base);
        } else if (rc == 0) {
          kv_reply(s, w->path, w->call, &out.base);
        }
        break;
      }
    }
    if (rc != 0) {
      kv_fail(s, w->path, w->call, rc);
    }
    scratch_free(&sc);
  }
  mvcc_result_free(res);
  free(w);
}

static void kv_write_close(grpc_call *call, void *ctx) {
  server_read_gate_closed(ctx, call);
  struct pending_write *w = grpc_call_user(call);
  if (w != NULL) {
    w->cancelled = true; /* the proposal's callback frees it */
  }
  for (size_t i = 0; i < n_waiters; i++) {
    if (waiters[i].call == call) { /* gone while waiting for a compaction */
      free(waiters[i].reply);
      waiters[i] = waiters[--n_waiters];
      break;
    }
  }
}

static const char *const kind_path[] = {PATH_PUT, PATH_DELETE, PATH_TXN, PATH_COMPACT};

/* etcd measures a request as the raft entry it becomes: the client's message
 * wrapped with a request header, about this many bytes more. */
#define RAFT_REQUEST_OVERHEAD_BYTES 24u

static void propose_write(struct server *s, grpc_call *call, const struct mvcc_op *op,
                          enum write_kind kind, bool physical, size_t req_len) {
  const char *path = kind_path[kind];
  int rc = mvcc_check_op(s->store, op);
  if (rc == 0 && req_len + RAFT_REQUEST_OVERHEAD_BYTES > s->cfg.max_request_bytes) {
    rc = CAIRN_ETOO_LARGE;
  }
  if (rc == 0 && s->alarm_nospace && adds_data(op)) {
    rc = CAIRN_ENOSPACE;
  }
  if (rc != 0) {
    kv_fail(s, path, call, rc);
    return;
  }
  struct pending_write *w = calloc(1, sizeof *w);
  if (w == NULL) {
    kv_fail(s, path, call, CAIRN_ENOMEM);
    return;
  }
  w->call = call;
  w->path = path;
  w->kind = kind;
  w->physical = physical;
  grpc_call_set_user(call, w);
  rc = server_propose(s, op, w, on_written);
  if (rc != 0) {
    grpc_call_set_user(call, NULL);
    free(w);
    kv_fail(s, path, call, rc);
  }
}

static void kv_put(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  Etcdserverpb__PutRequest *req = etcdserverpb__put_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(ctx, PATH_PUT, call);
    return;
  }
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  put_from_pb(req, &op.u.put);
  propose_write(ctx, call, &op, WRITE_PUT, false, len);
  etcdserverpb__put_request__free_unpacked(req, NULL);
}

static void kv_delete(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  Etcdserverpb__DeleteRangeRequest *req =
      etcdserverpb__delete_range_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(ctx, PATH_DELETE, call);
    return;
  }
  struct mvcc_op op = {.type = MVCC_OP_DELETE};
  delete_from_pb(req, &op.u.del);
  propose_write(ctx, call, &op, WRITE_DELETE, false, len);
  etcdserverpb__delete_range_request__free_unpacked(req, NULL);
}

/* A txn without writes is a read: served from the store, like Range. */
static void kv_txn_linearized(grpc_call *call, const uint8_t *msg, size_t len, void *ctx);

static bool txn_has_writes(const struct mvcc_request_op *ops, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (ops[i].type == MVCC_REQUEST_PUT || ops[i].type == MVCC_REQUEST_DELETE) {
      return true;
    }
    if (ops[i].type == MVCC_REQUEST_TXN &&
        (txn_has_writes(ops[i].u.txn->success, ops[i].u.txn->n_success) ||
         txn_has_writes(ops[i].u.txn->failure, ops[i].u.txn->n_failure))) {
      return true;
    }
  }
  return false;
}

/* A read-only Txn: applied on a batch of its own (no revision, no log
 * entry). */
static void txn_read_only(struct server *s, grpc_call *call, const struct mvcc_op *op) {
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  int rc = mvcc_check_op(s->store, op);
  if (rc == 0) {
    rc = mvcc_apply(s->store, op, 1, &res);
  }
  if (rc == 0 && res.err != 0) {
    rc = res.err;
  }
  if (rc != 0) {
    kv_fail(s, PATH_TXN, call, rc);
  } else {
    struct scratch out_sc = {0};
    Etcdserverpb__TxnResponse out;
    rc = txn_to_pb(s, &res.u.txn, &out_sc, &out, true);
    if (rc == 0) {
      metrics_inc(s->metrics, METRIC_MVCC_TXN);
      kv_reply(s, PATH_TXN, call, &out.base);
    } else {
      kv_fail(s, PATH_TXN, call, rc);
    }
    scratch_free(&out_sc);
  }
  mvcc_result_free(&res);
}

static void kv_txn_run(grpc_call *call, const uint8_t *msg, size_t len, void *ctx, bool linearized) {
  struct server *s = ctx;
  Etcdserverpb__TxnRequest *req = etcdserverpb__txn_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(s, PATH_TXN, call);
    return;
  }
  struct scratch sc = {0};
  struct mvcc_op op = {.type = MVCC_OP_TXN};
  int rc = txn_from_pb(req, &sc, &op.u.txn, 0);
  if (rc != 0) {
    kv_fail(s, PATH_TXN, call, rc);
  } else if (!txn_has_writes(op.u.txn.success, op.u.txn.n_success) &&
             !txn_has_writes(op.u.txn.failure, op.u.txn.n_failure)) {
    if (linearized || !server_read_gate_needed(s) ||
        !server_read_gate(s, call, msg, len, kv_txn_linearized, s)) {
      txn_read_only(s, call, &op);
    }
  } else {
    propose_write(s, call, &op, WRITE_TXN, false, len);
  }
  scratch_free(&sc);
  etcdserverpb__txn_request__free_unpacked(req, NULL);
}

static void kv_txn_linearized(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  kv_txn_run(call, msg, len, ctx, true);
}

static void kv_txn(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  kv_txn_run(call, msg, len, ctx, false);
}

static void kv_compact(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  Etcdserverpb__CompactionRequest *req = etcdserverpb__compaction_request__unpack(NULL, len, msg);
  if (req == NULL) {
    kv_bad_request(ctx, PATH_COMPACT, call);
    return;
  }
  struct mvcc_op op = {.type = MVCC_OP_COMPACT, .u.compact_revision = req->revision};
  propose_write(ctx, call, &op, WRITE_COMPACT, req->physical, len);
  etcdserverpb__compaction_request__free_unpacked(req, NULL);
}

/* ---- physical compaction -------------------------------------------------- */

/* Each step removes at most this many history entries, then yields to the
 * loop: writes never wait long behind a compaction. */
#define COMPACT_STEP_ENTRIES 10000u

static uv_idle_t compact_idle;
static bool compact_idle_init;

static void on_compact_idle(uv_idle_t *h) {
  struct server *s = h->data;
  /* The watch hub must have read every revision up to the compacted one
   * before its deletes may go: live watchers would miss them otherwise. */
  if (s->watch != NULL && !s->stopping &&
      watch_hub_delivered_revision(s->watch) < mvcc_compacted_revision(s->store)) {
    return;
  }
  bool done = true;
  int rc = mvcc_compact_step(s->store, COMPACT_STEP_ENTRIES, &done);
  if (rc != 0) {
    server_log(LOG_ERROR, "compaction step failed: %s", cairn_strerror(rc));
  }
  if (rc != 0 || done || s->stopping) {
    uv_idle_stop(h);
    compaction_release(s);
  }
}

void server_compaction_kick(struct server *s) {
  if (!compact_idle_init) {
    uv_idle_init(s->loop, &compact_idle);
    compact_idle.data = s;
    compact_idle_init = true;
  }
  uv_idle_start(&compact_idle, on_compact_idle);
}

int kv_service_init(struct server *s) {
  struct grpc_method methods[] = {
      {PATH_RANGE, GRPC_METHOD_UNARY, kv_range, NULL, kv_read_close, s},
      {PATH_PUT, GRPC_METHOD_UNARY, kv_put, NULL, kv_write_close, s},
      {PATH_DELETE, GRPC_METHOD_UNARY, kv_delete, NULL, kv_write_close, s},
      {PATH_TXN, GRPC_METHOD_UNARY, kv_txn, NULL, kv_write_close, s},
      {PATH_COMPACT, GRPC_METHOD_UNARY, kv_compact, NULL, kv_write_close, s},
  };
  /* Resume a compaction a restart interrupted. */
  server_compaction_kick(s);
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
