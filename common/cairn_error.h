/* common/cairn_error.h: Cairn's one table of error codes and texts.
 *
 * Every Cairn function that can fail returns 0 or a negative CAIRN_E* code.
 * Codes that have an etcd equivalent carry etcd's exact text and gRPC status
 * code, because etcd clients match errors by their text byte for byte. The
 * texts live only in common/cairn_error.c; never retype them elsewhere. */
#ifndef CAIRN_ERROR_H
#define CAIRN_ERROR_H

/* X(name, grpc_code, text). The enum value of CAIRN_E<name> is negative. */
#define CAIRN_ERRORS(X)                                                         \
  X(NOMEM, 8, "cairn: out of memory")                                           \
  X(INVAL, 3, "cairn: invalid argument")                                        \
  X(IO, 13, "cairn: input/output error")                                        \
  X(CORRUPT, 15, "etcdserver: corrupt cluster")                                 \
  X(REPLAY, 9, "cairn: raft entry already applied")                             \
  X(EMPTY_KEY, 3, "etcdserver: key is not provided")                            \
  X(KEY_NOT_FOUND, 3, "etcdserver: key not found")                              \
  X(TOO_MANY_OPS, 3, "etcdserver: too many operations in txn request")          \
  X(DUPLICATE_KEY, 3, "etcdserver: duplicate key given in txn request")         \
  X(TOO_LARGE, 3, "etcdserver: request is too large")                           \
  X(VALUE_PROVIDED, 3, "etcdserver: value is provided")                         \
  X(LEASE_PROVIDED, 3, "etcdserver: lease is provided")                         \
  X(COMPACTED, 11, "etcdserver: mvcc: required revision has been compacted")    \
  X(FUTURE_REV, 11, "etcdserver: mvcc: required revision is a future revision") \
  X(LEASE_TTL_TOO_LARGE, 11, "etcdserver: too large lease TTL")                 \
  X(NOSPACE, 8, "etcdserver: mvcc: database space exceeded")                    \
  X(TOO_MANY_REQUESTS, 8, "etcdserver: too many requests")                      \
  X(LEASE_NOT_FOUND, 5, "etcdserver: requested lease not found")                \
  X(MEMBER_NOT_FOUND, 5, "etcdserver: member not found")                        \
  X(LEASE_EXISTS, 9, "etcdserver: lease already exists")                        \
  X(AUTH_NOT_ENABLED, 9, "etcdserver: authentication is not enabled")           \
  X(NOT_LEADER, 9, "etcdserver: not leader")                                    \
  X(PERMISSION_DENIED, 7, "etcdserver: permission denied")                      \
  X(INVALID_AUTH_TOKEN, 16, "etcdserver: invalid auth token")                   \
  X(NO_LEADER, 14, "etcdserver: no leader")                                     \
  X(NOT_FOR_LEARNER, 14, "etcdserver: rpc not supported for learner")           \
  X(NOT_CAPABLE, 14, "etcdserver: not capable")                                 \
  X(STOPPED, 14, "etcdserver: server stopped")                                  \
  X(TIMEOUT, 14, "etcdserver: request timed out")                               \
  X(LEADER_CHANGED, 14, "etcdserver: leader changed")                           \
  X(WATCH_CANCELED, 1, "etcdserver: watch canceled")                            \
  X(FOREIGN_FILE, 15, "cairn: data file is not a Cairn store")                  \
  X(BUSY, 14, "cairn: resource busy")                                           \
  X(UNSYNCED, 15, "cairn: data file was not synced before the machine restarted")           \
  /* Membership (etcd 3.4's rpctypes). */                                                    \
  X(MEMBER_EXIST, 9, "etcdserver: member ID already exist")                                  \
  X(PEER_URL_EXIST, 9, "etcdserver: Peer URLs already exists")                               \
  X(MEMBER_NOT_ENOUGH_STARTED, 9,                                                            \
    "etcdserver: re-configuration failed due to not enough started members")                 \
  X(MEMBER_BAD_URLS, 3, "etcdserver: given member URLs are invalid")                         \
  X(MEMBER_NOT_LEARNER, 9, "etcdserver: can only promote a learner member")                  \
  X(LEARNER_NOT_READY, 9,                                                                    \
    "etcdserver: can only promote a learner member which is in sync with leader")            \
  X(TOO_MANY_LEARNERS, 9, "etcdserver: too many learner members in cluster")                 \
  X(UNHEALTHY, 14, "etcdserver: unhealthy cluster")                                          \
  X(BAD_LEADER_TRANSFEREE, 9, "etcdserver: bad leader transferee")                           \
  X(TIMEOUT_LEADER_TRANSFER, 2, "etcdserver: request timed out, leader transfer took too long")

enum cairn_error_code { /* (not "cairn_error": struct cairn_error is libcairn's, client/cairn.h) */
  CAIRN_OK = 0,
  CAIRN_E__BASE = -1000,
#define CAIRN_X_ENUM(name, grpc, text) CAIRN_E##name,
  CAIRN_ERRORS(CAIRN_X_ENUM)
#undef CAIRN_X_ENUM
      CAIRN_E__END
};

/* The text of a CAIRN_E* code (etcd's text where etcd has one). For an
 * unknown code it returns "cairn: unknown error". Static storage. */
const char *cairn_strerror(int code);

/* The gRPC status code a CAIRN_E* code is reported with (0 for 0, 2 UNKNOWN
 * for an unknown code). */
int cairn_grpc_code(int code);

#endif
