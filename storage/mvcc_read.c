/* storage/mvcc_read.c: ranges, historical resolution, the change feed and
 * lease reads. */
#include <stdlib.h>
#include <string.h>

#include "storage/mvcc_int.h"

/* ---- read views ----------------------------------------------------------- */

int ctx_read_begin(mvcc_store *s, struct ctx *c) {
  memset(c, 0, sizeof *c);
  int rc;
  if (s->rtxn != NULL && !s->rtxn_live) {
    rc = mdb_txn_renew(s->rtxn);
    if (rc != 0) {
      mdb_txn_abort(s->rtxn);
      s->rtxn = NULL;
    } else {
      s->rtxn_live = true;
    }
  }
  if (s->rtxn == NULL) {
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
    if (rc != 0) {
      s->rtxn = NULL;
      return lmdb_err(rc, "begin read");
    }
    s->rtxn_live = true;
  }
  c->s = s;
  c->txn = s->rtxn;
  c->rev = s->rev;
  c->compact_rev = s->compact_rev;
  return 0;
}

void ctx_read_end(mvcc_store *s, struct ctx *c) {
  CAIRN_ASSERT(c->txn == s->rtxn && s->rtxn_live);
  c->txn = NULL; /* the transaction stays live until the next write */
}

/* ---- key ranges ----------------------------------------------------------- */

static int bytes_cmp(const void *a, size_t alen, const void *b, size_t blen) {
  size_t n = alen < blen ? alen : blen;
  int r = n ? memcmp(a, b, n) : 0;
  if (r != 0) {
    return r;
  }
  return alen < blen ? -1 : (alen > blen ? 1 : 0);
}

static bool end_is_all(struct mvcc_bytes end) {
  return end.len == 1 && end.data[0] == 0;
}

bool in_range(const MDB_val *k, struct mvcc_bytes key, struct mvcc_bytes end) {
  int lo = bytes_cmp(k->mv_data, k->mv_size, key.data, key.len);
  if (end.len == 0) {
    return lo == 0;
  }
  if (lo < 0) {
    return false;
  }
  if (end_is_all(end)) {
    return true;
  }
  return bytes_cmp(k->mv_data, k->mv_size, end.data, end.len) < 0;
}

bool past_end(const MDB_val *k, struct mvcc_bytes key, struct mvcc_bytes end) {
  if (end.len == 0) {
    return bytes_cmp(k->mv_data, k->mv_size, key.data, key.len) > 0;
  }
  if (end_is_all(end)) {
    return false;
  }
  return bytes_cmp(k->mv_data, k->mv_size, end.data, end.len) >= 0;
}

int cursor_seek(MDB_cursor *cur, struct mvcc_bytes key, MDB_val *k, MDB_val *v) {
  /* LMDB refuses search keys longer than its key limit; no stored key is that
   * long, so seek by the limit's prefix and skip what sorts before key. */
  size_t n = key.len > MVCC_MAX_KEY_BYTES ? MVCC_MAX_KEY_BYTES : key.len;
  k->mv_size = n;
  k->mv_data = (void *)key.data;
  int rc = n == 0 ? mdb_cursor_get(cur, k, v, MDB_FIRST) : mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
  while (rc == 0 && bytes_cmp(k->mv_data, k->mv_size, key.data, key.len) < 0) {
    rc = mdb_cursor_get(cur, k, v, MDB_NEXT);
  }
  return rc;
}

/* ---- versions ------------------------------------------------------------- */

int range_revision(const struct ctx *c, int64_t requested, int64_t *rev) {
  *rev = requested <= 0 ? c->rev : requested;
  if (*rev > c->rev) {
    return CAIRN_EFUTURE_REV;
  }
  if (*rev < c->compact_rev) {
    return CAIRN_ECOMPACTED;
  }
  return 0;
}

