/* tests/unit/test_wire_client.c: the gRPC client (wire/grpc_client.h)
 * against our own gRPC server (wire/grpc.h) on the same loop, against raw
 * TCP servers that misbehave, and against the real etcd when installed.
 *
 * The test service:
 *   /test.Echo/Say    unary: echoes; "fail:<code>:<text>" fails with that
 *                     status (trailers-only), "send-then-fail:<code>:<text>"
 *                     sends a message first, "sleep:<ms>" answers late,
 *                     "big:<n>" answers n bytes, "hdr:<name>" answers that
 *                     request header, "none" answers no message, "two" two
 *   /test.Echo/Count  server stream: "<n> <size>" sends n numbered messages
 *                     of size bytes through the send-queue bound
 *   /test.Echo/Chat   bidi: echoes each message, OK on half-close
 *   /test.Echo/Hang   unary: never answers
 * Each test runs the loop until the calls it started are done, with a
 * watchdog alarm. */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <uv.h>

#include "rpc.pb-c.h"
#include "test.h"
#include "test_net.h"
#include "wire/grpc.h"
#include "wire/grpc_client.h"
#include "wire/grpc_client_int.h"

#define WATCHDOG_S 120

/* ---- the loop, the server, the service ---------------------------------------------- */

struct env {
  uv_loop_t loop;
  grpc_server *s;
  bool server_closed;
  int port;
  int say_closes, count_closes, chat_closes, hang_closes;
  int live; /* service calls between their first callback and on_close */
};

static struct env *g_env;

struct svc_call {
  uv_timer_t *timer;
  uint64_t remaining, next;
  size_t size;
};

static void timer_free_cb(uv_handle_t *h) {
  free(h);
}

static struct svc_call *svc_of(grpc_call *call) {
  struct svc_call *sc = grpc_call_user(call);
  if (!sc) {
    sc = calloc(1, sizeof *sc);
    CHECK(sc != NULL);
    grpc_call_set_user(call, sc);
    g_env->live++;
  }
  return sc;
}

static void svc_release(grpc_call *call) {
  struct svc_call *sc = grpc_call_user(call);
  if (!sc) {
    return;
  }
  if (sc->timer) {
    uv_timer_stop(sc->timer);
    uv_close((uv_handle_t *)sc->timer, timer_free_cb);
  }
  free(sc);
  grpc_call_set_user(call, NULL);
  g_env->live--;
}

static void sleep_done(uv_timer_t *t) {
  grpc_call *call = t->data;
  struct svc_call *sc = grpc_call_user(call);
  uv_close((uv_handle_t *)t, timer_free_cb);
  sc->timer = NULL;
  grpc_call_send(call, (const uint8_t *)"slept", 5);
  grpc_call_finish(call, GRPC_OK, NULL);
}

static void say_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)ctx;
  struct svc_call *sc = svc_of(call);
  char text[256];
  size_t tl = len < sizeof text - 1 ? len : sizeof text - 1;
  memcpy(text, msg, tl);
  text[tl] = '\0';
  int code = 0, off = 0;
  unsigned long n = 0;
  if (sscanf(text, "fail:%d:%n", &code, &off) == 1 && off > 0) {
    CHECK_OK(grpc_call_finish(call, code, text + off));
  } else if (sscanf(text, "send-then-fail:%d:%n", &code, &off) == 1 && off > 0) {
    CHECK_OK(grpc_call_send(call, (const uint8_t *)"partial", 7));
    CHECK_OK(grpc_call_finish(call, code, text + off));
  } else if (sscanf(text, "sleep:%lu", &n) == 1) {
    sc->timer = malloc(sizeof *sc->timer);
    CHECK(sc->timer != NULL);
    uv_timer_init(&g_env->loop, sc->timer);
    sc->timer->data = call;
    uv_timer_start(sc->timer, sleep_done, n, 0);
  } else if (sscanf(text, "big:%lu", &n) == 1) {
    uint8_t *b = malloc(n);
    CHECK(b != NULL);
    memset(b, 'b', n);
    CHECK_OK(grpc_call_send(call, b, n));
    free(b);
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
  } else if (strncmp(text, "hdr:", 4) == 0) {
    const char *v = grpc_call_header(call, text + 4);
    v = v ? v : "(none)";
    CHECK_OK(grpc_call_send(call, (const uint8_t *)v, strlen(v)));
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
  } else if (strcmp(text, "none") == 0) {
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
  } else if (strcmp(text, "two") == 0) {
    CHECK_OK(grpc_call_send(call, (const uint8_t *)"1", 1));
    CHECK_OK(grpc_call_send(call, (const uint8_t *)"2", 1));
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
  } else {
    CHECK_OK(grpc_call_send(call, msg, len));
    CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
  }
}

static void say_close(grpc_call *call, void *ctx) {
  (void)ctx;
  g_env->say_closes++;
  svc_release(call);
}

/* Message i of a stream: 8 bytes of i, then bytes (i + k) & 0xff. */
static void fill_numbered(uint8_t *b, size_t size, uint64_t i) {
  for (size_t k = 0; k < size; k++) {
    b[k] = (uint8_t)(i + k);
  }
  if (size >= 8) {
    memcpy(b, &i, 8);
  }
}

static void count_pump(grpc_call *call, void *data) {
  struct svc_call *sc = data;
  uint8_t *buf = malloc(sc->size ? sc->size : 1);
  CHECK(buf != NULL);
  /* Bounded by the send queue: it refuses once full. */
  while (sc->remaining > 0) {
    fill_numbered(buf, sc->size, sc->next);
    int rc = grpc_call_send(call, buf, sc->size);
    if (rc == CAIRN_EBUSY) {
      grpc_call_on_writable(call, count_pump, sc);
      free(buf);
      return;
    }
    if (rc == CAIRN_ESTOPPED) {
      free(buf);
      return; /* cancelled */
    }
    CHECK_OK(rc);
    sc->remaining--;
    sc->next++;
  }
  free(buf);
  CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
}

static void count_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)ctx;
  struct svc_call *sc = svc_of(call);
  char text[64];
  size_t tl = len < sizeof text - 1 ? len : sizeof text - 1;
  memcpy(text, msg, tl);
  text[tl] = '\0';
  unsigned long n = 0, size = 0;
  CHECK(sscanf(text, "%lu %lu", &n, &size) == 2);
  sc->remaining = n;
  sc->size = size;
  grpc_call_on_writable(call, count_pump, sc);
}

static void count_close(grpc_call *call, void *ctx) {
  (void)ctx;
  g_env->count_closes++;
  svc_release(call);
}

static void chat_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)ctx;
  svc_of(call);
  int rc = grpc_call_send(call, msg, len);
  CHECK(rc == 0 || rc == CAIRN_EBUSY);
  if (rc == CAIRN_EBUSY) {
    CHECK_OK(grpc_call_finish(call, GRPC_RESOURCE_EXHAUSTED, "slow reader"));
  }
}

static void chat_half_close(grpc_call *call, void *ctx) {
  (void)ctx;
  CHECK_OK(grpc_call_finish(call, GRPC_OK, NULL));
}

static void chat_close(grpc_call *call, void *ctx) {
  (void)ctx;
  g_env->chat_closes++;
  svc_release(call);
}

static void hang_msg(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)msg;
  (void)len;
  (void)ctx;
  svc_of(call);
}

static void hang_close(grpc_call *call, void *ctx) {
  (void)ctx;
  g_env->hang_closes++;
  svc_release(call);
}

static void server_start(struct env *env, int port, const struct grpc_tls_options *tls) {
  struct grpc_server_options opts = {.max_recv_message_bytes = 16u << 20};
  CHECK_OK(grpc_server_init(&env->loop, &opts, &env->s));
  struct grpc_method methods[] = {
      {"/test.Echo/Say", GRPC_METHOD_UNARY, say_msg, NULL, say_close, env},
      {"/test.Echo/Count", GRPC_METHOD_SERVER_STREAM, count_msg, NULL, count_close, env},
      {"/test.Echo/Chat", GRPC_METHOD_BIDI_STREAM, chat_msg, chat_half_close, chat_close, env},
      {"/test.Echo/Hang", GRPC_METHOD_UNARY, hang_msg, NULL, hang_close, env},
  };
  CHECK_OK(grpc_server_register(env->s, methods, 4));
  CHECK_OK(grpc_server_listen(env->s, "127.0.0.1", port, tls));
  env->port = grpc_server_port(env->s);
  env->server_closed = false;
}

static void on_server_closed(void *data) {
  struct env *env = data;
  env->server_closed = true;
  env->s = NULL;
}

/* Runs the loop until *flag (the loop must have something to wait for). */
static void run_until(struct env *env, const bool *flag) {
  while (!*flag) {
    int alive = uv_run(&env->loop, UV_RUN_ONCE);
    if (!alive && !*flag) {
      fprintf(stderr, "the loop has nothing left to run\n");
      CHECK(0);
    }
  }
}

static void sleep_fired(uv_timer_t *t) {
  *(bool *)t->data = true;
}

/* Closes a handle that lives on the stack and lets its close complete. */
static void close_now(struct env *env, uv_handle_t *h) {
  uv_close(h, NULL);
  uv_run(&env->loop, UV_RUN_NOWAIT);
}

