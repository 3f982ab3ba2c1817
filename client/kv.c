/* client/kv.c: the KV service (client/cairn.h): Range, Put, DeleteRange,
 * Txn, Compact, and the shorthands. Each is cairn_unary() with its path,
 * its response type and whether it may be retried after it was sent:
 * Range is read-only; the writes are not (a Put that reached the leader
 * and is retried would be applied twice, with two revisions). A Txn is
 * read-only when none of its operations, in either branch or nested,
 * writes. */
#include <string.h>

#include "client/client_int.h"

#define KV_RANGE "/etcdserverpb.KV/Range"
#define KV_PUT "/etcdserverpb.KV/Put"
#define KV_DELETE "/etcdserverpb.KV/DeleteRange"
#define KV_TXN "/etcdserverpb.KV/Txn"
#define KV_COMPACT "/etcdserverpb.KV/Compact"
/* Nesting depth a txn is checked to for being read-only; deeper ones count
 * as writes (the server limits depth too). */
#define KV_TXN_DEPTH_MAX 64u

int cairn_range(cairn_client *c, const Etcdserverpb__RangeRequest *req,
                const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return cairn_unary(c, KV_RANGE, &req->base, &etcdserverpb__range_response__descriptor, true,
                     opts, cb, data);
}

int cairn_put(cairn_client *c, const Etcdserverpb__PutRequest *req,
              const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return cairn_unary(c, KV_PUT, &req->base, &etcdserverpb__put_response__descriptor, false, opts,
                     cb, data);
}

int cairn_delete(cairn_client *c, const Etcdserverpb__DeleteRangeRequest *req,
                 const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return cairn_unary(c, KV_DELETE, &req->base, &etcdserverpb__delete_range_response__descriptor,
                     false, opts, cb, data);
}

static bool txn_read_only(const Etcdserverpb__TxnRequest *t, unsigned depth) {
  if (depth >= KV_TXN_DEPTH_MAX) {
    return false;
  }
  for (int branch = 0; branch < 2; branch++) {
    size_t n = branch ? t->n_failure : t->n_success;
    Etcdserverpb__RequestOp **ops = branch ? t->failure : t->success;
    for (size_t i = 0; i < n; i++) {
      const Etcdserverpb__RequestOp *op = ops[i];
      switch (op->request_case) {
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
          break;
        case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
          if (!txn_read_only(op->request_txn, depth + 1)) {
            return false;
          }
          break;
        default:
          return false;
      }
    }
  }
  return true;
}

int cairn_txn(cairn_client *c, const Etcdserverpb__TxnRequest *req,
              const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!req) {
    return CAIRN_EINVAL;
  }
  return cairn_unary(c, KV_TXN, &req->base, &etcdserverpb__txn_response__descriptor,
                     txn_read_only(req, 0), opts, cb, data);
}

int cairn_compact(cairn_client *c, int64_t revision, bool physical,
                  const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
  req.revision = revision;
  req.physical = physical;
  /* Compacting twice to the same revision fails the second time
   * ("required revision has been compacted"): not idempotent. */
  return cairn_unary(c, KV_COMPACT, &req.base, &etcdserverpb__compaction_response__descriptor,
                     false, opts, cb, data);
}

int cairn_get(cairn_client *c, const void *key, size_t key_len, const struct cairn_call_opts *opts,
              cairn_cb cb, void *data) {
  if (!key && key_len > 0) {
    return CAIRN_EINVAL;
  }
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  req.key.data = (uint8_t *)key;
  req.key.len = key_len;
  return cairn_range(c, &req, opts, cb, data);
}

int cairn_put_kv(cairn_client *c, const void *key, size_t key_len, const void *value,
                 size_t value_len, const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if ((!key && key_len > 0) || (!value && value_len > 0)) {
    return CAIRN_EINVAL;
  }
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  req.key.data = (uint8_t *)key;
  req.key.len = key_len;
  req.value.data = (uint8_t *)value;
  req.value.len = value_len;
  return cairn_put(c, &req, opts, cb, data);
}

size_t cairn_prefix_end(const void *key, size_t key_len, uint8_t *out) {
  const uint8_t *k = key;
  for (size_t i = key_len; i > 0; i--) {
    if (k[i - 1] < 0xff) {
      memcpy(out, k, i - 1);
      out[i - 1] = (uint8_t)(k[i - 1] + 1);
      return i;
    }
  }
  out[0] = 0;
  return 1;
}
