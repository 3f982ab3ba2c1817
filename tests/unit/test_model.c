/* tests/unit/test_model.c: a randomized model test of the MVCC engine.
 *
 * A small in-memory reference model keeps every version of every key (create
 * revision, mod revision, version, lease, tombstones), the store and compacted
 * revisions, the leases and the change history, with etcd's semantics (as in
 * etcdserver/apply.go and mvcc/kvstore_txn.go of etcd 3.4). A long random
 * sequence of puts, deletes, txns (nested too), lease grants and revokes,
 * compactions and reads runs against the store and the model side by side;
 * every result is compared with the model. A small key space with shared
 * prefixes makes ranges, deletes and compares overlap often.
 *
 * The seed is printed; CAIRN_TEST_SEED repeats a run. CAIRN_TEST_SCALE=small
 * shortens it. */
#include <stdbool.h>

#include "storage/mvcc.h"
#include "test.h"

/* ---------------------------------------------------------------- keys */

#define K(lit) \
  { (const uint8_t *)(lit), sizeof(lit) - 1 }

struct mkey {
  const uint8_t *b;
  size_t len;
};

/* Two long keys, filled in at start: "h/xxx..." (300 bytes) and "zzz..." at
 * the size limit. */
static uint8_t long_h[300];
static uint8_t long_z[MVCC_MAX_KEY_BYTES];

/* The keys ops write. Shared prefixes, an embedded NUL, 0xff bytes and keys
 * at the size limit make prefix ends and range bounds interesting. Sorted at
 * start. */
static struct mkey keys[] = {
    {long_h, sizeof long_h},
    {long_z, sizeof long_z},
    K("a"),
    K("a/"),
    K("a/x"),
    K("a/x/1"),
    K("a/x/2"),
    K("a/y"),
    K("a/y/1"),
    K("a\x00"),
    K("a\xff"),
    K("ab"),
    K("ab/1"),
    K("b"),
    K("b/x"),
    K("b/x/1"),
    K("b/y"),
    K("ba"),
    K("c"),
    K("c/1"),
    K("c/2"),
    K("c/x/1"),
    K("d"),
    K("d\xff"),
    K("d\xff\xff"),
    K("e/1"),
    K("e/2"),
    K("e/3"),
    K("f"),
    K("f/a/b/c"),
    K("g"),
    K("zz"),
};
#define NKEYS (sizeof keys / sizeof keys[0])

/* Bounds for ranges that are not keys themselves. */
static const struct mkey extra_bounds[] = {
    K("\x00"), K("a/x/"), K("a/x0"), K("a0"), K("b/"),  K("c/x"),
    K("e"),    K("e/"),   K("\xff"), K("0"),  K("zzz"), K("a/y/1\x00"),
};
#define NEXTRA (sizeof extra_bounds / sizeof extra_bounds[0])

static const uint8_t nul_byte[1] = {0};

static int bytes_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
  size_t n = al < bl ? al : bl;
  int c = n ? memcmp(a, b, n) : 0;
  if (c != 0) {
    return c;
  }
  return al < bl ? -1 : al > bl ? 1 : 0;
}

static bool bytes_eq(struct mvcc_bytes a, const uint8_t *b, size_t bl) {
  return bytes_cmp(a.data, a.len, b, bl) == 0;
}

static bool is_nul_end(struct mvcc_bytes end) {
  return end.len == 1 && end.data[0] == 0;
}

/* etcd's range conventions: empty end = the key; "\0" = every key >= key. */
static bool in_range(const uint8_t *k, size_t kl, struct mvcc_bytes key, struct mvcc_bytes end) {
  int c = bytes_cmp(k, kl, key.data, key.len);
  if (end.len == 0) {
    return c == 0;
  }
  if (is_nul_end(end)) {
    return c >= 0;
  }
  return c >= 0 && bytes_cmp(k, kl, end.data, end.len) < 0;
}

static void sort_keys(void) {
  memset(long_h, 'x', sizeof long_h);
  memcpy(long_h, "h/", 2);
  memset(long_z, 'z', sizeof long_z);
  for (size_t i = 1; i < NKEYS; i++) {
    struct mkey x = keys[i];
    size_t j = i;
    while (j > 0 && bytes_cmp(keys[j - 1].b, keys[j - 1].len, x.b, x.len) > 0) {
      keys[j] = keys[j - 1];
      j--;
    }
    keys[j] = x;
  }
  for (size_t i = 1; i < NKEYS; i++) {
    CHECK(bytes_cmp(keys[i - 1].b, keys[i - 1].len, keys[i].b, keys[i].len) < 0);
  }
}

static size_t key_index(struct mvcc_bytes k) {
  for (size_t i = 0; i < NKEYS; i++) {
    if (bytes_eq(k, keys[i].b, keys[i].len)) {
      return i;
    }
  }
  return SIZE_MAX;
}

static struct mvcc_bytes mk_bytes(const uint8_t *b, size_t len) {
  struct mvcc_bytes r = {len ? b : NULL, len};
  return r;
}

/* ---------------------------------------------------------------- randomness */

static size_t rnd(size_t n) {
  return (size_t)test_rand_below(n);
}

static bool chance(unsigned pct) {
  return test_rand_below(100) < pct;
}

static int64_t rnd_i64(int64_t lo, int64_t hi) { /* inclusive */
  CHECK(hi >= lo);
  return lo + (int64_t)test_rand_below((uint64_t)(hi - lo) + 1);
}

/* ---------------------------------------------------------------- pool */

/* Memory for generated requests, released after each batch. */
struct pool {
  void **p;
  size_t n, cap;
};

static void *pool_alloc(struct pool *pl, size_t n) {
  void *x = calloc(1, n ? n : 1);
  CHECK(x != NULL);
  if (pl->n == pl->cap) {
    pl->cap = pl->cap ? pl->cap * 2 : 64;
    pl->p = realloc(pl->p, pl->cap * sizeof *pl->p);
    CHECK(pl->p != NULL);
  }
  pl->p[pl->n++] = x;
  return x;
}

static void pool_reset(struct pool *pl) {
  for (size_t i = 0; i < pl->n; i++) {
    free(pl->p[i]);
  }
  pl->n = 0;
}

static void pool_free(struct pool *pl) {
  pool_reset(pl);
  free(pl->p);
  pl->p = NULL;
  pl->cap = 0;
}

/* ---------------------------------------------------------------- model */

struct mver {
  int64_t rev;
  uint32_t sub;
  bool tomb;
  int64_t create, version, lease;
  uint8_t *val;
  size_t val_len;
};

struct mhist {
  struct mver *v;
  size_t n, cap;
};

/* One change in (revision, sub) order: a version of a key. */
struct mevent {
  uint32_t key;
  uint32_t ver;
};

#define NLEASES 6 /* lease ids 1..NLEASES */

struct mlease {
  bool live;
  int64_t ttl, granted_ms, remaining_ms;
};

struct model {
  struct mhist hist[NKEYS];
  struct mevent *ev;
  size_t nev, capev;
  int64_t rev;       /* store revision: 1 when empty */
  int64_t compacted; /* 0: never compacted */
  struct mlease leases[NLEASES + 1];
  uint64_t raft_index, raft_term;
};

static void model_init(struct model *m) {
  memset(m, 0, sizeof *m);
  m->rev = 1;
}

static void model_free(struct model *m) {
  for (size_t k = 0; k < NKEYS; k++) {
    for (size_t i = 0; i < m->hist[k].n; i++) {
      free(m->hist[k].v[i].val);
    }
    free(m->hist[k].v);
  }
  free(m->ev);
}

static const struct mver *ver_of(const struct model *m, const struct mevent *e) {
  return &m->hist[e->key].v[e->ver];
}

/* The version of key k visible at rev (NULL if absent or deleted). */
static const struct mver *kv_at(const struct model *m, size_t k, int64_t rev) {
  const struct mhist *h = &m->hist[k];
  size_t lo = 0, hi = h->n; /* first index with v.rev > rev */
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (h->v[mid].rev <= rev) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) {
    return NULL;
  }
  const struct mver *v = &h->v[lo - 1];
  return v->tomb ? NULL : v;
}

static void m_append(struct model *m, size_t k, const struct mver *v) {
  struct mhist *h = &m->hist[k];
  if (h->n == h->cap) {
    h->cap = h->cap ? h->cap * 2 : 16;
    h->v = realloc(h->v, h->cap * sizeof *h->v);
    CHECK(h->v != NULL);
  }
  h->v[h->n] = *v;
  if (m->nev == m->capev) {
    m->capev = m->capev ? m->capev * 2 : 256;
    m->ev = realloc(m->ev, m->capev * sizeof *m->ev);
    CHECK(m->ev != NULL);
  }
  m->ev[m->nev].key = (uint32_t)k;
  m->ev[m->nev].ver = (uint32_t)h->n;
  m->nev++;
  h->n++;
}

static void m_write_put(struct model *m, size_t k, const uint8_t *val, size_t len, int64_t lease,
                        int64_t wrev, uint32_t *sub) {
  const struct mver *cur = kv_at(m, k, wrev);
  struct mver v = {0};
  v.rev = wrev;
  v.sub = (*sub)++;
  v.create = cur ? cur->create : wrev;
  v.version = cur ? cur->version + 1 : 1;
  v.lease = lease;
  v.val_len = len;
  v.val = malloc(len ? len : 1);
  CHECK(v.val != NULL);
  if (len) {
    memcpy(v.val, val, len);
  }
  m_append(m, k, &v);
}

static void m_write_tomb(struct model *m, size_t k, int64_t wrev, uint32_t *sub) {
  struct mver v = {0};
  v.rev = wrev;
  v.sub = (*sub)++;
  v.tomb = true;
  m_append(m, k, &v);
}

static bool lease_live(const struct model *m, int64_t id) {
  return id >= 1 && id <= NLEASES && m->leases[id].live;
}

/* ---------------------------------------------------------------- checks */

static void fprint_bytes(const uint8_t *b, size_t len) {
  fputc('"', stderr);
  for (size_t i = 0; i < len && i < 32; i++) {
    if (b[i] >= 0x20 && b[i] < 0x7f) {
      fputc(b[i], stderr);
    } else {
      fprintf(stderr, "\\x%02x", b[i]);
    }
  }
  fprintf(stderr, len > 32 ? "...(%zu)\"" : "\"", len);
}

/* Compares a kv from the engine with a model version; on a mismatch prints
 * both before failing. */
