/* bench/storage_bench.c: the storage microbenchmark.
 *
 * Measures the MVCC layer (storage/mvcc.h) and, side by side in the same run,
 * raw LMDB doing the same work: one plain LMDB database with the MVCC store's
 * environment flags, the same keys and values, the same transaction grouping.
 * The question it answers is how much the MVCC layer costs on top of LMDB; the
 * goal is at most 2x on puts and gets. docs/storage-bench.md has the method
 * and the figures.
 *
 *   cairn-storage-bench --dir DIR [--keys N] [--json FILE] [--quick] ...
 *
 * DIR gets four fresh subdirectories (cairn, raw, cairn-hist, raw-hist) that
 * are removed at the end unless --keep. The table goes to stdout, progress to
 * stderr. Any failure of the store under test stops the run with a message:
 * a benchmark of a broken store measures nothing. */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "common/cairn_error.h"
#include "storage/mvcc.h"

/* Room for "/registry/pods/ns-%04u/pod-%08u" (35 bytes) with any uint64
 * values, and for the raw history key (user key + 8-byte revision). */
#define KEY_BUF 96
/* The largest write transaction the benchmark makes (puts per txn). */
#define BATCH_MAX 1000u
/* Puts per transaction when loading and when writing the history store. */
#define LOAD_BATCH 1000u
/* Reads between two clock checks. */
#define READ_CHUNK 64u
/* Latest gets per read transaction in the "shared read txn" raw variant. */
#define RAW_GETS_PER_TXN 1000u
/* Value header: key index (8 bytes) and write tag (8 bytes), so that every
 * read checks it got the right version. */
#define VALUE_HDR 16u
/* The version read by historical reads: the one written by this round. */
#define HIST_READ_ROUND 2u
/* Raw LMDB map size: RAW_MAP_FACTOR times the bytes of the entries it holds
 * (half-full pages and copy-on-write stay well inside), at least
 * RAW_MAP_MIN_BYTES. Sized to the run rather than huge so that the benchmark
 * also runs under valgrind, which refuses very large mappings. */
#define RAW_MAP_FACTOR 4u
#define RAW_MAP_MIN_BYTES (1ull << 30)
/* MVCC quota for the runs: far above what they write. */
#define CAIRN_QUOTA_BYTES (64ull << 30)
/* The MVCC store opens its environment with these flags (storage/mvcc.c:
 * store_env_open); the raw side uses the same. */
#define RAW_ENV_FLAGS (MDB_NOSYNC | MDB_NOTLS)
/* Limits on the options, so that keys keep their shape and arrays fit. */
#define KEYS_MAX 50000000ull
#define VALUE_BYTES_MAX (1024u * 1024u)
#define VERSIONS_MAX 100u
#define DIRS 4
/* A timed measurement runs in ROUNDS short rounds, the sides taking turns.
 * A rate is the median round; the raw/cairn ratio is the median of the
 * ratios of rounds run side by side, so that background load on a shared
 * machine, which drifts slowly, hits both terms of each ratio alike. */
#define ROUNDS 9u
/* A round runs at least this many steps (transactions, read chunks, scans). */
#define ROUND_STEPS_MIN 3u

enum side { SIDE_CAIRN = 0, SIDE_RAW = 1, SIDES = 2 };

enum row_id {
  ROW_LOAD,
  ROW_PUT1,
  ROW_PUT100,
  ROW_PUT1000,
  ROW_GET_SHARED,
  ROW_GET_PER_TXN,
  ROW_SCAN,
  ROW_HIST,
  ROW_COMPACT,
  ROW_COUNT
};

struct row_def {
  const char *id;
  const char *label;
  const char *unit;
  bool goal; /* covered by "at most 2x raw LMDB on puts and gets" */
};

static const struct row_def ROWS[ROW_COUNT] = {
    [ROW_LOAD] = {"load_insert_1000", "load: insert, 1000 puts/txn", "puts/s", true},
    [ROW_PUT1] = {"put_1", "put (overwrite), 1 put/txn", "puts/s", true},
    [ROW_PUT100] = {"put_100", "put (overwrite), 100 puts/txn", "puts/s", true},
    [ROW_PUT1000] = {"put_1000", "put (overwrite), 1000 puts/txn", "puts/s", true},
    [ROW_GET_SHARED] = {"get_latest_shared_txn", "get latest; raw: 1 read txn/1000 gets", "gets/s",
                        true},
    [ROW_GET_PER_TXN] = {"get_latest_txn_per_get", "get latest; raw: 1 read txn/get", "gets/s",
                         true},
    [ROW_SCAN] = {"scan_prefix", "prefix range scan", "keys/s", false},
    [ROW_HIST] = {"get_historical", "get at an older revision", "gets/s", false},
    [ROW_COMPACT] = {"compact", "compaction", "entries/s", false},
};

/* Phases selectable with --only. */
enum {
  PH_PUT1 = 1u << 0,
  PH_PUT100 = 1u << 1,
  PH_PUT1000 = 1u << 2,
  PH_PUTS = PH_PUT1 | PH_PUT100 | PH_PUT1000,
  PH_GETS = 1u << 3,
  PH_SCANS = 1u << 4,
  PH_HIST = 1u << 5,
  PH_COMPACT = 1u << 6,
  PH_ALL = (1u << 7) - 1
};

struct config {
  const char *dir;
  const char *json_path;
  uint64_t keys;
  uint64_t hist_keys;
  uint32_t versions;
  uint32_t value_bytes;
  uint32_t prefix_keys;
  double seconds; /* minimum duration of a timed measurement */
  uint64_t seed;
  bool quick;
  bool keep;
  bool sides[SIDES];
  unsigned phases;
};

struct measure {
  uint64_t ops;    /* over all rounds */
  double seconds;  /* over all rounds */
  unsigned rounds; /* 0: a single pass (load, compaction), rated ops / seconds */
  double round_rate[ROUNDS];
};

struct raw_db {
  MDB_env *env;
  MDB_dbi dbi;
};

struct bench {
  struct config cfg;
  double t_start;
  char dirs[DIRS][PATH_MAX];
  bool dir_made[DIRS];
  mvcc_store *cairn;      /* the main store */
  struct raw_db raw;      /* the main raw database */
  mvcc_store *cairn_hist; /* the history store */
  struct raw_db raw_hist; /* (key, revision) -> value */
  int64_t raw_hist_rev;   /* the raw history store's revision counter */
  int64_t hist_read_rev[SIDES];
  uint64_t file_bytes[2][SIDES]; /* data file sizes: [0] main, [1] history */
  /* Write buffers for one transaction. */
  char (*keys)[KEY_BUF];
  size_t *key_lens;
  uint8_t *values;
  uint64_t *idx;
  struct mvcc_op *ops;
  struct mvcc_result *results;
  uint8_t *copy; /* where raw reads copy what they read, as mvcc results do */
  size_t copy_cap;
  struct measure res[ROW_COUNT][SIDES];
  bool have[ROW_COUNT][SIDES];
};

static const char *const SIDE_NAME[SIDES] = {"cairn", "raw"};
static const char *const DIR_NAME[DIRS] = {"cairn", "raw", "cairn-hist", "raw-hist"};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("cairn-storage-bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static void progress(const struct bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void progress(const struct bench *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%6.1f s] ", now_s() - b->t_start);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (p == NULL) {
    fail("out of memory (%zu x %zu bytes)", n, size);
  }
  return p;
}

/* splitmix64: small, fast, and the same sequence on every machine. */
static uint64_t rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t rng_below(uint64_t *state, uint64_t n) {
  return rng_next(state) % n;
}

/* Each phase draws from its own stream, the same for both sides. */
static uint64_t phase_seed(const struct bench *b, uint64_t phase) {
  uint64_t s = b->cfg.seed ^ (phase * 0xD1B54A32D192ED03ull);
  return rng_next(&s);
}

