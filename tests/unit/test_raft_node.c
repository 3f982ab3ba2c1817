/* tests/unit/test_raft_node.c: the raft glue on real libraft, libuv and
 * LMDB: a single member (start, proposals of every kind, stop, restart,
 * snapshots, kill -9 and recovery, many proposals in flight, refusals), the
 * start-up consistency checks, and a three-member cluster on 127.0.0.1. */
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <uv.h>

#include "raft/fsm.h"
#include "raft/memberid.h"
#include "raft/raftnode.h"
#include "raft/raftnode_int.h" /* the may-answer rule, read directly */
#include "test.h"
#include "test_loop.h"
#include "test_net.h"

/* ---- plumbing ------------------------------------------------------------- */

static bool flag_set(void *arg) {
  return *(bool *)arg;
}

/* One member: its loop is shared; its directory holds store/ and raft/. */
struct member {
  char name[16];
  char url[64];
  char *dir;
  char store_dir[512];
  mvcc_store *store;
  raftnode *node;
  bool closed;
  int64_t notified_revision;
  unsigned notifications;
};

struct cluster {
  uv_loop_t loop;
  size_t n;
  struct member m[3];
  struct raftnode_member initial[3];
  struct raftnode_options opts;
};

static void on_applied(void *data, int64_t revision) {
  struct member *m = data;
  CHECK(revision > m->notified_revision);
  m->notified_revision = revision;
  m->notifications++;
}

static void cluster_init(struct cluster *c, size_t n) {
  memset(c, 0, sizeof *c);
  CHECK_OK(uv_loop_init(&c->loop));
  c->n = n;
  for (size_t i = 0; i < n; i++) {
    struct member *m = &c->m[i];
    snprintf(m->name, sizeof m->name, "m%u", (unsigned)(i + 1) % 1000u);
    snprintf(m->url, sizeof m->url, "http://127.0.0.1:%d", test_free_port());
    m->dir = test_tmpdir("raftnode");
    snprintf(m->store_dir, sizeof m->store_dir, "%s/store", m->dir);
    CHECK(mkdir(m->store_dir, 0700) == 0);
    c->initial[i] = (struct raftnode_member){m->name, m->url};
  }
  c->opts = (struct raftnode_options){
      .initial_cluster = c->initial,
      .n_initial_cluster = n,
      .cluster_token = "test-token",
      .new_cluster = true,
      .heartbeat_ms = 20,
      .election_ms = 200,
      .snapshot_count = 0,
  };
}

static int member_start(struct cluster *c, size_t i) {
  struct member *m = &c->m[i];
  if (m->store == NULL) {
    CHECK_OK(mvcc_open(m->store_dir, NULL, &m->store));
  }
  struct raftnode_options o = c->opts;
  o.name = m->name;
  o.data_dir = m->dir;
  m->closed = false;
  int rc = raftnode_start(&c->loop, m->store, &o, &m->node);
  if (rc == 0) {
    raftnode_on_applied(m->node, on_applied, m);
  }
  return rc;
}

static void on_closed(void *data) {
  struct member *m = data;
  m->closed = true;
}

static bool member_closed(void *arg) {
  return ((struct member *)arg)->closed;
}

static void member_stop(struct cluster *c, size_t i, bool close_store) {
  struct member *m = &c->m[i];
  raftnode_stop(m->node, on_closed, m);
  CHECK(run_until(&c->loop, member_closed, m, 20000));
  m->node = NULL;
  if (close_store) {
    mvcc_close(m->store);
    m->store = NULL;
  }
}

/* Runs the loop until nothing is left on it (after a failed start). */
static void drain_loop(uv_loop_t *loop) {
  uint64_t end = now_ms() + 10000;
  while (uv_run(loop, UV_RUN_NOWAIT) != 0 && now_ms() < end) {
    usleep(1000);
  }
  CHECK(uv_loop_alive(loop) == 0);
}

static void cluster_close(struct cluster *c) {
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].node != NULL) {
      member_stop(c, i, false);
    }
  }
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].store != NULL) {
      mvcc_close(c->m[i].store);
      c->m[i].store = NULL;
    }
  }
  /* Every handle of raft, the transport, fileio and the node is closed. */
  CHECK_OK(uv_loop_close(&c->loop));
  for (size_t i = 0; i < c->n; i++) {
    test_rmdir(c->m[i].dir);
  }
}

static bool is_leader(void *arg) {
  struct member *m = arg;
  struct raftnode_status st;
  raftnode_status(m->node, &st);
  return st.is_leader;
}

/* The leader wrote the member table (raft/membership.c). */
static bool table_written(void *arg) {
  struct member *m = arg;
  return raftnode_self_published(m->node);
}

/* One member, started and leader, its member table written: the entries
 * proposed from here on are the test's own. */
static struct member *start_single(struct cluster *c) {
  struct member *m = &c->m[0];
  CHECK_OK(member_start(c, 0));
  CHECK(run_until(&c->loop, is_leader, m, 5000));
  CHECK(run_until(&c->loop, table_written, m, 5000));
  return m;
}

/* ---- proposals ------------------------------------------------------------ */

struct waiter {
  bool done;
  int status;
  bool has_result;
  struct mvcc_result result;
  uint64_t order; /* completion order */
};

static uint64_t completions;

static void on_proposed(void *data, int status, struct mvcc_result *result) {
  struct waiter *w = data;
  CHECK(!w->done);
  w->done = true;
  w->status = status;
  w->order = ++completions;
  if (result != NULL) {
    CHECK_EQ_INT(status, 0);
    w->result = *result; /* take it over */
    w->has_result = true;
  } else {
    CHECK(status != 0);
  }
}

static void waiter_free(struct waiter *w) {
  if (w->has_result) {
    mvcc_result_free(&w->result);
    w->has_result = false;
  }
}

static struct mvcc_bytes b(const char *s) {
  return (struct mvcc_bytes){(const uint8_t *)s, strlen(s)};
}

static struct mvcc_op put_op(const char *key, const char *value, int64_t lease) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = b(key);
  op.u.put.value = b(value);
  op.u.put.lease = lease;
  op.u.put.prev_kv = true;
  return op;
}

