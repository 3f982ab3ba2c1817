/* tests/unit/test_crash.c: crash safety of batches, compaction and defrag.
 *
 * A child process opens a store and applies deterministic batches 1, 2, ...
 * (each several puts, deletes and txns derived from the batch number and the
 * seed), continuing from the store's applied index, without checkpoints. The
 * parent kills it with SIGKILL at a random moment, reopens the store and
 * checks that it holds exactly batches 1..k for some k: the applied index is
 * the last op of batch k (never part of a batch), the current revision and
 * every key equal a model replay of batches 1..k, and k is the last batch the
 * child reported as applied (or the one after, if the kill came between the
 * commit and the report). Re-applying batch k is refused with CAIRN_EREPLAY
 * and changes nothing. Some rounds kill the child during mvcc_compact_step or
 * mvcc_defrag instead.
 *
 * A process kill loses nothing the kernel has (committed LMDB pages are in
 * the page cache), so every reported batch must survive; power loss is out of
 * scope here (that is what checkpoints are for). */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>

#include "storage/mvcc.h"
#include "test.h"

/* ---------------------------------------------------------------- batches */

#define CK 24             /* keys "key/00" .. "key/23" */
#define VAL_MAX 3000      /* bytes */
#define BATCH_OPS_MAX 6   /* ops per batch */
#define IDX_STRIDE 16     /* op j of batch i has raft index i * 16 + j + 1 */
#define COMPACT_EVERY 50  /* batch i % 50 == 0 is a compaction */
#define COMPACT_BEHIND 20 /* ... to the revision 20 below the current one */

enum cop_type { COP_PUT, COP_DEL, COP_DEL_PREFIX, COP_TXN, COP_COMPACT };

/* One op of a batch, derived from (seed, batch, op). */
struct cop {
  enum cop_type type;
  int key;        /* put / delete key; txn: the compared key */
  int key2, key3; /* txn: success puts key2 and deletes key3; failure puts key2 */
  int prefix;     /* COP_DEL_PREFIX: "key/<prefix>" */
  uint8_t val[VAL_MAX];
  size_t val_len;
  uint8_t val2[32]; /* txn failure value */
  size_t val2_len;
};

struct batch {
  uint64_t i;
  size_t n;
  struct cop ops[BATCH_OPS_MAX];
};

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

struct brng {
  uint64_t s;
};

static uint64_t brand(struct brng *r, uint64_t n) {
  r->s += 0x9e3779b97f4a7c15ull;
  return mix(r->s) % n;
}

static void gen_value(struct brng *r, uint8_t *p, size_t *len, size_t cap) {
  size_t n = brand(r, 10) == 0 ? 500 + brand(r, VAL_MAX - 500) : 1 + brand(r, 30);
  if (n > cap) {
    n = cap;
  }
  uint8_t base = (uint8_t)brand(r, 256);
  for (size_t i = 0; i < n; i++) {
    p[i] = (uint8_t)(base + i * 13);
  }
  *len = n;
}

static void gen_batch(uint64_t seed, uint64_t i, struct batch *b) {
  struct brng r = {mix(seed ^ mix(i + 1))};
  memset(b, 0, sizeof *b);
  b->i = i;
  if (i % COMPACT_EVERY == 0) {
    b->n = 1;
    b->ops[0].type = COP_COMPACT;
    return;
  }
  b->n = 1 + brand(&r, BATCH_OPS_MAX);
  for (size_t j = 0; j < b->n; j++) {
    struct cop *o = &b->ops[j];
    uint64_t x = j == 0 ? 0 : brand(&r, 100); /* the first op is a put */
    o->key = (int)brand(&r, CK);
    if (x < 50) {
      o->type = COP_PUT;
      gen_value(&r, o->val, &o->val_len, VAL_MAX);
    } else if (x < 65) {
      o->type = COP_DEL;
    } else if (x < 72) {
      o->type = COP_DEL_PREFIX;
      o->prefix = (int)brand(&r, 3);
    } else {
      o->type = COP_TXN;
      o->key2 = (int)brand(&r, CK);
      o->key3 = (o->key2 + 1 + (int)brand(&r, CK - 1)) % CK;
      gen_value(&r, o->val, &o->val_len, VAL_MAX);
      gen_value(&r, o->val2, &o->val2_len, sizeof o->val2);
    }
  }
}

