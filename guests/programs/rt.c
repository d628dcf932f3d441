/* The guest runtime: port I/O, the environment that backs the shared workloads with it, the
 * C entry point, and the few mem* functions the compiler may call. No libc. */
#include "baton_abi.h"

/* Each guest program defines its workload entry. */
int guest_main(const struct baton_boot* boot, struct baton_env* env);
void baton_entry(const struct baton_boot* boot) __attribute__((noreturn));

/* Writes one byte to a port. */
static inline void port_out8(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }

/* Writes a 32-bit value to a port. */
static inline void port_out32(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

/* Reads a 32-bit value from a port. */
static inline uint32_t port_in32(uint16_t port) {
  uint32_t v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

/* Announces a sync point on the sync port. */
static void env_sync(struct baton_env* env, uint32_t stage) {
  (void)env;
  port_out32(BATON_PORT_SYNC, stage);
}

/* Reads the next host-supplied input value. */
static uint32_t env_input(struct baton_env* env) {
  (void)env;
  return port_in32(BATON_PORT_INPUT);
}

/* Writes one console byte. */
static void env_console(struct baton_env* env, uint8_t byte) {
  (void)env;
  port_out8(BATON_PORT_CONSOLE, byte);
}

/* Reads the time-stamp counter (allowed at ring 3: CR4.TSD = 0). */
static uint64_t env_rdtsc(struct baton_env* env) {
  uint32_t lo, hi;
  (void)env;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

/* Reports a 64-bit result: tag, low half, then the high half that commits it. */
static void env_result(struct baton_env* env, uint32_t tag, uint64_t value) {
  (void)env;
  port_out32(BATON_PORT_RESULT_TAG, tag);
  port_out32(BATON_PORT_RESULT_LO, (uint32_t)value);
  port_out32(BATON_PORT_RESULT_HI, (uint32_t)(value >> 32));
}

static const struct baton_env_ops port_ops = {env_sync, env_input, env_console, env_rdtsc, env_result};

/* Checks the boot page, runs the workload over the free memory, and exits through the exit port. */
void baton_entry(const struct baton_boot* boot) {
  struct baton_env env = {&port_ops, 0, 0, 0, 0, 0};
  uint32_t code;
  if (boot == 0 || boot->magic != BATON_BOOT_MAGIC || boot->version != BATON_BOOT_VERSION) {
    baton_puts(&env, "baton guest: RDI does not point to a version-1 boot page\n");
    code = BATON_EXIT_BAD_BOOT;
  } else {
    env.arena = (uint8_t*)(uintptr_t)boot->free_start;
    env.arena_size = boot->free_end > boot->free_start ? boot->free_end - boot->free_start : 0;
    code = (uint32_t)guest_main(boot, &env);
  }
  /* The exit port ends the run; a backend that resumes anyway just sees the exit again. */
  for (;;) port_out32(BATON_PORT_EXIT, code);
}

/* Fills n bytes with a byte value. */
void* memset(void* dst, int c, size_t n) {
  uint8_t* d = (uint8_t*)dst;
  for (size_t i = 0; i < n; ++i) d[i] = (uint8_t)c;
  return dst;
}

/* Copies n bytes between non-overlapping buffers. */
void* memcpy(void* dst, const void* src, size_t n) {
  uint8_t* d = (uint8_t*)dst;
  const uint8_t* s = (const uint8_t*)src;
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
  return dst;
}

/* Copies n bytes between possibly overlapping buffers. */
void* memmove(void* dst, const void* src, size_t n) {
  uint8_t* d = (uint8_t*)dst;
  const uint8_t* s = (const uint8_t*)src;
  if (d < s) {
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
  } else {
    for (size_t i = n; i > 0; --i) d[i - 1] = s[i - 1];
  }
  return dst;
}

/* Compares n bytes. */
int memcmp(const void* a, const void* b, size_t n) {
  const uint8_t* x = (const uint8_t*)a;
  const uint8_t* y = (const uint8_t*)b;
  for (size_t i = 0; i < n; ++i)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}
