// Properties 2-5 (refinement, conformance, isolation, well-formedness), each proven and refuted
// on purpose, and the handover/spec checks on sample snapshots.
#include <catch2/catch.hpp>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "baton/model/sample.hpp"
#include "fixtures.hpp"
#include "require_property.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {
// A sample snapshot, required to build.
model::HandoverSnapshot sample(std::uint64_t mem, unsigned level = 1, std::uint64_t seed = 1) {
  model::SampleOptions o;
  o.mem_bytes = mem;
  o.leaf_level = level;
  o.seed = seed;
  auto s = model::make_sample(o);
  INFO((s ? "" : s.error().message));
  REQUIRE(s.ok());
  return std::move(s).value();
}
}  // namespace

TEST_CASE("A sample snapshot is proven conformant, isolated and well-formed", "[checker][spec]") {
  for (unsigned level : {1u, 2u}) {
    const model::HandoverSnapshot s = sample(64 * kMiB, level);
    auto rep = checker::check_spec(s, checker::spec_properties());
    REQUIRE(rep.ok());
    // One result per spec property, in order: conformance, isolation, well-formedness.
    REQUIRE(rep->results.size() == 3);
    CHECK(rep->results[0].property == checker::Property::kConformance);
    CHECK(rep->results[1].property == checker::Property::kIsolation);
    CHECK(rep->results[2].property == checker::Property::kWellFormed);
    for (const auto& r : rep->results) {
      CAPTURE(level, checker::to_string(r.property), r.summary);
      CHECK(r.verdict == Verdict::kProven);
    }
    const checker::TreeRef t = checker::tree_of(s, "sample");
    CHECK(checker::concrete_conformance(t, s.memslots)->holds);
    CHECK(checker::concrete_isolation(t, s.owners, s.vm_id)->holds);
    CHECK(checker::concrete_wellformed(t, s.mmio)->holds);
  }
}

TEST_CASE("A leaf that points outside its memslot is refuted for conformance", "[checker][conformance]") {
  Tree t = contiguous_tree(8 * kMiB, 1);
  model::HandoverSnapshot s = snapshot_of(t, 8 * kMiB);
  CHECK(ok(checker::check_conformance(t.ref("t"), s.memslots)).verdict == Verdict::kProven);
  t.flip(t.entry_addr(0x6000, 1), 20);
  const auto r = ok(checker::check_conformance(t.ref("t"), s.memslots));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x6000);
  CHECK(r.counterexample->confirmed_concretely);
  CHECK(r.summary.find("memslot 0 puts it at hpa") != std::string::npos);
}

TEST_CASE("A writable leaf in a read-only memslot is refuted for conformance", "[checker][conformance]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  s.memslots[0].size = 2 * kMiB;
  s.memslots.push_back(model::Memslot{1, model::Gpa{2 * kMiB}, 2 * kMiB, model::Hpa{4 * kGiB + 2 * kMiB}, true, false});
  const auto r = ok(checker::check_conformance(t.ref("t"), s.memslots));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->gpa->value >= 2 * kMiB);
  CHECK(r.summary.find("allows only r-x") != std::string::npos);
}

TEST_CASE("A mapping that spans two adjacent memslots is proven conformant by Z3", "[checker][conformance]") {
  Tree t = contiguous_tree(4 * kMiB, 2);  // one 2 MiB leaf straddles nothing, but the slots split at 1 MiB
  model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  s.memslots[0].size = 1 * kMiB;
  s.memslots.push_back(
      model::Memslot{1, model::Gpa{1 * kMiB}, 3 * kMiB, model::Hpa{4 * kGiB + 1 * kMiB}, false, false});
  const auto r = ok(checker::check_conformance(t.ref("t"), s.memslots));
  CHECK(r.verdict == Verdict::kProven);
  CHECK(r.stats.z3_queries >= 1);
  CHECK(checker::concrete_conformance(t.ref("t"), s.memslots)->holds);
}

