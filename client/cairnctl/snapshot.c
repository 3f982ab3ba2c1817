/* client/cairnctl/snapshot.c: snapshot save. */
#include <inttypes.h>

#include "client/cairnctl/cairnctl.h"

int cmd_snapshot_save(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "snapshot save expects one argument");
  /* A snapshot is one member's store: etcdctl insists on one endpoint. */
  if (ctl->endpoints.n != 1) {
    fflush(stdout);
    fputs("Error: snapshot must be requested to one selected node, not multiple [", stderr);
    for (size_t i = 0; i < ctl->endpoints.n; i++)
      fprintf(stderr, "%s%s", i > 0 ? " " : "", ctl->endpoints.v[i]);
    fputs("]\n", stderr);
    return CTL_EXIT_BAD_ARGS;
  }
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  /* No deadline: a large store takes what it takes (etcdctl's too). */
  struct cairn_call_opts o = {.timeout_ms = 0, .endpoint = ctl_endpoint_url(ctl, 0)};
  struct cairn_error err;
  uint64_t bytes = 0;
  rc = cairn_sync_snapshot_save(s, argv[0], &o, &bytes, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  printf("Snapshot saved at %s\n", argv[0]);
  return 0;
}
