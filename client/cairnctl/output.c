/* client/cairnctl/output.c: etcdctl's printers: simple (its printer_simple.go),
 * JSON (Go's encoding/json of the gogo-generated structs) and tables. */
#include <inttypes.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

/* ---- simple ------------------------------------------------------------- */

static void out_bytes(const struct ctl *ctl, const ProtobufCBinaryData *b) {
  if (ctl->hex) {
    for (size_t i = 0; i < b->len; i++)
      printf("\\x%02x", b->data[i]);
  } else if (b->len > 0) {
    fwrite(b->data, 1, b->len, stdout);
  }
  putchar('\n');
}

void out_kv(const struct ctl *ctl, const Mvccpb__KeyValue *kv, bool value_only) {
  if (!value_only)
    out_bytes(ctl, &kv->key);
  out_bytes(ctl, &kv->value);
}

void out_range(const struct ctl *ctl, const Etcdserverpb__RangeResponse *r, bool value_only) {
  for (size_t i = 0; i < r->n_kvs; i++)
    out_kv(ctl, r->kvs[i], value_only);
}

void out_put(const struct ctl *ctl, const Etcdserverpb__PutResponse *r) {
  printf("OK\n");
  if (r->prev_kv != NULL)
    out_kv(ctl, r->prev_kv, false);
}

void out_delete(const struct ctl *ctl, const Etcdserverpb__DeleteRangeResponse *r) {
  printf("%" PRId64 "\n", r->deleted);
  for (size_t i = 0; i < r->n_prev_kvs; i++)
    out_kv(ctl, r->prev_kvs[i], false);
}

/* ---- JSON --------------------------------------------------------------- */

void jw_string_value(FILE *f, const char *s, size_t len) {
  fputc('"', f);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
      case '"':
        fputs("\\\"", f);
        break;
      case '\\':
        fputs("\\\\", f);
        break;
      case '\n':
        fputs("\\n", f);
        break;
      case '\r':
        fputs("\\r", f);
        break;
      case '\t':
        fputs("\\t", f);
        break;
      /* Go's encoder escapes these for HTML safety. */
      case '<':
      case '>':
      case '&':
        fprintf(f, "\\u%04x", c);
        break;
      default:
        if (c < 0x20)
          fprintf(f, "\\u%04x", c);
        else
          fputc(c, f);
    }
  }
  fputc('"', f);
}

void jw_b64_value(FILE *f, const uint8_t *p, size_t len) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  fputc('"', f);
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < len)
      v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < len)
      v |= p[i + 2];
    fputc(tab[(v >> 18) & 63], f);
    fputc(tab[(v >> 12) & 63], f);
    fputc(i + 1 < len ? tab[(v >> 6) & 63] : '=', f);
    fputc(i + 2 < len ? tab[v & 63] : '=', f);
  }
  fputc('"', f);
}

void jw_begin(struct jw *j, FILE *f) {
  j->f = f;
  j->first = true;
  fputc('{', f);
}

void jw_end(struct jw *j) {
  fputc('}', j->f);
  j->first = false;
}

void jw_key(struct jw *j, const char *name) {
  if (!j->first)
    fputc(',', j->f);
  j->first = false;
  fprintf(j->f, "\"%s\":", name);
}

void jw_open(struct jw *j, const char *name) {
  jw_key(j, name);
  fputc('{', j->f);
  j->first = true;
}

void jw_close(struct jw *j) {
  fputc('}', j->f);
  j->first = false;
}

void jw_i64(struct jw *j, const char *name, int64_t v, bool always) {
  if (v == 0 && !always)
    return;
  jw_key(j, name);
  fprintf(j->f, "%" PRId64, v);
}

void jw_u64(struct jw *j, const char *name, uint64_t v, bool always) {
  if (v == 0 && !always)
    return;
  jw_key(j, name);
  fprintf(j->f, "%" PRIu64, v);
}

void jw_bool(struct jw *j, const char *name, bool v, bool always) {
  if (!v && !always)
    return;
  jw_key(j, name);
  fputs(v ? "true" : "false", j->f);
}

void jw_str(struct jw *j, const char *name, const char *s, bool always) {
  if ((s == NULL || *s == '\0') && !always)
    return;
  jw_key(j, name);
  jw_string_value(j->f, s != NULL ? s : "", s != NULL ? strlen(s) : 0);
}

void jw_bytes(struct jw *j, const char *name, const ProtobufCBinaryData *b, bool always) {
  if (b->len == 0 && !always)
    return;
  jw_key(j, name);
  jw_b64_value(j->f, b->data, b->len);
}

