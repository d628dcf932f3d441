/* checksum: a compute-heavy pass. A buffer of `size` bytes is generated from a seed, then
 * hashed `rounds` times with CRC32C (Castagnoli, reflected 0x82F63B78) or SHA-256 (FIPS 180-4),
 * each round keyed by its number. Both hashes are this file's own code. */
#ifndef BATON_WORKLOAD_CHECKSUM_H
#define BATON_WORKLOAD_CHECKSUM_H

#include "../baton_abi.h"

#define CHECKSUM_DEFAULT_SIZE (1ull << 20)
#define CHECKSUM_DEFAULT_ROUNDS 4ull
#define CHECKSUM_DEFAULT_ALGO 0ull /* 0 = crc32c, 1 = sha256 */
#define CHECKSUM_DEFAULT_SEED 1ull

/* The parameters of one checksum run. */
struct checksum_params {
  uint64_t size, rounds, algo, seed;
};

/* Reads checksum's parameters from the boot page, with the defaults above. */
static inline struct checksum_params checksum_params_from(const struct baton_boot* b) {
  struct checksum_params p;
  p.size = baton_param(b, "size", CHECKSUM_DEFAULT_SIZE);
  p.rounds = baton_param(b, "rounds", CHECKSUM_DEFAULT_ROUNDS);
  p.algo = baton_param(b, "algo", CHECKSUM_DEFAULT_ALGO);
  p.seed = baton_param(b, "seed", CHECKSUM_DEFAULT_SEED);
  return p;
}

/* Returns why the parameters are invalid, or 0 when they are valid. */
static inline const char* checksum_validate(const struct checksum_params* p) {
  if (p->size < 64 || p->size % 8 != 0) return "size must be a multiple of 8, at least 64";
  if (p->size > (1ull << 40)) return "size must be at most 1 TiB";
  if (p->algo > 1) return "algo must be 0 (crc32c) or 1 (sha256)";
  return 0;
}

/* Returns the arena bytes a run needs (the buffer itself; there is no compact form). */
static inline uint64_t checksum_arena_bytes(const struct checksum_params* p, int compact) {
  (void)compact;
  return p->size;
}

/* Fills the 256-entry CRC32C lookup table. */
static inline void crc32c_table(uint32_t table[256]) {
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
}

/* Continues a CRC32C register over n bytes (no pre/post inversion). */
static inline uint32_t crc32c_update(const uint32_t table[256], uint32_t crc, const uint8_t* p, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return crc;
}

/* SHA-256 state: the chaining value, a partial block, and the message length in bytes. */
struct sha256_ctx {
  uint32_t h[8];
  uint8_t block[64];
  uint64_t len;
};