static void shuffle(uint32_t *a, uint64_t n, uint64_t *rng) {
  for (uint64_t i = n; i > 1; i--) {
    uint64_t j = rng_below(rng, i);
    uint32_t t = a[i - 1];
    a[i - 1] = a[j];
    a[j] = t;
  }
}

/* ---- keys and values ---- */

/* Appends v in decimal, zero-padded to width digits. snprintf would cost as
 * much as an LMDB get and blur the comparison. */
static size_t put_dec(char *p, uint64_t v, size_t width) {
  char tmp[24];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n < width) {
    tmp[n++] = '0';
  }
  for (size_t k = 0; k < n; k++) {
    p[k] = tmp[n - 1 - k];
  }
  return n;
}

#define KEY_HEAD "/registry/pods/ns-"
#define KEY_POD "/pod-"

/* "/registry/pods/ns-%04u/pod-%08u" of namespace i / prefix_keys, pod i. */
static size_t make_key(char *buf, uint32_t prefix_keys, uint64_t i) {
  size_t n = sizeof KEY_HEAD - 1;
  memcpy(buf, KEY_HEAD, n);
  n += put_dec(buf + n, i / prefix_keys, 4);
  memcpy(buf + n, KEY_POD, sizeof KEY_POD - 1);
  n += sizeof KEY_POD - 1;
  n += put_dec(buf + n, i, 8);
  return n;
}
_Static_assert(KEY_BUF >= (sizeof KEY_HEAD - 1) + 20 + (sizeof KEY_POD - 1) + 20 + 8,
               "a key with the largest numbers plus a raw history revision fits KEY_BUF");

/* make_key must give exactly what the documented format gives. */
static void check_make_key(uint32_t prefix_keys, uint64_t keys) {
  const uint64_t samples[] = {0, 1, 99, 100, 4242, keys - 1, 99999999};
  for (size_t s = 0; s < sizeof samples / sizeof samples[0]; s++) {
    char got[KEY_BUF], want[KEY_BUF];
    size_t n = make_key(got, prefix_keys, samples[s]);
    int w = snprintf(want, sizeof want, "/registry/pods/ns-%04" PRIu64 "/pod-%08" PRIu64,
                     samples[s] / prefix_keys, samples[s]);
    if (w < 0 || n != (size_t)w || memcmp(got, want, n) != 0) {
      fail("make_key(%" PRIu64 ") = \"%.*s\", want \"%s\"", samples[s], (int)n, got, want);
    }
  }
}

/* The prefix of namespace ns and its range end ('/' + 1 is '0'). */
static size_t make_prefix(char *key, char *end, uint64_t ns) {
  size_t n = sizeof KEY_HEAD - 1;
  memcpy(key, KEY_HEAD, n);
  n += put_dec(key + n, ns, 4);
  key[n++] = '/';
  memcpy(end, key, n);
  end[n - 1] = '0';
  return n;
}

static void put_u64(uint8_t *p, uint64_t v) {
  memcpy(p, &v, sizeof v);
}

static uint64_t get_u64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

static void put_be64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--) {
    p[i] = (uint8_t)(v & 0xff);
    v >>= 8;
  }
}

static void check_value(const void *data, size_t len, uint32_t value_bytes, uint64_t i,
                        uint64_t tag, bool check_tag, const char *what) {
  const uint8_t *p = data;
  if (len != value_bytes || get_u64(p) != i || (check_tag && get_u64(p + 8) != tag)) {
    fail("%s: wrong value for key %" PRIu64 " (len %zu, index %" PRIu64 ", tag %" PRIu64
         ", want tag %" PRIu64 ")",
         what, i, len, len >= VALUE_HDR ? get_u64(p) : 0, len >= VALUE_HDR ? get_u64(p + 8) : 0,
         tag);
  }
}

/* ---- stores ---- */

static mvcc_store *cairn_open(const char *dir) {
  struct mvcc_options opts = {.quota_bytes = CAIRN_QUOTA_BYTES};
  mvcc_store *s = NULL;
  int rc = mvcc_open(dir, &opts, &s);
  if (rc != 0) {
    fail("mvcc_open %s: %s", dir, cairn_strerror(rc));
  }
  return s;
}

/* entries: how many key-value pairs the database will hold at most. */
static void raw_open(const char *dir, struct raw_db *r, uint64_t entries, uint32_t value_bytes) {
  MDB_txn *txn;
  uint64_t map = RAW_MAP_FACTOR * entries * (KEY_BUF + value_bytes);
  if (map < RAW_MAP_MIN_BYTES) {
    map = RAW_MAP_MIN_BYTES;
  }
  int rc = mdb_env_create(&r->env);
  if (rc == 0) {
    rc = mdb_env_set_mapsize(r->env, (size_t)map);
  }
  if (rc == 0) {
    rc = mdb_env_open(r->env, dir, RAW_ENV_FLAGS, 0644);
  }
  if (rc == 0) {
    rc = mdb_txn_begin(r->env, NULL, 0, &txn);
  }
  if (rc == 0) {
    rc = mdb_dbi_open(txn, NULL, 0, &r->dbi);
    if (rc == 0) {
      rc = mdb_txn_commit(txn);
    } else {
      mdb_txn_abort(txn);
    }
  }
  if (rc != 0) {
    fail("open raw LMDB %s: %s", dir, mdb_strerror(rc));
  }
}

static void raw_close(struct raw_db *r) {
  if (r->env != NULL) {
    mdb_env_close(r->env);
    r->env = NULL;
  }
}

static uint64_t file_size(const char *dir) {
  char path[PATH_MAX];
  struct stat st;
  int n = snprintf(path, sizeof path, "%s/%s", dir, MVCC_DATA_FILE);
  if (n <= 0 || (size_t)n >= sizeof path || stat(path, &st) != 0) {
    return 0;
  }
  return (uint64_t)st.st_size;
}

/* ---- writes ---- */

/* Fills the write buffers for puts of keys b->idx[0..n) tagged tag. */
static void fill_batch(struct bench *b, size_t n, uint64_t tag) {
  for (size_t j = 0; j < n; j++) {
    uint8_t *v = b->values + j * b->cfg.value_bytes;
    b->key_lens[j] = make_key(b->keys[j], b->cfg.prefix_keys, b->idx[j]);
    put_u64(v, b->idx[j]);
    put_u64(v + 8, tag);
  }
}

static void cairn_put_batch(struct bench *b, mvcc_store *s, size_t n, uint64_t tag) {
  fill_batch(b, n, tag);
  for (size_t j = 0; j < n; j++) {
    struct mvcc_op *op = &b->ops[j];
    *op = (struct mvcc_op){.type = MVCC_OP_PUT};
    op->u.put.key = (struct mvcc_bytes){(const uint8_t *)b->keys[j], b->key_lens[j]};
    op->u.put.value = (struct mvcc_bytes){b->values + j * b->cfg.value_bytes, b->cfg.value_bytes};
  }
  int rc = mvcc_apply(s, b->ops, n, b->results);
  if (rc != 0) {
    fail("mvcc_apply of %zu puts: %s", n, cairn_strerror(rc));
  }
  for (size_t j = 0; j < n; j++) {
    if (b->results[j].err != 0) {
      fail("mvcc_apply: put %zu of %zu: %s", j, n, cairn_strerror(b->results[j].err));
    }
    mvcc_result_free(&b->results[j]);
  }
}

