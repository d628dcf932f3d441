/* The baton guest boot ABI, shared by the freestanding guest programs (C) and the host loader
 * and reference (C++). docs/guest-abi.md explains every number here.
 *
 * Pure C, no libc: only <stdint.h> and <stddef.h>, which are freestanding headers. Every
 * function is `static inline` so that guest code and host code compile the very same text. */
#ifndef BATON_ABI_H
#define BATON_ABI_H

#include <stddef.h>
#include <stdint.h>

/* ---- Ports: the only channel between a guest and its host (all I/O from ring 3, IOPL=3). ---- */
#define BATON_PORT_CONSOLE 0x0500u    /* OUT  8-bit: one console byte */
#define BATON_PORT_RESULT_TAG 0x0504u /* OUT 32-bit: tag of the next result (latched; 0 after a commit) */
#define BATON_PORT_RESULT_LO 0x0508u  /* OUT 32-bit: low half of a 64-bit result (latched) */
#define BATON_PORT_RESULT_HI 0x050Cu  /* OUT 32-bit: high half; commits result (tag, hi:lo) */
#define BATON_PORT_SYNC 0x0510u       /* OUT 32-bit: sync point, "stage N" (N = 1, 2, ...) */
#define BATON_PORT_INPUT 0x0514u      /* IN  32-bit: the next host-supplied input value */
#define BATON_PORT_EXIT 0x0518u       /* OUT 32-bit: exit code; the guest executes nothing after it */
#define BATON_PORT_FAULT 0x051Cu      /* OUT 32-bit, by the loader's trap handler only: the vector of an
                                         exception it cannot handle (record at BATON_GPA_FAULT_RECORD) */
#define BATON_PORT_FIRST BATON_PORT_CONSOLE
#define BATON_PORT_LAST (BATON_PORT_FAULT + 3u)

/* ---- Result tags. Tag 0 and tags >= 0x100 are deterministic; tags 1..0xFF are observations
 *      (e.g. TSC gaps) that may differ from run to run and are never part of a checksum. ---- */
#define BATON_RESULT_CHECKSUM 0u           /* the run's checksum: exactly one, just before exit */
#define BATON_RESULT_TSC_MAX_BACKWARD 1u   /* largest backward TSC jump seen (cycles) */
#define BATON_RESULT_TSC_MAX_FORWARD 2u    /* largest forward TSC gap between two reads */
#define BATON_RESULT_TSC_BACKWARD_COUNT 3u /* number of backward jumps */
#define BATON_RESULT_TSC_ELAPSED 4u        /* last TSC read minus first */
#define BATON_RESULT_PHASE_BASE 0x100u     /* mixed: checksum of phase i has tag 0x100 + i */
#define BATON_RESULT_IS_DETERMINISTIC(tag) ((tag) == 0u || (tag) >= 0x100u)

/* ---- Exit codes written to BATON_PORT_EXIT. ---- */
#define BATON_EXIT_OK 0u
#define BATON_EXIT_BAD_BOOT 1u  /* RDI did not point to a boot page of this ABI version */
#define BATON_EXIT_BAD_PARAM 2u /* a parameter is out of range, or the working set does not fit */
#define BATON_EXIT_SELFCHECK 3u /* a built-in self-test (e.g. CRC32C of "123456789") failed */

/* ---- Fixed guest-physical layout (identity-mapped: GVA == GPA). ---- */
#define BATON_GPA_BOOT_PAGE 0x1000u /* boot parameters (struct baton_boot), RDI at entry */
#define BATON_GPA_GDT 0x2000u       /* GDT; the 64-bit TSS follows at BATON_GPA_TSS */
#define BATON_GPA_TSS 0x2080u
#define BATON_TSS_IOMAP 104u  /* the TSS's I/O permission bitmap starts right after its 104 bytes */
#define BATON_TSS_LIMIT (BATON_TSS_IOMAP + (BATON_PORT_LAST + 1u) / 8u) /* bitmap up to the ABI's last port, then 0xFF */
#define BATON_GPA_IDT 0x3000u          /* IDT: one interrupt gate per vector 0..31 into the trap handler */
#define BATON_GPA_TRAP 0x4000u         /* the loader's ring-0 trap handler (guests/trap/trap.S) */
#define BATON_GPA_FAULT_RECORD 0x5000u /* struct baton_fault, written by the trap handler */
#define BATON_IDT_VECTORS 32u          /* gates 0..31, the exception vectors; IDTR.limit = 32 * 16 - 1 */
#define BATON_GPA_RING0_STACK_TOP 0x100000u /* TSS.RSP0: [0xF0000, 0x100000) is reserved for it */
#define BATON_GPA_STACK_BOTTOM 0x100000u
#define BATON_GPA_STACK_TOP 0x200000u           /* RSP at entry */
#define BATON_GPA_IMAGE_BASE 0x200000u          /* the guest ELF's lowest allowed address; guests link here */
#define BATON_LOW_AREA_END BATON_GPA_IMAGE_BASE /* [0, 2 MiB) belongs to the loader */

