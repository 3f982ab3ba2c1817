/* tests/unit/test_client_stream.c: libcairn's long-lived objects (watch,
 * lease keep-alive, informer) against a real server the test starts: the
 * cairn next to this executable (build/cairn), or /usr/bin/etcd when
 * CAIRN_TEST_SERVER=etcd. Ports 36200-36299.
 *
 * The clients under test go through a TCP relay inside the test (struct
 * relay) that can cut every connection and refuse new ones, so that a watch
 * can be kept away while another client writes and compacts. */
#include <signal.h>
#include <stdbool.h>

#include "client/cairn.h"
#include "test.h"
#include "wire/grpc.h"

#define TIMEOUT_MS 20000u

static uv_loop_t loop;
static uv_timer_t tick; /* keeps uv_run(UV_RUN_ONCE) returning while we wait */
static bool use_etcd;

static void tick_cb(uv_timer_t *t) {
  (void)t;
}

static void run_until(const bool *flag, uint64_t timeout_ms) {
  uint64_t end = uv_now(&loop) + timeout_ms;
  while (!*flag) {
    CHECK(uv_now(&loop) < end);
    uv_run(&loop, UV_RUN_ONCE);
  }
}

static void sleep_ms(uint64_t ms) {
  uint64_t end = uv_now(&loop) + ms;
  while (uv_now(&loop) < end) {
    uv_run(&loop, UV_RUN_ONCE);
  }
}

/* ---- a TCP relay that can be cut ----------------------------------------- */

struct pconn {
  uv_tcp_t a, b;
  uv_connect_t creq;
  struct relay *r;
  struct pconn *next;
  int closed;
  bool closing;
};

struct relay {
  uv_tcp_t listener;
  int port, target_port;
  bool cut;
  struct pconn *conns;
};

static void pconn_closed(uv_handle_t *h) {
  struct pconn *pc = h->data;
  if (++pc->closed < 2) {
    return;
  }
  for (struct pconn **p = &pc->r->conns; *p; p = &(*p)->next) {
    if (*p == pc) {
      *p = pc->next;
      break;
    }
  }
  free(pc);
}

static void pconn_close(struct pconn *pc) {
  if (pc->closing) {
    return;
  }
  pc->closing = true;
  uv_close((uv_handle_t *)&pc->a, pconn_closed);
  uv_close((uv_handle_t *)&pc->b, pconn_closed);
}

struct wreq {
  uv_write_t req;
  uv_buf_t buf;
};

static void relay_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(size);
  buf->len = buf->base ? size : 0;
}

static void relay_written(uv_write_t *req, int status) {
  (void)status;
  struct wreq *w = (struct wreq *)req;
  free(w->buf.base);
  free(w);
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct pconn *pc = s->data;
  if (n < 0 || pc->closing) {
    free(buf->base);
    if (n < 0) {
      pconn_close(pc);
    }
    return;
  }
  if (n == 0) {
    free(buf->base);
    return;
  }
  struct wreq *w = malloc(sizeof *w);
  CHECK(w != NULL);
  w->buf = uv_buf_init(buf->base, (unsigned)n);
  uv_stream_t *to = s == (uv_stream_t *)&pc->a ? (uv_stream_t *)&pc->b : (uv_stream_t *)&pc->a;
  if (uv_write(&w->req, to, &w->buf, 1, relay_written) != 0) {
    free(buf->base);
    free(w);
    pconn_close(pc);
  }
}

static void relay_connected(uv_connect_t *req, int status) {
  struct pconn *pc = req->data;
  if (pc->closing) {
    return;
  }
  if (status != 0) {
    pconn_close(pc);
    return;
  }
  uv_read_start((uv_stream_t *)&pc->a, relay_alloc, relay_read);
  uv_read_start((uv_stream_t *)&pc->b, relay_alloc, relay_read);
}

static void relay_accept(uv_stream_t *l, int status) {
  struct relay *r = l->data;
  CHECK(status == 0);
  struct pconn *pc = calloc(1, sizeof *pc);
  CHECK(pc != NULL);
  pc->r = r;
  uv_tcp_init(&loop, &pc->a);
  uv_tcp_init(&loop, &pc->b);
  pc->a.data = pc->b.data = pc->creq.data = pc;
  pc->next = r->conns;
  r->conns = pc;
  CHECK_OK(uv_accept(l, (uv_stream_t *)&pc->a));
  if (r->cut) {
    pconn_close(pc);
    return;
  }
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", r->target_port, &sa);
  if (uv_tcp_connect(&pc->creq, &pc->b, (struct sockaddr *)&sa, relay_connected) != 0) {
    pconn_close(pc);
  }
}

