/* tests/unit/test_wire_grpc.c: the gRPC server (wire/grpc.h) against real
 * clients.
 *
 * A small echo service runs on the test's loop:
 *   /test.Echo/Say    unary: echoes; "fail:<code>:<text>" fails with that
 *                     status, "send-then-fail:<code>:<text>" sends a message
 *                     first, "sleep:<ms>" answers late, "big:<n>" answers n
 *                     bytes, "stats" answers the counters, "shutdown" shuts
 *                     the server down after answering
 *   /test.Echo/Count  server stream: "<n> <size>" sends n messages of size
 *                     bytes through the send-queue bound; "forever <size>"
 *                     until cancelled
 *   /test.Echo/Chat   bidi: echoes each message, OK on half-close
 * Clients: python3-grpcio (tests/unit/wire_client.py, run as a child
 * process), etcdctl, and an nghttp2 client on a thread for what needs the
 * frames themselves (first SETTINGS, the server's own deadline, compressed
 * flag, content-type, RST_STREAM on closed streams, the GOAWAY sequence). */

#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <uv.h>

#include "test.h"
#include "wire/grpc.h"
#include "wire/grpc_int.h"
#include "wire/http1.h"

#define PYTHON "/usr/bin/python3"

/* ---- the echo service ------------------------------------------------------------- */

struct echo_stats {
  int say_closes;
  int count_closes;
  int chat_closes;
  int chat_half_closes;
  int sleep_cut; /* sleep calls whose on_close came before their timer */
  int live;      /* calls between their first callback and on_close */
  int ebusy;     /* sends refused by the send-queue bound */
};

struct env {
  uv_loop_t loop;
  grpc_server *s;
  struct echo_stats st;
  bool server_closed;
  /* child process */
  uv_process_t proc;
  int64_t exit_status;
  int term_signal;
  bool child_done;
  /* raw client thread */
  uv_async_t async;
  bool async_used;
};

struct call_state {
  struct env *env;
  uv_timer_t *timer;
  uint64_t remaining;
  size_t size;
  bool forever;
  bool shutdown_after;
};

static struct call_state *state_of(grpc_call *call, struct env *env) {
  struct call_state *cs = grpc_call_user(call);
  if (!cs) {
    cs = calloc(1, sizeof *cs);
    CHECK(cs != NULL);
    cs->env = env;
    grpc_call_set_user(call, cs);
    env->st.live++;
  }
  return cs;
}

static void timer_free_cb(uv_handle_t *h) {
  free(h);
}

static void on_closed_server(void *data) {
  struct env *env = data;
  env->server_closed = true;
  if (env->async_used) {
    uv_close((uv_handle_t *)&env->async, NULL);
  }
}

static void sleep_done(uv_timer_t *t) {
  grpc_call *call = t->data;
  struct call_state *cs = grpc_call_user(call);
  uv_close((uv_handle_t *)t, timer_free_cb);
  cs->timer = NULL;
  grpc_call_send(call, (const uint8_t *)"slept", 5);
  grpc_call_finish(call, GRPC_OK, NULL);
}

static void say_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct env *env = ctx;
  struct call_state *cs = state_of(call, env);
  char text[128];
  size_t tl = len < sizeof text - 1 ? len : sizeof text - 1;
  memcpy(text, msg, tl);
  text[tl] = '\0';
  int code = 0, off = 0;
  if (sscanf(text, "fail:%d:%n", &code, &off) == 1 && off > 0) {
    char *m = strndup((const char *)msg + off, len - (size_t)off);
    CHECK_OK(grpc_call_finish(call, code, m));
    free(m);
    return;
  }
  if (sscanf(text, "send-then-fail:%d:%n", &code, &off) == 1 && off > 0) {
    CHECK_OK(grpc_call_send(call, (const uint8_t *)"partial", 7));
    char *m = strndup((const char *)msg + off, len - (size_t)off);
    CHECK_OK(grpc_call_finish(call, code, m));
    free(m);
    return;
  }
  unsigned long n = 0;
  if (sscanf(text, "sleep:%lu", &n) == 1) {
    cs->timer = malloc(sizeof *cs->timer);
    CHECK(cs->timer != NULL);
    uv_timer_init(&env->loop, cs->timer);
    cs->timer->data = call;
    uv_timer_start(cs->timer, sleep_done, n, 0);
    return;
  }
  if (sscanf(text, "big:%lu", &n) == 1) {
    uint8_t *b = malloc(n);
    CHECK(b != NULL);
    memset(b, 'b', n);
    CHECK_OK(grpc_call_send(call, b, n));
    free(b);
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
    return;
  }
  if (strcmp(text, "stats") == 0) {
    char out[256];
    int w = snprintf(out, sizeof out,
                     "say_closes=%d count_closes=%d chat_closes=%d chat_half_closes=%d "
                     "sleep_cut=%d live=%d",
                     env->st.say_closes, env->st.count_closes, env->st.chat_closes,
                     env->st.chat_half_closes, env->st.sleep_cut, env->st.live);
    CHECK_OK(grpc_call_send(call, (const uint8_t *)out, (size_t)w));
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
    return;
  }
  if (strcmp(text, "shutdown") == 0) {
    CHECK_OK(grpc_call_send(call, msg, len));
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
    grpc_server_shutdown(env->s, 3000, on_closed_server, env);
    return;
  }
  CHECK_OK(grpc_call_send(call, msg, len));
  CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
}

