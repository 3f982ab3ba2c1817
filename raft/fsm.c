/* raft/fsm.c: the state machine over the MVCC store. */
#include "fsm.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "command.h"
#include "common/cairn_assert.h"
#include "membertable.h"

static void put_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) {
    p[i] = (uint8_t)(v >> (8 * i));
  }
}

static uint64_t get_le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) {
    v |= (uint64_t)p[i] << (8 * i);
  }
  return v;
}

CAIRN_STATIC_ASSERT(FSM_SNAPSHOT_BYTES == 8 + 8 + 4 * 8, "marker layout");

void fsm_marker_encode(const struct fsm_marker *m, uint8_t out[FSM_SNAPSHOT_BYTES]) {
  memcpy(out, FSM_SNAPSHOT_MAGIC, 8);
  put_le64(out + 8, FSM_SNAPSHOT_VERSION);
  put_le64(out + 16, m->raft_index);
  put_le64(out + 24, m->store_index);
  put_le64(out + 32, (uint64_t)m->revision);
  put_le64(out + 40, m->reserved);
}

int fsm_marker_decode(const void *buf, size_t len, struct fsm_marker *out) {
  const uint8_t *p = buf;
  if (len < FSM_SNAPSHOT_BYTES || memcmp(p, FSM_SNAPSHOT_MAGIC, 8) != 0) {
    return CAIRN_ECORRUPT;
  }
  uint64_t version = get_le64(p + 8), extra = get_le64(p + 40);
  /* Version 1: the marker alone. Version 2: followed by the member table
   * (reserved is its length). */
  if (!(version == FSM_SNAPSHOT_VERSION && len == FSM_SNAPSHOT_BYTES) &&
      !(version == FSM_SNAPSHOT_VERSION_TABLE && extra >= 1 && extra <= FSM_SNAPSHOT_TABLE_MAX &&
        len == FSM_SNAPSHOT_BYTES + extra)) {
    return CAIRN_ECORRUPT;
  }
  out->raft_index = get_le64(p + 16);
  out->store_index = get_le64(p + 24);
  out->revision = (int64_t)get_le64(p + 32);
  out->reserved = get_le64(p + 40);
  if (out->revision < 1 || out->store_index > out->raft_index) {
    return CAIRN_ECORRUPT;
  }
  return 0;
}

/* Halts the state machine: a permanent failure, reported once. */
static int halt(struct fsm *f, int err, uint64_t index, const char *what) {
  if (f->apply_error == 0) {
    fprintf(stderr,
            "cairn: raft: entry %" PRIu64
            ": %s: %s; this member applies nothing more "
            "and must be repaired\n",
            index, what, cairn_strerror(err));
    f->apply_error = err;
  }
  return err == CAIRN_EIO ? RAFT_IOERR : RAFT_CORRUPT;
}

static void queue_release(struct fsm *f) {
  for (size_t i = 0; i < f->n_queued; i++) {
    command_free(f->queue[i].cmd);
    free(f->queue[i].cmd);
  }
  f->n_queued = 0;
}

/* ---- the store behind raft ------------------------------------------------ */

/* Gives up the queued commands without applying them: each proposer is
 * answered with err (outcome unknown to it). Only when the store is about to
 * be replaced by one that holds them. */
static void queue_drop(struct fsm *f, int err) {
  for (size_t i = 0; i < f->n_queued; i++) {
    struct mvcc_result r;
    memset(&r, 0, sizeof r);
    r.type = f->queue[i].op.type;
    r.err = err;
    f->on_result(f->ctx, f->queue[i].request_id, f->queue[i].index, &r);
  }
  queue_release(f);
}

static void held_release(struct fsm *f) {
  struct fsm_held *h = f->held_head;
  while (h != NULL) {
    struct fsm_held *next = h->next;
    free(h);
    h = next;
  }
  f->held_head = f->held_tail = NULL;
  f->n_held = 0;
  f->held_bytes = 0;
}

/* Keeps an entry raft applied while the store cannot take it. At the bound
 * everything held is dropped: the store to fetch must then hold this entry
 * itself. Returns a raft code (only RAFT_NOMEM, which raft retries). */
