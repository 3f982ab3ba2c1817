/* wire/grpc_client_call.c: one client call on one HTTP/2 stream.
 *
 * State machine (enum gc_call_state, gc_call_set_state() asserts):
 *
 *   WAITING --connection ready, request submitted--> OPEN
 *   WAITING, OPEN --end decided-----------------------> DONE (on_done, freed)
 *
 * The end is decided by the server (trailers, a trailers-only response,
 * RST_STREAM, a broken response), or here (cancel, deadline, an oversized
 * or malformed message, the connection lost, the client closing). The
 * server's end is held back until the messages received before it were
 * delivered (they may be buffered while the call is paused); a local end
 * takes effect at once and drops what is buffered.
 *
 * Receiving: DATA bytes are parsed as they arrive. A message that lies whole
 * inside one DATA chunk is handed to on_message without a copy; a longer one
 * is assembled in a buffer of its exact size (at most max_recv bytes, checked
 * on its prefix). Bytes are acknowledged to HTTP/2 (nghttp2_session_consume)
 * once parsed, so the server's window refills as fast as on_message runs.
 * While the call is paused, DATA bytes are kept raw and unacknowledged in
 * `held`: the server stops when our stream window is full, which bounds
 * `held` by the stream window.
 *
 * Sending: messages (prefix included) wait in a queue bounded by
 * max_send_queue bytes; the nghttp2 data source copies from it as flow
 * control allows and answers NGHTTP2_ERR_DEFERRED when it is empty, to be
 * resumed by the process loop after the next send or close_send. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_client_int.h"
#include "wire/grpc_int.h" /* grpc_content_type_ok */

static const bool gc_call_transitions[3][3] = {
    /* to:           WAITING OPEN  DONE */
    [GC_CALL_WAITING] = {false, true, true},
    [GC_CALL_OPEN] = {false, false, true},
    [GC_CALL_DONE] = {false, false, false},
};

static void gc_call_set_state(grpc_ccall *call, enum gc_call_state to) {
  CAIRN_ASSERT(gc_call_transitions[call->state][to]);
  call->state = to;
}

/* ---- pure helpers ---------------------------------------------------------------- */

static int gc_hex(char ch) {
  if (ch >= '0' && ch <= '9') {
    return ch - '0';
  }
  if (ch >= 'a' && ch <= 'f') {
    return ch - 'a' + 10;
  }
  if (ch >= 'A' && ch <= 'F') {
    return ch - 'A' + 10;
  }
  return -1;
}

size_t gc_percent_decode(const char *in, size_t in_len, char *out, size_t cap) {
  size_t o = 0;
  if (cap == 0) {
    return 0;
  }
  for (size_t i = 0; i < in_len && o + 1 < cap; i++) {
    if (in[i] == '%' && i + 2 < in_len) {
      int hi = gc_hex(in[i + 1]);
      int lo = gc_hex(in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out[o++] = (char)(hi << 4 | lo);
        i += 2;
        continue;
      }
    }
    out[o++] = in[i];
  }
  out[o] = '\0';
  return o;
}

void gc_format_timeout(uint64_t ms, char *out, size_t cap) {
  /* At most 8 digits: the finest unit that fits, rounded up. */
  static const struct {
    uint64_t ms;
    char unit;
  } units[] = {{1, 'm'}, {1000, 'S'}, {60000, 'M'}, {3600000, 'H'}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    uint64_t v = (ms + units[i].ms - 1) / units[i].ms;
    if (v <= 99999999u) {
      snprintf(out, cap, "%llu%c", (unsigned long long)v, units[i].unit);
      return;
    }
  }
  snprintf(out, cap, "99999999H");
}

int gc_http_status_to_grpc(int http_status) {
  switch (http_status) {
    case 400:
      return GRPC_INTERNAL;
    case 401:
      return GRPC_UNAUTHENTICATED;
    case 403:
      return GRPC_PERMISSION_DENIED;
    case 404:
      return GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return GRPC_UNAVAILABLE;
    default:
      return GRPC_UNKNOWN;
  }
}

int gc_h2_error_to_grpc(uint32_t error_code) {
  switch (error_code) {
    case NGHTTP2_REFUSED_STREAM:
      return GRPC_UNAVAILABLE;
    case NGHTTP2_CANCEL:
      return GRPC_CANCELLED;
    case NGHTTP2_FLOW_CONTROL_ERROR:
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
      return GRPC_PERMISSION_DENIED;
    default:
      return GRPC_INTERNAL;
  }
}

