/* storage/mvcc_compact.c: physical compaction in bounded steps, snapshot
 * export and import, defragmentation and verification. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "storage/mvcc_int.h"

/* ---- compaction ----------------------------------------------------------- */

/* Visits history entries from compact_pos up to the compacted revision. Each
 * entry at or below it supersedes the key's previous version, which goes;
 * a tombstone at or below it goes too, with the key's kv record if that is
 * still the tombstone. What remains at or below the compacted revision is
 * exactly the latest live version of each key as of that revision. */
static int compact_step_once(mvcc_store *s, size_t max_entries, bool *done);

int mvcc_compact_step(mvcc_store *s, size_t max_entries, bool *done) {
  for (;;) {
    int rc = compact_step_once(s, max_entries, done);
    if (rc != CAIRN_ENOSPACE) {
      return rc;
    }
    /* MDB_MAP_FULL: grow the map and redo the step; nothing was committed. */
    if ((rc = store_grow_map(s)) != 0) {
      return rc;
    }
  }
}

static int compact_step_once(mvcc_store *s, size_t max_entries, bool *done) {
  if (max_entries == 0) {
    max_entries = MVCC_COMPACT_STEP_DEFAULT;
  }
  *done = s->compact_pos.rev > s->compact_rev;
  if (*done) {
    return 0;
  }
  store_park_rtxn(s);
  MDB_txn *txn;
  int mrc = mdb_txn_begin(s->env, NULL, 0, &txn);
  if (mrc != 0) {
    return lmdb_err(mrc, "begin compaction");
  }
  MDB_cursor *cur;
  mrc = mdb_cursor_open(txn, s->dbi_hist, &cur);
  if (mrc != 0) {
    mdb_txn_abort(txn);
    return lmdb_err(mrc, "cursor");
  }
  int rc = 0;
  uint8_t hk[HIST_KEY_LEN];
  hist_key(hk, s->compact_pos);
  MDB_val k = {HIST_KEY_LEN, hk}, v;
  struct pos next = {s->compact_rev + 1, 0};
  size_t n = 0;
  mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  while (mrc == 0) {
    struct pos p = hist_pos(&k);
    if (p.rev > s->compact_rev) {
      break;
    }
    if (n == max_entries) {
      next = p;
      break;
    }
    n++;
    struct rec r;
    if ((rc = rec_decode(&v, true, &r)) != 0) {
      break;
    }
    if (r.h.prev_rev != 0) {
      uint8_t pk[HIST_KEY_LEN];
      hist_key(pk, (struct pos){r.h.prev_rev, r.h.prev_sub});
      MDB_val pkv = {HIST_KEY_LEN, pk};
      int drc = mdb_del(txn, s->dbi_hist, &pkv, NULL);
      if (drc != 0 && drc != MDB_NOTFOUND) {
        rc = lmdb_err(drc, "compact");
        break;
      }
    }
    if (r.h.type == REC_DEL) {
      uint8_t keybuf[MVCC_MAX_KEY_BYTES];
      if (r.h.key_len > sizeof keybuf) {
        rc = CAIRN_ECORRUPT;
        break;
      }
      memcpy(keybuf, r.key, r.h.key_len);
      MDB_val key = {r.h.key_len, keybuf}, kvv;
      int grc = mdb_get(txn, s->dbi_kv, &key, &kvv);
      if (grc == 0) {
        struct rec cur_rec;
        if ((rc = rec_decode(&kvv, false, &cur_rec)) != 0) {
          break;
        }
        if (cur_rec.h.type == REC_DEL && cur_rec.h.mod_rev == p.rev && cur_rec.h.mod_sub == p.sub) {
          grc = mdb_del(txn, s->dbi_kv, &key, NULL);
        }
      }
      if (grc != 0 && grc != MDB_NOTFOUND) {
        rc = lmdb_err(grc, "compact tombstone");
        break;
      }
      MDB_val pk = {HIST_KEY_LEN, hk};
      hist_key(hk, p);
      grc = mdb_del(txn, s->dbi_hist, &pk, NULL);
      if (grc != 0) {
        rc = lmdb_err(grc, "compact tombstone");
        break;
      }
      /* The entry is gone: the first one after it is the next to visit. */
      k.mv_size = HIST_KEY_LEN;
      k.mv_data = hk;
      mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
      continue;
    }
    /* Re-find our place after deleting the previous version, then step. */
    hist_key(hk, p);
    k.mv_size = HIST_KEY_LEN;
    k.mv_data = hk;
    mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (mrc == 0) {
      mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
  }
  mdb_cursor_close(cur);
  if (rc == 0 && mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = lmdb_err(mrc, "compact");
  }
  if (rc == 0) {
    struct meta_compact_pos cp = {next.rev, next.sub};
    if ((mrc = meta_put_raw(txn, s->dbi_meta, "compact_pos", &cp, sizeof cp)) != 0) {
      rc = lmdb_err(mrc, "compact meta");
    }
  }
  if (rc != 0) {
    mdb_txn_abort(txn);
    return rc;
  }
  mrc = mdb_txn_commit(txn);
  if (mrc != 0) {
    return lmdb_err(mrc, "commit compaction");
  }
  s->compact_pos = next;
  *done = next.rev > s->compact_rev;
  uint64_t file_end = 0;
  if (mvcc_size(s, &file_end, NULL) == 0) {
    store_note_commit(s, file_end); /* the step read old history through the map */
  }
  return 0;
}

/* ---- verification --------------------------------------------------------- */

/* Walks every record and checks that it decodes; CAIRN_ECORRUPT if not. */
static int store_verify(mvcc_store *s) {
  struct ctx c;
  int rc = ctx_read_begin(s, &c);
  if (rc != 0) {
    return rc;
  }
  MDB_dbi dbis[2] = {s->dbi_kv, s->dbi_hist};
  for (int i = 0; i < 2 && rc == 0; i++) {
    MDB_cursor *cur;
    int mrc = mdb_cursor_open(c.txn, dbis[i], &cur);
    if (mrc != 0) {
      rc = lmdb_err(mrc, "verify");
      break;
    }
    MDB_val k, v;
    for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && rc == 0;
         mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      struct rec r;
      rc = rec_decode(&v, i == 1, &r);
      if (rc == 0 && r.h.mod_rev > s->rev) {
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
  ctx_read_end(s, &c);
  return rc;
}

/* ---- snapshots ------------------------------------------------------------ */

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return CAIRN_EIO;
  }
  int rc = fsync(fd) == 0 ? 0 : CAIRN_EIO;
  close(fd);
  return rc;
}

/* A compacting copy of the environment into a new file at path. */
static int copy_to(mvcc_store *s, const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    fprintf(stderr, "cairn: storage: create %s: %s\n", path, strerror(errno));
    return CAIRN_EIO;
  }
  int mrc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
  int rc = lmdb_err(mrc, "copy");
  if (rc == 0 && fsync(fd) != 0) {
    fprintf(stderr, "cairn: storage: fsync %s: %s\n", path, strerror(errno));
    rc = CAIRN_EIO;
  }
  close(fd);
  if (rc != 0) {
    unlink(path);
  }
  return rc;
}

