/* bench/cairn_bench/hist.c: the log-linear histogram (hist.h). */
#include "hist.h"

#include <string.h>

void hist_init(struct hist *h) {
  memset(h, 0, sizeof(*h));
  h->min_ns = UINT64_MAX;
}

static unsigned floor_log2(uint64_t v) {
  return 63u - (unsigned)__builtin_clzll(v);
}

uint32_t hist_bucket_of(uint64_t v) {
  if (v < HIST_SUB_BUCKETS) {
    return (uint32_t)v;
  }
  if (v >= HIST_VALUE_MAX_NS) {
    return HIST_BUCKETS - 1u;
  }
  unsigned k = floor_log2(v); /* HIST_SUB_BITS <= k < HIST_MAGNITUDE_MAX */
  unsigned shift = k - (HIST_SUB_BITS - 1u);
  /* v >> shift is in [64, 128): its offset inside the octave. */
  uint64_t sub = (v >> shift) - HIST_SUB_BUCKETS / 2u;
  return (uint32_t)(HIST_SUB_BUCKETS + (k - HIST_SUB_BITS) * (HIST_SUB_BUCKETS / 2u) + sub);
}

uint64_t hist_bucket_low(uint32_t b) {
  if (b < HIST_SUB_BUCKETS) {
    return b;
  }
  uint32_t i = b - HIST_SUB_BUCKETS;
  unsigned k = HIST_SUB_BITS + i / (HIST_SUB_BUCKETS / 2u);
  uint64_t sub = i % (HIST_SUB_BUCKETS / 2u) + HIST_SUB_BUCKETS / 2u;
  return sub << (k - (HIST_SUB_BITS - 1u));
}

uint64_t hist_bucket_high(uint32_t b) {
  if (b < HIST_SUB_BUCKETS) {
    return b;
  }
  if (b == HIST_BUCKETS - 1u) {
    return UINT64_MAX; /* the last bucket also holds every larger value */
  }
  return hist_bucket_low(b + 1u) - 1u;
}

void hist_record(struct hist *h, uint64_t v) {
  h->buckets[hist_bucket_of(v)]++;
  h->count++;
  h->sum_ns += (long double)v;
  if (v < h->min_ns) {
    h->min_ns = v;
  }
  if (v > h->max_ns) {
    h->max_ns = v;
  }
}

void hist_merge(struct hist *dst, const struct hist *src) {
  if (src->count == 0) {
    return;
  }
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    dst->buckets[i] += src->buckets[i];
  }
  dst->count += src->count;
  dst->sum_ns += src->sum_ns;
  if (src->min_ns < dst->min_ns) {
    dst->min_ns = src->min_ns;
  }
  if (src->max_ns > dst->max_ns) {
    dst->max_ns = src->max_ns;
  }
}

uint64_t hist_quantile_ns(const struct hist *h, double q) {
  if (h->count == 0) {
    return 0;
  }
  if (q <= 0.0) {
    return h->min_ns;
  }
  if (q >= 1.0) {
    return h->max_ns;
  }
  /* rank = ceil(q * count), at least 1. */
  double r = q * (double)h->count;
  uint64_t rank = (uint64_t)r;
  if ((double)rank < r) {
    rank++;
  }
  if (rank == 0) {
    rank = 1;
  }
  uint64_t seen = 0;
  for (uint32_t i = 0; i < HIST_BUCKETS; i++) {
    seen += h->buckets[i];
    if (seen >= rank) {
      uint64_t lo = hist_bucket_low(i);
      uint64_t hi = hist_bucket_high(i);
      uint64_t mid = hi == UINT64_MAX ? lo : lo + (hi - lo) / 2u;
      if (mid < h->min_ns) {
        mid = h->min_ns;
      }
      if (mid > h->max_ns) {
        mid = h->max_ns;
      }
      return mid;
    }
  }
  return h->max_ns; /* not reached: the buckets sum to count */
}

double hist_mean_ns(const struct hist *h) {
  return h->count ? (double)(h->sum_ns / (long double)h->count) : 0.0;
}
