/* tests/unit/test_raft_membership.c: the member table and membership
 * changes (raft/membership.c) on real libraft, libuv and LMDB, several
 * members in one process on one loop (as test_raft_node): bootstrap three,
 * publish, errors, add a voter that joins with new_cluster=false and catches
 * up, add and promote a learner, update peer URLs (and restart there),
 * leadership transfer, remove a follower, remove the leader. */
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <uv.h>

#include "raft/memberid.h"
#include "raft/raftnode.h"
#include "test.h"
#include "test_loop.h"
#include "test_net.h"

#define MEMBERS_MAX 5

/* ---- plumbing (as test_raft_node) ---------------------------------------- */

static bool flag_set(void *arg) {
  return *(bool *)arg;
}

struct member {
  char name[16];
  char url[64];
  char client_url[64];
  const char *client_urls[1];
  char *dir;
  char store_dir[512];
  mvcc_store *store;
  raftnode *node;
  uint64_t id;
  bool closed;
  bool removed;
};

struct cluster {
  uv_loop_t loop;
  size_t n; /* members that exist (started or not) */
  struct member m[MEMBERS_MAX];
  struct raftnode_member initial[MEMBERS_MAX]; /* the --initial-cluster each start gets */
  size_t n_initial;
};

static void member_init(struct cluster *c, size_t i) {
  struct member *m = &c->m[i];
  memset(m, 0, sizeof *m);
  snprintf(m->name, sizeof m->name, "m%zu", i + 1);
  snprintf(m->url, sizeof m->url, "http://127.0.0.1:%d", test_free_port());
  snprintf(m->client_url, sizeof m->client_url, "http://127.0.0.1:%d", 40000 + (int)i);
  m->client_urls[0] = m->client_url;
  m->dir = test_tmpdir("raftmember");
  snprintf(m->store_dir, sizeof m->store_dir, "%s/store", m->dir);
  CHECK(mkdir(m->store_dir, 0700) == 0);
}

static void set_initial(struct cluster *c, size_t i) {
  c->initial[i] = (struct raftnode_member){c->m[i].name, c->m[i].url};
}

static void on_removed(void *data) {
  ((struct member *)data)->removed = true;
}

static int member_start(struct cluster *c, size_t i, bool new_cluster) {
  struct member *m = &c->m[i];
  if (m->store == NULL) {
    CHECK_OK(mvcc_open(m->store_dir, NULL, &m->store));
  }
  struct raftnode_options o = {
      .name = m->name,
      .data_dir = m->dir,
      .initial_cluster = c->initial,
      .n_initial_cluster = c->n_initial,
      .cluster_token = "test-token",
      .new_cluster = new_cluster,
      .heartbeat_ms = 20,
      .election_ms = 200,
      .client_urls = m->client_urls,
      .n_client_urls = 1,
  };
  m->closed = false;
  int rc = raftnode_start(&c->loop, m->store, &o, &m->node);
  if (rc == 0) {
    struct raftnode_status st;
    raftnode_status(m->node, &st);
    m->id = st.member_id;
    raftnode_on_removed(m->node, on_removed, m);
  }
  return rc;
}

static void on_closed(void *data) {
  ((struct member *)data)->closed = true;
}

static bool member_closed(void *arg) {
  return ((struct member *)arg)->closed;
}

static void member_stop(struct cluster *c, size_t i) {
  struct member *m = &c->m[i];
  raftnode_stop(m->node, on_closed, m);
  CHECK(run_until(&c->loop, member_closed, m, 20000));
  m->node = NULL;
}

static void cluster_close(struct cluster *c) {
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].node != NULL) {
      member_stop(c, i);
    }
  }
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].store != NULL) {
      mvcc_close(c->m[i].store);
    }
    test_rmdir(c->m[i].dir);
  }
  CHECK_OK(uv_loop_close(&c->loop));
}

/* The running member that leads, or NULL. */
static struct member *leader_of(struct cluster *c) {
  for (size_t i = 0; i < c->n; i++) {
    if (c->m[i].node != NULL) {
      struct raftnode_status st;
      raftnode_status(c->m[i].node, &st);
      if (st.is_leader) {
        return &c->m[i];
      }
    }
  }
  return NULL;
}

static bool has_leader(void *arg) {
  return leader_of(arg) != NULL;
}

static struct member *wait_leader(struct cluster *c) {
  CHECK(run_until(&c->loop, has_leader, c, 10000));
  return leader_of(c);
}

/* ---- calls ----------------------------------------------------------------- */

struct outcome {
  bool done;
  int status;
  uint64_t id;
};

static void on_member(void *data, int status, uint64_t id) {
  struct outcome *o = data;
  CHECK(!o->done);
  o->done = true;
  o->status = status;
  o->id = id;
}

