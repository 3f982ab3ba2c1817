/* storage/mvcc.c: opening the store, batches, meta, records and the arena. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/mvcc_int.h"

/* ---- arena ---------------------------------------------------------------- */

/* Chunks start small (a single-key result is one small allocation) and
 * double, up to 1 MiB, as a result grows. */
#define ARENA_CHUNK_MIN 256u

struct mvcc_arena {
  struct mvcc_arena *next;
  size_t used;
  size_t cap;
  _Alignas(16) unsigned char data[];
};

void *arena_alloc(struct mvcc_arena **a, size_t n) {
  n = (n + 15u) & ~(size_t)15u;
  if (*a == NULL || (*a)->cap - (*a)->used < n) {
    size_t cap = n > ARENA_CHUNK_MIN ? n : ARENA_CHUNK_MIN;
    if (*a != NULL && cap < (*a)->cap * 2 && (*a)->cap < (1u << 20)) {
      cap = (*a)->cap * 2;
    }
    struct mvcc_arena *c = malloc(sizeof *c + cap);
    if (c == NULL) {
      return NULL;
    }
    c->next = *a;
    c->used = 0;
    c->cap = cap;
    *a = c;
  }
  void *p = (*a)->data + (*a)->used;
  (*a)->used += n;
  return p;
}

void *arena_dup(struct mvcc_arena **a, const void *p, size_t n) {
  void *d = arena_alloc(a, n ? n : 1);
  if (d != NULL && n > 0) {
    memcpy(d, p, n);
  }
  return d;
}

void arena_free(struct mvcc_arena *a) {
  while (a != NULL) {
    struct mvcc_arena *next = a->next;
    free(a);
    a = next;
  }
}

void mvcc_result_free(struct mvcc_result *r) {
  if (r == NULL) {
    return;
  }
  arena_free(r->arena);
  memset(r, 0, sizeof *r);
}

void mvcc_feed_free(struct mvcc_feed *f) {
  if (f == NULL) {
    return;
  }
  arena_free(f->arena);
  memset(f, 0, sizeof *f);
}

/* ---- encoding ------------------------------------------------------------- */

void u64_be(uint8_t out[8], uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    out[i] = (uint8_t)(v & 0xffu);
    v >>= 8;
  }
}

static uint64_t be_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) {
    v = (v << 8) | p[i];
  }
  return v;
}

void hist_key(uint8_t out[HIST_KEY_LEN], struct pos p) {
  CAIRN_ASSERT(p.rev >= 0);
  u64_be(out, (uint64_t)p.rev);
  out[8] = (uint8_t)(p.sub >> 24);
  out[9] = (uint8_t)(p.sub >> 16);
  out[10] = (uint8_t)(p.sub >> 8);
  out[11] = (uint8_t)p.sub;
}

struct pos hist_pos(const MDB_val *k) {
  CAIRN_ASSERT(k->mv_size == HIST_KEY_LEN);
  const uint8_t *p = k->mv_data;
  struct pos r;
  r.rev = (int64_t)be_u64(p);
  r.sub = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
  return r;
}

size_t rec_size(const struct rec_hdr *h) {
  return sizeof *h + h->key_len + h->value_len;
}

void rec_encode(void *dst, const struct rec_hdr *h, const void *key, const void *value) {
  CAIRN_ASSERT(h->type == REC_PUT || h->type == REC_DEL);
  CAIRN_ASSERT(h->mod_rev > 0 && h->prev_rev < h->mod_rev);
  unsigned char *d = dst;
  memcpy(d, h, sizeof *h);
  if (h->key_len) {
    memcpy(d + sizeof *h, key, h->key_len);
  }
  if (h->value_len) {
    memcpy(d + sizeof *h + h->key_len, value, h->value_len);
  }
}

/* Checks what was read from disk before anything trusts it: a malformed
 * record is CAIRN_ECORRUPT, never a crash. */
int rec_decode(const MDB_val *v, bool with_key, struct rec *out) {
  if (v->mv_size < sizeof out->h) {
    return CAIRN_ECORRUPT;
  }
  memcpy(&out->h, v->mv_data, sizeof out->h);
  const struct rec_hdr *h = &out->h;
  /* A key's versions form a chain of strictly decreasing revisions: that is
   * what bounds every walk along it, so it is checked here. */
  if ((h->type != REC_PUT && h->type != REC_DEL) || (!with_key && h->key_len != 0) ||
      h->key_len > MVCC_MAX_KEY_BYTES ||
      (uint64_t)sizeof *h + h->key_len + h->value_len != v->mv_size || h->mod_rev <= 0 ||
      h->prev_rev < 0 || h->prev_rev >= h->mod_rev ||
      (h->type == REC_PUT && (h->create_rev <= 0 || h->create_rev > h->mod_rev || h->version <= 0)) ||
      (h->type == REC_DEL && h->value_len != 0)) {
    return CAIRN_ECORRUPT;
  }
  const uint8_t *p = (const uint8_t *)v->mv_data + sizeof *h;
  out->key = p;
  out->value = p + h->key_len;
  return 0;
}