/* Proposes op on m and waits for its outcome. */
static struct waiter propose_wait(struct cluster *c, struct member *m, const struct mvcc_op *op) {
  struct waiter w = {0};
  CHECK_OK(raftnode_propose(m->node, op, &w, on_proposed));
  CHECK(run_until(&c->loop, flag_set, &w.done, 10000));
  return w;
}

static void check_value(mvcc_store *s, const char *key, const char *value, int64_t *mod_rev) {
  struct mvcc_range_req req = {.key = b(key)};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(s, &req, &r));
  CHECK_OK(r.err);
  CHECK_EQ_INT(r.u.range.n_kvs, value ? 1 : 0);
  if (value != NULL) {
    CHECK(r.u.range.kvs[0].value.len == strlen(value));
    CHECK(memcmp(r.u.range.kvs[0].value.data, value, strlen(value)) == 0);
    if (mod_rev != NULL) {
      *mod_rev = r.u.range.kvs[0].mod_revision;
    }
  }
  mvcc_result_free(&r);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_ids(void) {
  /* etcd's well-known ids for `etcd` with no flags: member "default" at
   * http://localhost:2380, token "etcd-cluster". */
  struct raftnode_member def = {"default", "http://localhost:2380"};
  struct memberid_cluster ids;
  CHECK_OK(memberid_cluster("default", &def, 1, NULL, &ids));
  CHECK(ids.self_id == 0x8e9e05c52164694dull);
  CHECK(ids.cluster_id == 0xcdf818194e3a8c32ull);
  CHECK(strcmp(ids.members[0].address, "localhost:2380") == 0);

  /* Several URLs per member, given in any order, spaces trimmed; members
   * sorted by id; the result does not depend on the order of entries. */
  struct raftnode_member a[] = {{"x", "http://10.0.0.2:2380"},
                                {"y", " http://10.0.0.3:2380 "},
                                {"x", "http://10.0.0.1:2380"}};
  struct raftnode_member z[] = {
      {"y", "http://10.0.0.3:2380"}, {"x", "http://10.0.0.1:2380"}, {"x", "http://10.0.0.2:2380"}};
  struct memberid_cluster i1, i2;
  CHECK_OK(memberid_cluster("x", a, 3, "tok", &i1));
  CHECK_OK(memberid_cluster("x", z, 3, "tok", &i2));
  CHECK_EQ_INT(i1.n, 2);
  CHECK(i1.cluster_id == i2.cluster_id && i1.self_id == i2.self_id);
  CHECK(i1.members[0].id < i1.members[1].id);
  for (size_t k = 0; k < 2; k++) {
    if (strcmp(i1.members[k].name, "x") == 0) {
      CHECK(i1.members[k].id == i1.self_id);
      CHECK(strcmp(i1.members[k].address, "10.0.0.1:2380") == 0);
    }
  }
  /* The token changes every id. */
  CHECK_OK(memberid_cluster("x", a, 3, "other", &i2));
  CHECK(i1.cluster_id != i2.cluster_id && i1.self_id != i2.self_id);

  struct raftnode_member bad[] = {{"x", "http://10.0.0.1"}};
  CHECK_ERR(memberid_cluster("x", bad, 1, NULL, &ids), CAIRN_EINVAL);
  bad[0].peer_url = "http://10.0.0.1:2380/path";
  CHECK_ERR(memberid_cluster("x", bad, 1, NULL, &ids), CAIRN_EINVAL);
  bad[0].peer_url = "unix://sock:1";
  CHECK_ERR(memberid_cluster("x", bad, 1, NULL, &ids), CAIRN_EINVAL);
  bad[0].peer_url = "http://10.0.0.1:2380";
  CHECK_ERR(memberid_cluster("nobody", bad, 1, NULL, &ids), CAIRN_EINVAL);
  bad[0].name = "";
  CHECK_ERR(memberid_cluster("", bad, 1, NULL, &ids), CAIRN_EINVAL);
  CHECK_ERR(memberid_cluster("x", bad, 0, NULL, &ids), CAIRN_EINVAL);
  /* Two names with the same URLs have the same id. */
  struct raftnode_member dup[] = {{"p", "http://10.0.0.1:2380"}, {"q", "http://10.0.0.1:2380"}};
  CHECK_ERR(memberid_cluster("p", dup, 2, NULL, &ids), CAIRN_EINVAL);
}

/* The snapshot marker raft holds instead of the data. */
static void test_marker(void) {
  struct fsm_marker m = {.raft_index = 1000, .store_index = 998, .revision = 77}, d;
  uint8_t buf[FSM_SNAPSHOT_BYTES];
  fsm_marker_encode(&m, buf);
  CHECK_OK(fsm_marker_decode(buf, sizeof buf, &d));
  CHECK(d.raft_index == 1000 && d.store_index == 998 && d.revision == 77 && d.reserved == 0);
  CHECK_ERR(fsm_marker_decode(buf, sizeof buf - 1, &d), CAIRN_ECORRUPT);
  buf[0] ^= 1;
  CHECK_ERR(fsm_marker_decode(buf, sizeof buf, &d), CAIRN_ECORRUPT);
  buf[0] ^= 1;
  buf[8] = 2; /* version */
  CHECK_ERR(fsm_marker_decode(buf, sizeof buf, &d), CAIRN_ECORRUPT);
  m.store_index = 1001; /* the store cannot be past raft's entry */
  fsm_marker_encode(&m, buf);
  CHECK_ERR(fsm_marker_decode(buf, sizeof buf, &d), CAIRN_ECORRUPT);
  m.store_index = 5;
  m.revision = 0;
  fsm_marker_encode(&m, buf);
  CHECK_ERR(fsm_marker_decode(buf, sizeof buf, &d), CAIRN_ECORRUPT);
}

/* Start, leadership, every kind of op through raft, the wake-up, stop and
 * proposals after stop. */
