/* server/lessor.c: lease expiry, renewal and checkpoints; see lessor.h and
 * docs/leases.md.
 *
 * The leases live in a pool of fixed chunks (POOL_CHUNK leases each, never
 * moved), named by 32-bit pool indices: 56 bytes a lease, without a malloc
 * header each. Three structures index them:
 * - a hash table by id (open addressing, linear probing, backward-shift
 *   deletion, at most 3/4 full) of pool indices;
 * - on the leader, a binary min-heap by expiry time: the expiry timer is
 *   armed at its top, so finding expired leases never scans them all;
 * - on the leader, the checkpoint queue, a FIFO of leases by due time. Every
 *   entry is due LESSOR_CHECKPOINT_INTERVAL_MS after it was queued and the
 *   loop clock never goes back, so appending keeps it sorted.
 * A follower keeps the table only (expiry "forever", as etcd's lessor). */
#include "server/lessor.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/cairn_assert.h"
#include "server/metrics.h"
#include "server/server.h"

#define EXPIRY_FOREVER UINT64_MAX
/* No lease: an empty table slot, not in the heap, the end of a list. */
#define NO_LEASE UINT32_MAX
#define TABLE_CAP_MIN 16u
#define POOL_CHUNK_SHIFT 10
#define POOL_CHUNK (1u << POOL_CHUNK_SHIFT)
/* The barrier a new leader commits before it reloads the leases: a read
 * through raft, which changes nothing. */
#define BARRIER_KEY "\0cairn-lessor-barrier"

enum lessor_role {
  ROLE_FOLLOWER,  /* no expiry */
  ROLE_PROMOTING, /* leader of l->term, waiting for its barrier to apply */
  ROLE_LEADER     /* leader of l->term, leases loaded, expiry running */
};

enum lease_state {
  LEASE_LIVE,
  LEASE_EXPIRED /* its time is up: revocation in flight or waiting for a retry */
};

struct lease {
  int64_t id;
  int64_t ttl_s;      /* granted TTL, raised to the minimum */
  int64_t stored_ms;  /* remaining_ms as recorded in the store; -1: none (full TTL) */
  uint64_t expiry_ms; /* loop time; EXPIRY_FOREVER off the leader */
  uint32_t self;      /* its pool index */
  uint32_t heap_idx;  /* NO_LEASE when not in the heap */
  /* The checkpoint queue's links (pool indices, NO_LEASE at its ends); a
   * free pool entry links the free list through ck_next. */
  uint32_t ck_prev, ck_next;
  /* When its checkpoint is due: the loop time in ms, modulo 2^32. Entries are
   * due at most LESSOR_CHECKPOINT_INTERVAL_MS ahead and the queue is worked
   * every tick, so comparisons as serial numbers (ck_reached) are exact. */
  uint32_t ck_due;
  uint8_t state; /* enum lease_state */
  bool in_ck_queue;
  bool ck_inflight;    /* a checkpoint of it is being proposed */
  bool clear_inflight; /* a renewal (checkpoint -1) of it is being proposed */
};
CAIRN_STATIC_ASSERT(sizeof(struct lease) == 56, "a lease is 56 bytes");

enum prop_kind { PROP_BARRIER, PROP_REVOKE, PROP_CHECKPOINT, PROP_RENEW };

/* One proposal the lessor made; freed in its callback. */
struct prop {
  struct lessor *l;
  enum prop_kind kind;
  uint64_t term; /* the leadership term it was made in (barrier) */
  struct mvcc_op op;
  lessor_renew_cb cb; /* PROP_RENEW */
  void *cb_data;
};

struct lessor {
  struct server *s;
  uint64_t (*now)(struct lessor *l); /* the loop clock; tests replace it */
  uv_timer_t tick;
  uv_timer_t expiry;
  unsigned timers_open;
  bool closing;

  enum lessor_role role;
  uint64_t term;
  bool barrier_inflight;
  uint64_t expiry_armed_ms; /* when the expiry timer fires; EXPIRY_FOREVER: stopped */

  int64_t min_ttl_s;
  uint64_t extend_ms; /* added to every expiry on promotion (etcd: election timeout) */

  unsigned props_inflight; /* every kind, for close */
  unsigned revokes_inflight;
  unsigned checkpoints_inflight;
  unsigned renews_inflight;
  unsigned grants_inflight;
  unsigned streams;

  struct lease **chunks; /* the pool: n_chunks chunks of POOL_CHUNK leases */
  size_t n_chunks;
  uint32_t pool_used; /* entries handed out at least once */
  uint32_t free_head; /* freed entries, linked through ck_next */

  uint32_t *slots; /* hash table of pool indices, cap a power of two, <= 3/4 full */
  size_t cap;
  size_t count;

