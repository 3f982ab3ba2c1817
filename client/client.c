/* client/client.c: the client object (client/cairn.h, client_int.h): the
 * endpoints and their gRPC connections, failover, the retry rules of unary
 * calls, deadlines, attached long-lived objects, and close.
 *
 * Endpoints. Each endpoint of the config has a grpc_client, created on its
 * first use (the first one at once when TLS is configured, so that the TLS
 * files are read by cairn_client_new). Calls go to the current endpoint;
 * cairn__endpoint_failed() moves it to the next endpoint in order that did
 * not fail in the last CLIENT_SKIP_FAILED_MS (or simply the next one when
 * all did).
 *
 * A unary call (struct cu) is a state machine:
 *
 *   CU_CALLING --answer, no retry--> CU_DONE (cb)
 *   CU_CALLING --retryable failure--> CU_BACKOFF --timer--> CU_CALLING
 *   CU_BACKOFF --deadline or client close--> CU_DONE (cb)
 *
 * Every attempt's grpc timeout is the time left before the call's deadline,
 * so the deadline covers all attempts. A call is freed in its timer's close
 * callback.
 *
 * Close. cairn_client_close() runs the close_cb of every attached object,
 * ends unary calls waiting in backoff (CANCELLED, from their timer), closes
 * every grpc_client (which ends the calls in flight with CANCELLED
 * GRPC_CLIENT_CLOSING_TEXT), and, once no object, call or grpc_client is
 * left, closes the client's own handle, whose close callback runs closed_cb
 * and frees the client: closed_cb always runs from the loop. */
#include <protobuf-c/protobuf-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"
#include "wire/grpc_client_int.h" /* gc_parse_endpoint: the wire's own endpoint syntax */

#ifndef CAIRN_VERSION_STRING
#define CAIRN_VERSION_STRING "0.0.0"
#endif

/* An endpoint that failed is passed over for this long. */
#define CLIENT_SKIP_FAILED_MS 1000u
/* Unary calls not yet finished per client (in flight or in backoff): past
 * it cairn_unary() says CAIRN_EBUSY. The per-connection bound of the wire
 * (max_calls) is the same number, so one endpoint can take them all. */
#define CLIENT_UNARY_MAX 65536u
#define CLIENT_BACKOFF_BASE_MS 25u
#define CLIENT_BACKOFF_MAX_MS 1000u
/* grpc-go's text for a response that does not parse. */
#define CLIENT_UNMARSHAL_TEXT "grpc: failed to unmarshal the received message"

struct endpoint {
  char *given;      /* as in the config */
  char *name;       /* "host:port" */
  grpc_client *gc;  /* NULL until first used, and after close */
  uint64_t failed_ms; /* uv_now() of the last failure; 0: none */
  bool failed;
};

enum cu_state { CU_CALLING, CU_BACKOFF, CU_DONE };

struct cu {
  cairn_client *c;
  struct cu *prev, *next;
  enum cu_state state;
  char *path;
  uint8_t *req;
  size_t req_len;
  const ProtobufCMessageDescriptor *desc;
  bool idempotent;
  int fixed; /* endpoint index, or -1: the current one */
  uint64_t deadline_ms;
  unsigned attempt;
  unsigned ep; /* endpoint of the last attempt */
  grpc_ccall *call;
  uv_timer_t timer; /* backoff, and the deferred end of a closing client */
  int end_code;     /* set before the timer ends a call in backoff */
  const char *end_text; /* static */
  char *last_message;
  int last_code;
  cairn_cb cb;
  void *data;
};

struct cairn_client {
  uv_loop_t *loop;
  struct cairn_config cfg; /* with copied strings and defaults */
  struct endpoint *eps;
  unsigned n_eps;
  unsigned current;

  struct cairn__obj objs; /* sentinel of the attached objects */
  struct cu *calls;       /* unary calls not yet freed */
  void *keepalive;        /* keepalive.c's shared stream state, or NULL */
  unsigned n_calls;

  bool closing;
  bool handle_closing;
  unsigned gc_closing; /* grpc clients whose close has not completed */
  uv_timer_t handle;   /* only closed: its close callback ends the close */
  void (*closed_cb)(void *data);
  void *closed_data;
};

