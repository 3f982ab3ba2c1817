/* server/maintenance_service.c: etcdserverpb.Maintenance.
 *
 * Status, Alarm, Defragment, Hash, HashKV, Snapshot and MoveLeader, as etcd
 * 3.4 answers them (v3rpc/maintenance.go); docs/operations.md describes
 * each answer and the bounds below.
 *
 * - Snapshot exports the store (mvcc_snapshot_export, a consistent compacted
 *   copy) into a temporary file on the thread pool, then streams it in
 *   MAINT_SNAPSHOT_CHUNK_BYTES chunks read through fileio (snapstream), each
 *   a SnapshotResponse{remaining_bytes, blob}, then one last message whose
 *   blob is the SHA-256 of the whole file: etcdctl checks that the stream's
 *   length is 32 more than a multiple of 512 (LMDB pages are 4096 bytes) and
 *   keeps the digest at the end of the file, as with etcd. The temporary
 *   file is unlinked as soon as the stream has it open.
 * - Hash exports the same way and returns the CRC-32C of the exported file.
 * - Exports run one at a time (they share LMDB's export lock, and a thread
 *   blocked on it would hold a thread-pool thread); at most
 *   MAINT_EXPORT_JOBS_MAX Snapshot and Hash calls are queued, exporting or
 *   streaming at once, and one more gets "etcdserver: too many requests".
 * - Defragment runs mvcc_defrag() on the loop (blocking, for the time of a
 *   compacting copy of the store) once no export runs and the fileio is
 *   idle (no checkpoint's fsync in flight: defragmentation replaces the data
 *   file under it). Requests that arrive while one waits share it.
 * - HashKV follows etcd's hashKV: CRC-32C over the "key" bucket's entries
 *   (revision bytes, marshalled mvccpb.KeyValue) of every key version up to
 *   the revision, where versions at or below the compacted revision count
 *   only if they are still the key's version at that revision. It reads the
 *   store in bounded steps on the loop (a page of keys or a batch of the
 *   change feed per loop turn). Equal to etcd's value for the same history,
 *   except for versions at or below the compacted revision written by one
 *   multi-key txn: their sub-revisions are taken in key order.
 * - Alarm: NOSPACE only (s->alarm_nospace, raised by server_propose on a
 *   store NOSPACE), kept in the store's meta ("alarm.nospace") through raft
 *   so that it survives a restart. Whenever s->alarm_nospace differs from
 *   the stored state, a uv_check watcher proposes the change. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cairn_assert.h"
#include "common/crc32c.h"
#include "server/metrics.h"
#include "server/server.h"
#include "storage/snapshot_stream.h"

#define MAINT_PREFIX "/etcdserverpb.Maintenance/"
#define PATH_STATUS MAINT_PREFIX "Status"
#define PATH_ALARM MAINT_PREFIX "Alarm"
#define PATH_DEFRAG MAINT_PREFIX "Defragment"
#define PATH_HASH MAINT_PREFIX "Hash"
#define PATH_HASHKV MAINT_PREFIX "HashKV"
#define PATH_SNAPSHOT MAINT_PREFIX "Snapshot"
#define PATH_MOVE_LEADER MAINT_PREFIX "MoveLeader"

/* Snapshot and Hash calls queued, exporting or streaming at once. */
#define MAINT_EXPORT_JOBS_MAX 4u
/* Blob bytes per SnapshotResponse (etcd sends 32 KiB; larger chunks cost
 * fewer messages, and stay far below every client's 4 MiB default). */
#define MAINT_SNAPSHOT_CHUNK_BYTES (256u * 1024u)
/* A chunk read refused because the fileio is full is retried after this. */
#define MAINT_READ_RETRY_MS 10u
/* Defragment calls waiting for the one to come. */
#define MAINT_DEFRAG_WAITERS_MAX 64u
/* How long a Defragment waits for exports and checkpoints to end before it
 * fails with "etcdserver: request timed out", and how often it looks. */
#define MAINT_DEFRAG_WAIT_MS 30000u
#define MAINT_DEFRAG_POLL_MS 5u
/* HashKV calls computing at once. */
#define MAINT_HASHKV_JOBS_MAX 2u
/* Keys read per step of a HashKV. */
#define MAINT_HASHKV_PAGE_KEYS 1000u
/* Key versions at or below the compacted revision a HashKV holds (24 bytes
 * each); a larger store gets CAIRN_ENOMEM. */
#define MAINT_HASHKV_ENTRIES_MAX (8u * 1024u * 1024u)
/* A HashKV restarts when a compaction moves under it, this often at most. */
#define MAINT_HASHKV_RESTARTS_MAX 3u
/* A failed proposal of the stored alarm state is retried after this. */
#define MAINT_ALARM_RETRY_MS 1000u

/* The store's meta entry: 1 byte (1: raised), 8 bytes member id (big endian). */
#define ALARM_META_NAME "alarm.nospace"
#define ALARM_META_BYTES 9u

/* Temporary export files, under --data-dir; emptied at start. */
#define MAINT_TMP_DIR "member/maintenance.tmp"

/* ---- module state --------------------------------------------------------- */

enum job_kind { JOB_SNAPSHOT, JOB_HASH };
enum job_state { JOB_QUEUED, JOB_EXPORTING, JOB_STREAMING, JOB_FINISHED };

/* A Snapshot or Hash call. It is the call's user pointer; call is NULL once
 * the call's on_close ran. */
struct export_job {
  enum job_kind kind;
  enum job_state state;
  grpc_call *call;
  struct export_job *next; /* export queue */
  uv_work_t work;
  mvcc_store *store;
  char path[1300];
  int rc;       /* the export's outcome (worker) */
  uint32_t crc; /* JOB_HASH: CRC-32C of the file (worker) */
  uint64_t t0_ms;
  Etcdserverpb__ResponseHeader header;
  /* JOB_SNAPSHOT streaming */
  snapstream_reader *reader;
  uint64_t size;
  EVP_MD_CTX *sha;
  uint8_t *msg; /* the packed response waiting to go out */
  size_t msg_len, msg_cap;
  bool final_queued; /* msg is the SHA-256 message */
  uv_timer_t retry;
  bool retry_inited;
};

static struct {
  struct server *s;
  char tmp_dir[1200];
  uint64_t tmp_seq;
  /* exports */
  struct export_job *queue_head, *queue_tail;
  bool exporting;
  unsigned export_jobs;
  /* defragmentation */
  grpc_call *defrag_waiters[MAINT_DEFRAG_WAITERS_MAX];
  size_t n_defrag_waiters;
  uint64_t defrag_deadline_ms;
  uv_timer_t defrag_timer;
  /* HashKV */
  unsigned hashkv_jobs;
  unsigned hashkv_sorting; /* jobs on the thread pool */
  /* maintenance_service_stop() */
  bool stopping;
  uv_timer_t stop_timer;
  void (*stop_cb)(void *data);
  void *stop_data;
  /* the alarm's stored state */
  uv_check_t alarm_check;
  bool alarm_stored;
  bool alarm_writing;
  uint64_t alarm_retry_ms;
} ms;

