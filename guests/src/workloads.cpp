// Internal: compiles the shared C workloads into the host and lists them by guest name.
#include "workloads.hpp"

#include <algorithm>
#include <cstring>

#include "workloads/mixed.h"  // includes every other workload

namespace baton::guests::detail {

namespace {

// Declares validate/arena_bytes adaptors for a workload with a params struct and functions.
#define BATON_WORKLOAD_ADAPTORS(w)                                         \
  const char* w##_validate_boot(const baton_boot* b) {                     \
    const struct w##_params p = w##_params_from(b);                        \
    return w##_validate(&p);                                               \
  }                                                                        \
  std::uint64_t w##_arena_boot(const baton_boot* b, int compact) {         \
    const struct w##_params p = w##_params_from(b);                        \
    return w##_validate(&p) != nullptr ? 0 : w##_arena_bytes(&p, compact); \
  }

BATON_WORKLOAD_ADAPTORS(memtouch)
BATON_WORKLOAD_ADAPTORS(checksum)
BATON_WORKLOAD_ADAPTORS(pagewalk)
BATON_WORKLOAD_ADAPTORS(mixed)
#undef BATON_WORKLOAD_ADAPTORS

// Validates io's parameters.
const char* io_validate_boot(const baton_boot* b) {
  const struct io_params p = io_params_from(b);
  return io_validate(&p);
}

// Validates tsc's parameters.
const char* tsc_validate_boot(const baton_boot* b) {
  const struct tsc_params p = tsc_params_from(b);
  return tsc_validate(&p);
}

// Returns zero: a workload without a working set.
std::uint64_t no_arena(const baton_boot*, int) { return 0; }

const WorkloadOps kWorkloads[] = {
    {"memtouch", memtouch_main, memtouch_validate_boot, memtouch_arena_boot},
    {"checksum", checksum_main, checksum_validate_boot, checksum_arena_boot},
    {"pagewalk", pagewalk_main, pagewalk_validate_boot, pagewalk_arena_boot},
    {"io", io_main, io_validate_boot, no_arena},
    {"tsc", tsc_main, tsc_validate_boot, no_arena},
    {"mixed", mixed_main, mixed_validate_boot, mixed_arena_boot},
};

}  // namespace

baton_boot boot_with_params(std::span<const Param> params) {
  baton_boot b{};
  b.magic = BATON_BOOT_MAGIC;
  b.version = BATON_BOOT_VERSION;
  b.size = sizeof b;
  const std::size_t n = std::min<std::size_t>(params.size(), BATON_BOOT_MAX_PARAMS);
  for (std::size_t i = 0; i < n; ++i) {
    std::memcpy(b.params[i].key, params[i].key.data(),
                std::min<std::size_t>(params[i].key.size(), BATON_PARAM_KEY_LEN - 1));
    b.params[i].value = params[i].value;
  }
  b.param_count = static_cast<std::uint32_t>(n);
  return b;
}

const WorkloadOps* find_workload(std::string_view name) {
  for (const WorkloadOps& w : kWorkloads)
    if (name == w.name) return &w;
  return nullptr;
}

}  // namespace baton::guests::detail