int resolve_at(struct ctx *c, const MDB_val *kvdata, int64_t rev, struct rec *out) {
  int rc = rec_decode(kvdata, false, out);
  if (rc != 0) {
    return rc;
  }
  /* Walk the key's versions back from the latest until one is at or below
   * rev. Versions superseded at or below the compacted revision are gone;
   * reads never need them because rev >= compacted revision. */
  for (;;) {
    if (out->h.mod_rev <= rev) {
      return out->h.type == REC_PUT ? 1 : 0;
    }
    if (out->h.prev_rev == 0) {
      return 0;
    }
    uint8_t hk[HIST_KEY_LEN];
    hist_key(hk, (struct pos){out->h.prev_rev, out->h.prev_sub});
    MDB_val k = {HIST_KEY_LEN, hk}, v;
    int mrc = mdb_get(c->txn, c->s->dbi_hist, &k, &v);
    if (mrc == MDB_NOTFOUND) {
      return 0; /* compacted away: the key did not exist at rev */
    }
    if (mrc != 0) {
      return lmdb_err(mrc, "history get");
    }
    rc = rec_decode(&v, true, out);
    if (rc != 0) {
      return rc;
    }
    /* The record must be the one the pointer names; with rec_decode's
     * prev_rev < mod_rev this makes every step go strictly back. */
    if (out->h.mod_rev != (int64_t)hist_pos(&k).rev || out->h.mod_sub != hist_pos(&k).sub) {
      return CAIRN_ECORRUPT;
    }
  }
}

int get_latest(struct ctx *c, struct mvcc_bytes key, struct rec *out) {
  if (key.len == 0 || key.len > MVCC_MAX_KEY_BYTES) {
    return 0;
  }
  MDB_val k = {key.len, (void *)key.data}, v;
  int mrc = mdb_get(c->txn, c->s->dbi_kv, &k, &v);
  if (mrc == MDB_NOTFOUND) {
    return 0;
  }
  if (mrc != 0) {
    return lmdb_err(mrc, "get");
  }
  int rc = rec_decode(&v, false, out);
  if (rc != 0) {
    return rc;
  }
  return out->h.type == REC_PUT ? 1 : 0;
}

int kv_copy(struct mvcc_arena **a, const struct rec *r, struct mvcc_bytes key, bool keys_only,
            struct mvcc_kv *out) {
  out->key.data = arena_dup(a, key.data, key.len);
  out->key.len = key.len;
  out->value.data = NULL;
  out->value.len = 0;
  if (!keys_only && r->h.value_len > 0) {
    out->value.data = arena_dup(a, r->value, r->h.value_len);
    out->value.len = r->h.value_len;
    if (out->value.data == NULL) {
      return CAIRN_ENOMEM;
    }
  }
  out->create_revision = r->h.create_rev;
  out->mod_revision = r->h.mod_rev;
  out->version = r->h.version;
  out->lease = r->h.lease;
  return out->key.data == NULL ? CAIRN_ENOMEM : 0;
}

/* ---- ranges --------------------------------------------------------------- */

struct kv_vec {
  struct mvcc_kv *v;
  size_t n, cap;
};

static int kv_vec_push(struct kv_vec *vec, struct mvcc_kv **slot) {
  if (vec->n == vec->cap) {
    size_t nc = vec->cap ? vec->cap * 2 : 16;
    struct mvcc_kv *nv = realloc(vec->v, nc * sizeof *nv);
    if (nv == NULL) {
      return CAIRN_ENOMEM;
    }
    vec->v = nv;
    vec->cap = nc;
  }
  *slot = &vec->v[vec->n++];
  return 0;
}

static int cmp_i64(int64_t a, int64_t b) {
  return a < b ? -1 : (a > b ? 1 : 0);
}