int lmdb_err(int rc, const char *what) {
  switch (rc) {
    case 0:
      return 0;
    case ENOMEM:
      return CAIRN_ENOMEM;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
    case MDB_BAD_TXN:
      fprintf(stderr, "cairn: storage: %s: %s\n", what, mdb_strerror(rc));
      return CAIRN_ECORRUPT;
    case MDB_MAP_FULL:
      return CAIRN_ENOSPACE;
    case MDB_BAD_VALSIZE:
      return CAIRN_ETOO_LARGE;
    default:
      fprintf(stderr, "cairn: storage: %s: %s\n", what, mdb_strerror(rc));
      return CAIRN_EIO;
  }
}

/* ---- meta ----------------------------------------------------------------- */

int meta_put_raw(MDB_txn *txn, MDB_dbi dbi, const char *name, const void *p, size_t n) {
  MDB_val k = {strlen(name), (void *)name};
  MDB_val v = {n, (void *)p};
  return mdb_put(txn, dbi, &k, &v, 0);
}

int meta_get_fixed(MDB_txn *txn, MDB_dbi dbi, const char *name, void *out, size_t n) {
  MDB_val k = {strlen(name), (void *)name};
  MDB_val v;
  int rc = mdb_get(txn, dbi, &k, &v);
  if (rc != 0) {
    return rc;
  }
  if (v.mv_size != n) {
    return MDB_CORRUPTED;
  }
  memcpy(out, v.mv_data, n);
  return 0;
}

int mvcc_meta_get(mvcc_store *s, const char *name, void *buf, size_t cap, size_t *len) {
  char full[MVCC_META_NAME_MAX + 3];
  if (strlen(name) > MVCC_META_NAME_MAX) {
    return CAIRN_EINVAL;
  }
  snprintf(full, sizeof full, "u/%s", name);
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  MDB_val k = {strlen(full), full};
  MDB_val v;
  int mrc = mdb_get(c.txn, s->dbi_meta, &k, &v);
  if (mrc == MDB_NOTFOUND) {
    rc = CAIRN_EKEY_NOT_FOUND;
  } else if (mrc != 0) {
    rc = lmdb_err(mrc, "meta get");
  } else {
    memcpy(buf, v.mv_data, v.mv_size < cap ? v.mv_size : cap);
    *len = v.mv_size;
  }
  ctx_read_end(s, &c);
  return rc;
}

/* ---- open and close ------------------------------------------------------- */

static int store_load(mvcc_store *s, MDB_txn *txn) {
  struct meta_state ms;
  struct meta_compact_pos cp;
  int rc = meta_get_fixed(txn, s->dbi_meta, "state", &ms, sizeof ms);
  if (rc == 0) {
    rc = meta_get_fixed(txn, s->dbi_meta, "compact_pos", &cp, sizeof cp);
  }
  if (rc != 0) {
    return rc;
  }
  if (ms.rev < 1 || ms.compact_rev < 0 || ms.compact_rev > ms.rev || cp.rev < 0 || cp.sub < 0 ||
      cp.sub > UINT32_MAX) {
    return MDB_CORRUPTED;
  }
  s->rev = ms.rev;
  s->compact_rev = ms.compact_rev;
  s->applied_index = ms.applied_index;
  s->applied_term = ms.applied_term;
  s->compact_pos = (struct pos){cp.rev, (uint32_t)cp.sub};
  return 0;
}

static int store_init_meta(mvcc_store *s, MDB_txn *txn) {
  struct meta_state ms = {.rev = 1};
  struct meta_compact_pos cp = {0, 0};
  int rc;
  if ((rc = meta_put_raw(txn, s->dbi_meta, "format", MVCC_FORMAT, strlen(MVCC_FORMAT))) != 0 ||
      (rc = meta_put_raw(txn, s->dbi_meta, "state", &ms, sizeof ms)) != 0 ||
      (rc = meta_put_raw(txn, s->dbi_meta, "compact_pos", &cp, sizeof cp)) != 0) {
    return rc;
  }
  return 0;
}

/* Opens the named databases. A store is either brand new (the main database
 * is empty: create everything) or must hold our format marker. */
