/* tests/unit/test_lessor.c: the lessor's expiry, renewal, checkpoint and
 * restore logic without network or raft.
 *
 * The lessor is compiled into this test (#include of server/lessor.c) with
 * fakes for what it calls outside: server_propose() queues proposals that the
 * test applies to a real store (or fails) when it chooses; raftnode_status()
 * reports the leadership the test sets; the clock is the test's. Timers are
 * driven by calling their callbacks, so every test is deterministic. */
#include <inttypes.h>
#include <stdarg.h>

#include "server/lessor.c"
#include "test.h"

/* ---- fakes ---------------------------------------------------------------- */

#define FAKE_PROPS_MAX 8192u

struct fake_prop {
  struct mvcc_op op;
  void *data;
  server_propose_cb cb;
};

static struct fake_prop props[FAKE_PROPS_MAX];
static size_t n_props;
static int propose_error; /* returned by server_propose when nonzero */
static bool fake_leader;
static uint64_t fake_term = 1;
static uint64_t fake_now = 1000000;
static uint64_t expired_count;

int server_propose(struct server *s, const struct mvcc_op *op, void *data, server_propose_cb cb) {
  (void)s;
  if (propose_error != 0) {
    return propose_error;
  }
  CHECK(n_props < FAKE_PROPS_MAX);
  props[n_props++] = (struct fake_prop){*op, data, cb};
  return 0;
}

void raftnode_status(const raftnode *n, struct raftnode_status *out) {
  (void)n;
  memset(out, 0, sizeof *out);
  out->is_leader = fake_leader;
  out->term = fake_term;
  out->leader_id = fake_leader ? 1 : 0;
}

void server_log(int level, const char *fmt, ...) {
  if (getenv("TEST_VERBOSE") == NULL && level < LOG_ERROR) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

void metrics_inc(struct metrics *m, enum metric_counter which) {
  (void)m;
  if (which == METRIC_LEASE_EXPIRED) {
    expired_count++;
  }
}

static uint64_t fake_clock(struct lessor *l) {
  (void)l;
  return fake_now;
}

/* ---- fixture -------------------------------------------------------------- */

static char *dir;
static uv_loop_t loop;
static struct server srv;
static raftnode *fake_raft = (raftnode *)&fake_raft; /* never dereferenced */

static struct mvcc_bytes B(const char *s) {
  return (struct mvcc_bytes){(const uint8_t *)s, strlen(s)};
}

static void
start_lessor(void) {
  CHECK_OK(lessor_init(&srv));
  CHECK(srv.lessor != NULL);
  srv.lessor->now = fake_clock;
}

static void setup(void) {
  dir = test_tmpdir("lessor");
  memset(&srv, 0, sizeof srv);
  CHECK_OK(uv_loop_init(&loop));
  srv.loop = &loop;
  srv.cfg.election_ms = 1000;
  srv.raft = fake_raft;
  CHECK_OK(mvcc_open(dir, NULL, &srv.store));
  n_props = 0;
  propose_error = 0;
  fake_leader = false;
  fake_term = 1;
  expired_count = 0;
  start_lessor();
}

static void stop_lessor(void) {
  lessor_close(srv.lessor);
  CHECK(srv.lessor == NULL);
}

/* Fails every queued proposal with status (they must all call back so that
 * the lessor can be freed). */
static void fail_all(int status);

static void teardown(void) {
  fail_all(CAIRN_ESTOPPED);
  stop_lessor();
  CHECK_OK(uv_run(&loop, UV_RUN_DEFAULT));
  CHECK_OK(uv_loop_close(&loop));
  mvcc_close(srv.store);
  test_rmdir(dir);
}

/* Applies proposal i to the store and calls it back. */
static void apply_prop(struct fake_prop p) {
  /* As raftnode: the result lives during the callback only. */
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &p.op, 1, &r));
  p.cb(&srv, p.data, 0, &r);
}