static void test_single_ops(void) {
  struct cluster c;
  cluster_init(&c, 1);
  struct member *m = &c.m[0];
  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  struct raftnode_status st;
  raftnode_status(m->node, &st);
  CHECK(st.is_leader && st.leader_id == st.member_id && st.member_id != 0 && st.cluster_id != 0);
  CHECK(st.term >= 1 && st.apply_error == 0);

  struct mvcc_op op = put_op("k1", "v1", 0);
  struct waiter w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK(w.has_result && w.result.type == MVCC_OP_PUT);
  CHECK_OK(w.result.err);
  CHECK_EQ_INT(w.result.u.put.revision, 2);
  CHECK(!w.result.u.put.has_prev_kv);
  waiter_free(&w);
  check_value(m->store, "k1", "v1", NULL);
  /* The wake-up ran, with the new revision. */
  CHECK_EQ_INT(m->notified_revision, 2);

  op = put_op("k1", "v2", 0);
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK(w.result.u.put.has_prev_kv);
  CHECK(w.result.u.put.prev_kv.value.len == 2 &&
        memcmp(w.result.u.put.prev_kv.value.data, "v1", 2) == 0);
  waiter_free(&w);

  /* A failing op is an answer, not a failure: status 0, result->err set. */
  op = put_op("k2", "v", 12345);
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_ERR(w.result.err, CAIRN_ELEASE_NOT_FOUND);
  waiter_free(&w);
  unsigned notified = m->notifications;

  /* Leases. */
  op = (struct mvcc_op){.type = MVCC_OP_LEASE_GRANT};
  op.u.lease_grant.id = 77;
  op.u.lease_grant.ttl = 60;
  op.u.lease_grant.now_ms = 1000;
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  CHECK_EQ_INT(w.result.u.lease.lease.id, 77);
  waiter_free(&w);
  CHECK_EQ_INT(m->notifications, notified); /* a grant takes no revision */
  op = put_op("leased", "x", 77);
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  waiter_free(&w);
  op = (struct mvcc_op){.type = MVCC_OP_LEASE_CHECKPOINT};
  op.u.lease_checkpoint.id = 77;
  op.u.lease_checkpoint.remaining_ms = 30000;
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  waiter_free(&w);
  struct mvcc_lease lease;
  CHECK_OK(mvcc_lease_get(m->store, 77, &lease));
  CHECK_EQ_INT(lease.remaining_ms, 30000);
  op = (struct mvcc_op){.type = MVCC_OP_LEASE_REVOKE};
  op.u.lease_revoke_id = 77;
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  waiter_free(&w);
  check_value(m->store, "leased", NULL, NULL);

  /* A txn with a compare, nested txn in the success branch. */
  struct mvcc_compare cmp = {
      .result = MVCC_CMP_EQUAL, .target = MVCC_TARGET_VALUE, .key = b("k1"), .value = b("v2")};
  struct mvcc_request_op inner_ops[1] = {{.type = MVCC_REQUEST_PUT}};
  inner_ops[0].u.put.key = b("inner");
  inner_ops[0].u.put.value = b("yes");
  struct mvcc_txn_req inner = {.success = inner_ops, .n_success = 1};
  struct mvcc_request_op succ[2] = {{.type = MVCC_REQUEST_PUT}, {.type = MVCC_REQUEST_TXN}};
  succ[0].u.put.key = b("t1");
  succ[0].u.put.value = b("ok");
  succ[1].u.txn = &inner;
  struct mvcc_request_op fail[1] = {{.type = MVCC_REQUEST_RANGE}};
  fail[0].u.range.key = b("k1");
  op = (struct mvcc_op){.type = MVCC_OP_TXN};
  op.u.txn = (struct mvcc_txn_req){&cmp, 1, succ, 2, fail, 1};
  int64_t before = mvcc_current_revision(m->store);
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  CHECK(w.result.u.txn.succeeded);
  CHECK_EQ_INT(w.result.u.txn.n_responses, 2);
  waiter_free(&w);
  CHECK_EQ_INT(mvcc_current_revision(m->store), before + 1);
  check_value(m->store, "t1", "ok", NULL);
  check_value(m->store, "inner", "yes", NULL);

  /* A range through raft (a linearizable read), delete, meta, compaction. */
  op = (struct mvcc_op){.type = MVCC_OP_RANGE};
  op.u.range.key = b("k");
  op.u.range.range_end = b("l");
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_EQ_INT(w.result.u.range.n_kvs, 1);
  waiter_free(&w);
  op = (struct mvcc_op){.type = MVCC_OP_DELETE};
  op.u.del.key = b("t1");
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_EQ_INT(w.result.u.del.deleted, 1);
  waiter_free(&w);
  op = (struct mvcc_op){.type = MVCC_OP_META_PUT};
  op.u.meta_put.name = "cluster";
  op.u.meta_put.value = b("abc");
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  waiter_free(&w);
  char meta[8];
  size_t meta_len = 0;
  CHECK_OK(mvcc_meta_get(m->store, "cluster", meta, sizeof meta, &meta_len));
  CHECK(meta_len == 3 && memcmp(meta, "abc", 3) == 0);
  op = (struct mvcc_op){.type = MVCC_OP_COMPACT};
  op.u.compact_revision = 3;
  w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  CHECK_OK(w.result.err);
  waiter_free(&w);
  CHECK_EQ_INT(mvcc_compacted_revision(m->store), 3);

  /* Refusals before raft sees anything. */
  op = (struct mvcc_op){.type = MVCC_OP_META_PUT};
  CHECK_ERR(raftnode_propose(m->node, &op, &w, on_proposed), CAIRN_EINVAL);

  raftnode_status(m->node, &st);
  CHECK(st.applied_index == mvcc_applied_index(m->store));
  CHECK(st.commit_index >= st.applied_index);

  /* Stop: a proposal after it is refused at once. */
  raftnode_stop(m->node, on_closed, m);
  op = put_op("late", "x", 0);
  CHECK_ERR(raftnode_propose(m->node, &op, &w, on_proposed), CAIRN_ESTOPPED);
  CHECK(run_until(&c.loop, member_closed, m, 10000));
  m->node = NULL;
  cluster_close(&c);
}

/* Stop, restart from the same directories: everything is there, the applied
 * index continues, nothing is applied twice; with snapshots taken (and
 * restored at start-up). */