static void sleep_ms(struct env *env, uint64_t ms) {
  uv_timer_t t;
  bool fired = false;
  uv_timer_init(&env->loop, &t);
  t.data = &fired;
  uv_timer_start(&t, sleep_fired, ms, 0);
  run_until(env, &fired);
  close_now(env, (uv_handle_t *)&t);
}

static void server_stop(struct env *env) {
  grpc_server_shutdown(env->s, 2000, on_server_closed, env);
  run_until(env, &env->server_closed);
}

static void env_init(struct env *env, bool with_server) {
  memset(env, 0, sizeof *env);
  g_env = env;
  CHECK_OK(uv_loop_init(&env->loop));
  if (with_server) {
    server_start(env, 0, NULL);
  }
  alarm(WATCHDOG_S);
}

static void env_finish(struct env *env) {
  if (env->s) {
    server_stop(env);
  }
  uv_run(&env->loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(env->live, 0);
  CHECK_OK(uv_loop_close(&env->loop));
  alarm(0);
}

/* ---- client helpers -------------------------------------------------------------------- */

static bool in_api; /* set around API calls: no callback may run inside */

struct result {
  bool done;
  int status;
  char message[GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX + 1];
  uint8_t *resp;
  size_t len;
};

static void result_cb(void *data, int status, const char *message, const uint8_t *resp,
                      size_t len) {
  struct result *r = data;
  CHECK(!in_api);
  CHECK(!r->done);
  CHECK(message != NULL);
  r->done = true;
  r->status = status;
  snprintf(r->message, sizeof r->message, "%s", message);
  r->len = len;
  r->resp = malloc(len ? len : 1);
  CHECK(r->resp != NULL);
  if (len) {
    memcpy(r->resp, resp, len);
  }
}

static void result_free(struct result *r) {
  free(r->resp);
  memset(r, 0, sizeof *r);
}

static void unary_start(grpc_client *cl, const char *path, const char *req, size_t len,
                        uint64_t timeout_ms, struct result *r) {
  memset(r, 0, sizeof *r);
  in_api = true;
  CHECK_OK(grpc_client_unary(cl, path, NULL, 0, timeout_ms, (const uint8_t *)req, len, NULL,
                             result_cb, r));
  in_api = false;
}

static void unary(struct env *env, grpc_client *cl, const char *path, const char *req,
                  uint64_t timeout_ms, struct result *r) {
  unary_start(cl, path, req, strlen(req), timeout_ms, r);
  run_until(env, &r->done);
}

static void on_client_closed(void *data) {
  CHECK(!in_api);
  *(bool *)data = true;
}

static void client_close(struct env *env, grpc_client *cl) {
  bool closed = false;
  in_api = true;
  grpc_client_close(cl, on_client_closed, &closed);
  in_api = false;
  run_until(env, &closed);
}

static grpc_client *client_new(struct env *env, const char *endpoint,
                               const struct grpc_client_options *o) {
  grpc_client *cl = NULL;
  CHECK_OK(grpc_client_new(&env->loop, endpoint, o, &cl));
  return cl;
}

static grpc_client *client_plain(struct env *env) {
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", env->port);
  return client_new(env, ep, NULL);
}

/* ---- helpers and argument checks ------------------------------------------------------ */

static void test_helpers(void) {
  char out[64];
  CHECK_EQ_INT(gc_percent_decode("a%20b%zz%4", 10, out, sizeof out), 8);
  CHECK(strcmp(out, "a b%zz%4") == 0);
  gc_percent_decode("%C3%A9%25%0D%0a", 15, out, sizeof out);
  CHECK(strcmp(out, "\xc3\xa9%\r\n") == 0);
  CHECK_EQ_INT(gc_percent_decode("abcdef", 6, out, 4), 3);
  gc_format_timeout(1500, out, sizeof out);
  CHECK(strcmp(out, "1500m") == 0);
  gc_format_timeout(100000000ull, out, sizeof out);
  CHECK(strcmp(out, "100000S") == 0);
  CHECK_EQ_INT(gc_http_status_to_grpc(404), GRPC_UNIMPLEMENTED);
  CHECK_EQ_INT(gc_http_status_to_grpc(503), GRPC_UNAVAILABLE);
  CHECK_EQ_INT(gc_http_status_to_grpc(500), GRPC_UNKNOWN);
  CHECK_EQ_INT(gc_h2_error_to_grpc(NGHTTP2_CANCEL), GRPC_CANCELLED);
  CHECK(strcmp(gc_h2_error_name(NGHTTP2_REFUSED_STREAM), "REFUSED_STREAM") == 0);

  char *h = NULL, *p = NULL;
  bool tls = true;
  CHECK_OK(gc_parse_endpoint("127.0.0.1:2379", &h, &p, &tls));
  CHECK(strcmp(h, "127.0.0.1") == 0 && strcmp(p, "2379") == 0 && !tls);
  free(h);
  free(p);
  CHECK_OK(gc_parse_endpoint("https://[::1]:23/", &h, &p, &tls));
  CHECK(strcmp(h, "::1") == 0 && strcmp(p, "23") == 0 && tls);
  free(h);
  free(p);
  CHECK_OK(gc_parse_endpoint("http://example.com", &h, &p, &tls));
  CHECK(strcmp(h, "example.com") == 0 && strcmp(p, "80") == 0 && !tls);
  free(h);
  free(p);
  const char *bad[] = {"",        "host",           "::1:2379",     "unix:///tmp/s", "h:0",
                       "h:65536", "h:12a",          "http://h:1/x", "[::1",          ":2379",
                       "[]:1",    "https://[::1]x", "http://"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    CHECK_ERR(gc_parse_endpoint(bad[i], &h, &p, &tls), CAIRN_EINVAL);
  }
}

static void test_api_errors(void) {
  struct env env;
  env_init(&env, false);
  grpc_client *cl = NULL;
  CHECK_ERR(grpc_client_new(&env.loop, "nonsense", NULL, &cl), CAIRN_EINVAL);
  struct grpc_client_options o = {.ca_file = "/nonexistent"};
  CHECK_ERR(grpc_client_new(&env.loop, "http://127.0.0.1:1", &o, &cl), CAIRN_EINVAL);
  CHECK_ERR(grpc_client_new(&env.loop, "https://127.0.0.1:1", &o, &cl), CAIRN_EINVAL);
  struct grpc_client_options key_only = {.key_file = "/nonexistent"};
  CHECK_ERR(grpc_client_new(&env.loop, "https://127.0.0.1:1", &key_only, &cl), CAIRN_EINVAL);

  cl = client_new(&env, "127.0.0.1:1", NULL);
  CHECK(strcmp(grpc_client_endpoint(cl), "127.0.0.1:1") == 0);
  struct grpc_client_handlers h = {NULL, NULL};
  grpc_ccall *call = NULL;
  CHECK_ERR(grpc_client_call(cl, "/a/b", NULL, 0, 0, &h, NULL, &call), CAIRN_EINVAL);
  struct result r;
  const char *paths[] = {"a/b", "/a", "/a/", "//"};
  for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
    CHECK_ERR(grpc_client_unary(cl, paths[i], NULL, 0, 0, NULL, 0, NULL, result_cb, &r),
              CAIRN_EINVAL);
  }
  struct grpc_metadata bad_md[] = {{"Upper", "x"},     {":path", "x"}, {"te", "x"},
                                   {"x-ok", "a\r\nb"}, {"", "x"},      {"user-agent", "x"}};
  for (size_t i = 0; i < sizeof bad_md / sizeof bad_md[0]; i++) {
    CHECK_ERR(grpc_client_unary(cl, "/a/b", &bad_md[i], 1, 0, NULL, 0, NULL, result_cb, &r),
              CAIRN_EINVAL);
  }
  char *big = malloc(20000);
  CHECK(big != NULL);
  memset(big, 'v', 19999);
  big[19999] = '\0';
  struct grpc_metadata big_md = {"x-big", big};
  CHECK_ERR(grpc_client_unary(cl, "/a/b", &big_md, 1, 0, NULL, 0, NULL, result_cb, &r),
            CAIRN_EINVAL);
  free(big);
  /* Nothing was started: closing needs no loop turn for calls. */
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.calls_total, 0);
  CHECK_EQ_INT(st.connections_opened, 0);
  bool closed = false;
  grpc_client_close(cl, on_client_closed, &closed);
  CHECK(!closed); /* from the loop, not inside */
  run_until(&env, &closed);
  env_finish(&env);
}

/* ---- unary ----------------------------------------------------------------------------- */