int mvcc_snapshot_export(mvcc_store *s, const char *path) {
  pthread_mutex_lock(&s->export_lock);
  int rc = copy_to(s, path);
  pthread_mutex_unlock(&s->export_lock);
  return rc;
}

static int copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    fprintf(stderr, "cairn: storage: open %s: %s\n", from, strerror(errno));
    return CAIRN_EIO;
  }
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    fprintf(stderr, "cairn: storage: create %s: %s\n", to, strerror(errno));
    close(in);
    return CAIRN_EIO;
  }
  int rc = 0;
  char *buf = malloc(1u << 20);
  if (buf == NULL) {
    rc = CAIRN_ENOMEM;
  }
  while (rc == 0) {
    ssize_t n = read(in, buf, 1u << 20);
    if (n == 0) {
      break;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      rc = CAIRN_EIO;
      break;
    }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0 && errno == EINTR) {
        continue;
      }
      if (w <= 0) {
        rc = CAIRN_EIO;
        break;
      }
      off += w;
    }
  }
  free(buf);
  if (rc == 0 && fsync(out) != 0) {
    rc = CAIRN_EIO;
  }
  close(in);
  close(out);
  return rc;
}

/* A marker saying "synced through every transaction" in this boot. */
static int write_full_marker(const char *path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return CAIRN_EIO;
  }
  uint8_t buf[MVCC_SYNC_MARKER_BYTES];
  mvcc_sync_marker_full(buf);
  int rc = write(fd, buf, sizeof buf) == (ssize_t)sizeof buf && fdatasync(fd) == 0 ? 0 : CAIRN_EIO;
  close(fd);
  return rc;
}