/* GDT selectors built by the loader. */
#define BATON_SEL_KERNEL_CS 0x08u
#define BATON_SEL_KERNEL_DS 0x10u
#define BATON_SEL_USER_DS 0x1Bu /* index 3, RPL 3 */
#define BATON_SEL_USER_CS 0x23u /* index 4, RPL 3 */
#define BATON_SEL_TSS 0x28u     /* a 16-byte system descriptor */

/* ---- The boot-parameters page. ---- */
#define BATON_BOOT_MAGIC 0x31544F4F424E5442ull /* "BTNBOOT1" in memory order */
#define BATON_BOOT_VERSION 1u
#define BATON_BOOT_MAX_PARAMS 96u
#define BATON_PARAM_KEY_LEN 24u /* including the terminating NUL */

/* One guest parameter: a NUL-padded key and a 64-bit value. */
struct baton_param {
  char key[BATON_PARAM_KEY_LEN];
  uint64_t value;
};

/* The boot page as the loader writes it at BATON_GPA_BOOT_PAGE. All addresses are GPAs. */
struct baton_boot {
  uint64_t magic;             /* 0x000 BATON_BOOT_MAGIC */
  uint32_t version;           /* 0x008 BATON_BOOT_VERSION */
  uint32_t size;              /* 0x00C sizeof(struct baton_boot) */
  uint64_t mem_size;          /* 0x010 guest memory is [0, mem_size) */
  uint64_t boot_page;         /* 0x018 the address of this page */
  uint64_t image_start;       /* 0x020 lowest address of the ELF segments */
  uint64_t image_end;         /* 0x028 end of the highest ELF segment */
  uint64_t stack_bottom;      /* 0x030 */
  uint64_t stack_top;         /* 0x038 RSP at entry */
  uint64_t page_tables_start; /* 0x040 the loader's page tables, PML4 first */
  uint64_t page_tables_end;   /* 0x048 == mem_size */
  uint64_t free_start;        /* 0x050 free memory for working sets: [free_start, free_end) */
  uint64_t free_end;          /* 0x058 */
  uint64_t page_size;         /* 0x060 largest leaf of the identity mapping: 4 KiB, 2 MiB or 1 GiB */
  uint32_t ring;              /* 0x068 CPL at entry: 3 (default) or 0 */
  uint32_t param_count;       /* 0x06C entries used in params[] */
  uint64_t reserved[2];       /* 0x070 zero */
  struct baton_param params[BATON_BOOT_MAX_PARAMS]; /* 0x080 */
};

/* What the trap handler records at BATON_GPA_FAULT_RECORD before it reports an exception it
 * cannot handle on BATON_PORT_FAULT: the exception frame as the CPU pushed it, CR2, and the
 * four registers the handler uses (their values when the handler was entered). */
struct baton_fault {
  uint64_t vector;     /* 0x00 */
  uint64_t error_code; /* 0x08 the CPU's, or 0 for vectors that push none */
  uint64_t rip;        /* 0x10 the faulting instruction (for #GP, #UD, #PF, ...) */
  uint64_t cs;         /* 0x18 */
  uint64_t rflags;     /* 0x20 */
  uint64_t rsp;        /* 0x28 */
  uint64_t ss;         /* 0x30 */
  uint64_t cr2;        /* 0x38 */
  uint64_t rax;        /* 0x40 */
  uint64_t rcx;        /* 0x48 */
  uint64_t rdx;        /* 0x50 */
  uint64_t rsi;        /* 0x58 */
};

/* ---- Small pure helpers used by guests and by the host reference alike. ---- */

/* Returns whether two NUL-terminated keys are equal (at most BATON_PARAM_KEY_LEN bytes). */
static inline int baton_key_eq(const char* a, const char* b) {
  for (size_t i = 0; i < BATON_PARAM_KEY_LEN; ++i) {
    if (a[i] != b[i]) return 0;
    if (a[i] == '\0') return 1;
  }
  return 1;
}

/* Returns the value of parameter `key`, or `dflt` when the boot page does not carry it. */
static inline uint64_t baton_param(const struct baton_boot* b, const char* key, uint64_t dflt) {
  uint32_t n = b->param_count < BATON_BOOT_MAX_PARAMS ? b->param_count : BATON_BOOT_MAX_PARAMS;
  for (uint32_t i = 0; i < n; ++i)
    if (baton_key_eq(b->params[i].key, key)) return b->params[i].value;
  return dflt;
}

