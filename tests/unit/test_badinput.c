/* tests/unit/test_badinput.c: requests and files the engine must refuse.
 *
 * Each refused request is checked for etcd's error code and for leaving the
 * store exactly as it was (revision, compacted revision, applied index, every
 * key version, the leases). Bad data files must make mvcc_open fail cleanly
 * and must not be modified by the attempt. */
#include <fcntl.h>
#include <lmdb.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>

#include "storage/mvcc.h"
#include "test.h"

/* ---------------------------------------------------------------- helpers */

static struct mvcc_bytes b_str(const char *s) {
  struct mvcc_bytes b = {(const uint8_t *)s, strlen(s)};
  if (b.len == 0) {
    b.data = NULL;
  }
  return b;
}

static struct mvcc_bytes b_mem(const void *p, size_t len) {
  struct mvcc_bytes b = {len ? p : NULL, len};
  return b;
}

static const uint8_t nul_byte[1] = {0};

static struct mvcc_bytes b_all(void) {
  return b_mem(nul_byte, 1);
}

/* A digest of everything a refused op must not change: a byte dump of the
 * state, compared before and after. */
struct dump {
  uint8_t *p;
  size_t n, cap;
};

static void dump_add(struct dump *d, const void *p, size_t n) {
  if (d->n + n > d->cap) {
    d->cap = (d->n + n) * 2 + 64;
    d->p = realloc(d->p, d->cap);
    CHECK(d->p != NULL);
  }
  if (n) {
    memcpy(d->p + d->n, p, n);
  }
  d->n += n;
}

static void dump_i64(struct dump *d, int64_t v) {
  dump_add(d, &v, sizeof v);
}

static void dump_bytes(struct dump *d, struct mvcc_bytes b) {
  dump_i64(d, (int64_t)b.len);
  dump_add(d, b.data, b.len);
}

static uint64_t fnv1a(struct mvcc_bytes b) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < b.len; i++) {
    h = (h ^ b.data[i]) * 0x100000001b3ull;
  }
  return h;
}

/* Every kv at rev; values as hashes (the quota test holds megabytes). */
static void dump_range_at(struct dump *d, mvcc_store *s, int64_t rev, bool keys_only) {
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_all();
  rq.range_end = b_all();
  rq.revision = rev;
  rq.keys_only = keys_only;
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_OK(mvcc_range(s, &rq, &res));
  dump_i64(d, (int64_t)res.u.range.n_kvs);
  for (size_t i = 0; i < res.u.range.n_kvs; i++) {
    const struct mvcc_kv *kv = &res.u.range.kvs[i];
    dump_bytes(d, kv->key);
    dump_i64(d, (int64_t)fnv1a(kv->value));
    dump_i64(d, kv->create_revision);
    dump_i64(d, kv->mod_revision);
    dump_i64(d, kv->version);
    dump_i64(d, kv->lease);
  }
  mvcc_result_free(&res);
}

/* The store's whole visible state: every revision from the compacted one on,
 * the leases and the raft position. */
static struct dump state_dump(mvcc_store *s) {
  struct dump d = {0};
  int64_t rev = mvcc_current_revision(s), c = mvcc_compacted_revision(s);
  dump_i64(&d, rev);
  dump_i64(&d, c);
  dump_i64(&d, (int64_t)mvcc_applied_index(s));
  dump_i64(&d, (int64_t)mvcc_applied_term(s));
  /* History is dumped without values (create, mod, version and lease of
   * every key at every revision still show any change to it). */
  for (int64_t r = c > 1 ? c : 1; r < rev; r++) {
    dump_range_at(&d, s, r, true);
  }
  dump_range_at(&d, s, rev, false);
  struct mvcc_lease *ls = NULL;
  size_t n = 0;
  CHECK_OK(mvcc_lease_list(s, &ls, &n));
  for (size_t i = 0; i < n; i++) {
    dump_i64(&d, ls[i].id);
    dump_i64(&d, ls[i].ttl);
    dump_i64(&d, ls[i].granted_ms);
    dump_i64(&d, ls[i].remaining_ms);
    struct mvcc_result keys;
    memset(&keys, 0, sizeof keys);
    CHECK_OK(mvcc_lease_keys(s, ls[i].id, &keys));
    for (size_t j = 0; j < keys.u.range.n_kvs; j++) {
      dump_bytes(&d, keys.u.range.kvs[j].key);
    }
    mvcc_result_free(&keys);
  }
  free(ls);
  return d;
}

static void check_unchanged(mvcc_store *s, struct dump *before) {
  struct dump after = state_dump(s);
  CHECK_EQ_INT(after.n, before->n);
  CHECK(memcmp(after.p, before->p, after.n) == 0);
  free(after.p);
}

/* Applies one op alone; returns its result code. The caller frees res. */
static int apply1(mvcc_store *s, struct mvcc_op *op, struct mvcc_result *res) {
  memset(res, 0, sizeof *res);
  CHECK_OK(mvcc_apply(s, op, 1, res));
  return res->err;
}

/* Checks that op is refused with code by mvcc_check_op and by mvcc_apply,
 * and that the store did not change. */
static void check_refused(mvcc_store *s, struct mvcc_op *op, int code) {
  struct dump before = state_dump(s);
  CHECK_ERR(mvcc_check_op(s, op), code);
  struct mvcc_result res;
  CHECK_ERR(apply1(s, op, &res), code);
  mvcc_result_free(&res);
  check_unchanged(s, &before);
  free(before.p);
}

/* Like check_refused for errors only the apply can see (they depend on the
 * store's state). */
static void check_apply_refused(mvcc_store *s, struct mvcc_op *op, int code) {
  struct dump before = state_dump(s);
  struct mvcc_result res;
  CHECK_ERR(apply1(s, op, &res), code);
  mvcc_result_free(&res);
  check_unchanged(s, &before);
  free(before.p);
}

static int64_t put_kv(mvcc_store *s, const char *k, const char *v, int64_t lease) {
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_PUT;
  op.u.put.key = b_str(k);
  op.u.put.value = b_str(v);
  op.u.put.lease = lease;
  struct mvcc_result res;
  CHECK_OK(apply1(s, &op, &res));
  int64_t rev = res.u.put.revision;
  mvcc_result_free(&res);
  return rev;
}

static void grant(mvcc_store *s, int64_t id) {
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_LEASE_GRANT;
  op.u.lease_grant.id = id;
  op.u.lease_grant.ttl = 60;
  op.u.lease_grant.now_ms = 1000;
  struct mvcc_result res;
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
}