static uint64_t batch_last_index(const struct batch *b) {
  return b->i * IDX_STRIDE + b->n;
}

/* ---------------------------------------------------------------- model */

struct mk {
  bool live;
  uint8_t val[VAL_MAX];
  size_t len;
  int64_t create, mod, version;
};

struct cmodel {
  struct mk k[CK];
  int64_t rev, compacted;
  uint64_t batch; /* batches 1..batch applied */
};

static void key_name(int k, char out[16]) {
  snprintf(out, 16, "key/%02d", k);
}

static void m_put(struct cmodel *m, int k, const uint8_t *v, size_t len, int64_t rev) {
  struct mk *x = &m->k[k];
  if (!x->live) {
    x->create = rev;
    x->version = 0;
  }
  x->live = true;
  memcpy(x->val, v, len);
  x->len = len;
  x->mod = rev;
  x->version++;
}

static void model_apply(struct cmodel *m, const struct batch *b) {
  CHECK_EQ_INT(b->i, m->batch + 1);
  for (size_t j = 0; j < b->n; j++) {
    const struct cop *o = &b->ops[j];
    int64_t w = m->rev + 1;
    bool wrote = false;
    switch (o->type) {
      case COP_PUT:
        m_put(m, o->key, o->val, o->val_len, w);
        wrote = true;
        break;
      case COP_DEL:
        wrote = m->k[o->key].live;
        m->k[o->key].live = false;
        break;
      case COP_DEL_PREFIX:
        for (int k = o->prefix * 10; k < CK && k < o->prefix * 10 + 10; k++) {
          wrote = wrote || m->k[k].live;
          m->k[k].live = false;
        }
        break;
      case COP_TXN:
        if (m->k[o->key].live && m->k[o->key].version > 0) {
          m_put(m, o->key2, o->val, o->val_len, w);
          m->k[o->key3].live = false;
        } else {
          m_put(m, o->key2, o->val2, o->val2_len, w);
        }
        wrote = true;
        break;
      case COP_COMPACT:
        m->compacted = m->rev - COMPACT_BEHIND;
        break;
    }
    if (wrote) {
      m->rev = w;
    }
  }
  m->batch = b->i;
}

/* ---------------------------------------------------------------- engine */

struct opbuf {
  struct mvcc_op ops[BATCH_OPS_MAX];
  struct mvcc_request_op succ[2], fail[1];
  struct mvcc_compare cmp[BATCH_OPS_MAX];
  struct mvcc_request_op tsucc[BATCH_OPS_MAX][2], tfail[BATCH_OPS_MAX][1];
  char names[BATCH_OPS_MAX][4][16];
};

static struct mvcc_bytes bytes_of(const void *p, size_t n) {
  struct mvcc_bytes b = {n ? p : NULL, n};
  return b;
}

/* The ops of batch b for the engine; compaction revisions come from the
 * store's current revision, as the model does. */