/* Rotates a 32-bit word right. */
static inline uint32_t sha256_ror(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

/* Starts a SHA-256 computation with the FIPS 180-4 initial hash value. */
static inline void sha256_init(struct sha256_ctx* c) {
  static const uint32_t iv[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
  for (int i = 0; i < 8; ++i) c->h[i] = iv[i];
  c->len = 0;
}

/* Compresses one 64-byte block into the chaining value. */
static inline void sha256_block(struct sha256_ctx* c, const uint8_t* blk) {
  static const uint32_t k[64] = {
      0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
      0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
      0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
      0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
      0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
      0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
      0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
      0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = ((uint32_t)blk[4 * i] << 24) | ((uint32_t)blk[4 * i + 1] << 16) | ((uint32_t)blk[4 * i + 2] << 8) |
           (uint32_t)blk[4 * i + 3];
  for (int i = 16; i < 64; ++i) {
    uint32_t s0 = sha256_ror(w[i - 15], 7) ^ sha256_ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = sha256_ror(w[i - 2], 17) ^ sha256_ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
  for (int i = 0; i < 64; ++i) {
    uint32_t t1 = h + (sha256_ror(e, 6) ^ sha256_ror(e, 11) ^ sha256_ror(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
    uint32_t t2 = (sha256_ror(a, 2) ^ sha256_ror(a, 13) ^ sha256_ror(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = cc;
    cc = b;
    b = a;
    a = t1 + t2;
  }
  c->h[0] += a;
  c->h[1] += b;
  c->h[2] += cc;
  c->h[3] += d;
  c->h[4] += e;
  c->h[5] += f;
  c->h[6] += g;
  c->h[7] += h;
}

/* Feeds n bytes into a SHA-256 computation. */
static inline void sha256_update(struct sha256_ctx* c, const uint8_t* p, uint64_t n) {
  uint64_t used = c->len % 64;
  c->len += n;
  while (n > 0) {
    if (used == 0 && n >= 64) {
      sha256_block(c, p);
      p += 64;
      n -= 64;
      continue;
    }
    uint64_t take = 64 - used < n ? 64 - used : n;
    for (uint64_t i = 0; i < take; ++i) c->block[used + i] = p[i];
    used += take;
    p += take;
    n -= take;
    if (used == 64) {
      sha256_block(c, c->block);
      used = 0;
    }
  }
}

/* Finishes a SHA-256 computation and writes the 32-byte digest. */
static inline void sha256_final(struct sha256_ctx* c, uint8_t out[32]) {
  const uint64_t bits = c->len * 8;
  uint8_t pad[72];
  uint64_t used = c->len % 64;
  uint64_t npad = (used < 56 ? 56 - used : 120 - used);
  pad[0] = 0x80;
  for (uint64_t i = 1; i < npad; ++i) pad[i] = 0;
  for (int i = 0; i < 8; ++i) pad[npad + (uint64_t)i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_update(c, pad, npad + 8);
  for (int i = 0; i < 8; ++i) {
    out[4 * i] = (uint8_t)(c->h[i] >> 24);
    out[4 * i + 1] = (uint8_t)(c->h[i] >> 16);
    out[4 * i + 2] = (uint8_t)(c->h[i] >> 8);
    out[4 * i + 3] = (uint8_t)c->h[i];
  }
}

/* Returns whether both hashes give their published values for "123456789" and "abc". */
static inline int checksum_selftest(const uint32_t table[256]) {
  static const uint8_t digits[9] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
  static const uint8_t abc[3] = {'a', 'b', 'c'};
  if ((crc32c_update(table, 0xFFFFFFFFu, digits, 9) ^ 0xFFFFFFFFu) != 0xE3069283u) return 0;
  struct sha256_ctx c;
  uint8_t d[32];
  sha256_init(&c);
  sha256_update(&c, abc, 3);
  sha256_final(&c, d);
  return d[0] == 0xba && d[1] == 0x78 && d[2] == 0x16 && d[3] == 0xbf && d[31] == 0xad;
}

/* Runs checksum (generate, then `rounds` hashes; a sync point after each) and returns its checksum. */
static inline uint64_t checksum_run(struct baton_env* env, const struct checksum_params* p, const uint32_t table[256]) {
  uint64_t rng = p->seed;
  uint64_t* words = (uint64_t*)env->arena;
  for (uint64_t i = 0; i < p->size / 8; ++i) words[i] = baton_rng_next(&rng);
  baton_sync(env);
  uint64_t acc = baton_mix(p->seed, p->size);
  for (uint64_t r = 0; r < p->rounds; ++r) {
    uint64_t v;
    if (p->algo == 0) {
      v = crc32c_update(table, 0xFFFFFFFFu ^ (uint32_t)r, env->arena, p->size) ^ 0xFFFFFFFFu;
    } else {
      struct sha256_ctx c;
      uint8_t key[8], d[32];
      for (int i = 0; i < 8; ++i) key[i] = (uint8_t)(r >> (8 * i));
      sha256_init(&c);
      sha256_update(&c, key, 8);
      sha256_update(&c, env->arena, p->size);
      sha256_final(&c, d);
      v = 0;
      for (int i = 0; i < 8; ++i) v = (v << 8) | d[i];
    }
    acc = baton_mix(acc, v);
    baton_sync(env);
  }
  return acc;
}

/* The checksum guest: reads parameters, self-tests both hashes, runs, reports. */
static inline int checksum_main(const struct baton_boot* b, struct baton_env* env) {
  struct checksum_params p = checksum_params_from(b);
  uint32_t table[256];
  const char* why = checksum_validate(&p);
  if (why == 0) why = baton_check_arena(env, checksum_arena_bytes(&p, env->compact));
  if (why != 0) return baton_bad_param(env, "checksum", why);
  crc32c_table(table);
  if (!checksum_selftest(table)) {
    baton_puts(env, "checksum: self-test failed\n");
    return (int)BATON_EXIT_SELFCHECK;
  }
  baton_puts(env, p.algo == 0 ? "checksum: crc32c over " : "checksum: sha256 over ");
  baton_putdec(env, p.size);
  baton_puts(env, " bytes\n");
  return baton_finish(env, "checksum", checksum_run(env, &p, table));
}

#endif /* BATON_WORKLOAD_CHECKSUM_H */
