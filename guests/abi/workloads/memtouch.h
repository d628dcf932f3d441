/* memtouch: the memory-heavy, dirtying workload. A working set of `size` bytes is cut into
 * slots `stride` bytes apart; each pass touches as many slots as there are, in sequential or
 * seeded-random order, writing with probability write_pct/100 and reading otherwise. */
#ifndef BATON_WORKLOAD_MEMTOUCH_H
#define BATON_WORKLOAD_MEMTOUCH_H

#include "../baton_abi.h"

#define MEMTOUCH_DEFAULT_SIZE (16ull << 20)
#define MEMTOUCH_DEFAULT_STRIDE 4096ull
#define MEMTOUCH_DEFAULT_WRITE_PCT 50ull
#define MEMTOUCH_DEFAULT_ORDER 0ull /* 0 = sequential, 1 = random */
#define MEMTOUCH_DEFAULT_PASSES 4ull
#define MEMTOUCH_DEFAULT_SEED 1ull

/* The parameters of one memtouch run. */
struct memtouch_params {
  uint64_t size, stride, write_pct, order, passes, seed;
};

/* Reads memtouch's parameters from the boot page, with the defaults above. */
static inline struct memtouch_params memtouch_params_from(const struct baton_boot* b) {
  struct memtouch_params p;
  p.size = baton_param(b, "size", MEMTOUCH_DEFAULT_SIZE);
  p.stride = baton_param(b, "stride", MEMTOUCH_DEFAULT_STRIDE);
  p.write_pct = baton_param(b, "write_pct", MEMTOUCH_DEFAULT_WRITE_PCT);
  p.order = baton_param(b, "order", MEMTOUCH_DEFAULT_ORDER);
  p.passes = baton_param(b, "passes", MEMTOUCH_DEFAULT_PASSES);
  p.seed = baton_param(b, "seed", MEMTOUCH_DEFAULT_SEED);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* memtouch_validate(const struct memtouch_params* p) {
  if (p->stride < 8 || p->stride % 8 != 0) return "stride must be a multiple of 8, at least 8";
  if (p->size < p->stride) return "size must be at least one stride";
  if (p->size > (1ull << 40)) return "size must be at most 1 TiB";
  if (p->write_pct > 100) return "write_pct must be 0..100";
  if (p->order > 1) return "order must be 0 (seq) or 1 (random)";
  if (p->passes > (1ull << 32)) return "passes must be at most 2^32";
  return 0;
}

/* Returns the arena bytes a run needs; compact packs one 8-byte slot per stride. */
static inline uint64_t memtouch_arena_bytes(const struct memtouch_params* p, int compact) {
  uint64_t slots = p->size / p->stride;
  return compact ? slots * 8 : slots * p->stride;
}

/* Returns the address of slot k. */
static inline uint64_t* memtouch_slot(const struct baton_env* env, const struct memtouch_params* p, uint64_t k) {
  return (uint64_t*)(env->arena + (env->compact ? k * 8 : k * p->stride));
}

/* Runs memtouch (init, passes, verify; a sync point after each) and returns its checksum. */
static inline uint64_t memtouch_run(struct baton_env* env, const struct memtouch_params* p) {
  const uint64_t n = p->size / p->stride;
  uint64_t rng = p->seed;
  uint64_t acc = baton_mix(p->seed, n);
  for (uint64_t k = 0; k < n; ++k) *memtouch_slot(env, p, k) = baton_mix(p->seed, k);
  baton_sync(env);
  for (uint64_t pass = 0; pass < p->passes; ++pass) {
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t r = baton_rng_next(&rng);
      const uint64_t k = p->order == 0 ? i : baton_range(r, n);
      uint64_t* slot = memtouch_slot(env, p, k);
      if ((uint32_t)r % 100u < p->write_pct) {
        *slot = r ^ (pass << 40) ^ k;
      } else {
        acc = (acc ^ *slot) * 0x100000001B3ull;
      }
    }
    acc = baton_mix(acc, pass);
    baton_sync(env);
  }
  for (uint64_t k = 0; k < n; ++k) acc = (acc ^ *memtouch_slot(env, p, k)) * 0x100000001B3ull;
  acc = baton_fmix64(acc);
  baton_sync(env);
  return acc;
}

/* The memtouch guest: reads parameters, checks the arena, runs, reports. */
static inline int memtouch_main(const struct baton_boot* b, struct baton_env* env) {
  struct memtouch_params p = memtouch_params_from(b);
  const char* why = memtouch_validate(&p);
  if (why == 0) why = baton_check_arena(env, memtouch_arena_bytes(&p, env->compact));
  if (why != 0) return baton_bad_param(env, "memtouch", why);
  baton_puts(env, "memtouch: size ");
  baton_putdec(env, p.size);
  baton_puts(env, p.order == 0 ? " sequential\n" : " random\n");
  return baton_finish(env, "memtouch", memtouch_run(env, &p));
}

#endif /* BATON_WORKLOAD_MEMTOUCH_H */
