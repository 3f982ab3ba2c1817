/* tests/unit/test_watch_hub.c: the watch hub without the network.
 *
 * The hub's source is included, so that its interval index can be checked
 * against brute force. The pieces of the daemon it calls (gRPC calls, the
 * response header, raft) are fakes defined here: a fake call queues the
 * packed responses, refuses more than `cap` queued bytes with CAIRN_EBUSY as
 * wire/grpc.h says, and the test plays the client, decoding what it reads.
 * The store is a real MVCC store; every write is also recorded by the test
 * (the whole change feed with prev_kv), which gives each watcher's expected
 * event sequence. */
#include "server/watch_hub.c"

#include <stdarg.h>

#include "test.h"

/* ---- fakes ------------------------------------------------------------------ */

struct cevent {
  int64_t rev, create, version, lease;
  int type;
  char *key, *val, *pval;
  size_t klen, vlen, pvlen;
  bool has_prev;
};

/* What the client saw of one watch. */
struct cwatch {
  int64_t id;
  bool canceled;
  int64_t compact_rev;
  struct cevent *ev;
  size_t n, cap;
  int64_t last_rev;     /* revision of the last event of the last whole response */
  bool frag_open;       /* a fragment=true response came, its end did not */
  size_t progress;      /* responses without events, not created/canceled */
  int64_t progress_rev; /* header revision of the last of those */
  bool split_allowed;   /* a revision may come in several responses */
  size_t responses;     /* responses with events */
};

struct fmsg {
  uint8_t *d;
  size_t n;
};

struct grpc_call {
  void *user;
  struct fmsg *q;
  size_t qh, qn, qcap;
  size_t queued, cap;
  void (*wcb)(grpc_call *, void *);
  void *wdata;
  bool finished;
  int status;
  char msg[160];
  const char *hasleader;
  /* client state */
  struct cwatch *w;
  size_t nw;
  size_t n_created, n_refused, n_stream_progress;
  int64_t stream_progress_rev;
  char last_reason[160];
  int64_t pending_create[4096]; /* ids of created replies, in order */
};

int grpc_call_send(grpc_call *call, const uint8_t *msg, size_t len) {
  if (call->finished) {
    return CAIRN_ESTOPPED;
  }
  if (call->queued > call->cap) {
    return CAIRN_EBUSY;
  }
  if (call->qh + call->qn == call->qcap) {
    if (call->qh > 0) {
      memmove(call->q, call->q + call->qh, call->qn * sizeof *call->q);
      call->qh = 0;
    } else {
      call->qcap = call->qcap ? call->qcap * 2 : 64;
      call->q = realloc(call->q, call->qcap * sizeof *call->q);
      CHECK(call->q != NULL);
    }
  }
  struct fmsg *m = &call->q[call->qh + call->qn++];
  m->d = malloc(len ? len : 1);
  CHECK(m->d != NULL);
  memcpy(m->d, msg, len);
  m->n = len;
  call->queued += len;
  return 0;
}

int grpc_call_sendv(grpc_call *call, const struct grpc_iov *iov, size_t n) {
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    len += iov[i].len;
  }
  uint8_t *buf = malloc(len ? len : 1);
  CHECK(buf != NULL);
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    if (iov[i].len > 0) {
      memcpy(buf + off, iov[i].data, iov[i].len);
      off += iov[i].len;
    }
  }
  int rc = grpc_call_send(call, buf, len);
  free(buf);
  return rc;
}

int grpc_call_finish(grpc_call *call, int status, const char *message) {
  CHECK(!call->finished);
  call->finished = true;
  call->status = status;
  snprintf(call->msg, sizeof call->msg, "%s", message ? message : "");
  return 0;
}

void grpc_call_on_writable(grpc_call *call, void (*cb)(grpc_call *call, void *data), void *data) {
  CHECK(cb == NULL || call->wcb == NULL); /* one at a time */
  call->wcb = cb;
  call->wdata = data;
}

size_t grpc_call_queued_bytes(const grpc_call *call) {
  return call->queued;
}

const char *grpc_call_header(const grpc_call *call, const char *name) {
  return strcmp(name, "hasleader") == 0 ? call->hasleader : NULL;
}

void grpc_call_set_user(grpc_call *call, void *user) {
  call->user = user;
}

void *grpc_call_user(const grpc_call *call) {
  return call->user;
}

void server_header(const struct server *s, Etcdserverpb__ResponseHeader *h) {
  h->cluster_id = 11;
  h->member_id = 22;
  h->raft_term = 3;
  h->revision = mvcc_current_revision(s->store);
}

void server_kv_to_pb(const struct mvcc_kv *kv, Mvccpb__KeyValue *out) {
  out->key.data = (uint8_t *)kv->key.data;
  out->key.len = kv->key.len;
  out->value.data = (uint8_t *)kv->value.data;
  out->value.len = kv->value.len;
  out->create_revision = kv->create_revision;
  out->mod_revision = kv->mod_revision;
  out->version = kv->version;
  out->lease = kv->lease;
}

