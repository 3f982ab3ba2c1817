/* client/cairnctl/kv.c: get, put, del (and the requests txn builds from the
 * same command lines). */
#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairnctl/cairnctl.h"

/* Parses flags: the command's and the global ones for a command of its
 * own (ctl non-NULL), the command's alone for an operation of txn. */
static int kv_flags(struct ctl *ctl, int argc, char **argv, const struct ctl_flag *flags,
                    int *n_pos) {
  if (ctl != NULL)
    return ctl_args(ctl, argc, argv, flags, CTL_FORMATS_SJ, n_pos);
  return ctl_parse_flags(argc, argv, flags, NULL, n_pos);
}

size_t kv_buf_size(int argc, char **argv) {
  size_t max = 0;
  for (int i = 0; i < argc; i++) {
    size_t len = strlen(argv[i]);
    if (len > max)
      max = len;
  }
  return max + 2;
}

static ProtobufCBinaryData bin(const char *s) {
  ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
  return b;
}

/* --prefix and --from-key as clientv3's WithPrefix / WithFromKey set them:
 * an empty key becomes "\0". */
static void kv_range_end(ProtobufCBinaryData *key, ProtobufCBinaryData *end, bool prefix,
                         bool from_key, uint8_t *buf) {
  static uint8_t zero[1] = {0};
  if (!prefix && !from_key)
    return;
  if (key->len == 0) {
    key->data = zero;
    key->len = 1;
    end->data = zero;
    end->len = 1;
    return;
  }
  if (from_key) {
    end->data = zero;
    end->len = 1;
    return;
  }
  end->len = cairn_prefix_end(key->data, key->len, buf);
  end->data = buf;
}

static int kv_get_req(struct ctl *ctl, int argc, char **argv, Etcdserverpb__RangeRequest *req,
                      struct ctl_get_opts *gopts, uint8_t *buf) {
  bool prefix = false, from_key = false;
  int64_t limit = 0, rev = 0;
  const char *sort_by = "", *order = "", *consistency = "l";
  const struct ctl_flag flags[] = {
      {"prefix", 0, CTL_FLAG_BOOL, &prefix, NULL},
      {"from-key", 0, CTL_FLAG_BOOL, &from_key, NULL},
      {"limit", 0, CTL_FLAG_INT, &limit, NULL},
      {"rev", 0, CTL_FLAG_INT, &rev, NULL},
      {"keys-only", 0, CTL_FLAG_BOOL, &gopts->keys_only, NULL},
      {"count-only", 0, CTL_FLAG_BOOL, &gopts->count_only, NULL},
      {"print-value-only", 0, CTL_FLAG_BOOL, &gopts->print_value_only, NULL},
      {"sort-by", 0, CTL_FLAG_STRING, &sort_by, NULL},
      {"order", 0, CTL_FLAG_STRING, &order, NULL},
      {"consistency", 0, CTL_FLAG_STRING, &consistency, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = kv_flags(ctl, argc, argv, flags, &n);
  if (rc != 0)
    return rc;
  if (n == 0 || n > 2)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "get command needs one argument as key and an optional argument as range_end");
  if (prefix && from_key)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "`--prefix` and `--from-key` cannot be set at the same time, choose one");
  if ((prefix || from_key) && n > 1)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "too many arguments, only accept one argument when `--%s` is set.",
                     prefix ? "prefix" : "from-key");
  if (gopts->keys_only && gopts->count_only)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "`--keys-only` and `--count-only` cannot be set at the same time, choose one");

  if (strcmp(consistency, "l") == 0) {
    req->serializable = false;
  } else if (strcmp(consistency, "s") == 0) {
    req->serializable = true;
  } else {
    return ctl_error(CTL_EXIT_BAD_FEATURE, "unknown consistency flag \"%s\"", consistency);
  }

  char up[16];
  size_t i;
  for (i = 0; order[i] != '\0' && i + 1 < sizeof up; i++)
    up[i] = (char)toupper((unsigned char)order[i]);
  up[i] = '\0';
  Etcdserverpb__RangeRequest__SortOrder so = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE;
  if (strcmp(up, "ASCEND") == 0) {
    so = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND;
  } else if (strcmp(up, "DESCEND") == 0) {
    so = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND;
  } else if (up[0] != '\0') {
    return ctl_error(CTL_EXIT_BAD_FEATURE, "bad sort order %s", order);
  }
  for (i = 0; sort_by[i] != '\0' && i + 1 < sizeof up; i++)
    up[i] = (char)toupper((unsigned char)sort_by[i]);
  up[i] = '\0';
  static const struct {
    const char *name;
    Etcdserverpb__RangeRequest__SortTarget target;
  } targets[] = {
      {"CREATE", ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__CREATE},
      {"KEY", ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY},
      {"MODIFY", ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__MOD},
      {"VALUE", ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE},
      {"VERSION", ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VERSION},
  };
  Etcdserverpb__RangeRequest__SortTarget st = ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY;
  if (up[0] != '\0') {
    for (i = 0; i < sizeof targets / sizeof targets[0]; i++)
      if (strcmp(up, targets[i].name) == 0)
        break;
    if (i == sizeof targets / sizeof targets[0])
      return ctl_error(CTL_EXIT_BAD_FEATURE, "bad sort target %s", sort_by);
    st = targets[i].target;
  }
  /* clientv3's WithSort: ascending by key is the server's own order. */
  if (st == ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__KEY &&
      so == ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__ASCEND)
    so = ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__NONE;
  req->sort_order = so;
  req->sort_target = st;

  req->key = bin(argv[0]);
  if (n == 2)
    req->range_end = bin(argv[1]);
  kv_range_end(&req->key, &req->range_end, prefix, from_key, buf);
  req->limit = limit;
  req->revision = rev;
  req->keys_only = gopts->keys_only;
  req->count_only = gopts->count_only;
  return 0;
}

