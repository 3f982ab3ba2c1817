/* wire/grpc.c: the gRPC server object: options, the method table,
 * listeners and accepting, the flush idle handle, graceful shutdown and
 * counters. Connections live in grpc_conn.c, streams in grpc_h2.c and
 * grpc_call.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_int.h"

static void server_maybe_finish(grpc_server *s);

/* ---- flushing --------------------------------------------------------------- */

/* Drains the dirty list once per loop iteration. A connection dirtied while
 * this runs lands on a fresh list and waits for the next iteration, so one
 * pass is bounded by the connections dirty when it started. */
static void flush_dirty(grpc_server *s) {
  grpc_conn *list = s->dirty;
  s->dirty = NULL;
  while (list) {
    grpc_conn *c = list;
    list = c->dirty_next;
    c->dirty_next = NULL;
    c->dirty = false;
    grpc_conn_enter(c);
    grpc_conn_after(c); /* flushes, closes if it failed or drained */
  }
}

static void on_flush_idle(uv_idle_t *h) {
  grpc_server *s = h->data;
  flush_dirty(s);
  if (!s->dirty) {
    uv_idle_stop(h);
  }
  server_maybe_finish(s);
}

void grpc_server_flush(grpc_server *s) {
  flush_dirty(s); /* the idle handle, if started, finds less or nothing */
}

void grpc_server_mark_dirty(grpc_server *s, grpc_conn *c) {
  if (c->dirty || c->state == CONN_CLOSED) {
    return;
  }
  c->dirty = true;
  c->dirty_next = s->dirty;
  s->dirty = c;
  uv_idle_start(&s->flush_idle, on_flush_idle);
}

/* ---- init, methods ---------------------------------------------------------- */

int grpc_server_init(uv_loop_t *loop, const struct grpc_server_options *opts, grpc_server **out) {
  if (!loop || !out) {
    return CAIRN_EINVAL;
  }
  grpc_server *s = calloc(1, sizeof *s);
  if (!s) {
    return CAIRN_ENOMEM;
  }
  s->loop = loop;
  s->max_recv = opts && opts->max_recv_message_bytes ? opts->max_recv_message_bytes
                                                     : GRPC_DEFAULT_MAX_RECV_BYTES;
  s->max_send_queue = opts && opts->max_send_queue_bytes ? opts->max_send_queue_bytes
                                                         : GRPC_DEFAULT_MAX_SEND_QUEUE_BYTES;
  s->max_connections =
      opts && opts->max_connections ? opts->max_connections : GRPC_DEFAULT_MAX_CONNECTIONS;
  s->tls_ops = &tls_openssl_ops;
  /* Neither handle is active until started, so they keep no loop alive. */
  uv_idle_init(loop, &s->flush_idle);
  s->flush_idle.data = s;
  uv_timer_init(loop, &s->shutdown_timer);
  s->shutdown_timer.data = s;
  s->handles_open = 2;
  *out = s;
  return 0;
}

static int method_cmp(const void *a, const void *b) {
  const struct grpc_method_entry *x = a, *y = b;
  return strcmp(x->path, y->path);
}

/* "/service/method": a leading slash, a non-empty service, one more slash,
 * a non-empty method without slashes. Returns the service prefix length
 * ("/service/") or 0 when malformed. */
static size_t path_service_len(const char *path) {
  if (!path || path[0] != '/') {
    return 0;
  }
  const char *slash = strchr(path + 1, '/');
  if (!slash || slash == path + 1 || slash[1] == '\0' || strchr(slash + 1, '/')) {
    return 0;
  }
  return (size_t)(slash - path) + 1;
}

int grpc_server_register(grpc_server *s, const struct grpc_method *methods, size_t n) {
  if (!s || (!methods && n > 0)) {
    return CAIRN_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (!path_service_len(methods[i].path) || !methods[i].on_message ||
        methods[i].kind > GRPC_METHOD_BIDI_STREAM) {
      return CAIRN_EINVAL;
    }
    if (grpc_server_find_method(s, methods[i].path)) {
      return CAIRN_EINVAL;
    }
    for (size_t j = 0; j < i; j++) {
      if (strcmp(methods[i].path, methods[j].path) == 0) {
        return CAIRN_EINVAL;
      }
    }
  }
  struct grpc_method_entry *grown = realloc(s->methods, (s->n_methods + n) * sizeof *grown + 1);
  if (!grown) {
    return CAIRN_ENOMEM;
  }
  s->methods = grown;
  size_t added = 0;
  for (; added < n; added++) {
    struct grpc_method_entry *e = &s->methods[s->n_methods + added];
    e->path = strdup(methods[added].path);
    if (!e->path) {
      for (size_t k = 0; k < added; k++) {
        free(s->methods[s->n_methods + k].path);
      }
      return CAIRN_ENOMEM;
    }
    e->m = methods[added];
    e->m.path = e->path;
    e->service_len = path_service_len(e->path);
  }
  s->n_methods += n;
  qsort(s->methods, s->n_methods, sizeof *s->methods, method_cmp);
  return 0;
}