/* Waits for the outcome of a call that was accepted. */
static struct outcome wait_outcome(struct cluster *c, struct outcome *o) {
  CHECK(run_until(&c->loop, flag_set, &o->done, 15000));
  return *o;
}

struct proposal {
  bool done;
  int status;
};

static void on_proposed(void *data, int status, struct mvcc_result *result) {
  struct proposal *p = data;
  p->done = true;
  p->status = status != 0 ? status : result->err;
  if (result != NULL) {
    mvcc_result_free(result);
  }
}

static struct mvcc_bytes b(const char *s) {
  return (struct mvcc_bytes){(const uint8_t *)s, strlen(s)};
}

/* A put through the current leader (retried across a leader change). */
static void put(struct cluster *c, const char *key, const char *value) {
  for (int attempt = 0; attempt < 20; attempt++) {
    struct member *l = wait_leader(c);
    struct mvcc_op op = {.type = MVCC_OP_PUT};
    op.u.put.key = b(key);
    op.u.put.value = b(value);
    struct proposal p = {0};
    if (raftnode_propose(l->node, &op, &p, on_proposed) == 0) {
      CHECK(run_until(&c->loop, flag_set, &p.done, 15000));
      if (p.status == 0) {
        return;
      }
    }
    run_until(&c->loop, flag_set, &(bool){false}, 100);
  }
  CHECK(!"no put went through");
}

struct has_value {
  struct member *m;
  const char *key, *value;
};

static bool value_is(void *arg) {
  struct has_value *h = arg;
  struct mvcc_range_req req = {.key = b(h->key)};
  struct mvcc_result r;
  CHECK_OK(mvcc_range(h->m->store, &req, &r));
  bool ok = r.u.range.n_kvs == 1 && r.u.range.kvs[0].value.len == strlen(h->value) &&
            memcmp(r.u.range.kvs[0].value.data, h->value, strlen(h->value)) == 0;
  mvcc_result_free(&r);
  return ok;
}

static void check_replicated(struct cluster *c, struct member *m, const char *key,
                             const char *value) {
  struct has_value h = {m, key, value};
  CHECK(run_until(&c->loop, value_is, &h, 10000));
}

/* The member table as m sees it: the entry for id (NULL if absent) copied
 * into out. */
static bool find_member(struct member *m, uint64_t id, struct raftnode_member_info *out, char *name,
                        size_t cap, char *peer, char *client, size_t *n_members) {
  struct raftnode_member_info *info;
  size_t n;
  CHECK_OK(raftnode_members(m->node, &info, &n));
  *n_members = n;
  bool found = false;
  for (size_t i = 0; i < n; i++) {
    if (i > 0) {
      CHECK(info[i - 1].id < info[i].id); /* etcd's order */
    }
    if (info[i].id == id) {
      found = true;
      *out = info[i];
      snprintf(name, cap, "%s", info[i].name);
      snprintf(peer, cap, "%s", info[i].n_peer_urls ? info[i].peer_urls[0] : "");
      snprintf(client, cap, "%s", info[i].n_client_urls ? info[i].client_urls[0] : "");
    }
  }
  raftnode_members_free(info);
  return found;
}

/* Every running member holds the same table: count members; the given one
 * with this name and URLs (NULL: absent). */
struct table_check {
  struct cluster *c;
  size_t count;
  uint64_t id;
  const char *name, *peer, *client;
  bool learner;
};

static bool table_is(void *arg) {
  struct table_check *t = arg;
  for (size_t i = 0; i < t->c->n; i++) {
    struct member *m = &t->c->m[i];
    if (m->node == NULL) {
      continue;
    }
    struct raftnode_member_info info = {0};
    char name[128], peer[128], client[128];
    size_t n;
    bool found = find_member(m, t->id, &info, name, sizeof name, peer, client, &n);
    if (n != t->count || found != (t->name != NULL)) {
      return false;
    }
    if (found && (strcmp(name, t->name) != 0 || strcmp(peer, t->peer) != 0 ||
                  strcmp(client, t->client) != 0 || info.is_learner != t->learner)) {
      return false;
    }
  }
  return true;
}

static void check_table(struct cluster *c, size_t count, struct member *m, const char *name,
                        const char *peer, const char *client, bool learner) {
  struct table_check t = {c, count, m->id, name, peer, client, learner};
  CHECK(run_until(&c->loop, table_is, &t, 10000));
}

struct voters {
  struct cluster *c;
  unsigned n;
};

static bool voters_are(void *arg) {
  struct voters *v = arg;
  struct member *l = leader_of(v->c);
  return l != NULL && raftnode_voters(l->node) == v->n;
}

static void check_voters(struct cluster *c, unsigned n) {
  struct voters v = {c, n};
  CHECK(run_until(&c->loop, voters_are, &v, 15000));
}