static void say_close(grpc_call *call, void *ctx) {
  struct env *env = ctx;
  struct call_state *cs = grpc_call_user(call);
  env->st.say_closes++;
  /* A finished or cancelled call refuses more work. */
  CHECK_ERR(grpc_call_send(call, (const uint8_t *)"x", 1), CAIRN_ESTOPPED);
  if (cs) {
    if (cs->timer) {
      env->st.sleep_cut++;
      uv_timer_stop(cs->timer);
      uv_close((uv_handle_t *)cs->timer, timer_free_cb);
    }
    env->st.live--;
    free(cs);
  }
}

static void count_pump(grpc_call *call, void *data) {
  struct call_state *cs = data;
  uint8_t *buf = malloc(cs->size);
  CHECK(buf != NULL);
  memset(buf, 'c', cs->size);
  /* Bounded: the send queue refuses once it is full. */
  while (cs->forever || cs->remaining > 0) {
    int rc = grpc_call_send(call, buf, cs->size);
    if (rc == CAIRN_EBUSY) {
      CHECK(grpc_call_queued_bytes(call) > 0);
      cs->env->st.ebusy++;
      grpc_call_on_writable(call, count_pump, cs);
      free(buf);
      return;
    }
    CHECK_OK(rc);
    cs->remaining--;
  }
  free(buf);
  CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
}

static void count_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct env *env = ctx;
  struct call_state *cs = state_of(call, env);
  char text[64];
  size_t tl = len < sizeof text - 1 ? len : sizeof text - 1;
  memcpy(text, msg, tl);
  text[tl] = '\0';
  unsigned long n = 0, size = 0;
  if (sscanf(text, "forever %lu", &size) == 1) {
    cs->forever = true;
  } else {
    CHECK(sscanf(text, "%lu %lu", &n, &size) == 2);
  }
  cs->remaining = n;
  cs->size = size;
  /* Start from the loop, as a producer would. */
  grpc_call_on_writable(call, count_pump, cs);
}

static void count_close(grpc_call *call, void *ctx) {
  struct env *env = ctx;
  struct call_state *cs = grpc_call_user(call);
  env->st.count_closes++;
  if (cs) {
    env->st.live--;
    free(cs);
  }
}

static void chat_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  state_of(call, ctx);
  int rc = grpc_call_send(call, msg, len);
  CHECK(rc == 0 || rc == CAIRN_EBUSY);
  if (rc == CAIRN_EBUSY) {
    CHECK_OK(grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "slow reader"));
  }
}

static void chat_half_close(grpc_call *call, void *ctx) {
  struct env *env = ctx;
  env->st.chat_half_closes++;
  CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
}

static void chat_close(grpc_call *call, void *ctx) {
  struct env *env = ctx;
  struct call_state *cs = grpc_call_user(call);
  env->st.chat_closes++;
  if (cs) {
    env->st.live--;
    free(cs);
  }
}

static void kv_range(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)msg;
  (void)len;
  (void)ctx;
  grpc_call_finish(call, GRPC_UNAVAILABLE, "test");
}

/* HTTP/1.1 handler: /health, /echo, /later (answered from a timer). */
static void later_cb(uv_timer_t *t) {
  grpc_http_request *req = t->data;
  CHECK_OK(grpc_http_respond(req, 202, "text/plain", (const uint8_t *)"later", 5));
  uv_close((uv_handle_t *)t, timer_free_cb);
}

static void http_handler(grpc_http_request *req, const char *method, const char *path,
                         const uint8_t *body, size_t body_len, void *ctx) {
  struct env *env = ctx;
  (void)body;
  if (strcmp(path, "/health") == 0) {
    static const char h[] = "{\"health\":\"true\"}";
    grpc_http_respond(req, 200, "application/json", (const uint8_t *)h, sizeof h - 1);
  } else if (strcmp(path, "/echo") == 0) {
    char out[128];
    const char *tok = grpc_http_header(req, "x-token");
    int w = snprintf(out, sizeof out, "%s %s %zu %s", method, path, body_len, tok ? tok : "-");
    CHECK_OK(grpc_http_respond(req, 200, "text/plain", (const uint8_t *)out, (size_t)w));
  } else if (strcmp(path, "/later") == 0) {
    uv_timer_t *t = malloc(sizeof *t);
    CHECK(t != NULL);
    uv_timer_init(&env->loop, t);
    t->data = req;
    uv_timer_start(t, later_cb, 50, 0);
  } else {
    grpc_http_respond(req, 404, "text/plain", (const uint8_t *)"no such page", 12);
  }
}

static void env_init(struct env *env, bool with_kv) {
  memset(env, 0, sizeof *env);
  CHECK_OK(uv_loop_init(&env->loop));
  struct grpc_server_options opts = {.max_recv_message_bytes = 1536 * 1024};
  CHECK_OK(grpc_server_init(&env->loop, &opts, &env->s));
  struct grpc_method methods[] = {
      {"/test.Echo/Say", GRPC_METHOD_UNARY, say_msg, NULL, say_close, env},
      {"/test.Echo/Count", GRPC_METHOD_SERVER_STREAM, count_msg, NULL, count_close, env},
      {"/test.Echo/Chat", GRPC_METHOD_BIDI_STREAM, chat_msg, chat_half_close, chat_close, env},
  };
  CHECK_OK(grpc_server_register(env->s, methods, 3));
  /* Bad registrations change nothing. */
  CHECK_ERR(grpc_server_register(env->s, methods, 1), CAIRN_EINVAL);
  struct grpc_method bad = {"/nosvc", GRPC_METHOD_UNARY, say_msg, NULL, NULL, env};
  CHECK_ERR(grpc_server_register(env->s, &bad, 1), CAIRN_EINVAL);
  if (with_kv) {
    struct grpc_method kv = {
        "/etcdserverpb.KV/Range", GRPC_METHOD_UNARY, kv_range, NULL, NULL, env};
    CHECK_OK(grpc_server_register(env->s, &kv, 1));
  }
  grpc_server_set_http_handler(env->s, http_handler, env);
}

