/* server/config.c: etcd's flags and ETCD_* variables into struct config. */
#include "server/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum flag_kind { FLAG_STRING, FLAG_UINT, FLAG_BOOL, FLAG_SPECIAL };

struct flag {
  const char *name; /* without the leading "--" */
  enum flag_kind kind;
  const char *help;
  const char *def;
};

/* The flags Cairn takes, with etcd's names, help and defaults. */
static const struct flag flags[] = {
    {"name", FLAG_STRING, "Human-readable name for this member.", "default"},
    {"data-dir", FLAG_STRING, "Path to the data directory.", "${name}.etcd"},
    {"listen-client-urls", FLAG_SPECIAL, "List of URLs to listen on for client traffic.",
     "http://localhost:2379"},
    {"advertise-client-urls", FLAG_STRING,
     "List of this member's client URLs to advertise to the public.", "http://localhost:2379"},
    {"listen-peer-urls", FLAG_SPECIAL, "List of URLs to listen on for peer traffic.",
     "http://localhost:2380"},
    {"initial-advertise-peer-urls", FLAG_STRING,
     "List of this member's peer URLs to advertise to the rest of the cluster.",
     "http://localhost:2380"},
    {"initial-cluster", FLAG_SPECIAL, "Initial cluster configuration for bootstrapping.",
     "${name}=http://localhost:2380"},
    {"initial-cluster-state", FLAG_SPECIAL,
     "Initial cluster state ('new' or 'existing').", "new"},
    {"initial-cluster-token", FLAG_STRING,
     "Initial cluster token for the etcd cluster during bootstrap.", "etcd-cluster"},
    {"snapshot-count", FLAG_UINT, "Number of committed transactions to trigger a snapshot to disk.",
     "10000"}, /* etcd: 100000; docs/raft.md says why Cairn's is smaller */
    {"heartbeat-interval", FLAG_UINT, "Time (in milliseconds) of a heartbeat interval.", "100"},
    {"election-timeout", FLAG_UINT, "Time (in milliseconds) for an election to timeout.", "1000"},
    {"quota-backend-bytes", FLAG_UINT,
     "Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).", "0"},
    {"max-request-bytes", FLAG_UINT, "Maximum client request size in bytes the server will accept.",
     "1572864"},
    {"max-txn-ops", FLAG_UINT, "Maximum number of operations permitted in a transaction.", "128"},
    {"auto-compaction-mode", FLAG_SPECIAL,
     "Interpret 'auto-compaction-retention' one of: periodic|revision.", "periodic"},
    {"auto-compaction-retention", FLAG_SPECIAL,
     "Auto compaction retention for mvcc key value store. 0 means disable auto compaction.",
     "0"},
    {"cert-file", FLAG_STRING, "Path to the client server TLS cert file.", ""},
    {"key-file", FLAG_STRING, "Path to the client server TLS key file.", ""},
    {"trusted-ca-file", FLAG_STRING, "Path to the client server TLS trusted CA cert file.", ""},
    {"client-cert-auth", FLAG_BOOL, "Enable client cert authentication.", "false"},
    {"log-level", FLAG_SPECIAL, "Configures log level. Only supports debug, info, warn, error.",
     "info"},
};
#define N_FLAGS (sizeof flags / sizeof flags[0])

