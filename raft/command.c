/* raft/command.c: encoding and bounds-checked decoding of raft commands. */
#include "command.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"

/* Flags bytes: only these bits may be set. */
#define RANGE_KEYS_ONLY 0x01u
#define RANGE_COUNT_ONLY 0x02u
#define PUT_PREV_KV 0x01u
#define PUT_IGNORE_VALUE 0x02u
#define PUT_IGNORE_LEASE 0x04u
#define DEL_PREV_KV 0x01u

/* ---- encoding ------------------------------------------------------------ */

/* Two passes over the op: the first (p NULL) validates and measures, the
 * second writes into a buffer of exactly that size. */
struct enc {
  uint8_t *p;
  size_t n;
  int err; /* sticky: the first error wins */
};

static void enc_fail(struct enc *e, int err) {
  if (e->err == 0) {
    e->err = err;
  }
}

static void put_raw(struct enc *e, const void *data, size_t len) {
  if (e->err != 0) {
    return;
  }
  if (len > COMMAND_BYTES_MAX - e->n) {
    enc_fail(e, CAIRN_ETOO_LARGE);
    return;
  }
  if (e->p != NULL && len > 0) {
    memcpy(e->p + e->n, data, len);
  }
  e->n += len;
}

static void put_u8(struct enc *e, uint8_t v) {
  put_raw(e, &v, 1);
}

static void put_uvar(struct enc *e, uint64_t v) {
  uint8_t b[10];
  size_t n = 0;
  while (v >= 0x80u) {
    b[n++] = (uint8_t)(v | 0x80u);
    v >>= 7;
  }
  b[n++] = (uint8_t)v;
  put_raw(e, b, n);
}

/* Zigzag: small magnitudes of either sign take few bytes. */
static void put_svar(struct enc *e, int64_t v) {
  uint64_t u = v < 0 ? ~((uint64_t)v << 1) : (uint64_t)v << 1;
  put_uvar(e, u);
}

static void put_bytes(struct enc *e, struct mvcc_bytes b) {
  if (b.data == NULL && b.len > 0) {
    enc_fail(e, CAIRN_EINVAL);
    return;
  }
  if (b.len > COMMAND_BYTES_MAX) {
    enc_fail(e, CAIRN_ETOO_LARGE);
    return;
  }
  put_uvar(e, b.len);
  put_raw(e, b.data, b.len);
}

static void put_count(struct enc *e, size_t n, const void *array) {
  if (n > COMMAND_TXN_LIST_MAX) {
    enc_fail(e, CAIRN_ETOO_MANY_OPS);
    return;
  }
  if (n > 0 && array == NULL) {
    enc_fail(e, CAIRN_EINVAL);
    return;
  }
  put_uvar(e, n);
}

static void put_enum(struct enc *e, unsigned v, unsigned max) {
  if (v > max) {
    enc_fail(e, CAIRN_EINVAL);
    return;
  }
  put_uvar(e, v);
}

static void enc_range(struct enc *e, const struct mvcc_range_req *r) {
  put_bytes(e, r->key);
  put_bytes(e, r->range_end);
  put_svar(e, r->limit);
  put_svar(e, r->revision);
  put_enum(e, (unsigned)r->sort_order, MVCC_SORT_DESCEND);
  put_enum(e, (unsigned)r->sort_target, MVCC_SORT_VALUE);
  put_u8(e, (uint8_t)((r->keys_only ? RANGE_KEYS_ONLY : 0u) |
                      (r->count_only ? RANGE_COUNT_ONLY : 0u)));
  put_svar(e, r->min_mod_revision);
  put_svar(e, r->max_mod_revision);
  put_svar(e, r->min_create_revision);
  put_svar(e, r->max_create_revision);
}

