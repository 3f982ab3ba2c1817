/* bench/cairn_bench/watch_load.c: the watch workload.
 *
 * --watchers W watch the whole prefix, spread evenly over --watch-streams S
 * Watch streams (themselves spread over the connections round robin), so
 * every put is delivered W times. Once every watcher is created, puts run
 * through the runner at --put-rate (or as fast as --clients allows); each
 * put's value starts with its number in 16 hex digits, which is how an
 * event finds its put.
 *
 * Measured: the put latency (the runner's histogram, "latency_us"), and per
 * (put, watcher) the delivery latency: from the moment the put's response
 * arrived (its acknowledgement) to the moment the watch response carrying
 * the event arrived on that watcher's stream. An event that arrives before
 * the put's own response counts as 0 and in "before_ack". After the last
 * put, the run waits for outstanding events until --timeout-ms passes with
 * none arriving; what has not arrived by then is "missing". An event at or below the revision its
 * watcher already saw is a "duplicate" and is not counted as a delivery.
 *
 * Bound: puts whose deliveries are not all in yet are tracked in a ring of
 * WATCH_PUTS_PENDING_MAX; when it is full, puts wait (backpressure on the
 * put rate, never silent growth). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "rpc.pb-c.h"

#define WATCH_PUTS_PENDING_MAX (1u << 16)
#define WATCH_PACE_INTERVAL_MS 1u
#define PATH_WATCH "/etcdserverpb.Watch/Watch"
#define PATH_PUT "/etcdserverpb.KV/Put"

enum put_state { PUT_PENDING, PUT_ACKED, PUT_FAILED };

struct put_rec {
  uint64_t ack_ns;
  uint32_t delivered;
  uint8_t state; /* enum put_state */
};

struct wstream {
  struct watchload *w;
  grpc_ccall *call; /* NULL once done */
  unsigned n_watchers;
  unsigned n_created;
  int64_t *watch_ids; /* n_watchers, in creation order */
  int64_t *last_rev;  /* per watcher: the newest revision delivered */
  unsigned hint;      /* the watcher the last response was for */
};

struct watchload {
  struct bench *b;
  struct wstream *streams;
  unsigned n_streams;
  unsigned streams_open;
  unsigned watchers_created;
  bool all_created;
  bool all_closed;
  bool closing;
  bool drained;
  bool put_phase_over;
  struct put_rec *ring;
  uint64_t puts_issued;
  uint64_t oldest; /* every put below it is complete */
  uint64_t last_delivery_ns;
  uv_timer_t pace;
  bool pace_closed;
};

static struct put_rec *rec_of(struct watchload *w, uint64_t seq) {
  return &w->ring[seq % WATCH_PUTS_PENDING_MAX];
}

/* Moves the oldest-incomplete mark past the puts that are complete. */
static void advance(struct watchload *w) {
  unsigned want = w->b->cfg.watchers;
  while (w->oldest < w->puts_issued) {
    struct put_rec *r = rec_of(w, w->oldest);
    if (r->state == PUT_FAILED || (r->state == PUT_ACKED && r->delivered >= want)) {
      w->oldest++;
    } else {
      break;
    }
  }
  if (w->put_phase_over && w->oldest == w->puts_issued) {
    w->drained = true;
  }
}

static void put_done(void *data, int status, const char *message, const uint8_t *resp, size_t len) {
  struct bench_slot *s = data;
  struct watchload *w = s->b->workload_state;
  (void)resp;
  (void)len;
  struct put_rec *r = rec_of(w, s->seq);
  if (status == GRPC_OK) {
    r->state = PUT_ACKED;
    r->ack_ns = bench_now_ns();
  } else {
    r->state = PUT_FAILED;
  }
  advance(w);
  bench_slot_done(s, status, message);
}

static const char hex_digits[] = "0123456789abcdef";

static int issue_put(struct bench_slot *s) {
  struct bench *b = s->b;
  struct watchload *w = b->workload_state;
  CAIRN_ASSERT(s->seq == w->puts_issued && s->seq - w->oldest < WATCH_PUTS_PENDING_MAX);
  struct put_rec *r = rec_of(w, s->seq);
  r->ack_ns = 0;
  r->delivered = 0;
  r->state = PUT_PENDING;
  w->puts_issued++;
  /* The value's first 16 bytes: the put's number. The value buffer is
   * shared, which is fine: the message is packed and copied right here. */
  for (int i = 15; i >= 0; i--) {
    b->value[15 - i] = (uint8_t)hex_digits[(s->seq >> (4 * i)) & 15u];
  }
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  req.key.data = (uint8_t *)bench_key(b, s->seq % b->cfg.key_space);
  req.key.len = b->key_len;
  req.value.data = b->value;
  req.value.len = b->cfg.val_size;
  const uint8_t *msg;
  size_t len;
  int rc = bench_pack(b, &req.base, &msg, &len);
  if (rc == 0) {
    rc = grpc_client_unary(s->conn, PATH_PUT, NULL, 0, b->cfg.timeout_ms, msg, len, NULL, put_done,
                           s);
  }
  if (rc < 0) {
    r->state = PUT_FAILED;
  }
  return rc;
}

