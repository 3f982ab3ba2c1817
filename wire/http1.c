/* wire/http1.c: HTTP/1.1 requests on the gRPC port (see wire/http1.h). */
#include "wire/http1.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/cairn_assert.h"

struct grpc_http_request {
  grpc_conn *conn; /* NULL once the connection died (orphaned) */
  bool keep_alive;
  bool head_only; /* HEAD: no body in the answer */
  char *hdrs;     /* "name\0value\0" pairs */
  size_t hdrs_len;
};

struct http1_state {
  uint8_t *buf; /* input not yet consumed */
  size_t len, cap;
  grpc_http_request *outstanding;
  bool close_after; /* close once the outstanding request is answered */
};

/* ---- the parser --------------------------------------------------------------------- */

static bool is_tchar(uint8_t ch) {
  if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
    return true;
  }
  return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool token_list_has(const char *v, size_t len, const char *tok) {
  size_t tlen = strlen(tok);
  size_t i = 0;
  while (i < len) {
    while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
      i++;
    }
    size_t start = i;
    while (i < len && v[i] != ',') {
      i++;
    }
    size_t end = i;
    while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) {
      end--;
    }
    if (end - start == tlen && strncasecmp(v + start, tok, tlen) == 0) {
      return true;
    }
  }
  return false;
}

/* The next line within [p, end): its length without CR LF, and where the
 * following line starts. false: no line feed before end. */
static bool next_line(const uint8_t *p, const uint8_t *end, size_t *len, const uint8_t **next) {
  const uint8_t *lf = memchr(p, '\n', (size_t)(end - p));
  if (!lf) {
    return false;
  }
  size_t n = (size_t)(lf - p);
  if (n > 0 && p[n - 1] == '\r') {
    n--;
  }
  *len = n;
  *next = lf + 1;
  return true;
}

/* The request line (method SP target SP HTTP/1.x, without its line end)
 * into out; CAIRN_EINVAL when it is not one. */
static int parse_request_line(const uint8_t *line, size_t n, struct http1_head *out) {
  size_t i = 0;
  while (i < n && is_tchar(line[i])) {
    i++;
  }
  if (i == 0 || i >= HTTP1_METHOD_MAX || i >= n || line[i] != ' ') {
    return CAIRN_EINVAL;
  }
  out->method = (const char *)line;
  out->method_len = i;
  size_t t = ++i;
  while (i < n && line[i] > ' ' && line[i] != 0x7f) {
    i++;
  }
  if (i == t || i >= n || line[i] != ' ') {
    return CAIRN_EINVAL;
  }
  out->target = (const char *)line + t;
  out->target_len = i - t;
  i++;
  if (n - i != 8 || memcmp(line + i, "HTTP/1.", 7) != 0 ||
      (line[i + 7] != '0' && line[i + 7] != '1')) {
    return CAIRN_EINVAL;
  }
  out->minor_version = line[i + 7] - '0';
  return 0;
}

long http1_parse_head(const uint8_t *buf, size_t len, struct http1_head *out) {
  memset(out, 0, sizeof *out);
  const uint8_t *end = buf + len;
  /* What can never become a request (garbage, a TLS handshake on the plain
   * port) is refused as soon as it shows, not after a blank line that may
   * never come: the method as its bytes arrive, the request line once it
   * is whole. The header fields are parsed once the head is complete. */
  size_t m = 0;
  while (m < len && m < HTTP1_METHOD_MAX && is_tchar(buf[m])) {
    m++;
  }
  if (m < len && (m == 0 || m >= HTTP1_METHOD_MAX || buf[m] != ' ')) {
    return CAIRN_EINVAL;
  }
  const uint8_t *p = buf;
  const uint8_t *fields = NULL, *head_end = NULL;
  for (;;) {
    size_t n = 0;
    const uint8_t *next = NULL;
    if (!next_line(p, end, &n, &next)) {
      return 0;
    }
    if (p == buf) {
      if (parse_request_line(buf, n, out) != 0) {
        return CAIRN_EINVAL;
      }
      fields = next;
    } else if (n == 0) {
      head_end = next;
      break;
    }
    p = next;
  }
  size_t n = 0;
  const uint8_t *next = NULL;
  /* Header fields. */
  bool has_length = false, conn_close = false, conn_keep = false;
  p = fields;
  for (;;) {
    next_line(p, head_end, &n, &next);
    if (n == 0) {
      break;
    }
    const uint8_t *h = p;
    size_t k = 0;
    while (k < n && is_tchar(h[k])) {
      k++;
    }
    if (k == 0 || k >= n || h[k] != ':') {
      return CAIRN_EINVAL; /* also refuses obsolete line folding */
    }
    size_t vs = k + 1, ve = n;
    while (vs < ve && (h[vs] == ' ' || h[vs] == '\t')) {
      vs++;
    }
    while (ve > vs && (h[ve - 1] == ' ' || h[ve - 1] == '\t')) {
      ve--;
    }
    for (size_t j = vs; j < ve; j++) {
      if ((h[j] < 0x20 && h[j] != '\t') || h[j] == 0x7f) {
        return CAIRN_EINVAL;
      }
    }
    if (out->n_headers == HTTP1_HEADERS_MAX) {
      return CAIRN_EINVAL;
    }
    const char *name = (const char *)h, *value = (const char *)h + vs;
    size_t vlen = ve - vs;
    out->headers[out->n_headers].name = name;
    out->headers[out->n_headers].name_len = k;
    out->headers[out->n_headers].value = value;
    out->headers[out->n_headers].value_len = vlen;
    out->n_headers++;
    if (k == 14 && strncasecmp(name, "content-length", 14) == 0) {
      if (vlen == 0 || vlen > 18) {
        return CAIRN_EINVAL;
      }
      uint64_t v = 0;
      for (size_t j = 0; j < vlen; j++) {
        if (value[j] < '0' || value[j] > '9') {
          return CAIRN_EINVAL;
        }
        v = v * 10 + (uint64_t)(value[j] - '0');
      }
      if (has_length && v != out->content_length) {
        return CAIRN_EINVAL;
      }
      has_length = true;
      out->content_length = v;
    } else if (k == 17 && strncasecmp(name, "transfer-encoding", 17) == 0) {
      out->has_transfer_encoding = true;
    } else if (k == 10 && strncasecmp(name, "connection", 10) == 0) {
      conn_close |= token_list_has(value, vlen, "close");
      conn_keep |= token_list_has(value, vlen, "keep-alive");
    }
    p = next;
  }
  out->keep_alive = out->minor_version >= 1 ? !conn_close : (conn_keep && !conn_close);
  return (long)(head_end - buf);
}

