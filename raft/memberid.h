/* raft/memberid.h: etcd's member and cluster ids, derived from the initial
 * cluster, so that ids are stable across restarts and equal to the ids etcd
 * would give the same flags.
 *
 * As etcd 3.4 (etcdserver/api/membership NewMember, RaftCluster.genID) for
 * the members of --initial-cluster: a member's id is the first 8 bytes, read
 * big-endian, of the SHA-1 of its peer URLs (sorted, concatenated) followed by
 * the cluster token; the cluster id is the same of the members' ids, sorted,
 * each as 8 big-endian bytes. (etcd adds the time to the hash only for members
 * added at run time, which is not done here yet.) */
#ifndef CAIRN_MEMBERID_H
#define CAIRN_MEMBERID_H

#include <stddef.h>
#include <stdint.h>

#include "raftnode.h"

#define MEMBERID_MEMBERS_MAX 64u
/* A raft address "host:port", taken from a peer URL. */
#define MEMBERID_ADDRESS_MAX 256u
/* etcd's --initial-cluster-token default. */
#define MEMBERID_DEFAULT_TOKEN "etcd-cluster"

struct memberid_member {
  uint64_t id;
  const char *name;                   /* points into the caller's options */
  char address[MEMBERID_ADDRESS_MAX]; /* host:port of its first sorted peer URL */
};

struct memberid_cluster {
  uint64_t cluster_id;
  uint64_t self_id; /* the member called self_name */
  size_t n;
  struct memberid_member members[MEMBERID_MEMBERS_MAX]; /* sorted by id */
};

/* Computes the ids of the initial cluster (entries with the same name are one
 * member with several peer URLs) into *out. token NULL or "" means
 * MEMBERID_DEFAULT_TOKEN. Errors: CAIRN_EINVAL, with the reason on stderr: no
 * members, more than MEMBERID_MEMBERS_MAX, an empty name, a peer URL that is
 * not http(s)://host:port without a path, self_name not among the members,
 * two members with the same id; CAIRN_EIO if SHA-1 fails. */
int memberid_cluster(const char *self_name, const struct raftnode_member *initial, size_t n,
                     const char *token, struct memberid_cluster *out);

/* The id of a member added at run time (MemberAdd), from its peer URLs
 * alone: the first 8 bytes, big-endian, of SHA-1("cairn-added:" followed by
 * the URLs, trimmed, sorted and concatenated). etcd adds the time instead;
 * a deterministic id is what lets the new member, started with
 * --initial-cluster-state existing, find its own id without asking the
 * cluster (see docs/raft.md, "Membership"). Errors: CAIRN_EINVAL (no URL,
 * more than 16, or one that is not http(s)://host:port), CAIRN_EIO. */
int memberid_added(const char *const *peer_urls, size_t n, uint64_t *out);

/* The raft address (host:port) of a peer URL into buf. CAIRN_EINVAL if the
 * URL is not http(s)://host:port with an IPv4 host (libraft 0.15's TCP
 * transport needs one) or does not fit. */
int memberid_url_address(const char *url, char *buf, size_t cap);

#endif
