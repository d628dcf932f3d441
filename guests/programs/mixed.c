/* The mixed guest: the workload in abi/workloads/mixed.h, run over the boot page's free memory. */
#include "workloads/mixed.h"

/* Runs the mixed workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return mixed_main(boot, env); }
