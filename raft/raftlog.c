/* raft/raftlog.c: raft's log on storage/wal.c (raftlog.h says what is
 * replaced and why). */
#include "raftlog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cairn_assert.h"
#include "raftnode_int.h"
#include "storage/wal.h"

typedef int (*load_fn)(struct raft_io *io, raft_term *term, raft_id *voted_for,
                       struct raft_snapshot **snapshot, raft_index *start_index,
                       struct raft_entry *entries[], size_t *n_entries);
typedef int (*append_fn)(struct raft_io *io, struct raft_io_append *req,
                         const struct raft_entry entries[], unsigned n, raft_io_append_cb cb);
typedef int (*truncate_fn)(struct raft_io *io, raft_index index);
typedef int (*put_fn)(struct raft_io *io, unsigned trailing, struct raft_io_snapshot_put *req,
                      const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb);
typedef void (*close_fn)(struct raft_io *io, raft_io_close_cb cb);

struct raftlog {
  wal *w;
  char dir[PATH_MAX];
  uint64_t next; /* index of the next append */
  load_fn load;
  put_fn snapshot_put;
  close_fn close;
  struct raft_io *io;
  raft_io_close_cb close_cb;
};

/* io->data is raft's; raft->data is the raftnode that owns this log. */
static raftlog *l_of(struct raft_io *io) {
  struct raft *r = io->data;
  raftnode *n = r->data;
  return n->log;
}

static int to_raft(int rc) {
  switch (rc) {
    case 0:
      return 0;
    case CAIRN_ENOMEM:
      return RAFT_NOMEM;
    case CAIRN_ENOSPACE:
      return RAFT_NOSPACE;
    case CAIRN_ESTOPPED:
      return RAFT_CANCELED;
    case CAIRN_ECORRUPT:
      return RAFT_CORRUPT;
    default:
      return RAFT_IOERR;
  }
}

/* libraft's segment file names: "N-M" (closed) and "open-N". */
static bool is_uv_segment(const char *name) {
  unsigned long long a, b;
  int end = 0;
  if (sscanf(name, "%llu-%llu%n", &a, &b, &end) == 2 && name[end] == '\0' && name[0] != '-') {
    return true;
  }
  end = 0;
  return sscanf(name, "open-%llu%n", &a, &end) == 1 && name[end] == '\0';
}

static int delete_uv_segments(const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) {
    return -errno;
  }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (is_uv_segment(e->d_name) && unlinkat(dirfd(d), e->d_name, 0) != 0 && errno != ENOENT) {
      rc = -errno;
    }
  }
  if (rc == 0 && fsync(dirfd(d)) != 0) {
    rc = -errno;
  }
  closedir(d);
  return rc;
}

static void free_entries(struct raft_entry *entries, size_t n) {
  void *last = NULL;
  for (size_t i = 0; i < n; i++) {
    if (entries[i].batch != NULL && entries[i].batch != last) {
      /* libraft's loader gives each segment one batch, in order. */
      last = entries[i].batch;
      raft_free(last);
    } else if (entries[i].batch == NULL) {
      raft_free(entries[i].buf.base);
    }
  }
  raft_free(entries);
}

/* Copies the entries libraft's segments held into the wal, then deletes
 * the segments. A crash between the two leaves entries the wal already has
 * (skipped next time). */
static int import(raftlog *l, raft_index start, struct raft_entry *entries, size_t n) {
  uint64_t first = wal_first_index(l->w), last = wal_last_index(l->w);
  size_t skip = 0;
  if (last != 0) {
    if (start < first || start > last + 1) {
      fprintf(stderr,
              "cairn: raft log: libraft's segments (from %llu) do not continue %s/log "
              "(%llu-%llu)\n",
              (unsigned long long)start, l->dir, (unsigned long long)first,
              (unsigned long long)last);
      return RAFT_CORRUPT;
    }
    skip = (size_t)(last + 1 - start);
  }
  int rc = 0;
  if (skip < n) {
    struct wal_record *recs = malloc((n - skip) * sizeof *recs);
    if (recs == NULL) {
      return RAFT_NOMEM;
    }
    for (size_t i = skip; i < n; i++) {
      recs[i - skip] = (struct wal_record){.index = start + i,
                                           .term = entries[i].term,
                                           .type = (uint8_t)entries[i].type,
                                           .data = entries[i].buf.base,
                                           .len = entries[i].buf.len};
    }
    rc = wal_append_sync(l->w, recs, n - skip);
    free(recs);
    if (rc != 0) {
      return to_raft(rc);
    }
  }
  rc = delete_uv_segments(l->dir);
  if (rc != 0) {
    fprintf(stderr, "cairn: raft log: deleting libraft's segments: %s\n", strerror(-rc));
    return RAFT_IOERR;
  }
  return 0;
}