static void env_finish(struct env *env) {
  /* Everything the test started is closed: the loop must have no handle. */
  CHECK(env->server_closed);
  CHECK_EQ_INT(env->st.live, 0);
  CHECK_OK(uv_loop_close(&env->loop));
}

/* ---- child processes ------------------------------------------------------------------ */

static void on_child_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
  struct env *env = p->data;
  env->exit_status = exit_status;
  env->term_signal = term_signal;
  env->child_done = true;
  uv_close((uv_handle_t *)p, NULL);
  grpc_server_shutdown(env->s, 2000, on_closed_server, env);
}

static void spawn_child(struct env *env, char **args) {
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                   {.flags = UV_INHERIT_FD, .data.fd = 1},
                                   {.flags = UV_INHERIT_FD, .data.fd = 2}};
  uv_process_options_t o = {0};
  o.file = args[0];
  o.args = args;
  o.exit_cb = on_child_exit;
  o.stdio = stdio;
  o.stdio_count = 3;
  env->proc.data = env;
  int r = uv_spawn(&env->loop, &env->proc, &o);
  if (r != 0) {
    fprintf(stderr, "spawn %s: %s\n", args[0], uv_strerror(r));
  }
  CHECK_OK(r);
}

static char *client_script(void) {
  char *src = strdup(__FILE__);
  char *path = NULL;
  CHECK(asprintf(&path, "%s/wire_client.py", dirname(src)) > 0);
  free(src);
  return path;
}

/* ---- python grpcio ------------------------------------------------------------------- */

static void test_python_plain(void) {
  struct env env;
  env_init(&env, true);
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, NULL));
  int port = grpc_server_port(env.s);
  CHECK(port > 0);
  char *script = client_script();
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  char *args[] = {PYTHON, script, "plain", portstr, NULL};
  spawn_child(&env, args);
  CHECK_OK(uv_run(&env.loop, UV_RUN_DEFAULT));
  CHECK(env.child_done);
  CHECK_EQ_INT(env.term_signal, 0);
  CHECK_EQ_INT(env.exit_status, 0);
  CHECK(env.st.count_closes >= 2);
  CHECK(env.st.chat_half_closes >= 2);
  CHECK(env.st.ebusy > 0); /* a server stream met the send-queue bound */
  free(script);
  env_finish(&env);
}

static char *make_certs(void) {
  char *dir = test_tmpdir("wire-tls");
  char *cmd = NULL;
  CHECK(asprintf(&cmd,
                 "set -e; cd '%s'; "
                 "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
                 "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=cairn-test-ca "
                 "2>/dev/null; "
                 "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext; "
                 "openssl req $K -keyout server.key -out server.csr -subj /CN=localhost "
                 "2>/dev/null; "
                 "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                 "-out server.crt -days 2 -extfile san.ext 2>/dev/null; "
                 "openssl req $K -keyout client.key -out client.csr -subj /CN=client "
                 "2>/dev/null; "
                 "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                 "-out client.crt -days 2 2>/dev/null",
                 dir) > 0);
  CHECK(system(cmd) == 0);
  free(cmd);
  return dir;
}

static void test_python_tls(void) {
  char *dir = make_certs();
  char cert[512], key[512], ca[512];
  snprintf(cert, sizeof cert, "%s/server.crt", dir);
  snprintf(key, sizeof key, "%s/server.key", dir);
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  struct env env;
  env_init(&env, false);

  /* Bad TLS settings are refused at listen. */
  struct grpc_tls_options bad = {.cert_file = cert, .key_file = ca};
  CHECK_ERR(grpc_server_listen(env.s, "127.0.0.1", 0, &bad), CAIRN_EINVAL);
  struct grpc_tls_options noca = {.cert_file = cert, .key_file = key, .client_cert_auth = true};
  CHECK_ERR(grpc_server_listen(env.s, "127.0.0.1", 0, &noca), CAIRN_EINVAL);

  struct grpc_tls_options mutual = {
      .cert_file = cert, .key_file = key, .trusted_ca_file = ca, .client_cert_auth = true};
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, &mutual));
  int port = grpc_server_port(env.s);
  struct grpc_tls_options plain_tls = {.cert_file = cert, .key_file = key};
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, &plain_tls));
  int port2 = grpc_server_port(env.s);
  CHECK(port > 0 && port2 > 0 && port != port2);

  char *script = client_script();
  char p1[16], p2[16];
  snprintf(p1, sizeof p1, "%d", port);
  snprintf(p2, sizeof p2, "%d", port2);
  char *args[] = {PYTHON, script, "tls", p1, p2, dir, NULL};
  spawn_child(&env, args);
  CHECK_OK(uv_run(&env.loop, UV_RUN_DEFAULT));
  CHECK(env.child_done);
  CHECK_EQ_INT(env.term_signal, 0);
  CHECK_EQ_INT(env.exit_status, 0);
  free(script);
  env_finish(&env);
  test_rmdir(dir);
}

