/* tests/client/client_lease_probe.c: grants a lease, attaches keys to it and
 * keeps it alive with libcairn's keep-alive, for the cluster tests
 * (tests/cluster/test_client_lease_failover.py).
 *
 *   client_lease_probe --endpoints a,b,c --ttl N [--put KEY=VALUE]...
 *                      [common flags of probe.h]
 *
 * Prints, one line each, flushed:
 *   GRANTED <id hex> <ttl> <endpoint>     the grant's answer
 *   PUT <key> <revision>                  each --put, with the lease
 *   RENEWED <id hex> <ttl> <endpoint>     each keep-alive answer (endpoint:
 *                                         the client's current one)
 *   END <code> <message...>               the keep-alive is over, a call
 *                                         failed, or SIGTERM/SIGINT
 *                                         ("END 1 stopped")
 * Exit status: 0 after SIGTERM/SIGINT, 1 otherwise, 2 on bad flags. */
#include <signal.h>

#include "probe.h"

static const char *PROG = "client_lease_probe";

#define LEASE_PROBE_PUTS_MAX 16u

struct lease_probe {
  uv_loop_t *loop;
  cairn_client *client;
  cairn_keepalive *ka; /* NULL before the grant and once over */
  int64_t id;
  const char *puts[LEASE_PROBE_PUTS_MAX];
  size_t n_puts, next_put;
  uv_signal_t sig_term, sig_int;
  bool over;
  int exit_code;
};

static void finish(struct lease_probe *p, int code, const char *message, int exit_code) {
  if (p->over)
    return;
  p->over = true;
  if (p->ka != NULL) {
    cairn_keepalive_stop(p->ka);
    p->ka = NULL;
  }
  printf("END %d %s\n", code, message);
  fflush(stdout);
  p->exit_code = exit_code;
  uv_close((uv_handle_t *)&p->sig_term, NULL);
  uv_close((uv_handle_t *)&p->sig_int, NULL);
  cairn_client_close(p->client, NULL, NULL);
}

static void on_renewed(void *data, int64_t id, int64_t ttl_s) {
  struct lease_probe *p = data;
  printf("RENEWED %" PRIx64 " %" PRId64 " %s\n", (uint64_t)id, ttl_s,
         cairn_client_endpoint(p->client));
  fflush(stdout);
}

static void on_ka_end(void *data, int64_t id, int code, const char *message) {
  struct lease_probe *p = data;
  (void)id;
  p->ka = NULL;
  finish(p, code, message, 1);
}

static void put_next(struct lease_probe *p);

static void on_put(void *data, const struct cairn_result *r) {
  struct lease_probe *p = data;
  if (p->over)
    return;
  if (r->code != 0) {
    finish(p, r->code, r->message, 1);
    return;
  }
  const Etcdserverpb__PutResponse *resp = (const Etcdserverpb__PutResponse *)r->msg;
  const char *kv = p->puts[p->next_put];
  printf("PUT ");
  probe_print_bytes(stdout, (const uint8_t *)kv, (size_t)(strchr(kv, '=') - kv));
  printf(" %" PRId64 "\n", resp->header != NULL ? resp->header->revision : 0);
  fflush(stdout);
  p->next_put++;
  put_next(p);
}

static void put_next(struct lease_probe *p) {
  if (p->next_put == p->n_puts)
    return;
  const char *kv = p->puts[p->next_put];
  const char *eq = strchr(kv, '=');
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  req.key.data = (uint8_t *)(uintptr_t)kv;
  req.key.len = (size_t)(eq - kv);
  req.value.data = (uint8_t *)(uintptr_t)(eq + 1);
  req.value.len = strlen(eq + 1);
  req.lease = p->id;
  int rc = cairn_put(p->client, &req, NULL, on_put, p);
  if (rc != 0)
    finish(p, cairn_grpc_code(rc), cairn_strerror(rc), 1);
}

static void on_grant(void *data, const struct cairn_result *r) {
  struct lease_probe *p = data;
  if (p->over)
    return;
  if (r->code != 0) {
    finish(p, r->code, r->message, 1);
    return;
  }
  const Etcdserverpb__LeaseGrantResponse *resp = (const Etcdserverpb__LeaseGrantResponse *)r->msg;
  p->id = resp->id;
  printf("GRANTED %" PRIx64 " %" PRId64 " %s\n", (uint64_t)resp->id, resp->ttl, r->endpoint);
  fflush(stdout);
  struct cairn_keepalive_handlers h = {.on_renewed = on_renewed, .on_end = on_ka_end};
  int rc = cairn_keepalive_start(p->client, p->id, &h, p, &p->ka);
  if (rc != 0) {
    finish(p, cairn_grpc_code(rc), cairn_strerror(rc), 1);
    return;
  }
  put_next(p);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)signum;
  finish(h->data, 1, "stopped", 0);
}

int main(int argc, char **argv) {
  struct probe_common pc = {0};
  struct lease_probe p = {.loop = uv_default_loop()};
  int64_t ttl = 0;
  for (int i = 1; i < argc; i++) {
    if (probe_common_flag(PROG, &pc, argc, argv, &i))
      continue;
    if (strcmp(argv[i], "--ttl") == 0 && i + 1 < argc) {
      ttl = probe_number(PROG, "--ttl", argv[++i]);
    } else if (strcmp(argv[i], "--put") == 0 && i + 1 < argc) {
      const char *kv = argv[++i];
      if (strchr(kv, '=') == NULL || kv[0] == '=')
        probe_die(PROG, "--put wants KEY=VALUE, not '%s'", kv);
      if (p.n_puts == LEASE_PROBE_PUTS_MAX)
        probe_die(PROG, "%s", "too many --put");
      p.puts[p.n_puts++] = kv;
    } else {
      probe_die(PROG, "unknown or incomplete flag '%s'", argv[i]);
    }
  }
  if (ttl <= 0)
    probe_die(PROG, "%s", "--ttl N (seconds, > 0) is required");
  p.client = probe_client(PROG, &pc, p.loop);
  uv_signal_init(p.loop, &p.sig_term);
  uv_signal_init(p.loop, &p.sig_int);
  p.sig_term.data = &p;
  p.sig_int.data = &p;
  uv_signal_start(&p.sig_term, on_signal, SIGTERM);
  uv_signal_start(&p.sig_int, on_signal, SIGINT);
  int rc = cairn_lease_grant(p.client, ttl, 0, NULL, on_grant, &p);
  if (rc != 0) {
    fprintf(stderr, "%s: cairn_lease_grant: %s\n", PROG, cairn_strerror(rc));
    finish(&p, cairn_grpc_code(rc), cairn_strerror(rc), 1);
  }
  uv_run(p.loop, UV_RUN_DEFAULT);
  uv_loop_close(p.loop);
  probe_free(&pc);
  return p.exit_code;
}
