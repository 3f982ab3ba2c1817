/* client/snapshot.c: cairn_snapshot_save() (client/cairn.h).
 *
 * The format is etcd's (v3rpc/maintenance.go, clientv3/snapshot): the
 * Maintenance.Snapshot stream carries the store file in chunks
 * (SnapshotResponse.blob) followed by one message whose blob is the
 * SHA-256 of everything before it; the saved file is the whole stream,
 * digest included, as etcdctl saves it (its restore checks the digest at
 * the end). Cairn's server sends the same (server/maintenance_service.c).
 *
 * The digest is computed as the bytes arrive, always holding back the last
 * SNAP_DIGEST_BYTES (the digest, once the stream has ended). The file is
 * written with uv_fs_* on the thread pool, never on the loop: one file
 * request at a time, in order (open, writes, fsync, close, rename; on
 * failure close and unlink). Chunks wait in a queue of at most
 * SNAP_QUEUE_BYTES_MAX bytes; past it the stream is paused
 * (grpc_ccall_pause_recv: the server waits on the HTTP/2 window) until the
 * queue drains below half.
 *
 * States (enum snap_state):
 *   OPENING --opened--> STREAMING --stream OK and queue empty--> FINISHING
 *   FINISHING: fsync, close, rename, then cb OK
 *   any --failure--> FAILING: close, unlink, then cb with the failure
 * The transfer is attached to the client (cairn__attach): a close of the
 * client cancels the stream and ends it with CANCELLED. */
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/cairn_assert.h"

#define SNAP_PATH "/etcdserverpb.Maintenance/Snapshot"
#define SNAP_DIGEST_BYTES 32u
#define SNAP_QUEUE_BYTES_MAX ((size_t)8 << 20)
#define SNAP_SUFFIX ".part"

enum snap_state { SNAP_OPENING, SNAP_STREAMING, SNAP_FINISHING, SNAP_FAILING };

struct snap_chunk {
  struct snap_chunk *next;
  size_t len;
  uint8_t data[];
};

struct snap {
  struct cairn__obj obj; /* first: close_cb finds us */
  cairn_client *c;
  enum snap_state state;
  char *path, *part;
  int endpoint_index; /* -1: the current endpoint */
  unsigned used;      /* the endpoint the stream went to */
  bool started;       /* the stream was opened (used is set) */
  uint64_t timeout_ms;
  cairn_snapshot_cb cb;
  void *data;

  uv_fs_t req;
  bool fs_busy;
  uv_file fd; /* -1: not open */
  int64_t offset;

  grpc_ccall *call; /* NULL once on_done ran */
  bool stream_done;
  bool paused;
  bool closing; /* the client closes */

  struct snap_chunk *q_head, *q_tail;
  size_t queued;
  uv_buf_t wbuf; /* the write in flight (its chunk is q_head) */

  EVP_MD_CTX *sha;
  uint8_t tail[SNAP_DIGEST_BYTES];
  size_t tail_len;
  uint64_t total;

  int code; /* the failure to report (FAILING) */
  char message[256];
};

static void snap_step(struct snap *s);

static void snap_free(struct snap *s) {
  while (s->q_head) {
    struct snap_chunk *ch = s->q_head;
    s->q_head = ch->next;
    free(ch);
  }
  if (s->sha) {
    EVP_MD_CTX_free(s->sha);
  }
  free(s->path);
  free(s->part);
  free(s);
}

/* Records the first failure and moves to FAILING (cancelling the stream). */
static void snap_fail(struct snap *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void snap_fail(struct snap *s, int code, const char *fmt, ...) {
  if (s->state == SNAP_FAILING) {
    return;
  }
  s->state = SNAP_FAILING;
  s->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->message, sizeof s->message, fmt, ap);
  va_end(ap);
  if (s->call) {
    grpc_ccall_cancel(s->call);
  }
}

static void snap_end(struct snap *s) {
  struct cairn_result r = {
      .code = s->state == SNAP_FAILING ? s->code : 0,
      .message = s->state == SNAP_FAILING ? s->message : "",
      .msg = NULL,
      .endpoint = s->started ? cairn__endpoint_name(s->c, s->used) : cairn_client_endpoint(s->c),
  };
  uint64_t bytes = s->state == SNAP_FAILING ? 0 : s->total;
  cairn__detach(s->c, &s->obj);
  s->cb(s->data, &r, bytes);
  snap_free(s);
}