const char *gc_h2_error_name(uint32_t error_code) {
  static const char *const names[] = {"NO_ERROR",
                                      "PROTOCOL_ERROR",
                                      "INTERNAL_ERROR",
                                      "FLOW_CONTROL_ERROR",
                                      "SETTINGS_TIMEOUT",
                                      "STREAM_CLOSED",
                                      "FRAME_SIZE_ERROR",
                                      "REFUSED_STREAM",
                                      "CANCEL",
                                      "COMPRESSION_ERROR",
                                      "CONNECT_ERROR",
                                      "ENHANCE_YOUR_CALM",
                                      "INADEQUATE_SECURITY",
                                      "HTTP_1_1_REQUIRED"};
  if (error_code < sizeof names / sizeof names[0]) {
    return names[error_code];
  }
  return "UNKNOWN_ERROR";
}

/* ---- lifetime ------------------------------------------------------------------------ */

static const char *const gc_reserved_headers[] = {
    "te",   "content-type", "user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
    "host", "connection"};

static bool gc_header_name_ok(const char *name) {
  if (!name || !name[0]) {
    return false;
  }
  for (const char *p = name; *p; p++) {
    char ch = *p;
    bool ok =
        (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
    if (!ok) {
      return false;
    }
  }
  for (size_t i = 0; i < sizeof gc_reserved_headers / sizeof gc_reserved_headers[0]; i++) {
    if (strcmp(name, gc_reserved_headers[i]) == 0) {
      return false;
    }
  }
  return true;
}

static bool gc_header_value_ok(const char *value) {
  return value && !strpbrk(value, "\r\n");
}

int gc_call_new(grpc_client *cl, const char *path, const struct grpc_metadata *md, size_t n,
                uint64_t timeout_ms, const struct grpc_client_handlers *h, void *data,
                grpc_ccall **out) {
  if (!path || path[0] != '/' || !strchr(path + 1, '/') || strchr(path + 1, '/')[1] == '\0' || !h ||
      !h->on_done || (n > 0 && !md) || !gc_header_value_ok(path)) {
    return CAIRN_EINVAL;
  }
  /* Our own headers: the method, scheme, authority, te, content-type,
   * user-agent and grpc-timeout, counted generously. */
  size_t bytes = strlen(path) + 32 + strlen(cl->endpoint) + 32 + 256;
  size_t store = strlen(path) + 1;
  for (size_t i = 0; i < n; i++) {
    if (!gc_header_name_ok(md[i].name) || !gc_header_value_ok(md[i].value)) {
      return CAIRN_EINVAL;
    }
    size_t nl = strlen(md[i].name), vl = strlen(md[i].value);
    bytes += nl + vl + 32;
    store += nl + vl + 2;
    if (bytes > GRPC_CLIENT_METADATA_BYTES_MAX) {
      return CAIRN_EINVAL;
    }
  }
  grpc_ccall *call = calloc(1, sizeof *call);
  if (!call) {
    return CAIRN_ENOMEM;
  }
  call->req_hdrs = malloc(store);
  if (!call->req_hdrs) {
    free(call);
    return CAIRN_ENOMEM;
  }
  size_t off = 0;
  size_t pl = strlen(path) + 1;
  memcpy(call->req_hdrs, path, pl);
  off += pl;
  for (size_t i = 0; i < n; i++) {
    size_t nl = strlen(md[i].name) + 1, vl = strlen(md[i].value) + 1;
    memcpy(call->req_hdrs + off, md[i].name, nl);
    off += nl;
    memcpy(call->req_hdrs + off, md[i].value, vl);
    off += vl;
  }
  call->req_hdrs_len = off;
  call->n_md = n;
  call->cl = cl;
  call->state = GC_CALL_WAITING;
  call->h = *h;
  call->data = data;
  call->grpc_status = -1;
  if (timeout_ms > 0) {
    call->deadline_ms = uv_now(cl->loop) + timeout_ms;
  }
  *out = call;
  return 0;
}

void gc_call_attach(grpc_ccall *call, gc_conn *c) {
  CAIRN_ASSERT(!call->conn);
  call->conn = c;
  call->prev = NULL;
  call->next = c->calls;
  if (c->calls) {
    c->calls->prev = call;
  }
  c->calls = call;
  c->n_calls++;
}

void gc_call_detach(grpc_ccall *call) {
  gc_conn *c = call->conn;
  if (!c) {
    return;
  }
  CAIRN_ASSERT(!call->stream_live);
  if (call->prev) {
    call->prev->next = call->next;
  } else {
    CAIRN_ASSERT(c->calls == call);
    c->calls = call->next;
  }
  if (call->next) {
    call->next->prev = call->prev;
  }
  call->prev = call->next = NULL;
  CAIRN_ASSERT(c->n_calls > 0);
  c->n_calls--;
  call->conn = NULL;
}

static void gc_call_drop_queue(grpc_ccall *call) {
  struct gc_send_chunk *ch = call->q_head;
  while (ch) {
    struct gc_send_chunk *next = ch->next;
    free(ch);
    ch = next;
  }
  call->q_head = call->q_tail = NULL;
  call->queued = 0;
}

static void on_call_timer_closed(uv_handle_t *h) {
  grpc_ccall *call = h->data;
  grpc_client *cl = call->cl;
  free(call);
  CAIRN_ASSERT(cl->n_calls > 0);
  cl->n_calls--;
  grpc_client_wake(cl); /* a closing client waits for its calls */
}

void gc_call_free(grpc_ccall *call) {
  grpc_client *cl = call->cl;
  CAIRN_ASSERT(call->state == GC_CALL_DONE && !call->conn && !call->dirty);
  if (call->all_prev) {
    call->all_prev->all_next = call->all_next;
  } else {
    CAIRN_ASSERT(cl->calls == call);
    cl->calls = call->all_next;
  }
  if (call->all_next) {
    call->all_next->all_prev = call->all_prev;
  }
  gc_call_drop_queue(call);
  free(call->req_hdrs);
  free(call->msg);
  free(call->held);
  free(call->grpc_message);
  free(call->remote_message);
  free(call->message);
  free(call->unary_resp);
  if (call->has_timer) {
    uv_close((uv_handle_t *)&call->timer, on_call_timer_closed);
    return;
  }
  free(call);
  CAIRN_ASSERT(cl->n_calls > 0);
  cl->n_calls--;
}

/* The bytes the call parsed (or dropped) go back to the server's windows. */
static void gc_call_consume(grpc_ccall *call, size_t n) {
  if (n > 0 && call->conn && call->conn->h2 && call->stream_id > 0) {
    nghttp2_session_consume(call->conn->h2, call->stream_id, n);
  }
}

void gc_call_end(grpc_ccall *call, int status, const char *message) {
  if (call->state == GC_CALL_DONE) {
    return;
  }
  gc_call_set_state(call, GC_CALL_DONE);
  call->status = status;
  call->message = NULL;
  if (message && message[0]) {
    call->message = strndup(message, GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX);
    /* Out of memory: the status goes without its text. */
  }
  gc_call_drop_queue(call);
  free(call->msg);
  call->msg = NULL;
  call->msg_pending = false;
  call->writable_cb = NULL;
  call->writable_due = false;
  grpc_client_mark(call->cl, call);
}

/* The server's end is known; it is delivered once nothing is buffered. */
static void gc_call_maybe_finish(grpc_ccall *call) {
  if (call->state == GC_CALL_DONE || !call->remote_ended || call->paused || call->held_len > 0) {
    return;
  }
  if (call->remote_status == GRPC_OK && (call->msg_pending || call->prefix_have > 0)) {
    gc_call_end(call, GRPC_INTERNAL, "grpc: the server ended the stream inside a message");
    return;
  }
  gc_call_end(call, call->remote_status, call->remote_message);
}

static void gc_call_remote_end(grpc_ccall *call, int status, const char *message) {
  if (call->remote_ended || call->state == GC_CALL_DONE) {
    return;
  }
  call->remote_ended = true;
  call->remote_status = status;
  call->remote_message = message && message[0] ? strdup(message) : NULL;
  gc_call_maybe_finish(call);
}

/* ---- request --------------------------------------------------------------------------- */

static nghttp2_nv gc_nv(const char *name, const char *value) {
  nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                   NGHTTP2_NV_FLAG_NONE};
  return nv;
}

