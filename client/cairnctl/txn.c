/* client/cairnctl/txn.c: txn, in etcdctl's stdin format:
 *
 *   compares, one a line:   value("key") = "v"   (mod, create, version, lease)
 *   <blank line>
 *   success requests:       put k v / get k [range_end] [flags] / del ...
 *   <blank line>
 *   failure requests
 *   <blank line>
 *
 * -i prompts for each section. The end of input ends the current section. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

#define TXN_LINE_ARGS_MAX 64u

/* Go's strconv.Unquote of a "double-quoted" or `raw` string at *p; the
 * result (malloc'ed, NUL added, len in *len) in *out; *p moves past it.
 * -1 on a malformed string. */
static int go_unquote(const char **p, char **out, size_t *len) {
  const char *s = *p;
  char q = *s;
  if (q != '"' && q != '`')
    return -1;
  char *buf = malloc(strlen(s) + 1);
  if (buf == NULL)
    return -1;
  size_t n = 0;
  s++;
  while (*s != q) {
    if (*s == '\0' || (q == '"' && *s == '\n'))
      goto bad;
    if (q == '`' || *s != '\\') {
      buf[n++] = *s++;
      continue;
    }
    s++;
    char c = *s++;
    switch (c) {
      case 'a':
        buf[n++] = '\a';
        break;
      case 'b':
        buf[n++] = '\b';
        break;
      case 'f':
        buf[n++] = '\f';
        break;
      case 'n':
        buf[n++] = '\n';
        break;
      case 'r':
        buf[n++] = '\r';
        break;
      case 't':
        buf[n++] = '\t';
        break;
      case 'v':
        buf[n++] = '\v';
        break;
      case '\\':
        buf[n++] = '\\';
        break;
      case '"':
        buf[n++] = '"';
        break;
      case '\'':
        buf[n++] = '\'';
        break;
      case 'x': {
        char hex[3] = {s[0], s[0] != '\0' ? s[1] : '\0', '\0'};
        char *end;
        unsigned long v = strtoul(hex, &end, 16);
        if (end != hex + 2)
          goto bad;
        buf[n++] = (char)v;
        s += 2;
        break;
      }
      case 'u': {
        char hex[5] = {0};
        for (int i = 0; i < 4; i++) {
          if (s[i] == '\0')
            goto bad;
          hex[i] = s[i];
        }
        char *end;
        unsigned long v = strtoul(hex, &end, 16);
        if (end != hex + 4)
          goto bad;
        s += 4;
        /* UTF-8 of a code point of the BMP. */
        if (v < 0x80) {
          buf[n++] = (char)v;
        } else if (v < 0x800) {
          buf[n++] = (char)(0xc0 | (v >> 6));
          buf[n++] = (char)(0x80 | (v & 0x3f));
        } else {
          buf[n++] = (char)(0xe0 | (v >> 12));
          buf[n++] = (char)(0x80 | ((v >> 6) & 0x3f));
          buf[n++] = (char)(0x80 | (v & 0x3f));
        }
        break;
      }
      default:
        if (c >= '0' && c <= '7' && s[0] >= '0' && s[0] <= '7' && s[1] >= '0' && s[1] <= '7') {
          buf[n++] = (char)(((c - '0') << 6) | ((s[0] - '0') << 3) | (s[1] - '0'));
          s += 2;
          break;
        }
        goto bad;
    }
  }
  buf[n] = '\0';
  *p = s + 1;
  *out = buf;
  *len = n;
  return 0;
bad:
  free(buf);
  return -1;
}

/* etcdctl's Argify: words split on white space, "double quoted" (Go
 * escapes) and 'single quoted' words taken whole. Each word malloc'ed. */
