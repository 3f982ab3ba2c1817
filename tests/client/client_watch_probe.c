/* tests/client/client_watch_probe.c: one libcairn watch on a prefix, for
 * the cluster tests (tests/cluster/test_client_watch_failover.py).
 *
 *   client_watch_probe --endpoints a,b,c --prefix P [--start-rev N]
 *                      [--prev-kv] [--progress] [common flags of probe.h]
 *
 * Prints, one line each, flushed:
 *   EV <mod_revision> PUT|DELETE <key> <value>   each event, in order
 *   PROGRESS <revision>                          an update without events
 *   ENDPOINT <host:port>                         the client's current
 *                                                endpoint, when it changed
 *                                                since the last update
 *   END <code> <message...>                      the watch is over (its
 *                                                on_end, or SIGTERM/SIGINT:
 *                                                "END 1 stopped")
 * Exit status: 0 after SIGTERM/SIGINT, 1 when the library ended the watch,
 * 2 on bad flags. */
#include <signal.h>

#include "probe.h"

static const char *PROG = "client_watch_probe";

struct watch_probe {
  uv_loop_t *loop;
  cairn_client *client;
  cairn_watch *watch; /* NULL once over */
  uv_signal_t sig_term, sig_int;
  char last_endpoint[PROBE_ENDPOINT_LEN_MAX];
  int exit_code;
};

static void probe_shutdown(struct watch_probe *p) {
  uv_close((uv_handle_t *)&p->sig_term, NULL);
  uv_close((uv_handle_t *)&p->sig_int, NULL);
  cairn_client_close(p->client, NULL, NULL);
}

static void on_update(void *data, const struct cairn_watch_update *u) {
  struct watch_probe *p = data;
  const char *ep = cairn_client_endpoint(p->client);
  if (ep != NULL && strcmp(ep, p->last_endpoint) != 0) {
    snprintf(p->last_endpoint, sizeof p->last_endpoint, "%s", ep);
    printf("ENDPOINT %s\n", ep);
  }
  if (u->n_events == 0)
    printf("PROGRESS %" PRId64 "\n", u->revision);
  for (size_t k = 0; k < u->n_events; k++) {
    const Mvccpb__Event *ev = u->events[k];
    const Mvccpb__KeyValue *kv = ev->kv;
    printf("EV %" PRId64 " %s ", kv->mod_revision,
           ev->type == MVCCPB__EVENT__EVENT_TYPE__DELETE ? "DELETE" : "PUT");
    probe_print_bytes(stdout, kv->key.data, kv->key.len);
    fputc(' ', stdout);
    probe_print_bytes(stdout, kv->value.data, kv->value.len);
    fputc('\n', stdout);
  }
  fflush(stdout);
}

static void on_end(void *data, int code, const char *message, int64_t compact_revision) {
  struct watch_probe *p = data;
  p->watch = NULL;
  printf("END %d %s (compact revision %" PRId64 ")\n", code, message, compact_revision);
  fflush(stdout);
  p->exit_code = 1;
  probe_shutdown(p);
}

static void on_signal(uv_signal_t *h, int signum) {
  struct watch_probe *p = h->data;
  (void)signum;
  if (p->watch == NULL)
    return;
  cairn_watch_stop(p->watch);
  p->watch = NULL;
  printf("END 1 stopped\n");
  fflush(stdout);
  p->exit_code = 0;
  probe_shutdown(p);
}

int main(int argc, char **argv) {
  struct probe_common pc = {0};
  const char *prefix = NULL;
  int64_t start_rev = 0;
  bool prev_kv = false, progress = false;
  for (int i = 1; i < argc; i++) {
    if (probe_common_flag(PROG, &pc, argc, argv, &i))
      continue;
    if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc)
      prefix = argv[++i];
    else if (strcmp(argv[i], "--start-rev") == 0 && i + 1 < argc)
      start_rev = probe_number(PROG, "--start-rev", argv[++i]);
    else if (strcmp(argv[i], "--prev-kv") == 0)
      prev_kv = true;
    else if (strcmp(argv[i], "--progress") == 0)
      progress = true;
    else
      probe_die(PROG, "unknown or incomplete flag '%s'", argv[i]);
  }
  if (prefix == NULL || prefix[0] == '\0')
    probe_die(PROG, "%s", "--prefix P (non-empty) is required");

  struct watch_probe p = {.loop = uv_default_loop()};
  p.client = probe_client(PROG, &pc, p.loop);

  size_t plen = strlen(prefix);
  uint8_t *end = malloc(plen);
  if (end == NULL)
    probe_die(PROG, "%s", "out of memory");
  size_t end_len = cairn_prefix_end(prefix, plen, end);
  struct cairn_watch_opts wo = {
      .key = prefix,
      .key_len = plen,
      .range_end = end,
      .range_end_len = end_len,
      .start_revision = start_rev,
      .prev_kv = prev_kv,
      .progress_notify = progress,
  };
  struct cairn_watch_handlers wh = {.on_update = on_update, .on_end = on_end};
  int rc = cairn_watch_start(p.client, &wo, &wh, &p, &p.watch);
  free(end);
  if (rc != 0) {
    fprintf(stderr, "%s: cairn_watch_start: %s\n", PROG, cairn_strerror(rc));
    printf("END %d %s\n", cairn_grpc_code(rc), cairn_strerror(rc));
    fflush(stdout);
    cairn_client_close(p.client, NULL, NULL);
    uv_run(p.loop, UV_RUN_DEFAULT);
    probe_free(&pc);
    return 1;
  }
  uv_signal_init(p.loop, &p.sig_term);
  uv_signal_init(p.loop, &p.sig_int);
  p.sig_term.data = &p;
  p.sig_int.data = &p;
  uv_signal_start(&p.sig_term, on_signal, SIGTERM);
  uv_signal_start(&p.sig_int, on_signal, SIGINT);

  uv_run(p.loop, UV_RUN_DEFAULT);
  uv_loop_close(p.loop);
  probe_free(&pc);
  return p.exit_code;
}