static mvcc_store *open_with(const char *dir, uint64_t quota, uint32_t max_ops,
                             uint32_t max_value) {
  struct mvcc_options o;
  memset(&o, 0, sizeof o);
  o.quota_bytes = quota;
  o.max_txn_ops = max_ops;
  o.max_value_bytes = max_value;
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, &o, &s));
  return s;
}

/* A store with a little history: keys a, a/1, b, c with a few versions, one
 * lease (7) attached to c. */
static mvcc_store *open_populated(const char *dir, uint32_t max_ops, uint32_t max_value) {
  mvcc_store *s = open_with(dir, 0, max_ops, max_value);
  grant(s, 7);
  put_kv(s, "a", "1", 0);
  put_kv(s, "a/1", "x", 0);
  put_kv(s, "b", "2", 0);
  put_kv(s, "a", "3", 0);
  put_kv(s, "c", "lease", 7);
  return s;
}

static struct mvcc_op op_put(const char *k, const char *v) {
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_PUT;
  op.u.put.key = b_str(k);
  op.u.put.value = b_str(v);
  return op;
}

static struct mvcc_request_op rq_put(const char *k, const char *v) {
  struct mvcc_request_op r;
  memset(&r, 0, sizeof r);
  r.type = MVCC_REQUEST_PUT;
  r.u.put.key = b_str(k);
  r.u.put.value = b_str(v);
  return r;
}

static struct mvcc_request_op rq_del(const char *k, const char *end) {
  struct mvcc_request_op r;
  memset(&r, 0, sizeof r);
  r.type = MVCC_REQUEST_DELETE;
  r.u.del.key = b_str(k);
  r.u.del.range_end = b_str(end);
  return r;
}

static struct mvcc_request_op rq_range(const char *k, const char *end) {
  struct mvcc_request_op r;
  memset(&r, 0, sizeof r);
  r.type = MVCC_REQUEST_RANGE;
  r.u.range.key = b_str(k);
  r.u.range.range_end = b_str(end);
  return r;
}

static struct mvcc_request_op rq_txn(const struct mvcc_txn_req *t) {
  struct mvcc_request_op r;
  memset(&r, 0, sizeof r);
  r.type = MVCC_REQUEST_TXN;
  r.u.txn = t;
  return r;
}

static struct mvcc_op op_txn(const struct mvcc_request_op *succ, size_t ns,
                             const struct mvcc_request_op *fail, size_t nf) {
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_TXN;
  op.u.txn.success = succ;
  op.u.txn.n_success = ns;
  op.u.txn.failure = fail;
  op.u.txn.n_failure = nf;
  return op;
}

/* ---------------------------------------------------------------- sizes */

static void test_too_large(void) {
  char *dir = test_tmpdir("badinput-large");
  mvcc_store *s = open_populated(dir, 0, 100);
  uint8_t big[MVCC_MAX_KEY_BYTES + 2];
  memset(big, 'k', sizeof big);

  /* A key of MVCC_MAX_KEY_BYTES works; one byte more is refused. */
  struct mvcc_op op = op_put("x", "v");
  op.u.put.key = b_mem(big, MVCC_MAX_KEY_BYTES + 1);
  check_refused(s, &op, CAIRN_ETOO_LARGE);
  op.u.put.key = b_mem(big, MVCC_MAX_KEY_BYTES);
  struct mvcc_result res;
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);

  /* The same inside a txn, in either branch (checked before the compares). */
  struct mvcc_request_op bad = rq_put("x", "v");
  bad.u.put.key = b_mem(big, MVCC_MAX_KEY_BYTES + 1);
  op = op_txn(NULL, 0, &bad, 1);
  check_refused(s, &op, CAIRN_ETOO_LARGE);

  /* Values: max_value_bytes is 100 here. */
  uint8_t val[101];
  memset(val, 'v', sizeof val);
  op = op_put("val", "");
  op.u.put.value = b_mem(val, 101);
  check_refused(s, &op, CAIRN_ETOO_LARGE);
  bad = rq_put("val", "");
  bad.u.put.value = b_mem(val, 101);
  op = op_txn(&bad, 1, NULL, 0);
  check_refused(s, &op, CAIRN_ETOO_LARGE);
  op = op_put("val", "");
  op.u.put.value = b_mem(val, 100);
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);

  /* A read or delete of a key too long to be stored finds nothing or is
   * refused as too large; it never fails otherwise. */
  struct dump before = state_dump(s);
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_mem(big, sizeof big);
  int rc = mvcc_range(s, &rq, &res);
  CHECK(rc == 0 || rc == CAIRN_ETOO_LARGE);
  if (rc == 0) {
    CHECK_EQ_INT(res.u.range.n_kvs, 0);
    CHECK_EQ_INT(res.u.range.count, 0);
  }
  mvcc_result_free(&res);
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  op.u.del.key = b_mem(big, sizeof big);
  rc = apply1(s, &op, &res);
  CHECK(rc == 0 || rc == CAIRN_ETOO_LARGE);
  if (rc == 0) {
    CHECK_EQ_INT(res.u.del.deleted, 0);
  }
  mvcc_result_free(&res);
  check_unchanged(s, &before);
  free(before.p);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- empty keys */