static void enc_put(struct enc *e, const struct mvcc_put_req *p) {
  put_bytes(e, p->key);
  put_bytes(e, p->value);
  put_svar(e, p->lease);
  put_u8(e, (uint8_t)((p->prev_kv ? PUT_PREV_KV : 0u) | (p->ignore_value ? PUT_IGNORE_VALUE : 0u) |
                      (p->ignore_lease ? PUT_IGNORE_LEASE : 0u)));
}

static void enc_del(struct enc *e, const struct mvcc_delete_req *d) {
  put_bytes(e, d->key);
  put_bytes(e, d->range_end);
  put_u8(e, d->prev_kv ? DEL_PREV_KV : 0u);
}

static void enc_txn(struct enc *e, const struct mvcc_txn_req *t, unsigned level);

static void enc_request(struct enc *e, const struct mvcc_request_op *r, unsigned level) {
  put_enum(e, (unsigned)r->type, MVCC_REQUEST_TXN);
  switch (r->type) {
    case MVCC_REQUEST_NONE:
      break;
    case MVCC_REQUEST_RANGE:
      enc_range(e, &r->u.range);
      break;
    case MVCC_REQUEST_PUT:
      enc_put(e, &r->u.put);
      break;
    case MVCC_REQUEST_DELETE:
      enc_del(e, &r->u.del);
      break;
    case MVCC_REQUEST_TXN:
      if (r->u.txn == NULL) {
        enc_fail(e, CAIRN_EINVAL);
        return;
      }
      enc_txn(e, r->u.txn, level + 1);
      break;
  }
}

static void enc_txn(struct enc *e, const struct mvcc_txn_req *t, unsigned level) {
  if (level > COMMAND_TXN_LEVELS_MAX) {
    enc_fail(e, CAIRN_ETOO_MANY_OPS);
    return;
  }
  put_count(e, t->n_compares, t->compares);
  for (size_t i = 0; i < t->n_compares && e->err == 0; i++) {
    const struct mvcc_compare *c = &t->compares[i];
    put_enum(e, (unsigned)c->result, MVCC_CMP_NOT_EQUAL);
    put_enum(e, (unsigned)c->target, MVCC_TARGET_LEASE);
    put_bytes(e, c->key);
    put_bytes(e, c->range_end);
    put_svar(e, c->number);
    put_bytes(e, c->value);
  }
  put_count(e, t->n_success, t->success);
  for (size_t i = 0; i < t->n_success && e->err == 0; i++) {
    enc_request(e, &t->success[i], level);
  }
  put_count(e, t->n_failure, t->failure);
  for (size_t i = 0; i < t->n_failure && e->err == 0; i++) {
    enc_request(e, &t->failure[i], level);
  }
}

static void enc_op(struct enc *e, uint64_t request_id, const struct mvcc_op *op) {
  uint8_t id[8];
  for (int i = 0; i < 8; i++) {
    id[i] = (uint8_t)(request_id >> (8 * i));
  }
  put_u8(e, COMMAND_VERSION);
  put_raw(e, id, sizeof id);
  put_uvar(e, (uint64_t)op->type);
  put_uvar(e, op->raft_index);
  put_uvar(e, op->raft_term);
  switch (op->type) {
    case MVCC_OP_RANGE:
      enc_range(e, &op->u.range);
      break;
    case MVCC_OP_PUT:
      enc_put(e, &op->u.put);
      break;
    case MVCC_OP_DELETE:
      enc_del(e, &op->u.del);
      break;
    case MVCC_OP_TXN:
      enc_txn(e, &op->u.txn, 1);
      break;
    case MVCC_OP_COMPACT:
      put_svar(e, op->u.compact_revision);
      break;
    case MVCC_OP_LEASE_GRANT:
      put_svar(e, op->u.lease_grant.id);
      put_svar(e, op->u.lease_grant.ttl);
      put_svar(e, op->u.lease_grant.now_ms);
      break;
    case MVCC_OP_LEASE_REVOKE:
      put_svar(e, op->u.lease_revoke_id);
      break;
    case MVCC_OP_LEASE_CHECKPOINT:
      put_svar(e, op->u.lease_checkpoint.id);
      put_svar(e, op->u.lease_checkpoint.remaining_ms);
      break;
    case MVCC_OP_META_PUT: {
      const char *name = op->u.meta_put.name;
      size_t name_len = name == NULL ? 0 : strnlen(name, COMMAND_META_NAME_MAX + 1);
      if (name_len == 0 || name_len > COMMAND_META_NAME_MAX) {
        enc_fail(e, CAIRN_EINVAL);
        return;
      }
      put_bytes(e, (struct mvcc_bytes){(const uint8_t *)name, name_len});
      put_bytes(e, op->u.meta_put.value);
      break;
    }
    default:
      enc_fail(e, CAIRN_EINVAL);
      break;
  }
}

