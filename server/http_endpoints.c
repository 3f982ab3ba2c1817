/* server/http_endpoints.c: the HTTP/1.1 endpoints on the client port, as
 * etcd serves them: GET /health, GET /version, GET /metrics.
 *
 * /health (etcd 3.4's checkHealth): 503 {"health":"false"} when an alarm is
 * raised (unless excluded with ?exclude=NOSPACE), when the member knows no
 * leader, or when a read through raft does not complete within
 * HEALTH_PROBE_TIMEOUT_MS; else 200 {"health":"true"}. The read is one
 * MVCC_OP_RANGE proposal (etcd proposes a QGET): requests that arrive while
 * a probe is in flight wait for that probe instead of proposing their own,
 * at most HEALTH_WAITERS_MAX of them (beyond: 503 at once).
 *
 * Every other path is answered 404 "404 page not found", as Go's mux does;
 * the JSON gateway (/v3/...) will be dispatched from on_http() when it
 * exists. Methods other than GET get 405 "Method Not Allowed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "server/metrics.h"
#include "server/forward.h"
#include "server/server.h"

/* etcd gives its health read one second. */
#define HEALTH_PROBE_TIMEOUT_MS 1000u
/* /health requests waiting for the probe in flight. */
#define HEALTH_WAITERS_MAX 1024u

static const char HEALTH_TRUE[] = "{\"health\":\"true\"}";
/* etcd writes failures with http.Error, which adds a newline. */
static const char HEALTH_FALSE[] = "{\"health\":\"false\"}\n";
static const char NOT_FOUND[] = "404 page not found\n";
static const char NOT_ALLOWED[] = "Method Not Allowed\n";
static const char TEXT_PLAIN[] = "text/plain; charset=utf-8";

/* One read through raft, answering every /health request that waits on it.
 * It is freed once it answered (on the proposal's callback or the timer,
 * whichever came first), its proposal called back, and its timer closed. */
struct health_probe {
  struct server *s;
  uv_timer_t timer;
  grpc_http_request *waiters[HEALTH_WAITERS_MAX];
  size_t n_waiters;
  bool answered;
  bool proposal_done;
  bool timer_closed;
};

/* The module's state. The daemon has one struct server and one loop, and
 * server.h has no slot for this module, so it lives here. */
static struct {
  struct server *s;
  struct health_probe *probe; /* the one new requests join; NULL: none */
} he;

static void respond(grpc_http_request *req, int status, const char *type, const char *body,
                    size_t len) {
  /* CAIRN_ESTOPPED (the client left) needs nothing more: req is freed. */
  (void)grpc_http_respond(req, status, type, (const uint8_t *)body, len);
}

static void respond_health(struct server *s, grpc_http_request *req, bool healthy) {
  metrics_inc(s->metrics, healthy ? METRIC_HEALTH_SUCCESS : METRIC_HEALTH_FAILURES);
  if (healthy) {
    respond(req, 200, TEXT_PLAIN, HEALTH_TRUE, sizeof HEALTH_TRUE - 1);
  } else {
    respond(req, 503, TEXT_PLAIN, HEALTH_FALSE, sizeof HEALTH_FALSE - 1);
  }
}

static void probe_maybe_free(struct health_probe *p) {
  if (p->answered && p->proposal_done && p->timer_closed) {
    free(p);
  }
}

static void on_probe_timer_closed(uv_handle_t *h) {
  struct health_probe *p = h->data;
  p->timer_closed = true;
  probe_maybe_free(p);
}

/* Answers every waiter, detaches the probe so that later requests start a
 * new one, and closes its timer. */
static void probe_answer(struct health_probe *p, bool healthy) {
  CAIRN_ASSERT(!p->answered);
  p->answered = true;
  if (he.probe == p) {
    he.probe = NULL;
  }
  for (size_t i = 0; i < p->n_waiters; i++) {
    respond_health(p->s, p->waiters[i], healthy);
  }
  p->n_waiters = 0;
  uv_close((uv_handle_t *)&p->timer, on_probe_timer_closed);
}

static void on_probe_timeout(uv_timer_t *t) {
  struct health_probe *p = t->data;
  server_log(LOG_WARN, "/health error: the health read did not complete within %u ms",
             HEALTH_PROBE_TIMEOUT_MS);
  probe_answer(p, false);
}

static void on_probe_done(void *data, int status) {
  struct health_probe *p = data;
  bool ok = status == 0;
  p->proposal_done = true;
  if (!p->answered) {
    if (!ok) {
      server_log(LOG_WARN, "/health error: the health read failed: %s",
                 cairn_strerror(status != 0 ? status : CAIRN_EIO));
    }
    probe_answer(p, ok);
  }
  probe_maybe_free(p);
}

/* Starts a probe with req as its first waiter, and makes it the one later
 * requests join. req is answered in every case. */
