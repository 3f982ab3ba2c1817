/* bench/cairn_bench/lease_load.c: the lease workload.
 *
 * Measured request: LeaseGrant with --lease-ttl, through the runner (the
 * "latency_us" histogram). Meanwhile, --keepalives N leases granted
 * beforehand (not measured) are kept alive over one LeaseKeepAlive stream
 * per connection, the leases spread over the streams round robin. Each
 * stream has one keep-alive in flight at a time and cycles through its
 * leases: the "keepalive" histogram is the time from handing a
 * LeaseKeepAliveRequest to the stream until the response with that lease
 * ID arrived, for the round trips that started during the grant phase. A
 * response with TTL <= 0 (the lease is gone) counts as a keep-alive error.
 *
 * Afterwards every lease the run granted (up to LEASE_REVOKE_MAX) is
 * revoked, not measured, so that consecutive runs do not leave the server
 * expiring thousands of leases; any beyond that expire after --lease-ttl. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rpc.pb-c.h"

#define LEASE_REVOKE_MAX (1u << 20)
#define PATH_GRANT "/etcdserverpb.Lease/LeaseGrant"
#define PATH_REVOKE "/etcdserverpb.Lease/LeaseRevoke"
#define PATH_KEEPALIVE "/etcdserverpb.Lease/LeaseKeepAlive"

struct kstream {
  struct leaseload *l;
  grpc_ccall *call; /* NULL once done */
  unsigned first;   /* its leases: first, first + conns, ... below keepalives */
  unsigned next;    /* the lease whose keep-alive is in flight */
  uint64_t sent_ns;
  bool measured; /* the round trip in flight started in the grant phase */
};

struct leaseload {
  struct bench *b;
  int64_t *ids; /* the leases granted: the kept-alive ones, then the measured grants */
  uint64_t n_ids, cap_ids;
  struct kstream *streams;
  unsigned n_streams, streams_open;
  bool stop; /* no more keep-alives */
  bool all_closed;
};

static void grant_done(void *data, int status, const char *message, const uint8_t *resp,
                       size_t len) {
  struct bench_slot *s = data;
  struct leaseload *l = s->b->workload_state;
  if (status == GRPC_OK) {
    Etcdserverpb__LeaseGrantResponse *r = (Etcdserverpb__LeaseGrantResponse *)bench_unpack(
        s->b, &etcdserverpb__lease_grant_response__descriptor, resp, len);
    if (!r) {
      bench_slot_done(s, GRPC_INTERNAL, "cannot decode LeaseGrantResponse");
      return;
    }
    int64_t id = r->id;
    bool refused = r->error && r->error[0];
    if (refused) {
      bench_error(s->b, "lease grant", GRPC_UNKNOWN, r->error);
    }
    bench_unpacked_free(s->b, &r->base);
    if (refused || id == 0) {
      bench_slot_done(s, GRPC_UNKNOWN, "lease grant: no lease");
      return;
    }
    if (l->n_ids < l->cap_ids) {
      l->ids[l->n_ids++] = id;
    }
  }
  bench_slot_done(s, status, message);
}

static int issue_grant(struct bench_slot *s) {
  struct bench *b = s->b;
  Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
  req.ttl = b->cfg.lease_ttl;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  return grpc_client_unary(s->conn, PATH_GRANT, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           grant_done, s);
}

static void revoke_done(void *data, int status, const char *message, const uint8_t *resp,
                        size_t len) {
  (void)resp;
  (void)len;
  bench_slot_done(data, status, message);
}

static int issue_revoke(struct bench_slot *s) {
  struct bench *b = s->b;
  struct leaseload *l = b->workload_state;
  Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
  req.id = l->ids[s->seq];
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  return grpc_client_unary(s->conn, PATH_REVOKE, NULL, 0, b->cfg.timeout_ms, msg, len, NULL,
                           revoke_done, s);
}

/* ---- keep-alive streams ---- */

static int ka_send(struct kstream *st) {
  struct bench *b = st->l->b;
  Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
  req.id = st->l->ids[st->next];
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc < 0) {
    return rc;
  }
  st->sent_ns = bench_now_ns();
  st->measured = b->phase && b->phase->measured;
  return grpc_ccall_send(st->call, msg, len);
}

static void ka_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  struct kstream *st = data;
  struct leaseload *l = st->l;
  struct bench *b = l->b;
  uint64_t now = bench_now_ns();
  Etcdserverpb__LeaseKeepAliveResponse *r = (Etcdserverpb__LeaseKeepAliveResponse *)bench_unpack(
      b, &etcdserverpb__lease_keep_alive_response__descriptor, msg, len);
  if (!r) {
    bench_error(b, "lease keep-alive", GRPC_INTERNAL, "cannot decode LeaseKeepAliveResponse");
    b->keepalive_errors++;
    grpc_ccall_cancel(call);
    return;
  }
  bool ours = r->id == l->ids[st->next];
  bool alive = r->ttl > 0;
  bench_unpacked_free(b, &r->base);
  if (!ours) {
    return; /* not the one in flight: ignore */
  }
  if (st->measured) {
    if (alive) {
      hist_record(&b->lat_keepalive, now - st->sent_ns);
    } else {
      b->keepalive_errors++;
      bench_error(b, "lease keep-alive", GRPC_NOT_FOUND, "lease not found (TTL <= 0)");
    }
  }
  if (l->stop) {
    return;
  }
  st->next += l->n_streams;
  if (st->next >= b->cfg.keepalives) {
    st->next = st->first;
  }
  int rc = ka_send(st);
  if (rc < 0) {
    bench_error(b, "lease keep-alive", cairn_grpc_code(rc), cairn_strerror(rc));
    b->keepalive_errors++;
    grpc_ccall_cancel(call);
  }
}

