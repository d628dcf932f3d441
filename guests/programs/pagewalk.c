/* The pagewalk guest: the workload in abi/workloads/pagewalk.h, run over the boot page's free memory. */
#include "workloads/pagewalk.h"

/* Runs the pagewalk workload. */
int guest_main(const struct baton_boot* boot, struct baton_env* env) { return pagewalk_main(boot, env); }
