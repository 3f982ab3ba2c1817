/* tests/unit/test_mvcc.c: the storage engine against etcd's KV semantics
 * (etcd-wire.md section 3), case by case. */
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "storage/checkpoint.h"
#include "storage/mvcc.h"
#include "test.h"

static char *dir;
static mvcc_store *st;

static const char END_ALL[1] = {0};

/* A C string as bytes; "\0" (one NUL byte) stays one byte, as etcd's
 * "every key >= key" range end. */
static struct mvcc_bytes B(const char *s) {
  if (s == END_ALL) {
    return (struct mvcc_bytes){(const uint8_t *)s, 1};
  }
  return (struct mvcc_bytes){(const uint8_t *)s, s ? strlen(s) : 0};
}

static void
open_store(void) {
  CHECK_OK(mvcc_open(dir, NULL, &st));
}

static void reopen(void) {
  mvcc_close(st);
  open_store();
}

static struct mvcc_result apply1(struct mvcc_op op) {
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(st, &op, 1, &r));
  return r;
}

static int64_t put(const char *k, const char *v) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = B(k);
  op.u.put.value = B(v);
  struct mvcc_result r = apply1(op);
  CHECK_OK(r.err);
  int64_t rev = r.u.put.revision;
  mvcc_result_free(&r);
  return rev;
}

static int64_t put_lease(const char *k, const char *v, int64_t lease, int want_err) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = B(k);
  op.u.put.value = B(v);
  op.u.put.lease = lease;
  struct mvcc_result r = apply1(op);
  CHECK_ERR(r.err, want_err);
  int64_t rev = r.u.put.revision;
  mvcc_result_free(&r);
  return rev;
}

static struct mvcc_result del(const char *k, const char *end, bool prev) {
  struct mvcc_op op = {.type = MVCC_OP_DELETE};
  op.u.del.key = B(k);
  op.u.del.range_end = B(end);
  op.u.del.prev_kv = prev;
  return apply1(op);
}

static struct mvcc_result get(const char *k, const char *end, int64_t rev) {
  struct mvcc_range_req q = {.key = B(k), .range_end = B(end), .revision = rev};
  struct mvcc_result r;
  mvcc_range(st, &q, &r);
  return r;
}

static void check_kv(const struct mvcc_kv *kv, const char *k, const char *v, int64_t create,
                     int64_t mod, int64_t version) {
  CHECK(kv->key.len == strlen(k) && memcmp(kv->key.data, k, kv->key.len) == 0);
  CHECK(kv->value.len == strlen(v) &&
        (kv->value.len == 0 || memcmp(kv->value.data, v, kv->value.len) == 0));
  CHECK_EQ_INT(kv->create_revision, create);
  CHECK_EQ_INT(kv->mod_revision, mod);
  CHECK_EQ_INT(kv->version, version);
}

static void test_revisions(void) {
  CHECK_EQ_INT(mvcc_current_revision(st), 1);
  CHECK_EQ_INT(put("a", "1"), 2);
  CHECK_EQ_INT(put("a", "1"), 3); /* the same value still makes a version */
  CHECK_EQ_INT(put("b", "x"), 4);
  struct mvcc_result r = get("a", NULL, 0);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.revision, 4);
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  check_kv(&r.u.range.kvs[0], "a", "1", 2, 3, 2);
  mvcc_result_free(&r);
  /* A delete resets the version; re-creation gets a new create revision. */
  r = del("a", NULL, true);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.del.deleted, 1);
  CHECK_EQ_INT(r.u.del.revision, 5);
  CHECK_EQ_INT(r.u.del.n_prev_kvs, 1);
  check_kv(&r.u.del.prev_kvs[0], "a", "1", 2, 3, 2);
  mvcc_result_free(&r);
  /* Deleting nothing does not bump the revision. */
  r = del("a", NULL, false);
  CHECK_EQ_INT(r.u.del.deleted, 0);
  CHECK_EQ_INT(r.u.del.revision, 5);
  mvcc_result_free(&r);
  CHECK_EQ_INT(mvcc_current_revision(st), 5);
  CHECK_EQ_INT(put("a", "2"), 6);
  r = get("a", NULL, 0);
  check_kv(&r.u.range.kvs[0], "a", "2", 6, 6, 1);
  mvcc_result_free(&r);
  /* History: every revision reads as it was. */
  r = get("a", NULL, 3);
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  check_kv(&r.u.range.kvs[0], "a", "1", 2, 3, 2);
  CHECK_EQ_INT(r.u.range.revision, 6);
  mvcc_result_free(&r);
  r = get("a", NULL, 5);
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  r = get("a", NULL, 1);
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  r = get("a", NULL, 7);
  CHECK_ERR(r.err, CAIRN_EFUTURE_REV);
  mvcc_result_free(&r);
  reopen();
  CHECK_EQ_INT(mvcc_current_revision(st), 6);
  r = get("a", NULL, 2);
  check_kv(&r.u.range.kvs[0], "a", "1", 2, 2, 1);
  mvcc_result_free(&r);
}