static int rl_load(struct raft_io *io, raft_term *term, raft_id *voted_for,
                   struct raft_snapshot **snapshot, raft_index *start_index,
                   struct raft_entry *entries[], size_t *n_entries) {
  raftlog *l = l_of(io);
  struct raft_entry *uv_entries = NULL;
  size_t uv_n = 0;
  raft_index uv_start = 0;
  int rv = l->load(io, term, voted_for, snapshot, &uv_start, &uv_entries, &uv_n);
  if (rv != 0) {
    return rv;
  }
  if (uv_n > 0) {
    rv = import(l, uv_start, uv_entries, uv_n);
    free_entries(uv_entries, uv_n);
    if (rv != 0) {
      goto fail;
    }
  }
  const struct raft_snapshot *s = *snapshot;
  uint64_t first = wal_first_index(l->w), last = wal_last_index(l->w);
  uint64_t after = s != NULL ? s->index + 1 : 1;
  *entries = NULL;
  *n_entries = 0;
  if (last == 0 || last < after - 1) {
    /* Nothing past the snapshot (a crash between an installed snapshot and
     * the log's reset leaves older entries, or only an empty segment): the
     * log starts after it. */
    if (wal_reset(l->w, after) != 0) {
      rv = RAFT_IOERR;
      goto fail;
    }
    *start_index = after;
    l->next = after;
    return 0;
  }
  if (first > after) {
    fprintf(stderr, "cairn: raft log %s/log: starts at %llu, but %s\n", l->dir,
            (unsigned long long)first,
            s != NULL ? "the last snapshot ends before it" : "there is no snapshot");
    rv = RAFT_CORRUPT;
    goto fail;
  }
  struct wal_record *recs;
  size_t n;
  int rc = wal_read_all(l->w, &recs, &n);
  if (rc != 0) {
    rv = to_raft(rc);
    goto fail;
  }
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) {
    bytes += recs[i].len;
  }
  struct raft_entry *out = raft_malloc(n * sizeof *out);
  uint8_t *batch = raft_malloc(bytes ? bytes : 1);
  if (out == NULL || batch == NULL) {
    raft_free(out);
    raft_free(batch);
    free(recs);
    rv = RAFT_NOMEM;
    goto fail;
  }
  uint8_t *p = batch;
  for (size_t i = 0; i < n; i++) {
    out[i].term = recs[i].term;
    out[i].type = recs[i].type;
    out[i].buf.base = p;
    out[i].buf.len = recs[i].len;
    out[i].batch = batch;
    if (recs[i].len > 0) {
      memcpy(p, recs[i].data, recs[i].len);
    }
    p += recs[i].len;
  }
  free(recs);
  *entries = out;
  *n_entries = n;
  *start_index = first;
  l->next = last + 1;
  return 0;

fail:
  if (*snapshot != NULL) {
    for (unsigned i = 0; i < (*snapshot)->n_bufs; i++) {
      raft_free((*snapshot)->bufs[i].base);
    }
    raft_free((*snapshot)->bufs);
    raft_configuration_close(&(*snapshot)->configuration);
    raft_free(*snapshot);
    *snapshot = NULL;
  }
  return rv;
}

static void on_appended(void *data, int status) {
  struct raft_io_append *req = data;
  req->cb(req, to_raft(status));
}

#define STACK_RECS 64

static int rl_append(struct raft_io *io, struct raft_io_append *req,
                     const struct raft_entry entries[], unsigned n, raft_io_append_cb cb) {
  raftlog *l = l_of(io);
  struct wal_record stack[STACK_RECS] = {0};
  struct wal_record *recs = n <= STACK_RECS ? stack : malloc(n * sizeof *recs);
  if (recs == NULL) {
    return RAFT_NOMEM;
  }
  for (unsigned i = 0; i < n; i++) {
    recs[i] = (struct wal_record){.index = l->next + i,
                                  .term = entries[i].term,
                                  .type = (uint8_t)entries[i].type,
                                  .data = entries[i].buf.base,
                                  .len = entries[i].buf.len};
  }
  req->cb = cb;
  int rc = wal_append(l->w, recs, n, on_appended, req);
  if (recs != stack) {
    free(recs);
  }
  if (rc != 0) {
    return to_raft(rc);
  }
  l->next += n;
  return 0;
}

static int rl_truncate(struct raft_io *io, raft_index index) {
  raftlog *l = l_of(io);
  int rc = wal_truncate(l->w, index);
  if (rc != 0) {
    return to_raft(rc);
  }
  l->next = index;
  return 0;
}

