/* wire/grpc_client_conn.c: one client connection: resolve, connect, TLS,
 * socket I/O and the nghttp2 client session.
 *
 * State machine (enum gc_conn_state, gc_conn_set_state() asserts):
 *
 *   INIT --process loop--> RESOLVING --addresses--> CONNECTING
 *   CONNECTING --connected, https--> HANDSHAKE --ALPN h2 (or none)--> READY
 *   CONNECTING --connected, http---> READY
 *   READY --GOAWAY received or stream ids used up--> DRAINING
 *   any --failure, timeout, EOF, session over, client close--> CLOSED
 *
 * A connection that fails is only flagged (gc_conn_fail, any context); the
 * process loop tears it down: calls the server has not ended get
 * UNAVAILABLE with the reason, the session is deleted, handles close, and
 * the connection is freed when the last close callback ran.
 *
 * Input: the socket is always read (even when writes back up), so the
 * server is never blocked by us; what it may send is bounded by our HTTP/2
 * windows (DATA) and by nghttp2's own limits (control frames). Received DATA
 * is acknowledged (nghttp2_session_consume) as calls deliver it
 * (grpc_client_call.c). Output: nghttp2 serializes frames into write buffers
 * while fewer than GRPC_CLIENT_WRITE_BYTES_MAX bytes wait for the socket.
 *
 * Keepalive (keepalive_time_ms > 0): ka_timer checks, once READY, how long
 * ago bytes last arrived. Past keepalive_time_ms a PING goes out (only
 * while calls are attached, unless keepalive_without_calls); when nothing at
 * all arrives within keepalive_timeout_ms after it, the connection fails
 * with GRPC_CLIENT_KEEPALIVE_TEXT. Any frame counts as an answer, as in
 * grpc-go: a connection busy receiving needs no PING. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_client_int.h"

static const bool gc_conn_transitions[7][7] = {
    /* to:        INIT   RESOLV CONNECT HANDSH READY  DRAIN  CLOSED */
    [GC_CONN_INIT] = {false, true, false, false, false, false, true},
    [GC_CONN_RESOLVING] = {false, false, true, false, false, false, true},
    [GC_CONN_CONNECTING] = {false, false, false, true, true, false, true},
    [GC_CONN_HANDSHAKE] = {false, false, false, false, true, false, true},
    [GC_CONN_READY] = {false, false, false, false, false, true, true},
    [GC_CONN_DRAINING] = {false, false, false, false, false, false, true},
    [GC_CONN_CLOSED] = {false, false, false, false, false, false, false},
};

void gc_conn_set_state(gc_conn *c, enum gc_conn_state to) {
  CAIRN_ASSERT(gc_conn_transitions[c->state][to]);
  c->state = to;
}

static void gc_conn_maybe_free(gc_conn *c) {
  if (c->state != GC_CONN_CLOSED || c->handles_open > 0 || c->gai_pending) {
    return;
  }
  grpc_client *cl = c->cl;
  if (c->addrs) {
    uv_freeaddrinfo(c->addrs);
  }
  grpc_client_conn_gone(cl, c);
  free(c);
}

static void on_timer_closed(uv_handle_t *h) {
  gc_conn *c = h->data;
  CAIRN_ASSERT(c->handles_open > 0);
  c->handles_open--;
  gc_conn_maybe_free(c);
}

static void on_tcp_closed(uv_handle_t *h) {
  gc_conn *c = h->data;
  free(h);
  CAIRN_ASSERT(c->handles_open > 0);
  c->handles_open--;
  gc_conn_maybe_free(c);
}

gc_conn *gc_conn_new(grpc_client *cl) {
  gc_conn *c = calloc(1, sizeof *c);
  if (!c) {
    return NULL;
  }
  c->cl = cl;
  c->state = GC_CONN_INIT;
  uv_timer_init(cl->loop, &c->timer);
  c->timer.data = c;
  uv_timer_init(cl->loop, &c->ka_timer);
  c->ka_timer.data = c;
  c->handles_open = 2;
  c->next = cl->conns;
  cl->conns = c;
  cl->stats.connections_opened++;
  grpc_client_wake(cl);
  return c;
}