static void test_ranges(void) {
  const char *keys[] = {"k/a", "k/b", "k/c", "k/d", "l"};
  for (int i = 0; i < 5; i++) {
    put(keys[i], i % 2 ? "z" : "y");
  }
  put("k/a", "again");
  /* prefix: key with last byte + 1 */
  struct mvcc_result r = get("k/", "k0", 0);
  CHECK_EQ_INT(r.u.range.n_kvs, 4);
  CHECK_EQ_INT(r.u.range.count, 4);
  mvcc_result_free(&r);
  /* "\0" = every key >= key */
  r = get("k/c", END_ALL, 0);
  CHECK_EQ_INT(r.u.range.n_kvs, 3);
  mvcc_result_free(&r);
  struct mvcc_range_req q = {.key = B(END_ALL), .range_end = B(END_ALL)};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.count, mvcc_current_revision(st) >= 0 ? r.u.range.count : 0);
  CHECK(r.u.range.n_kvs >= 5);
  mvcc_result_free(&r);
  /* range_end <= key: empty */
  r = get("k/c", "k/a", 0);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  /* limit: count is the total, more says whether keys remain */
  q = (struct mvcc_range_req){.key = B("k/"), .range_end = B("k0"), .limit = 2};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 2);
  CHECK_EQ_INT(r.u.range.count, 4);
  CHECK(r.u.range.more);
  mvcc_result_free(&r);
  q.limit = 4;
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK(!r.u.range.more);
  mvcc_result_free(&r);
  /* count_only, keys_only */
  q = (struct mvcc_range_req){.key = B("k/"), .range_end = B("k0"), .count_only = true};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  CHECK_EQ_INT(r.u.range.count, 4);
  mvcc_result_free(&r);
  q = (struct mvcc_range_req){.key = B("k/"), .range_end = B("k0"), .keys_only = true};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 4);
  CHECK_EQ_INT(r.u.range.kvs[0].value.len, 0);
  mvcc_result_free(&r);
  /* sort: by mod descending; a non-KEY target with order NONE sorts ascending */
  q = (struct mvcc_range_req){.key = B("k/"),
                              .range_end = B("k0"),
                              .sort_order = MVCC_SORT_DESCEND,
                              .sort_target = MVCC_SORT_MOD};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK(memcmp(r.u.range.kvs[0].key.data, "k/a", 3) == 0);
  CHECK(memcmp(r.u.range.kvs[1].key.data, "k/d", 3) == 0);
  mvcc_result_free(&r);
  q.sort_order = MVCC_SORT_NONE;
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK(memcmp(r.u.range.kvs[3].key.data, "k/a", 3) == 0);
  mvcc_result_free(&r);
  q = (struct mvcc_range_req){.key = B("k/"),
                              .range_end = B("k0"),
                              .sort_order = MVCC_SORT_DESCEND,
                              .sort_target = MVCC_SORT_KEY,
                              .limit = 1};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  CHECK(memcmp(r.u.range.kvs[0].key.data, "k/d", 3) == 0);
  CHECK(r.u.range.more);
  mvcc_result_free(&r);
  q = (struct mvcc_range_req){.key = B("k/"),
                              .range_end = B("k0"),
                              .sort_order = MVCC_SORT_ASCEND,
                              .sort_target = MVCC_SORT_VALUE};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK(memcmp(r.u.range.kvs[0].value.data, "again", 5) == 0);
  mvcc_result_free(&r);
  /* filters */
  int64_t a_mod = mvcc_current_revision(st);
  q = (struct mvcc_range_req){
      .key = B("k/"), .range_end = B("k0"), .min_mod_revision = a_mod, .limit = 10};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  CHECK_EQ_INT(r.u.range.count, 4); /* count is before the filters */
  mvcc_result_free(&r);
  q = (struct mvcc_range_req){.key = B("k/"), .range_end = B("k0"), .max_create_revision = 1};
  CHECK_OK(mvcc_range(st, &q, &r));
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  /* empty key */
  q = (struct mvcc_range_req){.key = B("")};
  CHECK_ERR(mvcc_range(st, &q, &r), CAIRN_EEMPTY_KEY);
  mvcc_result_free(&r);
}

static void test_put_options(void) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = B("opt");
  op.u.put.ignore_value = true;
  struct mvcc_result r = apply1(op);
  CHECK_ERR(r.err, CAIRN_EKEY_NOT_FOUND);
  mvcc_result_free(&r);
  put("opt", "v1");
  r = apply1(op); /* ignore_value keeps the value */
  CHECK_OK(r.err);
  mvcc_result_free(&r);
  r = get("opt", NULL, 0);
  check_kv(&r.u.range.kvs[0], "opt", "v1", r.u.range.kvs[0].create_revision,
           mvcc_current_revision(st), 2);
  mvcc_result_free(&r);
  op.u.put.value = B("x");
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_EVALUE_PROVIDED);
  mvcc_result_free(&r);
  op = (struct mvcc_op){.type = MVCC_OP_PUT};
  op.u.put.key = B("opt");
  op.u.put.value = B("v3");
  op.u.put.prev_kv = true;
  r = apply1(op);
  CHECK(r.u.put.has_prev_kv);
  CHECK(r.u.put.prev_kv.value.len == 2 && memcmp(r.u.put.prev_kv.value.data, "v1", 2) == 0);
  mvcc_result_free(&r);
  op.u.put.ignore_lease = true;
  op.u.put.lease = 5;
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_ELEASE_PROVIDED);
  mvcc_result_free(&r);
}

