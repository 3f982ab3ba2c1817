/* wire/grpc_conn.c: one client connection.
 *
 * State machine (enum grpc_conn_state, grpc_conn_set_state() asserts every
 * transition):
 *
 *   TLS_HANDSHAKE --handshake done, ALPN h2--> H2
 *   TLS_HANDSHAKE --handshake done, other----> SNIFF
 *   SNIFF --the 24-byte HTTP/2 preface-------> H2
 *   SNIFF --any byte that departs from it----> HTTP1
 *   any open state --error, EOF, done--------> DRAINING --writes done--> CLOSED
 *   any state --socket error, shutdown timeout--> CLOSED
 *
 * Input: the socket's bytes go through TLS (if any) and then to the state's
 * consumer. Output: plaintext goes through TLS (if any) into a write buffer
 * of GRPC_WBUF_BYTES, handed to uv_write at the end of each entry point.
 * Bytes handed to the socket and not yet written are bounded by
 * GRPC_CONN_WRITE_BYTES_MAX: past it the connection stops producing HTTP/2
 * frames and stops reading until the peer drains its side.
 *
 * A connection that is draining gets GRPC_DRAIN_TIMEOUT_MS to get its last
 * bytes out (a GOAWAY, a 400); a peer that does not read them is cut off. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_int.h"
#include "wire/http1.h"

#define GRPC_DRAIN_TIMEOUT_MS 5000u
#define GRPC_TCP_KEEPALIVE_S 60u

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Legal transitions: [from][to]. */
static const bool conn_transitions[6][6] = {
    /* to:          HANDSHAKE SNIFF  H2     HTTP1  DRAIN  CLOSED */
    [CONN_TLS_HANDSHAKE] = {false, true, true, false, true, true},
    [CONN_SNIFF] = {false, false, true, true, true, true},
    [CONN_H2] = {false, false, false, false, true, true},
    [CONN_HTTP1] = {false, false, false, false, true, true},
    [CONN_DRAINING] = {false, false, false, false, false, true},
    [CONN_CLOSED] = {false, false, false, false, false, false},
};

void grpc_conn_set_state(grpc_conn *c, enum grpc_conn_state to) {
  CAIRN_ASSERT(conn_transitions[c->state][to]);
  c->state = to;
}

static bool conn_open(const grpc_conn *c) {
  return c->state != CONN_DRAINING && c->state != CONN_CLOSED;
}

/* ---- output ------------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status) {
  struct grpc_wbuf *wb = (struct grpc_wbuf *)req;
  grpc_conn *c = wb->c;
  CAIRN_ASSERT(c->write_bytes >= wb->len);
  c->write_bytes -= wb->len;
  free(wb);
  if (c->state == CONN_CLOSED) {
    return; /* cancelled by uv_close; the close callback frees c */
  }
  grpc_conn_enter(c);
  if (status < 0) {
    grpc_conn_fail(c, uv_strerror(status));
  }
  grpc_conn_after(c);
}