/* ---- replies -------------------------------------------------------------- */

static void reply(grpc_call *call, const char *path, const ProtobufCMessage *msg) {
  server_reply(call, msg);
  metrics_count_request(ms.s->metrics, path, GRPC_OK);
}

static void fail(grpc_call *call, const char *path, int err) {
  server_fail(call, err);
  metrics_count_request(ms.s->metrics, path, cairn_grpc_code(err));
}

static void fail_text(grpc_call *call, const char *path, int code, const char *text) {
  grpc_call_finish(call, code, text);
  metrics_count_request(ms.s->metrics, path, code);
}

static void fail_unmarshal(grpc_call *call, const char *path) {
  fail_text(call, path, GRPC_INTERNAL, "grpc: error unmarshalling request");
}

/* ---- Status --------------------------------------------------------------- */

static void on_status(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__StatusRequest *req = etcdserverpb__status_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_STATUS);
    return;
  }
  etcdserverpb__status_request__free_unpacked(req, NULL);

  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  server_header(s, &header);
  Etcdserverpb__StatusResponse resp = ETCDSERVERPB__STATUS_RESPONSE__INIT;
  resp.header = &header;
  resp.version = (char *)CAIRN_ETCD_VERSION;
  uint64_t db_size = 0, in_use = 0;
  int rc = mvcc_size(s->store, &db_size, &in_use);
  if (rc != 0) {
    fail(call, PATH_STATUS, rc);
    return;
  }
  resp.dbsize = (int64_t)db_size;
  /* Right after a defragmentation LMDB can count more pages in use than
   * the file holds yet; etcd's in-use never exceeds the size. */
  resp.dbsizeinuse = (int64_t)(in_use < db_size ? in_use : db_size);
  resp.leader = st.leader_id;
  resp.raftindex = st.commit_index;
  resp.raftterm = st.term;
  resp.raftappliedindex = st.applied_index;
  /* etcd: "etcdserver: no leader", then each alarm as its proto text. */
  char alarm_text[96];
  char *errors[2];
  size_t n_errors = 0;
  if (st.leader_id == 0) {
    errors[n_errors++] = (char *)cairn_strerror(CAIRN_ENO_LEADER);
  }
  if (s->alarm_nospace) {
    snprintf(alarm_text, sizeof alarm_text, "memberID:%" PRIu64 " alarm:NOSPACE ",
             s->alarm_member_id);
    errors[n_errors++] = alarm_text;
  }
  resp.n_errors = n_errors;
  resp.errors = errors;
  reply(call, PATH_STATUS, &resp.base);
}

/* ---- Alarm ---------------------------------------------------------------- */

static void alarm_meta_encode(uint8_t out[ALARM_META_BYTES], bool raised, uint64_t member) {
  out[0] = raised ? 1 : 0;
  for (int i = 0; i < 8; i++) {
    out[1 + i] = (uint8_t)(member >> (56 - 8 * i));
  }
}

/* The stored state: false when unset or unreadable. */
static bool alarm_meta_read(struct server *s, uint64_t *member) {
  uint8_t buf[ALARM_META_BYTES];
  size_t len = 0;
  *member = 0;
  if (mvcc_meta_get(s->store, ALARM_META_NAME, buf, sizeof buf, &len) != 0 ||
      len != ALARM_META_BYTES || buf[0] != 1) {
    return false;
  }
  for (int i = 0; i < 8; i++) {
    *member = (*member << 8) | buf[1 + i];
  }
  return true;
}

static int alarm_propose(struct server *s, bool raised, uint64_t member, void *data,
                         server_propose_cb cb) {
  uint8_t value[ALARM_META_BYTES];
  alarm_meta_encode(value, raised, member);
  struct mvcc_op op = {.type = MVCC_OP_META_PUT,
                       .u.meta_put = {.name = ALARM_META_NAME, .value = {value, sizeof value}}};
  return server_propose(s, &op, data, cb);
}

static void alarm_refresh_stored(struct server *s) {
  uint64_t member;
  ms.alarm_stored = alarm_meta_read(s, &member);
}

/* The watcher's own write (s->alarm_nospace changed elsewhere). */
static void on_alarm_stored(struct server *s, void *data, int status, struct mvcc_result *r) {
  (void)data;
  int err = status != 0 ? status : r->err;
  if (r != NULL) {
    mvcc_result_free(r); /* server.h: the struct is not ours */
  }
  ms.alarm_writing = false;
  if (err != 0) {
    server_log(LOG_WARN, "cannot store the NOSPACE alarm state: %s", cairn_strerror(err));
    ms.alarm_retry_ms = uv_now(s->loop) + MAINT_ALARM_RETRY_MS;
  }
  alarm_refresh_stored(s);
}

static void on_alarm_check(uv_check_t *h) {
  struct server *s = h->data;
  if (s->alarm_nospace == ms.alarm_stored || ms.alarm_writing || s->stopping ||
      uv_now(s->loop) < ms.alarm_retry_ms) {
    return;
  }
  int rc = alarm_propose(s, s->alarm_nospace, s->alarm_member_id, NULL, on_alarm_stored);
  if (rc != 0) {
    ms.alarm_retry_ms = uv_now(s->loop) + MAINT_ALARM_RETRY_MS;
    return;
  }
  ms.alarm_writing = true;
}

/* An ACTIVATE or DEACTIVATE going through raft. */
struct alarm_call {
  grpc_call *call; /* NULL once on_close ran */
  bool activate;
  uint64_t member;
};

static void alarm_respond(grpc_call *call, bool with_member, uint64_t member) {
  Etcdserverpb__AlarmMember am = ETCDSERVERPB__ALARM_MEMBER__INIT;
  am.memberid = member;
  am.alarm = ETCDSERVERPB__ALARM_TYPE__NOSPACE;
  Etcdserverpb__AlarmMember *list[1] = {&am};
  /* etcd's AlarmResponse carries no header (the applier builds it bare). */
  Etcdserverpb__AlarmResponse resp = ETCDSERVERPB__ALARM_RESPONSE__INIT;
  resp.n_alarms = with_member ? 1 : 0;
  resp.alarms = list;
  reply(call, PATH_ALARM, &resp.base);
}

static void on_alarm_applied(struct server *s, void *data, int status, struct mvcc_result *r) {
  struct alarm_call *ac = data;
  int err = status != 0 ? status : r->err;
  if (r != NULL) {
    mvcc_result_free(r); /* server.h: the struct is not ours */
  }
  if (err == 0) {
    if (ac->activate) {
      if (!s->alarm_nospace) {
        server_log(LOG_WARN, "alarm raised: NOSPACE (by request, member %" PRIx64 ")", ac->member);
      }
      s->alarm_nospace = true;
      s->alarm_member_id = ac->member;
    } else {
      server_log(LOG_WARN, "alarm disarmed: NOSPACE (member %" PRIx64 ")", ac->member);
      s->alarm_nospace = false;
    }
    alarm_refresh_stored(s);
  }
  if (ac->call != NULL) {
    grpc_call_set_user(ac->call, NULL);
    if (err == 0) {
      alarm_respond(ac->call, true, ac->member);
    } else {
      fail(ac->call, PATH_ALARM, err);
    }
  }
  free(ac);
}