static struct mvcc_result txn(const struct mvcc_txn_req *t) {
  struct mvcc_op op = {.type = MVCC_OP_TXN};
  op.u.txn = *t;
  return apply1(op);
}

static void test_txn(void) {
  int64_t base = put("t/x", "1");
  /* compare mod == base: success branch with put, delete and range */
  /* t/z does not exist yet: it compares as all zero */
  struct mvcc_compare cmp = {
      .result = MVCC_CMP_EQUAL, .target = MVCC_TARGET_CREATE, .key = B("t/z"), .number = 0};
  struct mvcc_request_op succ[3];
  memset(succ, 0, sizeof succ);
  succ[0].type = MVCC_REQUEST_PUT;
  succ[0].u.put.key = B("t/y");
  succ[0].u.put.value = B("2");
  succ[1].type = MVCC_REQUEST_PUT;
  succ[1].u.put.key = B("t/z");
  succ[1].u.put.value = B("3");
  succ[2].type = MVCC_REQUEST_RANGE;
  succ[2].u.range.key = B("t/");
  succ[2].u.range.range_end = B("t0");
  struct mvcc_txn_req t = {.compares = &cmp, .n_compares = 1, .success = succ, .n_success = 3};
  struct mvcc_result r = txn(&t);
  CHECK_OK(r.err);
  CHECK(r.u.txn.succeeded);
  CHECK_EQ_INT(r.u.txn.revision, base + 1);
  CHECK_EQ_INT(r.u.txn.n_responses, 3);
  CHECK_EQ_INT(r.u.txn.responses[0].u.put.revision, base + 1);
  /* the range inside the txn sees the txn's own writes */
  CHECK_EQ_INT(r.u.txn.responses[2].u.range.n_kvs, 3);
  CHECK_EQ_INT(r.u.txn.responses[2].u.range.revision, base + 1);
  CHECK_EQ_INT(r.u.txn.responses[2].u.range.kvs[1].mod_revision, base + 1);
  mvcc_result_free(&r);
  /* all writes of one txn share one revision */
  r = get("t/z", NULL, 0);
  CHECK_EQ_INT(r.u.range.kvs[0].mod_revision, base + 1);
  mvcc_result_free(&r);
  /* failing compare, empty failure branch: no new revision */
  r = txn(&t);
  CHECK(!r.u.txn.succeeded);
  CHECK_EQ_INT(r.u.txn.revision, base + 1);
  CHECK_EQ_INT(mvcc_current_revision(st), base + 1);
  mvcc_result_free(&r);
  /* VALUE compare on a missing key always fails, even NOT_EQUAL */
  struct mvcc_compare vc = {.result = MVCC_CMP_NOT_EQUAL,
                            .target = MVCC_TARGET_VALUE,
                            .key = B("t/missing"),
                            .value = B("q")};
  struct mvcc_txn_req t2 = {.compares = &vc, .n_compares = 1};
  r = txn(&t2);
  CHECK(!r.u.txn.succeeded);
  mvcc_result_free(&r);
  /* a missing key compares as all zero */
  struct mvcc_compare zc = {
      .result = MVCC_CMP_EQUAL, .target = MVCC_TARGET_VERSION, .key = B("t/missing"), .number = 0};
  t2.compares = &zc;
  r = txn(&t2);
  CHECK(r.u.txn.succeeded);
  mvcc_result_free(&r);
  /* compare over a range: every key must satisfy */
  struct mvcc_compare rc = {.result = MVCC_CMP_GREATER,
                            .target = MVCC_TARGET_CREATE,
                            .key = B("t/"),
                            .range_end = B("t0"),
                            .number = base};
  t2.compares = &rc;
  r = txn(&t2);
  CHECK(!r.u.txn.succeeded); /* t/x was created at base */
  mvcc_result_free(&r);
  rc.number = base - 1;
  r = txn(&t2);
  CHECK(r.u.txn.succeeded);
  mvcc_result_free(&r);
  /* duplicate keys: put/put, put under a delete range */
  struct mvcc_request_op dup[2];
  memset(dup, 0, sizeof dup);
  dup[0].type = MVCC_REQUEST_PUT;
  dup[0].u.put.key = B("d");
  dup[1] = dup[0];
  struct mvcc_txn_req t3 = {.success = dup, .n_success = 2};
  r = txn(&t3);
  CHECK_ERR(r.err, CAIRN_EDUPLICATE_KEY);
  mvcc_result_free(&r);
  dup[1].type = MVCC_REQUEST_DELETE;
  dup[1].u.del.key = B("c");
  dup[1].u.del.range_end = B("e");
  r = txn(&t3);
  CHECK_ERR(r.err, CAIRN_EDUPLICATE_KEY);
  mvcc_result_free(&r);
  /* the same key in both branches of a nested txn is fine */
  struct mvcc_request_op inner_s[1], inner_f[1], outer[1];
  memset(inner_s, 0, sizeof inner_s);
  inner_s[0].type = MVCC_REQUEST_PUT;
  inner_s[0].u.put.key = B("n");
  inner_s[0].u.put.value = B("s");
  inner_f[0] = inner_s[0];
  inner_f[0].u.put.value = B("f");
  struct mvcc_txn_req inner = {.compares = &zc,
                               .n_compares = 1,
                               .success = inner_s,
                               .n_success = 1,
                               .failure = inner_f,
                               .n_failure = 1};
  memset(outer, 0, sizeof outer);
  outer[0].type = MVCC_REQUEST_TXN;
  outer[0].u.txn = &inner;
  struct mvcc_txn_req t4 = {.success = outer, .n_success = 1};
  r = txn(&t4);
  CHECK_OK(r.err);
  CHECK(r.u.txn.succeeded);
  CHECK(r.u.txn.responses[0].u.txn->succeeded);
  mvcc_result_free(&r);
  r = get("n", NULL, 0);
  CHECK(r.u.range.n_kvs == 1 && r.u.range.kvs[0].value.data[0] == 's');
  mvcc_result_free(&r);
  /* too many ops */
  struct mvcc_request_op many[129];
  memset(many, 0, sizeof many);
  for (int i = 0; i < 129; i++) {
    many[i].type = MVCC_REQUEST_RANGE;
    many[i].u.range.key = B("x");
  }
  struct mvcc_txn_req t5 = {.success = many, .n_success = 129};
  r = txn(&t5);
  CHECK_ERR(r.err, CAIRN_ETOO_MANY_OPS);
  mvcc_result_free(&r);
  t5.n_success = 128;
  r = txn(&t5);
  CHECK_OK(r.err);
  mvcc_result_free(&r);
  /* an unknown lease in a txn put fails the whole txn */
  struct mvcc_request_op lp[2];
  memset(lp, 0, sizeof lp);
  lp[0].type = MVCC_REQUEST_PUT;
  lp[0].u.put.key = B("lp1");
  lp[1].type = MVCC_REQUEST_PUT;
  lp[1].u.put.key = B("lp2");
  lp[1].u.put.lease = 999;
  struct mvcc_txn_req t6 = {.success = lp, .n_success = 2};
  int64_t before = mvcc_current_revision(st);
  r = txn(&t6);
  CHECK_ERR(r.err, CAIRN_ELEASE_NOT_FOUND);
  mvcc_result_free(&r);
  CHECK_EQ_INT(mvcc_current_revision(st), before);
  r = get("lp1", NULL, 0);
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
}