static int store_open_dbs(mvcc_store *s) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (rc != 0) {
    return lmdb_err(rc, "begin");
  }
  MDB_dbi main_dbi;
  MDB_stat st;
  if ((rc = mdb_dbi_open(txn, NULL, 0, &main_dbi)) != 0 ||
      (rc = mdb_stat(txn, main_dbi, &st)) != 0) {
    mdb_txn_abort(txn);
    return lmdb_err(rc, "open main database");
  }
  bool fresh = st.ms_entries == 0;
  unsigned fl = fresh ? MDB_CREATE : 0;
  static const char *names[] = {"kv", "hist", "lease", "lease_keys", "meta"};
  MDB_dbi *dbis[] = {&s->dbi_kv, &s->dbi_hist, &s->dbi_lease, &s->dbi_lease_keys, &s->dbi_meta};
  for (size_t i = 0; i < 5; i++) {
    unsigned extra = i == 3 ? MDB_DUPSORT : 0;
    rc = mdb_dbi_open(txn, names[i], fl | extra, dbis[i]);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
      mdb_txn_abort(txn);
      return CAIRN_EFOREIGN_FILE;
    }
    if (rc != 0) {
      mdb_txn_abort(txn);
      return lmdb_err(rc, "open database");
    }
  }
  if (fresh) {
    rc = store_init_meta(s, txn);
  } else {
    MDB_val k = {6, "format"}, v;
    rc = mdb_get(txn, s->dbi_meta, &k, &v);
    if (rc == MDB_NOTFOUND || (rc == 0 && (v.mv_size != strlen(MVCC_FORMAT) ||
                                           memcmp(v.mv_data, MVCC_FORMAT, v.mv_size) != 0))) {
      mdb_txn_abort(txn);
      return CAIRN_EFOREIGN_FILE;
    }
  }
  if (rc == 0) {
    rc = store_load(s, txn);
    if (rc == MDB_NOTFOUND || rc == MDB_CORRUPTED) {
      mdb_txn_abort(txn);
      return CAIRN_EFOREIGN_FILE;
    }
  }
  if (rc != 0) {
    mdb_txn_abort(txn);
    return lmdb_err(rc, "load meta");
  }
  rc = mdb_txn_commit(txn);
  return lmdb_err(rc, "commit meta");
}

/* ---- sync marker ---------------------------------------------------------- */

struct sync_marker {
  char magic[16];
  char boot[40];
  uint64_t txnid;
};
CAIRN_STATIC_ASSERT(sizeof(struct sync_marker) == MVCC_SYNC_MARKER_BYTES, "marker layout");
#define SYNC_MARKER_MAGIC "cairn-synced-1"

/* The machine's boot id; empty when unknown. */
static void boot_id(char out[40]) {
  memset(out, 0, 40);
  const char *env = getenv("CAIRN_BOOT_ID");
  if (env != NULL) {
    snprintf(out, 40, "%s", env);
    return;
  }
  FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
  if (f == NULL) {
    return;
  }
  if (fgets(out, 40, f) == NULL) {
    out[0] = 0;
  }
  fclose(f);
  out[strcspn(out, "\n")] = 0;
}

void mvcc_sync_marker(mvcc_store *s, uint8_t buf[MVCC_SYNC_MARKER_BYTES]) {
  struct sync_marker m;
  memset(&m, 0, sizeof m);
  memcpy(m.magic, SYNC_MARKER_MAGIC, sizeof SYNC_MARKER_MAGIC);
  boot_id(m.boot);
  MDB_envinfo info;
  m.txnid = mdb_env_info(s->env, &info) == 0 ? (uint64_t)info.me_last_txnid : 0;
  memcpy(buf, &m, sizeof m);
}

void mvcc_sync_marker_full(uint8_t buf[MVCC_SYNC_MARKER_BYTES]) {
  struct sync_marker m;
  memset(&m, 0, sizeof m);
  memcpy(m.magic, SYNC_MARKER_MAGIC, sizeof SYNC_MARKER_MAGIC);
  boot_id(m.boot);
  m.txnid = UINT64_MAX;
  memcpy(buf, &m, sizeof m);
}

int mvcc_sync_marker_fd(const mvcc_store *s) {
  return s->marker_fd;
}

