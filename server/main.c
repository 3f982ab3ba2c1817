/* server/main.c: the cairn daemon: configuration, start-up, checkpoints,
 * auto-compaction and shutdown. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/cairn_assert.h"
#include "server/lessor.h"
#include "server/metrics.h"
#include "server/publish.h"
#include "server/forward.h"
#include "server/server.h"
#include "server/snapshot_fetch.h"
#include "server/watch_hub.h"
#include "storage/checkpoint.h"

/* The store is synced (a checkpoint) this often, so that the raft log behind
 * it can be truncated and a machine crash loses at most this much of the
 * store's own state (never acknowledged writes: those are in the raft log). */
#define CHECKPOINT_INTERVAL_MS 1000u

/* Periodic auto-compaction keeps this many revision samples. */
#define COMPACTION_SAMPLES 11u

static struct server srv;
static uv_signal_t sig_term, sig_int;
static uv_timer_t checkpoint_timer, compaction_timer;
static bool checkpoint_running;
static uint64_t checkpoint_started_ns;

struct compaction_sample {
  uint64_t at_ms;
  int64_t revision;
};
static struct compaction_sample samples[COMPACTION_SAMPLES];
static size_t n_samples;

static int mkdir_p(const char *path) {
  char buf[1200];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
        return -1;
      }
      *p = '/';
    }
  }
  return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

/* Lease ops applied here, whoever proposed them: the leader's lessor must
 * know of grants, revocations and renewals from every member. */
static void on_op_applied(void *data, const struct mvcc_op *op, const struct mvcc_result *r) {
  (void)data;
  if (srv.lessor != NULL &&
      (op->type == MVCC_OP_LEASE_GRANT || op->type == MVCC_OP_LEASE_REVOKE ||
       op->type == MVCC_OP_LEASE_CHECKPOINT)) {
    lessor_applied(srv.lessor, op, r);
  }
}

/* A batch was answered before its commit (raft/fsm.h): send the answers
 * now, so that they travel while the commit runs. */
static void on_answered(void *data) {
  (void)data;
  grpc_server_flush(srv.grpc);
}

static void on_apply_time(void *data, double seconds) {
  (void)data;
  metrics_observe(srv.metrics, METRIC_HIST_APPLY, seconds);
}

static void on_raft_append(void *data, double seconds) {
  (void)data;
  metrics_observe(srv.metrics, METRIC_HIST_WAL_FSYNC, seconds);
}

static void on_checkpoint(void *data, int status, uint64_t index, int64_t revision) {
  (void)data;
  checkpoint_running = false;
  metrics_observe(srv.metrics, METRIC_HIST_BACKEND_COMMIT,
                  (double)(uv_hrtime() - checkpoint_started_ns) / 1e9);
  if (status != 0) {
    server_log(LOG_ERROR, "checkpoint failed: %s", cairn_strerror(status));
    return;
  }
  server_log(LOG_DEBUG, "checkpoint: applied index %llu, revision %lld durable",
             (unsigned long long)index, (long long)revision);
}

static void on_checkpoint_timer(uv_timer_t *t) {
  (void)t;
  if (checkpoint_running || srv.stopping) {
    return;
  }
  checkpoint_started_ns = uv_hrtime();
  if (checkpoint_start(srv.store, srv.fio, NULL, on_checkpoint) == 0) {
    checkpoint_running = true;
  }
}

static void on_auto_compacted(struct server *s, void *data, int status, struct mvcc_result *r) {
  (void)data;
  if (status == 0 && r->err == 0) {
    server_log(LOG_INFO, "auto compaction: compacted to revision %lld",
               (long long)mvcc_compacted_revision(s->store));
    server_compaction_kick(s);
  }
  if (r != NULL) {
    mvcc_result_free(r);
  }
}

static void auto_compact_to(int64_t rev) {
  if (rev <= mvcc_compacted_revision(srv.store) || rev > mvcc_current_revision(srv.store)) {
    return;
  }
  struct raftnode_status st;
  raftnode_status(srv.raft, &st);
  if (!st.is_leader) {
    return;
  }
  struct mvcc_op op = {.type = MVCC_OP_COMPACT, .u.compact_revision = rev};
  server_propose(&srv, &op, NULL, on_auto_compacted);
}

/* periodic: every retention/10, sample the revision; compact to the revision
 * seen one retention ago. revision: every 5 minutes, keep the last
 * `retention` revisions. (etcd 3.4's rules.) */