static void test_compaction(void) {
  for (int i = 0; i < 50; i++) {
    put("c/k", i % 2 ? "odd" : "even");
  }
  int64_t mid = mvcc_current_revision(st);
  struct mvcc_result r = del("c/k", NULL, false);
  mvcc_result_free(&r);
  put("c/k", "new");
  int64_t top = mvcc_current_revision(st);
  struct mvcc_op op = {.type = MVCC_OP_COMPACT, .u.compact_revision = mid};
  r = apply1(op);
  CHECK_OK(r.err);
  mvcc_result_free(&r);
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_ECOMPACTED);
  mvcc_result_free(&r);
  op.u.compact_revision = top + 10;
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_EFUTURE_REV);
  mvcc_result_free(&r);
  CHECK_EQ_INT(mvcc_compacted_revision(st), mid);
  r = get("c/k", NULL, mid - 1);
  CHECK_ERR(r.err, CAIRN_ECOMPACTED);
  mvcc_result_free(&r);
  bool done = false;
  for (int i = 0; i < 1000 && !done; i++) {
    CHECK_OK(mvcc_compact_step(st, 7, &done));
  }
  CHECK(done);
  /* reading at exactly the compacted revision works */
  r = get("c/k", NULL, mid);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  CHECK_EQ_INT(r.u.range.kvs[0].version, 50);
  mvcc_result_free(&r);
  r = get("c/k", NULL, mid + 1);
  CHECK_EQ_INT(r.u.range.n_kvs, 0);
  mvcc_result_free(&r);
  /* the feed: from below the compacted revision is an error */
  struct mvcc_feed f;
  struct mvcc_feed_req fq = {.key = B("c/k"), .start_revision = mid - 1, .prev_kv = true};
  CHECK_ERR(mvcc_changes(st, &fq, &f), CAIRN_ECOMPACTED);
  fq.start_revision = mid;
  CHECK_OK(mvcc_changes(st, &fq, &f));
  CHECK_EQ_INT(f.n_events, 3);
  CHECK(f.events[0].type == MVCC_EVENT_PUT && f.events[0].kv.mod_revision == mid);
  CHECK(f.events[1].type == MVCC_EVENT_DELETE && f.events[1].kv.mod_revision == mid + 1);
  CHECK(f.events[1].has_prev_kv && f.events[1].prev_kv.mod_revision == mid);
  CHECK(f.events[2].type == MVCC_EVENT_PUT && !f.events[2].has_prev_kv);
  CHECK(f.caught_up);
  mvcc_feed_free(&f);
  /* compact everything: the tombstone goes */
  op.u.compact_revision = mid + 1;
  r = apply1(op);
  mvcc_result_free(&r);
  done = false;
  while (!done) {
    CHECK_OK(mvcc_compact_step(st, 0, &done));
  }
  r = get("c/k", NULL, 0);
  CHECK_EQ_INT(r.u.range.kvs[0].version, 1);
  mvcc_result_free(&r);
  reopen();
  CHECK_EQ_INT(mvcc_compacted_revision(st), mid + 1);
}