static void build_ops(mvcc_store *s, const struct batch *b, struct opbuf *ob) {
  memset(ob, 0, sizeof *ob);
  for (size_t j = 0; j < b->n; j++) {
    const struct cop *o = &b->ops[j];
    struct mvcc_op *op = &ob->ops[j];
    char *kn = ob->names[j][0], *k2 = ob->names[j][1], *k3 = ob->names[j][2],
         *pre = ob->names[j][3];
    key_name(o->key, kn);
    op->raft_index = b->i * IDX_STRIDE + j + 1;
    op->raft_term = 1 + b->i / 100;
    switch (o->type) {
      case COP_PUT:
        op->type = MVCC_OP_PUT;
        op->u.put.key = bytes_of(kn, strlen(kn));
        op->u.put.value = bytes_of(o->val, o->val_len);
        break;
      case COP_DEL:
        op->type = MVCC_OP_DELETE;
        op->u.del.key = bytes_of(kn, strlen(kn));
        break;
      case COP_DEL_PREFIX:
        op->type = MVCC_OP_DELETE;
        snprintf(pre, 16, "key/%d", o->prefix);
        op->u.del.key = bytes_of(pre, strlen(pre));
        /* prefix end: "key/<prefix+1>" */
        snprintf(k3, 16, "key/%d", o->prefix + 1);
        op->u.del.range_end = bytes_of(k3, strlen(k3));
        break;
      case COP_TXN: {
        key_name(o->key2, k2);
        key_name(o->key3, k3);
        op->type = MVCC_OP_TXN;
        struct mvcc_compare *c = &ob->cmp[j];
        c->target = MVCC_TARGET_VERSION;
        c->result = MVCC_CMP_GREATER;
        c->key = bytes_of(kn, strlen(kn));
        c->number = 0;
        struct mvcc_request_op *su = ob->tsucc[j], *fa = ob->tfail[j];
        su[0].type = MVCC_REQUEST_PUT;
        su[0].u.put.key = bytes_of(k2, strlen(k2));
        su[0].u.put.value = bytes_of(o->val, o->val_len);
        su[1].type = MVCC_REQUEST_DELETE;
        su[1].u.del.key = bytes_of(k3, strlen(k3));
        fa[0].type = MVCC_REQUEST_PUT;
        fa[0].u.put.key = bytes_of(k2, strlen(k2));
        fa[0].u.put.value = bytes_of(o->val2, o->val2_len);
        op->u.txn.compares = c;
        op->u.txn.n_compares = 1;
        op->u.txn.success = su;
        op->u.txn.n_success = 2;
        op->u.txn.failure = fa;
        op->u.txn.n_failure = 1;
        break;
      }
      case COP_COMPACT:
        op->type = MVCC_OP_COMPACT;
        op->u.compact_revision = mvcc_current_revision(s) - COMPACT_BEHIND;
        break;
    }
  }
}

/* Applies batch b; every op must succeed. */
static void apply_batch(mvcc_store *s, const struct batch *b) {
  static struct opbuf ob;
  struct mvcc_result res[BATCH_OPS_MAX];
  build_ops(s, b, &ob);
  CHECK_OK(mvcc_apply(s, ob.ops, b->n, res));
  for (size_t j = 0; j < b->n; j++) {
    CHECK_OK(res[j].err);
    mvcc_result_free(&res[j]);
  }
}

/* The store holds exactly the model's state. */
static void check_store(mvcc_store *s, const struct cmodel *m) {
  CHECK_EQ_INT(mvcc_current_revision(s), m->rev);
  CHECK_EQ_INT(mvcc_compacted_revision(s), m->compacted > 0 ? m->compacted : 0);
  static const uint8_t nul[1] = {0};
  struct mvcc_range_req rq;
  memset(&rq, 0, sizeof rq);
  rq.key = bytes_of(nul, 1);
  rq.range_end = bytes_of(nul, 1);
  struct mvcc_result res;
  memset(&res, 0, sizeof res);
  CHECK_OK(mvcc_range(s, &rq, &res));
  size_t j = 0;
  for (int k = 0; k < CK; k++) {
    const struct mk *x = &m->k[k];
    if (!x->live) {
      continue;
    }
    CHECK(j < res.u.range.n_kvs);
    const struct mvcc_kv *kv = &res.u.range.kvs[j++];
    char kn[16];
    key_name(k, kn);
    CHECK(kv->key.len == strlen(kn) && memcmp(kv->key.data, kn, kv->key.len) == 0);
    CHECK(kv->value.len == x->len && (x->len == 0 || memcmp(kv->value.data, x->val, x->len) == 0));
    CHECK_EQ_INT(kv->create_revision, x->create);
    CHECK_EQ_INT(kv->mod_revision, x->mod);
    CHECK_EQ_INT(kv->version, x->version);
    CHECK_EQ_INT(kv->lease, 0);
  }
  CHECK_EQ_INT(res.u.range.n_kvs, j);
  CHECK_EQ_INT(res.u.range.count, j);
  mvcc_result_free(&res);
}

