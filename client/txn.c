/* client/txn.c: the transaction builder (struct cairn_txn, client/cairn.h).
 *
 * Ownership inside a builder, which cairn_txn_free() relies on:
 * - t->req and its arrays are ours (malloc);
 * - each Compare is ours, with its key, range_end and value copied (malloc);
 * - each RequestOp is ours; a range, put or delete inside it is a deep copy
 *   made by packing the caller's request and unpacking it (protobuf-c owns
 *   its memory: protobuf_c_message_free_unpacked); a nested TxnRequest is
 *   the inner builder's request, taken over, and freed as ours.
 * Errors are sticky: the first failed add is kept in t->err, the request
 * is freed, and every later call returns that error. */
#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

/* Compares, and operations per branch, in one builder (etcd's server takes
 * 128 operations by default; this only keeps a runaway caller bounded).
 * Past it the add fails with CAIRN_EINVAL (sticky). */
#define TXN_ITEMS_MAX 16384u
/* Nesting depth freed recursively; the server refuses far less. */
#define TXN_DEPTH_MAX 64u

struct cairn_txn {
  Etcdserverpb__TxnRequest *req; /* NULL after a sticky error */
  int err;
  unsigned depth; /* 1 + the depth of the deepest nested builder */
  size_t cap_compare, cap_success, cap_failure;
};

static void txn_req_free(Etcdserverpb__TxnRequest *r);

static void op_free(Etcdserverpb__RequestOp *op) {
  if (!op) {
    return;
  }
  switch (op->request_case) {
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
      protobuf_c_message_free_unpacked(&op->request_range->base, NULL);
      break;
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
      protobuf_c_message_free_unpacked(&op->request_put->base, NULL);
      break;
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE:
      protobuf_c_message_free_unpacked(&op->request_delete_range->base, NULL);
      break;
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN:
      txn_req_free(op->request_txn);
      break;
    default:
      break;
  }
  free(op);
}

static void cmp_free(Etcdserverpb__Compare *c) {
  if (!c) {
    return;
  }
  free(c->key.data);
  free(c->range_end.data);
  if (c->target_union_case == ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE) {
    free(c->value.data);
  }
  free(c);
}

/* Recursion depth is bounded by TXN_DEPTH_MAX (cairn_txn_nest checks). */
static void txn_req_free(Etcdserverpb__TxnRequest *r) {
  if (!r) {
    return;
  }
  for (size_t i = 0; i < r->n_compare; i++) {
    cmp_free(r->compare[i]);
  }
  for (size_t i = 0; i < r->n_success; i++) {
    op_free(r->success[i]);
  }
  for (size_t i = 0; i < r->n_failure; i++) {
    op_free(r->failure[i]);
  }
  free(r->compare);
  free(r->success);
  free(r->failure);
  free(r);
}

struct cairn_txn *cairn_txn_new(void) {
  struct cairn_txn *t = calloc(1, sizeof *t);
  if (!t) {
    return NULL;
  }
  t->req = malloc(sizeof *t->req);
  if (!t->req) {
    free(t);
    return NULL;
  }
  Etcdserverpb__TxnRequest init = ETCDSERVERPB__TXN_REQUEST__INIT;
  *t->req = init;
  t->depth = 1;
  return t;
}

void cairn_txn_free(struct cairn_txn *t) {
  if (!t) {
    return;
  }
  txn_req_free(t->req);
  free(t);
}

/* Records a sticky error: the request goes, the error stays. */
static int txn_fail(struct cairn_txn *t, int err) {
  t->err = err;
  txn_req_free(t->req);
  t->req = NULL;
  return err;
}

/* Makes room for one more item in an array of pointers. */
static int grow(void ***arr, size_t n, size_t *cap) {
  if (n >= TXN_ITEMS_MAX) {
    return CAIRN_EINVAL;
  }
  if (n < *cap) {
    return 0;
  }
  size_t ncap = *cap ? *cap * 2 : 4;
  if (ncap > TXN_ITEMS_MAX) {
    ncap = TXN_ITEMS_MAX;
  }
  void **a = realloc(*arr, ncap * sizeof *a);
  if (!a) {
    return CAIRN_ENOMEM;
  }
  *arr = a;
  *cap = ncap;
  return 0;
}

static int bytes_dup(ProtobufCBinaryData *out, const void *p, size_t len) {
  out->len = 0;
  out->data = NULL;
  if (len == 0) {
    return 0;
  }
  out->data = malloc(len);
  if (!out->data) {
    return CAIRN_ENOMEM;
  }
  memcpy(out->data, p, len);
  out->len = len;
  return 0;
}