static void test_restart(void) {
  struct cluster c;
  cluster_init(&c, 1);
  c.opts.snapshot_count = 16; /* several snapshots */
  struct member *m = &c.m[0];
  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  char key[32], value[32];
  for (int i = 0; i < 100; i++) {
    snprintf(key, sizeof key, "key%03d", i);
    snprintf(value, sizeof value, "value%d", i);
    struct mvcc_op op = put_op(key, value, 0);
    struct waiter w = propose_wait(&c, m, &op);
    CHECK_OK(w.status);
    CHECK_EQ_INT(w.result.u.put.revision, 2 + i);
    waiter_free(&w);
  }
  struct raftnode_status st;
  raftnode_status(m->node, &st);
  uint64_t applied = st.applied_index;
  CHECK(mvcc_applied_index(m->store) == applied);
  member_stop(&c, 0, true);

  /* Raft wrote snapshots (markers only). */
  char raft_dir[600];
  snprintf(raft_dir, sizeof raft_dir, "%s/raft", m->dir);
  DIR *d = opendir(raft_dir);
  CHECK(d != NULL);
  unsigned snapshots = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    snapshots += strncmp(e->d_name, "snapshot-", 9) == 0;
  }
  closedir(d);
  CHECK(snapshots > 0);

  for (int round = 0; round < 2; round++) {
    CHECK_OK(member_start(&c, 0));
    CHECK(run_until(&c.loop, is_leader, m, 5000));
    /* The replay skipped what the store had: same revision, same index. */
    CHECK_EQ_INT(mvcc_current_revision(m->store), 101 + round);
    CHECK(mvcc_applied_index(m->store) >= applied);
    for (int i = 0; i < 100; i++) {
      snprintf(key, sizeof key, "key%03d", i);
      snprintf(value, sizeof value, "value%d", i);
      int64_t mod = 0;
      check_value(m->store, key, value, &mod);
      CHECK_EQ_INT(mod, 2 + i);
    }
    snprintf(key, sizeof key, "after%d", round);
    struct mvcc_op op = put_op(key, "x", 0);
    struct waiter w = propose_wait(&c, m, &op);
    CHECK_OK(w.status);
    CHECK_EQ_INT(w.result.u.put.revision, 102 + round); /* exactly one more */
    waiter_free(&w);
    raftnode_status(m->node, &st);
    CHECK(st.applied_index > applied); /* the index continues */
    applied = st.applied_index;
    member_stop(&c, 0, true);
  }
  cluster_close(&c);
}

static size_t ops_seen;
static double apply_seconds;

static void count_op(void *data, const struct mvcc_op *op, const struct mvcc_result *r) {
  (void)data;
  if (op->type == MVCC_OP_META_PUT) {
    return; /* the member table (raft/membership.c) */
  }
  CHECK(op->type == MVCC_OP_PUT && r->err == 0);
  ops_seen++;
}

static void add_apply_time(void *data, double seconds) {
  (void)data;
  CHECK(seconds >= 0);
  apply_seconds += seconds;
}

/* RAFTNODE_INFLIGHT_MAX proposals at once; one more is refused; all apply,
 * each in its own revision, in order. */
static void test_inflight(void) {
  struct cluster c;
  cluster_init(&c, 1);
  c.opts.snapshot_count = 1000;
  struct member *m = start_single(&c); /* all n entries are ours */
  size_t n = RAFTNODE_INFLIGHT_MAX;
  ops_seen = 0;
  apply_seconds = 0;
  raftnode_on_op_applied(m->node, count_op, NULL);
  raftnode_on_apply_time(m->node, add_apply_time, NULL);
  struct waiter *w = calloc(n + 1, sizeof *w);
  CHECK(w != NULL);
  char key[32];
  uint64_t first = completions;
  for (size_t i = 0; i < n; i++) {
    snprintf(key, sizeof key, "k%05zu", i);
    struct mvcc_op op = put_op(key, "v", 0);
    CHECK_OK(raftnode_propose(m->node, &op, &w[i], on_proposed));
  }
  struct mvcc_op op = put_op("one-more", "v", 0);
  CHECK_ERR(raftnode_propose(m->node, &op, &w[n], on_proposed), CAIRN_ETOO_MANY_REQUESTS);
  uint64_t t0 = now_ms();
  bool all = false;
  for (unsigned spins = 0; !all && spins < 100; spins++) {
    all = run_until(&c.loop, flag_set, &w[n - 1].done, 200);
  }
  CHECK(all);
  printf("    %zu proposals in %" PRIu64 " ms\n", n, now_ms() - t0);
  for (size_t i = 0; i < n; i++) {
    CHECK(w[i].done);
    CHECK_OK(w[i].status);
    CHECK_OK(w[i].result.err);
    /* Proposed in order, applied in order, answered in order. */
    CHECK_EQ_INT(w[i].result.u.put.revision, 2 + (int64_t)i);
    CHECK(w[i].order == first + 1 + i);
    waiter_free(&w[i]);
  }
  CHECK(!w[n].done);
  CHECK_EQ_INT(mvcc_current_revision(m->store), 1 + (int64_t)n);
  /* Entries committed together are applied together: one LMDB transaction
   * per batch, not per entry. */
  struct raftnode_status st;
  raftnode_status(m->node, &st);
  printf("    %zu entries in %" PRIu64 " LMDB transactions\n", n, st.apply_batches);
  CHECK(st.apply_batches > 0 && st.apply_batches < n / 4);
  /* The op listener saw every applied op; the batches took some time. */
  CHECK_EQ_INT(ops_seen, n);
  CHECK(apply_seconds > 0);
  free(w);
  cluster_close(&c);
}

/* What the early-answer listener saw at each call. */
struct answered {
  struct member *m;
  struct waiter *w;
  bool *seen; /* answered at an earlier call */
  size_t n;
  unsigned calls;
  size_t done_at_first; /* waiters answered at the first call */
  bool before_commit;   /* each answered write's revision was not in the store yet */
};