/* etcd flags Cairn knows of but does not support: refused by name. */
static const char *unsupported[] = {
    "wal-dir", "max-snapshots", "max-wals", "backend-batch-interval", "backend-batch-limit",
    "max-concurrent-streams", "grpc-keepalive-min-time", "grpc-keepalive-interval",
    "grpc-keepalive-timeout", "initial-election-tick-advance", "discovery", "discovery-fallback",
    "discovery-proxy", "discovery-srv", "strict-reconfig-check", "enable-v2", "enable-pprof",
    "proxy", "peer-cert-file", "peer-key-file", "peer-client-cert-auth", "peer-trusted-ca-file",
    "auto-tls", "peer-auto-tls", "cipher-suites", "cors", "host-whitelist", "auth-token",
    "bcrypt-cost", "metrics", "listen-metrics-urls", "logger", "log-outputs", "config-file",
    "force-new-cluster", "experimental-initial-corrupt-check", "experimental-corrupt-check-time",
    "experimental-enable-v2v3", "experimental-backend-bbolt-freelist-type",
    "experimental-enable-lease-checkpoint", "experimental-compaction-batch-limit",
    "experimental-peer-skip-client-san-verification", "experimental-watch-progress-notify-interval",
    "client-crl-file", "peer-crl-file", "peer-cert-allowed-cn", "peer-cert-allowed-hostname",
    "self-signed-cert-validity", "unsafe-no-fsync", "debug", "log-package-levels",
    "pre-vote", "quota-backend-bytes-unused"};

bool config_parse_url(const char *s, struct config_url *u) {
  memset(u, 0, sizeof *u);
  const char *p = strstr(s, "://");
  if (p == NULL || (size_t)(p - s) >= sizeof u->scheme) {
    return false;
  }
  memcpy(u->scheme, s, (size_t)(p - s));
  if (strcmp(u->scheme, "http") != 0 && strcmp(u->scheme, "https") != 0 &&
      strcmp(u->scheme, "unix") != 0) {
    return false;
  }
  p += 3;
  const char *colon = strrchr(p, ':');
  if (colon == NULL || (size_t)(colon - p) >= sizeof u->host || colon == p) {
    return false;
  }
  const char *host = p;
  size_t hlen = (size_t)(colon - p);
  if (host[0] == '[' && hlen >= 2 && host[hlen - 1] == ']') {
    host++;
    hlen -= 2;
  }
  memcpy(u->host, host, hlen);
  u->host[hlen] = 0;
  char *end;
  errno = 0;
  long port = strtol(colon + 1, &end, 10);
  while (*end == '/') {
    end++;
  }
  if (errno != 0 || *end != 0 || port < 0 || port > 65535) {
    return false;
  }
  u->port = (int)port;
  if (strcmp(u->host, "localhost") == 0) {
    snprintf(u->host, sizeof u->host, "127.0.0.1");
  }
  return true;
}

static bool parse_urls(const char *flag, const char *v, struct config_url *out, size_t max,
                       size_t *n) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", v);
  *n = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (*n == max) {
      fprintf(stderr, "cairn: --%s: at most %zu URLs\n", flag, max);
      return false;
    }
    if (!config_parse_url(tok, &out[*n])) {
      fprintf(stderr, "cairn: --%s: invalid URL %s\n", flag, tok);
      return false;
    }
    (*n)++;
  }
  if (*n == 0) {
    fprintf(stderr, "cairn: --%s: no URL given\n", flag);
    return false;
  }
  return true;
}

static bool parse_cluster(const char *v, struct config *c) {
  char buf[8192];
  snprintf(buf, sizeof buf, "%s", v);
  c->n_initial_cluster = 0;
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (eq == NULL || eq == tok) {
      fprintf(stderr, "cairn: --initial-cluster: expected name=peerURL, got %s\n", tok);
      return false;
    }
    if (c->n_initial_cluster == CONFIG_MEMBERS_MAX) {
      fprintf(stderr, "cairn: --initial-cluster: at most %d members\n", CONFIG_MEMBERS_MAX);
      return false;
    }
    struct config_member *m = &c->initial_cluster[c->n_initial_cluster];
    *eq = 0;
    snprintf(m->name, sizeof m->name, "%s", tok);
    snprintf(m->peer_url, sizeof m->peer_url, "%s", eq + 1);
    if (!config_parse_url(eq + 1, &m->peer)) {
      fprintf(stderr, "cairn: --initial-cluster: invalid URL %s\n", eq + 1);
      return false;
    }
    c->n_initial_cluster++;
  }
  return c->n_initial_cluster > 0;
}

