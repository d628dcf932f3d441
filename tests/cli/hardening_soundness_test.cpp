// Issue 12, items 1-4: never a wrong "equal" or "proven", and bounded work on legal but
// adversarial trees (absent frames, self-referencing roots, roots pointing back at themselves
// 511 times).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "baton/model/ept_walk.hpp"
#include "cli/hardening_fixtures.hpp"

using baton::test::run_limited;
using baton::test::ScratchDir;
namespace model = baton::model;
namespace t = baton::test;

namespace {
constexpr model::Hfn kRoot{0x1000}, kPdpt{0x1001}, kPd{0x1002};
constexpr std::uint64_t kRam = std::uint64_t{4} << 30;

// root[0] -> PDPT[0] -> PD; PD maps the first 1 GiB with 2 MiB leaves at RAM, except PD[17]
// (GPA 0x2200000..0x23fffff), which points at page table `pt`. Only frames the caller adds exist.
model::HandoverSnapshot pd_tree(model::Hfn pt) {
  model::HandoverSnapshot s = t::bare_snapshot();
  t::put_entry(s.tables, kRoot, 0, t::table_entry(kPdpt));
  t::put_entry(s.tables, kPdpt, 0, t::table_entry(kPd));
  for (unsigned i = 0; i < 512; ++i)
    t::put_entry(s.tables, kPd, i,
                 i == 17 ? t::table_entry(pt)
                         : model::EptEntry::leaf(2, model::Hpa{kRam + i * (std::uint64_t{2} << 20)},
                                                 model::Perms{true, true, true})
                               .raw());
  return s;
}
}  // namespace

TEST_CASE("ept diff and check agree: an absent table frame is never 'equal', not even against itself",
          "[cli][hardening][soundness]") {
  ScratchDir d;
  // A and B lack different page-table frames for the same GPA range.
  t::save_or_fail(pd_tree(model::Hfn{0x1050}), d / "a.snap");
  t::save_or_fail(pd_tree(model::Hfn{0x1060}), d / "b.snap");
  for (const auto& [x, y] : {std::pair{"a.snap", "b.snap"}, std::pair{"a.snap", "a.snap"}}) {
    CAPTURE(x, y);
    auto diff = run_limited(d, "ept diff " + (d / x) + " " + (d / y));
    INFO(diff.out << diff.err);
    CHECK(diff.code == 1);
    CHECK_THAT(diff.out, Catch::Contains("0x2200000 .. 0x23fffff") && Catch::Contains("unknown") &&
                             Catch::Contains("an absent frame can hold anything"));
    CHECK_THAT(diff.out, !Catch::Contains("equal:"));
    auto chk = run_limited(d, "check --properties equivalence " + (d / x) + " " + (d / y));
    INFO(chk.out << chk.err);
    CHECK(chk.code == 1);
    CHECK_THAT(chk.out, Catch::Contains("is absent"));
    auto j = run_limited(d, "ept diff --json " + (d / x) + " " + (d / y));
    REQUIRE(j.code == 1);
    const auto doc = nlohmann::json::parse(j.out);
    CHECK(doc["equal"] == false);
    CHECK(doc["unknown_ranges"] == 1);
  }
  // Control: with the page table present, both commands say equal / proven.
  model::HandoverSnapshot full = pd_tree(model::Hfn{0x1050});
  for (unsigned i = 0; i < 512; ++i)
    t::put_entry(full.tables, model::Hfn{0x1050}, i,
                 model::EptEntry::leaf(1, model::Hpa{kRam + 17 * (std::uint64_t{2} << 20) + i * 4096ull},
                                       model::Perms{true, true, true})
                     .raw());
  t::save_or_fail(full, d / "c.snap");
  t::save_or_fail(full, d / "c2.snap");
  auto eq = run_limited(d, "ept diff " + (d / "c.snap") + " " + (d / "c2.snap"));
  INFO(eq.out << eq.err);
  CHECK(eq.code == 0);
  CHECK_THAT(eq.out, Catch::StartsWith("equal:"));
  CHECK(run_limited(d, "check --properties equivalence " + (d / "c.snap") + " " + (d / "c2.snap")).code == 0);
}

TEST_CASE("check --no-copy: nothing mapped is inconclusive (exit 2), never proven", "[cli][hardening][soundness]") {
  ScratchDir d;
  // Two VMM processes that ran but installed no mapping.
  t::write_text_file(d / "empty.txt",
                     "# tracer: nop\n"
                     "   vcpu-101 (    100) [000] d..1.   10.000001: kvm_entry: vcpu 0, rip 0x401000\n"
                     "   vcpu-201 (    200) [001] d..1.   10.000002: kvm_entry: vcpu 0, rip 0x401000\n");
  REQUIRE(run_limited(d, "trace import " + (d / "empty.txt") + " " + (d / "empty.trc")).code == 0);
  auto r = run_limited(d, "check --no-copy " + (d / "empty.trc") + " --source 100 --dest 200");
  INFO(r.out << r.err);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Catch::Contains("inconclusive") && Catch::Contains("neither VM maps any gfn"));
  CHECK_THAT(r.out, !Catch::Contains("proven"));
}

