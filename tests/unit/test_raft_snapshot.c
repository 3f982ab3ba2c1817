/* tests/unit/test_raft_snapshot.c: catch-up by store transfer, with three
 * members on one loop and a small snapshot count.
 *
 * A follower is stopped; the leader takes writes past several snapshots and
 * their trailing entries, so that raft's log no longer reaches back to the
 * follower's. When the follower restarts, the leader installs its snapshot
 * (a marker only): the follower's store is behind it, the store-needed
 * callback fires, proposals there are refused, reads see the old store, and
 * raft's snapshots stay off. The test then plays the daemon's part: it
 * exports the leader's store to a file, verifies it, writes more keys (held
 * by the follower meanwhile), and puts the file in with mvcc_replace +
 * raftnode_store_replaced. The follower catches up and holds exactly the
 * leader's data: every key with its revisions and version, leases, the
 * revision, the compacted revision, the applied index. A second round
 * restarts the follower between the callback and the replace (raft's
 * installed snapshot on disk is then newer than the store: behind at
 * start-up, the callback fires again), and a third replaces with a store
 * that is not far enough (refused, the callback fires again). */
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <uv.h>

#include "raft/raftnode.h"
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
  /* the store-needed listener */
  unsigned needed_calls;
  uint64_t needed_index;
  uint64_t needed_term;
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

static void on_store_needed(void *data, uint64_t index, uint64_t term) {
  struct member *m = data;
  m->needed_calls++;
  m->needed_index = index;
  m->needed_term = term;
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
    raftnode_on_store_needed(m->node, on_store_needed, m);
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

/* ---- the test ------------------------------------------------------------ */

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

/* Writes keys prefix/<from..to-1> through the leader, up to 64 in flight,
 * re-proposing what a leader change left unknown (puts are idempotent for
 * this comparison). */
#define INFLIGHT 64
static void write_keys(struct cluster *c, const char *prefix, int from, int to) {
  char key[64], value[64];
  int next = from;
  struct waiter w[INFLIGHT];
  int key_of[INFLIGHT];
  bool busy[INFLIGHT];
  memset(busy, 0, sizeof busy);
  uint64_t deadline = now_ms() + 60000;
  for (;;) {
    bool any = false;
    for (int i = 0; i < INFLIGHT; i++) {
      if (busy[i] && w[i].done) {
        busy[i] = false;
        if (w[i].status != 0) {
          CHECK(w[i].status == CAIRN_ELEADER_CHANGED || w[i].status == CAIRN_ETIMEOUT);
          next = next < key_of[i] ? next : key_of[i]; /* again (and what follows) */
        } else {
          CHECK_OK(w[i].result.err);
        }
        waiter_free(&w[i]);
      }
      if (!busy[i] && next < to) {
        int l = leader_of(c);
        if (l < 0) {
          continue;
        }
        snprintf(key, sizeof key, "%s/%05d", prefix, next);
        snprintf(value, sizeof value, "value-%s-%d", prefix, next * 3);
        struct mvcc_op op = put_op(key, value, 0);
        w[i] = (struct waiter){0};
        int rc = raftnode_propose(c->m[l].node, &op, &w[i], on_proposed);
        if (rc == 0) {
          busy[i] = true;
          key_of[i] = next++;
        }
      }
      any = any || busy[i];
    }
    if (!any && next >= to) {
      return;
    }
    CHECK(now_ms() < deadline);
    uv_run(&c->loop, UV_RUN_ONCE);
  }
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *q = p;
  for (size_t i = 0; i < n; i++) {
    h = (h ^ q[i]) * 0x100000001b3ull;
  }
  return h;
}

/* Everything a client sees in a store, as one number; also counts keys. */
static uint64_t digest(mvcc_store *s, size_t *n_keys) {
  struct mvcc_range_req rq = {.key = {(const uint8_t *)"\0", 1},
                              .range_end = {(const uint8_t *)"\0", 1}};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(s, &rq, &r));
  CHECK_OK(r.err);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < r.u.range.n_kvs; i++) {
    const struct mvcc_kv *kv = &r.u.range.kvs[i];
    h = fnv(h, kv->key.data, kv->key.len);
    h = fnv(h, kv->value.data, kv->value.len);
    int64_t nums[4] = {kv->create_revision, kv->mod_revision, kv->version, kv->lease};
    h = fnv(h, nums, sizeof nums);
  }
  if (n_keys != NULL) {
    *n_keys = r.u.range.n_kvs;
  }
  mvcc_result_free(&r);
  int64_t st[2] = {mvcc_current_revision(s), mvcc_compacted_revision(s)};
  uint64_t idx = mvcc_applied_index(s);
  h = fnv(h, st, sizeof st);
  h = fnv(h, &idx, sizeof idx);
  struct mvcc_lease *leases;
  size_t n;
  CHECK_OK(mvcc_lease_list(s, &leases, &n));
  for (size_t i = 0; i < n; i++) {
    h = fnv(h, &leases[i].id, sizeof leases[i].id);
    h = fnv(h, &leases[i].ttl, sizeof leases[i].ttl);
  }
  free(leases);
  return h;
}