static int held_push(struct fsm *f, uint64_t index, const struct raft_buffer *buf) {
  if (f->held_bytes + buf->len > FSM_HELD_BYTES_MAX) {
    f->held_dropped += f->n_held + 1;
    held_release(f);
    queue_drop(f, CAIRN_ETIMEOUT); /* the store to fetch holds them too */
    f->store_state = FSM_STORE_BEHIND;
    f->need_index = index;
    fprintf(stderr,
            "cairn: raft: %zu bytes of entries held while the store is behind; dropped "
            "them: the store to fetch must reach entry %" PRIu64 "\n",
            (size_t)FSM_HELD_BYTES_MAX, index);
    if (f->on_behind != NULL) {
      f->on_behind(f->ctx);
    }
    return 0;
  }
  struct fsm_held *h = malloc(sizeof *h + buf->len);
  if (h == NULL) {
    return RAFT_NOMEM;
  }
  h->next = NULL;
  h->index = index;
  h->len = buf->len;
  memcpy(h->data, buf->base, buf->len);
  if (f->held_tail != NULL) {
    f->held_tail->next = h;
  } else {
    f->held_head = h;
  }
  f->held_tail = h;
  f->n_held++;
  f->held_bytes += buf->len;
  return 0;
}

/* Hands a member table (the meta value raft/membership.c keeps) to the op
 * listener as if its META_PUT had been applied: membership then knows the
 * cluster as the snapshot does, and so where to fetch a store from, though
 * the store itself is behind (membership reads the table of a replaced
 * store itself). */
static void table_to_listener(struct fsm *f, const void *table, size_t len) {
  if (f->on_op == NULL || len == 0) {
    return;
  }
  struct mvcc_op op;
  memset(&op, 0, sizeof op);
  op.type = MVCC_OP_META_PUT;
  op.u.meta_put.name = MEMBERTABLE_META_NAME;
  op.u.meta_put.value = (struct mvcc_bytes){table, len};
  struct mvcc_result r;
  memset(&r, 0, sizeof r);
  r.type = MVCC_OP_META_PUT;
  r.u.revision = mvcc_current_revision(f->store);
  f->on_op(f->ctx, &op, &r);
}

/* The store's member table, malloc'd into *out (NULL, 0 when it has none). */
static int store_table(struct fsm *f, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  uint8_t probe[8];
  size_t need = 0;
  int rc = mvcc_meta_get(f->store, MEMBERTABLE_META_NAME, probe, sizeof probe, &need);
  if (rc == CAIRN_EKEY_NOT_FOUND) {
    return 0;
  }
  if (rc != 0 || need == 0 || need > FSM_SNAPSHOT_TABLE_MAX) {
    return rc != 0 ? rc : 0;
  }
  uint8_t *buf = malloc(need);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  rc = mvcc_meta_get(f->store, MEMBERTABLE_META_NAME, buf, need, &need);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *len = need;
  return 0;
}

/* Enters BEHIND for a marker the store does not cover. */
static void go_behind(struct fsm *f, const struct fsm_marker *m) {
  held_release(f); /* raft applies everything after the snapshot again */
  f->store_state = FSM_STORE_BEHIND;
  f->need_index = m->store_index;
  f->need_revision = m->revision;
  f->marker_index = m->raft_index;
  if (f->on_behind != NULL) {
    f->on_behind(f->ctx);
  }
}

/* CATCHING_UP: moves held entries into the batch queue, up to its bound,
 * skipping those the store already has. CAIRN_ENOMEM leaves the rest held;
 * an entry that does not decode halts the state machine. */
static int held_to_queue(struct fsm *f) {
  uint64_t have = mvcc_applied_index(f->store);
  while (f->held_head != NULL && f->n_queued < FSM_BATCH_MAX) {
    struct fsm_held *h = f->held_head;
    if (h->index > have) {
      struct command *c = calloc(1, sizeof *c);
      if (c == NULL) {
        return CAIRN_ENOMEM;
      }
      int rc = command_decode(h->data, h->len, c);
      if (rc == CAIRN_ENOMEM) {
        free(c);
        return rc;
      }
      if (rc != 0) {
        free(c);
        halt(f, rc, h->index, "undecodable command");
        return rc;
      }
      struct fsm_queued *q = &f->queue[f->n_queued++];
      q->index = h->index;
      q->request_id = c->request_id;
      q->op = c->op;
      q->op.raft_index = h->index;
      q->cmd = c;
    }
    f->held_head = h->next;
    if (f->held_head == NULL) {
      f->held_tail = NULL;
    }
    f->n_held--;
    f->held_bytes -= h->len;
    free(h);
  }
  return 0;
}

