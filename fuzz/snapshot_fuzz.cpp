// Fuzz target: the snapshot reader must reject any malformed input with an error, never crash.
// Each input is tried as it is and repaired (docs/formats.md): `json_len` cut to what the file
// holds, `pages_len` set to what follows the JSON, and the header checksum recomputed, so that
// mutations get past the container checks into the JSON, zstd and consistency checks.
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "baton/model/mapping_set.hpp"
#include "baton/model/snapshot_io.hpp"

namespace {
std::size_t reached = 0;  // repaired inputs whose header, lengths and checksum are sound
std::size_t decoded = 0;  // inputs that decoded, as they were or repaired

constexpr std::size_t kHeader = 48, kJsonLenAt = 16, kPagesLenAt = 32, kChecksumAt = 40;

// Decodes one input and, if it decodes, normalises its tree too.
void try_decode(std::span<const std::uint8_t> bytes) {
  auto s = baton::model::decode_snapshot(bytes);
  if (!s.ok()) return;
  ++decoded;
  (void)baton::model::MappingSet::from_tree(s->eptp, s->tables, s->ept_config);
}

// Reads a little-endian integer of `n` bytes.
std::uint64_t le(const std::uint8_t* p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// Writes a little-endian 64-bit integer.
void put64(std::uint8_t* p, std::uint64_t v) {
  for (unsigned i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// Whether a repaired input passes the checks in front of the decoders: magic, version 1,
// header size 48 (the lengths and the checksum are sound by construction).
bool container_ok(const std::vector<std::uint8_t>& d) {
  return std::memcmp(d.data(), "BATONSNP", 8) == 0 && le(d.data() + 8, 4) == 1 && le(d.data() + 12, 4) == kHeader;
}
}  // namespace

// The inputs that reached the decoders and that decoded (read by the standalone driver).
extern "C" void BatonFuzzCounts(std::size_t* r, std::size_t* d) {
  *r = reached;
  *d = decoded;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try_decode(std::span<const std::uint8_t>(data, size));
  if (size >= kHeader) {
    std::vector<std::uint8_t> fixed(data, data + size);
    const std::uint64_t body = size - kHeader;
    const std::uint64_t json_len = std::min<std::uint64_t>(le(fixed.data() + kJsonLenAt, 8), body);
    put64(fixed.data() + kJsonLenAt, json_len);
    put64(fixed.data() + kPagesLenAt, body - json_len);
    put64(fixed.data() + kChecksumAt, XXH64(fixed.data() + kHeader, body, 0));
    reached += container_ok(fixed);
    try_decode(fixed);
  }
  return 0;
}