static void on_fs(uv_fs_t *req) {
  struct snap *s = req->data;
  uv_fs_type type = req->fs_type;
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  s->fs_busy = false;
  switch (type) {
    case UV_FS_WRITE: {
      struct snap_chunk *ch = s->q_head;
      if (result < 0) {
        snap_fail(s, GRPC_INTERNAL, "write %s: %s", s->part, uv_strerror((int)result));
        break;
      }
      s->offset += result;
      /* A short write: the rest goes with the next request. */
      s->wbuf.base += result;
      s->wbuf.len -= (size_t)result;
      if (s->wbuf.len == 0) {
        s->q_head = ch->next;
        if (!s->q_head) {
          s->q_tail = NULL;
        }
        s->queued -= ch->len;
        free(ch);
      }
      break;
    }
    case UV_FS_FSYNC:
      if (result < 0) {
        snap_fail(s, GRPC_INTERNAL, "fsync %s: %s", s->part, uv_strerror((int)result));
      }
      break;
    case UV_FS_CLOSE:
      s->fd = -1;
      if (result < 0 && s->state != SNAP_FAILING) {
        snap_fail(s, GRPC_INTERNAL, "close %s: %s", s->part, uv_strerror((int)result));
      }
      break;
    case UV_FS_RENAME:
      if (result < 0) {
        snap_fail(s, GRPC_INTERNAL, "rename %s: %s", s->part, uv_strerror((int)result));
      } else {
        snap_end(s); /* done: OK */
        return;
      }
      break;
    case UV_FS_UNLINK:
      snap_end(s); /* done: the failure */
      return;
    default:
      CAIRN_ASSERT(false);
  }
  snap_step(s);
}

static void snap_fs_check(struct snap *s, int rc, const char *what) {
  if (rc < 0) {
    /* The request did not start: no callback comes. */
    s->fs_busy = false;
    snap_fail(s, GRPC_INTERNAL, "%s %s: %s", what, s->part, uv_strerror(rc));
  }
}

/* ---- the stream -------------------------------------------------------------- */

static void snap_hash(struct snap *s, const uint8_t *d, size_t n) {
  /* Everything but the last SNAP_DIGEST_BYTES of the stream so far. */
  size_t total = s->tail_len + n;
  if (total <= SNAP_DIGEST_BYTES) {
    memcpy(s->tail + s->tail_len, d, n);
    s->tail_len = total;
    return;
  }
  size_t hash_n = total - SNAP_DIGEST_BYTES;
  size_t from_tail = hash_n < s->tail_len ? hash_n : s->tail_len;
  EVP_DigestUpdate(s->sha, s->tail, from_tail);
  EVP_DigestUpdate(s->sha, d, hash_n - from_tail);
  /* The new tail: what is left of the old one, then the end of d. */
  uint8_t nt[SNAP_DIGEST_BYTES];
  size_t keep_old = s->tail_len - from_tail;
  memcpy(nt, s->tail + from_tail, keep_old);
  memcpy(nt + keep_old, d + (hash_n - from_tail), SNAP_DIGEST_BYTES - keep_old);
  memcpy(s->tail, nt, SNAP_DIGEST_BYTES);
  s->tail_len = SNAP_DIGEST_BYTES;
}

static void snap_on_message(grpc_ccall *call, const uint8_t *msg, size_t len, void *data) {
  (void)call;
  struct snap *s = data;
  if (s->state != SNAP_STREAMING) {
    return;
  }
  Etcdserverpb__SnapshotResponse *r = etcdserverpb__snapshot_response__unpack(NULL, len, msg);
  if (!r) {
    snap_fail(s, GRPC_INTERNAL, "grpc: failed to unmarshal the received message");
    return;
  }
  size_t n = r->blob.len;
  if (n > 0) {
    struct snap_chunk *ch = malloc(sizeof *ch + n);
    if (!ch) {
      etcdserverpb__snapshot_response__free_unpacked(r, NULL);
      snap_fail(s, GRPC_RESOURCE_EXHAUSTED, "%s", cairn_strerror(CAIRN_ENOMEM));
      return;
    }
    memcpy(ch->data, r->blob.data, n);
    ch->len = n;
    ch->next = NULL;
    if (s->q_tail) {
      s->q_tail->next = ch;
    } else {
      s->q_head = ch;
    }
    s->q_tail = ch;
    s->queued += n;
    s->total += n;
    snap_hash(s, r->blob.data, n);
  }
  etcdserverpb__snapshot_response__free_unpacked(r, NULL);
  if (s->queued >= SNAP_QUEUE_BYTES_MAX && !s->paused && s->call) {
    s->paused = true;
    grpc_ccall_pause_recv(s->call, true);
  }
  snap_step(s);
}