/* Hands the filled write buffer to libuv. */
static int conn_submit(grpc_conn *c) {
  struct grpc_wbuf *wb = c->wbuf;
  if (!wb || wb->len == 0) {
    return 0;
  }
  c->wbuf = NULL;
  uv_buf_t b = uv_buf_init((char *)wb->data, (unsigned)wb->len);
  int r = uv_write(&wb->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (r != 0) {
    c->write_bytes -= wb->len;
    free(wb);
    grpc_conn_fail(c, uv_strerror(r));
    return CAIRN_EIO;
  }
  return 0;
}

/* Room for at least one byte in the write buffer. */
static int conn_wbuf_ensure(grpc_conn *c) {
  if (c->wbuf && c->wbuf->len == c->wbuf->cap) {
    int rc = conn_submit(c);
    if (rc != 0) {
      return rc;
    }
  }
  if (!c->wbuf) {
    struct grpc_wbuf *wb = malloc(sizeof *wb + GRPC_WBUF_BYTES);
    if (!wb) {
      return CAIRN_ENOMEM;
    }
    wb->c = c;
    wb->len = 0;
    wb->cap = GRPC_WBUF_BYTES;
    c->wbuf = wb;
  }
  return 0;
}

static int conn_raw_output(grpc_conn *c, const uint8_t *data, size_t len) {
  while (len > 0) {
    int rc = conn_wbuf_ensure(c);
    if (rc != 0) {
      return rc;
    }
    struct grpc_wbuf *wb = c->wbuf;
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
static int conn_tls_take(grpc_conn *c) {
  while (c->tls_ops->pending(c->tls) > 0) {
    int rc = conn_wbuf_ensure(c);
    if (rc != 0) {
      return rc;
    }
    struct grpc_wbuf *wb = c->wbuf;
    size_t n = c->tls_ops->take(c->tls, wb->data + wb->len, wb->cap - wb->len);
    if (n == 0) {
      break;
    }
    wb->len += n;
    c->write_bytes += n;
  }
  return 0;
}

int grpc_conn_output(grpc_conn *c, const uint8_t *data, size_t len) {
  if (c->state == CONN_CLOSED) {
    return CAIRN_ESTOPPED;
  }
  if (!c->tls) {
    return conn_raw_output(c, data, len);
  }
  int rc = c->tls_ops->write(c->tls, data, len);
  if (rc != 0) {
    return rc;
  }
  return conn_tls_take(c);
}

/* ---- input ---------------------------------------------------------------------- */

static void conn_start_h2(grpc_conn *c) {
  if (grpc_h2_start(c) != 0) {
    grpc_conn_fail(c, "out of memory starting HTTP/2");
  }
}

/* Plaintext from the peer, to the consumer of the current state. */
static void conn_plain_input(grpc_conn *c, const uint8_t *data, size_t len) {
  static const uint8_t preface[] = GRPC_H2_PREFACE;
  if (c->state == CONN_SNIFF) {
    size_t n = GRPC_H2_PREFACE_LEN - c->sniff_len;
    if (n > len) {
      n = len;
    }
    if (memcmp(data, preface + c->sniff_len, n) != 0) {
      /* Not HTTP/2: everything so far is the start of an HTTP/1.1 request. */
      if (http1_start(c) != 0) {
        grpc_conn_fail(c, "out of memory starting HTTP/1.1");
        return;
      }
      http1_recv(c, c->sniff, c->sniff_len);
      http1_recv(c, data, len);
      return;
    }
    memcpy(c->sniff + c->sniff_len, data, n);
    c->sniff_len += n;
    if (c->sniff_len < GRPC_H2_PREFACE_LEN) {
      return;
    }
    conn_start_h2(c);
    if (c->state != CONN_H2) {
      return;
    }
    grpc_h2_recv(c, c->sniff, c->sniff_len);
    data += n;
    len -= n;
    if (len == 0) {
      return;
    }
  }
  if (c->state == CONN_H2) {
    grpc_h2_recv(c, data, len);
  } else if (c->state == CONN_HTTP1) {
    http1_recv(c, data, len);
  }
}

static void conn_tls_input(grpc_conn *c, const uint8_t *data, size_t len) {
  if (c->tls_ops->feed(c->tls, data, len) != 0) {
    grpc_conn_fail(c, "out of memory in TLS");
    return;
  }
  uint8_t plain[16384];
  /* Bounded: each round consumes buffered ciphertext, of which there is at
   * most one read's worth plus an incomplete record. */
  while (conn_open(c) && !c->fatal) {
    bool was_done = c->tls_ops->handshake_done(c->tls);
    size_t n = 0;
    int rc = c->tls_ops->read(c->tls, plain, sizeof plain, &n);
    /* Handshake records and alerts go out even when the read failed. */
    if (conn_tls_take(c) != 0) {
      grpc_conn_fail(c, "out of memory in TLS");
      return;
    }
    if (rc == CAIRN_ESTOPPED) {
      grpc_conn_drain(c);
      return;
    }
    if (rc != 0) {
      fprintf(stderr, "wire: %s: TLS %s\n", c->peer, c->tls_ops->error(c->tls));
      grpc_conn_drain(c);
      return;
    }
    if (!was_done && c->tls_ops->handshake_done(c->tls)) {
      const char *alpn = c->tls_ops->alpn(c->tls);
      if (alpn && strcmp(alpn, "h2") == 0) {
        conn_start_h2(c);
      } else {
        grpc_conn_set_state(c, CONN_SNIFF);
      }
    }
    if (n == 0) {
      return; /* needs more ciphertext */
    }
    conn_plain_input(c, plain, n);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  grpc_conn *c = h->data;
  grpc_server *s = c->s;
  CAIRN_ASSERT(!s->reading);
  s->reading = true;
  *buf = uv_buf_init((char *)s->read_buf, sizeof s->read_buf);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  grpc_conn *c = stream->data;
  c->s->reading = false;
  if (nread == 0) {
    return; /* EAGAIN */
  }
  grpc_conn_enter(c);
  if (nread < 0) {
    if (nread == UV_EOF && c->state == CONN_HTTP1) {
      /* A client may half-close after its request: answer, then close. */
      http1_shutdown(c);
    } else if (nread == UV_EOF) {
      grpc_conn_drain(c);
    } else {
      grpc_conn_fail(c, uv_strerror((int)nread));
    }
  } else if (conn_open(c)) {
    if (c->tls) {
      conn_tls_input(c, (const uint8_t *)buf->base, (size_t)nread);
    } else {
      conn_plain_input(c, (const uint8_t *)buf->base, (size_t)nread);
    }
  }
  grpc_conn_after(c);
}

/* Reads while the connection takes input and its writes are below bound
 * (and, on HTTP/1.1, no request waits for its answer). */
static void conn_update_reading(grpc_conn *c) {
  bool want = conn_open(c) && !c->fatal && c->write_bytes < GRPC_CONN_WRITE_BYTES_MAX;
  if (want && c->state == CONN_HTTP1) {
    want = !http1_waiting(c);
  }
  if (want && c->read_paused) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) {
      c->read_paused = false;
    }
  } else if (!want && !c->read_paused) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->read_paused = true;
  }
}

/* ---- accept ---------------------------------------------------------------------- */

static void on_rejected_closed(uv_handle_t *h) {
  free(h);
}

/* Takes the pending connection off the listener and closes it (over the
 * connection bound, or out of memory). */
static void conn_reject(grpc_server *s, struct grpc_listener *l) {
  uv_tcp_t *t = malloc(sizeof *t);
  if (!t) {
    fprintf(stderr, "wire: out of memory rejecting a connection\n");
    return;
  }
  uv_tcp_init(s->loop, t);
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)t) != 0) {
    /* Nothing to take. */
  }
  uv_close((uv_handle_t *)t, on_rejected_closed);
}

