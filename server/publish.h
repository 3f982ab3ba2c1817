/* server/publish.h: a follower records its own name and client URLs
 * (--name, --advertise-client-urls) in the replicated member table, as
 * etcd's members publish their attributes after they start.
 *
 * The leader records its own itself (raft/membership.c). A follower whose
 * attributes are not in the table as applied here calls
 * /cairnserverpb.Internal/Publish at the leader's first client URL (from
 * the table), every PUBLISH_RETRY_MS until the table shows them; nothing
 * runs once they are recorded, and it starts again if they are lost (a
 * leader's table from before this member published, after a restart with
 * other flags). One call in flight at most. */
#ifndef CAIRN_PUBLISH_H
#define CAIRN_PUBLISH_H

#include "server/server.h"

#define PUBLISH_RETRY_MS 500u

/* After raft started and the services registered. Errors: CAIRN_ENOMEM. */
int publish_init(struct server *s);

/* At shutdown (once): stops the timer and cancels the call in flight; the
 * handles close on the loop. */
void publish_stop(struct server *s);

#endif