int command_encode(uint64_t request_id, const struct mvcc_op *op, struct raft_buffer *out) {
  CAIRN_ASSERT(op != NULL && out != NULL);
  struct enc e = {NULL, 0, 0};
  enc_op(&e, request_id, op);
  if (e.err != 0) {
    return e.err;
  }
  size_t len = (e.n + COMMAND_ALIGN - 1) & ~(size_t)(COMMAND_ALIGN - 1);
  uint8_t *buf = raft_malloc(len);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  e = (struct enc){buf, 0, 0};
  enc_op(&e, request_id, op);
  /* The op is the caller's and was not changed in between: same size. */
  CAIRN_ASSERT(e.err == 0 && len - e.n < COMMAND_ALIGN);
  memset(buf + e.n, 0, len - e.n);
  out->base = buf;
  out->len = len;
  return 0;
}

/* ---- decoding ------------------------------------------------------------ */

/* A chain of blocks, bump-allocated; freed as a whole. */
struct command_arena {
  struct command_arena *next;
  size_t used;
  size_t cap;
  max_align_t mem[];
};

#define ARENA_ALIGN (sizeof(max_align_t))
#define ARENA_BLOCK_MIN 1024u

static void *arena_get(struct command_arena **a, size_t size, size_t first_cap) {
  size_t need = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
  if (need < size) {
    return NULL;
  }
  struct command_arena *b = *a;
  if (b == NULL || b->cap - b->used < need) {
    size_t cap = b == NULL ? first_cap : 2 * b->cap;
    if (cap < ARENA_BLOCK_MIN) {
      cap = ARENA_BLOCK_MIN;
    }
    if (cap < need) {
      cap = need;
    }
    if (cap > SIZE_MAX - sizeof *b) {
      return NULL;
    }
    struct command_arena *nb = malloc(sizeof *nb + cap);
    if (nb == NULL) {
      return NULL;
    }
    nb->next = b;
    nb->used = 0;
    nb->cap = cap;
    *a = nb;
    b = nb;
  }
  void *p = (unsigned char *)b->mem + b->used;
  b->used += need;
  return p;
}

struct dec {
  const uint8_t *p;
  const uint8_t *end;
  struct command_arena **arena;
  size_t first_cap;
};

static size_t left(const struct dec *d) {
  return (size_t)(d->end - d->p);
}

static void *dec_alloc(struct dec *d, size_t size) {
  return arena_get(d->arena, size, d->first_cap);
}

static int get_u8(struct dec *d, uint8_t *v) {
  if (left(d) < 1) {
    return CAIRN_ECORRUPT;
  }
  *v = *d->p++;
  return 0;
}

/* A minimal LEB128 varint of at most 64 bits. */
static int get_uvar(struct dec *d, uint64_t *v) {
  uint64_t x = 0;
  for (unsigned i = 0; i < 10; i++) {
    if (left(d) < 1) {
      return CAIRN_ECORRUPT;
    }
    uint8_t b = *d->p++;
    if (i == 9 && b > 1) {
      return CAIRN_ECORRUPT; /* beyond 64 bits */
    }
    x |= (uint64_t)(b & 0x7fu) << (7 * i);
    if ((b & 0x80u) == 0) {
      if (b == 0 && i > 0) {
        return CAIRN_ECORRUPT; /* not minimal */
      }
      *v = x;
      return 0;
    }
  }
  return CAIRN_ECORRUPT;
}

