/* server/server.c: helpers shared by the services, and logging. */
#include "server/server.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "common/cairn_assert.h"
#include "server/metrics.h"

/* ---- logging -------------------------------------------------------------- */

static int log_level = LOG_INFO;

void server_log_set_level(int level) {
  log_level = level;
}

static void json_escape(FILE *f, const char *s) {
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      fprintf(f, "\\%c", ch);
    } else if (ch < 0x20) {
      fprintf(f, "\\u%04x", ch);
    } else {
      fputc(ch, f);
    }
  }
}

void server_log(int level, const char *fmt, ...) {
  if (level < log_level) {
    return;
  }
  static const char *names[] = {"debug", "info", "warn", "error"};
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[64];
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  fprintf(stderr, "{\"level\":\"%s\",\"ts\":\"%s.%03dZ\",\"msg\":\"", names[level & 3], ts,
          (int)(tv.tv_usec / 1000));
  json_escape(stderr, msg);
  fprintf(stderr, "\"}\n");
  fflush(stderr);
}

/* ---- responses ------------------------------------------------------------ */

void server_header(const struct server *s, Etcdserverpb__ResponseHeader *h) {
  struct raftnode_status st;
  raftnode_status(s->raft, &st);
  h->cluster_id = st.cluster_id;
  h->member_id = st.member_id;
  h->raft_term = st.term;
  h->revision = mvcc_current_revision(s->store);
}

void server_fail(grpc_call *call, int cairn_err) {
  grpc_call_finish(call, cairn_grpc_code(cairn_err), cairn_strerror(cairn_err));
}

/* Messages up to this size are packed on the stack. */
#define SEND_STACK_BYTES 4096u

int server_send(grpc_call *call, const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t stackbuf[SEND_STACK_BYTES];
  uint8_t *buf = n <= sizeof stackbuf ? stackbuf : malloc(n);
  if (buf == NULL) {
    return CAIRN_ENOMEM;
  }
  size_t packed = protobuf_c_message_pack(msg, buf);
  CAIRN_ASSERT(packed == n);
  int rc = grpc_call_send(call, buf, n);
  if (buf != stackbuf) {
    free(buf);
  }
  return rc;
}

void server_reply(grpc_call *call, const ProtobufCMessage *msg) {
  int rc = server_send(call, msg);
  if (rc != 0) {
    grpc_call_finish(call, GRPC_INTERNAL, cairn_strerror(rc));
    return;
  }
  grpc_call_finish(call, GRPC_OK, NULL);
}

void server_kv_to_pb(const struct mvcc_kv *kv, Mvccpb__KeyValue *out) {
  mvccpb__key_value__init(out);
  out->key.data = (uint8_t *)kv->key.data;
  out->key.len = kv->key.len;
  out->value.data = (uint8_t *)kv->value.data;
  out->value.len = kv->value.len;
  out->create_revision = kv->create_revision;
  out->mod_revision = kv->mod_revision;
  out->version = kv->version;
  out->lease = kv->lease;
}

/* ---- proposals ------------------------------------------------------------ */

struct proposal {
  struct server *s;
  void *data;
  server_propose_cb cb;
};

static void on_proposed(void *data, int status, struct mvcc_result *result) {
  struct proposal *p = data;
  struct server *s = p->s;
  metrics_gauge_add(s->metrics, METRIC_GAUGE_PROPOSALS_PENDING, -1);
  if (status != 0) {
    metrics_inc(s->metrics, METRIC_PROPOSALS_FAILED);
  }
  if (status == 0 && result != NULL && result->err == CAIRN_ENOSPACE && !s->alarm_nospace) {
    struct raftnode_status st;
    raftnode_status(s->raft, &st);
    s->alarm_nospace = true;
    s->alarm_member_id = st.member_id;
    server_log(LOG_WARN, "alarm raised: NOSPACE (the store reached --quota-backend-bytes)");
  }
  p->cb(s, p->data, status, result);
  free(p);
}

int server_propose(struct server *s, const struct mvcc_op *op, void *data, server_propose_cb cb) {
  if (s->stopping) {
    return CAIRN_ESTOPPED;
  }
  struct proposal *p = malloc(sizeof *p);
  if (p == NULL) {
    return CAIRN_ENOMEM;
  }
  p->s = s;
  p->data = data;
  p->cb = cb;
  int rc = raftnode_propose(s->raft, op, p, on_proposed);
  if (rc != 0) {
    free(p);
    metrics_inc(s->metrics, METRIC_PROPOSALS_FAILED);
    return rc;
  }
  metrics_gauge_add(s->metrics, METRIC_GAUGE_PROPOSALS_PENDING, 1);
  return 0;
}

/* ---- scratch memory -------------------------------------------------------- */

struct scratch_block {
  struct scratch_block *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

void *scratch_alloc(struct scratch *sc, size_t n) {
  n = (n + 15u) & ~(size_t)15u;
  struct scratch_block *b = sc->head;
  if (b == NULL || b->cap - b->used < n) {
    size_t cap = n > 4096u ? n : 4096u;
    b = malloc(sizeof *b + cap);
    if (b == NULL) {
      return NULL;
    }
    b->next = sc->head;
    b->used = 0;
    b->cap = cap;
    sc->head = b;
  }
  void *p = b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

void scratch_free(struct scratch *sc) {
  struct scratch_block *b = sc->head;
  while (b != NULL) {
    struct scratch_block *next = b->next;
    free(b);
    b = next;
  }
  sc->head = NULL;
}
