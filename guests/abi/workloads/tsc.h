/* tsc: reads the time-stamp counter in a tight loop and records the largest backward jump and
 * the largest forward gap between two consecutive reads. Across a migration at a sync point,
 * a backward jump shows a broken TSC offset and the forward gap shows the downtime. The TSC
 * observations go out as separate results (tags 1..4); the checksum only covers the
 * iteration counts, so it stays deterministic. */
#ifndef BATON_WORKLOAD_TSC_H
#define BATON_WORKLOAD_TSC_H

#include "../baton_abi.h"

#define TSC_DEFAULT_ITERATIONS (1ull << 16)
#define TSC_DEFAULT_PHASES 8ull

/* The parameters of one tsc run. */
struct tsc_params {
  uint64_t iterations, phases;
};

/* What a tsc run observed. */
struct tsc_observation {
  uint64_t max_backward, max_forward, backward_count, elapsed;
};

/* Reads tsc's parameters from the boot page, with the defaults above. */
static inline struct tsc_params tsc_params_from(const struct baton_boot* b) {
  struct tsc_params p;
  p.iterations = baton_param(b, "iterations", TSC_DEFAULT_ITERATIONS);
  p.phases = baton_param(b, "phases", TSC_DEFAULT_PHASES);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* tsc_validate(const struct tsc_params* p) {
  if (p->phases < 1 || p->phases > 65536) return "phases must be 1..65536";
  return 0;
}

/* Runs tsc (a sync point after each phase), reports the observations, returns the checksum. */
static inline uint64_t tsc_run(struct baton_env* env, const struct tsc_params* p) {
  struct tsc_observation o = {0, 0, 0, 0};
  const uint64_t first = env->ops->rdtsc(env);
  uint64_t prev = first;
  uint64_t acc = baton_mix(0x75C, p->phases);
  for (uint64_t ph = 0; ph < p->phases; ++ph) {
    const uint64_t n = p->iterations / p->phases + (ph < p->iterations % p->phases ? 1 : 0);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t t = env->ops->rdtsc(env);
      if (t < prev) {
        o.backward_count += 1;
        if (prev - t > o.max_backward) o.max_backward = prev - t;
      } else if (t - prev > o.max_forward) {
        o.max_forward = t - prev;
      }
      prev = t;
    }
    acc = baton_mix(acc, n);
    baton_sync(env);
  }
  o.elapsed = prev - first;
  env->ops->result(env, BATON_RESULT_TSC_MAX_BACKWARD, o.max_backward);
  env->ops->result(env, BATON_RESULT_TSC_MAX_FORWARD, o.max_forward);
  env->ops->result(env, BATON_RESULT_TSC_BACKWARD_COUNT, o.backward_count);
  env->ops->result(env, BATON_RESULT_TSC_ELAPSED, o.elapsed);
  return acc;
}

/* The tsc guest: reads parameters, runs, reports. */
static inline int tsc_main(const struct baton_boot* b, struct baton_env* env) {
  struct tsc_params p = tsc_params_from(b);
  const char* why = tsc_validate(&p);
  if (why != 0) return baton_bad_param(env, "tsc", why);
  baton_puts(env, "tsc: iterations ");
  baton_putdec(env, p.iterations);
  baton_puts(env, "\n");
  return baton_finish(env, "tsc", tsc_run(env, &p));
}

#endif /* BATON_WORKLOAD_TSC_H */
