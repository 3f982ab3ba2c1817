/* server/publish.c: a follower publishes its attributes through the leader
 * (see publish.h). */
#include "server/publish.h"

#include <stdlib.h>
#include <string.h>

#include "internal.pb-c.h"
#include "wire/grpc_client.h"

#define PUBLISH_PATH "/cairnserverpb.Internal/Publish"
#define LEADER_URL_MAX 1024u

struct publisher {
  struct server *s;
  uv_timer_t timer;
  grpc_client *client;
  uint64_t client_leader;
  grpc_ccall *call; /* in flight */
  bool stopped;
};

static struct publisher pub;

static void on_client_closed(void *data) {
  (void)data;
}

static void drop_client(struct publisher *p) {
  if (p->client != NULL) {
    grpc_client_close(p->client, on_client_closed, NULL);
    p->client = NULL;
  }
}

static void on_published(void *data, int status, const char *message, const uint8_t *resp,
                         size_t resp_len) {
  struct publisher *p = data;
  (void)resp;
  (void)resp_len;
  p->call = NULL;
  if (status != GRPC_OK && !p->stopped) {
    server_log(LOG_DEBUG, "publish to the leader: %s (code %d); trying again", message, status);
    if (status == GRPC_UNAVAILABLE) {
      drop_client(p); /* a new connection next time */
    }
  }
}

static void on_tick(uv_timer_t *t) {
  struct publisher *p = t->data;
  struct server *s = p->s;
  if (p->stopped || s->stopping || p->call != NULL || raftnode_self_published(s->raft)) {
    return;
  }
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  if (st.is_leader || st.leader_id == 0) {
    return; /* the leader publishes itself; without one, wait */
  }
  if (p->client == NULL || p->client_leader != st.leader_id) {
    drop_client(p);
    char url[LEADER_URL_MAX];
    if (raftnode_member_client_url(s->raft, st.leader_id, url, sizeof url) != 0) {
      return; /* the leader has not published yet */
    }
    struct grpc_client_options o = {0};
    const struct config *c = &s->cfg;
    if (strncmp(url, "https://", 8) == 0) {
      o.ca_file = c->trusted_ca_file[0] ? c->trusted_ca_file : NULL;
      o.cert_file = c->cert_file[0] ? c->cert_file : NULL;
      o.key_file = c->key_file[0] ? c->key_file : NULL;
    }
    o.connect_timeout_ms = 2u * (c->election_ms ? c->election_ms : 1000u);
    if (grpc_client_new(s->loop, url, &o, &p->client) != 0) {
      p->client = NULL;
      return;
    }
    p->client_leader = st.leader_id;
  }
  /* The attributes, from the flags. */
  char buf[sizeof s->cfg.advertise_client_urls];
  snprintf(buf, sizeof buf, "%s", s->cfg.advertise_client_urls);
  char *urls[CONFIG_URLS_MAX];
  size_t n = 0;
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok != NULL && n < CONFIG_URLS_MAX;
       tok = strtok_r(NULL, ",", &save)) {
    while (*tok == ' ') {
      tok++;
    }
    if (*tok != 0) {
      urls[n++] = tok;
    }
  }
  Cairnserverpb__PublishRequest req = CAIRNSERVERPB__PUBLISH_REQUEST__INIT;
  req.id = st.member_id;
  req.name = s->cfg.name;
  req.n_clienturls = n;
  req.clienturls = urls;
  size_t len = cairnserverpb__publish_request__get_packed_size(&req);
  uint8_t *msg = malloc(len ? len : 1);
  if (msg == NULL) {
    return;
  }
  cairnserverpb__publish_request__pack(&req, msg);
  uint64_t timeout_ms = 5000u + 2u * (s->cfg.election_ms ? s->cfg.election_ms : 1000u);
  int rc = grpc_client_unary(p->client, PUBLISH_PATH, NULL, 0, timeout_ms, msg, len, &p->call,
                             on_published, p);
  free(msg);
  if (rc != 0) {
    p->call = NULL;
  }
}

int publish_init(struct server *s) {
  memset(&pub, 0, sizeof pub);
  pub.s = s;
  uv_timer_init(s->loop, &pub.timer);
  pub.timer.data = &pub;
  uv_timer_start(&pub.timer, on_tick, PUBLISH_RETRY_MS / 5, PUBLISH_RETRY_MS);
  return 0;
}

void publish_stop(struct server *s) {
  (void)s;
  if (pub.stopped || pub.s == NULL) {
    return;
  }
  pub.stopped = true;
  uv_timer_stop(&pub.timer);
  uv_close((uv_handle_t *)&pub.timer, NULL);
  if (pub.call != NULL) {
    grpc_ccall_cancel(pub.call);
  }
  drop_client(&pub);
}