/* Keeps the first reason: a later, vaguer one ("closed") never hides it. */
static void gc_conn_note(gc_conn *c, const char *fmt, va_list ap) {
  if (c->error[0]) {
    return;
  }
  int n = snprintf(c->error, sizeof c->error, "connection to %s: ", c->cl->endpoint);
  if (n > 0 && (size_t)n < sizeof c->error) {
    vsnprintf(c->error + n, sizeof c->error - (size_t)n, fmt, ap);
  }
}

static void gc_conn_notef(gc_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gc_conn_notef(gc_conn *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  gc_conn_note(c, fmt, ap);
  va_end(ap);
}

void gc_conn_fail(gc_conn *c, const char *fmt, ...) {
  if (c->state == GC_CONN_CLOSED) {
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  gc_conn_note(c, fmt, ap);
  va_end(ap);
  c->failed = true;
  if (c->cl->current == c) {
    c->cl->current = NULL; /* the next call opens a new connection */
  }
  grpc_client_wake(c->cl);
}

/* ---- output ---------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  struct gc_wbuf *wb = (struct gc_wbuf *)req;
  gc_conn *c = wb->c;
  CAIRN_ASSERT(c->write_bytes >= wb->len);
  c->write_bytes -= wb->len;
  free(wb);
  if (c->state == GC_CONN_CLOSED) {
    return; /* cancelled by the close; the close callback frees c */
  }
  if (status < 0) {
    gc_conn_fail(c, "write: %s", uv_strerror(status));
  }
  grpc_client_process(c->cl);
}

static void gc_conn_submit(gc_conn *c) {
  struct gc_wbuf *wb = c->wbuf;
  if (!wb || wb->len == 0) {
    return;
  }
  c->wbuf = NULL;
  uv_buf_t b = uv_buf_init((char *)wb->data, (unsigned)wb->len);
  int r = uv_write(&wb->req, (uv_stream_t *)c->tcp, &b, 1, on_write);
  if (r != 0) {
    c->write_bytes -= wb->len;
    free(wb);
    gc_conn_fail(c, "write: %s", uv_strerror(r));
  }
}

static int gc_wbuf_ensure(gc_conn *c) {
  if (c->wbuf && c->wbuf->len == c->wbuf->cap) {
    gc_conn_submit(c);
    if (c->failed) {
      return CAIRN_EIO;
    }
  }
  if (!c->wbuf) {
    struct gc_wbuf *wb = malloc(sizeof *wb + GRPC_CLIENT_WBUF_BYTES);
    if (!wb) {
      return CAIRN_ENOMEM;
    }
    wb->c = c;
    wb->len = 0;
    wb->cap = GRPC_CLIENT_WBUF_BYTES;
    c->wbuf = wb;
  }
  return 0;
}

static int gc_raw_output(gc_conn *c, const uint8_t *data, size_t len) {
  while (len > 0) {
    int rc = gc_wbuf_ensure(c);
    if (rc != 0) {
      return rc;
    }
    struct gc_wbuf *wb = c->wbuf;
    size_t n = wb->cap - wb->len;
    if (n > len) {
      n = len;
    }
    memcpy(wb->data + wb->len, data, n);
    wb->len += n;
    c->write_bytes += n;
    data += n;
    len -= n;
  }
  return 0;
}

/* Moves the ciphertext TLS produced into write buffers. */
static int gc_tls_take(gc_conn *c) {
  const struct tls_ops *ops = c->cl->tls_ops;
  while (ops->pending(c->tls) > 0) {
    int rc = gc_wbuf_ensure(c);
    if (rc != 0) {
      return rc;
    }
    struct gc_wbuf *wb = c->wbuf;
    size_t n = ops->take(c->tls, wb->data + wb->len, wb->cap - wb->len);
    if (n == 0) {
      break;
    }
    wb->len += n;
    c->write_bytes += n;
  }
  return 0;
}

static int gc_conn_output(gc_conn *c, const uint8_t *data, size_t len) {
  if (!c->tls) {
    return gc_raw_output(c, data, len);
  }
  int rc = c->cl->tls_ops->write(c->tls, data, len);
  if (rc != 0) {
    return rc;
  }
  return gc_tls_take(c);
}