static void on_alarm_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct alarm_call *ac = grpc_call_user(call);
  if (ac != NULL) {
    ac->call = NULL;
  }
}

static void on_alarm(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__AlarmRequest *req = etcdserverpb__alarm_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_ALARM);
    return;
  }
  Etcdserverpb__AlarmRequest__AlarmAction action = req->action;
  Etcdserverpb__AlarmType type = req->alarm;
  uint64_t member = req->memberid;
  etcdserverpb__alarm_request__free_unpacked(req, NULL);

  bool nospace = type == ETCDSERVERPB__ALARM_TYPE__NOSPACE;
  switch (action) {
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__GET:
      /* NONE lists every alarm; the member id is not a filter (etcd). */
      alarm_respond(call, s->alarm_nospace && (nospace || type == ETCDSERVERPB__ALARM_TYPE__NONE),
                    s->alarm_member_id);
      return;
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE:
      if (!nospace) {
        /* Cairn has no CORRUPT alarm (etcd's corruption checker is not
         * there); nothing is raised, as etcd answers an unknown one. */
        server_log(LOG_WARN, "unimplemented alarm activation (type %d)", (int)type);
        alarm_respond(call, false, 0);
        return;
      }
      if (s->alarm_nospace) {
        alarm_respond(call, true, s->alarm_member_id); /* etcd returns the existing one */
        return;
      }
      break;
    case ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__DEACTIVATE:
      /* etcd removes the (member, type) pair; anything else is a no-op. */
      if (!nospace || !s->alarm_nospace || member != s->alarm_member_id) {
        alarm_respond(call, false, 0);
        return;
      }
      break;
    default:
      fail(call, PATH_ALARM, CAIRN_EINVAL);
      return;
  }
  struct alarm_call *ac = malloc(sizeof *ac);
  if (ac == NULL) {
    fail(call, PATH_ALARM, CAIRN_ENOMEM);
    return;
  }
  ac->call = call;
  ac->activate = action == ETCDSERVERPB__ALARM_REQUEST__ALARM_ACTION__ACTIVATE;
  ac->member = member;
  int rc = alarm_propose(s, ac->activate, member, ac, on_alarm_applied);
  if (rc != 0) {
    free(ac);
    fail(call, PATH_ALARM, rc);
    return;
  }
  grpc_call_set_user(call, ac);
}

/* ---- Defragment ----------------------------------------------------------- */

static void defrag_answer_all(struct server *s, int rc) {
  Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  server_header(s, &header);
  Etcdserverpb__DefragmentResponse resp = ETCDSERVERPB__DEFRAGMENT_RESPONSE__INIT;
  resp.header = &header;
  for (size_t i = 0; i < ms.n_defrag_waiters; i++) {
    grpc_call *call = ms.defrag_waiters[i];
    if (call == NULL) {
      continue; /* gone */
    }
    grpc_call_set_user(call, NULL);
    if (rc == 0) {
      reply(call, PATH_DEFRAG, &resp.base);
    } else {
      fail(call, PATH_DEFRAG, rc);
    }
  }
  ms.n_defrag_waiters = 0;
}

static void export_start_next(void);

/* Runs the defragmentation if nothing holds the data file; true when the
 * waiters got their answer. */
static bool defrag_try(struct server *s) {
  if (ms.n_defrag_waiters == 0) {
    return true;
  }
  bool live = false;
  for (size_t i = 0; i < ms.n_defrag_waiters; i++) {
    live = live || ms.defrag_waiters[i] != NULL;
  }
  if (!live) {
    ms.n_defrag_waiters = 0; /* every caller left: nothing to do */
    export_start_next();
    return true;
  }
  uint64_t now = uv_now(s->loop);
  int rc = CAIRN_EBUSY;
  if (!ms.exporting && fileio_inflight(s->fio) == 0 &&
      (s->raft == NULL || !raftnode_store_busy(s->raft))) {
    uint64_t size_before = 0, size_after = 0, in_use = 0;
    mvcc_size(s->store, &size_before, &in_use);
    server_log(LOG_INFO, "starting defragment");
    uv_update_time(s->loop);
    uint64_t t0 = uv_hrtime();
    rc = mvcc_defrag(s->store);
    double took = (double)(uv_hrtime() - t0) / 1e9;
    uv_update_time(s->loop);
    if (rc == 0) {
      metrics_observe(s->metrics, METRIC_HIST_DEFRAG, took);
      mvcc_size(s->store, &size_after, &in_use);
      server_log(LOG_INFO,
                 "finished defragment: %" PRIu64 " bytes before, %" PRIu64 " after, took %.3f s",
                 size_before, size_after, took);
    } else if (rc != CAIRN_EBUSY) {
      server_log(LOG_WARN, "failed to defragment: %s", cairn_strerror(rc));
    }
  }
  if (rc == CAIRN_EBUSY) {
    /* An export (ours or raft's) or a checkpoint holds the data file. */
    if (now < ms.defrag_deadline_ms) {
      return false;
    }
    server_log(LOG_WARN, "failed to defragment: the store stayed busy for %u ms",
               MAINT_DEFRAG_WAIT_MS);
    rc = CAIRN_ETIMEOUT;
  }
  defrag_answer_all(s, rc);
  export_start_next(); /* exports held back for the defragmentation */
  return true;
}

static void on_defrag_timer(uv_timer_t *t) {
  struct server *s = t->data;
  if (defrag_try(s)) {
    uv_timer_stop(t);
  }
}

static void on_defrag_close(grpc_call *call, void *ctx) {
  (void)ctx;
  if (grpc_call_user(call) == NULL) {
    return;
  }
  for (size_t i = 0; i < ms.n_defrag_waiters; i++) {
    if (ms.defrag_waiters[i] == call) {
      ms.defrag_waiters[i] = NULL;
    }
  }
}

static void on_defrag(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__DefragmentRequest *req = etcdserverpb__defragment_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_DEFRAG);
    return;
  }
  etcdserverpb__defragment_request__free_unpacked(req, NULL);
  if (s->stopping || ms.stopping) {
    fail(call, PATH_DEFRAG, CAIRN_ESTOPPED);
    return;
  }
  if (ms.n_defrag_waiters == MAINT_DEFRAG_WAITERS_MAX) {
    fail(call, PATH_DEFRAG, CAIRN_ETOO_MANY_REQUESTS);
    return;
  }
  if (ms.n_defrag_waiters == 0) {
    ms.defrag_deadline_ms = uv_now(s->loop) + MAINT_DEFRAG_WAIT_MS;
  }
  ms.defrag_waiters[ms.n_defrag_waiters++] = call;
  grpc_call_set_user(call, &ms); /* marks a waiting call for on_defrag_close */
  if (!defrag_try(s)) {
    uv_timer_start(&ms.defrag_timer, on_defrag_timer, MAINT_DEFRAG_POLL_MS, MAINT_DEFRAG_POLL_MS);
  }
}

