// Reports: JSON for machines, a table for people, JUnit XML for CI, SMT-LIB2 of failing queries.
#include "baton/checker/report.hpp"

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "baton/checker/check.hpp"
#include "fixtures.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {
// A report with one refuted equivalence (a flipped frame bit) and one proven well-formedness.
checker::Report sample_report(bool keep_smt2) {
  Tree a = contiguous_tree(4 * kMiB, 1);
  Tree b = contiguous_tree(4 * kMiB, 1);
  b.flip(b.entry_addr(0x123000, 1), 14);
  checker::CheckOptions o;
  o.keep_smt2 = keep_smt2;
  checker::Report rep;
  rep.results.push_back(*checker::check_equivalence(a.ref("before"), b.ref("after"), o));
  rep.results.push_back(*checker::check_wellformed(b.ref("after"), {}, o));
  rep.seconds = 0.25;
  return rep;
}
}  // namespace

TEST_CASE("The JSON report carries verdicts, timing, stats and the walks of the counterexample", "[checker][report]") {
  const checker::Report rep = sample_report(false);
  const auto j = nlohmann::json::parse(checker::to_json(rep));
  CHECK(j["verdict"] == "refuted");
  REQUIRE(j["properties"].size() == 2);
  const auto& eq = j["properties"][0];
  CHECK(eq["property"] == "equivalence");
  CHECK(eq["verdict"] == "refuted");
  CHECK(eq["seconds"].get<double>() >= 0);
  CHECK(eq["stats"].contains("z3_queries"));
  CHECK(eq["counterexample"]["gpa"] == "0x123000");
  REQUIRE(eq["counterexample"]["walks"].size() == 2);
  CHECK(eq["counterexample"]["walks"][1]["tree"] == "after");
  CHECK(eq["counterexample"]["walks"][1]["steps"].size() == 4);
  CHECK(eq["counterexample"]["walks"][1]["steps"][3]["level"] == 1);
  CHECK(eq["counterexample"]["confirmed_concretely"] == true);
  CHECK(j["properties"][1]["verdict"] == "proven");
}

TEST_CASE("The text report names the GPA and shows both walks level by level", "[checker][report]") {
  const std::string t = checker::to_text(sample_report(false));
  CAPTURE(t);
  CHECK(t.find("equivalence      refuted") != std::string::npos);
  CHECK(t.find("well-formedness  proven") != std::string::npos);
  CHECK(t.find("GPA 0x123000") != std::string::npos);
  CHECK(t.find("L4 PML4E") != std::string::npos);
  CHECK(t.find("L1 PTE") != std::string::npos);
  CHECK(t.find("overall: refuted") != std::string::npos);
}

TEST_CASE("JUnit XML has one testcase per property and a failure for the refuted one", "[checker][report]") {
  const std::string x = checker::to_junit(sample_report(false));
  CAPTURE(x);
  CHECK(x.find("tests=\"2\" failures=\"1\" errors=\"0\"") != std::string::npos);
  CHECK(x.find("<testcase classname=\"baton.check\" name=\"equivalence\"") != std::string::npos);
  CHECK(x.find("<failure message=\"GPA 0x123000") != std::string::npos);
  CHECK(x.find("name=\"well-formedness\" time=") != std::string::npos);
  CHECK(checker::xml_escape("a<b & \"c\"") == "a&lt;b &amp; &quot;c&quot;");
}

TEST_CASE("write_smt2 saves the query of the refuted property and nothing for proven ones", "[checker][report]") {
  const checker::Report rep = sample_report(true);
  const auto dir = std::filesystem::temp_directory_path() / ("baton-smt2-" + std::to_string(::getpid()));
  auto n = checker::write_smt2(rep, dir.string());
  REQUIRE(n.ok());
  CHECK(*n == 1);
  std::ifstream f(dir / "equivalence.smt2");
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  CHECK(ss.str().find("(check-sat)") != std::string::npos);
  CHECK(ss.str().find("gpa") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "well-formedness.smt2"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("A report is refuted if any property is, else unknown if any is, else proven", "[checker][report]") {
  checker::Report r;
  CHECK(r.overall() == Verdict::kProven);
  r.results.resize(2);
  r.results[0].verdict = Verdict::kProven;
  r.results[1].verdict = Verdict::kUnknown;
  CHECK(r.overall() == Verdict::kUnknown);
  r.results[0].verdict = Verdict::kRefuted;
  CHECK(r.overall() == Verdict::kRefuted);
}
