/* wire/grpc_int.h: what the files of the gRPC server share (not a public
 * header; services use wire/grpc.h).
 *
 *   grpc.c       the server: listeners, accept, method table, flushing of
 *                connections with pending output, graceful shutdown
 *   grpc_conn.c  one connection: its state machine, socket I/O, TLS records,
 *                telling HTTP/2 from HTTP/1.1, closing
 *   grpc_h2.c    the nghttp2 session of an HTTP/2 connection
 *   grpc_call.c  one gRPC call on a stream: message framing, send queue,
 *                status and trailers, deadline; the grpc_call_* API
 *   http1.c      HTTP/1.1 requests (wire/http1.h); the grpc_http_* API
 *   tls.c        OpenSSL behind struct tls_ops
 *
 * Re-entrancy rule: service callbacks (on_message, on_half_close, on_close,
 * on_writable, the HTTP handler) are called only from the loop's own entry
 * points (read and write completions, timers, the flush idle handle), never
 * from inside a grpc_* function a service called. A service's grpc_call_send
 * or grpc_call_finish only queues and marks the connection dirty; the
 * flush idle handle puts the bytes on the wire. A connection is torn down
 * only at the end of an entry point (grpc_conn_after), never in the middle
 * of nghttp2 or a service callback. */
#ifndef CAIRN_GRPC_INT_H
#define CAIRN_GRPC_INT_H

#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "wire/grpc.h"
#include "wire/tls.h"

/* ---- defaults and internal bounds --------------------------------------- */

#define GRPC_DEFAULT_MAX_RECV_BYTES ((size_t)2 * 1024 * 1024)
#define GRPC_DEFAULT_MAX_SEND_QUEUE_BYTES ((size_t)8 * 1024 * 1024)
#define GRPC_DEFAULT_MAX_CONNECTIONS 10000u
/* Size of one read from a socket (one shared buffer per server). */
#define GRPC_READ_BYTES 65536u
/* Output is gathered into write buffers of this size before uv_write. */
#define GRPC_WBUF_BYTES 65536u
/* HTTP/2 windows we grant: per stream and for the connection. Received data
 * is consumed at once (assembled into at most one message per call), so a
 * larger window costs no memory; it only saves round trips on uploads. */
#define GRPC_H2_STREAM_WINDOW (1u << 20)
#define GRPC_H2_CONN_WINDOW (16u << 20)
/* Per-connection bound on calls whose on_writable is due, run per flush
 * pass; the rest wait for the next pass. */
#define GRPC_WRITABLE_RUNS_MAX 1024u
/* The HTTP/2 client preface. */
#define GRPC_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define GRPC_H2_PREFACE_LEN 24u

/* ---- server ------------------------------------------------------------- */

struct grpc_method_entry {
  struct grpc_method m; /* m.path points to path below */
  char *path;
  size_t service_len; /* "/svc/" prefix length, slashes included */
};

struct grpc_listener {
  uv_tcp_t tcp;
  grpc_server *s;
  tls_ctx *tls; /* NULL: plaintext */
  struct grpc_listener *next;
  bool pending; /* a connection waits in libuv until accepting resumes */
};

typedef struct grpc_conn grpc_conn;

struct grpc_server {
  uv_loop_t *loop;
  size_t max_recv;
  size_t max_send_queue;
  unsigned max_connections;
  const struct tls_ops *tls_ops;

  struct grpc_method_entry *methods; /* sorted by path */
  size_t n_methods;

  grpc_http_handler http_handler;
  void *http_ctx;
  grpc_router router;
  void *router_ctx;

  struct grpc_listener *listeners;
  int last_port;

  grpc_conn *conns; /* doubly linked through conn->prev/next */
  unsigned n_conns;

  /* Connections with output to produce; the idle handle drains the list on
   * the next loop iteration. */
  grpc_conn *dirty;
  uv_idle_t flush_idle;

  uint8_t read_buf[GRPC_READ_BYTES]; /* consumed within each read callback */
  bool reading;                      /* read_buf lent out (assertion) */

  /* Shutdown: listeners closing, then connections; then the handles. */
  bool shutting_down;
  bool accept_paused; /* grpc_server_set_accepting(false) */
  uv_timer_t shutdown_timer;
  /* The shutdown timer's first run ends the wait for PING ACKs (some
   * clients answer late): the final GOAWAYs go out then. */
  bool shutdown_grace_over;
  uint64_t shutdown_rest_ms;
  unsigned handles_open; /* listeners + idle + timer not yet closed */
  void (*closed_cb)(void *data);
  void *closed_data;

  struct grpc_server_stats stats;
};

/* The method registered for path, or NULL. */
const struct grpc_method_entry *grpc_server_find_method(const grpc_server *s, const char *path);