/* ---- exports: Snapshot and Hash ------------------------------------------- */

static void job_on_retry_closed(uv_handle_t *h) {
  free(h->data);
}

static void job_free(struct export_job *j) {
  CAIRN_ASSERT(ms.export_jobs > 0);
  ms.export_jobs--;
  if (j->reader != NULL) {
    snapstream_reader_close(j->reader);
  }
  EVP_MD_CTX_free(j->sha);
  free(j->msg);
  if (j->retry_inited) {
    uv_close((uv_handle_t *)&j->retry, job_on_retry_closed);
    return;
  }
  free(j);
}

/* Thread pool: export, and for Hash the file's CRC-32C. The file is left
 * for the loop (Snapshot streams it; Hash unlinks it). */
static void export_work(uv_work_t *w) {
  struct export_job *j = w->data;
  j->rc = mvcc_snapshot_export(j->store, j->path);
  if (j->rc != 0 || j->kind != JOB_HASH) {
    return;
  }
  FILE *f = fopen(j->path, "rb");
  if (f == NULL) {
    fprintf(stderr, "cairn: hash: open %s: %s\n", j->path, strerror(errno));
    j->rc = CAIRN_EIO;
    return;
  }
  enum { BUF = 1 << 20 };
  uint8_t *buf = malloc(BUF);
  uint32_t crc = 0;
  if (buf == NULL) {
    j->rc = CAIRN_ENOMEM;
  }
  while (j->rc == 0) {
    size_t n = fread(buf, 1, BUF, f);
    crc = crc32c_update(crc, buf, n);
    if (n < BUF) {
      if (ferror(f)) {
        fprintf(stderr, "cairn: hash: read %s: %s\n", j->path, strerror(errno));
        j->rc = CAIRN_EIO;
      }
      break;
    }
  }
  free(buf);
  fclose(f);
  j->crc = crc;
}

static void snap_next(struct export_job *j);

static void snap_fail(struct export_job *j, int err) {
  j->state = JOB_FINISHED;
  if (j->reader != NULL) {
    snapstream_reader_close(j->reader);
    j->reader = NULL;
  }
  fail(j->call, PATH_SNAPSHOT, err);
}

/* Packs a SnapshotResponse into j->msg. */
static int snap_pack(struct export_job *j, uint64_t remaining, const uint8_t *blob, size_t len) {
  Etcdserverpb__SnapshotResponse resp = ETCDSERVERPB__SNAPSHOT_RESPONSE__INIT;
  resp.header = &j->header;
  resp.remaining_bytes = remaining;
  resp.blob.data = (uint8_t *)blob;
  resp.blob.len = len;
  size_t need = protobuf_c_message_get_packed_size(&resp.base);
  if (need > j->msg_cap) {
    uint8_t *p = realloc(j->msg, need);
    if (p == NULL) {
      return CAIRN_ENOMEM;
    }
    j->msg = p;
    j->msg_cap = need;
  }
  j->msg_len = protobuf_c_message_pack(&resp.base, j->msg);
  CAIRN_ASSERT(j->msg_len == need);
  return 0;
}

static void snap_flush(struct export_job *j);

static void on_snap_writable(grpc_call *call, void *data) {
  (void)call;
  snap_flush(data);
}

static void snap_send_final(struct export_job *j) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (EVP_DigestFinal_ex(j->sha, digest, &dlen) != 1 || dlen != 32) {
    snap_fail(j, CAIRN_EIO);
    return;
  }
  server_log(LOG_INFO, "sending database sha256 checksum to client (%" PRIu64 " bytes)", j->size);
  int rc = snap_pack(j, 0, digest, dlen);
  if (rc != 0) {
    snap_fail(j, rc);
    return;
  }
  j->final_queued = true;
  snap_flush(j);
}

/* Sends j->msg; then reads on, sends the digest, or finishes. */
static void snap_flush(struct export_job *j) {
  int rc = grpc_call_send(j->call, j->msg, j->msg_len);
  if (rc == CAIRN_EBUSY) {
    grpc_call_on_writable(j->call, on_snap_writable, j);
    return;
  }
  if (rc != 0) {
    /* CAIRN_ESTOPPED: the call ended (deadline, cancel); on_close frees. */
    snap_fail(j, rc);
    return;
  }
  j->msg_len = 0;
  if (j->final_queued) {
    j->state = JOB_FINISHED;
    snapstream_reader_close(j->reader);
    j->reader = NULL;
    metrics_inc(ms.s->metrics, METRIC_SNAPSHOTS_SENT);
    server_log(LOG_INFO,
               "successfully sent database snapshot to client (%" PRIu64 " bytes, took %.3f s)",
               j->size, (double)(uv_now(ms.s->loop) - j->t0_ms) / 1e3);
    grpc_call_finish(j->call, GRPC_OK, NULL);
    metrics_count_request(ms.s->metrics, PATH_SNAPSHOT, GRPC_OK);
    return;
  }
  if (snapstream_reader_offset(j->reader) == j->size) {
    snap_send_final(j);
    return;
  }
  snap_next(j);
}

static void on_snap_chunk(void *data, int status, const uint8_t *chunk, size_t len) {
  struct export_job *j = data;
  if (status != 0) {
    server_log(LOG_WARN, "snapshot: reading the export failed: %s", cairn_strerror(status));
    snap_fail(j, status);
    return;
  }
  if (len == 0) {
    snap_send_final(j); /* an empty file: nothing but the digest */
    return;
  }
  if (EVP_DigestUpdate(j->sha, chunk, len) != 1) {
    snap_fail(j, CAIRN_EIO);
    return;
  }
  int rc = snap_pack(j, j->size - snapstream_reader_offset(j->reader), chunk, len);
  if (rc != 0) {
    snap_fail(j, rc);
    return;
  }
  snap_flush(j);
}

static void on_snap_retry(uv_timer_t *t) {
  snap_next(t->data);
}

static void snap_next(struct export_job *j) {
  int rc = snapstream_reader_next(j->reader, j, on_snap_chunk);
  if (rc == CAIRN_EBUSY) {
    uv_timer_start(&j->retry, on_snap_retry, MAINT_READ_RETRY_MS, 0);
    return;
  }
  if (rc != 0) {
    snap_fail(j, rc);
  }
}

static void snap_start_stream(struct server *s, struct export_job *j) {
  int rc = snapstream_reader_open(s->fio, j->path, MAINT_SNAPSHOT_CHUNK_BYTES, &j->reader);
  unlink(j->path); /* the reader holds it open; nothing to clean up later */
  if (rc == 0) {
    j->sha = EVP_MD_CTX_new();
    if (j->sha == NULL || EVP_DigestInit_ex(j->sha, EVP_sha256(), NULL) != 1) {
      rc = CAIRN_ENOMEM;
    }
  }
  if (rc != 0) {
    snap_fail(j, rc);
    return;
  }
  j->size = snapstream_reader_size(j->reader);
  if (j->size % 512 != 0) {
    /* etcdctl would refuse the stream (size % 512 != 32). LMDB writes
     * whole pages, so this is a storage bug; say so. */
    server_log(LOG_ERROR, "snapshot: the export is %" PRIu64 " bytes, not a multiple of 512",
               j->size);
  }
  server_log(LOG_INFO, "sending database snapshot to client (%" PRIu64 " bytes)", j->size);
  j->state = JOB_STREAMING;
  snap_next(j);
}

