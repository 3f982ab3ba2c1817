/* bench/cairn_bench/main.c: cairn-bench's command line, set-up and
 * tear-down (docs/performance.md, "cairn-bench", has the contract). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const char usage_text[] =
    "usage: cairn-bench [flags] put|range|txn|delete|mixed|watch|lease\n"
    "  --endpoints LIST    host:port or http(s)://host:port, comma-separated (127.0.0.1:2379)\n"
    "  --conns N           HTTP/2 connections, over the endpoints round robin (1)\n"
    "  --clients N         requests in flight in total (16)\n"
    "  --total N           requests to complete (10000)\n"
    "  --duration S        run for S seconds instead of --total\n"
    "  --key-size B        digits after the prefix (8)\n"
    "  --val-size B        value bytes (256)\n"
    "  --key-space N       distinct keys (10000)\n"
    "  --prefix STR        key prefix (bench/)\n"
    "  --seed N            random seed (1)\n"
    "  --sequential        keys in order instead of uniform random\n"
    "  --consistency l|s   range and mixed reads: linearizable or serializable (l)\n"
    "  --read-ratio F      mixed: share of reads (0.9)\n"
    "  --no-preload        range, txn, delete, mixed: do not write the key space first\n"
    "  --watchers W        watch: watchers on the prefix (1000)\n"
    "  --watch-streams S   watch: Watch streams, watchers spread evenly (100)\n"
    "  --put-rate R        watch: puts per second, 0 = as fast as --clients allows (1000)\n"
    "  --lease-ttl S       lease: TTL of granted leases (60)\n"
    "  --keepalives N      lease: leases kept alive while granting (100)\n"
    "  --json FILE         the result as JSON (- = stdout, and no table)\n"
    "  --quiet             no progress line on stderr\n"
    "  --cacert F, --cert F, --key F, --insecure-skip-tls-verify   for https endpoints\n"
    "  --timeout-ms N      per-request deadline (10000)\n";

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "cairn-bench: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", usage_text);
  return 2;
}

static bool parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
  char *end;
  if (!s || !*s || *s == '-') {
    return false;
  }
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || v < min || v > max) {
    return false;
  }
  *out = v;
  return true;
}

static bool parse_unsigned(const char *s, uint64_t min, uint64_t max, unsigned *out) {
  uint64_t v;
  if (!parse_u64(s, min, max, &v)) {
    return false;
  }
  *out = (unsigned)v;
  return true;
}

static bool parse_double(const char *s, double min, double max, double *out) {
  char *end;
  if (!s || !*s) {
    return false;
  }
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || !isfinite(v) || v < min || v > max) {
    return false;
  }
  *out = v;
  return true;
}

static const struct {
  const char *name;
  enum bench_workload w;
} workloads[] = {
    {"put", BENCH_PUT},       {"range", BENCH_RANGE}, {"txn", BENCH_TXN},
    {"delete", BENCH_DELETE}, {"mixed", BENCH_MIXED}, {"watch", BENCH_WATCH},
    {"lease", BENCH_LEASE},
};

static void config_defaults(struct bench_config *c) {
  memset(c, 0, sizeof *c);
  c->conns = 1;
  c->clients = 16;
  c->total = 10000;
  c->key_size = 8;
  c->val_size = 256;
  c->key_space = 10000;
  c->prefix = "bench/";
  c->seed = 1;
  c->read_ratio = 0.9;
  c->preload = true;
  c->watchers = 1000;
  c->watch_streams = 100;
  c->put_rate = 1000;
  c->lease_ttl = 60;
  c->keepalives = 100;
  c->timeout_ms = 10000;
}

/* Parses argv into c. Returns 0, or 2 after printing the usage error. */
static int config_parse(struct bench_config *c, int argc, char **argv) {
  const char *endpoints = "127.0.0.1:2379";
  const char *workload = NULL;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (strncmp(a, "--", 2) != 0) {
      if (workload) {
        return usage_error("one workload only, not also '%s'", a);
      }
      workload = a;
      continue;
    }
    /* --name=value or --name value */
    char name[64];
    const char *val = NULL;
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    if (nl >= sizeof name) {
      return usage_error("unknown flag %s", a);
    }
    memcpy(name, a, nl);
    name[nl] = '\0';
    bool is_bool = !strcmp(name, "--sequential") || !strcmp(name, "--no-preload") ||
                   !strcmp(name, "--quiet") || !strcmp(name, "--insecure-skip-tls-verify");
    if (is_bool) {
      if (eq) {
        return usage_error("%s takes no value", name);
      }
    } else if (eq) {
      val = eq + 1;
    } else if (i + 1 < argc) {
      val = argv[++i];
    } else {
      return usage_error("%s needs a value", name);
    }
    bool ok = true;
    if (!strcmp(name, "--endpoints")) {
      endpoints = val;
    } else if (!strcmp(name, "--conns")) {
      ok = parse_unsigned(val, 1, BENCH_CONNS_MAX, &c->conns);
    } else if (!strcmp(name, "--clients")) {
      ok = parse_unsigned(val, 1, BENCH_CLIENTS_MAX, &c->clients);
    } else if (!strcmp(name, "--total")) {
      ok = parse_u64(val, 1, UINT64_MAX / 2, &c->total);
    } else if (!strcmp(name, "--duration")) {
      ok = parse_double(val, 0.001, 1e7, &c->duration_s);
    } else if (!strcmp(name, "--key-size")) {
      ok = parse_unsigned(val, 1, BENCH_KEY_SIZE_MAX, &c->key_size);
    } else if (!strcmp(name, "--val-size")) {
      ok = parse_unsigned(val, 0, BENCH_VAL_SIZE_MAX, &c->val_size);
    } else if (!strcmp(name, "--key-space")) {
      ok = parse_u64(val, 1, BENCH_KEY_SPACE_MAX, &c->key_space);
    } else if (!strcmp(name, "--prefix")) {
      c->prefix = val;
      ok = strlen(val) <= BENCH_PREFIX_BYTES_MAX;
    } else if (!strcmp(name, "--seed")) {
      ok = parse_u64(val, 0, UINT64_MAX, &c->seed);
    } else if (!strcmp(name, "--sequential")) {
      c->sequential = true;
    } else if (!strcmp(name, "--consistency")) {
      ok = !strcmp(val, "l") || !strcmp(val, "s");
      c->serializable = !strcmp(val, "s");
    } else if (!strcmp(name, "--read-ratio")) {
      ok = parse_double(val, 0.0, 1.0, &c->read_ratio);
    } else if (!strcmp(name, "--no-preload")) {
      c->preload = false;
    } else if (!strcmp(name, "--watchers")) {
      ok = parse_unsigned(val, 1, BENCH_WATCHERS_MAX, &c->watchers);
    } else if (!strcmp(name, "--watch-streams")) {
      ok = parse_unsigned(val, 1, BENCH_WATCH_STREAMS_MAX, &c->watch_streams);
    } else if (!strcmp(name, "--put-rate")) {
      ok = parse_double(val, 0.0, 1e9, &c->put_rate);
    } else if (!strcmp(name, "--lease-ttl")) {
      uint64_t v;
      ok = parse_u64(val, 1, 9000000000ull, &v);
      c->lease_ttl = (int64_t)v;
    } else if (!strcmp(name, "--keepalives")) {
      ok = parse_unsigned(val, 0, BENCH_KEEPALIVES_MAX, &c->keepalives);
    } else if (!strcmp(name, "--json")) {
      c->json_path = val;
    } else if (!strcmp(name, "--quiet")) {
      c->quiet = true;
    } else if (!strcmp(name, "--cacert")) {
      c->cacert = val;
    } else if (!strcmp(name, "--cert")) {
      c->cert = val;
    } else if (!strcmp(name, "--key")) {
      c->key = val;
    } else if (!strcmp(name, "--insecure-skip-tls-verify")) {
      c->insecure = true;
    } else if (!strcmp(name, "--timeout-ms")) {
      ok = parse_u64(val, 1, 86400000ull, &c->timeout_ms);
    } else if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
      fputs(usage_text, stdout);
      exit(0);
    } else {
      return usage_error("unknown flag %s", name);
    }
    if (!ok) {
      fprintf(stderr, "cairn-bench: bad value '%s' for %s\n", val ? val : "", name);
      return 2;
    }
  }
  if (!workload) {
    return usage_error("%s", "no workload given");
  }
  bool found = false;
  for (size_t i = 0; i < sizeof workloads / sizeof workloads[0]; i++) {
    if (!strcmp(workload, workloads[i].name)) {
      c->workload = workloads[i].w;
      c->workload_name = workloads[i].name;
      found = true;
    }
  }
  if (!found) {
    return usage_error("unknown workload '%s'", workload);
  }
  /* Endpoints: a copy cut at the commas. */
  c->endpoints_arg = strdup(endpoints);
  if (!c->endpoints_arg) {
    return 2;
  }
  char *save = NULL;
  for (char *e = strtok_r(c->endpoints_arg, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
    if (c->n_endpoints == BENCH_ENDPOINTS_MAX) {
      return usage_error("more than %s endpoints", "64");
    }
    c->endpoints[c->n_endpoints++] = e;
  }
  if (c->n_endpoints == 0) {
    return usage_error("%s", "--endpoints is empty");
  }
  /* The key's digits must hold the largest index. */
  uint64_t digits = 1;
  for (uint64_t v = c->key_space - 1; v >= 10; v /= 10) {
    digits++;
  }
  if (digits > c->key_size) {
    fprintf(stderr,
            "cairn-bench: --key-size %u cannot hold --key-space %" PRIu64 " (%" PRIu64 " digits)\n",
            c->key_size, c->key_space, digits);
    return 2;
  }
  if (c->workload == BENCH_WATCH) {
    if (c->val_size < 16) {
      fprintf(stderr,
              "cairn-bench: watch needs --val-size >= 16 (the value carries the put's number)\n");
      return 2;
    }
    if (c->watch_streams > c->watchers) {
      c->watch_streams = c->watchers; /* a stream with no watcher measures nothing */
    }
  }
  bool any_https = false;
  for (unsigned i = 0; i < c->n_endpoints; i++) {
    any_https = any_https || strncmp(c->endpoints[i], "https://", 8) == 0;
  }
  if ((c->cacert || c->cert || c->key || c->insecure) && !any_https) {
    fprintf(stderr, "cairn-bench: TLS flags given but no https:// endpoint\n");
    return 2;
  }
  if (c->cert && !c->key) {
    fprintf(stderr, "cairn-bench: --cert needs --key\n");
    return 2;
  }
  return 0;
}

