/* raft/membership.c: the replicated member table and membership changes.
 *
 * The table (raft/membertable.h) is the truth about who the members are; it
 * is one meta value of the store, written whole by the leader through raft,
 * one write at a time (the "jobs" below, each validated and computed from
 * the table as applied here), so no write is lost and snapshots of the store
 * carry it. libraft's configuration follows the table: on the leader, a
 * 50 ms tick "reconciles" it one raft change at a time (libraft allows one):
 *
 *   member in the table, not in raft        -> raft_add (spare)
 *   spare                                   -> raft_assign(stand-by)
 *   voter in the table, raft stand-by,
 *     its log within 90% of the leader's    -> raft_assign(voter)
 *   in raft, removed from the table         -> raft_remove
 *
 * so a change whose raft part was cut short by a crash or a leader change
 * is finished by the next leader. A new leader writes nothing until a
 * barrier of its own term was applied here (then the table it reads holds
 * every write of earlier leaders).
 *
 * Raft dials a member at the address the table holds for it (the
 * transport's connect is wrapped): libraft 0.15 cannot change a server's
 * address, the table can (MemberUpdate).
 *
 * See docs/raft.md, "Membership". */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cairn_assert.h"
#include "common/cairn_error.h"
#include "membership.h"
#include "membertable.h"
#include "memberid.h"
#include "raftnode_int.h"

/* How often the leader reconciles raft's configuration with the table and
 * looks at its queue. */
#define MEMBERSHIP_TICK_MS 50u
/* The file beside raft's directory that keeps this member's id. */
#define MEMBER_ID_FILE "member_id"
/* etcd's readiness of a learner: its log within 90% of the leader's. */
#define READY_PERCENT 90u
/* etcd 3.4's maxLearners. */
#define LEARNERS_MAX 1u

enum job_kind { JOB_INIT, JOB_PUBLISH, JOB_ADD, JOB_REMOVE, JOB_UPDATE, JOB_PROMOTE };

struct job {
  enum job_kind kind;
  uint64_t id;
  bool is_learner;
  char *name;
  char *urls[MEMBERTABLE_URLS_MAX];
  size_t n_urls;
  bool internal; /* no caller waits (the leader's own publication, the first write) */
  raftnode_member_cb cb;
  void *data;
  struct job *next;
};

struct done {
  raftnode_member_cb cb;
  void *data;
  int status;
  uint64_t id;
  struct done *next;
};

typedef int (*connect_fn)(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                          const char *address, raft_uv_connect_cb cb);

struct membership {
  raftnode *n;
  /* The table as applied here (have_table), else the initial cluster's
   * (a new cluster before its first write), else none (a joining member
   * before the table reached it). */
  struct membertable *table;
  bool have_table;
  uint64_t table_index;     /* the raft entry that wrote it (0: from the store at start) */
  uint64_t table_loaded_ms; /* loop time it was applied here */
  struct membertable *initial;
  struct membertable *derived; /* from raft's configuration, rebuilt on demand */

  char *self_name;
  char *self_client_urls[MEMBERTABLE_URLS_MAX];
  size_t n_self_client_urls;

  uv_timer_t tick;
  uv_timer_t deliver_timer;
  bool started;
  connect_fn connect;

  /* Leader state. */
  uint64_t ready_term; /* a barrier of this term was applied: the table is current */
  struct raft_barrier barrier;
  bool barrier_in_flight;
  uint64_t barrier_term;
  uint64_t barrier_index;
  struct job *head, *tail; /* waiting */
  size_t n_jobs;           /* waiting and in flight */
  struct job *in_flight;   /* its table write is proposed */
  bool self_publish_queued;
  struct raft_change change;
  bool change_in_flight;
  uint64_t change_not_before_ms; /* after a failed change */
  struct raft_transfer transfer;
  bool transfer_in_flight;
  raftnode_member_cb transfer_cb;
  void *transfer_data;

  struct done *done_head, *done_tail;

  void (*removed_cb)(void *data);
  void *removed_data;
  bool removed_told;
  /* The store was behind raft's snapshot (raft/snapshot_install.c) at the
   * last tick: when it is current again it may be another store. */
  bool store_was_behind;
};

/* ---- small helpers ---------------------------------------------------------- */

static char *dup_str(const char *s) {
  size_t n = strlen(s) + 1;
  char *p = malloc(n);
  if (p != NULL) {
    memcpy(p, s, n);
  }
  return p;
}

static void job_free(struct job *j) {
  if (j == NULL) {
    return;
  }
  free(j->name);
  for (size_t i = 0; i < j->n_urls; i++) {
    free(j->urls[i]);
  }
  free(j);
}

static const struct raft_server *config_get(const raftnode *n, uint64_t id, unsigned *index) {
  const struct raft_configuration *c = &n->r->configuration;
  for (unsigned i = 0; i < c->n; i++) {
    if (c->servers[i].id == id) {
      if (index != NULL) {
        *index = i;
      }
      return &c->servers[i];
    }
  }
  return NULL;
}

/* The peer URL raft dials: the first in sorted order (as for the initial
 * cluster, raft/memberid.h). */
static const char *raft_url(const struct membertable_member *mm) {
  const char *best = NULL;
  for (size_t i = 0; i < mm->n_peer_urls; i++) {
    if (best == NULL || strcmp(mm->peer_urls[i], best) < 0) {
      best = mm->peer_urls[i];
    }
  }
  return best;
}

/* Encodes views and decodes them into an owned table. */
static int table_own(const struct membertable *views, struct membertable **out) {
  uint8_t *buf;
  size_t len;
  int rc = membertable_encode(views, &buf, &len);
  if (rc != 0) {
    return rc;
  }
  struct membertable *t = malloc(sizeof *t);
  if (t == NULL) {
    free(buf);
    return CAIRN_ENOMEM;
  }
  rc = membertable_decode(buf, len, t);
  free(buf);
  if (rc != 0) {
    free(t);
    return rc;
  }
  *out = t;
  return 0;
}