static void raw_put_batch(struct bench *b, const struct raw_db *r, size_t n, uint64_t tag,
                          bool hist) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(r->env, NULL, 0, &txn);
  if (rc != 0) {
    fail("raw txn begin: %s", mdb_strerror(rc));
  }
  fill_batch(b, n, tag);
  for (size_t j = 0; j < n; j++) {
    size_t klen = b->key_lens[j];
    if (hist) { /* (key, revision): the revision as 8 big-endian bytes */
      put_be64((uint8_t *)b->keys[j] + klen, (uint64_t)++b->raw_hist_rev);
      klen += 8;
    }
    MDB_val k = {klen, b->keys[j]};
    MDB_val v = {b->cfg.value_bytes, b->values + j * b->cfg.value_bytes};
    rc = mdb_put(txn, r->dbi, &k, &v, 0);
    if (rc != 0) {
      mdb_txn_abort(txn);
      fail("raw put: %s", mdb_strerror(rc));
    }
  }
  rc = mdb_txn_commit(txn);
  if (rc != 0) {
    fail("raw commit: %s", mdb_strerror(rc));
  }
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median round's rate, or ops / seconds of a single pass. */
static double rate(const struct measure *m) {
  if (m->rounds > 0) {
    double r[ROUNDS];
    memcpy(r, m->round_rate, m->rounds * sizeof r[0]);
    qsort(r, m->rounds, sizeof r[0], cmp_double);
    return m->rounds % 2 ? r[m->rounds / 2] : (r[m->rounds / 2 - 1] + r[m->rounds / 2]) / 2;
  }
  return m->seconds > 0 ? (double)m->ops / m->seconds : 0.0;
}

/* raw/cairn of a row: the median of the paired round ratios, or the ratio of
 * the rates for single passes. 0 when a side is missing. */
static double ratio(const struct bench *b, enum row_id row) {
  const struct measure *c = &b->res[row][SIDE_CAIRN], *r = &b->res[row][SIDE_RAW];
  if (!b->have[row][SIDE_CAIRN] || !b->have[row][SIDE_RAW] || rate(c) <= 0) {
    return 0;
  }
  if (c->rounds == 0 || c->rounds != r->rounds) {
    return rate(r) / rate(c);
  }
  struct measure q = {.rounds = c->rounds};
  for (unsigned k = 0; k < c->rounds; k++) {
    q.round_rate[k] = c->round_rate[k] > 0 ? r->round_rate[k] / c->round_rate[k] : 0;
  }
  return rate(&q);
}

static void record(struct bench *b, enum row_id row, enum side side, const struct measure *m,
                   const char *detail) {
  char rounds[128] = "";
  size_t o = 0;
  for (unsigned r = 0; r < m->rounds && o < sizeof rounds; r++) {
    int n = snprintf(rounds + o, sizeof rounds - o, "%s%.0f", r == 0 ? " (rounds: " : ", ",
                     m->round_rate[r]);
    o += n > 0 ? (size_t)n : 0;
  }
  if (m->rounds > 0 && o < sizeof rounds) {
    snprintf(rounds + o, sizeof rounds - o, ")");
  }
  b->res[row][side] = *m;
  b->have[row][side] = true;
  progress(b, "%-38s %-5s %10" PRIu64 " %s in %6.2f s: %12.0f %s%s%s", ROWS[row].label,
           SIDE_NAME[side], m->ops, ROWS[row].unit[0] == 'k' ? "keys" : "ops", m->seconds, rate(m),
           ROWS[row].unit, rounds, detail);
}

/* One measured variant: a side doing one kind of work. step does one unit
 * (a write transaction, a chunk of reads, a scan) and returns how many ops
 * (or keys) it did. */
struct variant {
  enum row_id row;
  enum side side;
  uint64_t (*step)(struct bench *b, struct variant *v);
  uint64_t rng;
  size_t per_txn;  /* puts per transaction */
  MDB_txn *txn;    /* raw reads: a reset read transaction, renewed per use */
  MDB_cursor *cur; /* raw cursor reads */
  struct measure m;
};

static uint64_t run_for(struct bench *b, struct variant *v, double seconds, double *elapsed) {
  uint64_t ops = 0, steps = 0;
  double t0 = now_s(), t;
  do {
    ops += v->step(b, v);
    steps++;
    t = now_s() - t0;
  } while (t < seconds || steps < ROUND_STEPS_MIN);
  *elapsed = t;
  return ops;
}

/* Runs the variants in ROUNDS interleaved rounds of seconds / ROUNDS each,
 * after an untimed warm-up of half a round each when warm (reads: the first
 * touches of freshly written pages through the map cost page faults). */
static void run_rounds(struct bench *b, struct variant *vs, size_t n, bool warm) {
  const double round_s = b->cfg.seconds / ROUNDS;
  double t;
  for (size_t i = 0; warm && i < n; i++) {
    run_for(b, &vs[i], round_s / 2, &t);
  }
  for (unsigned r = 0; r < ROUNDS; r++) {
    for (size_t i = 0; i < n; i++) {
      struct measure *m = &vs[i].m;
      uint64_t ops = run_for(b, &vs[i], round_s, &t);
      m->round_rate[r] = (double)ops / t;
      m->ops += ops;
      m->seconds += t;
      m->rounds++;
    }
  }
  for (size_t i = 0; i < n; i++) {
    record(b, vs[i].row, vs[i].side, &vs[i].m, "");
  }
}

static void variant_release(struct variant *v) {
  if (v->cur != NULL) {
    mdb_cursor_close(v->cur);
    v->cur = NULL;
  }
  if (v->txn != NULL) {
    mdb_txn_abort(v->txn);
    v->txn = NULL;
  }
}

/* Loads keys 0..N-1 in a shuffled order, LOAD_BATCH puts per transaction. */
static void phase_load(struct bench *b, const uint32_t *perm) {
  for (int side = 0; side < SIDES; side++) {
    if (!b->cfg.sides[side]) {
      continue;
    }
    double t0 = now_s();
    double next_report = t0 + 10.0;
    for (uint64_t pos = 0; pos < b->cfg.keys; pos += LOAD_BATCH) {
      size_t n = (size_t)(b->cfg.keys - pos < LOAD_BATCH ? b->cfg.keys - pos : LOAD_BATCH);
      for (size_t j = 0; j < n; j++) {
        b->idx[j] = perm[pos + j];
      }
      if (side == SIDE_CAIRN) {
        cairn_put_batch(b, b->cairn, n, 0);
      } else {
        raw_put_batch(b, &b->raw, n, 0, false);
      }
      double t = now_s();
      if (t >= next_report) {
        progress(b, "load %s: %" PRIu64 " of %" PRIu64 " keys", SIDE_NAME[side], pos + n,
                 b->cfg.keys);
        next_report = t + 10.0;
      }
    }
    struct measure m = {.ops = b->cfg.keys, .seconds = now_s() - t0};
    b->file_bytes[0][side] = file_size(b->dirs[side]);
    char detail[64];
    snprintf(detail, sizeof detail, " (file %.0f MiB)",
             (double)b->file_bytes[0][side] / (1024.0 * 1024.0));
    record(b, ROW_LOAD, (enum side)side, &m, detail);
  }
}

/* Overwrites of random keys, per_txn puts per transaction. */
static void random_batch(struct bench *b, struct variant *v) {
  for (size_t j = 0; j < v->per_txn; j++) {
    b->idx[j] = rng_below(&v->rng, b->cfg.keys);
  }
}

static uint64_t step_cairn_put(struct bench *b, struct variant *v) {
  random_batch(b, v);
  cairn_put_batch(b, b->cairn, v->per_txn, (uint64_t)v->row);
  return v->per_txn;
}

static uint64_t step_raw_put(struct bench *b, struct variant *v) {
  random_batch(b, v);
  raw_put_batch(b, &b->raw, v->per_txn, (uint64_t)v->row, false);
  return v->per_txn;
}

static void phase_puts(struct bench *b, enum row_id row, size_t per_txn) {
  struct variant vs[SIDES];
  size_t n = 0;
  for (int side = 0; side < SIDES; side++) {
    if (b->cfg.sides[side]) {
      vs[n++] = (struct variant){.row = row,
                                 .side = (enum side)side,
                                 .step = side == SIDE_CAIRN ? step_cairn_put : step_raw_put,
                                 .rng = phase_seed(b, 100 + per_txn),
                                 .per_txn = per_txn};
    }
  }
  run_rounds(b, vs, n, false);
}

