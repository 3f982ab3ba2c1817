/* server/watch_hub.c: the watch hub (see watch_hub.h and docs/watch.md).
 *
 * Pieces, in file order:
 *   positions and byte strings;
 *   the interval index of live watchers (a treap ordered by start key and
 *     augmented with the greatest end of each subtree: a stabbing query costs
 *     O(log n + matches));
 *   feed reads (bounded batches, whole revisions, parts for huge ones);
 *   sending (responses, fragments, the control queue of a blocked stream);
 *   watcher and stream state (live, catching up, blocked);
 *   the live reader (one read of the new changes for everybody);
 *   catch-up of one watcher;
 *   the idle handle and the timers;
 *   the API. */
#include "server/watch_hub.h"

#include <stdlib.h>
#include <string.h>

#include "common/cairn_assert.h"
#include "kv.pb-c.h"

/* ---- positions and byte strings ------------------------------------------ */

/* A position in the change feed: the next (revision, sub) to read. */
struct wpos {
  int64_t rev;
  uint32_t sub;
};

static int pos_cmp(struct wpos a, struct wpos b) {
  if (a.rev != b.rev) {
    return a.rev < b.rev ? -1 : 1;
  }
  return (a.sub > b.sub) - (a.sub < b.sub);
}

static struct wpos pos_max(struct wpos a, struct wpos b) {
  return pos_cmp(a, b) >= 0 ? a : b;
}

static int bytes_cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl) {
  size_t n = al < bl ? al : bl;
  int c = n ? memcmp(a, b, n) : 0;
  if (c != 0) {
    return c;
  }
  return (al > bl) - (al < bl);
}

/* ---- state ----------------------------------------------------------------- */

enum watcher_state { W_SYNCED, W_UNSYNCED };

struct watcher {
  struct watch_stream *st;
  int64_t id;
  uint64_t seq; /* unique in the hub: ties in the index */
  /* The watched interval [key, iend), iend_inf: no end. A single key k is
   * [k, k "\0"). buf holds key then (for a range) the end. */
  uint8_t *buf;
  const uint8_t *key;
  size_t key_len;
  const uint8_t *iend;
  size_t iend_len;
  bool iend_inf;
  /* The same range in the feed's (etcd's) form. */
  struct mvcc_bytes fkey, fend;
  bool prev_kv, progress_notify, fragment, no_put, no_delete;

  enum watcher_state state;
  int64_t start_rev;      /* the first revision asked for */
  int64_t create_compact; /* the compacted revision when it was created */
  /* Synced: events of revisions below min_rev are not for this watcher (a
   * start revision ahead of the hub). */
  int64_t min_rev;
  /* Unsynced: the next position to read for this watcher. */
  struct wpos pos;
  size_t batch; /* adaptive feed batch size while catching up */
  /* A response with fragment=true went out for revision frag_rev and the
   * last part of that revision did not. */
  bool frag_open;
  int64_t frag_rev;
  /* Events went out since the last progress tick (etcd elides the notify). */
  bool progress_events;
  /* The live group (hub->group_seq) this watcher last received. */
  uint64_t sent_group;

  /* Index node (synced only). */
  struct watcher *ileft, *iright, *imax;
  uint32_t iprio;
  /* The stream's list of unsynced watchers (round robin). */
  struct watcher *uprev, *unext;
  /* The hub's list of synced watchers with frag_open. */
  struct watcher *fprev, *fnext;
  bool in_frag_list;
  /* The events of the group being dispatched that match (live reader). */
  const struct mvcc_event **pend;
  size_t n_pend, cap_pend;
  /* pend is implied while !pend_mat: the first n_pend events of the group,
   * every one of them matched (the common case: no copy). */
  bool pend_mat;
  bool touched, pend_failed;
  struct watcher *tnext;
  /* Freed at the end of the hub's current callback. */
  struct watcher *dead_next;
};

/* A queued message of a blocked stream. */
struct ctrl_msg {
  struct ctrl_msg *next;
  size_t len;
  uint8_t data[];
};

struct watch_stream {
  struct watch_hub *hub;
  grpc_call *call;
  bool hasleader;
  /* No more work: the call ended or is ending; watchers left the hub's
   * structures. */
  bool detached;
  /* The gRPC send queue refused a message: nothing but the control queue
   * until the writable callback. No watcher of a blocked stream is synced. */
  bool blocked;
  bool writable_wait;
  /* Watchers sorted by id. */
  struct watcher **by_id;
  size_t n_watchers, cap_watchers;
  int64_t next_id;
  size_t n_progress; /* watchers with progress_notify */
  struct watcher *u_head, *u_tail;
  size_t n_unsynced;
  /* progress_request replies owed, sent once every watcher is synced */
  uint32_t progress_owed;
  struct ctrl_msg *ctrl_head, *ctrl_tail;
  size_t ctrl_n;
  /* The hub's list of streams and its queue of streams with catch-up work. */
  struct watch_stream *prev, *next;
  struct watch_stream *rprev, *rnext;
  bool runnable;
  struct watch_stream *dead_next;
};

struct watch_hub {
  struct server *s;
  mvcc_store *store;
  uv_loop_t *loop;
  /* The live reader's position: every revision below pos.rev (and pos.rev's
   * changes below pos.sub) went to every synced watcher. */
  struct wpos pos;
  size_t batch;
  struct watcher *root; /* index of synced watchers */
  size_t n_synced, n_synced_prev_kv;
  struct watcher *frag_head; /* synced watchers with frag_open */
  uint64_t next_seq;
  uint32_t rng;

  struct watch_stream *streams;
  size_t n_streams, n_watchers, n_hasleader;
  struct watch_stream *run_head, *run_tail;

  /* The group being dispatched by the live reader. */
  bool dispatching;
  uint64_t group_seq;
  struct wpos grp_start, grp_end;
  const struct mvcc_event *const *grp_ev;
  size_t grp_n;
  /* The group's response packed once with watch_id 0, per prev_kv: every
   * watcher that gets the whole group gets these bytes with its watch_id
   * spliced in after the header. */
  struct hub_enc {
    uint64_t seq; /* group_seq it was packed for; 0: none */
    uint8_t *buf;
    size_t len, cap, hdr_len;
  } enc[2];

  uv_idle_t idle;
  bool idle_on;
  uv_timer_t progress_timer;
  uint64_t progress_interval_ms;
  uv_timer_t leader_timer;
  uint64_t election_ms;
  unsigned no_leader_checks;
  int handles_open;
  bool closing;

  int depth; /* nesting of hub callbacks; frees wait until 0 */
  struct watcher *dead_watchers;
  struct watch_stream *dead_streams;

  size_t frag_limit; /* fragment responses larger than this */
  /* Scratch for building responses. */
  Mvccpb__Event *pb_ev;
  Mvccpb__KeyValue *pb_kv;
  Mvccpb__Event **pb_evp;
  size_t pb_cap;
  uint8_t *buf;
  size_t buf_cap;
};

static const uint8_t KEY_NUL[1] = {0};

/* ---- interval index ---------------------------------------------------------- */

static int start_cmp(const struct watcher *a, const struct watcher *b) {
  int c = bytes_cmp(a->key, a->key_len, b->key, b->key_len);
  if (c != 0) {
    return c;
  }
  return (a->seq > b->seq) - (a->seq < b->seq);
}

static int end_cmp(const struct watcher *a, const struct watcher *b) {
  if (a->iend_inf || b->iend_inf) {
    return (int)a->iend_inf - (int)b->iend_inf;
  }
  return bytes_cmp(a->iend, a->iend_len, b->iend, b->iend_len);
}

static bool key_below_end(const uint8_t *k, size_t kl, const struct watcher *w) {
  return w->iend_inf || bytes_cmp(k, kl, w->iend, w->iend_len) < 0;
}

static void idx_fix(struct watcher *n) {
  n->imax = n;
  if (n->ileft != NULL && end_cmp(n->ileft->imax, n->imax) > 0) {
    n->imax = n->ileft->imax;
  }
  if (n->iright != NULL && end_cmp(n->iright->imax, n->imax) > 0) {
    n->imax = n->iright->imax;
  }
}

static struct watcher *idx_rot_right(struct watcher *n) {
  struct watcher *l = n->ileft;
  n->ileft = l->iright;
  l->iright = n;
  idx_fix(n);
  idx_fix(l);
  return l;
}

static struct watcher *idx_rot_left(struct watcher *n) {
  struct watcher *r = n->iright;
  n->iright = r->ileft;
  r->ileft = n;
  idx_fix(n);
  idx_fix(r);
  return r;
}