int fsm_store_replaced(struct fsm *f) {
  if (f->store_state != FSM_STORE_BEHIND) {
    return CAIRN_EINVAL;
  }
  CAIRN_ASSERT(f->n_queued == 0); /* nothing is queued while behind */
  uint64_t have = mvcc_applied_index(f->store);
  int64_t rev = mvcc_current_revision(f->store);
  if (have < f->need_index || rev < f->need_revision) {
    return CAIRN_ENOT_CAPABLE;
  }
  f->store_state = FSM_STORE_CATCHING_UP;
  /* Held entries the new store has are replays. */
  while (f->held_head != NULL && f->held_head->index <= have) {
    struct fsm_held *h = f->held_head;
    f->held_head = h->next;
    f->n_held--;
    f->held_bytes -= h->len;
    free(h);
  }
  if (f->held_head == NULL) {
    f->held_tail = NULL;
    f->store_state = FSM_STORE_CURRENT;
  } else if (f->on_queued != NULL) {
    f->on_queued(f->ctx);
  }
  if (f->on_revision != NULL) {
    f->on_revision(f->ctx, rev);
  }
  return 0;
}

bool fsm_store_holds(const struct fsm *f, uint64_t index) {
  if (f->store_state != FSM_STORE_CURRENT) {
    /* The store holds every command up to its applied index, no more. */
    return index <= mvcc_applied_index(f->store);
  }
  if (raft_last_applied(f->raft) < index) {
    return false;
  }
  return f->n_queued == 0 || f->queue[0].index > index;
}

/* Whether a batch may be answered before its commit: key-value ops only.
 * The others' answers (leases, members, alarms, compaction) update state
 * that may be read back from the store at once. */
static bool early_answers(const struct fsm *f) {
  if (f->on_answered == NULL || (f->may_answer != NULL && !f->may_answer(f->ctx))) {
    return false;
  }
  for (size_t i = 0; i < f->n_queued; i++) {
    enum mvcc_op_type t = f->queue[i].op.type;
    if (t != MVCC_OP_PUT && t != MVCC_OP_DELETE && t != MVCC_OP_TXN && t != MVCC_OP_RANGE) {
      return false;
    }
  }
  return true;
}

struct early {
  struct fsm *f;
  struct mvcc_result *res;
  size_t n;
  bool answered;
};

/* Answers the queued entries from..n-1 (on_op only when applied); frees the
 * results of the ones before from, answered by an earlier try. */
static void answer(struct fsm *f, struct mvcc_result *res, size_t from, size_t n, bool applied) {
  for (size_t i = 0; i < from; i++) {
    mvcc_result_free(&res[i]);
  }
  for (size_t i = from; i < n; i++) {
    CAIRN_ASSERT(res[i].err != CAIRN_EREPLAY);
    if (applied && f->on_op != NULL) {
      f->on_op(f->ctx, &f->queue[i].op, &res[i]);
    }
    f->on_result(f->ctx, f->queue[i].request_id, f->queue[i].index, &res[i]);
  }
}

/* mvcc_apply_ready's ready: every op ran, the commit is next. */
static void on_ready(void *data) {
  struct early *e = data;
  struct fsm *f = e->f;
  answer(f, e->res, f->n_answered, e->n, true);
  e->answered = true;
  f->n_answered = e->n;
  f->on_answered(f->ctx);
}

int fsm_flush(struct fsm *f) {
  if (f->store_state == FSM_STORE_CATCHING_UP && f->apply_error == 0) {
    int hrc = held_to_queue(f);
    if (hrc == CAIRN_ENOMEM && f->n_queued == 0) {
      return hrc;
    }
    if (f->held_head == NULL) {
      f->store_state = FSM_STORE_CURRENT;
    } else if (f->on_queued != NULL) {
      f->on_queued(f->ctx); /* the next batch at the next turn */
    }
  }
  size_t n = f->n_queued;
  if (n == 0) {
    return 0;
  }
  struct mvcc_op *ops = malloc(n * sizeof *ops);
  struct mvcc_result *res = calloc(n, sizeof *res);
  if (ops == NULL || res == NULL) {
    free(ops);
    free(res);
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    ops[i] = f->queue[i].op;
  }
  int64_t rev = mvcc_current_revision(f->store);
  uint64_t t0 = uv_hrtime();
  struct early e = {.f = f, .res = res, .n = n, .answered = false};
  int rc = f->apply_error;
  if (rc == 0) {
    /* After a try that answered early and then failed, the rest is answered
     * early too, whatever it holds: the order of answers stays. */
    bool early = f->n_answered > 0 || early_answers(f);
    rc = mvcc_apply_ready(f->store, ops, n, res, early ? on_ready : NULL, &e);
  }
  free(ops);
  if (rc == 0 && f->on_batch != NULL) {
    f->on_batch(f->ctx, (double)(uv_hrtime() - t0) / 1e9, n);
  }
  if (rc == CAIRN_ENOMEM || rc == CAIRN_EBUSY) {
    free(res); /* answered (and so freed) by on_ready, or freed by the store */
    return rc; /* nothing committed: the queue stays for the next flush */
  }
  size_t from = f->n_answered; /* n when on_ready answered them all */
  f->n_answered = 0;
  if (rc != 0) {
    halt(f, rc, f->queue[0].index, "store");
    for (size_t i = from; i < n; i++) {
      memset(&res[i], 0, sizeof res[i]);
      res[i].type = f->queue[i].op.type;
      res[i].err = f->apply_error;
    }
  } else {
    /* Every queued index is above the store's applied index (checked at
     * queueing), so nothing is a replay, and the batch moved the index. */
    CAIRN_ASSERT(mvcc_applied_index(f->store) == f->queue[n - 1].index);
    f->batches++;
    int64_t now = mvcc_current_revision(f->store);
    CAIRN_ASSERT(now >= rev);
    if (now != rev && f->on_revision != NULL) {
      f->on_revision(f->ctx, now);
    }
  }
  if (!e.answered) {
    answer(f, res, from, n, rc == 0);
  }
  free(res);
  queue_release(f);
  return rc;
}

