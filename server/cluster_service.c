/* server/cluster_service.c: etcdserverpb.Cluster and
 * /cairnserverpb.Internal/Publish.
 *
 * MemberList answers from the replicated member table (raft/raftnode.h,
 * "membership"): ids, names ("" until a member started and published),
 * peer and client URLs, learner flags. MemberAdd, MemberRemove,
 * MemberUpdate and MemberPromote run on the leader (a follower answers
 * etcd's "not leader"; the forwarding in server/forward.c relays such calls
 * to the leader) and answer, as etcd, with the member list after the change.
 * Publish is a follower recording its own name and client URLs through the
 * leader. The header is etcd's for this service: cluster id, member id and
 * raft term, no revision. Errors are etcd 3.4's (common/cairn_error.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.pb-c.h"
#include "server/metrics.h"
#include "server/server.h"

#define CLUSTER_PREFIX "/etcdserverpb.Cluster/"
#define PATH_ADD CLUSTER_PREFIX "MemberAdd"
#define PATH_REMOVE CLUSTER_PREFIX "MemberRemove"
#define PATH_UPDATE CLUSTER_PREFIX "MemberUpdate"
#define PATH_LIST CLUSTER_PREFIX "MemberList"
#define PATH_PROMOTE CLUSTER_PREFIX "MemberPromote"
#define PATH_PUBLISH "/cairnserverpb.Internal/Publish"

static void finish(struct server *s, grpc_call *call, const char *path, int code,
                   const char *message) {
  grpc_call_finish(call, code, message);
  metrics_count_request(s->metrics, path, code);
}

static void fail(struct server *s, grpc_call *call, const char *path, int cairn_err) {
  server_fail(call, cairn_err);
  metrics_count_request(s->metrics, path, cairn_grpc_code(cairn_err));
}

static void cluster_header(struct server *s, Etcdserverpb__ResponseHeader *h) {
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  etcdserverpb__response_header__init(h);
  h->cluster_id = st.cluster_id;
  h->member_id = st.member_id;
  h->raft_term = st.term;
}

/* The member list as protobuf, pointing into info (kept by the caller until
 * the reply is packed). NULL: no memory. */
static Etcdserverpb__Member **members_pb(const struct raftnode_member_info *info, size_t n,
                                         Etcdserverpb__Member **block) {
  Etcdserverpb__Member *ms = calloc(n ? n : 1, sizeof *ms);
  Etcdserverpb__Member **ptrs = calloc(n ? n : 1, sizeof *ptrs);
  if (ms == NULL || ptrs == NULL) {
    free(ms);
    free(ptrs);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    etcdserverpb__member__init(&ms[i]);
    ms[i].id = info[i].id;
    ms[i].name = (char *)info[i].name;
    ms[i].n_peerurls = info[i].n_peer_urls;
    ms[i].peerurls = (char **)info[i].peer_urls;
    ms[i].n_clienturls = info[i].n_client_urls;
    ms[i].clienturls = (char **)info[i].client_urls;
    ms[i].islearner = info[i].is_learner;
    ptrs[i] = &ms[i];
  }
  *block = ms;
  return ptrs;
}

/* A membership call waiting for the leader's answer. */
struct mcall {
  struct server *s;
  grpc_call *call; /* NULL once the call closed */
  const char *path;
  /* MemberAdd echoes the new member (its peer URLs and learner flag). */
  char **peer_urls;
  size_t n_peer_urls;
  bool is_learner;
};

static void mcall_free(struct mcall *c) {
  for (size_t i = 0; i < c->n_peer_urls; i++) {
    free(c->peer_urls[i]);
  }
  free(c->peer_urls);
  free(c);
}

static void on_call_closed(grpc_call *call, void *ctx) {
  (void)ctx;
  struct mcall *c = grpc_call_user(call);
  if (c != NULL) {
    c->call = NULL;
    grpc_call_set_user(call, NULL);
  }
}