static int argify(const char *line, char **args, size_t *n) {
  const char *p = line;
  *n = 0;
  for (;;) {
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
      p++;
    if (*p == '\0')
      return 0;
    if (*n == TXN_LINE_ARGS_MAX)
      return -1;
    char *w;
    if (*p == '"') {
      size_t len;
      if (go_unquote(&p, &w, &len) != 0)
        return -1;
    } else if (*p == '\'') {
      const char *end = strchr(p + 1, '\'');
      if (end == NULL)
        return -1;
      w = strndup(p + 1, (size_t)(end - p - 1));
      p = end + 1;
    } else {
      size_t len = strcspn(p, " \t\r\n");
      w = strndup(p, len);
      p += len;
    }
    if (w == NULL)
      return -1;
    args[(*n)++] = w;
  }
}

static void free_args(char **args, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(args[i]);
}

/* One compare line: target("key") op "value". */
static int txn_compare(struct cairn_txn *t, const char *line) {
  const char *paren = strchr(line, '(');
  if (paren == NULL)
    return ctl_error(CTL_EXIT_INVALID_INPUT, "malformed comparison: %s", line);
  size_t tlen = (size_t)(paren - line);
  const char *p = paren + 1;
  char *key = NULL, *val = NULL;
  size_t key_len, val_len;
  char op[4] = {0};
  int rc = CTL_EXIT_INVALID_INPUT;
  if (go_unquote(&p, &key, &key_len) != 0 || *p++ != ')')
    goto malformed;
  while (*p == ' ')
    p++;
  size_t oplen = strcspn(p, " ");
  if (oplen == 0 || oplen >= sizeof op)
    goto malformed;
  memcpy(op, p, oplen);
  p += oplen;
  while (*p == ' ')
    p++;
  if (go_unquote(&p, &val, &val_len) != 0)
    goto malformed;

  enum cairn_cmp cmp;
  if (strcmp(op, "=") == 0 || strcmp(op, "==") == 0)
    cmp = CAIRN_CMP_EQUAL;
  else if (strcmp(op, "!=") == 0)
    cmp = CAIRN_CMP_NOT_EQUAL;
  else if (strcmp(op, "<") == 0)
    cmp = CAIRN_CMP_LESS;
  else if (strcmp(op, ">") == 0)
    cmp = CAIRN_CMP_GREATER;
  else
    goto malformed;

#define TARGET(a, b)                                     \
  ((tlen == strlen(a) && strncmp(line, a, tlen) == 0) || \
   (tlen == strlen(b) && strncmp(line, b, tlen) == 0))
  int64_t num = 0;
  bool numeric = !TARGET("val", "value");
  if (numeric && ctl_parse_i64(val, 10, &num) != 0)
    goto malformed;
  if (TARGET("ver", "version"))
    rc = cairn_txn_if_version(t, key, key_len, NULL, 0, cmp, num);
  else if (TARGET("c", "create"))
    rc = cairn_txn_if_create_revision(t, key, key_len, NULL, 0, cmp, num);
  else if (TARGET("m", "mod"))
    rc = cairn_txn_if_mod_revision(t, key, key_len, NULL, 0, cmp, num);
  else if (TARGET("val", "value"))
    rc = cairn_txn_if_value(t, key, key_len, NULL, 0, cmp, val, val_len);
  else if (TARGET("lease", "lease"))
    rc = cairn_txn_if_lease(t, key, key_len, NULL, 0, cmp, num);
  else {
    free(key);
    free(val);
    return ctl_error(CTL_EXIT_INVALID_INPUT, "malformed comparison: %s (unknown target %.*s)", line,
                     (int)tlen, line);
  }
#undef TARGET
  free(key);
  free(val);
  if (rc != 0)
    return ctl_error(CTL_EXIT_ERROR, "%s", cairn_strerror(rc));
  return 0;
malformed:
  free(key);
  free(val);
  return ctl_error(CTL_EXIT_INVALID_INPUT, "malformed comparison: %s", line);
}