static uint64_t cluster_id(struct member *m) {
  struct raftnode_status st;
  raftnode_status(m->node, &st);
  return st.cluster_id;
}

/* ---- the test ---------------------------------------------------------------- */

static void test_membership(void) {
  struct cluster c;
  memset(&c, 0, sizeof c);
  CHECK_OK(uv_loop_init(&c.loop));
  c.n = 3;
  c.n_initial = 3;
  for (size_t i = 0; i < 3; i++) {
    member_init(&c, i);
    set_initial(&c, i);
  }
  for (size_t i = 0; i < 3; i++) {
    CHECK_OK(member_start(&c, i, true));
  }
  struct member *l = wait_leader(&c);
  uint64_t cid = cluster_id(l);
  CHECK(cid != 0);

  /* The table: names and peer URLs from the initial cluster everywhere; the
   * leader published its client URL itself; followers publish through the
   * leader (the server's Publish call: raftnode_publish there). */
  check_table(&c, 3, l, l->name, l->url, l->client_url, false);
  for (size_t i = 0; i < 3; i++) {
    struct member *m = &c.m[i];
    if (m == l) {
      continue;
    }
    CHECK(!raftnode_self_published(m->node));
    struct outcome o = {0};
    CHECK_OK(raftnode_publish(l->node, m->id, m->name, m->client_urls, 1, &o, on_member));
    CHECK_OK(wait_outcome(&c, &o).status);
    check_table(&c, 3, m, m->name, m->url, m->client_url, false);
    CHECK(raftnode_self_published(m->node));
    char url[64];
    CHECK_OK(raftnode_member_client_url(l->node, m->id, url, sizeof url));
    CHECK(strcmp(url, m->client_url) == 0);
    /* The same again: done without an entry. */
    o = (struct outcome){0};
    CHECK_OK(raftnode_publish(l->node, m->id, m->name, m->client_urls, 1, &o, on_member));
    CHECK_OK(wait_outcome(&c, &o).status);
  }
  char buf[8];
  CHECK_ERR(raftnode_member_client_url(l->node, 1234, buf, sizeof buf), CAIRN_EMEMBER_NOT_FOUND);
  put(&c, "before", "1");

  /* Errors. */
  struct member *f = l == &c.m[0] ? &c.m[1] : &c.m[0];
  const char *some_url[1] = {"http://127.0.0.1:1"};
  struct outcome o = {0};
  CHECK_ERR(raftnode_member_add(f->node, some_url, 1, false, &o, on_member), CAIRN_ENOT_LEADER);
  CHECK_ERR(raftnode_member_remove(f->node, l->id, &o, on_member), CAIRN_ENOT_LEADER);
  CHECK_ERR(raftnode_move_leader(f->node, l->id, &o, on_member), CAIRN_ENOT_LEADER);
  const char *host_url[1] = {"http://localhost:2380"};
  CHECK_ERR(raftnode_member_add(l->node, host_url, 1, false, &o, on_member),
            CAIRN_EMEMBER_BAD_URLS);
  const char *taken[1] = {f->url};
  CHECK_OK(raftnode_member_add(l->node, taken, 1, false, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EPEER_URL_EXIST);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_remove(l->node, 1234, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EMEMBER_NOT_FOUND);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_update(l->node, 1234, some_url, 1, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EMEMBER_NOT_FOUND);
  const char *other_taken[1] = {l->url};
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_update(l->node, f->id, other_taken, 1, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EPEER_URL_EXIST);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_promote(l->node, f->id, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EMEMBER_NOT_LEARNER);
  CHECK_ERR(raftnode_move_leader(l->node, 1234, &o, on_member), CAIRN_EBAD_LEADER_TRANSFEREE);

  /* A fourth member, a voter: added (no name, no client URL yet), then
   * started with new_cluster=false and the initial cluster etcdctl prints;
   * it finds its id, catches up from the log, becomes a raft voter, and
   * shows the cluster's id. */
  member_init(&c, 3);
  c.n = 4;
  const char *u4[1] = {c.m[3].url};
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_add(l->node, u4, 1, false, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  uint64_t id4;
  CHECK_OK(memberid_added(u4, 1, &id4));
  CHECK(o.id == id4);
  c.m[3].id = id4;
  check_table(&c, 4, &c.m[3], "", c.m[3].url, "", false);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_add(l->node, u4, 1, false, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EPEER_URL_EXIST);
  c.n_initial = 4;
  set_initial(&c, 3);
  CHECK_OK(member_start(&c, 3, false));
  CHECK(c.m[3].id == id4);
  check_replicated(&c, &c.m[3], "before", "1");
  CHECK(cluster_id(&c.m[3]) == cid);
  check_voters(&c, 4);
  put(&c, "after4", "2");
  check_replicated(&c, &c.m[3], "after4", "2");
  o = (struct outcome){0};
  CHECK_OK(raftnode_publish(l->node, id4, c.m[3].name, c.m[3].client_urls, 1, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  check_table(&c, 4, &c.m[3], c.m[3].name, c.m[3].url, c.m[3].client_url, false);

  /* A learner: added, promoted too early (not started: not in sync),
   * started, then promoted; a second learner is one too many. */
  member_init(&c, 4);
  c.n = 5;
  const char *u5[1] = {c.m[4].url};
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_add(l->node, u5, 1, true, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  c.m[4].id = o.id;
  check_table(&c, 5, &c.m[4], "", c.m[4].url, "", true);
  const char *u6[1] = {"http://127.0.0.1:2"};
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_add(l->node, u6, 1, true, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_ETOO_MANY_LEARNERS);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_promote(l->node, c.m[4].id, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_ELEARNER_NOT_READY);
  c.n_initial = 5;
  set_initial(&c, 4);
  CHECK_OK(member_start(&c, 4, false));
  check_replicated(&c, &c.m[4], "after4", "2");
  CHECK_EQ_INT(raftnode_voters(l->node), 4); /* a learner does not vote */
  for (int attempt = 0;; attempt++) {
    o = (struct outcome){0};
    CHECK_OK(raftnode_member_promote(l->node, c.m[4].id, &o, on_member));
    if (wait_outcome(&c, &o).status == 0) {
      break;
    }
    CHECK_ERR(o.status, CAIRN_ELEARNER_NOT_READY);
    CHECK(attempt < 50);
    run_until(&c.loop, flag_set, &(bool){false}, 100);
  }
  check_table(&c, 5, &c.m[4], "", c.m[4].url, "", false);
  check_voters(&c, 5);

  /* New peer URLs for the fourth member: the table has them, and after a
   * restart there it replicates again. */
  char old_url[64];
  snprintf(old_url, sizeof old_url, "%s", c.m[3].url);
  snprintf(c.m[3].url, sizeof c.m[3].url, "http://127.0.0.1:%d", test_free_port());
  const char *u4b[1] = {c.m[3].url};
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_update(l->node, id4, u4b, 1, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  check_table(&c, 5, &c.m[3], c.m[3].name, c.m[3].url, c.m[3].client_url, false);
  member_stop(&c, 3);
  CHECK_OK(member_start(&c, 3, false)); /* its id is kept in its directory */
  CHECK(c.m[3].id == id4);
  put(&c, "moved", "3");
  check_replicated(&c, &c.m[3], "moved", "3");

  /* Leadership transfer to a follower; to itself is done at once. */
  l = wait_leader(&c);
  o = (struct outcome){0};
  CHECK_OK(raftnode_move_leader(l->node, l->id, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  struct member *target = l == &c.m[1] ? &c.m[2] : &c.m[1];
  o = (struct outcome){0};
  CHECK_OK(raftnode_move_leader(l->node, target->id, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  l = wait_leader(&c);
  CHECK(l == target);

  /* Remove a follower: it hears of it (and stops, as etcd's members do);
   * the others go on. */
  struct member *gone = &c.m[4] != l ? &c.m[4] : &c.m[3];
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_remove(l->node, gone->id, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  CHECK(run_until(&c.loop, flag_set, &gone->removed, 10000));
  member_stop(&c, (size_t)(gone - c.m));
  check_voters(&c, 4);
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_remove(l->node, gone->id, &o, on_member));
  CHECK_ERR(wait_outcome(&c, &o).status, CAIRN_EMEMBER_NOT_FOUND);
  put(&c, "after-remove", "4");

  /* Remove the leader itself: it steps down once raft's change commits, a
   * new leader is elected among the others, and writes go on. */
  struct member *old = l;
  o = (struct outcome){0};
  CHECK_OK(raftnode_member_remove(old->node, old->id, &o, on_member));
  CHECK_OK(wait_outcome(&c, &o).status);
  CHECK(run_until(&c.loop, flag_set, &old->removed, 10000));
  member_stop(&c, (size_t)(old - c.m));
  l = wait_leader(&c);
  CHECK(l != old);
  check_voters(&c, 3);
  put(&c, "after-leader", "5");
  for (size_t i = 0; i < c.n; i++) {
    if (c.m[i].node != NULL) {
      check_replicated(&c, &c.m[i], "after-leader", "5");
      CHECK(cluster_id(&c.m[i]) == cid);
    }
  }
  (void)old_url;
  cluster_close(&c);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  test_seed("test_raft_membership");
  TEST_RUN(test_membership);
  printf("ok\n");
  return 0;
}
