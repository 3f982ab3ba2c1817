/* client/lease.c: the unary calls of the Lease service (client/cairn.h).
 * LeaseTimeToLive and LeaseLeases are read-only (retried on any
 * UNAVAILABLE); LeaseGrant and LeaseRevoke are not: a grant retried after
 * it was applied would make a second lease (or fail with "lease already
 * exists"), a revoke would fail with "requested lease not found". The
 * keep-alive stream is client/keepalive.c. */
#include "client/client_int.h"

#define LEASE_GRANT "/etcdserverpb.Lease/LeaseGrant"
#define LEASE_REVOKE "/etcdserverpb.Lease/LeaseRevoke"
#define LEASE_TTL "/etcdserverpb.Lease/LeaseTimeToLive"
#define LEASE_LEASES "/etcdserverpb.Lease/LeaseLeases"

int cairn_lease_grant(cairn_client *c, int64_t ttl_s, int64_t id,
                      const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
  req.ttl = ttl_s;
  req.id = id;
  return cairn_unary(c, LEASE_GRANT, &req.base, &etcdserverpb__lease_grant_response__descriptor,
                     false, opts, cb, data);
}

int cairn_lease_revoke(cairn_client *c, int64_t id, const struct cairn_call_opts *opts,
                       cairn_cb cb, void *data) {
  Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
  req.id = id;
  return cairn_unary(c, LEASE_REVOKE, &req.base, &etcdserverpb__lease_revoke_response__descriptor,
                     false, opts, cb, data);
}

int cairn_lease_time_to_live(cairn_client *c, int64_t id, bool keys,
                             const struct cairn_call_opts *opts, cairn_cb cb, void *data) {
  Etcdserverpb__LeaseTimeToLiveRequest req = ETCDSERVERPB__LEASE_TIME_TO_LIVE_REQUEST__INIT;
  req.id = id;
  req.keys = keys;
  return cairn_unary(c, LEASE_TTL, &req.base,
                     &etcdserverpb__lease_time_to_live_response__descriptor, true, opts, cb, data);
}

int cairn_lease_leases(cairn_client *c, const struct cairn_call_opts *opts, cairn_cb cb,
                       void *data) {
  Etcdserverpb__LeaseLeasesRequest req = ETCDSERVERPB__LEASE_LEASES_REQUEST__INIT;
  return cairn_unary(c, LEASE_LEASES, &req.base, &etcdserverpb__lease_leases_response__descriptor,
                     true, opts, cb, data);
}