const char *cairn_version(void) {
  return CAIRN_VERSION_STRING;
}

/* ---- small helpers ----------------------------------------------------------- */

static char *dup_or_null(const char *s, bool *oom) {
  if (!s) {
    return NULL;
  }
  char *d = strdup(s);
  if (!d) {
    *oom = true;
  }
  return d;
}

uint64_t cairn__backoff_ms(unsigned attempt) {
  /* Per thread: sync clients run on threads of their own. Seeded from the
   * clock; the jitter only spreads reconnects, nothing depends on it. */
  static _Thread_local uint64_t state;
  if (state == 0) {
    state = uv_hrtime() | 1u;
  }
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  uint64_t base = CLIENT_BACKOFF_MAX_MS;
  if (attempt < 6) {
    base = (uint64_t)CLIENT_BACKOFF_BASE_MS << attempt;
    if (base > CLIENT_BACKOFF_MAX_MS) {
      base = CLIENT_BACKOFF_MAX_MS;
    }
  }
  /* Up to 25% less, so the cap is never passed. */
  return base - state % (base / 4 + 1);
}

int cairn__pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *b = malloc(n ? n : 1);
  if (!b) {
    return CAIRN_ENOMEM;
  }
  size_t w = protobuf_c_message_pack(msg, b);
  CAIRN_ASSERT(w == n);
  *out = b;
  *len = n;
  return 0;
}

bool cairn__refused_text(const char *message) {
  return message && (strcmp(message, cairn_strerror(CAIRN_ENOT_LEADER)) == 0 ||
                     strcmp(message, cairn_strerror(CAIRN_ENO_LEADER)) == 0 ||
                     strcmp(message, cairn_strerror(CAIRN_ENOT_FOR_LEARNER)) == 0);
}

bool cairn__should_retry(bool idempotent, bool sent, int code, const char *message) {
  if (code == GRPC_OK || code == GRPC_DEADLINE_EXCEEDED || code == GRPC_CANCELLED) {
    return false;
  }
  if (cairn__refused_text(message)) {
    return true; /* refused without being proposed: never done */
  }
  if (code != GRPC_UNAVAILABLE) {
    return false;
  }
  return idempotent || !sent;
}

bool cairn__endpoint_fault(int code, const char *message) {
  return code == GRPC_UNAVAILABLE || cairn__refused_text(message);
}

/* ---- endpoints ---------------------------------------------------------------- */

const char *cairn__endpoint_name(const cairn_client *c, unsigned index) {
  CAIRN_ASSERT(index < c->n_eps);
  return c->eps[index].name;
}

void **cairn__keepalive_slot(cairn_client *c) {
  return &c->keepalive;
}

const struct cairn_config *cairn__config(const cairn_client *c) {
  return &c->cfg;
}

uv_loop_t *cairn_client_loop(const cairn_client *c) {
  return c->loop;
}

const char *cairn_client_endpoint(const cairn_client *c) {
  return c->eps[c->current].name;
}

static bool ep_skipped(const cairn_client *c, unsigned i, uint64_t now) {
  const struct endpoint *e = &c->eps[i];
  return e->failed && now - e->failed_ms < CLIENT_SKIP_FAILED_MS;
}

void cairn__endpoint_failed(cairn_client *c, unsigned index) {
  CAIRN_ASSERT(index < c->n_eps);
  uint64_t now = uv_now(c->loop);
  c->eps[index].failed = true;
  c->eps[index].failed_ms = now;
  if (index != c->current) {
    return; /* the current one already moved past it */
  }
  unsigned next = (index + 1) % c->n_eps;
  for (unsigned k = 1; k <= c->n_eps; k++) {
    unsigned i = (index + k) % c->n_eps;
    if (!ep_skipped(c, i, now)) {
      next = i;
      break;
    }
  }
  c->current = next;
}

