/* bench/cairn_bench/report.c: the JSON report and the human table. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static void json_str(FILE *f, const char *s) {
  if (!s) {
    fputs("null", f);
    return;
  }
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      fprintf(f, "\\%c", *p);
    } else if (*p < 0x20 || *p == 0x7f) {
      fprintf(f, "\\u%04x", *p);
    } else {
      fputc(*p, f);
    }
  }
  fputc('"', f);
}

static double us(uint64_t ns) {
  return (double)ns / 1000.0;
}

static void json_latency(FILE *f, const struct hist *h) {
  fprintf(f,
          "{\"min\":%.3f,\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
          "\"max\":%.3f}",
          h->count ? us(h->min_ns) : 0.0, hist_mean_ns(h) / 1000.0, us(hist_quantile_ns(h, 0.5)),
          us(hist_quantile_ns(h, 0.9)), us(hist_quantile_ns(h, 0.99)),
          us(hist_quantile_ns(h, 0.999)), us(h->max_ns));
}

static void json_params(FILE *f, const struct bench_config *c) {
  fprintf(f, "{\"conns\":%u,\"clients\":%u,", c->conns, c->clients);
  if (c->duration_s > 0) {
    fprintf(f, "\"total\":null,\"duration_s\":%.3f,", c->duration_s);
  } else {
    fprintf(f, "\"total\":%" PRIu64 ",\"duration_s\":null,", c->total);
  }
  fprintf(f, "\"key_size\":%u,\"val_size\":%u,\"key_space\":%" PRIu64 ",\"prefix\":", c->key_size,
          c->val_size, c->key_space);
  json_str(f, c->prefix);
  fprintf(f,
          ",\"seed\":%" PRIu64
          ",\"sequential\":%s,\"consistency\":\"%s\",\"read_ratio\":%g,"
          "\"preload\":%s,\"watchers\":%u,\"watch_streams\":%u,\"put_rate\":%g,"
          "\"lease_ttl\":%" PRId64 ",\"keepalives\":%u,\"timeout_ms\":%" PRIu64
          ",\"quiet\":%s,"
          "\"insecure_skip_tls_verify\":%s,\"cacert\":",
          c->seed, c->sequential ? "true" : "false", c->serializable ? "s" : "l", c->read_ratio,
          c->preload ? "true" : "false", c->watchers, c->watch_streams, c->put_rate, c->lease_ttl,
          c->keepalives, c->timeout_ms, c->quiet ? "true" : "false",
          c->insecure ? "true" : "false");
  json_str(f, c->cacert);
  fputs(",\"cert\":", f);
  json_str(f, c->cert);
  fputs(",\"key\":", f);
  json_str(f, c->key);
  fputs(",\"json\":", f);
  json_str(f, c->json_path);
  fputc('}', f);
}

static uint64_t requests(const struct bench *b) {
  return b->lat.count;
}

int report_json(const struct bench *b, const char *path) {
  const struct bench_config *c = &b->cfg;
  bool to_stdout = !strcmp(path, "-");
  FILE *f = to_stdout ? stdout : fopen(path, "w");
  if (!f) {
    fprintf(stderr, "cairn-bench: cannot write %s\n", path);
    return CAIRN_EIO;
  }
  fputs("{\"tool\":\"cairn-bench\",\"workload\":", f);
  json_str(f, c->workload_name);
  fputs(",\"endpoints\":[", f);
  for (unsigned i = 0; i < c->n_endpoints; i++) {
    if (i) {
      fputc(',', f);
    }
    json_str(f, c->endpoints[i]);
  }
  fputs("],\"params\":", f);
  json_params(f, c);
  double rps = b->elapsed_s > 0 ? (double)requests(b) / b->elapsed_s : 0.0;
  fprintf(f, ",\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"first_error\":", requests(b),
          b->errors);
  json_str(f, b->have_error ? b->first_error : NULL);
  fprintf(f, ",\"elapsed_s\":%.6f,\"throughput_rps\":%.3f,\"client_cpu_s\":%.3f,\"latency_us\":",
          b->elapsed_s, rps, b->client_cpu_s);
  json_latency(f, &b->lat);
  switch (c->workload) {
    case BENCH_TXN:
      fprintf(f, ",\"succeeded\":%" PRIu64 ",\"failed\":%" PRIu64, b->txn_succeeded, b->txn_failed);
      break;
    case BENCH_DELETE:
      fprintf(f, ",\"deleted\":%" PRIu64, b->deleted);
      break;
    case BENCH_MIXED:
      fprintf(f, ",\"reads\":{\"requests\":%" PRIu64 ",\"latency_us\":", b->lat_read.count);
      json_latency(f, &b->lat_read);
      fprintf(f, "},\"writes\":{\"requests\":%" PRIu64 ",\"latency_us\":", b->lat_write.count);
      json_latency(f, &b->lat_write);
      fputc('}', f);
      break;
    case BENCH_WATCH:
      fprintf(f,
              ",\"watchers\":%u,\"streams\":%u,\"events\":%" PRIu64
              ",\"events_per_s\":%.3f,"
              "\"missing\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"before_ack\":%" PRIu64
              ",\"delivery_latency_us\":",
              c->watchers, c->watch_streams, b->watch_events, b->watch_events_per_s,
              b->watch_missing, b->watch_duplicates, b->watch_before_ack);
      json_latency(f, &b->lat_delivery);
      break;
    case BENCH_LEASE:
      fprintf(f, ",\"keepalive\":{\"requests\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"latency_us\":",
              b->lat_keepalive.count, b->keepalive_errors);
      json_latency(f, &b->lat_keepalive);
      fputc('}', f);
      break;
    default:
      break;
  }
  fputs("}\n", f);
  int rc = 0;
  if (fflush(f) != 0 || ferror(f)) {
    rc = CAIRN_EIO;
  }
  if (!to_stdout && fclose(f) != 0) {
    rc = CAIRN_EIO;
  }
  if (rc < 0) {
    fprintf(stderr, "cairn-bench: cannot write %s\n", path);
  }
  return rc;
}

static void table_row(const char *what, uint64_t n, const struct hist *h) {
  printf("%-14s %10" PRIu64 " %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f\n", what, n,
         h->count ? us(h->min_ns) : 0.0, hist_mean_ns(h) / 1000.0, us(hist_quantile_ns(h, 0.5)),
         us(hist_quantile_ns(h, 0.9)), us(hist_quantile_ns(h, 0.99)),
         us(hist_quantile_ns(h, 0.999)), us(h->max_ns));
}

void report_table(const struct bench *b) {
  const struct bench_config *c = &b->cfg;
  double rps = b->elapsed_s > 0 ? (double)requests(b) / b->elapsed_s : 0.0;
  printf("cairn-bench %s: %u endpoint(s), %u conns, %u clients, seed %" PRIu64 "\n",
         c->workload_name, c->n_endpoints, c->conns, c->clients, c->seed);
  printf("requests %" PRIu64 ", errors %" PRIu64 ", %.3f s, %.1f req/s, client CPU %.3f s\n",
         requests(b), b->errors, b->elapsed_s, rps, b->client_cpu_s);
  if (b->have_error) {
    printf("first error: %s\n", b->first_error);
  }
  printf("%-14s %10s %10s %10s %10s %10s %10s %10s %10s\n", "latency (us)", "count", "min", "mean",
         "p50", "p90", "p99", "p99.9", "max");
  table_row(c->workload == BENCH_WATCH ? "put" : c->workload_name, b->lat.count, &b->lat);
  switch (c->workload) {
    case BENCH_TXN:
      printf("txn: %" PRIu64 " succeeded, %" PRIu64 " failed\n", b->txn_succeeded, b->txn_failed);
      break;
    case BENCH_DELETE:
      printf("delete: %" PRIu64 " keys deleted\n", b->deleted);
      break;
    case BENCH_MIXED:
      table_row("read", b->lat_read.count, &b->lat_read);
      table_row("write", b->lat_write.count, &b->lat_write);
      break;
    case BENCH_WATCH:
      table_row("delivery", b->lat_delivery.count, &b->lat_delivery);
      printf("watch: %u watchers on %u streams, %" PRIu64 " events (%.1f/s), %" PRIu64
             " missing, %" PRIu64 " duplicates, %" PRIu64 " before the put's ack\n",
             c->watchers, c->watch_streams, b->watch_events, b->watch_events_per_s,
             b->watch_missing, b->watch_duplicates, b->watch_before_ack);
      break;
    case BENCH_LEASE:
      table_row("keepalive", b->lat_keepalive.count, &b->lat_keepalive);
      break;
    default:
      break;
  }
  fflush(stdout);
}