static void table_release(struct membertable **t) {
  if (*t != NULL) {
    membertable_free(*t);
    free(*t);
    *t = NULL;
  }
}

/* A table built from raft's configuration alone (peer URL
 * http://<address>, no names): what a member that has no table can say. */
static const struct membertable *derived_view(struct membership *m) {
  raftnode *n = m->n;
  table_release(&m->derived);
  struct membertable *v = calloc(1, sizeof *v);
  if (v == NULL) {
    return NULL;
  }
  char urls[MEMBERTABLE_MEMBERS_MAX][MEMBERID_ADDRESS_MAX + 8];
  v->cluster_id = n->ids.cluster_id;
  const struct raft_configuration *c = &n->r->configuration;
  for (unsigned i = 0; i < c->n && v->n < MEMBERTABLE_MEMBERS_MAX; i++) {
    struct membertable_member mm = {.id = c->servers[i].id,
                                    .is_learner = c->servers[i].role != RAFT_VOTER,
                                    .name = c->servers[i].id == n->ids.self_id ? m->self_name : ""};
    snprintf(urls[v->n], sizeof urls[v->n], "http://%s", c->servers[i].address);
    mm.peer_urls[0] = urls[v->n];
    mm.n_peer_urls = 1;
    if (mm.id == n->ids.self_id) {
      for (size_t k = 0; k < m->n_self_client_urls; k++) {
        mm.client_urls[k] = m->self_client_urls[k];
      }
      mm.n_client_urls = m->n_self_client_urls;
    }
    membertable_insert(v, &mm);
  }
  int rc = table_own(v, &m->derived);
  free(v);
  return rc == 0 ? m->derived : NULL;
}

/* The table to answer from and to build writes on. NULL: no memory. */
static const struct membertable *current(struct membership *m) {
  if (m->have_table) {
    return m->table;
  }
  if (m->initial != NULL) {
    return m->initial;
  }
  return derived_view(m);
}

/* ---- delivery --------------------------------------------------------------- */

static void on_deliver(uv_timer_t *t);

static void push_done(struct membership *m, raftnode_member_cb cb, void *data, int status,
                      uint64_t id) {
  if (cb == NULL) {
    return;
  }
  struct done *d = malloc(sizeof *d);
  CAIRN_ASSERT(d != NULL); /* a few bytes; failing here would lose a caller */
  *d = (struct done){cb, data, status, id, NULL};
  if (m->done_tail != NULL) {
    m->done_tail->next = d;
  } else {
    m->done_head = d;
  }
  m->done_tail = d;
  if (m->started && m->n->state != NODE_CLOSING) {
    uv_timer_start(&m->deliver_timer, on_deliver, 0, 0);
  }
}

static void deliver_all(struct membership *m) {
  struct done *d = m->done_head;
  m->done_head = m->done_tail = NULL;
  while (d != NULL) {
    struct done *next = d->next;
    d->cb(d->data, d->status, d->id);
    free(d);
    d = next;
  }
}

static void on_deliver(uv_timer_t *t) {
  deliver_all(t->data);
}

static void job_finish(struct membership *m, struct job *j, int status, uint64_t id) {
  CAIRN_ASSERT(m->n_jobs > 0);
  m->n_jobs--;
  if (j->kind == JOB_PUBLISH && j->internal) {
    m->self_publish_queued = false;
  }
  if (!j->internal) {
    push_done(m, j->cb, j->data, status, id);
  }
  job_free(j);
}

/* ---- the table, applied ------------------------------------------------------ */

static void load_table(struct membership *m, const void *value, size_t len) {
  struct membertable *t = malloc(sizeof *t);
  int rc = t == NULL ? CAIRN_ENOMEM : membertable_decode(value, len, t);
  if (rc != 0) {
    /* Written by a leader from a valid table: a bug or a corrupt store.
     * The previous table stays. */
    fprintf(stderr, "cairn: raft: the member table does not decode: %s\n", cairn_strerror(rc));
    free(t);
    return;
  }
  table_release(&m->table);
  m->table = t;
  m->have_table = true;
  if (t->cluster_id != 0) {
    m->n->ids.cluster_id = t->cluster_id;
  }
}

void membership_on_op(raftnode *n, const struct mvcc_op *op, const struct mvcc_result *result) {
  struct membership *m = n->mem;
  if (m == NULL || op->type != MVCC_OP_META_PUT || result->err != 0 ||
      strcmp(op->u.meta_put.name, MEMBERTABLE_META_NAME) != 0) {
    return;
  }
  load_table(m, op->u.meta_put.value.data, op->u.meta_put.value.len);
  m->table_index = op->raft_index;
  m->table_loaded_ms = uv_now(n->loop);
}

/* Loads the table the store holds (none: nothing changes). At start, and
 * after the store was replaced by one fetched from another member. */
static int load_from_store(struct membership *m) {
  raftnode *n = m->n;
  size_t len = 0;
  uint8_t small[8];
  int rc = mvcc_meta_get(n->store, MEMBERTABLE_META_NAME, small, sizeof small, &len);
  if (rc == CAIRN_EKEY_NOT_FOUND) {
    return 0;
  }
  if (rc != 0) {
    return rc;
  }
  uint8_t *buf = malloc(len ? len : 1);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  rc = mvcc_meta_get(n->store, MEMBERTABLE_META_NAME, buf, len, &len);
  if (rc == 0) {
    struct membertable *t = malloc(sizeof *t);
    rc = t == NULL ? CAIRN_ENOMEM : membertable_decode(buf, len, t);
    if (rc == 0) {
      table_release(&m->table);
      m->table = t;
      m->have_table = true;
      m->table_index = 0;
      m->table_loaded_ms = n->loop != NULL ? uv_now(n->loop) : 0;
      if (t->cluster_id != 0) {
        n->ids.cluster_id = t->cluster_id;
      }
    } else {
      free(t);
      fprintf(stderr, "cairn: raft: the member table in the store does not decode\n");
    }
  }
  free(buf);
  return rc;
}

