/* client/cairnctl/main.c: cairnctl's entry point: global flags and their
 * environment variables, the table of commands, the client. */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

static const struct ctl_command commands[] = {
    {"get", NULL, cmd_get, "get [options] <key> [range_end]"},
    {"put", NULL, cmd_put, "put [options] <key> <value> (<value> can also be given from stdin)"},
    {"del", NULL, cmd_del, "del [options] <key> [range_end]"},
    {"txn", NULL, cmd_txn, "txn [options] (compares, success and failure requests on stdin)"},
    {"watch", NULL, cmd_watch, "watch [options] <key> [range_end]"},
    {"compaction", NULL, cmd_compaction, "compaction [options] <revision>"},
    {"defrag", NULL, cmd_defrag, "defrag [--cluster]"},
    {"move-leader", NULL, cmd_move_leader, "move-leader <transferee-member-id>"},
    {"version", NULL, cmd_version, "version"},
    {"lease", "grant", cmd_lease_grant, "lease grant <ttl>"},
    {"lease", "revoke", cmd_lease_revoke, "lease revoke <leaseID>"},
    {"lease", "timetolive", cmd_lease_timetolive, "lease timetolive <leaseID> [--keys]"},
    {"lease", "list", cmd_lease_list, "lease list"},
    {"lease", "keep-alive", cmd_lease_keepalive, "lease keep-alive [--once] <leaseID>"},
    {"member", "list", cmd_member_list, "member list"},
    {"member", "add", cmd_member_add, "member add <memberName> --peer-urls=<urls> [--learner]"},
    {"member", "remove", cmd_member_remove, "member remove <memberID>"},
    {"member", "update", cmd_member_update, "member update <memberID> --peer-urls=<urls>"},
    {"member", "promote", cmd_member_promote, "member promote <memberID>"},
    {"endpoint", "status", cmd_endpoint_status, "endpoint status [--cluster]"},
    {"endpoint", "health", cmd_endpoint_health, "endpoint health [--cluster]"},
    {"snapshot", "save", cmd_snapshot_save, "snapshot save <filename>"},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

int ctl_error(int code, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fputs("Error: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return code;
}

int ctl_call_error(int rc, const struct cairn_error *err, const char *prefix) {
  const char *text = rc < 0 ? cairn_strerror(rc) : err->message;
  if (prefix != NULL)
    return ctl_error(CTL_EXIT_ERROR, "%s (%s)", prefix, text);
  return ctl_error(CTL_EXIT_ERROR, "%s", text);
}

void ctl_signals_block(sigset_t *set) {
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, set, NULL);
}

static bool ctl_tls(const struct ctl *ctl) {
  return ctl->cacert != NULL || ctl->cert != NULL || ctl->key != NULL ||
         ctl->insecure_skip_tls_verify;
}

/* etcdctl dials "host:port" with TLS when TLS flags are given; libcairn
 * wants the scheme said, so one is added. */
static int ctl_urls(const struct ctl *ctl, const struct ctl_strings *in, struct ctl_strings *out) {
  ctl_strings_clear(out);
  for (size_t i = 0; i < in->n; i++) {
    const char *ep = in->v[i];
    char *url;
    if (strstr(ep, "://") != NULL || !ctl_tls(ctl)) {
      url = strdup(ep);
    } else if (asprintf(&url, "https://%s", ep) < 0) {
      url = NULL;
    }
    if (url == NULL)
      return ctl_error(CTL_EXIT_ERROR, "out of memory");
    out->v[out->n++] = url;
  }
  return 0;
}

static int ctl_sync_new(const struct ctl *ctl, const struct ctl_strings *urls, cairn_sync **out) {
  struct cairn_config cfg = {
      .endpoints = (const char *const *)urls->v,
      .n_endpoints = urls->n,
      .ca_file = ctl->cacert,
      .cert_file = ctl->cert,
      .key_file = ctl->key,
      .insecure_skip_verify = ctl->insecure_skip_tls_verify,
      .dial_timeout_ms = ctl->dial_timeout_ms,
      .request_timeout_ms = ctl->command_timeout_ms,
  };
  int rc = cairn_sync_new(&cfg, out);
  if (rc != 0)
    return ctl_error(CTL_EXIT_BAD_CONNECTION, "%s", cairn_strerror(rc));
  return 0;
}

cairn_sync *ctl_client(struct ctl *ctl) {
  if (ctl->sync != NULL)
    return ctl->sync;
  if (ctl_urls(ctl, &ctl->endpoints, &ctl->urls) != 0)
    return NULL;
  if (ctl_sync_new(ctl, &ctl->urls, &ctl->sync) != 0)
    return NULL;
  return ctl->sync;
}

int ctl_client_for(struct ctl *ctl, const struct ctl_strings *endpoints, cairn_sync **out) {
  struct ctl_strings urls = {0};
  int rc = ctl_urls(ctl, endpoints, &urls);
  if (rc == 0)
    rc = ctl_sync_new(ctl, &urls, out);
  ctl_strings_clear(&urls);
  return rc;
}

const char *ctl_endpoint_url(const struct ctl *ctl, size_t i) {
  return i < ctl->urls.n ? ctl->urls.v[i] : ctl->endpoints.v[i];
}

struct cairn_call_opts ctl_opts(const struct ctl *ctl) {
  struct cairn_call_opts o = {.timeout_ms = ctl->command_timeout_ms};
  return o;
}

int ctl_args(struct ctl *ctl, int argc, char **argv, const struct ctl_flag *flags, unsigned formats,
             int *n_pos) {
  static const char *const names[] = {"simple", "json", "table"};
  int rc = ctl_parse_flags(argc, argv, flags, ctl->globals, n_pos);
  if (rc != 0)
    return rc;
  for (unsigned i = 0; i < 3; i++) {
    if (strcmp(ctl->write_out, names[i]) == 0) {
      if ((formats & (1u << i)) == 0)
        return ctl_error(CTL_EXIT_BAD_FEATURE, "output format \"%s\" is not supported here",
                         names[i]);
      ctl->format = (enum ctl_format)i;
      return 0;
    }
  }
  return ctl_error(CTL_EXIT_BAD_FEATURE, "unknown output format \"%s\" (simple, json, table)",
                   ctl->write_out);
}

static void usage(FILE *f) {
  fprintf(f,
          "cairnctl: a command line client for Cairn and etcd (etcd's v3 API)\n\n"
          "USAGE:\n\tcairnctl [global options] <command> [options] [arguments...]\n\n"
          "COMMANDS:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "\t%s\n", commands[i].usage);
  fprintf(f,
          "\nGLOBAL OPTIONS (environment variable in brackets):\n"
          "  --endpoints=127.0.0.1:2379   gRPC endpoints, comma separated [CAIRNCTL_ENDPOINTS]\n"
          "  --cacert, --cert, --key       TLS files [CAIRNCTL_CACERT, _CERT, _KEY]\n"
          "  --insecure-skip-tls-verify    accept any server certificate "
          "[CAIRNCTL_INSECURE_SKIP_TLS_VERIFY]\n"
          "  --dial-timeout=2s             [CAIRNCTL_DIAL_TIMEOUT]\n"
          "  --command-timeout=5s          [CAIRNCTL_COMMAND_TIMEOUT]\n"
          "  -w, --write-out=simple        simple, json or table [CAIRNCTL_WRITE_OUT]\n"
          "  --hex                         print keys and values as hex [CAIRNCTL_HEX]\n"
          "See docs/cairnctl.md.\n");
}

static const struct ctl_command *find_command(const char *name, const char *sub, bool *needs_sub) {
  *needs_sub = false;
  for (size_t i = 0; i < N_COMMANDS; i++) {
    if (strcmp(commands[i].name, name) != 0)
      continue;
    if (commands[i].sub == NULL)
      return &commands[i];
    *needs_sub = true;
    if (sub != NULL && strcmp(commands[i].sub, sub) == 0)
      return &commands[i];
  }
  return NULL;
}

int main(int argc, char **argv) {
  struct ctl ctl = {
      .dial_timeout_ms = CAIRN_DEFAULT_DIAL_TIMEOUT_MS,
      .command_timeout_ms = CAIRN_DEFAULT_REQUEST_TIMEOUT_MS,
      .write_out = "simple",
  };
  bool help = false;
  const struct ctl_flag globals[] = {
      {"endpoints", 0, CTL_FLAG_STRINGS, &ctl.endpoints, "CAIRNCTL_ENDPOINTS"},
      {"cacert", 0, CTL_FLAG_STRING, &ctl.cacert, "CAIRNCTL_CACERT"},
      {"cert", 0, CTL_FLAG_STRING, &ctl.cert, "CAIRNCTL_CERT"},
      {"key", 0, CTL_FLAG_STRING, &ctl.key, "CAIRNCTL_KEY"},
      {"insecure-skip-tls-verify", 0, CTL_FLAG_BOOL, &ctl.insecure_skip_tls_verify,
       "CAIRNCTL_INSECURE_SKIP_TLS_VERIFY"},
      {"dial-timeout", 0, CTL_FLAG_DURATION, &ctl.dial_timeout_ms, "CAIRNCTL_DIAL_TIMEOUT"},
      {"command-timeout", 0, CTL_FLAG_DURATION, &ctl.command_timeout_ms,
       "CAIRNCTL_COMMAND_TIMEOUT"},
      {"write-out", 'w', CTL_FLAG_STRING, &ctl.write_out, "CAIRNCTL_WRITE_OUT"},
      {"hex", 0, CTL_FLAG_BOOL, &ctl.hex, "CAIRNCTL_HEX"},
      {"help", 'h', CTL_FLAG_BOOL, &help, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  ctl.globals = globals;

  int rc = ctl_apply_env(globals);
  if (rc == 0 && ctl.endpoints.n == 0)
    rc = ctl_strings_add_list(&ctl.endpoints, "127.0.0.1:2379");
  /* The command's words are the first one or two arguments that are not
   * flags nor a global flag's value; the rest goes to the command. */
  char **rest = rc == 0 ? calloc((size_t)argc + 1, sizeof *rest) : NULL;
  if (rest == NULL) {
    ctl_strings_clear(&ctl.endpoints);
    return rc != 0 ? rc : ctl_error(CTL_EXIT_ERROR, "out of memory");
  }
  int n_rest = 0;
  const char *name = NULL, *sub = NULL;
  bool needs_sub = false, dashdash = false;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (dashdash || a[0] != '-' || a[1] == '\0') {
      if (name == NULL) {
        name = a;
        find_command(name, NULL, &needs_sub);
        continue;
      }
      if (needs_sub && sub == NULL) {
        sub = a;
        continue;
      }
      rest[n_rest++] = argv[i];
      continue;
    }
    rest[n_rest++] = argv[i];
    if (strcmp(a, "--") == 0) {
      dashdash = true;
      continue;
    }
    /* A global flag written "--flag value": its value is not a command. */
    for (const struct ctl_flag *f = globals; f->name != NULL; f++) {
      bool lng = a[1] == '-' && strcmp(a + 2, f->name) == 0;
      bool shrt = f->shorthand != 0 && a[1] == f->shorthand && a[2] == '\0';
      if ((lng || shrt) && f->type != CTL_FLAG_BOOL && i + 1 < argc) {
        rest[n_rest++] = argv[++i];
        break;
      }
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
      help = true;
  }

  const struct ctl_command *cmd = NULL;
  if (name == NULL || help || strcmp(name, "help") == 0) {
    usage(stdout);
    rc = name == NULL && !help ? CTL_EXIT_BAD_ARGS : 0;
  } else if ((cmd = find_command(name, sub, &needs_sub)) == NULL) {
    if (needs_sub && sub == NULL)
      rc = ctl_error(CTL_EXIT_BAD_ARGS, "%s needs a subcommand; see 'cairnctl --help'", name);
    else if (needs_sub)
      rc = ctl_error(CTL_EXIT_ERROR, "unknown command \"%s\" for \"cairnctl %s\"", sub, name);
    else
      rc = ctl_error(CTL_EXIT_ERROR,
                     "unknown command \"%s\" for \"cairnctl\"\nRun 'cairnctl --help' for usage.",
                     name);
  } else {
    rc = cmd->run(&ctl, n_rest, rest);
  }
  fflush(stdout);
  if (ctl.sync != NULL)
    cairn_sync_close(ctl.sync);
  ctl_strings_clear(&ctl.endpoints);
  ctl_strings_clear(&ctl.urls);
  free(rest);
  return rc;
}