static struct watcher *idx_insert(struct watcher *root, struct watcher *w) {
  if (root == NULL) {
    w->ileft = w->iright = NULL;
    w->imax = w;
    return w;
  }
  if (start_cmp(w, root) < 0) {
    root->ileft = idx_insert(root->ileft, w);
    if (root->ileft->iprio > root->iprio) {
      return idx_rot_right(root);
    }
  } else {
    root->iright = idx_insert(root->iright, w);
    if (root->iright->iprio > root->iprio) {
      return idx_rot_left(root);
    }
  }
  idx_fix(root);
  return root;
}

static struct watcher *idx_merge(struct watcher *a, struct watcher *b) {
  if (a == NULL) {
    return b;
  }
  if (b == NULL) {
    return a;
  }
  if (a->iprio > b->iprio) {
    a->iright = idx_merge(a->iright, b);
    idx_fix(a);
    return a;
  }
  b->ileft = idx_merge(a, b->ileft);
  idx_fix(b);
  return b;
}

static struct watcher *idx_remove(struct watcher *root, struct watcher *w) {
  CAIRN_ASSERT(root != NULL);
  if (root == w) {
    struct watcher *m = idx_merge(w->ileft, w->iright);
    w->ileft = w->iright = w->imax = NULL;
    return m;
  }
  if (start_cmp(w, root) < 0) {
    root->ileft = idx_remove(root->ileft, w);
  } else {
    root->iright = idx_remove(root->iright, w);
  }
  idx_fix(root);
  return root;
}

/* Calls fn for every watcher of the subtree whose interval holds key k. fn
 * must not change the index. */
static void idx_stab(struct watcher *n, const uint8_t *k, size_t kl,
                     void (*fn)(struct watcher *w, void *arg), void *arg) {
  while (n != NULL) {
    if (!key_below_end(k, kl, n->imax)) {
      return; /* every interval here ends at or before k */
    }
    idx_stab(n->ileft, k, kl, fn, arg);
    if (bytes_cmp(n->key, n->key_len, k, kl) > 0) {
      return; /* n and its right subtree start after k */
    }
    if (key_below_end(k, kl, n)) {
      fn(n, arg);
    }
    n = n->iright;
  }
}

static uint32_t hub_rand(struct watch_hub *h) {
  uint32_t x = h->rng; /* xorshift32: priorities only balance the treap */
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  h->rng = x;
  return x;
}

/* ---- feed reads ----------------------------------------------------------------- */

/* The events of one step of one reader, in revision order. Either every
 * revision in ev is whole (the first may be the last part of a revision
 * begun before start), or (mid) the read stopped inside revision end.rev
 * and every event in ev belongs to that revision. */
struct feed_read {
  struct mvcc_feed feeds[WATCH_STEP_READS_MAX];
  size_t n_feeds;
  const struct mvcc_event **ev;
  size_t n_ev, cap_ev;
  struct wpos start, end;
  bool mid;
};

static void feed_read_free(struct feed_read *r) {
  for (size_t i = 0; i < r->n_feeds; i++) {
    mvcc_feed_free(&r->feeds[i]);
  }
  free(r->ev);
  r->ev = NULL;
  r->n_feeds = r->n_ev = r->cap_ev = 0;
}

static size_t feed_bytes(const struct mvcc_feed *f) {
  size_t b = 0;
  for (size_t i = 0; i < f->n_events; i++) {
    const struct mvcc_event *e = &f->events[i];
    b += sizeof *e + e->kv.key.len + e->kv.value.len;
    if (e->has_prev_kv) {
      b += e->prev_kv.key.len + e->prev_kv.value.len;
    }
  }
  return b;
}

/* Sizes the next read so that it holds about WATCH_FEED_BATCH_BYTES. */
static void batch_adapt(size_t *batch, size_t n, size_t bytes) {
  if (n == 0) {
    return;
  }
  size_t per = bytes / n;
  size_t want = WATCH_FEED_BATCH_BYTES / (per ? per : 1);
  if (want < WATCH_FEED_BATCH_EVENTS_MIN) {
    want = WATCH_FEED_BATCH_EVENTS_MIN;
  }
  if (want > WATCH_FEED_BATCH_EVENTS_MAX) {
    want = WATCH_FEED_BATCH_EVENTS_MAX;
  }
  *batch = want;
}

/* Reads [key, end) from start: one batch, more only to complete a revision
 * (at most WATCH_STEP_READS_MAX reads, WATCH_REVISION_EVENTS_MAX events,
 * WATCH_REVISION_BYTES_MAX bytes). A revision cut by the batch end is left
 * for the next read unless it is all the read holds. Nothing at or after
 * (stop_rev, 0) is returned. Errors: those of mvcc_changes (CAIRN_ECOMPACTED
 * ...), CAIRN_ENOMEM; *r then holds nothing. */
static int feed_read(struct watch_hub *h, struct mvcc_bytes key, struct mvcc_bytes end,
                     bool prev_kv, struct wpos start, int64_t stop_rev, size_t *batch,
                     struct feed_read *r) {
  memset(r, 0, sizeof *r);
  r->start = start;
  struct wpos pos = start;
  size_t held = 0;
  int rc = 0;
  while (r->n_feeds < WATCH_STEP_READS_MAX) {
    struct mvcc_feed_req q = {.key = key,
                              .range_end = end,
                              .start_revision = pos.rev,
                              .start_sub = pos.sub,
                              .max_events = *batch,
                              .prev_kv = prev_kv};
    struct mvcc_feed *f = &r->feeds[r->n_feeds];
    rc = mvcc_changes(h->store, &q, f);
    if (rc != 0) {
      break;
    }
    r->n_feeds++;
    size_t bytes = feed_bytes(f);
    held += bytes;
    batch_adapt(batch, f->n_events, bytes);
    if (r->n_ev + f->n_events > r->cap_ev) {
      size_t cap = r->cap_ev ? r->cap_ev : 64;
      while (cap < r->n_ev + f->n_events) {
        cap *= 2;
      }
      const struct mvcc_event **nv = realloc(r->ev, cap * sizeof *nv);
      if (nv == NULL) {
        rc = CAIRN_ENOMEM;
        break;
      }
      r->ev = nv;
      r->cap_ev = cap;
    }
    for (size_t i = 0; i < f->n_events; i++) {
      const struct mvcc_event *e = &f->events[i];
      /* The feed is in revision order from pos on. */
      CAIRN_ASSERT(e->kv.mod_revision >= pos.rev);
      CAIRN_ASSERT(r->n_ev == 0 || e->kv.mod_revision >= r->ev[r->n_ev - 1]->kv.mod_revision);
      r->ev[r->n_ev++] = e;
    }
    struct wpos next = {f->next_revision, f->next_sub};
    CAIRN_ASSERT(pos_cmp(next, pos) >= 0);
    pos = next;
    if (pos.rev >= stop_rev || pos.sub == 0 || r->n_ev == 0) {
      break; /* at the stop, at a revision boundary, or nothing held */
    }
    if (r->ev[0]->kv.mod_revision < pos.rev) {
      /* Whole revisions, then a cut one: leave the cut one for later. */
      while (r->n_ev > 0 && r->ev[r->n_ev - 1]->kv.mod_revision == pos.rev) {
        r->n_ev--;
      }
      pos.sub = 0;
      break;
    }
    if (r->n_ev >= WATCH_REVISION_EVENTS_MAX || held >= WATCH_REVISION_BYTES_MAX) {
      break; /* one huge revision: this much goes out as a part */
    }
  }
  if (rc != 0) {
    feed_read_free(r);
    return rc;
  }
  if (pos_cmp(pos, (struct wpos){stop_rev, 0}) > 0) {
    while (r->n_ev > 0 && r->ev[r->n_ev - 1]->kv.mod_revision >= stop_rev) {
      r->n_ev--;
    }
    pos = (struct wpos){stop_rev, 0};
  }
  r->end = pos;
  r->mid = pos.sub != 0;
  CAIRN_ASSERT(!r->mid || r->n_ev == 0 || r->ev[0]->kv.mod_revision == pos.rev);
  return 0;
}

/* ---- sending ------------------------------------------------------------------------- */

enum send_kind {
  SEND_EVENT,  /* refused with CAIRN_EBUSY when the stream is blocked */
  SEND_CTRL,   /* a reply to a request: queued when blocked, bounded */
  SEND_FORCED, /* the rest of a response already begun: always queued */
};

static void stream_block(struct watch_stream *st);
static void stream_fail(struct watch_stream *st, int err);
static void stream_detach(struct watch_stream *st);