void server_log(int level, const char *fmt, ...) {
  if (getenv("CAIRN_TEST_VERBOSE") == NULL && level < LOG_ERROR) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static void (*applied_cb)(void *, int64_t);
static void *applied_data;
static uint64_t fake_leader = 1;

void raftnode_on_applied(raftnode *n, void (*cb)(void *data, int64_t revision), void *data) {
  (void)n;
  applied_cb = cb;
  applied_data = data;
}

void raftnode_status(const raftnode *n, struct raftnode_status *out) {
  (void)n;
  memset(out, 0, sizeof *out);
  out->leader_id = fake_leader;
  out->term = 3;
}

/* ---- the store, its recorded history, the loop ----------------------------------------- */

static uv_loop_t loop;
static struct server srv;
static char *dir;
static struct watch_hub *hub;
static struct mvcc_event *hist; /* every change, copied, with prev_kv */
static size_t n_hist, cap_hist;
static struct wpos hist_pos = {1, 0};
static int64_t max_compacted;

static char *dupb(const uint8_t *p, size_t n) {
  char *d = malloc(n + 1);
  CHECK(d != NULL);
  if (n) {
    memcpy(d, p, n);
  }
  d[n] = 0;
  return d;
}

static void record_history(void) {
  for (;;) {
    struct mvcc_feed_req q = {.key = {KEY_NUL, 1},
                              .range_end = {KEY_NUL, 1},
                              .start_revision = hist_pos.rev,
                              .start_sub = hist_pos.sub,
                              .prev_kv = true};
    struct mvcc_feed f;
    CHECK_OK(mvcc_changes(srv.store, &q, &f));
    for (size_t i = 0; i < f.n_events; i++) {
      if (n_hist == cap_hist) {
        cap_hist = cap_hist ? cap_hist * 2 : 1024;
        hist = realloc(hist, cap_hist * sizeof *hist);
        CHECK(hist != NULL);
      }
      struct mvcc_event e = f.events[i];
      e.kv.key.data = (uint8_t *)dupb(e.kv.key.data, e.kv.key.len);
      e.kv.value.data = (uint8_t *)dupb(e.kv.value.data, e.kv.value.len);
      if (e.has_prev_kv) {
        e.prev_kv.key.data = (uint8_t *)dupb(e.prev_kv.key.data, e.prev_kv.key.len);
        e.prev_kv.value.data = (uint8_t *)dupb(e.prev_kv.value.data, e.prev_kv.value.len);
      }
      hist[n_hist++] = e;
    }
    hist_pos = (struct wpos){f.next_revision, f.next_sub};
    bool done = f.caught_up;
    mvcc_feed_free(&f);
    if (done) {
      return;
    }
  }
}

static void apply_ops(struct mvcc_op *ops, size_t n) {
  struct mvcc_result *res = calloc(n, sizeof *res);
  CHECK(res != NULL);
  CHECK_OK(mvcc_apply(srv.store, ops, n, res));
  for (size_t i = 0; i < n; i++) {
    CHECK_OK(res[i].err);
    mvcc_result_free(&res[i]);
  }
  free(res);
  record_history();
  CHECK(applied_cb != NULL);
  applied_cb(applied_data, mvcc_current_revision(srv.store));
}

static struct mvcc_bytes S(const char *s) {
  return (struct mvcc_bytes){(const uint8_t *)s, strlen(s)};
}

static void
put(const char *k, const char *v) {
  struct mvcc_op op = {.type = MVCC_OP_PUT};
  op.u.put.key = S(k);
  op.u.put.value = S(v);
  apply_ops(&op, 1);
}

/* n puts, one revision each, in one batch. */
static void put_many(const char *prefix, size_t n, size_t vlen) {
  struct mvcc_op *ops = calloc(n, sizeof *ops);
  char(*keys)[64] = calloc(n, 64);
  char *val = malloc(vlen + 1);
  CHECK(ops && keys && val);
  memset(val, 'v', vlen);
  val[vlen] = 0;
  for (size_t i = 0; i < n; i++) {
    snprintf(keys[i], 64, "%s%08zu", prefix, i);
    ops[i].type = MVCC_OP_PUT;
    ops[i].u.put.key = S(keys[i]);
    ops[i].u.put.value = (struct mvcc_bytes){(const uint8_t *)val, vlen};
  }
  apply_ops(ops, n);
  free(ops);
  free(keys);
  free(val);
}

static void del(const char *k, const char *end) {
  struct mvcc_op op = {.type = MVCC_OP_DELETE};
  op.u.del.key = S(k);
  op.u.del.range_end = end ? S(end) : (struct mvcc_bytes){NULL, 0};
  apply_ops(&op, 1);
}

/* A txn of puts: one revision, several events. */
static void txn_puts(const char *const *keys, size_t n, const char *v) {
  struct mvcc_request_op *rops = calloc(n, sizeof *rops);
  CHECK(rops != NULL);
  for (size_t i = 0; i < n; i++) {
    rops[i].type = MVCC_REQUEST_PUT;
    rops[i].u.put.key = S(keys[i]);
    rops[i].u.put.value = S(v);
  }
  struct mvcc_op op = {.type = MVCC_OP_TXN};
  op.u.txn.success = rops;
  op.u.txn.n_success = n;
  apply_ops(&op, 1);
  free(rops);
}

static void compact(int64_t rev) {
  struct mvcc_op op = {.type = MVCC_OP_COMPACT, .u.compact_revision = rev};
  struct mvcc_result r;
  CHECK_OK(mvcc_apply(srv.store, &op, 1, &r));
  CHECK_OK(r.err);
  mvcc_result_free(&r);
  /* the compactor's side of the contract: physical compaction waits until
   * the live watchers have everything up to the compacted revision */
  for (int i = 0; watch_hub_delivered_revision(hub) < rev; i++) {
    CHECK(i < 1000000);
    uv_run(&loop, UV_RUN_NOWAIT);
  }
  bool done = false;
  while (!done) {
    CHECK_OK(mvcc_compact_step(srv.store, 0, &done));
  }
  if (rev > max_compacted) {
    max_compacted = rev;
  }
}

/* Runs the loop until the hub has nothing left to do. */
static void spin(void) {
  for (int i = 0; i < 1000000; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    if (!hub->idle_on) {
      return;
    }
  }
  fprintf(stderr, "the hub never went idle\n");
  CHECK(false);
}

static void setup(const char *tag) {
  dir = test_tmpdir(tag);
  CHECK_OK(uv_loop_init(&loop));
  memset(&srv, 0, sizeof srv);
  srv.loop = &loop;
  CHECK_OK(mvcc_open(dir, NULL, &srv.store));
  srv.raft = (raftnode *)&fake_leader; /* never dereferenced: the fakes above */
  srv.cfg.election_ms = 20;
  fake_leader = 1;
  n_hist = 0;
  hist_pos = (struct wpos){1, 0};
  max_compacted = 0;
  CHECK_OK(watch_hub_init(&srv));
  hub = srv.watch;
  CHECK(hub != NULL && applied_cb != NULL);
}

static void cevents_free(struct cwatch *w) {
  for (size_t i = 0; i < w->n; i++) {
    free(w->ev[i].key);
    free(w->ev[i].val);
    free(w->ev[i].pval);
  }
  free(w->ev);
}

static void call_free(grpc_call *c) {
  for (size_t i = 0; i < c->qn; i++) {
    free(c->q[c->qh + i].d);
  }
  free(c->q);
  for (size_t i = 0; i < c->nw; i++) {
    cevents_free(&c->w[i]);
  }
  free(c->w);
  free(c);
}

static void teardown(void) {
  watch_hub_close(hub);
  hub = NULL;
  CHECK(srv.watch == NULL);
  CHECK(applied_cb == NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_OK(uv_loop_close(&loop));
  mvcc_close(srv.store);
  for (size_t i = 0; i < n_hist; i++) {
    free((void *)hist[i].kv.key.data);
    free((void *)hist[i].kv.value.data);
    if (hist[i].has_prev_kv) {
      free((void *)hist[i].prev_kv.key.data);
      free((void *)hist[i].prev_kv.value.data);
    }
  }
  free(hist);
  hist = NULL;
  n_hist = cap_hist = 0;
  test_rmdir(dir);
}

/* ---- the client side ----------------------------------------------------------------------- */

static grpc_call *call_new(size_t cap) {
  grpc_call *c = calloc(1, sizeof *c);
  CHECK(c != NULL);
  c->cap = cap;
  return c;
}

static struct watch_stream *stream_new(grpc_call *c) {
  struct watch_stream *st;
  CHECK_OK(watch_hub_stream_open(hub, c, c->hasleader != NULL, &st));
  grpc_call_set_user(c, st);
  return st;
}

static void stream_end(grpc_call *c) {
  /* what the gRPC server does when the call is over: on_close */
  struct watch_stream *st = grpc_call_user(c);
  if (st != NULL) {
    grpc_call_set_user(c, NULL);
    watch_hub_stream_close(st);
  }
  call_free(c);
}

static struct cwatch *cw_find(grpc_call *c, int64_t id) {
  for (size_t i = 0; i < c->nw; i++) {
    if (c->w[i].id == id) {
      return &c->w[i];
    }
  }
  return NULL;
}

static void handle_response(grpc_call *c, const Etcdserverpb__WatchResponse *r) {
  CHECK(r->header != NULL);
  CHECK(r->header->cluster_id == 11 && r->header->member_id == 22);
  if (r->created) {
    CHECK(r->n_events == 0);
    if (r->canceled) {
      CHECK_EQ_INT(r->watch_id, -1);
      snprintf(c->last_reason, sizeof c->last_reason, "%s", r->cancel_reason);
      c->n_refused++;
      return;
    }
    CHECK(cw_find(c, r->watch_id) == NULL);
    c->w = realloc(c->w, (c->nw + 1) * sizeof *c->w);
    CHECK(c->w != NULL);
    memset(&c->w[c->nw], 0, sizeof c->w[c->nw]);
    c->w[c->nw].id = r->watch_id;
    c->w[c->nw].last_rev = 0;
    c->nw++;
    CHECK(c->n_created < 4096);
    c->pending_create[c->n_created++] = r->watch_id;
    return;
  }
  if (r->watch_id == -1) {
    CHECK(r->n_events == 0 && !r->canceled);
    c->n_stream_progress++;
    c->stream_progress_rev = r->header->revision;
    return;
  }
  struct cwatch *w = cw_find(c, r->watch_id);
  CHECK(w != NULL);    /* no event before the created reply */
  CHECK(!w->canceled); /* nothing after the canceled reply */
  if (r->canceled) {
    CHECK(r->n_events == 0);
    w->canceled = true;
    w->compact_rev = r->compact_revision;
    return;
  }
  if (r->n_events == 0 && !r->fragment && !w->frag_open) {
    w->progress++;
    w->progress_rev = r->header->revision;
    /* a progress revision never claims what has not been sent */
    CHECK(r->header->revision >= w->last_rev);
    return;
  }
  int64_t first_rev = 0;
  if (r->n_events > 0) {
    w->responses++;
  }
  for (size_t i = 0; i < r->n_events; i++) {
    const Mvccpb__Event *e = r->events[i];
    CHECK(e->kv != NULL);
    if (w->n == w->cap) {
      w->cap = w->cap ? w->cap * 2 : 64;
      w->ev = realloc(w->ev, w->cap * sizeof *w->ev);
      CHECK(w->ev != NULL);
    }
    struct cevent *ce = &w->ev[w->n++];
    memset(ce, 0, sizeof *ce);
    ce->rev = e->kv->mod_revision;
    ce->create = e->kv->create_revision;
    ce->version = e->kv->version;
    ce->lease = e->kv->lease;
    ce->type = (int)e->type;
    ce->key = dupb(e->kv->key.data, e->kv->key.len);
    ce->klen = e->kv->key.len;
    ce->val = dupb(e->kv->value.data, e->kv->value.len);
    ce->vlen = e->kv->value.len;
    if (e->prev_kv != NULL) {
      ce->has_prev = true;
      ce->pval = dupb(e->prev_kv->value.data, e->prev_kv->value.len);
      ce->pvlen = e->prev_kv->value.len;
    }
    if (i == 0) {
      first_rev = ce->rev;
    }
    CHECK(r->header->revision >= ce->rev);
  }
  /* Events of one revision never straddle two responses, unless in
   * fragments or in the parts of a huge revision. */
  if (r->n_events > 0 && !w->frag_open && !w->split_allowed) {
    CHECK(first_rev > w->last_rev);
  }
  if (r->n_events > 0) {
    w->last_rev = w->ev[w->n - 1].rev;
  }
  w->frag_open = r->fragment;
}

/* Reads up to max messages (0: all) of the call's queue, as the client. */
static size_t client_read(grpc_call *c, size_t max) {
  size_t n = 0;
  while (c->qn > 0 && (max == 0 || n < max)) {
    struct fmsg m = c->q[c->qh];
    c->qh++;
    c->qn--;
    c->queued -= m.n;
    Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, m.n, m.d);
    CHECK(r != NULL);
    handle_response(c, r);
    etcdserverpb__watch_response__free_unpacked(r, NULL);
    free(m.d);
    n++;
  }
  if (c->qn == 0) {
    c->qh = 0;
  }
  if (c->wcb != NULL && c->queued <= c->cap / 2) {
    void (*cb)(grpc_call *, void *) = c->wcb;
    c->wcb = NULL;
    cb(c, c->wdata);
  }
  return n;
}

/* Spins the hub and reads every stream until nothing moves. */
static void settle(grpc_call **calls, size_t n) {
  for (;;) {
    spin();
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
      got += client_read(calls[i], 0);
    }
    if (got == 0 && !hub->idle_on) {
      return;
    }
  }
}