/* Syncs the data file, then writes and syncs the marker (blocking). */
static int marker_sync_now(mvcc_store *s) {
  int rc = mdb_env_sync(s->env, 1);
  if (rc != 0) {
    return lmdb_err(rc, "sync");
  }
  uint8_t buf[MVCC_SYNC_MARKER_BYTES];
  mvcc_sync_marker(s, buf);
  if (pwrite(s->marker_fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf ||
      fdatasync(s->marker_fd) != 0) {
    fprintf(stderr, "cairn: storage: write %s/%s: %s\n", s->dir, MVCC_SYNC_MARKER_FILE,
            strerror(errno));
    return CAIRN_EIO;
  }
  return 0;
}

/* Refuses a data file that holds transactions written in an earlier boot of
 * the machine and never synced: a machine crash may have torn them. */
static int marker_check(mvcc_store *s) {
  struct sync_marker m;
  memset(&m, 0, sizeof m);
  ssize_t n = pread(s->marker_fd, &m, sizeof m, 0);
  if (n != (ssize_t)sizeof m || memcmp(m.magic, SYNC_MARKER_MAGIC, sizeof SYNC_MARKER_MAGIC) != 0) {
    /* No marker: a new store, or a file that is not ours (the format check
     * that follows tells), or a marker lost by hand: nothing to compare. */
    return 0;
  }
  m.boot[sizeof m.boot - 1] = 0;
  char boot[40];
  boot_id(boot);
  MDB_envinfo info;
  int rc = mdb_env_info(s->env, &info);
  if (rc != 0) {
    return lmdb_err(rc, "env info");
  }
  if (boot[0] != 0 && strcmp(boot, m.boot) != 0 && (uint64_t)info.me_last_txnid > m.txnid) {
    fprintf(stderr,
            "cairn: storage: %s: transactions up to %zu were written in an earlier boot and "
            "synced only up to %llu; a machine crash may have torn them\n",
            s->dir, info.me_last_txnid, (unsigned long long)m.txnid);
    return CAIRN_EUNSYNCED;
  }
  return 0;
}

static int store_env_open(mvcc_store *s) {
  char path[4096];
  struct stat st;
  snprintf(path, sizeof path, "%s/%s", s->dir, MVCC_DATA_FILE);
  if (stat(path, &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      fprintf(stderr, "cairn: storage: %s is not a regular file\n", path);
      return CAIRN_EIO;
    }
    /* Room to grow: twice the file, at least 64 MiB, at most the maximum. */
    size_t want = (size_t)st.st_size * 2;
    if (want > s->map_size) {
      s->map_size = want < s->map_size_max ? want : s->map_size_max;
    }
  }
  int rc = mdb_env_create(&s->env);
  if (rc != 0) {
    return lmdb_err(rc, "env create");
  }
  if ((rc = mdb_env_set_maxdbs(s->env, MVCC_MAXDBS)) != 0 ||
      (rc = mdb_env_set_mapsize(s->env, s->map_size)) != 0) {
    mdb_env_close(s->env);
    s->env = NULL;
    return lmdb_err(rc, "env setup");
  }
  /* MDB_NOSYNC: the raft log is the durable record; checkpoints sync the file
   * (storage/checkpoint.h). MDB_NOTLS: read transactions are not tied to a
   * thread, so snapshot exports can run in the thread pool. */
  rc = mdb_env_open(s->env, s->dir, MDB_NOSYNC | MDB_NOTLS, 0644);
  if (rc != 0) {
    int err = (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH) ? CAIRN_EFOREIGN_FILE : CAIRN_EIO;
    fprintf(stderr, "cairn: storage: open %s: %s\n", s->dir, mdb_strerror(rc));
    mdb_env_close(s->env);
    s->env = NULL;
    return err;
  }
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  /* LMDB trusts its meta page: a file shorter than the pages it names
   * (truncated, an interrupted copy) would fault on first touch. */
  MDB_envinfo info;
  MDB_stat est;
  if (mdb_env_info(s->env, &info) == 0 && mdb_env_stat(s->env, &est) == 0 &&
      stat(path, &st) == 0 &&
      ((uint64_t)info.me_last_pgno + 1) * est.ms_psize > (uint64_t)st.st_size &&
      info.me_last_txnid > 0) {
    fprintf(stderr, "cairn: storage: %s: the file is shorter (%lld bytes) than its pages (%llu)\n",
            path, (long long)st.st_size,
            (unsigned long long)(((uint64_t)info.me_last_pgno + 1) * est.ms_psize));
    mdb_env_close(s->env);
    s->env = NULL;
    return CAIRN_ECORRUPT;
  }
  snprintf(path, sizeof path, "%s/%s", s->dir, MVCC_SYNC_MARKER_FILE);
  s->marker_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (s->marker_fd < 0) {
    fprintf(stderr, "cairn: storage: open %s: %s\n", path, strerror(errno));
    rc = CAIRN_EIO;
  } else {
    rc = marker_check(s);
  }
  if (rc == 0) {
    rc = store_open_dbs(s);
  }
  /* From here on the marker speaks for this boot. */
  if (rc == 0) {
    rc = marker_sync_now(s);
  }
  if (rc == 0) {
    store_map_changed(s);
  }
  if (rc != 0) {
    if (s->marker_fd >= 0) {
      close(s->marker_fd);
    }
    s->marker_fd = -1;
    mdb_env_close(s->env);
    s->env = NULL;
  }
  return rc;
}

int mvcc_open(const char *dir, const struct mvcc_options *opts, mvcc_store **out) {
  if (dir == NULL || out == NULL) {
    return CAIRN_EINVAL;
  }
  mvcc_store *s = calloc(1, sizeof *s);
  if (s == NULL) {
    return CAIRN_ENOMEM;
  }
  if (opts != NULL) {
    s->opts = *opts;
  }
  if (s->opts.quota_bytes == 0) {
    s->opts.quota_bytes = MVCC_QUOTA_BYTES_DEFAULT;
  }
  if (s->opts.max_txn_ops == 0) {
    s->opts.max_txn_ops = MVCC_MAX_TXN_OPS_DEFAULT;
  }
  if (s->opts.max_value_bytes == 0) {
    s->opts.max_value_bytes = MVCC_MAX_VALUE_BYTES_DEFAULT;
  }
  /* The map may exceed the quota by a margin so that deletes, compaction and
   * defragmentation still work when the quota is reached. */
  uint64_t margin = s->opts.quota_bytes / 2;
  if (margin < (64u << 20)) {
    margin = 64u << 20;
  }
  s->map_size_max = (size_t)(s->opts.quota_bytes + margin);
  s->map_size = 64u << 20;
  if (s->map_size > s->map_size_max) {
    s->map_size = s->map_size_max;
  }
  s->marker_fd = -1;
  s->uffd = -1;
  s->dir = strdup(dir);
  if (s->dir == NULL) {
    free(s);
    return CAIRN_ENOMEM;
  }
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "cairn: storage: mkdir %s: %s\n", dir, strerror(errno));
    free(s->dir);
    free(s);
    return CAIRN_EIO;
  }
  pthread_mutex_init(&s->export_lock, NULL);
  int rc = store_env_open(s);
  if (rc != 0) {
    pthread_mutex_destroy(&s->export_lock);
    free(s->dir);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

void store_drop_rtxn(mvcc_store *s) {
  if (s->rtxn != NULL) {
    mdb_txn_abort(s->rtxn);
    s->rtxn = NULL;
  }
  s->rtxn_live = false;
}

void store_park_rtxn(mvcc_store *s) {
  if (s->rtxn != NULL && s->rtxn_live) {
    mdb_txn_reset(s->rtxn);
  }
  s->rtxn_live = false;
}

void mvcc_close(mvcc_store *s) {
  if (s == NULL) {
    return;
  }
  store_drop_rtxn(s);
  if (s->env != NULL) {
    marker_sync_now(s); /* a failure was reported; the next open checks */
    mdb_env_close(s->env);
  }
  if (s->marker_fd >= 0) {
    close(s->marker_fd);
  }
  if (s->uffd >= 0) {
    close(s->uffd);
  }
  pthread_mutex_destroy(&s->export_lock);
  free(s->dir);
  free(s);
}

/* Closes and reopens the environment (after a defragmentation replaced the
 * file). */
int store_reopen(mvcc_store *s) {
  store_drop_rtxn(s);
  s->map_exact = false;
  s->map_start = s->map_end = 0; /* mdb_env_close() unmaps it */
  mdb_env_close(s->env);
  s->env = NULL;
  close(s->marker_fd);
  s->marker_fd = -1;
  return store_env_open(s);
}

/* Grows the map after MDB_MAP_FULL. Only possible while no other thread has a
 * read transaction open (LMDB's rule for mdb_env_set_mapsize). */
int store_grow_map(mvcc_store *s) {
  if (s->map_size >= s->map_size_max) {
    return CAIRN_ENOSPACE;
  }
  if (pthread_mutex_trylock(&s->export_lock) != 0) {
    return CAIRN_EBUSY;
  }
  size_t want = s->map_size * 2;
  if (want > s->map_size_max) {
    want = s->map_size_max;
  }
  store_drop_rtxn(s);
  int rc = mdb_env_set_mapsize(s->env, want);
  pthread_mutex_unlock(&s->export_lock);
  if (rc != 0) {
    return lmdb_err(rc, "grow map");
  }
  s->map_size = want;
  store_map_changed(s);
  return 0;
}

/* ---- state ---------------------------------------------------------------- */

int64_t mvcc_current_revision(const mvcc_store *s) {
  return s->rev;
}
int64_t mvcc_compacted_revision(const mvcc_store *s) {
  return s->compact_rev;
}
uint64_t mvcc_applied_index(const mvcc_store *s) {
  return s->applied_index;
}
uint64_t mvcc_applied_term(const mvcc_store *s) {
  return s->applied_term;
}
int mvcc_fd(const mvcc_store *s) {
  int fd = -1;
  if (mdb_env_get_fd(s->env, &fd) != 0) {
    return -1;
  }
  return fd;
}

int mvcc_size(mvcc_store *s, uint64_t *db_size, uint64_t *in_use) {
  MDB_envinfo info;
  MDB_stat st;
  int rc = mdb_env_info(s->env, &info);
  if (rc == 0) {
    rc = mdb_env_stat(s->env, &st);
  }
  if (rc != 0) {
    return lmdb_err(rc, "env info");
  }
  uint64_t psize = st.ms_psize;
  if (db_size != NULL) {
    *db_size = ((uint64_t)info.me_last_pgno + 1) * psize;
  }
  if (in_use != NULL) {
    struct ctx c;
    rc = ctx_read_begin(s, &c);
    if (rc != 0) {
      return rc;
    }
    uint64_t pages = 4; /* two meta pages, the main and free database roots */
    MDB_dbi dbis[] = {s->dbi_kv, s->dbi_hist, s->dbi_lease, s->dbi_lease_keys, s->dbi_meta};
    for (size_t i = 0; i < 5 && rc == 0; i++) {
      int mrc = mdb_stat(c.txn, dbis[i], &st);
      if (mrc != 0) {
        rc = lmdb_err(mrc, "stat");
        break;
      }
      pages += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
    }
    ctx_read_end(s, &c);
    *in_use = pages * psize;
    /* The estimate counts roots that a compact copy may not have written. */
    uint64_t file = ((uint64_t)info.me_last_pgno + 1) * psize;
    if (*in_use > file) {
      *in_use = file;
    }
  }
  return rc;
}

/* ---- checks --------------------------------------------------------------- */

static int check_key(const mvcc_store *s, struct mvcc_bytes key) {
  (void)s;
  if (key.len == 0) {
    return CAIRN_EEMPTY_KEY;
  }
  return 0;
}

static int check_request(const mvcc_store *s, const struct mvcc_request_op *op, uint32_t depth);

static int check_txn(const mvcc_store *s, const struct mvcc_txn_req *t, uint32_t depth) {
  size_t opc = t->n_compares;
  if (opc < t->n_success) {
    opc = t->n_success;
  }
  if (opc < t->n_failure) {
    opc = t->n_failure;
  }
  if (opc > s->opts.max_txn_ops) {
    return CAIRN_ETOO_MANY_OPS;
  }
  /* Nesting is bounded so that recursion over a request is bounded too. */
  if (depth > s->opts.max_txn_ops) {
    return CAIRN_ETOO_MANY_OPS;
  }
  for (size_t i = 0; i < t->n_compares; i++) {
    int rc = check_key(s, t->compares[i].key);
    if (rc != 0) {
      return rc;
    }
    if (t->compares[i].target > MVCC_TARGET_LEASE || t->compares[i].result > MVCC_CMP_NOT_EQUAL) {
      return CAIRN_EINVAL;
    }
  }
  for (size_t i = 0; i < t->n_success; i++) {
    int rc = check_request(s, &t->success[i], depth + 1);
    if (rc != 0) {
      return rc;
    }
  }
  for (size_t i = 0; i < t->n_failure; i++) {
    int rc = check_request(s, &t->failure[i], depth + 1);
    if (rc != 0) {
      return rc;
    }
  }
  return 0;
}

static int check_put(const mvcc_store *s, const struct mvcc_put_req *p) {
  int rc = check_key(s, p->key);
  if (rc != 0) {
    return rc;
  }
  if (p->ignore_value && p->value.len != 0) {
    return CAIRN_EVALUE_PROVIDED;
  }
  if (p->ignore_lease && p->lease != 0) {
    return CAIRN_ELEASE_PROVIDED;
  }
  if (p->key.len > MVCC_MAX_KEY_BYTES || p->value.len > s->opts.max_value_bytes) {
    return CAIRN_ETOO_LARGE;
  }
  return 0;
}

static int check_request(const mvcc_store *s, const struct mvcc_request_op *op, uint32_t depth) {
  switch (op->type) {
    case MVCC_REQUEST_RANGE:
      return check_key(s, op->u.range.key);
    case MVCC_REQUEST_PUT:
      return check_put(s, &op->u.put);
    case MVCC_REQUEST_DELETE:
      return check_key(s, op->u.del.key);
    case MVCC_REQUEST_TXN:
      if (op->u.txn == NULL) {
        return CAIRN_EKEY_NOT_FOUND;
      }
      return check_txn(s, op->u.txn, depth);
    case MVCC_REQUEST_NONE:
    default:
      return CAIRN_EKEY_NOT_FOUND;
  }
}

/* Duplicate keys (etcd's rule): within one branch list, a key put twice, or
 * put and covered by a delete, at this level or in nested txns, is refused;
 * a key put in both branches of one nested txn is fine (only one runs). */
struct key_set {
  struct mvcc_bytes *v;
  size_t n, cap;
};
struct del_set {
  struct mvcc_delete_req *v; /* key and range_end only */
  size_t n, cap;
};

static int set_push(void **v, size_t *n, size_t *cap, size_t elem, const void *x) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 16;
    void *nv = realloc(*v, nc * elem);
    if (nv == NULL) {
      return CAIRN_ENOMEM;
    }
    *v = nv;
    *cap = nc;
  }
  memcpy((char *)*v + *n * elem, x, elem);
  (*n)++;
  return 0;
}