static void test_unary(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  struct result r;

  unary(&env, cl, "/test.Echo/Say", "hello", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  CHECK(r.len == 5 && memcmp(r.resp, "hello", 5) == 0);
  result_free(&r);

  /* Empty request, empty response. */
  unary_start(cl, "/test.Echo/Say", "", 0, 0, &r);
  run_until(&env, &r.done);
  CHECK_EQ_INT(r.status, GRPC_OK);
  CHECK_EQ_INT(r.len, 0);
  result_free(&r);

  /* What the server sees. */
  char want[64];
  snprintf(want, sizeof want, "127.0.0.1:%d", env.port);
  const char *checks[][2] = {{"hdr::authority", want}, {"hdr:user-agent", "cairn-grpc-client/0.1"},
                             {"hdr:te", "trailers"},   {"hdr:content-type", "application/grpc"},
                             {"hdr::scheme", "http"},  {"hdr:grpc-timeout", "(none)"}};
  for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
    unary(&env, cl, "/test.Echo/Say", checks[i][0], 0, &r);
    CHECK_EQ_INT(r.status, GRPC_OK);
    if (r.len != strlen(checks[i][1]) || memcmp(r.resp, checks[i][1], r.len) != 0) {
      fprintf(stderr, "%s: got %.*s\n", checks[i][0], (int)r.len, (const char *)r.resp);
      CHECK(0);
    }
    result_free(&r);
  }
  unary(&env, cl, "/test.Echo/Say", "hdr:grpc-timeout", 5000, &r);
  CHECK(r.len >= 2 && r.resp[r.len - 1] == 'm');
  result_free(&r);

  /* Metadata. */
  struct grpc_metadata md[] = {{"x-token", "abc"}, {"client-api-version", "3.4"}};
  memset(&r, 0, sizeof r);
  CHECK_OK(grpc_client_unary(cl, "/test.Echo/Say", md, 2, 0, (const uint8_t *)"hdr:x-token", 11,
                             NULL, result_cb, &r));
  run_until(&env, &r.done);
  CHECK(r.len == 3 && memcmp(r.resp, "abc", 3) == 0);
  result_free(&r);

  /* Multi-MiB each way (the server takes up to 16 MiB). */
  size_t sizes[] = {3u << 20, test_small() ? 5u << 20 : 12u << 20};
  for (size_t i = 0; i < 2; i++) {
    char *big = malloc(sizes[i]);
    CHECK(big != NULL);
    for (size_t k = 0; k < sizes[i]; k++) {
      big[k] = (char)('a' + k % 23);
    }
    unary_start(cl, "/test.Echo/Say", big, sizes[i], 0, &r);
    run_until(&env, &r.done);
    CHECK_EQ_INT(r.status, GRPC_OK);
    CHECK(r.len == sizes[i] && memcmp(r.resp, big, sizes[i]) == 0);
    result_free(&r);
    free(big);
  }

  /* Cardinality. */
  unary(&env, cl, "/test.Echo/Say", "none", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_INTERNAL);
  CHECK(strstr(r.message, "no response message") != NULL);
  result_free(&r);
  unary(&env, cl, "/test.Echo/Say", "two", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_INTERNAL);
  CHECK(strstr(r.message, "cardinality violation") != NULL);
  result_free(&r);

  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 1);
  CHECK_EQ_INT(st.calls_open, 0);
  client_close(&env, cl);

  /* A name: resolved, and every address tried (::1 may come first). */
  char ep[64];
  snprintf(ep, sizeof ep, "http://localhost:%d", env.port);
  cl = client_new(&env, ep, NULL);
  unary(&env, cl, "/test.Echo/Say", "by name", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  result_free(&r);
  client_close(&env, cl);
  env_finish(&env);
}

static void test_max_recv(void) {
  struct env env;
  env_init(&env, true);
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", env.port);
  struct grpc_client_options o = {.max_recv_message_bytes = 1u << 20};
  grpc_client *cl = client_new(&env, ep, &o);
  struct result r;
  unary(&env, cl, "/test.Echo/Say", "big:2000000", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_RESOURCE_EXHAUSTED);
  CHECK(strcmp(r.message, "grpc: received message larger than max (2000000 vs. 1048576)") == 0);
  result_free(&r);
  /* The connection goes on. */
  unary(&env, cl, "/test.Echo/Say", "big:1048576", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  CHECK_EQ_INT(r.len, 1048576);
  result_free(&r);
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- many calls at once -------------------------------------------------------------- */

static void test_concurrent(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  size_t n = test_small() ? 300 : 2000;
  struct result *rs = calloc(n, sizeof *rs);
  char(*reqs)[32] = calloc(n, sizeof *reqs);
  CHECK(rs && reqs);
  for (size_t i = 0; i < n; i++) {
    snprintf(reqs[i], sizeof reqs[i], i % 10 == 0 ? "sleep:%zu" : "req-%zu", i % 50);
    unary_start(cl, "/test.Echo/Say", reqs[i], strlen(reqs[i]), 0, &rs[i]);
  }
  for (size_t i = 0; i < n; i++) {
    run_until(&env, &rs[i].done);
  }
  for (size_t i = 0; i < n; i++) {
    CHECK_EQ_INT(rs[i].status, GRPC_OK);
    if (i % 10 == 0) {
      CHECK(rs[i].len == 5 && memcmp(rs[i].resp, "slept", 5) == 0);
    } else {
      CHECK(rs[i].len == strlen(reqs[i]) && memcmp(rs[i].resp, reqs[i], rs[i].len) == 0);
    }
    result_free(&rs[i]);
  }
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 1); /* all on one connection */
  CHECK_EQ_INT(st.calls_total, n);
  free(rs);
  free(reqs);
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- server stream with pause and resume ------------------------------------------------ */

struct stream_state {
  struct env *env;
  grpc_ccall *call;
  uint64_t got, bytes;
  size_t size;
  size_t max_buffered;
  unsigned pauses;
  bool paused;
  uv_timer_t timer;
  bool done;
  int status;
  char message[256];
  unsigned cancel_after; /* 0: never */
};

static void resume_cb(uv_timer_t *t) {
  struct stream_state *ss = t->data;
  ss->paused = false;
  in_api = true;
  grpc_ccall_pause_recv(ss->call, false);
  in_api = false;
}

static void stream_msg(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  struct stream_state *ss = data;
  CHECK(!in_api);
  CHECK(!ss->paused);
  CHECK_EQ_INT(len, ss->size);
  uint64_t idx = 0;
  memcpy(&idx, msg, 8);
  CHECK_EQ_INT(idx, ss->got);
  CHECK_EQ_INT(msg[len - 1], (uint8_t)(idx + len - 1));
  ss->got++;
  ss->bytes += len;
  size_t buffered = grpc_ccall_recv_buffered(call);
  if (buffered > ss->max_buffered) {
    ss->max_buffered = buffered;
  }
  if (ss->cancel_after && ss->got == ss->cancel_after) {
    in_api = true;
    grpc_ccall_cancel(call);
    in_api = false;
    return;
  }
  /* Like a consumer that writes each batch to disk asynchronously. */
  if (ss->got % 64 == 0) {
    ss->paused = true;
    ss->pauses++;
    grpc_ccall_pause_recv(call, true);
    uv_timer_start(&ss->timer, resume_cb, 1, 0);
  }
}

static void stream_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  struct stream_state *ss = data;
  CHECK(!in_api);
  /* The server's end waits for the resume, like its messages. */
  CHECK(status != GRPC_OK || !ss->paused);
  ss->done = true;
  ss->status = status;
  snprintf(ss->message, sizeof ss->message, "%s", message);
  uv_timer_stop(&ss->timer);
}

static void run_stream(struct env *env, grpc_client *cl, uint64_t n, size_t size,
                       struct stream_state *ss) {
  memset(ss, 0, sizeof *ss);
  ss->env = env;
  ss->size = size;
  uv_timer_init(&env->loop, &ss->timer);
  ss->timer.data = ss;
  struct grpc_client_handlers h = {stream_msg, stream_done};
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Count", NULL, 0, 0, &h, ss, &ss->call));
  char req[64];
  int w = snprintf(req, sizeof req, "%" PRIu64 " %zu", n, size);
  CHECK_OK(grpc_ccall_send(ss->call, (const uint8_t *)req, (size_t)w));
  CHECK_OK(grpc_ccall_close_send(ss->call));
  CHECK_OK(grpc_ccall_close_send(ss->call)); /* a second time does nothing */
  CHECK_ERR(grpc_ccall_send(ss->call, (const uint8_t *)"x", 1), CAIRN_ESTOPPED);
  run_until(env, &ss->done);
  close_now(env, (uv_handle_t *)&ss->timer);
}

static void test_server_stream(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  size_t size = 64 * 1024;
  uint64_t total = test_small() ? (24u << 20) : (200u << 20);
  uint64_t n = total / size;
  struct stream_state ss;
  uint64_t t0 = uv_hrtime();
  run_stream(&env, cl, n, size, &ss);
  double secs = (double)(uv_hrtime() - t0) / 1e9;
  CHECK_EQ_INT(ss.status, GRPC_OK);
  CHECK_EQ_INT(ss.got, n);
  CHECK_EQ_INT(ss.bytes, total);
  CHECK(ss.pauses >= n / 64 - 1);
  /* The bound: the stream window of raw bytes, plus one message. */
  CHECK(ss.max_buffered <= GRPC_CLIENT_DEFAULT_STREAM_WINDOW + size + 5);
  printf("    %" PRIu64 " MiB in %.2f s (%.0f MiB/s), %u pauses, at most %zu bytes buffered\n",
         total >> 20, secs, (double)(total >> 20) / secs, ss.pauses, ss.max_buffered);

  /* A small window: the server is held back while we are paused. */
  client_close(&env, cl);
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", env.port);
  struct grpc_client_options o = {.stream_window_bytes = 256 * 1024,
                                  .conn_window_bytes = 256 * 1024};
  cl = client_new(&env, ep, &o);
  run_stream(&env, cl, 2000, 8192, &ss);
  CHECK_EQ_INT(ss.status, GRPC_OK);
  CHECK_EQ_INT(ss.got, 2000);
  CHECK(ss.max_buffered <= 256 * 1024 + 8192 + 5);

  /* Cancel from inside on_message. */
  memset(&ss, 0, sizeof ss);
  ss.size = 1000;
  ss.cancel_after = 10;
  uv_timer_init(&env.loop, &ss.timer);
  ss.timer.data = &ss;
  struct grpc_client_handlers h = {stream_msg, stream_done};
  int before = env.count_closes;
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Count", NULL, 0, 0, &h, &ss, &ss.call));
  CHECK_OK(grpc_ccall_send(ss.call, (const uint8_t *)"1000000 1000", 12));
  CHECK_OK(grpc_ccall_close_send(ss.call));
  run_until(&env, &ss.done);
  close_now(&env, (uv_handle_t *)&ss.timer);
  CHECK_EQ_INT(ss.status, GRPC_CANCELLED);
  CHECK(strcmp(ss.message, GRPC_CLIENT_CANCELLED_TEXT) == 0);
  CHECK_EQ_INT(ss.got, 10); /* nothing after the cancel */
  /* The server hears of it. */
  while (env.count_closes == before || env.live > 0) {
    uv_run(&env.loop, UV_RUN_ONCE);
  }
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- bidi ----------------------------------------------------------------------------------- */

struct bidi_state {
  grpc_ccall *call;
  unsigned n, sent, got;
  size_t *sizes;
  unsigned ebusy;
  bool done;
  int status;
};

static void bidi_fill(uint8_t *b, size_t len, unsigned i) {
  for (size_t k = 0; k < len; k++) {
    b[k] = (uint8_t)(i * 7 + k);
  }
}

static void bidi_pump(grpc_ccall *call, void *data) {
  struct bidi_state *bs = data;
  CHECK(!in_api);
  uint8_t *buf = malloc(70000);
  CHECK(buf != NULL);
  /* Bounded by the send queue. */
  while (bs->sent < bs->n) {
    size_t len = bs->sizes[bs->sent];
    bidi_fill(buf, len, bs->sent);
    int rc = grpc_ccall_send(call, buf, len);
    if (rc == CAIRN_EBUSY) {
      bs->ebusy++;
      grpc_ccall_on_writable(call, bidi_pump, bs);
      free(buf);
      return;
    }
    CHECK_OK(rc);
    bs->sent++;
  }
  free(buf);
  CHECK_OK(grpc_ccall_close_send(call));
}

static void bidi_msg(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)call;
  struct bidi_state *bs = data;
  CHECK(bs->got < bs->sent);
  CHECK_EQ_INT(len, bs->sizes[bs->got]);
  uint8_t *want = malloc(len ? len : 1);
  CHECK(want != NULL);
  bidi_fill(want, len, bs->got);
  CHECK(memcmp(msg, want, len) == 0);
  free(want);
  bs->got++;
}

static void bidi_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  (void)message;
  struct bidi_state *bs = data;
  bs->done = true;
  bs->status = status;
}