  uint32_t *heap; /* pool indices */
  size_t heap_len;
  size_t heap_cap;

  uint32_t ck_head, ck_tail;
};

static void arm_expiry(struct lessor *l);
static void expiry_cb(uv_timer_t *t);

/* ---- hash table ----------------------------------------------------------- */

static size_t hash_id(int64_t id) {
  uint64_t z = (uint64_t)id + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (size_t)(z ^ (z >> 31));
}

/* ---- pool ----------------------------------------------------------------- */

static struct lease *lease_at(const struct lessor *l, uint32_t i) {
  return &l->chunks[i >> POOL_CHUNK_SHIFT][i & (POOL_CHUNK - 1)];
}

/* A zeroed entry from the free list or the pool's end; NULL without memory. */
static struct lease *pool_get(struct lessor *l) {
  uint32_t i = l->free_head;
  if (i != NO_LEASE) {
    l->free_head = lease_at(l, i)->ck_next;
  } else {
    if (l->pool_used == NO_LEASE - 1) {
      return NULL;
    }
    i = l->pool_used;
    size_t chunk = i >> POOL_CHUNK_SHIFT;
    if (chunk == l->n_chunks) {
      struct lease **nc = realloc(l->chunks, (chunk + 1) * sizeof *nc);
      if (nc == NULL) {
        return NULL;
      }
      l->chunks = nc;
      if ((nc[chunk] = malloc(POOL_CHUNK * sizeof(struct lease))) == NULL) {
        return NULL;
      }
      l->n_chunks++;
    }
    l->pool_used++;
  }
  struct lease *e = lease_at(l, i);
  memset(e, 0, sizeof *e);
  e->self = i;
  return e;
}

static void pool_put(struct lessor *l, struct lease *e) {
  e->ck_next = l->free_head;
  l->free_head = e->self;
}

/* Frees every chunk: the pool starts empty again. */
static void pool_clear(struct lessor *l) {
  for (size_t c = 0; c < l->n_chunks; c++) {
    free(l->chunks[c]);
  }
  free(l->chunks);
  l->chunks = NULL;
  l->n_chunks = 0;
  l->pool_used = 0;
  l->free_head = NO_LEASE;
}

/* ---- hash table ----------------------------------------------------------- */

static struct lease *table_find(const struct lessor *l, int64_t id) {
  size_t mask = l->cap - 1;
  for (size_t i = hash_id(id) & mask;; i = (i + 1) & mask) {
    if (l->slots[i] == NO_LEASE) {
      return NULL;
    }
    struct lease *e = lease_at(l, l->slots[i]);
    if (e->id == id) {
      return e;
    }
  }
}

static void table_place(uint32_t *slots, size_t cap, const struct lease *e) {
  size_t mask = cap - 1;
  size_t i = hash_id(e->id) & mask;
  while (slots[i] != NO_LEASE) {
    i = (i + 1) & mask;
  }
  slots[i] = e->self;
}

static uint32_t *slots_new(size_t cap) {
  uint32_t *s = malloc(cap * sizeof *s);
  if (s != NULL) {
    memset(s, 0xff, cap * sizeof *s); /* NO_LEASE */
  }
  return s;
}

/* Makes room for one more lease in the table and in the heap, so that the
 * insertion and any later heap push cannot fail. */
static int table_reserve(struct lessor *l) {
  if ((l->count + 1) * 4 > l->cap * 3) {
    size_t ncap = l->cap * 2;
    uint32_t *ns = slots_new(ncap);
    if (ns == NULL) {
      return CAIRN_ENOMEM;
    }
    for (size_t i = 0; i < l->cap; i++) {
      if (l->slots[i] != NO_LEASE) {
        table_place(ns, ncap, lease_at(l, l->slots[i]));
      }
    }
    free(l->slots);
    l->slots = ns;
    l->cap = ncap;
  }
  if (l->count + 1 > l->heap_cap) {
    size_t ncap = l->heap_cap ? l->heap_cap * 2 : TABLE_CAP_MIN;
    uint32_t *nh = realloc(l->heap, ncap * sizeof *nh);
    if (nh == NULL) {
      return CAIRN_ENOMEM;
    }
    l->heap = nh;
    l->heap_cap = ncap;
  }
  return 0;
}

static void table_remove(struct lessor *l, struct lease *e) {
  size_t mask = l->cap - 1;
  size_t i = hash_id(e->id) & mask;
  while (l->slots[i] != e->self) {
    CAIRN_ASSERT(l->slots[i] != NO_LEASE);
    i = (i + 1) & mask;
  }
  l->slots[i] = NO_LEASE;
  /* Backward shift: move later entries of the probe run into the hole
   * unless their home slot lies cyclically in (hole, j]. */
  for (size_t j = (i + 1) & mask; l->slots[j] != NO_LEASE; j = (j + 1) & mask) {
    size_t k = hash_id(lease_at(l, l->slots[j])->id) & mask;
    bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (!stays) {
      l->slots[i] = l->slots[j];
      l->slots[j] = NO_LEASE;
      i = j;
    }
  }
  l->count--;
}