/* Takes the queued proposals off the queue (callbacks may queue more). */
static size_t take_props(struct fake_prop *out, size_t cap) {
  size_t n = n_props < cap ? n_props : cap;
  memcpy(out, props, n * sizeof *out);
  memmove(props, props + n, (n_props - n) * sizeof *props);
  n_props -= n;
  return n;
}

static void apply_all(void) {
  static struct fake_prop batch[FAKE_PROPS_MAX];
  while (n_props > 0) {
    size_t n = take_props(batch, FAKE_PROPS_MAX);
    for (size_t i = 0; i < n; i++) {
      apply_prop(batch[i]);
    }
  }
}

static void fail_all(int status) {
  static struct fake_prop batch[FAKE_PROPS_MAX];
  while (n_props > 0) {
    size_t n = take_props(batch, FAKE_PROPS_MAX);
    for (size_t i = 0; i < n; i++) {
      batch[i].cb(&srv, batch[i].data, status, NULL);
    }
  }
}

static size_t count_props(enum mvcc_op_type type) {
  size_t n = 0;
  for (size_t i = 0; i < n_props; i++) {
    n += props[i].op.type == type;
  }
  return n;
}

static void tick(void) {
  tick_cb(&srv.lessor->tick);
}

static void fire_expiry(void) {
  expiry_cb(&srv.lessor->expiry);
}

static void advance(uint64_t ms) {
  fake_now += ms;
}

/* Makes this member the leader: the tick proposes the barrier, which applies. */
static void become_leader(void) {
  fake_leader = true;
  tick();
  CHECK_EQ_INT(srv.lessor->role, ROLE_PROMOTING);
  CHECK_EQ_INT(count_props(MVCC_OP_RANGE), 1);
  apply_all();
  CHECK_EQ_INT(srv.lessor->role, ROLE_LEADER);
}

/* A grant as the lease service makes it: applied, then told to the lessor. */
static void grant(int64_t id, int64_t ttl) {
  struct mvcc_op op = {.type = MVCC_OP_LEASE_GRANT};
  op.u.lease_grant.id = id;
  op.u.lease_grant.ttl = ttl;
  op.u.lease_grant.now_ms = 1;
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  CHECK_OK(r.err);
  lessor_applied(srv.lessor, &op, &r);
  mvcc_result_free(&r);
}

static void put_with_lease(const char *key, int64_t lease) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = B(key);
  op.u.put.value = B("v");
  op.u.put.lease = lease;
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  CHECK_OK(r.err);
  mvcc_result_free(&r);
}

static bool store_has(int64_t id) {
  struct mvcc_lease rec;
  int rc = mvcc_lease_get(srv.store, id, &rec);
  CHECK(rc == 0 || rc == CAIRN_ELEASE_NOT_FOUND);
  return rc == 0;
}

static int64_t stored_remaining(int64_t id) {
  struct mvcc_lease rec;
  CHECK_OK(mvcc_lease_get(srv.store, id, &rec));
  return rec.remaining_ms;
}

static int64_t remaining(int64_t id) {
  struct mvcc_lease rec;
  CHECK_OK(mvcc_lease_get(srv.store, id, &rec));
  return lessor_remaining_ms(srv.lessor, &rec);
}

/* Checks the heap order and the index back-pointers, the table count, the
 * checkpoint queue's order and links, and that every pool entry is either
 * in the table or on the free list. */
