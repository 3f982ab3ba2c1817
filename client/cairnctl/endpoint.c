/* client/cairnctl/endpoint.c: endpoint status and endpoint health, of the
 * endpoints given or (--cluster) of every member's client URLs. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/cairnctl/cairnctl.h"

/* The endpoints a command visits, one call each (opts.endpoint). */
struct ep_set {
  struct ctl *ctl;
  cairn_sync *s;
  bool own; /* s is ours (--cluster), not ctl's */
  struct ctl_strings cluster;
};

static int ep_set_open(struct ctl *ctl, bool cluster, struct ep_set *set) {
  memset(set, 0, sizeof *set);
  set->ctl = ctl;
  if (!cluster) {
    set->s = ctl_client(ctl);
    return set->s != NULL ? 0 : CTL_EXIT_BAD_CONNECTION;
  }
  int rc = member_cluster_endpoints(ctl, &set->cluster);
  if (rc == 0 && set->cluster.n == 0)
    rc = ctl_error(CTL_EXIT_ERROR, "no client URLs in the member list");
  if (rc == 0)
    rc = ctl_client_for(ctl, &set->cluster, &set->s);
  if (rc != 0) {
    ctl_strings_clear(&set->cluster);
    return rc;
  }
  set->own = true;
  return 0;
}

static size_t ep_set_n(const struct ep_set *set) {
  return set->own ? set->cluster.n : set->ctl->endpoints.n;
}

/* The name printed (as the user or the member list gave it). */
static const char *ep_set_name(const struct ep_set *set, size_t i) {
  return set->own ? set->cluster.v[i] : set->ctl->endpoints.v[i];
}

static struct cairn_call_opts ep_set_opts(const struct ep_set *set, size_t i) {
  struct cairn_call_opts o = ctl_opts(set->ctl);
  o.endpoint = set->own ? set->cluster.v[i] : ctl_endpoint_url(set->ctl, i);
  return o;
}

static void ep_set_close(struct ep_set *set) {
  if (set->own)
    cairn_sync_close(set->s);
  ctl_strings_clear(&set->cluster);
}

/* Shared by endpoint.c's commands and defrag (maintenance.c). */
int endpoint_each(struct ctl *ctl, bool cluster,
                  int (*fn)(struct ctl *ctl, cairn_sync *s, const char *name,
                            const struct cairn_call_opts *o, void *data),
                  void *data) {
  struct ep_set set;
  int rc = ep_set_open(ctl, cluster, &set), worst = 0;
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < ep_set_n(&set); i++) {
    struct cairn_call_opts o = ep_set_opts(&set, i);
    rc = fn(ctl, set.s, ep_set_name(&set, i), &o, data);
    if (rc != 0)
      worst = rc;
  }
  ep_set_close(&set);
  return worst;
}

/* ---- status ---------------------------------------------------------------- */

#define STATUS_COLS 10u
#define STATUS_ROWS_MAX CTL_STRINGS_MAX

struct status_list {
  size_t n;
  char *names[STATUS_ROWS_MAX];
  Etcdserverpb__StatusResponse *r[STATUS_ROWS_MAX];
};

static int status_one(struct ctl *ctl, cairn_sync *s, const char *name,
                      const struct cairn_call_opts *o, void *data) {
  struct status_list *l = data;
  struct cairn_error err;
  Etcdserverpb__StatusResponse *r = NULL;
  (void)ctl;
  int rc = cairn_sync_status(s, o, &r, &err);
  if (rc != 0) {
    fflush(stdout);
    fprintf(stderr, "Failed to get the status of endpoint %s (%s)\n", name,
            rc < 0 ? cairn_strerror(rc) : err.message);
    return CTL_EXIT_ERROR;
  }
  l->names[l->n] = strdup(name);
  l->r[l->n++] = r;
  return 0;
}

