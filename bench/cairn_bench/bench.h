/* bench/cairn_bench/bench.h: cairn-bench's shared state and its request
 * runner.
 *
 * cairn-bench is a load generator over the etcd v3 gRPC API
 * (docs/performance.md, "cairn-bench"). Everything runs on one libuv loop:
 * wire/grpc_client.h carries the calls, protobuf-c packs requests into one
 * reused scratch buffer and unpacks responses into a fixed arena, so the
 * hot path allocates nothing of its own (the wire layer allocates its call
 * object per call; that is its contract, not ours to change here).
 *
 * The runner: --clients slots, each at most one unary request in flight,
 * spread over the --conns connections. A phase (the preload, the measured
 * run, the lease revokes) gives the runner a number of requests or a
 * deadline, an issue function that builds and starts one request for a
 * slot, and optionally a gate (the watch workload's put rate). The
 * workload's response callback calls bench_slot_done(), which records the
 * latency, and the runner starts the slot's next request. */
#ifndef CAIRN_BENCH_BENCH_H
#define CAIRN_BENCH_BENCH_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/cairn_assert.h"
#include "hist.h"
#include "wire/grpc_client.h"

/* Bounds of the command line. */
#define BENCH_ENDPOINTS_MAX 64u
#define BENCH_CONNS_MAX 1024u
#define BENCH_CLIENTS_MAX 100000u
#define BENCH_KEY_SIZE_MAX 4096u
#define BENCH_PREFIX_BYTES_MAX 1024u
#define BENCH_VAL_SIZE_MAX (4u << 20)
#define BENCH_KEY_SPACE_MAX (1u << 26) /* txn keeps one int64 per key */
#define BENCH_WATCHERS_MAX 1000000u
#define BENCH_WATCH_STREAMS_MAX 100000u
#define BENCH_KEEPALIVES_MAX 100000u
/* The first error text kept (later ones are only counted). */
#define BENCH_ERROR_TEXT_MAX 512u
/* The response arena: a message that needs more falls back to malloc. */
#define BENCH_ARENA_BYTES (256u * 1024u)
/* With no success yet, a run stops after this many failures: the server is
 * not there, and spinning through --total failures says nothing more. */
#define BENCH_FAILFAST_ERRORS 1000u

enum bench_workload {
  BENCH_PUT,
  BENCH_RANGE,
  BENCH_TXN,
  BENCH_DELETE,
  BENCH_MIXED,
  BENCH_WATCH,
  BENCH_LEASE,
};

struct bench_config {
  enum bench_workload workload;
  const char *workload_name;
  char *endpoints_arg;                  /* as given (owned) */
  char *endpoints[BENCH_ENDPOINTS_MAX]; /* pointers into endpoints_arg */
  unsigned n_endpoints;
  unsigned conns;
  unsigned clients;
  uint64_t total;
  double duration_s; /* > 0: run by time, not by total */
  unsigned key_size;
  unsigned val_size;
  uint64_t key_space;
  const char *prefix;
  uint64_t seed;
  bool sequential;
  bool serializable; /* --consistency s */
  double read_ratio;
  bool preload;
  unsigned watchers;
  unsigned watch_streams;
  double put_rate;
  int64_t lease_ttl;
  unsigned keepalives;
  const char *json_path;
  bool quiet;
  const char *cacert, *cert, *key;
  bool insecure;
  uint64_t timeout_ms;
};

struct bench;
struct bench_slot;

/* Starts slot s's request (s->seq is its number in the phase). Returns 0, or
 * a negative CAIRN_E* code if nothing was started (counted as a failure). */
typedef int (*bench_issue_fn)(struct bench_slot *s);
/* May one more request start now? (NULL: always.) */
typedef bool (*bench_gate_fn)(struct bench *b);

struct bench_slot {
  struct bench *b;
  grpc_client *conn;
  uint64_t seq;      /* the request's number in its phase */
  uint64_t t0_ns;    /* when it was started */
  uint64_t key;      /* key index of the request, if any */
  int op;            /* workload-defined */
  struct hist *also; /* a second histogram the latency goes to (mixed), or NULL */
  bool busy;
};

struct bench_phase {
  const char *name;    /* for the progress line */
  bool measured;       /* latencies go to the histograms */
  bool errors_private; /* failures are not the run's first_error (clean-up) */
  uint64_t total;      /* requests to start; 0: until deadline_ns */
  uint64_t deadline_ns;
  bench_issue_fn issue;
  bench_gate_fn gate;
  /* Progress of the phase. */
  uint64_t issued, completed, ok, errors;
  uint64_t t_start_ns, t_end_ns;
  bool done;
};

