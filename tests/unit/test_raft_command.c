/* tests/unit/test_raft_command.c: the raft command codec: round trips of
 * random ops (every op type, nested txns), canonical re-encoding, encoder
 * refusals, and truncated or bit-flipped encodings that must decode or fail
 * with CAIRN_ECORRUPT, never crash (run it under ASan+UBSan). */
#include <raft.h>

#include "raft/command.h"
#include "test.h"

/* Everything a generated op points to, freed at once. */
#define GEN_ALLOCS_MAX 200000
static void *gen_allocs[GEN_ALLOCS_MAX];
static size_t gen_n_allocs;

static void *gen_alloc(size_t n) {
  CHECK(gen_n_allocs < GEN_ALLOCS_MAX);
  void *p = calloc(1, n ? n : 1);
  CHECK(p != NULL);
  gen_allocs[gen_n_allocs++] = p;
  return p;
}

static void gen_free_all(void) {
  for (size_t i = 0; i < gen_n_allocs; i++) {
    free(gen_allocs[i]);
  }
  gen_n_allocs = 0;
}

static struct mvcc_bytes gen_bytes(size_t max) {
  size_t len = (size_t)test_rand_below(max + 1);
  if (len == 0) {
    /* Both spellings of the empty string encode the same. */
    return (struct mvcc_bytes){test_rand_below(2) ? (const uint8_t *)"" : NULL, 0};
  }
  uint8_t *p = gen_alloc(len);
  for (size_t i = 0; i < len; i++) {
    p[i] = (uint8_t)test_rand();
  }
  return (struct mvcc_bytes){p, len};
}

/* Integers of every magnitude and sign, edge values included. */
static int64_t gen_i64(void) {
  switch (test_rand_below(6)) {
    case 0:
      return 0;
    case 1:
      return (int64_t)test_rand_below(300) - 150;
    case 2:
      return INT64_MAX;
    case 3:
      return INT64_MIN;
    case 4:
      return -1;
    default:
      return (int64_t)test_rand();
  }
}

static uint64_t gen_u64(void) {
  return test_rand_below(2) ? test_rand_below(1000) : test_rand();
}

static bool gen_bool(void) {
  return test_rand_below(2) != 0;
}

static void gen_range(struct mvcc_range_req *r) {
  r->key = gen_bytes(40);
  r->range_end = gen_bytes(8);
  r->limit = gen_i64();
  r->revision = gen_i64();
  r->sort_order = (enum mvcc_sort_order)test_rand_below(3);
  r->sort_target = (enum mvcc_sort_target)test_rand_below(5);
  r->keys_only = gen_bool();
  r->count_only = gen_bool();
  r->min_mod_revision = gen_i64();
  r->max_mod_revision = gen_i64();
  r->min_create_revision = gen_i64();
  r->max_create_revision = gen_i64();
}

static void gen_put(struct mvcc_put_req *p) {
  p->key = gen_bytes(40);
  p->value = gen_bytes(test_rand_below(10) == 0 ? 5000 : 60);
  p->lease = gen_i64();
  p->prev_kv = gen_bool();
  p->ignore_value = gen_bool();
  p->ignore_lease = gen_bool();
}

static void gen_del(struct mvcc_delete_req *d) {
  d->key = gen_bytes(40);
  d->range_end = gen_bytes(8);
  d->prev_kv = gen_bool();
}

static void gen_txn(struct mvcc_txn_req *t, unsigned depth);

static void gen_requests(const struct mvcc_request_op **out, size_t *n_out, unsigned depth) {
  size_t n = (size_t)test_rand_below(depth == 0 ? 6 : 3);
  struct mvcc_request_op *ops = n ? gen_alloc(n * sizeof *ops) : NULL;
  for (size_t i = 0; i < n; i++) {
    unsigned type = (unsigned)test_rand_below(depth < 4 ? 5 : 4);
    ops[i].type = (enum mvcc_request_type)type;
    switch (ops[i].type) {
      case MVCC_REQUEST_NONE:
        break;
      case MVCC_REQUEST_RANGE:
        gen_range(&ops[i].u.range);
        break;
      case MVCC_REQUEST_PUT:
        gen_put(&ops[i].u.put);
        break;
      case MVCC_REQUEST_DELETE:
        gen_del(&ops[i].u.del);
        break;
      case MVCC_REQUEST_TXN: {
        struct mvcc_txn_req *t = gen_alloc(sizeof *t);
        gen_txn(t, depth + 1);
        ops[i].u.txn = t;
        break;
      }
    }
  }
  *out = ops;
  *n_out = n;
}