/* ---- start ------------------------------------------------------------------ */

static int read_id_file(const char *path, uint64_t *id, bool *found) {
  *found = false;
  FILE *f = fopen(path, "r");
  if (f == NULL) {
    if (errno == ENOENT) {
      return 0;
    }
    fprintf(stderr, "cairn: raft: open %s: %s\n", path, strerror(errno));
    return CAIRN_EIO;
  }
  char line[64] = {0};
  bool ok = fgets(line, sizeof line, f) != NULL;
  fclose(f);
  char *end = NULL;
  errno = 0;
  unsigned long long v = ok ? strtoull(line, &end, 16) : 0;
  if (!ok || errno != 0 || end == line || (*end != '\n' && *end != 0) || v == 0) {
    fprintf(stderr, "cairn: raft: %s does not hold a member id\n", path);
    return CAIRN_ECORRUPT;
  }
  *id = v;
  *found = true;
  return 0;
}

static int write_id_file(const char *path, uint64_t id) {
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) {
    fprintf(stderr, "cairn: raft: create %s: %s\n", tmp, strerror(errno));
    return CAIRN_EIO;
  }
  char line[32];
  int len = snprintf(line, sizeof line, "%016" PRIx64 "\n", id);
  bool ok = write(fd, line, (size_t)len) == len && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp, path) != 0) {
    fprintf(stderr, "cairn: raft: write %s: %s\n", path, strerror(errno));
    unlink(tmp);
    return CAIRN_EIO;
  }
  return 0;
}

/* The initial cluster as a table (a new cluster's members, before the
 * first write): names and peer URLs from the flags, ids as computed. */
static int build_initial(struct membership *m, const struct raftnode_options *opts,
                         uint64_t cluster_id) {
  raftnode *n = m->n;
  struct membertable *v = calloc(1, sizeof *v);
  if (v == NULL) {
    return CAIRN_ENOMEM;
  }
  v->cluster_id = cluster_id;
  for (size_t i = 0; i < n->ids.n; i++) {
    struct membertable_member mm = {.id = n->ids.members[i].id, .name = n->ids.members[i].name};
    for (size_t k = 0; k < opts->n_initial_cluster; k++) {
      if (strcmp(opts->initial_cluster[k].name, mm.name) == 0 &&
          mm.n_peer_urls < MEMBERTABLE_URLS_MAX) {
        mm.peer_urls[mm.n_peer_urls++] = opts->initial_cluster[k].peer_url;
      }
    }
    if (mm.id == n->ids.self_id) {
      for (size_t k = 0; k < m->n_self_client_urls; k++) {
        mm.client_urls[k] = m->self_client_urls[k];
      }
      mm.n_client_urls = m->n_self_client_urls;
    }
    membertable_insert(v, &mm);
  }
  int rc = table_own(v, &m->initial);
  free(v);
  return rc;
}

int membership_prepare(raftnode *n, const struct raftnode_options *opts, const char *data_dir,
                       bool used, char *self_address, size_t cap) {
  CAIRN_ASSERT(n->mem == NULL);
  struct membership *m = calloc(1, sizeof *m);
  if (m == NULL) {
    return CAIRN_ENOMEM;
  }
  n->mem = m;
  m->n = n;
  if (opts->n_client_urls > MEMBERTABLE_URLS_MAX ||
      strlen(opts->name) > MEMBERTABLE_STRING_MAX) {
    fprintf(stderr, "cairn: raft: too many client URLs or too long a name\n");
    return CAIRN_EINVAL;
  }
  m->self_name = dup_str(opts->name);
  if (m->self_name == NULL) {
    return CAIRN_ENOMEM;
  }
  for (size_t i = 0; i < opts->n_client_urls; i++) {
    if (strlen(opts->client_urls[i]) > MEMBERTABLE_STRING_MAX) {
      return CAIRN_EINVAL;
    }
    if ((m->self_client_urls[i] = dup_str(opts->client_urls[i])) == NULL) {
      return CAIRN_ENOMEM;
    }
    m->n_self_client_urls = i + 1;
  }

  /* This member's peer URLs: its entries of the initial cluster. */
  const char *own[MEMBERTABLE_URLS_MAX];
  size_t n_own = 0;
  for (size_t i = 0; i < opts->n_initial_cluster; i++) {
    if (strcmp(opts->initial_cluster[i].name, opts->name) == 0) {
      if (n_own == MEMBERTABLE_URLS_MAX) {
        fprintf(stderr, "cairn: raft: more than %u peer URLs\n", MEMBERTABLE_URLS_MAX);
        return CAIRN_EINVAL;
      }
      own[n_own++] = opts->initial_cluster[i].peer_url;
    }
  }
  CAIRN_ASSERT(n_own > 0); /* memberid_cluster() found this member */
  struct membertable_member self_view = {.n_peer_urls = n_own};
  memcpy(self_view.peer_urls, own, n_own * sizeof own[0]);
  if (memberid_url_address(raft_url(&self_view), self_address, cap) != 0) {
    fprintf(stderr, "cairn: raft: peer URL %s: raft needs http://<IPv4>:<port>\n",
            raft_url(&self_view));
    return CAIRN_EINVAL;
  }

  /* The id: kept from the first start on. */
  char path[PATH_MAX];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", data_dir, MEMBER_ID_FILE) >= sizeof path) {
    return CAIRN_EINVAL;
  }
  uint64_t flags_cluster_id = n->ids.cluster_id;
  uint64_t id = 0;
  bool found = false;
  /* Only a member whose raft log exists is bound to its recorded id: until
   * then a start with other flags (a mistaken --initial-cluster-state)
   * computes it again. */
  int rc = used ? read_id_file(path, &id, &found) : 0;
  if (rc != 0) {
    return rc;
  }
  if (!found) {
    if (used || opts->new_cluster) {
      id = n->ids.self_id; /* an initial member (or a log from before this file) */
    } else {
      rc = memberid_added(own, n_own, &id);
      if (rc != 0) {
        fprintf(stderr, "cairn: raft: bad peer URLs for a joining member\n");
        return rc;
      }
      n->ids.cluster_id = 0; /* the table brings it */
      fprintf(stderr,
              "cairn: raft: joining an existing cluster as member %016" PRIx64
              " (the id MemberAdd gave these peer URLs); waiting for the leader\n",
              id);
    }
    if ((rc = write_id_file(path, id)) != 0) {
      return rc;
    }
  }
  n->ids.self_id = id;

  /* The table as the store holds it. */
  if ((rc = load_from_store(m)) != 0) {
    return rc;
  }
  /* A member of the initial cluster knows it before the first write. */
  if (!m->have_table && id == n->ids.self_id && n->ids.cluster_id != 0) {
    for (size_t i = 0; i < n->ids.n; i++) {
      if (n->ids.members[i].id == id) {
        return build_initial(m, opts, flags_cluster_id);
      }
    }
  }
  return 0;
}

