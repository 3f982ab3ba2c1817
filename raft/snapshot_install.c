/* raft/snapshot_install.c: a member whose store is behind raft's snapshot.
 *
 * raft's snapshot is only a marker (raft/fsm.h); the data is the store. When
 * a leader installs a snapshot here (or at start-up the snapshot on disk is
 * newer than the store), the state machine goes BEHIND: it applies nothing,
 * holds the entries raft hands it, and asks for a store. This file turns
 * that into the owner's listener (raftnode_on_store_needed), called from the
 * loop, and takes the owner's word that the store was replaced
 * (raftnode_store_replaced): the state machine then catches up from the
 * held entries. See docs/raft.md, "Snapshots". */
#include <inttypes.h>
#include <stdio.h>

#include "common/cairn_assert.h"
#include "raftnode_int.h"

/* From the state machine, inside libraft: only bookkeeping here; the
 * listener runs from the delivery timer. */
void snapinstall_on_behind(void *ctx) {
  raftnode *n = ctx;
  n->install.notify = true;
  raftnode_schedule_delivery(n);
}

/* The term of the snapshot that put the store behind, when raft still
 * knows it (its log starts right after that snapshot); 0 otherwise. */
static uint64_t marker_term(const raftnode *n) {
  return n->r->log.snapshot.last_index == n->fsm.marker_index ? n->r->log.snapshot.last_term : 0;
}

/* From deliver(), on the loop. */
void snapinstall_deliver(raftnode *n) {
  if (!n->install.notify || n->install.cb == NULL) {
    return;
  }
  n->install.notify = false;
  if (n->fsm.store_state != FSM_STORE_BEHIND || n->state != NODE_RUNNING) {
    return;
  }
  n->install.cb(n->install.data, n->fsm.need_index, marker_term(n));
}

void raftnode_on_store_needed(raftnode *n, raftnode_store_needed_cb cb, void *data) {
  CAIRN_ASSERT(n != NULL);
  n->install.cb = cb;
  n->install.data = data;
  if (cb != NULL && n->fsm.store_state == FSM_STORE_BEHIND) {
    /* Behind since start-up, before anyone listened. */
    n->install.notify = true;
    raftnode_schedule_delivery(n);
  }
}

int raftnode_store_replaced(raftnode *n) {
  CAIRN_ASSERT(n != NULL);
  /* The caller waited for raftnode_store_busy() to be false: no gated
   * checkpoint held the old data file's descriptor during the replace. */
  CAIRN_ASSERT(!n->put.pending);
  int rc = fsm_store_replaced(&n->fsm);
  if (rc == CAIRN_ENOT_CAPABLE) {
    fprintf(stderr,
            "cairn: raft: the new store (applied index %" PRIu64 ", revision %" PRId64
            ") is still behind (applied index %" PRIu64 ", revision %" PRId64 " needed)\n",
            mvcc_applied_index(n->store), mvcc_current_revision(n->store), n->fsm.need_index,
            n->fsm.need_revision);
    snapinstall_on_behind(n); /* ask again */
    return rc;
  }
  if (rc == 0) {
    fprintf(stderr,
            "cairn: raft: store replaced (applied index %" PRIu64 ", revision %" PRId64
            "); applying %zu held entries\n",
            mvcc_applied_index(n->store), mvcc_current_revision(n->store), n->fsm.n_held);
  }
  return rc;
}

bool raftnode_store_busy(const raftnode *n) {
  CAIRN_ASSERT(n != NULL);
  return n->put.pending;
}

bool raftnode_store_behind(const raftnode *n) {
  CAIRN_ASSERT(n != NULL);
  return n->fsm.store_state != FSM_STORE_CURRENT;
}