static void export_after(uv_work_t *w, int status) {
  struct export_job *j = w->data;
  struct server *s = ms.s;
  ms.exporting = false;
  if (status != 0 && j->rc == 0) {
    j->rc = CAIRN_EIO; /* cancelled: never happens, uv_cancel is not used */
  }
  if (j->call == NULL) {
    unlink(j->path);
    job_free(j);
  } else if (j->rc != 0) {
    unlink(j->path);
    server_log(LOG_WARN, "%s: exporting the store failed: %s",
               j->kind == JOB_HASH ? "hash" : "snapshot", cairn_strerror(j->rc));
    j->state = JOB_FINISHED;
    fail(j->call, j->kind == JOB_HASH ? PATH_HASH : PATH_SNAPSHOT, j->rc);
  } else if (j->kind == JOB_HASH) {
    unlink(j->path);
    j->state = JOB_FINISHED;
    Etcdserverpb__HashResponse resp = ETCDSERVERPB__HASH_RESPONSE__INIT;
    resp.header = &j->header;
    resp.hash = j->crc;
    reply(j->call, PATH_HASH, &resp.base);
  } else {
    snap_start_stream(s, j);
  }
  /* A waiting defragmentation goes first. */
  if (ms.n_defrag_waiters > 0 && !defrag_try(s)) {
    return;
  }
  export_start_next();
}

static void export_start_next(void) {
  if (ms.exporting || ms.queue_head == NULL || ms.n_defrag_waiters > 0 || ms.stopping) {
    return;
  }
  struct export_job *j = ms.queue_head;
  ms.queue_head = j->next;
  if (ms.queue_head == NULL) {
    ms.queue_tail = NULL;
  }
  j->next = NULL;
  j->state = JOB_EXPORTING;
  j->work.data = j;
  int rc = uv_queue_work(ms.s->loop, &j->work, export_work, export_after);
  if (rc != 0) {
    j->state = JOB_FINISHED;
    fail(j->call, j->kind == JOB_HASH ? PATH_HASH : PATH_SNAPSHOT, CAIRN_EIO);
    export_start_next();
    return;
  }
  ms.exporting = true;
}

static void on_export_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct export_job *j = grpc_call_user(call);
  if (j == NULL) {
    return;
  }
  j->call = NULL;
  switch (j->state) {
    case JOB_QUEUED: {
      struct export_job **pp = &ms.queue_head;
      while (*pp != j) {
        pp = &(*pp)->next;
      }
      *pp = j->next;
      if (ms.queue_tail == j) {
        ms.queue_tail = NULL;
        for (struct export_job *q = ms.queue_head; q != NULL; q = q->next) {
          ms.queue_tail = q;
        }
      }
      job_free(j);
      break;
    }
    case JOB_EXPORTING:
      break; /* export_after frees it */
    case JOB_STREAMING:
    case JOB_FINISHED:
      if (j->retry_inited) {
        uv_timer_stop(&j->retry);
      }
      job_free(j);
      break;
  }
}

static void export_begin(struct server *s, grpc_call *call, enum job_kind kind, const char *path) {
  if (s->stopping) {
    fail(call, path, CAIRN_ESTOPPED);
    return;
  }
  if (ms.export_jobs >= MAINT_EXPORT_JOBS_MAX) {
    fail(call, path, CAIRN_ETOO_MANY_REQUESTS);
    return;
  }
  struct export_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    fail(call, path, CAIRN_ENOMEM);
    return;
  }
  ms.export_jobs++;
  j->kind = kind;
  j->state = JOB_QUEUED;
  j->call = call;
  j->store = s->store;
  j->t0_ms = uv_now(s->loop);
  snprintf(j->path, sizeof j->path, "%s/%s-%" PRIu64 ".tmp", ms.tmp_dir,
           kind == JOB_HASH ? "hash" : "snapshot", ++ms.tmp_seq);
  Etcdserverpb__ResponseHeader init = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  j->header = init;
  server_header(s, &j->header);
  uv_timer_init(s->loop, &j->retry);
  j->retry.data = j;
  j->retry_inited = true;
  grpc_call_set_user(call, j);
  if (ms.queue_tail != NULL) {
    ms.queue_tail->next = j;
  } else {
    ms.queue_head = j;
  }
  ms.queue_tail = j;
  export_start_next();
}

static void on_snapshot(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  Etcdserverpb__SnapshotRequest *req = etcdserverpb__snapshot_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_SNAPSHOT);
    return;
  }
  etcdserverpb__snapshot_request__free_unpacked(req, NULL);
  export_begin(ctx, call, JOB_SNAPSHOT, PATH_SNAPSHOT);
}

static void on_hash(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  Etcdserverpb__HashRequest *req = etcdserverpb__hash_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_HASH);
    return;
  }
  etcdserverpb__hash_request__free_unpacked(req, NULL);
  export_begin(ctx, call, JOB_HASH, PATH_HASH);
}

/* ---- HashKV --------------------------------------------------------------- */

/* A key version at or below the compacted revision, still current at the
 * hashed revision: its place and the CRC of its marshalled KeyValue (the
 * revision bytes are added once the sub-revisions are known). */
struct hk_entry {
  int64_t mod_revision;
  uint32_t order; /* arrival (key) order, the tie-break */
  uint32_t kv_crc;
  uint32_t kv_len;
};

enum hk_phase { HK_LIVE, HK_SORT, HK_FEED, HK_DONE };

struct hashkv_job {
  struct server *s;
  grpc_call *call; /* NULL once on_close ran */
  int64_t requested;
  unsigned restarts;
  int64_t rev;       /* the revision hashed */
  int64_t compacted; /* as at the start */
  int64_t current;   /* as at the start: the header's revision */
  enum hk_phase phase;
  uv_idle_t idle;
  uv_work_t work;
  /* HK_LIVE: pages of keys at rev (or at the compacted revision) */
  uint8_t *next_key;
  size_t next_key_len;
  bool at_compacted; /* etcd's empty-keep case, see hk_live_step */
  uint64_t live_keys;
  struct hk_entry *entries;
  size_t n_entries, cap_entries;
  /* HK_FEED */
  int64_t feed_rev;
  uint32_t feed_sub;
  int64_t last_rev;
  uint32_t sub;
  uint32_t crc;
  uint8_t *buf;
  size_t buf_cap;
  int err;
};

static void hk_on_idle_closed(uv_handle_t *h) {
  struct hashkv_job *j = h->data;
  free(j->next_key);
  free(j->entries);
  free(j->buf);
  free(j);
}

static void hk_free(struct hashkv_job *j) {
  CAIRN_ASSERT(ms.hashkv_jobs > 0);
  ms.hashkv_jobs--;
  uv_idle_stop(&j->idle);
  uv_close((uv_handle_t *)&j->idle, hk_on_idle_closed);
}

