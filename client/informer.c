/* client/informer.c: a prefix mirrored in memory (cairn_informer_*).
 *
 * States:
 *   INF_LIST     listing: pages of CAIRN_INFORMER_PAGE_KEYS keys, the first
 *                at the current revision, the others at the first page's
 *                header revision (serializable=false, so linearizable); the
 *                next page starts at the last key + "\0". The pages build a
 *                new map beside the current one.
 *   INF_WATCH    watching the prefix (a cairn_watch) from the map's
 *                revision + 1; each update is applied to the map.
 *   INF_CLOSING  the client closes: the timer ends the informer.
 *   INF_DONE     ended or stopped; freed once no range call is in flight.
 * LIST -> WATCH when the last page is in (the differences between the old
 * map and the new one are delivered first); WATCH -> LIST on compaction (the
 * watch ends with OUT_OF_RANGE), on another end of the watch (a refusal),
 * or when cairn__watch_down_since() says the watch has had no watcher for
 * relist_after_ms (polled by the timer every relist_after_ms / 4, at most
 * every INF_POLL_MS_MAX, at least every INF_POLL_MS_MIN). A page that fails
 * is reported to on_error and asked again after cairn__backoff_ms(); a
 * compacted list revision starts the list over.
 *
 * The map is an AVL tree of nodes, each one holding a copy of a KeyValue
 * and its bytes in one allocation: O(log n) updates, in-order iteration
 * with a stack of at most INF_HEIGHT_MAX nodes. A new list is built into a
 * sorted array (pages come in key order), then into a balanced tree in
 * O(n); the old and new trees are walked together to deliver the
 * differences: a key in the new map only is an add, in the old only a
 * delete, in both with a different mod_revision an update.
 *
 * Callbacks see the map as it is after the change they report: a list's
 * differences are delivered once the new map is in place, a watch update's
 * once all its events are applied (the old versions are kept aside until
 * then). Memory: during a list, the old map and the new one (at most
 * max_keys / max_bytes each); during a watch update, the old versions its
 * events replaced (bounded by one response message).
 *
 * Bounds: max_keys and max_bytes (keys + values) of the map, checked on the
 * new map of a list and after each event: past either, the informer ends
 * with RESOURCE_EXHAUSTED and one of INF_TEXT_MAX_KEYS / INF_TEXT_MAX_BYTES. */
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"

#define INF_POLL_MS_MIN 5u
#define INF_POLL_MS_MAX 1000u
/* An AVL tree of n nodes is at most 1.44 log2(n + 2) high: 64 covers any
 * map that fits in memory. */
#define INF_HEIGHT_MAX 64
#define INF_ATTEMPTS_MAX 32u

static const char INF_TEXT_MAX_KEYS[] = "cairn: informer max_keys reached";
static const char INF_TEXT_MAX_BYTES[] = "cairn: informer max_bytes reached";

struct node {
  struct node *l, *r;
  int height;
  Mvccpb__KeyValue kv; /* key and value point into bytes */
  uint8_t bytes[];
};

enum pend_kind { PEND_ADD, PEND_UPDATE, PEND_DELETE };
struct pend {
  enum pend_kind kind;
  struct node *old, *cur; /* old: out of the map, freed after delivery */
};

enum inf_state { INF_LIST, INF_WATCH, INF_CLOSING, INF_DONE };

struct cairn_informer {
  struct cairn__obj obj; /* first: the client's list */
  cairn_client *c;
  struct cairn_informer_handlers h;
  void *data;
  uint8_t *first_key, *range_end; /* the prefix as [first_key, range_end) */
  size_t first_key_len, range_end_len;
  size_t max_keys, max_bytes;
  uint64_t relist_after_ms;

  enum inf_state state;
  uv_timer_t timer; /* page retries, the relist poll, the end at close */
  unsigned attempt;
  int depth; /* callbacks running: the informer is freed after them */

  /* The map, at rev. */
  struct node *root;
  size_t n, bytes;
  int64_t rev;
  bool listed; /* the first list completed */

  /* A list in progress. */
  struct node **stage;
  size_t n_stage, cap_stage, stage_bytes;
  int64_t list_rev;
  uint8_t *page_key;
  size_t page_key_len;
  bool range_inflight;

  cairn_watch *watch;
};

/* ---- the map ---------------------------------------------------------- */