int gc_call_submit(grpc_ccall *call) {
  gc_conn *c = call->conn;
  grpc_client *cl = call->cl;
  CAIRN_ASSERT(c && c->h2 && call->state == GC_CALL_WAITING);
  nghttp2_nv *nva = malloc((8 + call->n_md) * sizeof *nva);
  if (!nva) {
    return NGHTTP2_ERR_NOMEM;
  }
  size_t n = 0;
  char timeout[24];
  nva[n++] = gc_nv(":method", "POST");
  nva[n++] = gc_nv(":scheme", cl->use_tls ? "https" : "http");
  nva[n++] = gc_nv(":path", call->req_hdrs);
  nva[n++] = gc_nv(":authority", cl->endpoint);
  nva[n++] = gc_nv("te", "trailers");
  nva[n++] = gc_nv("content-type", "application/grpc");
  nva[n++] = gc_nv("user-agent", GRPC_CLIENT_USER_AGENT);
  if (call->deadline_ms) {
    uint64_t now = uv_now(cl->loop);
    gc_format_timeout(call->deadline_ms > now ? call->deadline_ms - now : 1, timeout,
                      sizeof timeout);
    nva[n++] = gc_nv("grpc-timeout", timeout);
  }
  const char *p = call->req_hdrs + strlen(call->req_hdrs) + 1;
  for (size_t i = 0; i < call->n_md; i++) {
    const char *v = p + strlen(p) + 1;
    nva[n++] = gc_nv(p, v);
    p = v + strlen(v) + 1;
  }
  nghttp2_data_provider prd;
  prd.source.ptr = NULL; /* the stream's user data finds the call */
  prd.read_callback = gc_call_data_read;
  int32_t id = nghttp2_submit_request(c->h2, NULL, nva, n, &prd, call);
  free(nva); /* nghttp2 copied the headers */
  if (id < 0) {
    return id;
  }
  call->stream_id = id;
  call->stream_live = true;
  gc_call_set_state(call, GC_CALL_OPEN);
  free(call->req_hdrs);
  call->req_hdrs = NULL;
  return 0;
}