/* Sends (or queues) one packed message given in pieces. Errors: CAIRN_EBUSY
 * (SEND_EVENT on a blocked stream: nothing was sent), CAIRN_ESTOPPED (the
 * stream is over). */
static int stream_sendv(struct watch_stream *st, const struct grpc_iov *iov, size_t niov,
                        enum send_kind kind) {
  if (st->detached) {
    return CAIRN_ESTOPPED;
  }
  if (!st->blocked) {
    CAIRN_ASSERT(st->ctrl_n == 0);
    int rc = grpc_call_sendv(st->call, iov, niov);
    if (rc == 0) {
      return 0;
    }
    if (rc != CAIRN_EBUSY) {
      stream_detach(st);
      return CAIRN_ESTOPPED;
    }
    stream_block(st);
    if (st->detached) {
      return CAIRN_ESTOPPED;
    }
  }
  if (kind == SEND_EVENT) {
    return CAIRN_EBUSY;
  }
  if (kind == SEND_CTRL && st->ctrl_n >= WATCH_STREAM_CTRL_MAX) {
    stream_fail(st, CAIRN_ETOO_MANY_REQUESTS);
    return CAIRN_ESTOPPED;
  }
  size_t len = 0;
  for (size_t i = 0; i < niov; i++) {
    len += iov[i].len;
  }
  struct ctrl_msg *m = malloc(sizeof *m + len);
  if (m == NULL) {
    stream_fail(st, CAIRN_ENOMEM);
    return CAIRN_ESTOPPED;
  }
  m->next = NULL;
  m->len = len;
  size_t off = 0;
  for (size_t i = 0; i < niov; i++) {
    if (iov[i].len > 0) {
      memcpy(m->data + off, iov[i].data, iov[i].len);
      off += iov[i].len;
    }
  }
  if (st->ctrl_tail != NULL) {
    st->ctrl_tail->next = m;
  } else {
    st->ctrl_head = m;
  }
  st->ctrl_tail = m;
  st->ctrl_n++;
  return 0;
}

static int stream_send(struct watch_stream *st, const uint8_t *msg, size_t len,
                       enum send_kind kind) {
  struct grpc_iov one = {msg, len};
  return stream_sendv(st, &one, 1, kind);
}

/* *buf with room for len bytes (doubling from 4 KiB), or NULL. */
static uint8_t *buf_reserve(uint8_t **buf, size_t *cap, size_t len) {
  if (len > *cap) {
    size_t c = *cap ? *cap : 4096;
    while (c < len) {
      c *= 2;
    }
    uint8_t *nb = realloc(*buf, c);
    if (nb == NULL) {
      return NULL;
    }
    *buf = nb;
    *cap = c;
  }
  return *buf;
}

static uint8_t *hub_buf(struct watch_hub *h, size_t len) {
  return buf_reserve(&h->buf, &h->buf_cap, len);
}

/* Large responses leave a large scratch buffer; give it back. */
static void hub_buf_trim(struct watch_hub *h) {
  if (h->buf_cap > WATCH_FEED_BATCH_BYTES) {
    free(h->buf);
    h->buf = NULL;
    h->buf_cap = 0;
  }
  for (size_t i = 0; i < 2; i++) {
    if (h->enc[i].cap > WATCH_FEED_BATCH_BYTES) {
      free(h->enc[i].buf);
      h->enc[i] = (struct hub_enc){0};
    }
  }
}

static int send_response(struct watch_stream *st, const Etcdserverpb__WatchResponse *resp,
                         enum send_kind kind) {
  CAIRN_ASSERT(resp->header != NULL); /* clientv3 dereferences it */
  size_t len = etcdserverpb__watch_response__get_packed_size(resp);
  uint8_t *buf = hub_buf(st->hub, len);
  if (buf == NULL) {
    stream_fail(st, CAIRN_ENOMEM);
    return CAIRN_ESTOPPED;
  }
  size_t n = etcdserverpb__watch_response__pack(resp, buf);
  CAIRN_ASSERT(n == len);
  return stream_send(st, buf, len, kind);
}

/* The header every response carries; revision is what it reports. */
static void hub_header(struct watch_hub *h, Etcdserverpb__ResponseHeader *hdr, int64_t revision) {
  etcdserverpb__response_header__init(hdr);
  server_header(h->s, hdr);
  hdr->revision = revision;
}

/* A reply that carries no events (created, canceled, progress). */
static int send_ctrl(struct watch_stream *st, int64_t watch_id, int64_t revision, bool created,
                     bool canceled, int64_t compact_revision, const char *reason,
                     enum send_kind kind) {
  Etcdserverpb__ResponseHeader hdr;
  hub_header(st->hub, &hdr, revision);
  Etcdserverpb__WatchResponse resp = ETCDSERVERPB__WATCH_RESPONSE__INIT;
  resp.header = &hdr;
  resp.watch_id = watch_id;
  resp.created = created;
  resp.canceled = canceled;
  resp.compact_revision = compact_revision;
  if (reason != NULL) {
    resp.cancel_reason = (char *)reason;
  }
  return send_response(st, &resp, kind);
}

static size_t varint_len(size_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    n++;
  }
  return n;
}

static bool hub_pb_reserve(struct watch_hub *h, size_t n) {
  if (n <= h->pb_cap) {
    return true;
  }
  size_t cap = h->pb_cap ? h->pb_cap : 64;
  while (cap < n) {
    cap *= 2;
  }
  Mvccpb__Event *ev = malloc(cap * sizeof *ev);
  Mvccpb__KeyValue *kv = malloc(2 * cap * sizeof *kv);
  Mvccpb__Event **evp = malloc(cap * sizeof *evp);
  if (ev == NULL || kv == NULL || evp == NULL) {
    free(ev);
    free(kv);
    free(evp);
    return false;
  }
  free(h->pb_ev);
  free(h->pb_kv);
  free(h->pb_evp);
  h->pb_ev = ev;
  h->pb_kv = kv;
  h->pb_evp = evp;
  h->pb_cap = cap;
  return true;
}

static void watcher_set_frag_open(struct watcher *w, bool open);

/* Fills the hub's scratch messages h->pb_evp[0..n) from evs. */
static bool hub_fill_pb(struct watch_hub *h, bool prev_kv, const struct mvcc_event *const *evs,
                        size_t n) {
  if (!hub_pb_reserve(h, n)) {
    return false;
  }
  for (size_t i = 0; i < n; i++) {
    const struct mvcc_event *e = evs[i];
    Mvccpb__Event *pe = &h->pb_ev[i];
    Mvccpb__KeyValue *kv = &h->pb_kv[2 * i];
    mvccpb__event__init(pe);
    mvccpb__key_value__init(kv);
    server_kv_to_pb(&e->kv, kv);
    pe->type = e->type == MVCC_EVENT_DELETE ? MVCCPB__EVENT__EVENT_TYPE__DELETE
                                            : MVCCPB__EVENT__EVENT_TYPE__PUT;
    pe->kv = kv;
    if (prev_kv && e->has_prev_kv) {
      Mvccpb__KeyValue *pkv = &h->pb_kv[2 * i + 1];
      mvccpb__key_value__init(pkv);
      server_kv_to_pb(&e->prev_kv, pkv);
      pe->prev_kv = pkv;
    }
    h->pb_evp[i] = pe;
  }
  return true;
}

/* Builds the response of events evs[0..n) for w (watch_id left 0) in the
 * hub's scratch; hdr and resp are the caller's. On failure the stream has
 * failed (CAIRN_ENOMEM). */
static bool hub_build_events(struct watcher *w, const struct mvcc_event *const *evs, size_t n,
                             int64_t header_rev, Etcdserverpb__ResponseHeader *hdr,
                             Etcdserverpb__WatchResponse *resp) {
  struct watch_hub *h = w->st->hub;
  if (!hub_fill_pb(h, w->prev_kv, evs, n)) {
    stream_fail(w->st, CAIRN_ENOMEM);
    return false;
  }
  hub_header(h, hdr, header_rev);
  etcdserverpb__watch_response__init(resp);
  resp->header = hdr;
  resp->events = h->pb_evp;
  resp->n_events = n;
  return true;
}

/* The whole live group to a watcher that does not fragment: the group's
 * response is packed once per prev_kv flag (watch_id 0, which proto3
 * leaves out) and each watcher's copy gets its watch_id field spliced in
 * after the header field, in field order. Errors: those of send_events. */