void gc_conn_flush(gc_conn *c) {
  if (c->failed || (c->state != GC_CONN_READY && c->state != GC_CONN_DRAINING)) {
    if (!c->failed && c->state == GC_CONN_HANDSHAKE) {
      gc_conn_submit(c);
    }
    return;
  }
  /* Bounded by the write bound: every round adds the bytes of a frame. */
  while (c->write_bytes < GRPC_CLIENT_WRITE_BYTES_MAX) {
    const uint8_t *d = NULL;
    ssize_t n = nghttp2_session_mem_send(c->h2, &d);
    if (n < 0) {
      gc_conn_fail(c, "HTTP/2: %s", nghttp2_strerror((int)n));
      return;
    }
    if (n == 0) {
      break;
    }
    int rc = gc_conn_output(c, d, (size_t)n);
    if (rc != 0) {
      gc_conn_fail(c, "%s", rc == CAIRN_ENOMEM ? "out of memory" : "TLS write failed");
      return;
    }
  }
  gc_conn_submit(c);
  if (!c->failed && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
    /* Both sides are done (GOAWAY and no stream left), or nghttp2 ended the
     * session on a protocol error: whatever calls remain lose it. */
    gc_conn_fail(c, "the HTTP/2 session ended");
  }
}

/* ---- nghttp2 callbacks ------------------------------------------------------------- */

static grpc_ccall *stream_call(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS) {
    return 0;
  }
  grpc_ccall *call = stream_call(session, frame->hd.stream_id);
  if (!call) {
    return 0;
  }
  return gc_call_on_header(call, frame, name, namelen, value, valuelen);
}

static const char *gc_goaway_debug(const nghttp2_goaway *g, char *buf, size_t cap) {
  size_t n = g->opaque_data_len < cap - 1 ? g->opaque_data_len : cap - 1;
  for (size_t i = 0; i < n; i++) {
    uint8_t b = g->opaque_data[i];
    buf[i] = (b >= 0x20 && b < 0x7f) ? (char)b : '?';
  }
  buf[n] = '\0';
  return buf;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  gc_conn *c = user_data;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      grpc_ccall *call = stream_call(session, frame->hd.stream_id);
      if (call) {
        gc_call_on_headers_end(call, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
      }
      break;
    }
    case NGHTTP2_DATA: {
      grpc_ccall *call = stream_call(session, frame->hd.stream_id);
      if (call && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        gc_call_on_data_end_stream(call);
      }
      break;
    }
    case NGHTTP2_GOAWAY: {
      char dbg[96];
      gc_goaway_debug(&frame->goaway, dbg, sizeof dbg);
      gc_conn_notef(c, "the server sent GOAWAY %s%s%s", gc_h2_error_name(frame->goaway.error_code),
                    dbg[0] ? ": " : "", dbg);
      if (c->state == GC_CONN_READY) {
        gc_conn_set_state(c, GC_CONN_DRAINING);
      }
      if (c->cl->current == c) {
        c->cl->current = NULL;
      }
      grpc_client_wake(c->cl);
      break;
    }
    default:
      break;
  }
  return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  (void)user_data;
  grpc_ccall *call = stream_call(session, stream_id);
  if (!call) {
    /* Nobody wants it: acknowledged at once (the connection window). */
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  gc_call_on_data(call, data, len);
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)user_data;
  grpc_ccall *call = stream_call(session, stream_id);
  if (call) {
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    call->stream_live = false;
    gc_call_on_stream_close(call, error_code);
  }
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  gc_conn *c = user_data;
  if (frame->hd.type == NGHTTP2_HEADERS) {
    grpc_ccall *call = stream_call(session, frame->hd.stream_id);
    if (call) {
      call->headers_sent = true; /* in our write buffer: the server may see it */
    }
  }
  if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
    /* nghttp2 found the server's frames broken and ends the session. */
    gc_conn_notef(c, "the server broke the HTTP/2 protocol (GOAWAY %s sent)",
                  gc_h2_error_name(frame->goaway.error_code));
  }
  return 0;
}

/* ---- keepalive ------------------------------------------------------------------------ */

