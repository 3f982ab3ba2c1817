/* client/watch.c: watches that survive disconnects (cairn_watch_*).
 *
 * One Watch stream per cairn_watch, opened with "hasleader: true", holding
 * one watcher. The watch remembers how far it has delivered:
 *   rev           the highest revision it delivered events of, or that a
 *                 progress update reported (0: none);
 *   rev_events    how many events of rev it delivered;
 *   rev_complete  whether every event of rev has been delivered.
 * A revision is complete once a later revision, a progress update, or the
 * end of a response that is not a fragment follows it. The create request
 * asks for fragments (fragment=true), so that a revision split over several
 * responses (etcd above its message size, Cairn above
 * WATCH_REVISION_EVENTS_MAX) says where it continues; the parts are
 * delivered as they come (no reassembly buffer), and a stream that breaks
 * inside a revision resumes at that revision and skips the rev_events
 * events it already delivered (the server sends a revision's events in the
 * same order every time: the order of its history).
 *
 * Resume: rev + 1 (rev when it is incomplete); before anything was
 * delivered, start_revision, or the created header's revision + 1 when
 * start_revision was 0; never below start_revision. Events at or before
 * what was delivered are dropped, so nothing is delivered twice.
 *
 * The revision of an update (struct cairn_watch_update) is one every event
 * up to which has been delivered: the last complete revision. It is not
 * taken from an event response's header, because etcd's header of a
 * catch-up response holds the store's revision even when the response
 * stops short of it (watchBatchMaxRevs).
 *
 * Ends: compaction (a cancel with compact_revision), a refusal no retry
 * can mend (a status or cancel reason that is not transient), the client's
 * close (CANCELLED), or cairn_watch_stop() (no callback). Every other end of
 * the stream (lost connection, no leader, server stopped, a cancel without
 * reason) reports the endpoint failed and opens a new stream after
 * cairn__backoff_ms().
 *
 * Bounds: undelivered events are bounded by the HTTP/2 stream window (the
 * gRPC layer delivers one message at a time; the server waits); one
 * response message by max_recv_message_bytes. Nothing is queued here. */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"

/* Reconnect attempts counted for the backoff (cairn__backoff_ms caps the
 * delay at 1 s long before). */
#define WATCH_ATTEMPTS_MAX 32u

enum watch_state {
  WATCH_IDLE,    /* no stream: the timer opens one */
  WATCH_OPEN,    /* a stream is open, or being cancelled to reopen */
  WATCH_CLOSING, /* the client closes: the timer ends the watch */
  WATCH_DONE,    /* ended or stopped: no callback any more */
};

struct cairn_watch {
  struct cairn__obj obj; /* first: the client's list */
  cairn_client *c;
  struct cairn_watch_handlers h;
  void *data;
  uint8_t *key, *range_end;
  size_t key_len, range_end_len;
  int64_t start_rev;
  bool prev_kv, progress_notify, no_put, no_delete;

  enum watch_state state;
  grpc_ccall *call;
  unsigned endpoint;
  bool restart; /* we cancelled call to open a new stream */
  unsigned attempt;
  uv_timer_t timer;

  /* How far the watch has delivered (see the top of the file). */
  int64_t rev;
  uint64_t rev_events;
  bool rev_complete;
  int64_t created_rev; /* the first created header, when start_rev was 0 */

  /* The current stream. */
  bool live;           /* the server holds our watcher (created, not canceled) */
  uint64_t down_since; /* uv_now() when it stopped being live */
  bool created;
  int64_t watch_id;
  int64_t seen_rev; /* events of seen_rev received on this stream: seen */
  uint64_t seen;
};

static void watch_timer_cb(uv_timer_t *t);

/* The watch leaves its client's list only now, so that the client's close
 * waits for its last handle. */
static void watch_free_cb(uv_handle_t *h) {
  struct cairn_watch *w = h->data;
  cairn__detach(w->c, &w->obj);
  free(w->key);
  free(w->range_end);
  free(w);
}

/* Frees w once its stream is over (on_done frees it otherwise). */
static void watch_release(struct cairn_watch *w) {
  CAIRN_ASSERT(w->state == WATCH_DONE);
  if (w->call != NULL) {
    return;
  }
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)&w->timer, watch_free_cb);
}

/* No callback after this; the stream is cancelled. */
static void watch_finish(struct cairn_watch *w) {
  w->state = WATCH_DONE;
  uv_timer_stop(&w->timer);
  if (w->call != NULL) {
    grpc_ccall_cancel(w->call);
  }
}