/* ---- etcdctl ---------------------------------------------------------------------------- */

static void test_etcdctl(void) {
  if (access("/usr/bin/etcdctl", X_OK) != 0) {
    fprintf(stderr, "etcdctl is not installed (scripts/deps installs etcd-client)\n");
    CHECK(0);
  }
  char *dir = test_tmpdir("wire-etcdctl");
  struct env env;
  env_init(&env, false);
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, NULL));
  char *cmd = NULL;
  CHECK(asprintf(&cmd,
                 "ETCDCTL_API=3 /usr/bin/etcdctl --endpoints 127.0.0.1:%d --dial-timeout 5s "
                 "--command-timeout 10s get foo > '%s/out' 2>&1; echo \"exit $?\" >> '%s/out'",
                 grpc_server_port(env.s), dir, dir) > 0);
  char *args[] = {"/bin/sh", "-c", cmd, NULL};
  spawn_child(&env, args);
  CHECK_OK(uv_run(&env.loop, UV_RUN_DEFAULT));
  CHECK_EQ_INT(env.exit_status, 0);
  char path[512], out[4096] = "";
  snprintf(path, sizeof path, "%s/out", dir);
  FILE *f = fopen(path, "r");
  CHECK(f != NULL);
  size_t n = fread(out, 1, sizeof out - 1, f);
  out[n] = '\0';
  fclose(f);
  printf("    etcdctl said: %s", out);
  CHECK(strstr(out, "code = Unimplemented desc = unknown service etcdserverpb.KV") != NULL);
  CHECK(strstr(out, "exit 1") != NULL);
  free(cmd);
  env_finish(&env);
  test_rmdir(dir);
}

/* ---- an nghttp2 client on a thread --------------------------------------------------- */

#define RAW_STREAMS 64

struct raw_stream {
  int http_status;
  int grpc_status; /* -1: none seen */
  char grpc_message[256];
  size_t data_len;
  bool closed;
  uint32_t close_code;
  bool end_stream_seen;
};

struct raw {
  int port;
  int fd;
  nghttp2_session *sess;
  struct raw_stream st[RAW_STREAMS];
  bool eof;
  /* GOAWAY and PING frames, in arrival order: 'G' or 'P'. */
  char events[16];
  int n_events;
  int32_t goaway_last[8];
  int n_goaway;
  const uint8_t *body;
  size_t body_len, body_off;
  bool failed;
  struct env *env;
};

static struct raw_stream *raw_st(struct raw *r, int32_t id) {
  CHECK(id > 0 && id / 2 < RAW_STREAMS);
  return &r->st[id / 2];
}

static int raw_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
  return fd;
}

static void write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w <= 0) {
      return; /* the server may have closed: the caller checks */
    }
    p += w;
    n -= (size_t)w;
  }
}

static size_t read_some(int fd, uint8_t *buf, size_t cap, int timeout_ms) {
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  if (poll(&pfd, 1, timeout_ms) <= 0) {
    return 0;
  }
  ssize_t n = recv(fd, buf, cap, 0);
  return n > 0 ? (size_t)n : 0;
}

static int raw_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                         const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  (void)s;
  (void)flags;
  struct raw *r = ud;
  if (f->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  struct raw_stream *st = raw_st(r, f->hd.stream_id);
  if (nl == 7 && memcmp(name, ":status", 7) == 0) {
    st->http_status = atoi((const char *)value);
  } else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0) {
    st->grpc_status = atoi((const char *)value);
  } else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0) {
    size_t n = vl < sizeof st->grpc_message - 1 ? vl : sizeof st->grpc_message - 1;
    memcpy(st->grpc_message, value, n);
    st->grpc_message[n] = '\0';
  }
  return 0;
}

static int raw_on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  (void)s;
  struct raw *r = ud;
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    raw_st(r, f->hd.stream_id)->end_stream_seen = true;
  }
  if (f->hd.type == NGHTTP2_GOAWAY && r->n_events < 16 && r->n_goaway < 8) {
    r->events[r->n_events++] = 'G';
    r->goaway_last[r->n_goaway++] = f->goaway.last_stream_id;
  }
  if (f->hd.type == NGHTTP2_PING && !(f->hd.flags & NGHTTP2_FLAG_ACK) && r->n_events < 16) {
    r->events[r->n_events++] = 'P';
  }
  return 0;
}

static int raw_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                       size_t len, void *ud) {
  (void)s;
  (void)flags;
  (void)data;
  raw_st(ud, id)->data_len += len;
  return 0;
}

static int raw_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
  (void)s;
  struct raw_stream *st = raw_st(ud, id);
  st->closed = true;
  st->close_code = code;
  return 0;
}

static ssize_t raw_body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                             uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)s;
  (void)id;
  (void)src;
  struct raw *r = ud;
  size_t n = r->body_len - r->body_off;
  if (n > len) {
    n = len;
  }
  memcpy(buf, r->body + r->body_off, n);
  r->body_off += n;
  if (r->body_off == r->body_len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  }
  return (ssize_t)n;
}

