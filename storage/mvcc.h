/* storage/mvcc.h: Cairn's MVCC key-value engine on LMDB, with etcd's semantics.
 *
 * One store revision, +1 per write transaction; every key version carries
 * create_revision, mod_revision, version and lease; a delete is a tombstone at
 * its revision. Reads at any revision >= the compacted revision see the store
 * exactly as it was then. See docs/storage.md for the on-disk layout.
 *
 * Threading: a store is driven by one thread (the owner: the event loop).
 * mvcc_snapshot_export() alone may run on another thread, concurrently with
 * the owner's calls (it uses its own LMDB read transaction).
 *
 * Errors: every function returns 0 or a negative CAIRN_E* code (common/
 * cairn_error.h). Results and memory: results of reads and writes live in a
 * struct mvcc_result whose memory (keys, values, arrays) is owned by the result
 * and released with mvcc_result_free(); nothing in a result points into LMDB. */
#ifndef CAIRN_MVCC_H
#define CAIRN_MVCC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/cairn_error.h"

typedef struct mvcc_store mvcc_store;
struct mvcc_arena;

/* Defaults and hard limits. */
#define MVCC_QUOTA_BYTES_DEFAULT (2ull * 1024 * 1024 * 1024)
#define MVCC_MAX_TXN_OPS_DEFAULT 128u
/* etcd's --max-request-bytes default; a larger value is CAIRN_ETOO_LARGE. */
#define MVCC_MAX_VALUE_BYTES_DEFAULT (1536u * 1024u)
/* LMDB's key limit (mdb_env_get_maxkeysize() of Debian's build). A longer key
 * is refused with CAIRN_ETOO_LARGE. */
#define MVCC_MAX_KEY_BYTES 511u
/* A change-feed batch holds at most this many events, whatever is asked. */
#define MVCC_FEED_EVENTS_MAX 10000u
/* A change-feed call inspects at most this many history entries before it
 * returns (with a resume position), so a narrow watcher behind a busy store
 * never holds the loop for long. */
#define MVCC_FEED_SCAN_MAX 100000u
/* One compaction step removes at most this many history entries. */
#define MVCC_COMPACT_STEP_DEFAULT 10000u
/* The store drops its mapping of the data file (pages read later are mapped
 * again from the page cache): all but its last MVCC_RELEASE_KEEP_BYTES each
 * time the file grew by MVCC_RELEASE_BYTES, all of it after
 * MVCC_RELEASE_COMMITS write commits; see storage/mvcc_release.c. What stays
 * mapped is then what was read since, not the whole file. */
#define MVCC_RELEASE_BYTES (1u << 20)
#define MVCC_RELEASE_KEEP_BYTES (8u << 20)
#define MVCC_RELEASE_COMMITS 4096u

struct mvcc_options {
  uint64_t quota_bytes;     /* 0: MVCC_QUOTA_BYTES_DEFAULT */
  uint32_t max_txn_ops;     /* 0: MVCC_MAX_TXN_OPS_DEFAULT */
  uint32_t max_value_bytes; /* 0: MVCC_MAX_VALUE_BYTES_DEFAULT */
};

/* A byte string the caller owns. len 0 with data NULL is the empty string. */
struct mvcc_bytes {
  const uint8_t *data;
  size_t len;
};

/* A key version. In a result, key and value point into the result's memory. */
struct mvcc_kv {
  struct mvcc_bytes key;
  struct mvcc_bytes value;
  int64_t create_revision;
  int64_t mod_revision;
  int64_t version;
  int64_t lease;
};

/* etcd's enum values (rpc.proto), so that wire values map one to one. */
enum mvcc_sort_order { MVCC_SORT_NONE = 0, MVCC_SORT_ASCEND = 1, MVCC_SORT_DESCEND = 2 };
enum mvcc_sort_target {
  MVCC_SORT_KEY = 0,
  MVCC_SORT_VERSION = 1,
  MVCC_SORT_CREATE = 2,
  MVCC_SORT_MOD = 3,
  MVCC_SORT_VALUE = 4
};
enum mvcc_compare_result {
  MVCC_CMP_EQUAL = 0,
  MVCC_CMP_GREATER = 1,
  MVCC_CMP_LESS = 2,
  MVCC_CMP_NOT_EQUAL = 3
};
enum mvcc_compare_target {
  MVCC_TARGET_VERSION = 0,
  MVCC_TARGET_CREATE = 1,
  MVCC_TARGET_MOD = 2,
  MVCC_TARGET_VALUE = 3,
  MVCC_TARGET_LEASE = 4
};
enum mvcc_event_type { MVCC_EVENT_PUT = 0, MVCC_EVENT_DELETE = 1 };

