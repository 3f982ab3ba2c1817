/* server/lease_service.c: etcdserverpb.Lease (LeaseGrant, LeaseRevoke,
 * LeaseKeepAlive, LeaseTimeToLive, LeaseLeases) on the lessor (lessor.h).
 *
 * Grant and Revoke go through raft and are answered when applied; KeepAlive
 * asks the lessor (answered at once on the leader, through raft otherwise);
 * TimeToLive and Leases read the store. etcd's behaviour (etcd-wire.md
 * section 2): an unknown lease is TTL -1 for TimeToLive, TTL 0 for
 * KeepAlive, NOT_FOUND for Revoke. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/cairn_assert.h"
#include "server/lessor.h"
#include "server/metrics.h"
#include "server/server.h"

#define PATH_GRANT "/etcdserverpb.Lease/LeaseGrant"
#define PATH_REVOKE "/etcdserverpb.Lease/LeaseRevoke"
#define PATH_KEEPALIVE "/etcdserverpb.Lease/LeaseKeepAlive"
#define PATH_TTL "/etcdserverpb.Lease/LeaseTimeToLive"
#define PATH_LEASES "/etcdserverpb.Lease/LeaseLeases"

#define UNMARSHAL_ERROR "grpc: error unmarshalling request"

/* ---- finishing calls ------------------------------------------------------- */

static void finish_fail(struct server *s, grpc_call *call, const char *path, int err) {
  metrics_count_request(s->metrics, path, cairn_grpc_code(err));
  server_fail(call, err);
}

static void finish_status(struct server *s, grpc_call *call, const char *path, int code,
                          const char *msg) {
  metrics_count_request(s->metrics, path, code);
  grpc_call_finish(call, code, msg);
}

static void finish_reply(struct server *s, grpc_call *call, const char *path,
                         const ProtobufCMessage *msg) {
  int rc = server_send(call, msg);
  if (rc != 0) {
    finish_status(s, call, path, GRPC_INTERNAL, cairn_strerror(rc));
    return;
  }
  finish_status(s, call, path, GRPC_OK, NULL);
}

/* ---- Grant and Revoke: through raft ---------------------------------------- */

/* A Grant or Revoke waiting for its proposal; the call's user pointer. */
struct pending {
  grpc_call *call; /* NULL once the call closed (client gone) */
  struct mvcc_op op;
};

static void pending_on_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct pending *p = grpc_call_user(call);
  if (p != NULL) {
    p->call = NULL;
    grpc_call_set_user(call, NULL);
  }
}

/* Takes the call back from a pending proposal: NULL if the client is gone. */
static grpc_call *pending_take(struct pending *p) {
  grpc_call *call = p->call;
  if (call != NULL) {
    grpc_call_set_user(call, NULL);
  }
  return call;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void grant_done(struct server *s, void *data, int status, struct mvcc_result *r) {
  struct pending *p = data;
  lessor_grant_done(s->lessor);
  int err = status != 0 ? status : r->err;
  if (err == 0) {
    lessor_applied(s->lessor, &p->op, r);
  }
  grpc_call *call = pending_take(p);
  if (call != NULL && err != 0) {
    finish_fail(s, call, PATH_GRANT, err);
  } else if (call != NULL) {
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    server_header(s, &h);
    Etcdserverpb__LeaseGrantResponse resp = ETCDSERVERPB__LEASE_GRANT_RESPONSE__INIT;
    resp.header = &h;
    resp.id = p->op.u.lease_grant.id;
    resp.ttl = p->op.u.lease_grant.ttl;
    finish_reply(s, call, PATH_GRANT, &resp.base);
  }
  if (r != NULL) {
    mvcc_result_free(r); /* server.h: the result itself is not ours */
  }
  free(p);
}

static void grant_on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__LeaseGrantRequest *req = etcdserverpb__lease_grant_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish_status(s, call, PATH_GRANT, GRPC_INTERNAL, UNMARSHAL_ERROR);
    return;
  }
  int64_t ttl = req->ttl, id = req->id;
  etcdserverpb__lease_grant_request__free_unpacked(req, NULL);
  struct lessor *l = s->lessor;
  if (s->alarm_nospace) {
    /* etcd's capped applier refuses grants while the alarm is raised. */
    finish_fail(s, call, PATH_GRANT, CAIRN_ENOSPACE);
    return;
  }
  if (ttl > LESSOR_TTL_MAX_S) {
    finish_fail(s, call, PATH_GRANT, CAIRN_ELEASE_TTL_TOO_LARGE);
    return;
  }
  if (ttl < lessor_min_ttl(l)) {
    ttl = lessor_min_ttl(l);
  }
  if (id < 0) {
    /* etcd would take it; the store keeps positive ids only. */
    finish_fail(s, call, PATH_GRANT, CAIRN_EINVAL);
    return;
  }
  int rc = lessor_grant_begin(l);
  if (rc != 0) {
    finish_fail(s, call, PATH_GRANT, rc);
    return;
  }
  if (id == 0) {
    rc = lessor_pick_id(l, &id);
  } else {
    /* Fail early on a taken id; the apply checks it again. */
    struct mvcc_lease rec;
    rc = mvcc_lease_get(s->store, id, &rec);
    rc = rc == 0 ? CAIRN_ELEASE_EXISTS : rc == CAIRN_ELEASE_NOT_FOUND ? 0 : rc;
  }
  struct pending *p = rc == 0 ? calloc(1, sizeof *p) : NULL;
  if (rc == 0 && p == NULL) {
    rc = CAIRN_ENOMEM;
  }
  if (rc == 0) {
    p->call = call;
    p->op.type = MVCC_OP_LEASE_GRANT;
    p->op.u.lease_grant.id = id;
    p->op.u.lease_grant.ttl = ttl;
    p->op.u.lease_grant.now_ms = wall_ms();
    rc = server_propose(s, &p->op, p, grant_done);
  }
  if (rc != 0) {
    lessor_grant_done(l);
    free(p);
    finish_fail(s, call, PATH_GRANT, rc);
    return;
  }
  grpc_call_set_user(call, p);
}