/* ---- expiry heap ---------------------------------------------------------- */

static struct lease *heap_at(const struct lessor *l, size_t i) {
  return lease_at(l, l->heap[i]);
}

static void heap_set(struct lessor *l, size_t i, struct lease *e) {
  l->heap[i] = e->self;
  e->heap_idx = (uint32_t)i;
}

static void heap_up(struct lessor *l, size_t i) {
  struct lease *e = heap_at(l, i);
  while (i > 0) {
    size_t p = (i - 1) / 2;
    struct lease *pe = heap_at(l, p);
    if (pe->expiry_ms <= e->expiry_ms) {
      break;
    }
    heap_set(l, i, pe);
    i = p;
  }
  heap_set(l, i, e);
}

static void heap_down(struct lessor *l, size_t i) {
  struct lease *e = heap_at(l, i);
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= l->heap_len) {
      break;
    }
    if (c + 1 < l->heap_len && heap_at(l, c + 1)->expiry_ms < heap_at(l, c)->expiry_ms) {
      c++;
    }
    struct lease *ce = heap_at(l, c);
    if (e->expiry_ms <= ce->expiry_ms) {
      break;
    }
    heap_set(l, i, ce);
    i = c;
  }
  heap_set(l, i, e);
}

static void heap_push(struct lessor *l, struct lease *e) {
  CAIRN_ASSERT(e->heap_idx == NO_LEASE && l->heap_len < l->heap_cap);
  heap_set(l, l->heap_len++, e);
  heap_up(l, e->heap_idx);
}

static void heap_remove(struct lessor *l, struct lease *e) {
  size_t i = e->heap_idx;
  if (e->heap_idx == NO_LEASE) {
    return;
  }
  CAIRN_ASSERT(i < l->heap_len && l->heap[i] == e->self);
  e->heap_idx = NO_LEASE;
  struct lease *last = heap_at(l, --l->heap_len);
  if (last != e) {
    heap_set(l, i, last);
    heap_up(l, i);
    heap_down(l, last->heap_idx);
  }
}

/* Moves e in the heap after its expiry changed (or pushes it). */
static void heap_update(struct lessor *l, struct lease *e) {
  if (e->heap_idx == NO_LEASE) {
    heap_push(l, e);
    return;
  }
  heap_up(l, e->heap_idx);
  heap_down(l, e->heap_idx);
}

/* ---- checkpoint queue ----------------------------------------------------- */

static void ck_unlink(struct lessor *l, struct lease *e) {
  if (!e->in_ck_queue) {
    return;
  }
  if (e->ck_prev != NO_LEASE) {
    lease_at(l, e->ck_prev)->ck_next = e->ck_next;
  } else {
    l->ck_head = e->ck_next;
  }
  if (e->ck_next != NO_LEASE) {
    lease_at(l, e->ck_next)->ck_prev = e->ck_prev;
  } else {
    l->ck_tail = e->ck_prev;
  }
  e->ck_prev = e->ck_next = NO_LEASE;
  e->in_ck_queue = false;
}

/* Whether a checkpoint due at `due` is due at `now` (serial-number order). */
static bool ck_reached(uint32_t due, uint64_t now) {
  return (int32_t)((uint32_t)now - due) >= 0;
}

static void ck_append(struct lessor *l, struct lease *e, uint64_t now) {
  CAIRN_ASSERT(!e->in_ck_queue);
  e->ck_due = (uint32_t)(now + LESSOR_CHECKPOINT_INTERVAL_MS);
  CAIRN_DEBUG_ASSERT(l->ck_tail == NO_LEASE ||
                     (int32_t)(e->ck_due - lease_at(l, l->ck_tail)->ck_due) >= 0);
  e->ck_prev = l->ck_tail;
  e->ck_next = NO_LEASE;
  if (l->ck_tail != NO_LEASE) {
    lease_at(l, l->ck_tail)->ck_next = e->self;
  } else {
    l->ck_head = e->self;
  }
  l->ck_tail = e->self;
  e->in_ck_queue = true;
}

/* ---- leases --------------------------------------------------------------- */

static uint64_t clock_uv(struct lessor *l) {
  return uv_now(l->s->loop);
}

static int64_t ttl_ms(const struct lease *e) {
  return e->ttl_s * 1000;
}

/* What the store says is left of e: its checkpoint, else its whole TTL. */
static int64_t restore_ms(const struct lease *e) {
  return e->stored_ms >= 0 ? e->stored_ms : ttl_ms(e);
}

