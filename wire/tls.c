/* wire/tls.c: the OpenSSL implementation of struct tls_ops (wire/tls.h).
 *
 * Every session runs on two memory BIOs: the connection feeds the read BIO
 * with what the socket delivered and drains the write BIO onto the socket.
 * OpenSSL never sees a file descriptor, so it never blocks and never writes
 * behind the connection's back. This is the only file that includes OpenSSL. */
#include "wire/tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/cairn_assert.h"

struct tls_ctx {
  SSL_CTX *ssl_ctx;
};

struct tls_conn {
  SSL *ssl;
  BIO *rbio; /* ciphertext from the peer (owned by ssl) */
  BIO *wbio; /* ciphertext for the peer (owned by ssl) */
  bool done; /* handshake complete */
  char alpn[32];
  char err[TLS_ERROR_TEXT_MAX];
};

/* Session id context: required for session resumption once client
 * certificates are verified; any constant string does. */
static const unsigned char tls_sid_ctx[] = "cairn";

static void tls_print_errors(const char *what, const char *file) {
  unsigned long e = ERR_get_error();
  char buf[256];
  if (e == 0) {
    fprintf(stderr, "wire: tls: %s %s: failed\n", what, file ? file : "");
  }
  for (; e != 0; e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    fprintf(stderr, "wire: tls: %s %s: %s\n", what, file ? file : "", buf);
  }
}

/* ALPN: "h2" when offered (grpcio and newer grpc-go refuse a connection
 * without it), else "http/1.1", else no ALPN at all. */
static int tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                           const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  static const char *const prefs[] = {"h2", "http/1.1"};
  for (size_t p = 0; p < sizeof prefs / sizeof prefs[0]; p++) {
    size_t want = strlen(prefs[p]);
    unsigned int i = 0;
    while (i < inlen) {
      unsigned int len = in[i];
      if (i + 1 + len > inlen) {
        break; /* malformed list: stop looking */
      }
      if (len == want && memcmp(in + i + 1, prefs[p], want) == 0) {
        *out = in + i + 1;
        *outlen = (unsigned char)len;
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + len;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}

static int tls_ctx_new(const struct grpc_tls_options *o, tls_ctx **out) {
  if (!o || !o->cert_file || !o->key_file) {
    fprintf(stderr, "wire: tls: a certificate and a key file are both required\n");
    return CAIRN_EINVAL;
  }
  if (o->client_cert_auth && !o->trusted_ca_file) {
    fprintf(stderr, "wire: tls: client-cert-auth needs a trusted CA file\n");
    return CAIRN_EINVAL;
  }
  tls_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    return CAIRN_ENOMEM;
  }
  int rc = CAIRN_EINVAL;
  ERR_clear_error();
  ctx->ssl_ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx->ssl_ctx) {
    tls_print_errors("SSL_CTX_new", NULL);
    rc = CAIRN_ENOMEM;
    goto err_after_alloc;
  }
  SSL_CTX *sc = ctx->ssl_ctx;
  if (SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION) != 1) {
    tls_print_errors("set minimum version", NULL);
    goto err_after_ssl_ctx;
  }
  SSL_CTX_set_options(
      sc, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(sc, o->cert_file) != 1) {
    tls_print_errors("certificate", o->cert_file);
    goto err_after_ssl_ctx;
  }
  if (SSL_CTX_use_PrivateKey_file(sc, o->key_file, SSL_FILETYPE_PEM) != 1) {
    tls_print_errors("key", o->key_file);
    goto err_after_ssl_ctx;
  }
  if (SSL_CTX_check_private_key(sc) != 1) {
    tls_print_errors("key does not match the certificate", o->key_file);
    goto err_after_ssl_ctx;
  }
  if (o->trusted_ca_file) {
    if (SSL_CTX_load_verify_locations(sc, o->trusted_ca_file, NULL) != 1) {
      tls_print_errors("trusted CA", o->trusted_ca_file);
      goto err_after_ssl_ctx;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->trusted_ca_file);
    if (!names) {
      tls_print_errors("trusted CA names", o->trusted_ca_file);
      goto err_after_ssl_ctx;
    }
    SSL_CTX_set_client_CA_list(sc, names); /* takes ownership */
    int mode = SSL_VERIFY_PEER;
    if (o->client_cert_auth) {
      mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(sc, mode, NULL);
    if (SSL_CTX_set_session_id_context(sc, tls_sid_ctx, sizeof tls_sid_ctx - 1) != 1) {
      tls_print_errors("session id context", NULL);
      goto err_after_ssl_ctx;
    }
  }
  SSL_CTX_set_alpn_select_cb(sc, tls_alpn_select, NULL);
  *out = ctx;
  return 0;

err_after_ssl_ctx:
  SSL_CTX_free(ctx->ssl_ctx);
err_after_alloc:
  free(ctx);
  ERR_clear_error();
  return rc;
}