static void create(struct watch_stream *st, const char *key, const char *end, int64_t start,
                   int64_t id) {
  struct watch_create_req q = {.key = S(key), .start_revision = start, .watch_id = id};
  if (end != NULL) {
    q.range_end = end[0] ? S(end) : (struct mvcc_bytes){KEY_NUL, 1};
  }
  watch_hub_create(st, &q);
}

static void create_req(struct watch_stream *st, struct watch_create_req q) {
  watch_hub_create(st, &q);
}

/* The events of [key, end) from start (filters, prev_kv) in the recorded
 * history, compared with what the client got: exactly (full) or a prefix. */
static bool in_range(const struct mvcc_event *e, struct mvcc_bytes key, struct mvcc_bytes end) {
  const struct mvcc_bytes *k = &e->kv.key;
  if (end.len == 0) {
    return bytes_cmp(k->data, k->len, key.data, key.len) == 0;
  }
  if (bytes_cmp(k->data, k->len, key.data, key.len) < 0) {
    return false;
  }
  if (end.len == 1 && end.data[0] == 0) {
    return true;
  }
  return bytes_cmp(k->data, k->len, end.data, end.len) < 0;
}

static void check_events(const struct cwatch *w, struct watch_create_req q, bool full) {
  if (q.key.len == 0) {
    q.key = (struct mvcc_bytes){KEY_NUL, 1};
  }
  size_t j = 0;
  for (size_t i = 0; i < n_hist; i++) {
    const struct mvcc_event *e = &hist[i];
    if (e->kv.mod_revision < q.start_revision || !in_range(e, q.key, q.range_end)) {
      continue;
    }
    if ((q.no_put && e->type == MVCC_EVENT_PUT) || (q.no_delete && e->type == MVCC_EVENT_DELETE)) {
      continue;
    }
    if (j == w->n) {
      if (full) {
        fprintf(stderr, "watch %lld: missing event %zu at revision %lld\n", (long long)w->id, j,
                (long long)e->kv.mod_revision);
      }
      CHECK(!full);
      return;
    }
    const struct cevent *c = &w->ev[j++];
    if (c->rev != e->kv.mod_revision) {
      fprintf(stderr, "watch %lld: event %zu: revision %lld, expected %lld\n", (long long)w->id,
              j - 1, (long long)c->rev, (long long)e->kv.mod_revision);
      fprintf(stderr, "  range [%.*s, %.*s) start %lld prev_kv %d fragment %d noput %d nodel %d\n",
              (int)q.key.len, q.key.data, (int)q.range_end.len, q.range_end.data,
              (long long)q.start_revision, q.prev_kv, q.fragment, q.no_put, q.no_delete);
      for (size_t x = i > 5 ? i - 5 : 0; x < i + 5 && x < n_hist; x++) {
        fprintf(stderr, "  hist %lld %d %.*s\n", (long long)hist[x].kv.mod_revision, hist[x].type,
                (int)hist[x].kv.key.len, hist[x].kv.key.data);
      }
      for (size_t x = j > 5 ? j - 5 : 0; x < j + 3 && x < w->n; x++) {
        fprintf(stderr, "  got %lld %d %s\n", (long long)w->ev[x].rev, w->ev[x].type, w->ev[x].key);
      }
    }
    CHECK_EQ_INT(c->rev, e->kv.mod_revision);
    CHECK_EQ_INT(c->type, e->type);
    CHECK(c->klen == e->kv.key.len && memcmp(c->key, e->kv.key.data, c->klen) == 0);
    CHECK(c->vlen == e->kv.value.len && memcmp(c->val, e->kv.value.data, c->vlen) == 0);
    CHECK_EQ_INT(c->create, e->kv.create_revision);
    CHECK_EQ_INT(c->version, e->kv.version);
    if (q.prev_kv && e->has_prev_kv) {
      /* compaction may have taken the previous version of its own revision */
      CHECK(c->has_prev || e->kv.mod_revision <= max_compacted);
      if (c->has_prev) {
        CHECK(c->pvlen == e->prev_kv.value.len &&
              memcmp(c->pval, e->prev_kv.value.data, c->pvlen) == 0);
      }
    } else {
      CHECK(!c->has_prev);
    }
  }
  if (j != w->n) {
    fprintf(stderr, "watch %lld: %zu events, expected %zu\n", (long long)w->id, w->n, j);
  }
  CHECK_EQ_INT(j, w->n);
}

