// Reading and writing snapshot files (format documented in docs/formats.md), and importing
// raw EPT dumps from other hypervisors.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::model {

inline constexpr std::uint32_t kSnapshotFormatVersion = 1;

// Serialises a snapshot into bytes (header, JSON metadata, zstd-compressed table pages).
std::vector<std::uint8_t> encode_snapshot(const HandoverSnapshot& s);
// Parses bytes into a snapshot. Truncated, corrupted or wrong-version input gives one Error.
Result<HandoverSnapshot> decode_snapshot(std::span<const std::uint8_t> bytes);

// Writes a snapshot file atomically (temporary file + rename); refuses to overwrite unless asked.
Result<void> save_snapshot(const HandoverSnapshot& s, const std::string& path, bool overwrite = false);
// Reads a snapshot file; errors name the file.
Result<HandoverSnapshot> load_snapshot(const std::string& path);

// Builds a snapshot from a raw dump: records of an 8-byte little-endian HPA followed by the
// 4096 bytes of that page. Memslots and owners come as small JSON documents (may be empty).
Result<HandoverSnapshot> import_raw(std::uint64_t eptp, std::span<const std::uint8_t> pages,
                                    const std::string& memslots_json, const std::string& owners_json);

// JSON forms of the model values, for --json output and small input files.
std::string memslots_to_json(const std::vector<Memslot>& slots);
Result<std::vector<Memslot>> memslots_from_json(const std::string& text);
std::string owners_to_json(const OwnerMap& owners);
Result<OwnerMap> owners_from_json(const std::string& text);
std::string vcpu_to_json(const VcpuState& v);
Result<VcpuState> vcpu_from_json(const std::string& text);

// Reads a whole file into bytes; errors name the file.
Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path);

}  // namespace baton::model