static int send_group_shared(struct watcher *w, int64_t header_rev) {
  struct watch_stream *st = w->st;
  struct watch_hub *h = st->hub;
  struct hub_enc *c = &h->enc[w->prev_kv ? 1 : 0];
  if (c->seq != h->group_seq) {
    Etcdserverpb__ResponseHeader hdr;
    Etcdserverpb__WatchResponse resp;
    if (!hub_build_events(w, h->grp_ev, h->grp_n, header_rev, &hdr, &resp)) {
      return CAIRN_ESTOPPED;
    }
    size_t len = etcdserverpb__watch_response__get_packed_size(&resp);
    if (buf_reserve(&c->buf, &c->cap, len) == NULL) {
      stream_fail(st, CAIRN_ENOMEM);
      return CAIRN_ESTOPPED;
    }
    c->len = etcdserverpb__watch_response__pack(&resp, c->buf);
    CAIRN_ASSERT(c->len == len);
    size_t hsz = etcdserverpb__response_header__get_packed_size(&hdr);
    c->hdr_len = 1 + varint_len(hsz) + hsz;
    /* header is field 1 (tag 0x0a) and goes first; watch_id (field 2)
     * would follow it. */
    CAIRN_ASSERT(c->len >= c->hdr_len && c->buf[0] == 0x0a);
    CAIRN_ASSERT(c->len == c->hdr_len || c->buf[c->hdr_len] != 0x10);
    c->seq = h->group_seq;
  }
  uint8_t idf[11];
  size_t il = 0;
  if (w->id != 0) {
    uint64_t v = (uint64_t)w->id;
    idf[il++] = 0x10; /* field 2, varint */
    while (v >= 0x80) {
      idf[il++] = (uint8_t)(v | 0x80);
      v >>= 7;
    }
    idf[il++] = (uint8_t)v;
  }
  struct grpc_iov iov[3] = {{c->buf, c->hdr_len},
                            {idf, il},
                            {c->buf + c->hdr_len, c->len - c->hdr_len}};
  int rc = stream_sendv(st, iov, 3, SEND_EVENT);
  if (rc == 0) {
    w->progress_events = true;
  }
  return rc;
}

/* Sends a watcher's events (n may be 0: the empty last part of a revision
 * sent in fragments). more_parts: the revision continues in a later
 * response. A fragmenting watcher's response over the size limit goes out in
 * pieces. Errors: CAIRN_EBUSY (nothing went out; the stream is now blocked),
 * CAIRN_ESTOPPED. */
static int send_events(struct watcher *w, const struct mvcc_event *const *evs, size_t n,
                       int64_t header_rev, bool more_parts) {
  struct watch_stream *st = w->st;
  struct watch_hub *h = st->hub;
  if (h->dispatching && n > 0 && evs == h->grp_ev && n == h->grp_n && !w->fragment) {
    return send_group_shared(w, header_rev);
  }
  Etcdserverpb__ResponseHeader hdr;
  Etcdserverpb__WatchResponse resp;
  if (!hub_build_events(w, evs, n, header_rev, &hdr, &resp)) {
    return CAIRN_ESTOPPED;
  }
  resp.watch_id = w->id;
  bool frag = w->fragment;
  size_t i = 0;
  int rc = 0;
  bool first = true;
  do {
    size_t j = n;
    if (frag && n > 1) {
      /* etcd's sendFragments: grow a piece while it stays under the limit,
       * at least one event each. */
      resp.events = NULL;
      resp.n_events = 0;
      resp.fragment = true;
      size_t size = etcdserverpb__watch_response__get_packed_size(&resp);
      j = i;
      while (j < n) {
        size_t es = mvccpb__event__get_packed_size(h->pb_evp[j]);
        size_t add = 1 + varint_len(es) + es;
        if (j > i && size + add >= h->frag_limit) {
          break;
        }
        size += add;
        j++;
      }
    }
    resp.events = n > 0 ? h->pb_evp + i : NULL;
    resp.n_events = j - i;
    resp.fragment = frag && (j < n || more_parts);
    rc = send_response(st, &resp, first ? SEND_EVENT : SEND_FORCED);
    if (rc != 0) {
      if (first) {
        return rc;
      }
      break; /* the stream is over: nothing more to keep straight */
    }
    first = false;
    i = j;
  } while (i < n);
  if (n > 0) {
    w->progress_events = true;
  }
  if (frag) {
    if (more_parts) {
      CAIRN_ASSERT(n > 0);
      w->frag_rev = evs[n - 1]->kv.mod_revision;
    }
    watcher_set_frag_open(w, more_parts);
  }
  return rc == CAIRN_ESTOPPED ? rc : 0;
}

/* ---- watcher and stream state ----------------------------------------------------- */

static void hub_run_idle(struct watch_hub *h);

static void watcher_set_frag_open(struct watcher *w, bool open) {
  struct watch_hub *h = w->st->hub;
  w->frag_open = open;
  bool want = open && w->state == W_SYNCED;
  if (want == w->in_frag_list) {
    return;
  }
  if (want) {
    w->fprev = NULL;
    w->fnext = h->frag_head;
    if (h->frag_head != NULL) {
      h->frag_head->fprev = w;
    }
    h->frag_head = w;
  } else {
    if (w->fprev != NULL) {
      w->fprev->fnext = w->fnext;
    } else {
      h->frag_head = w->fnext;
    }
    if (w->fnext != NULL) {
      w->fnext->fprev = w->fprev;
    }
    w->fprev = w->fnext = NULL;
  }
  w->in_frag_list = want;
}

static void stream_update_runnable(struct watch_stream *st) {
  struct watch_hub *h = st->hub;
  bool want = !st->detached && !st->blocked && st->n_unsynced > 0;
  if (want == st->runnable) {
    return;
  }
  if (want) {
    st->rnext = NULL;
    st->rprev = h->run_tail;
    if (h->run_tail != NULL) {
      h->run_tail->rnext = st;
    } else {
      h->run_head = st;
    }
    h->run_tail = st;
    hub_run_idle(h);
  } else {
    if (st->rprev != NULL) {
      st->rprev->rnext = st->rnext;
    } else {
      h->run_head = st->rnext;
    }
    if (st->rnext != NULL) {
      st->rnext->rprev = st->rprev;
    } else {
      h->run_tail = st->rprev;
    }
    st->rprev = st->rnext = NULL;
  }
  st->runnable = want;
}

static void unsynced_push(struct watcher *w) {
  struct watch_stream *st = w->st;
  w->unext = NULL;
  w->uprev = st->u_tail;
  if (st->u_tail != NULL) {
    st->u_tail->unext = w;
  } else {
    st->u_head = w;
  }
  st->u_tail = w;
  st->n_unsynced++;
}

static void unsynced_unlink(struct watcher *w) {
  struct watch_stream *st = w->st;
  if (w->uprev != NULL) {
    w->uprev->unext = w->unext;
  } else {
    st->u_head = w->unext;
  }
  if (w->unext != NULL) {
    w->unext->uprev = w->uprev;
  } else {
    st->u_tail = w->uprev;
  }
  w->uprev = w->unext = NULL;
  st->n_unsynced--;
}

/* Into the live set, at position pos (>= the hub's). */
static void watcher_join(struct watcher *w) {
  struct watch_hub *h = w->st->hub;
  CAIRN_ASSERT(w->state == W_UNSYNCED);
  CAIRN_ASSERT(pos_cmp(w->pos, h->pos) >= 0);
  unsynced_unlink(w);
  w->state = W_SYNCED;
  w->min_rev = w->pos.rev;
  w->iprio = hub_rand(h);
  h->root = idx_insert(h->root, w);
  h->n_synced++;
  if (w->prev_kv) {
    h->n_synced_prev_kv++;
  }
  watcher_set_frag_open(w, w->frag_open);
}

/* Out of the live set; it catches up from pos. */
static void watcher_demote(struct watcher *w, struct wpos pos) {
  struct watch_hub *h = w->st->hub;
  CAIRN_ASSERT(w->state == W_SYNCED);
  h->root = idx_remove(h->root, w);
  h->n_synced--;
  if (w->prev_kv) {
    h->n_synced_prev_kv--;
  }
  w->state = W_UNSYNCED;
  watcher_set_frag_open(w, w->frag_open);
  w->pos = pos_max(pos, (struct wpos){w->min_rev, 0});
  w->batch = WATCH_FEED_BATCH_EVENTS_MIN;
  unsynced_push(w);
}

/* Where a synced watcher that leaves the live set now resumes: during a
 * live group, after the group if it got the group's response, else at the
 * group's start; otherwise at the hub's position. */