ssize_t gc_call_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                          uint32_t *data_flags, nghttp2_data_source *source, void *user_data) {
  (void)source;
  (void)user_data;
  grpc_ccall *call = nghttp2_session_get_stream_user_data(session, stream_id);
  if (!call || call->state == GC_CALL_DONE) {
    return NGHTTP2_ERR_DEFERRED; /* a RST_STREAM is on its way */
  }
  size_t copied = 0;
  while (copied < length && call->q_head) {
    struct gc_send_chunk *ch = call->q_head;
    size_t n = ch->len - ch->off;
    if (n > length - copied) {
      n = length - copied;
    }
    memcpy(buf + copied, ch->data + ch->off, n);
    ch->off += n;
    copied += n;
    call->queued -= n;
    if (ch->off == ch->len) {
      call->q_head = ch->next;
      if (!call->q_head) {
        call->q_tail = NULL;
      }
      free(ch);
    }
  }
  if (call->writable_cb && !call->writable_due && call->queued < call->cl->max_send_queue / 2) {
    call->writable_due = true;
    grpc_client_mark(call->cl, call);
  }
  if (!call->q_head && call->send_closed) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    call->eof_sent = true;
    return (ssize_t)copied;
  }
  if (copied == 0) {
    call->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return (ssize_t)copied;
}

/* ---- response headers ------------------------------------------------------------------- */

static bool gc_name_is(const uint8_t *name, size_t nlen, const char *want) {
  return nlen == strlen(want) && memcmp(name, want, nlen) == 0;
}