TEST_CASE("A leaf that maps another VM's frame is refuted for isolation", "[checker][isolation]") {
  Tree t = contiguous_tree(8 * kMiB, 1);
  const model::HandoverSnapshot s = snapshot_of(t, 8 * kMiB);
  CHECK(ok(checker::check_isolation(t.ref("t"), s.owners, 1)).verdict == Verdict::kProven);
  REQUIRE(
      t.builder().set_entry(model::Gpa{0x9000}, 1, model::EptEntry::leaf(1, model::Hpa{2 * kGiB + 0x5000}, kRw)).ok());
  const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x9000);
  CHECK(r.summary.find("other-vm") != std::string::npos);
  CHECK_FALSE(checker::concrete_isolation(t.ref("t"), s.owners, 1)->holds);
}

TEST_CASE("A leaf into guest RAM that belongs to another VM is refuted for isolation", "[checker][isolation]") {
  // The frame is guest RAM, but of VM 2 (and of VM 3 once more): only VM 1's own RAM may be mapped.
  for (const std::uint32_t other : {2u, 3u}) {
    CAPTURE(other);
    Tree t = contiguous_tree(8 * kMiB, 1);
    model::HandoverSnapshot s = snapshot_of(t, 8 * kMiB);
    s.owners.assign(model::hfn_of(model::Hpa{6 * kGiB}), 256, model::OwnerKind::kGuestRam, other);
    CHECK(ok(checker::check_isolation(t.ref("t"), s.owners, 1)).verdict == Verdict::kProven);
    REQUIRE(
        t.builder().set_entry(model::Gpa{0x9000}, 1, model::EptEntry::leaf(1, model::Hpa{6 * kGiB + 0x5000}, kRw)).ok());
    const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x9000);
    CHECK(r.summary.find("guest-ram (vm " + std::to_string(other) + ")") != std::string::npos);
    CHECK(r.counterexample->confirmed_concretely);
    CHECK_FALSE(checker::concrete_isolation(t.ref("t"), s.owners, 1)->holds);
  }
}

TEST_CASE("A leaf that maps the EPT's own table page is refuted for isolation", "[checker][isolation]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  const model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  REQUIRE(
      t.builder().set_entry(model::Gpa{0x1000}, 1, model::EptEntry::leaf(1, model::hpa_of(t.eptp.root()), kRw)).ok());
  const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.summary.find("ept-table") != std::string::npos);
}

TEST_CASE("A table pointer into guest RAM is refuted for isolation", "[checker][isolation]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  const model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  // Copy a page table into a guest RAM frame and point the PDE at the copy: the guest could
  // now rewrite its own translations.
  const model::Hpa pde = t.entry_addr(0, 2);
  const model::Hfn pt = model::EptEntry{t.read(pde)}.table_hfn();
  const model::Hfn ram{(4 * kGiB >> 12) + 100};
  std::memcpy(t.mem.frame_mut(ram), t.mem.frame(pt), model::kPageSize);
  t.mem.write_u64(pde, model::EptEntry::table(ram, kRwx).raw());
  const Tree orig = contiguous_tree(4 * kMiB, 1);
  CHECK(ok(checker::check_equivalence(orig.ref("before"), t.ref("after"))).verdict ==
        Verdict::kProven);  // same translation
  const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->gpa->value < 2 * kMiB);
  CHECK(r.summary.find("guest-ram") != std::string::npos);
  CHECK_FALSE(checker::concrete_isolation(t.ref("t"), s.owners, 1)->holds);
}

TEST_CASE("Two guest frames mapping one host frame are refuted for isolation with both GPAs", "[checker][isolation]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  const model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  REQUIRE(t.builder()
              .set_entry(model::Gpa{0x300000}, 1, model::EptEntry::leaf(1, model::Hpa{4 * kGiB + 0x7000}, kRw))
              .ok());
  const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  REQUIRE(r.counterexample->gpa2);
  const std::uint64_t a = r.counterexample->gpa->value & ~model::kPageMask;
  const std::uint64_t b = r.counterexample->gpa2->value & ~model::kPageMask;
  CHECK(std::min(a, b) == 0x7000);
  CHECK(std::max(a, b) == 0x300000);
  CHECK(r.counterexample->confirmed_concretely);
  CHECK_FALSE(checker::concrete_isolation(t.ref("t"), s.owners, 1)->holds);
}

