/* wire/http1.h: HTTP/1.1 on the gRPC port: a bounded request parser and the
 * connection glue behind grpc_http_respond() (wire/grpc.h).
 *
 * Supported: one request at a time per connection (pipelined requests wait
 * in the input buffer), Content-Length bodies, keep-alive (HTTP/1.1 unless
 * "Connection: close"; HTTP/1.0 only with "Connection: keep-alive").
 * Refused: a request head over GRPC_HTTP_HEAD_BYTES_MAX (431), a malformed
 * head (400), a body over the server's max_recv_message_bytes (413), any
 * Transfer-Encoding (411: chunked request bodies are not supported); the
 * connection closes after each refusal. */
#ifndef CAIRN_HTTP1_H
#define CAIRN_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/grpc_int.h"

#define HTTP1_METHOD_MAX 16u  /* method token, NUL included */
#define HTTP1_HEADERS_MAX 64u /* header fields kept per request */

/* A parsed request head. Strings point into the parser's input (not
 * NUL-terminated: use the lengths) and are valid while that input is. */
struct http1_head {
  const char *method;
  size_t method_len;
  const char *target;
  size_t target_len;
  int minor_version; /* HTTP/1.<minor> */
  uint64_t content_length;
  bool has_transfer_encoding;
  bool keep_alive;
  size_t n_headers;
  struct {
    const char *name, *value;
    size_t name_len, value_len;
  } headers[HTTP1_HEADERS_MAX];
};

/* Parses one request head at buf[0..len). Returns the head's length in
 * bytes (through the blank line) when it is complete, 0 when more bytes are
 * needed, or CAIRN_EINVAL (malformed: bad request line, bad header line,
 * bad or conflicting Content-Length, more than HTTP1_HEADERS_MAX fields).
 * Lines end with CRLF or a bare LF. It never reads beyond len. */
long http1_parse_head(const uint8_t *buf, size_t len, struct http1_head *out);

/* Switches c to HTTP/1.1; the caller then feeds the bytes read so far.
 * Errors: CAIRN_ENOMEM. */
int http1_start(grpc_conn *c);
/* Bytes from the peer (after TLS): buffered, then requests are dispatched. */
void http1_recv(grpc_conn *c, const uint8_t *data, size_t len);
/* Dispatches buffered requests while none is outstanding (after a late
 * grpc_http_respond()). */
void http1_process(grpc_conn *c);
/* true while a request waits for its answer (the connection does not read). */
bool http1_waiting(const grpc_conn *c);
/* The connection is closing: the outstanding request (if any) is orphaned
 * (grpc_http_respond() on it frees it), the rest freed. */
void http1_teardown(grpc_conn *c);
/* Graceful shutdown: close after the outstanding request, or now if idle. */
void http1_shutdown(grpc_conn *c);

#endif
