/* wire/grpc_client_int.h: what the files of the gRPC client share (not a
 * public header; users include wire/grpc_client.h).
 *
 *   grpc_client.c       the client: endpoint, options, the process loop that
 *                       runs every deferred action and callback, the
 *                       grpc_client_* and grpc_ccall_* API, close
 *   grpc_client_conn.c  one connection: resolve, connect, TLS, socket I/O,
 *                       the nghttp2 client session and its callbacks,
 *                       teardown
 *   grpc_client_call.c  one call on a stream: request headers, send queue
 *                       and data source, response framing, pause, status
 *
 * Re-entrancy rule: user callbacks run only from the loop's entry points
 * (read, write, connect and resolve completions, timers, the idle handle):
 * on_message from inside nghttp2_session_mem_recv() (a read completion) or
 * from grpc_client_process(); on_writable and on_done only from
 * grpc_client_process(). The API functions only change a call's flags and
 * queue it on the client's dirty list; grpc_client_process() does the
 * nghttp2 work (submit, RST_STREAM, resume) outside nghttp2's callbacks.
 * Calls are freed only after on_done, and connections only in their handles'
 * close callbacks. */
#ifndef CAIRN_GRPC_CLIENT_INT_H
#define CAIRN_GRPC_CLIENT_INT_H

#include <netdb.h>
#include <nghttp2/nghttp2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "wire/grpc_client.h"
#include "wire/tls.h"

/* One read from the socket (one buffer per client: reads never overlap). */
#define GRPC_CLIENT_READ_BYTES (64u * 1024u)
/* Output is gathered into write buffers of this size before uv_write. */
#define GRPC_CLIENT_WBUF_BYTES (64u * 1024u)
/* Rounds of the process loop per entry point; more work waits for the idle
 * handle (the next loop iteration), so a busy client never starves the loop. */
#define GRPC_CLIENT_PROCESS_ROUNDS_MAX 16u
/* Calls handled per round of the process loop. */
#define GRPC_CLIENT_CALLS_PER_ROUND_MAX 4096u
/* Buffered bytes delivered per call per round after a resume. */
#define GRPC_CLIENT_RESUME_BYTES_MAX (1u << 20)
/* Longest error text kept for a connection. */
#define GRPC_CLIENT_ERROR_TEXT_MAX 320u
#define GRPC_CLIENT_USER_AGENT "cairn-grpc-client/0.1"
#define GRPC_CLIENT_TCP_KEEPALIVE_S 60u

typedef struct gc_conn gc_conn;

/* ---- client -------------------------------------------------------------- */

struct grpc_client {
  uv_loop_t *loop;
  char *endpoint; /* "host:port" as given (for texts and :authority) */
  char *host;     /* without brackets */
  char *port;     /* decimal */
  char *tls_name; /* SNI / verification name */
  bool use_tls;
  tls_ctx *tls; /* NULL: plaintext */
  const struct tls_ops *tls_ops;

  size_t max_recv;
  size_t max_send_queue;
  uint64_t connect_timeout_ms;
  uint32_t stream_window;
  uint32_t conn_window;
  unsigned max_calls;
  uint64_t keepalive_time_ms; /* 0: off */
  uint64_t keepalive_timeout_ms;
  bool keepalive_without_calls;

  gc_conn *conns;   /* every connection not yet freed (singly linked) */
  gc_conn *current; /* the one new calls go to (NULL: open one) */

  /* Calls with something to do; drained by grpc_client_process(). */
  grpc_ccall *dirty_head, *dirty_tail;
  uv_idle_t idle;
  bool processing; /* grpc_client_process() on the stack (assertion) */

  uint8_t read_buf[GRPC_CLIENT_READ_BYTES];
  bool reading;             /* read_buf lent to libuv (assertion) */
  uint8_t plain_buf[16384]; /* one TLS record of plaintext */

  grpc_ccall *calls; /* every call not yet freed (all_prev/all_next) */

  bool closing;
  bool idle_closed;     /* uv_close called on the idle handle */
  bool idle_close_done; /* and its close callback ran */
  void (*closed_cb)(void *data);
  void *closed_data;

  unsigned n_calls; /* calls not yet freed */
  struct grpc_client_stats stats;
};

/* Queues call on the dirty list (once) and makes sure the idle handle runs. */
void grpc_client_mark(grpc_client *cl, grpc_ccall *call);
/* Makes sure grpc_client_process() runs soon (the idle handle). */
void grpc_client_wake(grpc_client *cl);
/* Runs everything that is due: connection teardown and output, call
 * actions, on_writable, buffered deliveries, on_done. Only from entry
 * points (never from the API, never nested). */