static void relay_start(struct relay *r, int port, int target_port) {
  memset(r, 0, sizeof *r);
  r->port = port;
  r->target_port = target_port;
  uv_tcp_init(&loop, &r->listener);
  r->listener.data = r;
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  CHECK_OK(uv_tcp_bind(&r->listener, (struct sockaddr *)&sa, 0));
  CHECK_OK(uv_listen((uv_stream_t *)&r->listener, 64, relay_accept));
}

static void relay_cut(struct relay *r, bool cut) {
  r->cut = cut;
  if (cut) {
    for (struct pconn *pc = r->conns; pc; pc = pc->next) {
      pconn_close(pc);
    }
  }
}

static void relay_stop(struct relay *r) {
  relay_cut(r, true);
  uv_close((uv_handle_t *)&r->listener, NULL);
}

/* ---- the server -------------------------------------------------------- */

struct server {
  uv_process_t proc;
  bool running, exited;
  char bin[600];
  char *dir;
  char data[600], log[600];
  int client_port, peer_port;
};

static bool port_free(int port) {
  uv_tcp_t t;
  uv_tcp_init(&loop, &t);
  struct sockaddr_in sa;
  uv_ip4_addr("127.0.0.1", port, &sa);
  bool ok = uv_tcp_bind(&t, (struct sockaddr *)&sa, 0) == 0 &&
            uv_listen((uv_stream_t *)&t, 1, relay_accept) == 0;
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  return ok;
}

/* Three free ports in 36200-36299: client, peer, relay. */
static void pick_ports(int ports[3]) {
  int base = 36200 + (int)((unsigned)getpid() % 33u) * 3;
  for (int k = 0; k < 33; k++) {
    int p = 36200 + (base - 36200 + k * 3) % 99;
    if (port_free(p) && port_free(p + 1) && port_free(p + 2)) {
      ports[0] = p;
      ports[1] = p + 1;
      ports[2] = p + 2;
      return;
    }
  }
  fprintf(stderr, "no free ports in 36200-36299\n");
  abort();
}

static void server_exit(uv_process_t *p, int64_t status, int sig) {
  (void)status;
  (void)sig;
  struct server *s = p->data;
  s->exited = true;
  s->running = false;
  uv_close((uv_handle_t *)p, NULL);
}

static void server_spawn(struct server *s) {
  char curl[64], purl[64], cluster[128], datadir[700];
  snprintf(curl, sizeof curl, "--listen-client-urls=http://127.0.0.1:%d", s->client_port);
  char adv[80];
  snprintf(adv, sizeof adv, "--advertise-client-urls=http://127.0.0.1:%d", s->client_port);
  snprintf(purl, sizeof purl, "--listen-peer-urls=http://127.0.0.1:%d", s->peer_port);
  char iadv[80];
  snprintf(iadv, sizeof iadv, "--initial-advertise-peer-urls=http://127.0.0.1:%d", s->peer_port);
  snprintf(cluster, sizeof cluster, "--initial-cluster=t1=http://127.0.0.1:%d", s->peer_port);
  snprintf(datadir, sizeof datadir, "--data-dir=%s", s->data);
  char *args[16];
  int n = 0;
  args[n++] = s->bin;
  args[n++] = "--name=t1";
  args[n++] = datadir;
  args[n++] = curl;
  args[n++] = adv;
  args[n++] = purl;
  args[n++] = iadv;
  args[n++] = cluster;
  if (use_etcd) {
    args[n++] = "--logger=zap";
    args[n++] = "--log-level=error";
  }
  args[n] = NULL;
  FILE *f = fopen(s->log, "a");
  CHECK(f != NULL);
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                   {.flags = UV_INHERIT_FD, .data.fd = fileno(f)},
                                   {.flags = UV_INHERIT_FD, .data.fd = fileno(f)}};
  uv_process_options_t po = {0};
  po.file = s->bin;
  po.args = args;
  po.exit_cb = server_exit;
  po.stdio = stdio;
  po.stdio_count = 3;
  s->exited = false;
  s->proc.data = s;
  CHECK_OK(uv_spawn(&loop, &s->proc, &po));
  fclose(f);
  s->running = true;
}

static void server_kill(struct server *s, int sig) {
  CHECK(s->running);
  CHECK_OK(uv_process_kill(&s->proc, sig));
  run_until(&s->exited, TIMEOUT_MS);
}

/* ---- calls, waited for --------------------------------------------------- */

struct res {
  bool done;
  int code;
  char message[256];
  uint8_t *buf; /* the response, packed again */
  size_t len;
};