/* ---- connection glue ----------------------------------------------------------------- */

static const char *reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 411:
      return "Length Required";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Payload Too Large";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

/* The input buffer's bound: a head, a body, and one read of what follows. */
static size_t http1_buf_max(const grpc_conn *c) {
  return GRPC_HTTP_HEAD_BYTES_MAX + c->s->max_recv + GRPC_READ_BYTES;
}

int http1_start(grpc_conn *c) {
  CAIRN_ASSERT(!c->http1);
  c->http1 = calloc(1, sizeof *c->http1);
  if (!c->http1) {
    return CAIRN_ENOMEM;
  }
  grpc_conn_set_state(c, CONN_HTTP1);
  if (c->s->shutting_down) {
    c->http1->close_after = true;
  }
  return 0;
}

bool http1_waiting(const grpc_conn *c) {
  return c->http1 && c->http1->outstanding;
}

static int http1_write_response(grpc_conn *c, int status, const char *content_type,
                                const uint8_t *body, size_t len, bool keep_alive, bool head_only) {
  char head[512];
  int n = snprintf(head, sizeof head, "HTTP/1.1 %d %s\r\n%s%.200s%sContent-Length: %zu\r\n%s\r\n",
                   status, reason_phrase(status), content_type ? "Content-Type: " : "",
                   content_type ? content_type : "", content_type ? "\r\n" : "", len,
                   keep_alive ? "" : "Connection: close\r\n");
  CAIRN_ASSERT(n > 0 && (size_t)n < sizeof head);
  int rc = grpc_conn_output(c, (const uint8_t *)head, (size_t)n);
  if (rc == 0 && len > 0 && !head_only) {
    rc = grpc_conn_output(c, body, len);
  }
  grpc_server_mark_dirty(c->s, c);
  return rc;
}

/* Refuses the request at the head of the buffer and closes. */
static void http1_refuse(grpc_conn *c, int status, const char *text) {
  if (http1_write_response(c, status, "text/plain; charset=utf-8", (const uint8_t *)text,
                           strlen(text), false, false) != 0) {
    grpc_conn_fail(c, "output");
    return;
  }
  grpc_conn_drain(c);
}

void http1_recv(grpc_conn *c, const uint8_t *data, size_t len) {
  struct http1_state *h = c->http1;
  if (c->state != CONN_HTTP1 || len == 0) {
    return;
  }
  if (h->len + len > http1_buf_max(c)) {
    http1_refuse(c, 413, "request too large\n");
    return;
  }
  if (h->len + len > h->cap) {
    size_t cap = h->cap ? h->cap : 4096;
    while (cap < h->len + len) {
      cap *= 2;
    }
    if (cap > http1_buf_max(c)) {
      cap = http1_buf_max(c);
    }
    uint8_t *grown = realloc(h->buf, cap);
    if (!grown) {
      grpc_conn_fail(c, "out of memory");
      return;
    }
    h->buf = grown;
    h->cap = cap;
  }
  memcpy(h->buf + h->len, data, len);
  h->len += len;
  http1_process(c);
}