static bool leading(const struct lessor *l) {
  return l->role == ROLE_LEADER && !l->closing;
}

/* Starts e's expiry and checkpoints on the leader: it expires extra_ms after
 * what its record leaves it. */
static void lease_start(struct lessor *l, struct lease *e, uint64_t now, uint64_t extra_ms) {
  e->expiry_ms = now + (uint64_t)restore_ms(e) + extra_ms;
  heap_update(l, e);
  if (!e->in_ck_queue) {
    ck_append(l, e, now);
  }
}

/* Adds lease id unless known (then returns the known one). */
static int lease_add(struct lessor *l, int64_t id, int64_t ttl_s, int64_t stored_ms,
                     struct lease **out) {
  struct lease *e = table_find(l, id);
  if (e != NULL) {
    *out = e;
    return 0;
  }
  int rc = table_reserve(l);
  if (rc != 0) {
    return rc;
  }
  e = pool_get(l);
  if (e == NULL) {
    return CAIRN_ENOMEM;
  }
  e->id = id;
  e->ttl_s = ttl_s < l->min_ttl_s ? l->min_ttl_s : ttl_s;
  e->stored_ms = stored_ms;
  e->expiry_ms = EXPIRY_FOREVER;
  e->heap_idx = NO_LEASE;
  e->ck_prev = e->ck_next = NO_LEASE;
  e->state = LEASE_LIVE;
  table_place(l->slots, l->cap, e);
  l->count++;
  if (leading(l)) {
    lease_start(l, e, l->now(l), 0);
    arm_expiry(l);
  }
  *out = e;
  return 0;
}

static void lease_del(struct lessor *l, struct lease *e) {
  heap_remove(l, e);
  ck_unlink(l, e);
  table_remove(l, e);
  pool_put(l, e);
}

static void lease_refresh(struct lessor *l, struct lease *e, uint64_t now) {
  e->expiry_ms = now + (uint64_t)ttl_ms(e);
  heap_update(l, e);
}

static void table_clear(struct lessor *l) {
  memset(l->slots, 0xff, l->cap * sizeof *l->slots); /* NO_LEASE */
  pool_clear(l);
  l->count = 0;
  l->heap_len = 0;
  l->ck_head = l->ck_tail = NO_LEASE;
}

/* Replaces what the lessor knows with the store's leases. */
static int load_all(struct lessor *l) {
  struct mvcc_lease *v = NULL;
  size_t n = 0;
  int rc = mvcc_lease_list(l->s->store, &v, &n);
  if (rc != 0) {
    return rc;
  }
  table_clear(l);
  for (size_t i = 0; i < n && rc == 0; i++) {
    struct lease *e;
    rc = lease_add(l, v[i].id, v[i].ttl, v[i].remaining_ms, &e);
  }
  free(v);
  return rc;
}

/* ---- proposals ------------------------------------------------------------ */

static void maybe_free(struct lessor *l) {
  if (l->closing && l->props_inflight == 0 && l->timers_open == 0) {
    free(l->slots);
    free(l->heap);
    free(l);
  }
}

static void prop_done(struct server *s, void *data, int status, struct mvcc_result *r);

/* Proposes p->op; on error p is freed and the callback never runs. */
static int propose(struct lessor *l, struct prop *p) {
  p->l = l;
  int rc = server_propose(l->s, &p->op, p, prop_done);
  if (rc != 0) {
    free(p);
    return rc;
  }
  l->props_inflight++;
  return 0;
}

static struct prop *prop_new(enum prop_kind kind, enum mvcc_op_type type) {
  struct prop *p = calloc(1, sizeof *p);
  if (p != NULL) {
    p->kind = kind;
    p->op.type = type;
  }
  return p;
}

static int propose_revoke(struct lessor *l, struct lease *e) {
  struct prop *p = prop_new(PROP_REVOKE, MVCC_OP_LEASE_REVOKE);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->op.u.lease_revoke_id = e->id;
  int rc = propose(l, p);
  if (rc == 0) {
    l->revokes_inflight++;
  }
  return rc;
}

static int propose_checkpoint(struct lessor *l, struct lease *e, int64_t remaining_ms) {
  struct prop *p = prop_new(PROP_CHECKPOINT, MVCC_OP_LEASE_CHECKPOINT);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->op.u.lease_checkpoint.id = e->id;
  p->op.u.lease_checkpoint.remaining_ms = remaining_ms;
  e->ck_inflight = true;
  int rc = propose(l, p);
  if (rc == 0) {
    l->checkpoints_inflight++;
  } else {
    e->ck_inflight = false;
  }
  return rc;
}