static void test_empty_key(void) {
  char *dir = test_tmpdir("badinput-empty");
  mvcc_store *s = open_populated(dir, 0, 0);
  struct mvcc_op op = op_put("", "v");
  check_refused(s, &op, CAIRN_EEMPTY_KEY);

  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  check_refused(s, &op, CAIRN_EEMPTY_KEY);
  op.u.del.range_end = b_all(); /* even with a range end */
  check_refused(s, &op, CAIRN_EEMPTY_KEY);

  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_RANGE;
  check_refused(s, &op, CAIRN_EEMPTY_KEY);
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.range_end = b_str("z");
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_ERR(mvcc_range(s, &rq, &res), CAIRN_EEMPTY_KEY);
  mvcc_result_free(&res);

  /* A compare with an empty key, and empty keys inside txn branches. */
  struct mvcc_compare cmp;
  memset(&cmp, 0, sizeof cmp);
  cmp.target = MVCC_TARGET_VERSION;
  cmp.result = MVCC_CMP_EQUAL;
  struct mvcc_request_op ok_put = rq_put("t", "v");
  op = op_txn(&ok_put, 1, NULL, 0);
  op.u.txn.compares = &cmp;
  op.u.txn.n_compares = 1;
  check_refused(s, &op, CAIRN_EEMPTY_KEY);

  struct mvcc_request_op bad[3] = {rq_put("", "v"), rq_del("", ""), rq_range("", "")};
  for (int i = 0; i < 3; i++) {
    op = op_txn(&ok_put, 1, &bad[i], 1); /* the failure branch is checked too */
    check_refused(s, &op, CAIRN_EEMPTY_KEY);
  }
  struct mvcc_txn_req inner;
  memset(&inner, 0, sizeof inner);
  inner.success = &bad[0];
  inner.n_success = 1;
  struct mvcc_request_op nested = rq_txn(&inner);
  op = op_txn(&nested, 1, NULL, 0);
  check_refused(s, &op, CAIRN_EEMPTY_KEY);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- ranges */

static void test_inverted_range(void) {
  char *dir = test_tmpdir("badinput-range");
  mvcc_store *s = open_populated(dir, 0, 0);
  struct dump before = state_dump(s);

  /* range_end < key: an empty result, as etcd. */
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_str("c");
  rq.range_end = b_str("a");
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 0);
  CHECK_EQ_INT(res.u.range.count, 0);
  CHECK(!res.u.range.more);
  CHECK_EQ_INT(res.u.range.revision, mvcc_current_revision(s));
  mvcc_result_free(&res);
  /* range_end == key: empty too. */
  rq.range_end = b_str("c");
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 0);
  mvcc_result_free(&res);

  /* A delete of an inverted range deletes nothing and keeps the revision. */
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  op.u.del.key = b_str("c");
  op.u.del.range_end = b_str("a");
  op.u.del.prev_kv = true;
  CHECK_OK(apply1(s, &op, &res));
  CHECK_EQ_INT(res.u.del.deleted, 0);
  CHECK_EQ_INT(res.u.del.n_prev_kvs, 0);
  CHECK_EQ_INT(res.u.del.revision, mvcc_current_revision(s));
  mvcc_result_free(&res);
  check_unchanged(s, &before);

  /* Reads at bad revisions. */
  memset(&rq, 0, sizeof rq);
  rq.key = b_str("a");
  rq.revision = mvcc_current_revision(s) + 1;
  CHECK_ERR(mvcc_range(s, &rq, &res), CAIRN_EFUTURE_REV);
  mvcc_result_free(&res);
  check_unchanged(s, &before);
  free(before.p);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- puts */

static void test_put_errors(void) {
  char *dir = test_tmpdir("badinput-put");
  mvcc_store *s = open_populated(dir, 0, 0);

  /* Unknown lease. */
  struct mvcc_op op = op_put("a", "new");
  op.u.put.lease = 99;
  check_apply_refused(s, &op, CAIRN_ELEASE_NOT_FOUND);
  op = op_put("fresh", "new");
  op.u.put.lease = 99;
  check_apply_refused(s, &op, CAIRN_ELEASE_NOT_FOUND);
  /* ... also inside a txn, on the taken path only. */
  struct mvcc_request_op lp = rq_put("fresh", "new");
  lp.u.put.lease = 99;
  op = op_txn(&lp, 1, NULL, 0);
  check_apply_refused(s, &op, CAIRN_ELEASE_NOT_FOUND);
  struct mvcc_request_op okp = rq_put("fresh", "ok");
  op = op_txn(&okp, 1, &lp, 1);
  struct mvcc_result res;
  CHECK_OK(apply1(s, &op, &res)); /* no compares: success, lp not taken */
  CHECK(res.u.txn.succeeded);
  mvcc_result_free(&res);

  /* ignore_value with a value, ignore_lease with a lease. */
  op = op_put("a", "v");
  op.u.put.ignore_value = true;
  check_refused(s, &op, CAIRN_EVALUE_PROVIDED);
  op = op_put("c", "");
  op.u.put.ignore_lease = true;
  op.u.put.lease = 7;
  check_refused(s, &op, CAIRN_ELEASE_PROVIDED);
  struct mvcc_request_op ip = rq_put("a", "v");
  ip.u.put.ignore_value = true;
  op = op_txn(NULL, 0, &ip, 1);
  check_refused(s, &op, CAIRN_EVALUE_PROVIDED);

  /* ignore_value / ignore_lease on a missing key. */
  op = op_put("missing", "");
  op.u.put.ignore_value = true;
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);
  op = op_put("missing", "v");
  op.u.put.ignore_lease = true;
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);
  ip = rq_put("missing", "");
  ip.u.put.ignore_value = true;
  op = op_txn(&ip, 1, NULL, 0);
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);
  /* A deleted key is missing too. */
  struct mvcc_op del;
  memset(&del, 0, sizeof del);
  del.type = MVCC_OP_DELETE;
  del.u.del.key = b_str("b");
  CHECK_OK(apply1(s, &del, &res));
  CHECK_EQ_INT(res.u.del.deleted, 1);
  mvcc_result_free(&res);
  op = op_put("b", "");
  op.u.put.ignore_value = true;
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);

  /* An empty request op is refused as etcd does (key not found). */
  struct mvcc_request_op none;
  memset(&none, 0, sizeof none);
  none.type = MVCC_REQUEST_NONE;
  op = op_txn(&none, 1, NULL, 0);
  check_refused(s, &op, CAIRN_EKEY_NOT_FOUND);
  op = op_txn(&okp, 1, &none, 1);
  check_refused(s, &op, CAIRN_EKEY_NOT_FOUND);

  /* Leases: a taken id, an unknown id to revoke, id 0. */
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_LEASE_GRANT;
  op.u.lease_grant.id = 7;
  op.u.lease_grant.ttl = 5;
  check_apply_refused(s, &op, CAIRN_ELEASE_EXISTS);
  op.u.lease_grant.id = 0;
  struct dump before = state_dump(s);
  CHECK(apply1(s, &op, &res) < 0);
  mvcc_result_free(&res);
  check_unchanged(s, &before);
  free(before.p);
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_LEASE_REVOKE;
  op.u.lease_revoke_id = 8;
  check_apply_refused(s, &op, CAIRN_ELEASE_NOT_FOUND);

  /* Compaction: at or below the compacted revision, or in the future. */
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_COMPACT;
  op.u.compact_revision = mvcc_current_revision(s) + 1;
  check_apply_refused(s, &op, CAIRN_EFUTURE_REV);
  op.u.compact_revision = 3;
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
  bool done = false;
  while (!done) {
    CHECK_OK(mvcc_compact_step(s, 0, &done));
  }
  check_apply_refused(s, &op, CAIRN_ECOMPACTED);
  op.u.compact_revision = 2;
  check_apply_refused(s, &op, CAIRN_ECOMPACTED);
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_str("a");
  rq.revision = 2;
  CHECK_ERR(mvcc_range(s, &rq, &res), CAIRN_ECOMPACTED);
  mvcc_result_free(&res);
  rq.revision = 3; /* exactly the compacted revision works */
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 1);
  mvcc_result_free(&res);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- txns */