static int get_svar(struct dec *d, int64_t *v) {
  uint64_t u;
  int rc = get_uvar(d, &u);
  if (rc != 0) {
    return rc;
  }
  *v = (u & 1u) ? -(int64_t)(u >> 1) - 1 : (int64_t)(u >> 1);
  return 0;
}

static int get_enum(struct dec *d, unsigned max, unsigned *v) {
  uint64_t u;
  int rc = get_uvar(d, &u);
  if (rc != 0) {
    return rc;
  }
  if (u > max) {
    return CAIRN_ECORRUPT;
  }
  *v = (unsigned)u;
  return 0;
}

static int get_flags(struct dec *d, uint8_t known, uint8_t *v) {
  int rc = get_u8(d, v);
  if (rc == 0 && (*v & (uint8_t)~known) != 0) {
    rc = CAIRN_ECORRUPT;
  }
  return rc;
}

/* Copies the bytes into the arena, NUL-terminated (meta names rely on it). */
static int get_bytes(struct dec *d, struct mvcc_bytes *b) {
  uint64_t len;
  int rc = get_uvar(d, &len);
  if (rc != 0) {
    return rc;
  }
  if (len > left(d)) {
    return CAIRN_ECORRUPT;
  }
  if (len == 0) {
    *b = (struct mvcc_bytes){NULL, 0};
    return 0;
  }
  uint8_t *copy = dec_alloc(d, (size_t)len + 1);
  if (copy == NULL) {
    return CAIRN_ENOMEM;
  }
  memcpy(copy, d->p, (size_t)len);
  copy[len] = 0;
  d->p += len;
  *b = (struct mvcc_bytes){copy, (size_t)len};
  return 0;
}

/* A list's count: each element takes at least one byte, which bounds what
 * the list allocates by the input left. */
static int get_count(struct dec *d, size_t *n) {
  uint64_t u;
  int rc = get_uvar(d, &u);
  if (rc != 0) {
    return rc;
  }
  if (u > COMMAND_TXN_LIST_MAX || u > left(d)) {
    return CAIRN_ECORRUPT;
  }
  *n = (size_t)u;
  return 0;
}

#define TRY(expr)     \
  do {                \
    int rc_ = (expr); \
    if (rc_ != 0) {   \
      return rc_;     \
    }                 \
  } while (0)

static int dec_range(struct dec *d, struct mvcc_range_req *r) {
  unsigned order, target;
  uint8_t flags;
  TRY(get_bytes(d, &r->key));
  TRY(get_bytes(d, &r->range_end));
  TRY(get_svar(d, &r->limit));
  TRY(get_svar(d, &r->revision));
  TRY(get_enum(d, MVCC_SORT_DESCEND, &order));
  TRY(get_enum(d, MVCC_SORT_VALUE, &target));
  TRY(get_flags(d, RANGE_KEYS_ONLY | RANGE_COUNT_ONLY, &flags));
  TRY(get_svar(d, &r->min_mod_revision));
  TRY(get_svar(d, &r->max_mod_revision));
  TRY(get_svar(d, &r->min_create_revision));
  TRY(get_svar(d, &r->max_create_revision));
  r->sort_order = (enum mvcc_sort_order)order;
  r->sort_target = (enum mvcc_sort_target)target;
  r->keys_only = (flags & RANGE_KEYS_ONLY) != 0;
  r->count_only = (flags & RANGE_COUNT_ONLY) != 0;
  return 0;
}

