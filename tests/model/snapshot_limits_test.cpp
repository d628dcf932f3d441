// Snapshot bodies that are well-formed JSON but say impossible things are refused: table frames
// out of order or beyond 52-bit addresses (issue 12, item 15).
#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>

#include "baton/model/sample.hpp"
#include "baton/model/snapshot_io.hpp"

using namespace baton::model;

namespace {
// Rewrites the JSON body of an encoded snapshot with `edit`, fixing the length and checksum.
template <typename F>
std::vector<std::uint8_t> with_json(const std::vector<std::uint8_t>& bytes, F edit) {
  std::uint64_t json_len = 0;
  std::memcpy(&json_len, bytes.data() + 16, 8);
  nlohmann::json j =
      nlohmann::json::parse(bytes.begin() + 48, bytes.begin() + 48 + static_cast<std::ptrdiff_t>(json_len));
  edit(j);
  const std::string body = j.dump();
  std::vector<std::uint8_t> out(bytes.begin(), bytes.begin() + 48);
  out.insert(out.end(), body.begin(), body.end());
  out.insert(out.end(), bytes.begin() + 48 + static_cast<std::ptrdiff_t>(json_len), bytes.end());
  const std::uint64_t n = body.size();
  std::memcpy(out.data() + 16, &n, 8);
  const std::uint64_t sum = XXH64(out.data() + 48, out.size() - 48, 0);
  std::memcpy(out.data() + 40, &sum, 8);
  return out;
}
}  // namespace

TEST_CASE("table frames must be listed once, ascending, and below 2^40") {
  SampleOptions so;
  so.mem_bytes = std::uint64_t{64} << 20;
  auto s = make_sample(so);
  REQUIRE(s.ok());
  const std::vector<std::uint8_t> bytes = encode_snapshot(*s);
  // The unedited body decodes (the control).
  REQUIRE(decode_snapshot(with_json(bytes, [](nlohmann::json&) {})).ok());
  auto swapped = decode_snapshot(with_json(bytes, [](nlohmann::json& j) {
    auto& f = j["table_frames"];
    REQUIRE(f.size() >= 2);
    std::swap(f[0], f[1]);
  }));
  REQUIRE_FALSE(swapped.ok());
  CHECK_THAT(swapped.error().message, Catch::Contains("not in ascending order"));
  auto absurd = decode_snapshot(with_json(bytes, [](nlohmann::json& j) {
    auto& f = j["table_frames"];
    f[f.size() - 1] = std::uint64_t{1} << 41;
  }));
  REQUIRE_FALSE(absurd.ok());
  CHECK_THAT(absurd.error().message, Catch::Contains("beyond 52-bit"));
  auto text = decode_snapshot(with_json(bytes, [](nlohmann::json& j) { j["table_frames"][0] = "many"; }));
  REQUIRE_FALSE(text.ok());
  CHECK_THAT(text.error().message, Catch::Contains("is not a frame number"));
  CHECK_THAT(text.error().message, !Catch::Contains("json.exception"));
}

TEST_CASE("library exception texts never reach the user: a bad number in a memslot is named") {
  SampleOptions so;
  so.mem_bytes = std::uint64_t{64} << 20;
  auto s = make_sample(so);
  REQUIRE(s.ok());
  const std::vector<std::uint8_t> bytes = encode_snapshot(*s);
  auto r = decode_snapshot(with_json(bytes, [](nlohmann::json& j) { j["memslots"][0]["gpa"] = "0xzz"; }));
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.error().message, Catch::Contains("field 'gpa' is not a number: 0xzz"));
  auto big =
      decode_snapshot(with_json(bytes, [](nlohmann::json& j) { j["memslots"][0]["gpa"] = "99999999999999999999999"; }));
  REQUIRE_FALSE(big.ok());
  CHECK_THAT(big.error().message, Catch::Contains("out of range") && !Catch::Contains("stoull"));
  auto kind = decode_snapshot(with_json(bytes, [](nlohmann::json& j) { j["vm_id"] = true; }));
  REQUIRE_FALSE(kind.ok());
  CHECK_THAT(kind.error().message, !Catch::Contains("[json.exception"));
  auto noid = memslots_and_mmio_from_json(R"([{"gpa": "0x0", "size": "0x1000", "hpa": "0x1000"}])");
  REQUIRE_FALSE(noid.ok());
  CHECK_THAT(noid.error().message, Catch::Contains("memslot #0 has no 'id'"));
}