static int kv_sort_cmp(const void *pa, const void *pb, void *arg) {
  const struct mvcc_kv *a = pa, *b = pb;
  const int *how = arg; /* [target, descend] */
  int r = 0;
  switch (how[0]) {
    case MVCC_SORT_VERSION:
      r = cmp_i64(a->version, b->version);
      break;
    case MVCC_SORT_CREATE:
      r = cmp_i64(a->create_revision, b->create_revision);
      break;
    case MVCC_SORT_MOD:
      r = cmp_i64(a->mod_revision, b->mod_revision);
      break;
    case MVCC_SORT_VALUE:
      r = bytes_cmp(a->value.data, a->value.len, b->value.data, b->value.len);
      break;
    default:
      break;
  }
  if (how[1]) {
    r = -r;
  }
  if (r == 0) {
    /* Ties keep key order; keys are unique. For a KEY sort this is the sort. */
    r = bytes_cmp(a->key.data, a->key.len, b->key.data, b->key.len);
    if (how[0] == MVCC_SORT_KEY && how[1]) {
      r = -r;
    }
  }
  return r;
}

static bool kv_filtered_out(const struct mvcc_range_req *req, const struct mvcc_kv *kv) {
  return (req->max_mod_revision != 0 && kv->mod_revision > req->max_mod_revision) ||
         (req->min_mod_revision != 0 && kv->mod_revision < req->min_mod_revision) ||
         (req->max_create_revision != 0 && kv->create_revision > req->max_create_revision) ||
         (req->min_create_revision != 0 && kv->create_revision < req->min_create_revision);
}

int range_exec(struct ctx *c, const struct mvcc_range_req *req, struct mvcc_arena **arena,
               struct mvcc_range_resp *out) {
  memset(out, 0, sizeof *out);
  int64_t latest = c->rev;
  out->revision = latest;
  int64_t rev;
  int rrc = range_revision(c, req->revision, &rev);
  if (rrc != 0) {
    return rrc;
  }
  bool filters = req->min_mod_revision != 0 || req->max_mod_revision != 0 ||
                 req->min_create_revision != 0 || req->max_create_revision != 0;
  /* As etcd: with a sort order or filters everything is fetched, then pruned,
   * sorted and truncated; otherwise limit + 1 tells whether there is more. */
  int64_t fetch = (req->sort_order != MVCC_SORT_NONE || filters) ? 0
                  : req->limit > 0                               ? req->limit + 1
                                                                 : 0;
  bool keep_values = !req->keys_only || req->sort_target == MVCC_SORT_VALUE;

  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c->txn, c->s->dbi_kv, &cur);
  if (mrc != 0) {
    return lmdb_err(mrc, "cursor");
  }
  struct kv_vec vec = {0};
  int rc = 0;
  int64_t count = 0;
  MDB_val k, v;
  mrc = cursor_seek(cur, req->key, &k, &v);
  while (mrc == 0 && !past_end(&k, req->key, req->range_end)) {
    struct rec r;
    int found;
    if (rev == latest) {
      rc = rec_decode(&v, false, &r);
      if (rc != 0) {
        break;
      }
      found = r.h.type == REC_PUT;
    } else {
      found = resolve_at(c, &v, rev, &r);
      if (found < 0) {
        rc = found;
        break;
      }
    }
    if (found) {
      count++;
      if (!req->count_only && (fetch == 0 || (int64_t)vec.n < fetch)) {
        struct mvcc_kv *slot;
        rc = kv_vec_push(&vec, &slot);
        if (rc == 0) {
          rc = kv_copy(arena, &r, (struct mvcc_bytes){k.mv_data, k.mv_size}, !keep_values, slot);
        }
        if (rc != 0) {
          break;
        }
      }
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = lmdb_err(mrc, "range");
  }
  if (rc != 0) {
    free(vec.v);
    return rc;
  }
  out->count = count;
  if (filters) {
    size_t w = 0;
    for (size_t i = 0; i < vec.n; i++) {
      if (!kv_filtered_out(req, &vec.v[i])) {
        vec.v[w++] = vec.v[i];
      }
    }
    vec.n = w;
  }
  enum mvcc_sort_order order = req->sort_order;
  if (req->sort_target != MVCC_SORT_KEY && order == MVCC_SORT_NONE) {
    order = MVCC_SORT_ASCEND;
  }
  if (order != MVCC_SORT_NONE && vec.n > 1 &&
      !(req->sort_target == MVCC_SORT_KEY && order == MVCC_SORT_ASCEND)) {
    int how[2] = {(int)req->sort_target, order == MVCC_SORT_DESCEND};
    qsort_r(vec.v, vec.n, sizeof *vec.v, kv_sort_cmp, how);
  }
  if (req->limit > 0 && (int64_t)vec.n > req->limit) {
    vec.n = (size_t)req->limit;
    out->more = true;
  }
  if (req->keys_only) {
    for (size_t i = 0; i < vec.n; i++) {
      vec.v[i].value.data = NULL;
      vec.v[i].value.len = 0;
    }
  }
  if (vec.n > 0) {
    out->kvs = arena_dup(arena, vec.v, vec.n * sizeof *vec.v);
    if (out->kvs == NULL) {
      free(vec.v);
      return CAIRN_ENOMEM;
    }
    out->n_kvs = vec.n;
  }
  free(vec.v);
  return 0;
}

