/* raft/readindex.c: linearizable reads. A read is served once the store
 * holds every entry committed before the read began: the read index.
 *
 * The leader confirms that it still leads with a barrier entry: committing it
 * needs a majority in the leader's term, so every entry committed before the
 * read is below it. Reads that arrive while a barrier is in flight wait for
 * the next one (the one in flight may have been appended before they began),
 * so concurrent reads share barriers: at most one in flight, one more batch
 * waiting. A single-voter leader needs no confirmation: the commit index at
 * the read is its read index.
 *
 * Then the read waits until the store applied the read index: raft counts
 * an entry applied when the state machine queued it (raft/fsm.h), so applied
 * means "raft applied it and no queued command at or below it remains".
 * A follower gets its read index from the leader (the server's
 * /cairnserverpb.Internal/ReadIndex) and waits the same way. */
#include <stdlib.h>

#include "common/cairn_assert.h"
#include "common/cairn_error.h"
#include "raftnode_int.h"

/* How often waiting reads look at their deadlines. */
#define READS_TICK_MS 20u

struct read_waiter {
  struct read_waiter *next;
  uint64_t index;       /* 0: still waiting for a barrier */
  uint64_t deadline_ms; /* loop time */
  int status;           /* what settle() answers */
  void *data;
  raftnode_read_cb cb;
};

struct read_list {
  struct read_waiter *head, *tail;
};

struct barrier {
  struct raft_barrier req;
  struct raftnode_reads *reads;
};

struct raftnode_reads {
  raftnode *node;     /* NULL once the node stopped */
  unsigned count;     /* waiters in the three lists */
  struct read_list confirming; /* their barrier is in flight */
  struct read_list next;       /* arrived during it: the next barrier's */
  struct read_list applying;   /* index known: waiting for the store */
  struct barrier *in_flight;
  /* raft called the barrier back; settle_barrier() runs at the next turn. */
  bool settled_pending;
  int settled_status;
  uint64_t settled_index;
  unsigned handles_open;
  uv_check_t check; /* after each loop turn's I/O: has the store caught up? */
  uv_timer_t tick;  /* deadlines */
  uv_timer_t later; /* answers what is due without waiting for I/O */
};

static void list_push(struct read_list *l, struct read_waiter *w) {
  w->next = NULL;
  if (l->tail != NULL) {
    l->tail->next = w;
  } else {
    l->head = w;
  }
  l->tail = w;
}

static void list_append(struct read_list *to, struct read_list *from) {
  if (from->head == NULL) {
    return;
  }
  if (to->tail != NULL) {
    to->tail->next = from->head;
  } else {
    to->head = from->head;
  }
  to->tail = from->tail;
  from->head = from->tail = NULL;
}

static bool applied_through(const raftnode *n, uint64_t index) {
  /* raft's applied index, less what is queued, and while the store is
   * behind raft's snapshot, the store's own (raft/fsm.h). */
  return fsm_store_holds(&n->fsm, index);
}

