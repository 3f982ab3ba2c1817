/* wire/grpc_client.c: the gRPC client object (wire/grpc_client.h): the
 * endpoint and options, the process loop, calls, the unary helper, close.
 *
 * The process loop (grpc_client_process) is where deferred work happens:
 * the API only flags calls and queues them on the dirty list, then the idle
 * handle (or the end of the loop callback already running) processes them:
 * connections are started or torn down, requests submitted, RST_STREAMs
 * sent, data sources resumed, buffered messages delivered, on_writable and
 * on_done run, and frames are written. It runs a bounded number of rounds;
 * leftover work keeps the idle handle active for the next loop iteration.
 *
 * Closing: every call ends with CANCELLED, the loop runs their on_done,
 * then (no call left) connections send GOAWAY and close, the idle handle
 * closes, and the last close callback runs closed_cb and frees the client. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_client_int.h"

/* ---- endpoint ------------------------------------------------------------------- */

static bool gc_port_ok(const char *p) {
  if (!p[0] || strlen(p) > 5) {
    return false;
  }
  unsigned long v = 0;
  for (const char *q = p; *q; q++) {
    if (*q < '0' || *q > '9') {
      return false;
    }
    v = v * 10 + (unsigned long)(*q - '0');
  }
  return v >= 1 && v <= 65535;
}

int gc_parse_endpoint(const char *endpoint, char **host, char **port, bool *tls) {
  if (!endpoint) {
    return CAIRN_EINVAL;
  }
  const char *rest = endpoint;
  const char *default_port = NULL;
  *tls = false;
  if (strncmp(rest, "http://", 7) == 0) {
    rest += 7;
    default_port = "80";
  } else if (strncmp(rest, "https://", 8) == 0) {
    rest += 8;
    default_port = "443";
    *tls = true;
  } else if (strstr(rest, "://")) {
    return CAIRN_EINVAL; /* unix://, dns:// ...: not supported */
  }
  size_t len = strlen(rest);
  if (len > 0 && rest[len - 1] == '/') {
    len--; /* "http://host:2379/" */
  }
  if (len == 0 || len > 512 || memchr(rest, '/', len)) {
    return CAIRN_EINVAL;
  }
  const char *h = rest, *h_end, *p = NULL;
  if (rest[0] == '[') {
    const char *close = memchr(rest, ']', len);
    if (!close || close == rest + 1) {
      return CAIRN_EINVAL;
    }
    h = rest + 1;
    h_end = close;
    if (close + 1 < rest + len) {
      if (close[1] != ':') {
        return CAIRN_EINVAL;
      }
      p = close + 2;
    }
  } else {
    const char *colon = NULL;
    for (const char *q = rest; q < rest + len; q++) {
      if (*q == ':') {
        if (colon) {
          return CAIRN_EINVAL; /* a bare IPv6 address needs brackets */
        }
        colon = q;
      }
    }
    h_end = colon ? colon : rest + len;
    p = colon ? colon + 1 : NULL;
  }
  if (h_end == h) {
    return CAIRN_EINVAL;
  }
  char *hs = strndup(h, (size_t)(h_end - h));
  char *ps =
      p ? strndup(p, (size_t)(rest + len - p)) : (default_port ? strdup(default_port) : NULL);
  if (!hs || !ps) {
    free(hs);
    free(ps);
    return p || default_port ? CAIRN_ENOMEM : CAIRN_EINVAL;
  }
  if (!gc_port_ok(ps)) {
    free(hs);
    free(ps);
    return CAIRN_EINVAL;
  }
  *host = hs;
  *port = ps;
  return 0;
}

/* ---- client ---------------------------------------------------------------------- */

static void on_idle(uv_idle_t *h) {
  grpc_client_process(h->data);
}

