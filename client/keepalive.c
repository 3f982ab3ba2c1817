/* client/keepalive.c: automatic lease keep-alives (cairn_keepalive_*).
 *
 * Every client has at most one LeaseKeepAlive stream, shared by all its
 * keep-alives, as etcd's clientv3 does. The shared state (struct ka_stream)
 * is a long-lived object of the client (cairn__attach), created by the first
 * cairn_keepalive_start() of a client and freed once the client has no
 * keep-alive left and its stream has ended. The client keeps a pointer to
 * it (cairn__keepalive_slot).
 *
 * Each keep-alive has its own timer: the first renewal goes out at once,
 * then one every TTL/3 of the TTL the last answer gave (KA_RETRY_MS before
 * the first answer). A renewal due while the stream is down is marked and
 * sent as soon as a new stream is open. Answers are matched to keep-alives
 * by lease ID through a chained hash table; several keep-alives of the same
 * lease each renew and each get every answer.
 *
 * The stream runs with "hasleader: true". When it ends for any reason but
 * our own cancel or the client's close, the endpoint is reported failed and
 * the stream is opened again after cairn__backoff_ms(attempt). A stream that
 * stays silent is treated the same way: when a renewal is due while the
 * previous one of the same lease has waited for its answer for the renewal
 * interval (at least KA_ANSWER_WAIT_MIN_MS), the stream is cancelled and
 * opened again on the next endpoint. That catches a member that is alive
 * (its connection answers PINGs) but cannot renew (it lost its leader, or
 * relays to one that is gone) long before the connection's keepalive would,
 * and well within the lease's TTL.
 *
 * Bounds: renewals queued on the stream are bounded by the gRPC send queue
 * (8 MiB, that is about 700000 renewals): at the bound a renewal stays
 * marked due and goes out from grpc_ccall_on_writable(). The hash table
 * grows with the keep-alives (each one was asked for by the caller). */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"

/* Interval between renewals until the first answer gives a TTL. */
#define KA_RETRY_MS 1000u
/* Initial buckets of the lease table (a power of two); it doubles when the
 * load passes 1. */
#define KA_BUCKETS_MIN 16u
/* A renewal unanswered for this long (or the renewal interval, if longer)
 * when the next one is due: the stream is stuck. */
#define KA_ANSWER_WAIT_MIN_MS 1000u

struct ka_stream;

struct cairn_keepalive {
  struct ka_stream *ks;
  struct cairn_keepalive *hnext, *hprev; /* chain of its hash bucket */
  int64_t id;
  int64_t ttl_s; /* of the last answer; 0 before the first */
  uv_timer_t timer;
  bool due;          /* a renewal waits for the stream */
  uint64_t sent_ms;  /* loop time of the oldest unanswered renewal; 0: none */
  uint64_t seen_gen; /* answer delivery round that already saw this one */
  struct cairn_keepalive_handlers h;
  void *data;
};

enum ka_state {
  KA_IDLE,     /* no stream: waiting for the backoff timer, or no keep-alive */
  KA_OPEN,     /* a stream is open (or opening) */
  KA_CLOSING,  /* the client closes: every keep-alive ends with CANCELLED */
};

struct ka_stream {
  struct cairn__obj obj; /* first: the client's list */
  cairn_client *c;
  enum ka_state state;
  grpc_ccall *call;
  unsigned endpoint;
  bool cancelled; /* we cancelled call: its end is no endpoint failure */
  unsigned attempt;
  uv_timer_t timer; /* backoff, and the deferred end at the client's close */
  struct cairn_keepalive **buckets;
  size_t n_buckets, n;
  uint64_t gen;
  bool freeing;
};

/* ---- the lease table ----------------------------------------------------- */

static size_t bucket_of(const struct ka_stream *ks, int64_t id) {
  uint64_t x = (uint64_t)id * 0x9e3779b97f4a7c15ull;
  return (size_t)(x >> 32) & (ks->n_buckets - 1);
}

static void table_link(struct ka_stream *ks, struct cairn_keepalive *ka) {
  size_t b = bucket_of(ks, ka->id);
  ka->hprev = NULL;
  ka->hnext = ks->buckets[b];
  if (ka->hnext != NULL) {
    ka->hnext->hprev = ka;
  }
  ks->buckets[b] = ka;
}

/* Doubles the table; on no memory it stays as it is (longer chains). */
static void table_grow(struct ka_stream *ks) {
  size_t n = ks->n_buckets * 2;
  struct cairn_keepalive **nb = calloc(n, sizeof *nb);
  if (nb == NULL) {
    return;
  }
  struct cairn_keepalive **old = ks->buckets;
  size_t old_n = ks->n_buckets;
  ks->buckets = nb;
  ks->n_buckets = n;
  for (size_t i = 0; i < old_n; i++) {
    struct cairn_keepalive *ka = old[i];
    while (ka != NULL) {
      struct cairn_keepalive *next = ka->hnext;
      table_link(ks, ka);
      ka = next;
    }
  }
  free(old);
}

