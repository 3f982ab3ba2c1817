/* client/cairnctl/lease.c: lease grant, revoke, timetolive, list, keep-alive. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/cairnctl/cairnctl.h"

/* Lease IDs are hex on the command line (etcdctl's ParseInt(arg, 16, 64)). */
static int lease_parse_id(const char *arg, int64_t *id) {
  if (ctl_parse_i64(arg, 16, id) != 0)
    return ctl_error(
        CTL_EXIT_BAD_ARGS,
        "bad lease ID arg (strconv.ParseInt: parsing \"%s\": invalid syntax), expecting ID in Hex",
        arg);
  return 0;
}

/* One lease argument after the flags; etcdctl's texts when it is missing. */
static int lease_args(struct ctl *ctl, int argc, char **argv, const struct ctl_flag *flags,
                      const char *missing, int64_t *id) {
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "%s", missing);
  return lease_parse_id(argv[0], id);
}

int cmd_lease_grant(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 1)
    return ctl_error(CTL_EXIT_BAD_ARGS, "lease grant command needs TTL argument");
  int64_t ttl;
  if (ctl_parse_i64(argv[0], 10, &ttl) != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "bad TTL (strconv.ParseInt: parsing \"%s\": invalid syntax)", argv[0]);
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  Etcdserverpb__LeaseGrantResponse *r = NULL;
  rc = cairn_sync_lease_grant(s, ttl, 0, &o, &r, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, "failed to grant lease");
  if (ctl->format == CTL_OUT_JSON) {
    struct jw j;
    jw_begin(&j, stdout);
    json_header_fields(&j, r->header);
    jw_i64(&j, "ID", r->id, true);
    jw_i64(&j, "TTL", r->ttl, true);
    jw_str(&j, "Error", r->error, true);
    jw_end(&j);
    putchar('\n');
  } else {
    printf("lease %016" PRIx64 " granted with TTL(%" PRId64 "s)\n", (uint64_t)r->id, r->ttl);
  }
  cairn_response_free(&r->base);
  return 0;
}

int cmd_lease_revoke(struct ctl *ctl, int argc, char **argv) {
  int64_t id;
  int rc = lease_args(ctl, argc, argv, NULL, "lease revoke command needs 1 argument", &id);
  if (rc != 0)
    return rc;
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
  req.id = id;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  ProtobufCMessage *m = NULL;
  rc = cairn_sync_unary(s, "/etcdserverpb.Lease/LeaseRevoke", &req.base,
                        &etcdserverpb__lease_revoke_response__descriptor, false, &o, &m, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, "failed to revoke lease");
  const Etcdserverpb__LeaseRevokeResponse *r = (const Etcdserverpb__LeaseRevokeResponse *)m;
  if (ctl->format == CTL_OUT_JSON) {
    struct jw j;
    jw_begin(&j, stdout);
    json_header(&j, r->header);
    jw_end(&j);
    putchar('\n');
  } else {
    printf("lease %016" PRIx64 " revoked\n", (uint64_t)id);
  }
  cairn_response_free(m);
  return 0;
}

