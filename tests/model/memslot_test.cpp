// Memslots and the owner map.
#include <catch2/catch.hpp>

#include "baton/model/memslot.hpp"

using namespace baton::model;

TEST_CASE("overlapping, misaligned or duplicate memslots are rejected with a reason") {
  std::vector<Memslot> s{{0, Gpa{0}, 0x100000, Hpa{0x1000000}, false, false}};
  CHECK(validate_memslots(s).empty());
  s.push_back({1, Gpa{0x80000}, 0x1000, Hpa{0x2000000}, false, false});
  CHECK_THAT(validate_memslots(s), Catch::Contains("overlap"));
  s[1].gpa = Gpa{0x100000};
  s[1].hpa = Hpa{0x1000000};
  CHECK_THAT(validate_memslots(s), Catch::Contains("share host memory"));
  s[1].hpa = Hpa{0x2000800};
  CHECK_THAT(validate_memslots(s), Catch::Contains("aligned"));
  s[1].hpa = Hpa{0x2000000};
  s[1].id = 0;
  CHECK_THAT(validate_memslots(s), Catch::Contains("twice"));
}

TEST_CASE("memslot lookup finds the slot and its host address") {
  std::vector<Memslot> s{{0, Gpa{0}, 0x100000, Hpa{0x1000000}, false, false},
                         {1, Gpa{0x200000}, 0x1000, Hpa{0x3000000}, true, false}};
  REQUIRE(find_memslot(s, Gpa{0x200800}) != nullptr);
  CHECK(find_memslot(s, Gpa{0x200800})->hpa_at(Gpa{0x200800}) == Hpa{0x3000800});
  CHECK(find_memslot(s, Gpa{0x100000}) == nullptr);
  CHECK_FALSE(find_memslot(s, Gpa{0x200000})->max_perms().w);
}

TEST_CASE("owner ranges replace what they cover and coalesce with equal neighbours") {
  OwnerMap m;
  m.assign(Hfn{100}, 100, OwnerKind::kGuestRam, 1);
  m.assign(Hfn{150}, 10, OwnerKind::kEptTable, 1);
  CHECK(m.ranges().size() == 3);
  CHECK(m.owner_of(Hfn{155}).kind == OwnerKind::kEptTable);
  CHECK(m.owner_of(Hfn{149}).kind == OwnerKind::kGuestRam);
  CHECK(m.owner_of(Hfn{160}).kind == OwnerKind::kGuestRam);
  CHECK(m.owner_of(Hfn{99}).kind == OwnerKind::kFree);
  CHECK(m.owner_of(Hfn{200}).kind == OwnerKind::kFree);
  m.assign(Hfn{150}, 10, OwnerKind::kGuestRam, 1);
  CHECK(m.ranges().size() == 1);
  m.assign(Hfn{0}, 1000, OwnerKind::kFree);
  CHECK(m.ranges().empty());
  for (OwnerKind k : {OwnerKind::kGuestRam, OwnerKind::kEptTable, OwnerKind::kVmcs, OwnerKind::kHypervisor, OwnerKind::kOtherVm})
    CHECK(owner_kind_from_string(to_string(k)) == k);
  CHECK_FALSE(owner_kind_from_string("nonsense").has_value());
}