static void on_compaction_timer(uv_timer_t *t) {
  (void)t;
  uint64_t now = uv_now(srv.loop);
  int64_t rev = mvcc_current_revision(srv.store);
  if (srv.cfg.auto_compaction_mode == COMPACTION_REVISION) {
    auto_compact_to(rev - (int64_t)srv.cfg.auto_compaction_retention);
    return;
  }
  uint64_t retention_ms = srv.cfg.auto_compaction_retention * 1000u;
  if (n_samples == COMPACTION_SAMPLES) {
    memmove(samples, samples + 1, (COMPACTION_SAMPLES - 1) * sizeof samples[0]);
    n_samples--;
  }
  samples[n_samples++] = (struct compaction_sample){now, rev};
  int64_t target = 0;
  for (size_t i = 0; i < n_samples; i++) {
    if (now - samples[i].at_ms >= retention_ms) {
      target = samples[i].revision;
    }
  }
  if (target > 0) {
    auto_compact_to(target);
  }
}

static void on_closed_all(void *data) {
  (void)data;
  uv_stop(srv.loop);
}

/* Shutdown order: the gRPC server (no new calls), the maintenance service
 * (exports reading the store), the lessor and the watch hub (they hold
 * listeners on raft), raft (in-flight proposals answered), file I/O
 * (checkpoints), then the store. */
static void on_raft_stopped(void *data) {
  (void)data;
  fileio_close(srv.fio, on_closed_all, NULL);
}

static void on_maintenance_stopped(void *data) {
  (void)data;
  raftnode_on_op_applied(srv.raft, NULL, NULL);
  lessor_close(srv.lessor);
  srv.lessor = NULL;
  watch_hub_close(srv.watch);
  srv.watch = NULL;
  raftnode_stop(srv.raft, on_raft_stopped, NULL);
}

static void on_fetch_stopped(void *data) {
  (void)data;
  maintenance_service_stop(&srv, on_maintenance_stopped, NULL);
}

static void on_forward_closed(void *data) {
  (void)data;
  snapshot_fetch_stop(&srv, on_fetch_stopped, NULL); /* a store transfer in progress */
}

static void on_grpc_closed(void *data) {
  (void)data;
  raftnode_on_answered(srv.raft, NULL, NULL); /* the gRPC server is gone */
  forward_close(&srv, on_forward_closed, NULL);
}

/* How often a starting member looks whether it is published. */
#define READY_CHECK_MS 20u
static uv_timer_t ready_timer;

static void shut_down(void) {
  srv.stopping = true;
  uv_timer_stop(&ready_timer);
  uv_close((uv_handle_t *)&ready_timer, NULL);
  publish_stop(&srv);
  uv_timer_stop(&checkpoint_timer);
  uv_timer_stop(&compaction_timer);
  uv_signal_stop(&sig_term);
  uv_signal_stop(&sig_int);
  grpc_server_shutdown(srv.grpc, 5000, on_grpc_closed, NULL);
  /* Watches and keep-alives end now (clients move to another member) rather
   * than hold their connections until the timeout. */
  grpc_server_end_streams(srv.grpc, cairn_grpc_code(CAIRN_ESTOPPED), cairn_strerror(CAIRN_ESTOPPED));
}

static void on_handed_off(void *data) {
  (void)data;
  shut_down();
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  if (srv.stopping) {
    return;
  }
  server_log(LOG_INFO, "received %s signal, shutting down", signum == SIGTERM ? "terminated" : "interrupt");
  srv.stopping = true;
  forward_handoff(&srv, on_handed_off, NULL); /* a leader hands leadership on first */
}

/* As etcd: a member removed from the cluster stops (its pending calls are
 * answered as in any graceful stop). */
static void on_removed(void *data) {
  (void)data;
  if (srv.stopping) {
    return;
  }
  server_log(LOG_WARN, "the member has been permanently removed from the cluster; shutting down");
  shut_down();
}

static void on_ready_check(uv_timer_t *t) {
  if (srv.stopping) {
    uv_timer_stop(t);
    return;
  }
  if (!raftnode_self_published(srv.raft)) {
    return;
  }
  uv_timer_stop(t);
  grpc_server_set_accepting(srv.grpc, true);
  server_log(LOG_INFO, "ready to serve client requests");
}