static int key_cmp(const uint8_t *a, size_t an, const uint8_t *b, size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c != 0) {
    return c;
  }
  return an < bn ? -1 : (an > bn ? 1 : 0);
}

static int node_cmp(const struct node *a, const struct node *b) {
  return key_cmp(a->kv.key.data, a->kv.key.len, b->kv.key.data, b->kv.key.len);
}

static size_t node_bytes(const struct node *x) {
  return x->kv.key.len + x->kv.value.len;
}

static struct node *node_new(const Mvccpb__KeyValue *kv) {
  struct node *x = malloc(sizeof *x + kv->key.len + kv->value.len);
  if (x == NULL) {
    return NULL;
  }
  x->l = x->r = NULL;
  x->height = 1;
  mvccpb__key_value__init(&x->kv);
  x->kv.create_revision = kv->create_revision;
  x->kv.mod_revision = kv->mod_revision;
  x->kv.version = kv->version;
  x->kv.lease = kv->lease;
  if (kv->key.len > 0) {
    memcpy(x->bytes, kv->key.data, kv->key.len);
  }
  if (kv->value.len > 0) {
    memcpy(x->bytes + kv->key.len, kv->value.data, kv->value.len);
  }
  x->kv.key.data = x->bytes;
  x->kv.key.len = kv->key.len;
  x->kv.value.data = x->bytes + kv->key.len;
  x->kv.value.len = kv->value.len;
  return x;
}

static int height(const struct node *x) {
  return x != NULL ? x->height : 0;
}

static void fix(struct node *x) {
  int hl = height(x->l), hr = height(x->r);
  x->height = (hl > hr ? hl : hr) + 1;
}

static struct node *rot_right(struct node *x) {
  struct node *y = x->l;
  x->l = y->r;
  y->r = x;
  fix(x);
  fix(y);
  return y;
}

static struct node *rot_left(struct node *x) {
  struct node *y = x->r;
  x->r = y->l;
  y->l = x;
  fix(x);
  fix(y);
  return y;
}

static struct node *balance(struct node *x) {
  fix(x);
  int b = height(x->l) - height(x->r);
  if (b > 1) {
    if (height(x->l->l) < height(x->l->r)) {
      x->l = rot_left(x->l);
    }
    return rot_right(x);
  }
  if (b < -1) {
    if (height(x->r->r) < height(x->r->l)) {
      x->r = rot_right(x->r);
    }
    return rot_left(x);
  }
  return x;
}

/* Inserts x; a node of the same key is replaced and returned in *old. */
static struct node *avl_put(struct node *t, struct node *x, struct node **old) {
  if (t == NULL) {
    return x;
  }
  int c = node_cmp(x, t);
  if (c == 0) {
    x->l = t->l;
    x->r = t->r;
    x->height = t->height;
    t->l = t->r = NULL;
    *old = t;
    return x;
  }
  if (c < 0) {
    t->l = avl_put(t->l, x, old);
  } else {
    t->r = avl_put(t->r, x, old);
  }
  return balance(t);
}

static struct node *avl_pop_min(struct node *t, struct node **min) {
  if (t->l == NULL) {
    *min = t;
    return t->r;
  }
  t->l = avl_pop_min(t->l, min);
  return balance(t);
}

/* Removes the node of key (returned in *old, or NULL). */
static struct node *avl_del(struct node *t, const uint8_t *key, size_t len, struct node **old) {
  if (t == NULL) {
    return NULL;
  }
  int c = key_cmp(key, len, t->kv.key.data, t->kv.key.len);
  if (c < 0) {
    t->l = avl_del(t->l, key, len, old);
  } else if (c > 0) {
    t->r = avl_del(t->r, key, len, old);
  } else {
    *old = t;
    struct node *l = t->l, *r = t->r;
    t->l = t->r = NULL;
    if (r == NULL) {
      return l;
    }
    struct node *m;
    r = avl_pop_min(r, &m);
    m->l = l;
    m->r = r;
    return balance(m);
  }
  return balance(t);
}

static const struct node *avl_get(const struct node *t, const uint8_t *key, size_t len) {
  while (t != NULL) {
    int c = key_cmp(key, len, t->kv.key.data, t->kv.key.len);
    if (c == 0) {
      return t;
    }
    t = c < 0 ? t->l : t->r;
  }
  return NULL;
}

