/* raft/pending.h: the proposals in flight, by request id: a fixed-capacity
 * open-addressing table (linear probing, deletion by backward shift, so no
 * tombstones accumulate), at most half full so that probes stay short.
 *
 * The table stores pointers it does not own. Bounds: PENDING_CAPACITY
 * entries; one more is CAIRN_ETOO_MANY_REQUESTS. */
#ifndef CAIRN_PENDING_H
#define CAIRN_PENDING_H

#include <stddef.h>
#include <stdint.h>

#include "raftnode.h"

#define PENDING_CAPACITY RAFTNODE_INFLIGHT_MAX
#define PENDING_SLOTS (2u * PENDING_CAPACITY)

struct pending_slot {
  uint64_t id;
  void *value; /* NULL: free slot */
};

struct pending_table {
  size_t count;
  struct pending_slot slots[PENDING_SLOTS];
};

void pending_init(struct pending_table *t);

/* Adds id -> value (value not NULL). Errors: CAIRN_ETOO_MANY_REQUESTS (full:
 * checked first), CAIRN_EINVAL (id present). */
int pending_insert(struct pending_table *t, uint64_t id, void *value);

/* The value of id, or NULL. */
void *pending_find(const struct pending_table *t, uint64_t id);

/* Removes id; returns its value, or NULL if it was not there. */
void *pending_remove(struct pending_table *t, uint64_t id);

#endif