static int start(void) {
  struct config *c = &srv.cfg;
  char store_dir[1100], member_dir[1100];
  snprintf(member_dir, sizeof member_dir, "%s/member", c->data_dir);
  snprintf(store_dir, sizeof store_dir, "%s/member/store", c->data_dir);
  if (mkdir_p(member_dir) != 0) {
    server_log(LOG_ERROR, "cannot create data directory %s: %s", member_dir, strerror(errno));
    return 1;
  }
  struct mvcc_options so = {.quota_bytes = c->quota_backend_bytes,
                            .max_txn_ops = c->max_txn_ops,
                            .max_value_bytes = (uint32_t)c->max_request_bytes};
  int rc = mvcc_open(store_dir, &so, &srv.store);
  if (rc != 0) {
    server_log(LOG_ERROR, "cannot open the store in %s: %s", store_dir, cairn_strerror(rc));
    return 1;
  }
  server_log(LOG_INFO, "opened the store in %s at revision %lld, applied index %llu", store_dir,
             (long long)mvcc_current_revision(srv.store),
             (unsigned long long)mvcc_applied_index(srv.store));
  if ((rc = fileio_init(srv.loop, 0, &srv.fio)) != 0) {
    server_log(LOG_ERROR, "cannot start file I/O: %s", cairn_strerror(rc));
    return 1;
  }
  struct raftnode_member members[CONFIG_MEMBERS_MAX];
  for (size_t i = 0; i < c->n_initial_cluster; i++) {
    members[i].name = c->initial_cluster[i].name;
    members[i].peer_url = c->initial_cluster[i].peer_url;
  }
  /* --advertise-client-urls, published in the member table. */
  char client_buf[sizeof c->advertise_client_urls];
  snprintf(client_buf, sizeof client_buf, "%s", c->advertise_client_urls);
  const char *client_urls[CONFIG_URLS_MAX];
  size_t n_client_urls = 0;
  char *save = NULL;
  for (char *tok = strtok_r(client_buf, ",", &save); tok != NULL && n_client_urls < CONFIG_URLS_MAX;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') {
      tok++;
    }
    if (*tok != 0) {
      client_urls[n_client_urls++] = tok;
    }
  }
  struct raftnode_options ro = {.name = c->name,
                                .client_urls = client_urls,
                                .n_client_urls = n_client_urls,
                                .data_dir = member_dir,
                                .initial_cluster = members,
                                .n_initial_cluster = c->n_initial_cluster,
                                .cluster_token = c->initial_cluster_token,
                                .new_cluster = c->initial_cluster_new,
                                .heartbeat_ms = c->heartbeat_ms,
                                .election_ms = c->election_ms,
                                .snapshot_count = c->snapshot_count};
  if ((rc = raftnode_start(srv.loop, srv.store, &ro, &srv.raft)) != 0) {
    server_log(LOG_ERROR, "cannot start raft: %s", cairn_strerror(rc));
    return 1;
  }
  raftnode_on_append(srv.raft, on_raft_append, NULL);
  raftnode_on_op_applied(srv.raft, on_op_applied, NULL);
  raftnode_on_apply_time(srv.raft, on_apply_time, NULL);
  raftnode_on_removed(srv.raft, on_removed, NULL);
  /* A follower records its name and client URLs through the leader. */
  if ((rc = publish_init(&srv)) != 0) {
    server_log(LOG_ERROR, "cannot start publishing: %s", cairn_strerror(rc));
    return 1;
  }
  /* etcd receives up to max-request-bytes + 512 KiB of gRPC message. */
  struct grpc_server_options go = {.max_recv_message_bytes = c->max_request_bytes + 512u * 1024u};
  if ((rc = grpc_server_init(srv.loop, &go, &srv.grpc)) != 0) {
    server_log(LOG_ERROR, "cannot start the gRPC server: %s", cairn_strerror(rc));
    return 1;
  }
  raftnode_on_answered(srv.raft, on_answered, NULL);

  if ((rc = metrics_init(&srv)) != 0 || (rc = kv_service_init(&srv)) != 0 ||
      (rc = watch_service_init(&srv)) != 0 || (rc = lease_service_init(&srv)) != 0 ||
      (rc = maintenance_service_init(&srv)) != 0 || (rc = cluster_service_init(&srv)) != 0 ||
      (rc = auth_service_init(&srv)) != 0 || (rc = health_service_init(&srv)) != 0 ||
      (rc = http_endpoints_init(&srv)) != 0 || (rc = forward_init(&srv)) != 0) {
    server_log(LOG_ERROR, "cannot start the services: %s", cairn_strerror(rc));
    return 1;
  }
  /* A store behind raft's snapshot is fetched from another member. */
  if ((rc = snapshot_fetch_init(&srv)) != 0) {
    server_log(LOG_ERROR, "cannot start the store fetch: %s", cairn_strerror(rc));
    return 1;
  }
  /* As etcd: the ports are bound now, but clients are served once this
   * member's name and client URLs are in the replicated member table, so
   * that every member that answers is listed with its URLs. */
  grpc_server_set_accepting(srv.grpc, false);
  for (size_t i = 0; i < c->n_listen_client; i++) {
    struct config_url *u = &c->listen_client[i];
    struct grpc_tls_options tls = {.cert_file = c->cert_file,
                                   .key_file = c->key_file,
                                   .trusted_ca_file = c->trusted_ca_file[0] ? c->trusted_ca_file
                                                                            : NULL,
                                   .client_cert_auth = c->client_cert_auth};
    bool https = strcmp(u->scheme, "https") == 0;
    rc = grpc_server_listen(srv.grpc, u->host, u->port, https ? &tls : NULL);
    if (rc != 0) {
      server_log(LOG_ERROR, "cannot listen on %s://%s:%d: %s", u->scheme, u->host, u->port,
                 cairn_strerror(rc));
      return 1;
    }
    server_log(LOG_INFO, "serving client traffic on %s://%s:%d", u->scheme, u->host,
               grpc_server_port(srv.grpc));
  }
  uv_timer_init(srv.loop, &checkpoint_timer);
  uv_timer_start(&checkpoint_timer, on_checkpoint_timer, CHECKPOINT_INTERVAL_MS,
                 CHECKPOINT_INTERVAL_MS);
  uv_timer_init(srv.loop, &compaction_timer);
  if (c->auto_compaction_retention > 0) {
    /* Revision mode checks every 5 minutes, as etcd; CAIRN_COMPACTION_CHECK_MS
     * shortens that for tests. */
    const char *check = getenv("CAIRN_COMPACTION_CHECK_MS");
    uint64_t every = c->auto_compaction_mode == COMPACTION_REVISION
                         ? (check ? strtoull(check, NULL, 10) : 5u * 60u * 1000u)
                         : c->auto_compaction_retention * 1000u / 10u;
    if (every == 0) {
      every = 100;
    }
    uv_timer_start(&compaction_timer, on_compaction_timer, every, every);
  }
  uv_signal_init(srv.loop, &sig_term);
  uv_signal_init(srv.loop, &sig_int);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_timer_init(srv.loop, &ready_timer);
  uv_timer_start(&ready_timer, on_ready_check, 0, READY_CHECK_MS);
  return 0;
}

