/* tests/client/client_informer_probe.c: a libcairn informer on a prefix, for
 * the cluster tests (tests/cluster/test_client_informer.py).
 *
 *   client_informer_probe --endpoints a,b,c --prefix P [--dump-on-sync]
 *                         [--relist-after-ms N] [--quiet]
 *                         [common flags of probe.h]
 *
 * Prints, one line each, flushed:
 *   ADD <key> <mod_revision> <value>         each on_add (not with --quiet)
 *   UPDATE <key> <mod_revision> <value>      each on_update (idem)
 *   DELETE <key>                             each on_delete (idem)
 *   SYNCED <rev> <relisted 0|1> <adds> <updates> <deletes> <size>
 *                                            each on_synced, with the
 *                                            callbacks counted since the
 *                                            previous one
 *   ERROR <code> <message...>                each on_error
 *   DUMP <rev> <n>, then n lines KV <key> <mod_revision> <create_revision>
 *   <version> <lease> <value>, then DUMPEND <rev>
 *                                            the whole map, at each synced
 *                                            with --dump-on-sync, and for each
 *                                            line "dump" read on stdin
 *   END <code> <message...>                  the informer is over (on_end,
 *                                            or SIGTERM/SIGINT or the end of
 *                                            stdin: "END 1 stopped")
 * Exit status: 0 when stopped, 1 when the library ended the informer, 2 on
 * bad flags. */
#include <signal.h>

#include "probe.h"

static const char *PROG = "client_informer_probe";

#define INFORMER_PROBE_LINE_MAX 256u

struct informer_probe {
  uv_loop_t *loop;
  cairn_client *client;
  cairn_informer *inf; /* NULL once over */
  uv_signal_t sig_term, sig_int;
  uv_pipe_t in;
  bool in_open;
  char line[INFORMER_PROBE_LINE_MAX];
  size_t line_len;
  bool quiet, dump_on_sync;
  uint64_t adds, updates, deletes;
  int exit_code;
};

static void print_kv_tail(const Mvccpb__KeyValue *kv) {
  printf(" %" PRId64 " ", kv->mod_revision);
  probe_print_bytes(stdout, kv->value.data, kv->value.len);
  fputc('\n', stdout);
}

static void on_add(void *data, const Mvccpb__KeyValue *kv) {
  struct informer_probe *p = data;
  p->adds++;
  if (p->quiet)
    return;
  printf("ADD ");
  probe_print_bytes(stdout, kv->key.data, kv->key.len);
  print_kv_tail(kv);
}

static void on_update(void *data, const Mvccpb__KeyValue *old, const Mvccpb__KeyValue *kv) {
  struct informer_probe *p = data;
  (void)old;
  p->updates++;
  if (p->quiet)
    return;
  printf("UPDATE ");
  probe_print_bytes(stdout, kv->key.data, kv->key.len);
  print_kv_tail(kv);
}

static void on_delete(void *data, const Mvccpb__KeyValue *old) {
  struct informer_probe *p = data;
  p->deletes++;
  if (p->quiet)
    return;
  printf("DELETE ");
  probe_print_bytes(stdout, old->key.data, old->key.len);
  fputc('\n', stdout);
}

static int dump_one(void *data, const Mvccpb__KeyValue *kv) {
  (void)data;
  printf("KV ");
  probe_print_bytes(stdout, kv->key.data, kv->key.len);
  printf(" %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " ", kv->mod_revision,
         kv->create_revision, kv->version, kv->lease);
  probe_print_bytes(stdout, kv->value.data, kv->value.len);
  fputc('\n', stdout);
  return 0;
}

static void dump(struct informer_probe *p) {
  if (p->inf == NULL)
    return;
  int64_t rev = cairn_informer_revision(p->inf);
  printf("DUMP %" PRId64 " %zu\n", rev, cairn_informer_size(p->inf));
  cairn_informer_foreach(p->inf, dump_one, p);
  printf("DUMPEND %" PRId64 "\n", rev);
  fflush(stdout);
}

static void on_synced(void *data, int64_t revision, bool relisted) {
  struct informer_probe *p = data;
  printf("SYNCED %" PRId64 " %d %" PRIu64 " %" PRIu64 " %" PRIu64 " %zu\n", revision,
         relisted ? 1 : 0, p->adds, p->updates, p->deletes, cairn_informer_size(p->inf));
  p->adds = p->updates = p->deletes = 0;
  fflush(stdout);
  if (p->dump_on_sync)
    dump(p);
}

