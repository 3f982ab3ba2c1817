/* wire/grpc_call.c: one gRPC call on one HTTP/2 stream.
 *
 * State machine (enum grpc_call_state, call_set_state() asserts):
 *
 *   HEADERS --registered path, valid headers--> ACTIVE
 *   HEADERS --anything else: trailers-only----> DONE
 *   ACTIVE --first message------------------> SENDING
 *   ACTIVE --finish: trailers-only-----------> DONE
 *   SENDING --finish--------------------------> FINISHING
 *   FINISHING --queue drained, trailers-------> DONE
 *   any --the stream closed-------------------> CLOSED (on_close, then freed)
 *
 * Receiving: the 5-byte prefix and the payload are reassembled across DATA
 * frames; a message that arrives whole inside one frame is handed over
 * without a copy. Unary and server-streaming requests are held until the
 * client half-closes. At most one message is being assembled per call, and
 * it is at most the server's max_recv bytes.
 *
 * Sending: messages (prefix included) wait in a queue bounded by
 * max_send_queue bytes; the nghttp2 data source copies from it as flow
 * control allows and answers NGHTTP2_ERR_DEFERRED when it is empty, to be
 * resumed by the next send or finish. The trailers go out from the data
 * source once the queue is empty (EOF | NO_END_STREAM, then
 * nghttp2_submit_trailer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/cairn_assert.h"
#include "wire/grpc_int.h"

#define GRPC_DEADLINE_TEXT "Deadline Exceeded"

static const bool call_transitions[6][6] = {
    /* to:      HEADERS ACTIVE SENDING FINISHING DONE  CLOSED */
    [CALL_HEADERS] = {false, true, false, false, true, true},
    [CALL_ACTIVE] = {false, false, true, false, true, true},
    [CALL_SENDING] = {false, false, false, true, false, true},
    [CALL_FINISHING] = {false, false, false, false, true, true},
    [CALL_DONE] = {false, false, false, false, false, true},
    [CALL_CLOSED] = {false, false, false, false, false, false},
};

static void call_set_state(grpc_call *call, enum grpc_call_state to) {
  CAIRN_ASSERT(call_transitions[call->state][to]);
  call->state = to;
}

static nghttp2_nv make_nv(const char *name, const char *value) {
  nghttp2_nv nv = {(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                   NGHTTP2_NV_FLAG_NONE};
  return nv;
}

static grpc_server *call_server(const grpc_call *call) {
  return call->conn->s;
}

/* ---- pure helpers ---------------------------------------------------------------- */

size_t grpc_percent_encode(const char *in, size_t in_len, char *out, size_t cap) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;
  if (cap == 0) {
    return 0;
  }
  for (size_t i = 0; i < in_len; i++) {
    uint8_t b = (uint8_t)in[i];
    if (b >= 0x20 && b <= 0x7e && b != '%') {
      if (o + 1 >= cap) {
        break;
      }
      out[o++] = (char)b;
    } else {
      if (o + 3 >= cap) {
        break;
      }
      out[o++] = '%';
      out[o++] = hex[b >> 4];
      out[o++] = hex[b & 15];
    }
  }
  out[o] = '\0';
  return o;
}

int grpc_parse_timeout(const char *v, uint64_t *ms_out) {
  if (!v) {
    return CAIRN_EINVAL;
  }
  uint64_t n = 0;
  size_t digits = 0;
  while (v[digits] >= '0' && v[digits] <= '9') {
    if (digits == 8) {
      return CAIRN_EINVAL;
    }
    n = n * 10 + (uint64_t)(v[digits] - '0');
    digits++;
  }
  if (digits == 0 || v[digits] == '\0' || v[digits + 1] != '\0') {
    return CAIRN_EINVAL;
  }
  uint64_t ms;
  switch (v[digits]) {
    case 'H':
      ms = n * 3600000u;
      break;
    case 'M':
      ms = n * 60000u;
      break;
    case 'S':
      ms = n * 1000u;
      break;
    case 'm':
      ms = n;
      break;
    case 'u':
      ms = (n + 999u) / 1000u;
      break;
    case 'n':
      ms = (n + 999999u) / 1000000u;
      break;
    default:
      return CAIRN_EINVAL;
  }
  *ms_out = ms;
  return 0;
}

bool grpc_content_type_ok(const char *v) {
  static const char base[] = "application/grpc";
  size_t n = sizeof base - 1;
  if (!v || strncasecmp(v, base, n) != 0) {
    return false;
  }
  return v[n] == '\0' || v[n] == '+' || v[n] == ';';
}

