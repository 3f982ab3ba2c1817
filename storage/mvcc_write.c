/* storage/mvcc_write.c: puts, deletes, transactions, compaction requests,
 * leases and meta inside a batch. Every op first checks everything that can
 * fail for it, then writes: a failed op has changed nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/mvcc_int.h"

/* Quota estimate of what a put adds: record in kv and hist, both headers,
 * the history key and a lease attachment. */
static uint64_t put_cost(size_t key_len, size_t value_len) {
  return 2u * (sizeof(struct rec_hdr) + key_len + value_len) + HIST_KEY_LEN + key_len + 64u;
}

static int quota_take(struct ctx *c, uint64_t cost) {
  if (c->base_size + c->batch_bytes + cost > c->s->opts.quota_bytes) {
    return CAIRN_ENOSPACE;
  }
  c->batch_bytes += cost;
  return 0;
}

static int lease_exists(struct ctx *c, int64_t id, bool *exists) {
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v;
  int mrc = mdb_get(c->txn, c->s->dbi_lease, &k, &v);
  if (mrc != 0 && mrc != MDB_NOTFOUND) {
    return lmdb_err(mrc, "lease get");
  }
  *exists = mrc == 0;
  return 0;
}

static int hist_append(struct ctx *c, const struct rec_hdr *h, const void *key, const void *value) {
  uint8_t hk[HIST_KEY_LEN];
  hist_key(hk, (struct pos){h->mod_rev, h->mod_sub});
  MDB_val k = {HIST_KEY_LEN, hk}, v = {rec_size(h), NULL};
  /* Appending through the batch's cursor skips the search for the end. */
  int mrc = mdb_cursor_put(c->hist_cur, &k, &v, MDB_APPEND | MDB_RESERVE);
  if (mrc == MDB_KEYEXIST) {
    /* History positions only grow; an existing one means a broken store. */
    return CAIRN_ECORRUPT;
  }
  if (mrc != 0) {
    return lmdb_err(mrc, "history append");
  }
  rec_encode(v.mv_data, h, key, value);
  return 0;
}

static int lease_attach(struct ctx *c, int64_t id, struct mvcc_bytes key, bool attach) {
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v = {key.len, (void *)key.data};
  int mrc = attach ? mdb_put(c->txn, c->s->dbi_lease_keys, &k, &v, MDB_NODUPDATA)
                   : mdb_del(c->txn, c->s->dbi_lease_keys, &k, &v);
  if (mrc == MDB_KEYEXIST || mrc == MDB_NOTFOUND) {
    return 0;
  }
  return lmdb_err(mrc, "lease attach");
}

/* Writes a new version of key. value must not point into LMDB memory. */
static int put_write(struct ctx *c, struct mvcc_bytes key, struct mvcc_bytes value, int64_t lease) {
  MDB_val k = {key.len, (void *)key.data}, old;
  struct rec_hdr h;
  memset(&h, 0, sizeof h);
  h.type = REC_PUT;
  h.mod_rev = c->write_rev;
  h.mod_sub = c->sub++;
  h.lease = lease;
  h.value_len = (uint32_t)value.len;
  h.create_rev = c->write_rev;
  h.version = 1;
  int64_t old_lease = 0;
  /* One search: the cursor stays on the old record and the put replaces it
   * in place. */
  int mrc = mdb_cursor_get(c->kv_cur, &k, &old, MDB_SET_KEY);
  bool exists = mrc == 0;
  if (exists) {
    struct rec o;
    int rc = rec_decode(&old, false, &o);
    if (rc != 0) {
      return rc;
    }
    if (o.h.type == REC_PUT) {
      h.create_rev = o.h.create_rev;
      h.version = o.h.version + 1;
      old_lease = o.h.lease;
    }
    if (o.h.mod_rev >= h.mod_rev) {
      return CAIRN_ECORRUPT; /* a version from the future: a broken record */
    }
    h.prev_rev = o.h.mod_rev;
    h.prev_sub = o.h.mod_sub;
  } else if (mrc != MDB_NOTFOUND) {
    return lmdb_err(mrc, "get");
  }
  h.key_len = (uint32_t)key.len;
  int rc = hist_append(c, &h, key.data, value.data);
  if (rc != 0) {
    return rc;
  }
  h.key_len = 0;
  MDB_val v = {rec_size(&h), NULL};
  k.mv_size = key.len;
  k.mv_data = (void *)key.data;
  mrc = mdb_cursor_put(c->kv_cur, &k, &v, exists ? MDB_CURRENT | MDB_RESERVE : MDB_RESERVE);
  if (mrc != 0) {
    return lmdb_err(mrc, "put");
  }
  rec_encode(v.mv_data, &h, NULL, value.data);
  if (old_lease != lease) {
    if (old_lease != 0 && (rc = lease_attach(c, old_lease, key, false)) != 0) {
      return rc;
    }
    if (lease != 0 && (rc = lease_attach(c, lease, key, true)) != 0) {
      return rc;
    }
  }
  return 0;
}