/* A renewal through raft: a checkpoint of -1 (full TTL). */
static int propose_renew(struct lessor *l, int64_t id, void *data, lessor_renew_cb cb) {
  struct prop *p = prop_new(PROP_RENEW, MVCC_OP_LEASE_CHECKPOINT);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->op.u.lease_checkpoint.id = id;
  p->op.u.lease_checkpoint.remaining_ms = -1;
  p->cb = cb;
  p->cb_data = data;
  int rc = propose(l, p);
  if (rc == 0) {
    l->renews_inflight++;
  }
  return rc;
}

static int propose_barrier(struct lessor *l) {
  struct prop *p = prop_new(PROP_BARRIER, MVCC_OP_RANGE);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->term = l->term;
  p->op.u.range.key = (struct mvcc_bytes){(const uint8_t *)BARRIER_KEY, sizeof BARRIER_KEY - 1};
  p->op.u.range.count_only = true;
  int rc = propose(l, p);
  if (rc == 0) {
    l->barrier_inflight = true;
  }
  return rc;
}

/* ---- leadership ----------------------------------------------------------- */

static void demote(struct lessor *l) {
  for (size_t i = 0; i < l->heap_len; i++) {
    heap_at(l, i)->heap_idx = NO_LEASE;
    heap_at(l, i)->expiry_ms = EXPIRY_FOREVER;
  }
  l->heap_len = 0;
  while (l->ck_head != NO_LEASE) {
    ck_unlink(l, lease_at(l, l->ck_head));
  }
  if (l->role != ROLE_FOLLOWER) {
    server_log(LOG_INFO, "lessor: demoted (term %llu)", (unsigned long long)l->term);
  }
  l->role = ROLE_FOLLOWER;
  arm_expiry(l);
}

/* The barrier of this term applied: every earlier entry is in the store. */
static void promote(struct lessor *l) {
  int rc = load_all(l);
  if (rc != 0) {
    /* Stay promoting: the next tick commits another barrier and retries. */
    server_log(LOG_ERROR, "lessor: cannot load leases: %s", cairn_strerror(rc));
    return;
  }
  l->role = ROLE_LEADER;
  uint64_t now = l->now(l);
  for (size_t i = 0; i < l->cap; i++) {
    if (l->slots[i] != NO_LEASE) {
      lease_start(l, lease_at(l, l->slots[i]), now, l->extend_ms);
    }
  }
  arm_expiry(l);
  server_log(LOG_INFO, "lessor: promoted (term %llu), %zu leases", (unsigned long long)l->term,
             l->count);
}

/* The store's data was replaced (a member that caught up by a store
 * transfer, server/snapshot_fetch.c): its leases are the new store's. A
 * leader (rare: a member whose store is behind refuses proposals) starts
 * their expiry afresh, as on promotion. */
int lessor_store_replaced(struct lessor *l) {
  int rc = load_all(l);
  if (rc != 0) {
    server_log(LOG_ERROR, "lessor: cannot load leases from the new store: %s", cairn_strerror(rc));
    return rc;
  }
  if (l->role == ROLE_LEADER) {
    uint64_t now = l->now(l);
    for (size_t i = 0; i < l->cap; i++) {
      if (l->slots[i] != NO_LEASE) {
        lease_start(l, lease_at(l, l->slots[i]), now, l->extend_ms);
      }
    }
  }
  arm_expiry(l);
  server_log(LOG_INFO, "lessor: %zu leases loaded from the new store", l->count);
  return 0;
}

/* Follows raft's view of leadership. */
static void track_leadership(struct lessor *l) {
  struct raftnode_status st = {0};
  if (l->s->raft != NULL) {
    raftnode_status(l->s->raft, &st);
  }
  if (!st.is_leader) {
    if (l->role != ROLE_FOLLOWER) {
      demote(l);
    }
    return;
  }
  if (l->role != ROLE_FOLLOWER && st.term != l->term) {
    demote(l); /* lost and won again between two ticks */
  }
  if (l->role == ROLE_FOLLOWER) {
    l->role = ROLE_PROMOTING;
    l->term = st.term;
  }
  if (l->role == ROLE_PROMOTING && !l->barrier_inflight) {
    int rc = propose_barrier(l);
    if (rc != 0) {
      server_log(LOG_DEBUG, "lessor: barrier: %s", cairn_strerror(rc));
    }
  }
}

/* ---- expiry and checkpoints ----------------------------------------------- */

/* Revokes the expired leases at the top of the heap, as many as the bound
 * on revocations in flight allows. */
static void expire_due(struct lessor *l, uint64_t now) {
  while (leading(l) && l->heap_len > 0 && heap_at(l, 0)->expiry_ms <= now &&
         l->revokes_inflight < LESSOR_REVOKES_INFLIGHT_MAX) {
    struct lease *e = heap_at(l, 0);
    heap_remove(l, e);
    ck_unlink(l, e);
    e->state = LEASE_EXPIRED;
    int rc = propose_revoke(l, e);
    if (rc != 0) {
      server_log(LOG_WARN, "lessor: revoke of expired lease %lld: %s", (long long)e->id,
                 cairn_strerror(rc));
      e->expiry_ms = now + LESSOR_REVOKE_RETRY_MS;
      heap_push(l, e);
    }
  }
}

