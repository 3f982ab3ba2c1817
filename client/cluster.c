/* client/cluster.c: the Cluster service and the unary Maintenance calls
 * (client/cairn.h). MemberList and Status are read-only (retried on any
 * UNAVAILABLE); membership changes, Defragment and MoveLeader are not.
 * Status and Defragment concern one member: with opts->endpoint they go
 * there and nowhere else. */
#include "client/client_int.h"

#define CLUSTER_LIST "/etcdserverpb.Cluster/MemberList"
#define CLUSTER_ADD "/etcdserverpb.Cluster/MemberAdd"
#define CLUSTER_REMOVE "/etcdserverpb.Cluster/MemberRemove"
#define CLUSTER_UPDATE "/etcdserverpb.Cluster/MemberUpdate"
#define CLUSTER_PROMOTE "/etcdserverpb.Cluster/MemberPromote"
#define MAINT_STATUS "/etcdserverpb.Maintenance/Status"
#define MAINT_DEFRAG "/etcdserverpb.Maintenance/Defragment"
#define MAINT_MOVE_LEADER "/etcdserverpb.Maintenance/MoveLeader"
/* Peer URLs of one member; etcd has no limit, this keeps a request sane. */
#define CLUSTER_PEER_URLS_MAX 64u

static int urls_ok(const char *const *urls, size_t n) {
  if (n == 0 || n > CLUSTER_PEER_URLS_MAX || !urls) {
    return CAIRN_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    if (!urls[i]) {
      return CAIRN_EINVAL;
    }
  }
  return 0;
}

int cairn_member_list(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                      void *data) {
  Etcdserverpb__MemberListRequest req = ETCDSERVERPB__MEMBER_LIST_REQUEST__INIT;
  return cairn_unary(c, CLUSTER_LIST, &req.base, &etcdserverpb__member_list_response__descriptor,
                     true, opts, cb, data);
}

int cairn_member_add(cairn_client *c, const char *const *peer_urls, size_t n, bool is_learner,
                     const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  int rc = urls_ok(peer_urls, n);
  if (rc != 0) {
    return rc;
  }
  Etcdserverpb__MemberAddRequest req = ETCDSERVERPB__MEMBER_ADD_REQUEST__INIT;
  req.n_peerurls = n;
  req.peerurls = (char **)peer_urls; /* only read: packed before the call returns */
  req.islearner = is_learner;
  return cairn_unary(c, CLUSTER_ADD, &req.base, &etcdserverpb__member_add_response__descriptor,
                     false, opts, cb, data);
}

int cairn_member_remove(cairn_client *c, uint64_t id, const struct cairn_call_opts *opts,
                        cairn_cb cb, void *data) {
  Etcdserverpb__MemberRemoveRequest req = ETCDSERVERPB__MEMBER_REMOVE_REQUEST__INIT;
  req.id = id;
  return cairn_unary(c, CLUSTER_REMOVE, &req.base,
                     &etcdserverpb__member_remove_response__descriptor, false, opts, cb, data);
}

int cairn_member_update(cairn_client *c, uint64_t id, const char *const *peer_urls, size_t n,
                        const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  int rc = urls_ok(peer_urls, n);
  if (rc != 0) {
    return rc;
  }
  Etcdserverpb__MemberUpdateRequest req = ETCDSERVERPB__MEMBER_UPDATE_REQUEST__INIT;
  req.id = id;
  req.n_peerurls = n;
  req.peerurls = (char **)peer_urls;
  return cairn_unary(c, CLUSTER_UPDATE, &req.base,
                     &etcdserverpb__member_update_response__descriptor, false, opts, cb, data);
}

int cairn_member_promote(cairn_client *c, uint64_t id, const struct cairn_call_opts *opts,
                         cairn_cb cb, void *data) {
  Etcdserverpb__MemberPromoteRequest req = ETCDSERVERPB__MEMBER_PROMOTE_REQUEST__INIT;
  req.id = id;
  return cairn_unary(c, CLUSTER_PROMOTE, &req.base,
                     &etcdserverpb__member_promote_response__descriptor, false, opts, cb, data);
}

int cairn_status(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  Etcdserverpb__StatusRequest req = ETCDSERVERPB__STATUS_REQUEST__INIT;
  return cairn_unary(c, MAINT_STATUS, &req.base, &etcdserverpb__status_response__descriptor, true,
                     opts, cb, data);
}

int cairn_defragment(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                     void *data) {
  Etcdserverpb__DefragmentRequest req = ETCDSERVERPB__DEFRAGMENT_REQUEST__INIT;
  return cairn_unary(c, MAINT_DEFRAG, &req.base, &etcdserverpb__defragment_response__descriptor,
                     false, opts, cb, data);
}

int cairn_move_leader(cairn_client *c, uint64_t target_id, const struct cairn_call_opts *opts,
                      cairn_cb cb, void *data) {
  Etcdserverpb__MoveLeaderRequest req = ETCDSERVERPB__MOVE_LEADER_REQUEST__INIT;
  req.targetid = target_id;
  return cairn_unary(c, MAINT_MOVE_LEADER, &req.base,
                     &etcdserverpb__move_leader_response__descriptor, false, opts, cb, data);
}