static void check_invariants(void) {
  struct lessor *l = srv.lessor;
  for (size_t i = 0; i < l->heap_len; i++) {
    CHECK(heap_at(l, i)->heap_idx == i);
    if (i > 0) {
      CHECK(heap_at(l, (i - 1) / 2)->expiry_ms <= heap_at(l, i)->expiry_ms);
    }
  }
  size_t n = 0;
  for (size_t i = 0; i < l->cap; i++) {
    if (l->slots[i] != NO_LEASE) {
      n++;
      struct lease *e = lease_at(l, l->slots[i]);
      CHECK(e->self == l->slots[i]);
      CHECK(table_find(l, e->id) == e);
    }
  }
  CHECK_EQ_INT(n, l->count);
  size_t free_n = 0;
  for (uint32_t i = l->free_head; i != NO_LEASE; i = lease_at(l, i)->ck_next) {
    free_n++;
  }
  CHECK_EQ_INT(n + free_n, l->pool_used);
  uint32_t prev = NO_LEASE;
  for (uint32_t i = l->ck_head; i != NO_LEASE; i = lease_at(l, i)->ck_next) {
    struct lease *e = lease_at(l, i);
    CHECK(e->in_ck_queue && e->ck_prev == prev);
    if (prev != NO_LEASE) {
      CHECK((int32_t)(e->ck_due - lease_at(l, prev)->ck_due) >= 0);
    }
    prev = i;
  }
  CHECK(l->ck_tail == prev);
}

/* A renewal callback that records its outcome. */
struct renew_out {
  int calls;
  int status;
  int64_t ttl;
};

static void on_renewed(void *data, int status, int64_t ttl) {
  struct renew_out *o = data;
  o->calls++;
  o->status = status;
  o->ttl = ttl;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_min_ttl(void) {
  setup();
  CHECK_EQ_INT(lessor_min_ttl(srv.lessor), 2); /* ceil(1.5 x 1 s) */
  stop_lessor();
  srv.cfg.election_ms = 5000;
  start_lessor();
  CHECK_EQ_INT(lessor_min_ttl(srv.lessor), 8); /* ceil(7.5) */
  /* A lease granted below the minimum lives the minimum. */
  grant(7, 1);
  become_leader();
  CHECK_EQ_INT(remaining(7), 8000 + 5000); /* + the promotion's extension */
  teardown();
}

/* Random TTLs; expiry revokes exactly the leases whose time is up, earliest
 * first, and deletes their keys. */
static void test_expiry_order(void) {
  setup();
  become_leader();
  enum { N = 200 };
  int64_t ttl[N + 1];
  for (int64_t id = 1; id <= N; id++) {
    ttl[id] = 2 + (int64_t)test_rand_below(30);
    grant(id, ttl[id]);
    char key[32];
    snprintf(key, sizeof key, "k%" PRId64, id);
    put_with_lease(key, id);
  }
  uint64_t start = fake_now;
  check_invariants();
  for (int64_t t = 1; t <= 33; t++) {
    fake_now = start + (uint64_t)t * 1000;
    fire_expiry();
    for (size_t i = 0; i < n_props; i++) {
      CHECK_EQ_INT(props[i].op.type, MVCC_OP_LEASE_REVOKE);
      CHECK(ttl[props[i].op.u.lease_revoke_id] <= t);
    }
    apply_all();
    check_invariants();
    for (int64_t id = 1; id <= N; id++) {
      CHECK(store_has(id) == (ttl[id] > t));
    }
  }
  CHECK_EQ_INT(srv.lessor->count, 0);
  CHECK_EQ_INT(expired_count, N);
  /* Their keys went with them. */
  struct mvcc_range_req rq = {.key = B("k"), .range_end = B("l"), .count_only = true};
  struct mvcc_result rr;
  CHECK_OK(mvcc_range(srv.store, &rq, &rr));
  CHECK_EQ_INT(rr.u.range.count, 0);
  mvcc_result_free(&rr);
  teardown();
}

static void test_renew(void) {
  setup();
  become_leader();
  grant(1, 10);
  int64_t ttl = -5;
  struct renew_out o = {0};
  advance(8000);
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 0);
  CHECK_EQ_INT(ttl, 10);
  CHECK_EQ_INT(remaining(1), 10000);
  advance(9000);
  fire_expiry();
  CHECK_EQ_INT(n_props, 0); /* renewed: not due yet */
  advance(1000);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), 1);
  /* Expired, revocation in flight: a keepalive gets TTL 0 (etcd: not found). */
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 0);
  CHECK_EQ_INT(ttl, 0);
  CHECK_EQ_INT(remaining(1), 0);
  apply_all();
  CHECK(!store_has(1));
  /* Unknown lease: TTL 0. */
  CHECK_EQ_INT(lessor_renew(srv.lessor, 99, &ttl, &o, on_renewed), 0);
  CHECK_EQ_INT(ttl, 0);
  CHECK_EQ_INT(o.calls, 0);
  teardown();
}

