/* server/forward.c: followers forward to the leader; linearizable reads wait
 * for the read index. See forward.h. */
#include "server/forward.h"

#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "common/cairn_error.h"
#include "internal.pb-c.h"
#include "wire/grpc_client.h"

#define PATH_READ_INDEX "/cairnserverpb.Internal/ReadIndex"
#define CALLTAB_BUCKETS 4096u
/* How often held calls look for a leader and at their deadlines. */
#define FORWARD_TICK_MS 20u
#define LEADER_URL_MAX 512u

/* What a held call waits for. */
enum held_kind {
  HELD_UNARY,     /* a forwarded unary call */
  HELD_KEEPALIVE, /* a forwarded LeaseKeepAlive stream */
  HELD_READ,      /* a linearizable read waiting for its read index */
  HELD_MONITORED  /* a stream with "hasleader": ended when the leader is lost */
};

enum held_state {
  WAIT_LEADER,   /* no leader known yet (unary, keepalive: first message) */
  WAIT_UPSTREAM, /* sent to the leader */
  WAIT_INDEX,    /* read: in a ReadIndex batch */
  WAIT_APPLIED,  /* read: raftnode_wait_applied(); forwarded write: our revision */
  DONE
};

struct fwd;

struct held {
  struct held *hash_next; /* calltab chain */
  struct held *next;      /* the list of its state */
  struct fwd *f;
  grpc_call *key;  /* the call it was filed under */
  bool in_table;
  grpc_call *call; /* NULL once closed */
  enum held_kind kind;
  enum held_state state;
  const struct grpc_method *orig; /* the registered method (local dispatch) */
  bool local;                     /* handed to orig: its on_close gets the close */
  uint64_t deadline_ms;
  uint64_t leader_wait_until; /* WAIT_LEADER: "no leader" after this (loop time) */
  uint8_t *msg; /* the request (unary, read) */
  size_t len;
  server_read_fn read_fn;
  void *read_ctx;
  void (*plain_cb)(void *data, int status); /* a read with no call (/health) */
  void *plain_data;
  uint8_t *resp; /* a forwarded answer waiting for our revision */
  size_t resp_len;
  int64_t revision;
  grpc_ccall *up; /* the upstream call */
  unsigned retries;
  /* keepalive: messages received before the upstream stream was open */
  uint8_t **ka_pending;
  size_t *ka_pending_len;
  size_t n_ka_pending;
  bool half_closed;
};

struct held_list {
  struct held *head;
};

struct fwd {
  struct server *s;
  struct held *buckets[CALLTAB_BUCKETS];
  unsigned n_held;
  struct held_list no_leader;  /* WAIT_LEADER */
  struct held_list revision;   /* forwarded answers waiting for our revision */
  struct held_list index_next; /* reads for the next ReadIndex call */
  struct held_list index_cur;  /* reads of the ReadIndex call in flight */
  bool index_in_flight;
  grpc_client *client; /* to the leader */
  uint64_t client_leader;
  char client_url[LEADER_URL_MAX];
  uint64_t url_warned_ms;
  uv_timer_t tick;
  uv_check_t check;
  bool closing;
  unsigned clients_closing;
  void (*closed_cb)(void *data);
  void *closed_data;
  struct grpc_method unary_method;
  struct grpc_method keepalive_method;
  struct grpc_method no_leader_method;
  struct grpc_method no_leader_stream;
  struct grpc_method learner_method;
  struct grpc_method learner_stream;
  struct grpc_method learner_range_method;
  struct grpc_method range_method; /* the registered Range */
  struct grpc_method monitor_method;
  unsigned n_monitored;
  uint64_t leaderless_since; /* loop time; 0: a leader is known */
  struct grpc_method read_method;
};

static struct fwd *g_fwd;


/* ---- the table of held calls ---------------------------------------------- */

static size_t bucket_of(const grpc_call *call) {
  uintptr_t p = (uintptr_t)call;
  p ^= p >> 17;
  p *= 0x9e3779b97f4a7c15ull;
  return (size_t)(p >> 40) % CALLTAB_BUCKETS;
}

static struct held *held_find(struct fwd *f, const grpc_call *call) {
  if (f->n_held == 0) {
    return NULL;
  }
  for (struct held *h = f->buckets[bucket_of(call)]; h != NULL; h = h->hash_next) {
    if (h->key == call) {
      return h;
    }
  }
  return NULL;
}

static struct held *held_new(struct fwd *f, grpc_call *call, enum held_kind kind) {
  if (f->n_held >= FORWARD_CALLS_MAX) {
    return NULL;
  }
  struct held *h = calloc(1, sizeof *h);
  if (h == NULL) {
    return NULL;
  }
  h->f = f;
  h->call = call;
  h->key = call;
  h->kind = kind;
  size_t b = bucket_of(call);
  h->hash_next = f->buckets[b];
  f->buckets[b] = h;
  h->in_table = true;
  f->n_held++;
  return h;
}

/* Takes h out of the table: from its close on, its call's address may be
 * reused by a new call. */
static void table_remove(struct held *h) {
  if (!h->in_table) {
    return;
  }
  struct fwd *f = h->f;
  for (struct held **pp = &f->buckets[bucket_of(h->key)]; *pp != NULL; pp = &(*pp)->hash_next) {
    if (*pp == h) {
      *pp = h->hash_next;
      break;
    }
  }
  h->hash_next = NULL;
  h->in_table = false;
  f->n_held--;
}

static void list_push(struct held_list *l, struct held *h) {
  h->next = l->head;
  l->head = h;
}

static void list_remove(struct held_list *l, struct held *h) {
  for (struct held **pp = &l->head; *pp != NULL; pp = &(*pp)->next) {
    if (*pp == h) {
      *pp = h->next;
      h->next = NULL;
      return;
    }
  }
}