static void gen_txn(struct mvcc_txn_req *t, unsigned depth) {
  size_t n = (size_t)test_rand_below(4);
  struct mvcc_compare *c = n ? gen_alloc(n * sizeof *c) : NULL;
  for (size_t i = 0; i < n; i++) {
    c[i].result = (enum mvcc_compare_result)test_rand_below(4);
    c[i].target = (enum mvcc_compare_target)test_rand_below(5);
    c[i].key = gen_bytes(30);
    c[i].range_end = gen_bytes(5);
    c[i].number = gen_i64();
    c[i].value = gen_bytes(20);
  }
  t->compares = c;
  t->n_compares = n;
  gen_requests(&t->success, &t->n_success, depth);
  gen_requests(&t->failure, &t->n_failure, depth);
}

static void gen_op(struct mvcc_op *op) {
  memset(op, 0, sizeof *op);
  op->type = (enum mvcc_op_type)(MVCC_OP_RANGE + test_rand_below(9));
  op->raft_index = gen_u64();
  op->raft_term = gen_u64();
  switch (op->type) {
    case MVCC_OP_RANGE:
      gen_range(&op->u.range);
      break;
    case MVCC_OP_PUT:
      gen_put(&op->u.put);
      break;
    case MVCC_OP_DELETE:
      gen_del(&op->u.del);
      break;
    case MVCC_OP_TXN:
      gen_txn(&op->u.txn, 0);
      break;
    case MVCC_OP_COMPACT:
      op->u.compact_revision = gen_i64();
      break;
    case MVCC_OP_LEASE_GRANT:
      op->u.lease_grant.id = gen_i64();
      op->u.lease_grant.ttl = gen_i64();
      op->u.lease_grant.now_ms = gen_i64();
      break;
    case MVCC_OP_LEASE_REVOKE:
      op->u.lease_revoke_id = gen_i64();
      break;
    case MVCC_OP_LEASE_CHECKPOINT:
      op->u.lease_checkpoint.id = gen_i64();
      op->u.lease_checkpoint.remaining_ms = gen_i64();
      break;
    case MVCC_OP_META_PUT: {
      size_t len = 1 + (size_t)test_rand_below(COMMAND_META_NAME_MAX);
      char *name = gen_alloc(len + 1);
      for (size_t i = 0; i < len; i++) {
        name[i] = (char)('a' + test_rand_below(26));
      }
      op->u.meta_put.name = name;
      op->u.meta_put.value = gen_bytes(100);
      break;
    }
  }
}

/* ---- deep comparison ------------------------------------------------------ */

static bool bytes_eq(struct mvcc_bytes a, struct mvcc_bytes b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static bool range_eq(const struct mvcc_range_req *a, const struct mvcc_range_req *b) {
  return bytes_eq(a->key, b->key) && bytes_eq(a->range_end, b->range_end) && a->limit == b->limit &&
         a->revision == b->revision && a->sort_order == b->sort_order &&
         a->sort_target == b->sort_target && a->keys_only == b->keys_only &&
         a->count_only == b->count_only && a->min_mod_revision == b->min_mod_revision &&
         a->max_mod_revision == b->max_mod_revision &&
         a->min_create_revision == b->min_create_revision &&
         a->max_create_revision == b->max_create_revision;
}

static bool put_eq(const struct mvcc_put_req *a, const struct mvcc_put_req *b) {
  return bytes_eq(a->key, b->key) && bytes_eq(a->value, b->value) && a->lease == b->lease &&
         a->prev_kv == b->prev_kv && a->ignore_value == b->ignore_value &&
         a->ignore_lease == b->ignore_lease;
}

static bool del_eq(const struct mvcc_delete_req *a, const struct mvcc_delete_req *b) {
  return bytes_eq(a->key, b->key) && bytes_eq(a->range_end, b->range_end) &&
         a->prev_kv == b->prev_kv;
}

static bool txn_eq(const struct mvcc_txn_req *a, const struct mvcc_txn_req *b);

static bool requests_eq(const struct mvcc_request_op *a, const struct mvcc_request_op *b,
                        size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (a[i].type != b[i].type) {
      return false;
    }
    bool eq = true;
    switch (a[i].type) {
      case MVCC_REQUEST_NONE:
        break;
      case MVCC_REQUEST_RANGE:
        eq = range_eq(&a[i].u.range, &b[i].u.range);
        break;
      case MVCC_REQUEST_PUT:
        eq = put_eq(&a[i].u.put, &b[i].u.put);
        break;
      case MVCC_REQUEST_DELETE:
        eq = del_eq(&a[i].u.del, &b[i].u.del);
        break;
      case MVCC_REQUEST_TXN:
        eq = txn_eq(a[i].u.txn, b[i].u.txn);
        break;
    }
    if (!eq) {
      return false;
    }
  }
  return true;
}

