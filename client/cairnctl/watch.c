/* client/cairnctl/watch.c: watch, until SIGINT or SIGTERM.
 *
 * The watch runs on the blocking client's loop thread (cairn_sync_run) and
 * prints from there; the main thread waits in sigwait() for SIGINT,
 * SIGTERM, or SIGUSR1, which the watch's end sends. The library resumes
 * the watch across disconnects by itself. */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/cairnctl/cairnctl.h"

struct watch_state {
  const struct ctl *ctl;
  struct cairn_watch_opts opts;
  bool prev_kv;
  cairn_watch *w; /* loop thread only */
  pthread_mutex_t mu;
  bool ended;
  int code;
  char message[CAIRN_ERROR_MESSAGE_MAX];
};

static void watch_json(const struct cairn_watch_update *u) {
  /* etcdctl prints the server's header as it came. */
  struct jw hj;
  printf("{\"Header\":");
  jw_begin(&hj, stdout);
  if (u->header != NULL) {
    json_header_fields(&hj, u->header);
  } else if (u->revision != 0) {
    jw_i64(&hj, "revision", u->revision, false);
  }
  jw_end(&hj);
  printf(",\"Events\":");
  if (u->n_events == 0)
    fputs("null", stdout);
  for (size_t i = 0; i < u->n_events; i++) {
    const Mvccpb__Event *ev = u->events[i];
    struct jw j;
    putchar(i == 0 ? '[' : ',');
    jw_begin(&j, stdout);
    jw_i64(&j, "type", (int64_t)ev->type, false);
    if (ev->kv != NULL) {
      jw_key(&j, "kv");
      json_kv(stdout, ev->kv);
    }
    if (ev->prev_kv != NULL) {
      jw_key(&j, "prev_kv");
      json_kv(stdout, ev->prev_kv);
    }
    jw_end(&j);
  }
  if (u->n_events > 0)
    putchar(']');
  printf(",\"CompactRevision\":0,\"Canceled\":false,\"Created\":false}\n");
}

static void watch_update(void *data, const struct cairn_watch_update *u) {
  const struct watch_state *st = data;
  if (st->ctl->format == CTL_OUT_JSON) {
    watch_json(u);
  } else {
    for (size_t i = 0; i < u->n_events; i++) {
      const Mvccpb__Event *ev = u->events[i];
      printf("%s\n", ev->type == MVCCPB__EVENT__EVENT_TYPE__DELETE ? "DELETE" : "PUT");
      if (st->prev_kv && ev->prev_kv != NULL)
        out_kv(st->ctl, ev->prev_kv, false);
      if (ev->kv != NULL)
        out_kv(st->ctl, ev->kv, false);
    }
  }
  /* Whoever reads a pipe sees each update as it comes. */
  fflush(stdout);
}

static void watch_end(void *data, int code, const char *message, int64_t compact_revision) {
  struct watch_state *st = data;
  (void)compact_revision;
  pthread_mutex_lock(&st->mu);
  st->w = NULL;
  st->ended = true;
  st->code = code;
  snprintf(st->message, sizeof st->message, "%s", message);
  pthread_mutex_unlock(&st->mu);
  kill(getpid(), SIGUSR1);
}

static int watch_begin(cairn_client *c, void *data) {
  struct watch_state *st = data;
  const struct cairn_watch_handlers h = {.on_update = watch_update, .on_end = watch_end};
  return cairn_watch_start(c, &st->opts, &h, st, &st->w);
}

static int watch_cancel(cairn_client *c, void *data) {
  struct watch_state *st = data;
  (void)c;
  if (st->w != NULL)
    cairn_watch_stop(st->w);
  st->w = NULL;
  return 0;
}

int cmd_watch(struct ctl *ctl, int argc, char **argv) {
  bool prefix = false, prev_kv = false, progress = false;
  int64_t rev = 0;
  const struct ctl_flag flags[] = {
      {"prefix", 0, CTL_FLAG_BOOL, &prefix, NULL},
      {"rev", 0, CTL_FLAG_INT, &rev, NULL},
      {"prev-kv", 0, CTL_FLAG_BOOL, &prev_kv, NULL},
      {"progress-notify", 0, CTL_FLAG_BOOL, &progress, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n < 1 || n > 2)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "watch in non-interactive mode requires one or two arguments "
                     "as key or prefix, with range end");
  if (prefix && n > 1)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "too many arguments, only accept one argument when `--prefix` is set.");

  static const uint8_t zero[1] = {0};
  size_t key_len = strlen(argv[0]);
  uint8_t *end = malloc(key_len + 1);
  if (end == NULL)
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  struct watch_state st = {.ctl = ctl, .prev_kv = prev_kv};
  st.opts.key = argv[0];
  st.opts.key_len = key_len;
  if (n == 2) {
    st.opts.range_end = argv[1];
    st.opts.range_end_len = strlen(argv[1]);
  } else if (prefix && key_len == 0) {
    /* clientv3's WithPrefix of "": every key. */
    st.opts.key = zero;
    st.opts.key_len = 1;
    st.opts.range_end = zero;
    st.opts.range_end_len = 1;
  } else if (prefix) {
    st.opts.range_end_len = cairn_prefix_end(argv[0], key_len, end);
    st.opts.range_end = end;
  }
  st.opts.start_revision = rev;
  st.opts.prev_kv = prev_kv;
  st.opts.progress_notify = progress;

  sigset_t set;
  ctl_signals_block(&set);
  pthread_mutex_init(&st.mu, NULL);
  cairn_sync *s = ctl_client(ctl);
  if (s == NULL) {
    rc = CTL_EXIT_BAD_CONNECTION;
    goto out;
  }
  rc = cairn_sync_run(s, watch_begin, &st);
  if (rc != 0) {
    rc = ctl_error(CTL_EXIT_ERROR, "%s", cairn_strerror(rc));
    goto out;
  }
  int sig = 0;
  sigwait(&set, &sig);
  cairn_sync_run(s, watch_cancel, &st);
  pthread_mutex_lock(&st.mu);
  bool ended = st.ended;
  pthread_mutex_unlock(&st.mu);
  rc = 0;
  if (ended) {
    fflush(stdout);
    fprintf(stderr, "watch was canceled (%s)\n", st.message);
    rc = ctl_error(5 /* etcdctl's ExitInterrupted */, "watch is canceled by the server");
  }
out:
  pthread_mutex_destroy(&st.mu);
  free(end);
  return rc;
}