/* A balanced tree of the sorted a[0..n). */
static struct node *avl_build(struct node **a, size_t n) {
  if (n == 0) {
    return NULL;
  }
  size_t mid = n / 2;
  struct node *x = a[mid];
  x->l = avl_build(a, mid);
  x->r = avl_build(a + mid + 1, n - mid - 1);
  fix(x);
  return x;
}

static void avl_free(struct node *t) {
  while (t != NULL) {
    avl_free(t->l);
    struct node *r = t->r;
    free(t);
    t = r;
  }
}

/* In-order iteration with an explicit stack. */
struct iter {
  const struct node *stack[INF_HEIGHT_MAX];
  int top;
};

static void iter_push_left(struct iter *it, const struct node *x) {
  while (x != NULL) {
    CAIRN_ASSERT(it->top < INF_HEIGHT_MAX);
    it->stack[it->top++] = x;
    x = x->l;
  }
}

static void iter_init(struct iter *it, const struct node *root) {
  it->top = 0;
  iter_push_left(it, root);
}

static const struct node *iter_next(struct iter *it) {
  if (it->top == 0) {
    return NULL;
  }
  const struct node *x = it->stack[--it->top];
  iter_push_left(it, x->r);
  return x;
}

/* ---- life cycle --------------------------------------------------------- */

static void inf_list_start(cairn_informer *inf);
static void inf_watch_start(cairn_informer *inf);
static void inf_timer_cb(uv_timer_t *t);

static void stage_clear(cairn_informer *inf) {
  for (size_t i = 0; i < inf->n_stage; i++) {
    free(inf->stage[i]);
  }
  inf->n_stage = 0;
  inf->stage_bytes = 0;
}

/* The informer leaves its client's list only now, so that the client's
 * close waits for it. */
static void inf_free_cb(uv_handle_t *h) {
  cairn_informer *inf = h->data;
  cairn__detach(inf->c, &inf->obj);
  avl_free(inf->root);
  stage_clear(inf);
  free(inf->stage);
  free(inf->page_key);
  free(inf->first_key);
  free(inf->range_end);
  free(inf);
}

/* Frees a finished informer once no callback and no range call uses it. */
static void inf_release(cairn_informer *inf) {
  if (inf->state != INF_DONE || inf->depth > 0 || inf->range_inflight) {
    return;
  }
  if (uv_is_closing((uv_handle_t *)&inf->timer)) {
    return;
  }
  uv_close((uv_handle_t *)&inf->timer, inf_free_cb);
}

/* No callback after this. */
static void inf_finish(cairn_informer *inf) {
  inf->state = INF_DONE;
  uv_timer_stop(&inf->timer);
  if (inf->watch != NULL) {
    cairn_watch_stop(inf->watch);
    inf->watch = NULL;
  }
}

static void inf_end(cairn_informer *inf, int code, const char *message) {
  inf_finish(inf);
  inf->depth++;
  inf->h.on_end(inf->data, code, message);
  inf->depth--;
  inf_release(inf);
}

static void inf_error(cairn_informer *inf, int code, const char *message) {
  if (inf->h.on_error != NULL) {
    inf->depth++;
    inf->h.on_error(inf->data, code, message);
    inf->depth--;
  }
}

static bool inf_over(const cairn_informer *inf, size_t n, size_t bytes, const char **why) {
  if (n > inf->max_keys) {
    *why = INF_TEXT_MAX_KEYS;
    return true;
  }
  if (bytes > inf->max_bytes) {
    *why = INF_TEXT_MAX_BYTES;
    return true;
  }
  return false;
}

/* ---- listing ---------------------------------------------------------- */

static void inf_page(cairn_informer *inf);

/* Delivers the differences between old (the map before the list) and the
 * map now in place. Returns false if the informer was stopped or ended by
 * a callback. */
