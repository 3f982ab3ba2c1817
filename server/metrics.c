/* server/metrics.c: counters, histograms and the Prometheus text exposition. */
#include "server/metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/cairn_assert.h"
#include "common/cairn_error.h"
#include "server/lessor.h"
#include "server/server.h"
#include "server/watch_hub.h"

/* gRPC status codes 0..16 and go-grpc-prometheus's names for them. */
#define METRICS_CODES 17
static const char *const code_names[METRICS_CODES] = {
    "OK",       "Canceled",       "Unknown",          "InvalidArgument",   "DeadlineExceeded",
    "NotFound", "AlreadyExists",  "PermissionDenied", "ResourceExhausted", "FailedPrecondition",
    "Aborted",  "OutOfRange",     "Unimplemented",    "Internal",          "Unavailable",
    "DataLoss", "Unauthenticated"};

/* Open addressing, at most half full. */
#define METHOD_SLOTS (2u * METRICS_METHODS_MAX)

struct method_counts {
  char *path; /* NULL: free slot */
  uint64_t codes[METRICS_CODES];
};

#define HIST_BUCKETS_MAX 20u

struct hist_def {
  const char *name;
  const char *help;
  double first; /* upper bound of the first bucket; each next one doubles */
  unsigned n_buckets;
};

/* etcd's names and buckets (prometheus.ExponentialBuckets(first, 2, n)). */
static const struct hist_def hist_defs[METRIC_HIST__COUNT] = {
    [METRIC_HIST_WAL_FSYNC] = {"etcd_disk_wal_fsync_duration_seconds",
                               "The latency distributions of fsync called by WAL.", 0.001, 14},
    [METRIC_HIST_BACKEND_COMMIT] = {"etcd_disk_backend_commit_duration_seconds",
                                    "The latency distributions of commit called by backend.", 0.001,
                                    14},
    [METRIC_HIST_APPLY] = {"etcd_server_apply_duration_seconds",
                           "The latency distributions of v2 apply called by backend.", 0.0001, 20},
    [METRIC_HIST_SNAPSHOT_SAVE] = {"etcd_debugging_snap_save_total_duration_seconds",
                                   "The total latency distributions of save called by snapshot.",
                                   0.001, 14},
    [METRIC_HIST_DEFRAG] = {"etcd_disk_backend_defrag_duration_seconds",
                            "The latency distribution of backend defragmentation.", 0.1, 13},
};

struct hist {
  uint64_t buckets[HIST_BUCKETS_MAX]; /* per bucket, not cumulative */
  uint64_t count;
  double sum;
};

struct counter_def {
  const char *name;
  const char *help;
};

static const struct counter_def counter_defs[METRIC_COUNTER__COUNT] = {
    [METRIC_PROPOSALS_FAILED] = {"etcd_server_proposals_failed_total",
                                 "The total number of failed proposals seen."},
    [METRIC_LEADER_CHANGES] = {"etcd_server_leader_changes_seen_total",
                               "The number of leader changes seen."},
    [METRIC_SLOW_APPLY] = {"etcd_server_slow_apply_total",
                           "The total number of slow apply requests (likely overloaded from "
                           "slow disk)."},
    [METRIC_LEASE_EXPIRED] = {"etcd_debugging_server_lease_expired_total",
                              "The total number of expired leases."},
    [METRIC_HEALTH_SUCCESS] = {"etcd_server_health_success",
                               "The total number of successful health checks"},
    [METRIC_HEALTH_FAILURES] = {"etcd_server_health_failures",
                                "The total number of failed health checks"},
    [METRIC_SNAPSHOTS_SENT] = {"cairn_maintenance_snapshots_sent_total",
                               "The total number of database snapshots sent to clients."},
    [METRIC_MVCC_RANGE] = {"etcd_mvcc_range_total", "Total number of ranges seen by this member."},
    [METRIC_MVCC_PUT] = {"etcd_mvcc_put_total", "Total number of puts seen by this member."},
    [METRIC_MVCC_DELETE] = {"etcd_mvcc_delete_total",
                            "Total number of deletes seen by this member."},
    [METRIC_MVCC_TXN] = {"etcd_mvcc_txn_total", "Total number of txns seen by this member."},
};

struct gauge_def {
  const char *name;
  const char *help;
};

static const struct gauge_def gauge_defs[METRIC_GAUGE__COUNT] = {
    [METRIC_GAUGE_PROPOSALS_PENDING] = {"etcd_server_proposals_pending",
                                        "The current number of pending proposals to commit."},
};