static struct wpos watcher_resume_pos(const struct watcher *w) {
  const struct watch_hub *h = w->st->hub;
  if (!h->dispatching) {
    return h->pos;
  }
  return w->sent_group == h->group_seq ? h->grp_end : h->grp_start;
}

/* The stream's send queue is full: every synced watcher falls back to
 * catching up; the writable callback resumes the stream. */
static void on_writable(grpc_call *call, void *data);

static void stream_block(struct watch_stream *st) {
  CAIRN_ASSERT(!st->detached);
  st->blocked = true;
  for (size_t i = 0; i < st->n_watchers; i++) {
    struct watcher *w = st->by_id[i];
    if (w->state == W_SYNCED) {
      watcher_demote(w, watcher_resume_pos(w));
    }
  }
  stream_update_runnable(st);
  if (!st->writable_wait) {
    st->writable_wait = true;
    grpc_call_on_writable(st->call, on_writable, st);
  }
  server_log(LOG_DEBUG, "watch stream slow: %zu watchers catching up", st->n_unsynced);
}

/* Takes a watcher out of every hub structure (not out of by_id). */
static void watcher_unlink(struct watcher *w) {
  struct watch_hub *h = w->st->hub;
  if (w->state == W_SYNCED) {
    h->root = idx_remove(h->root, w);
    h->n_synced--;
    if (w->prev_kv) {
      h->n_synced_prev_kv--;
    }
    w->state = W_UNSYNCED;
    watcher_set_frag_open(w, false);
  } else {
    unsynced_unlink(w);
  }
}

static void watcher_free(struct watcher *w) {
  free(w->pend);
  free(w->buf);
  free(w);
}

static void stream_ctrl_clear(struct watch_stream *st) {
  while (st->ctrl_head != NULL) {
    struct ctrl_msg *m = st->ctrl_head;
    st->ctrl_head = m->next;
    free(m);
  }
  st->ctrl_tail = NULL;
  st->ctrl_n = 0;
}

/* The stream does no more work: its watchers leave the hub. */
static void stream_detach(struct watch_stream *st) {
  struct watch_hub *h = st->hub;
  if (st->detached) {
    return;
  }
  for (size_t i = 0; i < st->n_watchers; i++) {
    watcher_unlink(st->by_id[i]);
  }
  h->n_watchers -= st->n_watchers;
  if (st->hasleader) {
    h->n_hasleader--;
  }
  stream_ctrl_clear(st);
  st->detached = true;
  stream_update_runnable(st);
}

/* Ends the call with err's status and text. */
static void stream_fail(struct watch_stream *st, int err) {
  if (st->detached) {
    return;
  }
  grpc_call *call = st->call;
  stream_detach(st);
  grpc_call_finish(call, cairn_grpc_code(err), cairn_strerror(err));
}

static void stream_free(struct watch_stream *st) {
  for (size_t i = 0; i < st->n_watchers; i++) {
    watcher_free(st->by_id[i]);
  }
  free(st->by_id);
  stream_ctrl_clear(st);
  free(st);
}

static void hub_enter(struct watch_hub *h) {
  h->depth++;
}

static void hub_leave(struct watch_hub *h) {
  CAIRN_ASSERT(h->depth > 0);
  if (--h->depth > 0) {
    return;
  }
  while (h->dead_watchers != NULL) {
    struct watcher *w = h->dead_watchers;
    h->dead_watchers = w->dead_next;
    watcher_free(w);
  }
  while (h->dead_streams != NULL) {
    struct watch_stream *st = h->dead_streams;
    h->dead_streams = st->dead_next;
    stream_free(st);
  }
  hub_buf_trim(h);
}

/* by_id: binary search; returns the index of id or where it would go. */
static size_t stream_find(const struct watch_stream *st, int64_t id, bool *found) {
  size_t lo = 0, hi = st->n_watchers;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (st->by_id[mid]->id < id) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  *found = lo < st->n_watchers && st->by_id[lo]->id == id;
  return lo;
}

/* Removes a watcher from its stream and the hub; freed after the callback. */
static void watcher_remove(struct watcher *w) {
  struct watch_stream *st = w->st;
  struct watch_hub *h = st->hub;
  bool found;
  size_t i = stream_find(st, w->id, &found);
  CAIRN_ASSERT(found && st->by_id[i] == w);
  watcher_unlink(w);
  memmove(&st->by_id[i], &st->by_id[i + 1], (st->n_watchers - i - 1) * sizeof *st->by_id);
  st->n_watchers--;
  h->n_watchers--;
  if (w->progress_notify) {
    st->n_progress--;
  }
  w->dead_next = h->dead_watchers;
  h->dead_watchers = w;
  stream_update_runnable(st);
}

/* The revision up to which every synced watcher has everything. With no
 * synced watcher the live reader has nothing to do and moves to the
 * store's revision. */
static int64_t hub_delivered(struct watch_hub *h) {
  if (h->n_synced == 0 && !h->dispatching) {
    int64_t cur = mvcc_current_revision(h->store);
    if (h->pos.rev <= cur) {
      h->pos = (struct wpos){cur + 1, 0};
    }
  }
  return h->pos.rev - 1;
}

/* Sends the progress replies the stream owes once all its watchers are live. */
static void stream_pay_progress(struct watch_stream *st) {
  while (st->progress_owed > 0 && !st->detached && !st->blocked && st->n_unsynced == 0) {
    st->progress_owed--;
    send_ctrl(st, -1, hub_delivered(st->hub), false, false, 0, NULL, SEND_CTRL);
  }
}

static void on_writable(grpc_call *call, void *data) {
  struct watch_stream *st = data;
  struct watch_hub *h = st->hub;
  (void)call;
  hub_enter(h);
  st->writable_wait = false;
  if (st->detached) {
    goto out;
  }
  st->blocked = false;
  while (st->ctrl_head != NULL) {
    /* Unlinked while it is sent: a close inside the send may clear the
     * queue. */
    struct ctrl_msg *m = st->ctrl_head;
    st->ctrl_head = m->next;
    if (st->ctrl_head == NULL) {
      st->ctrl_tail = NULL;
    }
    st->ctrl_n--;
    int rc = grpc_call_send(st->call, m->data, m->len);
    if (rc == CAIRN_EBUSY && !st->detached) {
      m->next = st->ctrl_head;
      st->ctrl_head = m;
      if (st->ctrl_tail == NULL) {
        st->ctrl_tail = m;
      }
      st->ctrl_n++;
      st->blocked = true;
      st->writable_wait = true;
      grpc_call_on_writable(st->call, on_writable, st);
      goto out;
    }
    free(m);
    if (rc != 0 || st->detached) {
      stream_detach(st);
      goto out;
    }
  }
  stream_update_runnable(st);
  stream_pay_progress(st);
out:
  hub_leave(h);
}

/* ---- the live reader ---------------------------------------------------------------- */

struct match_ctx {
  struct watch_hub *h;
  const struct mvcc_event *const *ev; /* the group */
  size_t idx;                         /* of e in ev */
  const struct mvcc_event *e;
  struct watcher *touched;
};

static bool pend_reserve(struct watcher *w, size_t n) {
  if (n <= w->cap_pend) {
    return true;
  }
  size_t cap = w->cap_pend ? w->cap_pend : 8;
  while (cap < n) {
    cap *= 2;
  }
  const struct mvcc_event **np = realloc(w->pend, cap * sizeof *np);
  if (np == NULL) {
    return false;
  }
  w->pend = np;
  w->cap_pend = cap;
  return true;
}

static void match_one(struct watcher *w, void *arg) {
  struct match_ctx *m = arg;
  const struct mvcc_event *e = m->e;
  if (e->kv.mod_revision < w->min_rev) {
    return;
  }
  if ((w->no_put && e->type == MVCC_EVENT_PUT) || (w->no_delete && e->type == MVCC_EVENT_DELETE)) {
    return;
  }
  if (!w->touched) {
    w->touched = true;
    w->tnext = m->touched;
    m->touched = w;
  }
  if (w->pend_failed) {
    return;
  }
  if (!w->pend_mat) {
    if (w->n_pend == m->idx) {
      w->n_pend++; /* still every event from the group's first */
      return;
    }
    if (!pend_reserve(w, w->n_pend + 1)) {
      w->pend_failed = true; /* it catches up instead */
      return;
    }
    memcpy(w->pend, m->ev, w->n_pend * sizeof *w->pend);
    w->pend_mat = true;
  }
  if (!pend_reserve(w, w->n_pend + 1)) {
    w->pend_failed = true;
    return;
  }
  w->pend[w->n_pend++] = e;
}