/* Ends the watch with on_end (from the loop), then frees it. */
static void watch_end(struct cairn_watch *w, int code, const char *message, int64_t compact_rev) {
  watch_finish(w);
  w->h.on_end(w->data, code, message, compact_rev);
  watch_release(w);
}

static int64_t watch_next_start(const struct cairn_watch *w) {
  int64_t s = 0;
  if (w->rev > 0) {
    s = w->rev_complete ? w->rev + 1 : w->rev;
  } else if (w->created_rev > 0) {
    s = w->created_rev + 1;
  }
  return s > w->start_rev ? s : w->start_rev;
}

/* The gRPC code of a cancel reason: that of etcd's text when it is one,
 * else FAILED_PRECONDITION (clientv3's choice). */
static int reason_code(const char *reason) {
  for (int e = CAIRN_E__BASE + 1; e < CAIRN_E__END; e++) {
    if (strcmp(cairn_strerror(e), reason) == 0) {
      return cairn_grpc_code(e);
    }
  }
  return GRPC_FAILED_PRECONDITION;
}

/* Whether a stream end or cancel with this status is worth a new stream. */
static bool transient(int code, const char *message) {
  switch (code) {
    case GRPC_OK: /* the server ended the stream (it stops) */
    case GRPC_CANCELLED:
    case GRPC_UNKNOWN:
    case GRPC_DEADLINE_EXCEEDED:
    case GRPC_ABORTED:
    case GRPC_INTERNAL:
    case GRPC_UNAVAILABLE:
    case GRPC_DATA_LOSS:
      return true;
    case GRPC_RESOURCE_EXHAUSTED: /* a bound of the server, not a message too large */
      return strcmp(message, cairn_strerror(CAIRN_ETOO_MANY_REQUESTS)) == 0;
    default:
      return false;
  }
}

/* Opens a new stream after the backoff. */
static void watch_down(struct cairn_watch *w) {
  if (w->live) {
    w->live = false;
    w->down_since = uv_now(cairn_client_loop(w->c));
  }
}

static void watch_retry(struct cairn_watch *w, bool endpoint_failed) {
  CAIRN_ASSERT(w->call == NULL);
  watch_down(w);
  if (endpoint_failed) {
    cairn__endpoint_failed(w->c, w->endpoint);
  }
  w->state = WATCH_IDLE;
  uint64_t ms = cairn__backoff_ms(w->attempt);
  if (w->attempt < WATCH_ATTEMPTS_MAX) {
    w->attempt++;
  }
  uv_timer_start(&w->timer, watch_timer_cb, ms, 0);
}

/* Drops the stream (from inside its callbacks) and opens another. */
static void watch_restart(struct cairn_watch *w) {
  watch_down(w);
  w->restart = true;
  grpc_ccall_cancel(w->call);
}

static void watch_on_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data);
static void watch_on_done(grpc_ccall *call, int status, const char *message, void *data);

/* Opens a stream and sends the create request. */
static void watch_open(struct cairn_watch *w) {
  CAIRN_ASSERT(w->state == WATCH_IDLE && w->call == NULL);
  Etcdserverpb__WatchCreateRequest cr = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
  cr.key.data = w->key;
  cr.key.len = w->key_len;
  cr.range_end.data = w->range_end;
  cr.range_end.len = w->range_end_len;
  cr.start_revision = watch_next_start(w);
  cr.progress_notify = w->progress_notify;
  cr.prev_kv = w->prev_kv;
  cr.fragment = true;
  Etcdserverpb__WatchCreateRequest__FilterType filters[2];
  size_t n_filters = 0;
  if (w->no_put) {
    filters[n_filters++] = ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NOPUT;
  }
  if (w->no_delete) {
    filters[n_filters++] = ETCDSERVERPB__WATCH_CREATE_REQUEST__FILTER_TYPE__NODELETE;
  }
  cr.filters = filters;
  cr.n_filters = n_filters;
  Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
  req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
  req.create_request = &cr;
  uint8_t *buf = NULL;
  size_t len = 0;
  int rc = cairn__pack(&req.base, &buf, &len);
  if (rc != 0) {
    watch_retry(w, false);
    return;
  }
  static const struct grpc_client_handlers handlers = {watch_on_message, watch_on_done};
  grpc_ccall *call = NULL;
  unsigned used = 0;
  rc = cairn__stream(w->c, "/etcdserverpb.Watch/Watch", true, -1, 0, &handlers, w, &call, &used);
  if (rc == CAIRN_ESTOPPED) {
    free(buf);
    return; /* the client closes: its close_cb ends the watch */
  }
  if (rc != 0) {
    free(buf);
    watch_retry(w, false);
    return;
  }
  w->call = call;
  w->endpoint = used;
  w->state = WATCH_OPEN;
  w->created = false;
  w->watch_id = -1;
  w->seen_rev = 0;
  w->seen = 0;
  rc = grpc_ccall_send(call, buf, len);
  free(buf);
  if (rc != 0) {
    watch_restart(w);
  }
}