static void table_unlink(struct ka_stream *ks, struct cairn_keepalive *ka) {
  if (ka->hprev != NULL) {
    ka->hprev->hnext = ka->hnext;
  } else {
    ks->buckets[bucket_of(ks, ka->id)] = ka->hnext;
  }
  if (ka->hnext != NULL) {
    ka->hnext->hprev = ka->hprev;
  }
  ka->hnext = ka->hprev = NULL;
}

/* ---- the shared stream ----------------------------------------------------- */

static void ks_open(struct ka_stream *ks);
static void ks_send(struct ka_stream *ks, struct cairn_keepalive *ka);

/* ks leaves its client's list only now, so that the client's close waits
 * for its last handle (the keep-alives' timers were closed before). */
static void ks_free_cb(uv_handle_t *h) {
  struct ka_stream *ks = h->data;
  cairn__detach(ks->c, &ks->obj);
  free(ks->buckets);
  free(ks);
}

/* Frees ks once nothing uses it: no keep-alive, no stream. */
static void ks_maybe_free(struct ka_stream *ks) {
  if (ks->n > 0 || ks->call != NULL || ks->freeing) {
    return;
  }
  ks->freeing = true;
  void **slot = cairn__keepalive_slot(ks->c);
  if (*slot == ks) {
    *slot = NULL;
  }
  uv_timer_stop(&ks->timer);
  uv_close((uv_handle_t *)&ks->timer, ks_free_cb);
}

static void ka_free_cb(uv_handle_t *h) {
  free(h->data);
}

/* Takes ka out of its stream (no callback runs for it afterwards) and frees
 * it once its timer is closed. */
static void ka_remove(struct cairn_keepalive *ka) {
  struct ka_stream *ks = ka->ks;
  table_unlink(ks, ka);
  CAIRN_ASSERT(ks->n > 0);
  ks->n--;
  uv_timer_stop(&ka->timer);
  uv_close((uv_handle_t *)&ka->timer, ka_free_cb);
  if (ks->n == 0 && ks->call != NULL && ks->state != KA_CLOSING) {
    /* Nothing left to renew: the stream goes; a later start opens a new one. */
    ks->cancelled = true;
    grpc_ccall_cancel(ks->call);
  }
}

static void ka_timer_cb(uv_timer_t *t) {
  struct cairn_keepalive *ka = t->data;
  ks_send(ka->ks, ka);
}

static uint64_t ka_interval_ms(const struct cairn_keepalive *ka) {
  uint64_t ms = ka->ttl_s > 0 ? (uint64_t)ka->ttl_s * 1000u / 3u : KA_RETRY_MS;
  return ms > 0 ? ms : 1;
}

static uint64_t ka_answer_wait_ms(const struct cairn_keepalive *ka) {
  uint64_t ms = ka_interval_ms(ka);
  return ms > KA_ANSWER_WAIT_MIN_MS ? ms : KA_ANSWER_WAIT_MIN_MS;
}

static void ka_schedule(struct cairn_keepalive *ka) {
  uv_timer_start(&ka->timer, ka_timer_cb, ka_interval_ms(ka), 0);
}

static void ks_flush_cb(grpc_ccall *call, void *data);

/* Sends one renewal now if the stream takes it, else marks it due. The
 * next one is scheduled either way. */
static void ks_send(struct ka_stream *ks, struct cairn_keepalive *ka) {
  ka_schedule(ka);
  if (ks->state != KA_OPEN || ks->call == NULL) {
    ka->due = true;
    return;
  }
  uint64_t now = uv_now(cairn_client_loop(ks->c));
  if (ka->sent_ms != 0 && now - ka->sent_ms >= ka_answer_wait_ms(ka)) {
    /* The last renewal is still unanswered: the stream is stuck. Its end
     * (not ours: an endpoint failure) reopens it on the next endpoint, and
     * this renewal goes out on the new stream. */
    ka->due = true;
    grpc_ccall_cancel(ks->call);
    return;
  }
  Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
  req.id = ka->id;
  uint8_t buf[16]; /* tag + a 10-byte varint */
  CAIRN_ASSERT(etcdserverpb__lease_keep_alive_request__get_packed_size(&req) <= sizeof buf);
  size_t len = etcdserverpb__lease_keep_alive_request__pack(&req, buf);
  int rc = grpc_ccall_send(ks->call, buf, len);
  if (rc == 0) {
    ka->due = false;
    if (ka->sent_ms == 0) {
      ka->sent_ms = now ? now : 1;
    }
    return;
  }
  /* CAIRN_EBUSY: the send queue is at its bound; ESTOPPED: the call is
   * ending (its on_done reopens). Either way the renewal waits. */
  ka->due = true;
  if (rc == CAIRN_EBUSY) {
    grpc_ccall_on_writable(ks->call, ks_flush_cb, ks);
  }
}

