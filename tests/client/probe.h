/* tests/client/probe.h: what the client probes share (each probe is one .c
 * file, built as its own executable on libcairn; this header holds the
 * common flags, the client's configuration and the output escaping).
 *
 * Common flags (etcdctl's names):
 *   --endpoints a,b,c    required; "host:port" or URLs
 *   --cacert F --cert F --key F
 *                        TLS; an endpoint without a scheme then becomes
 *                        https:// (as etcdctl does)
 *   --dial-timeout-ms N --request-timeout-ms N
 *   --keepalive-time-ms N --keepalive-timeout-ms N
 *
 * Output: one line per fact, flushed at once, so that a test reading the
 * pipe sees it when it happens. Keys and values are printed with every byte
 * outside '!'..'~', and '%', as %XX (python: urllib.parse.unquote_to_bytes);
 * an empty string as "-". */
#ifndef CAIRN_TESTS_CLIENT_PROBE_H
#define CAIRN_TESTS_CLIENT_PROBE_H

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/cairn.h"

#define PROBE_ENDPOINT_LEN_MAX 512u

struct probe_common {
  char *endpoints[CAIRN_ENDPOINTS_MAX];
  size_t n_endpoints;
  const char *cacert, *cert, *key;
  uint64_t dial_timeout_ms, request_timeout_ms, keepalive_time_ms, keepalive_timeout_ms;
};

static inline void probe_die(const char *prog, const char *fmt, const char *arg) {
  fprintf(stderr, "%s: ", prog);
  fprintf(stderr, fmt, arg);
  fputc('\n', stderr);
  exit(2);
}

/* A decimal number of a flag; exits with a message on anything else. */
static inline int64_t probe_number(const char *prog, const char *flag, const char *s) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0') {
    fprintf(stderr, "%s: %s wants a number, not '%s'\n", prog, flag, s);
    exit(2);
  }
  return (int64_t)v;
}

/* Splits "a,b,c" into pc->endpoints (malloc'ed, freed by probe_free). */
static inline void probe_set_endpoints(const char *prog, struct probe_common *pc,
                                       const char *list) {
  const char *p = list;
  while (*p != '\0') {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    if (len > 0) {
      if (pc->n_endpoints == CAIRN_ENDPOINTS_MAX)
        probe_die(prog, "too many endpoints in '%s'", list);
      if (len >= PROBE_ENDPOINT_LEN_MAX)
        probe_die(prog, "endpoint too long in '%s'", list);
      char *e = malloc(len + 1);
      if (e == NULL)
        probe_die(prog, "%s", "out of memory");
      memcpy(e, p, len);
      e[len] = '\0';
      pc->endpoints[pc->n_endpoints++] = e;
    }
    p += len;
    if (*p == ',')
      p++;
  }
}

/* Consumes argv[*i] (and its value) if it is a common flag: returns 1;
 * 0 if it is not one. */
static inline int probe_common_flag(const char *prog, struct probe_common *pc, int argc,
                                    char **argv, int *i) {
  const char *f = argv[*i];
  static const char *const names[] = {"--endpoints",          "--cacert",
                                      "--cert",               "--key",
                                      "--dial-timeout-ms",    "--request-timeout-ms",
                                      "--keepalive-time-ms",  "--keepalive-timeout-ms"};
  size_t which = sizeof names / sizeof names[0];
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
    if (strcmp(f, names[k]) == 0)
      which = k;
  if (which == sizeof names / sizeof names[0])
    return 0;
  if (*i + 1 >= argc)
    probe_die(prog, "%s wants a value", f);
  const char *v = argv[++*i];
  switch (which) {
  case 0: probe_set_endpoints(prog, pc, v); break;
  case 1: pc->cacert = v; break;
  case 2: pc->cert = v; break;
  case 3: pc->key = v; break;
  case 4: pc->dial_timeout_ms = (uint64_t)probe_number(prog, f, v); break;
  case 5: pc->request_timeout_ms = (uint64_t)probe_number(prog, f, v); break;
  case 6: pc->keepalive_time_ms = (uint64_t)probe_number(prog, f, v); break;
  default: pc->keepalive_timeout_ms = (uint64_t)probe_number(prog, f, v); break;
  }
  return 1;
}

/* Creates the client on loop; on failure prints the reason and exits 1
 * (the library printed its own details on stderr). */
static inline cairn_client *probe_client(const char *prog, struct probe_common *pc,
                                         uv_loop_t *loop) {
  if (pc->n_endpoints == 0)
    probe_die(prog, "%s", "--endpoints is required");
  bool tls = pc->cacert != NULL || pc->cert != NULL || pc->key != NULL;
  for (size_t k = 0; tls && k < pc->n_endpoints; k++) {
    if (strstr(pc->endpoints[k], "://") != NULL)
      continue;
    size_t len = strlen(pc->endpoints[k]);
    char *e = malloc(len + sizeof "https://");
    if (e == NULL)
      probe_die(prog, "%s", "out of memory");
    memcpy(e, "https://", sizeof "https://" - 1);
    memcpy(e + sizeof "https://" - 1, pc->endpoints[k], len + 1);
    free(pc->endpoints[k]);
    pc->endpoints[k] = e;
  }
  struct cairn_config cfg = {
      .endpoints = (const char *const *)pc->endpoints,
      .n_endpoints = pc->n_endpoints,
      .ca_file = pc->cacert,
      .cert_file = pc->cert,
      .key_file = pc->key,
      .dial_timeout_ms = pc->dial_timeout_ms,
      .request_timeout_ms = pc->request_timeout_ms,
      .keepalive_time_ms = pc->keepalive_time_ms,
      .keepalive_timeout_ms = pc->keepalive_timeout_ms,
  };
  cairn_client *c = NULL;
  int rc = cairn_client_new(loop, &cfg, &c);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create the client: %s\n", prog, cairn_strerror(rc));
    printf("END %d %s\n", cairn_grpc_code(rc), cairn_strerror(rc));
    fflush(stdout);
    exit(1);
  }
  return c;
}

static inline void probe_free(struct probe_common *pc) {
  for (size_t k = 0; k < pc->n_endpoints; k++)
    free(pc->endpoints[k]);
  pc->n_endpoints = 0;
}

/* Prints bytes escaped (see the top of this file). An empty string prints
 * as "-" and the one-byte string "-" as "%2D", so that every field is
 * non-empty and the split on spaces is unambiguous. */
static inline void probe_print_bytes(FILE *f, const uint8_t *p, size_t len) {
  if (len == 0) {
    fputc('-', f);
    return;
  }
  for (size_t k = 0; k < len; k++) {
    uint8_t b = p[k];
    if (b > ' ' && b <= '~' && b != '%' && !(len == 1 && b == '-'))
      fputc(b, f);
    else
      fprintf(f, "%%%02X", (unsigned)b);
  }
}

#endif