/* ---- raft dials members where the table says -------------------------------- */

static int wrapped_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                           const char *address, raft_uv_connect_cb cb) {
  raftnode *n = (raftnode *)(void *)((char *)t - offsetof(struct raftnode, transport));
  struct membership *m = n->mem;
  char buf[MEMBERID_ADDRESS_MAX];
  if (m->have_table) {
    const struct membertable_member *mm = membertable_find(m->table, id);
    if (mm != NULL && mm->n_peer_urls > 0 &&
        memberid_url_address(raft_url(mm), buf, sizeof buf) == 0) {
      address = buf; /* libraft parses it during the call */
    }
  }
  return m->connect(t, req, id, address, cb);
}

/* ---- the leader's work ------------------------------------------------------- */

static void on_tick(uv_timer_t *t);

static void kick(struct membership *m) {
  if (m->started && m->n->state == NODE_RUNNING) {
    uv_timer_start(&m->tick, on_tick, 0, MEMBERSHIP_TICK_MS);
  }
}

static void on_barrier(struct raft_barrier *req, int status) {
  struct membership *m = req->data;
  m->barrier_in_flight = false;
  if (status == 0 && m->barrier_term == m->n->r->current_term) {
    m->ready_term = m->barrier_term;
  }
  kick(m);
}

/* The table here holds every earlier leader's writes: a barrier of this
 * term was applied, and the state machine's queue holds nothing before it. */
static bool table_current(struct membership *m) {
  raftnode *n = m->n;
  uint64_t term = n->r->current_term;
  if (m->ready_term == term) {
    return n->fsm.n_queued == 0 || n->fsm.queue[0].index > m->barrier_index;
  }
  if (!m->barrier_in_flight) {
    m->barrier.data = m;
    m->barrier_term = term;
    m->barrier_index = raft_last_index(n->r) + 1;
    if (raft_barrier(n->r, &m->barrier, on_barrier) == 0) {
      m->barrier_in_flight = true;
    }
  }
  return false;
}

static size_t count_learners(const struct membertable *t) {
  size_t k = 0;
  for (size_t i = 0; i < t->n; i++) {
    k += t->members[i].is_learner;
  }
  return k;
}

/* etcd's IsReadyToAddVotingMember / IsReadyToRemoveVotingMember /
 * IsReadyToPromoteMember: started (named) voters against the quorum the
 * change would need. */
static bool ready_to_add_voter(const struct membertable *t) {
  size_t members = 1, started = 0;
  for (size_t i = 0; i < t->n; i++) {
    if (!t->members[i].is_learner) {
      members++;
      started += t->members[i].name[0] != 0;
    }
  }
  if (started == 1 && members == 2) {
    return true;
  }
  return started >= members / 2 + 1;
}

static bool ready_to_remove_voter(const struct membertable *t, uint64_t id) {
  size_t members = 0, started = 0;
  for (size_t i = 0; i < t->n; i++) {
    if (!t->members[i].is_learner && t->members[i].id != id) {
      members++;
      started += t->members[i].name[0] != 0;
    }
  }
  return started >= members / 2 + 1;
}

static bool ready_to_promote(const struct membertable *t) {
  size_t members = 1, started = 1;
  for (size_t i = 0; i < t->n; i++) {
    if (!t->members[i].is_learner) {
      members++;
      started += t->members[i].name[0] != 0;
    }
  }
  return started >= members / 2 + 1;
}

/* etcd's isLearnerReady: the member's log within 90% of the leader's. */
static bool in_sync(const raftnode *n, uint64_t id) {
  unsigned i;
  if (config_get(n, id, &i) == NULL || n->r->leader_state.progress == NULL) {
    return false;
  }
  uint64_t match = n->r->leader_state.progress[i].match_index;
  return match * 100u >= raft_last_index(n->r) * READY_PERCENT;
}

/* Computes the table job j makes of cur into next (views into cur and j).
 * 0 with *changed, or the etcd error j fails with. */