static void on_conn_closed(uv_handle_t *h) {
  grpc_conn *c = h->data;
  grpc_server_conn_gone(c->s, c);
  free(c);
}

static void on_accept_failed_closed(uv_handle_t *h) {
  free(h->data);
}

void grpc_conn_accept(grpc_server *s, struct grpc_listener *l) {
  if (s->shutting_down || s->n_conns >= s->max_connections) {
    conn_reject(s, l);
    return;
  }
  grpc_conn *c = calloc(1, sizeof *c);
  if (!c) {
    conn_reject(s, l);
    return;
  }
  c->s = s;
  c->tls_ops = s->tls_ops;
  uv_tcp_init(s->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, on_accept_failed_closed);
    return;
  }
  if (l->tls && c->tls_ops->conn_new(l->tls, &c->tls) != 0) {
    fprintf(stderr, "wire: out of memory for a TLS session\n");
    uv_close((uv_handle_t *)&c->tcp, on_accept_failed_closed);
    return;
  }
  c->next = s->conns;
  if (s->conns) {
    s->conns->prev = c;
  }
  s->conns = c;
  s->n_conns++;
  uv_tcp_nodelay(&c->tcp, 1);
  uv_tcp_keepalive(&c->tcp, 1, GRPC_TCP_KEEPALIVE_S);
  struct sockaddr_storage peer;
  int plen = (int)sizeof peer;
  snprintf(c->peer, sizeof c->peer, "?");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen) == 0) {
    char ip[48] = "";
    int port = 0;
    if (peer.ss_family == AF_INET6) {
      uv_ip6_name((struct sockaddr_in6 *)&peer, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
    } else {
      uv_ip4_name((struct sockaddr_in *)&peer, ip, sizeof ip);
      port = ntohs(((struct sockaddr_in *)&peer)->sin_port);
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
  }
  c->state = c->tls ? CONN_TLS_HANDSHAKE : CONN_SNIFF;
  c->read_paused = true;
  conn_update_reading(c);
  if (c->read_paused) {
    grpc_conn_fail(c, "cannot read");
    grpc_server_mark_dirty(s, c);
  }
}

/* ---- entry points, closing --------------------------------------------------------- */

void grpc_conn_enter(grpc_conn *c) {
  c->depth++;
}

void grpc_conn_flush(grpc_conn *c) {
  if (c->fatal) {
    return;
  }
  if (c->state == CONN_H2) {
    grpc_h2_send(c);
  } else if (c->state == CONN_HTTP1) {
    http1_process(c);
  }
}

void grpc_conn_after(grpc_conn *c) {
  CAIRN_ASSERT(c->depth > 0);
  if (--c->depth > 0 || c->state == CONN_CLOSED) {
    return;
  }
  grpc_conn_flush(c);
  if (!c->fatal) {
    conn_submit(c);
  }
  if (c->fatal || (c->state == CONN_DRAINING && c->write_bytes == 0)) {
    grpc_conn_close(c);
    return;
  }
  conn_update_reading(c);
}

void grpc_conn_fail(grpc_conn *c, const char *why) {
  (void)why; /* a vanished peer is routine; not worth a log line */
  c->fatal = true;
  grpc_server_mark_dirty(c->s, c);
}

static void on_drain_timeout(uv_timer_t *t) {
  grpc_conn *c = t->data;
  grpc_conn_enter(c);
  grpc_conn_fail(c, "drain timeout");
  grpc_conn_after(c);
}

static void on_timer_closed(uv_handle_t *h) {
  free(h);
}

void grpc_conn_drain(grpc_conn *c) {
  if (!conn_open(c)) {
    return;
  }
  grpc_conn_set_state(c, CONN_DRAINING);
  if (!c->drain_timer) {
    uv_timer_t *t = malloc(sizeof *t);
    if (t) {
      uv_timer_init(c->s->loop, t);
      t->data = c;
      uv_timer_start(t, on_drain_timeout, GRPC_DRAIN_TIMEOUT_MS, 0);
      c->drain_timer = t;
    } else {
      c->fatal = true;
    }
  }
  grpc_server_mark_dirty(c->s, c);
}

void grpc_conn_shutdown(grpc_conn *c) {
  switch (c->state) {
    case CONN_H2:
      grpc_h2_shutdown(c);
      break;
    case CONN_HTTP1:
      http1_shutdown(c);
      break;
    case CONN_TLS_HANDSHAKE:
    case CONN_SNIFF:
      grpc_conn_drain(c);
      break;
    case CONN_DRAINING:
    case CONN_CLOSED:
      break;
  }
  grpc_server_mark_dirty(c->s, c);
}

void grpc_conn_close(grpc_conn *c) {
  if (c->state == CONN_CLOSED) {
    return;
  }
  grpc_conn_set_state(c, CONN_CLOSED);
  /* Services hear of their calls first; the state is already CLOSED, so
   * whatever they call on this connection does nothing. */
  if (c->h2) {
    grpc_h2_teardown(c);
  }
  if (c->http1) {
    http1_teardown(c);
  }
  if (c->tls) {
    c->tls_ops->conn_free(c->tls);
    c->tls = NULL;
  }
  if (c->wbuf) {
    c->write_bytes -= c->wbuf->len;
    free(c->wbuf);
    c->wbuf = NULL;
  }
  if (c->drain_timer) {
    uv_timer_stop(c->drain_timer);
    uv_close((uv_handle_t *)c->drain_timer, on_timer_closed);
    c->drain_timer = NULL;
  }
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}
