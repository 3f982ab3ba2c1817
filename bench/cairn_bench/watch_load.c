/* bench/cairn_bench/watch_load.c: the watch workload (in progress). */
#include <stdio.h>

#include "bench.h"

int watchload_run(struct bench *b) {
  (void)b;
  fprintf(stderr, "cairn-bench: watch: not yet\n");
  return CAIRN_EINVAL;
}
