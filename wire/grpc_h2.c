/* wire/grpc_h2.c: the nghttp2 server session of one HTTP/2 connection.
 *
 * nghttp2 does the framing, HPACK, flow control (WINDOW_UPDATEs for what we
 * consumed are automatic), PING answers and stream states; this file turns
 * its callbacks into call events (grpc_call.c) and serializes its output
 * under the connection's write bound.
 *
 * Streams: each request HEADERS gets a call object (the stream's user data)
 * unless GRPC_CONN_STREAMS_MAX are open, in which case the stream is refused
 * with RST_STREAM(REFUSED_STREAM). Frames for streams without a call object
 * (refused, already closed) are ignored; RST_STREAM on a closed stream is
 * accepted silently by nghttp2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "wire/grpc_int.h"

/* Rounds of "serialize, then run due on_writable callbacks" per flush. */
#define GRPC_H2_SEND_ROUNDS_MAX 8u

static grpc_call *stream_call(nghttp2_session *session, int32_t stream_id) {
  return nghttp2_session_get_stream_user_data(session, stream_id);
}

/* The GOAWAY naming the last stream we processed (once). */
static void shutdown_final_goaway(grpc_conn *c) {
  if (c->goaway_sent) {
    return;
  }
  c->goaway_sent = true;
  nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->h2),
                        NGHTTP2_NO_ERROR, NULL, 0);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  grpc_conn *c = user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0;
  }
  int32_t id = frame->hd.stream_id;
  if (c->n_streams >= GRPC_CONN_STREAMS_MAX || c->state != CONN_H2) {
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  grpc_call *call = grpc_call_new(c, id);
  if (!call) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM(INTERNAL_ERROR) */
  }
  if (nghttp2_session_set_stream_user_data(session, id, call) != 0) {
    grpc_call_stream_closed(call);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data) {
  (void)flags;
  (void)user_data;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    return 0; /* client trailers carry nothing gRPC uses */
  }
  grpc_call *call = stream_call(session, frame->hd.stream_id);
  if (!call) {
    return 0;
  }
  if (grpc_call_add_header(call, name, namelen, value, valuelen) != 0) {
    /* Over GRPC_HEADER_BYTES_MAX or out of memory: RST_STREAM. */
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  grpc_conn *c = user_data;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      grpc_call *call = stream_call(session, frame->hd.stream_id);
      if (!call) {
        break;
      }
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        grpc_call_dispatch(call);
      }
      if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        grpc_call_half_close(call);
      }
      break;
    }
    case NGHTTP2_DATA: {
      grpc_call *call = stream_call(session, frame->hd.stream_id);
      if (call && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        grpc_call_half_close(call);
      }
      break;
    }
    case NGHTTP2_PING:
      /* The ACK of the PING sent with the shutdown notice: every stream the
       * client opened before it has reached us, so the final GOAWAY can
       * name the last one. */
      if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->shutdown_ping_sent) {
        shutdown_final_goaway(c);
      }
      break;
    default:
      break;
  }
  return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                              const uint8_t *data, size_t len, void *user_data) {
  (void)flags;
  (void)user_data;
  grpc_call *call = stream_call(session, stream_id);
  if (call) {
    grpc_call_recv(call, data, len);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data) {
  (void)error_code;
  (void)user_data;
  grpc_call *call = stream_call(session, stream_id);
  if (call) {
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    grpc_call_stream_closed(call);
  }
  return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) {
  grpc_conn *c = user_data;
  if (frame->hd.type == NGHTTP2_GOAWAY && c->shutdown_notice_sent && !c->shutdown_ping_sent &&
      frame->goaway.last_stream_id == INT32_MAX) {
    /* nghttp2 sends PINGs ahead of everything else, so the PING is only
     * submitted once the notice is out: the client must see GOAWAY first. */
    c->shutdown_ping_sent = true;
    if (nghttp2_submit_ping(session, NGHTTP2_FLAG_NONE, NULL) != 0) {
      shutdown_final_goaway(c);
    }
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) {
    return 0;
  }
  grpc_call *call = stream_call(session, frame->hd.stream_id);
  if (call) {
    grpc_call_frame_sent(call, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
  }
  return 0;
}

int grpc_h2_start(grpc_conn *c) {
  CAIRN_ASSERT(!c->h2);
  nghttp2_session_callbacks *cbs;
  if (nghttp2_session_callbacks_new(&cbs) != 0) {
    return CAIRN_ENOMEM;
  }
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  /* nghttp2 keeps closed streams around (for stream priorities) up to the
   * advertised stream limit, which is unlimited here: without this option
   * every finished call left ~250 bytes behind for the connection's life
   * (hundreds of MiB under a read benchmark). gRPC has no use for them. */
  nghttp2_option *opt;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return CAIRN_ENOMEM;
  }
  nghttp2_option_set_no_closed_streams(opt, 1);
  int rv = nghttp2_session_server_new2(&c->h2, cbs, c, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    c->h2 = NULL;
    return CAIRN_ENOMEM;
  }
  /* SETTINGS is the first frame out (grpc-go drops a connection whose first
   * frame is anything else); etcd's unlimited stream count keeps long-lived
   * Watch and LeaseKeepAlive streams from starving new calls. */
  nghttp2_settings_entry iv[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 4294967295u},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, GRPC_H2_STREAM_WINDOW},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, GRPC_HEADER_BYTES_MAX},
  };
  rv = nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
  if (rv == 0) {
    rv = nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0,
                                               (int32_t)GRPC_H2_CONN_WINDOW);
  }
  if (rv != 0) {
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
    return CAIRN_ENOMEM;
  }
  grpc_conn_set_state(c, CONN_H2);
  if (c->s->shutting_down) {
    grpc_h2_shutdown(c);
  }
  return 0;
}