static int dec_put(struct dec *d, struct mvcc_put_req *p) {
  uint8_t flags;
  TRY(get_bytes(d, &p->key));
  TRY(get_bytes(d, &p->value));
  TRY(get_svar(d, &p->lease));
  TRY(get_flags(d, PUT_PREV_KV | PUT_IGNORE_VALUE | PUT_IGNORE_LEASE, &flags));
  p->prev_kv = (flags & PUT_PREV_KV) != 0;
  p->ignore_value = (flags & PUT_IGNORE_VALUE) != 0;
  p->ignore_lease = (flags & PUT_IGNORE_LEASE) != 0;
  return 0;
}

static int dec_del(struct dec *d, struct mvcc_delete_req *del) {
  uint8_t flags;
  TRY(get_bytes(d, &del->key));
  TRY(get_bytes(d, &del->range_end));
  TRY(get_flags(d, DEL_PREV_KV, &flags));
  del->prev_kv = (flags & DEL_PREV_KV) != 0;
  return 0;
}

static int dec_txn(struct dec *d, struct mvcc_txn_req *t, unsigned level);

static int dec_requests(struct dec *d, const struct mvcc_request_op **out, size_t *n_out,
                        unsigned level) {
  size_t n;
  TRY(get_count(d, &n));
  *out = NULL;
  *n_out = 0;
  if (n == 0) {
    return 0;
  }
  struct mvcc_request_op *ops = dec_alloc(d, n * sizeof *ops);
  if (ops == NULL) {
    return CAIRN_ENOMEM;
  }
  memset(ops, 0, n * sizeof *ops);
  for (size_t i = 0; i < n; i++) {
    unsigned type;
    TRY(get_enum(d, MVCC_REQUEST_TXN, &type));
    ops[i].type = (enum mvcc_request_type)type;
    switch (ops[i].type) {
      case MVCC_REQUEST_NONE:
        break;
      case MVCC_REQUEST_RANGE:
        TRY(dec_range(d, &ops[i].u.range));
        break;
      case MVCC_REQUEST_PUT:
        TRY(dec_put(d, &ops[i].u.put));
        break;
      case MVCC_REQUEST_DELETE:
        TRY(dec_del(d, &ops[i].u.del));
        break;
      case MVCC_REQUEST_TXN: {
        struct mvcc_txn_req *t = dec_alloc(d, sizeof *t);
        if (t == NULL) {
          return CAIRN_ENOMEM;
        }
        memset(t, 0, sizeof *t);
        TRY(dec_txn(d, t, level + 1));
        ops[i].u.txn = t;
        break;
      }
    }
  }
  *out = ops;
  *n_out = n;
  return 0;
}

static int dec_txn(struct dec *d, struct mvcc_txn_req *t, unsigned level) {
  if (level > COMMAND_TXN_LEVELS_MAX) {
    return CAIRN_ECORRUPT;
  }
  size_t n;
  TRY(get_count(d, &n));
  if (n > 0) {
    struct mvcc_compare *cmps = dec_alloc(d, n * sizeof *cmps);
    if (cmps == NULL) {
      return CAIRN_ENOMEM;
    }
    memset(cmps, 0, n * sizeof *cmps);
    for (size_t i = 0; i < n; i++) {
      unsigned result, target;
      TRY(get_enum(d, MVCC_CMP_NOT_EQUAL, &result));
      TRY(get_enum(d, MVCC_TARGET_LEASE, &target));
      cmps[i].result = (enum mvcc_compare_result)result;
      cmps[i].target = (enum mvcc_compare_target)target;
      TRY(get_bytes(d, &cmps[i].key));
      TRY(get_bytes(d, &cmps[i].range_end));
      TRY(get_svar(d, &cmps[i].number));
      TRY(get_bytes(d, &cmps[i].value));
    }
    t->compares = cmps;
    t->n_compares = n;
  }
  TRY(dec_requests(d, &t->success, &t->n_success, level));
  TRY(dec_requests(d, &t->failure, &t->n_failure, level));
  return 0;
}

