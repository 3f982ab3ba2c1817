/* bench/cairn_bench/lease_load.c: the lease workload (in progress). */
#include <stdio.h>

#include "bench.h"

int leaseload_run(struct bench *b) {
  (void)b;
  fprintf(stderr, "cairn-bench: lease: not yet\n");
  return CAIRN_EINVAL;
}