static bool txn_eq(const struct mvcc_txn_req *a, const struct mvcc_txn_req *b) {
  if (a->n_compares != b->n_compares || a->n_success != b->n_success ||
      a->n_failure != b->n_failure) {
    return false;
  }
  for (size_t i = 0; i < a->n_compares; i++) {
    const struct mvcc_compare *x = &a->compares[i], *y = &b->compares[i];
    if (x->result != y->result || x->target != y->target || !bytes_eq(x->key, y->key) ||
        !bytes_eq(x->range_end, y->range_end) || x->number != y->number ||
        !bytes_eq(x->value, y->value)) {
      return false;
    }
  }
  return requests_eq(a->success, b->success, a->n_success) &&
         requests_eq(a->failure, b->failure, a->n_failure);
}

static bool op_eq(const struct mvcc_op *a, const struct mvcc_op *b) {
  if (a->type != b->type || a->raft_index != b->raft_index || a->raft_term != b->raft_term) {
    return false;
  }
  switch (a->type) {
    case MVCC_OP_RANGE:
      return range_eq(&a->u.range, &b->u.range);
    case MVCC_OP_PUT:
      return put_eq(&a->u.put, &b->u.put);
    case MVCC_OP_DELETE:
      return del_eq(&a->u.del, &b->u.del);
    case MVCC_OP_TXN:
      return txn_eq(&a->u.txn, &b->u.txn);
    case MVCC_OP_COMPACT:
      return a->u.compact_revision == b->u.compact_revision;
    case MVCC_OP_LEASE_GRANT:
      return a->u.lease_grant.id == b->u.lease_grant.id &&
             a->u.lease_grant.ttl == b->u.lease_grant.ttl &&
             a->u.lease_grant.now_ms == b->u.lease_grant.now_ms;
    case MVCC_OP_LEASE_REVOKE:
      return a->u.lease_revoke_id == b->u.lease_revoke_id;
    case MVCC_OP_LEASE_CHECKPOINT:
      return a->u.lease_checkpoint.id == b->u.lease_checkpoint.id &&
             a->u.lease_checkpoint.remaining_ms == b->u.lease_checkpoint.remaining_ms;
    case MVCC_OP_META_PUT:
      return strcmp(a->u.meta_put.name, b->u.meta_put.name) == 0 &&
             bytes_eq(a->u.meta_put.value, b->u.meta_put.value);
  }
  return false;
}

/* ---- tests ---------------------------------------------------------------- */

/* Decoding d and encoding it again gives exactly buf. */
static void check_canonical(const struct command *d, const struct raft_buffer *buf) {
  struct raft_buffer again;
  CHECK_OK(command_encode(d->request_id, &d->op, &again));
  CHECK(again.len == buf->len);
  CHECK(memcmp(again.base, buf->base, buf->len) == 0);
  raft_free(again.base);
}

