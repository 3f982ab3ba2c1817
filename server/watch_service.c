/* server/watch_service.c: etcd's Watch service, "/etcdserverpb.Watch/Watch".
 *
 * A bidirectional stream: each WatchRequest message is decoded here and
 * handed to the watch hub (server/watch_hub.h), which owns every reply. The
 * hub's state for a call is created with the call's first message and freed
 * in on_close. Like etcd, a client's half-close does not end the stream:
 * responses keep coming until the client cancels it. */
#include <string.h>

#include "server/server.h"
#include "server/watch_hub.h"

/* grpc-go's text for a request it cannot decode (code INTERNAL), as the
 * other services say it. */
#define WATCH_UNPARSABLE "grpc: error unmarshalling request"

static bool header_true(const grpc_call *call, const char *name) {
  const char *v = grpc_call_header(call, name);
  return v != NULL && strcmp(v, "true") == 0;
}

static void watch_create(struct watch_stream *st, const Etcdserverpb__WatchCreateRequest *c) {
  struct watch_create_req req = {
      .key = {c->key.data, c->key.len},
      .range_end = {c->range_end.data, c->range_end.len},
      .start_revision = c->start_revision,
      .watch_id = c->watch_id,
      .progress_notify = c->progress_notify,
      .prev_kv = c->prev_kv,
      .fragment = c->fragment,
  };
  for (size_t i = 0; i < c->n_filters; i++) {
    switch (c->filters[i]) {
      case ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT:
        req.no_put = true;
        break;
      case ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE:
        req.no_delete = true;
        break;
      default:
        break; /* etcd ignores unknown filters */
    }
  }
  watch_hub_create(st, &req);
}

static void on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  struct watch_stream *st = grpc_call_user(call);
  if (s->watch == NULL) {
    server_fail(call, CAIRN_ESTOPPED);
    return;
  }
  if (st == NULL) {
    /* etcd's stream interceptor checks "hasleader" when the stream opens;
     * the first message is the first moment this service sees the call. */
    int rc = watch_hub_stream_open(s->watch, call, header_true(call, "hasleader"), &st);
    if (rc != 0) {
      server_fail(call, rc);
      return;
    }
    grpc_call_set_user(call, st);
  }
  Etcdserverpb__WatchRequest *req = etcdserverpb__watch_request__unpack(NULL, len, msg);
  if (req == NULL) {
    grpc_call_finish(call, GRPC_INTERNAL, WATCH_UNPARSABLE);
    return;
  }
  switch (req->request_union_case) {
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST:
      watch_create(st, req->create_request);
      break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CANCEL_REQUEST:
      watch_hub_cancel(st, req->cancel_request->watch_id);
      break;
    case ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_PROGRESS_REQUEST:
      watch_hub_progress(st);
      break;
    default:
      break; /* etcd ignores a request with no known member */
  }
  etcdserverpb__watch_request__free_unpacked(req, NULL);
}

static void on_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct watch_stream *st = grpc_call_user(call);
  if (st != NULL) {
    grpc_call_set_user(call, NULL);
    watch_hub_stream_close(st);
  }
}

int watch_service_init(struct server *s) {
  int rc = watch_hub_init(s);
  if (rc != 0) {
    return rc;
  }
  const struct grpc_method method = {
      .path = "/etcdserverpb.Watch/Watch",
      .kind = GRPC_METHOD_BIDI_STREAM,
      .on_message = on_message,
      .on_half_close = NULL,
      .on_close = on_close,
      .ctx = s,
  };
  rc = grpc_server_register(s->grpc, &method, 1);
  if (rc != 0) {
    watch_hub_close(s->watch);
    return rc;
  }
  return 0;
}