static grpc_http_request *http1_request_new(grpc_conn *c, const struct http1_head *head) {
  size_t hlen = 0;
  for (size_t i = 0; i < head->n_headers; i++) {
    hlen += head->headers[i].name_len + head->headers[i].value_len + 2;
  }
  grpc_http_request *req = calloc(1, sizeof *req);
  if (!req) {
    return NULL;
  }
  req->hdrs = malloc(hlen ? hlen : 1);
  if (!req->hdrs) {
    free(req);
    return NULL;
  }
  for (size_t i = 0; i < head->n_headers; i++) {
    memcpy(req->hdrs + req->hdrs_len, head->headers[i].name, head->headers[i].name_len);
    req->hdrs_len += head->headers[i].name_len;
    req->hdrs[req->hdrs_len++] = '\0';
    memcpy(req->hdrs + req->hdrs_len, head->headers[i].value, head->headers[i].value_len);
    req->hdrs_len += head->headers[i].value_len;
    req->hdrs[req->hdrs_len++] = '\0';
  }
  req->conn = c;
  req->keep_alive = head->keep_alive;
  req->head_only = head->method_len == 4 && memcmp(head->method, "HEAD", 4) == 0;
  return req;
}

static void http1_request_free(grpc_http_request *req) {
  free(req->hdrs);
  free(req);
}

void http1_process(grpc_conn *c) {
  struct http1_state *h = c->http1;
  grpc_server *s = c->s;
  /* Bounded by the buffer: each round consumes a whole request or stops. */
  while (c->state == CONN_HTTP1 && !c->fatal && !h->outstanding && !h->close_after && h->len > 0) {
    struct http1_head head;
    long r = http1_parse_head(h->buf, h->len, &head);
    if (r == 0) {
      if (h->len > GRPC_HTTP_HEAD_BYTES_MAX) {
        http1_refuse(c, 431, "request header fields too large\n");
      }
      break;
    }
    if (r < 0) {
      http1_refuse(c, 400, "malformed request\n");
      break;
    }
    if ((size_t)r > GRPC_HTTP_HEAD_BYTES_MAX) {
      http1_refuse(c, 431, "request header fields too large\n");
      break;
    }
    if (head.has_transfer_encoding) {
      http1_refuse(c, 411, "a Content-Length body is required\n");
      break;
    }
    if (head.content_length > s->max_recv) {
      http1_refuse(c, 413, "request body too large\n");
      break;
    }
    size_t total = (size_t)r + (size_t)head.content_length;
    if (h->len < total) {
      break; /* the body is still coming */
    }
    char method[HTTP1_METHOD_MAX];
    memcpy(method, head.method, head.method_len);
    method[head.method_len] = '\0';
    char *path = malloc(head.target_len + 1);
    grpc_http_request *req = path ? http1_request_new(c, &head) : NULL;
    if (!req) {
      free(path);
      grpc_conn_fail(c, "out of memory");
      break;
    }
    memcpy(path, head.target, head.target_len);
    path[head.target_len] = '\0';
    h->outstanding = req;
    const uint8_t *body = h->buf + r;
    if (s->http_handler) {
      s->http_handler(req, method, path, body, (size_t)head.content_length, s->http_ctx);
    } else {
      static const char nf[] = "404 page not found\n";
      grpc_http_respond(req, 404, "text/plain; charset=utf-8", (const uint8_t *)nf, sizeof nf - 1);
    }
    free(path);
    /* The buffer did not move during the handler: nothing feeds it then. */
    memmove(h->buf, h->buf + total, h->len - total);
    h->len -= total;
  }
  if (c->state == CONN_HTTP1 && h->close_after && !h->outstanding) {
    grpc_conn_drain(c);
  }
}

int grpc_http_respond(grpc_http_request *req, int status, const char *content_type,
                      const uint8_t *body, size_t len) {
  if (!req || (!body && len > 0) || status < 100 || status > 999) {
    return CAIRN_EINVAL;
  }
  grpc_conn *c = req->conn;
  if (!c) {
    http1_request_free(req);
    return CAIRN_ESTOPPED;
  }
  struct http1_state *h = c->http1;
  CAIRN_ASSERT(h && h->outstanding == req);
  h->outstanding = NULL;
  bool keep = req->keep_alive && !h->close_after && !c->s->shutting_down;
  int rc = http1_write_response(c, status, content_type, body, len, keep, req->head_only);
  http1_request_free(req);
  if (rc != 0) {
    grpc_conn_fail(c, "output");
    return rc;
  }
  if (!keep) {
    h->close_after = true;
  }
  /* More pipelined requests, reading again, or the close: from the loop. */
  grpc_server_mark_dirty(c->s, c);
  return 0;
}

const char *grpc_http_header(const grpc_http_request *req, const char *name) {
  if (!req || !name) {
    return NULL;
  }
  size_t off = 0;
  while (off < req->hdrs_len) {
    const char *n = req->hdrs + off;
    const char *v = n + strlen(n) + 1;
    if (strcasecmp(n, name) == 0) {
      return v;
    }
    off = (size_t)(v - req->hdrs) + strlen(v) + 1;
  }
  return NULL;
}

void http1_teardown(grpc_conn *c) {
  struct http1_state *h = c->http1;
  if (!h) {
    return;
  }
  if (h->outstanding) {
    h->outstanding->conn = NULL; /* the handler's respond frees it */
  }
  free(h->buf);
  free(h);
  c->http1 = NULL;
}

void http1_shutdown(grpc_conn *c) {
  struct http1_state *h = c->http1;
  if (!h || c->state != CONN_HTTP1) {
    return;
  }
  h->close_after = true;
  grpc_server_mark_dirty(c->s, c);
}