/* Replies to a finished change with the members after it. */
static void on_member_done(void *data, int status, uint64_t id) {
  struct mcall *c = data;
  struct server *s = c->s;
  grpc_call *call = c->call;
  if (call == NULL) {
    mcall_free(c); /* the client went away */
    return;
  }
  grpc_call_set_user(call, NULL);
  if (status != 0) {
    fail(s, call, c->path, status);
    mcall_free(c);
    return;
  }
  Etcdserverpb__ResponseHeader header;
  cluster_header(s, &header);
  if (strcmp(c->path, PATH_PUBLISH) == 0) {
    Cairnserverpb__PublishResponse resp = CAIRNSERVERPB__PUBLISH_RESPONSE__INIT;
    resp.header = &header;
    server_reply(call, &resp.base);
    metrics_count_request(s->metrics, c->path, GRPC_OK);
    mcall_free(c);
    return;
  }
  struct raftnode_member_info *info = NULL;
  size_t n = 0;
  Etcdserverpb__Member *block = NULL;
  Etcdserverpb__Member **members = NULL;
  int rc = raftnode_members(s->raft, &info, &n);
  if (rc == 0 && (members = members_pb(info, n, &block)) == NULL) {
    rc = CAIRN_ENOMEM;
  }
  if (rc != 0) {
    raftnode_members_free(info);
    fail(s, call, c->path, rc);
    mcall_free(c);
    return;
  }
  if (strcmp(c->path, PATH_ADD) == 0) {
    Etcdserverpb__Member added = ETCDSERVERPB__MEMBER__INIT;
    added.id = id;
    added.n_peerurls = c->n_peer_urls;
    added.peerurls = c->peer_urls;
    added.islearner = c->is_learner;
    Etcdserverpb__MemberAddResponse resp = ETCDSERVERPB__MEMBER_ADD_RESPONSE__INIT;
    resp.header = &header;
    resp.member = &added;
    resp.n_members = n;
    resp.members = members;
    server_reply(call, &resp.base);
  } else if (strcmp(c->path, PATH_REMOVE) == 0) {
    Etcdserverpb__MemberRemoveResponse resp = ETCDSERVERPB__MEMBER_REMOVE_RESPONSE__INIT;
    resp.header = &header;
    resp.n_members = n;
    resp.members = members;
    server_reply(call, &resp.base);
  } else if (strcmp(c->path, PATH_UPDATE) == 0) {
    Etcdserverpb__MemberUpdateResponse resp = ETCDSERVERPB__MEMBER_UPDATE_RESPONSE__INIT;
    resp.header = &header;
    resp.n_members = n;
    resp.members = members;
    server_reply(call, &resp.base);
  } else {
    Etcdserverpb__MemberPromoteResponse resp = ETCDSERVERPB__MEMBER_PROMOTE_RESPONSE__INIT;
    resp.header = &header;
    resp.n_members = n;
    resp.members = members;
    server_reply(call, &resp.base);
  }
  metrics_count_request(s->metrics, c->path, GRPC_OK);
  free(members);
  free(block);
  raftnode_members_free(info);
  mcall_free(c);
}

static struct mcall *mcall_new(struct server *s, grpc_call *call, const char *path) {
  struct mcall *c = calloc(1, sizeof *c);
  if (c != NULL) {
    c->s = s;
    c->call = call;
    c->path = path;
  }
  return c;
}

/* After raftnode_* accepted (rc 0) or refused a call. */
static void started(struct server *s, grpc_call *call, struct mcall *c, int rc) {
  if (rc != 0) {
    fail(s, call, c->path, rc);
    mcall_free(c);
    return;
  }
  grpc_call_set_user(call, c);
}

static void on_member_list(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MemberListRequest *req = etcdserverpb__member_list_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_LIST, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  etcdserverpb__member_list_request__free_unpacked(req, NULL);
  struct raftnode_member_info *info = NULL;
  size_t n = 0;
  Etcdserverpb__Member *block = NULL;
  Etcdserverpb__Member **members = NULL;
  int rc = raftnode_members(s->raft, &info, &n);
  if (rc == 0 && (members = members_pb(info, n, &block)) == NULL) {
    rc = CAIRN_ENOMEM;
  }
  if (rc != 0) {
    raftnode_members_free(info);
    fail(s, call, PATH_LIST, rc);
    return;
  }
  Etcdserverpb__ResponseHeader header;
  cluster_header(s, &header);
  Etcdserverpb__MemberListResponse resp = ETCDSERVERPB__MEMBER_LIST_RESPONSE__INIT;
  resp.header = &header;
  resp.n_members = n;
  resp.members = members;
  server_reply(call, &resp.base);
  metrics_count_request(s->metrics, PATH_LIST, GRPC_OK);
  free(members);
  free(block);
  raftnode_members_free(info);
}