/* Removes h from the table (its call is over for us) and frees it, unless
 * an upstream call still refers to it (its on_done frees it). */
static void held_release(struct held *h) {
  table_remove(h);
  h->state = DONE;
  if (h->up != NULL) {
    return;
  }
  for (size_t i = 0; i < h->n_ka_pending; i++) {
    free(h->ka_pending[i]);
  }
  free(h->ka_pending);
  free(h->ka_pending_len);
  free(h->msg);
  free(h->resp);
  free(h);
}

/* ---- leader --------------------------------------------------------------- */

static bool is_leader(struct server *s, uint64_t *leader) {
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  *leader = st.leader_id;
  return st.is_leader;
}

static uint64_t request_timeout_ms(struct server *s) {
  return 5000u + 2u * (s->cfg.election_ms ? s->cfg.election_ms : 1000u);
}

static void on_client_closed(void *data) {
  struct fwd *f = data;
  f->clients_closing--;
}

/* The client to the current leader, or NULL (no leader, or its URL is not
 * known yet, or it is us). */
static grpc_client *leader_client(struct fwd *f) {
  uint64_t leader;
  if (is_leader(f->s, &leader)) {
    return NULL;
  }
  if (leader == 0) {
    uint64_t now = uv_now(f->s->loop);
    if (now >= f->url_warned_ms + 1000u) {
      f->url_warned_ms = now;
      server_log(LOG_INFO, "no leader known: holding forwarded calls and reads");
    }
    return NULL;
  }
  if (f->client != NULL && f->client_leader == leader) {
    return f->client;
  }
  char url[LEADER_URL_MAX];
  int rc = raftnode_member_client_url(f->s->raft, leader, url, sizeof url);
  if (rc != 0) {
    uint64_t now = uv_now(f->s->loop);
    if (now >= f->url_warned_ms + 1000u) {
      f->url_warned_ms = now;
      server_log(LOG_WARN, "cannot reach the leader %016llx yet: %s (its client URL is not in the member table)",
                 (unsigned long long)leader, cairn_strerror(rc));
    }
    return NULL;
  }
  if (f->client != NULL) {
    f->clients_closing++;
    grpc_client_close(f->client, on_client_closed, f);
    f->client = NULL;
  }
  struct grpc_client_options o = {0};
  const struct config *c = &f->s->cfg;
  bool tls = strncmp(url, "https://", 8) == 0;
  if (tls) {
    o.ca_file = c->trusted_ca_file[0] ? c->trusted_ca_file : NULL;
    o.cert_file = c->cert_file[0] ? c->cert_file : NULL;
    o.key_file = c->key_file[0] ? c->key_file : NULL;
  }
  o.connect_timeout_ms = 2u * (c->election_ms ? c->election_ms : 1000u);
  if (grpc_client_new(f->s->loop, url, &o, &f->client) != 0) {
    f->client = NULL;
    return NULL;
  }
  f->client_leader = leader;
  snprintf(f->client_url, sizeof f->client_url, "%s", url);
  server_log(LOG_INFO, "forwarding to the leader %016llx at %s", (unsigned long long)leader, url);
  return f->client;
}

static uint64_t remaining_ms(struct fwd *f, const struct held *h) {
  uint64_t now = uv_now(f->s->loop);
  return h->deadline_ms > now ? h->deadline_ms - now : 1;
}

static void held_deadline(struct fwd *f, struct held *h) {
  uint64_t t = request_timeout_ms(f->s);
  uint64_t d = h->call != NULL ? grpc_call_deadline(h->call) : 0;
  uint64_t now = uv_now(f->s->loop);
  h->deadline_ms = now + t;
  if (d != 0 && d < h->deadline_ms) {
    h->deadline_ms = d;
  }
}

static void on_tick(uv_timer_t *t);
static void on_check(uv_check_t *c);

static void tick_start(struct fwd *f) {
  if (!uv_is_active((uv_handle_t *)&f->tick) && !f->closing) {
    uv_timer_start(&f->tick, on_tick, FORWARD_TICK_MS, FORWARD_TICK_MS);
  }
}

/* ---- response headers ----------------------------------------------------- */

/* The response message type of each forwarded path. */
struct fwd_path {
  const char *path;
  const ProtobufCMessageDescriptor *resp;
};

static const struct fwd_path fwd_paths[] = {
    {"/etcdserverpb.KV/Put", &etcdserverpb__put_response__descriptor},
    {"/etcdserverpb.KV/DeleteRange", &etcdserverpb__delete_range_response__descriptor},
    {"/etcdserverpb.KV/Txn", &etcdserverpb__txn_response__descriptor},
    {"/etcdserverpb.KV/Compact", &etcdserverpb__compaction_response__descriptor},
    {"/etcdserverpb.Lease/LeaseGrant", &etcdserverpb__lease_grant_response__descriptor},
    {"/etcdserverpb.Lease/LeaseRevoke", &etcdserverpb__lease_revoke_response__descriptor},
    {"/etcdserverpb.Lease/LeaseTimeToLive", &etcdserverpb__lease_time_to_live_response__descriptor},
    {"/etcdserverpb.Lease/LeaseLeases", &etcdserverpb__lease_leases_response__descriptor},
    {"/etcdserverpb.Lease/LeaseKeepAlive", &etcdserverpb__lease_keep_alive_response__descriptor},
    {"/etcdserverpb.Cluster/MemberAdd", &etcdserverpb__member_add_response__descriptor},
    {"/etcdserverpb.Cluster/MemberRemove", &etcdserverpb__member_remove_response__descriptor},
    {"/etcdserverpb.Cluster/MemberUpdate", &etcdserverpb__member_update_response__descriptor},
    {"/etcdserverpb.Cluster/MemberPromote", &etcdserverpb__member_promote_response__descriptor},
};