/* ---- tests ---------------------------------------------------------------------------- */

/* The interval index against brute force: random single keys, ranges and
 * open ranges, inserted and removed at random. */
static bool idx_check(const struct watcher *n, size_t *count) {
  if (n == NULL) {
    return true;
  }
  (*count)++;
  const struct watcher *m = n;
  if (n->ileft != NULL) {
    CHECK(start_cmp(n->ileft, n) < 0 && n->ileft->iprio <= n->iprio);
    idx_check(n->ileft, count);
    if (end_cmp(n->ileft->imax, m) > 0) {
      m = n->ileft->imax;
    }
  }
  if (n->iright != NULL) {
    CHECK(start_cmp(n->iright, n) > 0 && n->iright->iprio <= n->iprio);
    idx_check(n->iright, count);
    if (end_cmp(n->iright->imax, m) > 0) {
      m = n->iright->imax;
    }
  }
  CHECK(end_cmp(n->imax, m) == 0);
  return true;
}

static void collect(struct watcher *w, void *arg) {
  w->touched = !w->touched;
  (*(size_t *)arg)++;
}

static void test_index(void) {
  struct watch_hub h = {.rng = 12345u};
  enum { N = 600 };
  struct watcher *ws = calloc(N, sizeof *ws);
  uint8_t(*kb)[8] = calloc(N, 8);
  bool *in = calloc(N, sizeof *in);
  CHECK(ws && kb && in);
  struct watcher *root = NULL;
  for (size_t i = 0; i < N; i++) {
    struct watcher *w = &ws[i];
    w->seq = i + 1;
    w->iprio = hub_rand(&h);
    /* keys of 1..3 bytes over a small alphabet: many overlaps */
    size_t kl = 1 + test_rand_below(3), el = 1 + test_rand_below(3);
    for (size_t j = 0; j < kl; j++) {
      kb[i][j] = (uint8_t)('a' + test_rand_below(4));
    }
    for (size_t j = 0; j < el; j++) {
      kb[i][4 + j] = (uint8_t)('a' + test_rand_below(4));
    }
    w->key = kb[i];
    w->key_len = kl;
    switch (test_rand_below(3)) {
      case 0: /* single key */
        kb[i][kl] = 0;
        w->iend = kb[i];
        w->iend_len = kl + 1;
        break;
      case 1: /* range (possibly empty: harmless in the index) */
        w->iend = kb[i] + 4;
        w->iend_len = el;
        break;
      default:
        w->iend_inf = true;
    }
  }
  size_t live = 0;
  for (int round = 0; round < 20000; round++) {
    size_t i = test_rand_below(N);
    if (in[i]) {
      root = idx_remove(root, &ws[i]);
      in[i] = false;
      live--;
    } else {
      ws[i].iprio = hub_rand(&h);
      root = idx_insert(root, &ws[i]);
      in[i] = true;
      live++;
    }
    if (round % 97 == 0) {
      size_t count = 0;
      idx_check(root, &count);
      CHECK_EQ_INT(count, live);
    }
    /* a stab at a random key: the same set as brute force */
    uint8_t k[4];
    size_t kl = 1 + test_rand_below(3);
    for (size_t j = 0; j < kl; j++) {
      k[j] = (uint8_t)('a' + test_rand_below(4));
    }
    size_t hits = 0;
    idx_stab(root, k, kl, collect, &hits);
    size_t expect = 0;
    for (size_t j = 0; j < N; j++) {
      bool holds =
          in[j] && bytes_cmp(ws[j].key, ws[j].key_len, k, kl) <= 0 && key_below_end(k, kl, &ws[j]);
      CHECK(ws[j].touched == holds);
      ws[j].touched = false;
      expect += holds;
    }
    CHECK_EQ_INT(hits, expect);
  }
  free(ws);
  free(kb);
  free(in);
}