static void watch_timer_cb(uv_timer_t *t) {
  struct cairn_watch *w = t->data;
  if (w->state == WATCH_CLOSING) {
    watch_end(w, GRPC_CANCELLED, GRPC_CLIENT_CLOSING_TEXT, 0);
    return;
  }
  if (w->state == WATCH_IDLE && w->call == NULL) {
    watch_open(w);
  }
}

/* Whether ev is new (not delivered before); counts it as delivered if so. */
static bool watch_take(struct cairn_watch *w, const Mvccpb__Event *ev) {
  if (ev->kv == NULL) {
    return false;
  }
  int64_t r = ev->kv->mod_revision;
  if (r < w->start_rev || r < w->rev) {
    return false;
  }
  if (r > w->rev) {
    w->rev = r;
    w->rev_events = 1;
    w->rev_complete = false;
    w->seen_rev = r;
    w->seen = 1;
    return true;
  }
  /* r == rev: new only if rev is incomplete and this stream is past the
   * events of rev delivered before it broke. */
  if (w->rev_complete) {
    return false;
  }
  if (w->seen_rev != r) {
    w->seen_rev = r;
    w->seen = 0;
  }
  w->seen++;
  if (w->seen <= w->rev_events) {
    return false;
  }
  w->rev_events++;
  return true;
}

/* One response. Returns false when the watch ended or the stream is being
 * dropped (nothing more to do with this stream's messages). */
static bool watch_response(struct cairn_watch *w, Etcdserverpb__WatchResponse *r) {
  if (r->compact_revision > 0) {
    watch_end(w, GRPC_OUT_OF_RANGE, cairn_strerror(CAIRN_ECOMPACTED), r->compact_revision);
    return false;
  }
  if (r->created && !w->created) {
    if (r->canceled || r->watch_id == -1) {
      const char *reason = r->cancel_reason != NULL ? r->cancel_reason : "";
      int code = reason_code(reason);
      if (reason[0] == '\0' || transient(code, reason)) {
        watch_restart(w);
      } else {
        watch_end(w, code, reason, 0);
      }
      return false;
    }
    w->created = true;
    w->live = true;
    w->watch_id = r->watch_id;
    w->attempt = 0;
    if (w->start_rev == 0 && w->rev == 0 && w->created_rev == 0 && r->header != NULL) {
      w->created_rev = r->header->revision;
    }
    return true;
  }
  if (!w->created || r->watch_id != w->watch_id) {
    return true; /* not ours (etcd's progress replies carry -1; we ask none) */
  }
  if (r->canceled) {
    /* The server dropped the watcher: with a reason, as the reason says;
     * without, resume on a new stream. */
    const char *reason = r->cancel_reason != NULL ? r->cancel_reason : "";
    int code = reason_code(reason);
    if (reason[0] == '\0' || transient(code, reason)) {
      watch_restart(w);
    } else {
      watch_end(w, code, reason, 0);
    }
    return false;
  }
  struct cairn_watch_update u = {0};
  Mvccpb__Event **evs = NULL;
  if (r->n_events > 0) {
    evs = malloc(r->n_events * sizeof *evs);
    if (evs == NULL) {
      watch_restart(w); /* no memory: resume later from what was delivered */
      return false;
    }
    for (size_t i = 0; i < r->n_events; i++) {
      if (watch_take(w, r->events[i])) {
        evs[u.n_events++] = r->events[i];
      }
    }
    const Mvccpb__Event *last = r->events[r->n_events - 1];
    if (!r->fragment && last->kv != NULL && last->kv->mod_revision == w->rev) {
      w->rev_complete = true;
    }
  } else if (!r->fragment && r->header != NULL) {
    /* Progress: every event up to header.revision has been sent. */
    int64_t h = r->header->revision;
    if (h > w->rev) {
      w->rev = h;
      w->rev_events = 0;
      w->rev_complete = true;
    } else if (h == w->rev) {
      w->rev_complete = true;
    }
    if (h < w->rev || h < w->start_rev - 1) {
      return true; /* says less than what was delivered */
    }
  } else {
    return true;
  }
  if (r->n_events > 0 && u.n_events == 0) {
    free(evs);
    return true; /* every event was a duplicate */
  }
  w->attempt = 0;
  u.revision = w->rev_complete ? w->rev : w->rev - 1;
  u.events = evs;
  u.header = r->header;
  w->h.on_update(w->data, &u);
  free(evs);
  return w->state == WATCH_OPEN;
}