void grpc_client_process(grpc_client *cl);
/* The connection new calls should use: the current one, or a new one. NULL:
 * no memory. */
gc_conn *grpc_client_conn_for_call(grpc_client *cl);
/* A connection was freed: unlink it, and finish a close when it was the last. */
void grpc_client_conn_gone(grpc_client *cl, gc_conn *c);

/* ---- connection (grpc_client_conn.c) ------------------------------------------ */

enum gc_conn_state {
  GC_CONN_INIT,       /* created; resolve starts from the process loop */
  GC_CONN_RESOLVING,  /* uv_getaddrinfo in flight */
  GC_CONN_CONNECTING, /* uv_tcp_connect in flight (one address after another) */
  GC_CONN_HANDSHAKE,  /* TLS handshake */
  GC_CONN_READY,      /* HTTP/2 session up; takes new calls */
  GC_CONN_DRAINING,   /* GOAWAY received or sent: no new calls; closes when idle */
  GC_CONN_CLOSED      /* torn down: calls ended, handles closing */
};

struct gc_wbuf {
  uv_write_t req;
  gc_conn *c;
  size_t len, cap;
  uint8_t data[];
};

struct gc_conn {
  grpc_client *cl;
  gc_conn *next; /* cl->conns */
  enum gc_conn_state state;

  uv_getaddrinfo_t gai;
  bool gai_pending;
  struct addrinfo *addrs, *addr_next;
  uv_tcp_t *tcp; /* one per connect attempt; freed in its close callback */
  uv_connect_t connect_req;
  uv_timer_t timer; /* connect timeout; closed at teardown */
  /* Keepalive (cl->keepalive_time_ms > 0): armed once READY. */
  uv_timer_t ka_timer;
  uint64_t last_recv_ms; /* uv_now() of the last bytes read */
  uint64_t ping_sent_ms; /* uv_now() of the PING awaiting an answer */
  bool ping_out;         /* a PING is awaiting an answer */
  unsigned handles_open;

  tls_conn *tls;
  nghttp2_session *h2;
  struct gc_wbuf *wbuf; /* being filled */
  size_t write_bytes;   /* in wbuf or in uv_write, not yet written */

  grpc_ccall *calls; /* calls attached (waiting or open), doubly linked */
  unsigned n_calls;

  bool failed; /* tear down at the next process round */
  char error[GRPC_CLIENT_ERROR_TEXT_MAX];
};

/* Moves c to state to; asserts that the transition is legal. */
void gc_conn_set_state(gc_conn *c, enum gc_conn_state to);
/* A new connection (state INIT), linked into cl->conns. NULL: no memory. */
gc_conn *gc_conn_new(grpc_client *cl);
/* Marks c failed with a reason (printf format, the endpoint is prefixed);
 * any context. Its calls end with UNAVAILABLE at the next process round. */