/* ---- reads ---- */

static void cairn_get(struct bench *b, mvcc_store *s, uint64_t i, int64_t rev, uint64_t tag,
                      bool check_tag) {
  char key[KEY_BUF];
  struct mvcc_range_req req = {0};
  struct mvcc_result res;
  req.key = (struct mvcc_bytes){(const uint8_t *)key, make_key(key, b->cfg.prefix_keys, i)};
  req.revision = rev;
  int rc = mvcc_range(s, &req, &res);
  if (rc != 0 || res.err != 0) {
    fail("mvcc_range of key %" PRIu64 " at revision %" PRId64 ": %s", i, rev,
         cairn_strerror(rc != 0 ? rc : res.err));
  }
  if (res.u.range.n_kvs != 1) {
    fail("mvcc_range of key %" PRIu64 ": %zu kvs", i, res.u.range.n_kvs);
  }
  const struct mvcc_kv *kv = &res.u.range.kvs[0];
  check_value(kv->value.data, kv->value.len, b->cfg.value_bytes, i, tag, check_tag, "mvcc_range");
  mvcc_result_free(&res);
}

static void raw_txn_renew(MDB_txn *txn) {
  int rc = mdb_txn_renew(txn);
  if (rc != 0) {
    fail("raw txn renew: %s", mdb_strerror(rc));
  }
}

static MDB_txn *raw_read_txn(const struct raw_db *r) {
  MDB_txn *txn;
  int rc = mdb_txn_begin(r->env, NULL, MDB_RDONLY, &txn);
  if (rc != 0) {
    fail("raw read txn: %s", mdb_strerror(rc));
  }
  mdb_txn_reset(txn); /* every use renews it */
  return txn;
}

static void raw_get(struct bench *b, MDB_txn *txn, uint64_t i) {
  char key[KEY_BUF];
  MDB_val k = {make_key(key, b->cfg.prefix_keys, i), key}, v;
  int rc = mdb_get(txn, b->raw.dbi, &k, &v);
  if (rc != 0) {
    fail("raw get of key %" PRIu64 ": %s", i, mdb_strerror(rc));
  }
  memcpy(b->copy, v.mv_data, v.mv_size);
  check_value(b->copy, v.mv_size, b->cfg.value_bytes, i, 0, false, "raw get");
}

static uint64_t step_cairn_get(struct bench *b, struct variant *v) {
  for (unsigned c = 0; c < READ_CHUNK; c++) {
    cairn_get(b, b->cairn, rng_below(&v->rng, b->cfg.keys), 0, 0, false);
  }
  return READ_CHUNK;
}

static uint64_t step_raw_get_shared(struct bench *b, struct variant *v) {
  raw_txn_renew(v->txn);
  for (unsigned c = 0; c < RAW_GETS_PER_TXN; c++) {
    raw_get(b, v->txn, rng_below(&v->rng, b->cfg.keys));
  }
  mdb_txn_reset(v->txn);
  return RAW_GETS_PER_TXN;
}

static uint64_t step_raw_get_per_txn(struct bench *b, struct variant *v) {
  for (unsigned c = 0; c < READ_CHUNK; c++) {
    raw_txn_renew(v->txn);
    raw_get(b, v->txn, rng_below(&v->rng, b->cfg.keys));
    mdb_txn_reset(v->txn);
  }
  return READ_CHUNK;
}

/* Latest-revision gets of random keys: the MVCC store (one figure, shown in
 * both rows), raw LMDB with one read transaction per RAW_GETS_PER_TXN gets
 * and with one per get, as mvcc_range has its own. */
static void phase_gets(struct bench *b) {
  const uint64_t seed = phase_seed(b, 200);
  struct variant vs[3];
  size_t n = 0;
  if (b->cfg.sides[SIDE_CAIRN]) {
    vs[n++] = (struct variant){
        .row = ROW_GET_SHARED, .side = SIDE_CAIRN, .step = step_cairn_get, .rng = seed};
  }
  if (b->cfg.sides[SIDE_RAW]) {
    vs[n++] = (struct variant){.row = ROW_GET_SHARED,
                               .side = SIDE_RAW,
                               .step = step_raw_get_shared,
                               .rng = seed,
                               .txn = raw_read_txn(&b->raw)};
    vs[n++] = (struct variant){.row = ROW_GET_PER_TXN,
                               .side = SIDE_RAW,
                               .step = step_raw_get_per_txn,
                               .rng = seed,
                               .txn = raw_read_txn(&b->raw)};
  }
  run_rounds(b, vs, n, true);
  if (b->cfg.sides[SIDE_CAIRN]) {
    record(b, ROW_GET_PER_TXN, SIDE_CAIRN, &vs[0].m, " (the same run)");
  }
  for (size_t i = 0; i < n; i++) {
    variant_release(&vs[i]);
  }
}

static uint64_t step_cairn_scan(struct bench *b, struct variant *v) {
  char key[KEY_BUF], end[KEY_BUF];
  uint64_t ns = rng_below(&v->rng, b->cfg.keys / b->cfg.prefix_keys);
  size_t n = make_prefix(key, end, ns);
  struct mvcc_range_req req = {0};
  struct mvcc_result res;
  req.key = (struct mvcc_bytes){(const uint8_t *)key, n};
  req.range_end = (struct mvcc_bytes){(const uint8_t *)end, n};
  int rc = mvcc_range(b->cairn, &req, &res);
  if (rc != 0 || res.err != 0) {
    fail("mvcc_range of prefix %.*s: %s", (int)n, key, cairn_strerror(rc != 0 ? rc : res.err));
  }
  size_t got = res.u.range.n_kvs;
  if (got != b->cfg.prefix_keys) {
    fail("mvcc_range of prefix %.*s: %zu keys, want %u", (int)n, key, got, b->cfg.prefix_keys);
  }
  mvcc_result_free(&res);
  return got;
}

/* A cursor from the prefix to its end, copying keys and values out as an
 * mvcc result holds copies. */
static uint64_t step_raw_scan(struct bench *b, struct variant *v) {
  char key[KEY_BUF], end[KEY_BUF];
  uint64_t ns = rng_below(&v->rng, b->cfg.keys / b->cfg.prefix_keys);
  size_t n = make_prefix(key, end, ns);
  raw_txn_renew(v->txn);
  int rc = v->cur == NULL ? mdb_cursor_open(v->txn, b->raw.dbi, &v->cur)
                          : mdb_cursor_renew(v->txn, v->cur);
  if (rc != 0) {
    fail("raw cursor: %s", mdb_strerror(rc));
  }
  MDB_val k = {n, key}, val;
  size_t off = 0, got = 0;
  rc = mdb_cursor_get(v->cur, &k, &val, MDB_SET_RANGE);
  while (rc == 0) {
    size_t m = k.mv_size < n ? k.mv_size : n;
    int c = memcmp(k.mv_data, end, m);
    if (c > 0 || (c == 0 && k.mv_size >= n)) {
      break;
    }
    if (off + k.mv_size + val.mv_size > b->copy_cap) {
      fail("raw scan: copy buffer too small");
    }
    memcpy(b->copy + off, k.mv_data, k.mv_size);
    off += k.mv_size;
    memcpy(b->copy + off, val.mv_data, val.mv_size);
    off += val.mv_size;
    got++;
    rc = mdb_cursor_get(v->cur, &k, &val, MDB_NEXT);
  }
  if (rc != 0 && rc != MDB_NOTFOUND) {
    fail("raw scan: %s", mdb_strerror(rc));
  }
  mdb_txn_reset(v->txn);
  if (got != b->cfg.prefix_keys) {
    fail("raw scan of prefix %.*s: %zu keys, want %u", (int)n, key, got, b->cfg.prefix_keys);
  }
  return got;
}

