/* storage/mvcc_replace.c: checking a snapshot file without opening it as a
 * store (mvcc_snapshot_verify), and swapping an open store's data for one in
 * place (mvcc_replace), for a member that catches up by a store transfer. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/mvcc_int.h"

/* A snapshot file opened read-only, with no lock file (MDB_NOLOCK: nobody
 * writes it while we read), and its databases. */
struct snapfile {
  MDB_env *env;
  MDB_txn *txn;
  MDB_dbi kv, hist, lease, lease_keys, meta;
  struct meta_state state;
  uint64_t file_bytes;
};

static void snapfile_close(struct snapfile *f) {
  if (f->txn != NULL) {
    mdb_txn_abort(f->txn);
  }
  if (f->env != NULL) {
    mdb_env_close(f->env);
  }
  memset(f, 0, sizeof *f);
}

/* Opens path and checks what is cheap to check: an LMDB file whose pages lie
 * inside it (LMDB trusts its meta page and would fault on a page past the
 * end), our format marker, the five databases and a sane meta state. */
static int snapfile_open(const char *path, struct snapfile *f) {
  memset(f, 0, sizeof *f);
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "cairn: storage: snapshot %s: %s\n", path, strerror(errno));
    return errno == ENOENT ? CAIRN_EINVAL : CAIRN_EIO;
  }
  if (!S_ISREG(st.st_mode)) {
    fprintf(stderr, "cairn: storage: snapshot %s: not a regular file\n", path);
    return CAIRN_EINVAL;
  }
  f->file_bytes = (uint64_t)st.st_size;
  if (st.st_size < 2 * 4096) {
    fprintf(stderr, "cairn: storage: snapshot %s: %lld bytes, too short for a store\n", path,
            (long long)st.st_size);
    return CAIRN_EFOREIGN_FILE;
  }
  int rc = mdb_env_create(&f->env);
  if (rc != 0) {
    f->env = NULL;
    return lmdb_err(rc, "env create");
  }
  if ((rc = mdb_env_set_maxdbs(f->env, MVCC_MAXDBS)) != 0) {
    snapfile_close(f);
    return lmdb_err(rc, "env setup");
  }
  rc = mdb_env_open(f->env, path, MDB_RDONLY | MDB_NOSUBDIR | MDB_NOLOCK | MDB_NOTLS, 0);
  if (rc != 0) {
    fprintf(stderr, "cairn: storage: snapshot %s: %s\n", path, mdb_strerror(rc));
    snapfile_close(f);
    return rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED
               ? CAIRN_EFOREIGN_FILE
               : CAIRN_EIO;
  }
  MDB_envinfo info;
  MDB_stat est;
  if (mdb_env_info(f->env, &info) != 0 || mdb_env_stat(f->env, &est) != 0 ||
      ((uint64_t)info.me_last_pgno + 1) * est.ms_psize > f->file_bytes) {
    fprintf(stderr, "cairn: storage: snapshot %s: the file is shorter than its pages\n", path);
    snapfile_close(f);
    return CAIRN_ECORRUPT;
  }
  if ((rc = mdb_txn_begin(f->env, NULL, MDB_RDONLY, &f->txn)) != 0) {
    f->txn = NULL;
    snapfile_close(f);
    return lmdb_err(rc, "begin read");
  }
  static const char *names[] = {"kv", "hist", "lease", "lease_keys", "meta"};
  MDB_dbi *dbis[] = {&f->kv, &f->hist, &f->lease, &f->lease_keys, &f->meta};
  for (size_t i = 0; i < 5; i++) {
    rc = mdb_dbi_open(f->txn, names[i], i == 3 ? MDB_DUPSORT : 0, dbis[i]);
    if (rc != 0) {
      fprintf(stderr, "cairn: storage: snapshot %s: database %s: %s\n", path, names[i],
              mdb_strerror(rc));
      snapfile_close(f);
      return rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE ? CAIRN_EFOREIGN_FILE
                                                          : lmdb_err(rc, "open database");
    }
  }
  MDB_val k = {6, "format"}, v;
  rc = mdb_get(f->txn, f->meta, &k, &v);
  if (rc != 0 || v.mv_size != strlen(MVCC_FORMAT) ||
      memcmp(v.mv_data, MVCC_FORMAT, v.mv_size) != 0) {
    fprintf(stderr, "cairn: storage: snapshot %s: not a Cairn store\n", path);
    snapfile_close(f);
    return CAIRN_EFOREIGN_FILE;
  }
  struct meta_compact_pos cp;
  if (meta_get_fixed(f->txn, f->meta, "state", &f->state, sizeof f->state) != 0 ||
      meta_get_fixed(f->txn, f->meta, "compact_pos", &cp, sizeof cp) != 0 || f->state.rev < 1 ||
      f->state.compact_rev < 0 || f->state.compact_rev > f->state.rev || cp.rev < 0 || cp.sub < 0 ||
      cp.sub > UINT32_MAX) {
    fprintf(stderr, "cairn: storage: snapshot %s: bad meta state\n", path);
    snapfile_close(f);
    return CAIRN_ECORRUPT;
  }
  return 0;
}

/* Walks every record of kv and hist (each decodes, no revision above the
 * store's, history keys match their records) and of the lease tables (sizes
 * and ids). */
