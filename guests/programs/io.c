/* The io guest: the workload in abi/workloads/io.h, run over the boot page's free memory. */
#include "workloads/io.h"

/* Runs the io workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return io_main(boot, env); }
