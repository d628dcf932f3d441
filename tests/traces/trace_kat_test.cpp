// The trace format against a known-answer file (tests/traces/data/known-answer.trace), so that
// any change to the format fails here and not only in an encode/decode round trip. The prelude,
// chunk header, end marker and event records are read at the offsets of docs/trace-format.md
// without the reader; every literal below was checked by hand against docs/trace-format.md
// with scripts/check-format-kat.py, an independent Python reader with its own XXH64 that
// decompresses with the zstd command (docs/testing.md, "Known-answer files").
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <string>

#include "baton/traces/trace.hpp"
#include "traces/trace_kat.hpp"

using namespace baton;

namespace {

// The known-answer file's bytes.
std::vector<std::uint8_t> kat_bytes() {
  std::ifstream in(std::string(BATON_TRACES_DATA_DIR) + "/known-answer.trace", std::ios::binary);
  REQUIRE(in);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A little-endian integer of `n` bytes at `at`.
std::uint64_t le(const std::vector<std::uint8_t>& b, std::size_t at, unsigned n) {
  REQUIRE(at + n <= b.size());
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{b[at + i]} << (8 * i);
  return v;
}

// The bytes [at, at + n) as a string.
std::string text(const std::vector<std::uint8_t>& b, std::size_t at, std::size_t n) {
  REQUIRE(at + n <= b.size());
  return std::string(b.begin() + static_cast<long>(at), b.begin() + static_cast<long>(at + n));
}

constexpr std::size_t kJsonLen = 204, kChunkAt = 32 + kJsonLen, kCompLen = 133, kEndAt = kChunkAt + 24 + kCompLen;

}  // namespace

TEST_CASE("the known-answer trace has the prelude, chunk and end marker of docs/trace-format.md", "[trace][format]") {
  const auto b = kat_bytes();
  REQUIRE(b.size() == 425);
  // Prelude.
  CHECK(text(b, 0, 8) == "BATONTRC");
  CHECK(le(b, 8, 4) == 1);  // version
  CHECK(le(b, 12, 4) == 0);  // flags
  CHECK(le(b, 16, 8) == kJsonLen);
  CHECK(le(b, 24, 8) == 0xfb05c0701e280931ull);  // XXH64(bytes 8..24 ++ JSON)
  const std::string json = text(b, 32, kJsonLen);
  CHECK(json.front() == '{');
  CHECK(json.back() == '}');
  for (const char* want : {"\"format\":\"baton-trace\"", "\"version\":1", "\"source\":\"baton-sim\"", "\"guest\":\"io\"",
                           "\"time_unit\":\"cycles\"", "\"params\":{\"pages\":\"4k\"}", "\"meta\":{\"note\":\"known answer\"}",
                           "\"cost_profile\":\"\"", "\"event_size\":64", "\"events_per_chunk\":4096"}) {
    CAPTURE(want);
    CHECK(json.find(want) != std::string::npos);
  }
  // One chunk of five events.
  CHECK(text(b, kChunkAt, 4) == "CHNK");
  CHECK(le(b, kChunkAt, 4) == 0x4b4e4843u);
  CHECK(le(b, kChunkAt + 4, 4) == 5);        // count
  CHECK(le(b, kChunkAt + 8, 4) == 5 * 64);   // raw_len
  CHECK(le(b, kChunkAt + 12, 4) == kCompLen);
  CHECK(le(b, kChunkAt + 16, 8) == 0x6cf77ea4134e5636ull);
  CHECK(le(b, kChunkAt + 24, 4) == 0xFD2FB528u);  // a zstd frame (RFC 8878 magic)
  // The end marker closes the file.
  CHECK(text(b, kEndAt, 4) == "TEND");
  CHECK(le(b, kEndAt + 4, 4) == 1);  // chunks
  CHECK(le(b, kEndAt + 8, 8) == 5);  // events
  CHECK(le(b, kEndAt + 16, 8) == 0x131b3b533f27ed6bull);  // chain over the one chunk checksum
  CHECK(le(b, kEndAt + 24, 8) == 0x6db23cba945ec5f0ull);
  CHECK(kEndAt + 32 == b.size());
}

TEST_CASE("the known-answer trace decodes to the hand-built trace, event field by field", "[trace][format]") {
  auto t = traces::decode_trace(kat_bytes());
  INFO((t ? "" : t.error().message));
  REQUIRE(t.ok());
  CHECK(t->header == testing::known_answer_trace().header);
  REQUIRE(t->events.size() == 5);
  using traces::EventType;
  // The records as docs/trace-format.md lays them out ("Event types").
  const traces::TraceEvent& x = t->events[0];
  CHECK(x.type == EventType::kExit);
  CHECK((x.vm == 1 && x.vcpu == 0 && x.time == 100 && x.insn == 10));
  CHECK((x.code == 48 && x.flags == 0 && x.a == 0x181 && x.b == 0x5000 && x.c == 0x401000));
  const traces::TraceEvent& s = t->events[1];
  CHECK(s.type == EventType::kEptSet);
  CHECK((s.time == 200 && s.code == 1 && s.flags == 7 && s.a == 0x5 && s.b == 0x1005 && s.c == 0));
  const traces::TraceEvent& io = t->events[2];
  CHECK(io.type == EventType::kIo);
  CHECK((io.time == 300 && io.insn == 20 && io.code == 0x510 && io.flags == 0x400 && io.a == 0xCAFE));
  const traces::TraceEvent& sy = t->events[3];
  CHECK(sy.type == EventType::kSync);
  CHECK((sy.time == 400 && sy.insn == 30 && sy.a == 2));
  const traces::TraceEvent& cl = t->events[4];
  CHECK(cl.type == EventType::kEptClear);
  CHECK((cl.time == 500 && cl.code == 2 && cl.a == 0x200));
  CHECK(t->events == testing::known_answer_trace().events);
}

TEST_CASE("the hand-built trace encodes to the known-answer file byte for byte", "[trace][format]") {
  const auto want = kat_bytes();
  const auto got = traces::encode_trace(testing::known_answer_trace());
  REQUIRE(got.size() == want.size());
  std::size_t first_diff = got.size();
  for (std::size_t i = 0; i < got.size() && first_diff == got.size(); ++i)
    if (got[i] != want[i]) first_diff = i;
  CAPTURE(first_diff);
  CHECK(first_diff == got.size());
}
