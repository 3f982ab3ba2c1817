/* raft/raftlog.h: raft's log on storage/wal.c instead of libraft's
 * segments.
 *
 * raftlog_install() replaces five methods of a raft_uv io (load, append,
 * truncate, snapshot_put, close) and keeps libraft's for the rest: the
 * metadata (term, vote), snapshots, the transport, bootstrap. The log itself
 * lives in RAFT_DIR/log (storage/wal.h). Entries that libraft's own
 * segments hold at load (a data directory from an earlier Cairn, or the
 * first entry raft_bootstrap() writes) are copied into the wal, synced, and
 * the segment files deleted: they are read once.
 *
 * After a snapshot the wal drops the segments before the trailing entries;
 * an installed snapshot (trailing 0) replaces the whole log. See docs/raft.md,
 * "The raft log". */
#ifndef CAIRN_RAFTLOG_H
#define CAIRN_RAFTLOG_H

#include <raft.h>
#include <uv.h>

typedef struct raftlog raftlog;

/* Opens RAFT_DIR/log and wraps io (initialized by raft_uv_init, before
 * raft_init). The wrappers find the raftlog as the raftnode's log
 * (io->data is raft's, raft's data the raftnode), so *out must be stored in
 * raftnode.log before raft calls io. The raftlog closes itself when raft
 * closes io; if raft never used io, raftlog_abort() undoes it. Returns 0 or
 * a CAIRN_E* code (with a line on stderr). */
int raftlog_install(struct raft_io *io, uv_loop_t *loop, const char *raft_dir, raftlog **out);

/* Closes a raftlog whose io raft never used. */
void raftlog_abort(raftlog *l);

#endif
