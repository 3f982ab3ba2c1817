/* wire/grpc.h: a gRPC server over HTTP/2 (nghttp2) on a libuv loop, with
 * HTTP/1.1 on the same port and TLS (OpenSSL) with ALPN.
 *
 * The server knows nothing of etcd: services register methods by path
 * ("/etcdserverpb.KV/Range") and get raw message bytes; they decode and
 * encode with protobuf-c themselves. See ../shared/docs/etcd-wire.md section
 * 1 for the wire rules this implements.
 *
 * Threading: everything runs on the loop thread given to grpc_server_init();
 * every callback runs there.
 *
 * Lifetimes: a grpc_call is created when a request's HEADERS arrive for a
 * registered method and lives until its on_close callback has run (after the
 * call finished, or the client cancelled it, or the connection died). After
 * on_close the call pointer is invalid. Calling grpc_call_send() or
 * grpc_call_finish() on a call that the peer already cancelled, but before
 * on_close ran, is allowed and does nothing.
 *
 * Errors: 0 or a negative CAIRN_E* code (common/cairn_error.h).
 *
 * Bounds (docs/wire.md has the whole table): request headers of one stream
 * GRPC_HEADER_BYTES_MAX, open streams per connection GRPC_CONN_STREAMS_MAX
 * (more are refused with RST_STREAM REFUSED_STREAM), bytes handed to the
 * socket and not yet written GRPC_CONN_WRITE_BYTES_MAX per connection (the
 * connection stops producing and stops reading until the peer drains it),
 * the send queue of a call (max_send_queue_bytes), connections
 * (max_connections), HTTP/1.1 request heads GRPC_HTTP_HEAD_BYTES_MAX. */
#ifndef CAIRN_GRPC_H
#define CAIRN_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cairn_error.h"

/* Request header bytes (names + values) of one stream; a larger header
 * block resets the stream (the client sees INTERNAL). */
#define GRPC_HEADER_BYTES_MAX (16u * 1024u)
/* Streams open at once on one HTTP/2 connection (the advertised
 * MAX_CONCURRENT_STREAMS is 2^32-1, as etcd's, so that long-lived streams
 * never block new calls at the client; this is the real bound). */
#define GRPC_CONN_STREAMS_MAX 65536u
/* Bytes given to the socket and not yet written, per connection. */
#define GRPC_CONN_WRITE_BYTES_MAX (256u * 1024u)
/* HTTP/1.1: request line and headers; larger: 431 and the connection closes. */
#define GRPC_HTTP_HEAD_BYTES_MAX (16u * 1024u)
/* grpc-message texts longer than this are cut (before percent-encoding). */
#define GRPC_STATUS_MESSAGE_BYTES_MAX 4096u

typedef struct grpc_server grpc_server;
typedef struct grpc_call grpc_call;

/* gRPC status codes. */
enum grpc_status {
  GRPC_OK = 0,
  GRPC_CANCELLED = 1,
  GRPC_UNKNOWN = 2,
  GRPC_INVALID_ARGUMENT = 3,
  GRPC_DEADLINE_EXCEEDED = 4,
  GRPC_NOT_FOUND = 5,
  GRPC_ALREADY_EXISTS = 6,
  GRPC_PERMISSION_DENIED = 7,
  GRPC_RESOURCE_EXHAUSTED = 8,
  GRPC_FAILED_PRECONDITION = 9,
  GRPC_ABORTED = 10,
  GRPC_OUT_OF_RANGE = 11,
  GRPC_UNIMPLEMENTED = 12,
  GRPC_INTERNAL = 13,
  GRPC_UNAVAILABLE = 14,
  GRPC_DATA_LOSS = 15,
  GRPC_UNAUTHENTICATED = 16
};

enum grpc_method_kind {
  GRPC_METHOD_UNARY,         /* one request message, one response message */
  GRPC_METHOD_SERVER_STREAM, /* one request message, many responses */
  GRPC_METHOD_BIDI_STREAM    /* many of each */
};

struct grpc_method {
  const char *path; /* "/package.Service/Method" */
  enum grpc_method_kind kind;
  /* A complete request message arrived. msg is valid during the call only.
   * Unary and server-streaming methods get exactly one on_message (after the
   * client's half-close, so the request is whole); bidi methods one per
   * message as it arrives. A unary or server-streaming request with no
   * message or more than one is answered INTERNAL by the server itself (no
   * on_message; on_close still runs). */
  void (*on_message)(grpc_call *call, const uint8_t *msg, size_t len, void *ctx);
  /* The client half-closed (bidi only; NULL: ignore). */
  void (*on_half_close)(grpc_call *call, void *ctx);
  /* The call is over: finished, cancelled by the client (RST_STREAM), its
   * deadline passed, or its connection closed. Release what the service holds
   * for it; the call is invalid afterwards. May be NULL. */
  void (*on_close)(grpc_call *call, void *ctx);
  void *ctx;
};