static void on_answered(void *data) {
  struct answered *a = data;
  size_t done = 0;
  int64_t committed = mvcc_current_revision(a->m->store);
  for (size_t i = 0; i < a->n; i++) {
    if (a->w[i].done) {
      done++;
      if (!a->seen[i] && a->w[i].has_result && a->w[i].result.u.put.revision <= committed) {
        a->before_commit = false; /* answered for this call after its commit */
      }
      a->seen[i] = true;
    }
  }
  if (a->calls++ == 0) {
    a->done_at_first = done;
  }
}

/* Early answers: a batch of puts is answered before its LMDB commit (the
 * listener runs with the answers out and the store still at the revision
 * before them), and the store has them right after; a batch with a lease op
 * is answered after its commit, as before. */
static void test_early_answers(void) {
  struct cluster c;
  cluster_init(&c, 1);
  struct member *m = start_single(&c);
  enum { N = 64 };
  struct waiter w[N];
  memset(w, 0, sizeof w);
  bool seen[N] = {false};
  struct answered a = {.m = m, .w = w, .seen = seen, .n = N, .before_commit = true};
  raftnode_on_answered(m->node, on_answered, &a);
  char key[32];
  for (size_t i = 0; i < N; i++) {
    snprintf(key, sizeof key, "early%02zu", i);
    struct mvcc_op op = put_op(key, "v", 0);
    CHECK_OK(raftnode_propose(m->node, &op, &w[i], on_proposed));
  }
  CHECK(run_until(&c.loop, flag_set, &w[N - 1].done, 10000));
  CHECK(a.calls >= 1);
  CHECK(a.done_at_first >= 1);
  CHECK(a.before_commit);
  for (size_t i = 0; i < N; i++) {
    CHECK(w[i].done);
    CHECK_OK(w[i].status);
    CHECK_OK(w[i].result.err);
    snprintf(key, sizeof key, "early%02zu", i);
    int64_t mod = 0;
    check_value(m->store, key, "v", &mod);
    CHECK_EQ_INT(mod, w[i].result.u.put.revision);
    waiter_free(&w[i]);
  }
  /* Not for a lease grant: the lessor reads what it applies back. */
  unsigned calls = a.calls;
  struct mvcc_op op = {.type = MVCC_OP_LEASE_GRANT};
  op.u.lease_grant.id = 78;
  op.u.lease_grant.ttl = 60;
  op.u.lease_grant.now_ms = 1000;
  struct waiter lw = propose_wait(&c, m, &op);
  CHECK_OK(lw.status);
  CHECK_OK(lw.result.err);
  waiter_free(&lw);
  CHECK_EQ_INT(a.calls, calls);
  /* Without a listener, no batch is answered early. */
  raftnode_on_answered(m->node, NULL, NULL);
  struct mvcc_op put = put_op("late", "v", 0);
  struct waiter pw = propose_wait(&c, m, &put);
  CHECK_OK(pw.status);
  waiter_free(&pw);
  CHECK_EQ_INT(a.calls, calls);
  cluster_close(&c);
}

static bool never(void *ctx) {
  (void)ctx;
  return false;
}

/* The may-answer rule: early only from the flush timer, and only with no
 * earlier outcome waiting for delivery (its callback may read the store);
 * and the state machine answers after the commit when the rule says no.
 * Two batches flushed in one turn with outcomes queued between them cannot
 * be arranged from outside raft, so the rule is read directly. */
static void test_may_answer(void) {
  struct cluster c;
  cluster_init(&c, 1);
  struct member *m = start_single(&c);
  raftnode *n = m->node;
  enum { N = 16 };
  struct waiter w[N];
  memset(w, 0, sizeof w);
  bool seen[N] = {false};
  struct answered a = {.m = m, .w = w, .seen = seen, .n = N, .before_commit = true};
  raftnode_on_answered(n, on_answered, &a);
  CHECK(n->fsm.may_answer != NULL);
  CHECK(!n->in_flush_timer);
  CHECK(!n->fsm.may_answer(n->fsm.ctx)); /* inside libraft's callbacks: no */
  n->in_flush_timer = true;
  CHECK(n->done.head == NULL);
  CHECK(n->fsm.may_answer(n->fsm.ctx)); /* the flush timer, nothing waiting: yes */
  struct queue saved = n->done;
  n->done.head = n->done.tail = (struct proposal *)&saved; /* not read, only tested */
  CHECK(!n->fsm.may_answer(n->fsm.ctx));                   /* an outcome waiting: no */
  n->done = saved;
  n->in_flush_timer = false;
  /* Told no, the state machine answers after the commit. */
  fsm_may_answer_cb rule = n->fsm.may_answer;
  n->fsm.may_answer = never;
  char key[32];
  for (size_t i = 0; i < N; i++) {
    snprintf(key, sizeof key, "late%02zu", i);
    struct mvcc_op op = put_op(key, "v", 0);
    CHECK_OK(raftnode_propose(n, &op, &w[i], on_proposed));
  }
  CHECK(run_until(&c.loop, flag_set, &w[N - 1].done, 10000));
  CHECK_EQ_INT(a.calls, 0);
  for (size_t i = 0; i < N; i++) {
    CHECK(w[i].done);
    CHECK_OK(w[i].status);
    waiter_free(&w[i]);
  }
  n->fsm.may_answer = rule;
  cluster_close(&c);
}

/* Stop with proposals in flight: each gets an outcome before closed_cb. */
static void test_stop_inflight(void) {
  struct cluster c;
  cluster_init(&c, 1);
  struct member *m = &c.m[0];
  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  struct waiter w[200];
  memset(w, 0, sizeof w);
  char key[32];
  for (size_t i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "s%03zu", i);
    struct mvcc_op op = put_op(key, "v", 0);
    CHECK_OK(raftnode_propose(m->node, &op, &w[i], on_proposed));
  }
  raftnode_stop(m->node, on_closed, m);
  CHECK(run_until(&c.loop, member_closed, m, 20000));
  m->node = NULL;
  unsigned applied = 0;
  for (size_t i = 0; i < 200; i++) {
    CHECK(w[i].done);
    if (w[i].status == 0) {
      applied++;
      snprintf(key, sizeof key, "s%03zu", i);
      check_value(m->store, key, "v", NULL);
    } else {
      CHECK_ERR(w[i].status, CAIRN_ESTOPPED);
    }
    waiter_free(&w[i]);
  }
  /* A single member commits what it appended: the stop waited for them. */
  CHECK_EQ_INT(applied, 200);
  cluster_close(&c);
}