/* Delivers the events ev[0..n) to the synced watchers: whole revisions up
 * to rev, or a part of revision rev when !last_part. Each watcher gets one
 * response with its events of the group. [gstart, gend) is the feed span. */
static void dispatch_group(struct watch_hub *h, int64_t rev, const struct mvcc_event *const *ev,
                           size_t n, struct wpos gstart, struct wpos gend, bool last_part) {
  h->group_seq++;
  h->grp_start = gstart;
  h->grp_end = gend;
  h->grp_ev = ev;
  h->grp_n = n;
  h->dispatching = true;
  struct match_ctx m = {.h = h, .ev = ev};
  for (size_t i = 0; i < n; i++) {
    m.idx = i;
    m.e = ev[i];
    idx_stab(h->root, ev[i]->kv.key.data, ev[i]->kv.key.len, match_one, &m);
  }
  for (struct watcher *w = m.touched, *next; w != NULL; w = next) {
    next = w->tnext;
    w->touched = false;
    if (w->state == W_SYNCED && !w->st->detached) {
      if (w->pend_failed) {
        watcher_demote(w, gstart);
        stream_update_runnable(w->st);
      } else if (send_events(w, w->pend_mat ? w->pend : ev, w->n_pend, rev, !last_part) == 0) {
        w->sent_group = h->group_seq;
      }
    }
    w->n_pend = 0;
    w->pend_mat = false;
    w->pend_failed = false;
    if (w->cap_pend > 64) {
      free(w->pend);
      w->pend = NULL;
      w->cap_pend = 0;
    }
  }
  if (last_part) {
    /* Watchers that got earlier parts of rev and nothing in this one. */
    for (struct watcher *w = h->frag_head, *next; w != NULL; w = next) {
      next = w->fnext;
      if (w->sent_group != h->group_seq && send_events(w, NULL, 0, rev, false) == 0) {
        w->sent_group = h->group_seq;
      }
    }
  }
  h->dispatching = false;
}

/* Every synced watcher falls back to catching up (the live position was
 * compacted away, or the live read failed). */
static void hub_demote_all(struct watch_hub *h) {
  while (h->root != NULL) {
    struct watcher *w = h->root;
    watcher_demote(w, h->pos);
    stream_update_runnable(w->st);
  }
}

static const struct mvcc_bytes ALL_KEYS = {KEY_NUL, 1};

/* The end of the revision that starts at r->ev[i]. */
static size_t rev_end(const struct feed_read *r, size_t i) {
  int64_t rev = r->ev[i]->kv.mod_revision;
  size_t j = i + 1;
  while (j < r->n_ev && r->ev[j]->kv.mod_revision == rev) {
    j++;
  }
  return j;
}

static size_t events_bytes(const struct mvcc_event *const *ev, size_t n) {
  size_t b = 0;
  for (size_t i = 0; i < n; i++) {
    b += ev[i]->kv.key.len + ev[i]->kv.value.len;
    if (ev[i]->has_prev_kv) {
      b += ev[i]->prev_kv.key.len + ev[i]->prev_kv.value.len;
    }
  }
  return b;
}

/* One step of the live reader; true if there is more to read. */
static bool hub_pump_step(struct watch_hub *h) {
  int64_t cur = mvcc_current_revision(h->store);
  if (h->n_synced == 0) {
    hub_delivered(h); /* nothing to deliver: move on */
    return false;
  }
  if (h->pos.rev > cur) {
    return false;
  }
  /* At the compacted revision itself the feed is whole until physical
   * compaction removes that revision's deletes; the compactor waits for
   * watch_hub_delivered_revision() to pass it (see watcher_compacted). */
  struct feed_read r;
  int rc =
      feed_read(h, ALL_KEYS, ALL_KEYS, h->n_synced_prev_kv > 0, h->pos, INT64_MAX, &h->batch, &r);
  if (rc != 0) {
    if (rc != CAIRN_ECOMPACTED) {
      server_log(LOG_ERROR, "watch: reading the change feed at revision %lld: %s",
                 (long long)h->pos.rev, cairn_strerror(rc));
    }
    /* Each watcher meets the error (compacted: a compacted cancel) or gets
     * through on its own; the live reader starts again from the top. */
    hub_demote_all(h);
    hub_delivered(h);
    return false;
  }
  /* Whole revisions go out together, one response per watcher, up to
   * WATCH_LIVE_GROUP_BYTES; the last part of a revision begun in an earlier
   * read and a revision cut by this read's end go alone. */
  size_t i = 0;
  while (i < r.n_ev) {
    size_t j = rev_end(&r, i);
    bool last_part = !(j == r.n_ev && r.mid);
    struct wpos gstart = i == 0 ? r.start : (struct wpos){r.ev[i]->kv.mod_revision, 0};
    if (last_part && gstart.sub == 0) {
      size_t bytes = events_bytes(r.ev + i, j - i);
      while (j < r.n_ev) {
        size_t k = rev_end(&r, j);
        if (k == r.n_ev && r.mid) {
          break;
        }
        size_t b = events_bytes(r.ev + j, k - j);
        if (bytes + b > WATCH_LIVE_GROUP_BYTES) {
          break;
        }
        bytes += b;
        j = k;
      }
    }
    int64_t rev = r.ev[j - 1]->kv.mod_revision;
    struct wpos gend = last_part ? (struct wpos){rev + 1, 0} : r.end;
    dispatch_group(h, rev, r.ev + i, j - i, gstart, gend, last_part);
    h->pos = gend;
    i = j;
  }
  CAIRN_ASSERT(pos_cmp(r.end, h->pos) >= 0);
  h->pos = r.end;
  feed_read_free(&r);
  return h->pos.rev <= mvcc_current_revision(h->store);
}

/* ---- catch-up ----------------------------------------------------------------------- */

static void stream_joined(struct watch_stream *st) {
  stream_update_runnable(st);
  stream_pay_progress(st);
}

/* Whether w can no longer be served whole. The feed refuses positions below
 * the compacted revision C; at C itself it serves what compaction kept,
 * which lacks C's deletes. etcd serves a watch asked to start at C after
 * compaction at C all the same (minRev < compactRev is its test), and so
 * does the hub; a watcher that a compaction overtook gets the compacted
 * cancel rather than a revision with holes. */
static bool watcher_compacted(const struct watcher *w) {
  int64_t c = mvcc_compacted_revision(w->st->hub->store);
  if (w->pos.rev != c) {
    return w->pos.rev < c;
  }
  return !(w->pos.sub == 0 && w->pos.rev == w->start_rev && w->create_compact == c);
}

/* One step for the stream's next unsynced watcher (round robin). */
static void stream_catchup_step(struct watch_stream *st) {
  struct watch_hub *h = st->hub;
  struct watcher *w = st->u_head;
  CAIRN_ASSERT(w != NULL && !st->blocked && !st->detached);
  if (st->n_unsynced > 1) {
    unsynced_unlink(w);
    unsynced_push(w);
  }
  if (pos_cmp(w->pos, h->pos) >= 0) {
    watcher_join(w);
    stream_joined(st);
    return;
  }
  if (w->pos.rev >= h->pos.rev) {
    return; /* the live reader is inside a huge revision; wait for it */
  }
  struct feed_read r;
  int rc = CAIRN_ECOMPACTED;
  if (!watcher_compacted(w)) {
    rc = feed_read(h, w->fkey, w->fend, w->prev_kv, w->pos, h->pos.rev, &w->batch, &r);
  }
  if (rc == CAIRN_ECOMPACTED) {
    send_ctrl(st, w->id, mvcc_current_revision(h->store), false, true,
              mvcc_compacted_revision(h->store), NULL, SEND_FORCED);
    watcher_remove(w);
    stream_joined(st);
    return;
  }
  if (rc != 0) {
    server_log(LOG_ERROR, "watch %lld: reading the change feed at revision %lld: %s",
               (long long)w->id, (long long)w->pos.rev, cairn_strerror(rc));
    send_ctrl(st, w->id, mvcc_current_revision(h->store), false, true, 0, cairn_strerror(rc),
              SEND_FORCED);
    watcher_remove(w);
    stream_joined(st);
    return;
  }
  size_t n = 0;
  for (size_t i = 0; i < r.n_ev; i++) {
    const struct mvcc_event *e = r.ev[i];
    if ((w->no_put && e->type == MVCC_EVENT_PUT) ||
        (w->no_delete && e->type == MVCC_EVENT_DELETE)) {
      continue;
    }
    r.ev[n++] = e;
  }
  if (w->frag_open) {
    /* The revision sent in fragments is over if this read holds a later
     * revision or went past it: its last (empty) part goes out first. */
    bool over =
        n > 0 ? r.ev[0]->kv.mod_revision > w->frag_rev : !(r.mid && r.end.rev == w->frag_rev);
    if (over && send_events(w, NULL, 0, w->frag_rev, false) != 0) {
      feed_read_free(&r);
      return;
    }
  }
  if (n > 0) {
    /* With r.mid, every event is of revision r.end.rev, which goes on. */
    bool more = r.mid;
    int64_t header_rev = r.end.rev - 1;
    if (r.ev[n - 1]->kv.mod_revision > header_rev) {
      header_rev = r.ev[n - 1]->kv.mod_revision;
    }
    rc = send_events(w, r.ev, n, header_rev, more);
    if (rc != 0) {
      feed_read_free(&r);
      return; /* blocked (pos unchanged) or over */
    }
  }
  CAIRN_ASSERT(pos_cmp(r.end, w->pos) >= 0);
  w->pos = r.end;
  feed_read_free(&r);
  if (pos_cmp(w->pos, h->pos) >= 0) {
    watcher_join(w);
    stream_joined(st);
  }
}