int grpc_client_new(uv_loop_t *loop, const char *endpoint, const struct grpc_client_options *opts,
                    grpc_client **out) {
  static const struct grpc_client_options none;
  if (!loop || !out) {
    return CAIRN_EINVAL;
  }
  if (!opts) {
    opts = &none;
  }
  char *host = NULL, *port = NULL;
  bool tls = false;
  int rc = gc_parse_endpoint(endpoint, &host, &port, &tls);
  if (rc != 0) {
    if (rc == CAIRN_EINVAL) {
      fprintf(stderr, "wire: client: bad endpoint \"%s\"\n", endpoint ? endpoint : "(null)");
    }
    return rc;
  }
  bool tls_opts = opts->ca_file || opts->cert_file || opts->key_file || opts->server_name ||
                  opts->insecure_skip_verify;
  if (tls_opts && !tls) {
    fprintf(stderr, "wire: client: TLS options need an https:// endpoint (got \"%s\")\n", endpoint);
    free(host);
    free(port);
    return CAIRN_EINVAL;
  }
  grpc_client *cl = calloc(1, sizeof *cl);
  if (!cl) {
    rc = CAIRN_ENOMEM;
    goto err_after_parse;
  }
  cl->loop = loop;
  cl->host = host;
  cl->port = port;
  cl->use_tls = tls;
  cl->tls_ops = &tls_openssl_ops;
  bool v6 = strchr(host, ':') != NULL;
  size_t elen = strlen(host) + strlen(port) + 4;
  cl->endpoint = malloc(elen);
  cl->tls_name = strdup(opts->server_name ? opts->server_name : host);
  if (!cl->endpoint || !cl->tls_name) {
    rc = CAIRN_ENOMEM;
    goto err_after_client;
  }
  snprintf(cl->endpoint, elen, v6 ? "[%s]:%s" : "%s:%s", host, port);
  cl->max_recv = opts->max_recv_message_bytes ? opts->max_recv_message_bytes
                                              : GRPC_CLIENT_DEFAULT_MAX_RECV_BYTES;
  cl->max_send_queue = opts->max_send_queue_bytes ? opts->max_send_queue_bytes
                                                  : GRPC_CLIENT_DEFAULT_MAX_SEND_QUEUE_BYTES;
  cl->connect_timeout_ms =
      opts->connect_timeout_ms ? opts->connect_timeout_ms : GRPC_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS;
  cl->stream_window =
      opts->stream_window_bytes ? opts->stream_window_bytes : GRPC_CLIENT_DEFAULT_STREAM_WINDOW;
  cl->conn_window =
      opts->conn_window_bytes ? opts->conn_window_bytes : GRPC_CLIENT_DEFAULT_CONN_WINDOW;
  /* HTTP/2 windows are at most 2^31 - 1. */
  if (cl->stream_window > INT32_MAX) {
    cl->stream_window = INT32_MAX;
  }
  if (cl->conn_window > INT32_MAX) {
    cl->conn_window = INT32_MAX;
  }
  if (cl->conn_window < cl->stream_window) {
    cl->conn_window = cl->stream_window;
  }
  cl->max_calls = opts->max_calls ? opts->max_calls : GRPC_CLIENT_DEFAULT_MAX_CALLS;
  cl->keepalive_time_ms = opts->keepalive_time_ms;
  cl->keepalive_timeout_ms = opts->keepalive_timeout_ms ? opts->keepalive_timeout_ms
                                                        : GRPC_CLIENT_DEFAULT_KEEPALIVE_TIMEOUT_MS;
  cl->keepalive_without_calls = opts->keepalive_permit_without_calls;
  if (tls) {
    struct tls_client_options to = {
        .ca_file = opts->ca_file,
        .cert_file = opts->cert_file,
        .key_file = opts->key_file,
        .insecure_skip_verify = opts->insecure_skip_verify,
    };
    rc = cl->tls_ops->client_ctx_new(&to, &cl->tls);
    if (rc != 0) {
      goto err_after_client;
    }
  }
  uv_idle_init(loop, &cl->idle);
  cl->idle.data = cl;
  *out = cl;
  return 0;

err_after_client:
  free(cl->endpoint);
  free(cl->tls_name);
  free(cl);
err_after_parse:
  free(host);
  free(port);
  return rc;
}

const char *grpc_client_endpoint(const grpc_client *client) {
  return client->endpoint;
}

void grpc_client_stats(const grpc_client *client, struct grpc_client_stats *out) {
  *out = client->stats;
  out->calls_open = client->n_calls;
}

void grpc_client_wake(grpc_client *cl) {
  if (!cl->idle_closed) {
    uv_idle_start(&cl->idle, on_idle);
  }
}

