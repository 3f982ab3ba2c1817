/* server/auth_service.c: etcdserverpb.Auth, while Cairn has no auth store.
 *
 * Authentication is never enabled, so Authenticate answers what etcd answers
 * then (FAILED_PRECONDITION "etcdserver: authentication is not enabled",
 * whatever the name and password): clients that pass --user get that error
 * at connect time, as with an etcd without auth. Every other Auth method is
 * registered and answers UNIMPLEMENTED with a message naming it, until the
 * auth store exists (its own issue). */
#include <stdio.h>

#include "server/metrics.h"
#include "server/server.h"

#define AUTH_PREFIX "/etcdserverpb.Auth/"

static void finish(struct server *s, grpc_call *call, const char *path, int code,
                   const char *message) {
  grpc_call_finish(call, code, message);
  metrics_count_request(s->metrics, path, code);
}

static void on_authenticate(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  const char *path = AUTH_PREFIX "Authenticate";
  Etcdserverpb__AuthenticateRequest *req =
      etcdserverpb__authenticate_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, path, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  etcdserverpb__authenticate_request__free_unpacked(req, NULL);
  finish(s, call, path, cairn_grpc_code(CAIRN_EAUTH_NOT_ENABLED),
         cairn_strerror(CAIRN_EAUTH_NOT_ENABLED));
}

static void unimplemented(grpc_call *call, void *ctx, const char *name) {
  char path[96], message[160];
  snprintf(path, sizeof path, AUTH_PREFIX "%s", name);
  snprintf(message, sizeof message, "cairn: Auth.%s is not implemented yet", name);
  finish(ctx, call, path, GRPC_UNIMPLEMENTED, message);
}

/* One handler per method: the call does not tell its path. */
#define AUTH_UNIMPLEMENTED(X) \
  X(AuthEnable)               \
  X(AuthDisable)              \
  X(UserAdd)                  \
  X(UserGet)                  \
  X(UserList)                 \
  X(UserDelete)               \
  X(UserChangePassword)       \
  X(UserGrantRole)            \
  X(UserRevokeRole)           \
  X(RoleAdd)                  \
  X(RoleGet)                  \
  X(RoleList)                 \
  X(RoleDelete)               \
  X(RoleGrantPermission)      \
  X(RoleRevokePermission)

#define X_HANDLER(name)                                                               \
  static void on_##name(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) { \
    (void)msg;                                                                        \
    (void)len;                                                                        \
    unimplemented(call, ctx, #name);                                                  \
  }
AUTH_UNIMPLEMENTED(X_HANDLER)
#undef X_HANDLER

int auth_service_init(struct server *s) {
#define X_METHOD(name) \
  {.path = AUTH_PREFIX #name, .kind = GRPC_METHOD_UNARY, .on_message = on_##name, .ctx = s},
  const struct grpc_method methods[] = {{.path = AUTH_PREFIX "Authenticate",
                                         .kind = GRPC_METHOD_UNARY,
                                         .on_message = on_authenticate,
                                         .ctx = s},
                                        AUTH_UNIMPLEMENTED(X_METHOD)};
#undef X_METHOD
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