static void snap_on_done(grpc_ccall *call, int status, const char *message, void *data) {
  (void)call;
  struct snap *s = data;
  s->call = NULL;
  s->stream_done = true;
  if (s->closing) {
    snap_fail(s, GRPC_CANCELLED, "%s", GRPC_CLIENT_CLOSING_TEXT);
  } else if (status != GRPC_OK) {
    if (cairn__endpoint_fault(status, message) && s->endpoint_index < 0) {
      cairn__endpoint_failed(s->c, s->used);
    }
    snap_fail(s, status, "%s", message);
  }
  snap_step(s);
}

/* Checks the digest at the end of the stream. */
static bool snap_verify(struct snap *s) {
  if (s->total < SNAP_DIGEST_BYTES || s->tail_len != SNAP_DIGEST_BYTES) {
    snap_fail(s, GRPC_DATA_LOSS, "snapshot: sha256 checksum not found [bytes: %llu]",
              (unsigned long long)s->total);
    return false;
  }
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned md_len = 0;
  EVP_DigestFinal_ex(s->sha, md, &md_len);
  if (md_len != SNAP_DIGEST_BYTES || memcmp(md, s->tail, SNAP_DIGEST_BYTES) != 0) {
    snap_fail(s, GRPC_DATA_LOSS, "snapshot: sha256 checksum mismatch [bytes: %llu]",
              (unsigned long long)s->total);
    return false;
  }
  return true;
}

/* Starts the next file request, if any is due. */
static void snap_step(struct snap *s) {
  if (s->fs_busy) {
    return;
  }
  s->req.data = s;
  if (s->state == SNAP_FAILING) {
    if (s->call) {
      return; /* its on_done comes */
    }
    if (s->fd >= 0) {
      s->fs_busy = true;
      snap_fs_check(s, uv_fs_close(cairn_client_loop(s->c), &s->req, s->fd, on_fs), "close");
      if (s->fs_busy) {
        return;
      }
      s->fd = -1;
    }
    s->fs_busy = true;
    int rc = uv_fs_unlink(cairn_client_loop(s->c), &s->req, s->part, on_fs);
    if (rc < 0) {
      s->fs_busy = false;
      snap_end(s); /* never from the API: snap_step runs from callbacks only */
    }
    return;
  }
  if (s->state == SNAP_OPENING) {
    return;
  }
  if (s->state == SNAP_STREAMING && s->fd >= 0 && s->q_head) {
    if (s->wbuf.len == 0) {
      s->wbuf = uv_buf_init((char *)s->q_head->data, (unsigned)s->q_head->len);
    }
    s->fs_busy = true;
    snap_fs_check(s,
                  uv_fs_write(cairn_client_loop(s->c), &s->req, s->fd, &s->wbuf, 1, s->offset,
                              on_fs),
                  "write");
    if (s->paused && s->call && s->queued < SNAP_QUEUE_BYTES_MAX / 2) {
      s->paused = false;
      grpc_ccall_pause_recv(s->call, false);
    }
    if (!s->fs_busy) {
      snap_step(s);
    }
    return;
  }
  if (s->state == SNAP_STREAMING && s->stream_done && !s->q_head) {
    if (!snap_verify(s)) {
      snap_step(s);
      return;
    }
    s->state = SNAP_FINISHING;
    s->fs_busy = true;
    snap_fs_check(s, uv_fs_fsync(cairn_client_loop(s->c), &s->req, s->fd, on_fs), "fsync");
    if (!s->fs_busy) {
      snap_step(s);
    }
    return;
  }
  if (s->state == SNAP_FINISHING) {
    s->fs_busy = true;
    if (s->fd >= 0) {
      snap_fs_check(s, uv_fs_close(cairn_client_loop(s->c), &s->req, s->fd, on_fs), "close");
    } else {
      snap_fs_check(s, uv_fs_rename(cairn_client_loop(s->c), &s->req, s->part, s->path, on_fs),
                    "rename");
    }
    if (!s->fs_busy) {
      snap_step(s);
    }
  }
}