static void check_kv(const struct mvcc_kv *got, size_t k, const struct mver *v, bool keys_only) {
  bool ok = bytes_eq(got->key, keys[k].b, keys[k].len) &&
            (keys_only ? got->value.len == 0 : bytes_eq(got->value, v->val, v->val_len)) &&
            got->create_revision == v->create && got->mod_revision == v->rev &&
            got->version == v->version && got->lease == v->lease;
  if (ok) {
    return;
  }
  fprintf(stderr, "kv mismatch:\n  got  key=");
  fprint_bytes(got->key.data, got->key.len);
  fprintf(stderr, " value=");
  fprint_bytes(got->value.data, got->value.len);
  fprintf(stderr, " create=%" PRId64 " mod=%" PRId64 " version=%" PRId64 " lease=%" PRId64 "\n",
          got->create_revision, got->mod_revision, got->version, got->lease);
  fprintf(stderr, "  want key=");
  fprint_bytes(keys[k].b, keys[k].len);
  fprintf(stderr, " value=");
  fprint_bytes(v->val, keys_only ? 0 : v->val_len);
  fprintf(stderr, " create=%" PRId64 " mod=%" PRId64 " version=%" PRId64 " lease=%" PRId64 "\n",
          v->create, v->rev, v->version, v->lease);
  CHECK(ok);
}

struct mrow {
  size_t k;
  const struct mver *v;
};

/* Live keys in [key, end) at rev, in key order. */
static size_t m_collect(const struct model *m, struct mvcc_bytes key, struct mvcc_bytes end,
                        int64_t rev, struct mrow *out) {
  size_t n = 0;
  for (size_t k = 0; k < NKEYS; k++) {
    if (!in_range(keys[k].b, keys[k].len, key, end)) {
      continue;
    }
    const struct mver *v = kv_at(m, k, rev);
    if (v) {
      out[n].k = k;
      out[n].v = v;
      n++;
    }
  }
  return n;
}

static int row_cmp(const struct mrow *a, const struct mrow *b, enum mvcc_sort_target t) {
  switch (t) {
    case MVCC_SORT_KEY:
      return bytes_cmp(keys[a->k].b, keys[a->k].len, keys[b->k].b, keys[b->k].len);
    case MVCC_SORT_VERSION:
      return a->v->version < b->v->version ? -1 : a->v->version > b->v->version;
    case MVCC_SORT_CREATE:
      return a->v->create < b->v->create ? -1 : a->v->create > b->v->create;
    case MVCC_SORT_MOD:
      return a->v->rev < b->v->rev ? -1 : a->v->rev > b->v->rev;
    case MVCC_SORT_VALUE:
      return bytes_cmp(a->v->val, a->v->val_len, b->v->val, b->v->val_len);
  }
  CHECK(0);
  return 0;
}

/* Checks a range response against the model. read_rev is the resolved read
 * revision; header_rev the revision the response must report. */
static void check_range(const struct model *m, const struct mvcc_range_req *rq, int64_t read_rev,
                        int64_t header_rev, const struct mvcc_range_resp *got) {
  struct mrow rows[NKEYS];
  size_t n = m_collect(m, rq->key, rq->range_end, read_rev, rows);
  CHECK_EQ_INT(got->revision, header_rev);
  CHECK_EQ_INT(got->count, n);
  if (rq->count_only) {
    CHECK_EQ_INT(got->n_kvs, 0);
    CHECK(!got->more);
    return;
  }
  /* etcd pushes limit + 1 down to the index unless a sort order or a filter
   * is given; a sort target other than KEY with order NONE then sorts only
   * those first limit + 1 keys (applierV3backend.Range). */
  if (rq->limit > 0 && rq->sort_order == MVCC_SORT_NONE && rq->min_mod_revision == 0 &&
      rq->max_mod_revision == 0 && rq->min_create_revision == 0 && rq->max_create_revision == 0 &&
      n > (size_t)rq->limit + 1) {
    n = (size_t)rq->limit + 1;
  }
  /* Filters, in etcd's order (the order does not matter for the result). */
  size_t j = 0;
  for (size_t i = 0; i < n; i++) {
    const struct mver *v = rows[i].v;
    if (rq->max_mod_revision != 0 && v->rev > rq->max_mod_revision) {
      continue;
    }
    if (rq->min_mod_revision != 0 && v->rev < rq->min_mod_revision) {
      continue;
    }
    if (rq->max_create_revision != 0 && v->create > rq->max_create_revision) {
      continue;
    }
    if (rq->min_create_revision != 0 && v->create < rq->min_create_revision) {
      continue;
    }
    rows[j++] = rows[i];
  }
  n = j;
  enum mvcc_sort_order order = rq->sort_order;
  if (rq->sort_target != MVCC_SORT_KEY && order == MVCC_SORT_NONE) {
    order = MVCC_SORT_ASCEND;
  }
  if (order != MVCC_SORT_NONE) {
    /* Stable insertion sort: ties stay in key order. */
    for (size_t i = 1; i < n; i++) {
      struct mrow x = rows[i];
      size_t p = i;
      while (p > 0) {
        int c = row_cmp(&rows[p - 1], &x, rq->sort_target);
        bool move = order == MVCC_SORT_ASCEND ? c > 0 : c < 0;
        if (!move) {
          break;
        }
        rows[p] = rows[p - 1];
        p--;
      }
      rows[p] = x;
    }
  }
  bool more = false;
  if (rq->limit > 0 && n > (size_t)rq->limit) {
    n = (size_t)rq->limit;
    more = true;
  }
  CHECK_EQ_INT(got->more, more);
  CHECK_EQ_INT(got->n_kvs, n);
  for (size_t i = 0; i < n; i++) {
    check_kv(&got->kvs[i], rows[i].k, rows[i].v, rq->keys_only);
  }
}

/* The error a range at rq->revision gets against a store at (rev, compacted). */
static int range_rev_err(const struct model *m, const struct mvcc_range_req *rq) {
  if (rq->revision > m->rev) {
    return CAIRN_EFUTURE_REV;
  }
  if (rq->revision > 0 && rq->revision < m->compacted) {
    return CAIRN_ECOMPACTED;
  }
  return 0;
}

/* ---------------------------------------------------------------- generators */

struct gen {
  struct model *m;
  struct pool *pool;
};

static struct mvcc_bytes dup_bytes(struct gen *g, const uint8_t *b, size_t len) {
  if (len == 0) {
    return mk_bytes(NULL, 0);
  }
  uint8_t *p = pool_alloc(g->pool, len);
  memcpy(p, b, len);
  return mk_bytes(p, len);
}

static struct mvcc_bytes key_bytes(size_t k) {
  return mk_bytes(keys[k].b, keys[k].len);
}

static struct mvcc_bytes rand_bound(void) {
  if (chance(70)) {
    return key_bytes(rnd(NKEYS));
  }
  const struct mkey *e = &extra_bounds[rnd(NEXTRA)];
  return mk_bytes(e->b, e->len);
}

/* etcd's prefix end: strip trailing 0xff, add 1 to the last byte; "\0" if
 * nothing is left. */
static struct mvcc_bytes prefix_end(struct gen *g, const uint8_t *p, size_t len) {
  while (len > 0 && p[len - 1] == 0xff) {
    len--;
  }
  if (len == 0) {
    return mk_bytes(nul_byte, 1);
  }
  uint8_t *e = pool_alloc(g->pool, len);
  memcpy(e, p, len);
  e[len - 1]++;
  return mk_bytes(e, len);
}

/* A random key range in etcd's encoding. allow_inverted: [a, b) with b < a. */
static void gen_bounds(struct gen *g, struct mvcc_bytes *key, struct mvcc_bytes *end,
                       bool allow_inverted) {
  switch (rnd(10)) {
    case 0:
    case 1:
    case 2:
      *key = chance(90) ? key_bytes(rnd(NKEYS)) : rand_bound();
      *end = mk_bytes(NULL, 0);
      break;
    case 3:
    case 4: {
      size_t k = rnd(NKEYS);
      size_t plen = 1 + rnd(keys[k].len);
      *key = mk_bytes(keys[k].b, plen);
      *end = prefix_end(g, keys[k].b, plen);
      break;
    }
    case 5:
    case 6:
    case 9: {
      struct mvcc_bytes a = rand_bound(), b = rand_bound();
      if (bytes_cmp(a.data, a.len, b.data, b.len) > 0 && !(allow_inverted && chance(30))) {
        struct mvcc_bytes t = a;
        a = b;
        b = t;
      }
      if (b.len == 0 || is_nul_end(b)) { /* "\0" as an end means "to the end" */
        b = key_bytes(NKEYS - 1);
      }
      *key = a;
      *end = b;
      break;
    }
    case 7:
      *key = rand_bound();
      *end = mk_bytes(nul_byte, 1);
      break;
    default:
      *key = mk_bytes(nul_byte, 1);
      *end = mk_bytes(nul_byte, 1);
      break;
  }
}

static struct mvcc_bytes gen_value(struct gen *g) {
  static const char *const small[] = {"", "x", "y", "z", "xy"};
  size_t r = rnd(100);
  if (r < 30) {
    const char *s = small[rnd(5)];
    return dup_bytes(g, (const uint8_t *)s, strlen(s));
  }
  size_t len;
  if (r < 85) {
    len = 1 + rnd(24);
  } else if (r < 97) {
    len = 100 + rnd(600);
  } else {
    len = 2000 + rnd(5000);
  }
  uint8_t *p = pool_alloc(g->pool, len);
  for (size_t i = 0; i < len; i++) {
    p[i] = (uint8_t)("abcdefgh\x00\xff"[rnd(10)]);
  }
  return mk_bytes(p, len);
}

/* A revision to read at: mostly valid ([max(compacted, 1), rev]), sometimes
 * below the compacted revision or in the future, sometimes 0 (latest). */
static int64_t gen_read_rev(const struct model *m, unsigned bad_pct) {
  if (chance(35)) {
    return 0;
  }
  if (chance(bad_pct)) {
    if (m->compacted > 1 && chance(50)) {
      return rnd_i64(1, m->compacted - 1);
    }
    return m->rev + rnd_i64(1, 3);
  }
  int64_t lo = m->compacted > 1 ? m->compacted : 1;
  if (chance(15)) {
    return lo;
  }
  return rnd_i64(lo, m->rev);
}

