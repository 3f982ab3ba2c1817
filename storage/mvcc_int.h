/* storage/mvcc_int.h: internals shared by the mvcc_*.c files. Not an API.
 *
 * On-disk layout (one LMDB environment, five named databases):
 *   kv         user key -> the key's latest record (a put or a tombstone),
 *              value included, so a latest read is one lookup.
 *   hist       (revision, sub) big-endian -> every version and tombstone in
 *              revision order, with its key; the change feed and historical
 *              reads. Each record points to the key's previous version.
 *   lease      lease id (big-endian) -> ttl, grant time, remaining ttl.
 *   lease_keys lease id -> attached user keys (sorted duplicates).
 *   meta       names -> store revision, compaction state, raft applied index
 *              and term, format marker, user meta ("u/<name>").
 * Records are host byte order, like LMDB's own pages. */
#ifndef CAIRN_MVCC_INT_H
#define CAIRN_MVCC_INT_H

#include <lmdb.h>
#include <pthread.h>

#include "common/cairn_assert.h"
#include "storage/mvcc.h"

#define MVCC_FORMAT "cairn-mvcc-1"
#define MVCC_MAXDBS 8
#define MVCC_META_NAME_MAX 64

enum rec_type { REC_PUT = 1, REC_DEL = 2 };

/* The fixed header of a kv or hist record, followed by key (hist only) and
 * value bytes. */
struct rec_hdr {
  uint32_t type;
  uint32_t key_len;
  uint32_t value_len;
  uint32_t mod_sub;
  int64_t create_rev;
  int64_t mod_rev;
  int64_t version;
  int64_t lease;
  int64_t prev_rev; /* 0: no previous version */
  uint32_t prev_sub;
  uint32_t reserved;
};
CAIRN_STATIC_ASSERT(sizeof(struct rec_hdr) == 64, "record header layout");

/* A decoded record; key and value point into LMDB memory (valid until the next
 * write in the transaction or its end) unless copied. */
struct rec {
  struct rec_hdr h;
  const uint8_t *key;
  const uint8_t *value;
};

#define HIST_KEY_LEN 12
struct pos {
  int64_t rev;
  uint32_t sub;
};

/* meta "state": written once per batch, in the batch's transaction. */
struct meta_state {
  int64_t rev;
  int64_t compact_rev;
  uint64_t applied_index;
  uint64_t applied_term;
};
/* meta "compact_pos": written by each compaction step. */
struct meta_compact_pos {
  int64_t rev;
  int64_t sub;
};

struct lease_rec {
  int64_t ttl;
  int64_t granted_ms;
  int64_t remaining_ms;
};

struct mvcc_store {
  MDB_env *env;
  MDB_dbi dbi_kv, dbi_hist, dbi_lease, dbi_lease_keys, dbi_meta;
  char *dir;
  struct mvcc_options opts;
  size_t map_size;
  size_t map_size_max;
  int64_t rev;
  int64_t compact_rev;
  struct pos compact_pos; /* next history entry the physical compaction visits */
  uint64_t applied_index;
  uint64_t applied_term;
  /* The cached read transaction. It stays live across reads and is reset
   * (parked) when a write transaction starts, so consecutive reads share one
   * snapshot setup; it never lives across a write. */
  MDB_txn *rtxn;
  bool rtxn_live;
  int marker_fd; /* the sync marker file, see mvcc_sync_marker() */
  /* Held by a snapshot export (another thread) for its whole run; the owner
   * only try-locks it to grow the map, which LMDB forbids while another
   * thread has a read transaction open. */
  pthread_mutex_t export_lock;
  /* Dropping the mapping of the file (mvcc_release.c). */
  uint64_t release_at;      /* file end at the last release */
  uint32_t release_commits; /* write commits since then */
  uint64_t releases;        /* releases done */
  /* The userfaultfd whose registration of the mapping turns fault-around off
   * (mvcc_release.c); -1: not made yet, -2: not available here. */
  int uffd;
  bool map_exact; /* the current mapping is registered */
  /* The mapping of the data file, looked up after each (re)map
   * (store_map_changed); 0 when unknown. */
  uintptr_t map_start, map_end;
  /* The first key of hist's right-most leaf at the last walk, if have_edge
   * (mvcc_release.c: unmap_finished). */
  uint8_t hist_edge[HIST_KEY_LEN];
  bool have_edge;
  uint64_t hist_unmapped; /* pages of finished hist leaves unmapped */
};