void grpc_client_mark(grpc_client *cl, grpc_ccall *call) {
  if (!call->dirty) {
    call->dirty = true;
    call->dirty_next = NULL;
    if (cl->dirty_tail) {
      cl->dirty_tail->dirty_next = call;
    } else {
      cl->dirty_head = call;
    }
    cl->dirty_tail = call;
  }
  grpc_client_wake(cl);
}

gc_conn *grpc_client_conn_for_call(grpc_client *cl) {
  gc_conn *c = cl->current;
  if (c && !c->failed && c->state != GC_CONN_DRAINING && c->state != GC_CONN_CLOSED) {
    return c;
  }
  c = gc_conn_new(cl);
  cl->current = c;
  return c;
}

static void gc_client_free(grpc_client *cl) {
  void (*cb)(void *) = cl->closed_cb;
  void *data = cl->closed_data;
  if (cl->tls) {
    cl->tls_ops->ctx_free(cl->tls);
  }
  free(cl->endpoint);
  free(cl->host);
  free(cl->port);
  free(cl->tls_name);
  free(cl);
  if (cb) {
    cb(data);
  }
}

static void on_idle_closed(uv_handle_t *h) {
  grpc_client *cl = h->data;
  cl->idle_close_done = true;
  if (!cl->conns) {
    gc_client_free(cl);
  }
}

