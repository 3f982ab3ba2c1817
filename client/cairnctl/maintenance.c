/* client/cairnctl/maintenance.c: compaction, defrag, move-leader, version. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

int cmd_compaction(struct ctl *ctl, int argc, char **argv) {
  bool physical = false;
  const struct ctl_flag flags[] = {
      {"physical", 0, CTL_FLAG_BOOL, &physical, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "compaction command needs 1 argument");
  int64_t rev;
  if (ctl_parse_i64(argv[0], 10, &rev) != 0)
    return ctl_error(CTL_EXIT_ERROR, "strconv.ParseInt: parsing \"%s\": invalid syntax", argv[0]);
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  rc = cairn_sync_compact(s, rev, physical, &o, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  /* etcdctl prints this whatever the output format. */
  printf("compacted revision %" PRId64 "\n", rev);
  return 0;
}

static int defrag_one(struct ctl *ctl, cairn_sync *s, const char *name,
                      const struct cairn_call_opts *o, void *data) {
  Etcdserverpb__DefragmentRequest req = ETCDSERVERPB__DEFRAGMENT_REQUEST__INIT;
  struct cairn_error err;
  ProtobufCMessage *m = NULL;
  (void)ctl;
  (void)data;
  int rc = cairn_sync_unary(s, "/etcdserverpb.Maintenance/Defragment", &req.base,
                            &etcdserverpb__defragment_response__descriptor, false, o, &m, &err);
  if (rc != 0) {
    fflush(stdout);
    fprintf(stderr, "Failed to defragment etcd member[%s] (%s)\n", name,
            rc < 0 ? cairn_strerror(rc) : err.message);
    return CTL_EXIT_ERROR;
  }
  cairn_response_free(m);
  printf("Finished defragmenting etcd member[%s]\n", name);
  return 0;
}

int cmd_defrag(struct ctl *ctl, int argc, char **argv) {
  bool cluster = false;
  const struct ctl_flag flags[] = {
      {"cluster", 0, CTL_FLAG_BOOL, &cluster, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  return endpoint_each(ctl, cluster, defrag_one, NULL);
}

/* The leader among the endpoints: its member ID and endpoint. */
struct leader_find {
  uint64_t id;
  char *name;
  struct cairn_call_opts o;
};

static int leader_one(struct ctl *ctl, cairn_sync *s, const char *name,
                      const struct cairn_call_opts *o, void *data) {
  struct leader_find *lf = data;
  struct cairn_error err;
  Etcdserverpb__StatusResponse *r = NULL;
  (void)ctl;
  if (lf->name != NULL)
    return 0;
  if (cairn_sync_status(s, o, &r, &err) != 0)
    return 0; /* etcdctl skips it too */
  if (r->header != NULL && r->header->member_id == r->leader) {
    lf->id = r->leader;
    lf->name = strdup(name);
  }
  cairn_response_free(&r->base);
  return 0;
}

/* MoveLeader goes to the leader itself: etcdctl finds it by Status. */
static int move_one(struct ctl *ctl, cairn_sync *s, const char *name,
                    const struct cairn_call_opts *o, void *data) {
  const struct leader_find *lf = data;
  (void)ctl;
  if (strcmp(name, lf->name) != 0)
    return 0;
  Etcdserverpb__MoveLeaderRequest req = ETCDSERVERPB__MOVE_LEADER_REQUEST__INIT;
  req.targetid = lf->id;
  struct cairn_error err;
  ProtobufCMessage *m = NULL;
  int rc = cairn_sync_unary(s, "/etcdserverpb.Maintenance/MoveLeader", &req.base,
                            &etcdserverpb__move_leader_response__descriptor, false, o, &m, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  cairn_response_free(m);
  return 0;
}

int cmd_move_leader(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "move-leader command needs 1 argument");
  uint64_t target;
  if (ctl_parse_u64(argv[0], 16, &target) != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS, "strconv.ParseUint: parsing \"%s\": invalid syntax",
                     argv[0]);
  struct leader_find lf = {0};
  endpoint_each(ctl, false, leader_one, &lf);
  if (lf.name == NULL) {
    fflush(stdout);
    fputs("Error: no leader endpoint given at [", stderr);
    for (size_t i = 0; i < ctl->endpoints.n; i++)
      fprintf(stderr, "%s%s", i > 0 ? " " : "", ctl->endpoints.v[i]);
    fputs("]\n", stderr);
    return CTL_EXIT_ERROR;
  }
  uint64_t leader = lf.id;
  lf.id = target;
  rc = endpoint_each(ctl, false, move_one, &lf);
  free(lf.name);
  if (rc != 0)
    return rc;
  printf("Leadership transferred from %" PRIx64 " to %" PRIx64 "\n", leader, target);
  return 0;
}

int cmd_version(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  printf("cairnctl version: %s\nAPI version: 3.4\n", cairn_version());
  return 0;
}