const struct grpc_method_entry *grpc_server_find_method(const grpc_server *s, const char *path) {
  if (!path || s->n_methods == 0) {
    return NULL;
  }
  struct grpc_method_entry key = {.path = (char *)path};
  return bsearch(&key, s->methods, s->n_methods, sizeof *s->methods, method_cmp);
}

void grpc_server_unknown_text(const grpc_server *s, const char *path, char *buf, size_t cap) {
  size_t slen = path_service_len(path);
  if (slen == 0) {
    snprintf(buf, cap, "malformed method name: \"%s\"", path ? path : "");
    return;
  }
  const char *service = path + 1;
  int service_len = (int)(slen - 2);
  /* The table is sorted, so a registered method of this service (same
   * "/service/" prefix) is the first entry not below the prefix. */
  bool known = false;
  for (size_t i = 0; i < s->n_methods; i++) {
    if (s->methods[i].service_len == slen && memcmp(s->methods[i].path, path, slen) == 0) {
      known = true;
      break;
    }
  }
  if (known) {
    snprintf(buf, cap, "unknown method %s for service %.*s", path + slen, service_len, service);
  } else {
    snprintf(buf, cap, "unknown service %.*s", service_len, service);
  }
}

void grpc_server_set_router(grpc_server *s, grpc_router r, void *ctx) {
  s->router = r;
  s->router_ctx = ctx;
}

void grpc_server_set_http_handler(grpc_server *s, grpc_http_handler h, void *ctx) {
  s->http_handler = h;
  s->http_ctx = ctx;
}

/* ---- listeners -------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h) {
  struct grpc_listener *l = h->data;
  grpc_server *s = l->s;
  s->tls_ops->ctx_free(l->tls);
  free(l);
  CAIRN_ASSERT(s->handles_open > 0);
  s->handles_open--;
  server_maybe_finish(s);
}

static void on_connection(uv_stream_t *server, int status) {
  struct grpc_listener *l = server->data;
  if (status < 0) {
    fprintf(stderr, "wire: accept: %s\n", uv_strerror(status));
    return;
  }
  if (l->s->accept_paused) {
    /* Not accepted: libuv holds it and stops polling this listener until
     * uv_accept(); the kernel's backlog holds the rest. */
    l->pending = true;
    return;
  }
  grpc_conn_accept(l->s, l);
}

void grpc_server_set_accepting(grpc_server *s, bool on) {
  s->accept_paused = !on;
  if (!on) {
    return;
  }
  for (struct grpc_listener *l = s->listeners; l; l = l->next) {
    if (l->pending) {
      l->pending = false;
      grpc_conn_accept(s, l);
    }
  }
}

int grpc_server_listen(grpc_server *s, const char *host, int port,
                       const struct grpc_tls_options *tls) {
  if (!s || !host || port < 0 || port > 65535) {
    return CAIRN_EINVAL;
  }
  if (s->shutting_down) {
    return CAIRN_ESTOPPED;
  }
  struct sockaddr_storage addr;
  int r = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                            : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (r != 0) {
    fprintf(stderr, "wire: listen: bad address %s: %s\n", host, uv_strerror(r));
    return CAIRN_EINVAL;
  }
  struct grpc_listener *l = calloc(1, sizeof *l);
  if (!l) {
    return CAIRN_ENOMEM;
  }
  l->s = s;
  if (tls && (tls->cert_file || tls->key_file)) {
    int rc = s->tls_ops->ctx_new(tls, &l->tls);
    if (rc != 0) {
      free(l);
      return rc;
    }
  }
  r = uv_tcp_init(s->loop, &l->tcp);
  if (r != 0) {
    s->tls_ops->ctx_free(l->tls);
    free(l);
    fprintf(stderr, "wire: listen: %s\n", uv_strerror(r));
    return CAIRN_EIO;
  }
  l->tcp.data = l;
  s->handles_open++;
  r = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr, 0);
  if (r == 0) {
    r = uv_listen((uv_stream_t *)&l->tcp, 511, on_connection);
  }
  if (r != 0) {
    fprintf(stderr, "wire: listen on %s:%d: %s\n", host, port, uv_strerror(r));
    uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    return CAIRN_EIO;
  }
  struct sockaddr_storage bound;
  int len = (int)sizeof bound;
  if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len) == 0) {
    s->last_port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                               : ntohs(((struct sockaddr_in *)&bound)->sin_port);
  }
  l->next = s->listeners;
  s->listeners = l;
  return 0;
}