static void on_error(void *data, int code, const char *message) {
  (void)data;
  printf("ERROR %d %s\n", code, message);
  fflush(stdout);
}

static void shutdown_probe(struct informer_probe *p) {
  uv_close((uv_handle_t *)&p->sig_term, NULL);
  uv_close((uv_handle_t *)&p->sig_int, NULL);
  if (p->in_open) {
    p->in_open = false;
    uv_close((uv_handle_t *)&p->in, NULL);
  }
  cairn_client_close(p->client, NULL, NULL);
}

static void on_end(void *data, int code, const char *message) {
  struct informer_probe *p = data;
  p->inf = NULL;
  printf("END %d %s\n", code, message);
  fflush(stdout);
  p->exit_code = 1;
  shutdown_probe(p);
}

static void stop(struct informer_probe *p) {
  if (p->inf == NULL)
    return;
  cairn_informer_stop(p->inf);
  p->inf = NULL;
  printf("END 1 stopped\n");
  fflush(stdout);
  p->exit_code = 0;
  shutdown_probe(p);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  stop(h->data);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char storage[4096];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(storage, sizeof storage);
}

/* stdin: one command a line; "dump" is the only one. A line longer than
 * the buffer is dropped with a message. */
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct informer_probe *p = s->data;
  if (n < 0) {
    stop(p);
    return;
  }
  for (ssize_t k = 0; k < n; k++) {
    char ch = buf->base[k];
    if (ch != '\n') {
      if (p->line_len < sizeof p->line - 1)
        p->line[p->line_len++] = ch;
      continue;
    }
    p->line[p->line_len] = '\0';
    if (strcmp(p->line, "dump") == 0)
      dump(p);
    else if (p->line_len > 0)
      fprintf(stderr, "%s: unknown command '%s' on stdin\n", PROG, p->line);
    p->line_len = 0;
  }
}

int main(int argc, char **argv) {
  struct probe_common pc = {0};
  struct informer_probe p = {.loop = uv_default_loop()};
  const char *prefix = NULL;
  uint64_t relist_after_ms = 0;
  for (int i = 1; i < argc; i++) {
    if (probe_common_flag(PROG, &pc, argc, argv, &i))
      continue;
    if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc)
      prefix = argv[++i];
    else if (strcmp(argv[i], "--relist-after-ms") == 0 && i + 1 < argc)
      relist_after_ms = (uint64_t)probe_number(PROG, "--relist-after-ms", argv[++i]);
    else if (strcmp(argv[i], "--dump-on-sync") == 0)
      p.dump_on_sync = true;
    else if (strcmp(argv[i], "--quiet") == 0)
      p.quiet = true;
    else
      probe_die(PROG, "unknown or incomplete flag '%s'", argv[i]);
  }
  if (prefix == NULL)
    probe_die(PROG, "%s", "--prefix P is required");
  p.client = probe_client(PROG, &pc, p.loop);

  struct cairn_informer_opts io = {
      .prefix = prefix, .prefix_len = strlen(prefix), .relist_after_ms = relist_after_ms};
  struct cairn_informer_handlers ih = {.on_add = on_add,
                                       .on_update = on_update,
                                       .on_delete = on_delete,
                                       .on_synced = on_synced,
                                       .on_error = on_error,
                                       .on_end = on_end};
  int rc = cairn_informer_start(p.client, &io, &ih, &p, &p.inf);
  if (rc != 0) {
    fprintf(stderr, "%s: cairn_informer_start: %s\n", PROG, cairn_strerror(rc));
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
  /* stdin only when it is a pipe (the tests'); /dev/null or a terminal: no
   * commands. */
  if (uv_guess_handle(0) == UV_NAMED_PIPE && uv_pipe_init(p.loop, &p.in, 0) == 0) {
    p.in_open = true;
    p.in.data = &p;
    if (uv_pipe_open(&p.in, 0) != 0 || uv_read_start((uv_stream_t *)&p.in, on_alloc, on_read) != 0) {
      fprintf(stderr, "%s: cannot read stdin; no commands\n", PROG);
      p.in_open = false;
      uv_close((uv_handle_t *)&p.in, NULL);
    }
  }
  uv_run(p.loop, UV_RUN_DEFAULT);
  uv_loop_close(p.loop);
  probe_free(&pc);
  return p.exit_code;
}