static void probe_start(struct server *s, grpc_http_request *req) {
  struct health_probe *p = calloc(1, sizeof *p);
  if (p == NULL) {
    respond_health(s, req, false);
    return;
  }
  p->s = s;
  p->waiters[p->n_waiters++] = req;
  uv_timer_init(s->loop, &p->timer);
  p->timer.data = p;
  uv_timer_start(&p->timer, on_probe_timeout, HEALTH_PROBE_TIMEOUT_MS, 0);
  he.probe = p;
  /* etcd's health read is a quorum read through raft: here the same
   * confirmation as a linearizable read (the leader's barrier, or the read
   * index from the leader on a follower). */
  int rc = server_linearize(s, HEALTH_PROBE_TIMEOUT_MS, on_probe_done, p);
  if (rc != 0) {
    server_log(LOG_WARN, "/health error: cannot start the health read: %s", cairn_strerror(rc));
    p->proposal_done = true; /* never called back */
    probe_answer(p, false);  /* answers req, detaches, closes the timer */
  }
}

/* Whether the query string (after '?') excludes alarm name ("NOSPACE"):
 * exclude=NAME, possibly repeated, as etcd's getExcludedAlarms. */
static bool alarm_excluded(const char *query, const char *name) {
  if (query == NULL) {
    return false;
  }
  size_t nlen = strlen(name);
  for (const char *p = query; p != NULL && *p != '\0';) {
    const char *end = strchr(p, '&');
    size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
    if (len == 8 + nlen && strncmp(p, "exclude=", 8) == 0 && strncmp(p + 8, name, nlen) == 0) {
      return true;
    }
    p = end != NULL ? end + 1 : NULL;
  }
  return false;
}

static void serve_health(struct server *s, grpc_http_request *req, const char *query) {
  if (s->alarm_nospace && !alarm_excluded(query, "NOSPACE")) {
    server_log(LOG_WARN, "/health error due to memberID:%llu alarm:NOSPACE",
               (unsigned long long)s->alarm_member_id);
    respond_health(s, req, false);
    return;
  }
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  if (st.leader_id == 0) {
    server_log(LOG_WARN, "/health error: no leader");
    respond_health(s, req, false);
    return;
  }
  struct health_probe *p = he.probe;
  if (p == NULL) {
    probe_start(s, req);
    return;
  }
  if (p->n_waiters == HEALTH_WAITERS_MAX) {
    respond_health(s, req, false);
    return;
  }
  p->waiters[p->n_waiters++] = req;
}

static void serve_version(grpc_http_request *req) {
  static const char body[] = "{\"etcdserver\":\"" CAIRN_ETCD_VERSION
                             "\",\"etcdcluster\":\"" CAIRN_ETCD_CLUSTER_VERSION "\"}";
  respond(req, 200, "application/json", body, sizeof body - 1);
}

static void serve_metrics(struct server *s, grpc_http_request *req) {
  char *text = NULL;
  size_t len = 0;
  int rc = metrics_render(s, &text, &len);
  if (rc != 0) {
    static const char msg[] = "cannot render metrics: out of memory\n";
    respond(req, 500, TEXT_PLAIN, msg, sizeof msg - 1);
    return;
  }
  respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
  free(text);
}

static void on_http(grpc_http_request *req, const char *method, const char *path,
                    const uint8_t *body, size_t body_len, void *ctx) {
  (void)body;
  (void)body_len;
  struct server *s = ctx;
  const char *q = strchr(path, '?');
  size_t plen = q != NULL ? (size_t)(q - path) : strlen(path);
  const char *query = q != NULL ? q + 1 : NULL;
  enum { P_HEALTH, P_VERSION, P_METRICS, P_OTHER } which = P_OTHER;
  if (plen == 7 && strncmp(path, "/health", 7) == 0) {
    which = P_HEALTH;
  } else if (plen == 8 && strncmp(path, "/version", 8) == 0) {
    which = P_VERSION;
  } else if (plen == 8 && strncmp(path, "/metrics", 8) == 0) {
    which = P_METRICS;
  }
  if (which == P_OTHER) {
    respond(req, 404, TEXT_PLAIN, NOT_FOUND, sizeof NOT_FOUND - 1);
    return;
  }
  if (strcmp(method, "GET") != 0) {
    respond(req, 405, TEXT_PLAIN, NOT_ALLOWED, sizeof NOT_ALLOWED - 1);
    return;
  }
  switch (which) {
    case P_HEALTH:
      serve_health(s, req, query);
      break;
    case P_VERSION:
      serve_version(req);
      break;
    case P_METRICS:
      serve_metrics(s, req);
      break;
    case P_OTHER:
      break;
  }
}

int http_endpoints_init(struct server *s) {
  CAIRN_ASSERT(he.s == NULL); /* one server per process */
  he.s = s;
  grpc_server_set_http_handler(s->grpc, on_http, s);
  return 0;
}