/* Key ranges follow etcd: range_end empty = the single key; range_end "\0" =
 * every key >= key; otherwise [key, range_end). */
struct mvcc_range_req {
  struct mvcc_bytes key;
  struct mvcc_bytes range_end;
  int64_t limit;    /* 0: no limit */
  int64_t revision; /* <= 0: latest */
  enum mvcc_sort_order sort_order;
  enum mvcc_sort_target sort_target;
  bool keys_only;
  bool count_only;
  int64_t min_mod_revision; /* 0: no filter; likewise the three below */
  int64_t max_mod_revision;
  int64_t min_create_revision;
  int64_t max_create_revision;
};

struct mvcc_put_req {
  struct mvcc_bytes key;
  struct mvcc_bytes value;
  int64_t lease; /* 0: no lease */
  bool prev_kv;
  bool ignore_value;
  bool ignore_lease;
};

struct mvcc_delete_req {
  struct mvcc_bytes key;
  struct mvcc_bytes range_end;
  bool prev_kv;
};

struct mvcc_compare {
  enum mvcc_compare_result result;
  enum mvcc_compare_target target;
  struct mvcc_bytes key;
  struct mvcc_bytes range_end;
  int64_t number;          /* version, create, mod revision or lease */
  struct mvcc_bytes value; /* for MVCC_TARGET_VALUE */
};

struct mvcc_txn_req;

enum mvcc_request_type {
  MVCC_REQUEST_NONE = 0, /* an empty RequestOp: refused as etcd does */
  MVCC_REQUEST_RANGE,
  MVCC_REQUEST_PUT,
  MVCC_REQUEST_DELETE,
  MVCC_REQUEST_TXN
};

struct mvcc_request_op {
  enum mvcc_request_type type;
  union {
    struct mvcc_range_req range;
    struct mvcc_put_req put;
    struct mvcc_delete_req del;
    const struct mvcc_txn_req *txn;
  } u;
};

struct mvcc_txn_req {
  const struct mvcc_compare *compares;
  size_t n_compares;
  const struct mvcc_request_op *success;
  size_t n_success;
  const struct mvcc_request_op *failure;
  size_t n_failure;
};

/* Responses. revision is the header revision etcd would report. */
struct mvcc_range_resp {
  int64_t revision;
  struct mvcc_kv *kvs;
  size_t n_kvs;
  bool more;
  int64_t count;
};

struct mvcc_put_resp {
  int64_t revision;
  bool has_prev_kv;
  struct mvcc_kv prev_kv;
};

struct mvcc_delete_resp {
  int64_t revision;
  int64_t deleted;
  struct mvcc_kv *prev_kvs; /* only with prev_kv */
  size_t n_prev_kvs;
};

struct mvcc_txn_resp;

struct mvcc_response_op {
  enum mvcc_request_type type;
  union {
    struct mvcc_range_resp range;
    struct mvcc_put_resp put;
    struct mvcc_delete_resp del;
    struct mvcc_txn_resp *txn;
  } u;
};

struct mvcc_txn_resp {
  int64_t revision;
  bool succeeded;
  struct mvcc_response_op *responses;
  size_t n_responses;
};

struct mvcc_lease {
  int64_t id;
  int64_t ttl;          /* seconds, as granted */
  int64_t granted_ms;   /* the grant's timestamp, as given in the op */
  int64_t remaining_ms; /* last checkpointed remaining TTL; -1: none */
};

struct mvcc_lease_resp {
  int64_t revision;
  struct mvcc_lease lease;
};

/* The operations a batch applies. */
enum mvcc_op_type {
  MVCC_OP_RANGE = 1,
  MVCC_OP_PUT,
  MVCC_OP_DELETE,
  MVCC_OP_TXN,
  MVCC_OP_COMPACT,          /* logical compaction; see mvcc_compact_step() */
  MVCC_OP_LEASE_GRANT,      /* CAIRN_ELEASE_EXISTS if the id is taken */
  MVCC_OP_LEASE_REVOKE,     /* deletes attached keys in one revision */
  MVCC_OP_LEASE_CHECKPOINT, /* records remaining_ms of a lease */
  MVCC_OP_META_PUT          /* sets a named meta value (cluster id, members) */
};