static bool inf_deliver_diff(cairn_informer *inf, const struct node *old) {
  struct iter *a = malloc(2 * sizeof *a);
  if (a == NULL) {
    return false;
  }
  struct iter *b = a + 1;
  iter_init(a, old);
  iter_init(b, inf->root);
  const struct node *x = iter_next(a), *y = iter_next(b);
  bool alive = true;
  inf->depth++;
  while ((x != NULL || y != NULL) && inf->state == INF_LIST) {
    int c = x == NULL ? 1 : (y == NULL ? -1 : node_cmp(x, y));
    if (c < 0) {
      if (inf->h.on_delete != NULL) {
        inf->h.on_delete(inf->data, &x->kv);
      }
      x = iter_next(a);
    } else if (c > 0) {
      if (inf->h.on_add != NULL) {
        inf->h.on_add(inf->data, &y->kv);
      }
      y = iter_next(b);
    } else {
      if (x->kv.mod_revision != y->kv.mod_revision && inf->h.on_update != NULL) {
        inf->h.on_update(inf->data, &x->kv, &y->kv);
      }
      x = iter_next(a);
      y = iter_next(b);
    }
  }
  inf->depth--;
  alive = inf->state == INF_LIST;
  free(a);
  return alive;
}

/* The last page is in: the new map replaces the old one. */
static void inf_list_done(cairn_informer *inf) {
  struct node *old = inf->root;
  inf->root = avl_build(inf->stage, inf->n_stage);
  inf->n = inf->n_stage;
  inf->bytes = inf->stage_bytes;
  inf->n_stage = 0;
  inf->stage_bytes = 0;
  free(inf->stage);
  inf->stage = NULL;
  inf->cap_stage = 0;
  inf->rev = inf->list_rev;
  inf->listed = true;
  inf->list_rev = 0;
  free(inf->page_key);
  inf->page_key = NULL;
  bool alive = inf_deliver_diff(inf, old);
  avl_free(old);
  if (!alive) {
    inf_release(inf);
    return;
  }
  if (inf->h.on_synced != NULL) {
    inf->depth++;
    inf->h.on_synced(inf->data, inf->rev, true);
    inf->depth--;
    if (inf->state != INF_LIST) {
      inf_release(inf);
      return;
    }
  }
  inf_watch_start(inf);
}

static void inf_retry_page(cairn_informer *inf) {
  uint64_t ms = cairn__backoff_ms(inf->attempt);
  if (inf->attempt < INF_ATTEMPTS_MAX) {
    inf->attempt++;
  }
  uv_timer_start(&inf->timer, inf_timer_cb, ms, 0);
}

static void inf_page_cb(void *data, const struct cairn_result *res) {
  cairn_informer *inf = data;
  inf->range_inflight = false;
  if (inf->state != INF_LIST) {
    inf_release(inf);
    return;
  }
  if (res->code != 0) {
    inf_error(inf, res->code, res->message);
    if (inf->state != INF_LIST) {
      inf_release(inf);
      return;
    }
    if (res->code == GRPC_OUT_OF_RANGE) {
      /* The list revision was compacted meanwhile: start over. */
      stage_clear(inf);
      inf->list_rev = 0;
      free(inf->page_key);
      inf->page_key = NULL;
    }
    inf_retry_page(inf);
    return;
  }
  inf->attempt = 0;
  const Etcdserverpb__RangeResponse *r = (const Etcdserverpb__RangeResponse *)res->msg;
  if (inf->list_rev == 0) {
    inf->list_rev = r->header != NULL ? r->header->revision : 0;
  }
  if (inf->n_stage + r->n_kvs > inf->cap_stage) {
    size_t cap = inf->cap_stage > 0 ? inf->cap_stage : CAIRN_INFORMER_PAGE_KEYS;
    while (cap < inf->n_stage + r->n_kvs) {
      cap *= 2;
    }
    struct node **s = realloc(inf->stage, cap * sizeof *s);
    if (s == NULL) {
      inf_end(inf, GRPC_RESOURCE_EXHAUSTED, cairn_strerror(CAIRN_ENOMEM));
      return;
    }
    inf->stage = s;
    inf->cap_stage = cap;
  }
  for (size_t i = 0; i < r->n_kvs; i++) {
    struct node *x = node_new(r->kvs[i]);
    if (x == NULL) {
      inf_end(inf, GRPC_RESOURCE_EXHAUSTED, cairn_strerror(CAIRN_ENOMEM));
      return;
    }
    /* Pages come in key order, each after the last: the array stays sorted. */
    CAIRN_ASSERT(inf->n_stage == 0 || node_cmp(inf->stage[inf->n_stage - 1], x) < 0);
    inf->stage[inf->n_stage++] = x;
    inf->stage_bytes += node_bytes(x);
  }
  const char *why;
  if (inf_over(inf, inf->n_stage, inf->stage_bytes, &why)) {
    inf_end(inf, GRPC_RESOURCE_EXHAUSTED, why);
    return;
  }
  if (r->more && r->n_kvs > 0) {
    /* The next page starts right after the last key. */
    const Mvccpb__KeyValue *last = r->kvs[r->n_kvs - 1];
    uint8_t *k = malloc(last->key.len + 1);
    if (k == NULL) {
      inf_end(inf, GRPC_RESOURCE_EXHAUSTED, cairn_strerror(CAIRN_ENOMEM));
      return;
    }
    memcpy(k, last->key.data, last->key.len);
    k[last->key.len] = 0;
    free(inf->page_key);
    inf->page_key = k;
    inf->page_key_len = last->key.len + 1;
    inf_page(inf);
    return;
  }
  inf_list_done(inf);
}