/* ---- idle handle and timers --------------------------------------------------------- */

static void on_idle(uv_idle_t *handle) {
  struct watch_hub *h = handle->data;
  hub_enter(h);
  uint64_t deadline = uv_hrtime() + (uint64_t)WATCH_TICK_BUDGET_US * 1000u;
  bool more = true;
  while (more) {
    more = hub_pump_step(h);
    if (uv_hrtime() >= deadline) {
      break;
    }
  }
  /* At least one catch-up step per callback, then round robin while there
   * is time. */
  bool first = true;
  while (h->run_head != NULL && (first || uv_hrtime() < deadline)) {
    first = false;
    struct watch_stream *st = h->run_head;
    stream_catchup_step(st);
    if (st->runnable && h->run_head == st && st->rnext != NULL) {
      /* to the back of the queue */
      h->run_head = st->rnext;
      h->run_head->rprev = NULL;
      st->rprev = h->run_tail;
      st->rnext = NULL;
      h->run_tail->rnext = st;
      h->run_tail = st;
    }
  }
  if (!more && h->run_head == NULL) {
    uv_idle_stop(&h->idle);
    h->idle_on = false;
  }
  hub_leave(h);
}

static void hub_run_idle(struct watch_hub *h) {
  if (!h->idle_on && !h->closing) {
    h->idle_on = true;
    uv_idle_start(&h->idle, on_idle);
  }
}

/* etcd's per-stream progress ticker, one for the hub: a watcher with
 * progress_notify that got no events since the last tick gets
 * {header.revision = delivered, watch_id}. Only live watchers: the revision
 * must not claim what has not been sent. */
static void on_progress_timer(uv_timer_t *t) {
  struct watch_hub *h = t->data;
  hub_enter(h);
  int64_t rev = hub_delivered(h);
  for (struct watch_stream *st = h->streams; st != NULL; st = st->next) {
    if (st->n_progress == 0 || st->detached) {
      continue;
    }
    for (size_t i = 0; i < st->n_watchers; i++) {
      struct watcher *w = st->by_id[i];
      if (!w->progress_notify) {
        continue;
      }
      if (!w->progress_events && w->state == W_SYNCED && !st->blocked && !st->detached) {
        send_ctrl(st, w->id, rev, false, false, 0, NULL, SEND_EVENT);
      }
      w->progress_events = false;
    }
  }
  hub_leave(h);
}

/* etcd's monitorLeader: streams that asked for a leader end after
 * WATCH_NO_LEADER_CHECKS election timeouts without one. */
static bool hub_has_leader(const struct watch_hub *h) {
  if (h->s->raft == NULL) {
    return true;
  }
  struct raftnode_status rs;
  raftnode_status(h->s->raft, &rs);
  return rs.leader_id != 0;
}

static void on_leader_timer(uv_timer_t *t) {
  struct watch_hub *h = t->data;
  if (h->n_hasleader == 0 || hub_has_leader(h)) {
    h->no_leader_checks = 0;
    return;
  }
  if (++h->no_leader_checks < WATCH_NO_LEADER_CHECKS) {
    return;
  }
  h->no_leader_checks = 0;
  hub_enter(h);
  server_log(LOG_WARN, "watch: no leader for %u election timeouts; ending %zu watch streams",
             WATCH_NO_LEADER_CHECKS, h->n_hasleader);
  for (struct watch_stream *st = h->streams, *next; st != NULL; st = next) {
    next = st->next;
    if (st->hasleader && !st->detached) {
      stream_fail(st, CAIRN_ENO_LEADER);
    }
  }
  hub_leave(h);
}

/* ---- API ------------------------------------------------------------------------------ */

static void on_applied(void *data, int64_t revision) {
  watch_hub_notify(data, revision);
}

static uint64_t progress_interval_ms(void) {
  const char *env = getenv("CAIRN_WATCH_PROGRESS_INTERVAL_MS");
  if (env == NULL || *env == '\0') {
    return WATCH_PROGRESS_INTERVAL_MS_DEFAULT;
  }
  char *end;
  unsigned long long v = strtoull(env, &end, 10);
  if (*end != '\0' || v == 0) {
    server_log(LOG_WARN, "CAIRN_WATCH_PROGRESS_INTERVAL_MS=%s is not a number of ms; using %u", env,
               WATCH_PROGRESS_INTERVAL_MS_DEFAULT);
    return WATCH_PROGRESS_INTERVAL_MS_DEFAULT;
  }
  return v < WATCH_PROGRESS_INTERVAL_MS_MIN ? WATCH_PROGRESS_INTERVAL_MS_MIN : v;
}

int watch_hub_init(struct server *s) {
  struct watch_hub *h = calloc(1, sizeof *h);
  if (h == NULL) {
    return CAIRN_ENOMEM;
  }
  h->s = s;
  h->store = s->store;
  h->loop = s->loop;
  h->pos = (struct wpos){mvcc_current_revision(s->store) + 1, 0};
  h->batch = WATCH_FEED_BATCH_EVENTS_MIN;
  h->rng = 0x9e3779b9u;
  uint64_t max_req = s->cfg.max_request_bytes ? s->cfg.max_request_bytes : 1536u * 1024u;
  h->frag_limit = (size_t)max_req + 512u * 1024u; /* etcd's maxRequestBytes + grpc overhead */
  h->progress_interval_ms = progress_interval_ms();
  h->election_ms = s->cfg.election_ms ? s->cfg.election_ms : 1000u;

  uv_idle_init(h->loop, &h->idle);
  uv_timer_init(h->loop, &h->progress_timer);
  uv_timer_init(h->loop, &h->leader_timer);
  h->idle.data = h->progress_timer.data = h->leader_timer.data = h;
  h->handles_open = 3;
  uv_timer_start(&h->progress_timer, on_progress_timer, h->progress_interval_ms,
                 h->progress_interval_ms);
  uv_timer_start(&h->leader_timer, on_leader_timer, h->election_ms, h->election_ms);
  /* Neither timer keeps the loop alive by itself. */
  uv_unref((uv_handle_t *)&h->progress_timer);
  uv_unref((uv_handle_t *)&h->leader_timer);
  if (s->raft != NULL) {
    raftnode_on_applied(s->raft, on_applied, h);
  }
  s->watch = h;
  return 0;
}

static void on_handle_closed(uv_handle_t *handle) {
  struct watch_hub *h = handle->data;
  if (--h->handles_open > 0) {
    return;
  }
  free(h->pb_ev);
  free(h->pb_kv);
  free(h->pb_evp);
  free(h->buf);
  free(h->enc[0].buf);
  free(h->enc[1].buf);
  free(h);
}

void watch_hub_close(struct watch_hub *h) {
  CAIRN_ASSERT(h->depth == 0);
  h->closing = true;
  if (h->s->raft != NULL) {
    raftnode_on_applied(h->s->raft, NULL, NULL); /* raft outlives the hub */
  }
  while (h->streams != NULL) {
    struct watch_stream *st = h->streams;
    h->streams = st->next;
    stream_detach(st);
    if (st->call != NULL) {
      grpc_call_set_user(st->call, NULL);
      if (st->writable_wait) {
        grpc_call_on_writable(st->call, NULL, NULL);
      }
    }
    stream_free(st);
  }
  h->n_streams = 0;
  h->s->watch = NULL;
  uv_close((uv_handle_t *)&h->idle, on_handle_closed);
  uv_close((uv_handle_t *)&h->progress_timer, on_handle_closed);
  uv_close((uv_handle_t *)&h->leader_timer, on_handle_closed);
}