static void on_member_add(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MemberAddRequest *req = etcdserverpb__member_add_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_ADD, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  struct mcall *c = mcall_new(s, call, PATH_ADD);
  bool ok = c != NULL && (c->peer_urls = calloc(req->n_peerurls + 1, sizeof(char *))) != NULL;
  for (size_t i = 0; ok && i < req->n_peerurls; i++) {
    ok = (c->peer_urls[i] = strdup(req->peerurls[i])) != NULL;
    c->n_peer_urls = i + 1;
  }
  if (!ok) {
    etcdserverpb__member_add_request__free_unpacked(req, NULL);
    if (c != NULL) {
      mcall_free(c);
    }
    fail(s, call, PATH_ADD, CAIRN_ENOMEM);
    return;
  }
  c->is_learner = req->islearner;
  int rc = raftnode_member_add(s->raft, (const char *const *)req->peerurls, req->n_peerurls,
                               req->islearner, c, on_member_done);
  etcdserverpb__member_add_request__free_unpacked(req, NULL);
  started(s, call, c, rc);
}

static void on_member_remove(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MemberRemoveRequest *req =
      etcdserverpb__member_remove_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_REMOVE, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  uint64_t id = req->id;
  etcdserverpb__member_remove_request__free_unpacked(req, NULL);
  struct mcall *c = mcall_new(s, call, PATH_REMOVE);
  if (c == NULL) {
    fail(s, call, PATH_REMOVE, CAIRN_ENOMEM);
    return;
  }
  started(s, call, c, raftnode_member_remove(s->raft, id, c, on_member_done));
}

static void on_member_update(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MemberUpdateRequest *req =
      etcdserverpb__member_update_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_UPDATE, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  struct mcall *c = mcall_new(s, call, PATH_UPDATE);
  if (c == NULL) {
    etcdserverpb__member_update_request__free_unpacked(req, NULL);
    fail(s, call, PATH_UPDATE, CAIRN_ENOMEM);
    return;
  }
  int rc = raftnode_member_update(s->raft, req->id, (const char *const *)req->peerurls,
                                  req->n_peerurls, c, on_member_done);
  etcdserverpb__member_update_request__free_unpacked(req, NULL);
  started(s, call, c, rc);
}

static void on_member_promote(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MemberPromoteRequest *req =
      etcdserverpb__member_promote_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_PROMOTE, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  uint64_t id = req->id;
  etcdserverpb__member_promote_request__free_unpacked(req, NULL);
  struct mcall *c = mcall_new(s, call, PATH_PROMOTE);
  if (c == NULL) {
    fail(s, call, PATH_PROMOTE, CAIRN_ENOMEM);
    return;
  }
  started(s, call, c, raftnode_member_promote(s->raft, id, c, on_member_done));
}

static void on_publish(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Cairnserverpb__PublishRequest *req = cairnserverpb__publish_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish(s, call, PATH_PUBLISH, GRPC_INTERNAL, "grpc: error unmarshalling request");
    return;
  }
  struct mcall *c = mcall_new(s, call, PATH_PUBLISH);
  if (c == NULL) {
    cairnserverpb__publish_request__free_unpacked(req, NULL);
    fail(s, call, PATH_PUBLISH, CAIRN_ENOMEM);
    return;
  }
  int rc = raftnode_publish(s->raft, req->id, req->name ? req->name : "",
                            (const char *const *)req->clienturls, req->n_clienturls, c,
                            on_member_done);
  cairnserverpb__publish_request__free_unpacked(req, NULL);
  started(s, call, c, rc);
}

int cluster_service_init(struct server *s) {
  const struct grpc_method methods[] = {
      {.path = PATH_LIST, .kind = GRPC_METHOD_UNARY, .on_message = on_member_list, .ctx = s},
      {.path = PATH_ADD,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_member_add,
       .on_close = on_call_closed,
       .ctx = s},
      {.path = PATH_REMOVE,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_member_remove,
       .on_close = on_call_closed,
       .ctx = s},
      {.path = PATH_UPDATE,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_member_update,
       .on_close = on_call_closed,
       .ctx = s},
      {.path = PATH_PROMOTE,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_member_promote,
       .on_close = on_call_closed,
       .ctx = s},
      {.path = PATH_PUBLISH,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_publish,
       .on_close = on_call_closed,
       .ctx = s},
  };
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
