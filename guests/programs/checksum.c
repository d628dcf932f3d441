/* The checksum guest: the workload in abi/workloads/checksum.h, run over the boot page's free memory. */
#include "workloads/checksum.h"

/* Runs the checksum workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return checksum_main(boot, env); }
