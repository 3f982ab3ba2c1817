/* storage/wal.h: the raft log's write-ahead file, with one synchronous write
 * in flight and zero-filled segments.
 *
 * Why not libraft's own log (raft/raftlog.c says where this plugs in):
 * libraft 0.15 preallocates its segments with fallocate(), so every
 * O_DIRECT|O_DSYNC write lands on unwritten extents and needs a journal
 * commit to convert them (0.5 ms per 8 KiB write here, against 0.17-0.27 ms
 * over written blocks), and it first tries each write with RWF_NOWAIT, which
 * the kernel refuses for such writes, then redoes it on the thread pool: one
 * more trip through the loop per write. See docs/raft.md, "The raft log".
 *
 * Records: (index, term, type, data). Indexes are contiguous; type is not 0.
 *
 * Files: DIR/NNNNNNNNNNNNNNNN.wal, NNNN a 16-digit hex sequence number.
 * Each file is WAL_SEGMENT_BYTES long (or longer for one big record) and is
 * filled with zeros and fsynced before use, by a preparer thread, so that
 * writes overwrite allocated blocks. Block 0 is the header (magic, sequence,
 * index of the first record, CRC-32C); an all-zero header is an unused
 * segment. Records follow from block 1: a 32-byte header (length, type,
 * index, term, CRC-32C of header and data) and the data, 8-byte aligned.
 * Each write starts at a 4 KiB block boundary and is padded with zeros to
 * one, so that no write rewrites a block that holds acknowledged records.
 *
 * Durability: a write is acknowledged only after pwrite() on an O_DSYNC
 * (and, where the file system allows, O_DIRECT) descriptor returned, and in
 * the order of the appends. At open, the log ends at the first record that
 * is missing, torn or out of sequence in the last used segment; whatever
 * follows it there is zeroed before anything new is written, so that stale
 * records can never be read as a continuation. A bad record in any other
 * segment, or a gap between segments, is corruption: wal_open() refuses.
 *
 * Threads: two per wal, the writer (writes, truncations, deletions, in the
 * order they were asked for) and the preparer (zero-filled spare segments).
 * Every function is called on the loop thread; every callback runs on it.
 *
 * Bounds: a write carries at most WAL_WRITE_BYTES of records (one larger
 * record goes alone); appends staged behind the write in flight are bounded
 * by the caller (raft's own limit on entries in flight). One spare segment
 * is kept ready. */
#ifndef CAIRN_WAL_H
#define CAIRN_WAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../common/cairn_error.h"

typedef struct wal wal;

#define WAL_SEGMENT_BYTES (16u << 20)
#define WAL_WRITE_BYTES (4u << 20)
#define WAL_BLOCK 4096u
/* The largest record's data; a longer one is refused with CAIRN_ETOO_LARGE. */
#define WAL_RECORD_MAX (256u << 20)

struct wal_record {
  uint64_t index;
  uint64_t term;
  uint8_t type; /* not 0 */
  const void *data;
  size_t len;
};

/* status: 0 when the records are durable, CAIRN_EIO or CAIRN_ENOSPACE when
 * the write failed (the wal then refuses every later append: a log with a
 * hole must not grow), CAIRN_ESTOPPED when the wal closed first. */
typedef void (*wal_append_cb)(void *data, int status);

struct wal_options {
  size_t segment_bytes; /* 0: WAL_SEGMENT_BYTES; rounded up to WAL_BLOCK */
};

/* Opens (creating DIR if needed) and checks the log, repairs a torn tail,
 * deletes unused segments and starts the two threads. Errors: CAIRN_EIO (with
 * a line on stderr), CAIRN_ECORRUPT (a bad record before the last segment's
 * tail, or a gap), CAIRN_ENOMEM. */
int wal_open(uv_loop_t *loop, const char *dir, const struct wal_options *opt, wal **out);

/* The first and last index in the log; both 0 when it is empty. next_index
 * is the index the next append must start at (last + 1, or what
 * wal_reset() set; 0 for an empty log that was never reset: any). */
uint64_t wal_first_index(const wal *w);
uint64_t wal_last_index(const wal *w);

/* Reads every record, in order: *out is one malloc'd block that holds the
 * array of *n records and their data (free() it). Call before any append. */
int wal_read_all(wal *w, struct wal_record **out, size_t *n);

/* Writes records now, from the calling thread, and waits until they are
 * durable: for importing a log at start, before any append. Same rules as
 * wal_append(). */
int wal_append_sync(wal *w, const struct wal_record *recs, size_t n);

/* Queues records (copied before the call returns). recs[0].index must be
 * the log's next index. cb runs once, after these records and every record
 * appended before them are durable (or failed). Errors (cb not called):
 * CAIRN_EINVAL (out of sequence, type 0), CAIRN_ETOO_LARGE, CAIRN_ENOMEM,
 * CAIRN_EIO (an earlier write failed), CAIRN_ESTOPPED. */
int wal_append(wal *w, const struct wal_record *recs, size_t n, wal_append_cb cb, void *data);

/* Drops the records from index on, after the writes queued before it; the
 * next append starts at index. */
int wal_truncate(wal *w, uint64_t index);

/* Drops every record; the next append starts at next_index (a snapshot
 * replaced the log). */
int wal_reset(wal *w, uint64_t next_index);

/* May delete whole segments whose records are all <= upto (never the one
 * being written). */
int wal_compact(wal *w, uint64_t upto);

/* Whether every append made so far has had its callback. */
bool wal_idle(const wal *w);

/* Calls cb once every append made so far has had its callback, from the
 * loop: status 0, or CAIRN_ESTOPPED when the wal closed first. For a
 * barrier (an installed snapshot replaces the log only after the writes
 * before it are settled). One waiter at a time; call only when
 * !wal_idle(w). */
void wal_after_appends(wal *w, void (*cb)(void *data, int status), void *data);

/* Stops the threads after the write in flight, cancels the appends not yet
 * written (CAIRN_ESTOPPED), and calls cb (may be NULL) from the loop when
 * everything is released. */
void wal_close(wal *w, void (*cb)(void *data), void *data);

#endif
