/* common/cairn_error.c: the error table. */
#include "cairn_error.h"

struct cairn_error_entry {
  int grpc_code;
  const char *text;
};

static const struct cairn_error_entry cairn_error_table[] = {
#define CAIRN_X_ENTRY(name, grpc, text) {grpc, text},
    CAIRN_ERRORS(CAIRN_X_ENTRY)
#undef CAIRN_X_ENTRY
};

static const struct cairn_error_entry *cairn_error_lookup(int code) {
  if (code <= CAIRN_E__BASE || code >= CAIRN_E__END) {
    return 0;
  }
  return &cairn_error_table[code - CAIRN_E__BASE - 1];
}

const char *cairn_strerror(int code) {
  if (code == 0) {
    return "ok";
  }
  const struct cairn_error_entry *e = cairn_error_lookup(code);
  return e ? e->text : "cairn: unknown error";
}

int cairn_grpc_code(int code) {
  if (code == 0) {
    return 0;
  }
  const struct cairn_error_entry *e = cairn_error_lookup(code);
  return e ? e->grpc_code : 2;
}
