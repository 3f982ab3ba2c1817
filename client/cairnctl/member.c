/* client/cairnctl/member.c: member list, add, remove, update, promote. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

int member_parse_id(const char *arg, uint64_t *id) {
  if (ctl_parse_u64(arg, 16, id) != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "bad member ID arg (strconv.ParseUint: parsing \"%s\": invalid syntax), "
                     "expecting ID in Hex",
                     arg);
  return 0;
}

static int member_list_call(struct ctl *ctl, Etcdserverpb__MemberListResponse **r) {
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  int rc = cairn_sync_member_list(s, &o, r, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  return 0;
}

int member_cluster_endpoints(struct ctl *ctl, struct ctl_strings *out) {
  Etcdserverpb__MemberListResponse *r = NULL;
  int rc = member_list_call(ctl, &r);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < r->n_members && rc == 0; i++)
    for (size_t k = 0; k < r->members[i]->n_clienturls && rc == 0; k++)
      rc = ctl_strings_add_list(out, r->members[i]->clienturls[k]);
  cairn_response_free(&r->base);
  return rc;
}

/* Joins strings with sep into buf (cut to fit). */
static void join(char *buf, size_t size, char **v, size_t n, const char *sep) {
  size_t used = 0;
  buf[0] = '\0';
  for (size_t i = 0; i < n && used < size; i++) {
    int w = snprintf(buf + used, size - used, "%s%s", i > 0 ? sep : "", v[i]);
    if (w < 0)
      break;
    used += (size_t)w;
  }
}

#define MEMBER_URLS_TEXT_MAX 4096u

int cmd_member_list(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_ALL, &n);
  if (rc != 0)
    return rc;
  Etcdserverpb__MemberListResponse *r = NULL;
  if ((rc = member_list_call(ctl, &r)) != 0)
    return rc;
  if (ctl->format == CTL_OUT_JSON) {
    struct jw j;
    jw_begin(&j, stdout);
    json_header(&j, r->header);
    json_members(&j, r->members, r->n_members);
    jw_end(&j);
    putchar('\n');
    cairn_response_free(&r->base);
    return 0;
  }
  enum { COLS = 6 };
  char(*text)[4][MEMBER_URLS_TEXT_MAX] = calloc(r->n_members + 1, sizeof *text);
  const char **cells = calloc((r->n_members + 1) * COLS, sizeof *cells);
  if (text == NULL || cells == NULL) {
    free(text);
    free(cells);
    cairn_response_free(&r->base);
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  }
  for (size_t i = 0; i < r->n_members; i++) {
    const Etcdserverpb__Member *m = r->members[i];
    snprintf(text[i][0], MEMBER_URLS_TEXT_MAX, "%" PRIx64, m->id);
    join(text[i][1], MEMBER_URLS_TEXT_MAX, m->peerurls, m->n_peerurls, ",");
    join(text[i][2], MEMBER_URLS_TEXT_MAX, m->clienturls, m->n_clienturls, ",");
    const char **row = &cells[i * COLS];
    row[0] = text[i][0];
    /* A member that has not published its name has not started. */
    row[1] = m->name[0] != '\0' ? "started" : "unstarted";
    row[2] = m->name;
    row[3] = text[i][1];
    row[4] = text[i][2];
    row[5] = m->islearner ? "true" : "false";
    if (ctl->format == CTL_OUT_SIMPLE)
      printf("%s, %s, %s, %s, %s, %s\n", row[0], row[1], row[2], row[3], row[4], row[5]);
  }
  if (ctl->format == CTL_OUT_TABLE) {
    static const char *const headers[COLS] = {"ID",         "STATUS",       "NAME",
                                              "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"};
    out_table(stdout, headers, COLS, cells, r->n_members);
  }
  free(text);
  free(cells);
  cairn_response_free(&r->base);
  return 0;
}

/* A response with a header, perhaps the member added, and the members, as
 * JSON. */
static void member_json(const Etcdserverpb__ResponseHeader *h, const Etcdserverpb__Member *added,
                        Etcdserverpb__Member **m, size_t n) {
  struct jw j;
  jw_begin(&j, stdout);
  json_header(&j, h);
  if (added != NULL) {
    jw_key(&j, "member");
    json_member(stdout, added);
  }
  json_members(&j, m, n);
  jw_end(&j);
  putchar('\n');
}