static int job_compute(struct membership *m, struct job *j, const struct membertable *cur,
                       struct membertable *next, bool *changed) {
  *next = *cur;
  next->buf = NULL;
  *changed = true;
  if (next->cluster_id == 0) {
    next->cluster_id = m->n->ids.cluster_id;
  }
  struct membertable_member *mm = NULL;
  for (size_t i = 0; i < next->n; i++) {
    if (next->members[i].id == j->id) {
      mm = &next->members[i];
    }
  }
  switch (j->kind) {
    case JOB_INIT:
      return 0;
    case JOB_PUBLISH: {
      if (mm == NULL) {
        return CAIRN_EMEMBER_NOT_FOUND;
      }
      bool same = strcmp(mm->name, j->name) == 0 && mm->n_client_urls == j->n_urls;
      for (size_t i = 0; same && i < j->n_urls; i++) {
        same = strcmp(mm->client_urls[i], j->urls[i]) == 0;
      }
      if (same) {
        *changed = false;
        return 0;
      }
      mm->name = j->name;
      for (size_t i = 0; i < j->n_urls; i++) {
        mm->client_urls[i] = j->urls[i];
      }
      mm->n_client_urls = j->n_urls;
      return 0;
    }
    case JOB_ADD: {
      /* (The id comes from the peer URLs: taken URLs are what etcd reports.) */
      if (membertable_peer_url_taken(next, (const char *const *)j->urls, j->n_urls, 0)) {
        return CAIRN_EPEER_URL_EXIST;
      }
      if (mm != NULL) {
        return CAIRN_EMEMBER_EXIST;
      }
      if (j->is_learner && count_learners(next) + 1 > LEARNERS_MAX) {
        return CAIRN_ETOO_MANY_LEARNERS;
      }
      if (!j->is_learner && !ready_to_add_voter(next)) {
        return CAIRN_EMEMBER_NOT_ENOUGH_STARTED;
      }
      if (next->n == MEMBERTABLE_MEMBERS_MAX) {
        return CAIRN_EINVAL;
      }
      struct membertable_member nm = {.id = j->id, .is_learner = j->is_learner, .name = ""};
      for (size_t i = 0; i < j->n_urls; i++) {
        nm.peer_urls[i] = j->urls[i];
      }
      nm.n_peer_urls = j->n_urls;
      membertable_unremove(next, j->id); /* same peer URLs, same id: added again */
      return membertable_insert(next, &nm);
    }
    case JOB_REMOVE:
      if (mm == NULL) {
        return CAIRN_EMEMBER_NOT_FOUND;
      }
      if (!mm->is_learner && !ready_to_remove_voter(next, j->id)) {
        return CAIRN_EMEMBER_NOT_ENOUGH_STARTED;
      }
      membertable_remove(next, j->id);
      return 0;
    case JOB_UPDATE: {
      if (mm == NULL) {
        return CAIRN_EMEMBER_NOT_FOUND;
      }
      if (membertable_peer_url_taken(next, (const char *const *)j->urls, j->n_urls, j->id)) {
        return CAIRN_EPEER_URL_EXIST;
      }
      for (size_t i = 0; i < j->n_urls; i++) {
        mm->peer_urls[i] = j->urls[i];
      }
      mm->n_peer_urls = j->n_urls;
      return 0;
    }
    case JOB_PROMOTE:
      if (mm == NULL) {
        return CAIRN_EMEMBER_NOT_FOUND;
      }
      if (!mm->is_learner) {
        return CAIRN_EMEMBER_NOT_LEARNER;
      }
      if (!in_sync(m->n, j->id)) {
        return CAIRN_ELEARNER_NOT_READY;
      }
      if (!ready_to_promote(next)) {
        return CAIRN_EMEMBER_NOT_ENOUGH_STARTED;
      }
      mm->is_learner = false;
      return 0;
  }
  return CAIRN_EINVAL;
}

static void on_job_proposed(void *data, int status, struct mvcc_result *result) {
  struct membership *m = data;
  struct job *j = m->in_flight;
  CAIRN_ASSERT(j != NULL);
  m->in_flight = NULL;
  if (result != NULL) {
    status = result->err;
    mvcc_result_free(result);
  }
  job_finish(m, j, status, j->id);
  kick(m);
}

/* Starts the next job: an error or a no-op answers at once (through the
 * delivery timer); a change proposes the new table. */
static void run_jobs(struct membership *m) {
  raftnode *n = m->n;
  while (m->in_flight == NULL && m->head != NULL) {
    struct job *j = m->head;
    const struct membertable *cur = current(m);
    struct membertable *next = malloc(sizeof *next);
    if (cur == NULL || next == NULL) {
      free(next);
      return; /* no memory: the next tick tries again */
    }
    m->head = j->next;
    if (m->head == NULL) {
      m->tail = NULL;
    }
    bool changed = false;
    int rc = job_compute(m, j, cur, next, &changed);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (rc == 0 && changed) {
      rc = membertable_encode(next, &buf, &len);
    }
    free(next);
    if (rc != 0 || !changed) {
      job_finish(m, j, rc, j->id);
      continue;
    }
    struct mvcc_op op = {.type = MVCC_OP_META_PUT};
    op.u.meta_put.name = MEMBERTABLE_META_NAME;
    op.u.meta_put.value = (struct mvcc_bytes){buf, len};
    m->in_flight = j;
    rc = raftnode_propose(n, &op, m, on_job_proposed);
    free(buf);
    if (rc != 0) {
      m->in_flight = NULL;
      job_finish(m, j, rc, j->id);
    }
  }
}

static void fail_waiting(struct membership *m, int status) {
  while (m->head != NULL) {
    struct job *j = m->head;
    m->head = j->next;
    job_finish(m, j, status, j->id);
  }
  m->tail = NULL;
}

static void enqueue(struct membership *m, struct job *j, bool front) {
  m->n_jobs++;
  if (front) {
    j->next = m->head;
    m->head = j;
    if (m->tail == NULL) {
      m->tail = j;
    }
  } else {
    j->next = NULL;
    if (m->tail != NULL) {
      m->tail->next = j;
    } else {
      m->head = j;
    }
    m->tail = j;
  }
  kick(m);
}

/* The leader records its own attributes itself. */
static void self_publish(struct membership *m) {
  raftnode *n = m->n;
  if (m->self_publish_queued || raftnode_self_published(n)) {
    return;
  }
  struct job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    return;
  }
  j->kind = JOB_PUBLISH;
  j->internal = true;
  j->id = n->ids.self_id;
  j->name = dup_str(m->self_name);
  bool ok = j->name != NULL;
  for (size_t i = 0; ok && i < m->n_self_client_urls; i++) {
    ok = (j->urls[i] = dup_str(m->self_client_urls[i])) != NULL;
    j->n_urls = i + 1;
  }
  if (!ok) {
    job_free(j);
    return;
  }
  m->self_publish_queued = true;
  enqueue(m, j, false);
}