int cmd_lease_timetolive(struct ctl *ctl, int argc, char **argv) {
  bool keys = false;
  const struct ctl_flag flags[] = {
      {"keys", 0, CTL_FLAG_BOOL, &keys, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int64_t id;
  int rc = lease_args(ctl, argc, argv, flags, "lease timetolive command needs lease ID as argument",
                      &id);
  if (rc != 0)
    return rc;
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  Etcdserverpb__LeaseTimeToLiveRequest req = ETCDSERVERPB__LEASE_TIME_TO_LIVE_REQUEST__INIT;
  req.id = id;
  req.keys = keys;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  ProtobufCMessage *m = NULL;
  rc = cairn_sync_unary(s, "/etcdserverpb.Lease/LeaseTimeToLive", &req.base,
                        &etcdserverpb__lease_time_to_live_response__descriptor, true, &o, &m, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  const Etcdserverpb__LeaseTimeToLiveResponse *r = (const Etcdserverpb__LeaseTimeToLiveResponse *)m;
  if (ctl->format == CTL_OUT_JSON) {
    /* clientv3.LeaseTimeToLiveResponse: the header inline, then fields
     * without omitempty. */
    struct jw j;
    jw_begin(&j, stdout);
    json_header_fields(&j, r->header);
    jw_i64(&j, "id", r->id, true);
    jw_i64(&j, "ttl", r->ttl, true);
    jw_i64(&j, "granted-ttl", r->grantedttl, true);
    jw_key(&j, "keys");
    if (r->n_keys == 0) {
      fputs("null", stdout);
    } else {
      putchar('[');
      for (size_t i = 0; i < r->n_keys; i++) {
        if (i > 0)
          putchar(',');
        jw_b64_value(stdout, r->keys[i].data, r->keys[i].len);
      }
      putchar(']');
    }
    jw_end(&j);
    putchar('\n');
  } else if (r->grantedttl == 0 && r->ttl == -1) {
    printf("lease %016" PRIx64 " already expired\n", (uint64_t)r->id);
  } else {
    printf("lease %016" PRIx64 " granted with TTL(%" PRId64 "s), remaining(%" PRId64 "s)",
           (uint64_t)r->id, r->grantedttl, r->ttl);
    if (keys) {
      /* Go's %v of a []string: [a b c]. */
      fputs(", attached keys([", stdout);
      for (size_t i = 0; i < r->n_keys; i++) {
        if (i > 0)
          putchar(' ');
        fwrite(r->keys[i].data, 1, r->keys[i].len, stdout);
      }
      fputs("])", stdout);
    }
    putchar('\n');
  }
  cairn_response_free(m);
  return 0;
}

int cmd_lease_list(struct ctl *ctl, int argc, char **argv) {
  int n, rc = ctl_args(ctl, argc, argv, NULL, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;
  Etcdserverpb__LeaseLeasesRequest req = ETCDSERVERPB__LEASE_LEASES_REQUEST__INIT;
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  ProtobufCMessage *m = NULL;
  rc = cairn_sync_unary(s, "/etcdserverpb.Lease/LeaseLeases", &req.base,
                        &etcdserverpb__lease_leases_response__descriptor, true, &o, &m, &err);
  if (rc != 0)
    return ctl_call_error(rc, &err, "failed to list leases");
  const Etcdserverpb__LeaseLeasesResponse *r = (const Etcdserverpb__LeaseLeasesResponse *)m;
  if (ctl->format == CTL_OUT_JSON) {
    struct jw j;
    jw_begin(&j, stdout);
    json_header_fields(&j, r->header);
    jw_key(&j, "leases");
    putchar('[');
    for (size_t i = 0; i < r->n_leases; i++)
      printf("%s{\"id\":%" PRId64 "}", i > 0 ? "," : "", r->leases[i]->id);
    putchar(']');
    jw_end(&j);
    putchar('\n');
  } else {
    printf("found %zu leases\n", r->n_leases);
    for (size_t i = 0; i < r->n_leases; i++)
      printf("%016" PRIx64 "\n", (uint64_t)r->leases[i]->id);
  }
  cairn_response_free(m);
  return 0;
}

/* ---- keep-alive ---------------------------------------------------------- */

/* Shared between the main thread and the client's loop thread (where the
 * callbacks run): printing happens on the loop thread only, the end is
 * handed over under the mutex. */
struct ka_state {
  struct ctl *ctl;
  int64_t id;
  bool once;
  cairn_keepalive *ka; /* loop thread only */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool renewed, ended;
  int code;
  char message[CAIRN_ERROR_MESSAGE_MAX];
};

static void ka_print(const struct ka_state *st, int64_t ttl) {
  if (st->ctl->format == CTL_OUT_JSON) {
    /* The library hands over the TTL only: no header fields here. */
    printf("{\"ID\":%" PRId64 ",\"TTL\":%" PRId64 "}\n", st->id, ttl);
  } else {
    printf("lease %016" PRIx64 " keepalived with TTL(%" PRId64 ")\n", (uint64_t)st->id, ttl);
  }
  fflush(stdout);
}

static void ka_renewed(void *data, int64_t id, int64_t ttl_s) {
  struct ka_state *st = data;
  (void)id;
  pthread_mutex_lock(&st->mu);
  bool first = !st->renewed;
  st->renewed = true;
  pthread_cond_signal(&st->cv);
  pthread_mutex_unlock(&st->mu);
  /* --once prints its one answer; later ones (before the stop) are not. */
  if (!st->once || first)
    ka_print(st, ttl_s);
  if (st->once && first) {
    cairn_keepalive_stop(st->ka);
    st->ka = NULL;
  }
}

static void ka_end(void *data, int64_t id, int code, const char *message) {
  struct ka_state *st = data;
  (void)id;
  pthread_mutex_lock(&st->mu);
  st->ka = NULL;
  st->ended = true;
  st->code = code;
  snprintf(st->message, sizeof st->message, "%s", message);
  pthread_cond_signal(&st->cv);
  pthread_mutex_unlock(&st->mu);
  /* Wake the main thread's sigwait (keep-alive without --once). */
  if (!st->once)
    kill(getpid(), SIGUSR1);
}

static int ka_start(cairn_client *c, void *data) {
  struct ka_state *st = data;
  const struct cairn_keepalive_handlers h = {.on_renewed = ka_renewed, .on_end = ka_end};
  return cairn_keepalive_start(c, st->id, &h, st, &st->ka);
}

static int ka_stop(cairn_client *c, void *data) {
  struct ka_state *st = data;
  (void)c;
  if (st->ka != NULL)
    cairn_keepalive_stop(st->ka);
  st->ka = NULL;
  return 0;
}

int cmd_lease_keepalive(struct ctl *ctl, int argc, char **argv) {
  bool once = false;
  const struct ctl_flag flags[] = {
      {"once", 0, CTL_FLAG_BOOL, &once, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int64_t id;
  int rc = lease_args(ctl, argc, argv, flags, "lease keep-alive command needs lease ID as argument",
                      &id);
  if (rc != 0)
    return rc;

  sigset_t set;
  sigemptyset(&set);
  if (!once)
    ctl_signals_block(&set);
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL)
    return CTL_EXIT_BAD_CONNECTION;

  struct ka_state st = {.ctl = ctl, .id = id, .once = once};
  pthread_mutex_init(&st.mu, NULL);
  pthread_cond_init(&st.cv, NULL);
  rc = cairn_sync_run(s, ka_start, &st);
  if (rc != 0) {
    rc = ctl_error(CTL_EXIT_ERROR, "%s", cairn_strerror(rc));
    goto out;
  }
  if (once) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(ctl->command_timeout_ms / 1000);
    deadline.tv_nsec += (long)(ctl->command_timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
      deadline.tv_sec++;
      deadline.tv_nsec -= 1000000000;
    }
    bool timed_out = false;
    pthread_mutex_lock(&st.mu);
    while (!st.renewed && !st.ended && !timed_out)
      timed_out = pthread_cond_timedwait(&st.cv, &st.mu, &deadline) != 0;
    pthread_mutex_unlock(&st.mu);
    cairn_sync_run(s, ka_stop, &st);
    if (st.renewed) {
      rc = 0;
    } else if (st.ended) {
      rc = ctl_error(CTL_EXIT_BAD_CONNECTION, "%s", st.message);
    } else {
      rc = ctl_error(CTL_EXIT_BAD_CONNECTION, "context deadline exceeded");
    }
    goto out;
  }
  int sig = 0;
  sigwait(&set, &sig);
  cairn_sync_run(s, ka_stop, &st);
  rc = 0;
  if (sig == SIGUSR1) {
    pthread_mutex_lock(&st.mu);
    bool ended = st.ended;
    pthread_mutex_unlock(&st.mu);
    if (ended && st.code == 5 /* NOT_FOUND: expired or revoked */) {
      if (ctl->format == CTL_OUT_SIMPLE)
        printf("lease %016" PRIx64 " expired or revoked.\n", (uint64_t)id);
    } else if (ended) {
      rc = ctl_error(CTL_EXIT_ERROR, "%s", st.message);
    }
  }
out:
  pthread_cond_destroy(&st.cv);
  pthread_mutex_destroy(&st.mu);
  return rc;
}