static void tls_ctx_free(tls_ctx *ctx) {
  if (!ctx) {
    return;
  }
  SSL_CTX_free(ctx->ssl_ctx); /* sessions hold their own reference */
  free(ctx);
}

/* A session on ctx with its two memory BIOs, in the accept (server) or
 * connect (client) state. */
static int tls_conn_make(tls_ctx *ctx, bool client, tls_conn **out) {
  CAIRN_ASSERT(ctx && out);
  tls_conn *t = calloc(1, sizeof *t);
  if (!t) {
    return CAIRN_ENOMEM;
  }
  t->ssl = SSL_new(ctx->ssl_ctx);
  if (!t->ssl) {
    goto err_after_alloc;
  }
  t->rbio = BIO_new(BIO_s_mem());
  if (!t->rbio) {
    goto err_after_ssl;
  }
  t->wbio = BIO_new(BIO_s_mem());
  if (!t->wbio) {
    BIO_free(t->rbio);
    goto err_after_ssl;
  }
  /* An empty memory BIO reports "retry", not end of file. */
  BIO_set_mem_eof_return(t->rbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio); /* ssl owns both now */
  if (client) {
    SSL_set_connect_state(t->ssl);
  } else {
    SSL_set_accept_state(t->ssl);
  }
  *out = t;
  return 0;

err_after_ssl:
  SSL_free(t->ssl);
err_after_alloc:
  free(t);
  ERR_clear_error();
  return CAIRN_ENOMEM;
}

static int tls_conn_new(tls_ctx *ctx, tls_conn **out) {
  return tls_conn_make(ctx, false, out);
}

static void tls_conn_free(tls_conn *t) {
  if (!t) {
    return;
  }
  SSL_free(t->ssl);
  free(t);
}

/* Records why an SSL call failed, for the connection's log line. */
static void tls_set_error(tls_conn *t, const char *what, int ssl_err) {
  unsigned long e = ERR_peek_last_error();
  char detail[160] = "";
  if (e != 0) {
    ERR_error_string_n(e, detail, sizeof detail);
  }
  long vr = SSL_get_verify_result(t->ssl);
  if (vr != X509_V_OK) {
    snprintf(t->err, sizeof t->err, "%s: certificate verify failed: %s", what,
             X509_verify_cert_error_string(vr));
  } else if (detail[0]) {
    snprintf(t->err, sizeof t->err, "%s: %s", what, detail);
  } else {
    snprintf(t->err, sizeof t->err, "%s: SSL error %d", what, ssl_err);
  }
  ERR_clear_error();
}

static int tls_feed(tls_conn *t, const uint8_t *data, size_t len) {
  while (len > 0) {
    int chunk = len > INT_MAX ? INT_MAX : (int)len;
    int w = BIO_write(t->rbio, data, chunk);
    if (w <= 0) {
      ERR_clear_error();
      return CAIRN_ENOMEM; /* a memory BIO fails only when it cannot grow */
    }
    data += w;
    len -= (size_t)w;
  }
  return 0;
}

static int tls_read(tls_conn *t, uint8_t *buf, size_t cap, size_t *n_out) {
  *n_out = 0;
  ERR_clear_error();
  if (!t->done) {
    int r = SSL_do_handshake(t->ssl);
    if (r != 1) {
      int e = SSL_get_error(t->ssl, r);
      if (e == SSL_ERROR_WANT_READ) {
        return 0;
      }
      tls_set_error(t, "handshake", e);
      return CAIRN_EIO;
    }
    t->done = true;
    const unsigned char *p = NULL;
    unsigned int plen = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &plen);
    if (p && plen > 0 && plen < sizeof t->alpn) {
      memcpy(t->alpn, p, plen);
      t->alpn[plen] = '\0';
    }
  }
  size_t n = 0;
  int r = SSL_read_ex(t->ssl, buf, cap, &n);
  if (r == 1) {
    *n_out = n;
    return 0;
  }
  int e = SSL_get_error(t->ssl, r);
  if (e == SSL_ERROR_WANT_READ) {
    return 0;
  }
  if (e == SSL_ERROR_ZERO_RETURN) {
    return CAIRN_ESTOPPED;
  }
  tls_set_error(t, "read", e);
  return CAIRN_EIO;
}

static int tls_write(tls_conn *t, const uint8_t *data, size_t len) {
  if (!t->done) {
    return CAIRN_EINVAL;
  }
  ERR_clear_error();
  while (len > 0) {
    size_t n = 0;
    int r = SSL_write_ex(t->ssl, data, len, &n);
    if (r != 1) {
      tls_set_error(t, "write", SSL_get_error(t->ssl, r));
      return CAIRN_EIO;
    }
    data += n;
    len -= n;
  }
  return 0;
}