/* One key at the latest or an older revision: a single lookup, a single
 * allocation. Same results as range_exec. */
static int range_one(struct ctx *c, const struct mvcc_range_req *req, struct mvcc_arena **arena,
                     struct mvcc_range_resp *out) {
  memset(out, 0, sizeof *out);
  int64_t latest = c->rev;
  out->revision = latest;
  int64_t rev;
  int rrc = range_revision(c, req->revision, &rev);
  if (rrc != 0) {
    return rrc;
  }
  if (req->key.len > MVCC_MAX_KEY_BYTES) {
    return 0;
  }
  MDB_val k = {req->key.len, (void *)req->key.data}, v;
  int mrc = mdb_get(c->txn, c->s->dbi_kv, &k, &v);
  if (mrc == MDB_NOTFOUND) {
    return 0;
  }
  if (mrc != 0) {
    return lmdb_err(mrc, "get");
  }
  struct rec r;
  int found = resolve_at(c, &v, rev, &r);
  if (found <= 0) {
    return found;
  }
  out->count = 1;
  if (req->count_only) {
    return 0;
  }
  struct mvcc_kv kv = {.create_revision = r.h.create_rev,
                       .mod_revision = r.h.mod_rev,
                       .version = r.h.version,
                       .lease = r.h.lease};
  if (kv_filtered_out(req, &kv)) {
    return 0;
  }
  size_t vlen = req->keys_only ? 0 : r.h.value_len;
  uint8_t *mem = arena_alloc(arena, sizeof kv + req->key.len + vlen);
  if (mem == NULL) {
    return CAIRN_ENOMEM;
  }
  memcpy(mem + sizeof kv, req->key.data, req->key.len);
  kv.key = (struct mvcc_bytes){mem + sizeof kv, req->key.len};
  if (vlen > 0) {
    memcpy(mem + sizeof kv + req->key.len, r.value, vlen);
    kv.value = (struct mvcc_bytes){mem + sizeof kv + req->key.len, vlen};
  }
  memcpy(mem, &kv, sizeof kv);
  out->kvs = (struct mvcc_kv *)(void *)mem;
  out->n_kvs = 1;
  return 0;
}

int mvcc_range(mvcc_store *s, const struct mvcc_range_req *req, struct mvcc_result *out) {
  memset(out, 0, sizeof *out);
  out->type = MVCC_OP_RANGE;
  if (req->key.len == 0) {
    out->err = CAIRN_EEMPTY_KEY;
    return out->err;
  }
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc == 0) {
    rc = req->range_end.len == 0 ? range_one(&c, req, &out->arena, &out->u.range)
                                 : range_exec(&c, req, &out->arena, &out->u.range);
    ctx_read_end(s, &c);
  }
  if (rc != 0) {
    int64_t rev = s->rev;
    mvcc_result_free(out);
    out->type = MVCC_OP_RANGE;
    out->u.range.revision = rev;
  }
  out->err = rc;
  return rc;
}

/* ---- change feed ---------------------------------------------------------- */