static const struct fwd_path *fwd_path_find(const char *path) {
  for (size_t i = 0; i < sizeof fwd_paths / sizeof fwd_paths[0]; i++) {
    if (strcmp(fwd_paths[i].path, path) == 0) {
      return &fwd_paths[i];
    }
  }
  return NULL;
}

/* Rewrites the member id of an answer's header to ours; *revision gets the
 * header's revision (0 if none). The answer is relayed unchanged when it
 * does not decode (the client judges it). Returns a malloc'd message. */
static uint8_t *rewrite_header(struct server *s, const char *path, const uint8_t *msg, size_t len,
                               size_t *out_len, int64_t *revision) {
  *revision = 0;
  const struct fwd_path *fp = fwd_path_find(path);
  ProtobufCMessage *m = fp ? protobuf_c_message_unpack(fp->resp, NULL, len, msg) : NULL;
  if (m == NULL) {
    uint8_t *copy = malloc(len ? len : 1);
    if (copy != NULL) {
      memcpy(copy, msg, len);
      *out_len = len;
    }
    return copy;
  }
  const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(fp->resp, "header");
  if (fd != NULL) {
    Etcdserverpb__ResponseHeader *hdr = *(Etcdserverpb__ResponseHeader **)((char *)m + fd->offset);
    if (hdr != NULL) {
      struct raftnode_status st;
      raftnode_status(s->raft, &st);
      hdr->member_id = st.member_id;
      *revision = hdr->revision;
    }
  }
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf != NULL) {
    protobuf_c_message_pack(m, buf);
    *out_len = n;
  }
  protobuf_c_message_free_unpacked(m, NULL);
  return buf;
}

/* ---- forwarded unary calls ------------------------------------------------ */

static void unary_send(struct fwd *f, struct held *h);

static void finish_held(struct held *h, int status, const char *message) {
  if (h->call != NULL) {
    grpc_call_finish(h->call, status, message);
  }
}

static void reply_held(struct held *h) {
  if (h->call != NULL) {
    if (grpc_call_send(h->call, h->resp, h->resp_len) == 0) {
      grpc_call_finish(h->call, GRPC_OK, NULL);
    } else {
      grpc_call_finish(h->call, GRPC_INTERNAL, "cairn: cannot send the answer");
    }
  }
}

/* Hands a held call to the registered method: this member leads now. */
static void dispatch_local(struct fwd *f, struct held *h) {
  (void)f;
  h->local = true;
  if (h->call != NULL) {
    h->orig->on_message(h->call, h->msg, h->len, h->orig->ctx);
  }
}

/* Whether a failed forward certainly never reached a leader that applied
 * it, so that sending it again cannot apply it twice: the old leader
 * refused it, or no connection was ever made. */
static bool retryable(int status, const char *message) {
  if (strcmp(message, cairn_strerror(CAIRN_ENOT_LEADER)) == 0) {
    return true;
  }
  return status == GRPC_UNAVAILABLE &&
         (strstr(message, ": connect") != NULL || strstr(message, ": resolve") != NULL);
}

static void on_unary_answer(void *data, int status, const char *message, const uint8_t *resp,
                            size_t resp_len) {
  struct held *h = data;
  struct fwd *f = h->f;
  h->up = NULL;
  if (h->state == DONE || h->call == NULL) {
    held_release(h);
    return;
  }
  if (status != GRPC_OK) {
    if (retryable(status, message) && h->retries < 3 && !f->closing) {
      /* Never applied: try the leader as it is now. */
      h->retries++;
      uint64_t e = f->s->cfg.election_ms ? f->s->cfg.election_ms : 1000u;
      h->leader_wait_until = uv_now(f->s->loop) + FORWARD_NO_LEADER_WAIT_ELECTIONS * e;
      h->state = WAIT_LEADER;
      list_push(&f->no_leader, h);
      tick_start(f);
      return;
    }
    if (status == GRPC_UNAVAILABLE && strstr(message, "etcdserver:") == NULL) {
      /* The connection to the leader broke with the call in flight: its
       * fate is unknown, as for a proposal whose leader stepped down. */
      finish_held(h, cairn_grpc_code(CAIRN_ELEADER_CHANGED), cairn_strerror(CAIRN_ELEADER_CHANGED));
      return;
    }
    finish_held(h, status, message);
    return;
  }
  h->resp = rewrite_header(f->s, grpc_call_path(h->call), resp, resp_len, &h->resp_len, &h->revision);
  if (h->resp == NULL) {
    finish_held(h, GRPC_RESOURCE_EXHAUSTED, "cairn: out of memory");
    return;
  }
  if (h->revision > mvcc_current_revision(f->s->store)) {
    /* Answer once our own store has the write (bounded by the deadline). */
    h->state = WAIT_APPLIED;
    list_push(&f->revision, h);
    uv_check_start(&f->check, on_check);
    tick_start(f);
    return;
  }
  reply_held(h);
}

static void unary_send(struct fwd *f, struct held *h) {
  grpc_client *c = leader_client(f);
  uint64_t leader;
  if (c == NULL) {
    if (is_leader(f->s, &leader)) {
      dispatch_local(f, h);
      return;
    }
    if (h->state != WAIT_LEADER) {
      uint64_t e = f->s->cfg.election_ms ? f->s->cfg.election_ms : 1000u;
      h->leader_wait_until = uv_now(f->s->loop) + FORWARD_NO_LEADER_WAIT_ELECTIONS * e;
    }
    h->state = WAIT_LEADER;
    list_push(&f->no_leader, h);
    tick_start(f);
    return;
  }
  struct grpc_metadata md[2] = {{FORWARD_HEADER, "1"}, {"hasleader", "true"}};
  h->state = WAIT_UPSTREAM;
  int rc = grpc_client_unary(c, grpc_call_path(h->call), md, 1, remaining_ms(f, h), h->msg,
                             h->len, &h->up, on_unary_answer, h);
  if (rc != 0) {
    h->up = NULL;
    finish_held(h, cairn_grpc_code(rc == CAIRN_EBUSY ? CAIRN_ETOO_MANY_REQUESTS : rc),
                cairn_strerror(rc == CAIRN_EBUSY ? CAIRN_ETOO_MANY_REQUESTS : rc));
  }
}