static size_t tls_pending(const tls_conn *t) {
  return BIO_ctrl_pending(t->wbio);
}

static size_t tls_take(tls_conn *t, uint8_t *buf, size_t cap) {
  int chunk = cap > INT_MAX ? INT_MAX : (int)cap;
  int r = BIO_read(t->wbio, buf, chunk);
  return r > 0 ? (size_t)r : 0;
}

static bool tls_handshake_done(const tls_conn *t) {
  return t->done;
}

static const char *tls_alpn(const tls_conn *t) {
  return t->alpn[0] ? t->alpn : NULL;
}

static const char *tls_error(const tls_conn *t) {
  return t->err;
}

/* ---- client side ------------------------------------------------------------- */

static int tls_client_ctx_new(const struct tls_client_options *o, tls_ctx **out) {
  if (!o || (o->cert_file && !o->key_file) || (!o->cert_file && o->key_file)) {
    fprintf(stderr, "wire: tls: a client certificate and its key go together\n");
    return CAIRN_EINVAL;
  }
  tls_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    return CAIRN_ENOMEM;
  }
  int rc = CAIRN_EINVAL;
  ERR_clear_error();
  ctx->ssl_ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx->ssl_ctx) {
    tls_print_errors("SSL_CTX_new", NULL);
    rc = CAIRN_ENOMEM;
    goto err_after_alloc;
  }
  SSL_CTX *sc = ctx->ssl_ctx;
  if (SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION) != 1) {
    tls_print_errors("set minimum version", NULL);
    goto err_after_ssl_ctx;
  }
  SSL_CTX_set_options(sc, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
  if (o->cert_file) {
    if (SSL_CTX_use_certificate_chain_file(sc, o->cert_file) != 1) {
      tls_print_errors("client certificate", o->cert_file);
      goto err_after_ssl_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(sc, o->key_file, SSL_FILETYPE_PEM) != 1) {
      tls_print_errors("client key", o->key_file);
      goto err_after_ssl_ctx;
    }
    if (SSL_CTX_check_private_key(sc) != 1) {
      tls_print_errors("client key does not match the certificate", o->key_file);
      goto err_after_ssl_ctx;
    }
  }
  if (o->ca_file) {
    if (SSL_CTX_load_verify_locations(sc, o->ca_file, NULL) != 1) {
      tls_print_errors("CA", o->ca_file);
      goto err_after_ssl_ctx;
    }
  } else if (SSL_CTX_set_default_verify_paths(sc) != 1) {
    tls_print_errors("default CA paths", NULL);
    goto err_after_ssl_ctx;
  }
  SSL_CTX_set_verify(sc, o->insecure_skip_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
  *out = ctx;
  return 0;

err_after_ssl_ctx:
  SSL_CTX_free(ctx->ssl_ctx);
err_after_alloc:
  free(ctx);
  ERR_clear_error();
  return rc;
}

static bool tls_is_ip_address(const char *name) {
  unsigned char buf[16];
  return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

static int tls_client_conn_new(tls_ctx *ctx, const char *server_name, tls_conn **out) {
  if (!server_name || !server_name[0]) {
    return CAIRN_EINVAL;
  }
  tls_conn *t = NULL;
  int rc = tls_conn_make(ctx, true, &t);
  if (rc != 0) {
    return rc;
  }
  static const unsigned char alpn[] = {2, 'h', '2'};
  bool ip = tls_is_ip_address(server_name);
  bool ok = SSL_set_alpn_protos(t->ssl, alpn, sizeof alpn) == 0; /* 0 is success here */
  if (ok && !ip) {
    ok = SSL_set_tlsext_host_name(t->ssl, server_name) == 1 &&
         SSL_set1_host(t->ssl, server_name) == 1;
  } else if (ok) {
    ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), server_name) == 1;
  }
  if (!ok) {
    tls_conn_free(t);
    ERR_clear_error();
    return CAIRN_ENOMEM;
  }
  *out = t;
  return 0;
}

const struct tls_ops tls_openssl_ops = {
    .ctx_new = tls_ctx_new,
    .ctx_free = tls_ctx_free,
    .conn_new = tls_conn_new,
    .conn_free = tls_conn_free,
    .feed = tls_feed,
    .read = tls_read,
    .write = tls_write,
    .pending = tls_pending,
    .take = tls_take,
    .handshake_done = tls_handshake_done,
    .alpn = tls_alpn,
    .error = tls_error,
    .client_ctx_new = tls_client_ctx_new,
    .client_conn_new = tls_client_conn_new,
};