/* Single key, prefix, open range, filters and prev_kv on one stream; ids
 * 0-based; created before events; one response per revision. */
static void test_live(void) {
  setup("watch-live");
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  struct watch_create_req q[5] = {
      {.key = S("a")},
      {.key = S("b"), .range_end = S("c")},
      {.key = S("x"), .range_end = {KEY_NUL, 1}, .prev_kv = true},
      {.key = {NULL, 0}, .range_end = {KEY_NUL, 1}, .no_put = true},
      {.key = {NULL, 0}, .range_end = {KEY_NUL, 1}, .no_delete = true, .prev_kv = true},
  };
  for (int i = 0; i < 5; i++) {
    create_req(st, q[i]);
    q[i].start_revision = mvcc_current_revision(srv.store) + 1;
  }
  client_read(c, 0);
  CHECK_EQ_INT(c->nw, 5);
  for (int i = 0; i < 5; i++) {
    CHECK_EQ_INT(c->pending_create[i], i);
  }
  uint64_t nwatch, nstream, nslow;
  watch_hub_stats(hub, &nwatch, &nstream, &nslow);
  CHECK(nwatch == 5 && nstream == 1 && nslow == 0);
  put("a", "1");
  put("b1", "2");
  put("b2", "3");
  put("x1", "4");
  put("x1", "5");
  put("c", "6");
  del("a", NULL);
  const char *keys[] = {"b3", "b4", "y", "a"};
  txn_puts(keys, 4, "t");
  del("b", "c");
  grpc_call *calls[] = {c};
  settle(calls, 1);
  for (int i = 0; i < 5; i++) {
    check_events(&c->w[i], q[i], true);
  }
  CHECK_EQ_INT(c->w[0].n, 3); /* put a, delete a, txn a */
  CHECK_EQ_INT(c->w[3].n, 5); /* deletes only: a, b1 b2 b3 b4 */
  stream_end(c);
  watch_hub_stats(hub, &nwatch, &nstream, &nslow);
  CHECK(nwatch == 0 && nstream == 0);
  teardown();
}

/* Revisions applied together reach each live watcher in one response per
 * feed read, not one per revision; watchers that take every event of the
 * group share its packing and get their own watch_id spliced in (ids of one
 * to six varint bytes); watchers with filters or narrower ranges get their
 * own responses. Every watcher's events stay exact. */
static void test_grouped(void) {
  setup("watch-grouped");
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  const int64_t ids[] = {0, 1, 127, 128, 300, (int64_t)1 << 40};
  struct watch_create_req q[8];
  size_t nq = 0;
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    q[nq++] = (struct watch_create_req){
        .key = S("g/"), .range_end = S("g0"), .watch_id = ids[i], .prev_kv = i % 2 == 1};
  }
  q[nq++] = (struct watch_create_req){
      .key = S("g/"), .range_end = S("g0"), .watch_id = 7, .no_delete = true};
  q[nq++] = (struct watch_create_req){.key = S("g/b"), .range_end = S("g/c"), .watch_id = 8};
  for (size_t i = 0; i < nq; i++) {
    q[i].start_revision = mvcc_current_revision(srv.store) + 1;
    create_req(st, q[i]);
  }
  client_read(c, 0);
  CHECK_EQ_INT(c->nw, nq);
  /* 39 revisions applied in one batch, as raft applies them: the hub
   * hears of them once */
  struct mvcc_op ops[39];
  char keys[39][16];
  size_t revs = 0;
  for (int i = 0; i < 12; i++) {
    const char *v[3] = {"1", "2", "3"};
    snprintf(keys[revs], 16, "g/a%d", i % 5);
    snprintf(keys[revs + 1], 16, "g/b%d", i);
    snprintf(keys[revs + 2], 16, "h/%d", i); /* nobody's */
    for (int j = 0; j < 3; j++) {
      ops[revs] = (struct mvcc_op){.type = MVCC_OP_PUT};
      ops[revs].u.put.key = S(keys[revs]);
      ops[revs].u.put.value = S(v[j]);
      revs++;
    }
  }
  ops[revs] = (struct mvcc_op){.type = MVCC_OP_DELETE};
  ops[revs++].u.del.key = S("g/a0");
  ops[revs] = (struct mvcc_op){.type = MVCC_OP_DELETE};
  ops[revs].u.del.key = S("g/b");
  ops[revs++].u.del.range_end = S("g/c");
  ops[revs] = (struct mvcc_op){.type = MVCC_OP_PUT};
  ops[revs].u.put.key = S("g/a0");
  ops[revs++].u.put.value = S("again");
  CHECK_EQ_INT(revs, 39);
  apply_ops(ops, revs);
  grpc_call *calls[] = {c};
  settle(calls, 1);
  for (size_t i = 0; i < nq; i++) {
    const struct cwatch *w = cw_find(c, q[i].watch_id);
    CHECK(w != NULL);
    check_events(w, q[i], true);
    CHECK(w->n > 0);
    /* far fewer responses than revisions with events for it */
    CHECK(w->responses * 4 <= revs);
  }
  stream_end(c);
  teardown();
}

