/* bench/cairn_bench/kv_load.c: the KV workloads (put, range, txn, delete,
 * mixed) and the preload.
 *
 * Each request is one unary call on the slot's connection. Responses are
 * decoded only where the workload needs a field: txn (succeeded, the key's
 * new revision), delete (keys deleted), the preload of txn (each key's
 * revision). Put and range responses are not decoded: the gRPC status says
 * whether they worked, and decoding a range's value would be generator CPU
 * spent for nothing. */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rpc.pb-c.h"

#define PATH_PUT "/etcdserverpb.KV/Put"
#define PATH_RANGE "/etcdserverpb.KV/Range"
#define PATH_DELETE "/etcdserverpb.KV/DeleteRange"
#define PATH_TXN "/etcdserverpb.KV/Txn"

enum kv_op { KV_PUT, KV_RANGE, KV_DELETE, KV_TXN };

struct kvload {
  int64_t *rev; /* txn: the last mod_revision seen per key (key_space entries) */
};

static struct kvload *state(struct bench *b) {
  return b->workload_state;
}

static void rev_seen(struct bench *b, uint64_t key, int64_t rev) {
  struct kvload *k = state(b);
  /* Responses for one key can arrive out of order: keep the newest. */
  if (k && k->rev && rev > k->rev[key]) {
    k->rev[key] = rev;
  }
}

static void on_response(void *data, int status, const char *message, const uint8_t *resp,
                        size_t len) {
  struct bench_slot *s = data;
  struct bench *b = s->b;
  if (status != GRPC_OK) {
    bench_slot_done(s, status, message);
    return;
  }
  switch (s->op) {
    case KV_PUT:
      if (state(b) && state(b)->rev) {
        Etcdserverpb__PutResponse *r = (Etcdserverpb__PutResponse *)bench_unpack(
            b, &etcdserverpb__put_response__descriptor, resp, len);
        if (!r) {
          bench_slot_done(s, GRPC_INTERNAL, "cannot decode PutResponse");
          return;
        }
        if (r->header) {
          rev_seen(b, s->key, r->header->revision);
        }
        bench_unpacked_free(b, &r->base);
      }
      break;
    case KV_DELETE: {
      Etcdserverpb__DeleteRangeResponse *r = (Etcdserverpb__DeleteRangeResponse *)bench_unpack(
          b, &etcdserverpb__delete_range_response__descriptor, resp, len);
      if (!r) {
        bench_slot_done(s, GRPC_INTERNAL, "cannot decode DeleteRangeResponse");
        return;
      }
      if (b->phase && b->phase->measured && r->deleted > 0) {
        b->deleted += (uint64_t)r->deleted;
      }
      bench_unpacked_free(b, &r->base);
      break;
    }
    case KV_TXN: {
      Etcdserverpb__TxnResponse *r = (Etcdserverpb__TxnResponse *)bench_unpack(
          b, &etcdserverpb__txn_response__descriptor, resp, len);
      if (!r) {
        bench_slot_done(s, GRPC_INTERNAL, "cannot decode TxnResponse");
        return;
      }
      if (r->succeeded) {
        b->txn_succeeded++;
        if (r->header) {
          rev_seen(b, s->key, r->header->revision);
        }
      } else {
        b->txn_failed++;
        /* The failure branch read the key: its current revision. */
        if (r->n_responses == 1 &&
            r->responses[0]->response_case == ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE &&
            r->responses[0]->response_range->n_kvs == 1) {
          rev_seen(b, s->key, r->responses[0]->response_range->kvs[0]->mod_revision);
        }
      }
      bench_unpacked_free(b, &r->base);
      break;
    }
    default:
      break;
  }
  bench_slot_done(s, GRPC_OK, "");
}

static int send_put(struct bench_slot *s, uint64_t key) {
  struct bench *b = s->b;
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  req.key.data = (uint8_t *)bench_key(b, key);
  req.key.len = b->key_len;
  req.value.data = b->value;
  req.value.len = b->cfg.val_size;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  s->op = KV_PUT;
  s->key = key;
  return grpc_client_unary(s->conn, PATH_PUT, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           on_response, s);
}

static int send_range(struct bench_slot *s, uint64_t key) {
  struct bench *b = s->b;
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  req.key.data = (uint8_t *)bench_key(b, key);
  req.key.len = b->key_len;
  req.serializable = b->cfg.serializable;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  s->op = KV_RANGE;
  s->key = key;
  return grpc_client_unary(s->conn, PATH_RANGE, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           on_response, s);
}