static void test_bidi(void) {
  struct env env;
  env_init(&env, true);
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", env.port);
  /* A small send queue, so that the producer meets its bound. */
  struct grpc_client_options o = {.max_send_queue_bytes = 256 * 1024};
  grpc_client *cl = client_new(&env, ep, &o);
  struct bidi_state bs = {0};
  bs.n = test_small() ? 500 : 3000;
  bs.sizes = calloc(bs.n, sizeof *bs.sizes);
  CHECK(bs.sizes != NULL);
  for (unsigned i = 0; i < bs.n; i++) {
    bs.sizes[i] = i % 100 == 0 ? 0 : (size_t)test_rand_below(65536);
  }
  struct grpc_client_handlers h = {bidi_msg, bidi_done};
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Chat", NULL, 0, 0, &h, &bs, &bs.call));
  in_api = true;
  grpc_ccall_on_writable(bs.call, bidi_pump, &bs);
  in_api = false;
  run_until(&env, &bs.done);
  CHECK_EQ_INT(bs.status, GRPC_OK);
  CHECK_EQ_INT(bs.got, bs.n);
  CHECK(bs.ebusy > 0);
  free(bs.sizes);
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- statuses ------------------------------------------------------------------------------- */

struct collect {
  bool done;
  int status;
  char message[GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX + 1];
  unsigned n_msgs;
  char first[64];
};

static void collect_msg(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)call;
  struct collect *c = data;
  CHECK(!in_api);
  if (c->n_msgs++ == 0) {
    snprintf(c->first, sizeof c->first, "%.*s", (int)len, (const char *)msg);
  }
}

static void collect_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  struct collect *c = data;
  CHECK(!in_api);
  CHECK(!c->done);
  c->done = true;
  c->status = status;
  snprintf(c->message, sizeof c->message, "%s", message);
}

