/* server/snapshot_fetch.c: fetching a store from another member when this
 * member's store is behind raft's snapshot. See snapshot_fetch.h. */
#include "server/snapshot_fetch.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/cairn_assert.h"
#include "server/lessor.h"
#include "server/server.h"
#include "storage/snapshot_stream.h"
#include "wire/grpc_client.h"

#define PATH_SNAPSHOT "/etcdserverpb.Maintenance/Snapshot"
#define SHA256_BYTES 32u
/* The watchdog's and the replace poll's periods. */
#define WATCHDOG_MS 1000u
#define REPLACE_POLL_MS 20u
/* Members tried as sources (raft's bound on members). */
#define FETCH_CANDIDATES_MAX 64u

/* IDLE -> STREAMING -> FINISHING (the file made durable) -> VERIFYING (thread
 * pool) -> WAIT_REPLACE (the data file busy) -> IDLE; any failure ->
 * WAIT_RETRY -> IDLE (and a new attempt if still needed). */
enum fetch_state { F_IDLE, F_STREAMING, F_FINISHING, F_VERIFYING, F_WAIT_REPLACE, F_WAIT_RETRY };

static const char *state_name[] = {"idle",      "streaming",    "finishing",
                                   "verifying", "wait-replace", "wait-retry"};

struct fetch {
  struct server *s;
  enum fetch_state state;
  bool needed;         /* raft asked for a store and has not got one */
  uint64_t need_index; /* the store's applied index must reach this */
  unsigned attempt;
  uint64_t backoff_ms;
  uv_timer_t timer; /* watchdog, replace poll, retry */
  char path[1200];
  char tmp_path[1300];
  char source[256];
  uint64_t source_id;
  grpc_client *client;
  grpc_ccall *call;
  snapstream_writer *writer;
  /* Reception keeps the newest blob back (the last one is the SHA-256
   * trailer) and writes the one before it; it pauses while a write runs, so
   * at most two blobs are held. */
  uint8_t *wbuf, *pend;
  size_t wlen, plen, wcap, pcap;
  bool have_pend;
  bool write_busy;
  bool call_done;
  EVP_MD_CTX *sha;
  uint64_t bytes;
  uint64_t t0_ms, progress_ms, replace_deadline_ms;
  uv_work_t work;
  bool work_busy;
  int verify_rc;
  struct mvcc_snapshot_info info;
  bool stopping;
  bool timer_open;
  void (*stop_done)(void *data);
  void *stop_data;
};

static struct fetch fx;

static void start_attempt(void);
static void stop_maybe_done(void);
static void on_timer(uv_timer_t *t);

static uint64_t now_ms(void) {
  return uv_now(fx.s->loop);
}

/* Drops what the attempt holds; the temporary files go. A write in flight
 * keeps the writer (and its buffer) until it completes: on_written ends it. */
static void attempt_cleanup(void) {
  if (fx.call != NULL) {
    grpc_ccall *c = fx.call;
    fx.call = NULL; /* its on_done is ignored from now on */
    grpc_ccall_cancel(c);
  }
  if (fx.client != NULL) {
    grpc_client_close(fx.client, NULL, NULL);
    fx.client = NULL;
  }
  if (fx.writer != NULL && !fx.write_busy) {
    snapstream_writer_abort(fx.writer);
    fx.writer = NULL;
  }
  fx.have_pend = false;
  fx.call_done = false;
  if (!fx.work_busy) {
    unlink(fx.path);
  }
}

static void fail_attempt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail_attempt(const char *fmt, ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  enum fetch_state was = fx.state;
  attempt_cleanup();
  if (fx.stopping) {
    fx.state = F_IDLE;
    stop_maybe_done();
    return;
  }
  server_log(LOG_WARN, "store fetch from %s failed while %s: %s; trying again in %" PRIu64 " ms",
             fx.source[0] ? fx.source : "no member", state_name[was], why, fx.backoff_ms);
  fx.state = F_WAIT_RETRY;
  uv_timer_start(&fx.timer, on_timer, fx.backoff_ms, 0);
  fx.backoff_ms *= 2;
  if (fx.backoff_ms > SNAPSHOT_FETCH_RETRY_MS_MAX) {
    fx.backoff_ms = SNAPSHOT_FETCH_RETRY_MS_MAX;
  }
  fx.attempt++;
}

/* ---- the source ---------------------------------------------------------- */