static void gen_range_req(struct gen *g, struct mvcc_range_req *r, unsigned bad_pct) {
  memset(r, 0, sizeof *r);
  gen_bounds(g, &r->key, &r->range_end, true);
  r->revision = gen_read_rev(g->m, bad_pct);
  if (chance(50)) {
    r->limit = rnd_i64(1, 6);
  }
  if (chance(50)) {
    r->sort_order = (enum mvcc_sort_order)rnd(3);
    r->sort_target = (enum mvcc_sort_target)rnd(5);
  }
  r->keys_only = chance(15);
  r->count_only = chance(10);
  int64_t top = g->m->rev;
  if (chance(10)) {
    r->min_mod_revision = rnd_i64(1, top);
  }
  if (chance(10)) {
    r->max_mod_revision = rnd_i64(1, top);
  }
  if (chance(10)) {
    r->min_create_revision = rnd_i64(1, top);
  }
  if (chance(10)) {
    r->max_create_revision = rnd_i64(1, top);
  }
}

static int64_t gen_lease(const struct model *m) {
  if (chance(55)) {
    return 0;
  }
  if (chance(8)) {
    return chance(50) ? rnd_i64(1, NLEASES) : rnd_i64(NLEASES + 1, 1000000);
  }
  int64_t live[NLEASES];
  size_t n = 0;
  for (int64_t id = 1; id <= NLEASES; id++) {
    if (m->leases[id].live) {
      live[n++] = id;
    }
  }
  return n ? live[rnd(n)] : 0;
}

/* Keys a txn writes, to keep its branches free of duplicate keys. This is
 * stricter than etcd (which lets the two branches of a txn overlap): the
 * duplicate-key error is tested on its own. */
struct conflicts {
  bool put[NKEYS];
  struct mvcc_bytes dkey[64], dend[64];
  size_t ndel;
};

static bool put_allowed(const struct conflicts *c, size_t k) {
  if (c == NULL) {
    return true;
  }
  if (c->put[k]) {
    return false;
  }
  for (size_t i = 0; i < c->ndel; i++) {
    if (in_range(keys[k].b, keys[k].len, c->dkey[i], c->dend[i])) {
      return false;
    }
  }
  return true;
}

static bool del_allowed(const struct conflicts *c, struct mvcc_bytes key, struct mvcc_bytes end) {
  if (c == NULL) {
    return true;
  }
  if (c->ndel == 64) {
    return false;
  }
  for (size_t k = 0; k < NKEYS; k++) {
    if (c->put[k] && in_range(keys[k].b, keys[k].len, key, end)) {
      return false;
    }
  }
  /* A put of a key outside the key set never happens, but a delete of a
   * single key outside it could still collide with nothing: fine. */
  return true;
}

/* Returns false if no conflict-free key was found. */
static bool gen_put(struct gen *g, struct mvcc_put_req *p, struct conflicts *c) {
  memset(p, 0, sizeof *p);
  size_t k = rnd(NKEYS);
  size_t tries = 0;
  while (!put_allowed(c, k)) {
    if (++tries > 20) {
      return false;
    }
    k = rnd(NKEYS);
  }
  if (c) {
    c->put[k] = true;
  }
  p->key = key_bytes(k);
  p->value = gen_value(g);
  p->lease = gen_lease(g->m);
  p->prev_kv = chance(50);
  if (chance(7)) {
    p->ignore_value = true;
    p->value = mk_bytes(NULL, 0);
    /* Keep to one possible error per put: etcd checks the lease first for a
     * plain put and last inside a txn. */
    if (p->lease != 0 && !lease_live(g->m, p->lease)) {
      p->lease = 0;
    }
  }
  if (chance(7)) {
    p->ignore_lease = true;
    p->lease = 0;
  }
  return true;
}

static bool gen_delete(struct gen *g, struct mvcc_delete_req *d, struct conflicts *c) {
  memset(d, 0, sizeof *d);
  for (int tries = 0; tries < 20; tries++) {
    gen_bounds(g, &d->key, &d->range_end, c == NULL);
    if (del_allowed(c, d->key, d->range_end)) {
      if (c) {
        c->dkey[c->ndel] = d->key;
        c->dend[c->ndel] = d->range_end;
        c->ndel++;
      }
      d->prev_kv = chance(50);
      return true;
    }
  }
  return false;
}

static void gen_compare(struct gen *g, struct mvcc_compare *c) {
  const struct model *m = g->m;
  memset(c, 0, sizeof *c);
  c->target = (enum mvcc_compare_target)rnd(5);
  c->result = (enum mvcc_compare_result)rnd(4);
  size_t k = rnd(NKEYS);
  if (chance(12)) {
    c->key = rand_bound();
  } else {
    c->key = key_bytes(k);
  }
  if (chance(20)) {
    gen_bounds(g, &c->key, &c->range_end, false);
  }
  const struct mver *v = kv_at(m, k, m->rev);
  int64_t base = 0;
  switch (c->target) {
    case MVCC_TARGET_VERSION:
      base = v ? v->version : 0;
      break;
    case MVCC_TARGET_CREATE:
      base = v ? v->create : 0;
      break;
    case MVCC_TARGET_MOD:
      base = v ? v->rev : 0;
      break;
    case MVCC_TARGET_LEASE:
      base = v ? v->lease : 0;
      break;
    case MVCC_TARGET_VALUE:
      break;
  }
  c->number = chance(20) ? 0 : base + rnd_i64(-1, 1);
  if (c->target == MVCC_TARGET_VALUE) {
    if (v && chance(60)) {
      c->value = dup_bytes(g, v->val, v->val_len);
    } else {
      c->value = gen_value(g);
    }
  }
}

static const struct mvcc_txn_req *gen_txn(struct gen *g, int depth, struct conflicts *c,
                                          size_t *n_puts);

static void gen_request_ops(struct gen *g, int depth, struct conflicts *c,
                            const struct mvcc_request_op **out, size_t *nout, size_t *n_puts) {
  size_t n = rnd(depth == 0 ? 6 : 4);
  struct mvcc_request_op *ops = pool_alloc(g->pool, n * sizeof *ops);
  for (size_t i = 0; i < n; i++) {
    size_t r = rnd(100);
    struct mvcc_request_op *op = &ops[i];
    if (r < 35 && gen_put(g, &op->u.put, c)) {
      op->type = MVCC_REQUEST_PUT;
      (*n_puts)++;
    } else if (r >= 35 && r < 55 && gen_delete(g, &op->u.del, c)) {
      op->type = MVCC_REQUEST_DELETE;
    } else if (r >= 55 && r < 68 && depth < 2) {
      op->type = MVCC_REQUEST_TXN;
      op->u.txn = gen_txn(g, depth + 1, c, n_puts);
    } else {
      op->type = MVCC_REQUEST_RANGE;
      gen_range_req(g, &op->u.range, 3);
    }
  }
  *out = ops;
  *nout = n;
}

static const struct mvcc_txn_req *gen_txn(struct gen *g, int depth, struct conflicts *c,
                                          size_t *n_puts) {
  struct mvcc_txn_req *t = pool_alloc(g->pool, sizeof *t);
  size_t nc = rnd(4);
  struct mvcc_compare *cmps = pool_alloc(g->pool, nc * sizeof *cmps);
  for (size_t i = 0; i < nc; i++) {
    gen_compare(g, &cmps[i]);
  }
  t->compares = cmps;
  t->n_compares = nc;
  gen_request_ops(g, depth, c, &t->success, &t->n_success, n_puts);
  gen_request_ops(g, depth, c, &t->failure, &t->n_failure, n_puts);
  return t;
}

/* ---------------------------------------------------------------- trace */

/* CAIRN_MODEL_TRACE=1 prints every op before it is applied: the way to turn a
 * failing seed into a reproduction. */
static bool trace_on;

static void tr_bytes(struct mvcc_bytes b) {
  putchar('"');
  for (size_t i = 0; i < b.len && i < 24; i++) {
    uint8_t c = b.data[i];
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      putchar(c);
    } else {
      printf("\\x%02x", c);
    }
  }
  if (b.len > 24) {
    printf("...(%zu)", b.len);
  }
  putchar('"');
}

static void tr_range_bounds(struct mvcc_bytes k, struct mvcc_bytes e) {
  tr_bytes(k);
  if (e.len) {
    printf("..");
    tr_bytes(e);
  }
}

static void tr_indent(int d) {
  for (int i = 0; i < d; i++) {
    printf("  ");
  }
}

static void tr_range(const struct mvcc_range_req *r) {
  printf("range ");
  tr_range_bounds(r->key, r->range_end);
  printf(" rev=%" PRId64 " limit=%" PRId64 " sort=%d/%d%s%s", r->revision, r->limit,
         (int)r->sort_order, (int)r->sort_target, r->keys_only ? " keys_only" : "",
         r->count_only ? " count_only" : "");
  if (r->min_mod_revision || r->max_mod_revision || r->min_create_revision ||
      r->max_create_revision) {
    printf(" mod[%" PRId64 ",%" PRId64 "] create[%" PRId64 ",%" PRId64 "]", r->min_mod_revision,
           r->max_mod_revision, r->min_create_revision, r->max_create_revision);
  }
}

static void tr_put(const struct mvcc_put_req *p) {
  printf("put ");
  tr_bytes(p->key);
  printf(" = ");
  tr_bytes(p->value);
  printf(" lease=%" PRId64 "%s%s%s", p->lease, p->prev_kv ? " prev_kv" : "",
         p->ignore_value ? " ignore_value" : "", p->ignore_lease ? " ignore_lease" : "");
}

static void tr_del(const struct mvcc_delete_req *d) {
  printf("delete ");
  tr_range_bounds(d->key, d->range_end);
  printf("%s", d->prev_kv ? " prev_kv" : "");
}

static void tr_txn(const struct mvcc_txn_req *t, int d);

static void tr_reqs(const struct mvcc_request_op *ops, size_t n, int d) {
  for (size_t i = 0; i < n; i++) {
    tr_indent(d);
    switch (ops[i].type) {
      case MVCC_REQUEST_RANGE:
        tr_range(&ops[i].u.range);
        printf("\n");
        break;
      case MVCC_REQUEST_PUT:
        tr_put(&ops[i].u.put);
        printf("\n");
        break;
      case MVCC_REQUEST_DELETE:
        tr_del(&ops[i].u.del);
        printf("\n");
        break;
      case MVCC_REQUEST_TXN:
        printf("txn\n");
        tr_txn(ops[i].u.txn, d + 1);
        break;
      default:
        printf("none\n");
    }
  }
}