static bool is_https(const char *e) {
  return strncmp(e, "https://", 8) == 0;
}

static int setup(struct bench *b) {
  struct bench_config *c = &b->cfg;
  int rc = uv_loop_init(&b->loop);
  if (rc < 0) {
    fprintf(stderr, "cairn-bench: uv_loop_init: %s\n", uv_strerror(rc));
    return CAIRN_EIO;
  }
  b->loop_ready = true;
  uv_timer_init(&b->loop, &b->progress_timer);
  uv_timer_init(&b->loop, &b->wait_timer);
  b->progress_timer.data = b;
  b->wait_timer.data = b;
  b->conns = calloc(c->conns, sizeof *b->conns);
  b->slots = calloc(c->clients, sizeof *b->slots);
  b->idle = calloc(c->clients, sizeof *b->idle);
  size_t plen = strlen(c->prefix);
  b->key_len = plen + c->key_size;
  b->key_buf = malloc(b->key_len);
  b->range_end = malloc(plen + 1);
  b->value = malloc(c->val_size + 1u);
  b->scratch_cap = 3u * b->key_len + c->val_size + 256u;
  b->scratch = malloc(b->scratch_cap);
  if (!b->conns || !b->slots || !b->idle || !b->key_buf || !b->range_end || !b->value ||
      !b->scratch) {
    return CAIRN_ENOMEM;
  }
  memcpy(b->key_buf, c->prefix, plen);
  /* The prefix's range end: the prefix with its last byte below 0xff
   * incremented (etcd's rule); "\0" (every key) when there is none. */
  memcpy(b->range_end, c->prefix, plen);
  b->range_end_len = plen;
  while (b->range_end_len > 0 && b->range_end[b->range_end_len - 1] == 0xff) {
    b->range_end_len--;
  }
  if (b->range_end_len > 0) {
    b->range_end[b->range_end_len - 1]++;
  } else {
    b->range_end[0] = 0;
    b->range_end_len = 1;
  }
  b->rng = c->seed;
  for (unsigned i = 0; i < c->val_size; i++) {
    b->value[i] = (uint8_t)('a' + bench_rand(b) % 26u);
  }
  b->rng = c->seed; /* the key sequence does not depend on --val-size */
  hist_init(&b->lat);
  hist_init(&b->lat_read);
  hist_init(&b->lat_write);
  hist_init(&b->lat_delivery);
  hist_init(&b->lat_keepalive);

  for (unsigned i = 0; i < c->conns; i++) {
    const char *e = c->endpoints[i % c->n_endpoints];
    struct grpc_client_options o;
    memset(&o, 0, sizeof o);
    if (is_https(e)) {
      o.ca_file = c->cacert;
      o.cert_file = c->cert;
      o.key_file = c->key;
      o.insecure_skip_verify = c->insecure;
    }
    rc = grpc_client_new(&b->loop, e, &o, &b->conns[i]);
    if (rc < 0) {
      fprintf(stderr, "cairn-bench: endpoint %s: %s\n", e, cairn_strerror(rc));
      return rc;
    }
    b->n_conns_open++;
  }
  for (unsigned i = 0; i < c->clients; i++) {
    b->slots[i].b = b;
    b->slots[i].conn = b->conns[i % c->conns];
  }
  return 0;
}