/* ---------------------------------------------------------------- child */

enum msg_kind { MSG_BATCH = 1, MSG_STEP, MSG_DEFRAG };

struct msg {
  uint64_t kind;
  uint64_t value;
};

enum mode { MODE_BATCHES, MODE_COMPACT, MODE_DEFRAG };

static void send_msg(int fd, uint64_t kind, uint64_t value) {
  struct msg m = {kind, value};
  CHECK(write(fd, &m, sizeof m) == (ssize_t)sizeof m);
}

/* Runs until killed (or until batch max_batch, then exits 0). */
static void child_main(const char *dir, uint64_t seed, enum mode mode, int fd, uint64_t max_batch) {
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  uint64_t idx = mvcc_applied_index(s);
  uint64_t i = idx / IDX_STRIDE + 1;
  struct batch *b = malloc(sizeof *b);
  CHECK(b != NULL);
  for (; i <= max_batch; i++) {
    gen_batch(seed, i, b);
    apply_batch(s, b);
    send_msg(fd, MSG_BATCH, i);
    if (b->ops[0].type == COP_COMPACT) {
      bool done = false;
      while (!done) {
        if (mode == MODE_COMPACT) {
          send_msg(fd, MSG_STEP, i);
        }
        CHECK_OK(mvcc_compact_step(s, 2, &done));
      }
    }
    if (mode == MODE_DEFRAG && i % 7 == 0) {
      send_msg(fd, MSG_DEFRAG, i);
      CHECK_OK(mvcc_defrag(s));
    }
  }
  free(b);
  mvcc_close(s);
  _exit(0);
}

/* ---------------------------------------------------------------- parent */

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct round_stats {
  uint64_t last_reported; /* last batch the child reported applied */
  uint64_t last_kind;     /* the kind of the last message */
  bool trigger_seen;
  bool exited; /* the child finished on its own */
};

/* Reads what is in the pipe without blocking; returns false at EOF. */
static bool drain(int fd, struct round_stats *st, uint64_t trigger) {
  for (;;) {
    struct msg m;
    ssize_t n = read(fd, &m, sizeof m);
    if (n == 0) {
      return false;
    }
    if (n < 0) {
      CHECK(errno == EAGAIN || errno == EINTR);
      return true;
    }
    CHECK(n == (ssize_t)sizeof m); /* writes of 16 bytes are atomic */
    st->last_kind = m.kind;
    if (m.kind == MSG_BATCH) {
      CHECK(m.value > st->last_reported);
      st->last_reported = m.value;
    }
    if (m.kind == trigger) {
      st->trigger_seen = true;
    }
  }
}

/* Forks a child in mode, waits for its trigger message (a batch, a compaction
 * step, a defrag), lets it run for delay_us more and kills it. */
