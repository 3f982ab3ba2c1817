/* wire/grpc_client.h: a gRPC client over HTTP/2 (nghttp2) on a libuv loop,
 * with TLS (OpenSSL) and ALPN.
 *
 * The client knows nothing of etcd: a call is a path
 * ("/etcdserverpb.KV/Range"), metadata, and raw message bytes each way.
 * One client talks to one endpoint over one HTTP/2 connection at a time;
 * every call is a stream on it, so any number of calls share the connection.
 *
 * Connections: the first call opens the connection (resolve, connect, TLS
 * handshake, HTTP/2 preface); calls made meanwhile wait for it. If it fails
 * or closes, its calls end with UNAVAILABLE and the next call opens a new
 * one: there is no reconnect loop and no retry. After the server's GOAWAY,
 * calls already on the connection go on; new calls open a new connection.
 *
 * Threading: everything runs on the loop given to grpc_client_new(), and
 * every function must be called on that loop's thread. Callbacks never run
 * inside the grpc_client_* / grpc_ccall_* function that caused them (they
 * run from the loop), so a callback may start calls, send, cancel, pause or
 * close the client.
 *
 * Lifetimes: a grpc_ccall lives from grpc_client_call() until its on_done
 * callback returns; the pointer is invalid afterwards. on_done runs exactly
 * once per call that grpc_client_call() created.
 *
 * Errors: 0 or a negative CAIRN_E* code (common/cairn_error.h). A function
 * that returns an error creates nothing and calls no callback.
 *
 * Bounds (docs/wire.md, "The client", has the table): bytes queued to send
 * per call (max_send_queue_bytes: grpc_ccall_send() says CAIRN_EBUSY), the
 * size of one received message (max_recv_message_bytes: the call fails with
 * RESOURCE_EXHAUSTED), received bytes not yet delivered per call (the
 * stream window, stream_window_bytes) and per connection (conn_window_bytes),
 * calls at once (max_calls: grpc_client_call() says CAIRN_EBUSY), request
 * metadata (GRPC_CLIENT_METADATA_BYTES_MAX), response headers
 * (GRPC_CLIENT_HEADER_BYTES_MAX), bytes handed to the socket and not yet
 * written (GRPC_CLIENT_WRITE_BYTES_MAX per connection). */
#ifndef CAIRN_GRPC_CLIENT_H
#define CAIRN_GRPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cairn_error.h"
#include "wire/grpc.h" /* enum grpc_status */

/* Request metadata of one call: names + values (+32 per pair, HPACK's
 * count), our own headers included. More: grpc_client_call() says
 * CAIRN_EINVAL. */
#define GRPC_CLIENT_METADATA_BYTES_MAX (16u * 1024u)
/* Response headers and trailers of one call (same count; also advertised as
 * SETTINGS_MAX_HEADER_LIST_SIZE). More: the call ends with INTERNAL. */
#define GRPC_CLIENT_HEADER_BYTES_MAX (64u * 1024u)
/* Bytes handed to the socket and not yet written, per connection: past it
 * the connection stops producing HTTP/2 frames until the socket drains. */
#define GRPC_CLIENT_WRITE_BYTES_MAX (256u * 1024u)
/* grpc-message texts longer than this (after decoding) are cut. */
#define GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX 4096u

/* Defaults of struct grpc_client_options (a field left 0). */
#define GRPC_CLIENT_DEFAULT_MAX_RECV_BYTES ((size_t)64 * 1024 * 1024)
#define GRPC_CLIENT_DEFAULT_MAX_SEND_QUEUE_BYTES ((size_t)8 * 1024 * 1024)
#define GRPC_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS 20000u
#define GRPC_CLIENT_DEFAULT_STREAM_WINDOW (4u << 20)
#define GRPC_CLIENT_DEFAULT_CONN_WINDOW (16u << 20)
#define GRPC_CLIENT_DEFAULT_MAX_CALLS 65536u
#define GRPC_CLIENT_DEFAULT_KEEPALIVE_TIMEOUT_MS 20000u
/* The end of a connection whose keepalive PING went unanswered. */
#define GRPC_CLIENT_KEEPALIVE_TEXT "keepalive ping timed out"

/* Fixed status texts. */
#define GRPC_CLIENT_DEADLINE_TEXT "context deadline exceeded"
#define GRPC_CLIENT_CANCELLED_TEXT "context canceled"
#define GRPC_CLIENT_CLOSING_TEXT "grpc: the client connection is closing"

typedef struct grpc_client grpc_client;
typedef struct grpc_ccall grpc_ccall;