static void test_statuses(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  struct result r;

  /* Trailers-only, with a text that needs percent-encoding. */
  const char *text = "bad \xc3\xa9 100% \r\n done";
  char req[128];
  snprintf(req, sizeof req, "fail:5:%s", text);
  unary(&env, cl, "/test.Echo/Say", req, 0, &r);
  CHECK_EQ_INT(r.status, GRPC_NOT_FOUND);
  CHECK(strcmp(r.message, text) == 0);
  CHECK_EQ_INT(r.len, 0);
  result_free(&r);

  /* An error after a message: the message arrives, then the status. */
  struct collect c = {0};
  struct grpc_client_handlers h = {collect_msg, collect_done};
  grpc_ccall *call = NULL;
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Say", NULL, 0, 0, &h, &c, &call));
  const char *m = "send-then-fail:9:etcdserver: not leader";
  CHECK_OK(grpc_ccall_send(call, (const uint8_t *)m, strlen(m)));
  CHECK_OK(grpc_ccall_close_send(call));
  run_until(&env, &c.done);
  CHECK_EQ_INT(c.status, GRPC_FAILED_PRECONDITION);
  CHECK(strcmp(c.message, "etcdserver: not leader") == 0);
  CHECK_EQ_INT(c.n_msgs, 1);
  CHECK(strcmp(c.first, "partial") == 0);

  /* The server's own answers. */
  unary(&env, cl, "/test.Echo/Nope", "x", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_UNIMPLEMENTED);
  CHECK(strcmp(r.message, "unknown method Nope for service test.Echo") == 0);
  result_free(&r);
  unary(&env, cl, "/nosuch.Svc/X", "x", 0, &r);
  CHECK_EQ_INT(r.status, GRPC_UNIMPLEMENTED);
  CHECK(strcmp(r.message, "unknown service nosuch.Svc") == 0);
  result_free(&r);
  /* A unary method given no message: the server answers INTERNAL. */
  memset(&c, 0, sizeof c);
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Say", NULL, 0, 0, &h, &c, &call));
  CHECK_OK(grpc_ccall_close_send(call));
  run_until(&env, &c.done);
  CHECK_EQ_INT(c.status, GRPC_INTERNAL);
  /* Every code goes through. */
  for (int code = 1; code <= 16; code++) {
    snprintf(req, sizeof req, "fail:%d:code %d", code, code);
    unary(&env, cl, "/test.Echo/Say", req, 0, &r);
    CHECK_EQ_INT(r.status, code);
    char want[32];
    snprintf(want, sizeof want, "code %d", code);
    CHECK(strcmp(r.message, want) == 0);
    result_free(&r);
  }
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- deadline, cancel, close ---------------------------------------------------------------- */

static void cancel_timer_cb(uv_timer_t *t) {
  in_api = true;
  grpc_ccall_cancel(t->data);
  grpc_ccall_cancel(t->data); /* twice: nothing more */
  in_api = false;
  uv_close((uv_handle_t *)t, NULL);
}

static void test_deadline_cancel_close(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  struct result r;

  uint64_t t0 = uv_now(&env.loop);
  unary(&env, cl, "/test.Echo/Say", "sleep:3000", 100, &r);
  CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
  CHECK(strcmp(r.message, "context deadline exceeded") == 0 ||
        strcmp(r.message, "Deadline Exceeded") == 0); /* the server's, if it came first */
  CHECK(uv_now(&env.loop) - t0 < 2000);
  result_free(&r);

  /* Cancel: CANCELLED from the loop; the server hears of it. */
  struct collect c = {0};
  struct grpc_client_handlers h = {collect_msg, collect_done};
  grpc_ccall *call = NULL;
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Hang", NULL, 0, 0, &h, &c, &call));
  CHECK_OK(grpc_ccall_send(call, (const uint8_t *)"x", 1));
  CHECK_OK(grpc_ccall_close_send(call));
  uv_timer_t t;
  uv_timer_init(&env.loop, &t);
  t.data = call;
  uv_timer_start(&t, cancel_timer_cb, 50, 0);
  run_until(&env, &c.done);
  CHECK_EQ_INT(c.status, GRPC_CANCELLED);
  CHECK(strcmp(c.message, "context canceled") == 0);
  while (env.hang_closes == 0) {
    uv_run(&env.loop, UV_RUN_ONCE);
  }
  /* Cancel right after the start, before the connection is even used. */
  memset(&c, 0, sizeof c);
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Say", NULL, 0, 0, &h, &c, &call));
  in_api = true;
  grpc_ccall_cancel(call);
  in_api = false;
  CHECK(!c.done);
  run_until(&env, &c.done);
  CHECK_EQ_INT(c.status, GRPC_CANCELLED);

  /* Close with calls in flight: each gets CANCELLED, then closed_cb. */
  struct collect cs[5];
  memset(cs, 0, sizeof cs);
  for (int i = 0; i < 5; i++) {
    /* Unary calls the server holds, and bidi streams left open. */
    const char *path = i % 2 ? "/test.Echo/Hang" : "/test.Echo/Chat";
    CHECK_OK(grpc_client_call(cl, path, NULL, 0, 0, &h, &cs[i], &call));
    CHECK_OK(grpc_ccall_send(call, (const uint8_t *)"x", 1));
    if (i % 2) {
      CHECK_OK(grpc_ccall_close_send(call));
    }
  }
  while (env.live < 5) {
    uv_run(&env.loop, UV_RUN_ONCE); /* the server has them */
  }
  struct collect late = {0};
  CHECK_OK(grpc_client_call(cl, "/test.Echo/Hang", NULL, 0, 0, &h, &late, &call));
  bool closed = false;
  in_api = true;
  grpc_client_close(cl, on_client_closed, &closed);
  CHECK_ERR(grpc_client_call(cl, "/test.Echo/Say", NULL, 0, 0, &h, &c, &call), CAIRN_ESTOPPED);
  in_api = false;
  run_until(&env, &closed);
  for (int i = 0; i < 5; i++) {
    CHECK(cs[i].done);
    CHECK_EQ_INT(cs[i].status, GRPC_CANCELLED);
    CHECK(strcmp(cs[i].message, GRPC_CLIENT_CLOSING_TEXT) == 0);
  }
  CHECK(late.done && late.status == GRPC_CANCELLED);
  while (env.live > 0) {
    uv_run(&env.loop, UV_RUN_ONCE);
  }
  env_finish(&env);
}

/* A callback may close the client. */
static grpc_client *close_from_cb_client;
static bool close_from_cb_closed;
static void close_in_done(void *data, int status, const char *message, const uint8_t *resp,
                          size_t len) {
  result_cb(data, status, message, resp, len);
  grpc_client_close(close_from_cb_client, on_client_closed, &close_from_cb_closed);
}

static void test_close_from_callback(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  close_from_cb_client = cl;
  close_from_cb_closed = false;
  struct result r1, r2;
  memset(&r1, 0, sizeof r1);
  memset(&r2, 0, sizeof r2);
  CHECK_OK(grpc_client_unary(cl, "/test.Echo/Say", NULL, 0, 0, (const uint8_t *)"a", 1, NULL,
                             close_in_done, &r1));
  CHECK_OK(grpc_client_unary(cl, "/test.Echo/Say", NULL, 0, 0, (const uint8_t *)"sleep:5000", 10,
                             NULL, result_cb, &r2));
  run_until(&env, &close_from_cb_closed);
  CHECK(r1.done && r1.status == GRPC_OK);
  CHECK(r2.done && r2.status == GRPC_CANCELLED);
  result_free(&r1);
  result_free(&r2);
  while (env.live > 0) {
    uv_run(&env.loop, UV_RUN_ONCE);
  }
  env_finish(&env);
}

/* ---- connection failures -------------------------------------------------------------------- */

static void test_refused(void) {
  struct env env;
  env_init(&env, false);
  int port = test_free_port();
  char ep[64], want[160];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
  grpc_client *cl = client_new(&env, ep, NULL);
  struct result r[3];
  for (int i = 0; i < 3; i++) {
    unary_start(cl, "/test.Echo/Say", "x", 1, 0, &r[i]);
  }
  for (int i = 0; i < 3; i++) {
    run_until(&env, &r[i].done);
    CHECK_EQ_INT(r[i].status, GRPC_UNAVAILABLE);
    snprintf(want, sizeof want, "connection to %s: connect: connection refused", ep);
    if (strcmp(r[i].message, want) != 0) {
      fprintf(stderr, "got \"%s\"\n", r[i].message);
      CHECK(0);
    }
    result_free(&r[i]);
  }
  /* No reconnect loop: one attempt for the three calls, a new one now. */
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 1);
  unary(&env, cl, "/test.Echo/Say", "x", 0, &r[0]);
  CHECK_EQ_INT(r[0].status, GRPC_UNAVAILABLE);
  result_free(&r[0]);
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 2);
  client_close(&env, cl);

  /* A name that does not resolve. */
  cl = client_new(&env, "no-such-host.invalid:2379", NULL);
  unary(&env, cl, "/test.Echo/Say", "x", 0, &r[0]);
  CHECK_EQ_INT(r[0].status, GRPC_UNAVAILABLE);
  CHECK(strstr(r[0].message, "resolve no-such-host.invalid") != NULL);
  result_free(&r[0]);
  client_close(&env, cl);
  env_finish(&env);
}

/* Raw TCP servers that misbehave. */
enum raw_mode { RAW_GARBAGE_CLOSE, RAW_GARBAGE_OPEN, RAW_SILENT, RAW_HTTP1 };

struct raw_server {
  uv_tcp_t listener;
  enum raw_mode mode;
  uv_tcp_t *conns[16];
  int n_conns;
  int port;
};

static void raw_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf) {
  (void)h;
  static char sink[65536];
  (void)sz;
  *buf = uv_buf_init(sink, sizeof sink);
}

static void raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  if (nread < 0) {
    uv_read_stop(s);
  }
}

static void raw_shutdown_done(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

static void raw_write_done(uv_write_t *req, int status) {
  (void)status;
  struct raw_server *rs = req->data;
  uv_stream_t *s = req->handle;
  free(req);
  if (rs->mode == RAW_GARBAGE_CLOSE || rs->mode == RAW_HTTP1) {
    uv_shutdown_t *sh = malloc(sizeof *sh);
    CHECK(sh != NULL);
    uv_shutdown(sh, s, raw_shutdown_done);
  }
}

static void raw_on_conn(uv_stream_t *l, int status) {
  CHECK_OK(status);
  struct raw_server *rs = l->data;
  CHECK(rs->n_conns < 16);
  uv_tcp_t *t = malloc(sizeof *t);
  CHECK(t != NULL);
  uv_tcp_init(l->loop, t);
  CHECK_OK(uv_accept(l, (uv_stream_t *)t));
  rs->conns[rs->n_conns++] = t;
  uv_read_start((uv_stream_t *)t, raw_alloc, raw_read);
  static char garbage[4096];
  static const char http1[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
  uv_buf_t b;
  if (rs->mode == RAW_SILENT) {
    return;
  } else if (rs->mode == RAW_HTTP1) {
    b = uv_buf_init((char *)http1, sizeof http1 - 1);
  } else {
    for (size_t i = 0; i < sizeof garbage; i++) {
      garbage[i] = (char)test_rand();
    }
    b = uv_buf_init(garbage, sizeof garbage);
  }
  uv_write_t *w = malloc(sizeof *w);
  CHECK(w != NULL);
  w->data = rs;
  CHECK_OK(uv_write(w, (uv_stream_t *)t, &b, 1, raw_write_done));
}

static void raw_start(struct env *env, struct raw_server *rs, enum raw_mode mode) {
  memset(rs, 0, sizeof *rs);
  rs->mode = mode;
  uv_tcp_init(&env->loop, &rs->listener);
  rs->listener.data = rs;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  CHECK_OK(uv_tcp_bind(&rs->listener, (struct sockaddr *)&a, 0));
  CHECK_OK(uv_listen((uv_stream_t *)&rs->listener, 16, raw_on_conn));
  int al = sizeof a;
  CHECK_OK(uv_tcp_getsockname(&rs->listener, (struct sockaddr *)&a, &al));
  rs->port = ntohs(a.sin_port);
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void raw_stop(struct env *env, struct raw_server *rs) {
  for (int i = 0; i < rs->n_conns; i++) {
    uv_close((uv_handle_t *)rs->conns[i], free_handle);
  }
  close_now(env, (uv_handle_t *)&rs->listener);
}

static void test_raw_servers(void) {
  struct env env;
  env_init(&env, false);
  enum raw_mode modes[] = {RAW_GARBAGE_CLOSE, RAW_GARBAGE_OPEN, RAW_HTTP1, RAW_SILENT};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    struct raw_server rs;
    raw_start(&env, &rs, modes[i]);
    char ep[64];
    snprintf(ep, sizeof ep, "127.0.0.1:%d", rs.port);
    grpc_client *cl = client_new(&env, ep, NULL);
    struct result r;
    uint64_t t0 = uv_now(&env.loop);
    unary(&env, cl, "/test.Echo/Say", "x", 1000, &r);
    if (modes[i] == RAW_SILENT) {
      /* Accepted and never answered: the deadline ends it. */
      CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
      CHECK(strcmp(r.message, GRPC_CLIENT_DEADLINE_TEXT) == 0);
    } else {
      CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
      CHECK(strncmp(r.message, "connection to 127.0.0.1:", 24) == 0);
      CHECK(uv_now(&env.loop) - t0 < 900); /* not by the deadline */
    }
    printf("    mode %d: %d \"%s\"\n", (int)modes[i], r.status, r.message);
    result_free(&r);
    client_close(&env, cl);
    raw_stop(&env, &rs);
  }
  env_finish(&env);
}

/* ---- a raw HTTP/2 server for the status mapping -------------------------------------- */

/* Answers by path with what our server never sends:
 *   /raw/503         :status 503, END_STREAM
 *   /raw/html        :status 200, content-type text/html, END_STREAM
 *   /raw/nostatus    a message, then trailers without grpc-status
 *   /raw/badstatus   trailers-only with grpc-status "abc"
 *   /raw/notrailers  a message on DATA with END_STREAM
 *   /raw/partial     half a message, then grpc-status 0
 *   /raw/compressed  a message with the compressed flag
 *   /raw/rst         RST_STREAM(INTERNAL_ERROR)
 *   /raw/goaway      GOAWAY(last stream 0): the stream is refused */
struct h2body {
  uint8_t data[16];
  size_t len, off;
  bool trailers;
  const char *grpc_status; /* NULL: trailers without it */
};

struct h2conn {
  uv_tcp_t tcp;
  nghttp2_session *s;
  struct h2body bodies[32];
  int n_bodies;
};

struct h2srv {
  uv_tcp_t listener;
  struct h2conn *conns[8];
  int n_conns;
  int port;
};

static ssize_t h2_body_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)ud;
  struct h2body *b = src->ptr;
  size_t n = b->len - b->off < length ? b->len - b->off : length;
  memcpy(buf, b->data + b->off, n);
  b->off += n;
  if (b->off == b->len) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (b->trailers) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      nghttp2_nv t[1] = {{(uint8_t *)"grpc-status", (uint8_t *)b->grpc_status, 11,
                          b->grpc_status ? strlen(b->grpc_status) : 0, NGHTTP2_NV_FLAG_NONE}};
      CHECK_OK(nghttp2_submit_trailer(session, stream_id, t, b->grpc_status ? 1 : 0));
    }
  }
  return (ssize_t)n;
}

