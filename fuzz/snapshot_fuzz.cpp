// Fuzz target: the snapshot reader must reject any malformed input with an error, never crash.
// Each input is tried as it is and with its header checksum recomputed, so that mutations
// reach the JSON and page parsers behind the checksum.
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "baton/model/mapping_set.hpp"
#include "baton/model/snapshot_io.hpp"

namespace {
// Decodes one input and, if it decodes, normalises its tree too.
void try_decode(std::span<const std::uint8_t> bytes) {
  auto s = baton::model::decode_snapshot(bytes);
  if (s.ok()) (void)baton::model::MappingSet::from_tree(s->eptp, s->tables, s->ept_config);
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try_decode(std::span<const std::uint8_t>(data, size));
  constexpr std::size_t kHeader = 48, kChecksumAt = 40;
  if (size >= kHeader) {
    std::vector<std::uint8_t> fixed(data, data + size);
    const std::uint64_t sum = XXH64(fixed.data() + kHeader, size - kHeader, 0);
    std::memcpy(fixed.data() + kChecksumAt, &sum, 8);
    try_decode(fixed);
  }
  return 0;
}