static void ka_done(grpc_ccall *call, int status, const char *message, void *data) {
  struct kstream *st = data;
  struct leaseload *l = st->l;
  (void)call;
  st->call = NULL;
  if (!l->stop) {
    bench_error(l->b, "lease keep-alive stream", status, message);
    l->b->keepalive_errors++;
  }
  if (--l->streams_open == 0) {
    l->all_closed = true;
  }
}

static const struct grpc_client_handlers ka_handlers = {ka_message, ka_done};

/* Grant phase hook: the keep-alive streams start with it. */
static int start_keepalives(struct leaseload *l) {
  struct bench *b = l->b;
  unsigned k = b->cfg.keepalives;
  l->n_streams = k < b->cfg.conns ? k : b->cfg.conns;
  if (l->n_streams == 0) {
    l->all_closed = true;
    return 0;
  }
  l->streams = calloc(l->n_streams, sizeof *l->streams);
  if (!l->streams) {
    return CAIRN_ENOMEM;
  }
  for (unsigned i = 0; i < l->n_streams; i++) {
    struct kstream *st = &l->streams[i];
    st->l = l;
    st->first = st->next = i;
    int rc = grpc_client_call(b->conns[i], PATH_KEEPALIVE, NULL, 0, 0, &ka_handlers, st, &st->call);
    if (rc < 0) {
      return rc;
    }
    l->streams_open++;
    rc = ka_send(st);
    if (rc < 0) {
      grpc_ccall_cancel(st->call);
      return rc;
    }
    st->measured = true; /* the grant phase starts right after this */
  }
  return 0;
}

static uint64_t measured_grants(const struct bench_config *c) {
  return c->duration_s > 0 ? 0 : c->total;
}

int leaseload_run(struct bench *b) {
  const struct bench_config *c = &b->cfg;
  struct leaseload l;
  memset(&l, 0, sizeof l);
  l.b = b;
  uint64_t want = (uint64_t)c->keepalives + measured_grants(c);
  if (c->duration_s > 0 || want > LEASE_REVOKE_MAX) {
    want = LEASE_REVOKE_MAX;
  }
  l.cap_ids = want;
  l.ids = calloc(want, sizeof *l.ids);
  if (!l.ids) {
    return CAIRN_ENOMEM;
  }
  b->workload_state = &l;
  int rc = 0;
  if (c->keepalives > 0) {
    struct bench_phase setup = {
        .name = "lease setup", .total = c->keepalives, .issue = issue_grant};
    rc = bench_run_phase(b, &setup);
    if (rc == 0 && l.n_ids < c->keepalives) {
      fprintf(stderr, "cairn-bench: lease: %llu of %u keep-alive leases granted; first error: %s\n",
              (unsigned long long)l.n_ids, c->keepalives, b->first_error);
      rc = CAIRN_EIO;
    }
  }
  if (rc == 0) {
    struct bench_phase p = {.name = "lease", .measured = true, .issue = issue_grant};
    if (c->duration_s > 0) {
      p.deadline_ns = bench_now_ns() + (uint64_t)(c->duration_s * 1e9);
    } else {
      p.total = c->total;
    }
    double cpu0 = bench_cpu_s();
    /* The streams start with the grant phase (their first requests go out
     * on the loop's first turn, as the first grants do). */
    rc = start_keepalives(&l);
    if (rc == 0) {
      rc = bench_run_phase(b, &p);
    }
    b->client_cpu_s = bench_cpu_s() - cpu0;
    b->elapsed_s = (double)(p.t_end_ns - p.t_start_ns) / 1e9;
  }
  l.stop = true;
  /* The wait has no deadline: a cancelled call always ends, from the loop,
   * and l (on this stack) must outlive the callbacks. */
  if (l.streams_open > 0) {
    for (unsigned i = 0; i < l.n_streams; i++) {
      if (l.streams[i].call) {
        grpc_ccall_cancel(l.streams[i].call);
      }
    }
    bench_wait(b, &l.all_closed, 0);
  }
  if (l.n_ids > 0) {
    /* Clean-up: its failures (a lease already expired) are not the run's. */
    struct bench_phase rv = {
        .name = "lease revoke", .total = l.n_ids, .issue = issue_revoke, .errors_private = true};
    if (bench_run_phase(b, &rv) < 0) {
      fprintf(stderr, "cairn-bench: lease: revoking the granted leases failed\n");
    }
  }
  b->workload_state = NULL;
  free(l.streams);
  free(l.ids);
  return rc;
}