/* Range scans of whole namespaces (prefix_keys keys each); rated in keys. */
static void phase_scans(struct bench *b) {
  const uint64_t seed = phase_seed(b, 300);
  struct variant vs[SIDES];
  size_t n = 0;
  if (b->cfg.keys / b->cfg.prefix_keys == 0) {
    progress(b, "scans skipped: fewer keys than --prefix-keys");
    return;
  }
  if (b->cfg.sides[SIDE_CAIRN]) {
    vs[n++] =
        (struct variant){.row = ROW_SCAN, .side = SIDE_CAIRN, .step = step_cairn_scan, .rng = seed};
  }
  if (b->cfg.sides[SIDE_RAW]) {
    vs[n++] = (struct variant){.row = ROW_SCAN,
                               .side = SIDE_RAW,
                               .step = step_raw_scan,
                               .rng = seed,
                               .txn = raw_read_txn(&b->raw)};
  }
  run_rounds(b, vs, n, true);
  for (size_t i = 0; i < n; i++) {
    variant_release(&vs[i]);
  }
}

/* ---- history ---- */

/* Writes hist_keys keys versions times each (round r tags its values r), one
 * shuffled pass per round, LOAD_BATCH puts per transaction, and remembers the
 * revision right after round HIST_READ_ROUND. */
static void phase_hist_setup(struct bench *b) {
  const uint64_t h = b->cfg.hist_keys;
  uint32_t *perm = xcalloc(h, sizeof *perm);
  for (int side = 0; side < SIDES; side++) {
    if (!b->cfg.sides[side]) {
      continue;
    }
    uint64_t rng = phase_seed(b, 400);
    double t0 = now_s();
    for (uint32_t round = 1; round <= b->cfg.versions; round++) {
      for (uint64_t i = 0; i < h; i++) {
        perm[i] = (uint32_t)i;
      }
      shuffle(perm, h, &rng);
      for (uint64_t pos = 0; pos < h; pos += LOAD_BATCH) {
        size_t n = (size_t)(h - pos < LOAD_BATCH ? h - pos : LOAD_BATCH);
        for (size_t j = 0; j < n; j++) {
          b->idx[j] = perm[pos + j];
        }
        if (side == SIDE_CAIRN) {
          cairn_put_batch(b, b->cairn_hist, n, round);
        } else {
          raw_put_batch(b, &b->raw_hist, n, round, true);
        }
      }
      if (round == HIST_READ_ROUND) {
        b->hist_read_rev[side] =
            side == SIDE_CAIRN ? mvcc_current_revision(b->cairn_hist) : b->raw_hist_rev;
      }
    }
    double t = now_s() - t0;
    b->file_bytes[1][side] = file_size(b->dirs[2 + side]);
    progress(b,
             "history setup %s: %" PRIu64
             " keys x %u versions, %u puts/txn, in %.2f s = %.0f "
             "puts/s (file %.0f MiB)",
             SIDE_NAME[side], h, b->cfg.versions, LOAD_BATCH, t, (double)(h * b->cfg.versions) / t,
             (double)b->file_bytes[1][side] / (1024.0 * 1024.0));
  }
  free(perm);
}

/* Raw historical get: the last (key, revision) entry at or below rev. */
static void raw_hist_get(struct bench *b, MDB_cursor *cur, uint64_t i, int64_t rev) {
  char key[KEY_BUF];
  size_t klen = make_key(key, b->cfg.prefix_keys, i);
  put_be64((uint8_t *)key + klen, (uint64_t)rev + 1);
  MDB_val k = {klen + 8, key}, v;
  int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  if (rc == 0) {
    rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
  } else if (rc == MDB_NOTFOUND) {
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
  }
  if (rc != 0) {
    fail("raw historical get of key %" PRIu64 ": %s", i, mdb_strerror(rc));
  }
  if (k.mv_size != klen + 8 || memcmp(k.mv_data, key, klen) != 0) {
    fail("raw historical get of key %" PRIu64 ": no version at revision %" PRId64, i, rev);
  }
  memcpy(b->copy, v.mv_data, v.mv_size);
  check_value(b->copy, v.mv_size, b->cfg.value_bytes, i, HIST_READ_ROUND, true,
              "raw historical get");
}

static uint64_t step_cairn_hist(struct bench *b, struct variant *v) {
  for (unsigned c = 0; c < READ_CHUNK; c++) {
    cairn_get(b, b->cairn_hist, rng_below(&v->rng, b->cfg.hist_keys), b->hist_read_rev[SIDE_CAIRN],
              HIST_READ_ROUND, true);
  }
  return READ_CHUNK;
}

static uint64_t step_raw_hist(struct bench *b, struct variant *v) {
  for (unsigned c = 0; c < READ_CHUNK; c++) {
    raw_txn_renew(v->txn);
    int rc = v->cur == NULL ? mdb_cursor_open(v->txn, b->raw_hist.dbi, &v->cur)
                            : mdb_cursor_renew(v->txn, v->cur);
    if (rc != 0) {
      fail("raw cursor: %s", mdb_strerror(rc));
    }
    raw_hist_get(b, v->cur, rng_below(&v->rng, b->cfg.hist_keys), b->hist_read_rev[SIDE_RAW]);
    mdb_txn_reset(v->txn);
  }
  return READ_CHUNK;
}

/* Gets of random history keys at the revision after round HIST_READ_ROUND,
 * one read transaction per get on both sides. */
static void phase_hist_reads(struct bench *b) {
  const uint64_t seed = phase_seed(b, 500);
  struct variant vs[SIDES];
  size_t n = 0;
  if (b->cfg.sides[SIDE_CAIRN]) {
    vs[n++] =
        (struct variant){.row = ROW_HIST, .side = SIDE_CAIRN, .step = step_cairn_hist, .rng = seed};
  }
  if (b->cfg.sides[SIDE_RAW]) {
    vs[n++] = (struct variant){.row = ROW_HIST,
                               .side = SIDE_RAW,
                               .step = step_raw_hist,
                               .rng = seed,
                               .txn = raw_read_txn(&b->raw_hist)};
  }
  run_rounds(b, vs, n, true);
  for (size_t i = 0; i < n; i++) {
    variant_release(&vs[i]);
  }
}

/* MVCC: MVCC_OP_COMPACT at the current revision, then mvcc_compact_step
 * until done; that removes every superseded version: hist_keys x (versions -
 * 1) entries. Raw: the same number of superseded (key, revision) entries
 * deleted by a cursor walking backwards, MVCC_COMPACT_STEP_DEFAULT deletions
 * per write transaction. */