/* ---- lifetime ---------------------------------------------------------------------- */

grpc_call *grpc_call_new(grpc_conn *c, int32_t stream_id) {
  grpc_call *call = calloc(1, sizeof *call);
  if (!call) {
    return NULL;
  }
  call->conn = c;
  call->stream_id = stream_id;
  call->state = CALL_HEADERS;
  call->next = c->calls;
  if (c->calls) {
    c->calls->prev = call;
  }
  c->calls = call;
  c->n_streams++;
  c->s->stats.streams_open++;
  return call;
}

static void on_call_timer_closed(uv_handle_t *h) {
  free(h);
}

static void call_drop_queue(grpc_call *call, bool keep_started) {
  struct grpc_send_chunk *ch = call->q_head;
  struct grpc_send_chunk *kept = NULL;
  if (keep_started && ch && ch->off > 0) {
    /* Part of it is already in DATA frames: the framing needs the rest. */
    kept = ch;
    ch = ch->next;
    kept->next = NULL;
  }
  while (ch) {
    struct grpc_send_chunk *next = ch->next;
    call->queued -= ch->len - ch->off;
    free(ch);
    ch = next;
  }
  call->q_head = call->q_tail = kept;
}

static void call_unlink_writable(grpc_call *call) {
  if (!call->writable_queued) {
    return;
  }
  for (grpc_call **p = &call->conn->writable_due; *p; p = &(*p)->writable_next) {
    if (*p == call) {
      *p = call->writable_next;
      break;
    }
  }
  call->writable_queued = false;
}

void grpc_call_stream_closed(grpc_call *call) {
  grpc_conn *c = call->conn;
  if (call->state != CALL_CLOSED) {
    if (!call->end_sent) {
      call->cancelled = true; /* reset by the client or the connection died */
    }
    call_set_state(call, CALL_CLOSED);
    call_unlink_writable(call);
    if (call->timer) {
      uv_timer_stop(call->timer);
    }
    if (call->registered && call->method.on_close) {
      call->method.on_close(call, call->method.ctx);
    }
  }
  /* Free. */
  call_unlink_writable(call);
  if (call->prev) {
    call->prev->next = call->next;
  } else {
    CAIRN_ASSERT(c->calls == call);
    c->calls = call->next;
  }
  if (call->next) {
    call->next->prev = call->prev;
  }
  CAIRN_ASSERT(c->n_streams > 0);
  c->n_streams--;
  c->s->stats.streams_open--;
  call_drop_queue(call, false);
  if (call->timer) {
    uv_close((uv_handle_t *)call->timer, on_call_timer_closed);
  }
  free(call->hdrs);
  free(call->msg);
  free(call->req);
  free(call->status_msg);
  free(call);
}

/* ---- headers ------------------------------------------------------------------------ */

int grpc_call_add_header(grpc_call *call, const uint8_t *name, size_t nlen, const uint8_t *value,
                         size_t vlen) {
  call->hdrs_accounted += nlen + vlen + 32;
  if (call->hdrs_accounted > GRPC_HEADER_BYTES_MAX) {
    return CAIRN_ETOO_LARGE;
  }
  size_t need = call->hdrs_len + nlen + vlen + 2;
  if (need > call->hdrs_cap) {
    size_t cap = call->hdrs_cap ? call->hdrs_cap * 2 : 512;
    while (cap < need) {
      cap *= 2;
    }
    char *grown = realloc(call->hdrs, cap);
    if (!grown) {
      return CAIRN_ENOMEM;
    }
    call->hdrs = grown;
    call->hdrs_cap = cap;
  }
  /* nghttp2 has checked that names and values hold no NUL. */
  memcpy(call->hdrs + call->hdrs_len, name, nlen);
  call->hdrs_len += nlen;
  call->hdrs[call->hdrs_len++] = '\0';
  memcpy(call->hdrs + call->hdrs_len, value, vlen);
  call->hdrs_len += vlen;
  call->hdrs[call->hdrs_len++] = '\0';
  return 0;
}

const char *grpc_call_header(const grpc_call *call, const char *name) {
  if (!call || !name) {
    return NULL;
  }
  size_t off = 0;
  while (off < call->hdrs_len) {
    const char *n = call->hdrs + off;
    const char *v = n + strlen(n) + 1;
    if (strcasecmp(n, name) == 0) {
      return v;
    }
    off = (size_t)(v - call->hdrs) + strlen(v) + 1;
  }
  return NULL;
}

