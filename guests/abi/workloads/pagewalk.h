/* pagewalk: dependent random reads across a large working set, one 8-byte word per 4 KiB
 * page. Every read picks its next page from the value it loaded, so each read is a TLB miss
 * (and, under EPT, a 2D page walk) that the CPU cannot prefetch. */
#ifndef BATON_WORKLOAD_PAGEWALK_H
#define BATON_WORKLOAD_PAGEWALK_H

#include "../baton_abi.h"

#define PAGEWALK_DEFAULT_SIZE (64ull << 20)
#define PAGEWALK_DEFAULT_READS (1ull << 18)
#define PAGEWALK_DEFAULT_PHASES 4ull
#define PAGEWALK_DEFAULT_SEED 1ull
#define PAGEWALK_PAGE 4096ull

/* The parameters of one pagewalk run. */
struct pagewalk_params {
  uint64_t size, reads, phases, seed;
};

/* Reads pagewalk's parameters from the boot page, with the defaults above. */
static inline struct pagewalk_params pagewalk_params_from(const struct baton_boot* b) {
  struct pagewalk_params p;
  p.size = baton_param(b, "size", PAGEWALK_DEFAULT_SIZE);
  p.reads = baton_param(b, "reads", PAGEWALK_DEFAULT_READS);
  p.phases = baton_param(b, "phases", PAGEWALK_DEFAULT_PHASES);
  p.seed = baton_param(b, "seed", PAGEWALK_DEFAULT_SEED);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* pagewalk_validate(const struct pagewalk_params* p) {
  if (p->size < PAGEWALK_PAGE) return "size must be at least one page (4096)";
  if (p->size > (1ull << 40)) return "size must be at most 1 TiB";
  if (p->phases < 1 || p->phases > 65536) return "phases must be 1..65536";
  return 0;
}

/* Returns the arena bytes a run needs; compact packs one 8-byte word per page. */
static inline uint64_t pagewalk_arena_bytes(const struct pagewalk_params* p, int compact) {
  uint64_t pages = p->size / PAGEWALK_PAGE;
  return compact ? pages * 8 : pages * PAGEWALK_PAGE;
}

/* Returns the address of page k's word (at a cache line that varies with k). */
static inline uint64_t* pagewalk_word(const struct baton_env* env, uint64_t k) {
  return (uint64_t*)(env->arena + (env->compact ? k * 8 : k * PAGEWALK_PAGE + ((k * 64) & (PAGEWALK_PAGE - 1))));
}

/* Runs pagewalk (init, then `phases` groups of reads; a sync point after each) and returns its checksum. */
static inline uint64_t pagewalk_run(struct baton_env* env, const struct pagewalk_params* p) {
  const uint64_t n = p->size / PAGEWALK_PAGE;
  for (uint64_t k = 0; k < n; ++k) *pagewalk_word(env, k) = baton_mix(p->seed, k);
  baton_sync(env);
  uint64_t acc = baton_mix(p->seed, n);
  uint64_t cur = baton_range(baton_fmix64(p->seed), n);
  uint64_t done = 0;
  for (uint64_t ph = 0; ph < p->phases; ++ph) {
    const uint64_t until = p->reads / p->phases * (ph + 1) + (ph + 1 == p->phases ? p->reads % p->phases : 0);
    for (; done < until; ++done) {
      const uint64_t v = *pagewalk_word(env, cur);
      acc = (acc ^ v) * 0x100000001B3ull;
      cur = baton_range(v * 0x9E3779B97F4A7C15ull + done, n);
    }
    acc = baton_mix(acc, ph);
    baton_sync(env);
  }
  return baton_fmix64(acc);
}

/* The pagewalk guest: reads parameters, checks the arena, runs, reports. */
static inline int pagewalk_main(const struct baton_boot* b, struct baton_env* env) {
  struct pagewalk_params p = pagewalk_params_from(b);
  const char* why = pagewalk_validate(&p);
  if (why == 0) why = baton_check_arena(env, pagewalk_arena_bytes(&p, env->compact));
  if (why != 0) return baton_bad_param(env, "pagewalk", why);
  baton_puts(env, "pagewalk: pages ");
  baton_putdec(env, p.size / PAGEWALK_PAGE);
  baton_puts(env, " reads ");
  baton_putdec(env, p.reads);
  baton_puts(env, "\n");
  return baton_finish(env, "pagewalk", pagewalk_run(env, &p));
}

#endif /* BATON_WORKLOAD_PAGEWALK_H */
