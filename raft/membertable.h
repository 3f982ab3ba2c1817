/* raft/membertable.h: the replicated member table, its binary encoding and
 * its checks. Internal to raft/ (raft/membership.c drives it).
 *
 * The table is one meta value of the store (MEMBERTABLE_META_NAME, written
 * with MVCC_OP_META_PUT through raft), so snapshots of the store carry it:
 * the cluster id, every member (id, name, peer URLs, client URLs, learner
 * flag) and the ids of removed members (etcd refuses those). It is written
 * whole, by the leader only, one write at a time (membership.c serializes
 * them), each computed from the table as applied: no write is lost.
 *
 * Encoding (version 1), all integers little endian:
 *   "CMT1", cluster_id u64, n_members u32, n_removed u32,
 *   then each member: id u64, flags u8 (bit 0: learner), name, n_peer u8,
 *   peer URLs, n_client u8, client URLs; then the removed ids (u64 each).
 * A string is a u16 length, the bytes, then one 0 byte (so that a decoded
 * table points into its own copy of the buffer). Members are sorted by id
 * and unique; removed ids sorted and unique. Decoding checks all of it and
 * refuses anything else with CAIRN_ECORRUPT. */
#ifndef CAIRN_MEMBERTABLE_H
#define CAIRN_MEMBERTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MEMBERTABLE_META_NAME "members"
/* Members at once (raft's configuration bound, raft/memberid.h). */
#define MEMBERTABLE_MEMBERS_MAX 64u
/* Removed ids remembered. At the bound the smallest is forgotten (ids carry
 * no age); 4096 removals are far beyond practice. */
#define MEMBERTABLE_REMOVED_MAX 4096u
/* Peer URLs and client URLs per member, each. */
#define MEMBERTABLE_URLS_MAX 16u
/* A name or a URL, bytes. */
#define MEMBERTABLE_STRING_MAX 1024u

struct membertable_member {
  uint64_t id;
  bool is_learner;
  const char *name; /* "" until the member published itself */
  const char *peer_urls[MEMBERTABLE_URLS_MAX];
  size_t n_peer_urls;
  const char *client_urls[MEMBERTABLE_URLS_MAX];
  size_t n_client_urls;
};

/* The strings of a decoded table point into buf (owned, freed by
 * membertable_free); a table being built may point anywhere the builder
 * keeps alive until it is encoded. */
struct membertable {
  uint64_t cluster_id;
  size_t n;
  struct membertable_member members[MEMBERTABLE_MEMBERS_MAX]; /* by id */
  size_t n_removed;
  uint64_t removed[MEMBERTABLE_REMOVED_MAX]; /* sorted */
  uint8_t *buf;
};

/* Encodes t into a malloc'd buffer (*out, *len; the caller frees it).
 * Members and removed ids must be sorted and unique (asserted).
 * Errors: CAIRN_EINVAL (a string longer than MEMBERTABLE_STRING_MAX),
 * CAIRN_ENOMEM. */
int membertable_encode(const struct membertable *t, uint8_t **out, size_t *len);

/* Decodes len bytes at buf into *t (which owns a copy; free it with
 * membertable_free). Errors: CAIRN_ECORRUPT, CAIRN_ENOMEM; *t is then
 * empty. */
int membertable_decode(const void *buf, size_t len, struct membertable *t);

void membertable_free(struct membertable *t);

/* The member with this id, or NULL. */
const struct membertable_member *membertable_find(const struct membertable *t, uint64_t id);
bool membertable_is_removed(const struct membertable *t, uint64_t id);

/* Inserts m (a copy of the struct: its strings are not copied) in id
 * order. CAIRN_EINVAL if the table is full or holds the id already. */
int membertable_insert(struct membertable *t, const struct membertable_member *m);
/* Removes member id and records it as removed (the smallest removed id is
 * dropped when MEMBERTABLE_REMOVED_MAX are remembered). */
void membertable_remove(struct membertable *t, uint64_t id);
/* Forgets a removed id (a member added again with the same peer URLs gets
 * the same id: see docs/raft.md, "Membership"). */
void membertable_unremove(struct membertable *t, uint64_t id);

/* Whether any member other than except_id has one of these peer URLs. */
bool membertable_peer_url_taken(const struct membertable *t, const char *const *urls, size_t n,
                                uint64_t except_id);

#endif