void fsm_close(struct fsm *f) {
  queue_release(f);
  held_release(f);
}

static int fsm_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result) {
  struct fsm *f = rf->data;
  *result = NULL;
  uint64_t index = raft_last_applied(f->raft) + 1;
  if (f->apply_error != 0) {
    return f->apply_error == CAIRN_EIO ? RAFT_IOERR : RAFT_CORRUPT;
  }
  if (index <= mvcc_applied_index(f->store)) {
    return 0; /* a replay: the store has it */
  }
  if (f->store_state != FSM_STORE_CURRENT) {
    /* Held in order, applied once a store that reaches need_index is in. */
    int hrc = held_push(f, index, buf);
    if (hrc == 0 && f->store_state == FSM_STORE_CATCHING_UP && f->n_held == 1 &&
        f->on_queued != NULL) {
      f->on_queued(f->ctx);
    }
    return hrc;
  }
  if (f->n_queued == FSM_BATCH_MAX) {
    int frc = fsm_flush(f);
    if (frc == CAIRN_ENOMEM || frc == CAIRN_EBUSY) {
      /* The batch cannot be applied now (no memory, or the map must grow
       * while an export holds it). An error returned here would be retried
       * by raft only at its next commit, and on a follower's heartbeat path
       * libraft 0.15 turns it into "unavailable": hold this entry and the
       * ones after it in order instead, as while catching up, and apply
       * them once the queue drains (the flush timer retries). */
      f->store_state = FSM_STORE_CATCHING_UP;
      int hrc = held_push(f, index, buf);
      if (f->on_queued != NULL) {
        f->on_queued(f->ctx);
      }
      return hrc;
    }
    if (frc != 0) {
      return frc == CAIRN_EIO ? RAFT_IOERR : RAFT_CORRUPT;
    }
  }
  struct command *c = calloc(1, sizeof *c);
  if (c == NULL) {
    return RAFT_NOMEM;
  }
  int rc = command_decode(buf->base, buf->len, c);
  if (rc == CAIRN_ENOMEM) {
    free(c);
    return RAFT_NOMEM;
  }
  if (rc != 0) {
    free(c);
    return halt(f, rc, index, "undecodable command");
  }
  /* The term the proposer encoded is the entry's: raft_apply() appends at
   * the leader's current term, read just before. */
  struct fsm_queued *q = &f->queue[f->n_queued++];
  q->index = index;
  q->request_id = c->request_id;
  q->op = c->op;
  q->op.raft_index = index;
  q->cmd = c;
  if (f->n_queued == 1 && f->on_queued != NULL) {
    f->on_queued(f->ctx);
  }
  return 0;
}