int gc_call_on_header(grpc_ccall *call, const nghttp2_frame *frame, const uint8_t *name,
                      size_t nlen, const uint8_t *value, size_t vlen) {
  (void)frame;
  if (call->state == GC_CALL_DONE) {
    return 0;
  }
  call->hdr_bytes += nlen + vlen + 32;
  if (call->hdr_bytes > GRPC_CLIENT_HEADER_BYTES_MAX) {
    gc_call_end(call, GRPC_INTERNAL, "grpc: response header list too large");
    return 0;
  }
  if (gc_name_is(name, nlen, ":status")) {
    int st = 0;
    for (size_t i = 0; i < vlen && i < 3; i++) {
      st = st * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
    }
    call->http_status = st;
  } else if (gc_name_is(name, nlen, "content-type")) {
    /* Kept cut for the error text; checked whole (a cut value that passes
     * would have passed whole: only its start matters). */
    char *ct = call->content_type;
    size_t n = vlen < sizeof call->content_type - 1 ? vlen : sizeof call->content_type - 1;
    memcpy(ct, value, n);
    ct[n] = '\0';
    call->content_type_seen = true;
    call->content_type_ok = grpc_content_type_ok(ct);
  } else if (gc_name_is(name, nlen, "grpc-status")) {
    int st = 0;
    bool ok = vlen > 0 && vlen <= 9;
    for (size_t i = 0; ok && i < vlen; i++) {
      ok = value[i] >= '0' && value[i] <= '9';
      st = st * 10 + (value[i] - '0');
    }
    call->grpc_status = ok ? st : GRPC_INTERNAL;
    call->grpc_status_bad = !ok;
  } else if (gc_name_is(name, nlen, "grpc-message")) {
    size_t cap =
        (vlen < GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX ? vlen
                                                     : GRPC_CLIENT_STATUS_MESSAGE_BYTES_MAX) +
        1;
    char *m = malloc(cap);
    if (m) {
      gc_percent_decode((const char *)value, vlen, m, cap);
      free(call->grpc_message);
      call->grpc_message = m;
    }
  } else if (gc_name_is(name, nlen, "grpc-encoding")) {
    call->encoding_other = !gc_name_is(value, vlen, "identity");
  }
  return 0;
}

/* The status a trailer block (or a trailers-only response) carries. */
static void gc_call_trailers(grpc_ccall *call) {
  if (call->grpc_status_bad) {
    gc_call_remote_end(call, GRPC_INTERNAL, "transport: malformed grpc-status");
  } else if (call->grpc_status < 0) {
    /* grpc-go: a missing grpc-status is UNKNOWN. */
    gc_call_remote_end(call, GRPC_UNKNOWN,
                       call->grpc_message ? call->grpc_message : "grpc: missing grpc-status");
  } else {
    gc_call_remote_end(call, call->grpc_status, call->grpc_message);
  }
}

void gc_call_on_headers_end(grpc_ccall *call, bool end_stream) {
  if (call->state == GC_CALL_DONE) {
    return;
  }
  if (!call->got_headers) {
    call->got_headers = true;
    char text[200];
    if (call->http_status != 200) {
      snprintf(text, sizeof text, "unexpected HTTP status code received from server: %d",
               call->http_status);
      if (end_stream) {
        gc_call_remote_end(call, gc_http_status_to_grpc(call->http_status), text);
      } else {
        gc_call_end(call, gc_http_status_to_grpc(call->http_status), text);
      }
      return;
    }
    if (!call->content_type_ok) {
      if (call->content_type_seen) {
        snprintf(text, sizeof text, "transport: received unexpected content-type \"%s\"",
                 call->content_type);
      } else {
        snprintf(text, sizeof text, "transport: malformed header: missing HTTP content-type");
      }
      if (end_stream) {
        gc_call_remote_end(call, GRPC_UNKNOWN, text);
      } else {
        gc_call_end(call, GRPC_UNKNOWN, text);
      }
      return;
    }
    if (end_stream) {
      gc_call_trailers(call); /* trailers-only */
    }
    return;
  }
  /* Trailers (nghttp2 refuses a trailer block without END_STREAM). */
  if (end_stream) {
    gc_call_trailers(call);
  }
}

void gc_call_on_data_end_stream(grpc_ccall *call) {
  gc_call_remote_end(call, GRPC_INTERNAL, "server closed the stream without sending trailers");
}

void gc_call_on_stream_close(grpc_ccall *call, uint32_t error_code) {
  if (call->remote_ended || call->state == GC_CALL_DONE) {
    gc_call_maybe_finish(call);
    return;
  }
  char text[GRPC_CLIENT_ERROR_TEXT_MAX + 64];
  gc_conn *c = call->conn;
  if (error_code == NGHTTP2_REFUSED_STREAM && c && c->error[0]) {
    /* Refused after a GOAWAY: the server never processed the call. */
    snprintf(text, sizeof text, "%s", c->error);
  } else {
    snprintf(text, sizeof text, "stream terminated by RST_STREAM with error code: %s",
             gc_h2_error_name(error_code));
  }
  /* A reset stream delivers nothing more: what is buffered is dropped and
   * the call ends now, paused or not. */
  gc_call_consume(call, call->held_len);
  call->held_off = call->held_len = 0;
  gc_call_end(call, gc_h2_error_to_grpc(error_code), text);
}

