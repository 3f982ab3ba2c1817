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
 * Errors: 0 or a negative CAIRN_E* code (common/cairn_error.h). */
#ifndef CAIRN_GRPC_H
#define CAIRN_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cairn_error.h"

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
   * message as it arrives. */
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
 * JSON gateway). The handler answers with grpc_http_respond() on req, during
 * the callback or later (while the connection lives). */
typedef struct grpc_http_request grpc_http_request;
typedef void (*grpc_http_handler)(grpc_http_request *req, const char *method, const char *path,
                                  const uint8_t *body, size_t body_len, void *ctx);
int grpc_http_respond(grpc_http_request *req, int status, const char *content_type,
                      const uint8_t *body, size_t len);

struct grpc_tls_options {
  const char *cert_file;      /* PEM; both NULL: plaintext */
  const char *key_file;
  const char *trusted_ca_file; /* with client_cert_auth: verify client certs */
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
 * with UNIMPLEMENTED "unknown service X" / "unknown method M for service X". */
int grpc_server_register(grpc_server *s, const struct grpc_method *methods, size_t n);

void grpc_server_set_http_handler(grpc_server *s, grpc_http_handler h, void *ctx);

/* Listens on host:port ("127.0.0.1", 2379); tls may be NULL for h2c with
 * prior knowledge (and HTTP/1.1). Several listeners may be added. Errors:
 * CAIRN_EIO (bind/listen failed, message on stderr), CAIRN_EINVAL (bad TLS
 * files, message on stderr). */
int grpc_server_listen(grpc_server *s, const char *host, int port,
                       const struct grpc_tls_options *tls);

/* The port actually bound by the last grpc_server_listen (for port 0). */
int grpc_server_port(const grpc_server *s);

/* Graceful shutdown: GOAWAY(2^31-1), PING, then GOAWAY(last stream) on every
 * connection; calls in progress may finish; listeners close at once.
 * When every connection is gone (or after timeout_ms, when the rest are
 * closed), closed_cb runs and the server is freed. */
void grpc_server_shutdown(grpc_server *s, uint64_t timeout_ms, void (*closed_cb)(void *data),
                          void *data);

/* ---- calls ---------------------------------------------------------------- */

/* Queues one response message (copied). The response headers go out with
 * the first message. Errors: CAIRN_EBUSY (the call's send queue holds more
 * than max_send_queue_bytes: wait for on_writable), CAIRN_ESTOPPED (the call
 * is finished or cancelled). */
int grpc_call_send(grpc_call *call, const uint8_t *msg, size_t len);

/* Ends the call with a status: after the queued messages, trailers with
 * grpc-status and grpc-message (percent-encoded); a call with no message
 * sent gets a trailers-only response. message may be NULL. on_close follows. */
int grpc_call_finish(grpc_call *call, int status, const char *message);

/* Bytes queued and not yet handed to the connection. */
size_t grpc_call_queued_bytes(const grpc_call *call);

/* Runs cb once the call's send queue falls below half of the bound (for
 * producers that got CAIRN_EBUSY or want to pace themselves). One at a time. */
void grpc_call_on_writable(grpc_call *call, void (*cb)(grpc_call *call, void *data), void *data);

/* A request header value ("hasleader", "token", ...), or NULL. Valid for the
 * call's life. */
const char *grpc_call_header(const grpc_call *call, const char *name);

/* The deadline from grpc-timeout as uv_now() milliseconds, or 0 for none.
 * The server itself cancels the call with DEADLINE_EXCEEDED when it passes. */
uint64_t grpc_call_deadline(const grpc_call *call);

/* A pointer the service may attach to the call. */
void grpc_call_set_user(grpc_call *call, void *user);
void *grpc_call_user(const grpc_call *call);

/* Counters for /metrics. */
struct grpc_server_stats {
  uint64_t connections;
  uint64_t streams_open;
  uint64_t calls_total;
};
void grpc_server_stats(const grpc_server *s, struct grpc_server_stats *out);

#endif