#define NV(n, v) \
  { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE }

static void h2_answer(struct h2conn *hc, int32_t id, const char *path) {
  nghttp2_session *s = hc->s;
  nghttp2_nv ok[] = {NV(":status", "200"), NV("content-type", "application/grpc")};
  CHECK(hc->n_bodies < 32);
  struct h2body *b = &hc->bodies[hc->n_bodies++];
  memset(b, 0, sizeof *b);
  nghttp2_data_provider prd = {.source.ptr = b, .read_callback = h2_body_read};
  static const uint8_t msg[] = {0, 0, 0, 0, 2, 'h', 'i'};
  if (strcmp(path, "/raw/503") == 0) {
    nghttp2_nv nv[] = {NV(":status", "503")};
    CHECK_OK(nghttp2_submit_response(s, id, nv, 1, NULL));
  } else if (strcmp(path, "/raw/html") == 0) {
    nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "text/html")};
    CHECK_OK(nghttp2_submit_response(s, id, nv, 2, NULL));
  } else if (strcmp(path, "/raw/badstatus") == 0) {
    nghttp2_nv nv[] = {NV(":status", "200"), NV("content-type", "application/grpc"),
                       NV("grpc-status", "abc")};
    CHECK_OK(nghttp2_submit_response(s, id, nv, 3, NULL));
  } else if (strcmp(path, "/raw/rst") == 0) {
    CHECK_OK(nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR));
  } else if (strcmp(path, "/raw/goaway") == 0) {
    CHECK_OK(nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR,
                                   (const uint8_t *)"bye", 3));
  } else {
    memcpy(b->data, msg, sizeof msg);
    b->len = sizeof msg;
    b->trailers = true;
    b->grpc_status = "0";
    if (strcmp(path, "/raw/nostatus") == 0) {
      b->grpc_status = NULL;
    } else if (strcmp(path, "/raw/notrailers") == 0) {
      b->trailers = false;
    } else if (strcmp(path, "/raw/partial") == 0) {
      b->len = 6; /* the prefix says 2 bytes, 1 follows */
    } else if (strcmp(path, "/raw/compressed") == 0) {
      b->data[0] = 1;
    }
    CHECK_OK(nghttp2_submit_response(s, id, ok, 2, &prd));
  }
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                        const uint8_t *value, size_t vl, uint8_t flags, void *ud) {
  (void)flags;
  (void)ud;
  if (f->hd.type == NGHTTP2_HEADERS && nl == 5 && memcmp(name, ":path", 5) == 0) {
    char *p = strndup((const char *)value, vl);
    CHECK(p != NULL);
    free(nghttp2_session_get_stream_user_data(s, f->hd.stream_id));
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, p);
  }
  return 0;
}

static int h2_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud) {
  struct h2conn *hc = ud;
  if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
      (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    const char *path = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    h2_answer(hc, f->hd.stream_id, path ? path : "");
  }
  return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud) {
  (void)code;
  (void)ud;
  free(nghttp2_session_get_stream_user_data(s, id));
  nghttp2_session_set_stream_user_data(s, id, NULL);
  return 0;
}

static void h2_write_done(uv_write_t *w, int status) {
  (void)status;
  free(w);
}

static void h2_flush(struct h2conn *hc) {
  for (;;) {
    const uint8_t *d = NULL;
    ssize_t n = nghttp2_session_mem_send(hc->s, &d);
    CHECK(n >= 0);
    if (n == 0) {
      return;
    }
    uv_write_t *w = malloc(sizeof *w + (size_t)n);
    CHECK(w != NULL);
    memcpy(w + 1, d, (size_t)n);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&hc->tcp, &b, 1, h2_write_done) != 0) {
      free(w);
      return;
    }
  }
}

static void h2_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  struct h2conn *hc = st->data;
  if (nread < 0) {
    uv_read_stop(st);
    return;
  }
  if (nread > 0) {
    CHECK(nghttp2_session_mem_recv(hc->s, (const uint8_t *)buf->base, (size_t)nread) == nread);
    h2_flush(hc);
  }
}

static void h2_on_conn(uv_stream_t *l, int status) {
  CHECK_OK(status);
  struct h2srv *hs = l->data;
  CHECK(hs->n_conns < 8);
  struct h2conn *hc = calloc(1, sizeof *hc);
  CHECK(hc != NULL);
  hs->conns[hs->n_conns++] = hc;
  uv_tcp_init(l->loop, &hc->tcp);
  hc->tcp.data = hc;
  CHECK_OK(uv_accept(l, (uv_stream_t *)&hc->tcp));
  nghttp2_session_callbacks *cbs;
  CHECK_OK(nghttp2_session_callbacks_new(&cbs));
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2_on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_on_frame);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_on_close);
  CHECK_OK(nghttp2_session_server_new(&hc->s, cbs, hc));
  nghttp2_session_callbacks_del(cbs);
  CHECK_OK(nghttp2_submit_settings(hc->s, NGHTTP2_FLAG_NONE, NULL, 0));
  h2_flush(hc);
  uv_read_start((uv_stream_t *)&hc->tcp, raw_alloc, h2_read);
}

static void h2_conn_closed(uv_handle_t *h) {
  struct h2conn *hc = h->data;
  nghttp2_session_del(hc->s);
  free(hc);
}

static void test_status_mapping(void) {
  struct env env;
  env_init(&env, false);
  struct h2srv hs;
  memset(&hs, 0, sizeof hs);
  uv_tcp_init(&env.loop, &hs.listener);
  hs.listener.data = &hs;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  CHECK_OK(uv_tcp_bind(&hs.listener, (struct sockaddr *)&a, 0));
  CHECK_OK(uv_listen((uv_stream_t *)&hs.listener, 16, h2_on_conn));
  int al = sizeof a;
  CHECK_OK(uv_tcp_getsockname(&hs.listener, (struct sockaddr *)&a, &al));
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", ntohs(a.sin_port));
  grpc_client *cl = client_new(&env, ep, NULL);
  static const struct {
    const char *path;
    int status;
    const char *text; /* a part of the message */
  } cases[] = {
      {"/raw/ok", GRPC_OK, ""},
      {"/raw/503", GRPC_UNAVAILABLE, "unexpected HTTP status code received from server: 503"},
      {"/raw/html", GRPC_UNKNOWN, "received unexpected content-type \"text/html\""},
      {"/raw/nostatus", GRPC_UNKNOWN, "missing grpc-status"},
      {"/raw/badstatus", GRPC_INTERNAL, "malformed grpc-status"},
      {"/raw/notrailers", GRPC_INTERNAL, "server closed the stream without sending trailers"},
      {"/raw/partial", GRPC_INTERNAL, "inside a message"},
      {"/raw/compressed", GRPC_INTERNAL, "compressed flag set with identity or empty encoding"},
      {"/raw/rst", GRPC_INTERNAL,
       "stream terminated by RST_STREAM with error code: INTERNAL_ERROR"},
      {"/raw/goaway", GRPC_UNAVAILABLE, "the server sent GOAWAY NO_ERROR: bye"},
      {"/raw/ok", GRPC_OK, ""}, /* a new connection after the GOAWAY */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    struct result r;
    unary(&env, cl, cases[i].path, "x", 5000, &r);
    printf("    %s: %d \"%s\"\n", cases[i].path, r.status, r.message);
    CHECK_EQ_INT(r.status, cases[i].status);
    CHECK(strstr(r.message, cases[i].text) != NULL);
    if (r.status == GRPC_OK) {
      CHECK(r.len == 2 && memcmp(r.resp, "hi", 2) == 0);
    }
    result_free(&r);
  }
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 2);
  client_close(&env, cl);
  for (int i = 0; i < hs.n_conns; i++) {
    uv_close((uv_handle_t *)&hs.conns[i]->tcp, h2_conn_closed);
  }
  close_now(&env, (uv_handle_t *)&hs.listener);
  env_finish(&env);
}