/* "1h", "30m", "10s", or a bare number of hours (etcd's periodic retention). */
static bool parse_retention(const char *v, enum config_compaction_mode mode, uint64_t *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno != 0 || end == v || x < 0) {
    return false;
  }
  if (mode == COMPACTION_REVISION) {
    if (*end != 0) {
      return false;
    }
    *out = (uint64_t)x;
    return true;
  }
  double secs;
  if (*end == 0) {
    secs = x * 3600.0;
  } else if (strcmp(end, "h") == 0) {
    secs = x * 3600.0;
  } else if (strcmp(end, "m") == 0) {
    secs = x * 60.0;
  } else if (strcmp(end, "s") == 0) {
    secs = x;
  } else if (strcmp(end, "ms") == 0) {
    secs = x / 1000.0;
  } else {
    return false;
  }
  *out = (uint64_t)(secs + 0.5);
  return true;
}

static bool parse_uint(const char *flag, const char *v, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno != 0 || end == v || *end != 0 || v[0] == '-') {
    fprintf(stderr, "cairn: invalid value \"%s\" for flag --%s\n", v, flag);
    return false;
  }
  *out = x;
  return true;
}

static bool parse_bool(const char *flag, const char *v, bool *out) {
  if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "t") == 0 ||
      strcmp(v, "TRUE") == 0 || strcmp(v, "True") == 0) {
    *out = true;
    return true;
  }
  if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "f") == 0 ||
      strcmp(v, "FALSE") == 0 || strcmp(v, "False") == 0) {
    *out = false;
    return true;
  }
  fprintf(stderr, "cairn: invalid boolean \"%s\" for flag --%s\n", v, flag);
  return false;
}

/* The values as strings, before interpretation; NULL: not given. */
struct raw_values {
  const char *v[N_FLAGS];
};