static void res_cb(void *data, const struct cairn_result *r) {
  struct res *res = data;
  res->done = true;
  res->code = r->code;
  snprintf(res->message, sizeof res->message, "%s", r->message);
  if (r->code == 0 && r->msg != NULL) {
    res->len = protobuf_c_message_get_packed_size(r->msg);
    res->buf = malloc(res->len + 1);
    CHECK(res->buf != NULL);
    protobuf_c_message_pack(r->msg, res->buf);
  }
}

static ProtobufCMessage *res_wait(struct res *res, const ProtobufCMessageDescriptor *d) {
  run_until(&res->done, TIMEOUT_MS);
  if (res->code != 0) {
    fprintf(stderr, "call failed: %d %s\n", res->code, res->message);
  }
  CHECK_EQ_INT(res->code, 0);
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, res->len, res->buf);
  CHECK(m != NULL);
  free(res->buf);
  return m;
}

static int64_t put(cairn_client *c, const char *k, const char *v) {
  struct res r = {0};
  CHECK_OK(cairn_put_kv(c, k, strlen(k), v, strlen(v), NULL, res_cb, &r));
  Etcdserverpb__PutResponse *p =
      (Etcdserverpb__PutResponse *)res_wait(&r, &etcdserverpb__put_response__descriptor);
  int64_t rev = p->header->revision;
  cairn_response_free(&p->base);
  return rev;
}

static int64_t del(cairn_client *c, const char *k) {
  Etcdserverpb__DeleteRangeRequest d = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
  d.key.data = (uint8_t *)k;
  d.key.len = strlen(k);
  struct res r = {0};
  CHECK_OK(cairn_delete(c, &d, NULL, res_cb, &r));
  Etcdserverpb__DeleteRangeResponse *p = (Etcdserverpb__DeleteRangeResponse *)res_wait(
      &r, &etcdserverpb__delete_range_response__descriptor);
  int64_t rev = p->header->revision;
  cairn_response_free(&p->base);
  return rev;
}

static void compact(cairn_client *c, int64_t rev) {
  struct res r = {0};
  CHECK_OK(cairn_compact(c, rev, true, NULL, res_cb, &r));
  cairn_response_free(res_wait(&r, &etcdserverpb__compaction_response__descriptor));
}

/* Puts keys fmt % i for i in [from, to) with value "v<i>" in txns of 100. */
static int64_t put_many(cairn_client *c, const char *fmt, int from, int to) {
  int64_t rev = 0;
  for (int i = from; i < to;) {
    struct cairn_txn *t = cairn_txn_new();
    CHECK(t != NULL);
    char keys[100][64], vals[100][32];
    int n = 0;
    for (; n < 100 && i < to; n++, i++) {
      snprintf(keys[n], sizeof keys[n], fmt, i);
      snprintf(vals[n], sizeof vals[n], "v%d", i);
      Etcdserverpb__PutRequest p = ETCDSERVERPB__PUT_REQUEST__INIT;
      p.key.data = (uint8_t *)keys[n];
      p.key.len = strlen(keys[n]);
      p.value.data = (uint8_t *)vals[n];
      p.value.len = strlen(vals[n]);
      CHECK_OK(cairn_txn_put(t, true, &p));
    }
    struct res r = {0};
    CHECK_OK(cairn_txn_commit(c, t, NULL, res_cb, &r));
    cairn_txn_free(t);
    Etcdserverpb__TxnResponse *tr =
        (Etcdserverpb__TxnResponse *)res_wait(&r, &etcdserverpb__txn_response__descriptor);
    rev = tr->header->revision;
    cairn_response_free(&tr->base);
  }
  return rev;
}

static cairn_client *client_to(int port) {
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
  const char *eps[] = {ep};
  struct cairn_config cfg = {0};
  cfg.endpoints = eps;
  cfg.n_endpoints = 1;
  cfg.keepalive_time_ms = 1000;
  cfg.keepalive_timeout_ms = 1000;
  cairn_client *c = NULL;
  CHECK_OK(cairn_client_new(&loop, &cfg, &c));
  return c;
}

static void closed_cb(void *data) {
  *(bool *)data = true;
}

static void client_close(cairn_client *c) {
  bool closed = false;
  cairn_client_close(c, closed_cb, &closed);
  run_until(&closed, TIMEOUT_MS);
}

static const char *srv_log_path = "";

/* Waits until the server answers a write. */
static void wait_ready(cairn_client *c) {
  for (int i = 0; i < 400; i++) {
    struct res r = {0};
    CHECK_OK(cairn_put_kv(c, "ready", 5, "1", 1, NULL, res_cb, &r));
    run_until(&r.done, TIMEOUT_MS);
    free(r.buf);
    if (r.code == 0) {
      return;
    }
    sleep_ms(50);
  }
  fprintf(stderr, "the server never became ready (log: %s)\n", srv_log_path);
  abort();
}