static void fwd_unary_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct fwd *f = ctx;
  struct held *h = held_new(f, call, HELD_UNARY);
  if (h == NULL) {
    server_fail(call, CAIRN_ETOO_MANY_REQUESTS);
    return;
  }
  h->orig = grpc_call_user(call);
  grpc_call_set_user(call, NULL);
  h->msg = malloc(len ? len : 1);
  if (h->msg == NULL) {
    held_release(h);
    server_fail(call, CAIRN_ENOMEM);
    return;
  }
  memcpy(h->msg, msg, len);
  h->len = len;
  held_deadline(f, h);
  unary_send(f, h);
}

static void fwd_close(grpc_call *call, void *ctx) {
  struct fwd *f = ctx;
  struct held *h = held_find(f, call);
  if (h == NULL) {
    /* Closed before its message came: the router parked the method here. */
    return;
  }
  if (h->local && h->orig->on_close != NULL) {
    h->orig->on_close(call, h->orig->ctx);
  }
  switch (h->state) {
    case WAIT_LEADER:
      list_remove(&f->no_leader, h);
      break;
    case WAIT_APPLIED:
      list_remove(&f->revision, h);
      break;
    default:
      break;
  }
  if (h->up != NULL) {
    grpc_ccall_cancel(h->up); /* its on_done frees h */
  }
  h->call = NULL;
  held_release(h);
}

/* ---- forwarded LeaseKeepAlive streams -------------------------------------- */

static void ka_on_up_message(grpc_ccall *up, const uint8_t *msg, size_t len, void *data) {
  (void)up;
  struct held *h = data;
  if (h->call == NULL) {
    return;
  }
  size_t n = 0;
  int64_t rev;
  uint8_t *out = rewrite_header(h->f->s, grpc_call_path(h->call), msg, len, &n, &rev);
  if (out != NULL) {
    (void)grpc_call_send(h->call, out, n); /* a full queue drops one answer: the client renews again */
    free(out);
  }
}

static void ka_flush(struct held *h);

static void ka_on_up_done(grpc_ccall *up, int status, const char *message, void *data) {
  (void)up;
  struct held *h = data;
  h->up = NULL;
  if (h->call == NULL || h->state == DONE) {
    held_release(h);
    return;
  }
  if (h->half_closed || status == GRPC_OK) {
    finish_held(h, status, message);
    return;
  }
  /* The leader went away: the next keepalive opens a stream to the new one. */
  h->state = WAIT_LEADER;
}

static void ka_open(struct held *h) {
  struct fwd *f = h->f;
  uint64_t leader;
  if (is_leader(f->s, &leader)) {
    /* This member was elected while the stream was being relayed: there is
     * no one to relay to. End the stream; the client opens a new one, which
     * this member then serves itself (etcd's clients reopen on any error). */
    finish_held(h, cairn_grpc_code(CAIRN_ELEADER_CHANGED), cairn_strerror(CAIRN_ELEADER_CHANGED));
    return;
  }
  grpc_client *c = leader_client(f);
  if (c == NULL) {
    return; /* messages wait: the tick retries */
  }
  struct grpc_metadata md[1] = {{FORWARD_HEADER, "1"}};
  struct grpc_client_handlers hs = {ka_on_up_message, ka_on_up_done};
  if (grpc_client_call(c, grpc_call_path(h->call), md, 1, 0, &hs, h, &h->up) != 0) {
    h->up = NULL;
    return;
  }
  h->state = WAIT_UPSTREAM;
}

static void ka_flush(struct held *h) {
  if (h->up == NULL) {
    ka_open(h);
  }
  if (h->up == NULL) {
    return;
  }
  for (size_t i = 0; i < h->n_ka_pending; i++) {
    (void)grpc_ccall_send(h->up, h->ka_pending[i], h->ka_pending_len[i]);
    free(h->ka_pending[i]);
  }
  h->n_ka_pending = 0;
  if (h->half_closed) {
    grpc_ccall_close_send(h->up);
  }
}

/* Keepalives waiting for a leader, per stream (older ones are dropped: the
 * client renews again). */
#define KA_PENDING_MAX 16u

static void fwd_ka_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct fwd *f = ctx;
  struct held *h = held_find(f, call);
  if (h == NULL) {
    h = held_new(f, call, HELD_KEEPALIVE);
    if (h == NULL) {
      server_fail(call, CAIRN_ETOO_MANY_REQUESTS);
      return;
    }
    h->state = WAIT_LEADER;
    h->ka_pending = calloc(KA_PENDING_MAX, sizeof *h->ka_pending);
    h->ka_pending_len = calloc(KA_PENDING_MAX, sizeof *h->ka_pending_len);
    if (h->ka_pending == NULL || h->ka_pending_len == NULL) {
      held_release(h);
      server_fail(call, CAIRN_ENOMEM);
      return;
    }
  }
  if (h->up != NULL) {
    (void)grpc_ccall_send(h->up, msg, len);
    return;
  }
  if (h->n_ka_pending == KA_PENDING_MAX) {
    free(h->ka_pending[0]);
    memmove(h->ka_pending, h->ka_pending + 1, (KA_PENDING_MAX - 1) * sizeof *h->ka_pending);
    memmove(h->ka_pending_len, h->ka_pending_len + 1,
            (KA_PENDING_MAX - 1) * sizeof *h->ka_pending_len);
    h->n_ka_pending--;
  }
  uint8_t *copy = malloc(len ? len : 1);
  if (copy == NULL) {
    return;
  }
  memcpy(copy, msg, len);
  h->ka_pending[h->n_ka_pending] = copy;
  h->ka_pending_len[h->n_ka_pending] = len;
  h->n_ka_pending++;
  ka_flush(h);
  tick_start(f);
}

