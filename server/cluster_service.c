/* server/cluster_service.c: etcdserverpb.Cluster.
 *
 * MemberList answers with this member alone: its id (raft's, derived from
 * its name, peer URLs and the cluster token as etcd does), --name,
 * --initial-advertise-peer-urls and --advertise-client-urls. The header is
 * etcd's for this service: cluster id, member id and raft term, no revision.
 * MemberAdd, MemberRemove, MemberUpdate and MemberPromote answer
 * UNIMPLEMENTED until membership changes exist (issue 4). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/metrics.h"
#include "server/server.h"

#define CLUSTER_PREFIX "/etcdserverpb.Cluster/"

static void finish(struct server *s, grpc_call *call, const char *path, int code,
                   const char *message) {
  grpc_call_finish(call, code, message);
  metrics_count_request(s->metrics, path, code);
}

/* Splits a comma-separated URL list in place into at most max entries
 * (spaces around entries dropped, empty entries skipped). */
static size_t split_urls(char *list, char **out, size_t max) {
  size_t n = 0;
  char *save = NULL;
  for (char *tok = strtok_r(list, ",", &save); tok != NULL && n < max;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') {
      tok++;
    }
    size_t len = strlen(tok);
    while (len > 0 && tok[len - 1] == ' ') {
      tok[--len] = '\0';
    }
    if (len > 0) {
      out[n++] = tok;
    }
  }
  return n;
}

static void on_member_list(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  const char *path = CLUSTER_PREFIX "MemberList";
  Etcdserverpb__MemberListRequest *req = etcdserverpb__member_list_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, path, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  etcdserverpb__member_list_request__free_unpacked(req, NULL);

  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  char peer_buf[sizeof s->cfg.initial_advertise_peer_urls];
  char client_buf[sizeof s->cfg.advertise_client_urls];
  snprintf(peer_buf, sizeof peer_buf, "%s", s->cfg.initial_advertise_peer_urls);
  snprintf(client_buf, sizeof client_buf, "%s", s->cfg.advertise_client_urls);
  char *peers[CONFIG_URLS_MAX], *clients[CONFIG_URLS_MAX];

  Etcdserverpb__Member member = ETCDSERVERPB__MEMBER__INIT;
  member.id = st.member_id;
  member.name = s->cfg.name;
  member.n_peerurls = split_urls(peer_buf, peers, CONFIG_URLS_MAX);
  member.peerurls = peers;
  member.n_clienturls = split_urls(client_buf, clients, CONFIG_URLS_MAX);
  member.clienturls = clients;
  Etcdserverpb__Member *members[1] = {&member};

  Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  header.cluster_id = st.cluster_id;
  header.member_id = st.member_id;
  header.raft_term = st.term;
  Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
  resp.header = &header;
  resp.n_members = 1;
  resp.members = members;
  server_reply(call, &resp.base);
  metrics_count_request(s->metrics, path, GRPC_OK);
}

static void unimplemented(grpc_call *call, void *ctx, const char *name) {
  char path[96], message[160];
  snprintf(path, sizeof path, CLUSTER_PREFIX "%s", name);
  snprintf(message, sizeof message, "cairn: Cluster.%s is not implemented yet", name);
  finish(ctx, call, path, GRPC_UNIMPLEMENTED, message);
}

#define CLUSTER_UNIMPLEMENTED(X) \
  X(MemberAdd)                   \
  X(MemberRemove)                \
  X(MemberUpdate)                \
  X(MemberPromote)

#define X_HANDLER(name)                                                               \
  static void on_##name(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) { \
    (void)msg;                                                                        \
    (void)len;                                                                        \
    unimplemented(call, ctx, #name);                                                  \
  }
CLUSTER_UNIMPLEMENTED(X_HANDLER)
#undef X_HANDLER

int cluster_service_init(struct server *s) {
#define X_METHOD(name) \
  {.path = CLUSTER_PREFIX #name, .kind = GRPC_METHOD_UNARY, .on_message = on_##name, .ctx = s},
  const struct grpc_method methods[] = {{.path = CLUSTER_PREFIX "MemberList",
                                         .kind = GRPC_METHOD_UNARY,
                                         .on_message = on_member_list,
                                         .ctx = s},
                                        CLUSTER_UNIMPLEMENTED(X_METHOD)};
#undef X_METHOD
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