/* kill -9: a child proposes and reports each acknowledged write through a
 * pipe; the parent kills it mid-stream, restarts from its directories, and
 * finds every acknowledged write, each applied once. */
#define KILL_KEYS 3000
#define KILL_AFTER_ACKS 400

static int kill_pipe = -1;
static unsigned kill_next, kill_inflight;

static void kill_propose_more(struct member *m);

/* Each child proposal carries its key number, which its ack reports. */
struct child_req {
  struct member *m;
  uint32_t k;
};
static struct child_req child_reqs[KILL_KEYS];

static void on_child_put(void *data, int status, struct mvcc_result *result) {
  struct child_req *r = data;
  kill_inflight--;
  if (status != 0 || result->err != 0) {
    _exit(3);
  }
  mvcc_result_free(result);
  if (write(kill_pipe, &r->k, sizeof r->k) != (ssize_t)sizeof r->k) {
    _exit(4);
  }
  kill_propose_more(r->m);
}

static void kill_propose_more(struct member *m) {
  while (kill_inflight < 64 && kill_next < KILL_KEYS) {
    char key[32], value[32];
    snprintf(key, sizeof key, "key%05u", kill_next);
    snprintf(value, sizeof value, "value%u", kill_next);
    struct mvcc_op op = put_op(key, value, 0);
    child_reqs[kill_next] = (struct child_req){m, kill_next};
    if (raftnode_propose(m->node, &op, &child_reqs[kill_next], on_child_put) != 0) {
      _exit(5);
    }
    kill_next++;
    kill_inflight++;
  }
}

static void test_kill9(void) {
  struct cluster c;
  cluster_init(&c, 1);
  c.opts.snapshot_count = 100; /* snapshots (and their checkpoints) during the run */
  struct member *m = &c.m[0];
  int fds[2];
  CHECK(pipe(fds) == 0);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    kill_pipe = fds[1];
    if (member_start(&c, 0) != 0 || !run_until(&c.loop, is_leader, m, 5000)) {
      _exit(2);
    }
    kill_propose_more(m);
    for (;;) {
      uv_run(&c.loop, UV_RUN_DEFAULT);
      usleep(1000);
    }
  }
  close(fds[1]);
  static bool acked[KILL_KEYS];
  memset(acked, 0, sizeof acked);
  unsigned n_acked = 0;
  uint32_t k;
  while (n_acked < KILL_AFTER_ACKS && read(fds[0], &k, sizeof k) == (ssize_t)sizeof k) {
    CHECK(k < KILL_KEYS && !acked[k]);
    acked[k] = true;
    n_acked++;
  }
  CHECK_EQ_INT(n_acked, KILL_AFTER_ACKS);
  CHECK(kill(pid, SIGKILL) == 0);
  int wstatus;
  CHECK(waitpid(pid, &wstatus, 0) == pid);
  CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL);
  /* Acks written before the kill are still in the pipe. */
  while (read(fds[0], &k, sizeof k) == (ssize_t)sizeof k) {
    CHECK(k < KILL_KEYS && !acked[k]);
    acked[k] = true;
    n_acked++;
  }
  close(fds[0]);
  printf("    %u writes acknowledged before the kill\n", n_acked);

  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  /* A write of our own: once it is answered, every earlier entry is
   * applied. */
  struct mvcc_op op = put_op("marker", "m", 0);
  struct waiter w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  int64_t marker_rev = w.result.u.put.revision;
  waiter_free(&w);
  char key[32], value[32];
  unsigned present = 0;
  for (unsigned i = 0; i < KILL_KEYS; i++) {
    snprintf(key, sizeof key, "key%05u", i);
    snprintf(value, sizeof value, "value%u", i);
    struct mvcc_range_req req = {.key = b(key)};
    struct mvcc_result r;
    CHECK_OK(mvcc_range(m->store, &req, &r));
    if (acked[i]) {
      CHECK_EQ_INT(r.u.range.n_kvs, 1);
    }
    if (r.u.range.n_kvs == 1) {
      present++;
      CHECK(r.u.range.kvs[0].value.len == strlen(value));
      CHECK_EQ_INT(r.u.range.kvs[0].version, 1); /* put once */
    }
    mvcc_result_free(&r);
  }
  /* Every write took one revision: none was applied twice. */
  CHECK_EQ_INT(marker_rev, 2 + (int64_t)present);
  CHECK_EQ_INT(mvcc_current_revision(m->store), marker_rev);
  CHECK(present >= n_acked);
  cluster_close(&c);
}

/* The start-up consistency checks and option errors. */
static void test_start_refusals(void) {
  struct cluster c;
  cluster_init(&c, 1);
  c.opts.snapshot_count = 8;
  struct member *m = &c.m[0];
  raftnode *none = NULL;

  /* Not in the cluster. */
  CHECK_OK(mvcc_open(m->store_dir, NULL, &m->store));
  struct raftnode_options o = c.opts;
  o.name = "stranger";
  o.data_dir = m->dir;
  CHECK_ERR(raftnode_start(&c.loop, m->store, &o, &none), CAIRN_EINVAL);
  CHECK(none == NULL);
  /* Peer URLs with host names: raft's transport takes IPv4 addresses. */
  struct raftnode_member named = {m->name, "http://localhost:2380"};
  o.name = m->name;
  o.initial_cluster = &named;
  CHECK_ERR(raftnode_start(&c.loop, m->store, &o, &none), CAIRN_EINVAL);
  o.initial_cluster = c.opts.initial_cluster;
  /* (No raft log and not a new cluster is a member joining an existing
   * cluster: test_raft_membership.) */
  drain_loop(&c.loop);

  /* A few writes, then a copy of the store as it is then. */
  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  struct mvcc_op op = put_op("a", "1", 0);
  struct waiter w = propose_wait(&c, m, &op);
  CHECK_OK(w.status);
  waiter_free(&w);
  member_stop(&c, 0, true);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cp -a '%s' '%s/store-old'", m->store_dir, m->dir);
  CHECK(system(cmd) == 0);

  /* Many more, with snapshots; then the old store comes back: it is behind
   * raft's snapshot, and the start refuses it. */
  CHECK_OK(member_start(&c, 0));
  CHECK(run_until(&c.loop, is_leader, m, 5000));
  for (int i = 0; i < 40; i++) {
    op = put_op("b", "2", 0);
    w = propose_wait(&c, m, &op);
    CHECK_OK(w.status);
    waiter_free(&w);
  }
  member_stop(&c, 0, true);
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mv '%s/store-old' '%s'", m->store_dir, m->dir,
           m->store_dir);
  CHECK(system(cmd) == 0);
  CHECK_ERR(member_start(&c, 0), CAIRN_ECORRUPT);
  CHECK(m->node == NULL);
  drain_loop(&c.loop);
  mvcc_close(m->store);
  m->store = NULL;

  /* The raft log is lost while the store holds entries. */
  snprintf(cmd, sizeof cmd, "rm -rf '%s/raft'", m->dir);
  CHECK(system(cmd) == 0);
  CHECK_ERR(member_start(&c, 0), CAIRN_ECORRUPT);
  CHECK(m->node == NULL);
  drain_loop(&c.loop);
  cluster_close(&c);
}