/* Checks a put against the current state: ignore_value/ignore_lease need the
 * key, a lease must exist. Returns its quota cost in *cost. */
static int put_check_lease(struct ctx *c, const struct mvcc_put_req *p) {
  if (p->lease == 0) {
    return 0;
  }
  bool ok = false;
  int rc = lease_exists(c, p->lease, &ok);
  if (rc != 0) {
    return rc;
  }
  return ok ? 0 : CAIRN_ELEASE_NOT_FOUND;
}

/* lease_first: a plain Put checks its lease before the key (etcd's Put); a
 * put inside a Txn checks the key first (etcd's checkRequestPut). */
static int put_check(struct ctx *c, const struct mvcc_put_req *p, bool lease_first,
                     uint64_t *cost) {
  struct rec r;
  size_t value_len = p->value.len;
  if (lease_first) {
    int rc = put_check_lease(c, p);
    if (rc != 0) {
      return rc;
    }
  }
  if (p->ignore_value || p->ignore_lease) {
    int found = get_latest(c, p->key, &r);
    if (found < 0) {
      return found;
    }
    if (!found) {
      return CAIRN_EKEY_NOT_FOUND;
    }
    if (p->ignore_value) {
      value_len = r.h.value_len;
    }
  }
  if (!lease_first) {
    int rc = put_check_lease(c, p);
    if (rc != 0) {
      return rc;
    }
  }
  *cost += put_cost(p->key.len, value_len);
  return 0;
}

static int put_apply(struct ctx *c, const struct mvcc_put_req *p, struct mvcc_put_resp *out) {
  memset(out, 0, sizeof *out);
  struct mvcc_bytes value = p->value;
  int64_t lease = p->lease;
  if (p->prev_kv || p->ignore_value || p->ignore_lease) {
    struct rec r;
    int found = get_latest(c, p->key, &r);
    if (found < 0) {
      return found;
    }
    CAIRN_ASSERT(found || !(p->ignore_value || p->ignore_lease)); /* put_check ran */
    if (found) {
      struct mvcc_kv prev;
      /* Copies before the write: r points into pages the write may change. */
      int rc = kv_copy(c->arena, &r, p->key, false, &prev);
      if (rc != 0) {
        return rc;
      }
      if (p->prev_kv) {
        out->has_prev_kv = true;
        out->prev_kv = prev;
      }
      if (p->ignore_value) {
        value = prev.value;
      }
      if (p->ignore_lease) {
        lease = prev.lease;
      }
    }
  }
  int rc = put_write(c, p->key, value, lease);
  out->revision = c->write_rev;
  return rc;
}