/* Client-chosen ids, duplicates, empty ranges, cancel, progress requests. */
static void test_requests(void) {
  setup("watch-req");
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  put("k", "v");
  create(st, "k", NULL, 0, 1); /* client-chosen 1 */
  create(st, "k", NULL, 0, 0); /* auto: 0 */
  create(st, "k", NULL, 0, 0); /* auto: 2 (1 is taken) */
  create(st, "k", NULL, 0, 1); /* duplicate */
  client_read(c, 0);
  CHECK_EQ_INT(c->n_created, 3);
  CHECK(c->pending_create[0] == 1 && c->pending_create[1] == 0 && c->pending_create[2] == 2);
  CHECK_EQ_INT(c->n_refused, 1);
  CHECK(strcmp(c->last_reason, WATCH_REASON_DUPLICATE_ID) == 0);
  create(st, "b", "a", 0, 0); /* key >= range_end */
  client_read(c, 0);
  CHECK_EQ_INT(c->n_refused, 2);
  CHECK(strcmp(c->last_reason, WATCH_REASON_EMPTY_RANGE) == 0);
  create(st, "b", "b", 0, 0);
  client_read(c, 0);
  CHECK_EQ_INT(c->n_refused, 3);
  /* cancel: a canceled reply; unknown ids get nothing */
  watch_hub_cancel(st, 0);
  watch_hub_cancel(st, 99);
  client_read(c, 0);
  CHECK(cw_find(c, 0)->canceled && cw_find(c, 0)->compact_rev == 0);
  CHECK_EQ_INT(c->qn, 0);
  put("k", "w");
  /* progress request: watch_id -1, the delivered revision */
  watch_hub_progress(st);
  client_read(c, 0);
  CHECK_EQ_INT(c->n_stream_progress, 1);
  CHECK_EQ_INT(c->stream_progress_rev, mvcc_current_revision(srv.store));
  grpc_call *calls[] = {c};
  settle(calls, 1);
  CHECK_EQ_INT(cw_find(c, 1)->n, 1);
  CHECK_EQ_INT(cw_find(c, 0)->n, 0);
  /* a progress request is answered once the stream's watchers are live */
  create(st, "k", NULL, 1, 0); /* from revision 1: catching up */
  watch_hub_progress(st);
  client_read(c, 0);
  CHECK_EQ_INT(c->n_stream_progress, 1);
  settle(calls, 1);
  CHECK_EQ_INT(c->n_stream_progress, 2);
  CHECK_EQ_INT(cw_find(c, 3)->n, 2);
  stream_end(c);
  teardown();
}

/* Start revisions in the past; compaction; a start at the compacted
 * revision. */
static void test_history(void) {
  setup("watch-hist");
  put_many("h/", 300, 10);
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  struct watch_create_req q1 = {
      .key = S("h/"), .range_end = S("h0"), .start_revision = 10, .prev_kv = true};
  create_req(st, q1);
  grpc_call *calls[] = {c};
  settle(calls, 1);
  check_events(&c->w[0], q1, true);
  CHECK_EQ_INT(c->w[0].n, mvcc_current_revision(srv.store) - 10 + 1);
  compact(100);
  create(st, "h/", "h0", 50, 0);
  settle(calls, 1);
  struct cwatch *w = cw_find(c, 1);
  CHECK(w != NULL && w->canceled && w->compact_rev == 100 && w->n == 0);
  struct watch_create_req q2 = {.key = S("h/"), .range_end = S("h0"), .start_revision = 100};
  create_req(st, q2);
  put("h/new", "x");
  settle(calls, 1);
  check_events(cw_find(c, 2), q2, true);
  CHECK_EQ_INT(cw_find(c, 2)->n, mvcc_current_revision(srv.store) - 100 + 1);
  check_events(&c->w[0], q1, true);
  stream_end(c);
  teardown();
}

/* A stream that does not read: its watchers fall back to catching up while
 * another stream stays live; when it reads, everything comes in order, and
 * it rejoins the live set. Nothing is queued beyond the call's bound. */
static void test_slow_reader(void) {
  setup("watch-slow");
  grpc_call *slow = call_new(16 * 1024);
  grpc_call *fast = call_new(64u << 20);
  struct watch_stream *ss = stream_new(slow), *fs = stream_new(fast);
  struct watch_create_req q[3] = {
      {.key = S("s/"), .range_end = S("s0")},
      {.key = S("s/00000007")},
      {.key = S("s/"), .range_end = S("s0"), .prev_kv = true},
  };
  for (int i = 0; i < 3; i++) {
    q[i].start_revision = mvcc_current_revision(srv.store) + 1;
    create_req(i < 2 ? ss : fs, q[i]);
  }
  client_read(slow, 0);
  client_read(fast, 0);
  uint64_t slow_max = 0;
  for (int round = 0; round < 20; round++) {
    put_many("s/", 500, 200);
    spin();
    client_read(fast, 0);
    uint64_t n;
    watch_hub_stats(hub, NULL, NULL, &n);
    if (n > slow_max) {
      slow_max = n;
    }
    /* the slow call never holds more than its bound and one response (up
     * to WATCH_LIVE_GROUP_BYTES of keys and values and their framing) */
    CHECK(slow->queued <= slow->cap + WATCH_LIVE_GROUP_BYTES + 16384);
  }
  CHECK_EQ_INT(slow_max, 2);
  /* the fast stream got everything live */
  check_events(&fast->w[0], q[2], true);
  /* the slow one reads a few messages at a time */
  for (int i = 0; i < 1000000; i++) {
    size_t got = client_read(slow, 3);
    spin();
    if (got == 0 && !hub->idle_on && slow->qn == 0) {
      break;
    }
  }
  check_events(&slow->w[0], q[0], true);
  check_events(&slow->w[1], q[1], true);
  uint64_t n;
  watch_hub_stats(hub, NULL, NULL, &n);
  CHECK_EQ_INT(n, 0);
  /* live again: a new put arrives with no catch-up */
  put("s/live", "1");
  spin();
  client_read(slow, 0);
  check_events(&slow->w[0], q[0], true);
  stream_end(slow);
  stream_end(fast);
  teardown();
}

/* Fragments: a watcher that asked gets big responses in pieces; others get
 * one response per revision. */