static bool put_gate(struct bench *b) {
  struct watchload *w = b->workload_state;
  if (w->puts_issued - w->oldest >= WATCH_PUTS_PENDING_MAX) {
    return false;
  }
  if (b->cfg.put_rate <= 0) {
    return true;
  }
  double el = (double)(bench_now_ns() - b->phase->t_start_ns) / 1e9;
  return (double)w->puts_issued < el * b->cfg.put_rate + 1.0;
}

static void pace_cb(uv_timer_t *t) {
  struct watchload *w = t->data;
  bench_kick(w->b);
}

static bool parse_seq(const ProtobufCBinaryData *v, uint64_t *out) {
  if (v->len < 16) {
    return false;
  }
  uint64_t seq = 0;
  for (size_t i = 0; i < 16; i++) {
    uint8_t c = v->data[i];
    unsigned d;
    if (c >= '0' && c <= '9') {
      d = (unsigned)(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = (unsigned)(c - 'a' + 10);
    } else {
      return false;
    }
    seq = seq << 4 | d;
  }
  *out = seq;
  return true;
}

static unsigned watcher_of(struct wstream *st, int64_t watch_id) {
  if (st->hint < st->n_created && st->watch_ids[st->hint] == watch_id) {
    return st->hint;
  }
  for (unsigned i = 0; i < st->n_created; i++) {
    if (st->watch_ids[i] == watch_id) {
      st->hint = i;
      return i;
    }
  }
  return UINT32_MAX;
}

static void on_watch_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  struct wstream *st = data;
  struct watchload *w = st->w;
  struct bench *b = w->b;
  uint64_t now = bench_now_ns();
  (void)call;
  Etcdserverpb__WatchResponse *r = (Etcdserverpb__WatchResponse *)bench_unpack(
      b, &etcdserverpb__watch_response__descriptor, msg, len);
  if (!r) {
    bench_error(b, "watch", GRPC_INTERNAL, "cannot decode WatchResponse");
    b->errors++;
    return;
  }
  if (r->created) {
    if (st->n_created < st->n_watchers) {
      st->watch_ids[st->n_created++] = r->watch_id;
      if (++w->watchers_created == b->cfg.watchers) {
        w->all_created = true;
      }
    }
  }
  if (r->canceled) {
    bench_error(b, "watch canceled", GRPC_CANCELLED, r->cancel_reason);
    b->errors++;
  }
  if (r->n_events > 0) {
    unsigned wi = watcher_of(st, r->watch_id);
    for (size_t i = 0; i < r->n_events; i++) {
      Mvccpb__KeyValue *kv = r->events[i]->kv;
      uint64_t seq;
      if (!kv || !parse_seq(&kv->value, &seq) || seq >= w->puts_issued) {
        continue; /* not one of ours */
      }
      if (wi != UINT32_MAX) {
        if (kv->mod_revision <= st->last_rev[wi]) {
          b->watch_duplicates++;
          continue;
        }
        st->last_rev[wi] = kv->mod_revision;
      }
      if (seq < w->oldest) {
        /* Its put is complete (or failed): one delivery too many. */
        b->watch_duplicates++;
        continue;
      }
      struct put_rec *p = rec_of(w, seq);
      if (p->state == PUT_FAILED) {
        continue;
      }
      p->delivered++;
      b->watch_events++;
      if (p->state == PUT_ACKED) {
        hist_record(&b->lat_delivery, now - p->ack_ns);
      } else {
        b->watch_before_ack++;
        hist_record(&b->lat_delivery, 0);
      }
      w->last_delivery_ns = now;
    }
    advance(w);
  }
  bench_unpacked_free(b, &r->base);
  if (b->phase) {
    bench_kick(b); /* the ring may have room again */
  }
}

static void on_watch_done(grpc_ccall *call, int status, const char *message, void *data) {
  struct wstream *st = data;
  struct watchload *w = st->w;
  (void)call;
  st->call = NULL;
  if (!w->closing) {
    bench_error(w->b, "watch stream", status, message);
    w->b->errors++;
  }
  if (--w->streams_open == 0) {
    w->all_closed = true;
  }
}

static const struct grpc_client_handlers watch_handlers = {on_watch_message, on_watch_done};

static int open_stream(struct bench *b, struct wstream *st, grpc_client *conn) {
  int rc = grpc_client_call(conn, PATH_WATCH, NULL, 0, 0, &watch_handlers, st, &st->call);
  if (rc < 0) {
    return rc;
  }
  st->w->streams_open++;
  Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
  cr.key.data = b->key_buf; /* the prefix: key_buf starts with it */
  cr.key.len = b->key_len - b->cfg.key_size;
  cr.range_end.data = b->range_end;
  cr.range_end.len = b->range_end_len;
  Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
  req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
  req.create_request = &cr;
  for (unsigned i = 0; i < st->n_watchers; i++) {
    const uint8_t *msg;
    size_t len;
    rc = bench_pack(b, &req.base, &msg, &len);
    if (rc == 0) {
      rc = grpc_ccall_send(st->call, msg, len);
    }
    if (rc < 0) {
      grpc_ccall_cancel(st->call); /* on_done follows */
      return rc;
    }
  }
  return 0;
}

