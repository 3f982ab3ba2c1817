/* raft/raftnode.c: a member's raft on libuv, proposals and their outcomes,
 * the snapshot durability gate, and a clean stop. See docs/raft.md. */
#include "raftnode.h"
#include "raftlog.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <raft.h>
#include <raft/uv.h>

#include "command.h"
#include "common/cairn_assert.h"
#include "fsm.h"
#include "memberid.h"
#include "membership.h"
#include "pending.h"
#include "raftnode_int.h"
#include "storage/checkpoint.h"
#include "storage/fileio.h"

/* How often timed-out proposals are looked for. */
#define TIMEOUT_TICK_MS 50u
/* How often a stop checks whether raft can be closed. */
#define STOP_TICK_MS 5u

/* ---- queues --------------------------------------------------------------- */

static void queue_push(struct queue *q, struct proposal *p) {
  p->next = NULL;
  p->prev = q->tail;
  if (q->tail != NULL) {
    q->tail->next = p;
  } else {
    q->head = p;
  }
  q->tail = p;
}

static void queue_remove(struct queue *q, struct proposal *p) {
  if (p->prev != NULL) {
    p->prev->next = p->next;
  } else {
    q->head = p->next;
  }
  if (p->next != NULL) {
    p->next->prev = p->prev;
  } else {
    q->tail = p->prev;
  }
  p->prev = p->next = NULL;
}

/* ---- delivery ------------------------------------------------------------- */

static void on_deliver(uv_timer_t *t);

static void schedule_delivery(raftnode *n) {
  if (!uv_is_active((uv_handle_t *)&n->deliver_timer) && n->state != NODE_CLOSING) {
    uv_timer_start(&n->deliver_timer, on_deliver, 0, 0);
  }
}

void raftnode_schedule_delivery(raftnode *n) {
  schedule_delivery(n);
}

/* Runs the watch hub's wake-up, then the proposers' callbacks of the
 * outcomes known now (those that arrive meanwhile wait for the next turn). */
static void deliver_done(raftnode *n) {
  struct proposal *last = n->done.tail;
  while (last != NULL) {
    struct proposal *p = n->done.head;
    queue_remove(&n->done, p);
    CAIRN_ASSERT(p->state == PROPOSAL_DONE);
    bool was_last = p == last;
    p->cb(p->data, p->status, p->has_result ? &p->result : NULL);
    free(p);
    if (was_last) {
      break;
    }
  }
}

static void deliver(raftnode *n) {
  snapinstall_deliver(n);
  if (n->notify_pending) {
    n->notify_pending = false;
    if (n->applied_cb != NULL) {
      n->applied_cb(n->applied_data, n->notify_revision);
    }
  }
  deliver_done(n);
}

static void on_deliver(uv_timer_t *t) {
  deliver(t->data);
}

/* ---- the state machine's reports ------------------------------------------ */

static void on_fsm_result(void *ctx, uint64_t request_id, uint64_t index,
                          struct mvcc_result *result) {
  raftnode *n = ctx;
  struct proposal *p = pending_find(&n->table, request_id);
  /* The index check guards against an id that an earlier run of this member
   * used for an entry replayed now. */
  if (p == NULL || (p->state != PROPOSAL_PENDING && p->state != PROPOSAL_APPLIED) ||
      p->req.index != index || p->has_result) {
    mvcc_result_free(result);
    return;
  }
  p->result = *result;
  p->has_result = true;
  if (p->state == PROPOSAL_APPLIED) {
    /* raft's callback came first (the usual order with batches). */
    pending_remove(&n->table, p->request_id);
    p->status = 0;
    p->state = PROPOSAL_DONE;
    queue_push(&n->done, p);
    schedule_delivery(n);
    return;
  }
  /* raft's callback for this entry follows at once (leader) or, if
   * leadership was lost meanwhile, has already run and p is gone. */
}

static void on_fsm_revision(void *ctx, int64_t revision) {
  raftnode *n = ctx;
  n->notify_pending = true;
  n->notify_revision = revision;
  schedule_delivery(n);
}