static void raw_open(struct raw *r) {
  r->fd = raw_connect(r->port);
  nghttp2_session_callbacks *cb;
  CHECK(nghttp2_session_callbacks_new(&cb) == 0);
  nghttp2_session_callbacks_set_on_header_callback(cb, raw_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, raw_on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, raw_on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, raw_on_close);
  CHECK(nghttp2_session_client_new(&r->sess, cb, r) == 0);
  nghttp2_session_callbacks_del(cb);
  CHECK(nghttp2_submit_settings(r->sess, NGHTTP2_FLAG_NONE, NULL, 0) == 0);
  memset(r->st, 0, sizeof r->st);
  for (int i = 0; i < RAW_STREAMS; i++) {
    r->st[i].grpc_status = -1;
  }
  r->eof = false;
  r->n_events = 0;
  r->n_goaway = 0;
}

static void raw_close(struct raw *r) {
  nghttp2_session_del(r->sess);
  close(r->fd);
}

/* Exchanges frames until done(r, arg) or timeout_ms pass. */
static bool raw_pump(struct raw *r, bool (*done)(struct raw *, int32_t), int32_t arg,
                     int timeout_ms) {
  uint64_t end = uv_hrtime() / 1000000 + (uint64_t)timeout_ms;
  while (uv_hrtime() / 1000000 < end) {
    for (;;) {
      const uint8_t *d;
      ssize_t n = nghttp2_session_mem_send(r->sess, &d);
      CHECK(n >= 0);
      if (n == 0) {
        break;
      }
      write_all(r->fd, d, (size_t)n);
    }
    if (done && done(r, arg)) {
      return true;
    }
    uint8_t buf[16384];
    struct pollfd pfd = {.fd = r->fd, .events = POLLIN};
    if (poll(&pfd, 1, 20) <= 0) {
      continue;
    }
    ssize_t n = recv(r->fd, buf, sizeof buf, 0);
    if (n <= 0) {
      r->eof = true;
      return done ? done(r, arg) : false;
    }
    CHECK(nghttp2_session_mem_recv(r->sess, buf, (size_t)n) == n);
  }
  return done ? done(r, arg) : false;
}

static bool stream_closed(struct raw *r, int32_t id) {
  return raw_st(r, id)->closed;
}

static bool got_events(struct raw *r, int32_t n) {
  return r->n_events >= n || r->eof;
}

static bool is_eof(struct raw *r, int32_t unused) {
  (void)unused;
  return r->eof;
}

/* Submits a gRPC request; body NULL: headers only, stream left open. */
static const char *raw_extra_name, *raw_extra_value; /* one more header, or NULL */

static int32_t raw_request(struct raw *r, const char *path, const char *ct, const char *timeout,
                           const uint8_t *body, size_t body_len) {
  nghttp2_nv nva[9];
  size_t n = 0;
#define NV(a, b) \
  (nghttp2_nv){(uint8_t *)(a), (uint8_t *)(b), strlen(a), strlen(b), NGHTTP2_NV_FLAG_NONE}
  nva[n++] = NV(":method", "POST");
  nva[n++] = NV(":scheme", "http");
  nva[n++] = NV(":path", path);
  nva[n++] = NV(":authority", "localhost");
  nva[n++] = NV("content-type", ct);
  nva[n++] = NV("te", "trailers");
  if (timeout) {
    nva[n++] = NV("grpc-timeout", timeout);
  }
  if (raw_extra_name) {
    nva[n++] = NV(raw_extra_name, raw_extra_value);
  }
#undef NV
  if (!body) {
    return nghttp2_submit_headers(r->sess, NGHTTP2_FLAG_NONE, -1, NULL, nva, n, NULL);
  }
  r->body = body;
  r->body_len = body_len;
  r->body_off = 0;
  nghttp2_data_provider prd = {.read_callback = raw_body_read};
  return nghttp2_submit_request(r->sess, NULL, nva, n, &prd, NULL);
}

static void grpc_frame(uint8_t *out, uint8_t flag, const char *msg) {
  size_t len = strlen(msg);
  out[0] = flag;
  out[1] = (uint8_t)(len >> 24);
  out[2] = (uint8_t)(len >> 16);
  out[3] = (uint8_t)(len >> 8);
  out[4] = (uint8_t)len;
  memcpy(out + 5, msg, len);
}

static void raw_check_first_settings(struct raw *r) {
  int fd = raw_connect(r->port);
  static const uint8_t hello[] =
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
      "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
  write_all(fd, hello, sizeof hello - 1);
  uint8_t buf[512];
  size_t have = 0;
  for (int i = 0; i < 50 && have < 9; i++) {
    have += read_some(fd, buf + have, sizeof buf - have, 100);
  }
  CHECK(have >= 9);
  size_t len = (size_t)buf[0] << 16 | (size_t)buf[1] << 8 | buf[2];
  CHECK_EQ_INT(buf[3], NGHTTP2_SETTINGS);
  CHECK_EQ_INT(buf[4], 0);
  for (int i = 0; i < 50 && have < 9 + len; i++) {
    have += read_some(fd, buf + have, sizeof buf - have, 100);
  }
  CHECK(have >= 9 + len && len % 6 == 0);
  bool found = false;
  for (size_t o = 9; o < 9 + len; o += 6) {
    uint16_t id = (uint16_t)(buf[o] << 8 | buf[o + 1]);
    uint32_t v = (uint32_t)buf[o + 2] << 24 | (uint32_t)buf[o + 3] << 16 |
                 (uint32_t)buf[o + 4] << 8 | buf[o + 5];
    if (id == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) {
      CHECK(v == 4294967295u);
      found = true;
    }
  }
  CHECK(found);
  close(fd);
  printf("    ok: first frame SETTINGS, MAX_CONCURRENT_STREAMS 4294967295\n");
}