static bool bytes_eq(struct mvcc_bytes a, struct mvcc_bytes b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

static bool dels_cover(const struct del_set *d, struct mvcc_bytes k) {
  MDB_val kv = {k.len, (void *)k.data};
  for (size_t i = 0; i < d->n; i++) {
    if (in_range(&kv, d->v[i].key, d->v[i].range_end)) {
      return true;
    }
  }
  return false;
}

static bool puts_has(const struct key_set *p, struct mvcc_bytes k) {
  for (size_t i = 0; i < p->n; i++) {
    if (bytes_eq(p->v[i], k)) {
      return true;
    }
  }
  return false;
}

static int check_intervals(const struct mvcc_request_op *ops, size_t n, struct key_set *puts,
                           struct del_set *dels) {
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (ops[i].type == MVCC_REQUEST_DELETE) {
      rc = set_push((void **)&dels->v, &dels->n, &dels->cap, sizeof *dels->v, &ops[i].u.del);
    }
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (ops[i].type != MVCC_REQUEST_TXN) {
      continue;
    }
    const struct mvcc_txn_req *t = ops[i].u.txn;
    struct key_set pt = {0}, pe = {0};
    struct del_set dt = {0}, de = {0};
    rc = check_intervals(t->success, t->n_success, &pt, &dt);
    if (rc == 0) {
      rc = check_intervals(t->failure, t->n_failure, &pe, &de);
    }
    for (size_t j = 0; j < pt.n && rc == 0; j++) {
      if (puts_has(puts, pt.v[j]) || dels_cover(dels, pt.v[j])) {
        rc = CAIRN_EDUPLICATE_KEY;
      }
    }
    size_t before = puts->n;
    for (size_t j = 0; j < pt.n && rc == 0; j++) {
      rc = set_push((void **)&puts->v, &puts->n, &puts->cap, sizeof *puts->v, &pt.v[j]);
    }
    for (size_t j = 0; j < pe.n && rc == 0; j++) {
      struct key_set outer = {puts->v, before, 0};
      if ((puts_has(&outer, pe.v[j]) && !puts_has(&pt, pe.v[j])) || dels_cover(dels, pe.v[j])) {
        rc = CAIRN_EDUPLICATE_KEY;
      }
    }
    for (size_t j = 0; j < pe.n && rc == 0; j++) {
      if (!puts_has(&pt, pe.v[j])) {
        rc = set_push((void **)&puts->v, &puts->n, &puts->cap, sizeof *puts->v, &pe.v[j]);
      }
    }
    for (size_t j = 0; j < dt.n && rc == 0; j++) {
      rc = set_push((void **)&dels->v, &dels->n, &dels->cap, sizeof *dels->v, &dt.v[j]);
    }
    for (size_t j = 0; j < de.n && rc == 0; j++) {
      rc = set_push((void **)&dels->v, &dels->n, &dels->cap, sizeof *dels->v, &de.v[j]);
    }
    free(pt.v);
    free(pe.v);
    free(dt.v);
    free(de.v);
  }
  for (size_t i = 0; i < n && rc == 0; i++) {
    if (ops[i].type != MVCC_REQUEST_PUT) {
      continue;
    }
    struct mvcc_bytes k = ops[i].u.put.key;
    if (puts_has(puts, k) || dels_cover(dels, k)) {
      rc = CAIRN_EDUPLICATE_KEY;
    } else {
      rc = set_push((void **)&puts->v, &puts->n, &puts->cap, sizeof *puts->v, &k);
    }
  }
  return rc;
}