/* The "key" bucket's key of a version: main and sub revision big endian
 * with '_' between; a tombstone has a trailing 't'. */
static size_t hk_rev_bytes(uint8_t out[18], int64_t main_rev, int64_t sub, bool tombstone) {
  for (int i = 0; i < 8; i++) {
    out[i] = (uint8_t)((uint64_t)main_rev >> (56 - 8 * i));
    out[9 + i] = (uint8_t)((uint64_t)sub >> (56 - 8 * i));
  }
  out[8] = '_';
  if (tombstone) {
    out[17] = 't';
    return 18;
  }
  return 17;
}

/* Marshals a KeyValue as etcd stores it (a tombstone holds the key only)
 * into j->buf; returns its length or a negative CAIRN_E* code. */
static int64_t hk_marshal(struct hashkv_job *j, const struct mvcc_kv *kv, bool tombstone) {
  Mvccpb__KeyValue pb;
  server_kv_to_pb(kv, &pb);
  if (tombstone) {
    mvccpb__key_value__init(&pb);
    pb.key.data = (uint8_t *)kv->key.data;
    pb.key.len = kv->key.len;
  }
  size_t need = mvccpb__key_value__get_packed_size(&pb);
  if (need > j->buf_cap) {
    size_t cap = need < 4096 ? 4096 : need;
    uint8_t *p = realloc(j->buf, cap);
    if (p == NULL) {
      return CAIRN_ENOMEM;
    }
    j->buf = p;
    j->buf_cap = cap;
  }
  return (int64_t)mvccpb__key_value__pack(&pb, j->buf);
}

static void hk_reply(struct hashkv_job *j) {
  Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
  server_header(j->s, &header);
  header.revision = j->current; /* etcd: the store revision when hashing began */
  Etcdserverpb__HashKVResponse resp = ETCDSERVERPB__HASH_KVRESPONSE__INIT;
  resp.header = &header;
  resp.hash = j->crc;
  /* etcd's compactMainRev is -1 until the first compaction. */
  resp.compact_revision = j->compacted > 0 ? j->compacted : -1;
  grpc_call_set_user(j->call, NULL);
  reply(j->call, PATH_HASHKV, &resp.base);
  hk_free(j);
}

static void hk_fail(struct hashkv_job *j, int err) {
  grpc_call_set_user(j->call, NULL);
  fail(j->call, PATH_HASHKV, err);
  hk_free(j);
}

/* (Re)starts the computation from the store's state now. Errors:
 * CAIRN_ECOMPACTED, CAIRN_EFUTURE_REV (etcd's checks), CAIRN_ENOMEM. */
static int hk_begin(struct hashkv_job *j) {
  mvcc_store *st = j->s->store;
  j->compacted = mvcc_compacted_revision(st);
  j->current = mvcc_current_revision(st);
  if (j->requested > 0 && j->requested <= j->compacted) {
    return CAIRN_ECOMPACTED;
  }
  if (j->requested > j->current) {
    return CAIRN_EFUTURE_REV;
  }
  j->rev = j->requested > 0 ? j->requested : j->current;
  free(j->next_key);
  j->next_key = malloc(1);
  if (j->next_key == NULL) {
    return CAIRN_ENOMEM;
  }
  j->next_key[0] = '\0';
  j->next_key_len = 1;
  j->at_compacted = false;
  j->live_keys = 0;
  j->n_entries = 0;
  j->feed_rev = j->compacted + 1;
  j->feed_sub = 0;
  j->last_rev = 0;
  j->sub = 0;
  j->crc = crc32c_update(0, (const uint8_t *)"key", 3); /* the bucket's name */
  j->phase = j->compacted > 0 ? HK_LIVE : HK_FEED;
  return 0;
}

static int hk_entry_cmp(const void *a, const void *b) {
  const struct hk_entry *x = a, *y = b;
  if (x->mod_revision != y->mod_revision) {
    return x->mod_revision < y->mod_revision ? -1 : 1;
  }
  return x->order < y->order ? -1 : x->order > y->order;
}

/* Thread pool: orders the versions at or below the compacted revision as
 * the bucket holds them (by revision; key order stands in for the
 * sub-revision) and folds them into the CRC. Touches only the job. */
static void hk_sort_work(uv_work_t *w) {
  struct hashkv_job *j = w->data;
  if (j->n_entries > 0) { /* entries may be NULL then, which qsort must not get */
    qsort(j->entries, j->n_entries, sizeof j->entries[0], hk_entry_cmp);
  }
  uint32_t crc = j->crc;
  int64_t prev = 0;
  int64_t sub = 0;
  for (size_t i = 0; i < j->n_entries; i++) {
    const struct hk_entry *e = &j->entries[i];
    sub = e->mod_revision == prev ? sub + 1 : 0;
    prev = e->mod_revision;
    uint8_t rb[18];
    size_t n = hk_rev_bytes(rb, e->mod_revision, sub, false);
    crc = crc32c_update(crc, rb, n);
    crc = crc32c_combine(crc, e->kv_crc, e->kv_len);
  }
  j->crc = crc;
  j->n_entries = 0;
}

static void on_hk_idle(uv_idle_t *h);

static void hk_sort_after(uv_work_t *w, int status) {
  (void)status;
  struct hashkv_job *j = w->data;
  CAIRN_ASSERT(ms.hashkv_sorting > 0);
  ms.hashkv_sorting--;
  if (j->call == NULL) {
    hk_free(j);
    return;
  }
  j->phase = HK_FEED;
  uv_idle_start(&j->idle, on_hk_idle);
}

/* One page of keys. Versions at or below the compacted revision count when
 * they are still the key's version at the hashed revision (etcd's keep
 * set), except that when no key at all is live there, etcd's keep set is
 * empty and it counts every version left at or below the compacted
 * revision: the live versions as of the compacted revision. */