/* The grpc_client of endpoint i, created now if need be. */
static int ep_client(cairn_client *c, unsigned i, grpc_client **out) {
  struct endpoint *e = &c->eps[i];
  if (!e->gc) {
    struct grpc_client_options o = {
        .ca_file = c->cfg.ca_file,
        .cert_file = c->cfg.cert_file,
        .key_file = c->cfg.key_file,
        .server_name = c->cfg.server_name,
        .insecure_skip_verify = c->cfg.insecure_skip_verify,
        .max_recv_message_bytes = c->cfg.max_recv_message_bytes,
        .connect_timeout_ms = c->cfg.dial_timeout_ms,
        .keepalive_time_ms = c->cfg.keepalive_time_ms,
        .keepalive_timeout_ms = c->cfg.keepalive_timeout_ms,
    };
    int rc = grpc_client_new(c->loop, e->given, &o, &e->gc);
    if (rc != 0) {
      e->gc = NULL;
      return rc;
    }
  }
  *out = e->gc;
  return 0;
}

int cairn__endpoint_index(const cairn_client *c, const char *s) {
  for (unsigned i = 0; i < c->n_eps; i++) {
    if (strcmp(c->eps[i].given, s) == 0 || strcmp(c->eps[i].name, s) == 0) {
      return (int)i;
    }
  }
  return -1;
}

/* ---- new ------------------------------------------------------------------------ */

static void client_free(cairn_client *c) {
  if (c->eps) {
    for (unsigned i = 0; i < c->n_eps; i++) {
      free(c->eps[i].given);
      free(c->eps[i].name);
    }
    free(c->eps);
  }
  free((char *)c->cfg.ca_file);
  free((char *)c->cfg.cert_file);
  free((char *)c->cfg.key_file);
  free((char *)c->cfg.server_name);
  free(c);
}