static void on_change(struct raft_change *req, int status) {
  struct membership *m = req->data;
  m->change_in_flight = false;
  if (status != 0) {
    fprintf(stderr, "cairn: raft: membership change: %s\n", raft_strerror(status));
    m->change_not_before_ms = uv_now(m->n->loop) + m->n->r->election_timeout;
  }
  kick(m);
}

/* Whether raft may drop the server at configuration index i, removed from
 * the table: libraft stops replicating to a server as soon as the change
 * is appended, so the member would never learn that the table removed it
 * (and would stop), and could disrupt the others with elections. So the
 * leader waits until it holds the table's entry and a few heartbeats told
 * it the entry committed, or until it looks down (two election timeouts
 * without catching up). The leader itself goes at once. */
static bool may_drop(struct membership *m, unsigned i) {
  raftnode *n = m->n;
  const struct raft_server *s = &n->r->configuration.servers[i];
  if (s->id == n->ids.self_id || n->r->leader_state.progress == NULL) {
    return true;
  }
  uint64_t since = uv_now(n->loop) - m->table_loaded_ms;
  bool has_it = n->r->leader_state.progress[i].match_index >= m->table_index;
  return (has_it && since >= 4u * n->r->heartbeat_timeout) ||
         since >= 2u * n->r->election_timeout;
}

/* One raft change toward the table, if one is due (see the top). */
static void reconcile(struct membership *m) {
  raftnode *n = m->n;
  if (!m->have_table || m->change_in_flight || uv_now(n->loop) < m->change_not_before_ms ||
      n->r->configuration_uncommitted_index != 0 || n->r->leader_state.promotee_id != 0) {
    return;
  }
  const struct membertable *t = m->table;
  int rv = 0;
  const char *what = NULL;
  uint64_t who = 0;
  m->change.data = m;
  for (size_t i = 0; i < t->n && what == NULL; i++) {
    const struct membertable_member *mm = &t->members[i];
    const struct raft_server *s = config_get(n, mm->id, NULL);
    who = mm->id;
    if (s == NULL) {
      char address[MEMBERID_ADDRESS_MAX];
      if (mm->n_peer_urls == 0 ||
          memberid_url_address(raft_url(mm), address, sizeof address) != 0) {
        continue;
      }
      what = "add";
      rv = raft_add(n->r, &m->change, mm->id, address, on_change);
    } else if (s->role == RAFT_SPARE) {
      what = "stand-by";
      rv = raft_assign(n->r, &m->change, mm->id, RAFT_STANDBY, on_change);
    } else if (!mm->is_learner && s->role == RAFT_STANDBY && in_sync(n, mm->id)) {
      what = "voter";
      rv = raft_assign(n->r, &m->change, mm->id, RAFT_VOTER, on_change);
    }
  }
  const struct raft_configuration *c = &n->r->configuration;
  for (unsigned i = 0; i < c->n && what == NULL; i++) {
    if (membertable_is_removed(t, c->servers[i].id) && may_drop(m, i)) {
      who = c->servers[i].id;
      what = "remove";
      rv = raft_remove(n->r, &m->change, who, on_change);
    }
  }
  if (what == NULL) {
    return;
  }
  if (rv == 0) {
    m->change_in_flight = true;
  } else {
    fprintf(stderr, "cairn: raft: membership change (%s %016" PRIx64 "): %s\n", what, who,
            raft_strerror(rv));
    m->change_not_before_ms = uv_now(n->loop) + n->r->election_timeout;
  }
}

static bool self_in_config(const raftnode *n) {
  return config_get(n, n->ids.self_id, NULL) != NULL;
}

static void on_tick(uv_timer_t *t) {
  struct membership *m = t->data;
  raftnode *n = m->n;
  if (n->state == NODE_CLOSING) {
    return;
  }
  if (n->state != NODE_RUNNING) {
    fail_waiting(m, CAIRN_ESTOPPED);
    return;
  }
  bool behind = n->fsm.store_state != FSM_STORE_CURRENT;
  if (m->store_was_behind && !behind) {
    load_from_store(m); /* a store fetched from another member: its table */
  }
  m->store_was_behind = behind;
  /* A removed member is told once it no longer leads (raft's change for it
   * committed) or was never the leader. */
  if (m->have_table && !m->removed_told && membertable_is_removed(m->table, n->ids.self_id) &&
      (raft_state(n->r) != RAFT_LEADER || !self_in_config(n))) {
    m->removed_told = true;
    fprintf(stderr, "cairn: raft: this member (%016" PRIx64 ") was removed from the cluster\n",
            n->ids.self_id);
    if (m->removed_cb != NULL) {
      m->removed_cb(m->removed_data);
    }
    if (n->state != NODE_RUNNING) {
      return;
    }
  }
  if (raft_state(n->r) != RAFT_LEADER) {
    fail_waiting(m, m->head != NULL ? raftnode_not_leader(n) : 0);
    return;
  }
  if (n->fsm.apply_error != 0 || !table_current(m)) {
    return;
  }
  if (!m->have_table && m->in_flight == NULL &&
      (m->head == NULL || m->head->kind != JOB_INIT)) {
    struct job *j = calloc(1, sizeof *j);
    if (j != NULL) {
      j->kind = JOB_INIT;
      j->internal = true;
      enqueue(m, j, true);
    }
  }
  if (m->have_table && !membertable_is_removed(m->table, n->ids.self_id)) {
    self_publish(m);
  }
  run_jobs(m);
  reconcile(m);
}

void membership_start(raftnode *n) {
  struct membership *m = n->mem;
  CAIRN_ASSERT(m != NULL && !m->started);
  uv_timer_init(n->loop, &m->tick);
  uv_timer_init(n->loop, &m->deliver_timer);
  m->tick.data = m->deliver_timer.data = m;
  n->handles_open += 2;
  m->started = true;
  m->connect = n->transport.connect;
  n->transport.connect = wrapped_connect;
  uv_timer_start(&m->tick, on_tick, MEMBERSHIP_TICK_MS, MEMBERSHIP_TICK_MS);
}