/* The fixture: a server, a writer straight to it, a relay to it. */
static struct server srv;
static struct relay relay;
static cairn_client *writer;

static void fixture_start(void) {
  int ports[3];
  pick_ports(ports);
  srv.client_port = ports[0];
  srv.peer_port = ports[1];
  srv.dir = test_tmpdir("client-stream");
  snprintf(srv.data, sizeof srv.data, "%s/data", srv.dir);
  snprintf(srv.log, sizeof srv.log, "%s/server.log", srv.dir);
  srv_log_path = srv.log;
  if (use_etcd) {
    snprintf(srv.bin, sizeof srv.bin, "/usr/bin/etcd");
  } else {
    char self[400];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0);
    self[n] = 0;
    char *slash = strrchr(self, '/');
    CHECK(slash != NULL);
    *slash = 0;
    snprintf(srv.bin, sizeof srv.bin, "%s/cairn", self);
  }
  CHECK(access(srv.bin, X_OK) == 0);
  server_spawn(&srv);
  relay_start(&relay, ports[2], ports[0]);
  writer = client_to(srv.client_port);
  wait_ready(writer);
}

static void fixture_stop(void) {
  client_close(writer);
  relay_stop(&relay);
  server_kill(&srv, SIGTERM);
  uv_run(&loop, UV_RUN_NOWAIT);
  test_rmdir(srv.dir);
}

/* ---- watch ------------------------------------------------------------- */

#define EVENTS_MAX 4096

struct wstate {
  int n;
  int type[EVENTS_MAX];
  int64_t rev[EVENTS_MAX];
  char key[EVENTS_MAX][32];
  int64_t last_update_rev;
  bool ended;
  int end_code;
  char end_msg[256];
  int64_t compact_rev;
};

static void w_update(void *data, const struct cairn_watch_update *u) {
  struct wstate *s = data;
  CHECK(u->revision >= s->last_update_rev);
  s->last_update_rev = u->revision;
  for (size_t i = 0; i < u->n_events; i++) {
    const Mvccpb__Event *ev = u->events[i];
    CHECK(s->n < EVENTS_MAX);
    if (s->n > 0) {
      CHECK(ev->kv->mod_revision >= s->rev[s->n - 1]);
    }
    s->type[s->n] = (int)ev->type;
    s->rev[s->n] = ev->kv->mod_revision;
    snprintf(s->key[s->n], sizeof s->key[s->n], "%.*s", (int)ev->kv->key.len,
             (const char *)ev->kv->key.data);
    s->n++;
  }
}

static void w_end(void *data, int code, const char *message, int64_t compact_rev) {
  struct wstate *s = data;
  s->ended = true;
  s->end_code = code;
  snprintf(s->end_msg, sizeof s->end_msg, "%s", message);
  s->compact_rev = compact_rev;
}

static const struct cairn_watch_handlers w_handlers = {w_update, w_end};

static cairn_watch *watch_prefix(cairn_client *c, const char *prefix, int64_t start,
                                 struct wstate *s) {
  uint8_t end[64];
  struct cairn_watch_opts o = {0};
  o.key = prefix;
  o.key_len = strlen(prefix);
  o.range_end = end;
  o.range_end_len = cairn_prefix_end(prefix, strlen(prefix), end);
  o.start_revision = start;
  cairn_watch *w = NULL;
  CHECK_OK(cairn_watch_start(c, &o, &w_handlers, s, &w));
  return w;
}

/* Waits until the watch has delivered n events. */
static void wait_events(struct wstate *s, int n) {
  uint64_t end = uv_now(&loop) + TIMEOUT_MS;
  while (s->n < n) {
    CHECK(!s->ended);
    CHECK(uv_now(&loop) < end);
    uv_run(&loop, UV_RUN_ONCE);
  }
}

static void test_watch_order(void) {
  cairn_client *c = client_to(relay.port);
  struct wstate *s = calloc(1, sizeof *s);
  CHECK(s != NULL);
  cairn_watch *w = watch_prefix(c, "wo/", 0, s);
  sleep_ms(300); /* the watcher is created */
  int64_t r1 = put(writer, "wo/a", "1");
  int64_t r2 = put(writer, "wo/b", "2");
  put(writer, "other", "x");
  int64_t r3 = del(writer, "wo/a");
  int64_t r4 = put(writer, "wo/b", "3");
  wait_events(s, 4);
  sleep_ms(100);
  CHECK_EQ_INT(s->n, 4);
  int64_t revs[] = {r1, r2, r3, r4};
  const char *keys[] = {"wo/a", "wo/b", "wo/a", "wo/b"};
  int types[] = {0, 0, 1, 0};
  for (int i = 0; i < 4; i++) {
    CHECK_EQ_INT(s->rev[i], revs[i]);
    CHECK(strcmp(s->key[i], keys[i]) == 0);
    CHECK_EQ_INT(s->type[i], types[i]);
  }
  CHECK_EQ_INT(cairn_watch_revision(w), r4);
  cairn_watch_stop(w);
  CHECK(!s->ended);
  client_close(c);
  CHECK(!s->ended); /* stopped: no callback */
  free(s);
}