static void inf_page(cairn_informer *inf) {
  CAIRN_ASSERT(inf->state == INF_LIST && !inf->range_inflight);
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  if (inf->page_key != NULL) {
    req.key.data = inf->page_key;
    req.key.len = inf->page_key_len;
  } else {
    req.key.data = inf->first_key;
    req.key.len = inf->first_key_len;
  }
  req.range_end.data = inf->range_end;
  req.range_end.len = inf->range_end_len;
  req.limit = CAIRN_INFORMER_PAGE_KEYS;
  req.revision = inf->list_rev;
  req.serializable = false;
  int rc = cairn_range(inf->c, &req, NULL, inf_page_cb, inf);
  if (rc == CAIRN_ESTOPPED) {
    return; /* the client closes: its close_cb ends the informer */
  }
  if (rc != 0) {
    inf_error(inf, cairn_grpc_code(rc), cairn_strerror(rc));
    if (inf->state == INF_LIST) {
      inf_retry_page(inf);
    }
    return;
  }
  inf->range_inflight = true;
}

static void inf_list_start(cairn_informer *inf) {
  if (inf->watch != NULL) {
    cairn_watch_stop(inf->watch);
    inf->watch = NULL;
  }
  inf->state = INF_LIST;
  uv_timer_stop(&inf->timer);
  stage_clear(inf);
  inf->list_rev = 0;
  free(inf->page_key);
  inf->page_key = NULL;
  inf_page(inf);
}

/* ---- watching --------------------------------------------------------- */

static void inf_pend_free(struct pend *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(p[i].old);
  }
  free(p);
}

static void inf_on_update(void *data, const struct cairn_watch_update *u) {
  cairn_informer *inf = data;
  if (inf->state != INF_WATCH) {
    return;
  }
  struct pend *p = NULL;
  size_t np = 0;
  if (u->n_events > 0) {
    p = malloc(u->n_events * sizeof *p);
    if (p == NULL) {
      inf_end(inf, GRPC_RESOURCE_EXHAUSTED, cairn_strerror(CAIRN_ENOMEM));
      return;
    }
  }
  int64_t last = 0;
  for (size_t i = 0; i < u->n_events; i++) {
    const Mvccpb__Event *ev = u->events[i];
    last = ev->kv->mod_revision;
    if (ev->type == MVCCPB__EVENT__EVENT_TYPE__PUT) {
      struct node *x = node_new(ev->kv);
      if (x == NULL) {
        inf_pend_free(p, np);
        inf_end(inf, GRPC_RESOURCE_EXHAUSTED, cairn_strerror(CAIRN_ENOMEM));
        return;
      }
      struct node *old = NULL;
      inf->root = avl_put(inf->root, x, &old);
      inf->n += old == NULL ? 1 : 0;
      inf->bytes += node_bytes(x);
      if (old != NULL) {
        inf->bytes -= node_bytes(old);
      }
      p[np++] = (struct pend){old != NULL ? PEND_UPDATE : PEND_ADD, old, x};
      const char *why;
      if (inf_over(inf, inf->n, inf->bytes, &why)) {
        inf_pend_free(p, np);
        inf_end(inf, GRPC_RESOURCE_EXHAUSTED, why);
        return;
      }
    } else {
      struct node *old = NULL;
      inf->root = avl_del(inf->root, ev->kv->key.data, ev->kv->key.len, &old);
      if (old != NULL) {
        inf->n--;
        inf->bytes -= node_bytes(old);
        p[np++] = (struct pend){PEND_DELETE, old, NULL};
      }
    }
  }
  if (u->revision > inf->rev) {
    inf->rev = u->revision;
  }
  inf->depth++;
  for (size_t i = 0; i < np && inf->state == INF_WATCH; i++) {
    switch (p[i].kind) {
      case PEND_ADD:
        if (inf->h.on_add != NULL) {
          inf->h.on_add(inf->data, &p[i].cur->kv);
        }
        break;
      case PEND_UPDATE:
        if (inf->h.on_update != NULL) {
          inf->h.on_update(inf->data, &p[i].old->kv, &p[i].cur->kv);
        }
        break;
      case PEND_DELETE:
        if (inf->h.on_delete != NULL) {
          inf->h.on_delete(inf->data, &p[i].old->kv);
        }
        break;
    }
  }
  inf_pend_free(p, np);
  /* The batch is whole unless it ends inside a revision (a fragment). */
  if (inf->state == INF_WATCH && inf->h.on_synced != NULL && last <= u->revision) {
    inf->h.on_synced(inf->data, inf->rev, false);
  }
  inf->depth--;
  inf_release(inf);
}