struct metrics {
  struct method_counts methods[METHOD_SLOTS];
  unsigned n_methods;
  uint64_t other[METRICS_CODES]; /* methods beyond METRICS_METHODS_MAX */
  struct hist hists[METRIC_HIST__COUNT];
  uint64_t counters[METRIC_COUNTER__COUNT];
  int64_t gauges[METRIC_GAUGE__COUNT];
  double start_time_s; /* wall clock at metrics_init */
};

int metrics_init(struct server *s) {
  CAIRN_ASSERT(s != NULL && s->metrics == NULL);
  for (unsigned i = 0; i < METRIC_HIST__COUNT; i++) {
    CAIRN_ASSERT(hist_defs[i].n_buckets <= HIST_BUCKETS_MAX);
  }
  struct metrics *m = calloc(1, sizeof *m);
  if (m == NULL) {
    return CAIRN_ENOMEM;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  m->start_time_s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  s->metrics = m;
  return 0;
}

void metrics_close(struct server *s) {
  if (s == NULL || s->metrics == NULL) {
    return;
  }
  for (unsigned i = 0; i < METHOD_SLOTS; i++) {
    free(s->metrics->methods[i].path);
  }
  free(s->metrics);
  s->metrics = NULL;
}

static uint32_t fnv1a(const char *str) {
  uint32_t h = 2166136261u;
  for (const unsigned char *p = (const unsigned char *)str; *p != '\0'; p++) {
    h = (h ^ *p) * 16777619u;
  }
  return h;
}

void metrics_count_request(struct metrics *m, const char *method, int code) {
  if (m == NULL || method == NULL) {
    return;
  }
  if (code < 0 || code >= METRICS_CODES) {
    code = 2; /* UNKNOWN */
  }
  uint32_t i = fnv1a(method) % METHOD_SLOTS;
  for (unsigned probes = 0; probes < METHOD_SLOTS; probes++, i = (i + 1) % METHOD_SLOTS) {
    struct method_counts *mc = &m->methods[i];
    if (mc->path != NULL && strcmp(mc->path, method) == 0) {
      mc->codes[code]++;
      return;
    }
    if (mc->path == NULL) {
      if (m->n_methods >= METRICS_METHODS_MAX) {
        break;
      }
      mc->path = strdup(method);
      if (mc->path == NULL) {
        break; /* out of memory: count it under "other" rather than fail */
      }
      m->n_methods++;
      mc->codes[code]++;
      return;
    }
  }
  m->other[code]++;
}

void metrics_observe(struct metrics *m, enum metric_hist which, double seconds) {
  if (m == NULL) {
    return;
  }
  CAIRN_ASSERT((unsigned)which < METRIC_HIST__COUNT);
  if (!(seconds > 0)) {
    seconds = 0; /* negative or NaN */
  }
  const struct hist_def *d = &hist_defs[which];
  struct hist *h = &m->hists[which];
  double bound = d->first;
  for (unsigned b = 0; b < d->n_buckets; b++, bound *= 2) {
    if (seconds <= bound) {
      h->buckets[b]++;
      break;
    }
  }
  h->count++; /* above every bound: only +Inf (count) holds it */
  h->sum += seconds;
}

void metrics_inc(struct metrics *m, enum metric_counter which) {
  if (m == NULL) {
    return;
  }
  CAIRN_ASSERT((unsigned)which < METRIC_COUNTER__COUNT);
  m->counters[which]++;
}

void metrics_add(struct metrics *m, enum metric_counter which, uint64_t n) {
  if (m == NULL) {
    return;
  }
  CAIRN_ASSERT((unsigned)which < METRIC_COUNTER__COUNT);
  m->counters[which] += n;
}

void metrics_gauge_add(struct metrics *m, enum metric_gauge which, int64_t delta) {
  if (m == NULL) {
    return;
  }
  CAIRN_ASSERT((unsigned)which < METRIC_GAUGE__COUNT);
  m->gauges[which] += delta;
  CAIRN_ASSERT(m->gauges[which] >= 0);
}

uint64_t metrics_counter(const struct metrics *m, enum metric_counter which) {
  if (m == NULL) {
    return 0;
  }
  CAIRN_ASSERT((unsigned)which < METRIC_COUNTER__COUNT);
  return m->counters[which];
}

/* ---- exposition ----------------------------------------------------------- */

struct textbuf {
  char *p;
  size_t len, cap;
  bool truncated; /* METRICS_TEXT_MAX reached */
  bool nomem;
};

/* Appends one formatted line (or a few, for HELP/TYPE headers); a line that
 * does not fit under METRICS_TEXT_MAX is dropped whole. */
__attribute__((format(printf, 2, 3))) static void tb_printf(struct textbuf *b, const char *fmt,
                                                            ...) {
  if (b->truncated || b->nomem) {
    return;
  }
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->p + b->len, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
      return;
    }
    if ((size_t)n < room) {
      b->len += (size_t)n;
      return;
    }
    /* Keep room for the truncation comment. */
    if (b->len + (size_t)n + 64 > METRICS_TEXT_MAX) {
      b->truncated = true;
      return;
    }
    size_t cap = b->cap * 2;
    while (cap < b->len + (size_t)n + 1) {
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) {
      b->nomem = true;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
}

static void tb_header(struct textbuf *b, const char *name, const char *help, const char *type) {
  tb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void tb_gauge(struct textbuf *b, const char *name, const char *help, double v) {
  tb_header(b, name, help, "gauge");
  tb_printf(b, "%s %.17g\n", name, v);
}

static void tb_gauge_u64(struct textbuf *b, const char *name, const char *help, uint64_t v) {
  tb_header(b, name, help, "gauge");
  tb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

static void tb_counter_u64(struct textbuf *b, const char *name, const char *help, uint64_t v) {
  tb_header(b, name, help, "counter");
  tb_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

/* Which kind of call a method is, for grpc_type (go-grpc-prometheus's
 * values). Only four etcd methods stream. */
static const char *method_type(const char *path) {
  static const struct {
    const char *path;
    const char *type;
  } streams[] = {
      {"/etcdserverpb.Watch/Watch", "bidi_stream"},
      {"/etcdserverpb.Lease/LeaseKeepAlive", "bidi_stream"},
      {"/etcdserverpb.Maintenance/Snapshot", "server_stream"},
      {"/grpc.health.v1.Health/Watch", "server_stream"},
  };
  for (size_t i = 0; i < sizeof streams / sizeof streams[0]; i++) {
    if (strcmp(path, streams[i].path) == 0) {
      return streams[i].type;
    }
  }
  return "unary";
}

/* Writes s with '\\', '"' and newlines escaped, as label values need. The
 * paths are registered method names, so this is only a safeguard. */
static void label_value(char *out, size_t cap, const char *s, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < n && s[i] != '\0' && o + 3 < cap; i++) {
    char c = s[i];
    if (c == '\\' || c == '"') {
      out[o++] = '\\';
      out[o++] = c;
    } else if (c == '\n') {
      out[o++] = '\\';
      out[o++] = 'n';
    } else {
      out[o++] = c;
    }
  }
  out[o] = '\0';
}

static void render_handled(struct textbuf *b, const struct metrics *m) {
  tb_header(b, "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter");
  for (unsigned i = 0; i < METHOD_SLOTS; i++) {
    const struct method_counts *mc = &m->methods[i];
    if (mc->path == NULL) {
      continue;
    }
    /* "/pkg.Service/Method" */
    const char *path = mc->path[0] == '/' ? mc->path + 1 : mc->path;
    const char *slash = strchr(path, '/');
    char service[256], method[256];
    if (slash != NULL) {
      label_value(service, sizeof service, path, (size_t)(slash - path));
      label_value(method, sizeof method, slash + 1, strlen(slash + 1));
    } else {
      label_value(service, sizeof service, "", 0);
      label_value(method, sizeof method, path, strlen(path));
    }
    for (int c = 0; c < METRICS_CODES; c++) {
      if (mc->codes[c] == 0) {
        continue;
      }
      tb_printf(b,
                "grpc_server_handled_total{grpc_code=\"%s\",grpc_method=\"%s\","
                "grpc_service=\"%s\",grpc_type=\"%s\"} %llu\n",
                code_names[c], method, service, method_type(mc->path),
                (unsigned long long)mc->codes[c]);
    }
  }
  for (int c = 0; c < METRICS_CODES; c++) {
    if (m->other[c] != 0) {
      tb_printf(b,
                "grpc_server_handled_total{grpc_code=\"%s\",grpc_method=\"other\","
                "grpc_service=\"other\",grpc_type=\"unary\"} %llu\n",
                code_names[c], (unsigned long long)m->other[c]);
    }
  }
}

static void render_hist(struct textbuf *b, const struct metrics *m, enum metric_hist which) {
  const struct hist_def *d = &hist_defs[which];
  const struct hist *h = &m->hists[which];
  tb_header(b, d->name, d->help, "histogram");
  uint64_t cumulative = 0;
  double bound = d->first;
  for (unsigned i = 0; i < d->n_buckets; i++, bound *= 2) {
    cumulative += h->buckets[i];
    /* %.6g prints every bound of these series exactly as Go does
     * ("0.001", "8.192", "52.4288"). */
    tb_printf(b, "%s_bucket{le=\"%.6g\"} %llu\n", d->name, bound, (unsigned long long)cumulative);
  }
  tb_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", d->name, (unsigned long long)h->count);
  tb_printf(b, "%s_sum %.17g\n", d->name, h->sum);
  tb_printf(b, "%s_count %llu\n", d->name, (unsigned long long)h->count);
}

/* Process metrics, as Prometheus's Go client exports them. Reads /proc of
 * this process only (no disk I/O). */
static void render_process(struct textbuf *b, const struct metrics *m) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    tb_header(b, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
              "counter");
    tb_printf(b, "process_cpu_seconds_total %.6f\n", cpu);
  }
  FILE *f = fopen("/proc/self/statm", "r");
  if (f != NULL) {
    unsigned long long vm_pages = 0, rss_pages = 0;
    if (fscanf(f, "%llu %llu", &vm_pages, &rss_pages) == 2) {
      double page = (double)sysconf(_SC_PAGESIZE);
      tb_gauge(b, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
               (double)vm_pages * page);
      tb_gauge(b, "process_resident_memory_bytes", "Resident memory size in bytes.",
               (double)rss_pages * page);
    }
    fclose(f);
  }
  uint64_t fds = 0;
  DIR *d = opendir("/proc/self/fd");
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] != '.') {
        fds++;
      }
    }
    closedir(d);
    if (fds > 0) {
      fds--; /* the directory stream's own descriptor */
    }
    tb_gauge_u64(b, "process_open_fds", "Number of open file descriptors.", fds);
    tb_gauge_u64(b, "os_fd_used", "The number of used file descriptors.", fds);
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    tb_gauge_u64(b, "process_max_fds", "Maximum number of open file descriptors.",
                 (uint64_t)rl.rlim_cur);
    tb_gauge_u64(b, "os_fd_limit", "The file descriptor limit.", (uint64_t)rl.rlim_cur);
  }
  tb_gauge(b, "process_start_time_seconds",
           "Start time of the process since unix epoch in seconds.", m->start_time_s);
}