static void *raw_thread(void *arg) {
  struct raw *r = arg;
  raw_check_first_settings(r);

  raw_open(r);
  /* The server's own deadline: headers only, the client never half-closes. */
  int32_t id = raw_request(r, "/test.Echo/Say", "application/grpc", "150m", NULL, 0);
  CHECK(id > 0);
  uint64_t t0 = uv_hrtime();
  CHECK(raw_pump(r, stream_closed, id, 5000));
  uint64_t ms = (uv_hrtime() - t0) / 1000000;
  CHECK_EQ_INT(raw_st(r, id)->http_status, 200);
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, GRPC_DEADLINE_EXCEEDED);
  CHECK(strcmp(raw_st(r, id)->grpc_message, "Deadline Exceeded") == 0);
  CHECK(raw_st(r, id)->end_stream_seen);
  CHECK(ms >= 140 && ms < 3000);
  printf("    ok: grpc-timeout 150m: DEADLINE_EXCEEDED after %" PRIu64 " ms, then RST\n", ms);

  /* Malformed grpc-timeout. */
  uint8_t msg[64];
  grpc_frame(msg, 0, "hi");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", "123456789S", msg, 7);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, GRPC_INTERNAL);
  printf("    ok: malformed grpc-timeout: INTERNAL (%s)\n", raw_st(r, id)->grpc_message);

  /* Compressed flag without an encoding. */
  grpc_frame(msg, 1, "hi");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, msg, 7);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, GRPC_INTERNAL);
  CHECK(strcmp(raw_st(r, id)->grpc_message,
               "grpc: compressed flag set with identity or empty encoding") == 0);
  printf("    ok: compressed flag: INTERNAL\n");

  /* Content types. */
  grpc_frame(msg, 0, "ct");
  id = raw_request(r, "/test.Echo/Say", "application/json", NULL, msg, 7);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->http_status, 415);
  id = raw_request(r, "/test.Echo/Say", "application/grpc+proto", NULL, msg, 7);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, 0);
  CHECK_EQ_INT(raw_st(r, id)->data_len, 7);
  printf("    ok: content-type application/json: 415; application/grpc+proto served\n");

  /* Two messages on a unary call. */
  uint8_t two[14];
  grpc_frame(two, 0, "hi");
  grpc_frame(two + 7, 0, "hi");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, two, 14);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, GRPC_INTERNAL);
  printf("    ok: two messages on a unary call: INTERNAL\n");

  /* Request headers over GRPC_HEADER_BYTES_MAX: the stream is reset. */
  char *big = malloc(GRPC_HEADER_BYTES_MAX + 1);
  CHECK(big != NULL);
  memset(big, 'h', GRPC_HEADER_BYTES_MAX);
  big[GRPC_HEADER_BYTES_MAX] = '\0';
  raw_extra_name = "x-big";
  raw_extra_value = big;
  grpc_frame(msg, 0, "hi");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, msg, 7);
  raw_extra_name = NULL;
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK(raw_st(r, id)->close_code != 0);
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, -1);
  free(big);
  printf("    ok: request headers over the bound: RST_STREAM(%u)\n", raw_st(r, id)->close_code);

  /* RST_STREAM on a stream already closed, then the connection still works. */
  uint8_t rst[13] = {0, 0, 4, NGHTTP2_RST_STREAM, 0, 0, 0, 0, 1, 0, 0, 0, NGHTTP2_CANCEL};
  write_all(r->fd, rst, sizeof rst);
  grpc_frame(msg, 0, "again");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, msg, 10);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, 0);
  CHECK_EQ_INT(raw_st(r, id)->data_len, 10);
  CHECK(!r->eof);
  printf("    ok: RST_STREAM on a closed stream accepted\n");
  raw_close(r);

  /* A malformed frame (DATA on stream 0): GOAWAY and close. */
  raw_open(r);
  raw_pump(r, NULL, 0, 100);
  uint8_t bad[9 + 4] = {0, 0, 4, NGHTTP2_DATA, 0, 0, 0, 0, 0, 1, 2, 3, 4};
  write_all(r->fd, bad, sizeof bad);
  CHECK(raw_pump(r, is_eof, 0, 5000));
  CHECK(r->n_goaway >= 1);
  raw_close(r);
  printf("    ok: malformed frame: GOAWAY, connection closed\n");

  /* Graceful shutdown, asked for over this connection while another call
   * is in progress: that call still finishes. (The stream also keeps this
   * nghttp2 client reading after the first GOAWAY.) */
  raw_open(r);
  uint8_t slow[16];
  grpc_frame(slow, 0, "sleep:400");
  int32_t sleeper = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, slow, 14);
  raw_pump(r, NULL, 0, 50);
  grpc_frame(msg, 0, "shutdown");
  id = raw_request(r, "/test.Echo/Say", "application/grpc", NULL, msg, 13);
  CHECK(raw_pump(r, stream_closed, id, 5000));
  CHECK_EQ_INT(raw_st(r, id)->grpc_status, 0);
  raw_pump(r, got_events, 3, 5000);
  CHECK(r->n_events >= 3);
  CHECK(memcmp(r->events, "GPG", 3) == 0);
  CHECK_EQ_INT(r->goaway_last[0], 2147483647);
  CHECK_EQ_INT(r->goaway_last[1], id);
  CHECK(!raw_st(r, sleeper)->closed);
  CHECK(raw_pump(r, stream_closed, sleeper, 5000));
  CHECK_EQ_INT(raw_st(r, sleeper)->grpc_status, 0);
  CHECK_EQ_INT(raw_st(r, sleeper)->data_len, 10);
  raw_pump(r, is_eof, 0, 5000);
  CHECK(r->eof);
  raw_close(r);
  printf(
      "    ok: shutdown: GOAWAY(2^31-1), PING, GOAWAY(%d), the call in progress finished, "
      "close\n",
      id);
  return NULL;
}