static void test_watch_resume(void) {
  cairn_client *c = client_to(relay.port);
  struct wstate *s = calloc(1, sizeof *s);
  CHECK(s != NULL);
  watch_prefix(c, "wr/", 0, s);
  sleep_ms(300);
  int64_t first = 0;
  char k[32];
  for (int i = 0; i < 20; i++) {
    snprintf(k, sizeof k, "wr/%03d", i);
    int64_t r = put(writer, k, "a");
    if (i == 0) {
      first = r;
    }
  }
  wait_events(s, 10); /* some delivered, maybe not all */
  /* kill -9 and restart on the same data dir. */
  server_kill(&srv, SIGKILL);
  relay_cut(&relay, true); /* keep the watch away while the writer writes */
  server_spawn(&srv);
  wait_ready(writer);
  for (int i = 20; i < 40; i++) {
    snprintf(k, sizeof k, "wr/%03d", i);
    put(writer, k, "b");
  }
  del(writer, "wr/005");
  sleep_ms(1500); /* the watch tries, and fails, to come back */
  relay_cut(&relay, false);
  for (int i = 40; i < 60; i++) {
    snprintf(k, sizeof k, "wr/%03d", i);
    put(writer, k, "c");
  }
  wait_events(s, 61);
  sleep_ms(300);
  CHECK_EQ_INT(s->n, 61);
  /* Every event once, in revision order, no gap among our writes. */
  for (int i = 0; i < 61; i++) {
    if (i > 0) {
      CHECK(s->rev[i] > s->rev[i - 1]);
    }
  }
  CHECK_EQ_INT(s->rev[0], first);
  CHECK(strcmp(s->key[40], "wr/005") == 0 && s->type[40] == 1);
  CHECK(!s->ended);
  client_close(c);
  CHECK(s->ended);
  CHECK_EQ_INT(s->end_code, GRPC_CANCELLED);
  CHECK(strcmp(s->end_msg, "grpc: the client connection is closing") == 0);
  free(s);
}

static void test_watch_past_and_compacted(void) {
  cairn_client *c = client_to(relay.port);
  int64_t first = put(writer, "wp/a", "1");
  put(writer, "wp/b", "2");
  del(writer, "wp/a");
  int64_t last = put(writer, "wp/c", "3");
  struct wstate *s = calloc(1, sizeof *s);
  CHECK(s != NULL);
  cairn_watch *w = watch_prefix(c, "wp/", first, s);
  wait_events(s, 4);
  CHECK_EQ_INT(s->rev[0], first);
  CHECK_EQ_INT(s->rev[3], last);
  CHECK_EQ_INT(s->type[2], 1);
  cairn_watch_stop(w);

  /* A start below the compacted revision ends the watch. */
  compact(writer, last);
  memset(s, 0, sizeof *s);
  watch_prefix(c, "wp/", first, s);
  run_until(&s->ended, TIMEOUT_MS);
  CHECK_EQ_INT(s->n, 0);
  CHECK_EQ_INT(s->end_code, GRPC_OUT_OF_RANGE);
  CHECK(strcmp(s->end_msg, "etcdserver: mvcc: required revision has been compacted") == 0);
  CHECK_EQ_INT(s->compact_rev, last);

  /* A watch that was down while the store was compacted past it ends too. */
  memset(s, 0, sizeof *s);
  watch_prefix(c, "wp/", 0, s);
  sleep_ms(300);
  int64_t r = put(writer, "wp/d", "4");
  wait_events(s, 1);
  relay_cut(&relay, true);
  put(writer, "wp/e", "5");
  int64_t top = put(writer, "wp/f", "6");
  compact(writer, top);
  relay_cut(&relay, false);
  run_until(&s->ended, TIMEOUT_MS);
  CHECK_EQ_INT(s->n, 1);
  CHECK_EQ_INT(s->rev[0], r);
  CHECK_EQ_INT(s->end_code, GRPC_OUT_OF_RANGE);
  CHECK_EQ_INT(s->compact_rev, top);
  client_close(c);
  free(s);
}

/* ---- keep-alive -------------------------------------------------------- */

struct kstate {
  int renewed;
  int64_t last_ttl;
  bool ended;
  int code;
  char msg[256];
};