/* The UNIMPLEMENTED text for an unknown path into buf: "unknown service X",
 * "unknown method M for service X" or "malformed method name: \"P\"". */
void grpc_server_unknown_text(const grpc_server *s, const char *path, char *buf, size_t cap);

/* Queues c for the flush idle handle. */
void grpc_server_mark_dirty(grpc_server *s, grpc_conn *c);

/* c's handle is closed and c is about to be freed: unlink it. */
void grpc_server_conn_gone(grpc_server *s, grpc_conn *c);

/* ---- connection ----------------------------------------------------------- */

enum grpc_conn_state {
  CONN_TLS_HANDSHAKE, /* TLS records only, until the handshake is done */
  CONN_SNIFF,         /* fewer bytes than the HTTP/2 preface so far */
  CONN_H2,            /* nghttp2 session */
  CONN_HTTP1,         /* HTTP/1.1 requests */
  CONN_DRAINING,      /* no more input; close when the writes in flight end */
  CONN_CLOSED         /* handle closing; calls already closed */
};

struct grpc_wbuf {
  uv_write_t req;
  grpc_conn *c;
  size_t len, cap;
  uint8_t data[];
};

struct grpc_call;
struct http1_state;

struct grpc_conn {
  uv_tcp_t tcp;
  grpc_server *s;
  grpc_conn *prev, *next; /* s->conns */
  grpc_conn *dirty_next;  /* s->dirty */
  bool dirty;
  enum grpc_conn_state state;

  const struct tls_ops *tls_ops;
  tls_conn *tls; /* NULL: plaintext */

  uint8_t sniff[GRPC_H2_PREFACE_LEN];
  size_t sniff_len;

  nghttp2_session *h2;
  struct grpc_call *calls; /* every stream with a call object */
  unsigned n_streams;
  struct grpc_call *writable_due; /* calls whose on_writable should run */
  bool shutdown_notice_sent;      /* GOAWAY(2^31-1) submitted */
  bool shutdown_ping_sent;        /* the PING after it submitted */
  bool goaway_sent;               /* the final GOAWAY submitted */

  struct http1_state *http1;

  struct grpc_wbuf *wbuf;  /* being filled, not yet given to uv_write */
  size_t write_bytes;      /* in uv_write or in wbuf, not yet written */
  bool read_paused;        /* not reading (backpressure, or not started) */
  uv_timer_t *drain_timer; /* while DRAINING; freed in its close callback */
  bool fatal;              /* close at the end of the current entry point */
  unsigned depth;          /* entry points on the stack (for grpc_conn_after) */
  char peer[64];           /* "ip:port", for log lines */
};

/* Moves c to state to; asserts that the transition is legal. */
void grpc_conn_set_state(grpc_conn *c, enum grpc_conn_state to);

/* Accepts a connection from listener l. */
void grpc_conn_accept(grpc_server *s, struct grpc_listener *l);

/* Hands plaintext to the peer (through TLS if any). Errors: CAIRN_ENOMEM,
 * CAIRN_EIO (TLS); the caller then fails the connection. */
int grpc_conn_output(grpc_conn *c, const uint8_t *data, size_t len);

/* Produces output and processes buffered input as far as the write bound
 * allows; run from entry points only. */
void grpc_conn_flush(grpc_conn *c);

/* Entry point bracket: grpc_conn_enter() at the start of a loop callback
 * working on c, grpc_conn_after() at its end (flushes, closes a connection
 * that failed or finished). c is invalid after grpc_conn_after(). */
void grpc_conn_enter(grpc_conn *c);
void grpc_conn_after(grpc_conn *c);

/* Marks the connection failed (any depth; torn down in grpc_conn_after). */
void grpc_conn_fail(grpc_conn *c, const char *why);

/* Stops input and closes once the output written so far is on the wire. */
void grpc_conn_drain(grpc_conn *c);

/* Graceful shutdown of one connection (server shutdown). */
void grpc_conn_shutdown(grpc_conn *c);

/* Closes at once: calls get on_close, the handle closes, c is freed in its
 * close callback. Only from grpc_conn_after() and the server's shutdown
 * timer (not inside callbacks). */
void grpc_conn_close(grpc_conn *c);

/* ---- HTTP/2 session (grpc_h2.c) --------------------------------------------- */

/* Creates the session and queues our SETTINGS (the first frame out). */
int grpc_h2_start(grpc_conn *c);
/* Feeds bytes read from the peer (after TLS). */
void grpc_h2_recv(grpc_conn *c, const uint8_t *data, size_t len);
/* Serializes frames while the write bound allows; then runs due
 * on_writable callbacks; drains the connection when nghttp2 is done. */