static void test_fragment(void) {
  setup("watch-frag");
  hub->frag_limit = 2000;
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  struct watch_create_req qf = {.key = S("f"), .range_end = S("g"), .fragment = true};
  struct watch_create_req qn = {.key = S("f"), .range_end = S("g")};
  qf.start_revision = qn.start_revision = mvcc_current_revision(srv.store) + 1;
  create_req(st, qf);
  create_req(st, qn);
  client_read(c, 0);
  const char *keys[40];
  char names[40][8];
  for (int i = 0; i < 40; i++) {
    snprintf(names[i], sizeof names[i], "f%02d", i);
    keys[i] = names[i];
  }
  char val[201];
  memset(val, 'z', 200);
  val[200] = 0;
  txn_puts(keys, 40, val);
  spin();
  /* count the pieces before the client merges them */
  size_t pieces = 0, plain = 0;
  for (size_t i = 0; i < c->qn; i++) {
    Etcdserverpb__WatchResponse *r =
        etcdserverpb__watch_response__unpack(NULL, c->q[c->qh + i].n, c->q[c->qh + i].d);
    CHECK(r != NULL);
    if (r->watch_id == 0) {
      pieces++;
      CHECK(c->q[c->qh + i].n < 2000 + 400);
    } else {
      plain++;
      CHECK_EQ_INT(r->n_events, 40);
      CHECK(!r->fragment);
    }
    etcdserverpb__watch_response__free_unpacked(r, NULL);
  }
  CHECK(pieces > 3);
  CHECK_EQ_INT(plain, 1);
  client_read(c, 0);
  CHECK(!c->w[0].frag_open);
  check_events(&c->w[0], qf, true);
  check_events(&c->w[1], qn, true);
  stream_end(c);
  teardown();
}

/* A revision larger than WATCH_REVISION_EVENTS_MAX goes out in parts, live
 * and while catching up; with fragment the parts say so. */
static void test_huge_revision(void) {
  setup("watch-huge");
  size_t n = WATCH_REVISION_EVENTS_MAX * 2 + 500;
  put_many("g/", n, 8);
  grpc_call *c = call_new(256u << 20);
  struct watch_stream *st = stream_new(c);
  int64_t from = mvcc_current_revision(srv.store) + 1;
  struct watch_create_req q[4] = {
      {.key = S("g/"), .range_end = S("g0"), .start_revision = from},
      {.key = S("g/"), .range_end = S("g0"), .start_revision = from, .fragment = true},
      {.key = S("g/00000005"), .start_revision = from, .fragment = true},
      {.key = S("g/"), .range_end = S("g0"), .start_revision = from, .prev_kv = true},
  };
  for (int i = 0; i < 4; i++) {
    create_req(st, q[i]);
  }
  client_read(c, 0);
  c->w[0].split_allowed = true;
  c->w[3].split_allowed = true;
  del("g/", "g0");
  put("g/after", "1");
  grpc_call *calls[] = {c};
  settle(calls, 1);
  for (int i = 0; i < 4; i++) {
    check_events(&c->w[i], q[i], true);
    CHECK(!c->w[i].frag_open);
  }
  CHECK_EQ_INT(c->w[0].n, n + 1);
  /* the same from history */
  struct watch_create_req h[2] = {
      {.key = S("g/"), .range_end = S("g0"), .start_revision = from},
      {.key = S("g/"), .range_end = S("g0"), .start_revision = from, .fragment = true},
  };
  create_req(st, h[0]);
  create_req(st, h[1]);
  client_read(c, 0);
  cw_find(c, 4)->split_allowed = true;
  settle(calls, 1);
  check_events(cw_find(c, 4), h[0], true);
  check_events(cw_find(c, 5), h[1], true);
  CHECK(!cw_find(c, 5)->frag_open);
  stream_end(c);
  teardown();
}

/* progress_notify after an idle interval; hasleader streams. */
static void noop_timer(uv_timer_t *t) {
  (void)t;
}