static void inf_on_watch_end(void *data, int code, const char *message, int64_t compact_rev) {
  (void)compact_rev;
  cairn_informer *inf = data;
  inf->watch = NULL;
  if (inf->state != INF_WATCH) {
    return;
  }
  if (code == GRPC_CANCELLED && cairn__closing(inf->c)) {
    return; /* the informer's own close_cb ends it */
  }
  /* Compaction, or a refusal: list again (after the backoff if refused). */
  inf_error(inf, code, message);
  if (inf->state != INF_WATCH) {
    inf_release(inf);
    return;
  }
  if (code == GRPC_OUT_OF_RANGE) {
    inf_list_start(inf);
  } else {
    inf->state = INF_LIST;
    inf_retry_page(inf);
  }
}

static uint64_t inf_poll_ms(const cairn_informer *inf) {
  uint64_t ms = inf->relist_after_ms / 4;
  if (ms < INF_POLL_MS_MIN) {
    ms = INF_POLL_MS_MIN;
  }
  return ms > INF_POLL_MS_MAX ? INF_POLL_MS_MAX : ms;
}

static void inf_watch_start(cairn_informer *inf) {
  CAIRN_ASSERT(inf->watch == NULL);
  struct cairn_watch_opts o = {0};
  o.key = inf->first_key;
  o.key_len = inf->first_key_len;
  o.range_end = inf->range_end;
  o.range_end_len = inf->range_end_len;
  o.start_revision = inf->rev + 1;
  static const struct cairn_watch_handlers wh = {inf_on_update, inf_on_watch_end};
  int rc = cairn_watch_start(inf->c, &o, &wh, inf, &inf->watch);
  if (rc == CAIRN_ESTOPPED) {
    inf->watch = NULL;
    return;
  }
  if (rc != 0) {
    inf->watch = NULL;
    inf_error(inf, cairn_grpc_code(rc), cairn_strerror(rc));
    if (inf->state == INF_LIST) {
      inf_retry_page(inf);
    }
    return;
  }
  inf->state = INF_WATCH;
  uv_timer_start(&inf->timer, inf_timer_cb, inf_poll_ms(inf), 0);
}

static void inf_timer_cb(uv_timer_t *t) {
  cairn_informer *inf = t->data;
  switch (inf->state) {
    case INF_CLOSING:
      inf_end(inf, GRPC_CANCELLED, GRPC_CLIENT_CLOSING_TEXT);
      return;
    case INF_LIST:
      if (!inf->range_inflight) {
        if (inf->page_key == NULL && inf->list_rev == 0) {
          inf_list_start(inf);
        } else {
          inf_page(inf);
        }
      }
      return;
    case INF_WATCH: {
      uint64_t since = inf->watch != NULL ? cairn__watch_down_since(inf->watch) : 0;
      uint64_t now = uv_now(cairn_client_loop(inf->c));
      if (since > 0 && now >= since && now - since >= inf->relist_after_ms) {
        inf_error(inf, GRPC_UNAVAILABLE, "cairn: informer watch down, listing again");
        if (inf->state == INF_WATCH) {
          inf_list_start(inf);
        } else {
          inf_release(inf);
        }
        return;
      }
      uv_timer_start(&inf->timer, inf_timer_cb, inf_poll_ms(inf), 0);
      return;
    }
    case INF_DONE:
      return;
  }
}