/* The leader records remaining TTLs; a restart restores them. */
static void test_checkpoint_restore(void) {
  setup();
  become_leader();
  grant(1, 60);
  grant(2, 3); /* expires before its checkpoint is due */
  advance(LESSOR_CHECKPOINT_INTERVAL_MS);
  tick();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), 1);
  CHECK_EQ_INT(props[n_props - 1].op.u.lease_checkpoint.remaining_ms,
               60000 - LESSOR_CHECKPOINT_INTERVAL_MS);
  apply_all();
  CHECK(!store_has(2));
  CHECK_EQ_INT(stored_remaining(1), 60000 - LESSOR_CHECKPOINT_INTERVAL_MS);
  advance(2000);
  tick();
  CHECK_EQ_INT(n_props, 0);

  /* Crash and restart (the lessor is rebuilt from the store). */
  stop_lessor();
  start_lessor();
  CHECK_EQ_INT(srv.lessor->count, 1);
  advance(30000); /* downtime does not count */
  /* A follower estimates from the record. */
  CHECK_EQ_INT(remaining(1), 55000);
  become_leader();
  /* restored remaining + the election timeout, as etcd's Promote */
  CHECK_EQ_INT(remaining(1), 55000 + 1000);
  teardown();
}

/* A renewal clears a checkpoint before it is answered, so that a restart
 * after it does not shorten the lease. */
static void test_renew_clears_checkpoint(void) {
  setup();
  become_leader();
  grant(1, 60);
  advance(LESSOR_CHECKPOINT_INTERVAL_MS);
  tick();
  apply_all();
  CHECK_EQ_INT(stored_remaining(1), 55000);
  advance(10000);
  int64_t ttl = 0;
  struct renew_out o = {0};
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), 1);
  CHECK_EQ_INT(props[0].op.u.lease_checkpoint.remaining_ms, -1);
  /* A second keepalive meanwhile does not propose again. */
  struct renew_out o2 = {0};
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o2, on_renewed), 0);
  CHECK_EQ_INT(ttl, 60);
  CHECK_EQ_INT(n_props, 1);
  apply_all();
  CHECK_EQ_INT(o.calls, 1);
  CHECK_OK(o.status);
  CHECK_EQ_INT(o.ttl, 60);
  CHECK_EQ_INT(stored_remaining(1), -1);
  /* Freshly renewed: the next checkpoint is skipped (the record is right
   * within LESSOR_CHECKPOINT_MIN_GAIN_MS)... */
  CHECK_OK(lessor_renew(srv.lessor, 1, &ttl, &o2, on_renewed));
  advance(LESSOR_CHECKPOINT_INTERVAL_MS - 100);
  CHECK_OK(lessor_renew(srv.lessor, 1, &ttl, &o2, on_renewed));
  advance(500);
  tick();
  CHECK_EQ_INT(n_props, 0);
  /* ... one due later is not. */
  advance(LESSOR_CHECKPOINT_INTERVAL_MS);
  tick();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), 1);
  apply_all();
  CHECK_EQ_INT(stored_remaining(1), 60000 - LESSOR_CHECKPOINT_INTERVAL_MS - 500);
  /* Restart: the full TTL after a renewal is what comes back. */
  advance(1000);
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  apply_all();
  stop_lessor();
  start_lessor();
  become_leader();
  CHECK_EQ_INT(remaining(1), 60000 + 1000);
  teardown();
}