static bool apply_values(struct config *c, const struct raw_values *raw) {
  const char *val[N_FLAGS];
  for (size_t i = 0; i < N_FLAGS; i++) {
    val[i] = raw->v[i] ? raw->v[i] : flags[i].def;
  }
  /* name first: defaults of data-dir and initial-cluster use it */
  snprintf(c->name, sizeof c->name, "%s", val[0]);
  char buf[2048];
  bool ok = true;
  const char *mode = "periodic", *retention = "0";
  for (size_t i = 1; i < N_FLAGS && ok; i++) {
    const char *n = flags[i].name;
    const char *v = val[i];
    uint64_t u = 0;
    if (strcmp(n, "data-dir") == 0) {
      if (raw->v[i] == NULL) {
        snprintf(c->data_dir, sizeof c->data_dir, "%s.etcd", c->name);
      } else {
        snprintf(c->data_dir, sizeof c->data_dir, "%s", v);
      }
    } else if (strcmp(n, "listen-client-urls") == 0) {
      ok = parse_urls(n, v, c->listen_client, CONFIG_URLS_MAX, &c->n_listen_client);
    } else if (strcmp(n, "advertise-client-urls") == 0) {
      snprintf(c->advertise_client_urls, sizeof c->advertise_client_urls, "%s", v);
    } else if (strcmp(n, "listen-peer-urls") == 0) {
      ok = parse_urls(n, v, c->listen_peer, CONFIG_URLS_MAX, &c->n_listen_peer);
    } else if (strcmp(n, "initial-advertise-peer-urls") == 0) {
      snprintf(c->initial_advertise_peer_urls, sizeof c->initial_advertise_peer_urls, "%s", v);
    } else if (strcmp(n, "initial-cluster") == 0) {
      if (raw->v[i] == NULL) {
        snprintf(buf, sizeof buf, "%s=%s", c->name, val[5] /* initial-advertise-peer-urls */);
        char *comma = strchr(buf, ',');
        if (comma) {
          *comma = 0;
        }
        v = buf;
      }
      ok = parse_cluster(v, c);
    } else if (strcmp(n, "initial-cluster-state") == 0) {
      if (strcmp(v, "new") == 0) {
        c->initial_cluster_new = true;
      } else if (strcmp(v, "existing") == 0) {
        c->initial_cluster_new = false;
      } else {
        fprintf(stderr, "cairn: --initial-cluster-state: expected new or existing, got %s\n", v);
        ok = false;
      }
    } else if (strcmp(n, "initial-cluster-token") == 0) {
      snprintf(c->initial_cluster_token, sizeof c->initial_cluster_token, "%s", v);
    } else if (strcmp(n, "snapshot-count") == 0) {
      ok = parse_uint(n, v, &c->snapshot_count);
    } else if (strcmp(n, "heartbeat-interval") == 0) {
      ok = parse_uint(n, v, &u) && u > 0 && u < 60000;
      c->heartbeat_ms = (unsigned)u;
    } else if (strcmp(n, "election-timeout") == 0) {
      ok = parse_uint(n, v, &u) && u > 0 && u < 600000;
      c->election_ms = (unsigned)u;
    } else if (strcmp(n, "quota-backend-bytes") == 0) {
      ok = parse_uint(n, v, &c->quota_backend_bytes);
    } else if (strcmp(n, "max-request-bytes") == 0) {
      ok = parse_uint(n, v, &c->max_request_bytes) && c->max_request_bytes > 0 &&
           c->max_request_bytes <= (64u << 20);
      if (!ok) {
        fprintf(stderr, "cairn: --max-request-bytes: between 1 and 67108864\n");
      }
    } else if (strcmp(n, "max-txn-ops") == 0) {
      ok = parse_uint(n, v, &u) && u > 0 && u <= 100000;
      c->max_txn_ops = (unsigned)u;
    } else if (strcmp(n, "auto-compaction-mode") == 0) {
      mode = v;
    } else if (strcmp(n, "auto-compaction-retention") == 0) {
      retention = v;
    } else if (strcmp(n, "cert-file") == 0) {
      snprintf(c->cert_file, sizeof c->cert_file, "%s", v);
    } else if (strcmp(n, "key-file") == 0) {
      snprintf(c->key_file, sizeof c->key_file, "%s", v);
    } else if (strcmp(n, "trusted-ca-file") == 0) {
      snprintf(c->trusted_ca_file, sizeof c->trusted_ca_file, "%s", v);
    } else if (strcmp(n, "client-cert-auth") == 0) {
      ok = parse_bool(n, v, &c->client_cert_auth);
    } else if (strcmp(n, "log-level") == 0) {
      static const char *levels[] = {"debug", "info", "warn", "error"};
      c->log_level = -1;
      for (int l = 0; l < 4; l++) {
        if (strcmp(v, levels[l]) == 0) {
          c->log_level = l;
        }
      }
      if (c->log_level < 0) {
        fprintf(stderr, "cairn: --log-level: expected debug, info, warn or error, got %s\n", v);
        ok = false;
      }
    }
  }
  if (!ok) {
    return false;
  }
  if (strcmp(mode, "periodic") == 0) {
    c->auto_compaction_mode = COMPACTION_PERIODIC;
  } else if (strcmp(mode, "revision") == 0) {
    c->auto_compaction_mode = COMPACTION_REVISION;
  } else {
    fprintf(stderr, "cairn: --auto-compaction-mode: expected periodic or revision, got %s\n", mode);
    return false;
  }
  if (!parse_retention(retention, c->auto_compaction_mode, &c->auto_compaction_retention)) {
    fprintf(stderr, "cairn: --auto-compaction-retention: invalid value %s\n", retention);
    return false;
  }
  if ((c->cert_file[0] != 0) != (c->key_file[0] != 0)) {
    fprintf(stderr, "cairn: --cert-file and --key-file go together\n");
    return false;
  }
  if (c->client_cert_auth && c->trusted_ca_file[0] == 0) {
    fprintf(stderr, "cairn: --client-cert-auth needs --trusted-ca-file\n");
    return false;
  }
  for (size_t i = 0; i < c->n_listen_client; i++) {
    if (strcmp(c->listen_client[i].scheme, "https") == 0 && c->cert_file[0] == 0) {
      fprintf(stderr, "cairn: --listen-client-urls: https needs --cert-file and --key-file\n");
      return false;
    }
    if (strcmp(c->listen_client[i].scheme, "unix") == 0) {
      fprintf(stderr, "cairn: --listen-client-urls: unix sockets are not supported by cairn\n");
      return false;
    }
  }
  return true;
}