/* ---- ending ----------------------------------------------------------------------- */

static void call_store_status(grpc_call *call, int status, const char *message) {
  call->status = status;
  free(call->status_msg);
  call->status_msg = NULL;
  if (message && message[0]) {
    size_t len = strnlen(message, GRPC_STATUS_MESSAGE_BYTES_MAX);
    size_t cap = len * 3 + 1;
    call->status_msg = malloc(cap);
    if (call->status_msg) {
      grpc_percent_encode(message, len, call->status_msg, cap);
    }
    /* Out of memory: the status goes out without its text. */
  }
}

/* One HEADERS frame with END_STREAM: :status, content-type, grpc-status,
 * grpc-message. */
static void call_trailers_only(grpc_call *call, const char *http_status) {
  char code[4];
  snprintf(code, sizeof code, "%d", call->status);
  nghttp2_nv nva[5];
  size_t n = 0;
  nva[n++] = make_nv(":status", http_status);
  nva[n++] = make_nv("content-type", "application/grpc");
  nva[n++] = make_nv("grpc-status", code);
  if (call->status_msg) {
    nva[n++] = make_nv("grpc-message", call->status_msg);
  }
  nghttp2_session *h2 = call->conn->h2;
  if (nghttp2_submit_response(h2, call->stream_id, nva, n, NULL) != 0) {
    nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_INTERNAL_ERROR);
  }
  call_set_state(call, CALL_DONE);
}

/* Ends the call with status (the service's finish, or the server's own end
 * on a deadline or a bad request). force: drop the unsent queue. */
static void call_end(grpc_call *call, int status, const char *message, bool force) {
  grpc_conn *c = call->conn;
  switch (call->state) {
    case CALL_HEADERS:
    case CALL_ACTIVE:
      call_store_status(call, status, message);
      call_trailers_only(call, "200");
      break;
    case CALL_SENDING:
    case CALL_FINISHING:
      if (call->state == CALL_FINISHING && !force) {
        break;
      }
      call_store_status(call, status, message);
      if (force) {
        call_drop_queue(call, true);
      }
      if (call->state == CALL_SENDING) {
        call_set_state(call, CALL_FINISHING);
      }
      if (call->deferred) {
        call->deferred = false;
        nghttp2_session_resume_data(c->h2, call->stream_id);
      }
      break;
    case CALL_DONE:
    case CALL_CLOSED:
      break;
  }
  call->recv_stopped = true;
  free(call->msg);
  call->msg = NULL;
  call->msg_pending = false;
  grpc_server_mark_dirty(c->s, c);
}

/* The server ends a call on its own (bad request, deadline): the service's
 * later send and finish do nothing. */
static void call_abort(grpc_call *call, int status, const char *message) {
  call->cancelled = true;
  call_end(call, status, message, true);
}

static void on_deadline(uv_timer_t *t) {
  grpc_call *call = t->data;
  grpc_conn *c = call->conn;
  grpc_conn_enter(c);
  if (call->state != CALL_DONE && call->state != CALL_CLOSED && c->state != CONN_CLOSED) {
    call_abort(call, GRPC_DEADLINE_EXCEEDED, GRPC_DEADLINE_TEXT);
  }
  grpc_conn_after(c);
}

void grpc_call_frame_sent(grpc_call *call, bool end_stream) {
  if (!end_stream || call->end_sent) {
    return;
  }
  call->end_sent = true;
  if (!call->half_closed) {
    /* The response is complete but the client is still sending: ask it to
     * stop without error (RFC 9113 8.1), as grpc-go does. Submitted only
     * now, after the frame with END_STREAM left, so the status goes first. */
    nghttp2_submit_rst_stream(call->conn->h2, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_NO_ERROR);
  }
}

/* ---- dispatch ----------------------------------------------------------------------- */