struct put {
  struct raft_io_snapshot_put inner;
  struct raft_io_snapshot_put *outer;
  raft_io_snapshot_put_cb cb;
  raftlog *l;
  unsigned trailing;
  raft_index index;
  const struct raft_snapshot *snapshot;
  struct raft_io *io;
};

static void on_put(struct raft_io_snapshot_put *req, int status) {
  struct put *p = req->data;
  raftlog *l = p->l;
  if (l->w == NULL) { /* closing: libraft finished a put after the log closed */
    status = status == 0 ? RAFT_CANCELED : status;
  } else if (status == 0 && p->trailing == 0) {
    /* An installed snapshot replaces the log; the snapshot is durable now. */
    if (wal_reset(l->w, p->index + 1) != 0) {
      status = RAFT_IOERR;
    } else {
      l->next = p->index + 1;
    }
  } else if (status == 0 && p->index > p->trailing) {
    wal_compact(l->w, p->index - p->trailing); /* best effort: a later one retries */
  }
  struct raft_io_snapshot_put *outer = p->outer;
  raft_io_snapshot_put_cb cb = p->cb;
  free(p);
  outer->cb = cb;
  cb(outer, status);
}

/* The deferred install: the appends before it have settled. */
static void put_after_appends(void *data, int status) {
  struct put *p = data;
  int rv =
      status != 0 ? RAFT_CANCELED : p->l->snapshot_put(p->io, 0, &p->inner, p->snapshot, on_put);
  if (rv != 0) {
    struct raft_io_snapshot_put *outer = p->outer;
    raft_io_snapshot_put_cb cb = p->cb;
    free(p);
    outer->cb = cb;
    cb(outer, rv);
  }
}

static int rl_snapshot_put(struct raft_io *io, unsigned trailing, struct raft_io_snapshot_put *req,
                           const struct raft_snapshot *snapshot, raft_io_snapshot_put_cb cb) {
  raftlog *l = l_of(io);
  struct put *p = malloc(sizeof *p);
  if (p == NULL) {
    return RAFT_NOMEM;
  }
  p->inner.data = p;
  p->outer = req;
  p->cb = cb;
  p->l = l;
  p->trailing = trailing;
  p->index = snapshot->index;
  p->snapshot = snapshot;
  p->io = io;
  if (trailing == 0 && !wal_idle(l->w)) {
    /* An install replaces the log: the appends before it settle first (as
     * libraft's own barrier does), so that none completes after the log
     * was reset. */
    wal_after_appends(l->w, put_after_appends, p);
    return 0;
  }
  int rv = l->snapshot_put(io, trailing, &p->inner, snapshot, on_put);
  if (rv != 0) {
    free(p);
  }
  return rv;
}

/* libraft's close has finished (its snapshot writes included, whose
 * callbacks still reach on_put): the raftlog may go. */
static void on_io_closed(struct raft_io *io) {
  raftlog *l = l_of(io);
  raft_io_close_cb cb = l->close_cb;
  free(l);
  cb(io);
}

static void on_wal_closed(void *data) {
  raftlog *l = data;
  l->w = NULL;
  l->close(l->io, on_io_closed);
}

static void rl_close(struct raft_io *io, raft_io_close_cb cb) {
  raftlog *l = l_of(io);
  l->close_cb = cb;
  wal_close(l->w, on_wal_closed, l);
}

int raftlog_install(struct raft_io *io, uv_loop_t *loop, const char *raft_dir, raftlog **out) {
  raftlog *l = calloc(1, sizeof *l);
  if (l == NULL) {
    return CAIRN_ENOMEM;
  }
  char path[PATH_MAX + 8];
  if ((size_t)snprintf(l->dir, sizeof l->dir, "%s", raft_dir) >= sizeof l->dir ||
      (size_t)snprintf(path, sizeof path, "%s/log", raft_dir) >= sizeof path) {
    free(l);
    return CAIRN_EINVAL;
  }
  int rc = wal_open(loop, path, NULL, &l->w);
  if (rc != 0) {
    fprintf(stderr, "cairn: raft log %s: %s\n", path, cairn_strerror(rc));
    free(l);
    return rc;
  }
  l->io = io;
  l->load = io->load;
  l->snapshot_put = io->snapshot_put;
  l->close = io->close;
  io->load = rl_load;
  io->append = rl_append;
  io->truncate = rl_truncate;
  io->snapshot_put = rl_snapshot_put;
  io->close = rl_close;
  *out = l;
  return 0;
}

void raftlog_abort(raftlog *l) {
  l->io->load = l->load;
  l->io->snapshot_put = l->snapshot_put;
  l->io->close = l->close;
  wal_close(l->w, free, l);
}