/* ---- batches --------------------------------------------------------------- */

/* After a failed flush (no memory, or the map could not grow while an export
 * runs), the next try comes this much later. */
#define FLUSH_RETRY_MS 10u

static void on_flush(uv_timer_t *t) {
  raftnode *n = t->data;
  n->in_flush_timer = true;
  int rc = fsm_flush(&n->fsm);
  n->in_flush_timer = false;
  if ((rc == CAIRN_ENOMEM || rc == CAIRN_EBUSY) && n->state != NODE_CLOSING) {
    uv_timer_start(&n->flush_timer, on_flush, FLUSH_RETRY_MS, 0);
  }
}

static void on_fsm_queued(void *ctx) {
  raftnode *n = ctx;
  if (!uv_is_active((uv_handle_t *)&n->flush_timer) && n->state != NODE_CLOSING) {
    uv_timer_start(&n->flush_timer, on_flush, 0, 0);
  }
}

/* ---- proposals ------------------------------------------------------------ */

static void on_raft_applied(struct raft_apply *req, int status, void *result) {
  struct proposal *p = req->data;
  raftnode *n = p->node;
  (void)result; /* always NULL: results travel through on_fsm_result */
  CAIRN_ASSERT(n->outstanding > 0);
  n->outstanding--;
  if (p->state == PROPOSAL_ABANDONED) {
    if (p->has_result) {
      mvcc_result_free(&p->result);
    }
    free(p);
    return;
  }
  CAIRN_ASSERT(p->state == PROPOSAL_PENDING);
  queue_remove(&n->pending, p);
  if (status == 0 && !p->has_result) {
    /* Queued in the state machine's batch: the flush brings the result.
     * No deadline any more: the outcome is known to be coming. */
    p->state = PROPOSAL_APPLIED;
    return;
  }
  pending_remove(&n->table, p->request_id);
  if (status == 0) {
    p->status = 0;
  } else {
    /* RAFT_LEADERSHIPLOST (step-down or close), RAFT_NOTLEADER, a failed
     * log write (the leader then steps down): the entry may still commit. */
    if (p->has_result) {
      mvcc_result_free(&p->result);
      p->has_result = false;
    }
    p->status = n->state == NODE_RUNNING ? CAIRN_ELEADER_CHANGED : CAIRN_ESTOPPED;
  }
  p->state = PROPOSAL_DONE;
  queue_push(&n->done, p);
  schedule_delivery(n);
}

static void on_timeout_tick(uv_timer_t *t) {
  raftnode *n = t->data;
  uint64_t now = uv_now(n->loop);
  /* One pass over what is due now: a callback may propose again, and those
   * go to the tail with a later deadline. */
  struct proposal *p;
  while ((p = n->pending.head) != NULL && p->deadline_ms <= now) {
    queue_remove(&n->pending, p);
    pending_remove(&n->table, p->request_id);
    if (p->has_result) {
      mvcc_result_free(&p->result);
      p->has_result = false;
    }
    p->state = PROPOSAL_ABANDONED;
    raftnode_propose_cb cb = p->cb;
    void *data = p->data;
    p->cb = NULL;
    p->data = NULL;
    cb(data, CAIRN_ETIMEOUT, NULL);
  }
  if (n->pending.head == NULL) {
    uv_timer_stop(t);
  }
}

/* Why this member cannot propose now: another member leads, or none. */
int raftnode_not_leader(raftnode *n) {
  raft_id leader = 0;
  const char *address = NULL;
  raft_leader(n->r, &leader, &address);
  return leader != 0 && leader != n->r->id ? CAIRN_ENOT_LEADER : CAIRN_ENO_LEADER;
}

static uint64_t next_request_id(raftnode *n) {
  n->id_suffix = (n->id_suffix + 1) & ((1ull << 48) - 1);
  return n->id_prefix | n->id_suffix;
}