static int txn_compare(struct cairn_txn *t, const void *key, size_t key_len, const void *range_end,
                       size_t range_end_len, enum cairn_cmp op,
                       Etcdserverpb__Compare__CompareTarget target,
                       Etcdserverpb__Compare__TargetUnionCase which, int64_t number,
                       const void *value, size_t value_len) {
  if (!t) {
    return CAIRN_EINVAL;
  }
  if (t->err) {
    return t->err;
  }
  if ((!key && key_len > 0) || (!range_end && range_end_len > 0) || (!value && value_len > 0) ||
      (unsigned)op > CAIRN_CMP_NOT_EQUAL) {
    return txn_fail(t, CAIRN_EINVAL);
  }
  int rc = grow((void ***)&t->req->compare, t->req->n_compare, &t->cap_compare);
  if (rc != 0) {
    return txn_fail(t, rc);
  }
  Etcdserverpb__Compare *c = malloc(sizeof *c);
  if (!c) {
    return txn_fail(t, CAIRN_ENOMEM);
  }
  Etcdserverpb__Compare init = ETCDSERVERPB__COMPARE__INIT;
  *c = init;
  static const Etcdserverpb__Compare__CompareResult results[] = {
      [CAIRN_CMP_EQUAL] = ETCDSERVERPB__COMPARE__COMPARE_RESULT__EQUAL,
      [CAIRN_CMP_GREATER] = ETCDSERVERPB__COMPARE__COMPARE_RESULT__GREATER,
      [CAIRN_CMP_LESS] = ETCDSERVERPB__COMPARE__COMPARE_RESULT__LESS,
      [CAIRN_CMP_NOT_EQUAL] = ETCDSERVERPB__COMPARE__COMPARE_RESULT__NOT_EQUAL,
  };
  c->result = results[op];
  c->target = target;
  c->target_union_case = which;
  rc = bytes_dup(&c->key, key, key_len);
  if (rc == 0 && range_end) {
    rc = bytes_dup(&c->range_end, range_end, range_end_len);
  }
  if (which == ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE) {
    c->value.data = NULL;
    c->value.len = 0;
    if (rc == 0) {
      rc = bytes_dup(&c->value, value, value_len);
    }
  } else {
    c->version = number; /* one int64 member of the union, whichever it is */
  }
  if (rc != 0) {
    cmp_free(c);
    return txn_fail(t, rc);
  }
  t->req->compare[t->req->n_compare++] = c;
  return 0;
}

int cairn_txn_if_value(struct cairn_txn *t, const void *key, size_t key_len, const void *range_end,
                       size_t range_end_len, enum cairn_cmp op, const void *value,
                       size_t value_len) {
  return txn_compare(t, key, key_len, range_end, range_end_len, op,
                     ETCDSERVERPB__COMPARE__COMPARE_TARGET__VALUE,
                     ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE, 0, value, value_len);
}

int cairn_txn_if_version(struct cairn_txn *t, const void *key, size_t key_len,
                         const void *range_end, size_t range_end_len, enum cairn_cmp op,
                         int64_t version) {
  return txn_compare(t, key, key_len, range_end, range_end_len, op,
                     ETCDSERVERPB__COMPARE__COMPARE_TARGET__VERSION,
                     ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION, version, NULL, 0);
}

int cairn_txn_if_create_revision(struct cairn_txn *t, const void *key, size_t key_len,
                                 const void *range_end, size_t range_end_len, enum cairn_cmp op,
                                 int64_t revision) {
  return txn_compare(t, key, key_len, range_end, range_end_len, op,
                     ETCDSERVERPB__COMPARE__COMPARE_TARGET__CREATE,
                     ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION, revision, NULL, 0);
}

int cairn_txn_if_mod_revision(struct cairn_txn *t, const void *key, size_t key_len,
                              const void *range_end, size_t range_end_len, enum cairn_cmp op,
                              int64_t revision) {
  return txn_compare(t, key, key_len, range_end, range_end_len, op,
                     ETCDSERVERPB__COMPARE__COMPARE_TARGET__MOD,
                     ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION, revision, NULL, 0);
}

int cairn_txn_if_lease(struct cairn_txn *t, const void *key, size_t key_len, const void *range_end,
                       size_t range_end_len, enum cairn_cmp op, int64_t lease) {
  return txn_compare(t, key, key_len, range_end, range_end_len, op,
                     ETCDSERVERPB__COMPARE__COMPARE_TARGET__LEASE,
                     ETCDSERVERPB__COMPARE__TARGET_UNION_LEASE, lease, NULL, 0);
}

