/* server/server.h: the daemon's shared state and the helpers every service
 * uses (response headers, errors, proposals).
 *
 * One loop thread runs everything. Each service is a module
 * (server/<name>_service.c) with an init function that registers its gRPC
 * methods on the server and a close function; long-lived parts (the watch hub,
 * the lessor) are modules of their own. */
#ifndef CAIRN_SERVER_H
#define CAIRN_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "raft/raftnode.h"
#include "rpc.pb-c.h"
#include "server/config.h"
#include "storage/fileio.h"
#include "storage/mvcc.h"
#include "wire/grpc.h"

struct watch_hub;
struct lessor;
struct metrics;

struct server {
  uv_loop_t *loop;
  struct config cfg;
  mvcc_store *store;
  raftnode *raft;
  grpc_server *grpc;
  fileio *fio;
  struct watch_hub *watch;
  struct lessor *lessor;
  struct metrics *metrics;
  /* NOSPACE alarm raised (storage refused a write over the quota); writes
   * that add data are refused until it is disarmed. */
  bool alarm_nospace;
  uint64_t alarm_member_id;
  bool stopping;
};

/* Fills an etcd ResponseHeader (cluster_id, member_id, raft_term, the store's
 * current revision) into h, which the caller owns (usually on its stack). */
void server_header(const struct server *s, Etcdserverpb__ResponseHeader *h);

/* Finishes call with the gRPC status and etcd's text for a CAIRN_E* code. */
void server_fail(grpc_call *call, int cairn_err);

/* Packs msg (any protobuf-c message) and sends it on call; on success of a
 * unary call the caller then finishes with GRPC_OK (server_reply does both). */
int server_send(grpc_call *call, const ProtobufCMessage *msg);
void server_reply(grpc_call *call, const ProtobufCMessage *msg);

/* Proposes op through raft. cb gets 0 and the op's result (which it must
 * free with mvcc_result_free) or a CAIRN_E* code and NULL. On a NOSPACE
 * result from the store the alarm is raised here. */
typedef void (*server_propose_cb)(struct server *s, void *data, int status,
                                  struct mvcc_result *result);
int server_propose(struct server *s, const struct mvcc_op *op, void *data, server_propose_cb cb);

/* Conversions between protobuf-c and storage types. The mvcc_kv -> KeyValue
 * conversion points into the mvcc memory (no copy): pack before freeing the
 * result. */
void server_kv_to_pb(const struct mvcc_kv *kv, Mvccpb__KeyValue *out);

/* Scratch memory for building requests and responses: zeroed bump
 * allocations freed together. */
struct scratch_block;
struct scratch {
  struct scratch_block *head;
};
void *scratch_alloc(struct scratch *sc, size_t n);
void scratch_free(struct scratch *sc);

/* Physical compaction: after a Compact is applied, steps run on the loop
 * until done (kv_service.c). */
void server_compaction_kick(struct server *s);

/* Registration of each service (server/<name>_service.c). */
int kv_service_init(struct server *s);
int watch_service_init(struct server *s);
int lease_service_init(struct server *s);
int maintenance_service_init(struct server *s);
int cluster_service_init(struct server *s);
int auth_service_init(struct server *s);
int health_service_init(struct server *s);
/* Shutdown of the maintenance service: waits for exports reading the store
 * (maintenance_service.c). */
void maintenance_service_stop(struct server *s, void (*done)(void *data), void *data);
/* HTTP/1.1 endpoints: /health, /version, /metrics. */
int http_endpoints_init(struct server *s);

/* Logging: one line per event, JSON like etcd's zap logger:
 * {"level":"info","ts":"2026-11-29T17:00:00.000Z","msg":"..."} plus fields. */
void server_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void server_log_set_level(int level);
enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

#endif