static void revoke_done(struct server *s, void *data, int status, struct mvcc_result *r) {
  struct pending *p = data;
  int err = status != 0 ? status : r->err;
  if (status == 0) {
    lessor_applied(s->lessor, &p->op, r); /* LEASE_NOT_FOUND drops it too */
  }
  grpc_call *call = pending_take(p);
  if (call != NULL && err != 0) {
    finish_fail(s, call, PATH_REVOKE, err);
  } else if (call != NULL) {
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    server_header(s, &h);
    if (r->u.lease.revision > 0) {
      h.revision = r->u.lease.revision; /* the revision that deleted its keys */
    }
    Etcdserverpb__LeaseRevokeResponse resp = ETCDSERVERPB__LEASE_REVOKE_RESPONSE__INIT;
    resp.header = &h;
    finish_reply(s, call, PATH_REVOKE, &resp.base);
  }
  if (r != NULL) {
    mvcc_result_free(r); /* server.h: the result itself is not ours */
  }
  free(p);
}

static void revoke_on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__LeaseRevokeRequest *req =
      etcdserverpb__lease_revoke_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish_status(s, call, PATH_REVOKE, GRPC_INTERNAL, UNMARSHAL_ERROR);
    return;
  }
  int64_t id = req->id;
  etcdserverpb__lease_revoke_request__free_unpacked(req, NULL);
  struct pending *p = calloc(1, sizeof *p);
  if (p == NULL) {
    finish_fail(s, call, PATH_REVOKE, CAIRN_ENOMEM);
    return;
  }
  /* Proposed even if this member does not know the lease: a lagging
   * follower's store is no proof that it does not exist. */
  p->call = call;
  p->op.type = MVCC_OP_LEASE_REVOKE;
  p->op.u.lease_revoke_id = id;
  int rc = server_propose(s, &p->op, p, revoke_done);
  if (rc != 0) {
    free(p);
    finish_fail(s, call, PATH_REVOKE, rc);
    return;
  }
  grpc_call_set_user(call, p);
}

/* ---- TimeToLive and Leases: from the store ---------------------------------- */

static void ttl_on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__LeaseTimeToLiveRequest *req =
      etcdserverpb__lease_time_to_live_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish_status(s, call, PATH_TTL, GRPC_INTERNAL, UNMARSHAL_ERROR);
    return;
  }
  int64_t id = req->id;
  bool want_keys = req->keys;
  etcdserverpb__lease_time_to_live_request__free_unpacked(req, NULL);

  Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  server_header(s, &h);
  Etcdserverpb__LeaseTimeToLiveResponse resp = ETCDSERVERPB__LEASE_TIME_TO_LIVE_RESPONSE__INIT;
  resp.header = &h;
  resp.id = id;
  struct mvcc_lease rec;
  int rc = mvcc_lease_get(s->store, id, &rec);
  if (rc == CAIRN_ELEASE_NOT_FOUND) {
    resp.ttl = -1; /* etcd: OK with TTL -1 */
    finish_reply(s, call, PATH_TTL, &resp.base);
    return;
  }
  if (rc != 0) {
    finish_fail(s, call, PATH_TTL, rc);
    return;
  }
  int64_t min_ttl = lessor_min_ttl(s->lessor);
  resp.grantedttl = rec.ttl < min_ttl ? min_ttl : rec.ttl;
  resp.ttl = lessor_remaining_ms(s->lessor, &rec) / 1000; /* etcd truncates */
  struct mvcc_result keys;
  memset(&keys, 0, sizeof keys);
  ProtobufCBinaryData *kb = NULL;
  if (want_keys) {
    rc = mvcc_lease_keys(s->store, id, &keys);
    size_t n = rc == 0 ? keys.u.range.n_kvs : 0;
    kb = n ? calloc(n, sizeof *kb) : NULL;
    if (rc == 0 && n > 0 && kb == NULL) {
      rc = CAIRN_ENOMEM;
    }
    if (rc != 0) {
      mvcc_result_free(&keys);
      finish_fail(s, call, PATH_TTL, rc);
      return;
    }
    for (size_t i = 0; i < n; i++) {
      kb[i].data = (uint8_t *)keys.u.range.kvs[i].key.data;
      kb[i].len = keys.u.range.kvs[i].key.len;
    }
    resp.keys = kb;
    resp.n_keys = n;
  }
  finish_reply(s, call, PATH_TTL, &resp.base);
  free(kb);
  mvcc_result_free(&keys);
}