void grpc_call_dispatch(grpc_call *call) {
  grpc_conn *c = call->conn;
  grpc_server *s = c->s;
  if (call->state != CALL_HEADERS) {
    return;
  }
  const char *method = grpc_call_header(call, ":method");
  const char *path = grpc_call_header(call, ":path");
  const char *ct = grpc_call_header(call, "content-type");
  if (!method || strcmp(method, "POST") != 0) {
    call->status = GRPC_UNIMPLEMENTED;
    call_store_status(call, GRPC_UNIMPLEMENTED, "only POST is served");
    call_trailers_only(call, "405");
    call->recv_stopped = true;
    return;
  }
  if (!grpc_content_type_ok(ct)) {
    char text[160];
    snprintf(text, sizeof text, "invalid gRPC request content-type \"%.100s\"", ct ? ct : "");
    call_store_status(call, GRPC_INTERNAL, text);
    call_trailers_only(call, "415");
    call->recv_stopped = true;
    return;
  }
  const struct grpc_method_entry *e = grpc_server_find_method(s, path);
  if (!e) {
    char text[320];
    grpc_server_unknown_text(s, path, text, sizeof text);
    call_end(call, GRPC_UNIMPLEMENTED, text, true);
    return;
  }
  uint64_t timeout_ms = 0;
  const char *timeout = grpc_call_header(call, "grpc-timeout");
  if (timeout && grpc_parse_timeout(timeout, &timeout_ms) != 0) {
    char text[96];
    snprintf(text, sizeof text, "transport: malformed grpc-timeout: %.40s", timeout);
    call_end(call, GRPC_INTERNAL, text, true);
    return;
  }
  if (timeout) {
    call->timer = malloc(sizeof *call->timer);
    if (!call->timer) {
      call_end(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory", true);
      return;
    }
    uv_timer_init(s->loop, call->timer);
    call->timer->data = call;
    call->deadline_ms = uv_now(s->loop) + timeout_ms;
    uv_timer_start(call->timer, on_deadline, timeout_ms, 0);
  }
  call->method = e->m;
  if (s->router) {
    const struct grpc_method *m = s->router(call, &e->m, s->router_ctx);
    if (m != NULL && m != &e->m) {
      call->method = *m;
      call->method.path = e->m.path;
    }
  }
  call->registered = true;
  call_set_state(call, CALL_ACTIVE);
  s->stats.calls_total++;
}

/* ---- receiving ------------------------------------------------------------------------ */

static bool call_receiving(const grpc_call *call) {
  return (call->state == CALL_ACTIVE || call->state == CALL_SENDING) && !call->recv_stopped &&
         !call->cancelled && call->conn->state == CONN_H2;
}

/* A whole message: to the service (bidi) or held until half-close. owned:
 * data is a malloc'ed buffer the call may keep. */
static void call_deliver(grpc_call *call, uint8_t *data, size_t len, bool owned) {
  if (call->method.kind == GRPC_METHOD_BIDI_STREAM) {
    call->method.on_message(call, data, len, call->method.ctx);
    if (owned) {
      free(data);
    }
    return;
  }
  CAIRN_ASSERT(!call->req);
  if (owned) {
    call->req = data;
  } else {
    call->req = malloc(len ? len : 1);
    if (!call->req) {
      call_abort(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
      return;
    }
    memcpy(call->req, data, len);
  }
  call->req_len = len;
}

/* A message prefix is complete: check it. Returns false if the call ended. */
static bool call_check_prefix(grpc_call *call, size_t *len_out) {
  grpc_server *s = call_server(call);
  uint8_t flag = call->prefix[0];
  size_t len = (size_t)call->prefix[1] << 24 | (size_t)call->prefix[2] << 16 |
               (size_t)call->prefix[3] << 8 | (size_t)call->prefix[4];
  char text[160];
  if (flag == 1) {
    /* The client compressed; we announce no compressor, so this is either
     * a flag without an encoding or an encoding we lack (grpc-go's texts). */
    const char *enc = grpc_call_header(call, "grpc-encoding");
    if (!enc || strcmp(enc, "identity") == 0) {
      call_abort(call, GRPC_INTERNAL, "grpc: compressed flag set with identity or empty encoding");
    } else {
      snprintf(text, sizeof text, "grpc: Decompressor is not installed for grpc-encoding \"%.60s\"",
               enc);
      call_abort(call, GRPC_UNIMPLEMENTED, text);
    }
    return false;
  }
  if (flag != 0) {
    snprintf(text, sizeof text, "grpc: received unexpected payload format %u", flag);
    call_abort(call, GRPC_INTERNAL, text);
    return false;
  }
  if (len > s->max_recv) {
    snprintf(text, sizeof text, "grpc: received message larger than max (%zu vs. %zu)", len,
             s->max_recv);
    call_abort(call, GRPC_RESOURCE_EXHAUSTED, text);
    return false;
  }
  call->n_msgs++;
  if (call->method.kind != GRPC_METHOD_BIDI_STREAM && call->n_msgs > 1) {
    call_abort(call, GRPC_INTERNAL,
               "grpc: client streaming protocol violation: get <nil>, want <EOF>");
    return false;
  }
  *len_out = len;
  return true;
}

void grpc_call_recv(grpc_call *call, const uint8_t *data, size_t len) {
  /* Bounded by len: every round consumes at least one byte or ends. */
  while (len > 0 && call_receiving(call)) {
    if (!call->msg_pending) {
      size_t take = 5 - call->prefix_have;
      if (take > len) {
        take = len;
      }
      memcpy(call->prefix + call->prefix_have, data, take);
      call->prefix_have += take;
      data += take;
      len -= take;
      if (call->prefix_have < 5) {
        return;
      }
      call->prefix_have = 0;
      size_t mlen = 0;
      if (!call_check_prefix(call, &mlen)) {
        return;
      }
      if (len >= mlen) {
        call_deliver(call, (uint8_t *)data, mlen, false);
        data += mlen;
        len -= mlen;
        continue;
      }
      call->msg = malloc(mlen);
      if (!call->msg) {
        call_abort(call, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
        return;
      }
      call->msg_len = mlen;
      call->msg_have = 0;
      call->msg_pending = true;
    }
    size_t take = call->msg_len - call->msg_have;
    if (take > len) {
      take = len;
    }
    memcpy(call->msg + call->msg_have, data, take);
    call->msg_have += take;
    data += take;
    len -= take;
    if (call->msg_have == call->msg_len) {
      uint8_t *m = call->msg;
      call->msg = NULL;
      call->msg_pending = false;
      call_deliver(call, m, call->msg_len, true);
    }
  }
}

void grpc_call_half_close(grpc_call *call) {
  call->half_closed = true;
  if (!call_receiving(call)) {
    return;
  }
  call->recv_stopped = true;
  if (call->msg_pending || call->prefix_have > 0) {
    call_abort(call, GRPC_INTERNAL, "grpc: the client half-closed inside a message");
    return;
  }
  if (call->method.kind == GRPC_METHOD_BIDI_STREAM) {
    if (call->method.on_half_close) {
      call->method.on_half_close(call, call->method.ctx);
    }
    return;
  }
  if (!call->req) {
    call_abort(call, GRPC_INTERNAL, "grpc: no request message before the client half-closed");
    return;
  }
  uint8_t *req = call->req;
  call->req = NULL;
  call->method.on_message(call, req, call->req_len, call->method.ctx);
  free(req);
}

/* ---- sending ------------------------------------------------------------------------ */

static bool call_stopped(const grpc_call *call) {
  return call->cancelled || call->conn->state == CONN_CLOSED || call->state == CALL_CLOSED ||
         call->conn->state == CONN_DRAINING;
}

ssize_t grpc_call_data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                            size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                            void *user_data) {
  (void)user_data;
  grpc_call *call = source->ptr;
  grpc_server *s = call_server(call);
  size_t copied = 0;
  while (copied < length && call->q_head) {
    struct grpc_send_chunk *ch = call->q_head;
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
  if (call->writable_cb && !call->writable_queued && call->queued < s->max_send_queue / 2) {
    call->writable_queued = true;
    call->writable_next = call->conn->writable_due;
    call->conn->writable_due = call;
  }
  if (!call->q_head) {
    if (call->state == CALL_FINISHING) {
      char code[4];
      snprintf(code, sizeof code, "%d", call->status);
      nghttp2_nv nva[2];
      size_t n = 0;
      nva[n++] = make_nv("grpc-status", code);
      if (call->status_msg) {
        nva[n++] = make_nv("grpc-message", call->status_msg);
      }
      *data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
      call_set_state(call, CALL_DONE);
      if (nghttp2_submit_trailer(session, stream_id, nva, n) != 0) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
      return (ssize_t)copied;
    }
    if (copied == 0) {
      call->deferred = true;
      return NGHTTP2_ERR_DEFERRED;
    }
  }
  return (ssize_t)copied;
}

int grpc_call_send(grpc_call *call, const uint8_t *msg, size_t len) {
  struct grpc_iov one = {msg, len};
  return grpc_call_sendv(call, &one, 1);
}

int grpc_call_sendv(grpc_call *call, const struct grpc_iov *iov, size_t n) {
  if (!call || (n > 0 && !iov)) {
    return CAIRN_EINVAL;
  }
  size_t len = 0;
  for (size_t i = 0; i < n; i++) {
    if (!iov[i].data && iov[i].len > 0) {
      return CAIRN_EINVAL;
    }
    len += iov[i].len;
    if (len > UINT32_MAX) {
      return CAIRN_EINVAL;
    }
  }
  if (call_stopped(call) || (call->state != CALL_ACTIVE && call->state != CALL_SENDING)) {
    return CAIRN_ESTOPPED;
  }
  grpc_server *s = call_server(call);
  if (call->queued > 0 && call->queued + 5 + len > s->max_send_queue) {
    return CAIRN_EBUSY;
  }
  struct grpc_send_chunk *ch = malloc(sizeof *ch + 5 + len);
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
  size_t off = 5;
  for (size_t i = 0; i < n; i++) {
    if (iov[i].len > 0) {
      memcpy(ch->data + off, iov[i].data, iov[i].len);
      off += iov[i].len;
    }
  }
  nghttp2_session *h2 = call->conn->h2;
  if (call->state == CALL_ACTIVE) {
    nghttp2_nv nva[2] = {make_nv(":status", "200"), make_nv("content-type", "application/grpc")};
    nghttp2_data_provider prd;
    prd.source.ptr = call;
    prd.read_callback = grpc_call_data_read;
    if (nghttp2_submit_response(h2, call->stream_id, nva, 2, &prd) != 0) {
      free(ch);
      return CAIRN_ENOMEM;
    }
    call_set_state(call, CALL_SENDING);
  }
  if (call->q_tail) {
    call->q_tail->next = ch;
  } else {
    call->q_head = ch;
  }
  call->q_tail = ch;
  call->queued += ch->len;
  if (call->deferred) {
    call->deferred = false;
    nghttp2_session_resume_data(h2, call->stream_id);
  }
  grpc_server_mark_dirty(s, call->conn);
  return 0;
}

int grpc_call_finish(grpc_call *call, int status, const char *message) {
  if (!call || status < 0 || status > GRPC_UNAUTHENTICATED) {
    return CAIRN_EINVAL;
  }
  if (call_stopped(call)) {
    return 0;
  }
  if (call->state != CALL_ACTIVE && call->state != CALL_SENDING) {
    return CAIRN_ESTOPPED;
  }
  call_end(call, status, message, false);
  return 0;
}

size_t grpc_call_queued_bytes(const grpc_call *call) {
  return call->queued;
}

void grpc_call_on_writable(grpc_call *call, void (*cb)(grpc_call *call, void *data), void *data) {
  call->writable_cb = cb;
  call->writable_data = data;
  if (!cb) {
    call_unlink_writable(call);
    return;
  }
  if (call->state == CALL_CLOSED || call->conn->state == CONN_CLOSED) {
    return;
  }
  if (!call->writable_queued && call->queued < call_server(call)->max_send_queue / 2) {
    call->writable_queued = true;
    call->writable_next = call->conn->writable_due;
    call->conn->writable_due = call;
    grpc_server_mark_dirty(call->conn->s, call->conn);
  }
}

void grpc_call_run_writable(grpc_conn *c) {
  grpc_server *s = c->s;
  /* Take the list as it is now: callbacks that register again land on a
   * fresh list for the next round. */
  grpc_call *list = c->writable_due;
  c->writable_due = NULL;
  unsigned runs = 0;
  while (list && runs < GRPC_WRITABLE_RUNS_MAX) {
    grpc_call *call = list;
    list = call->writable_next;
    call->writable_next = NULL;
    call->writable_queued = false;
    void (*cb)(grpc_call *, void *) = call->writable_cb;
    if (!cb || call->state == CALL_CLOSED || c->state == CONN_CLOSED) {
      continue;
    }
    if (call->queued >= s->max_send_queue / 2) {
      continue; /* filled again meanwhile; the data source re-queues it */
    }
    call->writable_cb = NULL;
    runs++;
    cb(call, call->writable_data);
  }
  /* Over the per-round bound: put the rest back. */
  while (list) {
    grpc_call *call = list;
    list = call->writable_next;
    call->writable_next = c->writable_due;
    c->writable_due = call;
  }
}

uint64_t grpc_call_deadline(const grpc_call *call) {
  return call->deadline_ms;
}

void grpc_call_set_user(grpc_call *call, void *user) {
  call->user = user;
}

void *grpc_call_user(const grpc_call *call) {
  return call->user;
}

const char *grpc_call_path(const grpc_call *call) {
  return call->method.path;
}