int raftnode_propose(raftnode *n, const struct mvcc_op *op, void *data, raftnode_propose_cb cb) {
  CAIRN_ASSERT(n != NULL && op != NULL && cb != NULL);
  if (n->state != NODE_RUNNING) {
    return CAIRN_ESTOPPED;
  }
  if (n->fsm.apply_error != 0) {
    return CAIRN_EIO;
  }
  if (raft_state(n->r) != RAFT_LEADER) {
    return raftnode_not_leader(n);
  }
  if (n->fsm.store_state != FSM_STORE_CURRENT) {
    return CAIRN_ENOT_CAPABLE; /* a leader whose store is behind (snapshot_install.c) */
  }
  if (n->outstanding >= RAFTNODE_INFLIGHT_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  struct proposal *p = calloc(1, sizeof *p);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->node = n;
  p->request_id = next_request_id(n);
  p->state = PROPOSAL_PENDING;
  p->data = data;
  p->cb = cb;
  p->req.data = p;
  struct mvcc_op copy = *op;
  copy.raft_index = 0;
  copy.raft_term = n->r->current_term; /* the term raft_apply() appends at */
  struct raft_buffer buf;
  int rc = command_encode(p->request_id, &copy, &buf);
  if (rc != 0) {
    free(p);
    return rc;
  }
  /* In the table before raft sees it, in case raft applied it at once.
   * Room and uniqueness: outstanding < the capacity, ids never repeat. */
  int trc = pending_insert(&n->table, p->request_id, p);
  CAIRN_ASSERT(trc == 0);
  int rv = raft_apply(n->r, &p->req, &buf, 1, on_raft_applied);
  if (rv != 0) {
    pending_remove(&n->table, p->request_id);
    raft_free(buf.base); /* still ours: raft_apply failed */
    free(p);
    switch (rv) {
      case RAFT_NOMEM:
        return CAIRN_ENOMEM;
      case RAFT_NOTLEADER:
        return raftnode_not_leader(n);
      default:
        fprintf(stderr, "cairn: raft: apply: %s\n", raft_strerror(rv));
        return CAIRN_EIO;
    }
  }
  n->outstanding++;
  p->deadline_ms = uv_now(n->loop) + n->request_timeout_ms;
  queue_push(&n->pending, p);
  if (!uv_is_active((uv_handle_t *)&n->timeout_timer)) {
    uv_timer_start(&n->timeout_timer, on_timeout_tick, TIMEOUT_TICK_MS, TIMEOUT_TICK_MS);
  }
  return 0;
}

/* An append wrapped so that its duration is observed: the backend gets our
 * request and callback, raft gets its own back. */
struct timed_append {
  struct raft_io_append inner;
  struct raft_io_append *outer;
  raft_io_append_cb outer_cb;
  uint64_t start_ns;
  raftnode *n;
};

static void timed_append_done(struct raft_io_append *req, int status) {
  struct timed_append *t = req->data;
  raftnode *n = t->n;
  if (status == 0 && n->append_cb != NULL) {
    n->append_cb(n->append_data, (double)(uv_hrtime() - t->start_ns) / 1e9);
  }
  struct raft_io_append *outer = t->outer;
  raft_io_append_cb cb = t->outer_cb;
  free(t);
  cb(outer, status);
}

static int timed_append(struct raft_io *io, struct raft_io_append *req,
                        const struct raft_entry entries[], unsigned count, raft_io_append_cb cb) {
  struct raft *r = io->data;
  raftnode *n = r->data;
  struct timed_append *t = malloc(sizeof *t);
  if (t == NULL) {
    return RAFT_NOMEM;
  }
  t->inner.data = t;
  t->outer = req;
  t->outer_cb = cb;
  t->start_ns = uv_hrtime();
  t->n = n;
  int rv = n->append(io, &t->inner, entries, count, timed_append_done);
  if (rv != 0) {
    free(t);
  }
  return rv;
}

static void on_fsm_op(void *ctx, const struct mvcc_op *op, const struct mvcc_result *result) {
  raftnode *n = ctx;
  membership_on_op(n, op, result);
  if (n->op_cb != NULL) {
    n->op_cb(n->op_data, op, result);
  }
}

/* A batch answered early: its proposers' callbacks now, then the owner
 * sends (the watch hub's wake-up waits for the commit, at the next turn). */
static void on_fsm_answered(void *ctx) {
  raftnode *n = ctx;
  deliver_done(n);
  if (n->answered_cb != NULL) {
    n->answered_cb(n->answered_data);
  }
}

/* Only from the flush timer, and only with nothing else to deliver.
 * - The other flushes run inside libraft's callbacks (a full queue in its
 *   apply, a snapshot): proposers' callbacks are not run from there.
 * - The done queue may hold outcomes of earlier batches, whose callbacks may
 *   read the store (the lessor's promotion reads the leases). Those run
 *   after the commit, at the next delivery, and this batch's answers after
 *   them, in order. */
static bool on_fsm_may_answer(void *ctx) {
  raftnode *n = ctx;
  return n->in_flush_timer && n->done.head == NULL;
}

static void on_fsm_batch(void *ctx, double seconds, size_t entries) {
  raftnode *n = ctx;
  (void)entries;
  if (n->apply_time_cb != NULL) {
    n->apply_time_cb(n->apply_time_data, seconds);
  }
}

void raftnode_on_op_applied(raftnode *n,
                            void (*cb)(void *data, const struct mvcc_op *op,
                                       const struct mvcc_result *result),
                            void *data) {
  CAIRN_ASSERT(n != NULL);
  n->op_cb = cb;
  n->op_data = data;
}

void raftnode_on_apply_time(raftnode *n, void (*cb)(void *data, double seconds), void *data) {
  CAIRN_ASSERT(n != NULL);
  n->apply_time_cb = cb;
  n->apply_time_data = data;
}

void raftnode_on_append(raftnode *n, void (*cb)(void *data, double seconds), void *data) {
  CAIRN_ASSERT(n != NULL);
  n->append_cb = cb;
  n->append_data = data;
}

void raftnode_on_answered(raftnode *n, void (*cb)(void *data), void *data) {
  CAIRN_ASSERT(n != NULL);
  n->answered_cb = cb;
  n->answered_data = data;
  n->fsm.on_answered = cb != NULL ? on_fsm_answered : NULL;
}

void raftnode_on_applied(raftnode *n, void (*cb)(void *data, int64_t revision), void *data) {
  CAIRN_ASSERT(n != NULL);
  n->applied_cb = cb;
  n->applied_data = data;
}

void raftnode_status(const raftnode *n, struct raftnode_status *out) {
  CAIRN_ASSERT(n != NULL && out != NULL);
  memset(out, 0, sizeof *out);
  out->cluster_id = n->ids.cluster_id;
  out->member_id = n->ids.self_id;
  raft_id leader = 0;
  const char *address = NULL;
  raft_leader(n->r, &leader, &address);
  out->leader_id = leader;
  out->term = n->r->current_term;
  out->commit_index = n->r->commit_index;
  out->applied_index = raft_last_applied(n->r);
  out->store_behind = n->fsm.store_state != FSM_STORE_CURRENT;
  if (out->store_behind) {
    out->applied_index = mvcc_applied_index(n->store);
  }
  out->is_leader = raft_state(n->r) == RAFT_LEADER;
  out->apply_error = n->fsm.apply_error;
  out->apply_batches = n->fsm.batches;
}

/* ---- the snapshot gate ---------------------------------------------------- */

/* raft's snapshot_put, deferred until a checkpoint started now has synced
 * the data file: once raft writes the snapshot it replays only the entries
 * after it, and it may drop the log up to it (minus the trailing entries),
 * so everything the snapshot covers must be on disk in LMDB first. The
 * checkpoint starts after the state machine took the snapshot and applies
 * are synchronous, so it covers every entry up to the snapshot's. */
static void on_snapshot_durable(void *data, int status, uint64_t durable_index,
                                int64_t durable_revision) {
  raftnode *n = data;
  CAIRN_ASSERT(n->put.pending);
  unsigned trailing = n->put.trailing;
  struct raft_io_snapshot_put *req = n->put.req;
  const struct raft_snapshot *snapshot = n->put.snapshot;
  raft_io_snapshot_put_cb cb = n->put.cb;
  memset(&n->put, 0, sizeof n->put);
  if (status != 0) {
    cb(req, RAFT_IOERR); /* raft drops this snapshot and tries a later one */
    return;
  }
  if (trailing != 0) {
    struct fsm_marker m;
    CAIRN_ASSERT(snapshot->n_bufs == 1 &&
                 fsm_marker_decode(snapshot->bufs[0].base, snapshot->bufs[0].len, &m) == 0);
    /* The durability rule itself. */
    CAIRN_ASSERT(durable_index >= m.store_index && durable_revision >= m.revision);
  }
  /* trailing 0: an install from the leader; raft replaces its whole log with
   * the marker, which the store may be behind (the restore that follows puts
   * it BEHIND: snapshot_install.c). The checkpoint made what the store has
   * durable first. */
  int rv = n->snapshot_put(&n->io, trailing, req, snapshot, cb);
  if (rv != 0) {
    fprintf(stderr, "cairn: raft: snapshot %llu: %s\n", snapshot->index, raft_strerror(rv));
    cb(req, rv);
  }
}

static int snapshot_put_gated(struct raft_io *io, unsigned trailing,
                              struct raft_io_snapshot_put *req,
                              const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb) {
  struct raft *r = io->data;
  raftnode *n = r->data;
  /* raft runs one snapshot write at a time. */
  CAIRN_ASSERT(!n->put.pending);
  int rc = checkpoint_start(n->store, n->fio, n, on_snapshot_durable);
  if (rc != 0) {
    fprintf(stderr, "cairn: raft: snapshot %llu: checkpoint: %s\n", snapshot->index,
            cairn_strerror(rc));
    return rc == CAIRN_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
  }
  n->put.pending = true;
  n->put.trailing = trailing;
  n->put.req = req;
  n->put.snapshot = snapshot;
  n->put.cb = cb;
  return 0;
}

/* ---- closing -------------------------------------------------------------- */

static void finish(raftnode *n) {
  /* raft_close() settled every apply request. */
  CAIRN_ASSERT(n->outstanding == 0 && n->pending.head == NULL && !n->put.pending);
  deliver(n);
  fsm_close(&n->fsm);
  membership_free(n); /* its last callbacks (outcomes settled by the close) */
  void (*cb)(void *) = n->closed_cb;
  void *data = n->closed_data;
  free(n);
  if (cb != NULL) {
    cb(data);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  raftnode *n = h->data;
  CAIRN_ASSERT(n->handles_open > 0);
  if (--n->handles_open == 0) {
    finish(n);
  }
}

static void on_fileio_closed(void *data) {
  raftnode *n = data;
  uv_close((uv_handle_t *)&n->timeout_timer, on_handle_closed);
  uv_close((uv_handle_t *)&n->deliver_timer, on_handle_closed);
  uv_close((uv_handle_t *)&n->flush_timer, on_handle_closed);
  uv_close((uv_handle_t *)&n->stop_timer, on_handle_closed);
  membership_close_handles(n, on_handle_closed);
}

/* After raft's close callback, outside it: raft's memory may go now. */
static void on_raft_closed_later(uv_timer_t *t) {
  raftnode *n = t->data;
  raft_uv_close(&n->io);
  raft_uv_tcp_close(&n->transport);
  fileio_close(n->fio, on_fileio_closed, n);
}

static void on_raft_closed(struct raft *r) {
  raftnode *n = r->data;
  uv_timer_start(&n->stop_timer, on_raft_closed_later, 0, 0);
}

/* Never called from inside a raft callback. */
static void close_raft(raftnode *n) {
  n->state = NODE_CLOSING;
  uv_timer_stop(&n->timeout_timer);
  uv_timer_stop(&n->deliver_timer);
  uv_timer_stop(&n->stop_timer);
  fsm_flush(&n->fsm); /* answers every applied entry's proposer */
  uv_timer_stop(&n->flush_timer);
  raft_close(n->r, on_raft_closed);
}

static void on_stop_tick(uv_timer_t *t) {
  raftnode *n = t->data;
  if (n->put.pending) {
    return; /* a checkpoint's callback always comes; raft's put follows it */
  }
  /* libraft 0.15 can crash closing a leader with appends in flight: wait for
   * our applies, and for every entry in the leader's log to be applied. */
  bool appending =
      raft_state(n->r) == RAFT_LEADER && raft_last_index(n->r) > raft_last_applied(n->r);
  bool busy = n->outstanding > 0 || appending || readindex_busy(n) || fsm_flush(&n->fsm) != 0;
  if (busy && uv_now(n->loop) < n->stop_deadline_ms) {
    return;
  }
  if (busy) {
    fprintf(stderr, "cairn: raft: closing with %u proposals%s in flight\n", n->outstanding,
            readindex_busy(n) ? " and a read barrier" : "");
  }
  close_raft(n);
}

void raftnode_stop(raftnode *n, void (*closed_cb)(void *data), void *data) {
  CAIRN_ASSERT(n != NULL && n->state == NODE_RUNNING);
  n->state = NODE_DRAINING;
  readindex_stop(n);
  n->closed_cb = closed_cb;
  n->closed_data = data;
  n->stop_deadline_ms = uv_now(n->loop) + n->request_timeout_ms;
  uv_timer_start(&n->stop_timer, on_stop_tick, 0, STOP_TICK_MS);
}

/* ---- start ---------------------------------------------------------------- */

/* Whether raft's uv backend has written this directory (its metadata files,
 * named in raft/uv.h). */
static bool raft_dir_used(const char *dir) {
  char path[PATH_MAX + 16];
  struct stat st;
  for (int i = 1; i <= 2; i++) {
    snprintf(path, sizeof path, "%s/metadata%d", dir, i);
    if (stat(path, &st) == 0) {
      return true;
    }
  }
  return false;
}

/* libraft 0.15's TCP transport binds and connects to IPv4 literals only. */
static bool address_usable(const char *address) {
  char host[MEMBERID_ADDRESS_MAX];
  const char *colon = strrchr(address, ':');
  size_t len = colon == NULL ? 0 : (size_t)(colon - address);
  if (len == 0 || len >= sizeof host) {
    return false;
  }
  memcpy(host, address, len);
  host[len] = 0;
  struct in_addr a;
  return inet_pton(AF_INET, host, &a) == 1;
}

static int raft_to_cairn(int rv) {
  return rv == RAFT_NOMEM ? CAIRN_ENOMEM : CAIRN_EIO;
}

/* Closes a node whose raft was initialized, from raftnode_start(). */
static int start_failed(raftnode *n, int rc) {
  n->closed_cb = NULL;
  close_raft(n);
  return rc;
}

/* raft_start() says only "I/O error" when its peer listener cannot bind
 * (libraft's message is empty). A bind of our own to the same address tells
 * whether that was it, to say so as etcd does ("address already in use"). */
static void explain_listen_failure(const char *address) {
  char host[MEMBERID_ADDRESS_MAX];
  snprintf(host, sizeof host, "%s", address);
  char *colon = strrchr(host, ':');
  if (colon == NULL) {
    return;
  }
  *colon = 0;
  const char *port = colon + 1;
  char *h = host;
  if (*h == '[' && colon > h && colon[-1] == ']') { /* [v6]:port */
    h++;
    colon[-1] = 0;
  }
  struct addrinfo hints = {
      .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *ai = NULL;
  if (getaddrinfo(h, port, &hints, &ai) != 0 || ai == NULL) {
    return;
  }
  int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) {
    int one = 1; /* as libuv binds */
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      fprintf(stderr, "cairn: raft: listen for peers on %s: %s\n", address, strerror(errno));
    }
    close(fd);
  }
  freeaddrinfo(ai);
}

int raftnode_start(uv_loop_t *loop, mvcc_store *store, const struct raftnode_options *opts,
                   raftnode **out) {
  CAIRN_ASSERT(loop != NULL && store != NULL && opts != NULL && out != NULL);
  *out = NULL;
  if (opts->name == NULL || opts->data_dir == NULL) {
    fprintf(stderr, "cairn: raft: a member needs a name and a data directory\n");
    return CAIRN_EINVAL;
  }
  raftnode *n = calloc(1, sizeof *n);
  if (n == NULL) {
    return CAIRN_ENOMEM;
  }
  int rc = memberid_cluster(opts->name, opts->initial_cluster, opts->n_initial_cluster,
                            opts->cluster_token, &n->ids);
  if (rc != 0) {
    free(n);
    return rc;
  }
  for (size_t i = 0; i < n->ids.n; i++) {
    if (!address_usable(n->ids.members[i].address)) {
      fprintf(stderr, "cairn: raft: member %s: peer address %s: raft needs an IPv4 address\n",
              n->ids.members[i].name, n->ids.members[i].address);
      free(n);
      return CAIRN_EINVAL;
    }
  }
  n->loop = loop;
  n->store = store;
  n->r = &n->raft;
  n->state = NODE_RUNNING;
  pending_init(&n->table);
  unsigned heartbeat = opts->heartbeat_ms ? opts->heartbeat_ms : RAFTNODE_HEARTBEAT_MS_DEFAULT;
  unsigned election = opts->election_ms ? opts->election_ms : RAFTNODE_ELECTION_MS_DEFAULT;
  n->request_timeout_ms = opts->request_timeout_ms ? opts->request_timeout_ms : 5000 + 2 * election;
  uint64_t count = opts->snapshot_count ? opts->snapshot_count : RAFTNODE_SNAPSHOT_COUNT_DEFAULT;
  unsigned threshold = count > UINT_MAX ? UINT_MAX : (unsigned)count;
  unsigned trailing =
      threshold < RAFTNODE_SNAPSHOT_TRAILING ? threshold : RAFTNODE_SNAPSHOT_TRAILING;

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  n->id_prefix = (n->ids.self_id & 0xffffu) << 48;
  n->id_suffix = (ms << 8) & ((1ull << 48) - 1);

  char dir[PATH_MAX];
  if ((size_t)snprintf(dir, sizeof dir, "%s/raft", opts->data_dir) >= sizeof dir) {
    fprintf(stderr, "cairn: raft: data directory name too long\n");
    free(n);
    return CAIRN_EINVAL;
  }
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "cairn: raft: mkdir %s: %s\n", dir, strerror(errno));
    free(n);
    return CAIRN_EIO;
  }
  bool used = raft_dir_used(dir);
  if (!used && mvcc_applied_index(store) > 0) {
    fprintf(stderr,
            "cairn: raft: the store holds entries up to %" PRIu64
            " but the raft log in %s is empty: it was lost\n",
            mvcc_applied_index(store), dir);
    free(n);
    return CAIRN_ECORRUPT;
  }
  /* This member's id (kept from its first start; a member joining an
   * existing cluster takes the id MemberAdd gave its peer URLs), the cluster
   * id and the member table (membership.c). */
  char self_address[MEMBERID_ADDRESS_MAX];
  rc = membership_prepare(n, opts, opts->data_dir, used, self_address, sizeof self_address);
  if (rc != 0) {
    membership_free(n);
    free(n);
    return rc;
  }
  n->id_prefix = (n->ids.self_id & 0xffffu) << 48;

  rc = fileio_init(loop, 0, &n->fio);
  if (rc != 0) {
    membership_free(n);
    free(n);
    return rc;
  }
  int rv = raft_uv_tcp_init(&n->transport, loop);
  if (rv != 0) {
    fprintf(stderr, "cairn: raft: transport: %s\n", raft_strerror(rv));
    goto err_after_fileio;
  }
  rv = raft_uv_init(&n->io, loop, dir, &n->transport);
  if (rv != 0) {
    fprintf(stderr, "cairn: raft: %s: %s\n", dir, raft_strerror(rv));
    goto err_after_transport;
  }
  raft_uv_set_connect_retry_delay(&n->io, heartbeat);
  rc = raftlog_install(&n->io, loop, dir, &n->log);
  if (rc != 0) {
    rv = rc == CAIRN_ECORRUPT ? RAFT_CORRUPT : rc == CAIRN_ENOMEM ? RAFT_NOMEM : RAFT_IOERR;
    goto err_after_uv;
  }
  n->snapshot_put = n->io.snapshot_put;
  n->io.snapshot_put = snapshot_put_gated;
  n->append = n->io.append;
  n->io.append = timed_append;
  fsm_init(&n->fsm, n->r, store, n, on_fsm_result, on_fsm_revision, on_fsm_queued);
  n->fsm.on_op = on_fsm_op;
  n->fsm.on_batch = on_fsm_batch;
  n->fsm.may_answer = on_fsm_may_answer;
  /* A store behind raft's snapshot is fetched from another member; with
   * none, it is refused at start (snapshot_install.c). */
  n->fsm.on_behind = snapinstall_on_behind;
  n->fsm.can_fetch = n->ids.n > 1;
  rv = raft_init(n->r, &n->io, &n->fsm.raft_fsm, n->ids.self_id, self_address);
  if (rv != 0) {
    fprintf(stderr, "cairn: raft: init: %s\n", raft_errmsg(n->r));
    goto err_after_io;
  }
  n->raft.data = n;
  uv_timer_init(loop, &n->timeout_timer);
  uv_timer_init(loop, &n->deliver_timer);
  uv_timer_init(loop, &n->flush_timer);
  uv_timer_init(loop, &n->stop_timer);
  n->timeout_timer.data = n->deliver_timer.data = n->stop_timer.data = n;
  n->flush_timer.data = n;
  n->handles_open = 4;
  membership_start(n);
  /* From here on failures close raft, asynchronously. */
  raft_set_heartbeat_timeout(n->r, heartbeat);
  raft_set_election_timeout(n->r, election);
  /* Pre-vote: a member that was cut off (a pause, a partition) asks before
   * it bumps the term, so that it neither deposes a healthy leader when it
   * comes back nor keeps resetting the others' election timers with
   * elections it cannot win (seen with SIGSTOP/SIGCONT in the cluster
   * tests: no leader for seconds). */
  raft_set_pre_vote(n->r, true);
  raft_set_snapshot_threshold(n->r, threshold);
  raft_set_snapshot_trailing(n->r, trailing);

  if (opts->new_cluster) {
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    rv = 0;
    for (size_t i = 0; i < n->ids.n && rv == 0; i++) {
      rv = raft_configuration_add(&conf, n->ids.members[i].id, n->ids.members[i].address,
                                  RAFT_VOTER);
    }
    if (rv == 0) {
      rv = raft_bootstrap(n->r, &conf);
    }
    raft_configuration_close(&conf);
    if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) { /* CANTBOOTSTRAP: done before */
      fprintf(stderr, "cairn: raft: bootstrap: %s\n", raft_errmsg(n->r));
      return start_failed(n, raft_to_cairn(rv));
    }
  }
  n->fsm.starting = true;
  rv = raft_start(n->r);
  n->fsm.starting = false;
  if (rv != 0) {
    fprintf(stderr, "cairn: raft: start: %s%s%s\n", raft_strerror(rv),
            *raft_errmsg(n->r) ? ": " : "", raft_errmsg(n->r));
    explain_listen_failure(self_address);
    return start_failed(n, n->fsm.restore_error ? n->fsm.restore_error : raft_to_cairn(rv));
  }
  *out = n;
  return 0;

err_after_io:
  raftlog_abort(n->log);
err_after_uv:
  raft_uv_close(&n->io);
err_after_transport:
  raft_uv_tcp_close(&n->transport);
err_after_fileio:
  fileio_close(n->fio, NULL, NULL);
  membership_free(n);
  free(n);
  return raft_to_cairn(rv);
}