TEST_CASE("check --no-copy: lines the import skipped make a proof inconclusive, and are counted",
          "[cli][hardening][soundness]") {
  ScratchDir d;
  const std::string local = t::slurp(std::string(BATON_CHECKER_DATA_DIR) + "/nocopy-local.txt");
  const std::string onediff = t::slurp(std::string(BATON_CHECKER_DATA_DIR) + "/nocopy-onediff.txt");
  REQUIRE(!local.empty());
  // The unmodified capture is proven (the control).
  t::write_text_file(d / "ok.txt", local);
  REQUIRE(run_limited(d, "trace import " + (d / "ok.txt") + " " + (d / "ok.trc")).code == 0);
  auto ok = run_limited(d, "check --no-copy " + (d / "ok.trc") + " --source 4242 --dest 4300");
  INFO(ok.out << ok.err);
  REQUIRE(ok.code == 0);
  CHECK_THAT(ok.out, !Catch::Contains("import skipped"));
  const std::string bad_line =
      "        baton-vcpu0-4303 (   4300) [000] ...1.  5021.400000: kvm_mmu_set_spte: gfn zz spte 6000001a2b01977 "
      "(rwx) level 1 at 1a0c03008\n";
  const std::string level_line =
      "        baton-vcpu0-4303 (   4300) [000] ...1.  5021.400001: kvm_mmu_set_spte: gfn 403 spte 6000001a2b03977 "
      "(rwx) level 4 at 1a0c03018\n";
  const std::pair<std::string, std::string> cases[] = {
      {local + bad_line, "1 malformed line"},
      {local + level_line, "1 leaf event of an unknown level"},
      {local + "garbage that is no trace line\n" + bad_line, "1 malformed line, 1 unknown line"},
  };
  for (const auto& [text, want] : cases) {
    CAPTURE(want);
    t::write_text_file(d / "c.txt", text);
    REQUIRE(run_limited(d, "trace import --force " + (d / "c.txt") + " " + (d / "c.trc")).code == 0);
    auto r = run_limited(d, "check --no-copy " + (d / "c.trc") + " --source 4242 --dest 4300");
    INFO(r.out << r.err);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Catch::Contains("inconclusive") && Catch::Contains(want));
    auto j = run_limited(d, "check --no-copy " + (d / "c.trc") + " --source 4242 --dest 4300 --json");
    REQUIRE(j.code == 2);
    CHECK(nlohmann::json::parse(j.out)["verdict"] == "unknown");
  }
  // A refutation stays a refutation, and still counts what was skipped.
  t::write_text_file(d / "r.txt", onediff + bad_line);
  REQUIRE(run_limited(d, "trace import " + (d / "r.txt") + " " + (d / "r.trc")).code == 0);
  auto r = run_limited(d, "check --no-copy " + (d / "r.trc") + " --source 4242 --dest 4300");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("import skipped 1 malformed line"));
}

namespace {
// A tree whose root entry 511 points back at the root (a self-referencing PML4, legal per the
// SDM), with root[0] -> PDPT -> 1 GiB leaf at RAM, and PDPT[1] -> PD whose entries map 2 MiB.
model::HandoverSnapshot self_ref_tree() {
  model::HandoverSnapshot s = t::bare_snapshot();
  t::put_entry(s.tables, kRoot, 0, t::table_entry(kPdpt));
  t::put_entry(s.tables, kRoot, 511, t::table_entry(kRoot));
  t::put_entry(s.tables, kPdpt, 0, model::EptEntry::leaf(3, model::Hpa{kRam}, model::Perms{true, true, true}).raw());
  t::put_entry(s.tables, kPdpt, 1, t::table_entry(kPd));
  for (unsigned i = 0; i < 8; ++i)
    t::put_entry(
        s.tables, kPd, i,
        model::EptEntry::leaf(2, model::Hpa{kRam + i * (std::uint64_t{2} << 20)}, model::Perms{true, false, true})
            .raw());
  return s;
}
}  // namespace