/* ---- GOAWAY, restarts -------------------------------------------------------------------- */

static void shutdown_timer_cb(uv_timer_t *t) {
  struct env *env = t->data;
  grpc_server_shutdown(env->s, 5000, on_server_closed, env);
  uv_close((uv_handle_t *)t, NULL);
}

static void test_goaway_and_restart(void) {
  struct env env;
  env_init(&env, true);
  grpc_client *cl = client_plain(&env);
  int port = env.port;
  struct result r[4];
  for (int i = 0; i < 4; i++) {
    unary_start(cl, "/test.Echo/Say", "sleep:300", 9, 0, &r[i]);
  }
  /* Shut the server down with the calls in flight: they complete. */
  uv_timer_t t;
  uv_timer_init(&env.loop, &t);
  t.data = &env;
  uv_timer_start(&t, shutdown_timer_cb, 100, 0);
  for (int i = 0; i < 4; i++) {
    run_until(&env, &r[i].done);
    CHECK_EQ_INT(r[i].status, GRPC_OK);
    CHECK(r[i].len == 5 && memcmp(r[i].resp, "slept", 5) == 0);
    result_free(&r[i]);
  }
  run_until(&env, &env.server_closed);
  /* Nobody listens now. */
  unary(&env, cl, "/test.Echo/Say", "x", 0, &r[0]);
  CHECK_EQ_INT(r[0].status, GRPC_UNAVAILABLE);
  CHECK(strstr(r[0].message, "connection refused") != NULL);
  result_free(&r[0]);
  /* The server comes back on the same port: the next call reconnects. */
  server_start(&env, port, NULL);
  CHECK_EQ_INT(env.port, port);
  unary(&env, cl, "/test.Echo/Say", "back", 0, &r[0]);
  CHECK_EQ_INT(r[0].status, GRPC_OK);
  CHECK(r[0].len == 4 && memcmp(r[0].resp, "back", 4) == 0);
  result_free(&r[0]);
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 3);
  /* And again, after an abrupt restart (no GOAWAY seen before the call). */
  server_stop(&env);
  server_start(&env, port, NULL);
  unary(&env, cl, "/test.Echo/Say", "again", 0, &r[0]);
  CHECK_EQ_INT(r[0].status, GRPC_OK);
  result_free(&r[0]);
  client_close(&env, cl);
  env_finish(&env);
}

/* ---- TLS ---------------------------------------------------------------------------------- */