/* ---- three members -------------------------------------------------------- */

static int leader_of(struct cluster *c) {
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].node != NULL && is_leader(&c->m[i])) {
      return (int)i;
    }
  }
  return -1;
}

static bool has_leader(void *arg) {
  return leader_of(arg) >= 0;
}

struct replicated {
  struct cluster *c;
  const char *key;
};

static bool everywhere(void *arg) {
  struct replicated *r = arg;
  for (size_t i = 0; i < r->c->n; i++) {
    if (r->c->m[i].node == NULL) {
      continue;
    }
    struct mvcc_range_req req = {.key = b(r->key)};
    struct mvcc_result res;
    CHECK_OK(mvcc_range(r->c->m[i].store, &req, &res));
    size_t n = res.u.range.n_kvs;
    mvcc_result_free(&res);
    if (n != 1) {
      return false;
    }
  }
  return true;
}

static bool no_leader_here(void *arg) {
  struct member *m = arg;
  return !is_leader(m);
}

static void test_cluster3(void) {
  struct cluster c;
  cluster_init(&c, 3);
  c.opts.request_timeout_ms = 300;
  c.opts.election_ms = 300;
  for (size_t i = 0; i < 3; i++) {
    CHECK_OK(member_start(&c, i));
  }
  CHECK(run_until(&c.loop, has_leader, &c, 15000));
  int l = leader_of(&c);
  struct raftnode_status st[3];
  for (size_t i = 0; i < 3; i++) {
    raftnode_status(c.m[i].node, &st[i]);
    CHECK(st[i].cluster_id == st[0].cluster_id);
  }
  CHECK(st[0].member_id != st[1].member_id && st[1].member_id != st[2].member_id);

  struct mvcc_op op = put_op("replicated", "yes", 0);
  struct waiter w = propose_wait(&c, &c.m[l], &op);
  CHECK_OK(w.status);
  CHECK_EQ_INT(w.result.u.put.revision, 2);
  waiter_free(&w);
  struct replicated r = {&c, "replicated"};
  CHECK(run_until(&c.loop, everywhere, &r, 10000));
  for (size_t i = 0; i < 3; i++) {
    CHECK_EQ_INT(mvcc_current_revision(c.m[i].store), 2);
    CHECK_EQ_INT(c.m[i].notified_revision, 2);
  }
  /* Followers refuse proposals and know who leads. */
  size_t f = (size_t)(l + 1) % 3;
  struct waiter wf = {0};
  CHECK_ERR(raftnode_propose(c.m[f].node, &op, &wf, on_proposed), CAIRN_ENOT_LEADER);
  raftnode_status(c.m[f].node, &st[f]);
  CHECK(st[f].leader_id == st[l].member_id && !st[f].is_leader);

  /* Stop both followers: the leader has no quorum. A proposal times out
   * (outcome unknown); then the leader steps down. */
  for (size_t i = 0; i < 3; i++) {
    if ((int)i != l) {
      member_stop(&c, i, false);
    }
  }
  op = put_op("lost", "x", 0);
  w = (struct waiter){0};
  CHECK_OK(raftnode_propose(c.m[l].node, &op, &w, on_proposed));
  CHECK(run_until(&c.loop, flag_set, &w.done, 5000));
  CHECK_ERR(w.status, CAIRN_ETIMEOUT);
  CHECK(run_until(&c.loop, no_leader_here, &c.m[l], 10000));
  CHECK_ERR(raftnode_propose(c.m[l].node, &op, &w, on_proposed), CAIRN_ENO_LEADER);

  /* Restart the followers: a leader again, and writes go through. */
  for (size_t i = 0; i < 3; i++) {
    if ((int)i != l) {
      CHECK_OK(member_start(&c, i));
    }
  }
  CHECK(run_until(&c.loop, has_leader, &c, 15000));
  l = leader_of(&c);
  op = put_op("again", "yes", 0);
  bool ok = false;
  for (int tries = 0; tries < 20 && !ok; tries++) {
    l = leader_of(&c);
    if (l < 0) {
      CHECK(run_until(&c.loop, has_leader, &c, 5000));
      continue;
    }
    w = (struct waiter){0};
    CHECK_OK(raftnode_propose(c.m[l].node, &op, &w, on_proposed));
    CHECK(run_until(&c.loop, flag_set, &w.done, 5000));
    ok = w.status == 0;
    waiter_free(&w);
  }
  CHECK(ok);
  r.key = "again";
  CHECK(run_until(&c.loop, everywhere, &r, 10000));
  cluster_close(&c);
}

/* A leader without quorum is stopped with proposals raft still holds: the
 * stop's wait ends at the request timeout, raft_close settles them, every
 * proposer hears back before closed_cb. */