static void test_txn_errors(void) {
  char *dir = test_tmpdir("badinput-txn");
  mvcc_store *s = open_populated(dir, 4, 0); /* max_txn_ops 4 */

  /* Too many ops: more than 4 compares, success or failure ops. */
  struct mvcc_request_op five[5] = {rq_range("a", ""), rq_range("b", ""), rq_range("c", ""),
                                    rq_range("d", ""), rq_range("e", "")};
  struct mvcc_op op = op_txn(five, 5, NULL, 0);
  check_refused(s, &op, CAIRN_ETOO_MANY_OPS);
  op = op_txn(NULL, 0, five, 5);
  check_refused(s, &op, CAIRN_ETOO_MANY_OPS);
  struct mvcc_compare cmps[5];
  memset(cmps, 0, sizeof cmps);
  for (int i = 0; i < 5; i++) {
    cmps[i].target = MVCC_TARGET_VERSION;
    cmps[i].result = MVCC_CMP_GREATER;
    cmps[i].key = b_str("a");
  }
  op = op_txn(NULL, 0, NULL, 0);
  op.u.txn.compares = cmps;
  op.u.txn.n_compares = 5;
  check_refused(s, &op, CAIRN_ETOO_MANY_OPS);
  /* A nested txn over the limit. */
  struct mvcc_txn_req inner;
  memset(&inner, 0, sizeof inner);
  inner.success = five;
  inner.n_success = 5;
  struct mvcc_request_op nested = rq_txn(&inner);
  op = op_txn(&nested, 1, NULL, 0);
  check_refused(s, &op, CAIRN_ETOO_MANY_OPS);
  /* Exactly 4 of each is fine. */
  op = op_txn(five, 4, five, 4);
  op.u.txn.compares = cmps;
  op.u.txn.n_compares = 4;
  CHECK_OK(mvcc_check_op(s, &op));
  struct mvcc_result res;
  CHECK_OK(apply1(s, &op, &res));
  CHECK(res.u.txn.succeeded);
  CHECK_EQ_INT(res.u.txn.n_responses, 4);
  mvcc_result_free(&res);

  /* Duplicate keys: put/put, put/delete in either order, a delete range
   * covering a put, nested txns against the outer level. */
  struct mvcc_request_op pp[2] = {rq_put("k", "1"), rq_put("k", "2")};
  op = op_txn(pp, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  op = op_txn(NULL, 0, pp, 2);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  struct mvcc_request_op pd[2] = {rq_put("a/1", "1"), rq_del("a", "b")};
  op = op_txn(pd, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  struct mvcc_request_op dp[2] = {rq_del("a/1", ""), rq_put("a/1", "1")};
  op = op_txn(dp, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  struct mvcc_txn_req in_put;
  memset(&in_put, 0, sizeof in_put);
  struct mvcc_request_op in_k = rq_put("k", "inner");
  in_put.success = &in_k;
  in_put.n_success = 1;
  struct mvcc_request_op outer_pn[2] = {rq_put("k", "outer"), rq_txn(&in_put)};
  op = op_txn(outer_pn, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  struct mvcc_request_op outer_dn[2] = {rq_del("j", "l"), rq_txn(&in_put)};
  op = op_txn(outer_dn, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);
  /* A put in the outer level and a delete covering it in the nested txn's
   * failure branch. */
  struct mvcc_txn_req in_del;
  memset(&in_del, 0, sizeof in_del);
  struct mvcc_request_op in_d = rq_del("k", "");
  in_del.failure = &in_d;
  in_del.n_failure = 1;
  struct mvcc_request_op outer_pd[2] = {rq_put("k", "outer"), rq_txn(&in_del)};
  op = op_txn(outer_pd, 2, NULL, 0);
  check_refused(s, &op, CAIRN_EDUPLICATE_KEY);

  /* Not duplicates (etcd allows them): the same key in the two branches of a
   * txn, in the two branches of a nested txn, and overlapping deletes. */
  struct mvcc_request_op p1 = rq_put("k", "then"), p2 = rq_put("k", "else");
  op = op_txn(&p1, 1, &p2, 1);
  CHECK_OK(mvcc_check_op(s, &op));
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
  struct mvcc_txn_req both;
  memset(&both, 0, sizeof both);
  both.success = &p1;
  both.n_success = 1;
  both.failure = &p2;
  both.n_failure = 1;
  struct mvcc_request_op nb = rq_txn(&both);
  op = op_txn(&nb, 1, NULL, 0);
  CHECK_OK(mvcc_check_op(s, &op));
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
  int64_t rev = mvcc_current_revision(s);
  struct mvcc_request_op dd[2] = {rq_del("a", "b"), rq_del("a/1", "")};
  dd[1].u.del.prev_kv = true;
  op = op_txn(dd, 2, NULL, 0);
  CHECK_OK(mvcc_check_op(s, &op));
  CHECK_OK(apply1(s, &op, &res));
  CHECK_EQ_INT(res.u.txn.revision, rev + 1);
  CHECK_EQ_INT(res.u.txn.responses[0].u.del.deleted, 2); /* a, a/1 */
  CHECK_EQ_INT(res.u.txn.responses[1].u.del.deleted, 0); /* already gone */
  CHECK_EQ_INT(res.u.txn.responses[1].u.del.n_prev_kvs, 0);
  CHECK_EQ_INT(res.u.txn.responses[1].u.del.revision, rev + 1);
  mvcc_result_free(&res);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- error order */

/* When one request has two errors, the one etcd reports. */
static void test_error_order(void) {
  char *dir = test_tmpdir("badinput-order");
  mvcc_store *s = open_populated(dir, 0, 0);
  struct mvcc_result res;

  /* Error order on a txn's taken path: etcd checks every put of the path
   * (checkRequestPut) before any range (checkRequestRange), so a put error
   * wins over a range error that comes first. */
  struct mvcc_op cop;
  memset(&cop, 0, sizeof cop);
  cop.type = MVCC_OP_COMPACT;
  cop.u.compact_revision = mvcc_current_revision(s);
  CHECK_OK(apply1(s, &cop, &res));
  mvcc_result_free(&res);
  struct mvcc_request_op rp[2] = {rq_range("a", ""), rq_put("missing", "")};
  rp[0].u.range.revision = 2; /* compacted */
  rp[1].u.put.ignore_value = true;
  struct mvcc_op op = op_txn(rp, 2, NULL, 0);
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);
  rp[1].u.put.ignore_value = false; /* the range error alone */
  op = op_txn(rp, 2, NULL, 0);
  check_apply_refused(s, &op, CAIRN_ECOMPACTED);
  rp[0].u.range.revision = mvcc_current_revision(s) + 1;
  check_apply_refused(s, &op, CAIRN_EFUTURE_REV);

  /* Inside a txn etcd's checkRequestPut reads the key before it looks the
   * lease up. */
  struct mvcc_request_op ip = rq_put("missing", "");
  ip.u.put.ignore_value = true;
  ip.u.put.lease = 99;
  op = op_txn(&ip, 1, NULL, 0);
  check_apply_refused(s, &op, CAIRN_EKEY_NOT_FOUND);

  /* A plain put is the other way round: etcd's applierV3backend.Put looks
   * the lease up before it reads the key. */
  op = op_put("missing", "");
  op.u.put.ignore_value = true;
  op.u.put.lease = 99;
  check_apply_refused(s, &op, CAIRN_ELEASE_NOT_FOUND);

  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- quota */

static void test_quota(void) {
  char *dir = test_tmpdir("badinput-quota");
  const uint64_t quota = 4ull << 20;
  mvcc_store *s = open_with(dir, quota, 0, 0);
  static uint8_t val[60000];
  for (size_t i = 0; i < sizeof val; i++) {
    val[i] = (uint8_t)(i * 7);
  }
  char key[32];
  size_t n = 0;
  struct mvcc_result res;
  for (;; n++) {
    CHECK(n < 1000); /* 4 MiB is reached well before */
    snprintf(key, sizeof key, "fill/%04zu", n);
    struct mvcc_op op = op_put(key, "");
    op.u.put.value = b_mem(val, sizeof val);
    int64_t rev = mvcc_current_revision(s);
    int err = apply1(s, &op, &res);
    mvcc_result_free(&res);
    if (err == CAIRN_ENOSPACE) {
      CHECK_EQ_INT(mvcc_current_revision(s), rev);
      break;
    }
    CHECK_OK(err);
  }
  CHECK(n > 10);
  uint64_t size = 0, in_use = 0;
  CHECK_OK(mvcc_size(s, &size, &in_use));
  CHECK(in_use <= size);

  /* The refused put changed nothing and the key is absent; a txn with a put
   * is refused too, a small put as well. */
  struct mvcc_op op = op_put(key, "");
  op.u.put.value = b_mem(val, sizeof val);
  check_apply_refused(s, &op, CAIRN_ENOSPACE);
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_str(key);
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 0);
  mvcc_result_free(&res);
  struct mvcc_request_op tp = rq_put(key, "");
  tp.u.put.value = b_mem(val, sizeof val);
  op = op_txn(&tp, 1, NULL, 0);
  check_apply_refused(s, &op, CAIRN_ENOSPACE);

  /* Reads and deletes still work. */
  memset(&rq, 0, sizeof rq);
  rq.key = b_str("fill/");
  rq.range_end = b_str("fill0");
  rq.count_only = true;
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.count, n);
  mvcc_result_free(&res);
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  op.u.del.key = b_str("fill/");
  op.u.del.range_end = b_str("fill0");
  CHECK_OK(apply1(s, &op, &res));
  CHECK_EQ_INT(res.u.del.deleted, n);
  mvcc_result_free(&res);

  /* Compaction and defragmentation give the space back. */
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_COMPACT;
  op.u.compact_revision = mvcc_current_revision(s);
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
  bool done = false;
  for (int i = 0; !done; i++) {
    CHECK(i < 100000);
    CHECK_OK(mvcc_compact_step(s, 0, &done));
  }
  CHECK_OK(mvcc_defrag(s));
  uint64_t size2 = 0;
  CHECK_OK(mvcc_size(s, &size2, NULL));
  CHECK(size2 < size);
  CHECK(size2 < quota / 2);
  op = op_put(key, "");
  op.u.put.value = b_mem(val, sizeof val);
  CHECK_OK(apply1(s, &op, &res));
  mvcc_result_free(&res);
  /* And after a reopen. */
  mvcc_close(s);
  s = open_with(dir, quota, 0, 0);
  memset(&rq, 0, sizeof rq);
  rq.key = b_str(key);
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 1);
  CHECK_EQ_INT(res.u.range.kvs[0].value.len, sizeof val);
  mvcc_result_free(&res);
  mvcc_close(s);
  test_rmdir(dir);
}

/* ---------------------------------------------------------------- bad files */

static char *data_path(const char *dir) {
  size_t n = strlen(dir) + sizeof MVCC_DATA_FILE + 2;
  char *p = malloc(n);
  CHECK(p != NULL);
  snprintf(p, n, "%s/%s", dir, MVCC_DATA_FILE);
  return p;
}

static uint8_t *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  CHECK(f != NULL);
  CHECK(fseek(f, 0, SEEK_END) == 0);
  long n = ftell(f);
  CHECK(n >= 0);
  rewind(f);
  uint8_t *p = malloc((size_t)n + 1);
  CHECK(p != NULL);
  CHECK(fread(p, 1, (size_t)n, f) == (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return p;
}

static void write_file(const char *path, const void *p, size_t n, bool truncate) {
  int fd = open(path, O_WRONLY | O_CREAT | (truncate ? O_TRUNC : 0), 0644);
  CHECK(fd >= 0);
  CHECK(pwrite(fd, p, n, 0) == (ssize_t)n);
  CHECK(close(fd) == 0);
}

/* Runs fn(arg) in a child process and returns what it returned (0 or a
 * CAIRN_E* code); a child killed by a signal fails the test, naming what. */
static int in_child(const char *what, int (*fn)(void *), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    int rc = fn(arg);
    _exit(rc == 0 ? 0 : rc - CAIRN_E__BASE);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (WIFSIGNALED(status)) {
    fprintf(stderr, "%s: the process died with signal %d (%s)\n", what, WTERMSIG(status),
            strsignal(WTERMSIG(status)));
    CHECK(!WIFSIGNALED(status));
  }
  CHECK(WIFEXITED(status));
  int code = WEXITSTATUS(status);
  return code == 0 ? 0 : CAIRN_E__BASE + code;
}

static int open_close(void *dir) {
  mvcc_store *s = NULL;
  int rc = mvcc_open(dir, NULL, &s);
  if (rc == 0) {
    mvcc_close(s);
  }
  return rc;
}

/* mvcc_open must fail with one of the two codes (without crashing), and leave
 * the data file byte for byte as it was. */
static void check_open_fails(const char *dir) {
  char *path = data_path(dir);
  struct stat st;
  bool is_reg = stat(path, &st) == 0 && S_ISREG(st.st_mode);
  size_t n0 = 0;
  uint8_t *before = is_reg ? read_file(path, &n0) : NULL;
  char what[600];
  snprintf(what, sizeof what, "mvcc_open(%s)", dir);
  int rc = in_child(what, open_close, (void *)dir);
  if (rc != CAIRN_EFOREIGN_FILE && rc != CAIRN_EIO) {
    fprintf(stderr, "mvcc_open(%s) returned %d (%s)\n", dir, rc, cairn_strerror(rc));
    CHECK(rc == CAIRN_EFOREIGN_FILE || rc == CAIRN_EIO || rc == CAIRN_ECORRUPT);
  }
  if (is_reg) {
    size_t n1 = 0;
    uint8_t *after = read_file(path, &n1);
    CHECK_EQ_INT(n1, n0);
    CHECK(memcmp(before, after, n0) == 0);
    free(after);
  }
  free(before);
  free(path);
}

/* A small real store in dir, closed. */
static void make_store(const char *dir) {
  mvcc_store *s = open_populated(dir, 0, 0);
  for (int i = 0; i < 200; i++) {
    char k[16];
    snprintf(k, sizeof k, "k%03d", i);
    put_kv(s, k, "some value bytes", 0);
  }
  mvcc_close(s);
}

static void test_corrupt_file(void) {
  /* The two meta pages overwritten with random bytes. */
  char *dir = test_tmpdir("badinput-corrupt");
  make_store(dir);
  char *path = data_path(dir);
  uint8_t junk[8192];
  for (size_t i = 0; i < sizeof junk; i++) {
    junk[i] = (uint8_t)test_rand();
  }
  write_file(path, junk, sizeof junk, false);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* The whole file random. */
  dir = test_tmpdir("badinput-random");
  make_store(dir);
  path = data_path(dir);
  size_t n = 0;
  uint8_t *p = read_file(path, &n);
  for (size_t i = 0; i < n; i++) {
    p[i] = (uint8_t)test_rand();
  }
  write_file(path, p, n, true);
  free(p);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* Cut to half its size (an interrupted copy): the meta pages are intact
   * but point past the end of the file. */
  dir = test_tmpdir("badinput-half");
  make_store(dir);
  path = data_path(dir);
  p = read_file(path, &n);
  write_file(path, p, n / 2, true);
  free(p);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* Truncated to a fragment of its first page. */
  dir = test_tmpdir("badinput-trunc");
  make_store(dir);
  path = data_path(dir);
  p = read_file(path, &n);
  write_file(path, p, 100, true);
  free(p);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);
}

static void test_foreign_file(void) {
  /* A text file named data.mdb. */
  char *dir = test_tmpdir("badinput-text");
  char *path = data_path(dir);
  const char *text = "This is not a database, just some notes.\n";
  write_file(path, text, strlen(text), true);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* A text file larger than two LMDB pages. */
  dir = test_tmpdir("badinput-text2");
  path = data_path(dir);
  char buf[20000];
  for (size_t i = 0; i < sizeof buf; i++) {
    buf[i] = "lorem ipsum dolor sit amet\n"[i % 27];
  }
  write_file(path, buf, sizeof buf, true);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* An LMDB environment made by another program: other named databases and
   * data in the main database. */
  dir = test_tmpdir("badinput-lmdb");
  MDB_env *env;
  CHECK(mdb_env_create(&env) == 0);
  CHECK(mdb_env_set_maxdbs(env, 4) == 0);
  CHECK(mdb_env_open(env, dir, 0, 0644) == 0);
  MDB_txn *txn;
  CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
  MDB_dbi main_dbi, other;
  CHECK(mdb_dbi_open(txn, NULL, 0, &main_dbi) == 0);
  CHECK(mdb_dbi_open(txn, "users", MDB_CREATE, &other) == 0);
  for (int i = 0; i < 50; i++) {
    char kb[16], vb[32];
    snprintf(kb, sizeof kb, "user%02d", i);
    snprintf(vb, sizeof vb, "{\"id\": %d}", i);
    MDB_val k = {strlen(kb), kb}, v = {strlen(vb), vb};
    CHECK(mdb_put(txn, other, &k, &v, 0) == 0);
  }
  MDB_val k = {7, "version"}, v = {1, "3"};
  CHECK(mdb_put(txn, main_dbi, &k, &v, 0) == 0);
  CHECK(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
  check_open_fails(dir);
  test_rmdir(dir);

  /* A raw LMDB environment whose main database holds plain data only. */
  dir = test_tmpdir("badinput-lmdb2");
  CHECK(mdb_env_create(&env) == 0);
  CHECK(mdb_env_open(env, dir, 0, 0644) == 0);
  CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
  CHECK(mdb_dbi_open(txn, NULL, 0, &main_dbi) == 0);
  MDB_val k2 = {2, "kv"}, v2 = {5, "hello"};
  CHECK(mdb_put(txn, main_dbi, &k2, &v2, 0) == 0);
  CHECK(mdb_txn_commit(txn) == 0);
  mdb_env_close(env);
  check_open_fails(dir);
  test_rmdir(dir);
}

/* Exercises a store whose records may be malformed: every read, the change
 * feed, writes over every key and a compaction. Return codes are not checked
 * (a malformed record is CAIRN_ECORRUPT; what matters here is that nothing
 * crashes or hangs). */
static void exercise_store(const char *dir) {
  mvcc_store *s = NULL;
  if (mvcc_open(dir, NULL, &s) != 0) {
    return;
  }
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_all();
  rq.range_end = b_all();
  struct mvcc_result res;
  for (int64_t r = 0; r <= mvcc_current_revision(s); r++) {
    rq.revision = r;
    memset(&res, 0, sizeof res);
    (void)mvcc_range(s, &rq, &res);
    mvcc_result_free(&res);
  }
  struct mvcc_feed_req fr;
  memset(&fr, 0, sizeof fr);
  fr.key = b_all();
  fr.range_end = b_all();
  fr.start_revision = 1;
  fr.max_events = 100;
  fr.prev_kv = true;
  for (int i = 0; i < 1000; i++) {
    struct mvcc_feed f;
    memset(&f, 0, sizeof f);
    if (mvcc_changes(s, &fr, &f) != 0) {
      break;
    }
    bool caught_up = f.caught_up;
    fr.start_revision = f.next_revision;
    fr.start_sub = f.next_sub;
    mvcc_feed_free(&f);
    if (caught_up) {
      break;
    }
  }
  static const char *const ks[] = {"k0", "k1", "k2"};
  for (int i = 0; i < 3; i++) {
    struct mvcc_op op = op_put(ks[i], "new");
    op.u.put.prev_kv = true;
    (void)mvcc_apply(s, &op, 1, &res);
    mvcc_result_free(&res);
  }
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_DELETE;
  op.u.del.key = b_all();
  op.u.del.range_end = b_all();
  op.u.del.prev_kv = true;
  (void)mvcc_apply(s, &op, 1, &res);
  mvcc_result_free(&res);
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_COMPACT;
  op.u.compact_revision = mvcc_current_revision(s) - 1;
  (void)mvcc_apply(s, &op, 1, &res);
  mvcc_result_free(&res);
  bool done = false;
  for (int i = 0; i < 1000 && !done; i++) {
    if (mvcc_compact_step(s, 0, &done) != 0) {
      break;
    }
  }
  mvcc_close(s);
}

/* A store for the corruption sweeps: each key put three times in a row, all
 * in one batch (so the file holds few stale copies); k2 has a lease. */
static void make_marked_store(const char *dir) {
  mvcc_store *s = open_with(dir, 0, 0, 0);
  grant(s, 5);
  struct mvcc_op ops[9];
  char vals[9][8];
  static const char *const ks[] = {"k0", "k1", "k2"};
  for (int i = 0; i < 9; i++) {
    snprintf(vals[i], sizeof vals[i], "MARK%d", i);
    ops[i] = op_put(ks[i / 3], vals[i]);
    ops[i].u.put.lease = i / 3 == 2 ? 5 : 0;
  }
  struct mvcc_result res[9];
  CHECK_OK(mvcc_apply(s, ops, 9, res));
  for (int i = 0; i < 9; i++) {
    CHECK_OK(res[i].err);
    mvcc_result_free(&res[i]);
  }
  mvcc_close(s);
}

/* One byte changed in front of a stored value, in every position of the 64
 * bytes before each copy of it (where a record keeps its header), with a few
 * patterns: +1 and -1 (a pointer to the previous revision becomes a pointer
 * to the record itself) and 0x7f (a huge positive number).
 *
 * Without import_dir, the corrupt file is the store's data file in dir.
 * With it, the corrupt file is a snapshot imported into import_dir: the import
 * either refuses it (and import_dir stays byte for byte as it was) or accepts
 * it. Either way the store must never crash or hang (docs/storage.md: "a
 * malformed record is CAIRN_ECORRUPT, never a crash"). The cases run in one
 * child process that reports its progress; the parent names the case that
 * crashed or stalled. */
static void sweep_corruptions(const char *dir, const char *file, const char *import_dir) {
  size_t n = 0;
  uint8_t *orig = read_file(file, &n);
  size_t occ[64], nocc = 0;
  for (size_t i = 64; i + 4 <= n && nocc < 64; i++) {
    if (memcmp(orig + i, "MARK", 4) == 0) {
      occ[nocc++] = i;
    }
  }
  CHECK(nocc >= 9);
  enum { NPAT = 3 };
  size_t ncases = nocc * 64 * NPAT;
  if (test_small()) {
    ncases /= 4; /* the first copies only */
  }
  if (import_dir) {
    ncases /= 4; /* an import syncs files: slower */
  }
  printf("    %zu cases over %zu copies%s\n", ncases, nocc, import_dir ? ", imported" : "");
  size_t tn = 0;
  uint8_t *target = NULL;
  char *target_path = NULL;
  if (import_dir) {
    target_path = data_path(import_dir);
    target = read_file(target_path, &tn);
  }

  int pfd[2];
  CHECK(pipe(pfd) == 0);
  char log[512];
  snprintf(log, sizeof log, "%s/child.log", dir);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(pfd[0]);
    /* The engine reports every malformed record on stderr: thousands of
     * lines. Kept in a file, shown if the child dies. */
    int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(lfd >= 0);
    CHECK(dup2(lfd, 2) == 2);
    uint8_t *p = malloc(n);
    CHECK(p != NULL);
    for (size_t c = 0; c < ncases; c++) {
      size_t o = c / (64 * NPAT), d = 1 + (c / NPAT) % 64, pat = c % NPAT;
      memcpy(p, orig, n);
      uint8_t *b = &p[occ[o] - d];
      const uint8_t nv[NPAT] = {(uint8_t)(*b + 1), (uint8_t)(*b - 1), 0x7f};
      if (nv[pat] == *b) {
        continue;
      }
      *b = nv[pat];
      uint64_t msg = c;
      CHECK(write(pfd[1], &msg, sizeof msg) == (ssize_t)sizeof msg);
      write_file(file, p, n, true);
      fprintf(stderr, "case %zu: copy at %zu, byte -%zu set to 0x%02x\n", c, occ[o], d, nv[pat]);
      if (import_dir == NULL) {
        exercise_store(dir);
        continue;
      }
      write_file(target_path, target, tn, true);
      int rc = mvcc_snapshot_import(import_dir, file);
      if (rc != 0) {
        size_t an = 0;
        uint8_t *after = read_file(target_path, &an);
        CHECK(an == tn && memcmp(after, target, tn) == 0);
        free(after);
      } else {
        exercise_store(import_dir);
      }
    }
    free(p);
    _exit(0);
  }
  close(pfd[1]);
  uint64_t last = UINT64_MAX;
  int64_t quiet_ms = 0;
  for (;;) {
    struct pollfd pf = {pfd[0], POLLIN, 0};
    int pr = poll(&pf, 1, 100);
    CHECK(pr >= 0 || errno == EINTR);
    if (pr <= 0) {
      quiet_ms += 100;
      if (quiet_ms > 5000) {
        fprintf(stderr, "case %" PRIu64 " hangs (see %s)\n", last, log);
        CHECK(kill(pid, SIGKILL) == 0);
        CHECK(waitpid(pid, NULL, 0) == pid);
        bool malformed_record_hangs = true;
        CHECK(!malformed_record_hangs);
      }
      continue;
    }
    uint64_t msg;
    ssize_t r = read(pfd[0], &msg, sizeof msg);
    if (r == 0) {
      break;
    }
    CHECK(r == (ssize_t)sizeof msg);
    last = msg;
    quiet_ms = 0;
  }
  close(pfd[0]);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "tail -3 '%s' >&2", log);
    fflush(stderr);
    CHECK(system(cmd) >= 0);
    fprintf(stderr, "case %" PRIu64 " of %zu crashed the store\n", last, ncases);
    bool malformed_record_crashes = true;
    CHECK(!malformed_record_crashes);
  }
  free(orig);
  free(target);
  free(target_path);
}