static void phase_compact(struct bench *b) {
  const uint64_t expect = b->cfg.hist_keys * (b->cfg.versions - 1);
  if (b->cfg.sides[SIDE_CAIRN]) {
    mvcc_store *s = b->cairn_hist;
    struct mvcc_op op = {.type = MVCC_OP_COMPACT};
    struct mvcc_result res;
    uint64_t steps = 0;
    bool done = false;
    double t0 = now_s();
    op.u.compact_revision = mvcc_current_revision(s);
    int rc = mvcc_apply(s, &op, 1, &res);
    if (rc != 0 || res.err != 0) {
      fail("MVCC_OP_COMPACT at %" PRId64 ": %s", op.u.compact_revision,
           cairn_strerror(rc != 0 ? rc : res.err));
    }
    mvcc_result_free(&res);
    while (!done) {
      rc = mvcc_compact_step(s, 0, &done);
      if (rc != 0) {
        fail("mvcc_compact_step: %s", cairn_strerror(rc));
      }
      /* A step removes at least one entry until done, so this bounds it. */
      if (++steps > expect + 2) {
        fail("mvcc_compact_step: not done after %" PRIu64 " steps", steps);
      }
    }
    double t = now_s() - t0;
    /* The old revision must now be gone, and the latest still there. */
    char key[KEY_BUF];
    struct mvcc_range_req req = {0};
    req.key = (struct mvcc_bytes){(const uint8_t *)key, make_key(key, b->cfg.prefix_keys, 0)};
    req.revision = b->hist_read_rev[SIDE_CAIRN];
    rc = mvcc_range(s, &req, &res);
    if ((rc != 0 ? rc : res.err) != CAIRN_ECOMPACTED) {
      fail("after compaction, a read at revision %" PRId64 " gave %s, want %s", req.revision,
           cairn_strerror(rc != 0 ? rc : res.err), cairn_strerror(CAIRN_ECOMPACTED));
    }
    mvcc_result_free(&res);
    cairn_get(b, s, 0, 0, b->cfg.versions, true);
    char detail[64];
    snprintf(detail, sizeof detail, " (%" PRIu64 " steps)", steps);
    struct measure m = {.ops = expect, .seconds = t};
    record(b, ROW_COMPACT, SIDE_CAIRN, &m, detail);
  }
  if (b->cfg.sides[SIDE_RAW]) {
    const struct raw_db *r = &b->raw_hist;
    char last_user[KEY_BUF], resume[KEY_BUF];
    size_t last_len = 0, resume_len = 0;
    bool have_last = false, at_end = false;
    uint64_t deleted = 0, txns = 0;
    double t0 = now_s();
    while (!at_end) {
      MDB_txn *txn;
      MDB_cursor *cur;
      MDB_val k, v;
      int rc = mdb_txn_begin(r->env, NULL, 0, &txn);
      if (rc == 0) {
        rc = mdb_cursor_open(txn, r->dbi, &cur);
      }
      if (rc != 0) {
        fail("raw compaction txn: %s", mdb_strerror(rc));
      }
      if (txns == 0) {
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
      } else { /* resume below the last deleted entry */
        k = (MDB_val){resume_len, resume};
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        rc = rc == 0              ? mdb_cursor_get(cur, &k, &v, MDB_PREV)
             : rc == MDB_NOTFOUND ? mdb_cursor_get(cur, &k, &v, MDB_LAST)
                                  : rc;
      }
      size_t in_txn = 0;
      while (rc == 0 && in_txn < MVCC_COMPACT_STEP_DEFAULT) {
        size_t ulen = k.mv_size - 8;
        if (have_last && ulen == last_len && memcmp(k.mv_data, last_user, ulen) == 0) {
          memcpy(resume, k.mv_data, k.mv_size);
          resume_len = k.mv_size;
          rc = mdb_cursor_del(cur, 0);
          if (rc != 0) {
            break;
          }
          in_txn++;
        } else { /* the newest version of the next key down: kept */
          memcpy(last_user, k.mv_data, ulen);
          last_len = ulen;
          have_last = true;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
      }
      if (rc == MDB_NOTFOUND) {
        at_end = true;
      } else if (rc != 0) {
        fail("raw compaction: %s", mdb_strerror(rc));
      }
      mdb_cursor_close(cur);
      rc = mdb_txn_commit(txn);
      if (rc != 0) {
        fail("raw compaction commit: %s", mdb_strerror(rc));
      }
      deleted += in_txn;
      txns++;
    }
    double t = now_s() - t0;
    MDB_stat st;
    int rc = mdb_env_stat(r->env, &st);
    if (rc != 0 || deleted != expect || st.ms_entries != b->cfg.hist_keys) {
      fail("raw compaction deleted %" PRIu64 " entries, want %" PRIu64 "; %zu left, want %" PRIu64,
           deleted, expect, rc == 0 ? st.ms_entries : 0, b->cfg.hist_keys);
    }
    char detail[64];
    snprintf(detail, sizeof detail, " (%" PRIu64 " txns)", txns);
    struct measure m = {.ops = deleted, .seconds = t};
    record(b, ROW_COMPACT, SIDE_RAW, &m, detail);
  }
}

/* ---- machine description ---- */

struct machine {
  char date[32];
  char cpu[128];
  unsigned cpus;
  char kernel[160];
  const char *lmdb;
};

static void describe_machine(struct machine *m) {
  time_t t = time(NULL);
  struct tm tm;
  struct utsname u;
  char line[512];
  strftime(m->date, sizeof m->date, "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
  snprintf(m->cpu, sizeof m->cpu, "unknown");
  m->cpus = 0;
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f != NULL) {
    bool have_model = false;
    while (fgets(line, sizeof line, f) != NULL) {
      if (strncmp(line, "processor", 9) == 0) {
        m->cpus++;
      } else if (!have_model && strncmp(line, "model name", 10) == 0) {
        const char *colon = strchr(line, ':');
        if (colon != NULL) {
          snprintf(m->cpu, sizeof m->cpu, "%s", colon + 1 + (colon[1] == ' '));
          m->cpu[strcspn(m->cpu, "\n")] = '\0';
          have_model = true;
        }
      }
    }
    fclose(f);
  }
  if (uname(&u) == 0) {
    snprintf(m->kernel, sizeof m->kernel, "%.60s %.60s %.30s", u.sysname, u.release, u.machine);
  } else {
    snprintf(m->kernel, sizeof m->kernel, "unknown");
  }
  m->lmdb = mdb_version(NULL, NULL, NULL);
}

/* ---- output ---- */

static void fmt_rate(char *buf, size_t cap, double r) {
  char digits[32];
  snprintf(digits, sizeof digits, "%.0f", r);
  size_t n = strlen(digits), o = 0;
  for (size_t i = 0; i < n && o + 2 < cap; i++) {
    if (i > 0 && (n - i) % 3 == 0) {
      buf[o++] = ',';
    }
    buf[o++] = digits[i];
  }
  buf[o] = '\0';
}

static void print_table(const struct bench *b, const struct machine *m) {
  const struct config *c = &b->cfg;
  printf("Cairn storage benchmark: MVCC layer vs raw LMDB (%s)\n", m->lmdb);
  printf("%s; CPU %s x %u; %s\n", m->date, m->cpu, m->cpus, m->kernel);
  printf("%" PRIu64
         " keys of 35 bytes (\"/registry/pods/ns-NNNN/pod-NNNNNNNN\"), %u-byte values; "
         "scans of %u-key prefixes;\nhistory store %" PRIu64
         " keys x %u versions, read at round "
         "%u; %.1f s per measurement in %u alternating rounds; seed %" PRIu64 "%s\n",
         c->keys, c->value_bytes, c->prefix_keys, c->hist_keys, c->versions, HIST_READ_ROUND,
         c->seconds, ROUNDS, c->seed, c->quick ? " (--quick)" : "");
  printf(
      "rates: the median round; raw/cairn: the median of the ratios of rounds run side by "
      "side\n\n");
  printf("%-40s %10s %14s %14s %10s\n", "operation", "unit", "cairn", "raw LMDB", "raw/cairn");
  bool any_goal = false, goal_met = true;
  for (int r = 0; r < ROW_COUNT; r++) {
    char cr[32] = "-", rr[32] = "-", ratio_s[32] = "-";
    if (!b->have[r][SIDE_CAIRN] && !b->have[r][SIDE_RAW]) {
      continue;
    }
    if (b->have[r][SIDE_CAIRN]) {
      fmt_rate(cr, sizeof cr, rate(&b->res[r][SIDE_CAIRN]));
    }
    if (b->have[r][SIDE_RAW]) {
      fmt_rate(rr, sizeof rr, rate(&b->res[r][SIDE_RAW]));
    }
    const char *mark = "";
    double q = ratio(b, (enum row_id)r);
    if (q > 0) {
      snprintf(ratio_s, sizeof ratio_s, "%.2f", q);
      if (ROWS[r].goal) {
        any_goal = true;
        mark = q <= 2.0 ? "  ok" : "  > 2x";
        goal_met = goal_met && q <= 2.0;
      }
    }
    printf("%-40s %10s %14s %14s %10s%s\n", ROWS[r].label, ROWS[r].unit, cr, rr, ratio_s, mark);
  }
  if (b->file_bytes[0][SIDE_CAIRN] != 0 && b->file_bytes[0][SIDE_RAW] != 0) {
    printf("\ndata file after load: cairn %.0f MiB, raw %.0f MiB\n",
           (double)b->file_bytes[0][SIDE_CAIRN] / 1048576.0,
           (double)b->file_bytes[0][SIDE_RAW] / 1048576.0);
  }
  if (any_goal) {
    printf("goal \"the MVCC layer costs at most 2x raw LMDB on puts and gets\": %s\n",
           goal_met ? "met" : "NOT met (rows marked > 2x)");
  }
  fflush(stdout);
}

static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      fprintf(f, "\\%c", ch);
    } else if (ch < 0x20) {
      fprintf(f, "\\u%04x", ch);
    } else {
      fputc(ch, f);
    }
  }
  fputc('"', f);
}