static void leases_on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__LeaseLeasesRequest *req =
      etcdserverpb__lease_leases_request__unpack(NULL, len, msg);
  if (req == NULL) {
    finish_status(s, call, PATH_LEASES, GRPC_INTERNAL, UNMARSHAL_ERROR);
    return;
  }
  etcdserverpb__lease_leases_request__free_unpacked(req, NULL);
  struct mvcc_lease *v = NULL;
  size_t n = 0;
  int rc = mvcc_lease_list(s->store, &v, &n);
  Etcdserverpb__LeaseStatus *st = NULL;
  Etcdserverpb__LeaseStatus **ptrs = NULL;
  if (rc == 0 && n > 0) {
    st = calloc(n, sizeof *st);
    ptrs = calloc(n, sizeof *ptrs);
    if (st == NULL || ptrs == NULL) {
      rc = CAIRN_ENOMEM;
    }
  }
  if (rc != 0) {
    finish_fail(s, call, PATH_LEASES, rc);
  } else {
    for (size_t i = 0; i < n; i++) {
      etcdserverpb__lease_status__init(&st[i]);
      st[i].id = v[i].id;
      ptrs[i] = &st[i];
    }
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    server_header(s, &h);
    Etcdserverpb__LeaseLeasesResponse resp = ETCDSERVERPB__LEASE_LEASES_RESPONSE__INIT;
    resp.header = &h;
    resp.leases = ptrs;
    resp.n_leases = n;
    finish_reply(s, call, PATH_LEASES, &resp.base);
  }
  free(ptrs);
  free(st);
  free(v);
}

/* ---- KeepAlive: a bidi stream --------------------------------------------- */

/* One LeaseKeepAlive stream; the call's user pointer. Freed when the call
 * closed and no renewal of it waits for raft. */
struct ka_stream {
  struct server *s;
  grpc_call *call;  /* NULL once closed */
  unsigned pending; /* renewals waiting for raft */
  unsigned busy;    /* inside one of our callbacks: on_close must not free */
  bool counted;     /* holds a lessor_stream_open() slot */
  bool half_closed;
  bool finished; /* we ended the call */
};

/* A renewal waiting for raft. */
struct ka_renewal {
  struct ka_stream *ks;
  int64_t id;
};

static void ka_release(struct ka_stream *ks) {
  if (ks->call == NULL && ks->pending == 0 && ks->busy == 0) {
    free(ks);
  }
}

static void ka_end(struct ka_stream *ks, int err) {
  if (ks->call == NULL || ks->finished) {
    return;
  }
  ks->finished = true;
  if (err == 0) {
    finish_status(ks->s, ks->call, PATH_KEEPALIVE, GRPC_OK, NULL);
  } else {
    finish_fail(ks->s, ks->call, PATH_KEEPALIVE, err);
  }
}

static void ka_answer(struct ka_stream *ks, const Etcdserverpb__ResponseHeader *h, int64_t id,
                      int64_t ttl) {
  if (ks->call == NULL || ks->finished) {
    return;
  }
  Etcdserverpb__LeaseKeepAliveResponse resp = ETCDSERVERPB__LEASE_KEEP_ALIVE_RESPONSE__INIT;
  resp.header = (Etcdserverpb__ResponseHeader *)h;
  resp.id = id;
  resp.ttl = ttl;
  int rc = server_send(ks->call, &resp.base);
  if (rc == CAIRN_EBUSY) {
    /* The client does not read its answers: end the stream rather than
     * queue without bound. */
    ka_end(ks, CAIRN_ETOO_MANY_REQUESTS);
  } else if (rc != 0 && rc != CAIRN_ESTOPPED) {
    ka_end(ks, rc);
  }
}