/* Called once the .part file is open: the stream starts. */
static void snap_start_stream(struct snap *s) {
  struct grpc_client_handlers h = {.on_message = snap_on_message, .on_done = snap_on_done};
  int rc = cairn__stream(s->c, SNAP_PATH, false, s->endpoint_index, s->timeout_ms, &h, s, &s->call,
                         &s->used);
  if (rc != 0) {
    s->call = NULL;
    snap_fail(s, rc == CAIRN_ESTOPPED ? GRPC_CANCELLED : GRPC_UNAVAILABLE, "%s",
              rc == CAIRN_ESTOPPED ? GRPC_CLIENT_CLOSING_TEXT : cairn_strerror(rc));
    return;
  }
  s->started = true;
  Etcdserverpb__SnapshotRequest req = ETCDSERVERPB__SNAPSHOT_REQUEST__INIT;
  uint8_t buf[8];
  size_t len = etcdserverpb__snapshot_request__pack(&req, buf); /* empty: 0 bytes */
  if (grpc_ccall_send(s->call, buf, len) != 0) {
    snap_fail(s, GRPC_RESOURCE_EXHAUSTED, "%s", cairn_strerror(CAIRN_ENOMEM));
    return;
  }
  grpc_ccall_close_send(s->call);
}

static void on_opened(uv_fs_t *req) {
  struct snap *s = req->data;
  ssize_t result = req->result;
  uv_fs_req_cleanup(req);
  s->fs_busy = false;
  if (result < 0) {
    snap_fail(s, GRPC_INTERNAL, "open %s: %s", s->part, uv_strerror((int)result));
    /* Nothing to close; unlink of a file that may not exist is harmless. */
  } else {
    s->fd = (uv_file)result;
    if (s->state == SNAP_OPENING) {
      if (s->closing) {
        snap_fail(s, GRPC_CANCELLED, "%s", GRPC_CLIENT_CLOSING_TEXT);
      } else {
        s->state = SNAP_STREAMING;
        snap_start_stream(s);
      }
    }
  }
  snap_step(s);
}

static void snap_close_cb(struct cairn__obj *obj) {
  struct snap *s = (struct snap *)obj;
  s->closing = true;
  if (s->call) {
    grpc_ccall_cancel(s->call); /* on_done reports the close */
  }
}

int cairn_snapshot_save(cairn_client *c, const char *path, const struct cairn_call_opts *opts,
                        cairn_snapshot_cb cb, void *data) {
  if (!c || !path || !path[0] || !cb || strlen(path) + sizeof SNAP_SUFFIX > PATH_MAX) {
    return CAIRN_EINVAL;
  }
  if (cairn__closing(c)) {
    return CAIRN_ESTOPPED;
  }
  int index = -1;
  if (opts && opts->endpoint) {
    index = cairn__endpoint_index(c, opts->endpoint);
    if (index < 0) {
      return CAIRN_EINVAL;
    }
  }
  struct snap *s = calloc(1, sizeof *s);
  if (!s) {
    return CAIRN_ENOMEM;
  }
  size_t plen = strlen(path) + sizeof SNAP_SUFFIX;
  s->path = strdup(path);
  s->part = malloc(plen);
  s->sha = EVP_MD_CTX_new();
  if (!s->path || !s->part || !s->sha || EVP_DigestInit_ex(s->sha, EVP_sha256(), NULL) != 1) {
    snap_free(s);
    return CAIRN_ENOMEM;
  }
  snprintf(s->part, plen, "%s%s", path, SNAP_SUFFIX);
  s->c = c;
  s->fd = -1;
  s->endpoint_index = index;
  s->used = index >= 0 ? (unsigned)index : 0;
  s->timeout_ms = opts ? opts->timeout_ms : 0;
  s->cb = cb;
  s->data = data;
  s->state = SNAP_OPENING;
  s->req.data = s;
  int rc = uv_fs_open(cairn_client_loop(c), &s->req, s->part, O_WRONLY | O_CREAT | O_TRUNC,
                      0600, on_opened);
  if (rc < 0) {
    snap_free(s);
    return CAIRN_EIO;
  }
  s->fs_busy = true;
  s->obj.close_cb = snap_close_cb;
  cairn__attach(c, &s->obj);
  return 0;
}
