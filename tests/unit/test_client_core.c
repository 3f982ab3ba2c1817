/* tests/unit/test_client_core.c: libcairn's unary calls, transactions,
 * leases, cluster calls, snapshots, the blocking API, failover, deadlines,
 * keepalive and bad servers, against a real single-member cairn (the
 * build's own binary, next to this test) or, with CAIRN_TEST_SERVER=etcd,
 * against /usr/bin/etcd. Ports are the kernel's picks (test_free_port), so
 * both runs may go at once beside other tests. Each wait has a bound; a
 * watchdog alarm ends a hung test. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <uv.h>

#include "client/cairn.h"
#include "client/client_int.h"
#include "test.h"
#include "test_net.h"

#define WATCHDOG_S 240

static uv_loop_t g_loop;
static bool g_etcd;
static char g_ep[64];
static pid_t g_pid;
static char *g_dir;

/* ---- servers ---------------------------------------------------------------- */

extern char **environ;

static pid_t server_spawn(const char *dir, int cport, int pport) {
  char bin[PATH_MAX];
  if (g_etcd) {
    snprintf(bin, sizeof bin, "/usr/bin/etcd");
  } else {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(n > 0);
    self[n] = '\0';
    snprintf(bin, sizeof bin, "%s/cairn", dirname(self));
  }
  CHECK(access(bin, X_OK) == 0);
  char curl[64], purl[64], cluster[128], log[PATH_MAX];
  snprintf(curl, sizeof curl, "http://127.0.0.1:%d", cport);
  snprintf(purl, sizeof purl, "http://127.0.0.1:%d", pport);
  snprintf(cluster, sizeof cluster, "default=%s", purl);
  snprintf(log, sizeof log, "%s.log", dir);
  char *args[] = {bin,         "--data-dir", (char *)dir, "--listen-client-urls",
                  curl,        "--advertise-client-urls", curl, "--listen-peer-urls",
                  purl,        "--initial-advertise-peer-urls", purl, "--initial-cluster",
                  cluster,     NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  CHECK(posix_spawn(&pid, bin, &fa, NULL, args, environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

static void server_kill(pid_t pid) {
  kill(pid, SIGCONT);
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
}

/* ---- calls ---------------------------------------------------------------------- */

struct res {
  bool done;
  int code;
  char message[512];
  char endpoint[128];
  ProtobufCMessage *msg; /* a copy, freed by res_clear */
  uint64_t bytes;
};

static void res_cb(void *data, const struct cairn_result *r) {
  struct res *x = data;
  CHECK(!x->done);
  x->done = true;
  x->code = r->code;
  snprintf(x->message, sizeof x->message, "%s", r->message);
  snprintf(x->endpoint, sizeof x->endpoint, "%s", r->endpoint ? r->endpoint : "");
  CHECK((r->code == 0) == (r->msg != NULL));
  if (r->msg) {
    uint8_t *b;
    size_t len;
    CHECK_OK(cairn__pack(r->msg, &b, &len));
    x->msg = protobuf_c_message_unpack(r->msg->descriptor, NULL, len, b);
    CHECK(x->msg);
    free(b);
  }
}

static void res_clear(struct res *x) {
  cairn_response_free(x->msg);
  memset(x, 0, sizeof *x);
}

static void run_until(const bool *flag) {
  while (!*flag) {
    uv_run(&g_loop, UV_RUN_ONCE);
  }
}

static void closed_cb(void *data) {
  *(bool *)data = true;
}

static cairn_client *client_for(const char *const *eps, size_t n, uint64_t timeout_ms) {
  struct cairn_config cfg = {.endpoints = eps, .n_endpoints = n, .request_timeout_ms = timeout_ms};
  cairn_client *c;
  CHECK_OK(cairn_client_new(&g_loop, &cfg, &c));
  return c;
}

static cairn_client *client_main(void) {
  const char *eps[] = {g_ep};
  return client_for(eps, 1, 5000);
}

static void client_done(cairn_client *c) {
  bool closed = false;
  cairn_client_close(c, closed_cb, &closed);
  CHECK(!closed);
  run_until(&closed);
}

#define WAIT(x) run_until(&(x)->done)

static void put(cairn_client *c, const char *k, const char *v) {
  struct res r = {0};
  CHECK_OK(cairn_put_kv(c, k, strlen(k), v, strlen(v), NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
}

static Etcdserverpb__RangeResponse *get(cairn_client *c, const char *k, struct res *r) {
  memset(r, 0, sizeof *r);
  CHECK_OK(cairn_get(c, k, strlen(k), NULL, res_cb, r));
  WAIT(r);
  CHECK_EQ_INT(r->code, 0);
  return (Etcdserverpb__RangeResponse *)r->msg;
}

static bool kv_is(const Mvccpb__KeyValue *kv, const char *k, const char *v) {
  return kv->key.len == strlen(k) && memcmp(kv->key.data, k, kv->key.len) == 0 &&
         kv->value.len == strlen(v) && memcmp(kv->value.data, v, kv->value.len) == 0;
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_server_up(void) {
  /* The first call retries (Range is read-only) while the server starts. */
  const char *eps[] = {g_ep};
  cairn_client *c = client_for(eps, 1, 30000);
  struct res r = {0};
  CHECK_OK(cairn_get(c, "boot", 4, NULL, res_cb, &r));
  WAIT(&r);
  if (r.code != 0) {
    fprintf(stderr, "server did not come up: %d %s\n", r.code, r.message);
  }
  CHECK_EQ_INT(r.code, 0);
  CHECK(strcmp(r.endpoint, g_ep + 7) == 0);
  res_clear(&r);
  client_done(c);
}

static void test_helpers(void) {
  uint8_t out[8];
  CHECK_EQ_INT(cairn_prefix_end("ab", 2, out), 2);
  CHECK(memcmp(out, "ac", 2) == 0);
  CHECK_EQ_INT(cairn_prefix_end("a\xff", 2, out), 1);
  CHECK(out[0] == 'b');
  CHECK_EQ_INT(cairn_prefix_end("\xff\xff", 2, out), 1);
  CHECK(out[0] == 0);
  CHECK_EQ_INT(cairn_prefix_end("", 0, out), 1);
  CHECK(out[0] == 0);
  for (unsigned a = 0; a < 12; a++) {
    uint64_t b = cairn__backoff_ms(a);
    uint64_t base = a < 6 ? (25u << a) : 1000u;
    if (base > 1000) {
      base = 1000;
    }
    CHECK(b <= base && b >= base - base / 4);
  }
  CHECK(cairn_version()[0] != '\0');
  /* The retry rules (cairn.h). */
  CHECK(cairn__should_retry(true, true, GRPC_UNAVAILABLE, "etcdserver: leader changed"));
  CHECK(cairn__should_retry(true, true, GRPC_UNAVAILABLE, "connection to x: closed"));
  CHECK(!cairn__should_retry(false, true, GRPC_UNAVAILABLE, "connection to x: closed"));
  CHECK(cairn__should_retry(false, false, GRPC_UNAVAILABLE, "connection to x: connect: refused"));
  CHECK(!cairn__should_retry(false, true, GRPC_UNAVAILABLE, "etcdserver: request timed out"));
  CHECK(cairn__should_retry(false, true, GRPC_FAILED_PRECONDITION, "etcdserver: not leader"));
  CHECK(cairn__should_retry(false, true, GRPC_UNAVAILABLE, "etcdserver: no leader"));
  CHECK(cairn__should_retry(false, true, GRPC_UNAVAILABLE,
                            "etcdserver: rpc not supported for learner"));
  CHECK(!cairn__should_retry(true, false, GRPC_DEADLINE_EXCEEDED, "context deadline exceeded"));
  CHECK(!cairn__should_retry(true, false, GRPC_CANCELLED, "context canceled"));
  CHECK(!cairn__should_retry(true, true, GRPC_INVALID_ARGUMENT, "etcdserver: key is not provided"));
  CHECK(!cairn__should_retry(true, true, GRPC_OK, ""));
}

static void test_new_errors(void) {
  cairn_client *c;
  const char *bad1[] = {"unix:///tmp/x"};
  const char *bad2[] = {"127.0.0.1:99999"};
  const char *bad3[] = {"http://[::1"};
  const char *ok[] = {"127.0.0.1:1"};
  struct cairn_config cfg = {.endpoints = bad1, .n_endpoints = 1};
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  cfg.endpoints = bad2;
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  cfg.endpoints = bad3;
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  cfg.endpoints = ok;
  cfg.n_endpoints = 0;
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  cfg.n_endpoints = CAIRN_ENDPOINTS_MAX + 1;
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  cfg.n_endpoints = 1;
  cfg.ca_file = "/nonexistent.pem"; /* TLS option with a plaintext endpoint */
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  const char *tls[] = {"https://127.0.0.1:1"};
  cfg.endpoints = tls; /* unreadable CA file */
  CHECK_ERR(cairn_client_new(&g_loop, &cfg, &c), CAIRN_EINVAL);
  CHECK_ERR(cairn_client_new(&g_loop, NULL, &c), CAIRN_EINVAL);

  /* Argument errors of calls; no callback runs. */
  c = client_main();
  struct res r = {0};
  Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
  CHECK_ERR(cairn_unary(c, "bad", &rq.base, &etcdserverpb__range_response__descriptor, true, NULL,
                        res_cb, &r),
            CAIRN_EINVAL);
  CHECK_ERR(cairn_unary(c, "/a/b", NULL, &etcdserverpb__range_response__descriptor, true, NULL,
                        res_cb, &r),
            CAIRN_EINVAL);
  struct cairn_call_opts o = {.endpoint = "127.0.0.1:7"};
  CHECK_ERR(cairn_range(c, &rq, &o, res_cb, &r), CAIRN_EINVAL);
  CHECK_ERR(cairn_snapshot_save(c, NULL, NULL, NULL, NULL), CAIRN_EINVAL);
  client_done(c);
  CHECK(!r.done);
}

static void test_kv(void) {
  cairn_client *c = client_main();
  put(c, "kv/a", "1");
  put(c, "kv/b", "2");
  put(c, "kv/c", "3");
  struct res r;
  Etcdserverpb__RangeResponse *rr = get(c, "kv/b", &r);
  CHECK_EQ_INT(rr->n_kvs, 1);
  CHECK(kv_is(rr->kvs[0], "kv/b", "2"));
  CHECK(strcmp(r.endpoint, g_ep + 7) == 0);
  int64_t rev_b = rr->kvs[0]->mod_revision;
  res_clear(&r);

  /* Prefix, limit, count only, keys only, sort, at a revision. */
  uint8_t end[8];
  Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
  rq.key.data = (uint8_t *)"kv/";
  rq.key.len = 3;
  rq.range_end.data = end;
  rq.range_end.len = cairn_prefix_end("kv/", 3, end);
  rq.limit = 2;
  CHECK_OK(cairn_range(c, &rq, NULL, res_cb, &r));
  WAIT(&r);
  rr = (Etcdserverpb__RangeResponse *)r.msg;
  CHECK_EQ_INT(r.code, 0);
  CHECK_EQ_INT(rr->n_kvs, 2);
  CHECK(rr->more);
  CHECK_EQ_INT(rr->count, 3);
  res_clear(&r);
  rq.limit = 0;
  rq.count_only = true;
  CHECK_OK(cairn_range(c, &rq, NULL, res_cb, &r));
  WAIT(&r);
  rr = (Etcdserverpb__RangeResponse *)r.msg;
  CHECK_EQ_INT(rr->n_kvs, 0);
  CHECK_EQ_INT(rr->count, 3);
  res_clear(&r);
  rq.count_only = false;
  rq.keys_only = true;
  rq.sort_order = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND;
  rq.sort_target = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY;
  CHECK_OK(cairn_range(c, &rq, NULL, res_cb, &r));
  WAIT(&r);
  rr = (Etcdserverpb__RangeResponse *)r.msg;
  CHECK_EQ_INT(rr->n_kvs, 3);
  CHECK(rr->kvs[0]->key.len == 4 && memcmp(rr->kvs[0]->key.data, "kv/c", 4) == 0);
  CHECK_EQ_INT(rr->kvs[0]->value.len, 0);
  res_clear(&r);
  put(c, "kv/b", "22");
  Etcdserverpb__RangeRequest at = ETCDSERVERPB__RANGE_REQUEST__INIT;
  at.key.data = (uint8_t *)"kv/b";
  at.key.len = 4;
  at.revision = rev_b;
  CHECK_OK(cairn_range(c, &at, NULL, res_cb, &r));
  WAIT(&r);
  rr = (Etcdserverpb__RangeResponse *)r.msg;
  CHECK(kv_is(rr->kvs[0], "kv/b", "2"));
  res_clear(&r);

  /* Put with prev_kv; the server's error text for an empty key. */
  Etcdserverpb__PutRequest pq = ETCDSERVERPB__PUT_REQUEST__INIT;
  pq.key.data = (uint8_t *)"kv/a";
  pq.key.len = 4;
  pq.value.data = (uint8_t *)"11";
  pq.value.len = 2;
  pq.prev_kv = true;
  CHECK_OK(cairn_put(c, &pq, NULL, res_cb, &r));
  WAIT(&r);
  Etcdserverpb__PutResponse *pr = (Etcdserverpb__PutResponse *)r.msg;
  CHECK(pr->prev_kv && kv_is(pr->prev_kv, "kv/a", "1"));
  res_clear(&r);
  CHECK_OK(cairn_put_kv(c, "", 0, "x", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_INVALID_ARGUMENT);
  CHECK(strcmp(r.message, "etcdserver: key is not provided") == 0);
  CHECK(r.msg == NULL);
  res_clear(&r);

  /* Delete a prefix. */
  Etcdserverpb__DeleteRangeRequest dq = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
  dq.key = rq.key;
  dq.range_end = rq.range_end;
  dq.prev_kv = true;
  CHECK_OK(cairn_delete(c, &dq, NULL, res_cb, &r));
  WAIT(&r);
  Etcdserverpb__DeleteRangeResponse *dr = (Etcdserverpb__DeleteRangeResponse *)r.msg;
  CHECK_EQ_INT(dr->deleted, 3);
  CHECK_EQ_INT(dr->n_prev_kvs, 3);
  res_clear(&r);
  rr = get(c, "kv/a", &r);
  CHECK_EQ_INT(rr->n_kvs, 0);
  res_clear(&r);
  client_done(c);
}

static void test_txn(void) {
  cairn_client *c = client_main();
  put(c, "txn/k", "v1");
  /* Builder errors are sticky. */
  struct cairn_txn *bad = cairn_txn_new();
  CHECK(bad);
  CHECK_ERR(cairn_txn_put(bad, true, NULL), CAIRN_EINVAL);
  CHECK(cairn_txn_request(bad) == NULL);
  CHECK_ERR(cairn_txn_if_version(bad, "k", 1, NULL, 0, CAIRN_CMP_EQUAL, 1), CAIRN_EINVAL);
  struct res r = {0};
  CHECK_ERR(cairn_txn_commit(c, bad, NULL, res_cb, &r), CAIRN_EINVAL);
  cairn_txn_free(bad);

  /* Success branch, with a nested txn; then the failure branch. */
  for (int round = 0; round < 2; round++) {
    struct cairn_txn *t = cairn_txn_new();
    const char *want = round == 0 ? "v1" : "nope";
    CHECK_OK(cairn_txn_if_value(t, "txn/k", 5, NULL, 0, CAIRN_CMP_EQUAL, want, strlen(want)));
    CHECK_OK(cairn_txn_if_version(t, "txn/k", 5, NULL, 0, CAIRN_CMP_GREATER, 0));
    Etcdserverpb__PutRequest pq = ETCDSERVERPB__PUT_REQUEST__INIT;
    char key[32];
    snprintf(key, sizeof key, "txn/then%d", round);
    pq.key.data = (uint8_t *)key; /* copied: the buffer changes below */
    pq.key.len = strlen(key);
    pq.value.data = (uint8_t *)"T";
    pq.value.len = 1;
    CHECK_OK(cairn_txn_put(t, true, &pq));
    snprintf(key, sizeof key, "txn/else%d", round);
    pq.value.data = (uint8_t *)"E";
    CHECK_OK(cairn_txn_put(t, false, &pq));
    memset(key, 'x', sizeof key - 1);
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key.data = (uint8_t *)"txn/k";
    rq.key.len = 5;
    CHECK_OK(cairn_txn_range(t, true, &rq));
    struct cairn_txn *inner = cairn_txn_new();
    CHECK_OK(cairn_txn_if_mod_revision(inner, "txn/k", 5, NULL, 0, CAIRN_CMP_LESS, 1));
    CHECK_OK(cairn_txn_range(inner, false, &rq));
    CHECK_OK(cairn_txn_nest(t, true, inner));
    CHECK_EQ_INT(cairn_txn_request(t)->n_success, 3);
    CHECK_EQ_INT(cairn_txn_request(t)->n_failure, 1);
    CHECK_OK(cairn_txn_commit(c, t, NULL, res_cb, &r));
    cairn_txn_free(t); /* may go at once */
    WAIT(&r);
    CHECK_EQ_INT(r.code, 0);
    Etcdserverpb__TxnResponse *tr = (Etcdserverpb__TxnResponse *)r.msg;
    if (round == 0) {
      CHECK(tr->succeeded);
      CHECK_EQ_INT(tr->n_responses, 3);
      Etcdserverpb__RangeResponse *in = tr->responses[1]->response_range;
      CHECK(in && in->n_kvs == 1 && kv_is(in->kvs[0], "txn/k", "v1"));
      Etcdserverpb__TxnResponse *nested = tr->responses[2]->response_txn;
      CHECK(nested && !nested->succeeded && nested->n_responses == 1);
    } else {
      CHECK(!tr->succeeded);
      CHECK_EQ_INT(tr->n_responses, 1);
    }
    res_clear(&r);
  }
  struct res g;
  Etcdserverpb__RangeResponse *rr = get(c, "txn/then0", &g);
  CHECK(rr->n_kvs == 1 && kv_is(rr->kvs[0], "txn/then0", "T"));
  res_clear(&g);
  rr = get(c, "txn/else1", &g);
  CHECK(rr->n_kvs == 1 && kv_is(rr->kvs[0], "txn/else1", "E"));
  res_clear(&g);
  rr = get(c, "txn/then1", &g);
  CHECK_EQ_INT(rr->n_kvs, 0);
  res_clear(&g);

  /* The server's own refusal: the same key twice. */
  struct cairn_txn *dup = cairn_txn_new();
  Etcdserverpb__PutRequest pq = ETCDSERVERPB__PUT_REQUEST__INIT;
  pq.key.data = (uint8_t *)"txn/d";
  pq.key.len = 5;
  CHECK_OK(cairn_txn_put(dup, true, &pq));
  CHECK_OK(cairn_txn_put(dup, true, &pq));
  CHECK_OK(cairn_txn_commit(c, dup, NULL, res_cb, &r));
  cairn_txn_free(dup);
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_INVALID_ARGUMENT);
  CHECK(strcmp(r.message, "etcdserver: duplicate key given in txn request") == 0);
  res_clear(&r);
  client_done(c);
}

static void test_compact(void) {
  cairn_client *c = client_main();
  put(c, "cmp/a", "1");
  struct res r;
  Etcdserverpb__RangeResponse *rr = get(c, "cmp/a", &r);
  int64_t rev = rr->header->revision;
  res_clear(&r);
  CHECK_OK(cairn_compact(c, rev + 1000, false, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_OUT_OF_RANGE);
  CHECK(strcmp(r.message, "etcdserver: mvcc: required revision is a future revision") == 0);
  res_clear(&r);
  CHECK_OK(cairn_compact(c, rev, true, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
  CHECK_OK(cairn_compact(c, rev, false, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_OUT_OF_RANGE);
  CHECK(strcmp(r.message, "etcdserver: mvcc: required revision has been compacted") == 0);
  res_clear(&r);
  Etcdserverpb__RangeRequest at = ETCDSERVERPB__RANGE_REQUEST__INIT;
  at.key.data = (uint8_t *)"cmp/a";
  at.key.len = 5;
  at.revision = rev - 1;
  CHECK_OK(cairn_range(c, &at, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_OUT_OF_RANGE);
  CHECK(strcmp(r.message, "etcdserver: mvcc: required revision has been compacted") == 0);
  res_clear(&r);
  client_done(c);
}

static void test_lease(void) {
  cairn_client *c = client_main();
  struct res r = {0};
  CHECK_OK(cairn_lease_grant(c, 60, 0, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  int64_t id = ((Etcdserverpb__LeaseGrantResponse *)r.msg)->id;
  CHECK(id > 0);
  CHECK_EQ_INT(((Etcdserverpb__LeaseGrantResponse *)r.msg)->ttl, 60);
  res_clear(&r);
  Etcdserverpb__PutRequest pq = ETCDSERVERPB__PUT_REQUEST__INIT;
  pq.key.data = (uint8_t *)"lease/k";
  pq.key.len = 7;
  pq.lease = id;
  CHECK_OK(cairn_put(c, &pq, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
  CHECK_OK(cairn_lease_time_to_live(c, id, true, NULL, res_cb, &r));
  WAIT(&r);
  Etcdserverpb__LeaseTimeToLiveResponse *tl = (Etcdserverpb__LeaseTimeToLiveResponse *)r.msg;
  CHECK(tl->ttl > 50 && tl->ttl <= 60);
  CHECK_EQ_INT(tl->grantedttl, 60);
  CHECK_EQ_INT(tl->n_keys, 1);
  res_clear(&r);
  CHECK_OK(cairn_lease_leases(c, NULL, res_cb, &r));
  WAIT(&r);
  CHECK(((Etcdserverpb__LeaseLeasesResponse *)r.msg)->n_leases >= 1);
  res_clear(&r);
  CHECK_OK(cairn_lease_revoke(c, id, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
  struct res g;
  CHECK_EQ_INT(get(c, "lease/k", &g)->n_kvs, 0);
  res_clear(&g);
  CHECK_OK(cairn_lease_revoke(c, id, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_NOT_FOUND);
  CHECK(strcmp(r.message, "etcdserver: requested lease not found") == 0);
  res_clear(&r);
  client_done(c);
}

static void test_cluster(void) {
  cairn_client *c = client_main();
  struct res r = {0};
  CHECK_OK(cairn_member_list(c, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  Etcdserverpb__MemberListResponse *ml = (Etcdserverpb__MemberListResponse *)r.msg;
  CHECK_EQ_INT(ml->n_members, 1);
  CHECK(strcmp(ml->members[0]->name, "default") == 0);
  uint64_t id = ml->members[0]->id;
  res_clear(&r);
  struct cairn_call_opts o = {.endpoint = g_ep};
  CHECK_OK(cairn_status(c, &o, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  Etcdserverpb__StatusResponse *st = (Etcdserverpb__StatusResponse *)r.msg;
  CHECK(st->leader == id);
  CHECK(st->dbsize > 0);
  res_clear(&r);
  /* A member that does not exist. */
  CHECK_OK(cairn_member_remove(c, 12345, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_NOT_FOUND);
  CHECK(strcmp(r.message, "etcdserver: member not found") == 0);
  res_clear(&r);
  client_done(c);
}

static void snap_cb(void *data, const struct cairn_result *r, uint64_t bytes) {
  struct res *x = data;
  x->done = true;
  x->code = r->code;
  x->bytes = bytes;
  snprintf(x->message, sizeof x->message, "%s", r->message);
  CHECK(r->msg == NULL);
}

static void test_snapshot(void) {
  cairn_client *c = client_main();
  for (int i = 0; i < 200; i++) {
    char k[32];
    snprintf(k, sizeof k, "snap/%03d", i);
    put(c, k, "some value that takes room");
  }
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s.snap.db", g_dir);
  struct res r = {0};
  CHECK_OK(cairn_snapshot_save(c, path, NULL, snap_cb, &r));
  WAIT(&r);
  if (r.code != 0) {
    fprintf(stderr, "snapshot: %d %s\n", r.code, r.message);
  }
  CHECK_EQ_INT(r.code, 0);
  struct stat sb;
  CHECK(stat(path, &sb) == 0);
  CHECK_EQ_INT((uint64_t)sb.st_size, r.bytes);
  CHECK(r.bytes % 512 == 32); /* etcd's shape: pages, then the digest */
  char part[PATH_MAX + 8];
  snprintf(part, sizeof part, "%s.part", path);
  CHECK(access(part, F_OK) != 0);
  /* The digest at the end is the SHA-256 of the rest. */
  FILE *f = fopen(path, "rb");
  CHECK(f);
  uint8_t *buf = malloc(r.bytes);
  CHECK(buf && fread(buf, 1, r.bytes, f) == r.bytes);
  fclose(f);
  uint8_t md[32];
  unsigned mdl = 0;
  CHECK(EVP_Digest(buf, r.bytes - 32, md, &mdl, EVP_sha256(), NULL) == 1);
  CHECK(memcmp(md, buf + r.bytes - 32, 32) == 0);
  free(buf);
  unlink(path);
  /* A directory that does not exist: fails, nothing left. */
  struct res e = {0};
  CHECK_OK(cairn_snapshot_save(c, "/nonexistent-dir/x.db", NULL, snap_cb, &e));
  WAIT(&e);
  CHECK(e.code != 0);
  CHECK(strstr(e.message, "open /nonexistent-dir/x.db.part") != NULL);
  /* A client closed during a transfer ends it with CANCELLED. */
  struct res k = {0};
  CHECK_OK(cairn_snapshot_save(c, path, NULL, snap_cb, &k));
  client_done(c);
  CHECK(k.done);
  if (k.code != 0) { /* it may have finished first */
    CHECK_EQ_INT(k.code, GRPC_CANCELLED);
    CHECK(strcmp(k.message, GRPC_CLIENT_CLOSING_TEXT) == 0);
    CHECK(access(part, F_OK) != 0);
  }
  unlink(path);
}

/* Endpoints [dead port, live]: the call fails over and succeeds. */
static void test_failover(void) {
  char dead[64];
  snprintf(dead, sizeof dead, "127.0.0.1:%d", test_free_port());
  const char *eps[] = {dead, g_ep};
  cairn_client *c = client_for(eps, 2, 5000);
  CHECK(strcmp(cairn_client_endpoint(c), dead) == 0);
  struct res r = {0};
  CHECK_OK(cairn_get(c, "x", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  CHECK(strcmp(r.endpoint, g_ep + 7) == 0);
  CHECK(strcmp(cairn_client_endpoint(c), g_ep + 7) == 0);
  res_clear(&r);
  /* A write whose connection was refused was never sent: retried too. */
  const char *eps2[] = {dead, g_ep};
  cairn_client *c2 = client_for(eps2, 2, 5000);
  CHECK_OK(cairn_put_kv(c2, "fo", 2, "v", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
  /* Only the dead one: UNAVAILABLE retried until the deadline. */
  const char *only[] = {dead};
  cairn_client *c3 = client_for(only, 1, 300);
  uint64_t t0 = uv_now(&g_loop);
  CHECK_OK(cairn_get(c3, "x", 1, NULL, res_cb, &r));
  WAIT(&r);
  uv_update_time(&g_loop);
  CHECK(r.code == GRPC_UNAVAILABLE || r.code == GRPC_DEADLINE_EXCEEDED);
  CHECK(uv_now(&g_loop) - t0 >= 250 && uv_now(&g_loop) - t0 < 2000);
  res_clear(&r);
  /* Not retried: a refused write ends at once. */
  CHECK_OK(cairn_put_kv(c3, "x", 1, "v", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK(r.code == GRPC_UNAVAILABLE || r.code == GRPC_DEADLINE_EXCEEDED);
  res_clear(&r);
  client_done(c);
  client_done(c2);
  client_done(c3);
}

/* ---- bad servers ---------------------------------------------------------------- */

struct raw {
  uv_tcp_t l;
  uv_tcp_t *conns[8];
  int n;
  bool garbage;
};

static void raw_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  (void)h;
  (void)sz;
  static char sink[65536];
  *b = uv_buf_init(sink, sizeof sink);
}
static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  (void)b;
  if (n < 0) {
    uv_read_stop(s);
  }
}
static void raw_wrote(uv_write_t *w, int st) {
  (void)st;
  free(w);
}
static void raw_conn(uv_stream_t *l, int st) {
  CHECK_OK(st);
  struct raw *rs = l->data;
  CHECK(rs->n < 8);
  uv_tcp_t *t = malloc(sizeof *t);
  uv_tcp_init(l->loop, t);
  CHECK_OK(uv_accept(l, (uv_stream_t *)t));
  rs->conns[rs->n++] = t;
  uv_read_start((uv_stream_t *)t, raw_alloc, raw_read);
  if (rs->garbage) {
    static char junk[2048];
    for (size_t i = 0; i < sizeof junk; i++) {
      junk[i] = (char)test_rand();
    }
    uv_buf_t b = uv_buf_init(junk, sizeof junk);
    uv_write_t *w = malloc(sizeof *w);
    CHECK_OK(uv_write(w, (uv_stream_t *)t, &b, 1, raw_wrote));
  }
}
static void free_h(uv_handle_t *h) {
  free(h);
}
static void raw_start(struct raw *rs, int port, bool garbage) {
  memset(rs, 0, sizeof *rs);
  rs->garbage = garbage;
  uv_tcp_init(&g_loop, &rs->l);
  rs->l.data = rs;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", port, &a);
  CHECK_OK(uv_tcp_bind(&rs->l, (struct sockaddr *)&a, 0));
  CHECK_OK(uv_listen((uv_stream_t *)&rs->l, 8, raw_conn));
}
static void raw_stop(struct raw *rs) {
  for (int i = 0; i < rs->n; i++) {
    uv_close((uv_handle_t *)rs->conns[i], free_h);
  }
  bool done = false;
  rs->l.data = &done;
  uv_close((uv_handle_t *)&rs->l, NULL);
  uv_run(&g_loop, UV_RUN_NOWAIT);
}

static void test_bad_servers(void) {
  struct raw rs;
  int port = test_free_port();
  raw_start(&rs, port, true);
  char ep[64];
  snprintf(ep, sizeof ep, "127.0.0.1:%d", port);
  const char *eps[] = {ep};
  cairn_client *c = client_for(eps, 1, 10000);
  struct res r = {0};
  uint64_t t0 = uv_now(&g_loop);
  CHECK_OK(cairn_put_kv(c, "x", 1, "v", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_UNAVAILABLE);
  CHECK(uv_now(&g_loop) - t0 < 2000); /* fast: no hang */
  printf("    garbage server: \"%s\"\n", r.message);
  res_clear(&r);
  client_done(c);
  raw_stop(&rs);

  /* Silent after accept: the deadline ends the call. */
  raw_start(&rs, port, false);
  c = client_for(eps, 1, 400);
  t0 = uv_now(&g_loop);
  CHECK_OK(cairn_put_kv(c, "x", 1, "v", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, GRPC_DEADLINE_EXCEEDED);
  CHECK(strcmp(r.message, "context deadline exceeded") == 0);
  res_clear(&r);
  client_done(c);
  raw_stop(&rs);
}

static void on_stream_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  struct res *x = data;
  x->done = true;
  x->code = status;
  snprintf(x->message, sizeof x->message, "%s", message);
}

/* A stopped server: a unary call ends at its deadline; keepalive ends an
 * open stream whose server went silent. */
static void test_stopped_server(void) {
  char *dir = test_tmpdir("client-stop");
  int cport = test_free_port();
  pid_t pid = server_spawn(dir, cport, test_free_port());
  char ep[64];
  snprintf(ep, sizeof ep, "http://127.0.0.1:%d", cport);
  const char *eps[] = {ep};
  struct cairn_config cfg = {.endpoints = eps,
                             .n_endpoints = 1,
                             .request_timeout_ms = 30000,
                             .keepalive_time_ms = 200,
                             .keepalive_timeout_ms = 300};
  cairn_client *c;
  CHECK_OK(cairn_client_new(&g_loop, &cfg, &c));
  struct res r = {0};
  CHECK_OK(cairn_get(c, "x", 1, NULL, res_cb, &r));
  WAIT(&r);
  CHECK_EQ_INT(r.code, 0);
  res_clear(&r);
  /* A watch stream stays open and quiet. */
  struct grpc_client_handlers h = {.on_message = NULL, .on_done = on_stream_done};
  grpc_ccall *call;
  struct res sr = {0};
  CHECK_OK(cairn__stream(c, "/etcdserverpb.Watch/Watch", false, -1, 0, &h, &sr, &call, NULL));
  Etcdserverpb__WatchRequest wr = ETCDSERVERPB__WATCH_REQUEST__INIT;
  Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
  cr.key.data = (uint8_t *)"w";
  cr.key.len = 1;
  wr.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
  wr.create_request = &cr;
  uint8_t *b;
  size_t len;
  CHECK_OK(cairn__pack(&wr.base, &b, &len));
  CHECK_OK(grpc_ccall_send(call, b, len));
  free(b);
  /* Past a few keepalive periods with the server answering: still open. */
  uint64_t until = uv_now(&g_loop) + 1000;
  while (uv_now(&g_loop) < until && !sr.done) {
    uv_run(&g_loop, UV_RUN_NOWAIT);
    usleep(5000);
    uv_update_time(&g_loop);
  }
  CHECK(!sr.done);
  CHECK(kill(pid, SIGSTOP) == 0);
  /* A unary call to the stopped server ends at its own deadline. */
  struct cairn_call_opts o = {.timeout_ms = 300};
  uint64_t t0 = uv_now(&g_loop);
  CHECK_OK(cairn_put_kv(c, "y", 1, "v", 1, &o, res_cb, &r));
  WAIT(&r);
  if (r.code == GRPC_DEADLINE_EXCEEDED) {
    CHECK(strcmp(r.message, "context deadline exceeded") == 0);
  } else {
    /* The keepalive may have ended the connection first. */
    CHECK_EQ_INT(r.code, GRPC_UNAVAILABLE);
    CHECK(strstr(r.message, "keepalive ping timed out") != NULL);
  }
  CHECK(uv_now(&g_loop) - t0 < 1000);
  res_clear(&r);
  run_until(&sr.done);
  CHECK_EQ_INT(sr.code, GRPC_UNAVAILABLE);
  CHECK(strstr(sr.message, "keepalive ping timed out") != NULL);
  printf("    stopped server: \"%s\"\n", sr.message);
  client_done(c);
  server_kill(pid);
  test_rmdir(dir);
}

/* ---- the blocking API ---------------------------------------------------------------- */

struct worker {
  cairn_sync *s;
  int id;
  int ok;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  for (int i = 0; i < 50; i++) {
    char k[32], v[32];
    snprintf(k, sizeof k, "sync/%d/%d", w->id, i);
    snprintf(v, sizeof v, "v%d", i);
    Etcdserverpb__PutRequest pq = ETCDSERVERPB__PUT_REQUEST__INIT;
    pq.key.data = (uint8_t *)k;
    pq.key.len = strlen(k);
    pq.value.data = (uint8_t *)v;
    pq.value.len = strlen(v);
    Etcdserverpb__PutResponse *pr = NULL;
    struct cairn_error err;
    CHECK_OK(cairn_sync_put(w->s, &pq, NULL, &pr, &err));
    CHECK(pr && pr->header->revision > 0);
    CHECK(err.message[0] == '\0');
    cairn_response_free(&pr->base);
    Etcdserverpb__RangeRequest rq = ETCDSERVERPB__RANGE_REQUEST__INIT;
    rq.key = pq.key;
    Etcdserverpb__RangeResponse *rr = NULL;
    CHECK_OK(cairn_sync_range(w->s, &rq, NULL, &rr, NULL));
    CHECK(rr->n_kvs == 1 && kv_is(rr->kvs[0], k, v));
    cairn_response_free(&rr->base);
    w->ok++;
  }
  return NULL;
}

static cairn_sync *g_sync_for_nested;

static int run_fn(cairn_client *c, void *data) {
  CHECK(cairn_client_loop(c) != NULL);
  /* From the loop thread itself: refused, not a deadlock. */
  CHECK_ERR(cairn_sync_run(g_sync_for_nested, run_fn, NULL), CAIRN_EINVAL);
  if (data) {
    *(int *)data = 42;
  }
  return 7;
}

static void test_sync(void) {
  const char *eps[] = {g_ep};
  struct cairn_config cfg = {.endpoints = eps, .n_endpoints = 1};
  cairn_sync *s;
  CHECK_OK(cairn_sync_new(&cfg, &s));
  g_sync_for_nested = s;
  int x = 0;
  CHECK_EQ_INT(cairn_sync_run(s, run_fn, &x), 7);
  CHECK_EQ_INT(x, 42);
  struct worker w[2] = {{s, 0, 0}, {s, 1, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    CHECK(pthread_create(&th[i], NULL, worker_main, &w[i]) == 0);
  }
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    CHECK_EQ_INT(w[i].ok, 50);
  }
  /* Errors come back as positive gRPC codes with the server's text. */
  struct cairn_error err;
  Etcdserverpb__PutRequest empty = ETCDSERVERPB__PUT_REQUEST__INIT;
  CHECK_EQ_INT(cairn_sync_put(s, &empty, NULL, NULL, &err), GRPC_INVALID_ARGUMENT);
  CHECK(strcmp(err.message, "etcdserver: key is not provided") == 0);
  CHECK(strcmp(err.endpoint, g_ep + 7) == 0);
  Etcdserverpb__LeaseGrantResponse *lg = NULL;
  CHECK_OK(cairn_sync_lease_grant(s, 30, 0, NULL, &lg, NULL));
  CHECK_OK(cairn_sync_lease_revoke(s, lg->id, NULL, NULL));
  cairn_response_free(&lg->base);
  struct cairn_txn *t = cairn_txn_new();
  CHECK_OK(cairn_txn_if_version(t, "sync/0/0", 8, NULL, 0, CAIRN_CMP_GREATER, 0));
  Etcdserverpb__TxnResponse *tr = NULL;
  CHECK_OK(cairn_sync_txn(s, t, NULL, &tr, NULL));
  CHECK(tr->succeeded);
  cairn_response_free(&tr->base);
  cairn_txn_free(t);
  Etcdserverpb__MemberListResponse *ml = NULL;
  CHECK_OK(cairn_sync_member_list(s, NULL, &ml, NULL));
  CHECK_EQ_INT(ml->n_members, 1);
  cairn_response_free(&ml->base);
  Etcdserverpb__StatusResponse *st = NULL;
  CHECK_OK(cairn_sync_status(s, NULL, &st, NULL));
  cairn_response_free(&st->base);
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s.sync-snap.db", g_dir);
  uint64_t bytes = 0;
  CHECK_OK(cairn_sync_snapshot_save(s, path, NULL, &bytes, &err));
  CHECK(bytes > 32 && bytes % 512 == 32);
  unlink(path);
  cairn_sync_close(s);
}

int main(void) {
  alarm(WATCHDOG_S);
  signal(SIGPIPE, SIG_IGN);
  test_seed("test_client_core");
  const char *which = getenv("CAIRN_TEST_SERVER");
  g_etcd = which && strcmp(which, "etcd") == 0;
  if (g_etcd && access("/usr/bin/etcd", X_OK) != 0) {
    printf("  /usr/bin/etcd is not installed: nothing to run against\n");
    return 1;
  }
  printf("  server: %s\n", g_etcd ? "etcd" : "cairn");
  CHECK_OK(uv_loop_init(&g_loop));
  g_dir = test_tmpdir(g_etcd ? "client-core-etcd" : "client-core");
  int cport = test_free_port();
  snprintf(g_ep, sizeof g_ep, "http://127.0.0.1:%d", cport);
  g_pid = server_spawn(g_dir, cport, test_free_port());
  TEST_RUN(test_helpers);
  TEST_RUN(test_new_errors);
  TEST_RUN(test_server_up);
  TEST_RUN(test_kv);
  TEST_RUN(test_txn);
  TEST_RUN(test_compact);
  TEST_RUN(test_lease);
  TEST_RUN(test_cluster);
  TEST_RUN(test_snapshot);
  TEST_RUN(test_failover);
  TEST_RUN(test_bad_servers);
  TEST_RUN(test_sync);
  TEST_RUN(test_stopped_server);
  server_kill(g_pid);
  uv_run(&g_loop, UV_RUN_DEFAULT);
  CHECK_OK(uv_loop_close(&g_loop));
  char log[PATH_MAX];
  snprintf(log, sizeof log, "%s.log", g_dir);
  unlink(log);
  test_rmdir(g_dir);
  printf("test_client_core: ok\n");
  return 0;
}