static int snapfile_walk(struct snapfile *f) {
  int rc = 0;
  MDB_dbi dbis[4] = {f->kv, f->hist, f->lease, f->lease_keys};
  for (int i = 0; i < 4 && rc == 0; i++) {
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(f->txn, dbis[i], &cur);
    if (mrc != 0) {
      return lmdb_err(mrc, "verify");
    }
    MDB_val k, v;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && rc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      if (i >= 2) {
        if (k.mv_size != 8 || (i == 2 && v.mv_size != sizeof(struct lease_rec)) ||
            (i == 3 && (v.mv_size == 0 || v.mv_size > MVCC_MAX_KEY_BYTES))) {
          rc = CAIRN_ECORRUPT;
        }
        continue;
      }
      struct rec r;
      rc = rec_decode(&v, i == 1, &r);
      if (rc == 0 && (r.h.mod_rev > f->state.rev || r.h.create_rev > r.h.mod_rev)) {
        rc = CAIRN_ECORRUPT;
      }
      if (rc == 0 && i == 1 &&
          (k.mv_size != HIST_KEY_LEN || hist_pos(&k).rev != r.h.mod_rev ||
           hist_pos(&k).sub != r.h.mod_sub)) {
        rc = CAIRN_ECORRUPT;
      }
    }
    mdb_cursor_close(cur);
    if (rc == 0 && mrc != MDB_NOTFOUND) {
      rc = lmdb_err(mrc, "verify");
    }
  }
  return rc;
}

int mvcc_snapshot_verify(const char *path, struct mvcc_snapshot_info *info) {
  if (path == NULL) {
    return CAIRN_EINVAL;
  }
  struct snapfile f;
  int rc = snapfile_open(path, &f);
  if (rc != 0) {
    return rc;
  }
  rc = snapfile_walk(&f);
  if (rc == CAIRN_ECORRUPT) {
    fprintf(stderr, "cairn: storage: snapshot %s: a malformed record\n", path);
  }
  if (rc == 0 && info != NULL) {
    info->applied_index = f.state.applied_index;
    info->applied_term = f.state.applied_term;
    info->revision = f.state.rev;
    info->compacted_revision = f.state.compact_rev;
    info->file_bytes = f.file_bytes;
  }
  snapfile_close(&f);
  return rc;
}

static int fsync_path(const char *path, int flags) {
  int fd = open(path, flags | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "cairn: storage: open %s: %s\n", path, strerror(errno));
    return CAIRN_EIO;
  }
  int rc = 0;
  if (fsync(fd) != 0) {
    fprintf(stderr, "cairn: storage: fsync %s: %s\n", path, strerror(errno));
    rc = CAIRN_EIO;
  }
  close(fd);
  return rc;
}

static int replace_locked(mvcc_store *s, const char *path) {
  char target[4200];
  snprintf(target, sizeof target, "%s/%s", s->dir, MVCC_DATA_FILE);
  struct stat pst, dst;
  if (stat(path, &pst) != 0 || stat(s->dir, &dst) != 0) {
    fprintf(stderr, "cairn: storage: replace from %s: %s\n", path, strerror(errno));
    return CAIRN_EINVAL;
  }
  if (!S_ISREG(pst.st_mode) || pst.st_dev != dst.st_dev) {
    fprintf(stderr, "cairn: storage: replace from %s: not a file on the store's file system\n",
            path);
    return CAIRN_EINVAL;
  }
  /* The format and meta state again (cheap): what goes in must open. */
  struct snapfile f;
  int rc = snapfile_open(path, &f);
  if (rc != 0) {
    return rc;
  }
  snapfile_close(&f);
  /* 1. Both files whole on disk: the snapshot's content, and the current
   * data file (so that the marker below is true whichever file a crash
   * leaves in place). */
  if ((rc = fsync_path(path, O_RDONLY)) != 0) {
    return rc;
  }
  store_drop_rtxn(s);
  int mrc = mdb_env_sync(s->env, 1);
  if (mrc != 0) {
    return lmdb_err(mrc, "sync");
  }
  /* 2. The sync marker says "synced through every transaction" (this boot):
   * true of the old file now, and of the new one. */
  uint8_t marker[MVCC_SYNC_MARKER_BYTES];
  mvcc_sync_marker_full(marker);
  if (pwrite(s->marker_fd, marker, sizeof marker, 0) != (ssize_t)sizeof marker ||
      fdatasync(s->marker_fd) != 0) {
    fprintf(stderr, "cairn: storage: write %s/%s: %s\n", s->dir, MVCC_SYNC_MARKER_FILE,
            strerror(errno));
    return CAIRN_EIO;
  }
  /* 3. The atomic step. The open environment keeps the old inode mapped
   * until it is closed below; nothing writes to it meanwhile. */
  if (rename(path, target) != 0) {
    fprintf(stderr, "cairn: storage: rename %s to %s: %s\n", path, target, strerror(errno));
    return CAIRN_EIO;
  }
  rc = fsync_path(s->dir, O_RDONLY | O_DIRECTORY);
  /* 4. Reopen on the new file; this rewrites the marker for it. */
  int orc = store_reopen(s);
  if (orc != 0) {
    /* The verified snapshot is in place and synced, but this process cannot
     * open it: the store is gone from under its users, who cannot go on
     * safely. A restart opens the new file. */
    fprintf(stderr, "cairn: storage: reopening %s after replacing its data failed: %s\n", s->dir,
            cairn_strerror(orc));
    CAIRN_ASSERT(!"store reopened after replace");
  }
  return rc;
}

int mvcc_replace(mvcc_store *s, const char *path) {
  if (s == NULL || path == NULL) {
    return CAIRN_EINVAL;
  }
  if (pthread_mutex_trylock(&s->export_lock) != 0) {
    return CAIRN_EBUSY; /* an export is reading the environment */
  }
  int rc = replace_locked(s, path);
  pthread_mutex_unlock(&s->export_lock);
  return rc;
}