static void tr_txn(const struct mvcc_txn_req *t, int d) {
  static const char *const tgt[] = {"VERSION", "CREATE", "MOD", "VALUE", "LEASE"};
  static const char *const res[] = {"==", ">", "<", "!="};
  for (size_t i = 0; i < t->n_compares; i++) {
    const struct mvcc_compare *c = &t->compares[i];
    tr_indent(d);
    printf("if %s(", tgt[c->target]);
    tr_range_bounds(c->key, c->range_end);
    printf(") %s ", res[c->result]);
    if (c->target == MVCC_TARGET_VALUE) {
      tr_bytes(c->value);
    } else {
      printf("%" PRId64, c->number);
    }
    printf("\n");
  }
  tr_indent(d);
  printf("then:\n");
  tr_reqs(t->success, t->n_success, d + 1);
  tr_indent(d);
  printf("else:\n");
  tr_reqs(t->failure, t->n_failure, d + 1);
}

static void tr_op(const struct mvcc_op *op) {
  if (!trace_on) {
    return;
  }
  printf("op idx=%" PRIu64 ": ", op->raft_index);
  switch (op->type) {
    case MVCC_OP_RANGE:
      tr_range(&op->u.range);
      break;
    case MVCC_OP_PUT:
      tr_put(&op->u.put);
      break;
    case MVCC_OP_DELETE:
      tr_del(&op->u.del);
      break;
    case MVCC_OP_TXN:
      printf("txn\n");
      tr_txn(&op->u.txn, 1);
      break;
    case MVCC_OP_COMPACT:
      printf("compact %" PRId64, op->u.compact_revision);
      break;
    case MVCC_OP_LEASE_GRANT:
      printf("lease grant %" PRId64, op->u.lease_grant.id);
      break;
    case MVCC_OP_LEASE_REVOKE:
      printf("lease revoke %" PRId64, op->u.lease_revoke_id);
      break;
    case MVCC_OP_LEASE_CHECKPOINT:
      printf("lease checkpoint %" PRId64, op->u.lease_checkpoint.id);
      break;
    default:
      printf("?");
  }
  printf("\n");
  fflush(stdout);
}

/* ---------------------------------------------------------------- model ops */

static bool m_compare(const struct model *m, const struct mvcc_compare *c, int64_t rev) {
  struct mrow rows[NKEYS];
  size_t n = m_collect(m, c->key, c->range_end, rev, rows);
  if (n == 0) {
    if (c->target == MVCC_TARGET_VALUE) {
      return false;
    }
  }
  static const struct mver zero;
  for (size_t i = 0; i < (n ? n : 1); i++) {
    const struct mver *v = n ? rows[i].v : &zero;
    int r;
    switch (c->target) {
      case MVCC_TARGET_VALUE:
        r = bytes_cmp(v->val, v->val_len, c->value.data, c->value.len);
        break;
      case MVCC_TARGET_CREATE:
        r = v->create < c->number ? -1 : v->create > c->number;
        break;
      case MVCC_TARGET_MOD:
        r = v->rev < c->number ? -1 : v->rev > c->number;
        break;
      case MVCC_TARGET_VERSION:
        r = v->version < c->number ? -1 : v->version > c->number;
        break;
      case MVCC_TARGET_LEASE:
        r = v->lease < c->number ? -1 : v->lease > c->number;
        break;
      default:
        CHECK(0);
        r = 0;
    }
    bool ok;
    switch (c->result) {
      case MVCC_CMP_EQUAL:
        ok = r == 0;
        break;
      case MVCC_CMP_NOT_EQUAL:
        ok = r != 0;
        break;
      case MVCC_CMP_GREATER:
        ok = r > 0;
        break;
      case MVCC_CMP_LESS:
        ok = r < 0;
        break;
      default:
        CHECK(0);
        ok = false;
    }
    if (!ok) {
      return false;
    }
  }
  return true;
}

static bool m_txn_cond(const struct model *m, const struct mvcc_txn_req *t, int64_t begin) {
  for (size_t i = 0; i < t->n_compares; i++) {
    if (!m_compare(m, &t->compares[i], begin)) {
      return false;
    }
  }
  return true;
}

/* Preconditions of a put against the store as it was before the op. */
static int m_put_err(const struct model *m, const struct mvcc_put_req *p, bool txn_order) {
  size_t k = key_index(p->key);
  CHECK(k != SIZE_MAX);
  bool ign_bad = (p->ignore_value || p->ignore_lease) && kv_at(m, k, m->rev) == NULL;
  bool lease_bad = p->lease != 0 && !lease_live(m, p->lease);
  if (txn_order) {
    return ign_bad ? CAIRN_EKEY_NOT_FOUND : lease_bad ? CAIRN_ELEASE_NOT_FOUND : 0;
  }
  return lease_bad ? CAIRN_ELEASE_NOT_FOUND : ign_bad ? CAIRN_EKEY_NOT_FOUND : 0;
}

/* etcd's checkRequests over the taken path: puts (pass 0) then ranges (pass 1). */
static int m_txn_precheck(const struct model *m, const struct mvcc_txn_req *t, int64_t begin,
                          int pass) {
  bool ok = m_txn_cond(m, t, begin);
  const struct mvcc_request_op *ops = ok ? t->success : t->failure;
  size_t n = ok ? t->n_success : t->n_failure;
  for (size_t i = 0; i < n; i++) {
    int err = 0;
    if (ops[i].type == MVCC_REQUEST_TXN) {
      err = m_txn_precheck(m, ops[i].u.txn, begin, pass);
    } else if (pass == 0 && ops[i].type == MVCC_REQUEST_PUT) {
      err = m_put_err(m, &ops[i].u.put, true);
    } else if (pass == 1 && ops[i].type == MVCC_REQUEST_RANGE) {
      err = range_rev_err(m, &ops[i].u.range);
    }
    if (err) {
      return err;
    }
  }
  return 0;
}

static void m_put(struct model *m, const struct mvcc_put_req *p, int64_t wrev, uint32_t *sub,
                  const struct mvcc_put_resp *got) {
  size_t k = key_index(p->key);
  const struct mver *cur = kv_at(m, k, wrev);
  CHECK_EQ_INT(got->revision, wrev);
  if (p->prev_kv && cur) {
    CHECK(got->has_prev_kv);
    check_kv(&got->prev_kv, k, cur, false);
  } else {
    CHECK(!got->has_prev_kv);
  }
  const uint8_t *val = p->value.data;
  size_t len = p->value.len;
  int64_t lease = p->lease;
  uint8_t *copy = NULL;
  if (p->ignore_value) {
    CHECK(cur != NULL);
    copy = malloc(cur->val_len ? cur->val_len : 1);
    CHECK(copy != NULL);
    if (cur->val_len) {
      memcpy(copy, cur->val, cur->val_len);
    }
    val = copy;
    len = cur->val_len;
  }
  if (p->ignore_lease) {
    CHECK(cur != NULL);
    lease = cur->lease;
  }
  m_write_put(m, k, val, len, lease, wrev, sub); /* invalidates cur */
  free(copy);
}

static void m_delete(struct model *m, const struct mvcc_delete_req *d, int64_t wrev, uint32_t *sub,
                     const struct mvcc_delete_resp *got) {
  struct mrow rows[NKEYS];
  size_t n = m_collect(m, d->key, d->range_end, wrev, rows);
  CHECK_EQ_INT(got->deleted, n);
  if (d->prev_kv) {
    CHECK_EQ_INT(got->n_prev_kvs, n);
    for (size_t i = 0; i < n; i++) {
      check_kv(&got->prev_kvs[i], rows[i].k, rows[i].v, false);
    }
  } else {
    CHECK_EQ_INT(got->n_prev_kvs, 0);
  }
  size_t ks[NKEYS];
  for (size_t i = 0; i < n; i++) {
    ks[i] = rows[i].k;
  }
  for (size_t i = 0; i < n; i++) {
    m_write_tomb(m, ks[i], wrev, sub);
  }
}

/* Applies the taken path of a txn whose compares were evaluated at begin. */
static void m_txn_apply(struct model *m, const struct mvcc_txn_req *t, int64_t begin, uint32_t *sub,
                        const struct mvcc_txn_resp *got) {
  int64_t wrev = begin + 1;
  bool ok = m_txn_cond(m, t, begin);
  CHECK_EQ_INT(got->succeeded, ok);
  const struct mvcc_request_op *ops = ok ? t->success : t->failure;
  size_t n = ok ? t->n_success : t->n_failure;
  CHECK_EQ_INT(got->n_responses, n);
  for (size_t i = 0; i < n; i++) {
    const struct mvcc_response_op *r = &got->responses[i];
    CHECK_EQ_INT(r->type, ops[i].type);
    switch (ops[i].type) {
      case MVCC_REQUEST_RANGE: {
        const struct mvcc_range_req *rq = &ops[i].u.range;
        int64_t read_rev = rq->revision > 0 ? rq->revision : wrev;
        check_range(m, rq, read_rev, *sub > 0 ? wrev : begin, &r->u.range);
        break;
      }
      case MVCC_REQUEST_PUT:
        m_put(m, &ops[i].u.put, wrev, sub, &r->u.put);
        break;
      case MVCC_REQUEST_DELETE:
        m_delete(m, &ops[i].u.del, wrev, sub, &r->u.del);
        CHECK_EQ_INT(r->u.del.revision, *sub > 0 ? wrev : begin);
        break;
      case MVCC_REQUEST_TXN:
        CHECK(r->u.txn != NULL);
        m_txn_apply(m, ops[i].u.txn, begin, sub, r->u.txn);
        break;
      default:
        CHECK(0);
    }
  }
}

/* etcd leaves the header of a nested txn response empty; the outer revision
 * is accepted too. */
static void check_nested_revs(const struct mvcc_txn_resp *got, int64_t final_rev) {
  for (size_t i = 0; i < got->n_responses; i++) {
    const struct mvcc_response_op *r = &got->responses[i];
    if (r->type == MVCC_REQUEST_TXN) {
      CHECK(r->u.txn->revision == 0 || r->u.txn->revision == final_rev);
      check_nested_revs(r->u.txn, final_rev);
    }
  }
}