/* The view an operation reads and writes through. */
struct ctx {
  mvcc_store *s;
  MDB_txn *txn;
  MDB_cursor *kv_cur; /* write contexts: cursors on kv and hist for the batch */
  MDB_cursor *hist_cur;
  int64_t rev; /* latest revision visible in txn */
  int64_t compact_rev;
  /* Writes: all writes of one op share write_rev, with sub 0, 1, ... */
  int64_t write_rev;
  uint32_t sub;
  uint64_t batch_bytes; /* quota estimate of what this batch added */
  uint64_t base_size;   /* file size when the batch started */
  struct mvcc_arena **arena;
};

/* Arena: a bump allocator whose chunks are freed together. */
void *arena_alloc(struct mvcc_arena **a, size_t n);
void *arena_dup(struct mvcc_arena **a, const void *p, size_t n);
void arena_free(struct mvcc_arena *a);

/* Encoding. */
void hist_key(uint8_t out[HIST_KEY_LEN], struct pos p);
struct pos hist_pos(const MDB_val *k);
int rec_decode(const MDB_val *v, bool with_key, struct rec *out);
size_t rec_size(const struct rec_hdr *h);
void rec_encode(void *dst, const struct rec_hdr *h, const void *key, const void *value);
void u64_be(uint8_t out[8], uint64_t v);
int lmdb_err(int rc, const char *what);

/* Reads (mvcc_read.c). */
/* The revision a read asks for (<= 0: the latest of c), or etcd's future or
 * compacted error. */
int range_revision(const struct ctx *c, int64_t requested, int64_t *rev);
int ctx_read_begin(mvcc_store *s, struct ctx *c);
void ctx_read_end(mvcc_store *s, struct ctx *c);
/* 1: key exists at rev, *out filled; 0: absent; < 0: error. kvdata is the
 * key's kv record. */
int resolve_at(struct ctx *c, const MDB_val *kvdata, int64_t rev, struct rec *out);
/* Latest live record of one key: 1 found, 0 absent, < 0 error. */
int get_latest(struct ctx *c, struct mvcc_bytes key, struct rec *out);
int range_exec(struct ctx *c, const struct mvcc_range_req *req, struct mvcc_arena **arena,
               struct mvcc_range_resp *out);
/* Positions cur at the first key >= key (any length); MDB_NOTFOUND at end. */
int cursor_seek(MDB_cursor *cur, struct mvcc_bytes key, MDB_val *k, MDB_val *v);
/* Whether k is inside [key, range_end) with etcd's range_end conventions. */
bool in_range(const MDB_val *k, struct mvcc_bytes key, struct mvcc_bytes end);
/* Whether k is past the end of [key, range_end) (iteration can stop). */
bool past_end(const MDB_val *k, struct mvcc_bytes key, struct mvcc_bytes end);
int kv_copy(struct mvcc_arena **a, const struct rec *r, struct mvcc_bytes key, bool keys_only,
            struct mvcc_kv *out);
/* Reads a fixed-size meta record; MDB_CORRUPTED if its size differs. */
int meta_get_fixed(MDB_txn *txn, MDB_dbi dbi, const char *name, void *out, size_t n);

/* Writes (mvcc_write.c). */
int write_op(struct ctx *c, const struct mvcc_op *op, struct mvcc_result *res);
int store_reopen(mvcc_store *s);
void store_drop_rtxn(mvcc_store *s);
/* Resets the cached read transaction before a write transaction. */
void store_park_rtxn(mvcc_store *s);
/* Grows the map after MDB_MAP_FULL; CAIRN_ENOSPACE at the maximum. */
int store_grow_map(mvcc_store *s);
/* After each committed write transaction: file_end is the data file's size
 * in use. Drops (part of) the mapping of the file every MVCC_RELEASE_BYTES
 * of growth or MVCC_RELEASE_COMMITS commits (mvcc_release.c). */
void store_note_commit(mvcc_store *s, uint64_t file_end);
/* After LMDB (re)mapped the data file: registers the new mapping so that a
 * read fault maps only its own page (mvcc_release.c). */
void store_map_changed(mvcc_store *s);
/* A sync marker for a file synced as a whole (any transaction), this boot. */
void mvcc_sync_marker_full(uint8_t buf[MVCC_SYNC_MARKER_BYTES]);
int meta_put_raw(MDB_txn *txn, MDB_dbi dbi, const char *name, const void *p, size_t n);

#endif