static int send_delete(struct bench_slot *s, uint64_t key) {
  struct bench *b = s->b;
  Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
  req.key.data = (uint8_t *)bench_key(b, key);
  req.key.len = b->key_len;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  s->op = KV_DELETE;
  s->key = key;
  return grpc_client_unary(s->conn, PATH_DELETE, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           on_response, s);
}

/* Compare-and-swap: if mod_revision(key) == the revision last seen, put the
 * key, else read it (which tells the revision to use next time). */
static int send_txn(struct bench_slot *s, uint64_t key) {
  struct bench *b = s->b;
  ProtobufCBinaryData k = {b->key_len, (uint8_t *)bench_key(b, key)};
  Etcdserverpb__Compare cmp = ETCDSERVERPB__COMPARE__INIT;
  cmp.result = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL;
  cmp.target = ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD;
  cmp.key = k;
  cmp.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
  cmp.mod_revision = state(b)->rev[key];
  Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
  put.key = k;
  put.value.data = b->value;
  put.value.len = b->cfg.val_size;
  Etcdserverpb__RangeRequest get = ETCDSERVERPB__RANGE_REQUEST__INIT;
  get.key = k;
  Etcdserverpb__RequestOp op_put = ETCDSERVERPB__REQUEST_OP__INIT;
  op_put.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
  op_put.request_put = &put;
  Etcdserverpb__RequestOp op_get = ETCDSERVERPB__REQUEST_OP__INIT;
  op_get.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE;
  op_get.request_range = &get;
  Etcdserverpb__Compare *cmps[1] = {&cmp};
  Etcdserverpb__RequestOp *succ[1] = {&op_put};
  Etcdserverpb__RequestOp *fail[1] = {&op_get};
  Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
  req.n_compare = 1;
  req.compare = cmps;
  req.n_success = 1;
  req.success = succ;
  req.n_failure = 1;
  req.failure = fail;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  s->op = KV_TXN;
  s->key = key;
  return grpc_client_unary(s->conn, PATH_TXN, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           on_response, s);
}

static int issue_measured(struct bench_slot *s) {
  struct bench *b = s->b;
  uint64_t key = bench_pick_key(b, s->seq);
  switch (b->cfg.workload) {
    case BENCH_PUT:
      return send_put(s, key);
    case BENCH_RANGE:
      return send_range(s, key);
    case BENCH_DELETE:
      return send_delete(s, key);
    case BENCH_TXN:
      return send_txn(s, key);
    case BENCH_MIXED: {
      /* 53 random bits give a uniform double in [0, 1). */
      double u = (double)(bench_rand(b) >> 11) * (1.0 / 9007199254740992.0);
      if (u < b->cfg.read_ratio) {
        s->also = &b->lat_read;
        return send_range(s, key);
      }
      s->also = &b->lat_write;
      return send_put(s, key);
    }
    default:
      return CAIRN_EINVAL;
  }
}

static int issue_preload(struct bench_slot *s) {
  return send_put(s, s->seq);
}

static int setup_state(struct bench *b) {
  if (b->workload_state) {
    return 0;
  }
  struct kvload *k = calloc(1, sizeof *k);
  if (!k) {
    return CAIRN_ENOMEM;
  }
  if (b->cfg.workload == BENCH_TXN) {
    k->rev = calloc(b->cfg.key_space, sizeof *k->rev);
    if (!k->rev) {
      free(k);
      return CAIRN_ENOMEM;
    }
  }
  b->workload_state = k;
  return 0;
}

int kvload_preload(struct bench *b) {
  int rc = setup_state(b);
  if (rc < 0) {
    return rc;
  }
  struct bench_phase p = {
      .name = "preload", .measured = false, .total = b->cfg.key_space, .issue = issue_preload};
  rc = bench_run_phase(b, &p);
  if (rc < 0) {
    free(state(b)->rev);
    free(state(b));
    b->workload_state = NULL;
  }
  return rc;
}

int kvload_run(struct bench *b) {
  int rc = setup_state(b);
  if (rc < 0) {
    return rc;
  }
  struct bench_phase p = {.name = b->cfg.workload_name, .measured = true, .issue = issue_measured};
  if (b->cfg.duration_s > 0) {
    p.deadline_ns = bench_now_ns() + (uint64_t)(b->cfg.duration_s * 1e9);
  } else {
    p.total = b->cfg.total;
  }
  double cpu0 = bench_cpu_s();
  rc = bench_run_phase(b, &p);
  b->client_cpu_s = bench_cpu_s() - cpu0;
  b->elapsed_s = (double)(p.t_end_ns - p.t_start_ns) / 1e9;
  struct kvload *k = state(b);
  free(k->rev);
  free(k);
  b->workload_state = NULL;
  return rc;
}
