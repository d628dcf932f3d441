/* mixed: phases of the other workloads, `cycles` times over: memtouch, checksum, pagewalk,
 * io, tsc. Every phase ends with at least one sync point and reports its own checksum with
 * tag BATON_RESULT_PHASE_BASE + phase; the final checksum folds all phase checksums. */
#ifndef BATON_WORKLOAD_MIXED_H
#define BATON_WORKLOAD_MIXED_H

#include "../baton_abi.h"
#include "checksum.h"
#include "io.h"
#include "memtouch.h"
#include "pagewalk.h"
#include "tsc.h"

#define MIXED_DEFAULT_SIZE (8ull << 20)
#define MIXED_DEFAULT_CYCLES 2ull
#define MIXED_DEFAULT_SEED 1ull
#define MIXED_PHASES_PER_CYCLE 5u

/* The parameters of one mixed run, and those it derives for each phase. */
struct mixed_params {
  uint64_t size, cycles, seed;
  struct memtouch_params mem;
  struct checksum_params sum;
  struct pagewalk_params walk;
  struct io_params io;
  struct tsc_params tsc;
};

/* Derives the phase parameters of cycle c from the top-level ones. */
static inline void mixed_derive(struct mixed_params* p, uint64_t c) {
  p->mem.size = p->size;
  p->mem.stride = 4096;
  p->mem.write_pct = 50;
  p->mem.order = 1;
  p->mem.passes = 2;
  p->mem.seed = p->seed + c;
  p->sum.size = (p->size / 4) & ~7ull;
  p->sum.rounds = 1;
  p->sum.algo = 0;
  p->sum.seed = p->seed + c;
  p->walk.size = p->size;
  p->walk.reads = 1ull << 16;
  p->walk.phases = 1;
  p->walk.seed = p->seed + c;
  p->io.count = 256;
  p->io.batch = 256;
  p->io.echo = 1;
  p->tsc.iterations = 4096;
  p->tsc.phases = 1;
}

/* Reads mixed's parameters from the boot page, with the defaults above. */
static inline struct mixed_params mixed_params_from(const struct baton_boot* b) {
  struct mixed_params p;
  p.size = baton_param(b, "size", MIXED_DEFAULT_SIZE);
  p.cycles = baton_param(b, "cycles", MIXED_DEFAULT_CYCLES);
  p.seed = baton_param(b, "seed", MIXED_DEFAULT_SEED);
  mixed_derive(&p, 0);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* mixed_validate(const struct mixed_params* p) {
  if (p->size < 4096 || p->size > (1ull << 40)) return "size must be 4096 .. 1 TiB";
  if (p->cycles > 65536) return "cycles must be at most 65536";
  return 0;
}

/* Returns the arena bytes a run needs: the largest of its phases. */
static inline uint64_t mixed_arena_bytes(const struct mixed_params* p, int compact) {
  uint64_t need = memtouch_arena_bytes(&p->mem, compact);
  uint64_t s = checksum_arena_bytes(&p->sum, compact);
  uint64_t w = pagewalk_arena_bytes(&p->walk, compact);
  if (s > need) need = s;
  if (w > need) need = w;
  return need;
}

/* Runs all phases of all cycles and returns the folded checksum. */
static inline uint64_t mixed_run(struct baton_env* env, struct mixed_params* p, const uint32_t table[256]) {
  uint64_t acc = baton_mix(0x313, p->cycles);
  uint32_t phase = 0;
  for (uint64_t c = 0; c < p->cycles; ++c) {
    mixed_derive(p, c);
    for (unsigned k = 0; k < MIXED_PHASES_PER_CYCLE; ++k, ++phase) {
      uint64_t v = 0;
      switch (k) {
        case 0: v = memtouch_run(env, &p->mem); break;
        case 1: v = checksum_run(env, &p->sum, table); break;
        case 2: v = pagewalk_run(env, &p->walk); break;
        case 3: v = io_run(env, &p->io); break;
        default: v = tsc_run(env, &p->tsc); break;
      }
      env->ops->result(env, BATON_RESULT_PHASE_BASE + phase, v);
      acc = baton_mix(acc, v);
    }
  }
  return acc;
}

/* The mixed guest: reads parameters, checks the arena, runs, reports. */
static inline int mixed_main(const struct baton_boot* b, struct baton_env* env) {
  struct mixed_params p = mixed_params_from(b);
  uint32_t table[256];
  const char* why = mixed_validate(&p);
  if (why == 0) why = baton_check_arena(env, mixed_arena_bytes(&p, env->compact));
  if (why != 0) return baton_bad_param(env, "mixed", why);
  crc32c_table(table);
  if (!checksum_selftest(table)) {
    baton_puts(env, "mixed: self-test failed\n");
    return (int)BATON_EXIT_SELFCHECK;
  }
  baton_puts(env, "mixed: cycles ");
  baton_putdec(env, p.cycles);
  baton_puts(env, "\n");
  return baton_finish(env, "mixed", mixed_run(env, &p, table));
}

#endif /* BATON_WORKLOAD_MIXED_H */