static void ka_renewed(void *data, int status, int64_t ttl) {
  struct ka_renewal *rn = data;
  struct ka_stream *ks = rn->ks;
  CAIRN_ASSERT(ks->pending > 0);
  ks->pending--;
  ks->busy++;
  if (status != 0) {
    ka_end(ks, status);
  } else {
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    server_header(ks->s, &h);
    ka_answer(ks, &h, rn->id, ttl);
  }
  if (ks->half_closed && ks->pending == 0) {
    ka_end(ks, 0);
  }
  ks->busy--;
  free(rn);
  ka_release(ks);
}

static bool has_no_leader(struct server *s) {
  if (s->raft == NULL) {
    return true;
  }
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  return st.leader_id == 0;
}

static void ka_message(struct ka_stream *ks, const uint8_t *msg, size_t len) {
  struct server *s = ks->s;
  Etcdserverpb__LeaseKeepAliveRequest *req =
      etcdserverpb__lease_keep_alive_request__unpack(NULL, len, msg);
  if (req == NULL) {
    ks->finished = true;
    finish_status(s, ks->call, PATH_KEEPALIVE, GRPC_INTERNAL, UNMARSHAL_ERROR);
    return;
  }
  int64_t id = req->id;
  etcdserverpb__lease_keep_alive_request__free_unpacked(req, NULL);
  const char *hl = grpc_call_header(ks->call, "hasleader");
  if (hl != NULL && strcmp(hl, "true") == 0 && has_no_leader(s)) {
    ka_end(ks, CAIRN_ENO_LEADER);
    return;
  }
  /* The header is taken before the renewal, as etcd does, so that its
   * revision is not after a revocation the renewal lost to. */
  Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  server_header(s, &h);
  struct ka_renewal *rn = malloc(sizeof *rn);
  if (rn == NULL) {
    ka_end(ks, CAIRN_ENOMEM);
    return;
  }
  rn->ks = ks;
  rn->id = id;
  int64_t ttl = 0;
  int rc = lessor_renew(s->lessor, id, &ttl, rn, ka_renewed);
  if (rc == 1) {
    ks->pending++;
    return;
  }
  free(rn);
  if (rc != 0) {
    ka_end(ks, rc);
    return;
  }
  ka_answer(ks, &h, id, ttl);
}

static void ka_on_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  struct ka_stream *ks = grpc_call_user(call);
  if (ks == NULL) {
    ks = calloc(1, sizeof *ks);
    if (ks == NULL) {
      finish_fail(s, call, PATH_KEEPALIVE, CAIRN_ENOMEM);
      return;
    }
    ks->s = s;
    ks->call = call;
    grpc_call_set_user(call, ks);
    int rc = lessor_stream_open(s->lessor);
    if (rc != 0) {
      ka_end(ks, rc);
      return;
    }
    ks->counted = true;
  }
  if (ks->finished || ks->half_closed) {
    return;
  }
  ks->busy++;
  ka_message(ks, msg, len);
  ks->busy--;
  ka_release(ks);
}

static void ka_on_half_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct ka_stream *ks = grpc_call_user(call);
  if (ks == NULL) {
    /* No message at all: nothing to answer. */
    finish_status(ctx, call, PATH_KEEPALIVE, GRPC_OK, NULL);
    return;
  }
  ks->half_closed = true;
  if (ks->pending == 0) {
    ks->busy++;
    ka_end(ks, 0);
    ks->busy--;
    ka_release(ks);
  }
}

static void ka_on_close(grpc_call *call, void *ctx) {
  struct server *s = ctx;
  struct ka_stream *ks = grpc_call_user(call);
  if (ks == NULL) {
    return;
  }
  grpc_call_set_user(call, NULL);
  if (!ks->finished) {
    metrics_count_request(s->metrics, PATH_KEEPALIVE, GRPC_CANCELLED);
  }
  if (ks->counted) {
    lessor_stream_close(s->lessor);
    ks->counted = false;
  }
  ks->call = NULL;
  ka_release(ks);
}

/* ---- registration ----------------------------------------------------------- */

int lease_service_init(struct server *s) {
  int rc = lessor_init(s);
  if (rc != 0) {
    return rc;
  }
  const struct grpc_method methods[] = {
      {PATH_GRANT, GRPC_METHOD_UNARY, grant_on_message, NULL, pending_on_close, s},
      {PATH_REVOKE, GRPC_METHOD_UNARY, revoke_on_message, NULL, pending_on_close, s},
      {PATH_KEEPALIVE, GRPC_METHOD_BIDI_STREAM, ka_on_message, ka_on_half_close, ka_on_close, s},
      {PATH_TTL, GRPC_METHOD_UNARY, ttl_on_message, NULL, NULL, s},
      {PATH_LEASES, GRPC_METHOD_UNARY, leases_on_message, NULL, NULL, s},
  };
  rc = grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
  if (rc != 0) {
    lessor_close(s->lessor);
    return rc;
  }
  return 0;
}