int cmd_member_add(struct ctl *ctl, int argc, char **argv) {
  const char *peer_urls = NULL;
  bool learner = false;
  const struct ctl_flag flags[] = {
      {"peer-urls", 0, CTL_FLAG_STRING, &peer_urls, NULL},
      {"learner", 0, CTL_FLAG_BOOL, &learner, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "member name not provided");
  if (peer_urls == NULL || *peer_urls == '\0')
    return ctl_error(CTL_EXIT_BAD_ARGS, "member peer urls not provided");
  const char *name = argv[0];
  struct ctl_strings urls = {0};
  if ((rc = ctl_strings_add_list(&urls, peer_urls)) != 0)
    return rc;
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL) {
    ctl_strings_clear(&urls);
    return CTL_EXIT_BAD_CONNECTION;
  }
  Etcdserverpb__MemberAddRequest req = ETCDSERVERPB__MEMBER_ADD_REQUEST__INIT;
  req.peerurls = urls.v;
  req.n_peerurls = urls.n;
  req.islearner = learner;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  ProtobufCMessage *msg = NULL;
  rc = cairn_sync_unary(s, "/etcdserverpb.Cluster/MemberAdd", &req.base,
                        &etcdserverpb__member_add_response__descriptor, false, &o, &msg, &err);
  ctl_strings_clear(&urls);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  const Etcdserverpb__MemberAddResponse *r = (const Etcdserverpb__MemberAddResponse *)msg;
  uint64_t cid = r->header != NULL ? r->header->cluster_id : 0;
  if (ctl->format == CTL_OUT_JSON) {
    member_json(r->header, r->member, r->members, r->n_members);
    cairn_response_free(msg);
    return 0;
  }
  const Etcdserverpb__Member *added = r->member;
  uint64_t id = added != NULL ? added->id : 0;
  printf("Member %16" PRIx64 " added to cluster %16" PRIx64 "\n", id, cid);
  printf("\nETCD_NAME=\"%s\"\nETCD_INITIAL_CLUSTER=\"", name);
  bool first = true;
  for (size_t i = 0; i < r->n_members; i++) {
    const Etcdserverpb__Member *m = r->members[i];
    for (size_t k = 0; k < m->n_peerurls; k++) {
      printf("%s%s=%s", first ? "" : ",", m->id == id ? name : m->name, m->peerurls[k]);
      first = false;
    }
  }
  printf("\"\nETCD_INITIAL_ADVERTISE_PEER_URLS=\"");
  for (size_t k = 0; added != NULL && k < added->n_peerurls; k++)
    printf("%s%s", k > 0 ? "," : "", added->peerurls[k]);
  printf("\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n");
  cairn_response_free(msg);
  return 0;
}

/* remove, update and promote: an ID, a call, "Member %16x <verb> cluster
 * %16x". */
static int member_change(struct ctl *ctl, int argc, char **argv, const char *what) {
  const char *peer_urls = NULL;
  const struct ctl_flag flags[] = {
      {"peer-urls", 0, CTL_FLAG_STRING, &peer_urls, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  bool update = strcmp(what, "update") == 0;
  int n, rc = ctl_args(ctl, argc, argv, update ? flags : NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "member ID is not provided");
  uint64_t id;
  if ((rc = member_parse_id(argv[0], &id)) != 0)
    return rc;
  struct ctl_strings urls = {0};
  if (update) {
    if (peer_urls == NULL || *peer_urls == '\0')
      return ctl_error(CTL_EXIT_BAD_ARGS, "member peer urls not provided");
    if ((rc = ctl_strings_add_list(&urls, peer_urls)) != 0)
      return rc;
  }
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL) {
    ctl_strings_clear(&urls);
    return CTL_EXIT_BAD_CONNECTION;
  }
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  ProtobufCMessage *msg = NULL;
  const char *verb;
  if (update) {
    Etcdserverpb__MemberUpdateRequest req = ETCDSERVERPB__MEMBER_UPDATE_REQUEST__INIT;
    req.id = id;
    req.peerurls = urls.v;
    req.n_peerurls = urls.n;
    rc = cairn_sync_unary(s, "/etcdserverpb.Cluster/MemberUpdate", &req.base,
                          &etcdserverpb__member_update_response__descriptor, false, &o, &msg, &err);
    verb = "updated in";
  } else if (strcmp(what, "remove") == 0) {
    Etcdserverpb__MemberRemoveRequest req = ETCDSERVERPB__MEMBER_REMOVE_REQUEST__INIT;
    req.id = id;
    rc = cairn_sync_unary(s, "/etcdserverpb.Cluster/MemberRemove", &req.base,
                          &etcdserverpb__member_remove_response__descriptor, false, &o, &msg, &err);
    verb = "removed from";
  } else {
    Etcdserverpb__MemberPromoteRequest req = ETCDSERVERPB__MEMBER_PROMOTE_REQUEST__INIT;
    req.id = id;
    rc =
        cairn_sync_unary(s, "/etcdserverpb.Cluster/MemberPromote", &req.base,
                         &etcdserverpb__member_promote_response__descriptor, false, &o, &msg, &err);
    verb = "promoted in";
  }
  ctl_strings_clear(&urls);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  const Etcdserverpb__ResponseHeader *h;
  Etcdserverpb__Member **members;
  size_t n_members;
  if (update) {
    const Etcdserverpb__MemberUpdateResponse *r = (const Etcdserverpb__MemberUpdateResponse *)msg;
    h = r->header, members = r->members, n_members = r->n_members;
  } else if (strcmp(what, "remove") == 0) {
    const Etcdserverpb__MemberRemoveResponse *r = (const Etcdserverpb__MemberRemoveResponse *)msg;
    h = r->header, members = r->members, n_members = r->n_members;
  } else {
    const Etcdserverpb__MemberPromoteResponse *r = (const Etcdserverpb__MemberPromoteResponse *)msg;
    h = r->header, members = r->members, n_members = r->n_members;
  }
  if (ctl->format == CTL_OUT_JSON) {
    member_json(h, NULL, members, n_members);
  } else {
    printf("Member %16" PRIx64 " %s cluster %16" PRIx64 "\n", id, verb,
           h != NULL ? h->cluster_id : 0);
  }
  cairn_response_free(msg);
  return 0;
}

int cmd_member_remove(struct ctl *ctl, int argc, char **argv) {
  return member_change(ctl, argc, argv, "remove");
}

int cmd_member_update(struct ctl *ctl, int argc, char **argv) {
  return member_change(ctl, argc, argv, "update");
}

int cmd_member_promote(struct ctl *ctl, int argc, char **argv) {
  return member_change(ctl, argc, argv, "promote");
}
