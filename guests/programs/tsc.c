/* The tsc guest: the workload in abi/workloads/tsc.h, run over the boot page's free memory. */
#include "workloads/tsc.h"

/* Runs the tsc workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return tsc_main(boot, env); }