struct pair {
  struct cluster *c;
  size_t a, b;
};

/* Both stores at the same applied index and revision, neither behind. */
static bool same_point(void *arg) {
  struct pair *p = arg;
  mvcc_store *sa = p->c->m[p->a].store, *sb = p->c->m[p->b].store;
  return !raftnode_store_behind(p->c->m[p->b].node) &&
         mvcc_applied_index(sa) == mvcc_applied_index(sb) &&
         mvcc_current_revision(sa) == mvcc_current_revision(sb);
}

/* b's raft has committed every entry a's store applied. */
static bool committed_here(void *arg) {
  struct pair *p = arg;
  struct raftnode_status st;
  raftnode_status(p->c->m[p->b].node, &st);
  return st.commit_index >= mvcc_applied_index(p->c->m[p->a].store);
}

static bool needed(void *arg) {
  return ((struct member *)arg)->needed_calls > 0;
}

static bool not_busy(void *arg) {
  return !raftnode_store_busy(((struct member *)arg)->node);
}

static void propose_ok(struct cluster *c, struct mvcc_op *op) {
  for (int tries = 0; tries < 20; tries++) {
    int l = leader_of(c);
    if (l < 0) {
      CHECK(run_until(&c->loop, has_leader, c, 5000));
      continue;
    }
    struct waiter w = {0};
    int rc = raftnode_propose(c->m[l].node, op, &w, on_proposed);
    if (rc != 0) {
      continue;
    }
    CHECK(run_until(&c->loop, flag_set, &w.done, 10000));
    int st = w.status;
    waiter_free(&w);
    if (st == 0) {
      return;
    }
  }
  CHECK(!"proposal went through");
}

/* The daemon's part, done in-line: an export of the leader's store. */
static void export_leader(struct cluster *c, size_t into, char *path, size_t cap,
                          struct mvcc_snapshot_info *info) {
  int l = leader_of(c);
  CHECK(l >= 0 && (size_t)l != into);
  snprintf(path, cap, "%s/incoming.snap", c->m[into].dir);
  unlink(path);
  CHECK_OK(mvcc_snapshot_export(c->m[l].store, path));
  CHECK_OK(mvcc_snapshot_verify(path, info));
}