int metrics_render(struct server *s, char **out, size_t *len) {
  struct textbuf b = {.cap = 16384};
  b.p = malloc(b.cap);
  if (b.p == NULL) {
    return CAIRN_ENOMEM;
  }
  b.p[0] = '\0';
  static const struct metrics empty; /* a server without metrics renders zeros */
  const struct metrics *m = s->metrics != NULL ? s->metrics : &empty;

  /* Raft and membership. */
  struct raftnode_status rs = {0};
  if (s->raft != NULL) {
    raftnode_status(s->raft, &rs);
  }
  tb_gauge_u64(&b, "etcd_server_has_leader",
               "Whether or not a leader exists. 1 is existence, 0 is not.", rs.leader_id != 0);
  tb_gauge_u64(&b, "etcd_server_is_leader",
               "Whether or not this member is a leader. 1 if is, 0 otherwise.", rs.is_leader);
  tb_gauge_u64(&b, "etcd_server_is_learner",
               "Whether or not this member is a learner. 1 if is, 0 otherwise.", 0);
  tb_header(&b, "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' "
            "label with current ID.",
            "gauge");
  tb_printf(&b, "etcd_server_id{server_id=\"%llx\"} 1\n", (unsigned long long)rs.member_id);
  tb_header(&b, "etcd_server_version",
            "Which version is running. 1 for 'server_version' label "
            "with current version.",
            "gauge");
  tb_printf(&b, "etcd_server_version{server_version=\"%s\"} 1\n", CAIRN_ETCD_VERSION);
  tb_header(&b, "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' "
            "label with current cluster version",
            "gauge");
  tb_printf(&b, "etcd_cluster_version{cluster_version=\"3.4\"} 1\n");
  tb_header(&b, "cairn_server_version",
            "Which Cairn version is running. 1 for 'version' label "
            "with current version.",
            "gauge");
  tb_printf(&b, "cairn_server_version{version=\"%s\"} 1\n", CAIRN_VERSION);
  /* etcd counts proposals; with every write one raft entry, the raft
   * indexes are the same figures (etcd's own gauges are set from them). */
  tb_gauge_u64(&b, "etcd_server_proposals_committed_total",
               "The total number of consensus proposals committed.", rs.commit_index);
  tb_gauge_u64(&b, "etcd_server_proposals_applied_total",
               "The total number of consensus proposals applied.", rs.applied_index);
  tb_gauge_u64(
      &b, "etcd_server_quota_backend_bytes",
      "Current backend storage quota size in "
      "bytes.",
      s->cfg.quota_backend_bytes != 0 ? s->cfg.quota_backend_bytes : MVCC_QUOTA_BYTES_DEFAULT);
  tb_gauge_u64(&b, "cairn_server_alarm_nospace",
               "Whether the NOSPACE alarm is raised. 1 if it is, 0 otherwise.", s->alarm_nospace);
  for (unsigned i = 0; i < METRIC_COUNTER__COUNT; i++) {
    tb_counter_u64(&b, counter_defs[i].name, counter_defs[i].help, m->counters[i]);
  }
  for (unsigned i = 0; i < METRIC_GAUGE__COUNT; i++) {
    tb_gauge_u64(&b, gauge_defs[i].name, gauge_defs[i].help, (uint64_t)m->gauges[i]);
  }

  /* Store. */
  if (s->store != NULL) {
    uint64_t db_size = 0, in_use = 0;
    if (mvcc_size(s->store, &db_size, &in_use) == 0) {
      tb_gauge_u64(&b, "etcd_mvcc_db_total_size_in_bytes",
                   "Total size of the underlying database physically allocated in bytes.", db_size);
      tb_gauge_u64(&b, "etcd_mvcc_db_total_size_in_use_in_bytes",
                   "Total size of the underlying database logically in use in bytes.",
                   in_use < db_size ? in_use : db_size);
    }
    tb_gauge(&b, "etcd_debugging_mvcc_current_revision", "The current revision of store.",
             (double)mvcc_current_revision(s->store));
    tb_gauge(&b, "etcd_debugging_mvcc_compact_revision",
             "The revision of the last compaction in store.",
             (double)mvcc_compacted_revision(s->store));
    tb_gauge_u64(&b, "cairn_storage_map_exact",
                 "1 if a read of the data file maps only the page it reads (fault-around off).",
                 mvcc_map_exact(s->store) ? 1 : 0);
    tb_counter_u64(&b, "cairn_storage_map_releases_total",
                   "Times the store dropped (part of) its mapping of the data file.",
                   mvcc_map_releases(s->store));
    tb_counter_u64(&b, "cairn_storage_map_unmapped_pages_total",
                   "Pages of finished history leaves unmapped after commits.",
                   mvcc_map_unmapped(s->store));
  }

  /* Watchers and leases. */
  if (s->watch != NULL) {
    uint64_t watchers = 0, streams = 0, slow = 0;
    watch_hub_stats(s->watch, &watchers, &streams, &slow);
    tb_gauge_u64(&b, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", watchers);
    tb_gauge_u64(&b, "etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.",
                 streams);
    tb_gauge_u64(&b, "etcd_debugging_mvcc_slow_watcher_total",
                 "Total number of unsynced slow watchers.", slow);
  }
  if (s->lessor != NULL) {
    uint64_t leases = 0;
    lessor_stats(s->lessor, &leases);
    tb_gauge_u64(&b, "cairn_lease_total", "Leases this member knows.", leases);
  }

  /* Histograms. */
  for (unsigned i = 0; i < METRIC_HIST__COUNT; i++) {
    render_hist(&b, m, (enum metric_hist)i);
  }

  /* gRPC. */
  render_handled(&b, m);
  if (s->grpc != NULL) {
    struct grpc_server_stats gs = {0};
    grpc_server_stats(s->grpc, &gs);
    tb_gauge_u64(&b, "cairn_grpc_server_connections", "Client connections open.", gs.connections);
    tb_gauge_u64(&b, "cairn_grpc_server_streams", "HTTP/2 streams open.", gs.streams_open);
    tb_counter_u64(&b, "cairn_grpc_server_calls_total", "gRPC calls started.", gs.calls_total);
  }

  render_process(&b, m);

  if (b.nomem) {
    free(b.p);
    return CAIRN_ENOMEM;
  }
  if (b.truncated) {
    b.truncated = false;
    tb_printf(&b, "# truncated at %u bytes\n", METRICS_TEXT_MAX);
  }
  *out = b.p;
  *len = b.len;
  return 0;
}