static void arm_expiry(struct lessor *l) {
  if (l->closing) {
    return;
  }
  uint64_t at = EXPIRY_FOREVER;
  if (leading(l) && l->heap_len > 0 && l->revokes_inflight < LESSOR_REVOKES_INFLIGHT_MAX) {
    at = heap_at(l, 0)->expiry_ms;
  }
  if (at == l->expiry_armed_ms) {
    return;
  }
  l->expiry_armed_ms = at;
  if (at == EXPIRY_FOREVER) {
    uv_timer_stop(&l->expiry);
    return;
  }
  uint64_t now = l->now(l);
  uv_timer_start(&l->expiry, expiry_cb, at > now ? at - now : 0, 0);
}

static void checkpoint_due(struct lessor *l, uint64_t now) {
  unsigned proposed = 0;
  while (leading(l) && l->ck_head != NO_LEASE && ck_reached(lease_at(l, l->ck_head)->ck_due, now) &&
         proposed < LESSOR_CHECKPOINTS_PER_TICK &&
         l->checkpoints_inflight < LESSOR_CHECKPOINTS_INFLIGHT_MAX) {
    struct lease *e = lease_at(l, l->ck_head);
    ck_unlink(l, e);
    if (e->state != LEASE_LIVE || e->expiry_ms <= now) {
      continue; /* expiring: the revocation takes it out */
    }
    ck_append(l, e, now);
    int64_t remaining = (int64_t)(e->expiry_ms - now);
    bool fresh = e->stored_ms < 0 && ttl_ms(e) - remaining < (int64_t)LESSOR_CHECKPOINT_MIN_GAIN_MS;
    if (!fresh && !e->ck_inflight && !e->clear_inflight) {
      int rc = propose_checkpoint(l, e, remaining);
      if (rc != 0) {
        server_log(LOG_DEBUG, "lessor: checkpoint of lease %lld: %s", (long long)e->id,
                   cairn_strerror(rc));
      }
      proposed++;
    }
  }
}

/* ---- timers --------------------------------------------------------------- */

static void expiry_cb(uv_timer_t *t) {
  struct lessor *l = t->data;
  l->expiry_armed_ms = EXPIRY_FOREVER;
  expire_due(l, l->now(l));
  arm_expiry(l);
}

static void tick_cb(uv_timer_t *t) {
  struct lessor *l = t->data;
  track_leadership(l);
  if (leading(l)) {
    uint64_t now = l->now(l);
    expire_due(l, now);
    checkpoint_due(l, now);
  }
  arm_expiry(l);
}

static void timer_closed(uv_handle_t *h) {
  struct lessor *l = h->data;
  CAIRN_ASSERT(l->timers_open > 0);
  l->timers_open--;
  maybe_free(l);
}

/* ---- proposal outcomes ---------------------------------------------------- */

static void revoke_done(struct lessor *l, int64_t id, int err) {
  struct lease *e = table_find(l, id);
  uint64_t now = l->now(l);
  if (err == 0 || err == CAIRN_ELEASE_NOT_FOUND) {
    if (e != NULL) {
      lease_del(l, e);
    }
  } else if (e != NULL && e->state == LEASE_EXPIRED && leading(l) && e->heap_idx == NO_LEASE) {
    server_log(LOG_WARN, "lessor: revoke of expired lease %lld failed, retrying: %s", (long long)id,
               cairn_strerror(err));
    e->expiry_ms = now + LESSOR_REVOKE_RETRY_MS;
    heap_push(l, e);
  }
  expire_due(l, now);
  arm_expiry(l);
}