void json_header_fields(struct jw *j, const Etcdserverpb__ResponseHeader *h) {
  if (h == NULL)
    return;
  jw_u64(j, "cluster_id", h->cluster_id, false);
  jw_u64(j, "member_id", h->member_id, false);
  jw_i64(j, "revision", h->revision, false);
  jw_u64(j, "raft_term", h->raft_term, false);
}

void json_header(struct jw *j, const Etcdserverpb__ResponseHeader *h) {
  if (h == NULL)
    return;
  jw_open(j, "header");
  json_header_fields(j, h);
  jw_close(j);
}

void json_kv(FILE *f, const Mvccpb__KeyValue *kv) {
  struct jw j;
  jw_begin(&j, f);
  jw_bytes(&j, "key", &kv->key, false);
  jw_i64(&j, "create_revision", kv->create_revision, false);
  jw_i64(&j, "mod_revision", kv->mod_revision, false);
  jw_i64(&j, "version", kv->version, false);
  jw_bytes(&j, "value", &kv->value, false);
  jw_i64(&j, "lease", kv->lease, false);
  jw_end(&j);
}

static void json_kvs(struct jw *j, const char *name, Mvccpb__KeyValue **kvs, size_t n) {
  if (n == 0)
    return;
  jw_key(j, name);
  fputc('[', j->f);
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      fputc(',', j->f);
    json_kv(j->f, kvs[i]);
  }
  fputc(']', j->f);
}

void json_range(FILE *f, const Etcdserverpb__RangeResponse *r) {
  struct jw j;
  jw_begin(&j, f);
  json_header(&j, r->header);
  json_kvs(&j, "kvs", r->kvs, r->n_kvs);
  jw_bool(&j, "more", r->more, false);
  jw_i64(&j, "count", r->count, false);
  jw_end(&j);
}

void json_put(FILE *f, const Etcdserverpb__PutResponse *r) {
  struct jw j;
  jw_begin(&j, f);
  json_header(&j, r->header);
  if (r->prev_kv != NULL) {
    jw_key(&j, "prev_kv");
    json_kv(f, r->prev_kv);
  }
  jw_end(&j);
}

void json_delete(FILE *f, const Etcdserverpb__DeleteRangeResponse *r) {
  struct jw j;
  jw_begin(&j, f);
  json_header(&j, r->header);
  jw_i64(&j, "deleted", r->deleted, false);
  json_kvs(&j, "prev_kvs", r->prev_kvs, r->n_prev_kvs);
  jw_end(&j);
}

void json_txn(FILE *f, const Etcdserverpb__TxnResponse *r) {
  struct jw j;
  jw_begin(&j, f);
  json_header(&j, r->header);
  jw_bool(&j, "succeeded", r->succeeded, false);
  if (r->n_responses > 0) {
    jw_key(&j, "responses");
    fputc('[', f);
    for (size_t i = 0; i < r->n_responses; i++) {
      const Etcdserverpb__ResponseOp *op = r->responses[i];
      if (i > 0)
        fputc(',', f);
      /* gogo's oneof: {"Response":{"ResponsePut":{...}}}. */
      fputs("{\"Response\":", f);
      switch (op->response_case) {
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE:
          fputs("{\"ResponseRange\":", f);
          json_range(f, op->response_range);
          fputc('}', f);
          break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT:
          fputs("{\"ResponsePut\":", f);
          json_put(f, op->response_put);
          fputc('}', f);
          break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE:
          fputs("{\"ResponseDeleteRange\":", f);
          json_delete(f, op->response_delete_range);
          fputc('}', f);
          break;
        case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_TXN:
          fputs("{\"ResponseTxn\":", f);
          json_txn(f, op->response_txn);
          fputc('}', f);
          break;
        default:
          fputs("null", f);
      }
      fputc('}', f);
    }
    fputc(']', f);
  }
  jw_end(&j);
}

static void json_strings(struct jw *j, const char *name, char **v, size_t n) {
  if (n == 0)
    return;
  jw_key(j, name);
  fputc('[', j->f);
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      fputc(',', j->f);
    jw_string_value(j->f, v[i], strlen(v[i]));
  }
  fputc(']', j->f);
}

void json_member(FILE *f, const Etcdserverpb__Member *m) {
  struct jw j;
  jw_begin(&j, f);
  jw_u64(&j, "ID", m->id, false);
  jw_str(&j, "name", m->name, false);
  json_strings(&j, "peerURLs", m->peerurls, m->n_peerurls);
  json_strings(&j, "clientURLs", m->clienturls, m->n_clienturls);
  jw_bool(&j, "isLearner", m->islearner, false);
  jw_end(&j);
}