/* A follower renews through raft; the leader sees the renewal when the
 * checkpoint of -1 is applied. */
static void test_follower_renew(void) {
  setup();
  grant(1, 20);
  int64_t ttl = -1;
  struct renew_out o = {0};
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  CHECK_EQ_INT(lessor_renew(srv.lessor, 42, &ttl, &o, on_renewed), 1);
  apply_all();
  CHECK_EQ_INT(o.calls, 2);
  CHECK_OK(o.status);
  CHECK_EQ_INT(o.ttl, 0); /* the last one: lease 42 does not exist */
  /* Failure of the proposal reaches the caller. */
  propose_error = CAIRN_ENOT_LEADER;
  CHECK_ERR(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), CAIRN_ENOT_LEADER);
  propose_error = 0;
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  fail_all(CAIRN_ELEADER_CHANGED);
  CHECK_EQ_INT(o.calls, 3);
  CHECK_ERR(o.status, CAIRN_ELEADER_CHANGED);

  /* On the leader, a renewal applied from elsewhere moves the expiry. */
  become_leader();
  advance(15000);
  CHECK_EQ_INT(remaining(1), 20000 + 1000 - 15000);
  struct mvcc_op op = {.type = MVCC_OP_LEASE_CHECKPOINT};
  op.u.lease_checkpoint.id = 1;
  op.u.lease_checkpoint.remaining_ms = -1;
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  lessor_applied(srv.lessor, &op, &r);
  mvcc_result_free(&r);
  CHECK_EQ_INT(remaining(1), 20000);
  /* So does a grant applied from elsewhere (it starts its expiry). */
  grant(2, 5);
  CHECK_EQ_INT(remaining(2), 5000);
  teardown();
}

/* A lease granted through another member, never seen by this leader: a
 * keepalive adopts it from the store. */
static void test_adopt_on_renew(void) {
  setup();
  become_leader();
  struct mvcc_op op = {.type = MVCC_OP_LEASE_GRANT};
  op.u.lease_grant.id = 5;
  op.u.lease_grant.ttl = 30;
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  mvcc_result_free(&r);
  CHECK_EQ_INT(srv.lessor->count, 0);
  int64_t ttl = 0;
  CHECK_EQ_INT(lessor_renew(srv.lessor, 5, &ttl, NULL, on_renewed), 0);
  CHECK_EQ_INT(ttl, 30);
  CHECK_EQ_INT(srv.lessor->count, 1);
  advance(30000);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), 1);
  apply_all();
  CHECK(!store_has(5));
  teardown();
}

/* Off the leader nothing expires; leadership back reloads and restarts. */
static void test_demote(void) {
  setup();
  become_leader();
  grant(1, 5);
  fake_leader = false;
  tick();
  CHECK_EQ_INT(srv.lessor->role, ROLE_FOLLOWER);
  advance(60000);
  fire_expiry();
  tick();
  CHECK_EQ_INT(n_props, 0);
  CHECK(store_has(1));
  /* Leader again in a later term. */
  fake_term = 3;
  become_leader();
  CHECK_EQ_INT(remaining(1), 5000 + 1000);
  /* Lost and won again between two ticks: a new promotion. */
  fake_term = 4;
  tick();
  CHECK_EQ_INT(srv.lessor->role, ROLE_PROMOTING);
  /* A barrier that comes back after the term moved on does not promote. */
  fake_term = 5;
  fake_leader = false;
  tick();
  fake_leader = true;
  apply_all(); /* the term-4 barrier */
  CHECK_EQ_INT(srv.lessor->role, ROLE_FOLLOWER);
  become_leader();
  teardown();
}