static void prop_done(struct server *s, void *data, int status, struct mvcc_result *r) {
  (void)s;
  struct prop *p = data;
  struct lessor *l = p->l;
  CAIRN_ASSERT(l->props_inflight > 0);
  l->props_inflight--;
  int err = status != 0 ? status : (r != NULL ? r->err : CAIRN_EIO);
  if (status == 0 && r != NULL) {
    lessor_applied(l, &p->op, r);
  }
  struct lease *e = NULL;
  switch (p->kind) {
    case PROP_BARRIER:
      l->barrier_inflight = false;
      if (!l->closing && status == 0 && l->role == ROLE_PROMOTING && p->term == l->term) {
        promote(l);
      }
      break;
    case PROP_REVOKE:
      l->revokes_inflight--;
      if (err == 0) {
        metrics_inc(l->s->metrics, METRIC_LEASE_EXPIRED);
      }
      if (!l->closing) {
        revoke_done(l, p->op.u.lease_revoke_id, err);
      }
      break;
    case PROP_CHECKPOINT:
      l->checkpoints_inflight--;
      if (!l->closing && (e = table_find(l, p->op.u.lease_checkpoint.id)) != NULL) {
        e->ck_inflight = false;
      }
      break;
    case PROP_RENEW: {
      l->renews_inflight--;
      if (!l->closing && (e = table_find(l, p->op.u.lease_checkpoint.id)) != NULL) {
        e->clear_inflight = false;
      }
      int64_t ttl = 0;
      if (err == 0) {
        ttl = r->u.lease.lease.ttl < l->min_ttl_s ? l->min_ttl_s : r->u.lease.lease.ttl;
      } else if (err == CAIRN_ELEASE_NOT_FOUND) {
        err = 0; /* etcd answers an unknown lease with TTL 0 */
      }
      p->cb(p->cb_data, err, ttl);
      break;
    }
  }
  if (r != NULL) {
    mvcc_result_free(r); /* server.h: the result itself is not ours */
  }
  free(p);
  maybe_free(l);
}

/* ---- API ------------------------------------------------------------------ */

int lessor_init(struct server *s) {
  struct lessor *l = calloc(1, sizeof *l);
  if (l == NULL) {
    return CAIRN_ENOMEM;
  }
  l->s = s;
  l->now = clock_uv;
  l->role = ROLE_FOLLOWER;
  l->expiry_armed_ms = EXPIRY_FOREVER;
  unsigned election_ms = s->cfg.election_ms ? s->cfg.election_ms : 1000u;
  /* ceil(1.5 x election timeout), in seconds */
  l->min_ttl_s = ((int64_t)election_ms * 3 + 1999) / 2000;
  l->extend_ms = election_ms;
  l->cap = TABLE_CAP_MIN;
  l->free_head = l->ck_head = l->ck_tail = NO_LEASE;
  l->slots = slots_new(l->cap);
  if (l->slots == NULL) {
    free(l);
    return CAIRN_ENOMEM;
  }
  int rc = load_all(l);
  if (rc != 0) {
    table_clear(l);
    free(l->slots);
    free(l->heap);
    free(l);
    return rc;
  }
  uv_timer_init(s->loop, &l->tick);
  uv_timer_init(s->loop, &l->expiry);
  l->tick.data = l;
  l->expiry.data = l;
  l->timers_open = 2;
  uv_timer_start(&l->tick, tick_cb, LESSOR_TICK_MS, LESSOR_TICK_MS);
  s->lessor = l;
  server_log(LOG_INFO, "lessor: %zu leases loaded, minimum TTL %llds", l->count,
             (long long)l->min_ttl_s);
  return 0;
}

void lessor_close(struct lessor *l) {
  if (l == NULL || l->closing) {
    return;
  }
  if (l->s->lessor == l) {
    l->s->lessor = NULL;
  }
  l->closing = true;
  table_clear(l);
  uv_timer_stop(&l->tick);
  uv_timer_stop(&l->expiry);
  uv_close((uv_handle_t *)&l->tick, timer_closed);
  uv_close((uv_handle_t *)&l->expiry, timer_closed);
}

int64_t lessor_min_ttl(const struct lessor *l) {
  return l->min_ttl_s;
}