int cmd_endpoint_status(struct ctl *ctl, int argc, char **argv) {
  bool cluster = false;
  const struct ctl_flag flags[] = {
      {"cluster", 0, CTL_FLAG_BOOL, &cluster, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_ALL, &n);
  if (rc != 0)
    return rc;
  struct status_list l = {0};
  rc = endpoint_each(ctl, cluster, status_one, &l);
  if (ctl->format == CTL_OUT_JSON) {
    putchar('[');
    for (size_t i = 0; i < l.n; i++) {
      const Etcdserverpb__StatusResponse *r = l.r[i];
      struct jw j;
      if (i > 0)
        putchar(',');
      fputs("{\"Endpoint\":", stdout);
      jw_string_value(stdout, l.names[i] != NULL ? l.names[i] : "",
                      l.names[i] != NULL ? strlen(l.names[i]) : 0);
      fputs(",\"Status\":", stdout);
      jw_begin(&j, stdout);
      json_header(&j, r->header);
      jw_str(&j, "version", r->version, false);
      jw_i64(&j, "dbSize", r->dbsize, false);
      jw_u64(&j, "leader", r->leader, false);
      jw_u64(&j, "raftIndex", r->raftindex, false);
      jw_u64(&j, "raftTerm", r->raftterm, false);
      jw_u64(&j, "raftAppliedIndex", r->raftappliedindex, false);
      if (r->n_errors > 0) {
        jw_key(&j, "errors");
        putchar('[');
        for (size_t k = 0; k < r->n_errors; k++) {
          if (k > 0)
            putchar(',');
          jw_string_value(stdout, r->errors[k], strlen(r->errors[k]));
        }
        putchar(']');
      }
      jw_i64(&j, "dbSizeInUse", r->dbsizeinuse, false);
      jw_bool(&j, "isLearner", r->islearner, false);
      jw_end(&j);
      putchar('}');
    }
    fputs("]\n", stdout);
  } else {
    static const char *const headers[STATUS_COLS] = {
        "ENDPOINT",           "ID",         "VERSION",   "DB SIZE",
        "IS LEADER",          "IS LEARNER", "RAFT TERM", "RAFT INDEX",
        "RAFT APPLIED INDEX", "ERRORS"};
    char(*text)[7][1024] = calloc(l.n + 1, sizeof *text);
    const char **cells = calloc((l.n + 1) * STATUS_COLS, sizeof *cells);
    for (size_t i = 0; text != NULL && cells != NULL && i < l.n; i++) {
      const Etcdserverpb__StatusResponse *r = l.r[i];
      uint64_t mid = r->header != NULL ? r->header->member_id : 0;
      const char **row = &cells[i * STATUS_COLS];
      snprintf(text[i][0], sizeof text[i][0], "%" PRIx64, mid);
      out_humanize_bytes(text[i][1], sizeof text[i][1], (uint64_t)r->dbsize);
      snprintf(text[i][2], sizeof text[i][2], "%" PRIu64, r->raftterm);
      snprintf(text[i][3], sizeof text[i][3], "%" PRIu64, r->raftindex);
      snprintf(text[i][4], sizeof text[i][4], "%" PRIu64, r->raftappliedindex);
      text[i][5][0] = '\0';
      for (size_t k = 0; k < r->n_errors; k++) {
        size_t used = strlen(text[i][5]);
        snprintf(text[i][5] + used, sizeof text[i][5] - used, "%s%s", k > 0 ? ", " : "",
                 r->errors[k]);
      }
      row[0] = l.names[i] != NULL ? l.names[i] : "";
      row[1] = text[i][0];
      row[2] = r->version;
      row[3] = text[i][1];
      row[4] = mid == r->leader ? "true" : "false";
      row[5] = r->islearner ? "true" : "false";
      row[6] = text[i][2];
      row[7] = text[i][3];
      row[8] = text[i][4];
      row[9] = text[i][5];
      if (ctl->format == CTL_OUT_SIMPLE) {
        for (size_t c = 0; c < STATUS_COLS; c++)
          printf("%s%s", c > 0 ? ", " : "", row[c]);
        putchar('\n');
      }
    }
    if (ctl->format == CTL_OUT_TABLE && text != NULL && cells != NULL)
      out_table(stdout, headers, STATUS_COLS, cells, l.n);
    free(text);
    free(cells);
  }
  for (size_t i = 0; i < l.n; i++) {
    free(l.names[i]);
    cairn_response_free(&l.r[i]->base);
  }
  return rc != 0 ? CTL_EXIT_ERROR : 0;
}

/* ---- health ---------------------------------------------------------------- */

struct health {
  char *name;
  bool ok;
  char took[32];
  char error[CAIRN_ERROR_MESSAGE_MAX];
};
struct health_list {
  size_t n;
  struct health h[STATUS_ROWS_MAX];
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* etcdctl's check: a linearizable get of "health" (permission denied
 * counts as healthy: the request went through consensus), then no alarm. */
static int health_one(struct ctl *ctl, cairn_sync *s, const char *name,
                      const struct cairn_call_opts *o, void *data) {
  struct health_list *l = data;
  struct health *h = &l->h[l->n++];
  struct cairn_error err;
  (void)ctl;
  h->name = strdup(name);
  uint64_t t0 = now_ns();
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  req.key.data = (uint8_t *)"health";
  req.key.len = 6;
  Etcdserverpb__RangeResponse *r = NULL;
  int rc = cairn_sync_range(s, &req, o, &r, &err);
  if (rc == 0)
    cairn_response_free(&r->base);
  h->ok = rc == 0 || rc == 7 /* PERMISSION_DENIED */;
  if (!h->ok)
    snprintf(h->error, sizeof h->error, "%s", rc < 0 ? cairn_strerror(rc) : err.message);
  if (h->ok) {
    Etcdserverpb__AlarmRequest areq = ETCDSERVERPB__ALARM_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    rc = cairn_sync_unary(s, "/etcdserverpb.Maintenance/Alarm", &areq.base,
                          &etcdserverpb__alarm_response__descriptor, true, o, &m, &err);
    if (rc != 0) {
      h->ok = false;
      snprintf(h->error, sizeof h->error, "Unable to fetch the alarm list");
    } else {
      const Etcdserverpb__AlarmResponse *a = (const Etcdserverpb__AlarmResponse *)m;
      if (a->n_alarms > 0) {
        h->ok = false;
        snprintf(h->error, sizeof h->error, "Active Alarm(s): ");
        for (size_t i = 0; i < a->n_alarms; i++) {
          size_t used = strlen(h->error);
          const char *t = a->alarms[i]->alarm == ETCDSERVERPB__ALARM_TYPE__NOSPACE   ? "NOSPACE "
                          : a->alarms[i]->alarm == ETCDSERVERPB__ALARM_TYPE__CORRUPT ? "CORRUPT "
                                                                                     : "UNKNOWN ";
          snprintf(h->error + used, sizeof h->error - used, "%s", t);
        }
      }
      cairn_response_free(m);
    }
  }
  out_go_duration(h->took, sizeof h->took, now_ns() - t0);
  return h->ok ? 0 : CTL_EXIT_ERROR;
}

int cmd_endpoint_health(struct ctl *ctl, int argc, char **argv) {
  bool cluster = false;
  const struct ctl_flag flags[] = {
      {"cluster", 0, CTL_FLAG_BOOL, &cluster, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_ALL, &n);
  if (rc != 0)
    return rc;
  struct health_list *l = calloc(1, sizeof *l);
  if (l == NULL)
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  rc = endpoint_each(ctl, cluster, health_one, l);
  if (ctl->format == CTL_OUT_JSON) {
    putchar('[');
    for (size_t i = 0; i < l->n; i++) {
      struct jw j;
      if (i > 0)
        putchar(',');
      jw_begin(&j, stdout);
      jw_str(&j, "endpoint", l->h[i].name, true);
      jw_bool(&j, "health", l->h[i].ok, true);
      jw_str(&j, "took", l->h[i].took, true);
      jw_str(&j, "error", l->h[i].error, false);
      jw_end(&j);
    }
    fputs("]\n", stdout);
  } else if (ctl->format == CTL_OUT_TABLE) {
    static const char *const headers[4] = {"ENDPOINT", "HEALTH", "TOOK", "ERROR"};
    const char **cells = calloc(l->n * 4 + 1, sizeof *cells);
    for (size_t i = 0; cells != NULL && i < l->n; i++) {
      cells[i * 4] = l->h[i].name != NULL ? l->h[i].name : "";
      cells[i * 4 + 1] = l->h[i].ok ? "true" : "false";
      cells[i * 4 + 2] = l->h[i].took;
      cells[i * 4 + 3] = l->h[i].error;
    }
    if (cells != NULL)
      out_table(stdout, headers, 4, cells, l->n);
    free(cells);
  } else {
    /* etcdctl prints these on stderr. */
    fflush(stdout);
    for (size_t i = 0; i < l->n; i++) {
      if (l->h[i].ok)
        fprintf(stderr, "%s is healthy: successfully committed proposal: took = %s\n", l->h[i].name,
                l->h[i].took);
      else
        fprintf(stderr, "%s is unhealthy: failed to commit proposal: %s\n", l->h[i].name,
                l->h[i].error);
    }
  }
  for (size_t i = 0; i < l->n; i++)
    free(l->h[i].name);
  free(l);
  if (rc != 0)
    return ctl_error(CTL_EXIT_ERROR, "unhealthy cluster");
  return 0;
}