/* HTTP/1.1 requests on the same port (GET /health, /version, /metrics, the
 * JSON gateway). method, path and body are valid during the callback only;
 * the body is the whole Content-Length body (at most max_recv_message_bytes;
 * chunked request bodies are refused with 411). The handler answers with
 * grpc_http_respond() on req exactly once, during the callback or later.
 * The connection reads no further request until then. Without a handler
 * every request gets 404. */
typedef struct grpc_http_request grpc_http_request;
typedef void (*grpc_http_handler)(grpc_http_request *req, const char *method, const char *path,
                                  const uint8_t *body, size_t body_len, void *ctx);

/* Answers req (status, Content-Type, body copied) and frees req: req is
 * invalid afterwards. If the connection died in the meantime the answer is
 * dropped, req is freed all the same and CAIRN_ESTOPPED is returned.
 * content_type NULL: no Content-Type. Errors: CAIRN_ESTOPPED, CAIRN_ENOMEM
 * (req is freed and the connection closed). */
int grpc_http_respond(grpc_http_request *req, int status, const char *content_type,
                      const uint8_t *body, size_t len);

/* A request header value (name case-insensitive; the first if repeated), or
 * NULL. Valid until grpc_http_respond(). */
const char *grpc_http_header(const grpc_http_request *req, const char *name);

/* TLS 1.2 or later; ALPN "h2" when the client offers it, else "http/1.1"
 * (or none), and a connection without "h2" is told apart by its first bytes
 * as on a plaintext port. */
struct grpc_tls_options {
  const char *cert_file; /* PEM server certificate chain (required) */
  const char *key_file;  /* PEM private key (required) */
  /* PEM CA bundle for client certificates. Given without client_cert_auth:
   * a client certificate is verified if presented but not required. */
  const char *trusted_ca_file;
  /* Require a client certificate signed by trusted_ca_file (needs it). */
  bool client_cert_auth;
};

struct grpc_server_options {
  /* Largest request message accepted; larger ones get RESOURCE_EXHAUSTED
   * "grpc: received message larger than max (N vs. M)". 0: 2 MiB. */
  size_t max_recv_message_bytes;
  /* Bound on bytes queued for sending on one call; grpc_call_send() returns
   * CAIRN_EBUSY beyond it. 0: 8 MiB. */
  size_t max_send_queue_bytes;
  /* Connections accepted at once; more are closed at accept. 0: 10000. */
  unsigned max_connections;
};

/* Creates a server on loop. opts may be NULL. */
int grpc_server_init(uv_loop_t *loop, const struct grpc_server_options *opts, grpc_server **out);

/* Registers methods (copied; paths are copied). Unknown paths are answered
 * with UNIMPLEMENTED "unknown service X" / "unknown method M for service X".
 * Errors: CAIRN_EINVAL (a path not of the form "/service/method", a path
 * already registered, on_message NULL; nothing is registered then),
 * CAIRN_ENOMEM. */
int grpc_server_register(grpc_server *s, const struct grpc_method *methods, size_t n);

void grpc_server_set_http_handler(grpc_server *s, grpc_http_handler h, void *ctx);

/* A router sees each call of a registered method when its headers have
 * arrived (grpc_call_header() works), before any message, and returns the
 * method that serves it: m (the registered one) or another with the same
 * kind whose callbacks then own the call (a follower forwarding to its
 * leader). The returned struct is copied; its path is ignored. NULL: m. */
typedef const struct grpc_method *(*grpc_router)(grpc_call *call, const struct grpc_method *m,
                                                 void *ctx);
void grpc_server_set_router(grpc_server *s, grpc_router r, void *ctx);

/* The path of the call's method ("/etcdserverpb.KV/Put"). */
const char *grpc_call_path(const grpc_call *call);

/* Listens on host:port ("127.0.0.1", "::1", "0.0.0.0"; port 0: any); tls
 * may be NULL for h2c with prior knowledge (and HTTP/1.1). Several listeners
 * may be added; each keeps its own TLS settings (files are read here).
 * Errors: CAIRN_EIO (bind/listen failed, message on stderr), CAIRN_EINVAL
 * (bad host, bad TLS files or options, message on stderr), CAIRN_ESTOPPED
 * (shutting down), CAIRN_ENOMEM. */
int grpc_server_listen(grpc_server *s, const char *host, int port,
                       const struct grpc_tls_options *tls);

/* Accepting connections on every listener (the default) or not: while
 * paused, connections wait in the kernel's backlog (clients see a slow
 * connect, not a refusal), as etcd's do before the member is ready. Turning
 * it on accepts what waits. */