static void write_json(const struct bench *b, const struct machine *m) {
  const struct config *c = &b->cfg;
  FILE *f = fopen(c->json_path, "w");
  if (f == NULL) {
    fail("open %s: %s", c->json_path, strerror(errno));
  }
  fprintf(f, "{\n  \"date\": ");
  json_string(f, m->date);
  fprintf(f, ",\n  \"cpu\": ");
  json_string(f, m->cpu);
  fprintf(f, ",\n  \"cpus\": %u,\n  \"kernel\": ", m->cpus);
  json_string(f, m->kernel);
  fprintf(f, ",\n  \"lmdb\": ");
  json_string(f, m->lmdb);
  fprintf(f,
          ",\n  \"config\": {\"keys\": %" PRIu64
          ", \"value_bytes\": %u, \"prefix_keys\": %u, "
          "\"hist_keys\": %" PRIu64
          ", \"versions\": %u, \"hist_read_round\": %u, "
          "\"seconds\": %.3f, \"seed\": %" PRIu64 ", \"quick\": %s},\n",
          c->keys, c->value_bytes, c->prefix_keys, c->hist_keys, c->versions, HIST_READ_ROUND,
          c->seconds, c->seed, c->quick ? "true" : "false");
  fprintf(f,
          "  \"file_bytes\": {\"cairn\": %" PRIu64 ", \"raw\": %" PRIu64
          ", \"cairn_hist\": %" PRIu64 ", \"raw_hist\": %" PRIu64 "},\n",
          b->file_bytes[0][SIDE_CAIRN], b->file_bytes[0][SIDE_RAW], b->file_bytes[1][SIDE_CAIRN],
          b->file_bytes[1][SIDE_RAW]);
  fprintf(f, "  \"results\": [");
  bool first = true;
  for (int r = 0; r < ROW_COUNT; r++) {
    if (!b->have[r][SIDE_CAIRN] && !b->have[r][SIDE_RAW]) {
      continue;
    }
    fprintf(f, "%s\n    {\"id\": \"%s\", \"operation\": ", first ? "" : ",", ROWS[r].id);
    json_string(f, ROWS[r].label);
    fprintf(f, ", \"unit\": \"%s\", \"goal\": %s", ROWS[r].unit, ROWS[r].goal ? "true" : "false");
    for (int s = 0; s < SIDES; s++) {
      if (b->have[r][s]) {
        const struct measure *ms = &b->res[r][s];
        fprintf(f, ", \"%s\": {\"ops\": %" PRIu64 ", \"seconds\": %.6f, \"rate\": %.1f",
                SIDE_NAME[s], ms->ops, ms->seconds, rate(ms));
        if (ms->rounds > 0) {
          fprintf(f, ", \"round_rates\": [");
          for (unsigned k = 0; k < ms->rounds; k++) {
            fprintf(f, "%s%.1f", k == 0 ? "" : ", ", ms->round_rate[k]);
          }
          fputc(']', f);
        }
        fputc('}', f);
      }
    }
    if (b->have[r][SIDE_CAIRN] && b->have[r][SIDE_RAW] && rate(&b->res[r][SIDE_CAIRN]) > 0) {
      fprintf(f, ", \"ratio_raw_over_cairn\": %.4f", ratio(b, (enum row_id)r));
    }
    fputc('}', f);
    first = false;
  }
  fprintf(f, "\n  ]\n}\n");
  if (fclose(f) != 0) {
    fail("write %s: %s", c->json_path, strerror(errno));
  }
}

/* ---- options ---- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: cairn-storage-bench --dir DIR [options]\n"
          "  --dir DIR          where the stores go (fresh subdirectories are made)\n"
          "  --keys N           keys in the main stores (default 1000000; --quick 100000)\n"
          "  --value-bytes B    value size (default 256, at least %u)\n"
          "  --prefix-keys P    keys per namespace, the length of a prefix scan (default 100)\n"
          "  --hist-keys H      keys in the history stores (default 200000; --quick 20000)\n"
          "  --versions V       versions written per history key (default 5, at least 3)\n"
          "  --seconds S        duration of each timed measurement, split into %u rounds\n"
          "                     that alternate the sides (default 3; --quick 0.6)\n"
          "  --seed S           random seed (default 42)\n"
          "  --quick            a short run (under 30 s)\n"
          "  --json FILE        also write the results as JSON\n"
          "  --side SIDE        cairn, raw or both (default both), e.g. for profiling\n"
          "  --only LIST        comma-separated phases: puts (or put1,put100,put1000),\n"
          "                     gets,scans,hist,compact\n"
          "                     (default all; the load runs whenever puts, gets or scans do)\n"
          "  --keep             keep the stores instead of removing them at the end\n",
          VALUE_HDR, ROUNDS);
}

static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max) {
    fail("%s: want a whole number in [%" PRIu64 ", %" PRIu64 "], got \"%s\"", opt, min, max, s);
  }
  return (uint64_t)v;
}

static unsigned parse_phases(const char *s) {
  static const struct {
    const char *name;
    unsigned bit;
  } names[] = {{"puts", PH_PUTS},       {"put1", PH_PUT1},      {"put100", PH_PUT100},
               {"put1000", PH_PUT1000}, {"gets", PH_GETS},      {"scans", PH_SCANS},
               {"hist", PH_HIST},       {"compact", PH_COMPACT}};
  unsigned phases = 0;
  while (*s != '\0') {
    size_t n = strcspn(s, ",");
    bool found = false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
      if (strlen(names[i].name) == n && strncmp(s, names[i].name, n) == 0) {
        phases |= names[i].bit;
        found = true;
      }
    }
    if (!found) {
      fail("--only: unknown phase \"%.*s\"", (int)n, s);
    }
    s += n + (s[n] == ',');
  }
  return phases;
}

static void parse_args(int argc, char **argv, struct config *c) {
  *c = (struct config){.value_bytes = 256, .prefix_keys = 100, .seed = 42};
  c->sides[SIDE_CAIRN] = c->sides[SIDE_RAW] = true;
  c->phases = PH_ALL;
  uint32_t versions = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      exit(0);
    }
    if (strcmp(a, "--quick") == 0) {
      c->quick = true;
      continue;
    }
    if (strcmp(a, "--keep") == 0) {
      c->keep = true;
      continue;
    }
    if (i + 1 >= argc) {
      usage(stderr);
      fail("%s: unknown option or missing value", a);
    }
    const char *v = argv[++i];
    if (strcmp(a, "--dir") == 0) {
      c->dir = v;
    } else if (strcmp(a, "--json") == 0) {
      c->json_path = v;
    } else if (strcmp(a, "--keys") == 0) {
      c->keys = parse_u64(a, v, 1, KEYS_MAX);
    } else if (strcmp(a, "--hist-keys") == 0) {
      c->hist_keys = parse_u64(a, v, 1, KEYS_MAX);
    } else if (strcmp(a, "--versions") == 0) {
      versions = (uint32_t)parse_u64(a, v, HIST_READ_ROUND + 1, VERSIONS_MAX);
    } else if (strcmp(a, "--value-bytes") == 0) {
      c->value_bytes = (uint32_t)parse_u64(a, v, VALUE_HDR, VALUE_BYTES_MAX);
    } else if (strcmp(a, "--prefix-keys") == 0) {
      c->prefix_keys = (uint32_t)parse_u64(a, v, 1, 100000);
    } else if (strcmp(a, "--seed") == 0) {
      c->seed = parse_u64(a, v, 0, UINT64_MAX);
    } else if (strcmp(a, "--seconds") == 0) {
      char *end;
      c->seconds = strtod(v, &end);
      if (end == v || *end != '\0' || !(c->seconds > 0 && c->seconds <= 600)) {
        fail("--seconds: want a number in (0, 600], got \"%s\"", v);
      }
    } else if (strcmp(a, "--side") == 0) {
      c->sides[SIDE_CAIRN] = strcmp(v, "cairn") == 0 || strcmp(v, "both") == 0;
      c->sides[SIDE_RAW] = strcmp(v, "raw") == 0 || strcmp(v, "both") == 0;
      if (!c->sides[SIDE_CAIRN] && !c->sides[SIDE_RAW]) {
        fail("--side: want cairn, raw or both, got \"%s\"", v);
      }
    } else if (strcmp(a, "--only") == 0) {
      c->phases = parse_phases(v);
    } else {
      usage(stderr);
      fail("unknown option %s", a);
    }
  }
  if (c->dir == NULL) {
    usage(stderr);
    fail("--dir is required");
  }
  if (c->keys == 0) {
    c->keys = c->quick ? 100000 : 1000000;
  }
  if (c->hist_keys == 0) {
    c->hist_keys = c->quick ? 20000 : 200000;
  }
  c->versions = versions != 0 ? versions : 5;
  if (c->seconds == 0) {
    c->seconds = c->quick ? 0.6 : 3.0;
  }
  /* Keep the key shape: a 4-digit namespace and an 8-digit pod number. */
  if ((c->keys - 1) / c->prefix_keys > 9999 || (c->hist_keys - 1) / c->prefix_keys > 9999) {
    fail("--keys / --prefix-keys must stay below 10000 namespaces");
  }
}