static struct round_stats run_child(const char *dir, uint64_t seed, enum mode mode,
                                    int64_t delay_us, uint64_t max_batch) {
  int p[2];
  CHECK(pipe(p) == 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    child_main(dir, seed, mode, p[1], max_batch);
  }
  close(p[1]);
  CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0);
  uint64_t trigger = mode == MODE_COMPACT ? MSG_STEP : mode == MODE_DEFRAG ? MSG_DEFRAG : MSG_BATCH;
  struct round_stats st = {0};
  int64_t start = now_us(), kill_at = INT64_MAX;
  bool open = true;
  while (open) {
    int64_t t = now_us();
    if (t >= kill_at) {
      break;
    }
    CHECK(t - start < 60 * 1000000); /* the trigger comes within seconds */
    struct pollfd pfd = {p[0], POLLIN, 0};
    int64_t wait_us = kill_at == INT64_MAX ? 100000 : kill_at - t;
    int to = (int)(wait_us / 1000);
    if (to == 0 && wait_us > 0) {
      /* Sub-millisecond delays: spin on the pipe. */
      open = drain(p[0], &st, trigger);
      continue;
    }
    CHECK(poll(&pfd, 1, to) >= 0 || errno == EINTR);
    open = drain(p[0], &st, trigger);
    if (st.trigger_seen && kill_at == INT64_MAX) {
      kill_at = now_us() + delay_us;
    }
  }
  if (open) {
    CHECK(kill(pid, SIGKILL) == 0);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (WIFSIGNALED(status)) {
    CHECK_EQ_INT(WTERMSIG(status), SIGKILL); /* not an abort in the child */
  } else {
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    st.exited = true;
  }
  drain(p[0], &st, trigger);
  close(p[0]);
  return st;
}

/* Reopens after a kill and checks the store against the model, which it
 * advances to the batch the store holds. Returns the open store. */
static mvcc_store *recover_and_check(const char *dir, uint64_t seed, struct cmodel *m,
                                     const struct round_stats *st) {
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  uint64_t idx = mvcc_applied_index(s);
  uint64_t k = idx / IDX_STRIDE;
  struct batch *b = malloc(sizeof *b);
  CHECK(b != NULL);
  /* Not a torn batch: the applied index is the last op of batch k. */
  if (k > 0) {
    gen_batch(seed, k, b);
    if (idx != batch_last_index(b)) {
      fprintf(stderr,
              "applied index %" PRIu64 " is inside batch %" PRIu64 " (last op %" PRIu64 ")\n", idx,
              k, batch_last_index(b));
      CHECK(idx == batch_last_index(b));
    }
  } else {
    CHECK_EQ_INT(idx, 0);
  }
  /* Every batch the child reported is there; at most one more. */
  if (!(k == st->last_reported || k == st->last_reported + 1)) {
    fprintf(stderr, "store holds batch %" PRIu64 ", child reported %" PRIu64 "\n", k,
            st->last_reported);
    CHECK(k == st->last_reported || k == st->last_reported + 1);
  }
  CHECK(k >= m->batch);
  while (m->batch < k) {
    gen_batch(seed, m->batch + 1, b);
    model_apply(m, b);
  }
  check_store(s, m);

  /* Re-applying batch k is refused op by op and changes nothing. */
  if (k > 0) {
    static struct opbuf ob;
    struct mvcc_result res[BATCH_OPS_MAX];
    gen_batch(seed, k, b);
    build_ops(s, b, &ob);
    CHECK_OK(mvcc_apply(s, ob.ops, b->n, res));
    for (size_t j = 0; j < b->n; j++) {
      CHECK_ERR(res[j].err, CAIRN_EREPLAY);
      mvcc_result_free(&res[j]);
    }
    CHECK_EQ_INT(mvcc_applied_index(s), idx);
    check_store(s, m);
  }
  free(b);
  return s;
}