void grpc_client_conn_gone(grpc_client *cl, gc_conn *c) {
  for (gc_conn **p = &cl->conns; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  if (cl->current == c) {
    cl->current = NULL;
  }
  if (cl->idle_close_done && !cl->conns) {
    gc_client_free(cl);
  }
}

/* A closing client, once every call is gone: the connections close, then the
 * idle handle; the last close callback frees the client. */
static void gc_client_close_step(grpc_client *cl) {
  if (!cl->closing || cl->idle_closed || cl->n_calls > 0) {
    return;
  }
  for (gc_conn *c = cl->conns; c; c = c->next) {
    gc_conn_close(c);
  }
  cl->idle_closed = true;
  uv_idle_stop(&cl->idle);
  uv_close((uv_handle_t *)&cl->idle, on_idle_closed);
}

static bool gc_conns_need_work(const grpc_client *cl) {
  for (const gc_conn *c = cl->conns; c; c = c->next) {
    if (c->state != GC_CONN_CLOSED && (c->failed || c->state == GC_CONN_INIT)) {
      return true;
    }
  }
  return false;
}

void grpc_client_process(grpc_client *cl) {
  CAIRN_ASSERT(!cl->processing);
  if (cl->idle_closed) {
    return; /* closed: only close callbacks remain */
  }
  cl->processing = true;
  for (unsigned round = 0; round < GRPC_CLIENT_PROCESS_ROUNDS_MAX; round++) {
    for (gc_conn *c = cl->conns; c; c = c->next) {
      gc_conn_process(c);
    }
    /* Take the list as it is: calls marked meanwhile wait for the next round. */
    grpc_ccall *list = cl->dirty_head;
    cl->dirty_head = cl->dirty_tail = NULL;
    unsigned n = 0;
    while (list && n < GRPC_CLIENT_CALLS_PER_ROUND_MAX) {
      grpc_ccall *call = list;
      list = call->dirty_next;
      call->dirty = false;
      call->dirty_next = NULL;
      gc_call_process(call); /* may free call */
      n++;
    }
    if (list) {
      /* Over the per-round bound: back in front of the list. */
      grpc_ccall *last = list;
      while (last->dirty_next) {
        last = last->dirty_next;
      }
      last->dirty_next = cl->dirty_head;
      if (!cl->dirty_head) {
        cl->dirty_tail = last;
      }
      cl->dirty_head = list;
    }
    for (gc_conn *c = cl->conns; c; c = c->next) {
      gc_conn_process(c); /* teardown of what failed during the calls' work */
      if (c->state != GC_CONN_CLOSED) {
        gc_conn_flush(c);
      }
    }
    gc_client_close_step(cl);
    if (cl->idle_closed || (!cl->dirty_head && !gc_conns_need_work(cl))) {
      break;
    }
  }
  cl->processing = false;
  if (cl->idle_closed) {
    return;
  }
  if (cl->dirty_head || gc_conns_need_work(cl)) {
    uv_idle_start(&cl->idle, on_idle);
  } else {
    uv_idle_stop(&cl->idle);
  }
}

void grpc_client_close(grpc_client *client, void (*closed_cb)(void *data), void *data) {
  grpc_client *cl = client;
  CAIRN_ASSERT(!cl->closing);
  cl->closing = true;
  cl->closed_cb = closed_cb;
  cl->closed_data = data;
  /* Bounded by the calls open; ending one does not unlink it. */
  for (grpc_ccall *call = cl->calls; call; call = call->all_next) {
    gc_call_end(call, GRPC_CANCELLED, GRPC_CLIENT_CLOSING_TEXT);
  }
  grpc_client_wake(cl);
}

/* ---- calls ---------------------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t) {
  grpc_ccall *call = t->data;
  grpc_client *cl = call->cl;
  if (call->state != GC_CALL_DONE) {
    gc_call_end(call, GRPC_DEADLINE_EXCEEDED, GRPC_CLIENT_DEADLINE_TEXT);
  }
  grpc_client_process(cl);
}

int grpc_client_call(grpc_client *client, const char *path, const struct grpc_metadata *md,
                     size_t n, uint64_t timeout_ms, const struct grpc_client_handlers *h,
                     void *data, grpc_ccall **out) {
  grpc_client *cl = client;
  if (!cl) {
    return CAIRN_EINVAL;
  }
  if (cl->closing) {
    return CAIRN_ESTOPPED;
  }
  if (cl->n_calls >= cl->max_calls) {
    return CAIRN_EBUSY;
  }
  grpc_ccall *call = NULL;
  int rc = gc_call_new(cl, path, md, n, timeout_ms, h, data, &call);
  if (rc != 0) {
    return rc;
  }
  gc_conn *c = grpc_client_conn_for_call(cl);
  if (!c) {
    free(call->req_hdrs);
    free(call);
    return CAIRN_ENOMEM;
  }
  gc_call_attach(call, c);
  call->all_next = cl->calls;
  if (cl->calls) {
    cl->calls->all_prev = call;
  }
  cl->calls = call;
  cl->n_calls++;
  cl->stats.calls_total++;
  if (timeout_ms > 0) {
    uv_timer_init(cl->loop, &call->timer);
    call->timer.data = call;
    call->has_timer = true;
    uv_timer_start(&call->timer, on_deadline, timeout_ms, 0);
  }
  grpc_client_mark(cl, call);
  if (out) {
    *out = call;
  }
  return 0;
}

/* ---- unary --------------------------------------------------------------------------- */

static void gc_unary_quiet(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  (void)status;
  (void)message;
  (void)data;
}

static void gc_unary_done(grpc_ccall *call, int status, const char *message, void *data) {
  const uint8_t *resp = NULL;
  size_t len = 0;
  if (status == GRPC_OK && call->n_msgs == 0) {
    status = GRPC_INTERNAL;
    message = "cardinality violation: received no response message from non-streaming RPC";
  } else if (status == GRPC_OK && call->n_msgs > 1) {
    status = GRPC_INTERNAL;
    message =
        "cardinality violation: expected <EOF> for non server-streaming RPCs, but received "
        "another message";
  } else if (status == GRPC_OK) {
    resp = call->unary_resp;
    len = call->unary_len;
  }
  call->unary_cb(data, status, message, resp, len);
}

int grpc_client_unary(grpc_client *client, const char *path, const struct grpc_metadata *md,
                      size_t n, uint64_t timeout_ms, const uint8_t *req, size_t len,
                      grpc_ccall **out, grpc_client_unary_cb cb, void *data) {
  if (!cb || (!req && len > 0) || len > UINT32_MAX) {
    return CAIRN_EINVAL;
  }
  struct grpc_client_handlers h = {.on_message = NULL, .on_done = gc_unary_done};
  grpc_ccall *call = NULL;
  int rc = grpc_client_call(client, path, md, n, timeout_ms, &h, data, &call);
  if (rc != 0) {
    return rc;
  }
  call->unary = true;
  call->unary_cb = cb;
  rc = grpc_ccall_send(call, req, len);
  if (rc != 0) {
    /* Only CAIRN_ENOMEM can happen on a fresh call: end it quietly. */
    call->h.on_done = gc_unary_quiet;
    grpc_ccall_cancel(call);
    return rc;
  }
  grpc_ccall_close_send(call);
  if (out) {
    *out = call;
  }
  return 0;
}