static void watch_on_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)call;
  struct cairn_watch *w = data;
  if (w->state != WATCH_OPEN || w->restart) {
    return;
  }
  Etcdserverpb__WatchResponse *r = etcdserverpb__watch_response__unpack(NULL, len, msg);
  if (r == NULL) {
    watch_restart(w); /* undecodable, or no memory: resume on a new stream */
    return;
  }
  watch_response(w, r);
  etcdserverpb__watch_response__free_unpacked(r, NULL);
}

static void watch_on_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  struct cairn_watch *w = data;
  w->call = NULL;
  bool restart = w->restart;
  w->restart = false;
  switch (w->state) {
    case WATCH_DONE:
      watch_release(w);
      return;
    case WATCH_CLOSING:
      return; /* the timer ends the watch */
    case WATCH_IDLE:
    case WATCH_OPEN:
      break;
  }
  if (restart) {
    watch_retry(w, false);
  } else if (transient(status, message)) {
    watch_retry(w, true);
  } else {
    watch_end(w, status, message, 0);
  }
}

static void watch_close_cb(struct cairn__obj *obj) {
  struct cairn_watch *w = (struct cairn_watch *)obj;
  if (w->state == WATCH_DONE || w->state == WATCH_CLOSING) {
    return;
  }
  w->state = WATCH_CLOSING;
  if (w->call != NULL) {
    grpc_ccall_cancel(w->call);
  }
  /* on_end runs from the loop, never inside cairn_client_close(). */
  uv_timer_start(&w->timer, watch_timer_cb, 0, 0);
}

static uint8_t *dup_bytes(const void *p, size_t n) {
  uint8_t *d = malloc(n > 0 ? n : 1);
  if (d != NULL && n > 0) {
    memcpy(d, p, n);
  }
  return d;
}

int cairn_watch_start(cairn_client *c, const struct cairn_watch_opts *opts,
                      const struct cairn_watch_handlers *h, void *data, cairn_watch **out) {
  if (c == NULL || opts == NULL || h == NULL || h->on_update == NULL || h->on_end == NULL) {
    return CAIRN_EINVAL;
  }
  bool from_all = opts->range_end != NULL && opts->range_end_len == 1 &&
                  ((const uint8_t *)opts->range_end)[0] == 0;
  if ((opts->key == NULL || opts->key_len == 0) && !from_all) {
    return CAIRN_EINVAL;
  }
  if (opts->key_len > 0 && opts->key == NULL) {
    return CAIRN_EINVAL;
  }
  if (opts->range_end_len > 0 && opts->range_end == NULL) {
    return CAIRN_EINVAL;
  }
  if (opts->start_revision < 0) {
    return CAIRN_EINVAL;
  }
  if (cairn__closing(c)) {
    return CAIRN_ESTOPPED;
  }
  struct cairn_watch *w = calloc(1, sizeof *w);
  if (w == NULL) {
    return CAIRN_ENOMEM;
  }
  w->key = dup_bytes(opts->key, opts->key_len);
  w->range_end = dup_bytes(opts->range_end, opts->range_end_len);
  if (w->key == NULL || w->range_end == NULL) {
    free(w->key);
    free(w->range_end);
    free(w);
    return CAIRN_ENOMEM;
  }
  w->key_len = opts->key_len;
  w->range_end_len = opts->range_end != NULL ? opts->range_end_len : 0;
  w->c = c;
  w->h = *h;
  w->data = data;
  w->start_rev = opts->start_revision;
  w->prev_kv = opts->prev_kv;
  w->progress_notify = opts->progress_notify;
  w->no_put = opts->no_put;
  w->no_delete = opts->no_delete;
  w->obj.close_cb = watch_close_cb;
  w->state = WATCH_IDLE;
  w->down_since = uv_now(cairn_client_loop(c));
  CAIRN_ASSERT(uv_timer_init(cairn_client_loop(c), &w->timer) == 0);
  w->timer.data = w;
  cairn__attach(c, &w->obj);
  watch_open(w);
  if (out != NULL) {
    *out = w;
  }
  return 0;
}

void cairn_watch_stop(cairn_watch *w) {
  if (w == NULL || w->state == WATCH_DONE) {
    return;
  }
  watch_finish(w);
  watch_release(w);
}

int64_t cairn_watch_revision(const cairn_watch *w) {
  return w != NULL ? w->rev : 0;
}

uint64_t cairn__watch_down_since(const cairn_watch *w) {
  return w->live ? 0 : (w->down_since > 0 ? w->down_since : 1);
}