int kv_build_range(int argc, char **argv, Etcdserverpb__RangeRequest *req,
                   struct ctl_get_opts *gopts, uint8_t *buf) {
  return kv_get_req(NULL, argc, argv, req, gopts, buf);
}

/* Reads all of stdin (etcdctl's argOrStdin). NULL on error. */
/* A value read from stdin larger than this is refused (*too_big set):
 * servers take far less in one request (etcd: 1.5 MiB by default). */
#define KV_STDIN_VALUE_MAX ((size_t)64 << 20)

static char *read_stdin(size_t *len, bool *too_big) {
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  *too_big = false;
  if (buf == NULL)
    return NULL;
  for (;;) {
    if (n == cap) {
      if (cap >= KV_STDIN_VALUE_MAX) {
        *too_big = true;
        free(buf);
        return NULL;
      }
      char *bigger = realloc(buf, cap * 2);
      if (bigger == NULL) {
        free(buf);
        return NULL;
      }
      buf = bigger;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, stdin);
    n += got;
    if (got == 0)
      break;
  }
  if (ferror(stdin)) {
    free(buf);
    return NULL;
  }
  *len = n;
  return buf;
}

static int kv_put_req(struct ctl *ctl, int argc, char **argv, Etcdserverpb__PutRequest *req,
                      char **owned) {
  const char *lease = "0";
  bool prev_kv = false, ignore_value = false, ignore_lease = false;
  const struct ctl_flag flags[] = {
      {"lease", 0, CTL_FLAG_STRING, &lease, NULL},
      {"prev-kv", 0, CTL_FLAG_BOOL, &prev_kv, NULL},
      {"ignore-value", 0, CTL_FLAG_BOOL, &ignore_value, NULL},
      {"ignore-lease", 0, CTL_FLAG_BOOL, &ignore_lease, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = kv_flags(ctl, argc, argv, flags, &n);
  if (rc != 0)
    return rc;
  static const char need[] = "put command needs 1 argument and input from stdin or 2 arguments";
  if (n == 0)
    return ctl_error(CTL_EXIT_BAD_ARGS, need);
  if (ignore_value && n > 1)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "put command needs only 1 argument when 'ignore-value' is set");
  req->key = bin(argv[0]);
  if (!ignore_value) {
    if (n > 1) {
      req->value = bin(argv[1]);
    } else if (owned != NULL) {
      size_t len;
      bool too_big;
      *owned = read_stdin(&len, &too_big);
      if (*owned == NULL && too_big)
        return ctl_error(CTL_EXIT_BAD_ARGS, "the value on stdin is larger than %zu MiB",
                         KV_STDIN_VALUE_MAX >> 20);
      if (*owned == NULL)
        return ctl_error(CTL_EXIT_BAD_ARGS, need);
      req->value.data = (uint8_t *)*owned;
      req->value.len = len;
    } else {
      return ctl_error(CTL_EXIT_BAD_ARGS, need);
    }
  }
  int64_t id;
  if (ctl_parse_i64(lease, 16, &id) != 0)
    return ctl_error(CTL_EXIT_BAD_ARGS, "bad lease ID (%s), expecting ID in Hex", lease);
  if (id != 0 && ignore_lease)
    return ctl_error(CTL_EXIT_BAD_ARGS, "cannot use with lease");
  req->lease = id;
  req->prev_kv = prev_kv;
  req->ignore_value = ignore_value;
  req->ignore_lease = ignore_lease;
  return 0;
}

int kv_build_put(int argc, char **argv, Etcdserverpb__PutRequest *req) {
  return kv_put_req(NULL, argc, argv, req, NULL);
}

static int kv_del_req(struct ctl *ctl, int argc, char **argv, Etcdserverpb__DeleteRangeRequest *req,
                      uint8_t *buf) {
  bool prefix = false, from_key = false, prev_kv = false;
  const struct ctl_flag flags[] = {
      {"prefix", 0, CTL_FLAG_BOOL, &prefix, NULL},
      {"from-key", 0, CTL_FLAG_BOOL, &from_key, NULL},
      {"prev-kv", 0, CTL_FLAG_BOOL, &prev_kv, NULL},
      {NULL, 0, 0, NULL, NULL},
  };
  int n, rc = kv_flags(ctl, argc, argv, flags, &n);
  if (rc != 0)
    return rc;
  if (n == 0 || n > 2)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "del command needs one argument as key and an optional argument as range_end");
  if (prefix && from_key)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "`--prefix` and `--from-key` cannot be set at the same time, choose one");
  if ((prefix || from_key) && n > 1)
    return ctl_error(CTL_EXIT_BAD_ARGS,
                     "too many arguments, only accept one argument when `--%s` is set.",
                     prefix ? "prefix" : "from-key");
  req->key = bin(argv[0]);
  if (n == 2)
    req->range_end = bin(argv[1]);
  kv_range_end(&req->key, &req->range_end, prefix, from_key, buf);
  req->prev_kv = prev_kv;
  return 0;
}