static void run_for_ms(uint64_t ms) {
  /* The hub's timers do not keep a loop alive (a server's listeners do):
   * a timer of the test's own does. */
  uv_timer_t keep;
  uv_timer_init(&loop, &keep);
  uv_timer_start(&keep, noop_timer, ms, 0);
  uint64_t end = uv_hrtime() + ms * 1000000u;
  while (uv_hrtime() < end) {
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(1000);
  }
  uv_close((uv_handle_t *)&keep, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_progress_and_leader(void) {
  setenv("CAIRN_WATCH_PROGRESS_INTERVAL_MS", "30", 1);
  setup("watch-prog");
  unsetenv("CAIRN_WATCH_PROGRESS_INTERVAL_MS");
  CHECK_EQ_INT(hub->progress_interval_ms, 30);
  grpc_call *c = call_new(1 << 20);
  struct watch_stream *st = stream_new(c);
  put("p", "1");
  struct watch_create_req q = {.key = S("p"), .progress_notify = true};
  create_req(st, q);
  create(st, "p", NULL, 0, 0);
  run_for_ms(100);
  client_read(c, 0);
  CHECK(c->w[0].progress >= 2);
  CHECK_EQ_INT(c->w[0].progress_rev, mvcc_current_revision(srv.store));
  CHECK_EQ_INT(c->w[1].progress, 0);
  stream_end(c);

  /* hasleader: refused without a leader; ended after 3 election timeouts */
  grpc_call *l = call_new(1 << 20);
  l->hasleader = "true";
  fake_leader = 0;
  struct watch_stream *ls;
  CHECK_ERR(watch_hub_stream_open(hub, l, true, &ls), CAIRN_ENO_LEADER);
  fake_leader = 1;
  ls = stream_new(l);
  grpc_call *nl = call_new(1 << 20); /* without hasleader: unaffected */
  struct watch_stream *ns = stream_new(nl);
  create(ls, "p", NULL, 0, 0);
  create(ns, "p", NULL, 0, 0);
  run_for_ms(100);
  CHECK(!l->finished);
  fake_leader = 0;
  run_for_ms(150);
  CHECK(l->finished && l->status == 14);
  CHECK(strcmp(l->msg, "etcdserver: no leader") == 0);
  CHECK(!nl->finished);
  fake_leader = 1;
  stream_end(l);
  stream_end(nl);
  teardown();
}

/* Random writes, watchers, cancels, compactions and readers of all speeds;
 * every watcher sees its exact sequence (or a prefix, then a cancel). */
struct rw {
  grpc_call *c;
  int64_t id;
  struct watch_create_req q;
  char key[8], end[8];
  bool cancel_sent;
};

static void test_random(void) {
  setup("watch-rand");
  enum { STREAMS = 6, WATCHERS = 120, ROUNDS = 400 };
  grpc_call *calls[STREAMS];
  struct watch_stream *sts[STREAMS];
  for (int i = 0; i < STREAMS; i++) {
    calls[i] = call_new(i % 2 ? (size_t)(1024 + test_rand_below(8192)) : (64u << 20));
    sts[i] = stream_new(calls[i]);
  }
  struct rw *rws = calloc(WATCHERS, sizeof *rws);
  size_t nrw = 0;
  for (int round = 0; round < ROUNDS; round++) {
    /* writes */
    size_t nops = test_rand_below(6);
    for (size_t i = 0; i < nops; i++) {
      char k[8], e[8];
      snprintf(k, sizeof k, "%c%c", (char)('a' + test_rand_below(6)),
               (char)('a' + test_rand_below(6)));
      switch (test_rand_below(10)) {
        case 0:
          snprintf(e, sizeof e, "%c", (char)(k[0] + 1));
          del(k, test_rand_below(2) ? e : NULL);
          break;
        case 1: {
          char k2[8];
          snprintf(k2, sizeof k2, "%c%c", (char)('a' + test_rand_below(6)), 'z');
          const char *ks[2] = {k, k2};
          txn_puts(ks, strcmp(k, k2) ? 2 : 1, "txn");
          break;
        }
        case 2:
          put_many(k, 1 + test_rand_below(40), 1 + test_rand_below(300));
          break;
        default: {
          char v[16];
          snprintf(v, sizeof v, "v%d", round);
          put(k, v);
        }
      }
    }
    /* new watchers */
    if (nrw < WATCHERS && test_rand_below(3) == 0) {
      struct rw *w = &rws[nrw];
      w->c = calls[test_rand_below(STREAMS)];
      snprintf(w->key, sizeof w->key, "%c", (char)('a' + test_rand_below(6)));
      struct watch_create_req *q = &w->q;
      q->key = S(w->key);
      switch (test_rand_below(4)) {
        case 0:
          snprintf(w->key, sizeof w->key, "%c%c", (char)('a' + test_rand_below(6)),
                   (char)('a' + test_rand_below(6)));
          q->key = S(w->key);
          break;
        case 1:
          snprintf(w->end, sizeof w->end, "%c", (char)(w->key[0] + 1 + (int)test_rand_below(2)));
          q->range_end = S(w->end);
          break;
        case 2:
          q->range_end = (struct mvcc_bytes){KEY_NUL, 1};
          break;
        default:
          q->key = (struct mvcc_bytes){NULL, 0};
          q->range_end = (struct mvcc_bytes){KEY_NUL, 1};
      }
      int64_t cur = mvcc_current_revision(srv.store);
      /* (a start at the compacted revision C itself misses C's deletes, as
       * in etcd: test_history covers it) */
      int64_t lo = max_compacted + 1;
      q->start_revision = test_rand_below(2)
                              ? cur + 1
                              : lo + (int64_t)test_rand_below((uint64_t)(cur + 1 - lo) + 1);
      q->prev_kv = test_rand_below(2);
      q->fragment = test_rand_below(4) == 0;
      q->no_put = test_rand_below(8) == 0;
      q->no_delete = !q->no_put && test_rand_below(8) == 0;
      struct watch_stream *st = grpc_call_user(w->c);
      size_t before = w->c->n_created;
      watch_hub_create(st, q);
      /* the created reply, to learn the id (it may wait in the hub's queue
       * of a blocked stream until the client reads) */
      for (int k = 0; w->c->n_created == before; k++) {
        CHECK(k < 100000);
        client_read(w->c, 0);
      }
      CHECK_EQ_INT(w->c->n_created, before + 1);
      w->id = w->c->pending_create[w->c->n_created - 1];
      nrw++;
    }
    /* cancels */
    if (nrw > 0 && test_rand_below(10) == 0) {
      struct rw *w = &rws[test_rand_below(nrw)];
      if (!w->cancel_sent) {
        w->cancel_sent = true;
        watch_hub_cancel(grpc_call_user(w->c), w->id);
      }
    }
    /* compaction, now and then, a little behind */
    if (test_rand_below(40) == 0) {
      int64_t cur = mvcc_current_revision(srv.store);
      int64_t at = cur - 30 - (int64_t)test_rand_below(30);
      if (at > max_compacted) {
        compact(at);
      }
    }
    /* the loop and the readers */
    for (int k = 0, ks = (int)test_rand_below(5); k < ks; k++) {
      uv_run(&loop, UV_RUN_NOWAIT);
    }
    for (int i = 0; i < STREAMS; i++) {
      if (test_rand_below(3) == 0) {
        client_read(calls[i], test_rand_below(4) == 0 ? 0 : 1 + test_rand_below(5));
      }
    }
    if (test_rand_below(50) == 0) {
      struct watch_stream *st = sts[test_rand_below(STREAMS)];
      watch_hub_progress(st);
    }
  }
  settle(calls, STREAMS);
  for (size_t i = 0; i < nrw; i++) {
    struct rw *w = &rws[i];
    struct cwatch *cw = cw_find(w->c, w->id);
    CHECK(cw != NULL);
    if (w->cancel_sent) {
      CHECK(cw->canceled);
    }
    check_events(cw, w->q, !cw->canceled);
    CHECK(!cw->frag_open);
    if (cw->canceled && !w->cancel_sent) {
      CHECK(cw->compact_rev > 0 && cw->compact_rev <= max_compacted);
    }
  }
  uint64_t slow;
  watch_hub_stats(hub, NULL, NULL, &slow);
  CHECK_EQ_INT(slow, 0);
  for (int i = 0; i < STREAMS; i++) {
    stream_end(calls[i]);
  }
  free(rws);
  teardown();
}

int main(void) {
  test_seed("test_watch_hub");
  TEST_RUN(test_index);
  TEST_RUN(test_live);
  TEST_RUN(test_grouped);
  TEST_RUN(test_requests);
  TEST_RUN(test_history);
  TEST_RUN(test_slow_reader);
  TEST_RUN(test_fragment);
  TEST_RUN(test_huge_revision);
  TEST_RUN(test_progress_and_leader);
  int reps = test_small() ? 2 : 8;
  for (int i = 0; i < reps; i++) {
    TEST_RUN(test_random);
  }
  printf("test_watch_hub: ok\n");
  return 0;
}