static int check_branch_dups(const struct mvcc_request_op *ops, size_t n) {
  struct key_set puts = {0};
  struct del_set dels = {0};
  int rc = check_intervals(ops, n, &puts, &dels);
  free(puts.v);
  free(dels.v);
  return rc;
}

int mvcc_check_op(const mvcc_store *s, const struct mvcc_op *op) {
  int rc;
  switch (op->type) {
    case MVCC_OP_RANGE:
      return check_key(s, op->u.range.key);
    case MVCC_OP_PUT:
      return check_put(s, &op->u.put);
    case MVCC_OP_DELETE:
      return check_key(s, op->u.del.key);
    case MVCC_OP_TXN:
      rc = check_txn(s, &op->u.txn, 0);
      if (rc == 0) {
        rc = check_branch_dups(op->u.txn.success, op->u.txn.n_success);
      }
      if (rc == 0) {
        rc = check_branch_dups(op->u.txn.failure, op->u.txn.n_failure);
      }
      return rc;
    case MVCC_OP_COMPACT:
      return 0;
    case MVCC_OP_LEASE_GRANT:
      if (op->u.lease_grant.id <= 0) {
        return CAIRN_EINVAL;
      }
      if (op->u.lease_grant.ttl > 9000000000LL) {
        return CAIRN_ELEASE_TTL_TOO_LARGE;
      }
      return 0;
    case MVCC_OP_LEASE_REVOKE:
    case MVCC_OP_LEASE_CHECKPOINT:
      return 0;
    case MVCC_OP_META_PUT:
      if (op->u.meta_put.name == NULL || strlen(op->u.meta_put.name) == 0 ||
          strlen(op->u.meta_put.name) > MVCC_META_NAME_MAX ||
          op->u.meta_put.value.len > s->opts.max_value_bytes) {
        return CAIRN_EINVAL;
      }
      return 0;
    default:
      return CAIRN_EINVAL;
  }
}