static void on_keepalive(uv_timer_t *t) {
  gc_conn *c = t->data;
  grpc_client *cl = c->cl;
  if (c->failed || (c->state != GC_CONN_READY && c->state != GC_CONN_DRAINING)) {
    return;
  }
  uint64_t now = uv_now(cl->loop);
  if (c->ping_out && c->last_recv_ms >= c->ping_sent_ms) {
    c->ping_out = false; /* answered (the ACK or any other frame) */
  }
  if (c->ping_out) {
    uint64_t waited = now - c->ping_sent_ms;
    if (waited >= cl->keepalive_timeout_ms) {
      gc_conn_fail(c, GRPC_CLIENT_KEEPALIVE_TEXT);
      grpc_client_process(cl);
      return;
    }
    uv_timer_start(&c->ka_timer, on_keepalive, cl->keepalive_timeout_ms - waited, 0);
    return;
  }
  uint64_t idle = now - c->last_recv_ms;
  if (idle < cl->keepalive_time_ms) {
    uv_timer_start(&c->ka_timer, on_keepalive, cl->keepalive_time_ms - idle, 0);
    return;
  }
  if (c->n_calls == 0 && !cl->keepalive_without_calls) {
    /* Nothing to protect: look again after another period. */
    uv_timer_start(&c->ka_timer, on_keepalive, cl->keepalive_time_ms, 0);
    return;
  }
  int rv = nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
  if (rv != 0) {
    gc_conn_fail(c, "HTTP/2 PING: %s", nghttp2_strerror(rv));
    grpc_client_process(cl);
    return;
  }
  c->ping_out = true;
  c->ping_sent_ms = now;
  uv_timer_start(&c->ka_timer, on_keepalive, cl->keepalive_timeout_ms, 0);
  grpc_client_process(cl); /* writes the PING */
}

static void gc_keepalive_start(gc_conn *c) {
  grpc_client *cl = c->cl;
  c->last_recv_ms = uv_now(cl->loop);
  if (cl->keepalive_time_ms > 0) {
    uv_timer_start(&c->ka_timer, on_keepalive, cl->keepalive_time_ms, 0);
  }
}

static int gc_h2_start(gc_conn *c) {
  grpc_client *cl = c->cl;
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    return CAIRN_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return CAIRN_ENOMEM;
  }
  /* We acknowledge DATA as calls deliver it: that is what bounds the memory
   * of a paused call to its stream window. */
  nghttp2_option_set_no_auto_window_update(opt, 1);
  /* No closed streams kept for priorities (they would pile up: the
   * server's stream limit is unlimited; see wire/grpc_h2.c). */
  nghttp2_option_set_no_closed_streams(opt, 1);
  int rv = nghttp2_session_client_new2(&c->h2, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    c->h2 = NULL;
    return CAIRN_ENOMEM;
  }
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cl->stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, GRPC_CLIENT_HEADER_BYTES_MAX},
  };
  rv = nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  if (rv == 0) {
    rv = nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                               (int32_t)cl->conn_window);
  }
  if (rv != 0) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    return CAIRN_ENOMEM;
  }
  gc_conn_set_state(c, GC_CONN_READY);
  uv_timer_stop(&c->timer);
  gc_keepalive_start(c);
  /* The calls that waited for us go out at the next process round. */
  for (grpc_ccall *call = c->calls; call; call = call->next) {
    if (call->state == GC_CALL_WAITING) {
      grpc_client_mark(cl, call);
    }
  }
  return 0;
}

/* ---- input ----------------------------------------------------------------------- */

static void gc_h2_recv(gc_conn *c, const uint8_t *data, size_t len) {
  if (c->failed || (c->state != GC_CONN_READY && c->state != GC_CONN_DRAINING)) {
    return;
  }
  ssize_t rv = nghttp2_session_mem_recv(c->h2, data, len);
  if (rv < 0) {
    /* Broken input nghttp2 refuses outright: send its GOAWAY if it queued
     * one, then close. */
    gc_conn_notef(c, "the server broke the HTTP/2 protocol: %s", nghttp2_strerror((int)rv));
    if (rv > NGHTTP2_ERR_FATAL) {
      gc_conn_flush(c);
    }
    gc_conn_fail(c, "HTTP/2: %s", nghttp2_strerror((int)rv));
  }
}