static void k_renewed(void *data, int64_t id, int64_t ttl) {
  (void)id;
  struct kstate *k = data;
  k->renewed++;
  k->last_ttl = ttl;
}

static void k_end(void *data, int64_t id, int code, const char *message) {
  (void)id;
  struct kstate *k = data;
  k->ended = true;
  k->code = code;
  snprintf(k->msg, sizeof k->msg, "%s", message);
}

static int64_t lease_grant(cairn_client *c, int64_t ttl) {
  struct res r = {0};
  CHECK_OK(cairn_lease_grant(c, ttl, 0, NULL, res_cb, &r));
  Etcdserverpb__LeaseGrantResponse *g = (Etcdserverpb__LeaseGrantResponse *)res_wait(
      &r, &etcdserverpb__lease_grant_response__descriptor);
  int64_t id = g->id;
  cairn_response_free(&g->base);
  return id;
}

static int64_t lease_ttl(cairn_client *c, int64_t id) {
  struct res r = {0};
  CHECK_OK(cairn_lease_time_to_live(c, id, false, NULL, res_cb, &r));
  Etcdserverpb__LeaseTimeToLiveResponse *t = (Etcdserverpb__LeaseTimeToLiveResponse *)res_wait(
      &r, &etcdserverpb__lease_time_to_live_response__descriptor);
  int64_t ttl = t->ttl;
  cairn_response_free(&t->base);
  return ttl;
}

static void test_keepalive(void) {
  cairn_client *c = client_to(relay.port);
  int64_t id = lease_grant(writer, 2);
  int64_t id2 = lease_grant(writer, 2);
  struct kstate k = {0}, k2 = {0}, k3 = {0};
  struct cairn_keepalive_handlers h = {k_renewed, k_end};
  CHECK_ERR(cairn_keepalive_start(c, 0, &h, &k, NULL), CAIRN_EINVAL);
  cairn_keepalive *ka2 = NULL;
  CHECK_OK(cairn_keepalive_start(c, id, &h, &k, NULL));
  CHECK_OK(cairn_keepalive_start(c, id2, &h, &k2, &ka2));
  sleep_ms(6000);
  CHECK(!k.ended && !k2.ended);
  CHECK(k.renewed >= 6);
  CHECK(lease_ttl(writer, id) > 0);
  /* The second stops: its lease expires; the first lives on. */
  cairn_keepalive_stop(ka2);
  int r2 = k2.renewed;
  sleep_ms(3500);
  CHECK_EQ_INT(k2.renewed, r2);
  CHECK(lease_ttl(writer, id2) <= 0);
  CHECK(lease_ttl(writer, id) > 0);
  /* A lost connection costs no more than the reconnect. */
  relay_cut(&relay, true);
  sleep_ms(300);
  relay_cut(&relay, false);
  sleep_ms(2500);
  CHECK(lease_ttl(writer, id) > 0);
  CHECK(!k.ended);
  /* Revoked: the next answer is TTL 0, the keep-alive ends. */
  struct res r = {0};
  CHECK_OK(cairn_lease_revoke(writer, id, NULL, res_cb, &r));
  cairn_response_free(res_wait(&r, &etcdserverpb__lease_revoke_response__descriptor));
  run_until(&k.ended, TIMEOUT_MS);
  CHECK_EQ_INT(k.code, GRPC_NOT_FOUND);
  CHECK(strcmp(k.msg, "etcdserver: requested lease not found") == 0);
  /* The client's close ends a running keep-alive with CANCELLED. */
  int64_t id3 = lease_grant(writer, 5);
  CHECK_OK(cairn_keepalive_start(c, id3, &h, &k3, NULL));
  sleep_ms(200);
  CHECK(k3.renewed >= 1);
  client_close(c);
  CHECK(k3.ended);
  CHECK_EQ_INT(k3.code, GRPC_CANCELLED);
}

/* ---- informer ---------------------------------------------------------- */

struct istate {
  int adds, updates, deletes, synced, relisted, errors;
  int64_t synced_rev;
  bool ended;
  int end_code;
  char end_msg[256];
  cairn_informer *inf;
};