/* ---- receiving ------------------------------------------------------------------------- */

/* A whole message: to the unary collector or to on_message. owned: msg is a
 * malloc'ed buffer the call may keep (else it is freed here). */
static void gc_call_deliver(grpc_ccall *call, uint8_t *msg, size_t len, bool owned) {
  call->n_msgs++;
  if (call->unary) {
    /* Keep the first message for the callback; an assembled one is taken
     * over, not copied. Later ones only count (the call ends INTERNAL). */
    if (call->n_msgs == 1) {
      if (owned) {
        call->unary_resp = msg;
        owned = false;
      } else {
        call->unary_resp = malloc(len ? len : 1);
        if (!call->unary_resp) {
          gc_call_end(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
          return;
        }
        memcpy(call->unary_resp, msg, len);
      }
      call->unary_len = len;
    }
  } else if (call->h.on_message) {
    call->h.on_message(call, msg, len, call->data);
  }
  if (owned) {
    free(msg);
  }
}

/* Checks a complete prefix. Returns false if the call ended. */
static bool gc_call_check_prefix(grpc_ccall *call, size_t *len_out) {
  grpc_client *cl = call->cl;
  uint8_t flag = call->prefix[0];
  size_t len = (size_t)call->prefix[1] << 24 | (size_t)call->prefix[2] << 16 |
               (size_t)call->prefix[3] << 8 | (size_t)call->prefix[4];
  char text[160];
  if (flag == 1) {
    /* We announce no decompressor, so a compressed message is either a flag
     * without an encoding or an encoding we lack (grpc-go's texts). */
    gc_call_end(call, call->encoding_other ? GRPC_UNIMPLEMENTED : GRPC_INTERNAL,
                call->encoding_other ? "grpc: Decompressor is not installed for grpc-encoding"
                                     : "grpc: compressed flag set with identity or empty encoding");
    return false;
  }
  if (flag != 0) {
    snprintf(text, sizeof text, "grpc: received unexpected payload format %u", flag);
    gc_call_end(call, GRPC_INTERNAL, text);
    return false;
  }
  if (len > cl->max_recv) {
    snprintf(text, sizeof text, "grpc: received message larger than max (%zu vs. %zu)", len,
             cl->max_recv);
    gc_call_end(call, GRPC_RESOURCE_EXHAUSTED, text);
    return false;
  }
  *len_out = len;
  return true;
}

/* Parses and delivers; stops early when the call is paused or ends in a
 * callback. Returns the bytes used. */
static size_t gc_call_feed(grpc_ccall *call, const uint8_t *data, size_t len) {
  size_t used = 0;
  /* Bounded by len: every round uses at least one byte, or delivers a
   * zero-length message (whose 5 prefix bytes it used), or stops. */
  while (used < len && call->state != GC_CALL_DONE && !call->paused) {
    if (!call->msg_pending) {
      size_t take = 5 - call->prefix_have;
      if (take > len - used) {
        take = len - used;
      }
      memcpy(call->prefix + call->prefix_have, data + used, take);
      call->prefix_have += take;
      used += take;
      if (call->prefix_have < 5) {
        break;
      }
      call->prefix_have = 0;
      size_t mlen = 0;
      if (!gc_call_check_prefix(call, &mlen)) {
        break;
      }
      if (len - used >= mlen) {
        /* Whole inside this chunk: no copy. */
        const uint8_t *m = data + used;
        used += mlen;
        gc_call_deliver(call, (uint8_t *)m, mlen, false);
        continue;
      }
      call->msg = malloc(mlen);
      if (!call->msg) {
        gc_call_end(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
        break;
      }
      call->msg_len = mlen;
      call->msg_have = 0;
      call->msg_pending = true;
    }
    size_t take = call->msg_len - call->msg_have;
    if (take > len - used) {
      take = len - used;
    }
    memcpy(call->msg + call->msg_have, data + used, take);
    call->msg_have += take;
    used += take;
    if (call->msg_have == call->msg_len) {
      uint8_t *m = call->msg;
      call->msg = NULL;
      call->msg_pending = false;
      gc_call_deliver(call, m, call->msg_len, true);
    }
  }
  return used;
}

/* Keeps raw bytes while paused (unacknowledged: the stream window bounds
 * them). Returns false if the call ended. */
static bool gc_call_hold(grpc_ccall *call, const uint8_t *data, size_t len) {
  if (call->held_off > 0 && call->held_off + call->held_len + len > call->held_cap) {
    memmove(call->held, call->held + call->held_off, call->held_len);
    call->held_off = 0;
  }
  size_t need = call->held_off + call->held_len + len;
  if (need > call->held_cap) {
    size_t cap = call->held_cap ? call->held_cap : 65536;
    while (cap < need) {
      cap *= 2;
    }
    uint8_t *grown = realloc(call->held, cap);
    if (!grown) {
      gc_call_consume(call, len);
      gc_call_end(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
      return false;
    }
    call->held = grown;
    call->held_cap = cap;
  }
  memcpy(call->held + call->held_off + call->held_len, data, len);
  call->held_len += len;
  return true;
}

void gc_call_on_data(grpc_ccall *call, const uint8_t *data, size_t len) {
  if (call->state == GC_CALL_DONE) {
    gc_call_consume(call, len);
    return;
  }
  if (call->paused || call->held_len > 0) {
    gc_call_hold(call, data, len);
    return;
  }
  size_t used = gc_call_feed(call, data, len);
  gc_call_consume(call, used);
  if (used < len) {
    if (call->state == GC_CALL_DONE) {
      gc_call_consume(call, len - used);
    } else {
      gc_call_hold(call, data + used, len - used); /* paused inside the chunk */
    }
  }
}

/* Delivers buffered bytes after a resume, at most
 * GRPC_CLIENT_RESUME_BYTES_MAX per round. */
static void gc_call_deliver_held(grpc_ccall *call) {
  size_t budget = GRPC_CLIENT_RESUME_BYTES_MAX;
  while (call->held_len > 0 && call->state != GC_CALL_DONE && !call->paused && budget > 0) {
    size_t n = call->held_len < budget ? call->held_len : budget;
    size_t used = gc_call_feed(call, call->held + call->held_off, n);
    gc_call_consume(call, used);
    if (call->state == GC_CALL_DONE) {
      break;
    }
    call->held_off += used;
    call->held_len -= used;
    budget -= used < budget ? used : budget;
    if (used < n) {
      break; /* paused */
    }
  }
  if (call->state != GC_CALL_DONE && call->held_len == 0) {
    call->held_off = 0;
    if (call->held_cap > 65536) {
      free(call->held); /* a long stream does not keep its peak buffer */
      call->held = NULL;
      call->held_cap = 0;
    }
  }
  if (call->held_len > 0 && !call->paused && call->state != GC_CALL_DONE) {
    call->resume_due = true;
    grpc_client_mark(call->cl, call);
  }
  gc_call_maybe_finish(call);
}

/* ---- the process loop's work ------------------------------------------------------------- */

bool gc_call_process(grpc_ccall *call) {
  grpc_client *cl = call->cl;
  gc_conn *c = call->conn;
  if (call->state == GC_CALL_DONE) {
    if (call->stream_live && c && c->h2) {
      /* Our side may still be open: RST_STREAM(NO_ERROR) after the server's
       * end (as grpc-go), CANCEL when we end it. */
      nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, call->stream_id,
                                call->remote_ended ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL);
      nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
    }
    call->stream_live = false;
    gc_call_consume(call, call->held_len);
    call->held_len = 0;
    gc_call_detach(call);
    if (call->has_timer) {
      uv_timer_stop(&call->timer);
    }
    call->in_callback = true;
    call->h.on_done(call, call->status, call->message ? call->message : "", call->data);
    call->in_callback = false;
    gc_call_free(call);
    return true;
  }
  if (call->state == GC_CALL_WAITING) {
    if (!c || c->state == GC_CONN_DRAINING || c->state == GC_CONN_CLOSED) {
      /* Its connection went away before the request left: another one. */
      gc_call_detach(call);
      gc_conn *to = grpc_client_conn_for_call(cl);
      if (!to) {
        gc_call_end(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
        return true;
      }
      gc_call_attach(call, to);
      c = to;
    }
    if (c->state != GC_CONN_READY || c->failed) {
      return false; /* the connection marks us when it is ready */
    }
    int rv = gc_call_submit(call);
    if (rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
      gc_conn_set_state(c, GC_CONN_DRAINING); /* stream ids used up */
      if (cl->current == c) {
        cl->current = NULL;
      }
      grpc_client_mark(cl, call);
      return true;
    }
    if (rv != 0) {
      gc_call_end(call, GRPC_INTERNAL, nghttp2_strerror(rv));
      return true;
    }
  }
  bool did = false;
  if (call->deferred && call->stream_live && c && c->h2 && (call->q_head || call->send_closed)) {
    call->deferred = false;
    nghttp2_session_resume_data(c->h2, call->stream_id);
    did = true;
  }
  if (call->resume_due) {
    call->resume_due = false;
    gc_call_deliver_held(call);
    did = true;
  }
  if (call->state == GC_CALL_DONE) {
    return did;
  }
  if (call->writable_due) {
    call->writable_due = false;
    void (*cb)(grpc_ccall *, void *) = call->writable_cb;
    if (cb && call->queued < cl->max_send_queue / 2 && !call->send_closed) {
      call->writable_cb = NULL;
      cb(call, call->writable_data);
      did = true;
    }
  }
  return did;
}

/* ---- API on calls ------------------------------------------------------------------------- */

int grpc_ccall_send(grpc_ccall *call, const uint8_t *msg, size_t len) {
  if (!call || (!msg && len > 0) || len > UINT32_MAX) {
    return CAIRN_EINVAL;
  }
  if (call->state == GC_CALL_DONE || call->send_closed || call->remote_ended) {
    return CAIRN_ESTOPPED;
  }
  if (call->queued > 0 && call->queued + 5 + len > call->cl->max_send_queue) {
    return CAIRN_EBUSY;
  }
  struct gc_send_chunk *ch = malloc(sizeof *ch + 5 + len);
  if (!ch) {
    return CAIRN_ENOMEM;
  }
  ch->next = NULL;
  ch->len = 5 + len;
  ch->off = 0;
  ch->data[0] = 0;
  ch->data[1] = (uint8_t)(len >> 24);
  ch->data[2] = (uint8_t)(len >> 16);
  ch->data[3] = (uint8_t)(len >> 8);
  ch->data[4] = (uint8_t)len;
  if (len > 0) {
    memcpy(ch->data + 5, msg, len);
  }
  if (call->q_tail) {
    call->q_tail->next = ch;
  } else {
    call->q_head = ch;
  }
  call->q_tail = ch;
  call->queued += ch->len;
  if (call->deferred) {
    grpc_client_mark(call->cl, call);
  }
  return 0;
}

int grpc_ccall_close_send(grpc_ccall *call) {
  if (call->state == GC_CALL_DONE || call->send_closed) {
    return 0;
  }
  call->send_closed = true;
  call->writable_cb = NULL;
  if (call->deferred) {
    grpc_client_mark(call->cl, call);
  }
  return 0;
}

void grpc_ccall_cancel(grpc_ccall *call) {
  if (call->state == GC_CALL_DONE) {
    return;
  }
  gc_call_end(call, GRPC_CANCELLED, GRPC_CLIENT_CANCELLED_TEXT);
}

void grpc_ccall_pause_recv(grpc_ccall *call, bool paused) {
  if (call->state == GC_CALL_DONE || call->paused == paused) {
    return;
  }
  call->paused = paused;
  if (!paused) {
    call->resume_due = true; /* buffered bytes, or the server's end */
    grpc_client_mark(call->cl, call);
  }
}

void grpc_ccall_on_writable(grpc_ccall *call, void (*cb)(grpc_ccall *call, void *data),
                            void *data) {
  if (call->state == GC_CALL_DONE) {
    return;
  }
  call->writable_cb = cb;
  call->writable_data = data;
  if (!cb) {
    call->writable_due = false;
    return;
  }
  if (call->queued < call->cl->max_send_queue / 2) {
    call->writable_due = true;
    grpc_client_mark(call->cl, call);
  }
}

bool grpc_ccall_request_sent(const grpc_ccall *call) {
  return call->headers_sent;
}

size_t grpc_ccall_queued_bytes(const grpc_ccall *call) {
  return call->queued;
}

size_t grpc_ccall_recv_buffered(const grpc_ccall *call) {
  return call->held_len + (call->msg_pending ? call->msg_have : 0);
}