static int fsm_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs) {
  struct fsm *f = rf->data;
  /* The marker speaks for the store: what raft applied must be in it. Not
   * while the store is behind raft, and not while a fetched store is ahead
   * of raft (the marker's store index would pass its raft index). */
  if (f->store_state != FSM_STORE_CURRENT ||
      mvcc_applied_index(f->store) > raft_last_applied(f->raft)) {
    return RAFT_BUSY;
  }
  if (fsm_flush(f) != 0 || f->apply_error != 0) {
    return RAFT_BUSY; /* a halted store is not one to snapshot */
  }
  struct fsm_marker m = {
      .raft_index = raft_last_applied(f->raft),
      .store_index = mvcc_applied_index(f->store),
      .revision = mvcc_current_revision(f->store),
      .reserved = 0,
  };
  /* Everything up to raft_index was applied (apply is synchronous), and the
   * store's index only counts entries that carried a command. */
  CAIRN_ASSERT(m.store_index <= m.raft_index);
  /* The member table rides along (version 2), so that a member the leader
   * sends this snapshot knows the cluster's members and their client URLs
   * though its own store is older (snapshot_install.c fetches from them). */
  uint8_t *table;
  size_t table_len;
  if (store_table(f, &table, &table_len) != 0) {
    return RAFT_BUSY;
  }
  struct raft_buffer *b = raft_malloc(sizeof *b);
  uint8_t *data = raft_malloc(FSM_SNAPSHOT_BYTES + table_len);
  if (b == NULL || data == NULL) {
    raft_free(b);
    raft_free(data);
    free(table);
    return RAFT_NOMEM;
  }
  fsm_marker_encode(&m, data);
  if (table_len > 0) {
    put_le64(data + 8, FSM_SNAPSHOT_VERSION_TABLE);
    put_le64(data + 40, table_len);
    memcpy(data + FSM_SNAPSHOT_BYTES, table, table_len);
  }
  free(table);
  b->base = data;
  b->len = FSM_SNAPSHOT_BYTES + table_len;
  /* Version 1 state machine: raft frees bufs and each base. */
  *bufs = b;
  *n_bufs = 1;
  return 0;
}

static int fsm_restore(struct raft_fsm *rf, struct raft_buffer *buf) {
  struct fsm *f = rf->data;
  struct fsm_marker m;
  if (fsm_marker_decode(buf->base, buf->len, &m) != 0) {
    fprintf(stderr, "cairn: raft: the raft snapshot is not a Cairn snapshot marker\n");
    f->restore_error = CAIRN_ECORRUPT;
    return RAFT_CORRUPT;
  }
  /* Whatever was queued came before the snapshot: apply it first, so that
   * the comparison below sees the store as raft left it. */
  if (fsm_flush(f) != 0) {
    /* Not now (no memory, an export holds the map): a failed restore would
     * not help (see fsm.h), and a store that lacks them is behind the
     * marker, so the store fetched instead holds them. */
    queue_drop(f, CAIRN_ETIMEOUT);
  }
  uint64_t have = mvcc_applied_index(f->store);
  int64_t rev = mvcc_current_revision(f->store);
  if (have < m.store_index || rev < m.revision) {
    if (f->starting && !f->can_fetch) {
      fprintf(stderr,
              "cairn: raft: the store (applied index %" PRIu64 ", revision %" PRId64
              ") is behind raft's snapshot (entry %" PRIu64 ": applied index %" PRIu64
              ", revision %" PRId64 "): the data file was lost or replaced\n",
              have, rev, m.raft_index, m.store_index, m.revision);
      f->restore_error = CAIRN_ECORRUPT;
      return RAFT_CORRUPT;
    }
    fprintf(stderr,
            "cairn: raft: %s snapshot at entry %" PRIu64 " needs a store at applied index %" PRIu64
            ", revision %" PRId64 "; this store has %" PRIu64 ", revision %" PRId64
            ": applying nothing until a store is fetched from another member\n",
            f->starting ? "the" : "the leader's", m.raft_index, m.store_index, m.revision, have,
            rev);
    go_behind(f, &m);
    if (buf->len > FSM_SNAPSHOT_BYTES) {
      table_to_listener(f, (const uint8_t *)buf->base + FSM_SNAPSHOT_BYTES,
                        buf->len - FSM_SNAPSHOT_BYTES);
    }
    raft_free(buf->base);
    return 0;
  }
  /* The store holds everything the snapshot covers: nothing to load. raft
   * applies what follows the snapshot again; the store skips what it has. */
  held_release(f);
  f->store_state = FSM_STORE_CURRENT;
  raft_free(buf->base);
  return 0;
}

void fsm_init(struct fsm *f, struct raft *r, mvcc_store *store, void *ctx, fsm_result_cb on_result,
              fsm_revision_cb on_revision, fsm_queued_cb on_queued) {
  CAIRN_ASSERT(f != NULL && r != NULL && store != NULL && on_result != NULL);
  memset(f, 0, sizeof *f);
  f->raft_fsm.version = 1;
  f->raft_fsm.data = f;
  f->raft_fsm.apply = fsm_apply;
  f->raft_fsm.snapshot = fsm_snapshot;
  f->raft_fsm.restore = fsm_restore;
  f->raft = r;
  f->store = store;
  f->ctx = ctx;
  f->on_result = on_result;
  f->on_revision = on_revision;
  f->on_queued = on_queued;
}