/* Deletes every live key in the range at write_rev. */
static int delete_apply(struct ctx *c, const struct mvcc_delete_req *d,
                        struct mvcc_delete_resp *out) {
  memset(out, 0, sizeof *out);
  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c->txn, c->s->dbi_kv, &cur);
  if (mrc != 0) {
    return lmdb_err(mrc, "cursor");
  }
  struct mvcc_kv *prev = NULL;
  size_t nprev = 0, cap = 0;
  int rc = 0;
  MDB_val k, v;
  uint8_t keybuf[MVCC_MAX_KEY_BYTES];
  mrc = cursor_seek(cur, d->key, &k, &v);
  while (mrc == 0 && !past_end(&k, d->key, d->range_end)) {
    struct rec o;
    if ((rc = rec_decode(&v, false, &o)) != 0) {
      break;
    }
    if (o.h.type == REC_PUT) {
      CAIRN_ASSERT(k.mv_size <= sizeof keybuf);
      memcpy(keybuf, k.mv_data, k.mv_size);
      struct mvcc_bytes key = {keybuf, k.mv_size};
      if (d->prev_kv) {
        if (nprev == cap) {
          size_t nc = cap ? cap * 2 : 16;
          struct mvcc_kv *np = realloc(prev, nc * sizeof *np);
          if (np == NULL) {
            rc = CAIRN_ENOMEM;
            break;
          }
          prev = np;
          cap = nc;
        }
        if ((rc = kv_copy(c->arena, &o, key, false, &prev[nprev++])) != 0) {
          break;
        }
      }
      struct rec_hdr h;
      memset(&h, 0, sizeof h);
      h.type = REC_DEL;
      h.mod_rev = c->write_rev;
      h.mod_sub = c->sub++;
      if (o.h.mod_rev >= h.mod_rev) {
        rc = CAIRN_ECORRUPT; /* a version from the future: a broken record */
        break;
      }
      h.prev_rev = o.h.mod_rev;
      h.prev_sub = o.h.mod_sub;
      int64_t lease = o.h.lease;
      h.key_len = (uint32_t)key.len;
      if ((rc = hist_append(c, &h, key.data, NULL)) != 0) {
        break;
      }
      h.key_len = 0;
      uint8_t tomb[sizeof h];
      rec_encode(tomb, &h, NULL, NULL);
      MDB_val kk = {key.len, keybuf}, tv = {sizeof tomb, tomb};
      mrc = mdb_cursor_put(cur, &kk, &tv, MDB_CURRENT);
      if (mrc != 0) {
        rc = lmdb_err(mrc, "delete");
        break;
      }
      if (lease != 0 && (rc = lease_attach(c, lease, key, false)) != 0) {
        break;
      }
      out->deleted++;
      /* The lease update may have moved the cursor's page; find our place. */
      if (lease != 0) {
        kk.mv_size = key.len;
        kk.mv_data = keybuf;
        mrc = mdb_cursor_get(cur, &kk, &v, MDB_SET_KEY);
        if (mrc != 0) {
          rc = lmdb_err(mrc, "delete reposition");
          break;
        }
      }
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = lmdb_err(mrc, "delete");
  }
  if (rc == 0 && nprev > 0) {
    out->prev_kvs = arena_dup(c->arena, prev, nprev * sizeof *prev);
    out->n_prev_kvs = nprev;
    rc = out->prev_kvs ? 0 : CAIRN_ENOMEM;
  }
  free(prev);
  out->revision = out->deleted > 0 || c->sub > 0 ? c->write_rev : c->rev;
  return rc;
}

/* ---- transactions --------------------------------------------------------- */

static bool compare_one(const struct mvcc_compare *cmp, const struct rec *r) {
  int res = 0;
  int64_t have = 0;
  switch (cmp->target) {
    case MVCC_TARGET_VALUE: {
      size_t a = r ? r->h.value_len : 0, b = cmp->value.len;
      size_t n = a < b ? a : b;
      res = n ? memcmp(r->value, cmp->value.data, n) : 0;
      if (res == 0) {
        res = a < b ? -1 : (a > b ? 1 : 0);
      }
      res = res < 0 ? -1 : (res > 0 ? 1 : 0);
      break;
    }
    case MVCC_TARGET_CREATE:
      have = r ? r->h.create_rev : 0;
      break;
    case MVCC_TARGET_MOD:
      have = r ? r->h.mod_rev : 0;
      break;
    case MVCC_TARGET_VERSION:
      have = r ? r->h.version : 0;
      break;
    case MVCC_TARGET_LEASE:
      have = r ? r->h.lease : 0;
      break;
  }
  if (cmp->target != MVCC_TARGET_VALUE) {
    res = have < cmp->number ? -1 : (have > cmp->number ? 1 : 0);
  }
  switch (cmp->result) {
    case MVCC_CMP_EQUAL:
      return res == 0;
    case MVCC_CMP_NOT_EQUAL:
      return res != 0;
    case MVCC_CMP_GREATER:
      return res > 0;
    case MVCC_CMP_LESS:
      return res < 0;
  }
  return true;
}

/* A compare over a range holds when it holds for every live key in it; over
 * no key it compares an all-zero kv, except that VALUE then fails. */
