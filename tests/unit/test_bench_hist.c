/* tests/unit/test_bench_hist.c: cairn-bench's log-linear histogram
 * (bench/cairn_bench/hist.c, compiled in): bucket arithmetic, the 1% bound
 * on reported values from 1 us to 1 hour, exact min/max/mean, quantiles
 * against a sorted copy of random samples, merge. */
#include "../../bench/cairn_bench/hist.c"
#include "test.h"

/* (No libm: the unit tests link only the storage layer.) */
static double dabs(double x) {
  return x < 0 ? -x : x;
}

static struct hist h1, h2, h3;

/* Every bucket's range is contiguous with the next, and every value maps
 * into the bucket whose range holds it. */
static void test_buckets(void) {
  CHECK_EQ_INT(hist_bucket_of(0), 0);
  CHECK_EQ_INT(hist_bucket_of(127), 127);
  CHECK_EQ_INT(hist_bucket_of(128), 128);
  CHECK_EQ_INT(hist_bucket_of(UINT64_MAX), HIST_BUCKETS - 1);
  for (uint32_t b = 0; b + 1 < HIST_BUCKETS; b++) {
    CHECK(hist_bucket_low(b) <= hist_bucket_high(b));
    CHECK(hist_bucket_high(b) + 1 == hist_bucket_low(b + 1));
    CHECK_EQ_INT(hist_bucket_of(hist_bucket_low(b)), b);
    CHECK_EQ_INT(hist_bucket_of(hist_bucket_high(b)), b);
  }
  /* The last bucket is the last of the top octave, and holds every larger
   * value too. */
  CHECK_EQ_INT(hist_bucket_low(HIST_BUCKETS - 1), (uint64_t)127 << (HIST_MAGNITUDE_MAX - 7));
  CHECK_EQ_INT(hist_bucket_of(HIST_VALUE_MAX_NS - 1), HIST_BUCKETS - 1);
  CHECK_EQ_INT(hist_bucket_of(HIST_VALUE_MAX_NS), HIST_BUCKETS - 1);
  for (int i = 0; i < 100000; i++) {
    uint64_t v = test_rand() >> (test_rand() % 64);
    uint32_t b = hist_bucket_of(v);
    CHECK(b < HIST_BUCKETS);
    CHECK(hist_bucket_low(b) <= v && v <= hist_bucket_high(b));
  }
}

/* A single recorded value comes back exactly (min and max clamp), and the
 * midpoint of its bucket is within 1% of any value in it from 1 us to 1 h. */
static void test_relative_error(void) {
  const uint64_t hour_ns = 3600ull * 1000000000ull;
  for (uint64_t v = 1000; v <= hour_ns; v = v + v / 97 + 1) {
    uint32_t b = hist_bucket_of(v);
    uint64_t lo = hist_bucket_low(b), hi = hist_bucket_high(b);
    uint64_t mid = lo + (hi - lo) / 2;
    double err = dabs((double)mid - (double)v) / (double)v;
    CHECK(err <= 0.01);
  }
  /* Two values in one bucket: the quantiles report within 1% of each. */
  for (int i = 0; i < 10000; i++) {
    uint64_t v = 1000 + test_rand_below(hour_ns - 1000);
    hist_init(&h1);
    hist_record(&h1, v);
    hist_record(&h1, v + 1);
    hist_record(&h1, v);
    CHECK_EQ_INT(hist_quantile_ns(&h1, 0.0), v);
    CHECK_EQ_INT(hist_quantile_ns(&h1, 1.0), v + 1);
    uint64_t p50 = hist_quantile_ns(&h1, 0.5);
    CHECK(dabs((double)p50 - (double)v) <= 0.01 * (double)v);
  }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Quantiles of random latencies (a random octave from 1 us to 1 h, then a
 * uniform value in it) against the exact order statistics. */
static void test_quantiles(void) {
  enum { N = 20000 };
  static uint64_t vals[N];
  const double qs[] = {0.0, 0.001, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0};
  for (int round = 0; round < 5; round++) {
    hist_init(&h1);
    long double sum = 0;
    size_t n = 1 + test_rand_below(N);
    for (size_t i = 0; i < n; i++) {
      unsigned k = 10 + (unsigned)test_rand_below(32); /* octaves from ~1 us to ~1.2 h */
      vals[i] = ((uint64_t)1 << k) + test_rand_below((uint64_t)1 << k);
      hist_record(&h1, vals[i]);
      sum += vals[i];
    }
    qsort(vals, n, sizeof vals[0], cmp_u64);
    CHECK_EQ_INT(h1.count, n);
    CHECK_EQ_INT(h1.min_ns, vals[0]);
    CHECK_EQ_INT(h1.max_ns, vals[n - 1]);
    CHECK(dabs(hist_mean_ns(&h1) - (double)(sum / n)) <= 1e-9 * (double)(sum / n));
    uint64_t prev = 0;
    for (size_t j = 0; j < sizeof qs / sizeof qs[0]; j++) {
      double r = qs[j] * (double)n;
      size_t rank = (size_t)r;
      if ((double)rank < r) {
        rank++;
      }
      if (rank < 1) {
        rank = 1;
      }
      uint64_t exact = vals[rank - 1];
      uint64_t got = hist_quantile_ns(&h1, qs[j]);
      CHECK(dabs((double)got - (double)exact) <= 0.01 * (double)exact);
      CHECK(got >= prev); /* ordered */
      prev = got;
    }
  }
}

static void test_empty_and_merge(void) {
  hist_init(&h1);
  CHECK_EQ_INT(hist_quantile_ns(&h1, 0.5), 0);
  CHECK(hist_mean_ns(&h1) == 0.0);
  hist_init(&h2);
  hist_init(&h3);
  for (int i = 0; i < 1000; i++) {
    uint64_t v = test_rand_below(10000000);
    hist_record(i % 2 ? &h1 : &h2, v);
    hist_record(&h3, v);
  }
  hist_merge(&h1, &h2);
  CHECK_EQ_INT(h1.count, h3.count);
  CHECK_EQ_INT(h1.min_ns, h3.min_ns);
  CHECK_EQ_INT(h1.max_ns, h3.max_ns);
  CHECK(memcmp(h1.buckets, h3.buckets, sizeof h1.buckets) == 0);
  CHECK_EQ_INT(hist_quantile_ns(&h1, 0.99), hist_quantile_ns(&h3, 0.99));
  /* Zero (a watch event before the put's ack) and past the last octave. */
  hist_init(&h1);
  hist_record(&h1, 0);
  hist_record(&h1, UINT64_MAX / 2);
  CHECK_EQ_INT(hist_quantile_ns(&h1, 0.5), 0);
  CHECK_EQ_INT(hist_quantile_ns(&h1, 1.0), UINT64_MAX / 2);
  CHECK(hist_quantile_ns(&h1, 0.9) >= hist_bucket_low(HIST_BUCKETS - 1));
}

int main(void) {
  test_seed("test_bench_hist");
  TEST_RUN(test_buckets);
  TEST_RUN(test_relative_error);
  TEST_RUN(test_quantiles);
  TEST_RUN(test_empty_and_merge);
  printf("test_bench_hist: ok\n");
  return 0;
}