TEST_CASE("An undeclared misconfiguration is refuted for well-formedness; a declared MMIO one is not",
          "[checker][wellformed]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  REQUIRE(t.builder().set_entry(model::Gpa{0x3000}, 1, model::EptEntry{0x6}).ok());
  std::vector<model::GpaRange> mmio{{model::Gpa{0x3000}, model::kPageSize}};
  CHECK(ok(checker::check_wellformed(t.ref("t"), mmio)).verdict == Verdict::kProven);
  mmio.clear();
  const auto r = ok(checker::check_wellformed(t.ref("t"), mmio));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x3000);
  CHECK(r.summary.find("write permitted without read") != std::string::npos);
}

TEST_CASE("An invalid EPTP is refuted for well-formedness with the EPTP as the field", "[checker][wellformed]") {
  Tree t = contiguous_tree(2 * kMiB, 1);
  checker::TreeRef ref = t.ref("t");
  ref.eptp = model::Eptp{(t.eptp.raw() & ~0x38ull) | (2u << 3)};  // walk length 3: not 4-level
  const auto r = ok(checker::check_wellformed(ref, {}));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "eptp");
  CHECK(r.summary.find("page-walk length") != std::string::npos);
  CHECK_FALSE(checker::concrete_wellformed(ref, {})->holds);
}

TEST_CASE("A lazily rebuilt tree that maps a subset of the old one is proven a refinement", "[checker][refinement]") {
  Tree before = contiguous_tree(8 * kMiB, 2, 4 * kGiB, 0x40000);
  Tree after = empty_tree(0x80000);
  map(after, 0x200000, 4 * kGiB + 0x200000, 0x3000, 1);  // three refaulted pages
  map(after, 0x600000, 4 * kGiB + 0x600000, 2 * kMiB, 2);
  const model::HandoverSnapshot s = snapshot_of(before, 8 * kMiB);
  const auto r = ok(checker::check_refinement(before.ref("before"), after.ref("after"), s.memslots));
  CHECK(r.verdict == Verdict::kProven);
  CHECK(checker::concrete_refinement(before.ref("before"), after.ref("after"), s.memslots)->holds);
  // An empty new tree refines anything.
  Tree empty = empty_tree(0x90000);
  CHECK(ok(checker::check_refinement(before.ref("before"), empty.ref("after"), s.memslots)).verdict ==
        Verdict::kProven);
  // The old tree is not a refinement of the lazy one: it maps more.
  CHECK(ok(checker::check_equivalence(before.ref("before"), after.ref("after"))).verdict == Verdict::kRefuted);
}

TEST_CASE("A lazily rebuilt tree that maps a page differently is refuted as a refinement", "[checker][refinement]") {
  Tree before = contiguous_tree(8 * kMiB, 2, 4 * kGiB, 0x40000);
  Tree after = empty_tree(0x80000);
  map(after, 0x200000, 4 * kGiB + 0x201000, 0x1000, 1);  // off by one page
  const model::HandoverSnapshot s = snapshot_of(before, 8 * kMiB);
  const auto r = ok(checker::check_refinement(before.ref("before"), after.ref("after"), s.memslots));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x200000);
  CHECK_FALSE(checker::concrete_refinement(before.ref("before"), after.ref("after"), s.memslots)->holds);
}

TEST_CASE("A lazily rebuilt tree that maps outside the memslots is refuted as a refinement", "[checker][refinement]") {
  Tree before = contiguous_tree(8 * kMiB, 1, 4 * kGiB, 0x40000);
  map(before, 16 * kMiB, 5 * kGiB, 0x1000, 1);  // the old tree already maps beyond the slot
  Tree after = empty_tree(0x80000);
  map(after, 16 * kMiB, 5 * kGiB, 0x1000, 1);
  const model::HandoverSnapshot s = snapshot_of(before, 8 * kMiB);
  const auto r = ok(checker::check_refinement(before.ref("before"), after.ref("after"), s.memslots));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.summary.find("no memslot") != std::string::npos);
}