static int compare_eval(struct ctx *c, const struct mvcc_compare *cmp, bool *ok) {
  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c->txn, c->s->dbi_kv, &cur);
  if (mrc != 0) {
    return lmdb_err(mrc, "cursor");
  }
  int rc = 0;
  bool any = false;
  *ok = true;
  MDB_val k, v;
  mrc = cursor_seek(cur, cmp->key, &k, &v);
  while (mrc == 0 && *ok && !past_end(&k, cmp->key, cmp->range_end)) {
    struct rec r;
    if ((rc = rec_decode(&v, false, &r)) != 0) {
      break;
    }
    if (r.h.type == REC_PUT) {
      any = true;
      *ok = compare_one(cmp, &r);
    }
    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(cur);
  if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = lmdb_err(mrc, "compare");
  }
  if (rc == 0 && !any) {
    *ok = cmp->target != MVCC_TARGET_VALUE && compare_one(cmp, NULL);
  }
  return rc;
}

struct path {
  bool *v;
  size_t n, cap;
};

/* etcd evaluates every compare on the chosen path before any write. */
static int txn_path(struct ctx *c, const struct mvcc_txn_req *t, struct path *p) {
  bool ok = true;
  for (size_t i = 0; i < t->n_compares && ok; i++) {
    int rc = compare_eval(c, &t->compares[i], &ok);
    if (rc != 0) {
      return rc;
    }
  }
  if (p->n == p->cap) {
    size_t nc = p->cap ? p->cap * 2 : 8;
    bool *nv = realloc(p->v, nc * sizeof *nv);
    if (nv == NULL) {
      return CAIRN_ENOMEM;
    }
    p->v = nv;
    p->cap = nc;
  }
  p->v[p->n++] = ok;
  const struct mvcc_request_op *ops = ok ? t->success : t->failure;
  size_t n = ok ? t->n_success : t->n_failure;
  for (size_t i = 0; i < n; i++) {
    if (ops[i].type == MVCC_REQUEST_TXN) {
      int rc = txn_path(c, ops[i].u.txn, p);
      if (rc != 0) {
        return rc;
      }
    }
  }
  return 0;
}

/* etcd checks every put on the chosen path, then every range: two passes,
 * so that the first error is etcd's. */
enum txn_check_pass { CHECK_PUTS, CHECK_RANGES };