static void gc_tls_input(gc_conn *c, const uint8_t *data, size_t len) {
  grpc_client *cl = c->cl;
  const struct tls_ops *ops = cl->tls_ops;
  if (ops->feed(c->tls, data, len) != 0) {
    gc_conn_fail(c, "out of memory in TLS");
    return;
  }
  /* Bounded: each round consumes buffered ciphertext (one read's worth plus
   * an incomplete record). */
  while (!c->failed && c->state != GC_CONN_CLOSED) {
    bool was_done = ops->handshake_done(c->tls);
    size_t n = 0;
    int rc = ops->read(c->tls, cl->plain_buf, sizeof cl->plain_buf, &n);
    if (gc_tls_take(c) != 0) { /* handshake records and alerts go out too */
      gc_conn_fail(c, "out of memory in TLS");
      return;
    }
    if (rc == CAIRN_ESTOPPED) {
      gc_conn_fail(c, "the server closed the TLS session");
      return;
    }
    if (rc != 0) {
      gc_conn_submit(c); /* our alert, if any */
      gc_conn_fail(c, "TLS %s", ops->error(c->tls));
      return;
    }
    if (!was_done && ops->handshake_done(c->tls)) {
      const char *alpn = ops->alpn(c->tls);
      if (alpn && strcmp(alpn, "h2") != 0) {
        gc_conn_fail(c, "the server chose ALPN \"%s\", not \"h2\"", alpn);
        return;
      }
      if (gc_h2_start(c) != 0) {
        gc_conn_fail(c, "out of memory starting HTTP/2");
        return;
      }
    }
    if (n == 0) {
      return;
    }
    gc_h2_recv(c, cl->plain_buf, n);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  gc_conn *c = h->data;
  grpc_client *cl = c->cl;
  CAIRN_ASSERT(!cl->reading);
  cl->reading = true;
  *buf = uv_buf_init((char *)cl->read_buf, sizeof cl->read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  gc_conn *c = stream->data;
  grpc_client *cl = c->cl;
  cl->reading = false;
  if (nread == 0 || c->state == GC_CONN_CLOSED) {
    return;
  }
  if (nread > 0) {
    c->last_recv_ms = uv_now(cl->loop);
  }
  if (nread == UV_EOF) {
    gc_conn_fail(c, "closed by the server");
  } else if (nread < 0) {
    gc_conn_fail(c, "read: %s", uv_strerror((int)nread));
  } else if (c->tls) {
    gc_tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
  } else {
    gc_h2_recv(c, (const uint8_t *)buf->base, (size_t)nread);
  }
  grpc_client_process(cl);
}

/* ---- connecting ------------------------------------------------------------------ */

static void gc_try_next_address(gc_conn *c, int last_error);

static void on_connect(uv_connect_t *req, int status) {
  gc_conn *c = req->data;
  grpc_client *cl = c->cl;
  if (c->state == GC_CONN_CLOSED) {
    return; /* the handle is closing (UV_ECANCELED) */
  }
  if (status < 0) {
    uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
    c->tcp = NULL;
    gc_try_next_address(c, status);
    grpc_client_process(cl);
    return;
  }
  uv_tcp_nodelay(c->tcp, 1);
  uv_tcp_keepalive(c->tcp, 1, GRPC_CLIENT_TCP_KEEPALIVE_S);
  int r = uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read);
  if (r != 0) {
    gc_conn_fail(c, "read: %s", uv_strerror(r));
  } else if (cl->tls) {
    int rc = cl->tls_ops->client_conn_new(cl->tls, cl->tls_name, &c->tls);
    if (rc != 0) {
      gc_conn_fail(c, "out of memory for TLS");
    } else {
      gc_conn_set_state(c, GC_CONN_HANDSHAKE);
      gc_tls_input(c, NULL, 0); /* the ClientHello */
    }
  } else if (gc_h2_start(c) != 0) {
    gc_conn_fail(c, "out of memory starting HTTP/2");
  }
  grpc_client_process(cl);
}

static void gc_try_next_address(gc_conn *c, int last_error) {
  grpc_client *cl = c->cl;
  /* Bounded by the resolver's list. */
  while (c->addr_next) {
    struct addrinfo *a = c->addr_next;
    c->addr_next = a->ai_next;
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t) {
      gc_conn_fail(c, "out of memory");
      return;
    }
    uv_tcp_init(cl->loop, t);
    t->data = c;
    c->handles_open++;
    c->connect_req.data = c;
    int r = uv_tcp_connect(&c->connect_req, t, a->ai_addr, on_connect);
    if (r == 0) {
      c->tcp = t;
      return;
    }
    last_error = r;
    uv_close((uv_handle_t *)t, on_tcp_closed);
  }
  gc_conn_fail(c, "connect: %s", uv_strerror(last_error));
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  gc_conn *c = req->data;
  grpc_client *cl = c->cl;
  c->gai_pending = false;
  if (c->state == GC_CONN_CLOSED) {
    if (res) {
      uv_freeaddrinfo(res);
    }
    gc_conn_maybe_free(c);
    return;
  }
  if (status < 0) {
    gc_conn_fail(c, "resolve %s: %s", cl->host, uv_strerror(status));
  } else {
    c->addrs = res;
    c->addr_next = res;
    gc_conn_set_state(c, GC_CONN_CONNECTING);
    gc_try_next_address(c, UV_EADDRNOTAVAIL);
  }
  grpc_client_process(cl);
}