static void on_async(uv_async_t *a) {
  struct env *env = a->data;
  /* The client thread is done: shut the server down unless it did. */
  if (!env->server_closed && !env->s->shutting_down) {
    grpc_server_shutdown(env->s, 2000, on_closed_server, env);
  }
}

/* Runs fn on a thread against env's server while the loop serves. fn ends
 * by waking the loop (uv_async_send) or by shutting the server down. */
static void run_client_thread(struct env *env, void *(*fn)(void *), struct raw *r) {
  /* The async handle keeps the loop alive until the server closes. */
  CHECK_OK(uv_async_init(&env->loop, &env->async, on_async));
  env->async.data = env;
  env->async_used = true;
  r->port = grpc_server_port(env->s);
  r->env = env;
  pthread_t th;
  CHECK(pthread_create(&th, NULL, fn, r) == 0);
  CHECK_OK(uv_run(&env->loop, UV_RUN_DEFAULT));
  CHECK(pthread_join(th, NULL) == 0);
}

static void test_raw_h2(void) {
  struct env env;
  env_init(&env, false);
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, NULL));
  struct raw r = {0};
  run_client_thread(&env, raw_thread, &r);
  CHECK(env.st.sleep_cut == 0); /* the deadline call never reached "sleep" */
  env_finish(&env);
}

/* True when the peer closed fd within timeout_ms. */
static bool peer_closed(int fd, int timeout_ms) {
  uint8_t buf[256];
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  uint64_t end = uv_hrtime() / 1000000 + (uint64_t)timeout_ms;
  while (uv_hrtime() / 1000000 < end) {
    if (poll(&pfd, 1, 20) > 0) {
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) {
        return true;
      }
    }
  }
  return false;
}