/* ---- batches -------------------------------------------------------------- */

/* One try at a batch. ready (may be NULL) runs once every op has run,
 * before the commit; *readied then turns true, and the results are no longer
 * this function's to touch. */
static int batch_once(mvcc_store *s, const struct mvcc_op *ops, size_t n,
                      struct mvcc_result *results, void (*ready)(void *data), void *data,
                      bool *readied) {
  uint64_t base_size = 0;
  int rc = mvcc_size(s, &base_size, NULL);
  if (rc != 0) {
    return rc;
  }
  store_park_rtxn(s);
  MDB_txn *txn;
  int mrc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (mrc != 0) {
    return lmdb_err(mrc, "begin batch");
  }
  MDB_cursor *kv_cur = NULL, *hist_cur = NULL;
  if ((mrc = mdb_cursor_open(txn, s->dbi_kv, &kv_cur)) != 0 ||
      (mrc = mdb_cursor_open(txn, s->dbi_hist, &hist_cur)) != 0) {
    mdb_txn_abort(txn); /* closes the cursors of a write transaction */
    return lmdb_err(mrc, "cursor");
  }
  struct ctx c = {.s = s,
                  .txn = txn,
                  .rev = s->rev,
                  .compact_rev = s->compact_rev,
                  .kv_cur = kv_cur,
                  .hist_cur = hist_cur,
                  .base_size = base_size};
  uint64_t applied = s->applied_index, term = s->applied_term;
  bool wrote = false;
  for (size_t i = 0; i < n; i++) {
    struct mvcc_result *r = &results[i];
    memset(r, 0, sizeof *r);
    r->type = ops[i].type;
    if (ops[i].raft_index != 0) {
      /* Compared with the index committed before this batch: ops of one
       * raft entry share its index and are applied together. */
      if (ops[i].raft_index <= s->applied_index || ops[i].raft_index < applied) {
        r->err = CAIRN_EREPLAY; /* applied already, or going back: a replay */
        continue;
      }
      applied = ops[i].raft_index;
      term = ops[i].raft_term;
    }
    r->err = mvcc_check_op(s, &ops[i]);
    if (r->err != 0) {
      continue;
    }
    c.write_rev = c.rev + 1;
    c.sub = 0;
    c.arena = &r->arena;
    /* Only reads (a Range, a Txn that wrote nothing) leave the store as it
     * was; any other op may have written. */
    if (ops[i].type != MVCC_OP_RANGE && ops[i].type != MVCC_OP_TXN) {
      wrote = true;
    }
    rc = write_op(&c, &ops[i], r);
    if (rc != 0) {
      /* The LMDB transaction failed: nothing of the batch is committed. */
      for (size_t j = 0; j <= i; j++) {
        mvcc_result_free(&results[j]);
        results[j].type = ops[j].type;
        results[j].err = rc;
      }
      mdb_cursor_close(kv_cur);
      mdb_cursor_close(hist_cur);
      mdb_txn_abort(txn);
      return rc;
    }
    if (c.sub > 0) {
      CAIRN_ASSERT(c.write_rev == c.rev + 1);
      c.rev = c.write_rev;
      wrote = true;
    }
  }
  mdb_cursor_close(kv_cur);
  mdb_cursor_close(hist_cur);
  if (ready != NULL) {
    *readied = true;
    ready(data);
  }
  if (!wrote && applied == s->applied_index) {
    /* A batch of reads: nothing to commit (the results are copies). */
    mdb_txn_abort(txn);
    return 0;
  }
  struct meta_state ms = {c.rev, c.compact_rev, applied, term};
  if ((mrc = meta_put_raw(txn, s->dbi_meta, "state", &ms, sizeof ms)) != 0) {
    mdb_txn_abort(txn);
  } else {
    mrc = mdb_txn_commit(txn); /* frees txn, also on failure */
  }
  if (mrc != 0) {
    rc = lmdb_err(mrc, "commit batch");
    for (size_t j = 0; j < n && !*readied; j++) {
      mvcc_result_free(&results[j]);
      results[j].type = ops[j].type;
      results[j].err = rc;
    }
    return rc;
  }
  /* The read view goes with the commit: one opened before it (by a reader
   * that ran while the transaction was open, as ready may) must not serve
   * the reads after it. */
  store_park_rtxn(s);
  store_note_commit(s, base_size);
  CAIRN_ASSERT(c.rev >= s->rev);
  CAIRN_ASSERT(applied >= s->applied_index);
  s->rev = c.rev;
  s->compact_rev = c.compact_rev;
  s->applied_index = applied;
  s->applied_term = term;
  return 0;
}

