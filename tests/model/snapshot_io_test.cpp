// Snapshot files: round trips, and every kind of corruption gives one clear error.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>

#include "baton/model/mapping_set.hpp"
#include "baton/model/sample.hpp"
#include "baton/model/snapshot_io.hpp"

using namespace baton::model;

namespace {
HandoverSnapshot small_sample(unsigned level = 1, std::uint64_t seed = 1) {
  SampleOptions o;
  o.mem_bytes = 64ull << 20;
  o.leaf_level = level;
  o.seed = seed;
  auto s = make_sample(o);
  REQUIRE(s.ok());
  return std::move(*s);
}
}  // namespace

TEST_CASE("a sample snapshot round-trips through the file format unchanged") {
  for (unsigned level = 1; level <= 3; ++level) {
    const HandoverSnapshot s = small_sample(level, level);
    const auto bytes = encode_snapshot(s);
    auto back = decode_snapshot(bytes);
    REQUIRE(back.ok());
    CHECK(back->eptp == s.eptp);
    CHECK(back->memslots == s.memslots);
    CHECK(back->mmio == s.mmio);
    CHECK(back->vcpus == s.vcpus);
    CHECK(back->vmcs == s.vmcs);
    CHECK(back->owners == s.owners);
    CHECK(back->meta == s.meta);
    CHECK(back->tables.frames() == s.tables.frames());
    for (Hfn f : s.tables.frames()) CHECK(std::memcmp(back->tables.frame(f), s.tables.frame(f), kPageSize) == 0);
    CHECK(*MappingSet::from_tree(back->eptp, back->tables) == *MappingSet::from_tree(s.eptp, s.tables));
  }
}

TEST_CASE("a sample maps exactly its memslots and marks its MMIO ranges") {
  const HandoverSnapshot s = small_sample();
  auto m = MappingSet::from_tree(s.eptp, s.tables, s.ept_config);
  REQUIRE(m.ok());
  std::uint64_t slot_bytes = 0;
  for (const Memslot& slot : s.memslots) {
    slot_bytes += slot.size;
    const auto r = m->lookup(slot.gpa);
    REQUIRE(r.has_value());
    CHECK(r->hpa_at(slot.gpa) == slot.hpa);
    CHECK(r->perms.w == !slot.read_only);
  }
  CHECK(m->mapped_bytes() == slot_bytes);
  for (const GpaRange& r : s.mmio) CHECK(m->lookup(r.gpa)->kind == RunKind::kMisconfig);
  // Every table frame is owned by the EPT; every RAM frame by guest RAM of VM 1.
  for (Hfn f : s.tables.frames()) CHECK(s.owners.owner_of(f).kind == OwnerKind::kEptTable);
  for (const Memslot& slot : s.memslots) CHECK(s.owners.owner_of(hfn_of(slot.hpa)).kind == OwnerKind::kGuestRam);
}

TEST_CASE("every truncation of a snapshot file is rejected with one error") {
  const auto bytes = encode_snapshot(small_sample());
  for (std::size_t cut : {std::size_t{0}, std::size_t{7}, std::size_t{47}, std::size_t{48}, bytes.size() / 2, bytes.size() - 1}) {
    CAPTURE(cut);
    auto r = decode_snapshot(std::span<const std::uint8_t>(bytes.data(), cut));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("corrupted bytes, a wrong magic and a wrong version are each named") {
  auto bytes = encode_snapshot(small_sample());
  auto flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x40;
  CHECK_THAT(decode_snapshot(flipped).error().message, Catch::Contains("checksum"));
  auto magic = bytes;
  magic[0] = 'X';
  CHECK_THAT(decode_snapshot(magic).error().message, Catch::Contains("magic"));
  auto version = bytes;
  version[8] = 9;
  CHECK_THAT(decode_snapshot(version).error().message, Catch::Contains("version 9"));
  auto trailing = bytes;
  trailing.push_back(0);
  CHECK_FALSE(decode_snapshot(trailing).ok());
}

TEST_CASE("saving refuses to overwrite an existing file unless forced") {
  const auto dir = std::filesystem::temp_directory_path() / ("baton-snap-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "a.snap").string();
  const HandoverSnapshot s = small_sample();
  REQUIRE(save_snapshot(s, path).ok());
  const auto size = std::filesystem::file_size(path);
  auto again = save_snapshot(small_sample(1, 2), path);
  REQUIRE_FALSE(again.ok());
  CHECK_THAT(again.error().message, Catch::Contains("already exists"));
  CHECK(std::filesystem::file_size(path) == size);
  CHECK(save_snapshot(s, path, true).ok());
  CHECK(load_snapshot(path).ok());
  CHECK_THAT(load_snapshot((dir / "missing.snap").string()).error().message, Catch::Contains("cannot open"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a raw dump imports to the same tree, and malformed dumps are rejected") {
  const HandoverSnapshot s = small_sample();
  std::vector<std::uint8_t> dump;
  for (Hfn f : s.tables.frames()) {
    const std::uint64_t hpa = hpa_of(f).value;
    const auto* p = reinterpret_cast<const std::uint8_t*>(&hpa);
    dump.insert(dump.end(), p, p + 8);
    dump.insert(dump.end(), s.tables.frame(f), s.tables.frame(f) + kPageSize);
  }
  auto imp = import_raw(s.eptp.raw(), dump, memslots_to_json(s.memslots), owners_to_json(s.owners));
  REQUIRE(imp.ok());
  CHECK(*MappingSet::from_tree(imp->eptp, imp->tables) == *MappingSet::from_tree(s.eptp, s.tables));
  CHECK(imp->memslots == s.memslots);
  CHECK(imp->owners == s.owners);
  CHECK_THAT(import_raw(s.eptp.raw(), std::span(dump.data(), dump.size() - 5), "", "").error().message,
             Catch::Contains("4104"));
  CHECK_THAT(import_raw(s.eptp.raw() + 0x1000, dump, "", "").error().message, Catch::Contains("root"));
  CHECK_THAT(import_raw(s.eptp.raw(), dump, "[{\"id\":0}]", "").error().message, Catch::Contains("memslots"));
  CHECK_THAT(import_raw(s.eptp.raw(), dump, "", "[{\"hpa\":\"0x1000\",\"size\":\"0x1000\",\"kind\":\"bogus\"}]").error().message,
             Catch::Contains("bogus"));
}

TEST_CASE("vcpu state survives the JSON form") {
  const HandoverSnapshot s = small_sample();
  VcpuState v = s.vcpus[0];
  v.xsave = {1, 2, 3, 0xFF};
  v.lapic.assign(1024, 0x5A);
  v.activity = ActivityState::kHlt;
  auto back = vcpu_from_json(vcpu_to_json(v));
  REQUIRE(back.ok());
  CHECK(*back == v);
  CHECK(diff_vcpu(v, *back).empty());
  VcpuState w = v;
  w.rip += 1;
  w.msrs[0x10] = 5;
  CHECK(diff_vcpu(v, w).size() == 2);
}