struct mvcc_op {
  enum mvcc_op_type type;
  /* The raft entry this op comes from; 0 when not from raft. An op whose index
   * is <= the applied index stored before the batch is skipped with
   * CAIRN_EREPLAY. Several ops may share an index (one raft entry carrying
   * several requests); they must then be in the same batch. An op whose index
   * is below an earlier op's in the same batch is a replay too. */
  uint64_t raft_index;
  uint64_t raft_term;
  union {
    struct mvcc_range_req range;
    struct mvcc_put_req put;
    struct mvcc_delete_req del;
    struct mvcc_txn_req txn;
    int64_t compact_revision;
    struct {
      int64_t id; /* must be > 0: the caller picks ids */
      int64_t ttl;
      int64_t now_ms;
    } lease_grant;
    int64_t lease_revoke_id;
    struct {
      int64_t id;
      int64_t remaining_ms;
    } lease_checkpoint;
    struct {
      const char *name; /* NUL-terminated, <= 64 bytes */
      struct mvcc_bytes value;
    } meta_put;
  } u;
};

struct mvcc_result {
  int err; /* 0 or a negative CAIRN_E* code for this op */
  enum mvcc_op_type type;
  union {
    struct mvcc_range_resp range;
    struct mvcc_put_resp put;
    struct mvcc_delete_resp del;
    struct mvcc_txn_resp txn;
    struct mvcc_lease_resp lease; /* grant, revoke, checkpoint */
    int64_t revision;             /* compact, meta put */
  } u;
  struct mvcc_arena *arena; /* owns the memory above; NULL if none */
};

/* Releases the memory a result owns and zeroes it. NULL-safe. */
void mvcc_result_free(struct mvcc_result *r);

/* Opens (creating if needed) the store in directory dir. opts may be NULL.
 * Errors: CAIRN_EFOREIGN_FILE (the data file is not a Cairn store or is
 * corrupt), CAIRN_EUNSYNCED (see the sync marker below), CAIRN_EIO (with a
 * message on stderr), CAIRN_ENOMEM, CAIRN_EINVAL. */
int mvcc_open(const char *dir, const struct mvcc_options *opts, mvcc_store **out);

/* Syncs the data file, writes the sync marker and closes the store
 * (blocking). Outstanding checkpoints must have completed. */
void mvcc_close(mvcc_store *s);

/* Validates a request before it is proposed or applied: empty keys, key and
 * value sizes, ignore_value/ignore_lease misuse, txn op counts and duplicate
 * keys, with etcd's errors. Applying an op runs the same checks. */
int mvcc_check_op(const mvcc_store *s, const struct mvcc_op *op);

/* Applies n ops in one LMDB write transaction (group commit). results must
 * hold n entries; each gets the op's own outcome: a failed op changed nothing
 * and the others are unaffected. Each writing op takes its own revision.
 * Returns 0 when the batch committed (whatever the per-op outcomes), or a
 * negative code when nothing was committed (CAIRN_EIO: the disk failed; all
 * results then carry that code). The caller frees each result. */
int mvcc_apply(mvcc_store *s, const struct mvcc_op *ops, size_t n, struct mvcc_result *results);

/* mvcc_apply() that hands the results over before the commit. Once every op
 * of the batch has run in the transaction, and before it is committed (its
 * pages written), ready(data) is called once: from then on the results are
 * final, the caller's (it may answer from them, and must free them), and
 * this call does not touch them again. What ready must not do: read the
 * store (the batch is not visible yet) or write to it (the transaction is
 * open on this thread).
 * - The commit can still fail after ready. Then nothing of the batch is in
 *   the store and the code is returned; the caller answered already, so the
 *   entries must stay in the raft log to be applied again (the store halts,
 *   raft/fsm.c). The disk is the only cause: CAIRN_EIO or CAIRN_ENOSPACE.
 * - When the map must grow at the commit, the batch runs again after the
 *   growth, into results of its own that are freed here; ready is not called
 *   again (the outcome is the same: the same ops on the same state).
 * - A return of CAIRN_ENOMEM or CAIRN_EBUSY (the map could not grow) may come
 *   after ready: the caller applies the batch again later, without answering
 *   twice (ready itself can record that it ran). */
