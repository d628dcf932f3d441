// Byte-level encoding of trace format v1: prelude, header JSON, event records, chunks and the
// end marker (docs/trace-format.md).
#include "trace_codec.hpp"

#include <bit>
#include <cstring>

#include <xxhash.h>
#include <zstd.h>

#include <nlohmann/json.hpp>

namespace baton::traces::detail {

using nlohmann::json;

void put_le(std::vector<std::uint8_t>& out, std::uint64_t v, unsigned n) {
  for (unsigned i = 0; i < n; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_le(const std::uint8_t* p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

std::string header_to_json(const TraceHeader& h) {
  json j;
  j["format"] = "baton-trace";
  j["version"] = kTraceFormatVersion;
  j["source"] = h.source;
  j["guest"] = h.guest;
  j["time_unit"] = h.time_unit;
  j["params"] = h.params;
  j["meta"] = h.meta;
  j["cost_profile"] = h.cost_profile;
  j["event_size"] = kEventSize;
  j["events_per_chunk"] = kEventsPerChunk;
  // Invalid UTF-8 in user strings is replaced rather than thrown on.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {
// Reads a string member that must be present.
std::string get_string(const json& j, const char* key) {
  if (!j.contains(key)) throw std::invalid_argument(std::string("header lacks '") + key + "'");
  const json& v = j.at(key);
  if (!v.is_string()) throw std::invalid_argument(std::string("header field '") + key + "' is not a string");
  return v.get<std::string>();
}

// Reads an object of string values that must be present.
std::map<std::string, std::string> get_string_map(const json& j, const char* key) {
  if (!j.contains(key)) throw std::invalid_argument(std::string("header lacks '") + key + "'");
  const json& v = j.at(key);
  if (!v.is_object()) throw std::invalid_argument(std::string("header field '") + key + "' is not an object");
  std::map<std::string, std::string> out;
  for (const auto& [k, val] : v.items()) {
    if (!val.is_string())
      throw std::invalid_argument(std::string("header field '") + key + "." + k + "' is not a string");
    out[k] = val.get<std::string>();
  }
  return out;
}
}  // namespace

Result<TraceHeader> header_from_json(const std::string& text) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("corrupted trace: the header is not a JSON object");
  try {
    if (get_string(j, "format") != "baton-trace")
      return make_error("corrupted trace: header format is not 'baton-trace'");
    if (!j.contains("version") || !j.at("version").is_number_unsigned() ||
        j.at("version").get<std::uint64_t>() != kTraceFormatVersion)
      return make_error("corrupted trace: header version disagrees with the file version");
    TraceHeader h;
    h.source = get_string(j, "source");
    h.guest = get_string(j, "guest");
    h.time_unit = get_string(j, "time_unit");
    h.params = get_string_map(j, "params");
    h.meta = get_string_map(j, "meta");
    h.cost_profile = get_string(j, "cost_profile");
    return h;
  } catch (const std::exception& e) {
    return make_error(std::string("corrupted trace: ") + e.what());
  }
}

std::vector<std::uint8_t> encode_prelude(const TraceHeader& h) {
  const std::string text = header_to_json(h);
  std::vector<std::uint8_t> out(kMagic, kMagic + 8);
  put_le(out, kTraceFormatVersion, 4);
  put_le(out, 0, 4);  // flags: none defined in v1
  put_le(out, text.size(), 8);
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, out.data() + 8, 16);
  XXH64_update(st, text.data(), text.size());
  put_le(out, XXH64_digest(st), 8);
  XXH64_freeState(st);
  out.insert(out.end(), text.begin(), text.end());
  return out;
}

void encode_event_at(std::uint8_t* rec, const TraceEvent& e) {
  // Little-endian integers copied as they lie in memory; padding bytes are zero.
  static_assert(std::endian::native == std::endian::little, "encode_event_at copies integers as they lie in memory");
  auto put = [rec](std::size_t at, auto v) { std::memcpy(rec + at, &v, sizeof v); };
  put(0, static_cast<std::uint32_t>(static_cast<std::uint8_t>(e.type)));  // type, then 3 bytes of zero
  put(4, e.vm);
  put(8, e.vcpu);
  put(12, e.code);
  put(16, e.flags);
  put(20, std::uint32_t{0});
  put(24, e.time);
  put(32, e.insn);
  put(40, e.a);
  put(48, e.b);
  put(56, e.c);
}

void encode_event(std::vector<std::uint8_t>& out, const TraceEvent& e) {
  std::uint8_t rec[kEventSize];
  encode_event_at(rec, e);
  out.insert(out.end(), rec, rec + kEventSize);
}

std::uint64_t encode_chunk(std::vector<std::uint8_t>& out, const std::vector<std::uint8_t>& raw, std::uint32_t count,
                           void* cctx) {
  // One scratch buffer per thread: a fresh 256 KiB one per chunk cost an mmap, page faults
  // and a munmap each time.
  thread_local std::vector<std::uint8_t> comp;
  const std::size_t bound = ZSTD_compressBound(raw.size());
  if (comp.size() < bound) comp.resize(bound);
  const std::size_t n =
      ZSTD_compressCCtx(static_cast<ZSTD_CCtx*>(cctx), comp.data(), bound, raw.data(), raw.size(), kZstdLevel);
  BATON_CHECK(!ZSTD_isError(n));  // compressing into a ZSTD_compressBound buffer cannot fail
  const std::size_t at = out.size();
  out.reserve(at + kChunkHeaderSize + n);
  put_le(out, kChunkTag, 4);
  put_le(out, count, 4);
  put_le(out, raw.size(), 4);
  put_le(out, n, 4);
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, out.data() + at + 4, 12);
  XXH64_update(st, comp.data(), n);
  const std::uint64_t sum = XXH64_digest(st);
  XXH64_freeState(st);
  put_le(out, sum, 8);
  out.insert(out.end(), comp.begin(), comp.begin() + static_cast<std::ptrdiff_t>(n));
  return sum;
}

void encode_end(std::vector<std::uint8_t>& out, std::uint32_t chunks, std::uint64_t events, std::uint64_t chain) {
  const std::size_t at = out.size();
  put_le(out, kEndTag, 4);
  put_le(out, chunks, 4);
  put_le(out, events, 8);
  put_le(out, chain, 8);
  put_le(out, XXH64(out.data() + at, 24, 0), 8);
}

std::uint64_t chain_next(std::uint64_t chain, std::uint64_t chunk_sum) {
  std::uint8_t buf[16];
  for (unsigned i = 0; i < 8; ++i) {
    buf[i] = static_cast<std::uint8_t>(chain >> (8 * i));
    buf[8 + i] = static_cast<std::uint8_t>(chunk_sum >> (8 * i));
  }
  return XXH64(buf, sizeof buf, 0);
}

}  // namespace baton::traces::detail