void grpc_h2_send(grpc_conn *c);
/* GOAWAY(2^31-1) and a PING; the final GOAWAY follows the PING's ACK. */
void grpc_h2_shutdown(grpc_conn *c);
/* Sends the final GOAWAY now if the shutdown notice went out and its PING
 * has not been answered. */
void grpc_h2_shutdown_final(grpc_conn *c);
/* Closes every call (on_close) and deletes the session. */
void grpc_h2_teardown(grpc_conn *c);

/* ---- calls (grpc_call.c) -------------------------------------------------- */

enum grpc_call_state {
  CALL_HEADERS,   /* request headers arriving; no method yet */
  CALL_ACTIVE,    /* dispatched to a method; no response bytes yet */
  CALL_SENDING,   /* response HEADERS submitted; messages flowing */
  CALL_FINISHING, /* finish asked: trailers after the queue drains */
  CALL_DONE,      /* final HEADERS (trailers or trailers-only) submitted */
  CALL_CLOSED     /* stream closed; on_close running or ran */
};

struct grpc_send_chunk {
  struct grpc_send_chunk *next;
  size_t len, off;
  uint8_t data[]; /* 5-byte prefix and the message */
};

struct grpc_call {
  grpc_conn *conn;
  int32_t stream_id;
  enum grpc_call_state state;
  struct grpc_method method;     /* a copy: the table may grow meanwhile */
  bool registered;               /* method is set: a service call (on_close due) */
  struct grpc_call *prev, *next; /* conn->calls */

  /* Request headers as "name\0value\0" pairs. */
  char *hdrs;
  size_t hdrs_len, hdrs_cap;
  size_t hdrs_accounted; /* HPACK size: name + value + 32 per field */

  /* Receiving. */
  uint8_t prefix[5];
  size_t prefix_have;
  uint8_t *msg; /* message being assembled (msg_len bytes when whole) */
  size_t msg_len, msg_have;
  bool msg_pending; /* prefix read, payload incomplete */
  uint8_t *req;     /* unary/server-stream: the one request message */
  size_t req_len;
  unsigned n_msgs;
  bool half_closed;  /* the client's END_STREAM arrived */
  bool recv_stopped; /* ignore further DATA */

  /* Sending. */
  struct grpc_send_chunk *q_head, *q_tail;
  size_t queued;
  bool deferred; /* the data source answered NGHTTP2_ERR_DEFERRED */
  int status;
  char *status_msg; /* percent-encoded, NULL: none */
  bool end_sent;    /* a frame with END_STREAM went out */
  bool cancelled;   /* client reset, deadline, or connection lost */

  void (*writable_cb)(grpc_call *call, void *data);
  void *writable_data;
  bool writable_queued;
  struct grpc_call *writable_next; /* conn->writable_due */

  uint64_t deadline_ms;
  uv_timer_t *timer; /* freed in its close callback */
  void *user;
};

/* A call object for a new stream (linked into c->calls). NULL: no memory. */
grpc_call *grpc_call_new(grpc_conn *c, int32_t stream_id);
/* Stores one request header. Errors: CAIRN_ETOO_LARGE (over
 * GRPC_HEADER_BYTES_MAX), CAIRN_ENOMEM. */
int grpc_call_add_header(grpc_call *call, const uint8_t *name, size_t nlen, const uint8_t *value,
                         size_t vlen);
/* The request headers are complete: validate and dispatch (or answer). */
void grpc_call_dispatch(grpc_call *call);
/* DATA payload for the call. */
void grpc_call_recv(grpc_call *call, const uint8_t *data, size_t len);
/* The client's END_STREAM. */
void grpc_call_half_close(grpc_call *call);
/* A frame of the call went out; end_stream: it carried END_STREAM. */
void grpc_call_frame_sent(grpc_call *call, bool end_stream);
/* The stream closed (any reason): on_close, then the call is freed. */
void grpc_call_stream_closed(grpc_call *call);
/* Runs the due on_writable callbacks of c (at most GRPC_WRITABLE_RUNS_MAX). */
void grpc_call_run_writable(grpc_conn *c);
/* nghttp2 data source of a call's response. */
ssize_t grpc_call_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data);

/* Pure helpers (tested directly). */

/* Percent-encodes a grpc-message: bytes outside 0x20..0x7E and '%' become
 * %XX (upper-case hex). Writes at most cap-1 bytes and a NUL; never splits
 * an escape. Returns the length written. */
size_t grpc_percent_encode(const char *in, size_t in_len, char *out, size_t cap);

/* Parses a grpc-timeout value (1 to 8 digits, then one of H M S m u n) into
 * milliseconds, rounded up. Errors: CAIRN_EINVAL. */
int grpc_parse_timeout(const char *v, uint64_t *ms_out);

/* content-type "application/grpc", or starting "application/grpc+" or
 * "application/grpc;". */
bool grpc_content_type_ok(const char *v);

#endif