/* ---- directories ---- */

static void make_dirs(struct bench *b) {
  if (mkdir(b->cfg.dir, 0755) != 0 && errno != EEXIST) {
    fail("mkdir %s: %s", b->cfg.dir, strerror(errno));
  }
  for (int i = 0; i < DIRS; i++) {
    int n = snprintf(b->dirs[i], sizeof b->dirs[i], "%s/%s", b->cfg.dir, DIR_NAME[i]);
    if (n <= 0 || (size_t)n >= sizeof b->dirs[i]) {
      fail("--dir: path too long");
    }
    if (mkdir(b->dirs[i], 0755) != 0) {
      fail(
          "mkdir %s: %s (the benchmark wants fresh directories; remove it or pick another "
          "--dir)",
          b->dirs[i], strerror(errno));
    }
    b->dir_made[i] = true;
  }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  if (remove(path) != 0) {
    fprintf(stderr, "cairn-storage-bench: remove %s: %s\n", path, strerror(errno));
  }
  return 0;
}

/* Removes only the directories this run made. */
static void remove_dirs(struct bench *b) {
  for (int i = 0; i < DIRS; i++) {
    if (b->dir_made[i]) {
      nftw(b->dirs[i], remove_entry, 16, FTW_DEPTH | FTW_PHYS);
      b->dir_made[i] = false;
    }
  }
}

int main(int argc, char **argv) {
  static struct bench bench;
  struct bench *b = &bench;
  struct machine machine;
  parse_args(argc, argv, &b->cfg);
  const struct config *c = &b->cfg;
  b->t_start = now_s();
  check_make_key(c->prefix_keys, c->keys);
  describe_machine(&machine);
  progress(b, "cairn-storage-bench: %s, %s; %" PRIu64 " keys, %u-byte values, seed %" PRIu64,
           machine.cpu, machine.kernel, c->keys, c->value_bytes, c->seed);

  b->keys = xcalloc(BATCH_MAX, sizeof *b->keys);
  b->key_lens = xcalloc(BATCH_MAX, sizeof *b->key_lens);
  b->values = xcalloc(BATCH_MAX, c->value_bytes);
  b->idx = xcalloc(BATCH_MAX, sizeof *b->idx);
  b->ops = xcalloc(BATCH_MAX, sizeof *b->ops);
  b->results = xcalloc(BATCH_MAX, sizeof *b->results);
  b->copy_cap = (size_t)c->prefix_keys * (KEY_BUF + c->value_bytes);
  b->copy = xcalloc(b->copy_cap, 1);
  /* Value filler after the header: the same bytes for every put. */
  for (size_t i = 0; i < (size_t)BATCH_MAX * c->value_bytes; i++) {
    b->values[i] = (uint8_t)('a' + i % 26);
  }

  make_dirs(b);
  bool main_stores = (c->phases & (PH_PUTS | PH_GETS | PH_SCANS)) != 0;
  bool hist_stores = (c->phases & (PH_HIST | PH_COMPACT)) != 0;

  if (main_stores) {
    if (c->sides[SIDE_CAIRN]) {
      b->cairn = cairn_open(b->dirs[0]);
    }
    if (c->sides[SIDE_RAW]) {
      raw_open(b->dirs[1], &b->raw, c->keys, c->value_bytes);
    }
    uint32_t *perm = xcalloc(c->keys, sizeof *perm);
    uint64_t rng = phase_seed(b, 1);
    for (uint64_t i = 0; i < c->keys; i++) {
      perm[i] = (uint32_t)i;
    }
    shuffle(perm, c->keys, &rng);
    phase_load(b, perm);
    free(perm);
    if (c->phases & PH_GETS) {
      phase_gets(b);
    }
    if (c->phases & PH_SCANS) {
      phase_scans(b);
    }
    if (c->phases & PH_PUT1) {
      phase_puts(b, ROW_PUT1, 1);
    }
    if (c->phases & PH_PUT100) {
      phase_puts(b, ROW_PUT100, 100);
    }
    if (c->phases & PH_PUT1000) {
      phase_puts(b, ROW_PUT1000, 1000);
    }
    if (b->cairn != NULL) {
      mvcc_close(b->cairn);
      b->cairn = NULL;
    }
    raw_close(&b->raw);
  }
  if (hist_stores) {
    if (c->sides[SIDE_CAIRN]) {
      b->cairn_hist = cairn_open(b->dirs[2]);
    }
    if (c->sides[SIDE_RAW]) {
      raw_open(b->dirs[3], &b->raw_hist, c->hist_keys * c->versions, c->value_bytes);
    }
    phase_hist_setup(b);
    if (c->phases & PH_HIST) {
      phase_hist_reads(b);
    }
    if (c->phases & PH_COMPACT) {
      phase_compact(b);
    }
    if (b->cairn_hist != NULL) {
      mvcc_close(b->cairn_hist);
      b->cairn_hist = NULL;
    }
    raw_close(&b->raw_hist);
  }
  progress(b, "done");

  print_table(b, &machine);
  if (c->json_path != NULL) {
    write_json(b, &machine);
  }
  if (!c->keep) {
    remove_dirs(b);
  }
  free(b->keys);
  free(b->key_lens);
  free(b->values);
  free(b->idx);
  free(b->ops);
  free(b->results);
  free(b->copy);
  return 0;
}