static void test_corrupt_records(void) {
  char *dir = test_tmpdir("badinput-records");
  make_marked_store(dir);
  char *path = data_path(dir);
  sweep_corruptions(dir, path, NULL);
  free(path);
  test_rmdir(dir);
}

struct import_args {
  const char *dir, *file;
};

static int import_child(void *arg) {
  const struct import_args *a = arg;
  return mvcc_snapshot_import(a->dir, a->file);
}

/* Snapshot import verifies before it replaces: a foreign or damaged snapshot
 * is refused and the target store stays as it was. */
static void test_bad_snapshot(void) {
  char *dir = test_tmpdir("badinput-snap");
  char src[512], dst[512], snap[512];
  snprintf(src, sizeof src, "%s/src", dir);
  snprintf(dst, sizeof dst, "%s/dst", dir);
  snprintf(snap, sizeof snap, "%s/snap.mdb", dir);
  CHECK(mkdir(src, 0755) == 0);
  CHECK(mkdir(dst, 0755) == 0);
  make_marked_store(src);
  make_store(dst);
  mvcc_store *s = open_with(src, 0, 0, 0);
  CHECK_OK(mvcc_snapshot_export(s, snap));
  mvcc_close(s);
  char *dst_file = data_path(dst);
  size_t tn = 0;
  uint8_t *target = read_file(dst_file, &tn);
  size_t sn = 0;
  uint8_t *good = read_file(snap, &sn);

  /* Foreign and damaged files. */
  char bad[512];
  snprintf(bad, sizeof bad, "%s/bad.mdb", dir);
  for (int kind = 0; kind < 4; kind++) {
    uint8_t *p = malloc(sn);
    CHECK(p != NULL);
    memcpy(p, good, sn);
    size_t len = sn;
    if (kind == 0) {
      const char *text = "not a snapshot\n";
      len = strlen(text);
      memcpy(p, text, len);
    } else if (kind == 1) {
      for (size_t i = 0; i < sn; i++) {
        p[i] = (uint8_t)test_rand();
      }
    } else if (kind == 2) {
      len = sn / 2; /* cut short */
    } else {
      for (size_t i = 0; i < 8192 && i < sn; i++) {
        p[i] = (uint8_t)test_rand(); /* the meta pages */
      }
    }
    write_file(bad, p, len, true);
    free(p);
    static const char *const kinds[] = {"a text file", "random bytes", "cut to half its size",
                                        "random meta pages"};
    char what[600];
    snprintf(what, sizeof what, "mvcc_snapshot_import of %s", kinds[kind]);
    struct import_args ia = {dst, bad};
    CHECK(in_child(what, import_child, &ia) < 0);
    size_t an = 0;
    uint8_t *after = read_file(dst_file, &an);
    CHECK(an == tn && memcmp(after, target, tn) == 0);
    free(after);
  }
  /* A missing file. */
  snprintf(bad, sizeof bad, "%s/missing.mdb", dir);
  CHECK(mvcc_snapshot_import(dst, bad) < 0);

  /* The good snapshot imports. */
  CHECK_OK(mvcc_snapshot_import(dst, snap));
  s = open_with(dst, 0, 0, 0);
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = b_str("k0");
  struct mvcc_result res;
  CHECK_OK(mvcc_range(s, &rq, &res));
  CHECK_EQ_INT(res.u.range.n_kvs, 1);
  CHECK(res.u.range.kvs[0].value.len == 5 &&
        memcmp(res.u.range.kvs[0].value.data, "MARK2", 5) == 0);
  mvcc_result_free(&res);
  mvcc_close(s);
  write_file(dst_file, target, tn, true);

  /* Single damaged bytes in front of values, as test_corrupt_records. */
  sweep_corruptions(dir, snap, dst);
  free(good);
  free(target);
  free(dst_file);
  test_rmdir(dir);
}