static void client_closed(void *data) {
  struct bench *b = data;
  b->n_conns_open--;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) {
    uv_close(h, NULL);
  }
}

static void teardown(struct bench *b) {
  if (b->conns) {
    for (unsigned i = 0; i < b->cfg.conns; i++) {
      if (b->conns[i]) {
        grpc_client_close(b->conns[i], client_closed, b);
      }
    }
    /* Bounded: the clients end their calls and close their sockets. */
    for (int i = 0; i < 100000 && b->n_conns_open > 0; i++) {
      uv_run(&b->loop, UV_RUN_ONCE);
    }
  }
  if (b->loop_ready) {
    uv_walk(&b->loop, close_walk, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    uv_loop_close(&b->loop);
  }
  free(b->conns);
  free(b->slots);
  free(b->idle);
  free(b->key_buf);
  free(b->range_end);
  free(b->value);
  free(b->scratch);
  free(b->arena);
  free(b->cfg.endpoints_arg);
}

int main(int argc, char **argv) {
  static struct bench bench; /* large (histograms): not on the stack */
  struct bench *b = &bench;
  config_defaults(&b->cfg);
  int rc = config_parse(&b->cfg, argc, argv);
  if (rc != 0) {
    free(b->cfg.endpoints_arg);
    return rc;
  }
  rc = setup(b);
  if (rc < 0) {
    teardown(b);
    return 1;
  }
  const struct bench_config *c = &b->cfg;
  if (!c->quiet) {
    fprintf(stderr, "cairn-bench %s: %u conns, %u clients, seed %" PRIu64 "\n", c->workload_name,
            c->conns, c->clients, c->seed);
  }
  switch (c->workload) {
    case BENCH_RANGE:
    case BENCH_TXN:
    case BENCH_DELETE:
    case BENCH_MIXED:
      if (c->preload) {
        rc = kvload_preload(b);
      }
      if (rc == 0) {
        rc = kvload_run(b);
      }
      break;
    case BENCH_PUT:
      rc = kvload_run(b);
      break;
    case BENCH_WATCH:
      rc = watchload_run(b);
      break;
    case BENCH_LEASE:
      rc = leaseload_run(b);
      break;
  }
  int out_rc = 0;
  if (!c->json_path || strcmp(c->json_path, "-") != 0) {
    report_table(b);
  }
  if (c->json_path && report_json(b, c->json_path) < 0) {
    out_rc = 1;
  }
  teardown(b);
  return rc < 0 || out_rc ? 1 : 0;
}