static void test_round_trip(void) {
  unsigned rounds = test_small() ? 3000 : 20000;
  for (unsigned i = 0; i < rounds; i++) {
    struct mvcc_op op;
    gen_op(&op);
    uint64_t id = test_rand();
    struct raft_buffer buf;
    CHECK_OK(command_encode(id, &op, &buf));
    CHECK(buf.len % COMMAND_ALIGN == 0);
    struct command d;
    CHECK_OK(command_decode(buf.base, buf.len, &d));
    CHECK(d.request_id == id);
    CHECK(op_eq(&op, &d.op));
    check_canonical(&d, &buf);
    command_free(&d);
    CHECK(d.arena == NULL);
    raft_free(buf.base);
    gen_free_all();
  }
}

/* A put of a small key and value is compact. */
static void test_compact(void) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = (struct mvcc_bytes){(const uint8_t *)"foo", 3};
  op.u.put.value = (struct mvcc_bytes){(const uint8_t *)"bar", 3};
  op.raft_term = 3;
  struct raft_buffer buf;
  CHECK_OK(command_encode(42, &op, &buf));
  /* version, id, type, index, term, key, value, lease, flags: 22 bytes,
   * padded to 24. */
  CHECK_EQ_INT(buf.len, 24);
  CHECK(((uint8_t *)buf.base)[22] == 0 && ((uint8_t *)buf.base)[23] == 0);
  struct command d;
  CHECK_OK(command_decode(buf.base, buf.len, &d));
  CHECK(d.request_id == 42);
  CHECK(d.op.u.put.key.len == 3 && memcmp(d.op.u.put.key.data, "foo", 3) == 0);
  /* The decoded op does not point into the buffer. */
  memset(buf.base, 0xff, buf.len);
  CHECK(memcmp(d.op.u.put.value.data, "bar", 3) == 0);
  raft_free(buf.base);
  command_free(&d);
  command_free(&d); /* a zeroed command frees nothing */
  command_free(NULL);
}

static void test_encode_refusals(void) {
  struct raft_buffer buf = {NULL, 0};
  struct mvcc_op op = {.type = (enum mvcc_op_type)0};
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  op.type = (enum mvcc_op_type)(MVCC_OP_META_PUT + 1);
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);

  /* A NULL byte string with a length. */
  op = (struct mvcc_op){.type = MVCC_OP_PUT};
  op.u.put.key = (struct mvcc_bytes){NULL, 3};
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);

  /* Enum values outside etcd's. */
  op = (struct mvcc_op){.type = MVCC_OP_RANGE};
  op.u.range.sort_order = (enum mvcc_sort_order)3;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  op.u.range.sort_order = MVCC_SORT_NONE;
  op.u.range.sort_target = (enum mvcc_sort_target)5;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);

  struct mvcc_compare cmp = {.result = (enum mvcc_compare_result)4};
  op = (struct mvcc_op){.type = MVCC_OP_TXN};
  op.u.txn.compares = &cmp;
  op.u.txn.n_compares = 1;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  cmp.result = MVCC_CMP_EQUAL;
  cmp.target = (enum mvcc_compare_target)5;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  /* A count with no array. */
  op.u.txn.compares = NULL;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);

  struct mvcc_request_op bad = {.type = (enum mvcc_request_type)5};
  op = (struct mvcc_op){.type = MVCC_OP_TXN};
  op.u.txn.success = &bad;
  op.u.txn.n_success = 1;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  bad = (struct mvcc_request_op){.type = MVCC_REQUEST_TXN, .u.txn = NULL};
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  /* An empty RequestOp is encodable: the store answers it as etcd does. */
  bad = (struct mvcc_request_op){.type = MVCC_REQUEST_NONE};
  CHECK_OK(command_encode(1, &op, &buf));
  raft_free(buf.base);

  /* Meta names. */
  op = (struct mvcc_op){.type = MVCC_OP_META_PUT};
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  op.u.meta_put.name = "";
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  char longname[COMMAND_META_NAME_MAX + 2];
  memset(longname, 'x', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  op.u.meta_put.name = longname;
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_EINVAL);
  longname[COMMAND_META_NAME_MAX] = 0;
  CHECK_OK(command_encode(1, &op, &buf));
  raft_free(buf.base);

  /* Too large. */
  op = (struct mvcc_op){.type = MVCC_OP_PUT};
  op.u.put.key = (struct mvcc_bytes){(const uint8_t *)"k", 1};
  op.u.put.value = (struct mvcc_bytes){(const uint8_t *)"v", (size_t)COMMAND_BYTES_MAX + 1};
  buf = (struct raft_buffer){NULL, 0};
  CHECK_ERR(command_encode(1, &op, &buf), CAIRN_ETOO_LARGE);
  CHECK(buf.base == NULL);
}