static int txn_check(struct ctx *c, const struct mvcc_txn_req *t, const struct path *p,
                     size_t *at, enum txn_check_pass pass, uint64_t *cost) {
  bool ok = p->v[(*at)++];
  const struct mvcc_request_op *ops = ok ? t->success : t->failure;
  size_t n = ok ? t->n_success : t->n_failure;
  for (size_t i = 0; i < n; i++) {
    int rc = 0;
    switch (ops[i].type) {
      case MVCC_REQUEST_TXN:
        rc = txn_check(c, ops[i].u.txn, p, at, pass, cost);
        break;
      case MVCC_REQUEST_PUT:
        if (pass == CHECK_PUTS) {
          rc = put_check(c, &ops[i].u.put, false, cost);
        }
        break;
      case MVCC_REQUEST_RANGE: {
        int64_t rev;
        if (pass == CHECK_RANGES) {
          rc = range_revision(c, ops[i].u.range.revision, &rev);
        }
        break;
      }
      default:
        break;
    }
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

static int txn_run(struct ctx *c, const struct mvcc_txn_req *t, const struct path *p, size_t *at,
                   struct mvcc_txn_resp *out) {
  bool ok = p->v[(*at)++];
  const struct mvcc_request_op *ops = ok ? t->success : t->failure;
  size_t n = ok ? t->n_success : t->n_failure;
  out->succeeded = ok;
  out->n_responses = n;
  out->responses = n ? arena_alloc(c->arena, n * sizeof *out->responses) : NULL;
  if (n && out->responses == NULL) {
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    struct mvcc_response_op *ro = &out->responses[i];
    memset(ro, 0, sizeof *ro);
    ro->type = ops[i].type;
    int rc = 0;
    switch (ops[i].type) {
      case MVCC_REQUEST_RANGE: {
        /* Reads inside a txn see its earlier writes. */
        struct ctx rc2 = *c;
        rc2.rev = c->sub > 0 ? c->write_rev : c->rev;
        rc = range_exec(&rc2, &ops[i].u.range, c->arena, &ro->u.range);
        break;
      }
      case MVCC_REQUEST_PUT:
        rc = put_apply(c, &ops[i].u.put, &ro->u.put);
        break;
      case MVCC_REQUEST_DELETE:
        rc = delete_apply(c, &ops[i].u.del, &ro->u.del);
        break;
      case MVCC_REQUEST_TXN:
        ro->u.txn = arena_alloc(c->arena, sizeof *ro->u.txn);
        if (ro->u.txn == NULL) {
          return CAIRN_ENOMEM;
        }
        memset(ro->u.txn, 0, sizeof *ro->u.txn);
        /* As etcd, a nested txn's own header is left empty (revision 0). */
        rc = txn_run(c, ops[i].u.txn, p, at, ro->u.txn);
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

/* Returns an op-level error in *op_err (nothing written) or a batch-level
 * error as the return value. */
static int txn_apply(struct ctx *c, const struct mvcc_txn_req *t, struct mvcc_txn_resp *out,
                     int *op_err) {
  memset(out, 0, sizeof *out);
  struct path p = {0};
  int rc = txn_path(c, t, &p);
  if (rc == 0) {
    size_t at = 0;
    uint64_t cost = 0;
    rc = txn_check(c, t, &p, &at, CHECK_PUTS, &cost);
    if (rc == 0) {
      at = 0;
      rc = txn_check(c, t, &p, &at, CHECK_RANGES, &cost);
    }
    if (rc == 0 && cost > 0) {
      rc = quota_take(c, cost);
    }
    if (rc != 0) {
      *op_err = rc;
      free(p.v);
      out->revision = c->rev;
      return 0;
    }
    at = 0;
    rc = txn_run(c, t, &p, &at, out);
  }
  free(p.v);
  out->revision = c->sub > 0 ? c->write_rev : c->rev;
  return rc;
}

/* ---- leases --------------------------------------------------------------- */

static int lease_get_rec(struct ctx *c, int64_t id, struct lease_rec *lr, bool *found) {
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v;
  int mrc = mdb_get(c->txn, c->s->dbi_lease, &k, &v);
  *found = mrc == 0;
  if (mrc == MDB_NOTFOUND) {
    return 0;
  }
  if (mrc != 0) {
    return lmdb_err(mrc, "lease get");
  }
  if (v.mv_size != sizeof *lr) {
    return CAIRN_ECORRUPT;
  }
  memcpy(lr, v.mv_data, sizeof *lr);
  return 0;
}

static int lease_put_rec(struct ctx *c, int64_t id, const struct lease_rec *lr) {
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v = {sizeof *lr, (void *)lr};
  return lmdb_err(mdb_put(c->txn, c->s->dbi_lease, &k, &v, 0), "lease put");
}

static int lease_revoke(struct ctx *c, int64_t id, struct mvcc_lease_resp *out, int *op_err) {
  struct lease_rec lr;
  bool found = false;
  int rc = lease_get_rec(c, id, &lr, &found);
  if (rc != 0) {
    return rc;
  }
  if (!found) {
    *op_err = CAIRN_ELEASE_NOT_FOUND;
    out->revision = c->rev;
    return 0;
  }
  out->lease = (struct mvcc_lease){id, lr.ttl, lr.granted_ms, lr.remaining_ms};
  /* Collect the attached keys first: deleting them edits lease_keys. */
  uint8_t kb[8];
  u64_be(kb, (uint64_t)id);
  MDB_val k = {8, kb}, v;
  MDB_cursor *cur;
  int mrc = mdb_cursor_open(c->txn, c->s->dbi_lease_keys, &cur);
  if (mrc != 0) {
    return lmdb_err(mrc, "cursor");
  }
  struct mvcc_bytes *keys = NULL;
  size_t n = 0, cap = 0;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); mrc == 0 && rc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
    if (n == cap) {
      size_t nc = cap ? cap * 2 : 16;
      struct mvcc_bytes *nk = realloc(keys, nc * sizeof *nk);
      if (nk == NULL) {
        rc = CAIRN_ENOMEM;
        break;
      }
      keys = nk;
      cap = nc;
    }
    keys[n].data = arena_dup(c->arena, v.mv_data, v.mv_size);
    keys[n].len = v.mv_size;
    rc = keys[n++].data ? 0 : CAIRN_ENOMEM;
  }
  mdb_cursor_close(cur);
  if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = lmdb_err(mrc, "lease keys");
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    struct mvcc_delete_req d = {.key = keys[i]};
    struct mvcc_delete_resp dr;
    rc = delete_apply(c, &d, &dr);
  }
  free(keys);
  if (rc != 0) {
    return rc;
  }
  k.mv_size = 8;
  k.mv_data = kb;
  mrc = mdb_del(c->txn, c->s->dbi_lease_keys, &k, NULL);
  if (mrc != 0 && mrc != MDB_NOTFOUND) {
    return lmdb_err(mrc, "lease keys delete");
  }
  mrc = mdb_del(c->txn, c->s->dbi_lease, &k, NULL);
  if (mrc != 0) {
    return lmdb_err(mrc, "lease delete");
  }
  out->revision = c->sub > 0 ? c->write_rev : c->rev;
  return 0;
}

/* ---- dispatch ------------------------------------------------------------- */

int write_op(struct ctx *c, const struct mvcc_op *op, struct mvcc_result *res) {
  int rc = 0;
  int *op_err = &res->err;
  switch (op->type) {
    case MVCC_OP_RANGE:
      *op_err = range_exec(c, &op->u.range, c->arena, &res->u.range);
      return 0;
    case MVCC_OP_PUT: {
      uint64_t cost = 0;
      *op_err = put_check(c, &op->u.put, true, &cost);
      if (*op_err == 0) {
        *op_err = quota_take(c, cost);
      }
      if (*op_err != 0) {
        res->u.put.revision = c->rev;
        return 0;
      }
      return put_apply(c, &op->u.put, &res->u.put);
    }
    case MVCC_OP_DELETE:
      return delete_apply(c, &op->u.del, &res->u.del);
    case MVCC_OP_TXN:
      return txn_apply(c, &op->u.txn, &res->u.txn, op_err);
    case MVCC_OP_COMPACT: {
      int64_t rev = op->u.compact_revision;
      res->u.revision = c->rev;
      if (rev <= c->compact_rev) {
        *op_err = CAIRN_ECOMPACTED;
      } else if (rev > c->rev) {
        *op_err = CAIRN_EFUTURE_REV;
      } else {
        c->compact_rev = rev;
      }
      return 0;
    }
    case MVCC_OP_LEASE_GRANT: {
      struct lease_rec lr;
      bool found = false;
      int64_t id = op->u.lease_grant.id;
      res->u.lease.revision = c->rev;
      if ((rc = lease_get_rec(c, id, &lr, &found)) != 0) {
        return rc;
      }
      if (found) {
        *op_err = CAIRN_ELEASE_EXISTS;
        return 0;
      }
      if ((*op_err = quota_take(c, 128)) != 0) {
        return 0;
      }
      lr = (struct lease_rec){op->u.lease_grant.ttl, op->u.lease_grant.now_ms, -1};
      res->u.lease.lease = (struct mvcc_lease){id, lr.ttl, lr.granted_ms, lr.remaining_ms};
      return lease_put_rec(c, id, &lr);
    }
    case MVCC_OP_LEASE_REVOKE:
      return lease_revoke(c, op->u.lease_revoke_id, &res->u.lease, op_err);
    case MVCC_OP_LEASE_CHECKPOINT: {
      struct lease_rec lr;
      bool found = false;
      int64_t id = op->u.lease_checkpoint.id;
      res->u.lease.revision = c->rev;
      if ((rc = lease_get_rec(c, id, &lr, &found)) != 0) {
        return rc;
      }
      if (!found) {
        *op_err = CAIRN_ELEASE_NOT_FOUND;
        return 0;
      }
      lr.remaining_ms = op->u.lease_checkpoint.remaining_ms;
      res->u.lease.lease = (struct mvcc_lease){id, lr.ttl, lr.granted_ms, lr.remaining_ms};
      return lease_put_rec(c, id, &lr);
    }
    case MVCC_OP_META_PUT: {
      char full[MVCC_META_NAME_MAX + 3];
      snprintf(full, sizeof full, "u/%s", op->u.meta_put.name);
      res->u.revision = c->rev;
      return lmdb_err(meta_put_raw(c->txn, c->s->dbi_meta, full, op->u.meta_put.value.data,
                                   op->u.meta_put.value.len),
                      "meta put");
    }
  }
  *op_err = CAIRN_EINVAL;
  return 0;
}