int kv_build_delete(int argc, char **argv, Etcdserverpb__DeleteRangeRequest *req, uint8_t *buf) {
  return kv_del_req(NULL, argc, argv, req, buf);
}

/* ---- the commands -------------------------------------------------------- */

int cmd_get(struct ctl *ctl, int argc, char **argv) {
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  struct ctl_get_opts gopts = {0};
  uint8_t *buf = malloc(kv_buf_size(argc, argv));
  if (buf == NULL)
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  int rc = kv_get_req(ctl, argc, argv, &req, &gopts, buf);
  cairn_sync *s = rc == 0 ? ctl_client(ctl) : NULL;
  if (s == NULL) {
    free(buf);
    return rc != 0 ? rc : CTL_EXIT_BAD_CONNECTION;
  }
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  Etcdserverpb__RangeResponse *r = NULL;
  rc = cairn_sync_range(s, &req, &o, &r, &err);
  free(buf);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  if (ctl->format == CTL_OUT_JSON) {
    json_range(stdout, r);
    putchar('\n');
  } else if (gopts.count_only) {
    printf("%" PRId64 "\n", r->count);
  } else {
    out_range(ctl, r, gopts.print_value_only);
  }
  cairn_response_free(&r->base);
  return 0;
}

int cmd_put(struct ctl *ctl, int argc, char **argv) {
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  char *owned = NULL;
  int rc = kv_put_req(ctl, argc, argv, &req, &owned);
  cairn_sync *s = rc == 0 ? ctl_client(ctl) : NULL;
  if (s == NULL) {
    free(owned);
    return rc != 0 ? rc : CTL_EXIT_BAD_CONNECTION;
  }
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  Etcdserverpb__PutResponse *r = NULL;
  rc = cairn_sync_put(s, &req, &o, &r, &err);
  free(owned);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  if (ctl->format == CTL_OUT_JSON) {
    json_put(stdout, r);
    putchar('\n');
  } else {
    out_put(ctl, r);
  }
  cairn_response_free(&r->base);
  return 0;
}

int cmd_del(struct ctl *ctl, int argc, char **argv) {
  Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
  uint8_t *buf = malloc(kv_buf_size(argc, argv));
  if (buf == NULL)
    return ctl_error(CTL_EXIT_ERROR, "out of memory");
  int rc = kv_del_req(ctl, argc, argv, &req, buf);
  cairn_sync *s = rc == 0 ? ctl_client(ctl) : NULL;
  if (s == NULL) {
    free(buf);
    return rc != 0 ? rc : CTL_EXIT_BAD_CONNECTION;
  }
  struct cairn_call_opts o = ctl_opts(ctl);
  struct cairn_error err;
  Etcdserverpb__DeleteRangeResponse *r = NULL;
  rc = cairn_sync_delete(s, &req, &o, &r, &err);
  free(buf);
  if (rc != 0)
    return ctl_call_error(rc, &err, NULL);
  if (ctl->format == CTL_OUT_JSON) {
    json_delete(stdout, r);
    putchar('\n');
  } else {
    out_delete(ctl, r);
  }
  cairn_response_free(&r->base);
  return 0;
}