int grpc_server_port(const grpc_server *s) {
  return s->last_port;
}

/* ---- connections, shutdown ------------------------------------------------------ */

void grpc_server_conn_gone(grpc_server *s, grpc_conn *c) {
  if (c->prev) {
    c->prev->next = c->next;
  } else {
    CAIRN_ASSERT(s->conns == c);
    s->conns = c->next;
  }
  if (c->next) {
    c->next->prev = c->prev;
  }
  CAIRN_ASSERT(s->n_conns > 0);
  s->n_conns--;
  if (c->dirty) {
    /* Closed while queued: unlink from the dirty list. */
    for (grpc_conn **p = &s->dirty; *p; p = &(*p)->dirty_next) {
      if (*p == c) {
        *p = c->dirty_next;
        break;
      }
    }
    c->dirty = false;
  }
  server_maybe_finish(s);
}

static void on_server_handle_closed(uv_handle_t *h) {
  grpc_server *s = h->data;
  CAIRN_ASSERT(s->handles_open > 0);
  s->handles_open--;
  if (s->handles_open > 0) {
    return;
  }
  void (*cb)(void *) = s->closed_cb;
  void *data = s->closed_data;
  for (size_t i = 0; i < s->n_methods; i++) {
    free(s->methods[i].path);
  }
  free(s->methods);
  free(s);
  if (cb) {
    cb(data);
  }
}

/* The last step of a shutdown: once listeners and connections are gone,
 * close the server's own handles; the last close callback frees it. */
static void server_maybe_finish(grpc_server *s) {
  if (!s->shutting_down || s->n_conns > 0 || s->listeners || s->handles_open != 2 ||
      uv_is_closing((uv_handle_t *)&s->flush_idle)) {
    return;
  }
  uv_timer_stop(&s->shutdown_timer);
  uv_idle_stop(&s->flush_idle);
  uv_close((uv_handle_t *)&s->shutdown_timer, on_server_handle_closed);
  uv_close((uv_handle_t *)&s->flush_idle, on_server_handle_closed);
}

/* How long a shutdown waits for the ACK of its PING before it sends the
 * final GOAWAY anyway. */
#define SHUTDOWN_PING_GRACE_MS 300u

static void on_shutdown_timeout(uv_timer_t *t) {
  grpc_server *s = t->data;
  if (!s->shutdown_grace_over) {
    s->shutdown_grace_over = true;
    for (grpc_conn *c = s->conns; c; c = c->next) {
      grpc_h2_shutdown_final(c);
    }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, s->shutdown_rest_ms, 0);
    return;
  }
  /* Bounded by the connection count; each close only starts closing. */
  grpc_conn *c = s->conns;
  while (c) {
    grpc_conn *next = c->next;
    grpc_conn_close(c);
    c = next;
  }
}

void grpc_server_shutdown(grpc_server *s, uint64_t timeout_ms, void (*closed_cb)(void *data),
                          void *data) {
  CAIRN_ASSERT(s && !s->shutting_down);
  s->shutting_down = true;
  s->closed_cb = closed_cb;
  s->closed_data = data;
  struct grpc_listener *l = s->listeners;
  s->listeners = NULL;
  while (l) {
    struct grpc_listener *next = l->next;
    uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
    l = next;
  }
  for (grpc_conn *c = s->conns; c; c = c->next) {
    grpc_conn_shutdown(c);
  }
  uint64_t grace = timeout_ms < SHUTDOWN_PING_GRACE_MS ? timeout_ms : SHUTDOWN_PING_GRACE_MS;
  s->shutdown_rest_ms = timeout_ms - grace;
  uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, grace, 0);
  /* One idle pass checks whether everything is already gone (no listener,
   * no connection): closed_cb then runs from the loop. */
  uv_idle_start(&s->flush_idle, on_flush_idle);
}

void grpc_server_end_streams(grpc_server *s, int status, const char *message) {
  for (grpc_conn *c = s->conns; c; c = c->next) {
    for (grpc_call *call = c->calls; call; call = call->next) {
      if (call->registered && call->method.kind != GRPC_METHOD_UNARY &&
          (call->state == CALL_ACTIVE || call->state == CALL_SENDING)) {
        (void)grpc_call_finish(call, status, message);
      }
    }
  }
}

void grpc_server_stats(const grpc_server *s, struct grpc_server_stats *out) {
  *out = s->stats;
  out->connections = s->n_conns;
}