static void maybe_free(struct raftnode_reads *rd) {
  if (rd->node == NULL && rd->handles_open == 0 && rd->in_flight == NULL) {
    free(rd);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  struct raftnode_reads *rd = h->data;
  rd->handles_open--;
  maybe_free(rd);
}

/* Answers every waiter of l with status. */
static void fail_list(struct raftnode_reads *rd, struct read_list *l, int status) {
  struct read_waiter *w = l->head;
  l->head = l->tail = NULL;
  while (w != NULL) {
    struct read_waiter *next = w->next;
    rd->count--;
    w->cb(w->data, status, 0);
    free(w);
    w = next;
  }
}

/* Answers the applying waiters whose index the store reached, and those
 * whose deadline passed. */
static void settle(struct raftnode_reads *rd) {
  raftnode *n = rd->node;
  if (n == NULL) {
    return;
  }
  uint64_t now = uv_now(n->loop);
  struct read_waiter **pp = &rd->applying.head;
  struct read_waiter *prev = NULL;
  struct read_list due = {NULL, NULL};
  while (*pp != NULL) {
    struct read_waiter *w = *pp;
    bool ready = applied_through(n, w->index);
    if (ready || w->deadline_ms <= now) {
      *pp = w->next;
      if (rd->applying.tail == w) {
        rd->applying.tail = prev;
      }
      w->status = ready ? 0 : CAIRN_ETIMEOUT;
      list_push(&due, w);
      continue;
    }
    prev = w;
    pp = &w->next;
  }
  struct read_waiter *w = due.head;
  while (w != NULL) {
    struct read_waiter *next = w->next;
    rd->count--;
    w->cb(w->data, w->status, w->status == 0 ? w->index : 0);
    free(w);
    w = next;
    if (rd->node == NULL) {
      /* A callback stopped the node: the rest were failed by the stop. */
      while (w != NULL) {
        next = w->next;
        rd->count--;
        w->cb(w->data, CAIRN_ESTOPPED, 0);
        free(w);
        w = next;
      }
      return;
    }
  }
}

static void on_check(uv_check_t *h) {
  struct raftnode_reads *rd = h->data;
  settle(rd);
  if (rd->node != NULL && rd->applying.head == NULL) {
    uv_check_stop(&rd->check);
  }
}

static void settle_barrier(struct raftnode_reads *rd);

static void on_later(uv_timer_t *t) {
  struct raftnode_reads *rd = t->data;
  if (rd->settled_pending) {
    settle_barrier(rd);
    if (rd->node == NULL) {
      return;
    }
  }
  on_check(&rd->check);
}

static void on_tick(uv_timer_t *t) {
  struct raftnode_reads *rd = t->data;
  raftnode *n = rd->node;
  if (n == NULL) {
    return;
  }
  /* Reads waiting for a barrier time out too (a leader that cannot reach a
   * majority never commits it). */
  uint64_t now = uv_now(n->loop);
  struct read_list *lists[2] = {&rd->confirming, &rd->next};
  for (int i = 0; i < 2; i++) {
    struct read_waiter **pp = &lists[i]->head;
    struct read_waiter *prev = NULL;
    while (*pp != NULL) {
      struct read_waiter *w = *pp;
      if (w->deadline_ms > now) {
        prev = w;
        pp = &w->next;
        continue;
      }
      *pp = w->next;
      if (lists[i]->tail == w) {
        lists[i]->tail = prev;
      }
      rd->count--;
      w->cb(w->data, CAIRN_ETIMEOUT, 0);
      free(w);
      if (rd->node == NULL) {
        return;
      }
    }
  }
  settle(rd);
  if (rd->node != NULL && rd->count == 0) {
    uv_timer_stop(&rd->tick);
  }
}

static void watch_applying(struct raftnode_reads *rd) {
  uv_check_start(&rd->check, on_check);
  uv_timer_start(&rd->later, on_later, 0, 0);
}

static int send_barrier(struct raftnode_reads *rd);

/* The outcome of the barrier of the confirming batch, from the loop: never
 * inside raft's callback, which can run in the middle of a step-down, where
 * a new raft_barrier() crashes libraft 0.15. */
static void settle_barrier(struct raftnode_reads *rd) {
  rd->settled_pending = false;
  if (rd->settled_status != 0) {
    /* Leadership lost (or a failed log write, after which the leader steps
     * down): these reads are not confirmed. */
    fail_list(rd, &rd->confirming, CAIRN_ELEADER_CHANGED);
    if (rd->node == NULL) {
      return;
    }
  } else {
    for (struct read_waiter *w = rd->confirming.head; w != NULL; w = w->next) {
      w->index = rd->settled_index;
    }
    list_append(&rd->applying, &rd->confirming);
    watch_applying(rd);
  }
  if (rd->next.head != NULL) {
    list_append(&rd->confirming, &rd->next);
    int rc = send_barrier(rd);
    if (rc != 0) {
      fail_list(rd, &rd->confirming, rc);
    }
  }
}

static void on_barrier(struct raft_barrier *req, int status) {
  struct barrier *b = req->data;
  struct raftnode_reads *rd = b->reads;
  uint64_t index = req->index;
  free(b);
  rd->in_flight = NULL;
  if (rd->node == NULL) {
    maybe_free(rd);
    return;
  }
  rd->settled_pending = true;
  rd->settled_status = status;
  rd->settled_index = index;
  uv_timer_start(&rd->later, on_later, 0, 0);
}

static int send_barrier(struct raftnode_reads *rd) {
  raftnode *n = rd->node;
  if (raft_state(n->r) != RAFT_LEADER) {
    return CAIRN_ELEADER_CHANGED;
  }
  struct barrier *b = calloc(1, sizeof *b);
  if (b == NULL) {
    return CAIRN_ENOMEM;
  }
  b->reads = rd;
  b->req.data = b;
  int rv = raft_barrier(n->r, &b->req, on_barrier);
  if (rv != 0) {
    free(b);
    return rv == RAFT_NOMEM ? CAIRN_ENOMEM : CAIRN_ELEADER_CHANGED;
  }
  rd->in_flight = b;
  return 0;
}

static int reads_get(raftnode *n, struct raftnode_reads **out) {
  if (n->reads == NULL) {
    struct raftnode_reads *rd = calloc(1, sizeof *rd);
    if (rd == NULL) {
      return CAIRN_ENOMEM;
    }
    rd->node = n;
    uv_check_init(n->loop, &rd->check);
    uv_timer_init(n->loop, &rd->tick);
    uv_timer_init(n->loop, &rd->later);
    rd->check.data = rd->tick.data = rd->later.data = rd;
    rd->handles_open = 3;
    n->reads = rd;
  }
  *out = n->reads;
  return 0;
}

static struct read_waiter *waiter_new(raftnode *n, struct raftnode_reads *rd, uint64_t index,
                                      uint64_t timeout_ms, void *data, raftnode_read_cb cb) {
  struct read_waiter *w = calloc(1, sizeof *w);
  if (w == NULL) {
    return NULL;
  }
  w->index = index;
  w->deadline_ms = uv_now(n->loop) + timeout_ms;
  w->data = data;
  w->cb = cb;
  rd->count++;
  if (!uv_is_active((uv_handle_t *)&rd->tick)) {
    uv_timer_start(&rd->tick, on_tick, READS_TICK_MS, READS_TICK_MS);
  }
  return w;
}

bool raftnode_self_is_learner(raftnode *n) {
  const struct raft_server *self = NULL;
  for (unsigned i = 0; i < n->r->configuration.n; i++) {
    if (n->r->configuration.servers[i].id == n->r->id) {
      self = &n->r->configuration.servers[i];
    }
  }
  if (self == NULL || self->role == RAFT_VOTER) {
    return false; /* a voter, or not in the configuration (yet) */
  }
  /* A stand-by: an etcd learner, or a voter still catching up. */
  struct raftnode_member_info *ms;
  size_t count;
  if (raftnode_members(n, &ms, &count) != 0) {
    return false;
  }
  bool learner = false;
  for (size_t i = 0; i < count; i++) {
    if (ms[i].id == n->r->id) {
      learner = ms[i].is_learner;
    }
  }
  raftnode_members_free(ms);
  return learner;
}

unsigned raftnode_voters(const raftnode *n) {
  unsigned voters = 0;
  for (unsigned i = 0; i < n->r->configuration.n; i++) {
    if (n->r->configuration.servers[i].role == RAFT_VOTER) {
      voters++;
    }
  }
  return voters;
}

int raftnode_read_index(raftnode *n, void *data, raftnode_read_cb cb) {
  CAIRN_ASSERT(n != NULL && cb != NULL);
  if (n->state != NODE_RUNNING) {
    return CAIRN_ESTOPPED;
  }
  if (raft_state(n->r) != RAFT_LEADER) {
    return raftnode_not_leader(n);
  }
  struct raftnode_reads *rd;
  int rc = reads_get(n, &rd);
  if (rc != 0) {
    return rc;
  }
  if (rd->count >= RAFTNODE_READS_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  bool alone = raftnode_voters(n) <= 1;
  struct read_waiter *w =
      waiter_new(n, rd, alone ? n->r->commit_index : 0, n->request_timeout_ms, data, cb);
  if (w == NULL) {
    return CAIRN_ENOMEM;
  }
  if (alone) {
    list_push(&rd->applying, w);
    watch_applying(rd);
    return 0;
  }
  if (rd->in_flight != NULL || rd->settled_pending) {
    list_push(&rd->next, w);
    return 0;
  }
  list_push(&rd->confirming, w);
  rc = send_barrier(rd);
  if (rc != 0) {
    rd->confirming.head = rd->confirming.tail = NULL;
    rd->count--;
    free(w);
    return rc;
  }
  return 0;
}

int raftnode_wait_applied(raftnode *n, uint64_t index, uint64_t timeout_ms, void *data,
                          raftnode_read_cb cb) {
  CAIRN_ASSERT(n != NULL && cb != NULL);
  if (n->state != NODE_RUNNING) {
    return CAIRN_ESTOPPED;
  }
  struct raftnode_reads *rd;
  int rc = reads_get(n, &rd);
  if (rc != 0) {
    return rc;
  }
  if (rd->count >= RAFTNODE_READS_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  struct read_waiter *w = waiter_new(n, rd, index, timeout_ms, data, cb);
  if (w == NULL) {
    return CAIRN_ENOMEM;
  }
  list_push(&rd->applying, w);
  watch_applying(rd);
  return 0;
}

bool readindex_busy(const raftnode *n) {
  return n->reads != NULL && n->reads->in_flight != NULL;
}

void readindex_stop(raftnode *n) {
  struct raftnode_reads *rd = n->reads;
  if (rd == NULL) {
    return;
  }
  n->reads = NULL;
  fail_list(rd, &rd->next, CAIRN_ESTOPPED);
  fail_list(rd, &rd->confirming, CAIRN_ESTOPPED);
  fail_list(rd, &rd->applying, CAIRN_ESTOPPED);
  rd->node = NULL;
  uv_close((uv_handle_t *)&rd->check, on_handle_closed);
  uv_close((uv_handle_t *)&rd->tick, on_handle_closed);
  uv_close((uv_handle_t *)&rd->later, on_handle_closed);
}