/* Decodes n hand-made bytes, zero-padded to the codec's alignment, from an
 * exact-size heap copy (so that ASan sees any read past the end). */
static int decode_raw(const uint8_t *raw, size_t n, struct command *d) {
  size_t len = (n + COMMAND_ALIGN - 1) / COMMAND_ALIGN * COMMAND_ALIGN;
  uint8_t *t = calloc(1, len ? len : 1);
  CHECK(t != NULL);
  memcpy(t, raw, n);
  int rc = command_decode(t, len, d);
  free(t);
  return rc;
}

/* Builds a chain of `levels` nested txns, each holding the next in its
 * success branch. */
static struct mvcc_op nested(unsigned levels) {
  struct mvcc_op op = {.type = MVCC_OP_TXN};
  struct mvcc_txn_req *t = &op.u.txn;
  for (unsigned l = 1; l < levels; l++) {
    struct mvcc_request_op *r = gen_alloc(sizeof *r);
    struct mvcc_txn_req *inner = gen_alloc(sizeof *inner);
    r->type = MVCC_REQUEST_TXN;
    r->u.txn = inner;
    t->success = r;
    t->n_success = 1;
    t = inner;
  }
  return op;
}

static void test_nesting_bound(void) {
  struct raft_buffer buf;
  struct mvcc_op op = nested(COMMAND_TXN_LEVELS_MAX);
  CHECK_OK(command_encode(7, &op, &buf));
  struct command d;
  CHECK_OK(command_decode(buf.base, buf.len, &d));
  CHECK(op_eq(&op, &d.op));
  command_free(&d);
  raft_free(buf.base);
  gen_free_all();

  op = nested(COMMAND_TXN_LEVELS_MAX + 1);
  CHECK_ERR(command_encode(7, &op, &buf), CAIRN_ETOO_MANY_OPS);
  gen_free_all();

  /* A hand-made encoding one level deeper than the bound: each level is
   * "0 compares, 1 success op of type TXN", the innermost is empty. */
  size_t levels = COMMAND_TXN_LEVELS_MAX + 1;
  size_t len = 1 + 8 + 3 + levels * 4 + 3;
  uint8_t *raw = malloc(len);
  CHECK(raw != NULL);
  size_t n = 0;
  raw[n++] = COMMAND_VERSION;
  memset(raw + n, 0, 8);
  n += 8;
  raw[n++] = MVCC_OP_TXN;
  raw[n++] = 0; /* index */
  raw[n++] = 0; /* term */
  for (size_t l = 1; l < levels; l++) {
    raw[n++] = 0;                /* compares */
    raw[n++] = 1;                /* one success op */
    raw[n++] = MVCC_REQUEST_TXN; /* a nested txn */
  }
  raw[n++] = 0; /* innermost: no compares, */
  raw[n++] = 0; /* no success, */
  raw[n++] = 0; /* no failure */
  for (size_t l = 1; l < levels; l++) {
    raw[n++] = 0; /* each level's failure list */
  }
  CHECK(n <= len);
  CHECK_ERR(decode_raw(raw, n, &d), CAIRN_ECORRUPT);
  CHECK(d.arena == NULL);
  free(raw);
}