void grpc_h2_recv(grpc_conn *c, const uint8_t *data, size_t len) {
  if (c->state != CONN_H2 || c->fatal) {
    return;
  }
  ssize_t rv = nghttp2_session_mem_recv(c->h2, data, len);
  if (rv < 0) {
    /* A broken peer (bad preface, flood, malformed frames nghttp2 refuses
     * outright): send what nghttp2 queued (its GOAWAY) and close. */
    if (rv > NGHTTP2_ERR_FATAL) {
      grpc_h2_send(c);
    }
    grpc_conn_drain(c);
  }
}

void grpc_h2_send(grpc_conn *c) {
  if (c->state != CONN_H2 || c->fatal) {
    return;
  }
  for (unsigned round = 0; round < GRPC_H2_SEND_ROUNDS_MAX; round++) {
    while (c->write_bytes < GRPC_CONN_WRITE_BYTES_MAX) {
      const uint8_t *d = NULL;
      ssize_t n = nghttp2_session_mem_send(c->h2, &d);
      if (n < 0) {
        grpc_conn_fail(c, nghttp2_strerror((int)n));
        return;
      }
      if (n == 0) {
        break;
      }
      if (grpc_conn_output(c, d, (size_t)n) != 0) {
        grpc_conn_fail(c, "output");
        return;
      }
    }
    if (!c->writable_due || c->write_bytes >= GRPC_CONN_WRITE_BYTES_MAX) {
      break;
    }
    grpc_call_run_writable(c);
    if (c->state != CONN_H2 || c->fatal) {
      return;
    }
  }
  if (c->writable_due) {
    grpc_server_mark_dirty(c->s, c); /* the rest on the next iteration */
  }
  /* nghttp2 counts the shutdown notice as a GOAWAY sent, so between the
   * notice and the final GOAWAY it may say it is done: wait for the ACK. */
  bool between = c->shutdown_notice_sent && !c->goaway_sent;
  if (!between && !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
    /* Both sides said GOAWAY (or nghttp2 ended the session on a protocol
     * error) and no stream is left. */
    grpc_conn_drain(c);
  }
}

void grpc_h2_shutdown_final(grpc_conn *c) {
  if (c->state != CONN_H2 || !c->shutdown_notice_sent || c->goaway_sent) {
    return;
  }
  shutdown_final_goaway(c);
  grpc_server_mark_dirty(c->s, c);
}

void grpc_h2_shutdown(grpc_conn *c) {
  if (c->state != CONN_H2 || c->shutdown_notice_sent) {
    return;
  }
  c->shutdown_notice_sent = true;
  /* GOAWAY(2^31-1) tells the client to open no new streams; a PING follows
   * it (on_frame_send), and the PING's ACK marks the point after which no
   * stream the client opened can still be in flight: on_frame_recv then
   * sends the final GOAWAY. */
  if (nghttp2_submit_shutdown_notice(c->h2) != 0) {
    shutdown_final_goaway(c);
  }
  grpc_server_mark_dirty(c->s, c);
}

void grpc_h2_teardown(grpc_conn *c) {
  /* Bounded by the stream count; each close unlinks the call. */
  while (c->calls) {
    grpc_call *call = c->calls;
    nghttp2_session_set_stream_user_data(c->h2, call->stream_id, NULL);
    grpc_call_stream_closed(call);
  }
  nghttp2_session_del(c->h2);
  c->h2 = NULL;
}