/* The attempt-th candidate: the leader first (unless it is this member),
 * then the other members by id, in turn. */
static int pick_source(void) {
  struct raftnode_status st;
  raftnode_status(fx.s->raft, &st);
  struct raftnode_member_info *members = NULL;
  size_t n = 0;
  int rc = raftnode_members(fx.s->raft, &members, &n);
  if (rc != 0) {
    return rc;
  }
  uint64_t cand[FETCH_CANDIDATES_MAX];
  size_t nc = 0;
  if (st.leader_id != 0 && st.leader_id != st.member_id) {
    cand[nc++] = st.leader_id;
  }
  for (size_t i = 0; i < n && nc < FETCH_CANDIDATES_MAX; i++) {
    if (members[i].id != st.member_id && members[i].id != st.leader_id && !members[i].is_learner) {
      cand[nc++] = members[i].id;
    }
  }
  raftnode_members_free(members);
  if (nc == 0) {
    return CAIRN_ENO_LEADER;
  }
  /* Members that have published no client URL are skipped. */
  for (size_t k = 0; k < nc; k++) {
    uint64_t id = cand[(fx.attempt + k) % nc];
    if (raftnode_member_client_url(fx.s->raft, id, fx.source, sizeof fx.source) == 0) {
      fx.source_id = id;
      return 0;
    }
  }
  fx.source[0] = 0;
  return CAIRN_EMEMBER_NOT_FOUND;
}

/* ---- streaming ----------------------------------------------------------- */

static int buf_reserve(uint8_t **buf, size_t *cap, size_t len) {
  if (len <= *cap) {
    return 0;
  }
  uint8_t *p = realloc(*buf, len);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  *buf = p;
  *cap = len;
  return 0;
}

static void finish_stream(void);

static void on_written(void *data, int status) {
  (void)data;
  fx.write_busy = false;
  if (fx.state != F_STREAMING) {
    /* The attempt failed or stops while this write ran. */
    if (fx.writer != NULL) {
      snapstream_writer_abort(fx.writer);
      fx.writer = NULL;
    }
    stop_maybe_done();
    return;
  }
  if (status != 0) {
    fail_attempt("writing %s: %s", fx.tmp_path, cairn_strerror(status));
    return;
  }
  fx.bytes += fx.wlen;
  if (fx.call_done) {
    finish_stream();
  } else if (fx.call != NULL) {
    grpc_ccall_pause_recv(fx.call, false);
  }
}

static void on_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)data;
  if (call != fx.call || fx.state != F_STREAMING) {
    return;
  }
  Etcdserverpb__SnapshotResponse *resp = etcdserverpb__snapshot_response__unpack(NULL, len, msg);
  if (resp == NULL) {
    fail_attempt("a SnapshotResponse that does not decode");
    return;
  }
  size_t blen = resp->blob.len;
  if (blen == 0) {
    etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
    return;
  }
  if (blen > SNAPSTREAM_CHUNK_MAX) {
    etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
    fail_attempt("a chunk of %zu bytes (at most %u)", blen, SNAPSTREAM_CHUNK_MAX);
    return;
  }
  fx.progress_ms = now_ms();
  CAIRN_ASSERT(!fx.write_busy); /* reception is paused while one runs */
  if (fx.have_pend) {
    /* The blob kept back is data, not the trailer: write it. */
    uint8_t *t = fx.wbuf;
    size_t tc = fx.wcap;
    fx.wbuf = fx.pend;
    fx.wcap = fx.pcap;
    fx.wlen = fx.plen;
    fx.pend = t;
    fx.pcap = tc;
    fx.have_pend = false;
    if (EVP_DigestUpdate(fx.sha, fx.wbuf, fx.wlen) != 1) {
      etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
      fail_attempt("SHA-256");
      return;
    }
    int rc = snapstream_writer_write(fx.writer, fx.wbuf, fx.wlen, NULL, on_written);
    if (rc != 0) {
      etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
      fail_attempt("writing %s: %s", fx.tmp_path, cairn_strerror(rc));
      return;
    }
    fx.write_busy = true;
    grpc_ccall_pause_recv(call, true);
  }
  if (buf_reserve(&fx.pend, &fx.pcap, blen) != 0) {
    etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
    fail_attempt("out of memory");
    return;
  }
  memcpy(fx.pend, resp->blob.data, blen);
  fx.plen = blen;
  fx.have_pend = true;
  etcdserverpb__snapshot_response__free_unpacked(resp, NULL);
}

