// The snapshot format against a known-answer file (tests/model/data/known-answer.snap), so that
// any change to the format fails here and not only in an encode/decode round trip. The header
// is read at the offsets of docs/formats.md without the reader; every literal below was
// checked by hand against docs/formats.md with scripts/check-format-kat.py, an independent
// Python reader with its own XXH64 (docs/testing.md, "Known-answer files").
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "baton/model/snapshot_io.hpp"
#include "model/snapshot_kat.hpp"

using namespace baton;

namespace {

// The known-answer file's bytes.
std::vector<std::uint8_t> kat_bytes() {
  auto b = model::read_file_bytes(std::string(BATON_MODEL_DATA_DIR) + "/known-answer.snap");
  INFO((b ? "" : b.error().message));
  REQUIRE(b.ok());
  return *b;
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

}  // namespace

TEST_CASE("the known-answer snapshot has the header of docs/formats.md, field by field", "[snapshot][format]") {
  const auto b = kat_bytes();
  REQUIRE(b.size() == 2347);
  CHECK(text(b, 0, 8) == "BATONSNP");
  CHECK(le(b, 8, 4) == 1);     // format version
  CHECK(le(b, 12, 4) == 48);   // header size
  CHECK(le(b, 16, 8) == 2269); // json_len
  CHECK(le(b, 24, 8) == 2);    // page_count: the PML4 and the PDPT
  CHECK(le(b, 32, 8) == 30);   // pages_len: the zstd frame
  CHECK(le(b, 40, 8) == 0x24d2fc6ebfb1d427ull);  // XXH64 of bytes 48.. (checked by the Python reader)
  CHECK(48 + 2269 + 30 == b.size());            // the file ends right after the page block
  // The JSON body starts and ends at its bounds; the page block is one zstd frame (RFC 8878 magic).
  CHECK(text(b, 48, 16) == "{\"ept_config\":{\"");
  CHECK(b[48 + 2269 - 1] == '}');
  CHECK(le(b, 48 + 2269, 4) == 0xFD2FB528u);
  // Keys and hex-string values of the JSON body as docs/formats.md lists them.
  const std::string json = text(b, 48, 2269);
  for (const char* want : {"\"eptp\":\"0x100005e\"", "\"vm_id\":7", "\"table_frames\":[4096,4097]",
                           "\"vmcs\":{\"0x201a\":\"0x100005e\",\"0x681e\":\"0x200000\"}",
                           "\"mmio\":[{\"gpa\":\"0xfee00000\",\"size\":\"0x1000\"}]",
                           "{\"hpa\":\"0x1000000\",\"kind\":\"ept-table\",\"size\":\"0x2000\",\"vm\":7}",
                           "\"memslots\":[{\"dirty_log\":false,\"gpa\":\"0x0\",\"hpa\":\"0x40000000\",\"id\":0,"
                           "\"read_only\":false,\"size\":\"0x40000000\"}]",
                           "\"msrs\":{\"0x277\":\"0x7040600070406\"}", "\"activity\":\"active\"",
                           "\"tsc_offset\":\"0x10\"", "\"host_tsc_at_capture\":\"0x1234\"",
                           "\"meta\":{\"source\":\"known-answer\"}"}) {
    CAPTURE(want);
    CHECK(json.find(want) != std::string::npos);
  }
}

TEST_CASE("the known-answer snapshot decodes to the hand-built snapshot", "[snapshot][format]") {
  auto s = model::decode_snapshot(kat_bytes());
  INFO((s ? "" : s.error().message));
  REQUIRE(s.ok());
  const model::HandoverSnapshot want = testing::known_answer_snapshot();
  CHECK(s->vm_id == 7);
  CHECK(s->ept_config == want.ept_config);
  CHECK(s->eptp.raw() == 0x100005Eu);
  CHECK(s->memslots == want.memslots);
  CHECK(s->mmio == want.mmio);
  REQUIRE(s->vcpus.size() == 1);
  CHECK(s->vcpus[0] == want.vcpus[0]);
  CHECK(s->vmcs == want.vmcs);
  CHECK(s->owners == want.owners);
  CHECK(s->meta == want.meta);
  // The two table pages, entry 0 of each, and nothing else in them.
  std::uint64_t e = 0;
  REQUIRE(s->tables.read_u64(model::Hpa{0x1000000}, &e));
  CHECK(e == 0x1001007u);
  REQUIRE(s->tables.read_u64(model::Hpa{0x1001000}, &e));
  CHECK(e == 0x400000B7u);
  CHECK(s->tables.frames().size() == 2);
  for (std::uint64_t off = 8; off < 4096; off += 8) {
    s->tables.read_u64(model::Hpa{0x1000000 + off}, &e);
    CHECK(e == 0);
    s->tables.read_u64(model::Hpa{0x1001000 + off}, &e);
    CHECK(e == 0);
  }
}

TEST_CASE("the hand-built snapshot encodes to the known-answer file byte for byte", "[snapshot][format]") {
  const auto want = kat_bytes();
  const auto got = model::encode_snapshot(testing::known_answer_snapshot());
  REQUIRE(got.size() == want.size());
  std::size_t first_diff = got.size();
  for (std::size_t i = 0; i < got.size() && first_diff == got.size(); ++i)
    if (got[i] != want[i]) first_diff = i;
  CAPTURE(first_diff);
  CHECK(first_diff == got.size());
}

TEST_CASE("one flipped bit anywhere in the known-answer snapshot is refused", "[snapshot][format]") {
  const auto b = kat_bytes();
  // A bit in each region: header field, JSON body, zstd frame.
  for (const std::size_t at : {std::size_t{9}, std::size_t{20}, std::size_t{44}, std::size_t{100}, std::size_t{2000},
                               std::size_t{2330}, b.size() - 1}) {
    auto c = b;
    c[at] ^= 0x10;
    CAPTURE(at);
    CHECK_FALSE(model::decode_snapshot(c).ok());
  }
}