int mvcc_snapshot_import(const char *dir, const char *path) {
  char tmp[4096], tmpfile[4200], lockfile[4200], target[4200], marker[4200], tmpmarker[4200];
  snprintf(tmp, sizeof tmp, "%s/import.tmp", dir);
  snprintf(tmpfile, sizeof tmpfile, "%s/%s", tmp, MVCC_DATA_FILE);
  snprintf(lockfile, sizeof lockfile, "%s/lock.mdb", tmp);
  snprintf(target, sizeof target, "%s/%s", dir, MVCC_DATA_FILE);
  snprintf(marker, sizeof marker, "%s/%s", dir, MVCC_SYNC_MARKER_FILE);
  snprintf(tmpmarker, sizeof tmpmarker, "%s/%s", tmp, MVCC_SYNC_MARKER_FILE);
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    return CAIRN_EIO;
  }
  unlink(tmpfile);
  unlink(lockfile);
  unlink(tmpmarker);
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
    return CAIRN_EIO;
  }
  int rc = copy_file(path, tmpfile);
  if (rc == 0) {
    /* copy_file synced the whole file: say so, for this boot. */
    rc = write_full_marker(tmpmarker);
  }
  if (rc == 0) {
    mvcc_store *s;
    rc = mvcc_open(tmp, NULL, &s);
    if (rc == 0) {
      rc = store_verify(s);
      mvcc_close(s);
    }
  }
  /* The verifying open and close left a marker for the imported file: it
   * moves with the file. */
  if (rc == 0 && (rename(tmpfile, target) != 0 || rename(tmpmarker, marker) != 0)) {
    fprintf(stderr, "cairn: storage: rename into %s: %s\n", dir, strerror(errno));
    rc = CAIRN_EIO;
  }
  if (rc == 0) {
    rc = fsync_dir(dir);
  }
  unlink(tmpfile);
  unlink(lockfile);
  unlink(tmpmarker);
  rmdir(tmp);
  return rc;
}

static int defrag_locked(mvcc_store *s) {
  char tmp[4200], target[4200];
  snprintf(tmp, sizeof tmp, "%s/defrag.tmp", s->dir);
  snprintf(target, sizeof target, "%s/%s", s->dir, MVCC_DATA_FILE);
  unlink(tmp);
  int rc = copy_to(s, tmp);
  if (rc != 0) {
    return rc;
  }
  if (rename(tmp, target) != 0) {
    fprintf(stderr, "cairn: storage: rename %s: %s\n", target, strerror(errno));
    unlink(tmp);
    return CAIRN_EIO;
  }
  rc = fsync_dir(s->dir);
  int64_t rev = s->rev;
  uint64_t applied = s->applied_index;
  int orc = store_reopen(s);
  if (orc != 0) {
    /* The compacted copy is in place and synced, but this process cannot
     * open it: the store is gone from under the caller, which cannot go on
     * safely. A restart opens the new file. */
    fprintf(stderr, "cairn: storage: reopening %s after defragmentation failed: %s\n", s->dir,
            cairn_strerror(orc));
    CAIRN_ASSERT(!"store reopened after defragmentation");
  }
  CAIRN_ASSERT(s->rev == rev && s->applied_index == applied);
  return rc;
}

int mvcc_defrag(mvcc_store *s) {
  if (pthread_mutex_trylock(&s->export_lock) != 0) {
    return CAIRN_EBUSY; /* an export is reading the environment */
  }
  int rc = defrag_locked(s);
  pthread_mutex_unlock(&s->export_lock);
  return rc;
}