static void test_leases(void) {
  struct mvcc_op op = {.type = MVCC_OP_LEASE_GRANT};
  op.u.lease_grant.id = 42;
  op.u.lease_grant.ttl = 60;
  op.u.lease_grant.now_ms = 1000;
  struct mvcc_result r = apply1(op);
  CHECK_OK(r.err);
  mvcc_result_free(&r);
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_ELEASE_EXISTS);
  mvcc_result_free(&r);
  put_lease("l/1", "a", 42, 0);
  put_lease("l/2", "b", 42, 0);
  put_lease("l/3", "c", 43, CAIRN_ELEASE_NOT_FOUND);
  put_lease("l/2", "b2", 0, 0); /* detaches l/2 */
  struct mvcc_result keys;
  CHECK_OK(mvcc_lease_keys(st, 42, &keys));
  CHECK_EQ_INT(keys.u.range.n_kvs, 1);
  mvcc_result_free(&keys);
  struct mvcc_lease l;
  CHECK_OK(mvcc_lease_get(st, 42, &l));
  CHECK_EQ_INT(l.ttl, 60);
  CHECK_EQ_INT(l.granted_ms, 1000);
  CHECK_ERR(mvcc_lease_get(st, 43, &l), CAIRN_ELEASE_NOT_FOUND);
  put_lease("l/4", "d", 42, 0);
  int64_t before = mvcc_current_revision(st);
  op = (struct mvcc_op){.type = MVCC_OP_LEASE_REVOKE, .u.lease_revoke_id = 42};
  r = apply1(op);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.lease.revision, before + 1); /* both keys in one revision */
  mvcc_result_free(&r);
  r = get("l/", "l0", 0);
  CHECK_EQ_INT(r.u.range.n_kvs, 1); /* l/2 stays */
  mvcc_result_free(&r);
  r = apply1(op);
  CHECK_ERR(r.err, CAIRN_ELEASE_NOT_FOUND);
  mvcc_result_free(&r);
  struct mvcc_lease *all;
  size_t n;
  CHECK_OK(mvcc_lease_list(st, &all, &n));
  CHECK_EQ_INT(n, 0);
  free(all);
}

static void test_batch_and_replay(void) {
  struct mvcc_op ops[3];
  memset(ops, 0, sizeof ops);
  for (int i = 0; i < 3; i++) {
    ops[i].type = MVCC_OP_PUT;
    ops[i].raft_index = 100 + (uint64_t)i;
    ops[i].raft_term = 7;
    ops[i].u.put.key = B("batch");
    ops[i].u.put.value = B("v");
  }
  ops[1].u.put.lease = 12345; /* fails alone */
  struct mvcc_result res[3];
  int64_t before = mvcc_current_revision(st);
  CHECK_OK(mvcc_apply(st, ops, 3, res));
  CHECK_OK(res[0].err);
  CHECK_ERR(res[1].err, CAIRN_ELEASE_NOT_FOUND);
  CHECK_OK(res[2].err);
  CHECK_EQ_INT(res[0].u.put.revision, before + 1);
  CHECK_EQ_INT(res[2].u.put.revision, before + 2);
  for (int i = 0; i < 3; i++) {
    mvcc_result_free(&res[i]);
  }
  CHECK_EQ_INT(mvcc_applied_index(st), 102);
  CHECK_EQ_INT(mvcc_applied_term(st), 7);
  reopen();
  CHECK_EQ_INT(mvcc_applied_index(st), 102);
  /* replay: skipped, nothing changes */
  CHECK_OK(mvcc_apply(st, ops, 3, res));
  for (int i = 0; i < 3; i++) {
    CHECK_ERR(res[i].err, CAIRN_EREPLAY);
    mvcc_result_free(&res[i]);
  }
  CHECK_EQ_INT(mvcc_current_revision(st), before + 2);
  /* meta */
  struct mvcc_op m = {.type = MVCC_OP_META_PUT};
  m.u.meta_put.name = "cluster_id";
  m.u.meta_put.value = B("abc");
  struct mvcc_result r = apply1(m);
  mvcc_result_free(&r);
  char buf[16];
  size_t len;
  CHECK_OK(mvcc_meta_get(st, "cluster_id", buf, sizeof buf, &len));
  CHECK(len == 3 && memcmp(buf, "abc", 3) == 0);
  CHECK_ERR(mvcc_meta_get(st, "nope", buf, sizeof buf, &len), CAIRN_EKEY_NOT_FOUND);
}