static void test_crash_rounds(void) {
  uint64_t seed = test_rand();
  char *dir = test_tmpdir("crash");
  struct cmodel *m = calloc(1, sizeof *m);
  CHECK(m != NULL);
  m->rev = 1;
  int plain = test_small() ? 8 : 80;
  int compact = test_small() ? 3 : 12;
  int defrag = test_small() ? 3 : 12;
  int total = plain + compact + defrag;
  size_t torn_candidates = 0; /* kills that landed after an unreported commit */
  size_t killed_in_compaction = 0, killed_in_defrag = 0;
  for (int round = 0; round < total; round++) {
    enum mode mode = MODE_BATCHES;
    /* Interleave the special rounds among the plain ones. */
    if (round % 5 == 3 && compact > 0) {
      mode = MODE_COMPACT;
      compact--;
    } else if (round % 5 == 4 && defrag > 0) {
      mode = MODE_DEFRAG;
      defrag--;
    } else if (plain > 0) {
      plain--;
    } else if (compact > 0) {
      mode = MODE_COMPACT;
      compact--;
    } else {
      mode = MODE_DEFRAG;
      defrag--;
    }
    int64_t delay_us;
    switch (mode) {
      case MODE_COMPACT:
        delay_us = (int64_t)test_rand_below(3000);
        break;
      case MODE_DEFRAG:
        delay_us = (int64_t)test_rand_below(20000);
        break;
      default:
        delay_us = (int64_t)test_rand_below(40000);
        break;
    }
    struct round_stats st = run_child(dir, seed, mode, delay_us, UINT64_MAX);
    mvcc_store *s = recover_and_check(dir, seed, m, &st);
    torn_candidates += m->batch == st.last_reported + 1;
    if (mode != MODE_BATCHES) {
      /* A killed compaction goes on from where it stopped; a store whose
       * defrag was killed defrags again. Neither changes what reads see. */
      bool done = false;
      int steps = 0;
      for (; !done; steps++) {
        CHECK(steps < 1000000);
        CHECK_OK(mvcc_compact_step(s, 1, &done));
      }
      killed_in_compaction += st.last_kind == MSG_STEP && steps > 1;
      killed_in_defrag += st.last_kind == MSG_DEFRAG;
      check_store(s, m);
      if (mode == MODE_DEFRAG) {
        CHECK_OK(mvcc_defrag(s));
        check_store(s, m);
      }
    }
    mvcc_close(s);
  }
  printf("    %d rounds, %" PRIu64 " batches, revision %" PRId64
         ", %zu kills between a commit and its report, %zu during compaction, %zu during "
         "defrag\n",
         total, m->batch, m->rev, torn_candidates, killed_in_compaction, killed_in_defrag);

  /* And the store goes on: the next batches apply in this process. */
  mvcc_store *s = NULL;
  CHECK_OK(mvcc_open(dir, NULL, &s));
  struct batch *b = malloc(sizeof *b);
  CHECK(b != NULL);
  for (int i = 0; i < 3; i++) {
    gen_batch(seed, m->batch + 1, b);
    apply_batch(s, b);
    model_apply(m, b);
  }
  check_store(s, m);
  mvcc_close(s);
  free(b);
  free(m);
  test_rmdir(dir);
}

/* A kill right after fork, often during the very first mvcc_open (creating
 * the file) or the first batch: the directory must open afterwards. */
static void test_crash_during_create(void) {
  int rounds = test_small() ? 3 : 10;
  for (int r = 0; r < rounds; r++) {
    char *dir = test_tmpdir("crash-create");
    uint64_t seed = test_rand();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      int devnull = open("/dev/null", O_WRONLY);
      CHECK(devnull >= 0);
      child_main(dir, seed, MODE_BATCHES, devnull, UINT64_MAX);
    }
    struct timespec ts = {0, (long)test_rand_below(3000) * 1000};
    nanosleep(&ts, NULL);
    CHECK(kill(pid, SIGKILL) == 0);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    struct cmodel *m = calloc(1, sizeof *m);
    CHECK(m != NULL);
    m->rev = 1;
    struct round_stats st = {0};
    mvcc_store *s = NULL;
    CHECK_OK(mvcc_open(dir, NULL, &s));
    st.last_reported = mvcc_applied_index(s) / IDX_STRIDE; /* no reports here */
    mvcc_close(s);
    s = recover_and_check(dir, seed, m, &st);
    mvcc_close(s);
    free(m);
    test_rmdir(dir);
  }
}

int main(void) {
  test_seed("test_crash");
  TEST_RUN(test_crash_during_create);
  TEST_RUN(test_crash_rounds);
  return 0;
}