/* A revocation that fails is retried after LESSOR_REVOKE_RETRY_MS. */
static void test_revoke_retry(void) {
  setup();
  become_leader();
  grant(1, 2);
  advance(2000);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), 1);
  fail_all(CAIRN_ETIMEOUT);
  CHECK(store_has(1));
  advance(LESSOR_REVOKE_RETRY_MS - 1);
  fire_expiry();
  CHECK_EQ_INT(n_props, 0);
  advance(1);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), 1);
  /* A proposal refused at once is retried too. */
  fail_all(CAIRN_ETIMEOUT);
  propose_error = CAIRN_ETOO_MANY_REQUESTS;
  advance(LESSOR_REVOKE_RETRY_MS);
  fire_expiry();
  propose_error = 0;
  CHECK_EQ_INT(n_props, 0);
  advance(LESSOR_REVOKE_RETRY_MS);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), 1);
  apply_all();
  CHECK(!store_has(1));
  CHECK_EQ_INT(srv.lessor->count, 0);
  /* Revoked by a client meanwhile: the expiry's revoke finds nothing. */
  grant(2, 2);
  advance(2000);
  fire_expiry();
  struct mvcc_op op = {.type = MVCC_OP_LEASE_REVOKE, .u.lease_revoke_id = 2};
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  mvcc_result_free(&r);
  apply_all();
  CHECK_EQ_INT(srv.lessor->count, 0);
  teardown();
}

/* Bounds: revocations and checkpoints in flight, checkpoints per tick,
 * grants, streams, renewals through raft. */
static void test_bounds(void) {
  setup();
  become_leader();
  enum { N = LESSOR_REVOKES_INFLIGHT_MAX + 100 };
  for (int64_t id = 1; id <= N; id++) {
    grant(id, 60);
  }
  advance(LESSOR_CHECKPOINT_INTERVAL_MS);
  tick();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), LESSOR_CHECKPOINTS_PER_TICK);
  for (int i = 0; i < 10; i++) {
    tick();
  }
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), LESSOR_CHECKPOINTS_INFLIGHT_MAX);
  apply_all();
  tick();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), LESSOR_CHECKPOINTS_PER_TICK);
  tick();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_CHECKPOINT), N - LESSOR_CHECKPOINTS_INFLIGHT_MAX);
  apply_all();
  check_invariants();

  advance(60000);
  fire_expiry();
  CHECK_EQ_INT(count_props(MVCC_OP_LEASE_REVOKE), LESSOR_REVOKES_INFLIGHT_MAX);
  /* Each revocation that completes lets another one go. */
  apply_all();
  CHECK_EQ_INT(srv.lessor->count, 0);
  CHECK_EQ_INT(expired_count, N);

  for (unsigned i = 0; i < LESSOR_KEEPALIVE_STREAMS_MAX; i++) {
    CHECK_OK(lessor_stream_open(srv.lessor));
  }
  CHECK_ERR(lessor_stream_open(srv.lessor), CAIRN_ETOO_MANY_REQUESTS);
  lessor_stream_close(srv.lessor);
  CHECK_OK(lessor_stream_open(srv.lessor));

  srv.lessor->count = LESSOR_LEASES_MAX - 2; /* as if that many were held */
  CHECK_OK(lessor_grant_begin(srv.lessor));
  CHECK_OK(lessor_grant_begin(srv.lessor));
  CHECK_ERR(lessor_grant_begin(srv.lessor), CAIRN_ETOO_MANY_REQUESTS);
  lessor_grant_done(srv.lessor);
  CHECK_OK(lessor_grant_begin(srv.lessor));
  lessor_grant_done(srv.lessor);
  lessor_grant_done(srv.lessor);
  srv.lessor->count = 0;

  /* Renewals through raft (a follower's) are bounded. */
  fake_leader = false;
  tick();
  int64_t ttl;
  struct renew_out o = {0};
  for (unsigned i = 0; i < LESSOR_RENEWS_INFLIGHT_MAX; i++) {
    CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  }
  CHECK_ERR(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), CAIRN_ETOO_MANY_REQUESTS);
  apply_all();
  CHECK_EQ_INT(o.calls, LESSOR_RENEWS_INFLIGHT_MAX);
  teardown();
}