void membership_close_handles(raftnode *n, void (*cb)(uv_handle_t *h)) {
  struct membership *m = n->mem;
  if (m == NULL || !m->started) {
    return;
  }
  /* The node's close callback counts handles through h->data == n. */
  m->tick.data = m->deliver_timer.data = n;
  uv_close((uv_handle_t *)&m->tick, cb);
  uv_close((uv_handle_t *)&m->deliver_timer, cb);
}

void membership_free(raftnode *n) {
  struct membership *m = n->mem;
  if (m == NULL) {
    return;
  }
  fail_waiting(m, CAIRN_ESTOPPED);
  if (m->transfer_in_flight) {
    m->transfer_in_flight = false;
    push_done(m, m->transfer_cb, m->transfer_data, CAIRN_ESTOPPED, m->transfer.id);
  }
  deliver_all(m);
  table_release(&m->table);
  table_release(&m->initial);
  table_release(&m->derived);
  free(m->self_name);
  for (size_t i = 0; i < m->n_self_client_urls; i++) {
    free(m->self_client_urls[i]);
  }
  free(m);
  n->mem = NULL;
}

/* ---- the API ------------------------------------------------------------------ */

int raftnode_members(raftnode *n, struct raftnode_member_info **out, size_t *n_out) {
  CAIRN_ASSERT(n != NULL && n->mem != NULL && out != NULL && n_out != NULL);
  const struct membertable *t = current(n->mem);
  if (t == NULL) {
    return CAIRN_ENOMEM;
  }
  /* One block: the array, then the URL pointer arrays, then the strings. */
  size_t ptrs = 0, bytes = 0;
  for (size_t i = 0; i < t->n; i++) {
    const struct membertable_member *mm = &t->members[i];
    ptrs += mm->n_peer_urls + mm->n_client_urls;
    bytes += strlen(mm->name) + 1;
    for (size_t k = 0; k < mm->n_peer_urls; k++) {
      bytes += strlen(mm->peer_urls[k]) + 1;
    }
    for (size_t k = 0; k < mm->n_client_urls; k++) {
      bytes += strlen(mm->client_urls[k]) + 1;
    }
  }
  size_t head = t->n * sizeof(struct raftnode_member_info);
  char *block = malloc(head + ptrs * sizeof(char *) + bytes + 1);
  if (block == NULL) {
    return CAIRN_ENOMEM;
  }
  struct raftnode_member_info *info = (struct raftnode_member_info *)(void *)block;
  const char **p = (const char **)(void *)(block + head);
  char *s = block + head + ptrs * sizeof(char *);
#define COPY(dst, src)          \
  do {                          \
    size_t l_ = strlen(src) + 1; \
    memcpy(s, src, l_);         \
    (dst) = s;                  \
    s += l_;                    \
  } while (0)
  for (size_t i = 0; i < t->n; i++) {
    const struct membertable_member *mm = &t->members[i];
    info[i].id = mm->id;
    info[i].is_learner = mm->is_learner;
    COPY(info[i].name, mm->name);
    info[i].peer_urls = p;
    info[i].n_peer_urls = mm->n_peer_urls;
    for (size_t k = 0; k < mm->n_peer_urls; k++) {
      COPY(*p, mm->peer_urls[k]);
      p++;
    }
    info[i].client_urls = p;
    info[i].n_client_urls = mm->n_client_urls;
    for (size_t k = 0; k < mm->n_client_urls; k++) {
      COPY(*p, mm->client_urls[k]);
      p++;
    }
  }
#undef COPY
  *out = info;
  *n_out = t->n;
  return 0;
}

void raftnode_members_free(struct raftnode_member_info *members) {
  free(members);
}

int raftnode_member_client_url(raftnode *n, uint64_t id, char *buf, size_t cap) {
  CAIRN_ASSERT(n != NULL && n->mem != NULL && buf != NULL);
  const struct membertable *t = current(n->mem);
  const struct membertable_member *mm = t != NULL ? membertable_find(t, id) : NULL;
  if (mm == NULL) {
    return CAIRN_EMEMBER_NOT_FOUND;
  }
  if (mm->n_client_urls == 0 || strlen(mm->client_urls[0]) >= cap) {
    return CAIRN_EINVAL;
  }
  memcpy(buf, mm->client_urls[0], strlen(mm->client_urls[0]) + 1);
  return 0;
}

bool raftnode_self_published(raftnode *n) {
  struct membership *m = n->mem;
  if (!m->have_table) {
    return false;
  }
  const struct membertable_member *mm = membertable_find(m->table, n->ids.self_id);
  if (mm == NULL || strcmp(mm->name, m->self_name) != 0 ||
      mm->n_client_urls != m->n_self_client_urls) {
    return false;
  }
  for (size_t i = 0; i < mm->n_client_urls; i++) {
    if (strcmp(mm->client_urls[i], m->self_client_urls[i]) != 0) {
      return false;
    }
  }
  return true;
}

/* Checks that hold for every call; 0 when a job may be queued. */
static int may_queue(raftnode *n) {
  if (n->state != NODE_RUNNING) {
    return CAIRN_ESTOPPED;
  }
  if (raft_state(n->r) != RAFT_LEADER) {
    return raftnode_not_leader(n);
  }
  if (n->mem->n_jobs >= RAFTNODE_MEMBER_CALLS_MAX) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  return 0;
}

/* Peer URLs raft can dial (http(s)://<IPv4>:<port>), else etcd's bad URLs. */
static int check_peer_urls(const char *const *urls, size_t count) {
  if (count == 0 || count > MEMBERTABLE_URLS_MAX) {
    return CAIRN_EMEMBER_BAD_URLS;
  }
  for (size_t i = 0; i < count; i++) {
    char address[MEMBERID_ADDRESS_MAX];
    if (urls[i] == NULL || strlen(urls[i]) > MEMBERTABLE_STRING_MAX ||
        memberid_url_address(urls[i], address, sizeof address) != 0) {
      return CAIRN_EMEMBER_BAD_URLS;
    }
  }
  return 0;
}