static void print_help(void) {
  printf(
      "Usage:\n\n  cairn [flags]\n    Start a Cairn member (an etcd v3 API server).\n\n"
      "  cairn --version\n    Show the version of cairn.\n\n"
      "  cairn -h | --help\n    Show this help.\n\n"
      "Flags (etcd's names; each may also be set as ETCD_<NAME>, e.g. ETCD_DATA_DIR):\n");
  for (size_t i = 0; i < N_FLAGS; i++) {
    printf("  --%s '%s'\n    %s\n", flags[i].name, flags[i].def, flags[i].help);
  }
}

static int find_flag(const char *name) {
  for (size_t i = 0; i < N_FLAGS; i++) {
    if (strcmp(flags[i].name, name) == 0) {
      return (int)i;
    }
  }
  return -1;
}

static bool is_unsupported(const char *name) {
  for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
    if (strcmp(unsupported[i], name) == 0) {
      return true;
    }
  }
  return strncmp(name, "experimental-", 13) == 0;
}

enum config_result config_parse(struct config *c, int argc, char **argv) {
  memset(c, 0, sizeof *c);
  struct raw_values raw;
  memset(&raw, 0, sizeof raw);
  /* Environment first; flags override. */
  for (size_t i = 0; i < N_FLAGS; i++) {
    char env[128] = "ETCD_";
    size_t at = 5;
    for (const char *p = flags[i].name; *p && at < sizeof env - 1; p++) {
      env[at++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    }
    env[at] = 0;
    const char *v = getenv(env);
    if (v != NULL) {
      raw.v[i] = v;
    }
  }
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0 || strcmp(arg, "-help") == 0) {
      print_help();
      return CONFIG_EXIT_OK;
    }
    if (strcmp(arg, "--version") == 0 || strcmp(arg, "-version") == 0) {
      printf("cairn Version: %s\netcd API Version: %s\n", CAIRN_VERSION, CAIRN_ETCD_VERSION);
      return CONFIG_EXIT_OK;
    }
    if (arg[0] != '-') {
      fprintf(stderr, "cairn: unexpected argument %s (flags start with --)\n", arg);
      return CONFIG_ERROR;
    }
    const char *name = arg + (arg[1] == '-' ? 2 : 1);
    char nbuf[128];
    const char *value = NULL;
    const char *eq = strchr(name, '=');
    if (eq != NULL) {
      snprintf(nbuf, sizeof nbuf, "%.*s", (int)(eq - name), name);
      value = eq + 1;
    } else {
      snprintf(nbuf, sizeof nbuf, "%s", name);
    }
    int f = find_flag(nbuf);
    if (f < 0) {
      if (is_unsupported(nbuf)) {
        fprintf(stderr, "cairn: flag --%s is an etcd flag that cairn does not support\n", nbuf);
      } else {
        fprintf(stderr, "cairn: unknown flag --%s (see cairn --help)\n", nbuf);
      }
      return CONFIG_ERROR;
    }
    if (value == NULL) {
      if (flags[f].kind == FLAG_BOOL) {
        value = "true";
      } else if (a + 1 < argc) {
        value = argv[++a];
      } else {
        fprintf(stderr, "cairn: flag needs an argument: --%s\n", nbuf);
        return CONFIG_ERROR;
      }
    }
    raw.v[f] = value;
  }
  return apply_values(c, &raw) ? CONFIG_OK : CONFIG_ERROR;
}