/* Applies one batch op to the model and checks the engine's result for it. */
static void check_op(struct model *m, const struct mvcc_op *op, const struct mvcc_result *res) {
  if (res->err == 0) {
    CHECK_EQ_INT(res->type, op->type);
  }
  uint32_t sub = 0;
  int64_t begin = m->rev;
  switch (op->type) {
    case MVCC_OP_RANGE: {
      int err = range_rev_err(m, &op->u.range);
      CHECK_ERR(res->err, err);
      if (err == 0) {
        int64_t rr = op->u.range.revision > 0 ? op->u.range.revision : m->rev;
        check_range(m, &op->u.range, rr, m->rev, &res->u.range);
      }
      break;
    }
    case MVCC_OP_PUT: {
      int err = m_put_err(m, &op->u.put, false);
      int other = m_put_err(m, &op->u.put, true);
      if (err != other) {
        /* Both errors apply: etcd reports the lease error for a plain put
         * (test_badinput checks that order on a fixed case). */
        CHECK(res->err == err || res->err == other);
      } else {
        CHECK_ERR(res->err, err);
      }
      if (err == 0) {
        m_put(m, &op->u.put, begin + 1, &sub, &res->u.put);
        m->rev = begin + 1;
      }
      break;
    }
    case MVCC_OP_DELETE:
      CHECK_ERR(res->err, 0);
      m_delete(m, &op->u.del, begin + 1, &sub, &res->u.del);
      if (sub > 0) {
        m->rev = begin + 1;
      }
      CHECK_EQ_INT(res->u.del.revision, m->rev);
      break;
    case MVCC_OP_TXN: {
      int put_err = m_txn_precheck(m, &op->u.txn, begin, 0);
      int range_err = m_txn_precheck(m, &op->u.txn, begin, 1);
      int err = put_err ? put_err : range_err;
      if (put_err && range_err) {
        /* etcd reports the put error (it checks every put of the path before
         * any range); test_badinput checks that order on a fixed case. */
        CHECK(res->err == put_err || res->err == range_err);
      } else {
        CHECK_ERR(res->err, err);
      }
      if (err == 0) {
        m_txn_apply(m, &op->u.txn, begin, &sub, &res->u.txn);
        if (sub > 0) {
          m->rev = begin + 1;
        }
        CHECK_EQ_INT(res->u.txn.revision, m->rev);
        check_nested_revs(&res->u.txn, m->rev);
      }
      break;
    }
    case MVCC_OP_COMPACT: {
      int64_t r = op->u.compact_revision;
      int err = r <= m->compacted ? CAIRN_ECOMPACTED : r > m->rev ? CAIRN_EFUTURE_REV : 0;
      CHECK_ERR(res->err, err);
      if (err == 0) {
        m->compacted = r;
        CHECK_EQ_INT(res->u.revision, m->rev);
      }
      break;
    }
    case MVCC_OP_LEASE_GRANT: {
      int64_t id = op->u.lease_grant.id;
      CHECK(id >= 1 && id <= NLEASES);
      int err = m->leases[id].live ? CAIRN_ELEASE_EXISTS : 0;
      CHECK_ERR(res->err, err);
      if (err == 0) {
        struct mlease *l = &m->leases[id];
        l->live = true;
        l->ttl = op->u.lease_grant.ttl;
        l->granted_ms = op->u.lease_grant.now_ms;
        l->remaining_ms = -1;
        CHECK_EQ_INT(res->u.lease.revision, m->rev);
        CHECK_EQ_INT(res->u.lease.lease.id, id);
        CHECK_EQ_INT(res->u.lease.lease.ttl, l->ttl);
        CHECK_EQ_INT(res->u.lease.lease.granted_ms, l->granted_ms);
        CHECK_EQ_INT(res->u.lease.lease.remaining_ms, -1);
      }
      break;
    }
    case MVCC_OP_LEASE_REVOKE: {
      int64_t id = op->u.lease_revoke_id;
      int err = lease_live(m, id) ? 0 : CAIRN_ELEASE_NOT_FOUND;
      CHECK_ERR(res->err, err);
      if (err == 0) {
        /* Attached keys are deleted in key order, all at one revision. */
        for (size_t k = 0; k < NKEYS; k++) {
          const struct mver *v = kv_at(m, k, begin + 1);
          if (v && v->lease == id) {
            m_write_tomb(m, k, begin + 1, &sub);
          }
        }
        if (sub > 0) {
          m->rev = begin + 1;
        }
        m->leases[id].live = false;
        CHECK_EQ_INT(res->u.lease.revision, m->rev);
      }
      break;
    }
    case MVCC_OP_LEASE_CHECKPOINT: {
      int64_t id = op->u.lease_checkpoint.id;
      if (!lease_live(m, id)) {
        /* Revoked earlier in the batch. etcd ignores a checkpoint of an
         * unknown lease; an error is fine too, as long as nothing changes. */
        CHECK(res->err == 0 || res->err == CAIRN_ELEASE_NOT_FOUND);
        break;
      }
      CHECK_ERR(res->err, 0);
      m->leases[id].remaining_ms = op->u.lease_checkpoint.remaining_ms;
      CHECK_EQ_INT(res->u.lease.revision, m->rev);
      break;
    }
    default:
      CHECK(0);
  }
}

/* ---------------------------------------------------------------- engine side */

struct run {
  struct model m;
  struct pool pool;
  struct gen g;
  mvcc_store *s;
  char *dir;
  bool compact_pending; /* a compaction has not been stepped to done */
  /* Counters, printed at the end so a run shows what it covered. */
  size_t n_ops, n_txns, n_err_ops, n_reads, n_feeds, n_feed_events, n_reopens, n_compacts;
  size_t n_err[64]; /* refused ops by -(code - CAIRN_E__BASE) */
};

/* One random batch op. Per mille: put 320, delete 130, txn 300, range 120,
 * lease grant 50, revoke 35, checkpoint 25, compact 20. */
static void gen_batch_op(struct run *r, struct mvcc_op *op) {
  struct model *m = &r->m;
  struct gen *g = &r->g;
  memset(op, 0, sizeof *op);
  size_t x = rnd(1000);
  int64_t live_id = gen_lease(m);
  if (x >= 945 && x < 970 && !lease_live(m, live_id)) {
    x = 0; /* no lease to checkpoint: a put instead */
  }
  if (x < 320) {
    op->type = MVCC_OP_PUT;
    CHECK(gen_put(g, &op->u.put, NULL));
  } else if (x < 450) {
    op->type = MVCC_OP_DELETE;
    CHECK(gen_delete(g, &op->u.del, NULL));
  } else if (x < 750) {
    op->type = MVCC_OP_TXN;
    struct conflicts *c = pool_alloc(g->pool, sizeof *c);
    size_t n_puts = 0;
    op->u.txn = *gen_txn(g, 0, c, &n_puts);
  } else if (x < 870) {
    op->type = MVCC_OP_RANGE;
    gen_range_req(g, &op->u.range, 5);
  } else if (x < 920) {
    op->type = MVCC_OP_LEASE_GRANT;
    op->u.lease_grant.id = rnd_i64(1, NLEASES);
    for (int i = 0; i < 3 && m->leases[op->u.lease_grant.id].live && chance(80); i++) {
      op->u.lease_grant.id = rnd_i64(1, NLEASES);
    }
    op->u.lease_grant.ttl = rnd_i64(1, 1000);
    op->u.lease_grant.now_ms = rnd_i64(0, 1000000000);
  } else if (x < 945) {
    op->type = MVCC_OP_LEASE_REVOKE;
    op->u.lease_revoke_id = live_id != 0 ? live_id : rnd_i64(1, NLEASES);
  } else if (x < 970) {
    op->type = MVCC_OP_LEASE_CHECKPOINT;
    op->u.lease_checkpoint.id = live_id;
    op->u.lease_checkpoint.remaining_ms = rnd_i64(0, 1000000);
  } else {
    op->type = MVCC_OP_COMPACT;
    if (m->rev > m->compacted && chance(85)) {
      /* Keep a few hundred revisions of history readable, sometimes none. */
      int64_t lo = m->compacted + 1;
      int64_t back = chance(10) ? 0 : rnd_i64(0, 400);
      op->u.compact_revision = m->rev - back < lo ? lo : m->rev - back;
    } else if (m->compacted > 0 && chance(50)) {
      op->u.compact_revision = rnd_i64(1, m->compacted);
    } else {
      op->u.compact_revision = m->rev + rnd_i64(1, 3);
    }
  }
}

static void check_state_basics(struct run *r) {
  CHECK_EQ_INT(mvcc_current_revision(r->s), r->m.rev);
  CHECK_EQ_INT(mvcc_compacted_revision(r->s), r->m.compacted);
  CHECK_EQ_INT(mvcc_applied_index(r->s), r->m.raft_index);
  CHECK_EQ_INT(mvcc_applied_term(r->s), r->m.raft_term);
}

/* Applies one batch of 1..16 random ops. Ops from raft carry increasing
 * indexes (the engine refuses an index at or below the applied index, also
 * within one batch); some batches carry none, and sometimes one op of a batch
 * repeats an applied index and must be skipped with CAIRN_EREPLAY. */
static void do_batch(struct run *r) {
  struct model *m = &r->m;
  size_t n = chance(70) ? 1 : 1 + rnd(16);
  struct mvcc_op *ops = pool_alloc(&r->pool, n * sizeof *ops);
  struct mvcc_result *res = pool_alloc(&r->pool, n * sizeof *res);
  bool *replayed = pool_alloc(&r->pool, n * sizeof *replayed);
  bool from_raft = chance(80);
  uint64_t idx = m->raft_index, term = m->raft_term;
  for (size_t i = 0; i < n; i++) {
    gen_batch_op(r, &ops[i]);
    if (from_raft) {
      if (idx > 1 && chance(4)) {
        /* Below the highest index so far: a replay. (An op with the same
         * index as the one before it belongs to the same raft entry.) */
        ops[i].raft_index = idx - 1 - rnd(idx - 1 < 3 ? idx - 1 : 3);
        ops[i].raft_term = term;
        replayed[i] = true;
      } else {
        idx += 1 + rnd(2);
        if (chance(3)) {
          term++;
        }
        ops[i].raft_index = idx;
        ops[i].raft_term = term;
      }
    }
    if (ops[i].type == MVCC_OP_PUT || ops[i].type == MVCC_OP_DELETE || ops[i].type == MVCC_OP_TXN) {
      CHECK_OK(mvcc_check_op(r->s, &ops[i]));
    }
  }
  CHECK_OK(mvcc_apply(r->s, ops, n, res));
  for (size_t i = 0; i < n; i++) {
    r->n_ops++;
    r->n_txns += ops[i].type == MVCC_OP_TXN;
    r->n_err_ops += res[i].err != 0;
    if (res[i].err < 0 && res[i].err > CAIRN_E__BASE && res[i].err - CAIRN_E__BASE < 64) {
      r->n_err[res[i].err - CAIRN_E__BASE]++;
    }
    if (replayed[i]) {
      CHECK_ERR(res[i].err, CAIRN_EREPLAY);
      mvcc_result_free(&res[i]);
      continue;
    }
    r->n_compacts += ops[i].type == MVCC_OP_COMPACT && res[i].err == 0;
    if (ops[i].type == MVCC_OP_COMPACT && res[i].err == 0) {
      r->compact_pending = true;
    }
    if (trace_on) {
      printf("[rev %" PRId64 " compacted %" PRId64 "] ", m->rev, m->compacted);
    }
    tr_op(&ops[i]);
    check_op(m, &ops[i], &res[i]);
    mvcc_result_free(&res[i]);
  }
  m->raft_index = idx;
  m->raft_term = term;
  check_state_basics(r);
  pool_reset(&r->pool);
}

