// Reading and writing snapshot files (format documented in docs/formats.md), and importing
// raw EPT dumps from other hypervisors.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::model {

inline constexpr std::uint32_t kSnapshotFormatVersion = 1;
// One record of a raw EPT dump: an 8-byte little-endian HPA and the 4096-byte page.
inline constexpr std::size_t kRawRecordSize = 8 + 4096;
// The most pages a raw dump (and a snapshot) may hold.
inline constexpr std::uint64_t kMaxRawPages = std::uint64_t{1} << 24;

// Serialises a snapshot into bytes (header, JSON metadata, zstd-compressed table pages).
std::vector<std::uint8_t> encode_snapshot(const HandoverSnapshot& s);
// Parses bytes into a snapshot. Truncated, corrupted or wrong-version input gives one Error.
Result<HandoverSnapshot> decode_snapshot(std::span<const std::uint8_t> bytes);

// Writes a snapshot file atomically (baton/model/file_io.hpp: temporary file with a random
// name, no-replace rename); refuses to overwrite unless asked.
Result<void> save_snapshot(const HandoverSnapshot& s, const std::string& path, bool overwrite = false);
// Writes two snapshots (a handover pair) so that both files appear or neither does.
Result<void> save_snapshot_pair(const HandoverSnapshot& a, const std::string& path_a, const HandoverSnapshot& b,
                                const std::string& path_b, bool overwrite = false);
// Reads a snapshot file, checking its header before its body; errors name the file.
Result<HandoverSnapshot> load_snapshot(const std::string& path);

// What a raw import needs besides the pages: the EPTP, the spec and the EPT capabilities of
// the host the dump came from (they decide reserved bits and execute-only verdicts).
struct RawImport {
  std::uint64_t eptp = 0;
  std::vector<Memslot> memslots;
  std::vector<GpaRange> mmio;
  OwnerMap owners;
  EptConfig cfg;  // MAXPHYADDR, execute-only support, mode-based execute control
};
// Builds a snapshot from a raw dump: records of an 8-byte little-endian HPA followed by the
// 4096 bytes of that page (read in place; only the pages reachable from the root are kept).
// The capabilities are recorded in the snapshot.
Result<HandoverSnapshot> import_raw(std::span<const std::uint8_t> pages, const RawImport& in);
// The same with memslots and owners as small JSON documents (may be empty) and default
// capabilities.
Result<HandoverSnapshot> import_raw(std::uint64_t eptp, std::span<const std::uint8_t> pages,
                                    const std::string& memslots_json, const std::string& owners_json);
// Parses memslots JSON: an array of memslots, or {"memslots": [...], "mmio": [...]}.
Result<std::pair<std::vector<Memslot>, std::vector<GpaRange>>> memslots_and_mmio_from_json(const std::string& text);

// JSON forms of the model values, for --json output and small input files.
std::string memslots_to_json(const std::vector<Memslot>& slots);
Result<std::vector<Memslot>> memslots_from_json(const std::string& text);
std::string owners_to_json(const OwnerMap& owners);
Result<OwnerMap> owners_from_json(const std::string& text);
std::string vcpu_to_json(const VcpuState& v);
Result<VcpuState> vcpu_from_json(const std::string& text);

// The most bytes a small input file (JSON memslots, owners, saved_tgids) may hold.
inline constexpr std::uint64_t kMaxSmallFile = std::uint64_t{64} << 20;
// Reads a whole regular file of at most kMaxSmallFile bytes; errors name the file.
Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path);

}  // namespace baton::model