static void i_add(void *data, const Mvccpb__KeyValue *kv) {
  struct istate *s = data;
  CHECK(cairn_informer_get(s->inf, kv->key.data, kv->key.len) != NULL);
  s->adds++;
}
static void i_update(void *data, const Mvccpb__KeyValue *old, const Mvccpb__KeyValue *kv) {
  struct istate *s = data;
  CHECK(old->key.len == kv->key.len && memcmp(old->key.data, kv->key.data, kv->key.len) == 0);
  CHECK(old->mod_revision < kv->mod_revision);
  s->updates++;
}
static void i_delete(void *data, const Mvccpb__KeyValue *old) {
  struct istate *s = data;
  CHECK(cairn_informer_get(s->inf, old->key.data, old->key.len) == NULL);
  s->deletes++;
}
static void i_synced(void *data, int64_t rev, bool relisted) {
  struct istate *s = data;
  CHECK(rev >= s->synced_rev);
  CHECK_EQ_INT(cairn_informer_revision(s->inf), rev);
  s->synced_rev = rev;
  s->synced++;
  s->relisted += relisted;
}
static void i_error(void *data, int code, const char *message) {
  (void)code;
  (void)message;
  struct istate *s = data;
  s->errors++;
}
static void i_end(void *data, int code, const char *message) {
  struct istate *s = data;
  s->ended = true;
  s->end_code = code;
  snprintf(s->end_msg, sizeof s->end_msg, "%s", message);
}

static const struct cairn_informer_handlers i_handlers = {i_add,   i_update, i_delete,
                                                          i_synced, i_error, i_end};

static cairn_informer *informer(cairn_client *c, const char *prefix, size_t max_keys,
                                uint64_t relist_ms, struct istate *s) {
  struct cairn_informer_opts o = {0};
  o.prefix = prefix;
  o.prefix_len = strlen(prefix);
  o.max_keys = max_keys;
  o.relist_after_ms = relist_ms;
  CHECK_OK(cairn_informer_start(c, &o, &i_handlers, s, &s->inf));
  return s->inf;
}

static void wait_synced(struct istate *s, int64_t rev) {
  uint64_t end = uv_now(&loop) + TIMEOUT_MS;
  while (s->synced_rev < rev || s->synced == 0) {
    CHECK(!s->ended);
    CHECK(uv_now(&loop) < end);
    uv_run(&loop, UV_RUN_ONCE);
  }
}

struct cmp {
  const Etcdserverpb__RangeResponse *r;
  size_t i;
};

static int cmp_kv(void *data, const Mvccpb__KeyValue *kv) {
  struct cmp *c = data;
  CHECK(c->i < c->r->n_kvs);
  const Mvccpb__KeyValue *e = c->r->kvs[c->i++];
  CHECK(e->key.len == kv->key.len && memcmp(e->key.data, kv->key.data, kv->key.len) == 0);
  CHECK(e->value.len == kv->value.len && memcmp(e->value.data, kv->value.data, kv->value.len) == 0);
  CHECK_EQ_INT(e->mod_revision, kv->mod_revision);
  CHECK_EQ_INT(e->create_revision, kv->create_revision);
  CHECK_EQ_INT(e->version, kv->version);
  return 0;
}

/* The map equals a Range of the prefix at the informer's revision. */
static void check_map(cairn_informer *inf, const char *prefix) {
  uint8_t end[64];
  Etcdserverpb__RangeRequest q = ETCDSERVERPB__RANGE_REQUEST__INIT;
  q.key.data = (uint8_t *)prefix;
  q.key.len = strlen(prefix);
  q.range_end.data = end;
  q.range_end.len = cairn_prefix_end(prefix, strlen(prefix), end);
  q.revision = cairn_informer_revision(inf);
  struct res r = {0};
  CHECK_OK(cairn_range(writer, &q, NULL, res_cb, &r));
  Etcdserverpb__RangeResponse *rr =
      (Etcdserverpb__RangeResponse *)res_wait(&r, &etcdserverpb__range_response__descriptor);
  CHECK_EQ_INT(cairn_informer_size(inf), rr->n_kvs);
  struct cmp cm = {rr, 0};
  CHECK_OK(cairn_informer_foreach(inf, cmp_kv, &cm));
  CHECK_EQ_INT(cm.i, rr->n_kvs);
  cairn_response_free(&rr->base);
}