static void test_stop_without_quorum(void) {
  struct cluster c;
  cluster_init(&c, 3);
  c.opts.election_ms = 1000; /* no step-down during the test */
  c.opts.request_timeout_ms = 150;
  for (size_t i = 0; i < 3; i++) {
    CHECK_OK(member_start(&c, i));
  }
  CHECK(run_until(&c.loop, has_leader, &c, 15000));
  int l = leader_of(&c);
  for (size_t i = 0; i < 3; i++) {
    if ((int)i != l) {
      member_stop(&c, i, false);
    }
  }
  struct waiter w[10];
  memset(w, 0, sizeof w);
  for (size_t i = 0; i < 10; i++) {
    struct mvcc_op op = put_op("nq", "x", 0);
    CHECK_OK(raftnode_propose(c.m[l].node, &op, &w[i], on_proposed));
  }
  uint64_t t0 = now_ms();
  member_stop(&c, (size_t)l, false);
  printf("    stopped in %" PRIu64 " ms\n", now_ms() - t0);
  for (size_t i = 0; i < 10; i++) {
    CHECK(w[i].done);
    CHECK(w[i].status == CAIRN_ETIMEOUT || w[i].status == CAIRN_ESTOPPED);
  }
  cluster_close(&c);
}

/* ---- linearizable reads --------------------------------------------------- */

struct read_wait {
  bool done;
  int status;
  uint64_t index;
};

static void on_read(void *data, int status, uint64_t index) {
  struct read_wait *w = data;
  CHECK(!w->done);
  w->done = true;
  w->status = status;
  w->index = index;
}

static bool reads_done(void *arg) {
  struct read_wait *w = arg;
  for (size_t i = 0; i < 64; i++) {
    if (!w[i].done) {
      return false;
    }
  }
  return true;
}

/* The leader confirms reads with shared barriers; what was written before a
 * read began is in the store when the read is answered; a follower waits for
 * the leader's read index; reads without a majority time out. */
static void test_read_index(void) {
  struct cluster c;
  cluster_init(&c, 3);
  c.opts.request_timeout_ms = 400;
  c.opts.election_ms = 1000;
  for (size_t i = 0; i < 3; i++) {
    CHECK_OK(member_start(&c, i));
  }
  CHECK(run_until(&c.loop, has_leader, &c, 15000));
  int l = leader_of(&c);
  size_t f = (size_t)(l + 1) % 3;
  CHECK_EQ_INT(raftnode_voters(c.m[l].node), 3);

  /* 64 puts in flight, then 64 reads: every read sees every put. */
  struct waiter pw[64];
  struct read_wait rw[64];
  memset(pw, 0, sizeof pw);
  memset(rw, 0, sizeof rw);
  char key[32];
  for (size_t i = 0; i < 64; i++) {
    snprintf(key, sizeof key, "ri/%02u", (unsigned)i);
    struct mvcc_op op = put_op(key, "v", 0);
    CHECK_OK(raftnode_propose(c.m[l].node, &op, &pw[i], on_proposed));
  }
  for (size_t i = 0; i < 64; i++) {
    CHECK_OK(raftnode_read_index(c.m[l].node, &rw[i], on_read));
    CHECK(!rw[i].done); /* never inside the call */
  }
  CHECK(run_until(&c.loop, reads_done, rw, 10000));
  uint64_t max_index = 0;
  for (size_t i = 0; i < 64; i++) {
    CHECK_OK(rw[i].status);
    if (rw[i].index > max_index) {
      max_index = rw[i].index;
    }
  }
  CHECK_EQ_INT(mvcc_current_revision(c.m[l].store), 65);
  for (size_t i = 0; i < 64; i++) {
    CHECK(pw[i].done);
    waiter_free(&pw[i]);
  }

  /* A follower refuses to confirm by itself, and waits for an index. */
  struct read_wait one = {0};
  CHECK_ERR(raftnode_read_index(c.m[f].node, &one, on_read), CAIRN_ENOT_LEADER);
  CHECK_OK(raftnode_wait_applied(c.m[f].node, max_index, 5000, &one, on_read));
  CHECK(!one.done);
  CHECK(run_until(&c.loop, flag_set, &one.done, 10000));
  CHECK_OK(one.status);
  CHECK_EQ_INT(mvcc_current_revision(c.m[f].store), 65);
  /* An index far ahead is not reached: a timeout. */
  one = (struct read_wait){0};
  CHECK_OK(raftnode_wait_applied(c.m[f].node, max_index + 1000, 100, &one, on_read));
  CHECK(run_until(&c.loop, flag_set, &one.done, 5000));
  CHECK_ERR(one.status, CAIRN_ETIMEOUT);

  /* Without a majority the leader cannot confirm: the read fails. */
  for (size_t i = 0; i < 3; i++) {
    if ((int)i != l) {
      member_stop(&c, i, false);
    }
  }
  one = (struct read_wait){0};
  int rc = raftnode_read_index(c.m[l].node, &one, on_read);
  if (rc == 0) {
    CHECK(run_until(&c.loop, flag_set, &one.done, 5000));
    CHECK(one.status == CAIRN_ETIMEOUT || one.status == CAIRN_ELEADER_CHANGED);
  } else {
    CHECK(rc == CAIRN_ENO_LEADER);
  }
  /* A read waiting at a stop is answered. */
  one = (struct read_wait){0};
  rc = raftnode_read_index(c.m[l].node, &one, on_read);
  member_stop(&c, (size_t)l, false);
  if (rc == 0) {
    CHECK(one.done);
  }
  cluster_close(&c);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN); /* the daemon's job too: raft and libuv do not */
  test_seed("test_raft_node");
  TEST_RUN(test_ids);
  TEST_RUN(test_marker);
  TEST_RUN(test_single_ops);
  TEST_RUN(test_restart);
  TEST_RUN(test_inflight);
  TEST_RUN(test_early_answers);
  TEST_RUN(test_may_answer);
  TEST_RUN(test_stop_inflight);
  TEST_RUN(test_kill9);
  TEST_RUN(test_start_refusals);
  TEST_RUN(test_cluster3);
  TEST_RUN(test_stop_without_quorum);
  TEST_RUN(test_read_index);
  printf("ok\n");
  return 0;
}