static char *make_certs(void) {
  char *dir = test_tmpdir("wire-client-tls");
  char *cmd = NULL;
  CHECK(asprintf(&cmd,
                 "set -e; cd '%s'; "
                 "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
                 "openssl req -x509 $K -keyout ca.key -out ca.crt -days 2 -subj /CN=cairn-test-ca "
                 "2>/dev/null; "
                 "openssl req -x509 $K -keyout other.key -out other.crt -days 2 "
                 "-subj /CN=other-ca 2>/dev/null; "
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

static void tls_unary(struct env *env, const char *ep, const struct grpc_client_options *o,
                      struct result *r) {
  grpc_client *cl = client_new(env, ep, o);
  unary(env, cl, "/test.Echo/Say", "secret", 0, r);
  client_close(env, cl);
}

static void test_tls(void) {
  char *dir = make_certs();
  char cert[512], key[512], ca[512], other[512], ccert[512], ckey[512];
  snprintf(cert, sizeof cert, "%s/server.crt", dir);
  snprintf(key, sizeof key, "%s/server.key", dir);
  snprintf(ca, sizeof ca, "%s/ca.crt", dir);
  snprintf(other, sizeof other, "%s/other.crt", dir);
  snprintf(ccert, sizeof ccert, "%s/client.crt", dir);
  snprintf(ckey, sizeof ckey, "%s/client.key", dir);
  struct env env;
  env_init(&env, false);
  struct grpc_tls_options plain_tls = {.cert_file = cert, .key_file = key};
  server_start(&env, 0, &plain_tls);
  char ep[64];
  snprintf(ep, sizeof ep, "https://127.0.0.1:%d", env.port);
  struct result r;

  /* Verified against the IP address in the certificate. */
  struct grpc_client_options o = {.ca_file = ca};
  tls_unary(&env, ep, &o, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  CHECK(r.len == 6 && memcmp(r.resp, "secret", 6) == 0);
  result_free(&r);
  /* Verified against a name given apart (SNI too). */
  struct grpc_client_options named = {.ca_file = ca, .server_name = "localhost"};
  tls_unary(&env, ep, &named, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  result_free(&r);
  /* A big message over TLS. */
  grpc_client *cl = client_new(&env, ep, &o);
  size_t big = 3u << 20;
  char *b = malloc(big);
  CHECK(b != NULL);
  memset(b, 't', big);
  unary_start(cl, "/test.Echo/Say", b, big, 0, &r);
  run_until(&env, &r.done);
  CHECK_EQ_INT(r.status, GRPC_OK);
  CHECK(r.len == big && memcmp(r.resp, b, big) == 0);
  free(b);
  result_free(&r);
  client_close(&env, cl);

  /* The wrong CA. */
  struct grpc_client_options wrong = {.ca_file = other};
  tls_unary(&env, ep, &wrong, &r);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  printf("    wrong CA: \"%s\"\n", r.message);
  CHECK(strstr(r.message, "certificate verify failed") != NULL);
  CHECK(strstr(r.message, ep + 8) != NULL);
  result_free(&r);
  /* The wrong name. */
  struct grpc_client_options wrong_name = {.ca_file = ca, .server_name = "example.com"};
  tls_unary(&env, ep, &wrong_name, &r);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  CHECK(strstr(r.message, "certificate verify failed") != NULL);
  result_free(&r);
  /* No verification. */
  struct grpc_client_options insecure = {.insecure_skip_verify = true, .ca_file = other};
  tls_unary(&env, ep, &insecure, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  result_free(&r);
  /* TLS to a plaintext port, and plaintext to a TLS port. */
  server_stop(&env);
  server_start(&env, 0, NULL);
  snprintf(ep, sizeof ep, "https://127.0.0.1:%d", env.port);
  struct grpc_client_options short_wait = {.ca_file = ca, .connect_timeout_ms = 300};
  tls_unary(&env, ep, &short_wait, &r);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  printf("    TLS to plaintext: \"%s\"\n", r.message);
  /* The server refuses the ClientHello at once (HTTP/1.1 400, closed), so
   * the handshake fails on what came back, before the connect timeout. */
  CHECK(strstr(r.message, "TLS handshake") != NULL);
  CHECK(strstr(r.message, "connect timeout") == NULL);
  result_free(&r);
  server_stop(&env);

  /* Client certificates. */
  struct grpc_tls_options mutual = {
      .cert_file = cert, .key_file = key, .trusted_ca_file = ca, .client_cert_auth = true};
  server_start(&env, 0, &mutual);
  snprintf(ep, sizeof ep, "https://127.0.0.1:%d", env.port);
  struct grpc_client_options with_cert = {.ca_file = ca, .cert_file = ccert, .key_file = ckey};
  tls_unary(&env, ep, &with_cert, &r);
  CHECK_EQ_INT(r.status, GRPC_OK);
  result_free(&r);
  tls_unary(&env, ep, &o, &r);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  printf("    no client certificate: \"%s\"\n", r.message);
  result_free(&r);
  snprintf(ep, sizeof ep, "127.0.0.1:%d", env.port);
  tls_unary(&env, ep, NULL, &r);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  printf("    plaintext to TLS: \"%s\"\n", r.message);
  result_free(&r);
  env_finish(&env);
  test_rmdir(dir);
}

/* ---- the real etcd ------------------------------------------------------------------------- */

struct etcd_proc {
  uv_process_t proc;
  bool exited;
};

static void etcd_exit(uv_process_t *p, int64_t status, int sig) {
  (void)status;
  (void)sig;
  struct etcd_proc *e = p->data;
  e->exited = true;
  uv_close((uv_handle_t *)p, NULL);
}

static void test_etcd(void) {
  if (access("/usr/bin/etcd", X_OK) != 0) {
    printf(
        "    /usr/bin/etcd is not installed: the etcd case is skipped (scripts/deps installs "
        "it)\n");
    return;
  }
  struct env env;
  env_init(&env, false);
  char *dir = test_tmpdir("wire-client-etcd");
  int cport = test_free_port(), pport = test_free_port();
  char curl[64], purl[64], name[128];
  snprintf(curl, sizeof curl, "http://127.0.0.1:%d", cport);
  snprintf(purl, sizeof purl, "http://127.0.0.1:%d", pport);
  snprintf(name, sizeof name, "default=%s", purl);
  char *args[] = {"/usr/bin/etcd",
                  "--data-dir",
                  dir,
                  "--listen-client-urls",
                  curl,
                  "--advertise-client-urls",
                  curl,
                  "--listen-peer-urls",
                  purl,
                  "--initial-advertise-peer-urls",
                  purl,
                  "--initial-cluster",
                  name,
                  "--logger",
                  "zap",
                  "--log-level",
                  "error",
                  NULL};
  uv_stdio_container_t stdio[3] = {
      {.flags = UV_IGNORE}, {.flags = UV_IGNORE}, {.flags = UV_INHERIT_FD, .data.fd = 2}};
  uv_process_options_t po = {0};
  po.file = args[0];
  po.args = args;
  po.exit_cb = etcd_exit;
  po.stdio = stdio;
  po.stdio_count = 3;
  struct etcd_proc e = {0};
  e.proc.data = &e;
  CHECK_OK(uv_spawn(&env.loop, &e.proc, &po));

  grpc_client *cl = client_new(&env, curl, NULL);
  Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
  put.key.data = (uint8_t *)"cairn-client";
  put.key.len = 12;
  put.value.data = (uint8_t *)"works";
  put.value.len = 5;
  size_t plen = etcdserverpb__put_request__get_packed_size(&put);
  uint8_t *pbuf = malloc(plen);
  CHECK(pbuf != NULL);
  etcdserverpb__put_request__pack(&put, pbuf);
  struct grpc_metadata md = {"client-api-version", "3.4"};
  struct result r;
  /* etcd takes a moment to start: retry while it is UNAVAILABLE. */
  for (int attempt = 0;; attempt++) {
    CHECK(attempt < 200);
    memset(&r, 0, sizeof r);
    CHECK_OK(grpc_client_unary(cl, "/etcdserverpb.KV/Put", &md, 1, 2000, pbuf, plen, NULL,
                               result_cb, &r));
    run_until(&env, &r.done);
    if (r.status != GRPC_UNAVAILABLE || e.exited) {
      break;
    }
    result_free(&r);
    sleep_ms(&env, 50);
  }
  free(pbuf);
  CHECK(!e.exited);
  if (r.status != GRPC_OK) {
    fprintf(stderr, "etcd Put: %d %s\n", r.status, r.message);
  }
  CHECK_EQ_INT(r.status, GRPC_OK);
  Etcdserverpb__PutResponse *pr = etcdserverpb__put_response__unpack(NULL, r.len, r.resp);
  CHECK(pr != NULL && pr->header != NULL && pr->header->revision >= 2);
  int64_t put_rev = pr->header->revision;
  etcdserverpb__put_response__free_unpacked(pr, NULL);
  result_free(&r);

  Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
  rq.key.data = (uint8_t *)"cairn-client";
  rq.key.len = 12;
  size_t rlen = etcdserverpb__range_request__get_packed_size(&rq);
  uint8_t *rbuf = malloc(rlen);
  CHECK(rbuf != NULL);
  etcdserverpb__range_request__pack(&rq, rbuf);
  memset(&r, 0, sizeof r);
  CHECK_OK(grpc_client_unary(cl, "/etcdserverpb.KV/Range", &md, 1, 2000, rbuf, rlen, NULL,
                             result_cb, &r));
  run_until(&env, &r.done);
  free(rbuf);
  CHECK_EQ_INT(r.status, GRPC_OK);
  Etcdserverpb__RangeResponse *rr = etcdserverpb__range_response__unpack(NULL, r.len, r.resp);
  CHECK(rr != NULL);
  CHECK_EQ_INT(rr->n_kvs, 1);
  CHECK(rr->kvs[0]->value.len == 5 && memcmp(rr->kvs[0]->value.data, "works", 5) == 0);
  CHECK_EQ_INT(rr->kvs[0]->mod_revision, put_rev);
  etcdserverpb__range_response__free_unpacked(rr, NULL);
  result_free(&r);

  /* etcd's own error text comes through. */
  Etcdserverpb__RangeRequest empty = ETCDSERVERPB__RANGE_REQUEST__INIT;
  rlen = etcdserverpb__range_request__get_packed_size(&empty);
  rbuf = malloc(rlen + 1);
  CHECK(rbuf != NULL);
  etcdserverpb__range_request__pack(&empty, rbuf);
  memset(&r, 0, sizeof r);
  CHECK_OK(grpc_client_unary(cl, "/etcdserverpb.KV/Range", &md, 1, 2000, rbuf, rlen, NULL,
                             result_cb, &r));
  run_until(&env, &r.done);
  free(rbuf);
  CHECK_EQ_INT(r.status, GRPC_INVALID_ARGUMENT);
  CHECK(strcmp(r.message, "etcdserver: key is not provided") == 0);
  result_free(&r);
  unary(&env, cl, "/etcdserverpb.KV/Nope", "", 2000, &r);
  CHECK_EQ_INT(r.status, GRPC_UNIMPLEMENTED);
  printf("    etcd unknown method: \"%s\"\n", r.message);
  result_free(&r);

  client_close(&env, cl);
  CHECK_OK(uv_process_kill(&e.proc, SIGTERM));
  run_until(&env, &e.exited);
  env_finish(&env);
  test_rmdir(dir);
}


/* ---- keepalive and request_sent --------------------------------------------------------- */

struct sent_result {
  bool done;
  int status;
  bool sent;
  char message[GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX + 1];
};

static void sent_done(grpc_ccall *call, int status, const char *message, void *data) {
  struct sent_result *r = data;
  CHECK(!in_api);
  r->done = true;
  r->status = status;
  r->sent = grpc_ccall_request_sent(call);
  snprintf(r->message, sizeof r->message, "%s", message);
}

static void sent_call(grpc_client *cl, const char *path, uint64_t timeout_ms,
                      struct sent_result *r) {
  memset(r, 0, sizeof *r);
  struct grpc_client_handlers h = {.on_message = NULL, .on_done = sent_done};
  grpc_ccall *call;
  in_api = true;
  CHECK_OK(grpc_client_call(cl, path, NULL, 0, timeout_ms, &h, r, &call));
  CHECK(!grpc_ccall_request_sent(call));
  CHECK_OK(grpc_ccall_send(call, (const uint8_t *)"x", 1));
  CHECK_OK(grpc_ccall_close_send(call));
  in_api = false;
}

static void test_keepalive_and_sent(void) {
  /* A refused connection: the request never left. */
  struct env env;
  env_init(&env, true);
  int port = test_free_port();
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
  grpc_client *cl = client_new(&env, ep, NULL);
  struct sent_result r;
  sent_call(cl, "/test.Echo/Say", 2000, &r);
  run_until(&env, &r.done);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  CHECK(!r.sent);
  client_close(&env, cl);

  /* Our server answers PINGs: a hanging call with keepalive every 50 ms
   * lives to its deadline; the request was sent. */
  struct grpc_client_options o = {.keepalive_time_ms = 50, .keepalive_timeout_ms = 100};
  snprintf(ep, sizeof ep, "127.0.0.1:%d", env.port);
  cl = client_new(&env, ep, &o);
  sent_call(cl, "/test.Echo/Hang", 600, &r);
  run_until(&env, &r.done);
  CHECK_EQ_INT(r.status, GRPC_DEADLINE_EXCEEDED);
  CHECK(r.sent);
  client_close(&env, cl);

  /* A listener that accepts and then says nothing (a stopped server): the
   * PING goes unanswered and the connection ends long before the deadline. */
  struct raw_server rs;
  raw_start(&env, &rs, RAW_SILENT);
  snprintf(ep, sizeof ep, "127.0.0.1:%d", rs.port);
  o.keepalive_time_ms = 100;
  o.keepalive_timeout_ms = 150;
  cl = client_new(&env, ep, &o);
  uint64_t t0 = uv_now(&env.loop);
  sent_call(cl, "/test.Echo/Say", 10000, &r);
  run_until(&env, &r.done);
  uv_update_time(&env.loop);
  CHECK_EQ_INT(r.status, GRPC_UNAVAILABLE);
  char want[160];
  snprintf(want, sizeof want, "connection to %s: " GRPC_CLIENT_KEEPALIVE_TEXT, ep);
  if (strcmp(r.message, want) != 0) {
    fprintf(stderr, "got \"%s\"\n", r.message);
    CHECK(0);
  }
  CHECK(r.sent);
  uint64_t took = uv_now(&env.loop) - t0;
  CHECK(took >= 250 && took < 2000);
  /* Idle (no call): no PING, unless permitted; the connection stays. */
  struct grpc_client_stats st;
  grpc_client_stats(cl, &st);
  CHECK_EQ_INT(st.connections_opened, 1);
  client_close(&env, cl);
  raw_stop(&env, &rs);
  env_finish(&env);
}

int main(void) {
  test_seed("test_wire_client");
  signal(SIGPIPE, SIG_IGN);
  TEST_RUN(test_helpers);
  TEST_RUN(test_api_errors);
  TEST_RUN(test_unary);
  TEST_RUN(test_max_recv);
  TEST_RUN(test_concurrent);
  TEST_RUN(test_server_stream);
  TEST_RUN(test_bidi);
  TEST_RUN(test_statuses);
  TEST_RUN(test_deadline_cancel_close);
  TEST_RUN(test_close_from_callback);
  TEST_RUN(test_refused);
  TEST_RUN(test_raw_servers);
  TEST_RUN(test_status_mapping);
  TEST_RUN(test_goaway_and_restart);
  TEST_RUN(test_keepalive_and_sent);
  TEST_RUN(test_tls);
  TEST_RUN(test_etcd);
  printf("test_wire_client: ok\n");
  return 0;
}
