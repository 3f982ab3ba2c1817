/* raft/membership.h: the member table and membership changes, inside raft/.
 * The public side is the "membership" section of raft/raftnode.h; these are
 * the hooks raftnode.c calls. See docs/raft.md, "Membership". */
#ifndef CAIRN_MEMBERSHIP_H
#define CAIRN_MEMBERSHIP_H

#include <stdbool.h>
#include <stdint.h>

#include "raftnode.h"

struct membership;

/* In raftnode_start(), after the ids were computed from the flags and the
 * raft directory was looked at (used: it holds raft's metadata), before
 * raft_init(): settles this member's id (kept in <data_dir>/member_id from
 * its first start on; a new member joining an existing cluster takes
 * memberid_added() of its peer URLs), the cluster id (the replicated table's
 * when the store holds it; 0 for a joining member until the table reaches
 * it), loads the table, and fills self_address (host:port raft binds).
 * Sets n->ids.self_id and n->ids.cluster_id. Errors: CAIRN_EINVAL,
 * CAIRN_ECORRUPT (an undecodable table or id file), CAIRN_ENOMEM, CAIRN_EIO;
 * the reason on stderr. Nothing to undo on error but membership_free(). */
int membership_prepare(raftnode *n, const struct raftnode_options *opts, const char *data_dir,
                       bool used, char *self_address, size_t cap);

/* After the node's timers were initialized: starts the membership timers
 * (adds to n->handles_open) and wraps the transport's connect so that raft
 * dials each member at the address the table holds for it. */
void membership_start(raftnode *n);

/* Every op the state machine applied (raftnode.c's op hook). */
void membership_on_op(raftnode *n, const struct mvcc_op *op, const struct mvcc_result *result);

/* When the node's handles close: closes the membership timers with cb. */
void membership_close_handles(raftnode *n, void (*cb)(uv_handle_t *h));

/* Last, before the node is freed (raft is closed): delivers what is left
 * and frees the state. NULL-safe on a node that never prepared. */
void membership_free(raftnode *n);

#endif