/* One request line of a branch. */
static int txn_op(struct cairn_txn *t, bool then, const char *line) {
  char *args[TXN_LINE_ARGS_MAX];
  size_t n = 0;
  if (argify(line, args, &n) != 0 || n < 2) {
    free_args(args, n);
    return ctl_error(CTL_EXIT_INVALID_INPUT, "invalid txn compare request: %s", line);
  }
  int rc = 0;
  int argc = (int)n - 1;
  char **argv = args + 1;
  uint8_t *buf = malloc(kv_buf_size(argc, argv));
  if (buf == NULL) {
    free_args(args, n);
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  }
  if (strcmp(args[0], "put") == 0) {
    Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
    rc = kv_build_put(argc, argv, &req);
    if (rc == 0)
      rc = cairn_txn_put(t, then, &req);
  } else if (strcmp(args[0], "get") == 0) {
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    struct ctl_get_opts gopts = {0};
    rc = kv_build_range(argc, argv, &req, &gopts, buf);
    if (rc == 0)
      rc = cairn_txn_range(t, then, &req);
  } else if (strcmp(args[0], "del") == 0) {
    Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
    rc = kv_build_delete(argc, argv, &req, buf);
    if (rc == 0)
      rc = cairn_txn_delete(t, then, &req);
  } else {
    rc = ctl_error(CTL_EXIT_INVALID_INPUT, "invalid txn request: %s", line);
  }
  if (rc < 0)
    rc = ctl_error(CTL_EXIT_ERROR, "%s", cairn_strerror(rc));
  else if (rc > 0)
    rc = CTL_EXIT_INVALID_INPUT;
  free(buf);
  free_args(args, n);
  return rc;
}

/* Reads lines until a blank one or the end of input; section 0 holds
 * compares, 1 and 2 the success and failure requests. */
static int txn_section(struct cairn_txn *t, int section, bool interactive, bool *eof) {
  static const char *const prompts[] = {
      "compares:", "success requests (get, put, del):", "failure requests (get, put, del):"};
  char *line = NULL;
  size_t cap = 0;
  int rc = 0;
  if (interactive) {
    printf("%s\n", prompts[section]);
    fflush(stdout);
  }
  while (!*eof && rc == 0) {
    ssize_t len = getline(&line, &cap, stdin);
    if (len < 0) {
      *eof = true;
      break;
    }
    if (len > 0 && line[len - 1] == '\n')
      line[--len] = '\0';
    if (len == 0)
      break;
    rc = section == 0 ? txn_compare(t, line) : txn_op(t, section == 1, line);
  }
  free(line);
  return rc;
}

static void txn_print(const struct ctl *ctl, const Etcdserverpb__TxnResponse *r) {
  printf("%s\n", r->succeeded ? "SUCCESS" : "FAILURE");
  for (size_t i = 0; i < r->n_responses; i++) {
    const Etcdserverpb__ResponseOp *op = r->responses[i];
    putchar('\n');
    switch (op->response_case) {
      case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_RANGE:
        out_range(ctl, op->response_range, false);
        break;
      case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_PUT:
        out_put(ctl, op->response_put);
        break;
      case ETCDSERVERPB__RESPONSE_OP__RESPONSE_RESPONSE_DELETE_RANGE:
        out_delete(ctl, op->response_delete_range);
        break;
      default:
        printf("unexpected response\n");
    }
  }
}

int cmd_txn(struct ctl *ctl, int argc, char **argv) {
  bool interactive = false;
  const struct ctl_flag flags[] = {
      {"interactive", 'i', CTL_FLAG_BOOL, &interactive, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, &n);
  if (rc != 0)
    return rc;
  if (n != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS, "txn command does not accept argument");
  struct cairn_txn *t = cairn_txn_new();
  if (t == NULL)
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  bool eof = false;
  for (int section = 0; section < 3 && rc == 0; section++)
    rc = txn_section(t, section, interactive, &eof);
  cairn_sync *s = rc == 0 ? ctl_client(ctl) : NULL;
  if (rc == 0 && s == NULL)
    rc = CTL_EXIT_BAD_CONNECTION;
  if (rc != 0) {
    cairn_txn_free(t);
    return rc;
  }
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  Etcdserverpb__TxnResponse *r = NULL;
  rc = cairn_sync_txn(s, t, &o, &r, &err);
  cairn_txn_free(t);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  if (ctl->format == CTL_OUT_JSON) {
    json_txn(stdout, r);
    putchar('\n');
  } else {
    txn_print(ctl, r);
  }
  cairn_response_free(&r->base);
  return 0;
}