/* Applies the queued revocations, marking their leases dead. */
static void settle(bool *live) {
  for (size_t k = 0; k < n_props; k++) {
    CHECK_EQ_INT(props[k].op.type, MVCC_OP_LEASE_REVOKE);
    live[props[k].op.u.lease_revoke_id] = false;
  }
  apply_all();
}

/* The hash table and the heap against a reference, with random grants,
 * renewals, revocations and expiries. */
static void test_random(void) {
  setup();
  become_leader();
  enum { IDS = 3000 };
  static bool live[IDS];
  memset(live, 0, sizeof live);
  unsigned rounds = test_small() ? 3000 : 30000;
  for (unsigned i = 0; i < rounds; i++) {
    int64_t id = 1 + (int64_t)test_rand_below(IDS - 1);
    int64_t ttl;
    switch (test_rand_below(4)) {
      case 0:
        if (!live[id]) {
          grant(id, 2 + (int64_t)test_rand_below(20));
          live[id] = true;
        }
        break;
      case 1: {
        struct lease *e = table_find(srv.lessor, id);
        bool due = e != NULL && e->expiry_ms <= fake_now;
        CHECK_EQ_INT(lessor_renew(srv.lessor, id, &ttl, NULL, on_renewed), 0);
        CHECK((ttl > 0) == (live[id] && !due));
        settle(live); /* a renewal that finds its lease expired revokes the due ones */
        break;
      }
      case 2:
        if (live[id]) {
          struct mvcc_op op = {.type = MVCC_OP_LEASE_REVOKE, .u.lease_revoke_id = id};
          struct mvcc_result r;
          CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
          lessor_applied(srv.lessor, &op, &r);
          mvcc_result_free(&r);
          live[id] = false;
        }
        break;
      case 3:
        advance(test_rand_below(300));
        fire_expiry();
        settle(live);
        break;
    }
    if (i % 500 == 0) {
      check_invariants();
      size_t n = 0;
      for (int64_t k = 1; k < IDS; k++) {
        n += live[k];
        CHECK((table_find(srv.lessor, k) != NULL) == live[k]);
        CHECK(store_has(k) == live[k]);
      }
      CHECK_EQ_INT(n, srv.lessor->count);
    }
  }
  teardown();
}

/* Closing with proposals in flight: the lessor goes when they call back. */
static void test_close_inflight(void) {
  setup();
  become_leader();
  grant(1, 60);
  int64_t ttl;
  struct renew_out o = {0};
  fake_leader = false;
  tick();
  CHECK_EQ_INT(lessor_renew(srv.lessor, 1, &ttl, &o, on_renewed), 1);
  stop_lessor();
  CHECK_OK(uv_run(&loop, UV_RUN_DEFAULT)); /* timers closed; lessor still waiting */
  fail_all(CAIRN_ESTOPPED);
  CHECK_EQ_INT(o.calls, 1);
  CHECK_ERR(o.status, CAIRN_ESTOPPED);
  CHECK_OK(uv_loop_close(&loop));
  mvcc_close(srv.store);
  test_rmdir(dir);
}

int main(void) {
  test_seed("test_lessor");
  TEST_RUN(test_min_ttl);
  TEST_RUN(test_expiry_order);
  TEST_RUN(test_renew);
  TEST_RUN(test_checkpoint_restore);
  TEST_RUN(test_renew_clears_checkpoint);
  TEST_RUN(test_follower_renew);
  TEST_RUN(test_adopt_on_renew);
  TEST_RUN(test_demote);
  TEST_RUN(test_revoke_retry);
  TEST_RUN(test_bounds);
  TEST_RUN(test_random);
  TEST_RUN(test_close_inflight);
  printf("test_lessor: ok\n");
  return 0;
}