/* Hand-made malformed inputs. */
static void test_decode_malformed(void) {
  struct command d;
  CHECK_ERR(command_decode(NULL, 0, &d), CAIRN_ECORRUPT);
  uint8_t v2[] = {2, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_COMPACT, 0, 0, 0};
  CHECK_ERR(decode_raw(v2, sizeof v2, &d), CAIRN_ECORRUPT);
  uint8_t ok[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_COMPACT, 0, 0, 0};
  CHECK_OK(decode_raw(ok, sizeof ok, &d));
  CHECK(d.op.type == MVCC_OP_COMPACT && d.op.u.compact_revision == 0);
  command_free(&d);
  /* The padding: exact, zero, and nothing after it. */
  uint8_t padded[16] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_COMPACT, 0, 0, 0};
  CHECK_OK(command_decode(padded, 16, &d));
  command_free(&d);
  CHECK_ERR(command_decode(padded, 13, &d), CAIRN_ECORRUPT); /* unpadded */
  CHECK_ERR(command_decode(padded, 15, &d), CAIRN_ECORRUPT);
  padded[15] = 1;
  CHECK_ERR(command_decode(padded, 16, &d), CAIRN_ECORRUPT);
  uint8_t longer[24] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_COMPACT, 0, 0, 0};
  CHECK_ERR(command_decode(longer, 24, &d), CAIRN_ECORRUPT); /* 8 zeros too many */
  /* Unknown op types. */
  uint8_t type0[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  CHECK_ERR(decode_raw(type0, sizeof type0, &d), CAIRN_ECORRUPT);
  uint8_t type10[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0};
  CHECK_ERR(decode_raw(type10, sizeof type10, &d), CAIRN_ECORRUPT);
  /* A non-minimal varint (0 spelt 0x80 0x00). */
  uint8_t overlong[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_COMPACT, 0x80, 0, 0, 0};
  CHECK_ERR(decode_raw(overlong, sizeof overlong, &d), CAIRN_ECORRUPT);
  /* A varint beyond 64 bits. */
  uint8_t big[] = {1,    0,    0,    0,    0,    0,    0,    0,    0,    MVCC_OP_COMPACT,
                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                   0,    0};
  CHECK_ERR(decode_raw(big, sizeof big, &d), CAIRN_ECORRUPT);
  /* A byte string longer than what is left. */
  uint8_t longkey[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_DELETE, 0, 0, 0x7f, 'a', 0, 0};
  CHECK_ERR(decode_raw(longkey, sizeof longkey, &d), CAIRN_ECORRUPT);
  /* Unknown flag bits. */
  uint8_t flags[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_DELETE, 0, 0, 1, 'a', 0, 0x02};
  CHECK_ERR(decode_raw(flags, sizeof flags, &d), CAIRN_ECORRUPT);
  flags[sizeof flags - 1] = 1;
  CHECK_OK(decode_raw(flags, sizeof flags, &d));
  CHECK(d.op.u.del.prev_kv && d.op.u.del.key.len == 1);
  command_free(&d);
  /* A huge count with few bytes behind it. */
  uint8_t count[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_TXN, 0, 0, 0xff, 0xff, 0x03, 0, 0};
  CHECK_ERR(decode_raw(count, sizeof count, &d), CAIRN_ECORRUPT);
  /* Meta names: empty, or with an inner NUL. */
  uint8_t meta0[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_META_PUT, 0, 0, 0, 0};
  CHECK_ERR(decode_raw(meta0, sizeof meta0, &d), CAIRN_ECORRUPT);
  uint8_t metanul[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, MVCC_OP_META_PUT, 0, 0, 2, 'a', 0, 0};
  CHECK_ERR(decode_raw(metanul, sizeof metanul, &d), CAIRN_ECORRUPT);
  metanul[14] = 'b';
  CHECK_OK(decode_raw(metanul, sizeof metanul, &d));
  CHECK(strcmp(d.op.u.meta_put.name, "ab") == 0);
  command_free(&d);
}

/* Every strict prefix of a valid encoding fails; random bit flips and byte
 * changes decode to a valid command (which re-encodes) or fail cleanly. */