/* Appends op to a branch; on failure op is freed and the error is sticky. */
static int txn_add_op(struct cairn_txn *t, bool then, Etcdserverpb__RequestOp *op) {
  Etcdserverpb__TxnRequest *r = t->req;
  int rc = then ? grow((void ***)&r->success, r->n_success, &t->cap_success)
                : grow((void ***)&r->failure, r->n_failure, &t->cap_failure);
  if (rc != 0) {
    op_free(op);
    return txn_fail(t, rc);
  }
  if (then) {
    r->success[r->n_success++] = op;
  } else {
    r->failure[r->n_failure++] = op;
  }
  return 0;
}

/* A deep copy of msg (packed, then unpacked into memory protobuf-c owns). */
static ProtobufCMessage *deep_copy(const ProtobufCMessage *msg) {
  uint8_t *buf;
  size_t len;
  if (cairn__pack(msg, &buf, &len) != 0) {
    return NULL;
  }
  ProtobufCMessage *copy = protobuf_c_message_unpack(msg->descriptor, NULL, len, buf);
  free(buf);
  return copy;
}

static int txn_op_copy(struct cairn_txn *t, bool then, const ProtobufCMessage *req,
                       Etcdserverpb__RequestOp__RequestCase which) {
  if (!t) {
    return CAIRN_EINVAL;
  }
  if (t->err) {
    return t->err;
  }
  if (!req) {
    return txn_fail(t, CAIRN_EINVAL);
  }
  Etcdserverpb__RequestOp *op = malloc(sizeof *op);
  if (!op) {
    return txn_fail(t, CAIRN_ENOMEM);
  }
  Etcdserverpb__RequestOp init = ETCDSERVERPB__REQUEST_OP__INIT;
  *op = init;
  ProtobufCMessage *copy = deep_copy(req);
  if (!copy) {
    free(op);
    return txn_fail(t, CAIRN_ENOMEM);
  }
  op->request_case = which;
  switch (which) {
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE:
      op->request_range = (Etcdserverpb__RangeRequest *)copy;
      break;
    case ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT:
      op->request_put = (Etcdserverpb__PutRequest *)copy;
      break;
    default:
      op->request_delete_range = (Etcdserverpb__DeleteRangeRequest *)copy;
      break;
  }
  return txn_add_op(t, then, op);
}

int cairn_txn_range(struct cairn_txn *t, bool then, const Etcdserverpb__RangeRequest *req) {
  return txn_op_copy(t, then, req ? &req->base : NULL,
                     ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_RANGE);
}

int cairn_txn_put(struct cairn_txn *t, bool then, const Etcdserverpb__PutRequest *req) {
  return txn_op_copy(t, then, req ? &req->base : NULL,
                     ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT);
}

int cairn_txn_delete(struct cairn_txn *t, bool then, const Etcdserverpb__DeleteRangeRequest *req) {
  return txn_op_copy(t, then, req ? &req->base : NULL,
                     ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE);
}

int cairn_txn_nest(struct cairn_txn *t, bool then, struct cairn_txn *inner) {
  if (!t || !inner || inner == t) {
    if (inner != t) {
      cairn_txn_free(inner);
    }
    return t ? txn_fail(t, CAIRN_EINVAL) : CAIRN_EINVAL;
  }
  if (t->err) {
    cairn_txn_free(inner);
    return t->err;
  }
  if (inner->err) {
    int err = inner->err;
    cairn_txn_free(inner);
    return txn_fail(t, err);
  }
  if (inner->depth + 1 > TXN_DEPTH_MAX) {
    cairn_txn_free(inner);
    return txn_fail(t, CAIRN_EINVAL);
  }
  Etcdserverpb__RequestOp *op = malloc(sizeof *op);
  if (!op) {
    cairn_txn_free(inner);
    return txn_fail(t, CAIRN_ENOMEM);
  }
  Etcdserverpb__RequestOp init = ETCDSERVERPB__REQUEST_OP__INIT;
  *op = init;
  op->request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
  op->request_txn = inner->req; /* taken over */
  inner->req = NULL;
  unsigned depth = inner->depth + 1;
  cairn_txn_free(inner);
  int rc = txn_add_op(t, then, op);
  if (rc == 0 && depth > t->depth) {
    t->depth = depth;
  }
  return rc;
}

const Etcdserverpb__TxnRequest *cairn_txn_request(const struct cairn_txn *t) {
  return t && !t->err ? t->req : NULL;
}

int cairn_txn_commit(cairn_client *c, const struct cairn_txn *t,
                     const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!t) {
    return CAIRN_EINVAL;
  }
  if (t->err) {
    return t->err;
  }
  return cairn_txn(c, t->req, opts, cb, data);
}