/* mvcc_apply_ready: what ready sees, and how often it runs. */
struct ready_seen {
  unsigned calls;
  int64_t committed; /* the store's revision during the call */
  int64_t first_rev; /* the first result's revision then */
  int64_t read_mod;  /* a read of key "ready" then: its mod revision (0: none) */
  struct mvcc_result *res;
};

static int64_t mod_revision_of(const char *key) {
  struct mvcc_range_req q = {.key = B(key)};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(st, &q, &r));
  int64_t mod = r.u.range.n_kvs == 1 ? r.u.range.kvs[0].mod_revision : 0;
  mvcc_result_free(&r);
  return mod;
}

static void on_ready_seen(void *data) {
  struct ready_seen *r = data;
  r->calls++;
  r->committed = mvcc_current_revision(st);
  r->first_rev = r->res[0].u.put.revision;
  r->read_mod = mod_revision_of("ready");
}

/* The results come out before the commit, once, also when the map has to
 * grow under the batch (the batch runs again; ready does not). */
static void test_apply_ready(void) {
  int64_t old_mod = put("ready", "old");
  struct mvcc_op ops[3];
  memset(ops, 0, sizeof ops);
  uint64_t index = mvcc_applied_index(st);
  for (int i = 0; i < 3; i++) {
    ops[i].type = MVCC_OP_PUT;
    ops[i].raft_index = index + 1 + (uint64_t)i;
    ops[i].raft_term = 7;
    ops[i].u.put.key = B("ready");
    ops[i].u.put.value = B("v");
  }
  struct mvcc_result res[3];
  int64_t before = mvcc_current_revision(st);
  struct ready_seen seen = {.res = res};
  CHECK_OK(mvcc_apply_ready(st, ops, 3, res, on_ready_seen, &seen));
  CHECK_EQ_INT(seen.calls, 1);
  CHECK_EQ_INT(seen.committed, before);     /* not committed during the call */
  CHECK_EQ_INT(seen.first_rev, before + 1); /* the results final */
  CHECK_EQ_INT(seen.read_mod, old_mod);     /* a read then: the state before */
  CHECK_EQ_INT(mvcc_current_revision(st), before + 3);
  /* A read after the commit sees the batch, although a read view was
   * opened while the transaction was (the view goes with the commit). */
  CHECK_EQ_INT(mod_revision_of("ready"), before + 3);
  CHECK_EQ_INT(mvcc_applied_index(st), index + 3);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(res[i].u.put.revision, before + 1 + i);
    mvcc_result_free(&res[i]);
  }
  /* A batch larger than the map (64 MiB at open): MDB_MAP_FULL, growth, the
   * batch again; ready once, with the outcome of the run that committed. */
  enum { BIG = 72 };
  size_t vlen = 1024u * 1024u;
  uint8_t *value = malloc(vlen);
  CHECK(value != NULL);
  memset(value, 'x', vlen);
  struct mvcc_op big[BIG];
  struct mvcc_result bres[BIG];
  char keys[BIG][16];
  memset(big, 0, sizeof big);
  index = mvcc_applied_index(st);
  before = mvcc_current_revision(st);
  for (int i = 0; i < BIG; i++) {
    snprintf(keys[i], sizeof keys[i], "big%02d", i);
    big[i].type = MVCC_OP_PUT;
    big[i].raft_index = index + 1 + (uint64_t)i;
    big[i].raft_term = 7;
    big[i].u.put.key = B(keys[i]);
    big[i].u.put.value = (struct mvcc_bytes){value, vlen};
  }
  seen = (struct ready_seen){.res = bres};
  CHECK_OK(mvcc_apply_ready(st, big, BIG, bres, on_ready_seen, &seen));
  CHECK_EQ_INT(seen.calls, 1);
  CHECK_EQ_INT(seen.committed, before);
  CHECK_EQ_INT(mvcc_current_revision(st), before + BIG);
  for (int i = 0; i < BIG; i++) {
    CHECK_OK(bres[i].err);
    CHECK_EQ_INT(bres[i].u.put.revision, before + 1 + i);
    mvcc_result_free(&bres[i]);
  }
  free(value);
}

static void test_snapshot_and_defrag(void) {
  char path[512];
  snprintf(path, sizeof path, "%s/../%s.snap", dir, "cairn-test");
  unlink(path);
  CHECK_OK(mvcc_snapshot_export(st, path));
  int64_t rev = mvcc_current_revision(st);
  struct mvcc_result before = get(END_ALL, END_ALL, 0);
  char *dir2 = test_tmpdir("import");
  CHECK_OK(mvcc_snapshot_import(dir2, path));
  mvcc_store *s2;
  CHECK_OK(mvcc_open(dir2, NULL, &s2));
  CHECK_EQ_INT(mvcc_current_revision(s2), rev);
  struct mvcc_range_req q = {.key = B(END_ALL), .range_end = B(END_ALL)};
  struct mvcc_result after;
  CHECK_OK(mvcc_range(s2, &q, &after));
  CHECK_EQ_INT(after.u.range.n_kvs, before.u.range.n_kvs);
  mvcc_result_free(&after);
  mvcc_close(s2);
  test_rmdir(dir2);
  /* a foreign file refuses to import */
  FILE *fp = fopen(path, "w");
  fputs("not a store", fp);
  fclose(fp);
  dir2 = test_tmpdir("import2");
  CHECK(mvcc_snapshot_import(dir2, path) < 0);
  test_rmdir(dir2);
  unlink(path);
  CHECK_OK(mvcc_defrag(st));
  CHECK_EQ_INT(mvcc_current_revision(st), rev);
  struct mvcc_result again = get(END_ALL, END_ALL, 0);
  CHECK_EQ_INT(again.u.range.n_kvs, before.u.range.n_kvs);
  mvcc_result_free(&again);
  mvcc_result_free(&before);
  put("after-defrag", "ok");
}

