/* bench/cairn_bench/hist.h: a log-linear latency histogram (HDR-like).
 *
 * Values are nanoseconds. Below HIST_SUB_BUCKETS ns every value has its own
 * bucket; above, each power of two [2^k, 2^(k+1)) is cut into
 * HIST_SUB_BUCKETS/2 equal buckets, so a bucket is at most 1/64 of its lower
 * bound wide and the value a percentile reports (the bucket's midpoint,
 * clamped to the exact min and max) is within 0.8% of a recorded value.
 * Values past HIST_VALUE_MAX_NS (2^42 ns, 73 minutes) land in the last
 * bucket; min, max and the mean stay exact for every value.
 *
 * Memory is fixed (HIST_BUCKETS counters inside the struct): recording never
 * allocates and never fails. */
#ifndef CAIRN_BENCH_HIST_H
#define CAIRN_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7u
#define HIST_SUB_BUCKETS (1u << HIST_SUB_BITS) /* 128 */
#define HIST_MAGNITUDE_MAX 42u                 /* the last octave is [2^41, 2^42) */
#define HIST_VALUE_MAX_NS ((uint64_t)1 << HIST_MAGNITUDE_MAX)
/* 128 exact buckets, then 64 per octave from 2^7 to 2^42. */
#define HIST_BUCKETS \
  (HIST_SUB_BUCKETS + (HIST_MAGNITUDE_MAX - HIST_SUB_BITS) * (HIST_SUB_BUCKETS / 2u))

struct hist {
  uint64_t count;
  uint64_t min_ns; /* UINT64_MAX while empty */
  uint64_t max_ns;
  long double sum_ns; /* exact to 2^64 ns in total, then within 1e-19 relative */
  uint64_t buckets[HIST_BUCKETS];
};

/* Empties h. */
void hist_init(struct hist *h);

/* Records one value. */
void hist_record(struct hist *h, uint64_t value_ns);

/* Adds every value of src to dst. */
void hist_merge(struct hist *dst, const struct hist *src);

/* The value at quantile q (0 <= q <= 1): the smallest recorded value whose
 * rank is at least ceil(q * count), as its bucket's midpoint clamped to the
 * exact [min, max]. 0 when empty. */
uint64_t hist_quantile_ns(const struct hist *h, double q);

/* The exact mean; 0 when empty. */
double hist_mean_ns(const struct hist *h);

/* Bucket arithmetic, exported for the tests: the bucket of a value, and the
 * lowest and highest value a bucket holds. */
uint32_t hist_bucket_of(uint64_t value_ns);
uint64_t hist_bucket_low(uint32_t bucket);
uint64_t hist_bucket_high(uint32_t bucket);

#endif