void gc_conn_fail(gc_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Process-loop work for c: start it, tear it down if failed, submit its
 * waiting calls, serialize frames and write. */
void gc_conn_process(gc_conn *c);
/* Serializes frames while the write bound allows and hands them to libuv. */
void gc_conn_flush(gc_conn *c);
/* Graceful end for the client's close: GOAWAY, flush, then close. */
void gc_conn_close(gc_conn *c);
/* Takes every call off c: those the server has ended keep their buffered
 * messages; the others end with UNAVAILABLE and c's error text. */
void gc_conn_detach_calls(gc_conn *c);

/* ---- calls (grpc_client_call.c) ------------------------------------------------- */

enum gc_call_state {
  GC_CALL_WAITING, /* not yet on a stream (connection not ready) */
  GC_CALL_OPEN,    /* request submitted; stream_id set */
  GC_CALL_DONE     /* final status decided; on_done due */
};

struct gc_send_chunk {
  struct gc_send_chunk *next;
  size_t len, off;
  uint8_t data[]; /* 5-byte prefix and the message */
};

struct grpc_ccall {
  grpc_client *cl;
  gc_conn *conn;                          /* NULL once detached */
  struct grpc_ccall *prev, *next;         /* conn->calls */
  struct grpc_ccall *all_prev, *all_next; /* cl->calls */
  enum gc_call_state state;
  int32_t stream_id; /* 0 until submitted */
  bool headers_sent; /* HEADERS serialized (grpc_ccall_request_sent) */
  bool stream_live;  /* nghttp2 has the stream and its user data is us */

  struct grpc_client_handlers h;
  void *data;

  /* Request: "name\0value\0" pairs (path first, then metadata). */
  char *req_hdrs;
  size_t req_hdrs_len;
  size_t n_md;
  uint64_t deadline_ms; /* uv_now() based; 0: none */
  uv_timer_t timer;     /* deadline; initialized only with a deadline */
  bool has_timer;

  /* Sending. */
  struct gc_send_chunk *q_head, *q_tail;
  size_t queued;
  bool send_closed; /* close_send asked */
  bool eof_sent;    /* the data source returned EOF (END_STREAM) */
  bool deferred;    /* the data source answered NGHTTP2_ERR_DEFERRED */
  void (*writable_cb)(grpc_ccall *call, void *data);
  void *writable_data;
  bool writable_due;

  /* Receiving. */
  uint8_t prefix[5];
  size_t prefix_have;
  uint8_t *msg; /* message being assembled */
  size_t msg_len, msg_have;
  bool msg_pending;
  unsigned n_msgs;
  bool paused;
  uint8_t *held; /* raw DATA bytes received while paused, not consumed */
  size_t held_off, held_len, held_cap;
  bool resume_due;

  /* Response headers. */
  size_t hdr_bytes;
  int http_status; /* 0: not seen */
  bool content_type_ok;
  bool content_type_seen;
  char content_type[64]; /* for the error text (cut) */
  bool got_headers;      /* the first HEADERS block */
  bool encoding_other;   /* grpc-encoding other than identity */
  int grpc_status;       /* -1: not seen */
  bool grpc_status_bad;
  char *grpc_message;

  /* The server's outcome, known once the stream ended from its side; it is
   * delivered after the buffered messages. */
  bool remote_ended;
  int remote_status;
  char *remote_message;

  /* Final. */
  int status;
  char *message;   /* NULL: "" */
  bool rst_cancel; /* ending locally: RST_STREAM(CANCEL) the open stream */

  /* grpc_client_unary(): the first response message (owned) and the
   * callback. */
  bool unary;
  uint8_t *unary_resp;
  size_t unary_len;
  grpc_client_unary_cb unary_cb;

  bool dirty;
  struct grpc_ccall *dirty_next;
  bool in_callback; /* on_done running (assertion) */
};

/* Builds a call (state WAITING, not attached). Errors as grpc_client_call. */
int gc_call_new(grpc_client *cl, const char *path, const struct grpc_metadata *md, size_t n,
                uint64_t timeout_ms, const struct grpc_client_handlers *h, void *data,
                grpc_ccall **out);
/* Attaches call to c (c->calls). */
void gc_call_attach(grpc_ccall *call, gc_conn *c);
/* Takes call off its connection (the stream must be gone or detached). */
void gc_call_detach(grpc_ccall *call);
/* Submits the request on c's session. Errors: nghttp2's (the call ends). */
int gc_call_submit(grpc_ccall *call);
/* Decides the call's end (if not yet decided) and queues on_done. */
void gc_call_end(grpc_ccall *call, int status, const char *message);
/* Process-loop work for one dirty call. Returns true if it ran a callback or
 * changed anything nghttp2 must send. The call may be freed. */
bool gc_call_process(grpc_ccall *call);
/* Frees a call (after on_done). */
void gc_call_free(grpc_ccall *call);

/* nghttp2 events for a call's stream (grpc_client_conn.c calls these). */
int gc_call_on_header(grpc_ccall *call, const nghttp2_frame *frame, const uint8_t *name,
                      size_t nlen, const uint8_t *value, size_t vlen);
void gc_call_on_headers_end(grpc_ccall *call, bool end_stream);
void gc_call_on_data(grpc_ccall *call, const uint8_t *data, size_t len);
void gc_call_on_data_end_stream(grpc_ccall *call);
void gc_call_on_stream_close(grpc_ccall *call, uint32_t error_code);
ssize_t gc_call_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                          uint32_t *data_flags, nghttp2_data_source *source, void *user_data);

/* Pure helpers (tested directly). */

/* Percent-decodes a grpc-message (%XX, either case; a malformed escape is
 * kept as is) into out (cap bytes, NUL-terminated, cut at cap - 1). Returns
 * the length. */
size_t gc_percent_decode(const char *in, size_t in_len, char *out, size_t cap);
/* The grpc-timeout value for ms (at most 8 digits and a unit). */
void gc_format_timeout(uint64_t ms, char *out, size_t cap);
/* The gRPC code grpc-go gives an HTTP status that is not 200. */
int gc_http_status_to_grpc(int http_status);
/* The gRPC code grpc-go gives a RST_STREAM error code, and its name. */
int gc_h2_error_to_grpc(uint32_t error_code);
const char *gc_h2_error_name(uint32_t error_code);
/* Splits an endpoint into host (no brackets), port and TLS. Errors:
 * CAIRN_EINVAL, CAIRN_ENOMEM. The caller frees *host and *port. */
int gc_parse_endpoint(const char *endpoint, char **host, char **port, bool *tls);

#endif