/* An op whose raft index is not above the applied index is skipped. */
static void do_replay(struct run *r) {
  struct model *m = &r->m;
  if (m->raft_index == 0) {
    return;
  }
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_PUT;
  CHECK(gen_put(&r->g, &op.u.put, NULL));
  op.u.put.ignore_value = false;
  op.u.put.ignore_lease = false;
  op.u.put.lease = 0;
  op.raft_index = m->raft_index - rnd(m->raft_index < 3 ? m->raft_index : 3);
  op.raft_term = m->raft_term;
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_OK(mvcc_apply(r->s, &op, 1, &res));
  CHECK_ERR(res.err, CAIRN_EREPLAY);
  mvcc_result_free(&res);
  check_state_basics(r);
  pool_reset(&r->pool);
}

static void do_read(struct run *r) {
  struct mvcc_range_req rq;
  gen_range_req(&r->g, &rq, 8);
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  int err = range_rev_err(&r->m, &rq);
  CHECK_ERR(mvcc_range(r->s, &rq, &res), err);
  if (err == 0) {
    int64_t rr = rq.revision > 0 ? rq.revision : r->m.rev;
    check_range(&r->m, &rq, rr, r->m.rev, &res.u.range);
  }
  mvcc_result_free(&res);
  r->n_reads++;
  pool_reset(&r->pool);
}

/* A full range of everything at rev (0: latest). */
static void check_full_at(struct run *r, int64_t rev) {
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = mk_bytes(nul_byte, 1);
  rq.range_end = mk_bytes(nul_byte, 1);
  rq.revision = rev;
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_OK(mvcc_range(r->s, &rq, &res));
  check_range(&r->m, &rq, rev > 0 ? rev : r->m.rev, r->m.rev, &res.u.range);
  mvcc_result_free(&res);
}

static void check_leases(struct run *r) {
  struct model *m = &r->m;
  struct mvcc_lease *ls = NULL;
  size_t n = 0;
  CHECK_OK(mvcc_lease_list(r->s, &ls, &n));
  size_t j = 0;
  for (int64_t id = 1; id <= NLEASES; id++) {
    const struct mlease *l = &m->leases[id];
    struct mvcc_lease one;
    if (!l->live) {
      CHECK_ERR(mvcc_lease_get(r->s, id, &one), CAIRN_ELEASE_NOT_FOUND);
      continue;
    }
    CHECK(j < n);
    CHECK_EQ_INT(ls[j].id, id);
    CHECK_EQ_INT(ls[j].ttl, l->ttl);
    CHECK_EQ_INT(ls[j].granted_ms, l->granted_ms);
    CHECK_EQ_INT(ls[j].remaining_ms, l->remaining_ms);
    j++;
    CHECK_OK(mvcc_lease_get(r->s, id, &one));
    CHECK_EQ_INT(one.id, id);
    CHECK_EQ_INT(one.ttl, l->ttl);
    CHECK_EQ_INT(one.granted_ms, l->granted_ms);
    CHECK_EQ_INT(one.remaining_ms, l->remaining_ms);
    /* The attached keys: live keys whose latest version carries the lease. */
    struct mvcc_result res;
    memset(&res, 0, sizeof res);
    CHECK_OK(mvcc_lease_keys(r->s, id, &res));
    size_t want = 0;
    for (size_t k = 0; k < NKEYS; k++) {
      const struct mver *v = kv_at(m, k, m->rev);
      if (v && v->lease == id) {
        bool found = false;
        for (size_t i = 0; i < res.u.range.n_kvs; i++) {
          found = found || bytes_eq(res.u.range.kvs[i].key, keys[k].b, keys[k].len);
        }
        CHECK(found);
        want++;
      }
    }
    CHECK_EQ_INT(res.u.range.n_kvs, want);
    mvcc_result_free(&res);
  }
  CHECK_EQ_INT(n, j);
  free(ls);
}

static void check_state(struct run *r) {
  struct model *m = &r->m;
  check_state_basics(r);
  check_full_at(r, 0);
  int64_t lo = m->compacted > 1 ? m->compacted : 1;
  check_full_at(r, lo);
  check_full_at(r, m->rev);
  for (int i = 0; i < 3; i++) {
    check_full_at(r, rnd_i64(lo, m->rev));
  }
  check_leases(r);
}

/* A reader of the change feed, checked event by event against the model's
 * history in [key, end). */
struct feed_cursor {
  struct mvcc_bytes key, end;
  bool prev_kv;
  size_t ei; /* next model event to match */
};