static void test_bad_path(void) {
  /* data.mdb is a directory. */
  char *dir = test_tmpdir("badinput-dir");
  char *path = data_path(dir);
  CHECK(mkdir(path, 0755) == 0);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* data.mdb cannot be opened: a symlink loop (works as root too). */
  dir = test_tmpdir("badinput-loop");
  path = data_path(dir);
  CHECK(symlink(MVCC_DATA_FILE, path) == 0);
  check_open_fails(dir);
  free(path);
  test_rmdir(dir);

  /* Unreadable by permissions (root reads everything, so only as a user). */
  if (geteuid() != 0) {
    dir = test_tmpdir("badinput-perm");
    make_store(dir);
    path = data_path(dir);
    CHECK(chmod(path, 0) == 0);
    mvcc_store *s = NULL;
    int rc = mvcc_open(dir, NULL, &s);
    CHECK(rc == CAIRN_EIO || rc == CAIRN_EFOREIGN_FILE);
    CHECK(chmod(path, 0644) == 0);
    free(path);
    test_rmdir(dir);
  }

  /* The sync marker beside the data file is a directory: refused cleanly. */
  dir = test_tmpdir("badinput-markerdir");
  make_store(dir);
  char marker[512];
  snprintf(marker, sizeof marker, "%s/%s", dir, MVCC_SYNC_MARKER_FILE);
  CHECK(unlink(marker) == 0);
  CHECK(mkdir(marker, 0755) == 0);
  check_open_fails(dir);
  test_rmdir(dir);

  /* A marker of random bytes or cut short: the store opens with its data, or
   * open fails; it never crashes. */
  for (int i = 0; i < 2; i++) {
    dir = test_tmpdir("badinput-marker");
    make_store(dir);
    mvcc_store *s = open_with(dir, 0, 0, 0);
    struct dump before = state_dump(s);
    mvcc_close(s);
    snprintf(marker, sizeof marker, "%s/%s", dir, MVCC_SYNC_MARKER_FILE);
    uint8_t junk[MVCC_SYNC_MARKER_BYTES];
    for (size_t j = 0; j < sizeof junk; j++) {
      junk[j] = (uint8_t)test_rand();
    }
    write_file(marker, junk, i == 0 ? sizeof junk : 10, true);
    s = NULL;
    int rc = mvcc_open(dir, NULL, &s);
    CHECK(rc <= 0);
    if (rc == 0) {
      check_unchanged(s, &before);
      mvcc_close(s);
    }
    free(before.p);
    test_rmdir(dir);
  }

  /* The store directory is a regular file. */
  dir = test_tmpdir("badinput-notdir");
  char *file = data_path(dir);
  write_file(file, "x", 1, true);
  mvcc_store *s = NULL;
  int rc = mvcc_open(file, NULL, &s);
  CHECK(rc < 0);
  free(file);
  test_rmdir(dir);
}

int main(void) {
  test_seed("test_badinput");
  TEST_RUN(test_too_large);
  TEST_RUN(test_empty_key);
  TEST_RUN(test_inverted_range);
  TEST_RUN(test_put_errors);
  TEST_RUN(test_txn_errors);
  TEST_RUN(test_quota);
  TEST_RUN(test_foreign_file);
  TEST_RUN(test_bad_path);
  /* These fail against the engine as of this commit (see the commit log). */
  TEST_RUN(test_corrupt_file);
  TEST_RUN(test_bad_snapshot);
  TEST_RUN(test_error_order);
  TEST_RUN(test_corrupt_records);
  return 0;
}
