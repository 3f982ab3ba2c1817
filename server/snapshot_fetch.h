/* server/snapshot_fetch.h: catching up by store transfer.
 *
 * When this member's store is behind raft's snapshot (raftnode_on_store_needed:
 * the leader installed a snapshot, which is only a marker, or the member
 * restarted before an earlier transfer finished), the store itself is
 * fetched from another member:
 *
 *   1. source: the leader (raftnode_status), else the other members in turn,
 *      each through its first client URL (raftnode_member_client_url);
 *   2. /etcdserverpb.Maintenance/Snapshot is streamed from it with the gRPC
 *      client into <data-dir>/member/snap.fetch(.tmp) through the snapshot
 *      stream writer (fileio: never the whole store in memory, never the
 *      loop blocked on the disk); reception pauses while a chunk is written;
 *   3. the stream's last 32 bytes are etcd's SHA-256 trailer: checked against
 *      the SHA-256 of everything before it;
 *   4. mvcc_snapshot_verify() on the thread pool, which also tells the
 *      snapshot's applied index: it must reach what raft needs;
 *   5. once no checkpoint (ours or raft's) and no export holds the data file,
 *      mvcc_replace() and raftnode_store_replaced(); the lessor reloads its
 *      leases from the new store; the watch hub hears the new revision from
 *      raft and reads the events in between from the new store's history
 *      (or cancels watchers whose position it compacted, as etcd).
 *
 * Any failure (no source, a call error, a stalled stream, a bad trailer, a
 * store not far enough) removes the temporary files and retries with backoff
 * (SNAPSHOT_FETCH_RETRY_MS_MIN doubling to SNAPSHOT_FETCH_RETRY_MS_MAX), the
 * next source first. One fetch at a time. Every step is logged. Temporary
 * files left by a crash are removed at start-up.
 *
 * Threading: the loop thread. Errors: 0 or a negative CAIRN_E* code. */
#ifndef CAIRN_SNAPSHOT_FETCH_H
#define CAIRN_SNAPSHOT_FETCH_H

struct server;

#define SNAPSHOT_FETCH_RETRY_MS_MIN 500u
#define SNAPSHOT_FETCH_RETRY_MS_MAX 30000u
/* A stream that delivers nothing for this long is given up (and retried). */
#define SNAPSHOT_FETCH_STALL_MS 30000u
/* How long a fetched store may wait for the data file to be free of
 * checkpoints and exports before the attempt is given up. */
#define SNAPSHOT_FETCH_REPLACE_WAIT_MS 30000u
/* The temporary file, under <data-dir>/member (snapstream adds ".tmp"). */
#define SNAPSHOT_FETCH_FILE "snap.fetch"

/* Removes temporary files of an earlier run and listens for the store-needed
 * callback of s->raft. s->raft, s->store, s->fio and s->cfg must be set.
 * Errors: CAIRN_ENOMEM. */
int snapshot_fetch_init(struct server *s);

/* Ends a fetch in progress (the call cancelled, the temporary file removed;
 * a verification already on the thread pool is waited for), stops
 * listening, then done(data) runs from the loop. Before raftnode_stop(). */
void snapshot_fetch_stop(struct server *s, void (*done)(void *data), void *data);

#endif