TEST_CASE("A sample handed over to a 2 MiB-leaf tree with a compensated TSC is proven on every property",
          "[checker][handover]") {
  const model::HandoverSnapshot before = sample(64 * kMiB, 1, 3);
  model::HandoverSnapshot after = sample(64 * kMiB, 2, 4);  // other table frames and A/D bits
  after.vcpus = before.vcpus;
  after.vmcs = before.vmcs;
  after.vcpus[0].host_tsc_at_capture += 123456;
  after.vcpus[0].tsc_offset -= 123456;
  after.vmcs.set(model::vmcs::kTscOffset, after.vcpus[0].tsc_offset);
  after.vmcs.set(model::vmcs::kEptPointer, after.eptp.raw());
  after.vmcs.set(model::vmcs::kHostRip, 0xFFFFFFFF81234567ull);  // host state may differ
  REQUIRE(before.eptp.root() != after.eptp.root());
  auto rep = checker::check_handover(before, after, checker::default_handover_properties(after));
  REQUIRE(rep.ok());
  for (const auto& r : rep->results) {
    CAPTURE(checker::to_string(r.property), r.summary);
    CHECK(r.verdict == Verdict::kProven);
  }
  CHECK(rep->overall() == Verdict::kProven);
  CHECK(rep->results.size() == 5);
}

TEST_CASE("A handover whose new tree lost a mapping is refuted on equivalence and on the EPTP root",
          "[checker][handover]") {
  const model::HandoverSnapshot before = sample(64 * kMiB, 1, 3);
  model::HandoverSnapshot after = sample(64 * kMiB, 2, 4);  // other table frames and A/D bits
  after.vcpus = before.vcpus;
  after.vmcs = before.vmcs;
  model::EptBuilder b(
      after.tables, [] { return model::Hfn{0}; }, after.eptp.root(), after.ept_config);
  REQUIRE(b.unmap(model::Gpa{0x1400000}));
  auto rep = checker::check_handover(before, after, checker::default_handover_properties(after));
  REQUIRE(rep.ok());
  CHECK(rep->overall() == Verdict::kRefuted);
  CHECK(rep->results[0].verdict == Verdict::kRefuted);
  CHECK((rep->results[0].counterexample->gpa->value >> 21) == (0x1400000 >> 21));
  CHECK(rep->results.back().property == checker::Property::kVcpu);
  CHECK(rep->results.back().verdict == Verdict::kRefuted);
  CHECK(rep->results.back().counterexample->field == "eptp.root");
}

TEST_CASE("A lazily refilled sample handover is proven with refinement in place of equivalence", "[checker][handover]") {
  const model::HandoverSnapshot before = sample(64 * kMiB, 1, 5);
  model::SampleOptions o;
  o.mem_bytes = 64 * kMiB;
  o.seed = 6;
  o.touched = 0.1;  // the new tree holds only the pages refaulted so far
  auto lazy = model::make_sample(o);
  REQUIRE(lazy.ok());
  model::HandoverSnapshot after = std::move(lazy).value();
  after.meta["method"] = "local-lazy";
  after.vcpus = before.vcpus;
  after.vmcs = before.vmcs;
  const auto props = checker::default_handover_properties(after);
  REQUIRE(props.front() == checker::Property::kRefinement);
  auto rep = checker::check_handover(before, after, props);
  REQUIRE(rep.ok());
  // Every requested property has its result, in the order asked.
  REQUIRE(rep->results.size() == props.size());
  CHECK(props.size() >= 5);
  for (std::size_t i = 0; i < props.size(); ++i) CHECK(rep->results[i].property == props[i]);
  for (const auto& r : rep->results) {
    CAPTURE(checker::to_string(r.property), r.summary);
    CHECK(r.verdict == Verdict::kProven);
  }
  CHECK(rep->overall() == Verdict::kProven);
  // The same pair is not equivalent: the lazy tree maps less.
  auto eq = checker::check_handover(before, after, {checker::Property::kEquivalence});
  REQUIRE(eq.ok());
  CHECK(eq->overall() == Verdict::kRefuted);
}