int mvcc_changes(mvcc_store *s, const struct mvcc_feed_req *req, struct mvcc_feed *out) {
  memset(out, 0, sizeof *out);
  if (req->start_revision < 1) {
    return CAIRN_EINVAL;
  }
  if (req->start_revision < s->compact_rev) {
    return CAIRN_ECOMPACTED;
  }
  size_t max = req->max_events;
  if (max == 0 || max > MVCC_FEED_EVENTS_MAX) {
    max = MVCC_FEED_EVENTS_MAX;
  }
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  out->current_revision = c.rev;
  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c.txn, s->dbi_hist, &cur);
  if (mrc != 0) {
    ctx_read_end(s, &c);
    return lmdb_err(mrc, "cursor");
  }
  struct mvcc_event *ev = NULL;
  size_t n = 0, cap = 0, scanned = 0;
  uint8_t hk[HIST_KEY_LEN];
  hist_key(hk, (struct pos){req->start_revision, req->start_sub});
  MDB_val k = {HIST_KEY_LEN, hk}, v;
  mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  out->caught_up = false;
  for (;;) {
    if (mrc == MDB_NOTFOUND) {
      out->caught_up = true;
      out->next_revision = c.rev + 1;
      out->next_sub = 0;
      break;
    }
    if (mrc != 0) {
      rc = lmdb_err(mrc, "feed");
      break;
    }
    struct pos p = hist_pos(&k);
    if (n == max || scanned == MVCC_FEED_SCAN_MAX) {
      out->next_revision = p.rev;
      out->next_sub = p.sub;
      break;
    }
    scanned++;
    struct rec r;
    if ((rc = rec_decode(&v, true, &r)) != 0) {
      break;
    }
    MDB_val key = {r.h.key_len, (void *)r.key};
    if (in_range(&key, req->key, req->range_end)) {
      if (n == cap) {
        size_t nc = cap ? cap * 2 : 64;
        struct mvcc_event *ne = realloc(ev, nc * sizeof *ne);
        if (ne == NULL) {
          rc = CAIRN_ENOMEM;
          break;
        }
        ev = ne;
        cap = nc;
      }
      struct mvcc_event *e = &ev[n++];
      memset(e, 0, sizeof *e);
      struct mvcc_bytes kb = {r.key, r.h.key_len};
      if (r.h.type == REC_PUT) {
        e->type = MVCC_EVENT_PUT;
        rc = kv_copy(&out->arena, &r, kb, false, &e->kv);
      } else {
        e->type = MVCC_EVENT_DELETE;
        e->kv.key.data = arena_dup(&out->arena, r.key, r.h.key_len);
        e->kv.key.len = r.h.key_len;
        e->kv.mod_revision = r.h.mod_rev;
        rc = e->kv.key.data ? 0 : CAIRN_ENOMEM;
      }
      if (rc == 0 && req->prev_kv && r.h.prev_rev != 0) {
        uint8_t pk[HIST_KEY_LEN];
        hist_key(pk, (struct pos){r.h.prev_rev, r.h.prev_sub});
        MDB_val pkv = {HIST_KEY_LEN, pk}, pv;
        int prc = mdb_get(c.txn, s->dbi_hist, &pkv, &pv);
        if (prc == 0) {
          struct rec pr;
          rc = rec_decode(&pv, true, &pr);
          if (rc == 0 && pr.h.type == REC_PUT) {
            e->has_prev_kv = true;
            rc = kv_copy(&out->arena, &pr, kb, false, &e->prev_kv);
          }
        } else if (prc != MDB_NOTFOUND) {
          rc = lmdb_err(prc, "feed prev");
        }
      }
      if (rc != 0) {
        break;
      }
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  ctx_read_end(s, &c);
  if (rc == 0 && n > 0) {
    out->events = arena_dup(&out->arena, ev, n * sizeof *ev);
    rc = out->events ? 0 : CAIRN_ENOMEM;
    out->n_events = n;
  }
  free(ev);
  if (rc != 0) {
    mvcc_feed_free(out);
  }
  return rc;
}

/* ---- leases --------------------------------------------------------------- */

static int lease_decode(const MDB_val *v, int64_t id, struct mvcc_lease *out) {
  struct lease_rec lr;
  if (v->mv_size != sizeof lr) {
    return CAIRN_ECORRUPT;
  }
  memcpy(&lr, v->mv_data, sizeof lr);
  out->id = id;
  out->ttl = lr.ttl;
  out->granted_ms = lr.granted_ms;
  out->remaining_ms = lr.remaining_ms;
  return 0;
}

int mvcc_lease_get(mvcc_store *s, int64_t id, struct mvcc_lease *out) {
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v;
  int mrc = mdb_get(c.txn, s->dbi_lease, &k, &v);
  if (mrc == MDB_NOTFOUND) {
    rc = CAIRN_ELEASE_NOT_FOUND;
  } else if (mrc != 0) {
    rc = lmdb_err(mrc, "lease get");
  } else {
    rc = lease_decode(&v, id, out);
  }
  ctx_read_end(s, &c);
  return rc;
}

int mvcc_lease_list(mvcc_store *s, struct mvcc_lease **out, size_t *n) {
  *out = NULL;
  *n = 0;
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  MDB_stat st;
  MDB_cursor *cur = NULL;
  int mrc = mdb_stat(c.txn, s->dbi_lease, &st);
  if (mrc == 0) {
    mrc = mdb_cursor_open(c.txn, s->dbi_lease, &cur);
  }
  if (mrc != 0) {
    ctx_read_end(s, &c);
    return lmdb_err(mrc, "lease list");
  }
  struct mvcc_lease *v = calloc(st.ms_entries ? st.ms_entries : 1, sizeof *v);
  if (v == NULL) {
    rc = CAIRN_ENOMEM;
  }
  MDB_val k, d;
  size_t i = 0;
  for (mrc = mdb_cursor_get(cur, &k, &d, MDB_FIRST); rc == 0 && mrc == 0 && i < st.ms_entries;
       mrc = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) {
    if (k.mv_size != 8) {
      rc = CAIRN_ECORRUPT;
      break;
    }
    uint64_t id = 0;
    for (int j = 0; j < 8; j++) {
      id = (id << 8) | ((const uint8_t *)k.mv_data)[j];
    }
    rc = lease_decode(&d, (int64_t)id, &v[i++]);
  }
  mdb_cursor_close(cur);
  ctx_read_end(s, &c);
  if (rc != 0) {
    free(v);
    return rc;
  }
  *out = v;
  *n = i;
  return 0;
}

int mvcc_lease_keys(mvcc_store *s, int64_t id, struct mvcc_result *out) {
  memset(out, 0, sizeof *out);
  out->type = MVCC_OP_RANGE;
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  out->u.range.revision = c.rev;
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v;
  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c.txn, s->dbi_lease_keys, &cur);
  if (mrc != 0) {
    ctx_read_end(s, &c);
    return lmdb_err(mrc, "lease keys");
  }
  struct kv_vec vec = {0};
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); mrc == 0 && rc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
    struct mvcc_kv *slot;
    rc = kv_vec_push(&vec, &slot);
    if (rc == 0) {
      memset(slot, 0, sizeof *slot);
      slot->key.data = arena_dup(&out->arena, v.mv_data, v.mv_size);
      slot->key.len = v.mv_size;
      slot->lease = id;
      rc = slot->key.data ? 0 : CAIRN_ENOMEM;
    }
  }
  mdb_cursor_close(cur);
  ctx_read_end(s, &c);
  if (rc == 0 && vec.n > 0) {
    out->u.range.kvs = arena_dup(&out->arena, vec.v, vec.n * sizeof *vec.v);
    out->u.range.n_kvs = vec.n;
    out->u.range.count = (int64_t)vec.n;
    rc = out->u.range.kvs ? 0 : CAIRN_ENOMEM;
  }
  free(vec.v);
  if (rc != 0) {
    mvcc_result_free(out);
  }
  out->err = rc;
  return rc;
}