struct bench_arena {
  size_t used;
  uint64_t spilled; /* allocations that went to malloc since the last reset */
  ProtobufCAllocator allocator;
  _Alignas(16) uint8_t buf[BENCH_ARENA_BYTES];
};

struct bench {
  struct bench_config cfg;
  uv_loop_t loop;
  bool loop_ready; /* uv_loop_init() succeeded: teardown closes it */
  grpc_client **conns;
  unsigned n_conns_open;
  struct bench_slot *slots;
  unsigned *idle; /* stack of idle slot indexes */
  unsigned n_idle;
  struct bench_phase *phase;
  uv_timer_t progress_timer;
  uv_timer_t wait_timer; /* wakes bench_wait() at its deadline */
  uint64_t progress_last_ns, progress_last_done;

  /* What the report prints. */
  struct hist lat;           /* the measured requests */
  struct hist lat_read;      /* mixed */
  struct hist lat_write;     /* mixed */
  struct hist lat_delivery;  /* watch */
  struct hist lat_keepalive; /* lease */
  uint64_t errors;           /* measured failures (all phases' failures go to first_error) */
  char first_error[BENCH_ERROR_TEXT_MAX];
  bool have_error;
  double elapsed_s;
  double client_cpu_s;
  uint64_t txn_succeeded, txn_failed;
  uint64_t deleted;
  uint64_t watch_events, watch_before_ack, watch_missing, watch_duplicates;
  double watch_events_per_s;
  unsigned watch_created;
  uint64_t keepalive_requests, keepalive_errors;

  /* Scratch for building requests: the wire layer copies each request
   * message when the call starts, so one buffer serves every slot. */
  uint8_t *scratch;
  size_t scratch_cap;
  uint8_t *key_buf; /* prefix + key_size digits */
  size_t key_len;
  uint8_t *range_end; /* the prefix's range end (watch, cleanup) */
  size_t range_end_len;
  uint8_t *value; /* val_size bytes */
  uint64_t rng;

  void *workload_state; /* owned by the workload module */
  struct bench_arena *arena;
};

/* ---- helpers (bench.c) ---- */

uint64_t bench_now_ns(void);
/* User + system CPU seconds of this process so far. */
double bench_cpu_s(void);
uint64_t bench_rand(struct bench *b);
/* A key index for the next request: sequential (seq modulo the key space)
 * or uniform. */
uint64_t bench_pick_key(struct bench *b, uint64_t seq);
/* Writes key index i into b->key_buf (prefix + key_size zero-padded decimal
 * digits) and returns it; valid until the next call. */
const uint8_t *bench_key(struct bench *b, uint64_t i);
/* Records a failure: the first text is kept ("what: message"). */
void bench_error(struct bench *b, const char *what, int status, const char *message);
/* Packs msg into b->scratch (grown, bounded by the message size the config
 * allows, at set-up; never on the hot path once sized). */
int bench_pack(struct bench *b, const ProtobufCMessage *msg, const uint8_t **out, size_t *len);
/* Unpacks into the arena; release with bench_unpacked_free(). NULL on a
 * malformed message. */
ProtobufCMessage *bench_unpack(struct bench *b, const ProtobufCMessageDescriptor *d,
                               const uint8_t *msg, size_t len);
void bench_unpacked_free(struct bench *b, ProtobufCMessage *m);

/* Runs one phase to its end on the loop. Returns 0, or CAIRN_EIO if every
 * request of a measured phase failed (or the fail-fast bound hit). */
int bench_run_phase(struct bench *b, struct bench_phase *p);
/* The end of slot s's request: status is a gRPC status (0 OK); message
 * the error text. Records, then starts the next request of the phase. */
void bench_slot_done(struct bench_slot *s, int status, const char *message);
/* Starts requests on idle slots while the phase and its gate allow; ends
 * the phase when nothing is left in flight or to start. */
void bench_kick(struct bench *b);
/* Runs the loop until *flag is true or deadline_ns passes (0: none); used
 * by set-up and drain steps. Returns true if *flag became true. */
bool bench_wait(struct bench *b, const bool *flag, uint64_t deadline_ns);

/* ---- workloads ---- */

/* put, range, txn, delete, mixed (kv_load.c). */
int kvload_run(struct bench *b);
/* The preload: every key of the key space written once, not measured. */
int kvload_preload(struct bench *b);
/* watch (watch_load.c). */
int watchload_run(struct bench *b);
/* lease (lease_load.c). */
int leaseload_run(struct bench *b);

/* ---- output (report.c) ---- */

/* Writes the JSON report to path ("-": stdout). 0 or CAIRN_EIO. */
int report_json(const struct bench *b, const char *path);
/* Prints the human table to stdout. */
void report_table(const struct bench *b);

#endif