/* Finalizes a 64-bit value (MurmurHash3 fmix64): a bijection with full avalanche. */
static inline uint64_t baton_fmix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

/* Folds a value into an order-sensitive checksum accumulator. */
static inline uint64_t baton_mix(uint64_t acc, uint64_t v) { return baton_fmix64((acc ^ v) + 0x9E3779B97F4A7C15ull); }

/* Advances a splitmix64 generator and returns its next value (any seed, including 0, works). */
static inline uint64_t baton_rng_next(uint64_t* state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Maps a 64-bit random value onto [0, n) by a multiply-high (n > 0). */
static inline uint64_t baton_range(uint64_t r, uint64_t n) {
  __extension__ typedef unsigned __int128 baton_u128;
  return (uint64_t)(((baton_u128)r * n) >> 64);
}

/* Returns the n-th (0-based) value of the default input sequence for seed `seed`; hosts
 * answer the n-th IN from BATON_PORT_INPUT with it unless a trace dictates otherwise. */
static inline uint32_t baton_input_value(uint64_t seed, uint64_t n) {
  return (uint32_t)(baton_fmix64(seed * 0x9E3779B97F4A7C15ull + n + 1) >> 32);
}

/* The parameter naming the input-sequence seed, read by hosts from the boot page. */
#define BATON_PARAM_INPUT_SEED "input_seed"

/* ---- The environment a workload runs in: port I/O in a guest, recorders on the host. ---- */
struct baton_env;
struct baton_env_ops {
  void (*sync)(struct baton_env* env, uint32_t stage);
  uint32_t (*input)(struct baton_env* env);
  void (*console)(struct baton_env* env, uint8_t byte);
  uint64_t (*rdtsc)(struct baton_env* env);
  void (*result)(struct baton_env* env, uint32_t tag, uint64_t value);
};
struct baton_env {
  const struct baton_env_ops* ops;
  uint8_t* arena;      /* working-set memory */
  uint64_t arena_size; /* bytes available at arena */
  int compact;         /* 1: slot workloads pack slots densely (the host reference) */
  uint32_t stage;      /* the last stage announced */
  void* ctx;           /* host-side state */
};

/* Announces the next sync point ("stage N", N counting from 1). */
static inline void baton_sync(struct baton_env* env) {
  env->stage += 1;
  env->ops->sync(env, env->stage);
}

/* Writes a NUL-terminated string to the console. */
static inline void baton_puts(struct baton_env* env, const char* s) {
  while (*s != '\0') env->ops->console(env, (uint8_t)*s++);
}

/* Writes a 64-bit value as 0x-prefixed, 16-digit hexadecimal to the console. */
static inline void baton_puthex(struct baton_env* env, uint64_t v) {
  baton_puts(env, "0x");
  for (int shift = 60; shift >= 0; shift -= 4) {
    unsigned d = (unsigned)((v >> shift) & 0xF);
    env->ops->console(env, (uint8_t)(d < 10 ? '0' + d : 'a' + d - 10));
  }
}

/* Writes an unsigned decimal number to the console. */
static inline void baton_putdec(struct baton_env* env, uint64_t v) {
  char buf[21];
  int i = 20;
  buf[i] = '\0';
  do {
    buf[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  baton_puts(env, buf + i);
}

/* Reports a parameter error on the console and returns BATON_EXIT_BAD_PARAM. */
static inline int baton_bad_param(struct baton_env* env, const char* guest, const char* why) {
  baton_puts(env, guest);
  baton_puts(env, ": bad parameters: ");
  baton_puts(env, why);
  baton_puts(env, "\n");
  return (int)BATON_EXIT_BAD_PARAM;
}

/* Reports the final checksum on the console and the result port, and returns BATON_EXIT_OK. */
static inline int baton_finish(struct baton_env* env, const char* guest, uint64_t checksum) {
  baton_puts(env, guest);
  baton_puts(env, ": checksum ");
  baton_puthex(env, checksum);
  baton_puts(env, "\n");
  env->ops->result(env, BATON_RESULT_CHECKSUM, checksum);
  return (int)BATON_EXIT_OK;
}

/* Checks that the arena holds `need` bytes; returns 0 when it does, else a message. */
static inline const char* baton_check_arena(const struct baton_env* env, uint64_t need) {
  return need <= env->arena_size ? (const char*)0 : "working set does not fit in free memory";
}

#endif /* BATON_ABI_H */