struct grpc_client_options {
  /* TLS (https:// endpoints only; given with another scheme they are
   * refused with CAIRN_EINVAL, so that a plaintext connection is never made
   * by mistake). */
  const char *ca_file;   /* PEM CA bundle that verifies the server; NULL: OpenSSL's default paths */
  const char *cert_file; /* PEM client certificate chain; with key_file, or neither */
  const char *key_file;  /* PEM key of cert_file */
  /* Name sent as SNI and checked against the server certificate (DNS name or
   * IP address). NULL: the endpoint's host. */
  const char *server_name;
  bool insecure_skip_verify; /* accept any server certificate (tests, etcdctl's flag) */

  /* Largest response message accepted; a larger one ends the call with
   * RESOURCE_EXHAUSTED "grpc: received message larger than max (N vs. M)"
   * before any of it is buffered. 0: 64 MiB. */
  size_t max_recv_message_bytes;
  /* Bound on bytes queued for sending on one call; grpc_ccall_send() says
   * CAIRN_EBUSY beyond it. 0: 8 MiB. */
  size_t max_send_queue_bytes;
  /* Resolve + TCP connect + TLS handshake; past it the connection fails and
   * its calls end with UNAVAILABLE. 0: 20 s. */
  uint64_t connect_timeout_ms;
  /* HTTP/2 receive windows: bytes the server may send on one stream, and on
   * the whole connection, that we have not yet delivered (acknowledged as
   * on_message consumes them). 0: 4 MiB and 16 MiB. The connection window
   * is raised to at least the stream window. */
  uint32_t stream_window_bytes;
  uint32_t conn_window_bytes;
  /* Calls at once (waiting for the connection, open, or awaiting on_done);
   * more: grpc_client_call() says CAIRN_EBUSY. 0: 65536. */
  unsigned max_calls;
  /* HTTP/2 keepalive: after keepalive_time_ms without any frame received
   * on a connection, a PING goes out; unanswered for keepalive_timeout_ms
   * (no frame at all arrives), the connection is closed and its calls end
   * with UNAVAILABLE "connection to HOST:PORT: keepalive ping timed out".
   * keepalive_time_ms 0: off. keepalive_timeout_ms 0: 20 s. Without
   * keepalive_permit_without_calls, PINGs go out only while the connection
   * has calls (grpc-go's default: etcd and grpc-go servers answer PINGs on
   * an idle connection with GOAWAY ENHANCE_YOUR_CALM after a few). */
  uint64_t keepalive_time_ms;
  uint64_t keepalive_timeout_ms;
  bool keepalive_permit_without_calls;
};

/* Creates a client for one endpoint: "http://host:port", "https://host:port"
 * or "host:port" (plaintext); host may be a name, an IPv4 address or a
 * bracketed IPv6 address ("[::1]:2379"); the port may be left out after
 * http:// (80) and https:// (443). Nothing is connected yet. TLS files are
 * read here. opts may be NULL (plaintext defaults). The client keeps copies
 * of every string. Errors: CAIRN_EINVAL (bad endpoint, TLS options without
 * https://, key without certificate, unreadable or mismatched TLS files;
 * the reason on stderr), CAIRN_ENOMEM. On success the caller must end the
 * client with grpc_client_close() before closing the loop. */
int grpc_client_new(uv_loop_t *loop, const char *endpoint, const struct grpc_client_options *opts,
                    grpc_client **out);

/* Closes the client: every call not yet done ends with CANCELLED
 * GRPC_CLIENT_CLOSING_TEXT (on_done from the loop, never inside this
 * function), the connections send GOAWAY and close, then closed_cb(data)
 * runs from the loop and the client is freed. Calls made meanwhile get
 * CAIRN_ESTOPPED. Call it once; closed_cb may be NULL. */
void grpc_client_close(grpc_client *client, void (*closed_cb)(void *data), void *data);

/* The endpoint as "host:port" (what error texts name). Valid for the
 * client's life. */
const char *grpc_client_endpoint(const grpc_client *client);

/* ---- calls ---------------------------------------------------------------- */

struct grpc_metadata {
  const char *name;  /* lower-case; not starting with ':'; no reserved name (below) */
  const char *value; /* no CR, LF or NUL; "-bin" values must be base64 already */
};

struct grpc_client_handlers {
  /* One complete response message (in order). msg is valid during the
   * callback only. Not called while the call is paused, nor after the call
   * was cancelled. May be NULL (messages are dropped). */
  void (*on_message)(grpc_ccall *call, const uint8_t *msg, size_t len, void *data);
  /* The call is over: status is a gRPC code (enum grpc_status; a server may
   * send others), message its text ("" if none; percent-decoded; valid
   * during the callback only). Exactly once; the call is freed when it
   * returns. Required. */
  void (*on_done)(grpc_ccall *call, int status, const char *message, void *data);
};