static void test_catch_up(void) {
  struct cluster c;
  cluster_init(&c, 3);
  c.opts.snapshot_count = 64; /* trailing entries: 64 too */
  c.opts.election_ms = 500;
  for (size_t i = 0; i < 3; i++) {
    CHECK_OK(member_start(&c, i));
  }
  CHECK(run_until(&c.loop, has_leader, &c, 15000));
  write_keys(&c, "before", 0, 50);
  int l = leader_of(&c);
  size_t f = (size_t)(l + 1) % 3;
  struct pair pr = {&c, (size_t)l, f};
  CHECK(run_until(&c.loop, same_point, &pr, 10000));
  member_stop(&c, f, true);

  /* Past several snapshots and their trailing entries; leases, a delete
   * and a compaction too. */
  int n_writes = test_small() ? 600 : 1500;
  write_keys(&c, "while-down", 0, n_writes);
  struct mvcc_op g = {.type = MVCC_OP_LEASE_GRANT};
  g.u.lease_grant.id = 4242;
  g.u.lease_grant.ttl = 600;
  g.u.lease_grant.now_ms = 1;
  propose_ok(&c, &g);
  struct mvcc_op pl = put_op("leased", "yes", 4242);
  propose_ok(&c, &pl);
  struct mvcc_op d = {.type = MVCC_OP_DELETE};
  d.u.del.key = b("before/00001");
  propose_ok(&c, &d);
  struct mvcc_op cp = {.type = MVCC_OP_COMPACT};
  l = leader_of(&c);
  cp.u.compact_revision = mvcc_current_revision(c.m[l].store) - 100;
  propose_ok(&c, &cp);

  /* Round 1: restart; the leader installs its snapshot; the store is
   * behind; the callback asks for a store. Then, round 2, a restart in the
   * middle: behind from start-up, asked again. */
  struct member *m = &c.m[f];
  uint64_t old_rev = 0;
  for (int round = 0; round < 2; round++) {
    m->needed_calls = 0;
    CHECK_OK(member_start(&c, f));
    if (round == 0) {
      old_rev = (uint64_t)mvcc_current_revision(m->store);
    }
    CHECK(run_until(&c.loop, needed, m, 20000));
    CHECK(raftnode_store_behind(m->node));
    printf("    round %d: store needed at applied index %" PRIu64 " (term %" PRIu64
           "); the store has %" PRIu64 "\n",
           round, m->needed_index, m->needed_term, mvcc_applied_index(m->store));
    CHECK(m->needed_index > mvcc_applied_index(m->store));
    CHECK(m->needed_term > 0);
    struct raftnode_status st;
    raftnode_status(m->node, &st);
    CHECK(st.store_behind);
    CHECK_EQ_INT(st.applied_index, mvcc_applied_index(m->store));
    /* Nothing applied: the store keeps its old revision, reads see it. */
    CHECK_EQ_INT(mvcc_current_revision(m->store), old_rev);
    if (round == 0) {
      /* More writes while it is behind: raft hands them over, held. */
      write_keys(&c, "behind", 0, 100);
      CHECK_EQ_INT(mvcc_current_revision(m->store), old_rev);
      member_stop(&c, f, true);
    }
  }

  /* Round 3: a store that is not far enough is refused and asked again. */
  {
    char path[600];
    snprintf(path, sizeof path, "%s/stale.snap", m->dir);
    unlink(path);
    CHECK_OK(mvcc_snapshot_export(m->store, path)); /* its own old store */
    CHECK(run_until(&c.loop, not_busy, m, 10000));
    CHECK_OK(mvcc_replace(m->store, path));
    m->needed_calls = 0;
    CHECK_ERR(raftnode_store_replaced(m->node), CAIRN_ENOT_CAPABLE);
    CHECK(run_until(&c.loop, needed, m, 5000));
    CHECK(raftnode_store_behind(m->node));
  }

  /* The transfer: the leader's store, then more writes before it is put in
   * (held entries past the fetched store), then replace. As the daemon, try
   * again when what is needed moved meanwhile (the leader may install a
   * later snapshot while this member's log is behind its own). */
  char path[600];
  struct mvcc_snapshot_info info;
  int rc = CAIRN_ENOT_CAPABLE;
  for (int tries = 0; tries < 10 && rc != 0; tries++) {
    export_leader(&c, f, path, sizeof path, &info);
    CHECK(info.applied_index >= m->needed_index);
    write_keys(&c, "after-export", 0, 30);
    /* Until this member's raft has those entries committed (held, since
     * its store is behind), so that the catch-up applies them. */
    l = leader_of(&c);
    pr = (struct pair){&c, (size_t)l, f};
    CHECK(run_until(&c.loop, committed_here, &pr, 10000));
    CHECK(run_until(&c.loop, not_busy, m, 10000));
    CHECK_OK(mvcc_replace(m->store, path));
    m->needed_calls = 0;
    rc = raftnode_store_replaced(m->node);
    printf("    replace with applied index %" PRIu64 ": %s\n", info.applied_index,
           cairn_strerror(rc));
    CHECK(rc == 0 || rc == CAIRN_ENOT_CAPABLE);
    if (rc != 0) {
      CHECK(run_until(&c.loop, needed, m, 5000));
    }
  }
  CHECK_OK(rc);
  CHECK_ERR(raftnode_store_replaced(m->node), CAIRN_EINVAL);
  l = leader_of(&c);
  pr = (struct pair){&c, (size_t)l, f};
  CHECK(run_until(&c.loop, same_point, &pr, 20000));
  size_t nk_leader = 0, nk_f = 0;
  uint64_t dl = digest(c.m[l].store, &nk_leader), df = digest(m->store, &nk_f);
  printf("    caught up: %zu keys, revision %" PRId64 ", applied index %" PRIu64 "\n", nk_f,
         mvcc_current_revision(m->store), mvcc_applied_index(m->store));
  CHECK_EQ_INT(nk_f, nk_leader);
  CHECK(dl == df);
  CHECK(m->notified_revision == mvcc_current_revision(m->store));
  /* It applies what comes next like any member, and can take snapshots. */
  write_keys(&c, "later", 0, 200);
  CHECK(run_until(&c.loop, same_point, &pr, 20000));
  CHECK(digest(c.m[l].store, NULL) == digest(m->store, NULL));
  /* And restarts as a normal member. */
  member_stop(&c, f, true);
  m->needed_calls = 0;
  CHECK_OK(member_start(&c, f));
  write_keys(&c, "restarted", 0, 10);
  l = leader_of(&c);
  pr = (struct pair){&c, (size_t)l, f};
  CHECK(run_until(&c.loop, same_point, &pr, 20000));
  CHECK(digest(c.m[l].store, NULL) == digest(m->store, NULL));
  CHECK_EQ_INT(m->needed_calls, 0);
  cluster_close(&c);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  test_seed("test_raft_snapshot");
  TEST_RUN(test_catch_up);
  printf("ok\n");
  return 0;
}