void watch_hub_notify(struct watch_hub *h, int64_t revision) {
  (void)revision; /* the reader reads up to the store's revision anyway */
  if (h->closing) {
    return;
  }
  /* Deliver now, within one callback's budget, the rest from the idle
   * handle: the live reader is then at the head before raft applies the
   * next entry, which may be a compaction (see watcher_compacted). */
  hub_enter(h);
  uint64_t deadline = uv_hrtime() + (uint64_t)WATCH_TICK_BUDGET_US * 1000u;
  bool more;
  do {
    more = hub_pump_step(h);
  } while (more && uv_hrtime() < deadline);
  if (more) {
    hub_run_idle(h);
  }
  hub_leave(h);
}

int watch_hub_stream_open(struct watch_hub *h, grpc_call *call, bool hasleader,
                          struct watch_stream **out) {
  *out = NULL;
  if (hasleader && !hub_has_leader(h)) {
    return CAIRN_ENO_LEADER;
  }
  if (h->n_streams >= WATCH_STREAMS_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  struct watch_stream *st = calloc(1, sizeof *st);
  if (st == NULL) {
    return CAIRN_ENOMEM;
  }
  st->hub = h;
  st->call = call;
  st->hasleader = hasleader;
  st->next = h->streams;
  if (h->streams != NULL) {
    h->streams->prev = st;
  }
  h->streams = st;
  h->n_streams++;
  if (hasleader) {
    h->n_hasleader++;
  }
  *out = st;
  return 0;
}

void watch_hub_stream_close(struct watch_stream *st) {
  struct watch_hub *h = st->hub;
  hub_enter(h);
  stream_detach(st);
  st->call = NULL;
  if (st->prev != NULL) {
    st->prev->next = st->next;
  } else {
    h->streams = st->next;
  }
  if (st->next != NULL) {
    st->next->prev = st->prev;
  }
  h->n_streams--;
  st->dead_next = h->dead_streams;
  h->dead_streams = st;
  hub_leave(h);
}

static void create_refused(struct watch_stream *st, const char *reason) {
  send_ctrl(st, -1, mvcc_current_revision(st->hub->store), true, true, 0, reason, SEND_CTRL);
}

void watch_hub_create(struct watch_stream *st, const struct watch_create_req *req) {
  struct watch_hub *h = st->hub;
  if (st->detached) {
    return;
  }
  hub_enter(h);
  struct mvcc_bytes key = req->key.len ? req->key : (struct mvcc_bytes){KEY_NUL, 1};
  bool single = req->range_end.len == 0;
  bool from_key = req->range_end.len == 1 && req->range_end.data[0] == 0;
  int64_t cur = mvcc_current_revision(h->store);
  bool found = false;
  size_t at = 0;
  int64_t id = req->watch_id;
  if (!single && !from_key &&
      bytes_cmp(key.data, key.len, req->range_end.data, req->range_end.len) >= 0) {
    create_refused(st, WATCH_REASON_EMPTY_RANGE);
    goto out;
  }
  if (st->n_watchers >= WATCH_STREAM_WATCHERS_MAX || h->n_watchers >= WATCH_HUB_WATCHERS_MAX) {
    create_refused(st, cairn_strerror(CAIRN_ETOO_MANY_REQUESTS));
    goto out;
  }
  if (id != 0) {
    at = stream_find(st, id, &found);
    if (found) {
      create_refused(st, WATCH_REASON_DUPLICATE_ID);
      goto out;
    }
  } else {
    /* etcd's AutoWatchID: the lowest free id from the last one given */
    for (;;) {
      at = stream_find(st, st->next_id, &found);
      if (!found) {
        break;
      }
      st->next_id++;
    }
    id = st->next_id++;
  }

  struct watcher *w = calloc(1, sizeof *w);
  size_t blen = key.len + (single ? 1 : from_key ? 0 : req->range_end.len);
  uint8_t *buf = malloc(blen ? blen : 1);
  if (w == NULL || buf == NULL) {
    free(w);
    free(buf);
    create_refused(st, cairn_strerror(CAIRN_ENOMEM));
    goto out;
  }
  if (st->n_watchers == st->cap_watchers) {
    size_t cap = st->cap_watchers ? st->cap_watchers * 2 : 8;
    struct watcher **nb = realloc(st->by_id, cap * sizeof *nb);
    if (nb == NULL) {
      free(w);
      free(buf);
      create_refused(st, cairn_strerror(CAIRN_ENOMEM));
      goto out;
    }
    st->by_id = nb;
    st->cap_watchers = cap;
  }
  memcpy(buf, key.data, key.len);
  w->buf = buf;
  w->key = buf;
  w->key_len = key.len;
  w->fkey = (struct mvcc_bytes){buf, key.len};
  if (single) {
    buf[key.len] = 0; /* [k, k "\0") holds k alone */
    w->iend = buf;
    w->iend_len = key.len + 1;
    w->fend = (struct mvcc_bytes){NULL, 0};
  } else if (from_key) {
    w->iend_inf = true;
    w->fend = (struct mvcc_bytes){KEY_NUL, 1};
  } else {
    memcpy(buf + key.len, req->range_end.data, req->range_end.len);
    w->iend = buf + key.len;
    w->iend_len = req->range_end.len;
    w->fend = (struct mvcc_bytes){w->iend, w->iend_len};
  }
  w->st = st;
  w->id = id;
  w->seq = ++h->next_seq;
  w->prev_kv = req->prev_kv;
  w->progress_notify = req->progress_notify;
  w->fragment = req->fragment;
  w->no_put = req->no_put;
  w->no_delete = req->no_delete;
  w->batch = WATCH_FEED_BATCH_EVENTS_MIN;
  int64_t start = req->start_revision > 0 ? req->start_revision : cur + 1;
  w->pos = (struct wpos){start, 0};
  w->min_rev = start;
  w->start_rev = start;
  w->create_compact = mvcc_compacted_revision(h->store);
  w->state = W_UNSYNCED;
  memmove(&st->by_id[at + 1], &st->by_id[at], (st->n_watchers - at) * sizeof *st->by_id);
  st->by_id[at] = w;
  st->n_watchers++;
  h->n_watchers++;
  if (w->progress_notify) {
    st->n_progress++;
  }
  unsynced_push(w);

  /* The created reply goes first: nothing for w is sent before it. */
  if (send_ctrl(st, id, cur, true, false, 0, NULL, SEND_CTRL) != 0 || st->detached) {
    goto out;
  }
  hub_delivered(h); /* a hub with no live watcher moves to the store's revision */
  if (!st->blocked && pos_cmp(w->pos, h->pos) >= 0) {
    watcher_join(w);
  }
  stream_update_runnable(st);
out:
  hub_leave(h);
}

void watch_hub_cancel(struct watch_stream *st, int64_t watch_id) {
  struct watch_hub *h = st->hub;
  if (st->detached) {
    return;
  }
  hub_enter(h);
  bool found;
  size_t i = stream_find(st, watch_id, &found);
  if (found) {
    watcher_remove(st->by_id[i]);
    send_ctrl(st, watch_id, mvcc_current_revision(h->store), false, true, 0, NULL, SEND_CTRL);
    stream_joined(st); /* its leaving may make the stream whole */
  }
  hub_leave(h);
}

void watch_hub_progress(struct watch_stream *st) {
  struct watch_hub *h = st->hub;
  if (st->detached) {
    return;
  }
  hub_enter(h);
  /* Deliver what was applied since the last idle callback first, so that
   * the reply can say the current revision (bounded like one callback). */
  uint64_t deadline = uv_hrtime() + (uint64_t)WATCH_TICK_BUDGET_US * 1000u;
  while (hub_pump_step(h) && uv_hrtime() < deadline) {
  }
  if (st->progress_owed >= WATCH_STREAM_CTRL_MAX) {
    stream_fail(st, CAIRN_ETOO_MANY_REQUESTS);
  } else {
    st->progress_owed++;
    stream_pay_progress(st);
  }
  hub_leave(h);
}

int64_t watch_hub_delivered_revision(struct watch_hub *h) {
  return hub_delivered(h);
}

void watch_hub_stats(const struct watch_hub *h, uint64_t *watchers, uint64_t *streams,
                     uint64_t *slow) {
  if (watchers != NULL) {
    *watchers = h->n_watchers;
  }
  if (streams != NULL) {
    *streams = h->n_streams;
  }
  if (slow != NULL) {
    *slow = h->n_watchers - h->n_synced;
  }
}