void grpc_server_set_accepting(grpc_server *s, bool on);

/* Writes what the calls queued since the last flush now, instead of at the
 * end of this loop turn (the idle handle that otherwise does it). For a
 * caller with more work to do on this turn before the loop polls again (the
 * server: a batch's answers go out before its commit). */
void grpc_server_flush(grpc_server *s);

/* The port actually bound by the last grpc_server_listen (for port 0). */
int grpc_server_port(const grpc_server *s);

/* Graceful shutdown: GOAWAY(2^31-1), PING, then GOAWAY(last stream) on every
 * HTTP/2 connection (after the PING's ACK); calls in progress may finish;
 * HTTP/1.1 connections close after the request in progress; listeners close
 * at once. When every connection is gone (or after timeout_ms, when the rest
 * are closed and their calls get on_close), closed_cb runs (from the loop,
 * never inside this call) and the server is freed. Call it once; closed_cb
 * may be NULL. */
void grpc_server_shutdown(grpc_server *s, uint64_t timeout_ms, void (*closed_cb)(void *data),
                          void *data);

/* Ends every open streaming call (server-streaming and bidi methods) with
 * status and message, as grpc_call_finish() does: at a shutdown, long-lived
 * streams (watches, keep-alives) would otherwise hold their connections
 * open until the shutdown's timeout. Unary calls are left to finish. */
void grpc_server_end_streams(grpc_server *s, int status, const char *message);

/* ---- calls ---------------------------------------------------------------- */

/* Queues one response message (copied). The response headers go out with
 * the first message. A message is accepted when the call's send queue is
 * empty or stays within max_send_queue_bytes with it (so one message of any
 * size can always be sent). Errors: CAIRN_EBUSY (queue full: wait for
 * on_writable), CAIRN_ESTOPPED (finish was called, or the call was cancelled,
 * timed out or lost its connection), CAIRN_ENOMEM, CAIRN_EINVAL (msg NULL
 * with len > 0, len >= 4 GiB). */
int grpc_call_send(grpc_call *call, const uint8_t *msg, size_t len);

/* One piece of a message given to grpc_call_sendv(). */
struct grpc_iov {
  const uint8_t *data;
  size_t len;
};

/* grpc_call_send() of the concatenation of iov[0..n) (copied once), for
 * messages assembled from shared parts. Same errors. */
int grpc_call_sendv(grpc_call *call, const struct grpc_iov *iov, size_t n);

/* Ends the call with a status: after the queued messages, trailers with
 * grpc-status and grpc-message (percent-encoded; cut at
 * GRPC_STATUS_MESSAGE_BYTES_MAX); a call with no message sent gets a
 * trailers-only response. message may be NULL (copied). on_close follows,
 * from the loop (never inside this call). If the client has not half-closed
 * its side, RST_STREAM(NO_ERROR) follows the trailers, as grpc-go does.
 * On a call that the client cancelled, that timed out or lost its connection
 * it does nothing and returns 0. Errors: CAIRN_ESTOPPED (finish was already
 * called), CAIRN_EINVAL (status outside 0..16). */
int grpc_call_finish(grpc_call *call, int status, const char *message);

/* Bytes queued and not yet handed to the connection. */
size_t grpc_call_queued_bytes(const grpc_call *call);

/* Runs cb once the call's send queue falls below half of the bound (for
 * producers that got CAIRN_EBUSY or want to pace themselves). One at a time:
 * a second registration replaces the first; cb NULL cancels. cb runs from
 * the loop, never inside this call (also when the queue is already below
 * half), and never after on_close. */
void grpc_call_on_writable(grpc_call *call, void (*cb)(grpc_call *call, void *data), void *data);

/* A request header value ("hasleader", "token", ...), or NULL. Valid for the
 * call's life. */
const char *grpc_call_header(const grpc_call *call, const char *name);

/* The deadline from grpc-timeout as uv_now() milliseconds, or 0 for none.
 * The server itself finishes the call with DEADLINE_EXCEEDED when it passes
 * (queued messages not yet sent are dropped), then on_close runs. */
uint64_t grpc_call_deadline(const grpc_call *call);

/* A pointer the service may attach to the call. */
void grpc_call_set_user(grpc_call *call, void *user);
void *grpc_call_user(const grpc_call *call);

/* Counters for /metrics. */
struct grpc_server_stats {
  uint64_t connections;  /* open now (every protocol) */
  uint64_t streams_open; /* HTTP/2 streams open now */
  uint64_t calls_total;  /* calls dispatched to a registered method, ever */
};
void grpc_server_stats(const grpc_server *s, struct grpc_server_stats *out);

#endif