static void pace_closed(uv_handle_t *h) {
  struct watchload *w = h->data;
  w->pace_closed = true;
}

int watchload_run(struct bench *b) {
  const struct bench_config *c = &b->cfg;
  struct watchload w;
  memset(&w, 0, sizeof w);
  w.b = b;
  w.n_streams = c->watch_streams;
  w.streams = calloc(w.n_streams, sizeof *w.streams);
  w.ring = calloc(WATCH_PUTS_PENDING_MAX, sizeof *w.ring);
  int64_t *ids = calloc(c->watchers, sizeof *ids);
  int64_t *revs = calloc(c->watchers, sizeof *revs);
  int rc = 0;
  if (!w.streams || !w.ring || !ids || !revs) {
    rc = CAIRN_ENOMEM;
    goto err_after_alloc;
  }
  b->workload_state = &w;
  uv_timer_init(&b->loop, &w.pace);
  w.pace.data = &w;

  /* Set-up, not measured: the streams and their watchers. */
  unsigned next = 0;
  for (unsigned i = 0; i < w.n_streams; i++) {
    struct wstream *st = &w.streams[i];
    st->w = &w;
    st->n_watchers = c->watchers / w.n_streams + (i < c->watchers % w.n_streams ? 1u : 0u);
    st->watch_ids = ids + next;
    st->last_rev = revs + next;
    next += st->n_watchers;
  }
  for (unsigned i = 0; i < w.n_streams && rc == 0; i++) {
    rc = open_stream(b, &w.streams[i], b->conns[i % c->conns]);
    if (rc < 0) {
      fprintf(stderr, "cairn-bench: watch stream: %s\n", cairn_strerror(rc));
    }
  }
  if (rc == 0 && !bench_wait(b, &w.all_created, bench_now_ns() + c->timeout_ms * 1000000u)) {
    fprintf(stderr,
            "cairn-bench: watch: %u of %u watchers created after %llu ms; first error: %s\n",
            w.watchers_created, c->watchers, (unsigned long long)c->timeout_ms,
            b->have_error ? b->first_error : "none");
    rc = CAIRN_EIO;
  }

  if (rc == 0) {
    struct bench_phase p = {
        .name = "watch", .measured = true, .issue = issue_put, .gate = put_gate};
    if (c->duration_s > 0) {
      p.deadline_ns = bench_now_ns() + (uint64_t)(c->duration_s * 1e9);
    } else {
      p.total = c->total;
    }
    if (c->put_rate > 0) {
      uv_timer_start(&w.pace, pace_cb, WATCH_PACE_INTERVAL_MS, WATCH_PACE_INTERVAL_MS);
    }
    double cpu0 = bench_cpu_s();
    rc = bench_run_phase(b, &p);
    uv_timer_stop(&w.pace);
    w.put_phase_over = true;
    advance(&w);
    /* The drain: outstanding deliveries, for as long as they keep coming;
     * it ends --timeout-ms after the last one (a backlog is late, not
     * missing, while it still moves). */
    uint64_t idle_ns = c->timeout_ms * 1000000u;
    for (;;) {
      uint64_t last = w.last_delivery_ns > p.t_end_ns ? w.last_delivery_ns : p.t_end_ns;
      if (bench_wait(b, &w.drained, last + idle_ns) || w.last_delivery_ns <= last) {
        break;
      }
    }
    b->client_cpu_s = bench_cpu_s() - cpu0;
    b->elapsed_s = (double)(p.t_end_ns - p.t_start_ns) / 1e9;
    for (uint64_t s = w.oldest; s < w.puts_issued; s++) {
      struct put_rec *r = rec_of(&w, s);
      if (r->state == PUT_ACKED && r->delivered < c->watchers) {
        b->watch_missing += c->watchers - r->delivered;
      }
    }
    if (w.last_delivery_ns > p.t_start_ns) {
      b->watch_events_per_s =
          (double)b->watch_events / ((double)(w.last_delivery_ns - p.t_start_ns) / 1e9);
    }
  }

  /* Tear-down: cancel the streams and wait for their ends. */
  w.closing = true;
  for (unsigned i = 0; i < w.n_streams; i++) {
    if (w.streams[i].call) {
      grpc_ccall_cancel(w.streams[i].call);
    }
  }
  /* No deadline: a cancelled call always ends, from the loop, and w (on this
   * stack) must outlive every callback that points at it. */
  if (w.streams_open > 0) {
    bench_wait(b, &w.all_closed, 0);
  }
  uv_close((uv_handle_t *)&w.pace, pace_closed);
  bench_wait(b, &w.pace_closed, 0);
  b->workload_state = NULL;
  b->watch_created = w.watchers_created;
err_after_alloc:
  free(ids);
  free(revs);
  free(w.ring);
  free(w.streams);
  return rc;
}