static void on_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)data;
  if (call != fx.call) {
    return; /* an attempt given up */
  }
  fx.call = NULL;
  if (fx.state != F_STREAMING) {
    return;
  }
  if (status != GRPC_OK) {
    fail_attempt("the Snapshot call ended with status %d: %s", status, message);
    return;
  }
  fx.call_done = true;
  if (!fx.write_busy) {
    finish_stream();
  }
}

static void after_verify(uv_work_t *w, int status);
static void verify_work(uv_work_t *w);

static void on_file_durable(void *data, int status) {
  (void)data;
  fx.writer = NULL; /* consumed by finish, whatever the status */
  if (fx.state != F_FINISHING) {
    unlink(fx.path);
    stop_maybe_done();
    return;
  }
  if (status != 0) {
    fail_attempt("syncing %s: %s", fx.path, cairn_strerror(status));
    return;
  }
  server_log(LOG_INFO, "store fetch: received %" PRIu64 " bytes from %s in %.3f s; verifying",
             fx.bytes, fx.source, (double)(now_ms() - fx.t0_ms) / 1e3);
  fx.state = F_VERIFYING;
  fx.work_busy = true;
  fx.work.data = &fx;
  int rc = uv_queue_work(fx.s->loop, &fx.work, verify_work, after_verify);
  if (rc != 0) {
    fx.work_busy = false;
    fail_attempt("thread pool: %s", uv_strerror(rc));
  }
}

/* The whole stream is in: the kept-back blob must be the SHA-256 of the rest. */
static void finish_stream(void) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned dlen = 0;
  if (!fx.have_pend || fx.plen != SHA256_BYTES) {
    fail_attempt("the stream did not end with a SHA-256 trailer");
    return;
  }
  if (EVP_DigestFinal_ex(fx.sha, digest, &dlen) != 1 || dlen != SHA256_BYTES ||
      memcmp(digest, fx.pend, SHA256_BYTES) != 0) {
    fail_attempt("the SHA-256 trailer does not match the %" PRIu64 " bytes received", fx.bytes);
    return;
  }
  if (fx.client != NULL) {
    grpc_client_close(fx.client, NULL, NULL);
    fx.client = NULL;
  }
  fx.have_pend = false;
  fx.state = F_FINISHING;
  int rc = snapstream_writer_finish(fx.writer, NULL, on_file_durable);
  if (rc != 0) {
    fail_attempt("finishing %s: %s", fx.path, cairn_strerror(rc));
  }
}

/* ---- verification and replacement ---------------------------------------- */

/* Thread pool: touches only the file (and f's result fields). */
static void verify_work(uv_work_t *w) {
  struct fetch *f = w->data;
  f->verify_rc = mvcc_snapshot_verify(f->path, &f->info);
}

static void try_replace(void) {
  struct server *s = fx.s;
  /* A checkpoint (ours, or raft's gate) holds the data file's descriptor:
   * wait for it; an export makes mvcc_replace say CAIRN_EBUSY. */
  int rc = CAIRN_EBUSY;
  if (fileio_inflight(s->fio) == 0 && !raftnode_store_busy(s->raft)) {
    rc = mvcc_replace(s->store, fx.path);
  }
  if (rc == CAIRN_EBUSY) {
    if (now_ms() >= fx.replace_deadline_ms) {
      fail_attempt("the data file stayed busy (checkpoints, exports) for %u ms",
                   SNAPSHOT_FETCH_REPLACE_WAIT_MS);
      return;
    }
    uv_timer_start(&fx.timer, on_timer, REPLACE_POLL_MS, 0);
    return;
  }
  if (rc != 0) {
    fail_attempt("replacing the store: %s", cairn_strerror(rc));
    return;
  }
  server_log(LOG_INFO,
             "store fetch: store replaced with %s's (revision %" PRId64 ", applied index %" PRIu64
             ", %.3f s in all)",
             fx.source, mvcc_current_revision(s->store), mvcc_applied_index(s->store),
             (double)(now_ms() - fx.t0_ms) / 1e3);
  if (s->lessor != NULL) {
    lessor_store_replaced(s->lessor);
  }
  fx.state = F_IDLE;
  rc = raftnode_store_replaced(s->raft);
  if (rc == 0) {
    fx.needed = false;
    fx.attempt = 0;
    fx.backoff_ms = SNAPSHOT_FETCH_RETRY_MS_MIN;
    server_log(LOG_INFO, "store fetch: raft resumes applying from applied index %" PRIu64,
               mvcc_applied_index(s->store));
  } else if (rc == CAIRN_ENOT_CAPABLE) {
    /* What raft needs moved meanwhile (a later snapshot was installed):
     * raft asks again, and a new attempt follows. */
    server_log(LOG_WARN, "store fetch: raft needs a later store; fetching again");
  } else {
    fx.needed = false; /* not behind any more */
  }
}