static int dec_op(struct dec *d, struct command *c) {
  uint8_t version;
  TRY(get_u8(d, &version));
  if (version != COMMAND_VERSION || left(d) < 8) {
    return CAIRN_ECORRUPT;
  }
  uint64_t id = 0;
  for (int i = 0; i < 8; i++) {
    id |= (uint64_t)d->p[i] << (8 * i);
  }
  d->p += 8;
  c->request_id = id;
  struct mvcc_op *op = &c->op;
  uint64_t type;
  TRY(get_uvar(d, &type));
  if (type < MVCC_OP_RANGE || type > MVCC_OP_META_PUT) {
    return CAIRN_ECORRUPT;
  }
  op->type = (enum mvcc_op_type)type;
  TRY(get_uvar(d, &op->raft_index));
  TRY(get_uvar(d, &op->raft_term));
  switch (op->type) {
    case MVCC_OP_RANGE:
      TRY(dec_range(d, &op->u.range));
      break;
    case MVCC_OP_PUT:
      TRY(dec_put(d, &op->u.put));
      break;
    case MVCC_OP_DELETE:
      TRY(dec_del(d, &op->u.del));
      break;
    case MVCC_OP_TXN:
      TRY(dec_txn(d, &op->u.txn, 1));
      break;
    case MVCC_OP_COMPACT:
      TRY(get_svar(d, &op->u.compact_revision));
      break;
    case MVCC_OP_LEASE_GRANT:
      TRY(get_svar(d, &op->u.lease_grant.id));
      TRY(get_svar(d, &op->u.lease_grant.ttl));
      TRY(get_svar(d, &op->u.lease_grant.now_ms));
      break;
    case MVCC_OP_LEASE_REVOKE:
      TRY(get_svar(d, &op->u.lease_revoke_id));
      break;
    case MVCC_OP_LEASE_CHECKPOINT:
      TRY(get_svar(d, &op->u.lease_checkpoint.id));
      TRY(get_svar(d, &op->u.lease_checkpoint.remaining_ms));
      break;
    case MVCC_OP_META_PUT: {
      struct mvcc_bytes name;
      TRY(get_bytes(d, &name));
      /* get_bytes NUL-terminates; an inner NUL would shorten the name. */
      if (name.len == 0 || name.len > COMMAND_META_NAME_MAX ||
          memchr(name.data, 0, name.len) != NULL) {
        return CAIRN_ECORRUPT;
      }
      op->u.meta_put.name = (const char *)name.data;
      TRY(get_bytes(d, &op->u.meta_put.value));
      break;
    }
  }
  /* Then zeros up to the padded length, and nothing else. */
  if (left(d) >= COMMAND_ALIGN) {
    return CAIRN_ECORRUPT;
  }
  for (; d->p < d->end; d->p++) {
    if (*d->p != 0) {
      return CAIRN_ECORRUPT;
    }
  }
  return 0;
}

#undef TRY

int command_decode(const void *buf, size_t len, struct command *out) {
  CAIRN_ASSERT(out != NULL && (buf != NULL || len == 0));
  memset(out, 0, sizeof *out);
  if (len == 0 || len % COMMAND_ALIGN != 0) {
    return CAIRN_ECORRUPT;
  }
  const uint8_t *p = buf;
  /* First block: room for the copied bytes and a few structs; most commands
   * need exactly one allocation. */
  size_t first_cap = len < SIZE_MAX / 4 ? 2 * len + 512 : len;
  struct dec d = {p, p + len, &out->arena, first_cap};
  int rc = dec_op(&d, out);
  if (rc != 0) {
    command_free(out);
    return rc;
  }
  return 0;
}

void command_free(struct command *c) {
  if (c == NULL) {
    return;
  }
  struct command_arena *a = c->arena;
  while (a != NULL) {
    struct command_arena *next = a->next;
    free(a);
    a = next;
  }
  memset(c, 0, sizeof *c);
}