void json_members(struct jw *j, Etcdserverpb__Member **m, size_t n) {
  if (n == 0)
    return;
  jw_key(j, "members");
  fputc('[', j->f);
  for (size_t i = 0; i < n; i++) {
    if (i > 0)
      fputc(',', j->f);
    json_member(j->f, m[i]);
  }
  fputc(']', j->f);
}

/* ---- tables ------------------------------------------------------------- */

#define TABLE_COLS_MAX 16u

static void table_rule(FILE *f, const size_t *w, size_t n) {
  for (size_t c = 0; c < n; c++) {
    fputc('+', f);
    for (size_t k = 0; k < w[c] + 2; k++)
      fputc('-', f);
  }
  fputs("+\n", f);
}

void out_table(FILE *f, const char *const *headers, size_t n_cols, const char *const *cells,
               size_t n_rows) {
  size_t w[TABLE_COLS_MAX] = {0};
  if (n_cols > TABLE_COLS_MAX)
    n_cols = TABLE_COLS_MAX;
  for (size_t c = 0; c < n_cols; c++) {
    w[c] = strlen(headers[c]);
    for (size_t r = 0; r < n_rows; r++) {
      size_t len = strlen(cells[r * n_cols + c]);
      if (len > w[c])
        w[c] = len;
    }
  }
  table_rule(f, w, n_cols);
  for (size_t c = 0; c < n_cols; c++) {
    /* tablewriter centres a header, the odd space on the right. */
    size_t gap = w[c] - strlen(headers[c]), left = gap / 2;
    fprintf(f, "| %*s%s%*s ", (int)left, "", headers[c], (int)(gap - left), "");
  }
  fputs("|\n", f);
  table_rule(f, w, n_cols);
  for (size_t r = 0; r < n_rows; r++) {
    for (size_t c = 0; c < n_cols; c++)
      fprintf(f, "| %*s ", (int)w[c], cells[r * n_cols + c]);
    fputs("|\n", f);
  }
  table_rule(f, w, n_cols);
}

/* ---- Go's formats ------------------------------------------------------- */

void out_humanize_bytes(char *buf, size_t size, uint64_t n) {
  static const char *const units[] = {"B", "kB", "MB", "GB", "TB", "PB", "EB"};
  if (n < 10) {
    snprintf(buf, size, "%" PRIu64 " B", n);
    return;
  }
  /* Without libm: the exponent by division, floor by truncation (the
   * values are positive). */
  double s = (double)n, base = 1;
  size_t e = 0;
  while (e < 6 && s / base >= 1000.0) {
    base *= 1000.0;
    e++;
  }
  double val = (double)(uint64_t)(s / base * 10 + 0.5) / 10;
  snprintf(buf, size, val < 10 ? "%.1f %s" : "%.0f %s", val, units[e]);
}

/* Appends v's fraction of prec digits, trailing zeros dropped. */
static int frac(char *buf, size_t size, uint64_t v, int prec) {
  char digits[16];
  snprintf(digits, sizeof digits, "%0*" PRIu64, prec, v);
  int len = prec;
  while (len > 0 && digits[len - 1] == '0')
    len--;
  if (len == 0)
    return snprintf(buf, size, "%s", "");
  return snprintf(buf, size, ".%.*s", len, digits);
}

void out_go_duration(char *buf, size_t size, uint64_t ns) {
  char f[24];
  if (ns == 0) {
    snprintf(buf, size, "0s");
  } else if (ns < 1000) {
    snprintf(buf, size, "%" PRIu64 "ns", ns);
  } else if (ns < 1000000) {
    frac(f, sizeof f, ns % 1000, 3);
    snprintf(buf, size, "%" PRIu64 "%s\xc2\xb5s", ns / 1000, f);
  } else if (ns < 1000000000) {
    frac(f, sizeof f, ns % 1000000, 6);
    snprintf(buf, size, "%" PRIu64 "%sms", ns / 1000000, f);
  } else {
    uint64_t s = ns / 1000000000, h = s / 3600, m = (s / 60) % 60;
    frac(f, sizeof f, ns % 1000000000, 9);
    if (h > 0)
      snprintf(buf, size, "%" PRIu64 "h%" PRIu64 "m%" PRIu64 "%ss", h, m, s % 60, f);
    else if (m > 0)
      snprintf(buf, size, "%" PRIu64 "m%" PRIu64 "%ss", m, s % 60, f);
    else
      snprintf(buf, size, "%" PRIu64 "%ss", s, f);
  }
}