static void after_verify(uv_work_t *w, int status) {
  (void)w;
  fx.work_busy = false;
  if (fx.stopping || fx.state != F_VERIFYING) {
    unlink(fx.path);
    stop_maybe_done();
    return;
  }
  if (status != 0 || fx.verify_rc != 0) {
    fail_attempt("verification: %s",
                 status != 0 ? uv_strerror(status) : cairn_strerror(fx.verify_rc));
    return;
  }
  if (fx.info.applied_index < fx.need_index) {
    fail_attempt("its store is at applied index %" PRIu64 ", %" PRIu64 " is needed",
                 fx.info.applied_index, fx.need_index);
    return;
  }
  server_log(LOG_INFO,
             "store fetch: verified (revision %" PRId64 ", applied index %" PRIu64 ", %" PRIu64
             " bytes); replacing the store",
             fx.info.revision, fx.info.applied_index, fx.info.file_bytes);
  fx.state = F_WAIT_REPLACE;
  fx.replace_deadline_ms = now_ms() + SNAPSHOT_FETCH_REPLACE_WAIT_MS;
  try_replace();
}

/* ---- attempts ------------------------------------------------------------ */

static void start_attempt(void) {
  CAIRN_ASSERT(fx.state == F_IDLE);
  if (fx.stopping || !fx.needed) {
    return;
  }
  if (fx.write_busy || fx.work_busy) {
    /* The last attempt's write or verification is still running. */
    fx.state = F_WAIT_RETRY;
    uv_timer_start(&fx.timer, on_timer, REPLACE_POLL_MS, 0);
    return;
  }
  fx.t0_ms = now_ms();
  fx.bytes = 0;
  fx.have_pend = false;
  fx.call_done = false;
  fx.state = F_STREAMING;
  int rc = pick_source();
  if (rc != 0) {
    fail_attempt("no member to fetch from: %s", cairn_strerror(rc));
    return;
  }
  server_log(LOG_INFO,
             "store fetch: this member's store is behind raft's snapshot (applied index %" PRIu64
             " needed, the store has %" PRIu64 "); fetching a store from %s (member %016" PRIx64
             ", attempt %u)",
             fx.need_index, mvcc_applied_index(fx.s->store), fx.source, fx.source_id,
             fx.attempt + 1);
  unlink(fx.path);
  unlink(fx.tmp_path);
  const struct config *c = &fx.s->cfg;
  struct grpc_client_options o = {.max_recv_message_bytes = SNAPSTREAM_CHUNK_MAX + 4096u};
  if (strncmp(fx.source, "https://", 8) == 0) {
    o.ca_file = c->trusted_ca_file[0] ? c->trusted_ca_file : NULL;
    o.cert_file = c->cert_file[0] ? c->cert_file : NULL;
    o.key_file = c->key_file[0] ? c->key_file : NULL;
  }
  rc = grpc_client_new(fx.s->loop, fx.source, &o, &fx.client);
  if (rc != 0) {
    fx.client = NULL;
    fail_attempt("client: %s", cairn_strerror(rc));
    return;
  }
  rc = snapstream_writer_open(fx.s->fio, fx.path, &fx.writer);
  if (rc != 0) {
    fx.writer = NULL;
    fail_attempt("creating %s: %s", fx.tmp_path, cairn_strerror(rc));
    return;
  }
  if (EVP_DigestInit_ex(fx.sha, EVP_sha256(), NULL) != 1) {
    fail_attempt("SHA-256");
    return;
  }
  struct grpc_client_handlers h = {.on_message = on_message, .on_done = on_done};
  rc = grpc_client_call(fx.client, PATH_SNAPSHOT, NULL, 0, 0, &h, NULL, &fx.call);
  if (rc == 0) {
    /* SnapshotRequest has no fields: an empty message. */
    rc = grpc_ccall_send(fx.call, NULL, 0);
    if (rc == 0) {
      rc = grpc_ccall_close_send(fx.call);
    }
  } else {
    fx.call = NULL;
  }
  if (rc != 0) {
    fail_attempt("Snapshot call: %s", cairn_strerror(rc));
    return;
  }
  fx.progress_ms = now_ms();
  uv_timer_start(&fx.timer, on_timer, WATCHDOG_MS, WATCHDOG_MS);
}