static int hk_live_step(struct hashkv_job *j) {
  static const uint8_t zero[1] = {0};
  struct mvcc_range_req rq = {
      .key = {j->next_key, j->next_key_len},
      .range_end = {zero, 1},
      .limit = MAINT_HASHKV_PAGE_KEYS,
      .revision = j->at_compacted ? j->compacted : j->rev,
  };
  struct mvcc_result res;
  int rc = mvcc_range(j->s->store, &rq, &res);
  if (rc != 0) {
    return rc;
  }
  const struct mvcc_range_resp *rr = &res.u.range;
  for (size_t i = 0; i < rr->n_kvs && rc == 0; i++) {
    const struct mvcc_kv *kv = &rr->kvs[i];
    j->live_keys++;
    if (!j->at_compacted && kv->mod_revision > j->compacted) {
      continue; /* in the change feed */
    }
    if (j->n_entries == MAINT_HASHKV_ENTRIES_MAX) {
      server_log(LOG_WARN, "hashkv: more than %u key versions at or below the compacted revision",
                 MAINT_HASHKV_ENTRIES_MAX);
      rc = CAIRN_ENOMEM;
      break;
    }
    if (j->n_entries == j->cap_entries) {
      size_t cap = j->cap_entries == 0 ? 1024 : j->cap_entries * 2;
      struct hk_entry *p = realloc(j->entries, cap * sizeof *p);
      if (p == NULL) {
        rc = CAIRN_ENOMEM;
        break;
      }
      j->entries = p;
      j->cap_entries = cap;
    }
    int64_t len = hk_marshal(j, kv, false);
    if (len < 0) {
      rc = (int)len;
      break;
    }
    j->entries[j->n_entries] = (struct hk_entry){
        .mod_revision = kv->mod_revision,
        .order = (uint32_t)j->n_entries,
        .kv_crc = crc32c_update(0, j->buf, (size_t)len),
        .kv_len = (uint32_t)len,
    };
    j->n_entries++;
  }
  if (rc == 0 && rr->n_kvs > 0) {
    /* The next page starts just after the last key. */
    const struct mvcc_kv *last = &rr->kvs[rr->n_kvs - 1];
    uint8_t *p = realloc(j->next_key, last->key.len + 1);
    if (p == NULL) {
      rc = CAIRN_ENOMEM;
    } else {
      memcpy(p, last->key.data, last->key.len);
      p[last->key.len] = '\0';
      j->next_key = p;
      j->next_key_len = last->key.len + 1;
    }
  }
  bool more = rr->more;
  mvcc_result_free(&res);
  if (rc != 0 || more) {
    return rc;
  }
  if (!j->at_compacted && j->live_keys == 0) {
    j->at_compacted = true;
    j->next_key[0] = '\0';
    j->next_key_len = 1;
    return 0;
  }
  j->phase = HK_SORT;
  return 0;
}

/* One batch of the change feed: every version and tombstone after the
 * compacted revision, up to the hashed one, in (revision, sub) order. */
static int hk_feed_step(struct hashkv_job *j) {
  static const uint8_t zero[1] = {0};
  struct mvcc_feed_req fr = {
      .key = {zero, 1},
      .range_end = {zero, 1},
      .start_revision = j->feed_rev,
      .start_sub = j->feed_sub,
      .max_events = MVCC_FEED_EVENTS_MAX,
  };
  struct mvcc_feed feed;
  int rc = mvcc_changes(j->s->store, &fr, &feed);
  if (rc != 0) {
    return rc;
  }
  bool done = false;
  for (size_t i = 0; i < feed.n_events; i++) {
    const struct mvcc_event *e = &feed.events[i];
    if (e->kv.mod_revision > j->rev) {
      done = true;
      break;
    }
    j->sub = e->kv.mod_revision == j->last_rev ? j->sub + 1 : 0;
    j->last_rev = e->kv.mod_revision;
    bool tomb = e->type == MVCC_EVENT_DELETE;
    uint8_t rb[18];
    size_t n = hk_rev_bytes(rb, e->kv.mod_revision, j->sub, tomb);
    j->crc = crc32c_update(j->crc, rb, n);
    int64_t len = hk_marshal(j, &e->kv, tomb);
    if (len < 0) {
      rc = (int)len;
      break;
    }
    j->crc = crc32c_update(j->crc, j->buf, (size_t)len);
  }
  j->feed_rev = feed.next_revision;
  j->feed_sub = feed.next_sub;
  if (feed.caught_up || j->feed_rev > j->rev) {
    done = true;
  }
  mvcc_feed_free(&feed);
  if (rc == 0 && done) {
    j->phase = HK_DONE;
  }
  return rc;
}

static void on_hk_idle(uv_idle_t *h) {
  struct hashkv_job *j = h->data;
  if (j->call == NULL) {
    hk_free(j);
    return;
  }
  int rc = 0;
  if (mvcc_compacted_revision(j->s->store) != j->compacted) {
    /* A compaction moved under the computation: start again. */
    rc = ++j->restarts > MAINT_HASHKV_RESTARTS_MAX ? CAIRN_ECOMPACTED : hk_begin(j);
  } else if (j->phase == HK_LIVE) {
    rc = hk_live_step(j);
  } else if (j->phase == HK_FEED) {
    rc = hk_feed_step(j);
  }
  if (rc == CAIRN_ECOMPACTED && j->restarts < MAINT_HASHKV_RESTARTS_MAX &&
      mvcc_compacted_revision(j->s->store) != j->compacted) {
    return; /* the next turn restarts */
  }
  if (rc != 0) {
    hk_fail(j, rc);
    return;
  }
  if (j->phase == HK_SORT) {
    uv_idle_stop(&j->idle);
    j->work.data = j;
    if (uv_queue_work(j->s->loop, &j->work, hk_sort_work, hk_sort_after) != 0) {
      hk_fail(j, CAIRN_EIO);
      return;
    }
    ms.hashkv_sorting++;
    return;
  }
  if (j->phase == HK_DONE) {
    hk_reply(j);
  }
}

static void on_hashkv_close(grpc_call *call, void *ctx) {
  (void)ctx;
  struct hashkv_job *j = grpc_call_user(call);
  if (j != NULL) {
    j->call = NULL; /* the idle step or the sort's end frees it */
  }
}

static void on_hashkv(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__HashKVRequest *req = etcdserverpb__hash_kvrequest__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_HASHKV);
    return;
  }
  int64_t requested = req->revision;
  etcdserverpb__hash_kvrequest__free_unpacked(req, NULL);
  if (s->stopping || ms.stopping) {
    fail(call, PATH_HASHKV, CAIRN_ESTOPPED);
    return;
  }
  if (ms.hashkv_jobs >= MAINT_HASHKV_JOBS_MAX) {
    fail(call, PATH_HASHKV, CAIRN_ETOO_MANY_REQUESTS);
    return;
  }
  struct hashkv_job *j = calloc(1, sizeof *j);
  if (j == NULL) {
    fail(call, PATH_HASHKV, CAIRN_ENOMEM);
    return;
  }
  j->s = s;
  j->requested = requested < 0 ? 0 : requested;
  int rc = hk_begin(j);
  if (rc != 0) {
    free(j->next_key);
    free(j);
    fail(call, PATH_HASHKV, rc);
    return;
  }
  ms.hashkv_jobs++;
  j->call = call;
  uv_idle_init(s->loop, &j->idle);
  j->idle.data = j;
  uv_idle_start(&j->idle, on_hk_idle);
  grpc_call_set_user(call, j);
}

/* ---- MoveLeader ----------------------------------------------------------- */

/* A MoveLeader waiting for raft's leadership transfer. */
struct move_leader {
  struct server *s;
  grpc_call *call; /* NULL once the call closed */
};

static void on_move_leader_closed(grpc_call *call, void *ctx) {
  (void)ctx;
  struct move_leader *ml = grpc_call_user(call);
  if (ml != NULL) {
    ml->call = NULL;
    grpc_call_set_user(call, NULL);
  }
}