static int new_job(raftnode *n, enum job_kind kind, uint64_t id, const char *name,
                   const char *const *urls, size_t count, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(cb != NULL);
  if (count > MEMBERTABLE_URLS_MAX) {
    return CAIRN_EINVAL;
  }
  struct job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    return CAIRN_ENOMEM;
  }
  j->kind = kind;
  j->id = id;
  j->cb = cb;
  j->data = data;
  bool ok = name == NULL || (j->name = dup_str(name)) != NULL;
  for (size_t i = 0; ok && i < count; i++) {
    ok = (j->urls[i] = dup_str(urls[i])) != NULL;
    j->n_urls = i + 1;
  }
  if (!ok) {
    job_free(j);
    return CAIRN_ENOMEM;
  }
  enqueue(n->mem, j, false);
  return 0;
}

int raftnode_publish(raftnode *n, uint64_t id, const char *name, const char *const *client_urls,
                     size_t n_client_urls, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL && name != NULL);
  int rc = may_queue(n);
  if (rc != 0) {
    return rc;
  }
  if (strlen(name) > MEMBERTABLE_STRING_MAX || n_client_urls > MEMBERTABLE_URLS_MAX) {
    return CAIRN_EINVAL;
  }
  for (size_t i = 0; i < n_client_urls; i++) {
    if (client_urls[i] == NULL || strlen(client_urls[i]) > MEMBERTABLE_STRING_MAX) {
      return CAIRN_EINVAL;
    }
  }
  return new_job(n, JOB_PUBLISH, id, name, client_urls, n_client_urls, data, cb);
}

int raftnode_member_add(raftnode *n, const char *const *peer_urls, size_t n_peer_urls,
                        bool is_learner, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL);
  int rc = may_queue(n);
  if (rc != 0) {
    return rc;
  }
  uint64_t id;
  if ((rc = check_peer_urls(peer_urls, n_peer_urls)) != 0 ||
      (rc = memberid_added(peer_urls, n_peer_urls, &id)) != 0) {
    return rc == CAIRN_ENOMEM ? rc : CAIRN_EMEMBER_BAD_URLS;
  }
  rc = new_job(n, JOB_ADD, id, NULL, peer_urls, n_peer_urls, data, cb);
  if (rc == 0) {
    n->mem->tail->is_learner = is_learner;
  }
  return rc;
}

int raftnode_member_remove(raftnode *n, uint64_t id, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL);
  int rc = may_queue(n);
  return rc != 0 ? rc : new_job(n, JOB_REMOVE, id, NULL, NULL, 0, data, cb);
}

int raftnode_member_update(raftnode *n, uint64_t id, const char *const *peer_urls,
                           size_t n_peer_urls, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL);
  int rc = may_queue(n);
  if (rc != 0) {
    return rc;
  }
  if ((rc = check_peer_urls(peer_urls, n_peer_urls)) != 0) {
    return rc;
  }
  return new_job(n, JOB_UPDATE, id, NULL, peer_urls, n_peer_urls, data, cb);
}

int raftnode_member_promote(raftnode *n, uint64_t id, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL);
  int rc = may_queue(n);
  return rc != 0 ? rc : new_job(n, JOB_PROMOTE, id, NULL, NULL, 0, data, cb);
}

static void on_transfer(struct raft_transfer *req) {
  struct membership *m = req->data;
  if (!m->transfer_in_flight) {
    return; /* answered at the stop already */
  }
  m->transfer_in_flight = false;
  raft_id leader = 0;
  const char *address = NULL;
  raft_leader(m->n->r, &leader, &address);
  push_done(m, m->transfer_cb, m->transfer_data,
            leader == req->id ? 0 : CAIRN_ETIMEOUT_LEADER_TRANSFER, req->id);
}

int raftnode_move_leader(raftnode *n, uint64_t target, void *data, raftnode_member_cb cb) {
  CAIRN_ASSERT(n != NULL && cb != NULL);
  struct membership *m = n->mem;
  if (n->state != NODE_RUNNING) {
    return CAIRN_ESTOPPED;
  }
  if (raft_state(n->r) != RAFT_LEADER) {
    return raftnode_not_leader(n);
  }
  const struct membertable *t = current(m);
  const struct membertable_member *mm = t != NULL ? membertable_find(t, target) : NULL;
  if (mm == NULL || mm->is_learner) {
    return CAIRN_EBAD_LEADER_TRANSFEREE;
  }
  if (target == n->ids.self_id) {
    push_done(m, cb, data, 0, target);
    return 0;
  }
  const struct raft_server *s = config_get(n, target, NULL);
  if (s == NULL || s->role != RAFT_VOTER) {
    return CAIRN_EBAD_LEADER_TRANSFEREE;
  }
  if (m->transfer_in_flight) {
    return CAIRN_ETOO_MANY_REQUESTS;
  }
  memset(&m->transfer, 0, sizeof m->transfer);
  m->transfer.data = m;
  int rv = raft_transfer(n->r, &m->transfer, target, on_transfer);
  if (rv != 0) {
    return rv == RAFT_BADID ? CAIRN_EBAD_LEADER_TRANSFEREE
           : rv == RAFT_NOTLEADER ? raftnode_not_leader(n)
                                  : CAIRN_EIO;
  }
  m->transfer_in_flight = true;
  m->transfer_cb = cb;
  m->transfer_data = data;
  return 0;
}

void raftnode_on_removed(raftnode *n, void (*cb)(void *data), void *data) {
  CAIRN_ASSERT(n != NULL && n->mem != NULL);
  n->mem->removed_cb = cb;
  n->mem->removed_data = data;
}