/* The heap's bounds for glibc (see main). */
#define MALLOC_TRIM_BYTES (32 * 1024 * 1024)
#define MALLOC_MMAP_BYTES (4 * 1024 * 1024)

int main(int argc, char **argv) {
  switch (config_parse(&srv.cfg, argc, argv)) {
    case CONFIG_EXIT_OK:
      return 0;
    case CONFIG_ERROR:
      return 2;
    case CONFIG_OK:
      break;
  }
  server_log_set_level(srv.cfg.log_level);
  /* Neither raft nor libuv ignores SIGPIPE: a peer that goes away must not
   * kill the member. */
  signal(SIGPIPE, SIG_IGN);
  /* Write buffers and watch responses come and go by the megabyte: with
   * glibc's defaults (trim above 128 KiB, mmap above a threshold that
   * moves) the heap shrank and regrew under every burst, and page faults
   * and TLB shootdowns took a fifth of the loop (perf, watch fan-out). Keep
   * up to MALLOC_TRIM_BYTES free at the top of the heap; peak RSS is the
   * same either way. */
  mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES);
  mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES);
  srv.loop = uv_default_loop();
  server_log(LOG_INFO, "starting cairn %s (etcd API %s) as member %s, data in %s", CAIRN_VERSION,
             CAIRN_ETCD_VERSION, srv.cfg.name, srv.cfg.data_dir);
  if (start() != 0) {
    return 1;
  }
  uv_run(srv.loop, UV_RUN_DEFAULT);
  mvcc_close(srv.store);
  metrics_close(&srv);
  server_log(LOG_INFO, "stopped");
  return 0;
}