/* The first model event at or after rev. */
static size_t first_event_at(const struct model *m, int64_t rev) {
  size_t lo = 0, hi = m->nev;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (ver_of(m, &m->ev[mid])->rev < rev) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/* A DELETE at exactly the compacted revision may be gone (etcd's compaction
 * drops a tombstone at the compaction revision), so the feed may skip it. */
static bool skippable(const struct model *m, const struct mevent *x) {
  const struct mver *v = ver_of(m, x);
  return v->tomb && v->rev == m->compacted && m->compacted > 0;
}

static bool event_in(const struct feed_cursor *fc, const struct mevent *x) {
  return in_range(keys[x->key].b, keys[x->key].len, fc->key, fc->end);
}

static void feed_check_event(const struct model *m, struct feed_cursor *fc,
                             const struct mvcc_event *e) {
  const struct mevent *want = NULL;
  while (fc->ei < m->nev) {
    const struct mevent *x = &m->ev[fc->ei];
    const struct mver *v = ver_of(m, x);
    if (!event_in(fc, x) ||
        (skippable(m, x) && !(e->type == MVCC_EVENT_DELETE && e->kv.mod_revision == v->rev &&
                              bytes_eq(e->kv.key, keys[x->key].b, keys[x->key].len)))) {
      fc->ei++;
      continue;
    }
    want = x;
    break;
  }
  if (want == NULL) {
    fprintf(stderr, "feed returned an event the model does not have: type %d mod %" PRId64 " key ",
            (int)e->type, e->kv.mod_revision);
    fprint_bytes(e->kv.key.data, e->kv.key.len);
    fprintf(stderr, "\n");
    CHECK(want != NULL);
  }
  fc->ei++;
  const struct mver *v = ver_of(m, want);
  size_t k = want->key;
  if (v->tomb) {
    CHECK_EQ_INT(e->type, MVCC_EVENT_DELETE);
    CHECK(bytes_eq(e->kv.key, keys[k].b, keys[k].len));
    CHECK_EQ_INT(e->kv.mod_revision, v->rev);
    CHECK_EQ_INT(e->kv.create_revision, 0);
    CHECK_EQ_INT(e->kv.version, 0);
    CHECK_EQ_INT(e->kv.lease, 0);
    CHECK_EQ_INT(e->kv.value.len, 0);
  } else {
    CHECK_EQ_INT(e->type, MVCC_EVENT_PUT);
    check_kv(&e->kv, k, v, false);
  }
  const struct mver *prev = want->ver > 0 ? &m->hist[k].v[want->ver - 1] : NULL;
  if (prev && prev->tomb) {
    prev = NULL;
  }
  if (!fc->prev_kv || !prev) {
    CHECK(!e->has_prev_kv);
  } else if (v->rev - 1 < m->compacted) {
    /* The previous version is at or below the compacted revision and
     * superseded at it: compacted away (perhaps not yet physically). */
    if (e->has_prev_kv) {
      check_kv(&e->prev_kv, k, prev, false);
    }
  } else {
    CHECK(e->has_prev_kv);
    check_kv(&e->prev_kv, k, prev, false);
  }
}

/* At caught_up: nothing left in the model but skippable deletes. */
static void feed_check_caught_up(const struct model *m, struct feed_cursor *fc) {
  for (; fc->ei < m->nev; fc->ei++) {
    const struct mevent *x = &m->ev[fc->ei];
    if (event_in(fc, x) && !skippable(m, x)) {
      fprintf(stderr, "feed caught up, but the model has an event at revision %" PRId64 "\n",
              ver_of(m, x)->rev);
      bool feed_missed_an_event = true;
      CHECK(!feed_missed_an_event);
    }
  }
}

/* One mvcc_changes call through a cursor; returns caught_up. */
static bool feed_call(struct run *r, struct feed_cursor *fc, struct mvcc_feed_req *fr) {
  struct mvcc_feed f;
  memset(&f, 0, sizeof f);
  CHECK_OK(mvcc_changes(r->s, fr, &f));
  CHECK_EQ_INT(f.current_revision, r->m.rev);
  CHECK(f.n_events <= fr->max_events);
  for (size_t i = 0; i < f.n_events; i++) {
    feed_check_event(&r->m, fc, &f.events[i]);
  }
  r->n_feed_events += f.n_events;
  bool caught_up = f.caught_up;
  if (caught_up) {
    feed_check_caught_up(&r->m, fc);
    /* Nothing at or after the next position: it is past the head. */
    CHECK(f.next_revision > r->m.rev);
  }
  CHECK(f.next_revision > fr->start_revision ||
        (f.next_revision == fr->start_revision && f.next_sub >= fr->start_sub));
  fr->start_revision = f.next_revision;
  fr->start_sub = f.next_sub;
  mvcc_feed_free(&f);
  return caught_up;
}

/* The model's change history in [key, end) from start on, checked against the
 * change feed read in small pieces. */
static void do_feed(struct run *r) {
  struct model *m = &r->m;
  struct mvcc_feed_req fr;
  memset(&fr, 0, sizeof fr);
  gen_bounds(&r->g, &fr.key, &fr.range_end, false);
  fr.prev_kv = chance(50);
  size_t me = rnd(100);
  fr.max_events = me < 30 ? 1 + rnd(3) : me < 70 ? 1 + rnd(40) : MVCC_FEED_EVENTS_MAX;
  if (m->compacted > 1 && chance(5)) {
    struct mvcc_feed f;
    memset(&f, 0, sizeof f);
    fr.start_revision = rnd_i64(1, m->compacted - 1);
    CHECK_ERR(mvcc_changes(r->s, &fr, &f), CAIRN_ECOMPACTED);
    mvcc_feed_free(&f);
    pool_reset(&r->pool);
    return;
  }
  int64_t lo = m->compacted > 1 ? m->compacted : 1;
  fr.start_revision = chance(20) ? lo : rnd_i64(lo, m->rev + 1);
  struct feed_cursor fc = {fr.key, fr.range_end, fr.prev_kv, first_event_at(m, fr.start_revision)};
  for (size_t calls = 0; !feed_call(r, &fc, &fr); calls++) {
    CHECK(calls < 100000);
  }
  r->n_feeds++;
  pool_reset(&r->pool);
}

/* A watcher that stays: it reads a little now and then, keeping its position
 * across later writes, compactions and reopens; when compaction passes it,
 * it gets CAIRN_ECOMPACTED and starts again. */
struct watcher {
  bool active;
  uint8_t key[MVCC_MAX_KEY_BYTES + 1], end[MVCC_MAX_KEY_BYTES + 1];
  struct feed_cursor fc;
  struct mvcc_feed_req fr;
};

static void do_watch(struct run *r, struct watcher *w) {
  struct model *m = &r->m;
  if (!w->active) {
    struct mvcc_bytes k, e;
    gen_bounds(&r->g, &k, &e, false);
    memcpy(w->key, k.data, k.len);
    if (e.len) {
      memcpy(w->end, e.data, e.len);
    }
    memset(&w->fr, 0, sizeof w->fr);
    w->fr.key = mk_bytes(w->key, k.len);
    w->fr.range_end = mk_bytes(w->end, e.len);
    w->fr.prev_kv = chance(50);
    w->fr.max_events = 1 + rnd(20);
    int64_t lo = m->compacted > 1 ? m->compacted : 1;
    w->fr.start_revision = chance(50) ? m->rev + 1 : rnd_i64(lo, m->rev + 1);
    w->fc.key = w->fr.key;
    w->fc.end = w->fr.range_end;
    w->fc.prev_kv = w->fr.prev_kv;
    w->fc.ei = first_event_at(m, w->fr.start_revision);
    w->active = true;
    pool_reset(&r->pool);
  }
  if (w->fr.start_revision < m->compacted) {
    struct mvcc_feed f;
    memset(&f, 0, sizeof f);
    CHECK_ERR(mvcc_changes(r->s, &w->fr, &f), CAIRN_ECOMPACTED);
    mvcc_feed_free(&f);
    w->active = false;
    return;
  }
  /* A few calls, not necessarily to caught_up. */
  size_t calls = chance(50) ? 1 + rnd(3) : SIZE_MAX;
  for (size_t i = 0; i < calls; i++) {
    CHECK(i < 1000000);
    if (feed_call(r, &w->fc, &w->fr)) {
      break;
    }
  }
}

static void do_compact_steps(struct run *r, bool to_done) {
  if (!r->compact_pending) {
    bool done = false;
    CHECK_OK(mvcc_compact_step(r->s, 0, &done));
    CHECK(done);
    return;
  }
  size_t max = chance(50) ? 1 + rnd(20) : 0;
  size_t limit = to_done ? SIZE_MAX : 1 + rnd(4);
  bool done = false;
  for (size_t i = 0; i < limit && !done; i++) {
    CHECK(i < 10000000);
    CHECK_OK(mvcc_compact_step(r->s, max, &done));
  }
  if (done) {
    r->compact_pending = false;
  }
}

static void do_reopen(struct run *r) {
  mvcc_close(r->s);
  r->s = NULL;
  CHECK_OK(mvcc_open(r->dir, NULL, &r->s));
  r->n_reopens++;
  check_state(r);
}

static void test_model_random(void) {
  struct run *r = calloc(1, sizeof *r);
  CHECK(r != NULL);
  model_init(&r->m);
  r->g.m = &r->m;
  r->g.pool = &r->pool;
  r->dir = test_tmpdir("model");
  CHECK_OK(mvcc_open(r->dir, NULL, &r->s));
  check_state(r);

  size_t steps = test_small() ? 10000 : 80000;
  struct watcher *watchers = calloc(3, sizeof *watchers);
  CHECK(watchers != NULL);
  for (size_t step = 0; step < steps; step++) {
    size_t x = rnd(1000);
    if (x < 560) {
      do_batch(r);
    } else if (x < 760) {
      do_read(r);
    } else if (x < 800) {
      do_feed(r);
    } else if (x < 840) {
      do_watch(r, &watchers[rnd(3)]);
    } else if (x < 900) {
      do_compact_steps(r, chance(40));
    } else if (x < 905) {
      do_reopen(r);
    } else if (x < 915) {
      do_replay(r);
    } else if (x < 917) {
      CHECK_OK(mvcc_defrag(r->s));
      check_state(r);
    } else if (x < 930) {
      check_leases(r);
    } else {
      check_state(r);
    }
  }
  do_compact_steps(r, true);
  check_state(r);
  do_reopen(r);
  for (int i = 0; i < 3; i++) {
    do_watch(r, &watchers[i]);
  }
  free(watchers);
  printf(
      "    %zu ops (%zu txns, %zu refused), %zu reads, %zu feeds (%zu events), %zu "
      "compactions, %zu reopens, revision %" PRId64 "\n",
      r->n_ops, r->n_txns, r->n_err_ops, r->n_reads, r->n_feeds, r->n_feed_events, r->n_compacts,
      r->n_reopens, r->m.rev);
  for (int e = 0; e < 64; e++) {
    if (r->n_err[e]) {
      printf("    refused with \"%s\": %zu\n", cairn_strerror(CAIRN_E__BASE + e), r->n_err[e]);
    }
  }
  mvcc_close(r->s);
  test_rmdir(r->dir);
  model_free(&r->m);
  pool_free(&r->pool);
  free(r);
}

/* A fixed scenario with hand-computed results: the basics the random test
 * relies on (revision 1 when empty, the first write at 2, a txn's shared
 * revision, a no-op delete keeping the revision). */
static void test_model_basics(void) {
  char *dir = test_tmpdir("model-basics");
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  CHECK_EQ_INT(mvcc_current_revision(s), 1);
  CHECK_EQ_INT(mvcc_compacted_revision(s), 0);

  struct mvcc_op op;
  struct mvcc_result res;
  memset(&op, 0, sizeof op);
  memset(&res, 0, sizeof res);
  op.type = MVCC_OP_PUT;
  op.u.put.key = mk_bytes((const uint8_t *)"k", 1);
  op.u.put.value = mk_bytes((const uint8_t *)"v1", 2);
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  CHECK_OK(res.err);
  CHECK_EQ_INT(res.u.put.revision, 2);
  mvcc_result_free(&res);

  /* A delete of nothing keeps the revision. */
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  op.u.del.key = mk_bytes((const uint8_t *)"nope", 4);
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  CHECK_OK(res.err);
  CHECK_EQ_INT(res.u.del.deleted, 0);
  CHECK_EQ_INT(res.u.del.revision, 2);
  mvcc_result_free(&res);
  CHECK_EQ_INT(mvcc_current_revision(s), 2);

  /* Txn: put two keys in one revision. */
  struct mvcc_request_op sops[2];
  memset(sops, 0, sizeof sops);
  sops[0].type = MVCC_REQUEST_PUT;
  sops[0].u.put.key = mk_bytes((const uint8_t *)"k", 1);
  sops[0].u.put.value = mk_bytes((const uint8_t *)"v2", 2);
  sops[0].u.put.prev_kv = true;
  sops[1].type = MVCC_REQUEST_PUT;
  sops[1].u.put.key = mk_bytes((const uint8_t *)"l", 1);
  sops[1].u.put.value = mk_bytes((const uint8_t *)"w", 1);
  struct mvcc_compare cmp;
  memset(&cmp, 0, sizeof cmp);
  cmp.target = MVCC_TARGET_VERSION;
  cmp.result = MVCC_CMP_EQUAL;
  cmp.key = mk_bytes((const uint8_t *)"k", 1);
  cmp.number = 1;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_TXN;
  op.u.txn.compares = &cmp;
  op.u.txn.n_compares = 1;
  op.u.txn.success = sops;
  op.u.txn.n_success = 2;
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  CHECK_OK(res.err);
  CHECK(res.u.txn.succeeded);
  CHECK_EQ_INT(res.u.txn.revision, 3);
  CHECK_EQ_INT(res.u.txn.n_responses, 2);
  CHECK_EQ_INT(res.u.txn.responses[0].u.put.revision, 3);
  CHECK(res.u.txn.responses[0].u.put.has_prev_kv);
  CHECK_EQ_INT(res.u.txn.responses[0].u.put.prev_kv.mod_revision, 2);
  CHECK_EQ_INT(res.u.txn.responses[1].u.put.revision, 3);
  mvcc_result_free(&res);

  /* The same txn again fails its compare and has no failure ops: no bump. */
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  CHECK_OK(res.err);
  CHECK(!res.u.txn.succeeded);
  CHECK_EQ_INT(res.u.txn.revision, 3);
  CHECK_EQ_INT(res.u.txn.n_responses, 0);
  mvcc_result_free(&res);
  CHECK_EQ_INT(mvcc_current_revision(s), 3);

  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = mk_bytes((const uint8_t *)"k", 1);
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 1);
  CHECK_EQ_INT(res.u.range.kvs[0].create_revision, 2);
  CHECK_EQ_INT(res.u.range.kvs[0].mod_revision, 3);
  CHECK_EQ_INT(res.u.range.kvs[0].version, 2);
  CHECK_EQ_INT(res.u.range.revision, 3);
  mvcc_result_free(&res);

  mvcc_close(s);
  test_rmdir(dir);
}

/* A narrow watcher behind a busy store: more than MVCC_FEED_SCAN_MAX history
 * entries of other keys lie between the changes it wants. Each call returns
 * early with a resume position, never caught_up before the end, and the
 * watcher gets exactly its events. Also: a revision with 128 changes read one
 * event per call (sub positions), and max_events above the cap. */