static void *limit_thread(void *arg) {
  struct raw *r = arg;
  int a = raw_connect(r->port);
  int b = raw_connect(r->port);
  CHECK(!peer_closed(a, 200));
  CHECK(!peer_closed(b, 200));
  int c = raw_connect(r->port);
  CHECK(peer_closed(c, 2000)); /* over max_connections: closed at accept */
  close(c);
  close(a);
  usleep(100 * 1000);
  int d = raw_connect(r->port);
  static const char get[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  write_all(d, (const uint8_t *)get, sizeof get - 1);
  uint8_t buf[512];
  size_t n = read_some(d, buf, sizeof buf - 1, 2000);
  buf[n] = '\0';
  CHECK(strstr((const char *)buf, "200 OK") != NULL);
  close(b);
  close(d);
  printf("    ok: max_connections 2: the third connection closed at accept\n");
  uv_async_send(&r->env->async);
  return NULL;
}

static void test_max_connections(void) {
  struct env env;
  memset(&env, 0, sizeof env);
  CHECK_OK(uv_loop_init(&env.loop));
  struct grpc_server_options opts = {.max_connections = 2};
  CHECK_OK(grpc_server_init(&env.loop, &opts, &env.s));
  grpc_server_set_http_handler(env.s, http_handler, &env);
  CHECK_OK(grpc_server_listen(env.s, "127.0.0.1", 0, NULL));
  struct raw r = {0};
  run_client_thread(&env, limit_thread, &r);
  env_finish(&env);
}

/* ---- pure helpers ----------------------------------------------------------------------- */

static void test_helpers(void) {
  char out[64];
  CHECK_EQ_INT(grpc_percent_encode("a b%c\n\xc3\xa9~", 9, out, sizeof out), 17);
  CHECK(strcmp(out, "a b%25c%0A%C3%A9~") == 0);
  /* Never splits an escape. */
  CHECK_EQ_INT(grpc_percent_encode("ab\n", 3, out, 5), 2);
  CHECK(strcmp(out, "ab") == 0);

  uint64_t ms = 0;
  CHECK_OK(grpc_parse_timeout("1S", &ms));
  CHECK_EQ_INT(ms, 1000);
  CHECK_OK(grpc_parse_timeout("99999999H", &ms));
  CHECK_EQ_INT(ms, 99999999ull * 3600000ull);
  CHECK_OK(grpc_parse_timeout("1500u", &ms));
  CHECK_EQ_INT(ms, 2);
  CHECK_OK(grpc_parse_timeout("1n", &ms));
  CHECK_EQ_INT(ms, 1);
  CHECK_OK(grpc_parse_timeout("0m", &ms));
  CHECK_EQ_INT(ms, 0);
  CHECK_OK(grpc_parse_timeout("2M", &ms));
  CHECK_EQ_INT(ms, 120000);
  const char *bad[] = {"", "S", "123456789S", "1x", "1SS", "-1S", " 1S", "1 S", "1s"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_ERR(grpc_parse_timeout(bad[i], &ms), CAIRN_EINVAL);
  }

  CHECK(grpc_content_type_ok("application/grpc"));
  CHECK(grpc_content_type_ok("application/grpc+proto"));
  CHECK(grpc_content_type_ok("application/grpc;charset=utf-8"));
  CHECK(!grpc_content_type_ok("application/grpcx"));
  CHECK(!grpc_content_type_ok("application/json"));
  CHECK(!grpc_content_type_ok(NULL));
}

static void test_http1_parser(void) {
  struct http1_head h;
  const char *ok = "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
  long r = http1_parse_head((const uint8_t *)ok, strlen(ok), &h);
  CHECK_EQ_INT(r, (long)strlen(ok) - 3);
  CHECK(h.method_len == 3 && memcmp(h.method, "GET", 3) == 0);
  CHECK(h.target_len == 7 && memcmp(h.target, "/health", 7) == 0);
  CHECK_EQ_INT(h.content_length, 3);
  CHECK(h.keep_alive);
  CHECK_EQ_INT(h.n_headers, 2);
  /* Every prefix of a complete head is "need more". */
  for (size_t n = 0; n < (size_t)r; n++) {
    CHECK_EQ_INT(http1_parse_head((const uint8_t *)ok, n, &h), 0);
  }
  const char *lf = "POST /x HTTP/1.0\nConnection: keep-alive\n\n";
  CHECK_EQ_INT(http1_parse_head((const uint8_t *)lf, strlen(lf), &h), (long)strlen(lf));
  CHECK(h.keep_alive && h.minor_version == 0);
  const char *close10 = "GET / HTTP/1.0\r\n\r\n";
  CHECK(http1_parse_head((const uint8_t *)close10, strlen(close10), &h) > 0 && !h.keep_alive);
  const char *close11 = "GET / HTTP/1.1\r\nConnection: Upgrade, close\r\n\r\n";
  CHECK(http1_parse_head((const uint8_t *)close11, strlen(close11), &h) > 0 && !h.keep_alive);
  const char *te = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  CHECK(http1_parse_head((const uint8_t *)te, strlen(te), &h) > 0 && h.has_transfer_encoding);
  const char *bads[] = {
      "\r\n\r\n",
      "GET /\r\n\r\n",
      "GET / HTTP/2.0\r\n\r\n",
      "GET  / HTTP/1.1\r\n\r\n",
      "G(T / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
      "GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "GET / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\n",
      "GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
    CHECK_ERR((int)http1_parse_head((const uint8_t *)bads[i], strlen(bads[i]), &h), CAIRN_EINVAL);
  }
  /* Refused before the head is complete: what can never become a request
   * (the method as its bytes arrive, the request line once whole). */
  static const char *const early[] = {
      "\x16\x03\x01", /* a TLS ClientHello starts so */
      "\x01\x01\x01",  "G(",
      "GET\t",         "AAAAAAAAAAAAAAAAAAAA",
      "hello there\n", "GET / HTTP/2.0\r\nHost: x\r\n",
  };
  for (size_t i = 0; i < sizeof early / sizeof early[0]; i++) {
    CHECK_ERR((int)http1_parse_head((const uint8_t *)early[i], strlen(early[i]), &h), CAIRN_EINVAL);
  }
  CHECK_EQ_INT(http1_parse_head((const uint8_t *)"GET / HTTP/1.1\r\nHo", 18, &h), 0);
  /* Random bytes never crash the parser and never read past the end. */
  uint8_t buf[512];
  for (int round = 0; round < (test_small() ? 2000 : 20000); round++) {
    size_t n = (size_t)test_rand_below(sizeof buf);
    for (size_t i = 0; i < n; i++) {
      static const char alphabet[] = "GET /HTP1.\r\n: abc-Content-Length0123\t";
      buf[i] = test_rand_below(4) == 0 ? (uint8_t)test_rand()
                                       : (uint8_t)alphabet[test_rand_below(sizeof alphabet - 1)];
    }
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    r = http1_parse_head(copy, n, &h);
    CHECK(r <= (long)n);
    free(copy);
  }
}

static void test_unknown_text(void) {
  struct env env;
  env_init(&env, true);
  char buf[128];
  grpc_server_unknown_text(env.s, "/nosuch.Svc/X", buf, sizeof buf);
  CHECK(strcmp(buf, "unknown service nosuch.Svc") == 0);
  grpc_server_unknown_text(env.s, "/etcdserverpb.KV/Nope", buf, sizeof buf);
  CHECK(strcmp(buf, "unknown method Nope for service etcdserverpb.KV") == 0);
  grpc_server_unknown_text(env.s, "/test.Echo", buf, sizeof buf);
  CHECK(strcmp(buf, "malformed method name: \"/test.Echo\"") == 0);
  /* Shutdown of a server that never listened. */
  grpc_server_shutdown(env.s, 1000, on_closed_server, &env);
  CHECK(!env.server_closed);
  CHECK_OK(uv_run(&env.loop, UV_RUN_DEFAULT));
  env_finish(&env);
}

int main(void) {
  test_seed("test_wire_grpc");
  signal(SIGPIPE, SIG_IGN);
  TEST_RUN(test_helpers);
  TEST_RUN(test_http1_parser);
  TEST_RUN(test_unknown_text);
  TEST_RUN(test_raw_h2);
  TEST_RUN(test_max_connections);
  TEST_RUN(test_python_plain);
  TEST_RUN(test_python_tls);
  TEST_RUN(test_etcdctl);
  printf("test_wire_grpc: ok\n");
  return 0;
}