int mvcc_apply_ready(mvcc_store *s, const struct mvcc_op *ops, size_t n,
                     struct mvcc_result *results, void (*ready)(void *data), void *data) {
  bool readied = false;
  if (n == 0) {
    return 0;
  }
  struct mvcc_result *spare = NULL; /* the results of a run after ready */
  int rc;
  for (;;) {
    rc = readied ? batch_once(s, ops, n, spare, NULL, NULL, &readied)
                 : batch_once(s, ops, n, results, ready, data, &readied);
    if (rc != CAIRN_ENOSPACE) {
      break;
    }
    /* MDB_MAP_FULL: the map is too small for this batch. Grow and retry the
     * whole batch; nothing of it was committed. */
    int grc = store_grow_map(s);
    if (grc != 0) {
      rc = grc;
      break;
    }
    if (readied && spare == NULL && (spare = calloc(n, sizeof *spare)) == NULL) {
      rc = CAIRN_ENOMEM; /* the caller applies the batch again later */
      break;
    }
    for (size_t i = 0; spare != NULL && i < n; i++) {
      mvcc_result_free(&spare[i]);
    }
  }
  if (spare != NULL) {
    for (size_t i = 0; i < n; i++) {
      mvcc_result_free(&spare[i]);
    }
    free(spare);
  }
  return rc;
}

int mvcc_apply(mvcc_store *s, const struct mvcc_op *ops, size_t n, struct mvcc_result *results) {
  return mvcc_apply_ready(s, ops, n, results, NULL, NULL);
}
