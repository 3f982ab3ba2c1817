/* tests/unit/test.h: the minimal harness every unit test uses.
 *
 * A test file is one executable with its own main(); each check aborts the
 * process on failure with the location, so ctest reports it. Randomness comes
 * from test_seed(), which prints the seed and honours CAIRN_TEST_SEED.
 * CAIRN_TEST_SCALE=small shortens long loops (used under sanitizers). */
#ifndef CAIRN_TEST_H
#define CAIRN_TEST_H

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cairn_error.h"

static uint64_t test_seed_value;

#define CHECK(expr)                                                                              \
  do {                                                                                           \
    if (!(expr)) {                                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s (seed %" PRIu64 ")\n", __FILE__, __LINE__, #expr, \
              test_seed_value);                                                                  \
      abort();                                                                                   \
    }                                                                                            \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                                 \
  do {                                                                                     \
    long long va_ = (long long)(a), vb_ = (long long)(b);                                  \
    if (va_ != vb_) {                                                                      \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld vs %lld) (seed %" PRIu64 ")\n", \
              __FILE__, __LINE__, #a, #b, va_, vb_, test_seed_value);                      \
      abort();                                                                             \
    }                                                                                      \
  } while (0)

/* Checks that an expression returns the given CAIRN_E* code (or 0). */
#define CHECK_ERR(expr, code)                                                                      \
  do {                                                                                             \
    int rc_ = (expr);                                                                              \
    if (rc_ != (code)) {                                                                           \
      fprintf(stderr, "%s:%d: %s returned %d (%s), wanted %d (%s) (seed %" PRIu64 ")\n", __FILE__, \
              __LINE__, #expr, rc_, cairn_strerror(rc_), (int)(code), cairn_strerror(code),        \
              test_seed_value);                                                                    \
      abort();                                                                                     \
    }                                                                                              \
  } while (0)

#define CHECK_OK(expr) CHECK_ERR(expr, 0)

/* splitmix64: small, fast, seedable. */
static uint64_t test_rng_state;
static inline uint64_t test_rand(void) {
  uint64_t z = (test_rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static inline uint64_t test_rand_below(uint64_t n) {
  return n ? test_rand() % n : 0;
}

/* Seeds the generator from CAIRN_TEST_SEED or the clock, and prints it. */
static inline uint64_t test_seed(const char *name) {
  const char *env = getenv("CAIRN_TEST_SEED");
  uint64_t seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid() << 16;
  test_seed_value = seed;
  test_rng_state = seed;
  printf("%s: seed %" PRIu64 " (set CAIRN_TEST_SEED to repeat)\n", name, seed);
  fflush(stdout);
  return seed;
}

static inline int test_small(void) {
  const char *s = getenv("CAIRN_TEST_SCALE");
  return s && strcmp(s, "small") == 0;
}

/* A fresh temporary directory; the caller removes it with test_rmdir(). */
static inline char *test_tmpdir(const char *tag) {
  char tmpl[256];
  const char *base = getenv("TMPDIR");
  snprintf(tmpl, sizeof tmpl, "%s/cairn-%s.XXXXXX", base ? base : "/tmp", tag);
  char *d = mkdtemp(tmpl);
  CHECK(d != NULL);
  return strdup(d);
}

static inline void test_rmdir(char *dir) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
  free(dir);
}

#define TEST_RUN(fn)       \
  do {                     \
    printf("  %s\n", #fn); \
    fflush(stdout);        \
    fn();                  \
  } while (0)

#endif