int mvcc_apply_ready(mvcc_store *s, const struct mvcc_op *ops, size_t n,
                     struct mvcc_result *results, void (*ready)(void *data), void *data);

/* Reads outside a batch, at the latest committed state. */
int mvcc_range(mvcc_store *s, const struct mvcc_range_req *req, struct mvcc_result *out);

/* State. */
int64_t mvcc_current_revision(const mvcc_store *s);
int64_t mvcc_compacted_revision(const mvcc_store *s);
uint64_t mvcc_applied_index(const mvcc_store *s);
uint64_t mvcc_applied_term(const mvcc_store *s);

/* File size (bytes the data file occupies, what the quota is measured against)
 * and bytes in use (pages not on LMDB's free list). */
int mvcc_size(mvcc_store *s, uint64_t *db_size, uint64_t *in_use);

/* Meta values written with MVCC_OP_META_PUT. Copies at most cap bytes into
 * buf and sets *len to the full length. CAIRN_EKEY_NOT_FOUND if unset. */
int mvcc_meta_get(mvcc_store *s, const char *name, void *buf, size_t cap, size_t *len);

/* Compaction runs in bounded steps: MVCC_OP_COMPACT moves the compacted
 * revision at once (reads below it fail from then on) and each step removes at
 * most max_entries superseded versions and tombstones in its own short write
 * transaction. *done is set when nothing is left to remove. 0 for
 * max_entries means MVCC_COMPACT_STEP_DEFAULT. */
int mvcc_compact_step(mvcc_store *s, size_t max_entries, bool *done);

/* Change feed: every change in [key, range_end) from position (start_revision,
 * start_sub) on, in revision order, into *out (free with mvcc_feed_free). At
 * most max_events events (capped at MVCC_FEED_EVENTS_MAX) and at most
 * MVCC_FEED_SCAN_MAX history entries inspected per call. Resume from
 * (next_revision, next_sub). CAIRN_ECOMPACTED if start_revision < the
 * compacted revision (as etcd, a feed from exactly the compacted revision is
 * allowed). */
struct mvcc_event {
  enum mvcc_event_type type;
  struct mvcc_kv kv; /* a DELETE holds the key and mod_revision only */
  bool has_prev_kv;
  struct mvcc_kv prev_kv;
};

struct mvcc_feed_req {
  struct mvcc_bytes key;
  struct mvcc_bytes range_end;
  int64_t start_revision;
  uint32_t start_sub; /* 0 to start at the beginning of start_revision */
  size_t max_events;
  bool prev_kv;
};

struct mvcc_feed {
  struct mvcc_event *events;
  size_t n_events;
  int64_t next_revision;
  uint32_t next_sub;
  bool caught_up;           /* true: no change at or after next position */
  int64_t current_revision; /* store revision at the time of the read */
  struct mvcc_arena *arena;
};

int mvcc_changes(mvcc_store *s, const struct mvcc_feed_req *req, struct mvcc_feed *out);
void mvcc_feed_free(struct mvcc_feed *f);

/* Leases. */
int mvcc_lease_get(mvcc_store *s, int64_t id, struct mvcc_lease *out);
/* All leases, sorted by id. *out is malloc'd; the caller frees it. */
int mvcc_lease_list(mvcc_store *s, struct mvcc_lease **out, size_t *n);
/* The keys attached to a lease, as a result of type MVCC_OP_RANGE whose kvs
 * hold only keys. */
int mvcc_lease_keys(mvcc_store *s, int64_t id, struct mvcc_result *out);

/* Snapshots. Export writes one consistent compacted copy of the store to path
 * (created, must not exist). Blocking: run it off the loop (thread pool).
 * Import replaces the store in directory dir (which must not be open) with the
 * snapshot file at path, verifying it first. */
int mvcc_snapshot_export(mvcc_store *s, const char *path);
int mvcc_snapshot_import(const char *dir, const char *path);

/* What a snapshot file holds, as mvcc_snapshot_verify() read it. */
struct mvcc_snapshot_info {
  uint64_t applied_index; /* the raft index of the last entry in it */
  uint64_t applied_term;
  int64_t revision;
  int64_t compacted_revision;
  uint64_t file_bytes;
};