struct child_ckpt {
  int status;
  fileio *f;
};

static void on_child_checkpoint(void *data, int status, uint64_t index, int64_t revision) {
  struct child_ckpt *c = data;
  (void)index;
  (void)revision;
  c->status = status;
  fileio_close(c->f, NULL, NULL);
}

/* A child writes and dies without closing the store (its writes are in the
 * page cache only); with checkpoint, it checkpoints after the first write;
 * with more, it writes again after that. */
static void crash_child(const char *d, bool checkpoint, bool more) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    if (mvcc_open(d, NULL, &st) != 0) {
      _exit(2);
    }
    put("crash/1", "x");
    if (checkpoint) {
      uv_loop_t loop;
      uv_loop_init(&loop);
      struct child_ckpt c = {1, NULL};
      if (fileio_init(&loop, 0, &c.f) != 0 ||
          checkpoint_start(st, c.f, &c, on_child_checkpoint) != 0) {
        _exit(3);
      }
      uv_run(&loop, UV_RUN_DEFAULT);
      if (c.status != 0) {
        _exit(4);
      }
    }
    if (more) {
      put("crash/2", "y");
    }
    _exit(0);
  }
  int status;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* The sync marker: writes never synced before a "reboot" (a different boot
 * id) make the store refuse to open; a checkpoint or a clean close clears
 * that; a process crash within one boot is fine. */
static void test_sync_marker(void) {
  char *d = test_tmpdir("marker");
  mvcc_store *saved = st;
  crash_child(d, false, false);
  mvcc_store *s2;
  setenv("CAIRN_BOOT_ID", "another-boot", 1);
  CHECK_ERR(mvcc_open(d, NULL, &s2), CAIRN_EUNSYNCED);
  unsetenv("CAIRN_BOOT_ID");
  CHECK_OK(mvcc_open(d, NULL, &s2)); /* same boot: the page cache held it */
  mvcc_close(s2);                    /* a clean close syncs */
  setenv("CAIRN_BOOT_ID", "another-boot", 1);
  CHECK_OK(mvcc_open(d, NULL, &s2));
  mvcc_close(s2);
  unsetenv("CAIRN_BOOT_ID");
  /* a checkpoint covers what was written before it, not after */
  crash_child(d, true, false);
  setenv("CAIRN_BOOT_ID", "a-third-boot", 1);
  CHECK_OK(mvcc_open(d, NULL, &s2));
  mvcc_close(s2);
  unsetenv("CAIRN_BOOT_ID");
  crash_child(d, true, true);
  setenv("CAIRN_BOOT_ID", "a-fourth-boot", 1);
  CHECK_ERR(mvcc_open(d, NULL, &s2), CAIRN_EUNSYNCED);
  unsetenv("CAIRN_BOOT_ID");
  test_rmdir(d);
  st = saved;
}

/* KiB of the data file mapped into this process (/proc/self/smaps). */
static long data_file_mapped_kib(const char *d) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", d, MVCC_DATA_FILE);
  FILE *f = fopen("/proc/self/smaps", "r");
  CHECK(f != NULL);
  char line[4096];
  bool in = false;
  long kib = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '/') != NULL) {
      line[strcspn(line, "\n")] = 0;
      in = strcmp(strchr(line, '/'), path) == 0;
    } else if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      in = false;
    } else if (in && strncmp(line, "Rss:", 4) == 0) {
      kib += atol(line + 4);
    }
  }
  fclose(f);
  return kib;
}

/* The test's own probe for what mvcc_map_exact() relies on: a userfaultfd
 * for user-mode faults with asynchronous write-protect (Linux 6.7). */
static bool kernel_can_map_exactly(void) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (fd < 0) {
    return false;
  }
  struct uffdio_api api = {.api = UFFD_API, .features = 1ull << 15 /* UFFD_FEATURE_WP_ASYNC */};
  bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
  close(fd);
  return ok;
}

/* The mapping of the data file is dropped every MVCC_RELEASE_BYTES of growth,
 * so what stays mapped after writing 48 MiB of history is a few steps' worth,
 * not the file; everything still reads back, old revisions too. */