static void fwd_ka_half_close(grpc_call *call, void *ctx) {
  struct held *h = held_find(ctx, call);
  if (h == NULL) {
    grpc_call_finish(call, GRPC_OK, NULL);
    return;
  }
  h->half_closed = true;
  if (h->up != NULL) {
    grpc_ccall_close_send(h->up);
  }
}

static void fwd_ka_close(grpc_call *call, void *ctx) {
  struct fwd *f = ctx;
  struct held *h = held_find(f, call);
  if (h == NULL) {
    return;
  }
  if (h->up != NULL) {
    grpc_ccall_cancel(h->up);
  }
  h->call = NULL;
  held_release(h);
}

/* ---- calls refused for want of a leader ----------------------------------- */

static void no_leader_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)msg;
  (void)len;
  (void)ctx;
  server_fail(call, CAIRN_ENO_LEADER);
}

/* ---- the router ----------------------------------------------------------- */

static bool forwarded_path(const char *path) {
  return fwd_path_find(path) != NULL;
}

/* ---- streams that require a leader ----------------------------------------- */

/* etcd's monitorLeader: a stream opened with "hasleader: true" is ended
 * with "etcdserver: no leader" once the member has had no leader for
 * FORWARD_NO_LEADER_WAIT_ELECTIONS election timeouts. */
static void monitor_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct held *h = held_find(ctx, call);
  CAIRN_ASSERT(h != NULL);
  h->orig->on_message(call, msg, len, h->orig->ctx);
}

static void monitor_half_close(grpc_call *call, void *ctx) {
  struct held *h = held_find(ctx, call);
  CAIRN_ASSERT(h != NULL);
  if (h->orig->on_half_close != NULL) {
    h->orig->on_half_close(call, h->orig->ctx);
  }
}

static void monitor_close(grpc_call *call, void *ctx) {
  struct fwd *f = ctx;
  struct held *h = held_find(f, call);
  CAIRN_ASSERT(h != NULL);
  const struct grpc_method *orig = h->orig;
  f->n_monitored--;
  h->call = NULL;
  held_release(h);
  if (orig->on_close != NULL) {
    orig->on_close(call, orig->ctx);
  }
}

static void monitor_check(struct fwd *f, bool have_leader, uint64_t now) {
  if (have_leader) {
    f->leaderless_since = 0;
    return;
  }
  if (f->leaderless_since == 0) {
    f->leaderless_since = now;
  }
  uint64_t limit = FORWARD_NO_LEADER_WAIT_ELECTIONS * (f->s->cfg.election_ms ? f->s->cfg.election_ms : 1000u);
  if (now - f->leaderless_since < limit || f->n_monitored == 0) {
    return;
  }
  for (size_t b = 0; b < CALLTAB_BUCKETS; b++) {
    for (struct held *h = f->buckets[b]; h != NULL; h = h->hash_next) {
      if (h->kind == HELD_MONITORED && h->call != NULL && !h->local) {
        h->local = true; /* finished once */
        server_fail(h->call, CAIRN_ENO_LEADER);
      }
    }
  }
}

/* A learner serves serializable Range and Status only (etcd's
 * isRPCSupportedForLearner); every stream is refused. */
static void learner_refuse(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)msg;
  (void)len;
  (void)ctx;
  server_fail(call, CAIRN_ENOT_FOR_LEARNER);
}

static void learner_range(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct fwd *f = ctx;
  Etcdserverpb__RangeRequest *req = etcdserverpb__range_request__unpack(NULL, len, msg);
  bool ok = req != NULL && req->serializable;
  if (req != NULL) {
    etcdserverpb__range_request__free_unpacked(req, NULL);
  }
  if (!ok) {
    server_fail(call, CAIRN_ENOT_FOR_LEARNER);
    return;
  }
  f->range_method.on_message(call, msg, len, f->range_method.ctx);
}

static const struct grpc_method *route(grpc_call *call, const struct grpc_method *m, void *ctx) {
  struct fwd *f = ctx;
  if (raftnode_self_is_learner(f->s->raft) && strcmp(m->path, "/etcdserverpb.Maintenance/Status") != 0) {
    if (strcmp(m->path, "/etcdserverpb.KV/Range") == 0) {
      f->range_method = *m;
      return &f->learner_range_method;
    }
    return m->kind == GRPC_METHOD_BIDI_STREAM ? &f->learner_stream : &f->learner_method;
  }
  const char *hasleader = grpc_call_header(call, "hasleader");
  uint64_t leader;
  bool leading = is_leader(f->s, &leader);
  bool require_leader = hasleader != NULL && strcmp(hasleader, "true") == 0;
  if (require_leader && !leading && leader == 0) {
    return m->kind == GRPC_METHOD_BIDI_STREAM ? &f->no_leader_stream : &f->no_leader_method;
  }
  if (require_leader && m->kind == GRPC_METHOD_BIDI_STREAM &&
      strcmp(m->path, "/etcdserverpb.Watch/Watch") != 0 /* the watch hub does its own */ &&
      (grpc_call_header(call, FORWARD_HEADER) != NULL || leading || !forwarded_path(m->path))) {
    struct held *h = held_new(f, call, HELD_MONITORED);
    if (h != NULL) {
      h->orig = m;
      f->n_monitored++;
      tick_start(f);
      return &f->monitor_method;
    }
  }
  if (grpc_call_header(call, FORWARD_HEADER) != NULL || leading || !forwarded_path(m->path)) {
    return m;
  }
  if (m->kind == GRPC_METHOD_BIDI_STREAM) {
    return &f->keepalive_method;
  }
  grpc_call_set_user(call, (void *)m); /* taken back by fwd_unary_message */
  return &f->unary_method;
}

