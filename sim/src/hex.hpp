// A number as 0x-hex, for the simulator's messages (private to sim/).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace baton::sim {

inline std::string hexs(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace baton::sim