static void test_truncation_and_flips(void) {
  unsigned rounds = test_small() ? 300 : 2000;
  unsigned decoded = 0, refused = 0;
  for (unsigned i = 0; i < rounds; i++) {
    struct mvcc_op op;
    gen_op(&op);
    struct raft_buffer buf;
    CHECK_OK(command_encode(test_rand(), &op, &buf));
    uint8_t *copy = malloc(buf.len);
    CHECK(copy != NULL);
    struct command d;
    /* Truncations, on exact-size heap copies so that ASan sees any read
     * past the end: a strict prefix never decodes; zero-padded again, it
     * decodes to a command that re-encodes to it, or fails cleanly. */
    for (size_t len = 0; len < buf.len; len++) {
      if (buf.len > 600 && len > 64 && test_rand_below(8) != 0) {
        continue; /* long encodings: a sample of the prefixes */
      }
      uint8_t *t = malloc(len ? len : 1);
      CHECK(t != NULL);
      memcpy(t, buf.base, len);
      CHECK_ERR(command_decode(t, len, &d), CAIRN_ECORRUPT);
      CHECK(d.arena == NULL);
      free(t);
      size_t padded = (len + COMMAND_ALIGN - 1) / COMMAND_ALIGN * COMMAND_ALIGN;
      t = calloc(1, padded ? padded : 1);
      CHECK(t != NULL);
      memcpy(t, buf.base, len);
      int rc = command_decode(t, padded, &d);
      if (rc == 0) {
        struct raft_buffer again;
        CHECK_OK(command_encode(d.request_id, &d.op, &again));
        CHECK(again.len == padded && memcmp(again.base, t, padded) == 0);
        raft_free(again.base);
        command_free(&d);
      } else {
        CHECK_ERR(rc, CAIRN_ECORRUPT);
      }
      free(t);
    }
    /* Flips. */
    for (unsigned f = 0; f < 40; f++) {
      memcpy(copy, buf.base, buf.len);
      unsigned changes = 1 + (unsigned)test_rand_below(3);
      for (unsigned c = 0; c < changes; c++) {
        size_t at = (size_t)test_rand_below(buf.len);
        if (test_rand_below(2)) {
          copy[at] ^= (uint8_t)(1u << test_rand_below(8));
        } else {
          copy[at] = (uint8_t)test_rand();
        }
      }
      int rc = command_decode(copy, buf.len, &d);
      if (rc == 0) {
        decoded++;
        struct raft_buffer again;
        CHECK_OK(command_encode(d.request_id, &d.op, &again));
        CHECK(again.len == buf.len && memcmp(again.base, copy, buf.len) == 0);
        raft_free(again.base);
        command_free(&d);
      } else {
        CHECK_ERR(rc, CAIRN_ECORRUPT);
        CHECK(d.arena == NULL);
        refused++;
      }
    }
    free(copy);
    raft_free(buf.base);
    gen_free_all();
  }
  printf("    flips: %u decoded, %u refused\n", decoded, refused);
  CHECK(decoded > 0 && refused > 0);
}

/* Random bytes behind a valid header. */
static void test_random_garbage(void) {
  unsigned rounds = test_small() ? 20000 : 200000;
  uint8_t buf[64];
  for (unsigned i = 0; i < rounds; i++) {
    size_t len = COMMAND_ALIGN * (2 + (size_t)test_rand_below(sizeof buf / COMMAND_ALIGN - 1));
    for (size_t j = 0; j < len; j++) {
      buf[j] = (uint8_t)(test_rand_below(4) == 0 ? test_rand_below(4) : test_rand());
    }
    buf[0] = COMMAND_VERSION;
    buf[9] = (uint8_t)(MVCC_OP_RANGE + test_rand_below(9));
    uint8_t *t = malloc(len);
    CHECK(t != NULL);
    memcpy(t, buf, len);
    struct command d;
    int rc = command_decode(t, len, &d);
    if (rc == 0) {
      struct raft_buffer again;
      CHECK_OK(command_encode(d.request_id, &d.op, &again));
      CHECK(again.len == len && memcmp(again.base, t, len) == 0);
      raft_free(again.base);
      command_free(&d);
    } else {
      CHECK_ERR(rc, CAIRN_ECORRUPT);
    }
    free(t);
  }
}

int main(void) {
  test_seed("test_raft_command");
  TEST_RUN(test_compact);
  TEST_RUN(test_round_trip);
  TEST_RUN(test_encode_refusals);
  TEST_RUN(test_nesting_bound);
  TEST_RUN(test_decode_malformed);
  TEST_RUN(test_truncation_and_flips);
  TEST_RUN(test_random_garbage);
  printf("ok\n");
  return 0;
}