static void on_connect_timeout(uv_timer_t *t) {
  gc_conn *c = t->data;
  if (c->state == GC_CONN_CLOSED || c->state == GC_CONN_READY || c->state == GC_CONN_DRAINING) {
    return;
  }
  gc_conn_fail(c, "connect timeout after %llu ms", (unsigned long long)c->cl->connect_timeout_ms);
  grpc_client_process(c->cl);
}

static void gc_conn_start(gc_conn *c) {
  grpc_client *cl = c->cl;
  uv_timer_start(&c->timer, on_connect_timeout, cl->connect_timeout_ms, 0);
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  c->gai.data = c;
  int r = uv_getaddrinfo(cl->loop, &c->gai, on_resolved, cl->host, cl->port, &hints);
  if (r != 0) {
    gc_conn_fail(c, "resolve %s: %s", cl->host, uv_strerror(r));
    return;
  }
  c->gai_pending = true;
  gc_conn_set_state(c, GC_CONN_RESOLVING);
}

/* ---- teardown ---------------------------------------------------------------------- */

void gc_conn_detach_calls(gc_conn *c) {
  const char *why = c->error[0] ? c->error : "connection closed";
  /* Bounded by the calls attached; each detach unlinks one. */
  while (c->calls) {
    grpc_ccall *call = c->calls;
    if (call->stream_live && c->h2) {
      nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
    }
    call->stream_live = false;
    if (call->state != GC_CALL_DONE && !call->remote_ended) {
      gc_call_end(call, GRPC_UNAVAILABLE, why);
    }
    gc_call_detach(call);
  }
}

static void gc_conn_teardown(gc_conn *c) {
  grpc_client *cl = c->cl;
  if (!c->error[0]) {
    gc_conn_notef(c, "closed");
  }
  gc_conn_set_state(c, GC_CONN_CLOSED);
  if (cl->current == c) {
    cl->current = NULL;
  }
  gc_conn_detach_calls(c);
  if (c->h2) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
  }
  if (c->tls) {
    cl->tls_ops->conn_free(c->tls);
    c->tls = NULL;
  }
  if (c->wbuf) {
    c->write_bytes -= c->wbuf->len;
    free(c->wbuf);
    c->wbuf = NULL;
  }
  if (c->gai_pending) {
    uv_cancel((uv_req_t *)&c->gai); /* on_resolved still runs (UV_ECANCELED or done) */
  }
  if (c->tcp) {
    uv_close((uv_handle_t *)c->tcp, on_tcp_closed);
    c->tcp = NULL;
  }
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  uv_timer_stop(&c->ka_timer);
  uv_close((uv_handle_t *)&c->ka_timer, on_timer_closed);
}

void gc_conn_close(gc_conn *c) {
  if (c->state == GC_CONN_CLOSED) {
    return;
  }
  if (c->h2 && !c->failed) {
    /* Best effort: the GOAWAY goes to the socket now; the close follows. */
    nghttp2_session_terminate_session(c->h2, NGHTTP2_NO_ERROR);
    gc_conn_flush(c);
  }
  gc_conn_notef(c, "closed by the client");
  gc_conn_teardown(c);
}

void gc_conn_process(gc_conn *c) {
  switch (c->state) {
    case GC_CONN_INIT:
      if (!c->failed) {
        gc_conn_start(c);
      }
      break;
    case GC_CONN_CLOSED:
      return;
    default:
      break;
  }
  if (c->failed) {
    gc_conn_teardown(c);
  }
}