static void test_informer(void) {
  int n = test_small() ? 2100 : 2600;
  int64_t rev = put_many(writer, "in/%05d", 0, n);
  put(writer, "io", "outside");
  cairn_client *c = client_to(relay.port);
  struct istate *s = calloc(1, sizeof *s);
  CHECK(s != NULL);
  cairn_informer *inf = informer(c, "in/", 0, 0, s);
  CHECK_EQ_INT(cairn_informer_revision(inf), 0);
  wait_synced(s, rev);
  CHECK_EQ_INT(s->adds, n);
  CHECK_EQ_INT(s->relisted, 1);
  CHECK_EQ_INT(cairn_informer_size(inf), n);
  check_map(inf, "in/");
  const Mvccpb__KeyValue *kv = cairn_informer_get(inf, "in/00007", 8);
  CHECK(kv != NULL && kv->value.len == 2 && memcmp(kv->value.data, "v7", 2) == 0);

  /* Watched changes. */
  put(writer, "in/new1", "x");
  put(writer, "in/00001", "changed");
  del(writer, "in/00002");
  put(writer, "in/new1", "y");
  int64_t r = del(writer, "in/00003");
  wait_synced(s, r);
  CHECK_EQ_INT(s->adds, n + 1);
  CHECK_EQ_INT(s->updates, 2);
  CHECK_EQ_INT(s->deletes, 2);
  CHECK_EQ_INT(s->relisted, 1);
  check_map(inf, "in/");

  /* Compaction while the watch is away: a list, and only the differences. */
  relay_cut(&relay, true);
  put(writer, "in/new2", "a");
  put(writer, "in/new3", "a");
  put(writer, "in/new4", "a");
  put(writer, "in/00010", "b");
  put(writer, "in/00011", "b");
  del(writer, "in/00020");
  del(writer, "in/00021");
  del(writer, "in/00022");
  put(writer, "in/new5", "a");
  del(writer, "in/new5"); /* came and went: no callback */
  int64_t top = del(writer, "in/00023");
  compact(writer, top);
  int adds = s->adds, updates = s->updates, deletes = s->deletes;
  relay_cut(&relay, false);
  wait_synced(s, top);
  while (s->relisted < 2) {
    CHECK(!s->ended);
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK_EQ_INT(s->adds - adds, 3);
  CHECK_EQ_INT(s->updates - updates, 2);
  CHECK_EQ_INT(s->deletes - deletes, 4);
  check_map(inf, "in/");
  cairn_informer_stop(inf);

  /* relist_after_ms: the watch stays away; a list when it can. */
  memset(s, 0, sizeof *s);
  inf = informer(c, "in/", 0, 300, s);
  wait_synced(s, top);
  adds = s->adds;
  relay_cut(&relay, true);
  put(writer, "in/new6", "a");
  put(writer, "in/00030", "b");
  int64_t last = del(writer, "in/00031");
  sleep_ms(1200);
  CHECK(s->errors >= 1);
  relay_cut(&relay, false);
  wait_synced(s, last);
  while (s->relisted < 2) {
    CHECK(!s->ended);
    uv_run(&loop, UV_RUN_ONCE);
  }
  CHECK_EQ_INT(s->adds - adds, 1);
  CHECK_EQ_INT(s->updates, 1);
  CHECK_EQ_INT(s->deletes, 1);
  check_map(inf, "in/");
  CHECK(!s->ended);
  client_close(c);
  CHECK(s->ended);
  CHECK_EQ_INT(s->end_code, GRPC_CANCELLED);
  free(s);
}

static void test_informer_bounds(void) {
  int n = 150;
  int64_t rev = put_many(writer, "ib/%05d", 0, n);
  cairn_client *c = client_to(relay.port);
  struct istate *s = calloc(1, sizeof *s);
  CHECK(s != NULL);
  /* Over the bound at the list. */
  informer(c, "ib/", 100, 0, s);
  run_until(&s->ended, TIMEOUT_MS);
  CHECK_EQ_INT(s->end_code, GRPC_RESOURCE_EXHAUSTED);
  CHECK_EQ_INT(s->adds, 0);
  /* Over the bound from the watch. */
  memset(s, 0, sizeof *s);
  informer(c, "ib/", (size_t)n + 2, 0, s);
  wait_synced(s, rev);
  put(writer, "ib/x1", "1");
  put(writer, "ib/x2", "1");
  put(writer, "ib/x3", "1");
  run_until(&s->ended, TIMEOUT_MS);
  CHECK_EQ_INT(s->end_code, GRPC_RESOURCE_EXHAUSTED);
  CHECK(strcmp(s->end_msg, "cairn: informer max_keys reached") == 0);
  CHECK_EQ_INT(s->adds, n + 2);
  client_close(c);
  free(s);
}

int main(void) {
  test_seed("test_client_stream");
  signal(SIGPIPE, SIG_IGN);
  const char *which = getenv("CAIRN_TEST_SERVER");
  use_etcd = which != NULL && strcmp(which, "etcd") == 0;
  CHECK_OK(uv_loop_init(&loop));
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, tick_cb, 10, 10);
  fixture_start();
  TEST_RUN(test_watch_order);
  TEST_RUN(test_watch_resume);
  TEST_RUN(test_watch_past_and_compacted);
  TEST_RUN(test_keepalive);
  TEST_RUN(test_informer);
  TEST_RUN(test_informer_bounds);
  fixture_stop();
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_OK(uv_loop_close(&loop));
  printf("test_client_stream: ok (%s)\n", use_etcd ? "etcd" : "cairn");
  return 0;
}