/* Reads the snapshot file at path (as mvcc_snapshot_export() writes it) and
 * checks it: an LMDB file whose pages all lie inside it, holding a Cairn
 * store (format marker, the five databases, the meta state), whose every kv
 * and history record decodes, with no revision above the store's. Touches no
 * open store and no shared state, opens the file read-only without a lock
 * file: blocking, meant for a thread-pool thread. info may be NULL.
 * Errors: CAIRN_EFOREIGN_FILE (not an LMDB file, or not a Cairn store),
 * CAIRN_ECORRUPT (a record, a size or the meta state is wrong), CAIRN_EIO,
 * CAIRN_ENOMEM. */
int mvcc_snapshot_verify(const char *path, struct mvcc_snapshot_info *info);

/* Replaces the open store's data with the snapshot file at path, in place:
 * the handle s stays valid for everyone holding it (as with mvcc_defrag()),
 * and reads from then on see the snapshot's data, revision and applied
 * index. path must have passed mvcc_snapshot_verify() (replace only checks
 * the file's format and meta state again, cheaply) and must be on the file
 * system of the store's directory: it is moved, not copied, and is gone on
 * success. Steps: the current data file is synced, a sync marker true for
 * both files is written, the environment is closed, path is renamed over
 * the data file and the directory synced, and the store is reopened. A
 * crash at any point leaves either the old store or the new one, whole.
 * Blocking (two fsyncs and an open); no batch may be open, no checkpoint
 * in flight (see storage/checkpoint.h), and no export running.
 * Errors (the store is then unchanged and path left where it was):
 * CAIRN_EBUSY (an export runs), CAIRN_EINVAL (path on another file system,
 * or not a regular file), CAIRN_EFOREIGN_FILE / CAIRN_ECORRUPT (path is not
 * a Cairn store), CAIRN_EIO. A store that cannot be reopened after the
 * rename stops the process (as mvcc_defrag()). */
int mvcc_replace(mvcc_store *s, const char *path);

/* Defragmentation: rewrites the store as a compacting copy and reopens it,
 * returning free pages to the file system. Blocking; no batch may be open. */
int mvcc_defrag(mvcc_store *s);

/* The data file's descriptor, for checkpoints (storage/checkpoint.h); -1 if
 * the store has none (a failed reopen). */
int mvcc_fd(const mvcc_store *s);
/* How many times the store dropped its mapping of the data file. */
uint64_t mvcc_map_releases(const mvcc_store *s);
/* Whether a read of the data file maps only the page it reads (fault-around
 * off: Linux 6.7 or later with userfaultfd allowed; storage/mvcc_release.c). */
bool mvcc_map_exact(const mvcc_store *s);
/* Pages of finished history leaves unmapped (exact mapping only). */
uint64_t mvcc_map_unmapped(const mvcc_store *s);

/* The sync marker: a small file beside the data file that says up to which
 * LMDB transaction the data file is known to be on disk, and in which boot of
 * the machine it was written. With MDB_NOSYNC a machine crash (not a process
 * crash: the page cache survives those) can leave LMDB's newest meta page on
 * disk without the pages it points to; mvcc_open() detects that case (a
 * different boot and transactions newer than the marker) and refuses the
 * store with CAIRN_EUNSYNCED rather than serving a torn B-tree. The caller
 * then rebuilds the store from a snapshot and the raft log.
 * A checkpoint fills the marker at its start (mvcc_sync_marker), fsyncs the
 * data file, then writes the marker to mvcc_sync_marker_fd() at offset 0 and
 * fsyncs that. mvcc_close(), mvcc_defrag() and mvcc_snapshot_import() sync
 * and write the marker themselves. CAIRN_BOOT_ID in the environment
 * overrides the machine's boot id (tests use it to simulate a reboot). */
#define MVCC_SYNC_MARKER_BYTES 64u
#define MVCC_SYNC_MARKER_FILE "synced"
void mvcc_sync_marker(mvcc_store *s, uint8_t buf[MVCC_SYNC_MARKER_BYTES]);
int mvcc_sync_marker_fd(const mvcc_store *s);

/* Durability: batches commit with MDB_NOSYNC, so a committed batch survives
 * a process crash but not a machine crash until a checkpoint
 * (storage/checkpoint.h) has synced the file; the raft log is the durable
 * record until then. */

/* The path of the data file inside dir. */
#define MVCC_DATA_FILE "data.mdb"

#endif
