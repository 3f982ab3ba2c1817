/* server/health_service.c: grpc.health.v1.Health, as etcd registers it.
 *
 * etcd serves the standard health service with one entry: the empty service
 * name, SERVING. Check on any other name is NOT_FOUND "unknown service"
 * (grpc-go's health server). Watch sends the current status at once and then
 * holds the stream open (grpc-go sends again only on a change; Cairn's
 * status changes only at shutdown, when the stream ends with the
 * connection). While the server is stopping the status is NOT_SERVING. */
#include <stdlib.h>
#include <string.h>

#include "health.pb-c.h"
#include "server/metrics.h"
#include "server/server.h"

#define PATH_CHECK "/grpc.health.v1.Health/Check"
#define PATH_WATCH "/grpc.health.v1.Health/Watch"

static Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status(const struct server *s) {
  return s->stopping ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                     : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static void finish(struct server *s, grpc_call *call, const char *path, int code,
                   const char *message) {
  grpc_call_finish(call, code, message);
  metrics_count_request(s->metrics, path, code);
  grpc_call_set_user(call, s); /* counted: on_watch_close skips it */
}

static void on_check(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Grpc__Health__V1__HealthCheckRequest *req =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_CHECK, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  bool known = req->service == NULL || req->service[0] == '\0';
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  if (!known) {
    finish(s, call, PATH_CHECK, GRPC_NOT_FOUND, "unknown service");
    return;
  }
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = serving_status(s);
  server_reply(call, &resp.base);
  metrics_count_request(s->metrics, PATH_CHECK, GRPC_OK);
}

static void on_watch(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Grpc__Health__V1__HealthCheckRequest *req =
      grpc__health__v1__health_check_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_WATCH, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  bool known = req->service == NULL || req->service[0] == '\0';
  grpc__health__v1__health_check_request__free_unpacked(req, NULL);
  Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = known ? serving_status(s)
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  int rc = server_send(call, &resp.base);
  if (rc != 0) {
    /* A first message cannot meet a full queue; the call is gone. */
    finish(s, call, PATH_WATCH, cairn_grpc_code(rc), cairn_strerror(rc));
  }
  /* The stream stays open until the client cancels it or the connection
   * closes; nothing is held for it. */
}

/* A Watch ends only by the client going away (or a failed first send,
 * counted there). */
static void on_watch_close(grpc_call *call, void *ctx) {
  struct server *s = ctx;
  if (grpc_call_user(call) == NULL) {
    metrics_count_request(s->metrics, PATH_WATCH, GRPC_CANCELLED);
  }
}

int health_service_init(struct server *s) {
  const struct grpc_method methods[] = {
      {.path = PATH_CHECK, .kind = GRPC_METHOD_UNARY, .on_message = on_check, .ctx = s},
      {.path = PATH_WATCH,
       .kind = GRPC_METHOD_SERVER_STREAM,
       .on_message = on_watch,
       .on_close = on_watch_close,
       .ctx = s},
  };
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
