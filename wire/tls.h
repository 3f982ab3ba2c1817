/* wire/tls.h: TLS for the wire layer, behind a small table of functions.
 *
 * OpenSSL is confined to wire/tls.c. A connection talks to its TLS session
 * through memory only: ciphertext read from the socket goes in with feed(),
 * plaintext comes out of read(); plaintext to send goes in with write(), and
 * the ciphertext to put on the socket (handshake records too) comes out of
 * take(). No function touches a socket, so the layer works on any libuv
 * stream and in tests without one.
 *
 * Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_TLS_H
#define CAIRN_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/grpc.h"

typedef struct tls_ctx tls_ctx;   /* per listener: certificates, settings */
typedef struct tls_conn tls_conn; /* per connection */

/* Longest error text tls_conn_error() keeps. */
#define TLS_ERROR_TEXT_MAX 256u

/* The client side (wire/grpc_client.c): how to verify the server and what
 * to present to it. */
struct tls_client_options {
  const char *ca_file;       /* PEM CA bundle; NULL: OpenSSL's default verify paths */
  const char *cert_file;     /* PEM client certificate chain, or NULL */
  const char *key_file;      /* its key (required with cert_file) */
  bool insecure_skip_verify; /* accept any server certificate */
};

struct tls_ops {
  /* Loads the certificate, key and CA files of o. Errors: CAIRN_EINVAL (a
   * file cannot be read or does not match; the reason on stderr),
   * CAIRN_ENOMEM. The caller frees *out with ctx_free(). */
  int (*ctx_new)(const struct grpc_tls_options *o, tls_ctx **out);
  void (*ctx_free)(tls_ctx *ctx);

  /* A server-side session on ctx (which may be freed before the session:
   * the session keeps what it needs). Errors: CAIRN_ENOMEM. */
  int (*conn_new)(tls_ctx *ctx, tls_conn **out);
  void (*conn_free)(tls_conn *t);

  /* Hands ciphertext from the peer to the session (copied). */
  int (*feed)(tls_conn *t, const uint8_t *data, size_t len);

  /* Advances the handshake and decrypts: up to cap bytes of plaintext into
   * buf, *n_out bytes (0: more input needed). After every call, take() may
   * have ciphertext to send. Errors: CAIRN_ESTOPPED (the peer closed the
   * session cleanly), CAIRN_EIO (handshake failed, bad record; the reason in
   * tls_conn_error()). */
  int (*read)(tls_conn *t, uint8_t *buf, size_t cap, size_t *n_out);

  /* Encrypts len bytes of plaintext (only after the handshake); the
   * ciphertext waits for take(). Errors: CAIRN_EIO, CAIRN_EINVAL (handshake
   * not done). */
  int (*write)(tls_conn *t, const uint8_t *data, size_t len);

  /* Ciphertext waiting to be sent, in bytes. */
  size_t (*pending)(const tls_conn *t);
  /* Moves up to cap bytes of waiting ciphertext into buf; returns the count. */
  size_t (*take)(tls_conn *t, uint8_t *buf, size_t cap);

  bool (*handshake_done)(const tls_conn *t);
  /* The ALPN protocol chosen ("h2", "http/1.1") or NULL; valid for t's life. */
  const char *(*alpn)(const tls_conn *t);
  /* The last failure's text ("" if none); valid until the next call on t. */
  const char *(*error)(const tls_conn *t);

  /* Client side. A client context: TLS 1.2 or later, the server verified
   * against o->ca_file (unless insecure_skip_verify), o's certificate
   * presented if asked. Errors: CAIRN_EINVAL (a file cannot be read or the
   * key does not match; the reason on stderr), CAIRN_ENOMEM. Free with
   * ctx_free(). */
  int (*client_ctx_new)(const struct tls_client_options *o, tls_ctx **out);
  /* A client session on a client ctx: offers ALPN "h2", sends server_name as
   * SNI (unless it is an IP address) and checks the certificate against it
   * (DNS name or IP address). The ClientHello is ready for take() after the
   * first read(). Errors: CAIRN_ENOMEM, CAIRN_EINVAL (server_name empty). */
  int (*client_conn_new)(tls_ctx *ctx, const char *server_name, tls_conn **out);
};

/* The OpenSSL implementation (wire/tls.c). */
extern const struct tls_ops tls_openssl_ops;

#endif