static void test_map_release(void) {
  char *d = test_tmpdir("release");
  mvcc_store *s;
  CHECK_OK(mvcc_open(d, NULL, &s));
  enum { KEYS = 256, BATCH = 32, VALUE = 1000 };
  static char values[BATCH][VALUE + 1];
  char keys[BATCH][16];
  struct mvcc_op ops[BATCH];
  struct mvcc_result res[BATCH];
  uint64_t size = 0;
  unsigned n = 0;
  while (size < (48u << 20)) {
    for (unsigned i = 0; i < BATCH; i++, n++) {
      snprintf(keys[i], sizeof keys[i], "k%03u", n % KEYS);
      memset(values[i], 'a' + (int)(n % 26), VALUE);
      snprintf(values[i], 16, "%u:", n);
      values[i][strlen(values[i])] = '-';
      ops[i] = (struct mvcc_op){.type = MVCC_OP_PUT};
      ops[i].u.put.key = B(keys[i]);
      ops[i].u.put.value = (struct mvcc_bytes){(const uint8_t *)values[i], VALUE};
    }
    CHECK_OK(mvcc_apply(s, ops, BATCH, res));
    for (unsigned i = 0; i < BATCH; i++) {
      CHECK_OK(res[i].err);
      mvcc_result_free(&res[i]);
    }
    CHECK_OK(mvcc_size(s, &size, NULL));
  }
  /* Growth releases are for a mapping with fault-around; an exact one
   * unmaps finished history leaves instead. */
  CHECK(mvcc_map_exact(s) ? mvcc_map_unmapped(s) > 10000 : mvcc_map_releases(s) >= 8);
  long mapped = data_file_mapped_kib(d);
  fprintf(stderr,
          "test_map_release: data file %llu MiB, %ld KiB mapped, %llu releases, %llu pages of "
          "finished history unmapped\n",
          (unsigned long long)(size >> 20), mapped, (unsigned long long)mvcc_map_releases(s),
          (unsigned long long)mvcc_map_unmapped(s));
  CHECK(mapped < (mvcc_map_exact(s) ? 4 : 24) * 1024);
  /* Without growth, MVCC_RELEASE_COMMITS commits drop the whole mapping. */
  uint64_t before = mvcc_map_releases(s);
  for (unsigned i = 0; i < MVCC_RELEASE_COMMITS; i++) {
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = B("small");
    op.u.put.value = B("v");
    CHECK_OK(mvcc_apply(s, &op, 1, res));
    CHECK_OK(res[0].err);
    mvcc_result_free(&res[0]);
  }
  CHECK(mvcc_map_releases(s) > before);
  long after = data_file_mapped_kib(d);
  fprintf(stderr, "test_map_release: %ld KiB mapped after %u small commits\n", after,
          MVCC_RELEASE_COMMITS);
  CHECK(after < 4 * 1024);
  mvcc_store *saved = st;
  st = s;
  /* With fault-around off, a read maps the pages it reads (the meta page and
   * the path through kv: three or four), not the 64 KiB around each. */
  long base = data_file_mapped_kib(d);
  struct mvcc_result r1 = get("k100", NULL, 0);
  CHECK_OK(r1.err);
  mvcc_result_free(&r1);
  long grown = data_file_mapped_kib(d) - base;
  fprintf(stderr, "test_map_release: one read mapped %ld KiB (fault-around %s)\n", grown,
          mvcc_map_exact(s) ? "off" : "on: this kernel does not allow turning it off");
  CHECK(mvcc_map_exact(s) == kernel_can_map_exactly());
  if (mvcc_map_exact(s)) {
    CHECK(grown <= 32);
  }
  /* Every key's latest value and the first revision's reads are intact. */
  for (unsigned k = 0; k < KEYS; k++) {
    char key[16];
    snprintf(key, sizeof key, "k%03u", k);
    struct mvcc_result r = get(key, NULL, 0);
    CHECK_OK(r.err);
    CHECK_EQ_INT(r.u.range.n_kvs, 1);
    unsigned last = n - 1 - (n - 1 - k) % KEYS; /* the last n with n % KEYS == k */
    char want[16];
    snprintf(want, sizeof want, "%u:-", last);
    CHECK(memcmp(r.u.range.kvs[0].value.data, want, strlen(want)) == 0);
    mvcc_result_free(&r);
  }
  struct mvcc_result r = get("k000", NULL, 2);
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.n_kvs, 1);
  CHECK(memcmp(r.u.range.kvs[0].value.data, "0:-", 3) == 0);
  mvcc_result_free(&r);
  st = saved;
  mvcc_close(s);
  test_rmdir(d);
}

int main(void) {
  test_seed("test_mvcc");
  dir = test_tmpdir("mvcc");
  open_store();
  TEST_RUN(test_revisions);
  TEST_RUN(test_ranges);
  TEST_RUN(test_put_options);
  TEST_RUN(test_txn);
  TEST_RUN(test_compaction);
  TEST_RUN(test_leases);
  TEST_RUN(test_batch_and_replay);
  TEST_RUN(test_apply_ready);
  TEST_RUN(test_snapshot_and_defrag);
  TEST_RUN(test_sync_marker);
  TEST_RUN(test_map_release);
  mvcc_close(st);
  test_rmdir(dir);
  return 0;
}