/* ---- linearizable reads ---------------------------------------------------- */

static void read_done(struct held *h, int status) {
  if (h->plain_cb != NULL) {
    void (*cb)(void *, int) = h->plain_cb;
    void *data = h->plain_data;
    h->plain_cb = NULL;
    held_release(h);
    cb(data, status);
    return;
  }
  if (h->call != NULL) {
    grpc_call *call = h->call;
    server_read_fn fn = h->read_fn;
    void *ctx = h->read_ctx;
    uint8_t *msg = h->msg;
    size_t len = h->len;
    h->msg = NULL;
    held_release(h); /* the handler may set the call's user: we are gone */
    if (status == 0) {
      fn(call, msg, len, ctx);
    } else {
      server_fail(call, status);
    }
    free(msg);
    return;
  }
  held_release(h);
}

static void on_read_ready(void *data, int status, uint64_t index) {
  (void)index;
  read_done(data, status);
}

static void index_send(struct fwd *f);

static void on_index_answer(void *data, int status, const char *message, const uint8_t *resp,
                            size_t resp_len) {
  struct fwd *f = data;
  f->index_in_flight = false;
  struct held *batch = f->index_cur.head;
  f->index_cur.head = NULL;
  uint64_t index = 0;
  int err = 0;
  if (status == GRPC_OK) {
    Cairnserverpb__ReadIndexResponse *r = cairnserverpb__read_index_response__unpack(NULL, resp_len, resp);
    if (r == NULL) {
      err = CAIRN_ETIMEOUT;
    } else {
      index = r->index;
      cairnserverpb__read_index_response__free_unpacked(r, NULL);
    }
  } else if (strcmp(message, cairn_strerror(CAIRN_ENOT_LEADER)) == 0 ||
             strcmp(message, cairn_strerror(CAIRN_ELEADER_CHANGED)) == 0) {
    err = CAIRN_ELEADER_CHANGED;
  } else if (strcmp(message, cairn_strerror(CAIRN_ENO_LEADER)) == 0) {
    err = CAIRN_ENO_LEADER;
  } else {
    err = CAIRN_ETIMEOUT;
  }
  while (batch != NULL) {
    struct held *h = batch;
    batch = h->next;
    h->next = NULL;
    if (h->call == NULL && h->plain_cb == NULL) {
      held_release(h);
      continue;
    }
    if (err != 0) {
      read_done(h, err);
      continue;
    }
    h->state = WAIT_APPLIED;
    int rc = raftnode_wait_applied(f->s->raft, index, remaining_ms(f, h), h, on_read_ready);
    if (rc != 0) {
      read_done(h, rc);
    }
  }
  if (f->index_next.head != NULL && !f->closing) {
    index_send(f);
  }
}

static void index_send(struct fwd *f) {
  grpc_client *c = leader_client(f);
  uint64_t leader;
  if (c == NULL) {
    if (is_leader(f->s, &leader)) {
      /* We lead now: confirm here. */
      struct held *batch = f->index_next.head;
      f->index_next.head = NULL;
      while (batch != NULL) {
        struct held *h = batch;
        batch = h->next;
        h->next = NULL;
        h->state = WAIT_APPLIED;
        int rc = raftnode_read_index(f->s->raft, h, on_read_ready);
        if (rc != 0) {
          read_done(h, rc);
        }
      }
    }
    tick_start(f); /* no leader yet: the tick tries again */
    return;
  }
  Cairnserverpb__ReadIndexRequest req = CAIRNSERVERPB__READ_INDEX_REQUEST__INIT;
  uint8_t buf[16];
  size_t n = cairnserverpb__read_index_request__pack(&req, buf);
  struct grpc_metadata md[1] = {{FORWARD_HEADER, "1"}};
  if (grpc_client_unary(c, PATH_READ_INDEX, md, 1, request_timeout_ms(f->s), buf, n, NULL,
                        on_index_answer, f) != 0) {
    tick_start(f);
    return;
  }
  f->index_cur = f->index_next;
  f->index_next.head = NULL;
  for (struct held *h = f->index_cur.head; h != NULL; h = h->next) {
    h->state = WAIT_INDEX;
  }
  f->index_in_flight = true;
}

bool server_read_gate_needed(struct server *s) {
  uint64_t leader;
  return g_fwd != NULL && !(is_leader(s, &leader) && raftnode_voters(s->raft) <= 1);
}

/* Starts the confirmation of a held read: the leader's read index here, or
 * the next ReadIndex batch to the leader. 0, or the error that ended it
 * (h is released then). */
static int read_start(struct fwd *f, struct held *h) {
  uint64_t leader;
  if (is_leader(f->s, &leader)) {
    h->state = WAIT_APPLIED;
    int rc = raftnode_read_index(f->s->raft, h, on_read_ready);
    if (rc == 0) {
      return 0;
    }
    if (rc != CAIRN_ENOT_LEADER && rc != CAIRN_ENO_LEADER) {
      h->plain_cb = NULL;
      held_release(h);
      return rc;
    }
  }
  h->state = WAIT_INDEX;
  list_push(&f->index_next, h);
  if (!f->index_in_flight) {
    index_send(f);
  }
  return 0;
}

bool server_read_gate(struct server *s, grpc_call *call, const uint8_t *msg, size_t len,
                      server_read_fn fn, void *ctx) {
  struct fwd *f = g_fwd;
  if (!server_read_gate_needed(s)) {
    return false;
  }
  struct held *h = held_new(f, call, HELD_READ);
  if (h == NULL) {
    server_fail(call, CAIRN_ETOO_MANY_REQUESTS);
    return true;
  }
  h->msg = malloc(len ? len : 1);
  if (h->msg == NULL) {
    held_release(h);
    server_fail(call, CAIRN_ENOMEM);
    return true;
  }
  memcpy(h->msg, msg, len);
  h->len = len;
  h->read_fn = fn;
  h->read_ctx = ctx;
  held_deadline(f, h);
  int rc = read_start(f, h);
  if (rc != 0) {
    server_fail(call, rc);
  }
  return true;
}

