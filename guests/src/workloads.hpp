// Internal: the C workloads (guests/abi/workloads/*.h) behind one function table, for the
// registry's checks and the host reference. Not part of the public API.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "baton/guests/loader.hpp"
#include "baton_abi.h"

namespace baton::guests::detail {

// The entry points of one workload, as compiled into the host.
struct WorkloadOps {
  const char* name;
  // The guest's main: reads parameters from the boot page and runs in the environment.
  int (*main)(const baton_boot* boot, baton_env* env);
  // Returns why the parameters in the boot page are invalid, or nullptr.
  const char* (*validate)(const baton_boot* boot);
  // Returns the working-set bytes the workload needs (compact: the host reference's form).
  std::uint64_t (*arena_bytes)(const baton_boot* boot, int compact);
};

// Returns the workload of a built-in guest, or nullptr.
const WorkloadOps* find_workload(std::string_view name);

// Returns a boot page carrying only these parameters (keys already validated), the
// rest zero except magic, version and size.
baton_boot boot_with_params(std::span<const Param> params);

}  // namespace baton::guests::detail