static void on_timer(uv_timer_t *t) {
  (void)t;
  switch (fx.state) {
    case F_STREAMING:
      if (now_ms() - fx.progress_ms >= SNAPSHOT_FETCH_STALL_MS) {
        fail_attempt("nothing received for %u ms", SNAPSHOT_FETCH_STALL_MS);
      }
      break;
    case F_WAIT_REPLACE:
      try_replace();
      break;
    case F_WAIT_RETRY:
      uv_timer_stop(&fx.timer);
      fx.state = F_IDLE;
      if (fx.needed && raftnode_store_behind(fx.s->raft)) {
        start_attempt();
      } else {
        fx.needed = false;
      }
      break;
    default:
      uv_timer_stop(&fx.timer);
      break;
  }
}

static void on_store_needed(void *data, uint64_t index, uint64_t term) {
  (void)data;
  server_log(LOG_INFO,
             "store fetch: raft needs a store at applied index %" PRIu64 " (snapshot term %" PRIu64
             "); this store is at %" PRIu64,
             index, term, mvcc_applied_index(fx.s->store));
  fx.needed = true;
  fx.need_index = index;
  if (fx.state == F_IDLE) {
    start_attempt();
  }
  /* Otherwise the attempt under way goes on; its result is checked against
   * need_index, and raft asks again if the store is still not enough. */
}

/* ---- start and stop ------------------------------------------------------ */

int snapshot_fetch_init(struct server *s) {
  memset(&fx, 0, sizeof fx);
  fx.s = s;
  fx.backoff_ms = SNAPSHOT_FETCH_RETRY_MS_MIN;
  snprintf(fx.path, sizeof fx.path, "%s/member/%s", s->cfg.data_dir, SNAPSHOT_FETCH_FILE);
  snprintf(fx.tmp_path, sizeof fx.tmp_path, "%s.tmp", fx.path);
  /* An interrupted fetch of an earlier run: raft asks again if needed. */
  if (unlink(fx.path) == 0 || unlink(fx.tmp_path) == 0) {
    server_log(LOG_INFO, "store fetch: removed the temporary files of an interrupted fetch");
  }
  unlink(fx.tmp_path);
  fx.sha = EVP_MD_CTX_new();
  if (fx.sha == NULL) {
    return CAIRN_ENOMEM;
  }
  uv_timer_init(s->loop, &fx.timer);
  fx.timer_open = true;
  raftnode_on_store_needed(s->raft, on_store_needed, NULL);
  return 0;
}

static void on_timer_closed(uv_handle_t *h) {
  (void)h;
  EVP_MD_CTX_free(fx.sha);
  fx.sha = NULL;
  free(fx.wbuf);
  free(fx.pend);
  fx.wbuf = fx.pend = NULL;
  void (*done)(void *) = fx.stop_done;
  void *data = fx.stop_data;
  fx.stop_done = NULL;
  if (done != NULL) {
    done(data);
  }
}

/* The stop completes once no write and no verification runs. */
static void stop_maybe_done(void) {
  if (!fx.stopping || fx.write_busy || fx.work_busy || !fx.timer_open) {
    return;
  }
  if (fx.writer != NULL) {
    snapstream_writer_abort(fx.writer);
    fx.writer = NULL;
  }
  unlink(fx.path);
  fx.timer_open = false;
  uv_close((uv_handle_t *)&fx.timer, on_timer_closed);
}

void snapshot_fetch_stop(struct server *s, void (*done)(void *data), void *data) {
  CAIRN_ASSERT(fx.s == s && !fx.stopping);
  raftnode_on_store_needed(s->raft, NULL, NULL);
  fx.stopping = true;
  fx.stop_done = done;
  fx.stop_data = data;
  uv_timer_stop(&fx.timer);
  if (fx.state != F_IDLE) {
    server_log(LOG_INFO, "store fetch: stopped while %s", state_name[fx.state]);
  }
  attempt_cleanup();
  fx.state = F_IDLE;
  stop_maybe_done();
}