TEST_CASE("a self-referencing PML4 is legal: dump, diff and info follow the walks", "[cli][hardening][soundness]") {
  ScratchDir d;
  const model::HandoverSnapshot s = self_ref_tree();
  t::save_or_fail(s, d / "s.snap");
  t::save_or_fail(s, d / "s2.snap");
  auto dump = run_limited(d, "ept dump --json " + (d / "s.snap"));
  INFO(dump.out << dump.err);
  REQUIRE(dump.code == 0);
  // Every run of the normal form agrees with the SDM walk at its first and last byte.
  const auto runs = nlohmann::json::parse(dump.out)["runs"];
  CHECK(runs.size() > 3);
  bool saw_recursive = false;
  for (const auto& r : runs) {
    const std::uint64_t gpa = std::stoull(r["gpa"].get<std::string>(), nullptr, 16);
    const std::uint64_t size = std::stoull(r["size"].get<std::string>(), nullptr, 16);
    saw_recursive |= gpa >= (std::uint64_t{511} << 39);
    for (std::uint64_t g : {gpa, gpa + size - 1}) {
      CAPTURE(g);
      const model::WalkResult w = model::walk(s.eptp, model::Gpa{g}, model::Access::kRead, s.tables, s.ept_config);
      if (r["kind"] == "mapped") {
        REQUIRE(w.kind != model::WalkKind::kAbsentFrame);
        CHECK(w.hpa.value == std::stoull(r["hpa"].get<std::string>(), nullptr, 16) + (g - gpa));
      }
    }
  }
  CHECK(saw_recursive);
  auto diff = run_limited(d, "ept diff " + (d / "s.snap") + " " + (d / "s2.snap"));
  INFO(diff.out << diff.err);
  CHECK(diff.code == 0);
  CHECK_THAT(diff.out, Catch::StartsWith("equal:"));
  auto tree = run_limited(d, "ept dump --tree " + (d / "s.snap"));
  CHECK(tree.code == 0);
  CHECK_THAT(tree.out, Catch::Contains("      L1[511]"));  // the root read as a page table
  auto info = run_limited(d, "snapshot info " + (d / "s.snap"));
  CHECK(info.code == 0);
  CHECK(info.err.empty());
  auto chk = run_limited(d, "check --properties equivalence " + (d / "s.snap") + " " + (d / "s2.snap"));
  INFO(chk.out << chk.err);
  CHECK(chk.code == 0);
}

TEST_CASE("a root whose entries 1-511 point back at itself: bounded work, one clear line or a verdict",
          "[cli][hardening][resources]") {
  ScratchDir d;
  model::HandoverSnapshot s = t::bare_snapshot();
  t::put_entry(s.tables, kRoot, 0, t::table_entry(kPdpt));
  t::put_entry(s.tables, kPdpt, 0, model::EptEntry::leaf(3, model::Hpa{kRam}, model::Perms{true, true, true}).raw());
  for (unsigned i = 1; i < 512; ++i) t::put_entry(s.tables, kRoot, i, t::table_entry(kRoot));
  t::save_or_fail(s, d / "r.snap");
  t::save_or_fail(s, d / "r2.snap");
  // Runs that must end in time with one line and no allocator failure.
  auto bounded = [&](const std::string& args) {
    auto r = run_limited(d, args, 60, 3072);
    CAPTURE(args, r.code, r.seconds, r.err.substr(0, 400));
    CHECK(r.seconds < 30);
    CHECK((r.code == 0 || r.code == 1 || r.code == 2));
    CHECK_THAT(r.err, !Catch::Contains("bad_alloc") && !Catch::Contains("terminate"));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 1);
    return r;
  };
  auto dump = bounded("ept dump " + (d / "r.snap"));
  CHECK(dump.code == 2);
  CHECK_THAT(dump.err, Catch::StartsWith("baton: ") && Catch::Contains("baton's limit"));
  auto diff = bounded("ept diff " + (d / "r.snap") + " " + (d / "r2.snap"));
  CHECK(diff.code == 2);
  CHECK_THAT(diff.err, Catch::Contains("baton's limit"));
  auto tree = bounded("ept dump --tree " + (d / "r.snap"));
  CHECK(tree.code == 0);
  CHECK(tree.out.size() < 1000000);  // each table once per level; the walks number ~2^36
  CHECK_THAT(tree.out, Catch::Contains("shown above"));
  // The checker refutes what it can show (the root frame is mapped as guest memory) and never
  // proves a property it could not split completely.
  auto spec = bounded("check --spec " + (d / "r.snap"));
  CHECK(spec.code == 1);
  CHECK_THAT(spec.out, Catch::Contains("conformance      refuted"));
  auto pair = bounded("check " + (d / "r.snap") + " " + (d / "r2.snap"));
  CHECK(pair.code == 1);
  CHECK_THAT(pair.out, Catch::Contains("equivalence      proven"));
}