/* Sends every renewal marked due (a new stream, or room in the queue). */
static void ks_flush(struct ka_stream *ks) {
  for (size_t i = 0; i < ks->n_buckets && ks->state == KA_OPEN && ks->call != NULL; i++) {
    for (struct cairn_keepalive *ka = ks->buckets[i]; ka != NULL; ka = ka->hnext) {
      if (ka->due) {
        ks_send(ks, ka);
        if (ka->due) {
          return; /* the queue is full again: on_writable is registered */
        }
      }
    }
  }
}

static void ks_flush_cb(grpc_ccall *call, void *data) {
  (void)call;
  ks_flush(data);
}

/* Every keep-alive of the lease gets the answer. A callback may stop any
 * keep-alive, start new ones (the table may grow) or close the client, so
 * the chain is searched again after each callback; seen_gen marks those
 * already served. */
static void ks_answer(struct ka_stream *ks, int64_t id, int64_t ttl_s) {
  uint64_t gen = ++ks->gen;
  for (;;) {
    if (ks->state == KA_CLOSING) {
      return;
    }
    struct cairn_keepalive *ka = ks->buckets[bucket_of(ks, id)];
    while (ka != NULL && (ka->id != id || ka->seen_gen == gen)) {
      ka = ka->hnext;
    }
    if (ka == NULL) {
      return;
    }
    ka->seen_gen = gen;
    ka->sent_ms = 0;
    if (ttl_s <= 0) {
      struct cairn_keepalive_handlers h = ka->h;
      void *data = ka->data;
      ka_remove(ka);
      h.on_end(data, id, GRPC_NOT_FOUND, cairn_strerror(CAIRN_ELEASE_NOT_FOUND));
      continue;
    }
    ka->ttl_s = ttl_s;
    ka_schedule(ka);
    if (ka->h.on_renewed != NULL) {
      ka->h.on_renewed(ka->data, id, ttl_s);
    }
  }
}

static void ks_on_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)call;
  struct ka_stream *ks = data;
  Etcdserverpb__LeaseKeepAliveResponse *r =
      etcdserverpb__lease_keep_alive_response__unpack(NULL, len, msg);
  if (r == NULL) {
    return; /* undecodable (or no memory): the next renewal asks again */
  }
  int64_t id = r->id, ttl = r->ttl;
  etcdserverpb__lease_keep_alive_response__free_unpacked(r, NULL);
  ks->attempt = 0;
  ks_answer(ks, id, ttl);
  ks_maybe_free(ks);
}

static void ks_timer_cb(uv_timer_t *t);

static void ks_on_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  (void)message;
  struct ka_stream *ks = data;
  ks->call = NULL;
  bool ours = ks->cancelled;
  ks->cancelled = false;
  if (ks->state == KA_CLOSING) {
    ks_maybe_free(ks);
    return;
  }
  ks->state = KA_IDLE;
  if (ks->n == 0) {
    ks_maybe_free(ks);
    return;
  }
  uint64_t delay_ms = 0;
  if (!ours || status != GRPC_CANCELLED) {
    cairn__endpoint_failed(ks->c, ks->endpoint);
    delay_ms = cairn__backoff_ms(ks->attempt);
    if (ks->attempt < 32) {
      ks->attempt++;
    }
  }
  uv_timer_start(&ks->timer, ks_timer_cb, delay_ms, 0);
}

static void ks_open(struct ka_stream *ks) {
  CAIRN_ASSERT(ks->call == NULL && ks->state == KA_IDLE);
  static const struct grpc_client_handlers handlers = {ks_on_message, ks_on_done};
  grpc_ccall *call = NULL;
  unsigned used = 0;
  int rc = cairn__stream(ks->c, "/etcdserverpb.Lease/LeaseKeepAlive", true, -1, 0, &handlers, ks,
                         &call, &used);
  if (rc == CAIRN_ESTOPPED) {
    return; /* the client closes: its close_cb ends everything */
  }
  if (rc != 0) {
    /* No memory, too many calls: try again later. */
    uv_timer_start(&ks->timer, ks_timer_cb, cairn__backoff_ms(ks->attempt), 0);
    if (ks->attempt < 32) {
      ks->attempt++;
    }
    return;
  }
  ks->call = call;
  ks->endpoint = used;
  ks->state = KA_OPEN;
  for (size_t i = 0; i < ks->n_buckets; i++) {
    for (struct cairn_keepalive *ka = ks->buckets[i]; ka != NULL; ka = ka->hnext) {
      ka->sent_ms = 0; /* answers on the old stream will not come */
    }
  }
  ks_flush(ks);
}

