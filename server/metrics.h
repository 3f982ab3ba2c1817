/* server/metrics.h: the daemon's counters and histograms, and their
 * Prometheus text exposition for GET /metrics.
 *
 * Names follow etcd's where etcd has the metric (etcd_server_has_leader,
 * etcd_disk_wal_fsync_duration_seconds, grpc_server_handled_total...), so
 * that etcd dashboards and alerts work unchanged; see docs/operations.md for
 * the list and what each one measures in Cairn.
 *
 * Who records what: services count each finished gRPC call with
 * metrics_count_request(); the raft glue observes its log fsyncs
 * (METRIC_HIST_WAL_FSYNC) and applies (METRIC_HIST_APPLY); checkpoints
 * observe the data file's fsync (METRIC_HIST_BACKEND_COMMIT). Gauges (leader,
 * sizes, revisions, watchers, leases) are not recorded: metrics_render()
 * reads them from the server's modules when /metrics is asked.
 *
 * Threading: the loop thread only (no locks: every caller runs there).
 * Every recording function accepts a NULL struct metrics and does nothing,
 * so modules and tests that run without metrics need no checks. */
#ifndef CAIRN_METRICS_H
#define CAIRN_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct server;
struct metrics;

/* Histograms, each exposed with etcd's name and buckets. */
enum metric_hist {
  /* etcd_disk_wal_fsync_duration_seconds: one fsync of the raft log.
   * Buckets 1 ms .. 8.192 s (x2), as etcd. */
  METRIC_HIST_WAL_FSYNC = 0,
  /* etcd_disk_backend_commit_duration_seconds: making the store durable
   * (a checkpoint's data fsync: Cairn commits with MDB_NOSYNC, so this is the
   * step that costs what bolt's commit costs in etcd). 1 ms .. 8.192 s. */
  METRIC_HIST_BACKEND_COMMIT,
  /* etcd_server_apply_duration_seconds: applying one committed batch of raft
   * entries into the store. Buckets 100 us .. 52 s (x2), as etcd 3.5 (3.4
   * has no apply histogram; the name is 3.5's, without its labels). */
  METRIC_HIST_APPLY,
  /* etcd_debugging_snap_save_total_duration_seconds: writing a raft
   * snapshot (store export). Buckets 1 ms .. 8.192 s. */
  METRIC_HIST_SNAPSHOT_SAVE,
  /* etcd_disk_backend_defrag_duration_seconds: one defragmentation.
   * Buckets 100 ms .. 409.6 s (x2), as etcd. */
  METRIC_HIST_DEFRAG,
  METRIC_HIST__COUNT
};

/* Plain counters (monotonic), with etcd's names. */
enum metric_counter {
  METRIC_PROPOSALS_FAILED = 0, /* etcd_server_proposals_failed_total */
  METRIC_LEADER_CHANGES,       /* etcd_server_leader_changes_seen_total */
  METRIC_SLOW_APPLY,           /* etcd_server_slow_apply_total (apply > 100 ms) */
  METRIC_LEASE_EXPIRED,        /* etcd_debugging_server_lease_expired_total */
  METRIC_HEALTH_SUCCESS,       /* etcd_server_health_success (GET /health) */
  METRIC_HEALTH_FAILURES,      /* etcd_server_health_failures */
  METRIC_SNAPSHOTS_SENT,       /* cairn_maintenance_snapshots_sent_total */
  /* Store operations, as etcd counts them in its store: each put and
   * delete (a txn's included), each range, each txn. The apply path or the
   * KV service counts them (metrics_add for a txn's ops). */
  METRIC_MVCC_RANGE,  /* etcd_mvcc_range_total */
  METRIC_MVCC_PUT,    /* etcd_mvcc_put_total */
  METRIC_MVCC_DELETE, /* etcd_mvcc_delete_total */
  METRIC_MVCC_TXN,    /* etcd_mvcc_txn_total */
  METRIC_COUNTER__COUNT
};

/* Gauges that modules keep up to date (the others are read at render). */
enum metric_gauge {
  /* etcd_server_proposals_pending: proposals made and not yet called back
   * (server_propose: +1 on a 0 return, -1 in the callback). */
  METRIC_GAUGE_PROPOSALS_PENDING = 0,
  METRIC_GAUGE__COUNT
};

/* Distinct gRPC methods counted; a method beyond the bound is counted under
 * grpc_method="other" (every registered etcd method fits: there are ~60). */
#define METRICS_METHODS_MAX 128u

/* The exposition text is at most this long; beyond it metrics_render()
 * stops at a whole line and ends with a comment saying so. */
#define METRICS_TEXT_MAX (1024u * 1024u)

/* Creates s->metrics (zeroed counters; the process start time is taken
 * now). Call before the services' init functions. Errors: CAIRN_ENOMEM. */
int metrics_init(struct server *s);

/* Frees s->metrics and sets it to NULL. NULL-safe. */
void metrics_close(struct server *s);

/* Counts one finished gRPC call: method is its path as registered
 * ("/etcdserverpb.KV/Range"; copied the first time it is seen), code its
 * gRPC status (0..16; anything else counts as 2 UNKNOWN). Exposed as
 * grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}. */
void metrics_count_request(struct metrics *m, const char *method, int code);

/* Adds one observation of seconds (negative values count as 0) to a
 * histogram. */
void metrics_observe(struct metrics *m, enum metric_hist which, double seconds);

/* Adds 1 (metrics_inc) or n to a counter. */
void metrics_inc(struct metrics *m, enum metric_counter which);
void metrics_add(struct metrics *m, enum metric_counter which, uint64_t n);

/* Moves a gauge by delta (a gauge never goes below 0: asserted). */
void metrics_gauge_add(struct metrics *m, enum metric_gauge which, int64_t delta);

/* The current value of a counter (for tests and logs). */
uint64_t metrics_counter(const struct metrics *m, enum metric_counter which);

/* The Prometheus text exposition (format 0.0.4) of everything: the counters
 * and histograms above and the gauges read from s (raft status, store size
 * and revisions, alarms, watch hub, lessor, gRPC server, process). *out is
 * malloc'd, NUL-terminated, owned by the caller (free()); *len excludes the
 * NUL. Errors: CAIRN_ENOMEM. */
int metrics_render(struct server *s, char **out, size_t *len);

#endif