static void test_feed_scan_limit(void) {
  char *dir = test_tmpdir("model-scan");
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  struct mvcc_op op;
  struct mvcc_result res;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_PUT;
  op.u.put.key = mk_bytes((const uint8_t *)"rare", 4);
  op.u.put.value = mk_bytes((const uint8_t *)"1", 1);
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  int64_t rare_revs[3];
  rare_revs[0] = res.u.put.revision;
  mvcc_result_free(&res);

  enum { PUTS = 128, TXNS_PER_BATCH = 32 };
  static char names[PUTS][16];
  struct mvcc_request_op puts[PUTS];
  memset(puts, 0, sizeof puts);
  for (int i = 0; i < PUTS; i++) {
    snprintf(names[i], sizeof names[i], "busy/%03d", i);
    puts[i].type = MVCC_REQUEST_PUT;
    puts[i].u.put.key = mk_bytes((const uint8_t *)names[i], strlen(names[i]));
    puts[i].u.put.value = mk_bytes((const uint8_t *)"v", 1);
  }
  struct mvcc_op txns[TXNS_PER_BATCH];
  struct mvcc_result tres[TXNS_PER_BATCH];
  memset(txns, 0, sizeof txns);
  for (int i = 0; i < TXNS_PER_BATCH; i++) {
    txns[i].type = MVCC_OP_TXN;
    txns[i].u.txn.success = puts;
    txns[i].u.txn.n_success = PUTS;
  }
  size_t batches = MVCC_FEED_SCAN_MAX / (PUTS * TXNS_PER_BATCH) + 2;
  int64_t busy_rev = 0;
  for (size_t b = 0; b < batches; b++) {
    CHECK_OK(mvcc_apply(s, txns, TXNS_PER_BATCH, tres));
    for (int i = 0; i < TXNS_PER_BATCH; i++) {
      CHECK_OK(tres[i].err);
      busy_rev = tres[i].u.txn.revision;
      mvcc_result_free(&tres[i]);
    }
    if (b == batches / 2) {
      op.u.put.value = mk_bytes((const uint8_t *)"2", 1);
      CHECK_OK(mvcc_apply(s, &op, 1, &res));
      rare_revs[1] = res.u.put.revision;
      mvcc_result_free(&res);
    }
  }
  op.u.put.value = mk_bytes((const uint8_t *)"3", 1);
  CHECK_OK(mvcc_apply(s, &op, 1, &res));
  rare_revs[2] = res.u.put.revision;
  mvcc_result_free(&res);

  struct mvcc_feed_req fr;
  memset(&fr, 0, sizeof fr);
  fr.key = mk_bytes((const uint8_t *)"rare", 4);
  fr.start_revision = 1;
  fr.max_events = 100;
  fr.prev_kv = true;
  size_t calls = 0, got = 0;
  for (;;) {
    CHECK(++calls < 10000);
    struct mvcc_feed f;
    memset(&f, 0, sizeof f);
    CHECK_OK(mvcc_changes(s, &fr, &f));
    for (size_t i = 0; i < f.n_events; i++) {
      CHECK(got < 3);
      const struct mvcc_event *e = &f.events[i];
      CHECK_EQ_INT(e->type, MVCC_EVENT_PUT);
      CHECK_EQ_INT(e->kv.mod_revision, rare_revs[got]);
      CHECK_EQ_INT(e->kv.version, (int64_t)got + 1);
      CHECK_EQ_INT(e->has_prev_kv, got > 0);
      if (got > 0) {
        CHECK_EQ_INT(e->prev_kv.mod_revision, rare_revs[got - 1]);
      }
      got++;
    }
    bool caught_up = f.caught_up;
    CHECK(!caught_up || got == 3);
    fr.start_revision = f.next_revision;
    fr.start_sub = f.next_sub;
    mvcc_feed_free(&f);
    if (caught_up) {
      break;
    }
  }
  CHECK_EQ_INT(got, 3);
  CHECK(calls >= 2); /* more history than one call may scan */

  /* One event per call through the 128 changes of the last busy revision. */
  memset(&fr, 0, sizeof fr);
  fr.key = mk_bytes((const uint8_t *)"busy/", 5);
  fr.range_end = mk_bytes((const uint8_t *)"busy0", 5);
  fr.start_revision = busy_rev;
  fr.max_events = 1;
  for (int i = 0; i < PUTS; i++) {
    struct mvcc_feed f;
    memset(&f, 0, sizeof f);
    CHECK_OK(mvcc_changes(s, &fr, &f));
    CHECK_EQ_INT(f.n_events, 1);
    CHECK_EQ_INT(f.events[0].kv.mod_revision, busy_rev);
    CHECK(bytes_eq(f.events[0].kv.key, (const uint8_t *)names[i], strlen(names[i])));
    fr.start_revision = f.next_revision;
    fr.start_sub = f.next_sub;
    bool caught_up = f.caught_up;
    mvcc_feed_free(&f);
    CHECK(!caught_up || i == PUTS - 1);
  }
  struct mvcc_feed f;
  memset(&f, 0, sizeof f);
  CHECK_OK(mvcc_changes(s, &fr, &f));
  CHECK_EQ_INT(f.n_events, 0);
  CHECK(f.caught_up);
  mvcc_feed_free(&f);

  /* max_events above the cap is capped. */
  fr.start_revision = 1;
  fr.start_sub = 0;
  fr.max_events = SIZE_MAX;
  memset(&f, 0, sizeof f);
  CHECK_OK(mvcc_changes(s, &fr, &f));
  CHECK(f.n_events > 0 && f.n_events <= MVCC_FEED_EVENTS_MAX);
  CHECK(!f.caught_up);
  mvcc_feed_free(&f);

  mvcc_close(s);
  test_rmdir(dir);
}

/* One batch bigger than the initial LMDB map (64 MiB; values are stored
 * twice while latest): the engine grows the map and retries the whole batch.
 * Results and contents must be those of a single application, and a txn and
 * a delete in the same batch see the earlier ops. */
static void test_big_batch(void) {
  char *dir = test_tmpdir("model-big");
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  enum { N = 40 };
  const size_t vlen = MVCC_MAX_VALUE_BYTES_DEFAULT;
  uint8_t *buf = malloc(vlen + N);
  CHECK(buf != NULL);
  for (size_t i = 0; i < vlen + N; i++) {
    buf[i] = (uint8_t)(i * 131 + i / 7);
  }
  static char names[N][16];
  struct mvcc_op ops[N + 2];
  struct mvcc_result res[N + 2];
  memset(ops, 0, sizeof ops);
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "big/%02d", i);
    ops[i].type = MVCC_OP_PUT;
    ops[i].u.put.key = mk_bytes((const uint8_t *)names[i], strlen(names[i]));
    ops[i].u.put.value = mk_bytes(buf + i, vlen); /* a different value each */
    ops[i].u.put.prev_kv = i == N - 1;
    ops[i].raft_index = (uint64_t)i + 1;
  }
  /* A txn that compares the first put and rewrites key 0 with key 1's value,
   * then a delete of keys 2..9 with prev_kv. */
  struct mvcc_compare cmp;
  memset(&cmp, 0, sizeof cmp);
  cmp.target = MVCC_TARGET_MOD;
  cmp.result = MVCC_CMP_EQUAL;
  cmp.key = ops[0].u.put.key;
  cmp.number = 2;
  struct mvcc_request_op tput;
  memset(&tput, 0, sizeof tput);
  tput.type = MVCC_REQUEST_PUT;
  tput.u.put.key = ops[0].u.put.key;
  tput.u.put.value = ops[1].u.put.value;
  tput.u.put.prev_kv = true;
  ops[N].type = MVCC_OP_TXN;
  ops[N].u.txn.compares = &cmp;
  ops[N].u.txn.n_compares = 1;
  ops[N].u.txn.success = &tput;
  ops[N].u.txn.n_success = 1;
  ops[N].raft_index = N + 1;
  ops[N + 1].type = MVCC_OP_DELETE;
  ops[N + 1].u.del.key = mk_bytes((const uint8_t *)"big/02", 6);
  ops[N + 1].u.del.range_end = mk_bytes((const uint8_t *)"big/10", 6);
  ops[N + 1].u.del.prev_kv = true;
  ops[N + 1].raft_index = N + 2;
  CHECK_OK(mvcc_apply(s, ops, N + 2, res));
  for (int i = 0; i < N; i++) {
    CHECK_OK(res[i].err);
    CHECK_EQ_INT(res[i].u.put.revision, i + 2);
    CHECK_EQ_INT(res[i].u.put.has_prev_kv, 0);
  }
  CHECK_OK(res[N].err);
  CHECK(res[N].u.txn.succeeded);
  CHECK_EQ_INT(res[N].u.txn.revision, N + 2);
  CHECK(res[N].u.txn.responses[0].u.put.has_prev_kv);
  CHECK(bytes_eq(res[N].u.txn.responses[0].u.put.prev_kv.value, buf, vlen));
  CHECK_OK(res[N + 1].err);
  CHECK_EQ_INT(res[N + 1].u.del.deleted, 8);
  CHECK_EQ_INT(res[N + 1].u.del.n_prev_kvs, 8);
  CHECK_EQ_INT(res[N + 1].u.del.revision, N + 3);
  for (int i = 0; i < 8; i++) {
    CHECK(bytes_eq(res[N + 1].u.del.prev_kvs[i].value, buf + 2 + i, vlen));
    CHECK_EQ_INT(res[N + 1].u.del.prev_kvs[i].mod_revision, i + 4);
  }
  for (int i = 0; i < N + 2; i++) {
    mvcc_result_free(&res[i]);
  }
  CHECK_EQ_INT(mvcc_current_revision(s), N + 3);
  CHECK_EQ_INT(mvcc_applied_index(s), N + 2);
  for (int round = 0; round < 2; round++) {
    struct mvcc_range_req rq;
    memset(&rq, 0, sizeof rq);
    rq.key = mk_bytes((const uint8_t *)"big/", 4);
    rq.range_end = mk_bytes((const uint8_t *)"big0", 4);
    struct mvcc_result rr;
    CHECK_OK(mvcc_range(s, &rq, &rr));
    CHECK_EQ_INT(rr.u.range.n_kvs, N - 8);
    for (size_t i = 0; i < rr.u.range.n_kvs; i++) {
      const struct mvcc_kv *kv = &rr.u.range.kvs[i];
      int k = i < 2 ? (int)i : (int)i + 8;
      CHECK(bytes_eq(kv->key, (const uint8_t *)names[k], strlen(names[k])));
      CHECK(bytes_eq(kv->value, buf + (k == 0 ? 1 : k), vlen));
      CHECK_EQ_INT(kv->version, k == 0 ? 2 : 1);
    }
    mvcc_result_free(&rr);
    mvcc_close(s);
    CHECK_OK(mvcc_open(dir, NULL, &s));
  }
  mvcc_close(s);
  free(buf);
  test_rmdir(dir);
}

int main(void) {
  test_seed("test_model");
  trace_on = getenv("CAIRN_MODEL_TRACE") != NULL;
  sort_keys();
  TEST_RUN(test_model_basics);
  TEST_RUN(test_feed_scan_limit);
  TEST_RUN(test_big_batch);
  TEST_RUN(test_model_random);
  return 0;
}