int lessor_grant_begin(struct lessor *l) {
  if (l->closing) {
    return CAIRN_ESTOPPED;
  }
  if (l->count + l->grants_inflight >= LESSOR_LEASES_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  l->grants_inflight++;
  return 0;
}

void lessor_grant_done(struct lessor *l) {
  if (l != NULL) {
    CAIRN_ASSERT(l->grants_inflight > 0);
    l->grants_inflight--;
  }
}

int lessor_pick_id(struct lessor *l, int64_t *id) {
  for (int tries = 0; tries < 16; tries++) {
    uint64_t u = 0;
    if (getrandom(&u, sizeof u, 0) != (ssize_t)sizeof u) {
      return CAIRN_EIO;
    }
    int64_t cand = (int64_t)(u & (uint64_t)INT64_MAX);
    if (cand == 0 || table_find(l, cand) != NULL) {
      continue;
    }
    struct mvcc_lease rec;
    int rc = mvcc_lease_get(l->s->store, cand, &rec);
    if (rc == CAIRN_ELEASE_NOT_FOUND) {
      *id = cand;
      return 0;
    }
    if (rc != 0) {
      return rc;
    }
  }
  return CAIRN_EIO;
}

void lessor_applied(struct lessor *l, const struct mvcc_op *op, const struct mvcc_result *r) {
  if (l == NULL || l->closing || r == NULL) {
    return;
  }
  struct lease *e = NULL;
  int rc = 0;
  switch (op->type) {
    case MVCC_OP_LEASE_GRANT:
      if (r->err == 0) {
        rc = lease_add(l, op->u.lease_grant.id, op->u.lease_grant.ttl, -1, &e);
      }
      break;
    case MVCC_OP_LEASE_REVOKE:
      if ((r->err == 0 || r->err == CAIRN_ELEASE_NOT_FOUND) &&
          (e = table_find(l, op->u.lease_revoke_id)) != NULL) {
        lease_del(l, e);
      }
      break;
    case MVCC_OP_LEASE_CHECKPOINT: {
      int64_t id = op->u.lease_checkpoint.id;
      int64_t value = op->u.lease_checkpoint.remaining_ms;
      e = table_find(l, id);
      if (r->err == CAIRN_ELEASE_NOT_FOUND) {
        if (e != NULL) {
          lease_del(l, e);
        }
      } else if (r->err == 0 && e == NULL) {
        rc = lease_add(l, id, r->u.lease.lease.ttl, value, &e);
      } else if (r->err == 0) {
        e->stored_ms = value;
        /* A checkpoint of -1 is a renewal (lessor.h). */
        if (value < 0 && leading(l) && e->state == LEASE_LIVE) {
          lease_refresh(l, e, l->now(l));
          arm_expiry(l);
        }
      }
      break;
    }
    default:
      break;
  }
  if (rc != 0) {
    server_log(LOG_ERROR, "lessor: cannot track a lease: %s", cairn_strerror(rc));
  }
}

int lessor_renew(struct lessor *l, int64_t id, int64_t *ttl, void *data, lessor_renew_cb cb) {
  *ttl = 0;
  if (l->closing) {
    return CAIRN_ESTOPPED;
  }
  if (l->role != ROLE_LEADER) {
    /* A follower (or a leader still loading) renews through raft. */
    if (l->renews_inflight >= LESSOR_RENEWS_INFLIGHT_MAX) {
      return CAIRN_ETOO_MANY_REQUESTS;
    }
    int rc = propose_renew(l, id, data, cb);
    return rc == 0 ? 1 : rc;
  }
  uint64_t now = l->now(l);
  struct lease *e = table_find(l, id);
  if (e == NULL) {
    /* Granted through another member and not seen here yet. */
    struct mvcc_lease rec;
    int rc = mvcc_lease_get(l->s->store, id, &rec);
    if (rc == CAIRN_ELEASE_NOT_FOUND) {
      return 0;
    }
    if (rc == 0) {
      rc = lease_add(l, id, rec.ttl, rec.remaining_ms, &e);
    }
    if (rc != 0) {
      return rc;
    }
  }
  if (e->state != LEASE_LIVE || e->expiry_ms <= now) {
    expire_due(l, now);
    arm_expiry(l);
    return 0;
  }
  lease_refresh(l, e, now);
  arm_expiry(l);
  *ttl = e->ttl_s;
  if (e->stored_ms < 0 || e->clear_inflight || l->renews_inflight >= LESSOR_RENEWS_INFLIGHT_MAX) {
    return 0;
  }
  /* The store holds a checkpoint shorter than what the lease has now: clear
   * it before answering, so that a restart does not shorten the lease. */
  e->clear_inflight = true;
  int rc = propose_renew(l, id, data, cb);
  if (rc != 0) {
    /* Renewed in memory all the same; the next renewal retries the clear. */
    e->clear_inflight = false;
    server_log(LOG_DEBUG, "lessor: checkpoint clear of lease %lld: %s", (long long)id,
               cairn_strerror(rc));
    return 0;
  }
  return 1;
}

int64_t lessor_remaining_ms(struct lessor *l, const struct mvcc_lease *lease) {
  if (leading(l)) {
    struct lease *e = table_find(l, lease->id);
    if (e != NULL) {
      uint64_t now = l->now(l);
      if (e->state != LEASE_LIVE || e->expiry_ms <= now) {
        return 0;
      }
      return (int64_t)(e->expiry_ms - now);
    }
  }
  if (lease->remaining_ms >= 0) {
    return lease->remaining_ms;
  }
  return (lease->ttl < l->min_ttl_s ? l->min_ttl_s : lease->ttl) * 1000;
}

int lessor_stream_open(struct lessor *l) {
  if (l->closing) {
    return CAIRN_ESTOPPED;
  }
  if (l->streams >= LESSOR_KEEPALIVE_STREAMS_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  l->streams++;
  return 0;
}

void lessor_stream_close(struct lessor *l) {
  if (l != NULL) {
    CAIRN_ASSERT(l->streams > 0);
    l->streams--;
  }
}

void lessor_stats(const struct lessor *l, uint64_t *leases) {
  *leases = l != NULL ? l->count : 0;
}
