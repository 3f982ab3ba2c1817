/* raft/command.h: the binary encoding of a raft entry's payload: one
 * struct mvcc_op (storage/mvcc.h) with the request id of its proposal.
 *
 * Layout (version 1): one version byte, the request id (8 bytes, little
 * endian), then the op: integers as LEB128 varints (signed ones zigzagged),
 * byte strings as a varint length and the bytes, booleans packed in a flags
 * byte, lists as a varint count and the elements; then zero bytes up to a
 * multiple of COMMAND_ALIGN. A put of a small key and value costs 24 bytes.
 * The encoding is canonical: decoding and re-encoding gives the same bytes.
 *
 * The padding is libraft 0.15's need, not ours: its uv backend writes entries
 * padded to 8 bytes but its loader of closed segments advances by the
 * unpadded length, so a log holding entries of other lengths cannot be read
 * back after a restart ("entries count ... in preamble is too high").
 *
 * Decoding trusts nothing: every length and count is checked against the
 * bytes left, every enum and flag against its known values, varints must be
 * minimal, nesting is bounded, and anything after the op but the exact zero
 * padding is refused. A malformed or
 * truncated buffer is CAIRN_ECORRUPT, never a crash. Every element of a list
 * takes at least one input byte, so what a decode allocates is bounded by a
 * small multiple of the input length (at most sizeof(struct mvcc_request_op)
 * per input byte, plus the copied bytes). */
#ifndef CAIRN_COMMAND_H
#define CAIRN_COMMAND_H

#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "storage/mvcc.h"

#define COMMAND_VERSION 1u
/* Every encoding's length is a multiple of this (see above). */
#define COMMAND_ALIGN 8u
/* Nesting of txns inside txns (a top-level txn is level 1). The store
 * refuses deeper than max_txn_ops + 1 levels (128 + 1 by default). */
#define COMMAND_TXN_LEVELS_MAX 256u
/* Compares, success ops or failure ops of one txn level. */
#define COMMAND_TXN_LIST_MAX 65536u
/* An encoded command; larger is CAIRN_ETOO_LARGE. etcd's request limit is
 * 1.5 MiB; this bound is only the codec's, well above it. */
#define COMMAND_BYTES_MAX (64u * 1024u * 1024u)
/* Meta names (MVCC_OP_META_PUT), as the store's limit. */
#define COMMAND_META_NAME_MAX 64u

struct command_arena;

/* A decoded command. Every pointer in op points into arena (never into the
 * decoded buffer), valid until command_free(). */
struct command {
  uint64_t request_id;
  struct mvcc_op op;
  struct command_arena *arena;
};

/* Encodes op with request_id into out->base, allocated with raft_malloc()
 * (the caller owns it: raft_apply() takes it over on success, otherwise
 * raft_free() it). op->raft_index and op->raft_term are encoded too.
 * Errors: CAIRN_EINVAL (unknown op or request type, an enum value outside
 * etcd's, a NULL byte string with a nonzero length, a meta name that is NULL,
 * empty or longer than COMMAND_META_NAME_MAX), CAIRN_ETOO_MANY_OPS (more than
 * COMMAND_TXN_LEVELS_MAX levels or COMMAND_TXN_LIST_MAX elements in a list),
 * CAIRN_ETOO_LARGE (over COMMAND_BYTES_MAX), CAIRN_ENOMEM. *out is untouched
 * on error. */
int command_encode(uint64_t request_id, const struct mvcc_op *op, struct raft_buffer *out);

/* Decodes len bytes at buf into *out. buf is only read during the call.
 * On success the caller releases out with command_free(). Errors:
 * CAIRN_ECORRUPT (malformed, truncated, unknown version), CAIRN_ENOMEM;
 * *out is then zeroed and holds nothing to free. */
int command_decode(const void *buf, size_t len, struct command *out);

/* Releases what a decoded command holds and zeroes it. NULL-safe, and safe on
 * a zeroed command. */
void command_free(struct command *c);

#endif