int server_linearize(struct server *s, uint64_t timeout_ms, void (*cb)(void *data, int status),
                     void *data) {
  struct fwd *f = g_fwd;
  if (f == NULL) {
    return CAIRN_ESTOPPED;
  }
  struct held *h = held_new(f, NULL, HELD_READ);
  if (h == NULL) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  h->plain_cb = cb;
  h->plain_data = data;
  h->deadline_ms = uv_now(s->loop) + timeout_ms;
  return read_start(f, h);
}

void server_read_gate_closed(struct server *s, grpc_call *call) {
  (void)s;
  struct fwd *f = g_fwd;
  if (f == NULL) {
    return;
  }
  struct held *h = held_find(f, call);
  if (h == NULL || h->kind != HELD_READ) {
    return;
  }
  /* Whoever holds it (a batch list, raft's waiter) frees it later. */
  table_remove(h);
  h->call = NULL;
}

/* ---- Internal/ReadIndex on the leader -------------------------------------- */

struct index_req {
  struct server *s;
  grpc_call *call;
};

static void on_leader_index(void *data, int status, uint64_t index) {
  struct index_req *r = data;
  if (r->call != NULL) {
    if (status != 0) {
      server_fail(r->call, status);
    } else {
      Cairnserverpb__ReadIndexResponse resp = CAIRNSERVERPB__READ_INDEX_RESPONSE__INIT;
      Etcdserverpb__ResponseHeader hdr = ETCDSERVERPB__RESPONSE_HEADER__INIT;
      server_header(r->s, &hdr);
      resp.header = &hdr;
      resp.index = index;
      server_reply(r->call, &resp.base);
    }
    grpc_call_set_user(r->call, NULL);
  }
  free(r);
}

static void read_index_message(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  (void)msg;
  (void)len;
  struct server *s = ctx;
  struct index_req *r = calloc(1, sizeof *r);
  if (r == NULL) {
    server_fail(call, CAIRN_ENOMEM);
    return;
  }
  r->s = s;
  r->call = call;
  int rc = raftnode_read_index(s->raft, r, on_leader_index);
  if (rc != 0) {
    free(r);
    server_fail(call, rc);
    return;
  }
  grpc_call_set_user(call, r);
}

static void read_index_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct index_req *r = grpc_call_user(call);
  if (r != NULL) {
    r->call = NULL;
  }
}

/* ---- periodic work ---------------------------------------------------------- */

static void on_check(uv_check_t *c) {
  struct fwd *f = c->data;
  int64_t rev = mvcc_current_revision(f->s->store);
  uint64_t now = uv_now(f->s->loop);
  struct held **pp = &f->revision.head;
  while (*pp != NULL) {
    struct held *h = *pp;
    if (h->call == NULL) {
      *pp = h->next;
      held_release(h);
      continue;
    }
    if (h->revision <= rev || h->deadline_ms <= now) {
      *pp = h->next;
      h->next = NULL;
      reply_held(h);
      continue;
    }
    pp = &h->next;
  }
  if (f->revision.head == NULL) {
    uv_check_stop(&f->check);
  }
}

static void on_tick(uv_timer_t *t) {
  struct fwd *f = t->data;
  uint64_t now = uv_now(f->s->loop);
  uint64_t leader;
  bool leading = is_leader(f->s, &leader);
  bool have_leader = leading || leader != 0;
  monitor_check(f, have_leader, now);
  /* Unary calls waiting for a leader. */
  struct held *list = f->no_leader.head;
  f->no_leader.head = NULL;
  while (list != NULL) {
    struct held *h = list;
    list = h->next;
    h->next = NULL;
    if (h->call == NULL) {
      held_release(h);
    } else if (have_leader && (leading || leader_client(f) != NULL)) {
      unary_send(f, h);
    } else if (h->deadline_ms <= now || (!have_leader && h->leader_wait_until <= now)) {
      finish_held(h, cairn_grpc_code(CAIRN_ENO_LEADER), cairn_strerror(CAIRN_ENO_LEADER));
    } else {
      list_push(&f->no_leader, h);
    }
  }
  /* Reads waiting for a leader to ask. */
  if (f->index_next.head != NULL && !f->index_in_flight) {
    struct held **pp = &f->index_next.head;
    while (*pp != NULL) {
      struct held *h = *pp;
      if ((h->call == NULL && h->plain_cb == NULL) || h->deadline_ms <= now) {
        *pp = h->next;
        h->next = NULL;
        read_done(h, CAIRN_ENO_LEADER);
        continue;
      }
      pp = &h->next;
    }
    if (f->index_next.head != NULL) {
      index_send(f);
    }
  }
  /* Keepalive streams with renewals waiting for a leader. */
  bool ka_waiting = false;
  for (size_t b = 0; b < CALLTAB_BUCKETS && f->n_held > 0; b++) {
    for (struct held *h = f->buckets[b]; h != NULL; h = h->hash_next) {
      if (h->kind == HELD_KEEPALIVE && h->up == NULL && h->n_ka_pending > 0) {
        ka_flush(h);
        ka_waiting = ka_waiting || h->up == NULL;
      }
    }
  }
  on_check(&f->check);
  if (f->no_leader.head == NULL && f->index_next.head == NULL && f->revision.head == NULL &&
      f->n_monitored == 0 && !ka_waiting) {
    uv_timer_stop(t);
  }
}

/* ---- leadership hand-off at shutdown ------------------------------------------ */

struct handoff {
  struct server *s;
  uv_timer_t timer;
  bool done;
  void (*cb)(void *data);
  void *data;
};

