// Private byte-level pieces of trace format v1 shared by the encoder, the decoder and the
// streaming writer (docs/trace-format.md). Not part of the public API.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "baton/model/result.hpp"
#include "baton/traces/trace.hpp"

namespace baton::traces::detail {

inline constexpr char kMagic[8] = {'B', 'A', 'T', 'O', 'N', 'T', 'R', 'C'};
inline constexpr std::size_t kPreludeSize = 32;                // magic, version, flags, json_len, json_xxh64
inline constexpr std::size_t kEventSize = 64;                  // one fixed-shape event record
inline constexpr std::size_t kChunkHeaderSize = 24;            // tag, count, raw_len, comp_len, xxh64
inline constexpr std::size_t kEndSize = 32;                    // tag, chunk_count, event_count, chain, xxh64
inline constexpr std::uint32_t kChunkTag = 0x4b4e4843;         // "CHNK" little-endian
inline constexpr std::uint32_t kEndTag = 0x444e4554;           // "TEND" little-endian
inline constexpr std::uint32_t kEventsPerChunk = 4096;         // what the writer uses
inline constexpr std::uint32_t kMaxEventsPerChunk = 1u << 16;  // what the reader accepts
inline constexpr std::uint64_t kMaxHeaderJson = 16u << 20;     // 16 MiB of header JSON
inline constexpr int kZstdLevel = 3;

// Appends a little-endian integer of `n` bytes.
void put_le(std::vector<std::uint8_t>& out, std::uint64_t v, unsigned n);
// Reads a little-endian integer of `n` bytes at `p`.
std::uint64_t get_le(const std::uint8_t* p, unsigned n);

// Renders the header as the JSON text stored in the file.
std::string header_to_json(const TraceHeader& h);
// Parses header JSON text; errors name the bad field.
Result<TraceHeader> header_from_json(const std::string& text);

// Builds the prelude plus header JSON that start every trace file.
std::vector<std::uint8_t> encode_prelude(const TraceHeader& h);
// Appends the fixed 64-byte record of one event.
void encode_event(std::vector<std::uint8_t>& out, const TraceEvent& e);
// Writes the 64-byte record of one event at `rec`.
void encode_event_at(std::uint8_t* rec, const TraceEvent& e);

// Compresses raw event records into one checksummed chunk appended to `out`; returns the
// chunk checksum (chained into the end marker).
std::uint64_t encode_chunk(std::vector<std::uint8_t>& out, const std::vector<std::uint8_t>& raw, std::uint32_t count,
                           void* cctx);
// Appends the end marker.
void encode_end(std::vector<std::uint8_t>& out, std::uint32_t chunks, std::uint64_t events, std::uint64_t chain);
// Folds one chunk checksum into the running chain value.
std::uint64_t chain_next(std::uint64_t chain, std::uint64_t chunk_sum);

// One chunk compressed ahead of writing: encode_chunk's bytes, its events and its checksum.
struct EncodedChunk {
  std::vector<std::uint8_t> bytes;
  std::uint32_t count = 0;
  std::uint64_t sum = 0;
};
// Writes a trace file from chunks compressed beforehand, in order (the streaming writer's
// bytes for the same events); frees each chunk's bytes once written.
Result<void> write_encoded_trace(const std::string& path, const TraceHeader& header, std::vector<EncodedChunk>& chunks,
                                 bool overwrite);

}  // namespace baton::traces::detail