static void on_moved(void *data, int status, uint64_t id) {
  struct move_leader *ml = data;
  (void)id;
  if (ml->call != NULL) {
    grpc_call_set_user(ml->call, NULL);
    if (status != 0) {
      fail(ml->call, PATH_MOVE_LEADER, status);
    } else {
      Etcdserverpb__ResponseHeader header = ETCDSERVERPB__RESPONSE_HEADER__INIT;
      server_header(ml->s, &header);
      Etcdserverpb__MoveLeaderResponse resp = ETCDSERVERPB__MOVE_LEADER_RESPONSE__INIT;
      resp.header = &header;
      reply(ml->call, PATH_MOVE_LEADER, &resp.base);
    }
  }
  free(ml);
}

/* etcd's MoveLeader: only the leader moves leadership ("not leader"), to a
 * voting member ("bad leader transferee"); the answer comes once the
 * transferee leads (raft/raftnode.h raftnode_move_leader). */
static void on_move_leader(grpc_call *call, const uint8_t *msg, size_t len, void *ctx) {
  struct server *s = ctx;
  Etcdserverpb__MoveLeaderRequest *req = etcdserverpb__move_leader_request__unpack(NULL, len, msg);
  if (req == NULL) {
    fail_unmarshal(call, PATH_MOVE_LEADER);
    return;
  }
  uint64_t target = req->targetid;
  etcdserverpb__move_leader_request__free_unpacked(req, NULL);
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  if (!st.is_leader || st.leader_id != st.member_id) {
    fail(call, PATH_MOVE_LEADER, CAIRN_ENOT_LEADER);
    return;
  }
  struct move_leader *ml = malloc(sizeof *ml);
  if (ml == NULL) {
    fail(call, PATH_MOVE_LEADER, CAIRN_ENOMEM);
    return;
  }
  ml->s = s;
  ml->call = call;
  int rc = raftnode_move_leader(s->raft, target, ml, on_moved);
  if (rc != 0) {
    free(ml);
    fail(call, PATH_MOVE_LEADER, rc == CAIRN_ENO_LEADER ? CAIRN_ENOT_LEADER : rc);
    return;
  }
  grpc_call_set_user(call, ml);
}

/* ---- stop ----------------------------------------------------------------- */

static void on_stop_poll(uv_timer_t *t) {
  (void)t;
  if (ms.exporting || ms.hashkv_sorting > 0) {
    return; /* a thread-pool job still reads the store or a job's memory */
  }
  uv_timer_stop(&ms.stop_timer);
  uv_close((uv_handle_t *)&ms.stop_timer, NULL);
  uv_close((uv_handle_t *)&ms.alarm_check, NULL);
  uv_close((uv_handle_t *)&ms.defrag_timer, NULL);
  if (ms.stop_cb != NULL) {
    ms.stop_cb(ms.stop_data);
  }
}

/* Stops the service for shutdown: queued exports and waiting
 * defragmentations are failed with CAIRN_ESTOPPED, and once no export or
 * HashKV runs on the thread pool (an export reads the store: mvcc_close()
 * must wait for it), the module's handles are closed and done(data) runs
 * from the loop. Calls still streaming end with their connections. Call it
 * once, after the gRPC server stopped taking calls and before the store is
 * closed. */
void maintenance_service_stop(struct server *s, void (*done)(void *data), void *data) {
  CAIRN_ASSERT(ms.s == s && !ms.stopping);
  ms.stopping = true;
  ms.stop_cb = done;
  ms.stop_data = data;
  while (ms.queue_head != NULL) {
    struct export_job *j = ms.queue_head;
    ms.queue_head = j->next;
    j->next = NULL;
    j->state = JOB_FINISHED;
    fail(j->call, j->kind == JOB_HASH ? PATH_HASH : PATH_SNAPSHOT, CAIRN_ESTOPPED);
  }
  ms.queue_tail = NULL;
  uv_timer_stop(&ms.defrag_timer);
  defrag_answer_all(s, CAIRN_ESTOPPED);
  uv_check_stop(&ms.alarm_check);
  uv_timer_init(s->loop, &ms.stop_timer);
  uv_timer_start(&ms.stop_timer, on_stop_poll, 0, 10);
}

/* ---- init ----------------------------------------------------------------- */

/* Creates the temporary directory and removes what an earlier run left in
 * it (exports interrupted by a crash). Only this module writes there. */
static int tmp_dir_prepare(struct server *s) {
  snprintf(ms.tmp_dir, sizeof ms.tmp_dir, "%s/%s", s->cfg.data_dir, MAINT_TMP_DIR);
  if (mkdir(ms.tmp_dir, 0700) != 0 && errno != EEXIST) {
    server_log(LOG_ERROR, "cannot create %s: %s", ms.tmp_dir, strerror(errno));
    return CAIRN_EIO;
  }
  DIR *d = opendir(ms.tmp_dir);
  if (d == NULL) {
    server_log(LOG_ERROR, "cannot open %s: %s", ms.tmp_dir, strerror(errno));
    return CAIRN_EIO;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') {
      continue;
    }
    char path[1500];
    snprintf(path, sizeof path, "%s/%s", ms.tmp_dir, e->d_name);
    if (unlink(path) == 0) {
      server_log(LOG_INFO, "removed a leftover export: %s", path);
    }
  }
  closedir(d);
  return 0;
}

int maintenance_service_init(struct server *s) {
  CAIRN_ASSERT(ms.s == NULL); /* one server per process */
  ms.s = s;
  int rc = tmp_dir_prepare(s);
  if (rc != 0) {
    return rc;
  }
  uint64_t member = 0;
  if (alarm_meta_read(s, &member)) {
    ms.alarm_stored = true;
    if (!s->alarm_nospace) {
      s->alarm_nospace = true;
      s->alarm_member_id = member;
      server_log(LOG_WARN,
                 "alarm NOSPACE is raised (stored, member %" PRIx64
                 "): writes that add data are refused until it is disarmed",
                 member);
    }
  }
  uv_check_init(s->loop, &ms.alarm_check);
  ms.alarm_check.data = s;
  uv_check_start(&ms.alarm_check, on_alarm_check);
  uv_unref((uv_handle_t *)&ms.alarm_check);
  uv_timer_init(s->loop, &ms.defrag_timer);
  ms.defrag_timer.data = s;

  const struct grpc_method methods[] = {
      {.path = PATH_STATUS, .kind = GRPC_METHOD_UNARY, .on_message = on_status, .ctx = s},
      {.path = PATH_ALARM,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_alarm,
       .on_close = on_alarm_close,
       .ctx = s},
      {.path = PATH_DEFRAG,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_defrag,
       .on_close = on_defrag_close,
       .ctx = s},
      {.path = PATH_HASH,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_hash,
       .on_close = on_export_close,
       .ctx = s},
      {.path = PATH_HASHKV,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_hashkv,
       .on_close = on_hashkv_close,
       .ctx = s},
      {.path = PATH_SNAPSHOT,
       .kind = GRPC_METHOD_SERVER_STREAM,
       .on_message = on_snapshot,
       .on_close = on_export_close,
       .ctx = s},
      {.path = PATH_MOVE_LEADER,
       .kind = GRPC_METHOD_UNARY,
       .on_message = on_move_leader,
       .on_close = on_move_leader_closed,
       .ctx = s},
  };
  return grpc_server_register(s->grpc, methods, sizeof methods / sizeof methods[0]);
}
