/* client/client_int.h: what libcairn's modules share inside the library.
 *
 * client.c owns the endpoints, their gRPC connections and the retry rules
 * of unary calls. The long-lived objects (keepalive.c, watch.c, informer.c)
 * open their streams through cairn__stream() and handle their own
 * reconnects: on a failed stream they call cairn__endpoint_failed() and
 * open again after cairn__backoff_ms(). Every long-lived object registers
 * with its client (cairn__attach) so that cairn_client_close() can end it. */
#ifndef CAIRN_CLIENT_INT_H
#define CAIRN_CLIENT_INT_H

#include "client/cairn.h"
#include "wire/grpc_client.h"

/* A long-lived object of a client (watch, keep-alive, informer, snapshot
 * transfer): on the client's list from attach to detach. close_cb is called
 * by cairn_client_close() for each object still attached; it must end the
 * object (its on_end callback with CANCELLED GRPC_CLIENT_CLOSING_TEXT, from
 * the loop) and detach it. */
struct cairn__obj {
  struct cairn__obj *prev, *next;
  void (*close_cb)(struct cairn__obj *obj);
};
void cairn__attach(cairn_client *c, struct cairn__obj *obj);
void cairn__detach(cairn_client *c, struct cairn__obj *obj);
bool cairn__closing(const cairn_client *c);

/* Opens a stream (grpc_client_call) for path on the current endpoint, or on
 * endpoint_index if it is >= 0 (an index into the config's endpoints).
 * require_leader adds "hasleader: true". timeout_ms 0: none. On success
 * *used is the index of the endpoint the stream went to. Errors: those of
 * grpc_client_call(), CAIRN_ESTOPPED when the client is closing. */
int cairn__stream(cairn_client *c, const char *path, bool require_leader, int endpoint_index,
                  uint64_t timeout_ms, const struct grpc_client_handlers *h, void *data,
                  grpc_ccall **out, unsigned *used);

/* The stream or call on endpoint index failed with status (UNAVAILABLE,
 * a lost connection, "no leader"...): the client moves its current
 * endpoint past it, and skips it for a while. */
void cairn__endpoint_failed(cairn_client *c, unsigned index);

/* "host:port" of endpoint index. */
const char *cairn__endpoint_name(const cairn_client *c, unsigned index);

/* The index of endpoint s (as given in the config, or "host:port"), or -1. */
int cairn__endpoint_index(const cairn_client *c, const char *s);

/* Delay before reconnect attempt n (0, 1, ...): 25 ms doubling to 1 s, with
 * up to 25% jitter. */
uint64_t cairn__backoff_ms(unsigned attempt);

/* keepalive.c's per-client state (its shared LeaseKeepAlive stream): a
 * slot in the client, NULL until keepalive.c sets it. */
void **cairn__keepalive_slot(cairn_client *c);

/* The client's configuration after defaults were filled in. */
const struct cairn_config *cairn__config(const cairn_client *c);

/* The retry rules of cairn.h as functions (client.c uses them; tests call
 * them directly). cairn__should_retry: may a call that ended with code and
 * message be sent again, given whether it was idempotent and whether its
 * request was sent (grpc_ccall_request_sent)? cairn__refused_text: the
 * server refused without proposing ("etcdserver: not leader", "...: no
 * leader", "...: rpc not supported for learner"). cairn__endpoint_fault:
 * the failure is the endpoint's (the client moves on). */
bool cairn__should_retry(bool idempotent, bool sent, int code, const char *message);
bool cairn__refused_text(const char *message);
bool cairn__endpoint_fault(int code, const char *message);

/* The loop time (uv_now(), ms) since which the watch has had no watcher
 * on a server (between streams, or waiting for the created reply); 0 while
 * it has one. The informer's relist_after_ms is measured with it. */
uint64_t cairn__watch_down_since(const cairn_watch *w);

/* Packs msg into a malloc'ed buffer (*out, *len). CAIRN_ENOMEM. */
int cairn__pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len);

#endif