/* Starts a call: path "/package.Service/Method", md[n] extra metadata
 * (copied; reserved names: te, content-type, user-agent, grpc-timeout,
 * grpc-encoding, grpc-accept-encoding, host, connection), timeout_ms 0 for
 * none, else sent as grpc-timeout and enforced here too (DEADLINE_EXCEEDED
 * GRPC_CLIENT_DEADLINE_TEXT; the time spent connecting counts). The
 * request HEADERS go out when the connection is ready; messages follow with
 * grpc_ccall_send() and the request side ends with grpc_ccall_close_send().
 * h is copied; h->on_done is required. *out (may be NULL) is the call.
 * Errors: CAIRN_EINVAL (path not "/x/y", bad or reserved metadata, over
 * GRPC_CLIENT_METADATA_BYTES_MAX, no on_done), CAIRN_EBUSY (max_calls),
 * CAIRN_ESTOPPED (the client is closing), CAIRN_ENOMEM. */
int grpc_client_call(grpc_client *client, const char *path, const struct grpc_metadata *md,
                     size_t n, uint64_t timeout_ms, const struct grpc_client_handlers *h,
                     void *data, grpc_ccall **out);

/* Queues one request message (copied, with its 5-byte prefix). Accepted when
 * the call's send queue is empty or stays within max_send_queue_bytes with
 * it (so one message of any size up to 4 GiB - 1 can always be sent).
 * Errors: CAIRN_EBUSY (queue full: wait for grpc_ccall_on_writable()),
 * CAIRN_ESTOPPED (after close_send, or the call is ending), CAIRN_EINVAL
 * (msg NULL with len > 0, len >= 4 GiB), CAIRN_ENOMEM. */
int grpc_ccall_send(grpc_ccall *call, const uint8_t *msg, size_t len);

/* Half-closes: END_STREAM follows the queued messages. A second call, or one
 * on a call that is ending, does nothing and returns 0. */
int grpc_ccall_close_send(grpc_ccall *call);

/* Cancels: RST_STREAM(CANCEL) if the stream is open, queued messages are
 * dropped, no further on_message, and on_done follows with CANCELLED
 * GRPC_CLIENT_CANCELLED_TEXT from the loop. On a call whose end is already
 * decided (on_done due) it does nothing. */
void grpc_ccall_cancel(grpc_ccall *call);

/* Pauses (true) or resumes (false) delivery. While paused no on_message
 * runs; received bytes stay buffered and unacknowledged, so the server stops
 * after the stream window (stream_window_bytes): that is the bound on what a
 * paused call holds, besides one message being assembled. The server's final
 * status is delivered after the buffered messages, so on_done waits for
 * resume too; a cancel, the deadline, a lost connection or the client's
 * close end a paused call at once. Resuming delivers from the loop, never
 * inside this function. */
void grpc_ccall_pause_recv(grpc_ccall *call, bool paused);

/* Runs cb once the call's send queue is below half of max_send_queue_bytes
 * (for producers that got CAIRN_EBUSY, or that pace themselves). One at a
 * time: a second registration replaces the first; cb NULL cancels. cb runs
 * from the loop, never inside this function (also when the queue is already
 * below half), and never once the call's end is decided. */
void grpc_ccall_on_writable(grpc_ccall *call, void (*cb)(grpc_ccall *call, void *data), void *data);

/* True once the call's request HEADERS were handed to the connection
 * (serialized for the socket): from then on the server may have seen the
 * request. False means the server never saw it (the connection failed
 * first, the call was cancelled or timed out while waiting), so a
 * non-idempotent request may be sent again. Valid inside on_done. */
bool grpc_ccall_request_sent(const grpc_ccall *call);

/* Bytes queued to send and not yet handed to HTTP/2. */
size_t grpc_ccall_queued_bytes(const grpc_ccall *call);

/* Bytes received and not yet delivered: buffered while paused, plus the part
 * of a message being assembled. */
size_t grpc_ccall_recv_buffered(const grpc_ccall *call);

/* ---- unary convenience --------------------------------------------------------- */

/* The answer of a unary call: resp (NULL, 0 unless status is OK) and
 * message are valid during the callback only. A response with no message
 * or more than one ends as INTERNAL. */
typedef void (*grpc_client_unary_cb)(void *data, int status, const char *message,
                                     const uint8_t *resp, size_t resp_len);

/* One request message, half-close, one response: grpc_client_call() with
 * the same arguments and errors, plus CAIRN_EINVAL (req NULL with len > 0,
 * len >= 4 GiB). *out (may be NULL) is the call, for grpc_ccall_cancel(),
 * valid until cb runs. cb runs exactly once, from the loop. */
int grpc_client_unary(grpc_client *client, const char *path, const struct grpc_metadata *md,
                      size_t n, uint64_t timeout_ms, const uint8_t *req, size_t len,
                      grpc_ccall **out, grpc_client_unary_cb cb, void *data);

/* Counters. */
struct grpc_client_stats {
  uint64_t connections_opened; /* connection attempts, ever */
  uint64_t calls_open;         /* calls not yet done */
  uint64_t calls_total;        /* calls started, ever */
};
void grpc_client_stats(const grpc_client *client, struct grpc_client_stats *out);

#endif
