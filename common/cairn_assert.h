/* common/cairn_assert.h: always-on assertions.
 *
 * CAIRN_ASSERT guards invariants whose breach would corrupt data (revision
 * order, applied index monotonic, record layout). It is never compiled out:
 * it prints the failed expression with its location and aborts.
 * CAIRN_DEBUG_ASSERT is for expensive checks; it is on unless NDEBUG. */
#ifndef CAIRN_ASSERT_H
#define CAIRN_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define CAIRN_ASSERT(expr)                                                                       \
  do {                                                                                           \
    if (!(expr)) {                                                                               \
      fprintf(stderr, "%s:%d: %s: assertion failed: %s\n", __FILE__, __LINE__, __func__, #expr); \
      abort();                                                                                   \
    }                                                                                            \
  } while (0)

#ifdef NDEBUG
#define CAIRN_DEBUG_ASSERT(expr) ((void)0)
#else
#define CAIRN_DEBUG_ASSERT(expr) CAIRN_ASSERT(expr)
#endif

#define CAIRN_STATIC_ASSERT(expr, msg) _Static_assert(expr, msg)

#endif