/* Ends every keep-alive with CANCELLED (the client's close), from the loop. */
static void ks_end_all(struct ka_stream *ks) {
  for (size_t i = 0; i < ks->n_buckets; i++) {
    while (ks->buckets[i] != NULL) {
      struct cairn_keepalive *ka = ks->buckets[i];
      struct cairn_keepalive_handlers h = ka->h;
      void *data = ka->data;
      int64_t id = ka->id;
      ka_remove(ka);
      h.on_end(data, id, GRPC_CANCELLED, GRPC_CLIENT_CLOSING_TEXT);
    }
  }
  ks_maybe_free(ks);
}

static void ks_timer_cb(uv_timer_t *t) {
  struct ka_stream *ks = t->data;
  if (ks->state == KA_CLOSING) {
    ks_end_all(ks);
    return;
  }
  if (ks->call == NULL && ks->n > 0) {
    ks_open(ks);
  }
  ks_maybe_free(ks);
}

static void ks_close_cb(struct cairn__obj *obj) {
  struct ka_stream *ks = (struct ka_stream *)obj;
  if (ks->state == KA_CLOSING) {
    return;
  }
  ks->state = KA_CLOSING;
  for (size_t i = 0; i < ks->n_buckets; i++) {
    for (struct cairn_keepalive *ka = ks->buckets[i]; ka != NULL; ka = ka->hnext) {
      uv_timer_stop(&ka->timer);
    }
  }
  if (ks->call != NULL) {
    ks->cancelled = true;
    grpc_ccall_cancel(ks->call);
  }
  /* The ends run from the loop, never inside cairn_client_close(). */
  uv_timer_start(&ks->timer, ks_timer_cb, 0, 0);
}

static int ks_get(cairn_client *c, struct ka_stream **out) {
  struct ka_stream *ks = *cairn__keepalive_slot(c);
  if (ks != NULL && !ks->freeing) {
    *out = ks;
    return 0;
  }
  ks = calloc(1, sizeof *ks);
  if (ks == NULL) {
    return CAIRN_ENOMEM;
  }
  ks->buckets = calloc(KA_BUCKETS_MIN, sizeof *ks->buckets);
  if (ks->buckets == NULL) {
    free(ks);
    return CAIRN_ENOMEM;
  }
  ks->n_buckets = KA_BUCKETS_MIN;
  ks->c = c;
  ks->state = KA_IDLE;
  ks->obj.close_cb = ks_close_cb;
  CAIRN_ASSERT(uv_timer_init(cairn_client_loop(c), &ks->timer) == 0);
  ks->timer.data = ks;
  *cairn__keepalive_slot(c) = ks;
  cairn__attach(c, &ks->obj);
  *out = ks;
  return 0;
}

/* ---- the public API ----------------------------------------------------- */

int cairn_keepalive_start(cairn_client *c, int64_t id, const struct cairn_keepalive_handlers *h,
                          void *data, cairn_keepalive **out) {
  if (c == NULL || id <= 0 || h == NULL || h->on_end == NULL) {
    return CAIRN_EINVAL;
  }
  if (cairn__closing(c)) {
    return CAIRN_ESTOPPED;
  }
  struct cairn_keepalive *ka = calloc(1, sizeof *ka);
  if (ka == NULL) {
    return CAIRN_ENOMEM;
  }
  struct ka_stream *ks;
  int rc = ks_get(c, &ks);
  if (rc != 0) {
    free(ka);
    return rc;
  }
  if (ks->state == KA_CLOSING) {
    free(ka);
    return CAIRN_ESTOPPED;
  }
  ka->ks = ks;
  ka->id = id;
  ka->h = *h;
  ka->data = data;
  CAIRN_ASSERT(uv_timer_init(cairn_client_loop(c), &ka->timer) == 0);
  ka->timer.data = ka;
  if (ks->n >= ks->n_buckets) {
    table_grow(ks);
  }
  table_link(ks, ka);
  ks->n++;
  if (ks->call == NULL && ks->state == KA_IDLE && !uv_is_active((uv_handle_t *)&ks->timer)) {
    ks_open(ks);
  }
  /* The first renewal goes out now (or as soon as the stream is open). */
  ks_send(ks, ka);
  if (out != NULL) {
    *out = ka;
  }
  return 0;
}

void cairn_keepalive_stop(cairn_keepalive *ka) {
  if (ka == NULL) {
    return;
  }
  struct ka_stream *ks = ka->ks;
  ka_remove(ka);
  ks_maybe_free(ks);
}
