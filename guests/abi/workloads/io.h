/* io: a loop heavy in port I/O. Each iteration reads one value from the input port, folds it
 * into the checksum and (with echo) writes one letter derived from it to the console. The
 * host answers the n-th read with baton_input_value(input_seed, n) unless a trace says otherwise. */
#ifndef BATON_WORKLOAD_IO_H
#define BATON_WORKLOAD_IO_H

#include "../baton_abi.h"

#define IO_DEFAULT_COUNT 4096ull
#define IO_DEFAULT_BATCH 256ull
#define IO_DEFAULT_ECHO 1ull
#define IO_DEFAULT_INPUT_SEED 1ull
#define IO_LINE 64ull

/* The parameters of one io run (input_seed is read by the host, not by the guest). */
struct io_params {
  uint64_t count, batch, echo;
};

/* Reads io's parameters from the boot page, with the defaults above. */
static inline struct io_params io_params_from(const struct baton_boot* b) {
  struct io_params p;
  p.count = baton_param(b, "count", IO_DEFAULT_COUNT);
  p.batch = baton_param(b, "batch", IO_DEFAULT_BATCH);
  p.echo = baton_param(b, "echo", IO_DEFAULT_ECHO);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* io_validate(const struct io_params* p) {
  if (p->batch < 1) return "batch must be at least 1";
  if (p->echo > 1) return "echo must be 0 or 1";
  return 0;
}

/* Runs io (a sync point after every `batch` reads and at the end) and returns its checksum. */
static inline uint64_t io_run(struct baton_env* env, const struct io_params* p) {
  uint64_t acc = baton_mix(0x10, p->count);
  for (uint64_t i = 0; i < p->count; ++i) {
    const uint32_t v = env->ops->input(env);
    acc = baton_mix(acc, v);
    if (p->echo) {
      env->ops->console(env, (uint8_t)('a' + v % 26u));
      if (i % IO_LINE == IO_LINE - 1 || i + 1 == p->count) env->ops->console(env, '\n');
    }
    if (i % p->batch == p->batch - 1) baton_sync(env);
  }
  baton_sync(env);
  return acc;
}

/* The io guest: reads parameters, runs, reports. */
static inline int io_main(const struct baton_boot* b, struct baton_env* env) {
  struct io_params p = io_params_from(b);
  const char* why = io_validate(&p);
  if (why != 0) return baton_bad_param(env, "io", why);
  baton_puts(env, "io: reads ");
  baton_putdec(env, p.count);
  baton_puts(env, "\n");
  return baton_finish(env, "io", io_run(env, &p));
}

#endif /* BATON_WORKLOAD_IO_H */