static void handoff_closed(uv_handle_t *h) {
  free(h->data);
}

static void handoff_finish(struct handoff *ho) {
  if (ho->done) {
    return;
  }
  ho->done = true;
  uv_timer_stop(&ho->timer);
  void (*cb)(void *) = ho->cb;
  void *data = ho->data;
  uv_close((uv_handle_t *)&ho->timer, handoff_closed);
  cb(data);
}

static void on_handoff_timeout(uv_timer_t *t) {
  struct handoff *ho = t->data;
  server_log(LOG_WARN, "leadership transfer at shutdown did not finish in time; stopping anyway");
  handoff_finish(ho);
}

static void on_handoff(void *data, int status, uint64_t id) {
  struct handoff *ho = data;
  if (ho->done) {
    return; /* timed out first; the timer's handle owns ho until closed */
  }
  if (status == 0) {
    server_log(LOG_INFO, "leadership transferred to %016llx before shutdown", (unsigned long long)id);
  }
  handoff_finish(ho);
}

void forward_handoff(struct server *s, void (*done)(void *data), void *data) {
  uint64_t leader;
  struct raftnode_member_info *ms = NULL;
  size_t n = 0;
  uint64_t target = 0;
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  if (is_leader(s, &leader) && raftnode_voters(s->raft) > 1 && raftnode_members(s->raft, &ms, &n) == 0) {
    for (size_t i = 0; i < n && target == 0; i++) {
      if (ms[i].id != st.member_id && !ms[i].is_learner) {
        target = ms[i].id;
      }
    }
    raftnode_members_free(ms);
  }
  struct handoff *ho = target != 0 ? calloc(1, sizeof *ho) : NULL;
  if (ho == NULL) {
    done(data);
    return;
  }
  ho->s = s;
  ho->cb = done;
  ho->data = data;
  uv_timer_init(s->loop, &ho->timer);
  ho->timer.data = ho;
  if (raftnode_move_leader(s->raft, target, ho, on_handoff) != 0) {
    ho->done = true;
    uv_close((uv_handle_t *)&ho->timer, handoff_closed);
    done(data);
    return;
  }
  uv_timer_start(&ho->timer, on_handoff_timeout, 2u * (s->cfg.election_ms ? s->cfg.election_ms : 1000u), 0);
}

/* ---- init and close --------------------------------------------------------- */

int forward_init(struct server *s) {
  struct fwd *f = calloc(1, sizeof *f);
  if (f == NULL) {
    return CAIRN_ENOMEM;
  }
  f->s = s;
  uv_timer_init(s->loop, &f->tick);
  uv_check_init(s->loop, &f->check);
  f->tick.data = f->check.data = f;
  f->unary_method = (struct grpc_method){NULL, GRPC_METHOD_UNARY, fwd_unary_message, NULL, fwd_close, f};
  f->keepalive_method =
      (struct grpc_method){NULL, GRPC_METHOD_BIDI_STREAM, fwd_ka_message, fwd_ka_half_close, fwd_ka_close, f};
  f->no_leader_method = (struct grpc_method){NULL, GRPC_METHOD_UNARY, no_leader_message, NULL, NULL, f};
  f->no_leader_stream =
      (struct grpc_method){NULL, GRPC_METHOD_BIDI_STREAM, no_leader_message, NULL, NULL, f};
  f->monitor_method = (struct grpc_method){NULL, GRPC_METHOD_BIDI_STREAM, monitor_message,
                                           monitor_half_close, monitor_close, f};
  f->learner_method = (struct grpc_method){NULL, GRPC_METHOD_UNARY, learner_refuse, NULL, NULL, f};
  f->learner_stream = (struct grpc_method){NULL, GRPC_METHOD_BIDI_STREAM, learner_refuse, NULL, NULL, f};
  f->learner_range_method = (struct grpc_method){NULL, GRPC_METHOD_UNARY, learner_range, NULL, NULL, f};
  const struct grpc_method methods[] = {
      {PATH_READ_INDEX, GRPC_METHOD_UNARY, read_index_message, NULL, read_index_close, s},
  };
  int rc = grpc_server_register(s->grpc, methods, 1);
  if (rc != 0) {
    free(f);
    return rc;
  }
  g_fwd = f;
  grpc_server_set_router(s->grpc, route, f);
  return 0;
}

static void on_handle_closed(uv_handle_t *h) {
  struct fwd *f = h->data;
  (void)f;
}

static void on_last_client_closed(void *data) {
  struct fwd *f = data;
  f->clients_closing--;
  if (f->closed_cb != NULL) {
    void (*cb)(void *) = f->closed_cb;
    f->closed_cb = NULL;
    cb(f->closed_data);
  }
}

static void on_done_later(uv_timer_t *t) {
  struct fwd *f = t->data;
  uv_close((uv_handle_t *)&f->tick, on_handle_closed);
  uv_close((uv_handle_t *)&f->check, on_handle_closed);
  if (f->client != NULL) {
    f->clients_closing++;
    grpc_client_close(f->client, on_last_client_closed, f);
    f->client = NULL;
    return;
  }
  void (*cb)(void *) = f->closed_cb;
  f->closed_cb = NULL;
  if (cb != NULL) {
    cb(f->closed_data);
  }
}

void forward_close(struct server *s, void (*done)(void *data), void *data) {
  (void)s;
  struct fwd *f = g_fwd;
  CAIRN_ASSERT(f != NULL && !f->closing);
  f->closing = true;
  f->closed_cb = done;
  f->closed_data = data;
  uv_check_stop(&f->check);
  /* Calls were closed with the gRPC server; what still waits here has no
   * call (reads in raft's waiters are answered by its stop). The tick timer
   * carries the deferred completion. */
  uv_timer_stop(&f->tick);
  uv_timer_start(&f->tick, on_done_later, 0, 0);
}
