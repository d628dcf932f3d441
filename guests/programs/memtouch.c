/* The memtouch guest: the workload in abi/workloads/memtouch.h, run over the boot page's free memory. */
#include "workloads/memtouch.h"

/* Runs the memtouch workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return memtouch_main(boot, env); }