static int ep_init(struct endpoint *e, const char *given, bool tls_opts) {
  char *host = NULL, *port = NULL;
  bool tls = false;
  int rc = gc_parse_endpoint(given, &host, &port, &tls);
  if (rc != 0) {
    if (rc == CAIRN_EINVAL) {
      fprintf(stderr, "cairn: bad endpoint \"%s\"\n", given ? given : "(null)");
    }
    return rc;
  }
  if (tls_opts && !tls) {
    fprintf(stderr, "cairn: TLS options need https:// endpoints (got \"%s\")\n", given);
    free(host);
    free(port);
    return CAIRN_EINVAL;
  }
  size_t n = strlen(host) + strlen(port) + 4;
  e->name = malloc(n);
  e->given = strdup(given);
  if (!e->name || !e->given) {
    free(host);
    free(port);
    return CAIRN_ENOMEM; /* client_free() frees what was made */
  }
  snprintf(e->name, n, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
  free(host);
  free(port);
  return 0;
}

int cairn_client_new(uv_loop_t *loop, const struct cairn_config *cfg, cairn_client **out) {
  if (!loop || !cfg || !out || !cfg->endpoints || cfg->n_endpoints == 0 ||
      cfg->n_endpoints > CAIRN_ENDPOINTS_MAX) {
    if (cfg && (cfg->n_endpoints == 0 || cfg->n_endpoints > CAIRN_ENDPOINTS_MAX)) {
      fprintf(stderr, "cairn: %zu endpoints (1 to %u)\n", cfg->n_endpoints, CAIRN_ENDPOINTS_MAX);
    }
    return CAIRN_EINVAL;
  }
  cairn_client *c = calloc(1, sizeof *c);
  if (!c) {
    return CAIRN_ENOMEM;
  }
  c->loop = loop;
  c->cfg = *cfg;
  c->cfg.endpoints = NULL; /* the copies live in eps */
  bool oom = false;
  c->cfg.ca_file = dup_or_null(cfg->ca_file, &oom);
  c->cfg.cert_file = dup_or_null(cfg->cert_file, &oom);
  c->cfg.key_file = dup_or_null(cfg->key_file, &oom);
  c->cfg.server_name = dup_or_null(cfg->server_name, &oom);
  if (!c->cfg.dial_timeout_ms) {
    c->cfg.dial_timeout_ms = CAIRN_DEFAULT_DIAL_TIMEOUT_MS;
  }
  if (!c->cfg.request_timeout_ms) {
    c->cfg.request_timeout_ms = CAIRN_DEFAULT_REQUEST_TIMEOUT_MS;
  }
  if (!c->cfg.keepalive_time_ms) {
    c->cfg.keepalive_time_ms = CAIRN_DEFAULT_KEEPALIVE_TIME_MS;
  }
  if (!c->cfg.keepalive_timeout_ms) {
    c->cfg.keepalive_timeout_ms = CAIRN_DEFAULT_KEEPALIVE_TIMEOUT_MS;
  }
  if (!c->cfg.max_recv_message_bytes) {
    c->cfg.max_recv_message_bytes = GRPC_CLIENT_DEFAULT_MAX_RECV_BYTES;
  }
  c->eps = calloc(cfg->n_endpoints, sizeof *c->eps);
  if (oom || !c->eps) {
    client_free(c);
    return CAIRN_ENOMEM;
  }
  c->n_eps = (unsigned)cfg->n_endpoints;
  bool tls_opts = cfg->ca_file || cfg->cert_file || cfg->key_file || cfg->server_name ||
                  cfg->insecure_skip_verify;
  int rc = 0;
  for (unsigned i = 0; i < c->n_eps && rc == 0; i++) {
    rc = ep_init(&c->eps[i], cfg->endpoints[i], tls_opts);
  }
  if (rc != 0) {
    client_free(c);
    return rc;
  }
  c->objs.prev = c->objs.next = &c->objs;
  /* With TLS, the first client now: it reads and checks the TLS files (the
   * others use the same files). */
  if (tls_opts || strncmp(c->eps[0].given, "https://", 8) == 0) {
    grpc_client *gc;
    rc = ep_client(c, 0, &gc);
    if (rc != 0) {
      client_free(c);
      return rc;
    }
  }
  uv_timer_init(loop, &c->handle);
  c->handle.data = c;
  *out = c;
  return 0;
}

/* ---- objects ------------------------------------------------------------------- */

static void close_step(cairn_client *c);

void cairn__attach(cairn_client *c, struct cairn__obj *obj) {
  CAIRN_ASSERT(obj->close_cb);
  obj->next = &c->objs;
  obj->prev = c->objs.prev;
  c->objs.prev->next = obj;
  c->objs.prev = obj;
}

void cairn__detach(cairn_client *c, struct cairn__obj *obj) {
  CAIRN_ASSERT(obj->prev && obj->next);
  obj->prev->next = obj->next;
  obj->next->prev = obj->prev;
  obj->prev = obj->next = NULL;
  close_step(c);
}

bool cairn__closing(const cairn_client *c) {
  return c->closing;
}

int cairn__stream(cairn_client *c, const char *path, bool require_leader, int endpoint_index,
                  uint64_t timeout_ms, const struct grpc_client_handlers *h, void *data,
                  grpc_ccall **out, unsigned *used) {
  if (c->closing) {
    return CAIRN_ESTOPPED;
  }
  if (endpoint_index >= (int)c->n_eps) {
    return CAIRN_EINVAL;
  }
  unsigned i = endpoint_index >= 0 ? (unsigned)endpoint_index : c->current;
  grpc_client *gc;
  int rc = ep_client(c, i, &gc);
  if (rc != 0) {
    return rc;
  }
  static const struct grpc_metadata leader = {"hasleader", "true"};
  rc = grpc_client_call(gc, path, require_leader ? &leader : NULL, require_leader ? 1 : 0,
                        timeout_ms, h, data, out);
  if (rc == 0 && used) {
    *used = i;
  }
  return rc;
}

/* ---- unary calls ------------------------------------------------------------------ */

static void cu_attempt_start(struct cu *u);

static void cu_closed(uv_handle_t *h) {
  struct cu *u = h->data;
  cairn_client *c = u->c;
  if (u->prev) {
    u->prev->next = u->next;
  } else {
    c->calls = u->next;
  }
  if (u->next) {
    u->next->prev = u->prev;
  }
  CAIRN_ASSERT(c->n_calls > 0);
  c->n_calls--;
  free(u->path);
  free(u->req);
  free(u->last_message);
  free(u);
  close_step(c);
}

/* Ends u: unpacks the answer, runs cb, frees u (from the timer's close). */
static void cu_finish(struct cu *u, int code, const char *message, const uint8_t *resp,
                      size_t len) {
  CAIRN_ASSERT(u->state != CU_DONE);
  u->state = CU_DONE;
  u->call = NULL;
  ProtobufCMessage *msg = NULL;
  if (code == GRPC_OK) {
    msg = protobuf_c_message_unpack(u->desc, NULL, len, resp);
    if (!msg) {
      code = GRPC_INTERNAL;
      message = CLIENT_UNMARSHAL_TEXT;
    }
  }
  struct cairn_result r = {
      .code = code,
      .message = code == GRPC_OK ? "" : (message ? message : ""),
      .msg = msg,
      .endpoint = u->c->eps[u->ep].name,
  };
  u->cb(u->data, &r);
  if (msg) {
    protobuf_c_message_free_unpacked(msg, NULL);
  }
  uv_timer_stop(&u->timer);
  uv_close((uv_handle_t *)&u->timer, cu_closed);
}

static uint64_t cu_left_ms(const struct cu *u) {
  uint64_t now = uv_now(u->c->loop);
  return u->deadline_ms > now ? u->deadline_ms - now : 0;
}

static void cu_on_timer(uv_timer_t *t) {
  struct cu *u = t->data;
  CAIRN_ASSERT(u->state == CU_BACKOFF);
  if (u->end_code) {
    cu_finish(u, u->end_code, u->end_text, NULL, 0);
    return;
  }
  if (cu_left_ms(u) == 0) {
    cu_finish(u, GRPC_DEADLINE_EXCEEDED, GRPC_CLIENT_DEADLINE_TEXT, NULL, 0);
    return;
  }
  u->state = CU_CALLING;
  cu_attempt_start(u);
}

static void cu_on_answer(void *data, int status, const char *message, const uint8_t *resp,
                         size_t len) {
  struct cu *u = data;
  cairn_client *c = u->c;
  bool sent = u->call ? grpc_ccall_request_sent(u->call) : true;
  u->call = NULL;
  if (status != GRPC_OK && cairn__endpoint_fault(status, message) && u->fixed < 0) {
    cairn__endpoint_failed(c, u->ep);
  }
  if (c->closing || !cairn__should_retry(u->idempotent, sent, status, message)) {
    cu_finish(u, status, message, resp, len);
    return;
  }
  /* Retry after a backoff, within the deadline. */
  uint64_t left = cu_left_ms(u);
  if (left == 0) {
    cu_finish(u, status, message, NULL, 0);
    return;
  }
  free(u->last_message);
  u->last_message = strdup(message ? message : "");
  u->last_code = status;
  uint64_t wait = cairn__backoff_ms(u->attempt++);
  u->state = CU_BACKOFF;
  uv_timer_start(&u->timer, cu_on_timer, wait < left ? wait : left, 0);
}

/* Starts one attempt; on a failure to start, ends the call (from the loop:
 * the timer). */
static void cu_attempt_start(struct cu *u) {
  cairn_client *c = u->c;
  u->ep = u->fixed >= 0 ? (unsigned)u->fixed : c->current;
  grpc_client *gc;
  int rc = ep_client(c, u->ep, &gc);
  if (rc == 0) {
    rc = grpc_client_unary(gc, u->path, NULL, 0, cu_left_ms(u), u->req, u->req_len, &u->call,
                           cu_on_answer, u);
  }
  if (rc != 0) {
    /* Only from a retry (the first attempt's error is returned): end it
     * with the status that fits, from the timer. */
    u->state = CU_BACKOFF;
    u->end_code = rc == CAIRN_ESTOPPED ? GRPC_CANCELLED
                  : rc == CAIRN_EBUSY  ? GRPC_RESOURCE_EXHAUSTED
                                       : GRPC_INTERNAL;
    u->end_text = rc == CAIRN_ESTOPPED ? GRPC_CLIENT_CLOSING_TEXT : cairn_strerror(rc);
    uv_timer_start(&u->timer, cu_on_timer, 0, 0);
  }
}

int cairn_unary(cairn_client *c, const char *path, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, bool idempotent,
                const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  if (!c || !path || path[0] != '/' || !strchr(path + 1, '/') || !req || !resp_desc || !cb) {
    return CAIRN_EINVAL;
  }
  if (c->closing) {
    return CAIRN_ESTOPPED;
  }
  if (c->n_calls >= CLIENT_UNARY_MAX) {
    return CAIRN_EBUSY;
  }
  int fixed = -1;
  if (opts && opts->endpoint) {
    fixed = cairn__endpoint_index(c, opts->endpoint);
    if (fixed < 0) {
      return CAIRN_EINVAL;
    }
  }
  struct cu *u = calloc(1, sizeof *u);
  if (!u) {
    return CAIRN_ENOMEM;
  }
  int rc = CAIRN_ENOMEM;
  u->path = strdup(path);
  if (!u->path) {
    goto err_after_alloc;
  }
  rc = cairn__pack(req, &u->req, &u->req_len);
  if (rc != 0) {
    goto err_after_alloc;
  }
  u->c = c;
  u->desc = resp_desc;
  u->idempotent = idempotent;
  u->fixed = fixed;
  u->cb = cb;
  u->data = data;
  uint64_t timeout = opts && opts->timeout_ms ? opts->timeout_ms : c->cfg.request_timeout_ms;
  u->deadline_ms = uv_now(c->loop) + timeout;
  u->state = CU_CALLING;
  u->ep = fixed >= 0 ? (unsigned)fixed : c->current;
  grpc_client *gc;
  rc = ep_client(c, u->ep, &gc);
  if (rc == 0) {
    rc = grpc_client_unary(gc, u->path, NULL, 0, timeout, u->req, u->req_len, &u->call,
                           cu_on_answer, u);
  }
  if (rc != 0) {
    goto err_after_alloc;
  }
  uv_timer_init(c->loop, &u->timer);
  u->timer.data = u;
  u->next = c->calls;
  if (c->calls) {
    c->calls->prev = u;
  }
  c->calls = u;
  c->n_calls++;
  return 0;

err_after_alloc:
  free(u->req);
  free(u->path);
  free(u);
  return rc;
}

void cairn_response_free(ProtobufCMessage *msg) {
  if (msg) {
    protobuf_c_message_free_unpacked(msg, NULL);
  }
}

/* ---- close ------------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  cairn_client *c = h->data;
  void (*cb)(void *) = c->closed_cb;
  void *data = c->closed_data;
  client_free(c);
  if (cb) {
    cb(data);
  }
}

static void on_gc_closed(void *data) {
  cairn_client *c = data;
  CAIRN_ASSERT(c->gc_closing > 0);
  c->gc_closing--;
  close_step(c);
}

/* The last step of a close, once nothing is left. */
static void close_step(cairn_client *c) {
  if (!c->closing || c->handle_closing || c->gc_closing > 0 || c->n_calls > 0 ||
      c->objs.next != &c->objs) {
    return;
  }
  c->handle_closing = true;
  uv_close((uv_handle_t *)&c->handle, on_handle_closed);
}

void cairn_client_close(cairn_client *c, void (*closed_cb)(void *data), void *data) {
  CAIRN_ASSERT(!c->closing);
  c->closing = true;
  c->closed_cb = closed_cb;
  c->closed_data = data;
  /* Objects first: each ends itself (from the loop) and detaches. Bounded
   * by the list; an object may detach inside its close_cb, so the next one
   * is taken first. */
  struct cairn__obj *o = c->objs.next;
  while (o != &c->objs) {
    struct cairn__obj *next = o->next;
    o->close_cb(o);
    o = next;
  }
  /* Calls waiting for a retry end from their timers; those in flight end
   * when their grpc_client closes. */
  for (struct cu *u = c->calls; u; u = u->next) {
    if (u->state == CU_BACKOFF && !u->end_code) {
      u->end_code = GRPC_CANCELLED;
      u->end_text = GRPC_CLIENT_CLOSING_TEXT;
      uv_timer_start(&u->timer, cu_on_timer, 0, 0);
    }
  }
  for (unsigned i = 0; i < c->n_eps; i++) {
    if (c->eps[i].gc) {
      c->gc_closing++;
      grpc_client_close(c->eps[i].gc, on_gc_closed, c);
      c->eps[i].gc = NULL;
    }
  }
  close_step(c);
}