static void inf_close_cb(struct cairn__obj *obj) {
  cairn_informer *inf = (cairn_informer *)obj;
  if (inf->state == INF_DONE || inf->state == INF_CLOSING) {
    return;
  }
  /* The watch is an object of the client too: its own close_cb ends it. */
  inf->state = INF_CLOSING;
  uv_timer_start(&inf->timer, inf_timer_cb, 0, 0);
}

/* ---- the public API ----------------------------------------------------- */

int cairn_informer_start(cairn_client *c, const struct cairn_informer_opts *opts,
                         const struct cairn_informer_handlers *h, void *data,
                         cairn_informer **out) {
  if (c == NULL || opts == NULL || h == NULL || h->on_end == NULL ||
      (opts->prefix_len > 0 && opts->prefix == NULL)) {
    return CAIRN_EINVAL;
  }
  if (cairn__closing(c)) {
    return CAIRN_ESTOPPED;
  }
  cairn_informer *inf = calloc(1, sizeof *inf);
  if (inf == NULL) {
    return CAIRN_ENOMEM;
  }
  /* [prefix, prefix_end), or every key: ["\0", "\0"). */
  size_t n = opts->prefix_len > 0 ? opts->prefix_len : 1;
  inf->first_key = malloc(n);
  inf->range_end = malloc(n);
  if (inf->first_key == NULL || inf->range_end == NULL) {
    free(inf->first_key);
    free(inf->range_end);
    free(inf);
    return CAIRN_ENOMEM;
  }
  if (opts->prefix_len > 0) {
    memcpy(inf->first_key, opts->prefix, opts->prefix_len);
    inf->first_key_len = opts->prefix_len;
    inf->range_end_len = cairn_prefix_end(opts->prefix, opts->prefix_len, inf->range_end);
  } else {
    inf->first_key[0] = 0;
    inf->first_key_len = 1;
    inf->range_end[0] = 0;
    inf->range_end_len = 1;
  }
  inf->c = c;
  inf->h = *h;
  inf->data = data;
  inf->max_keys = opts->max_keys > 0 ? opts->max_keys : CAIRN_DEFAULT_INFORMER_MAX_KEYS;
  inf->max_bytes = opts->max_bytes > 0 ? opts->max_bytes : CAIRN_DEFAULT_INFORMER_MAX_BYTES;
  inf->relist_after_ms =
      opts->relist_after_ms > 0 ? opts->relist_after_ms : CAIRN_DEFAULT_INFORMER_RELIST_AFTER_MS;
  inf->obj.close_cb = inf_close_cb;
  CAIRN_ASSERT(uv_timer_init(cairn_client_loop(c), &inf->timer) == 0);
  inf->timer.data = inf;
  cairn__attach(c, &inf->obj);
  inf->state = INF_LIST;
  /* The first page goes from the loop, so that an error is a callback. */
  uv_timer_start(&inf->timer, inf_timer_cb, 0, 0);
  if (out != NULL) {
    *out = inf;
  }
  return 0;
}

void cairn_informer_stop(cairn_informer *inf) {
  if (inf == NULL || inf->state == INF_DONE) {
    return;
  }
  inf_finish(inf);
  inf_release(inf);
}

int64_t cairn_informer_revision(const cairn_informer *inf) {
  return inf->listed ? inf->rev : 0;
}

size_t cairn_informer_size(const cairn_informer *inf) {
  return inf->n;
}

const Mvccpb__KeyValue *cairn_informer_get(const cairn_informer *inf, const void *key,
                                           size_t key_len) {
  if (key == NULL || key_len == 0) {
    return NULL; /* no key is empty */
  }
  const struct node *x = avl_get(inf->root, key, key_len);
  return x != NULL ? &x->kv : NULL;
}

int cairn_informer_foreach(const cairn_informer *inf,
                           int (*fn)(void *data, const Mvccpb__KeyValue *kv), void *data) {
  struct iter *it = malloc(sizeof *it);
  if (it == NULL) {
    return CAIRN_ENOMEM;
  }
  iter_init(it, inf->root);
  int rc = 0;
  for (const struct node *x = iter_next(it); x != NULL && rc == 0; x = iter_next(it)) {
    rc = fn(data, &x->kv);
  }
  free(it);
  return rc;
}
