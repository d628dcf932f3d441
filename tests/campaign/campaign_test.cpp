// Fault campaigns: the fault model, plans, outcomes with evidence, resumable runs and
// bit-identical merges (docs/user-guide.md, "Fault campaigns").
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <set>
#include <thread>

#include "baton/campaign/campaign.hpp"
#include "baton/guests/registry.hpp"
#include "cli/cli_run.hpp"

using namespace baton;
using baton::test::ScratchDir;
using baton::test::slurp;

namespace {

// A small memtouch: 16 MiB of memory, a 1 MiB working set touched twice.
campaign::GuestSpec small_guest() { return campaign::GuestSpec{"memtouch", {"size=1M", "passes=2"}, "16M", "4k", false}; }

campaign::Setup setup_of(const campaign::GuestSpec& g) {
  auto gd = guests::get_builtin(g.guest);
  REQUIRE(gd);
  auto ps = guests::resolve_params(**gd, g.params);
  REQUIRE(ps);
  guests::GuestConfig gc;
  gc.mem_size = 16ull << 20;
  gc.params = *ps;
  auto img = guests::load_builtin(g.guest, gc);
  REQUIRE(img);
  campaign::Setup s{std::move(*img), {}};
  s.cfg.guest_name = g.guest;
  return s;
}

campaign::PlanOptions ept_adopt_exhaustive() {
  campaign::PlanOptions o;
  o.guest = small_guest();
  o.methods = {sim::Method::kAdopt};
  o.targets = {campaign::Target::kEpt};
  o.exhaustive = true;
  return o;
}

std::size_t count_lines(const std::string& text) {
  std::size_t n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

}  // namespace

TEST_CASE("fault specs name every target, a level, and stuck bits - bad ones are refused") {
  auto f = sim::parse_fault("stuck1:ept:0x1000:3:2");
  REQUIRE(f);
  CHECK(f->kind == sim::FaultKind::kEptBit);
  CHECK(f->op == sim::FaultOp::kStuck1);
  CHECK(*f->gpa == 0x1000);
  CHECK(*f->bit == 3);
  CHECK(*f->level == 2);
  auto r = sim::parse_fault("reg:msr:0x277:5");
  REQUIRE(r);
  CHECK(r->kind == sim::FaultKind::kRegBit);
  CHECK(r->reg == "msr:0x277");
  CHECK(*r->bit == 5);
  auto m = sim::parse_fault("ram:0x100f:63");
  REQUIRE(m);
  CHECK(*m->gpa == 0x1008);  // the 8-byte word holding the address
  CHECK_FALSE(sim::parse_fault("ept:0x1000:3:5"));   // no level 5
  CHECK_FALSE(sim::parse_fault("reg:rxx:1"));        // no such register
  CHECK_FALSE(sim::parse_fault("reg:rip:64"));       // no bit 64
  CHECK_FALSE(sim::parse_fault("ram"));              // RAM needs its GPA
  CHECK(sim::apply_fault_op(0b1010, 1, sim::FaultOp::kFlip) == 0b1000);
  CHECK(sim::apply_fault_op(0b1010, 1, sim::FaultOp::kStuck1) == 0b1010);  // already 1: nothing changes
  CHECK(sim::apply_fault_op(0b1010, 1, sim::FaultOp::kStuck0) == 0b1000);
}

TEST_CASE("a plan is deterministic, its ids stable and unique - an exhaustive EPT plan covers one walk and the EPTP") {
  const campaign::Setup s = setup_of(small_guest());
  auto a = campaign::make_plan(ept_adopt_exhaustive(), s);
  auto b = campaign::make_plan(ept_adopt_exhaustive(), s);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(campaign::plan_text(*a) == campaign::plan_text(*b));
  CHECK(a->hash == b->hash);
  CHECK(a->faults.size() == 5 * 64);  // four levels of a 4 KiB walk and the EPTP, 64 bits each
  std::set<std::string> ids;
  for (const auto& f : a->faults) ids.insert(f.id);
  CHECK(ids.size() == a->faults.size());
  campaign::PlanOptions o = ept_adopt_exhaustive();
  o.exhaustive = false;
  o.samples = 40;
  o.targets = {campaign::Target::kEpt, campaign::Target::kRegs, campaign::Target::kRam};
  auto s1 = campaign::make_plan(o, s);
  o.seed = 2;
  auto s2 = campaign::make_plan(o, s);
  REQUIRE(s1);
  REQUIRE(s2);
  CHECK(s1->faults.size() == 40);
  CHECK(s1->hash != s2->hash);
  // Neither both nor none of --exhaustive and --samples.
  o.exhaustive = true;
  CHECK_FALSE(campaign::make_plan(o, s));
  // An early trigger must come before the migration point.
  o = ept_adopt_exhaustive();
  o.triggers = {"sync:1"};
  CHECK_FALSE(campaign::make_plan(o, s));
}

TEST_CASE("outcomes carry their evidence: a frame-bit flip in a leaf is refused by the checker, a D flag is masked") {
  const campaign::Setup s = setup_of(small_guest());
  auto plan = campaign::make_plan(ept_adopt_exhaustive(), s);
  REQUIRE(plan);
  const std::string gpa = [&] {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(plan->walk_gpa));
    return std::string(b);
  }();
  const auto* frame = campaign::find_fault(*plan, "local-adopt/handover/ept:" + gpa + ":12:1");
  const auto* dirty = campaign::find_fault(*plan, "local-adopt/handover/ept:" + gpa + ":9:1");
  REQUIRE(frame != nullptr);
  REQUIRE(dirty != nullptr);
  auto x = campaign::explain_fault(*plan, s, *frame);
  REQUIRE(x);
  const campaign::PolicyOutcome& rej = x->result.policy.at("reject");
  INFO(rej.evidence);
  CHECK(rej.outcome == "detected-checker");
  CHECK(std::find(rej.properties.begin(), rej.properties.end(), "conformance") != rej.properties.end());
  // Without the checker the guest reads its neighbour's page: a wrong checksum.
  REQUIRE(x->result.policy.count("accept"));
  CHECK(x->result.policy.at("accept").outcome == "sdc");
  CHECK(x->result.policy.at("fallback").guest == "ok");  // the rebuild washes it out
  auto y = campaign::explain_fault(*plan, s, *dirty);
  REQUIRE(y);
  CHECK(y->result.policy.at("reject").outcome == "masked");
  CHECK(y->result.policy.count("accept") == 0);  // the policy did not matter
}

TEST_CASE("a saved register flipped in the package is refused - the old instance finishes right") {
  const campaign::Setup s = setup_of(small_guest());
  campaign::PlanOptions o = ept_adopt_exhaustive();
  o.targets = {campaign::Target::kRegs};
  auto plan = campaign::make_plan(o, s);
  REQUIRE(plan);
  // RIP moved to a GPA no memslot covers: the new instance itself refuses the package.
  const auto* far = campaign::find_fault(*plan, "local-adopt/handover/reg:rip:40");
  REQUIRE(far != nullptr);
  auto x = campaign::explain_fault(*plan, s, *far);
  REQUIRE(x);
  const campaign::PolicyOutcome& rej = x->result.policy.at("reject");
  INFO(rej.evidence);
  CHECK(rej.outcome == "detected-hypervisor");
  CHECK(rej.evidence.find("RIP") != std::string::npos);
  CHECK(rej.guest == "ok");
  // RIP moved within RAM (bit 8: into the middle of the entry code; bits 2 and 5 now land in padding
  // that falls through to a leaf routine and its ret, which accepting masks): the vCPU property refuses it.
  const auto* near = campaign::find_fault(*plan, "local-adopt/handover/reg:rip:8");
  REQUIRE(near != nullptr);
  auto y = campaign::explain_fault(*plan, s, *near);
  REQUIRE(y);
  const campaign::PolicyOutcome& r2 = y->result.policy.at("reject");
  INFO(r2.evidence);
  CHECK(r2.outcome == "detected-checker");
  CHECK(r2.guest == "ok");
  CHECK(std::find(r2.properties.begin(), r2.properties.end(), "vcpu") != r2.properties.end());
  CHECK(y->result.policy.at("accept").outcome != "masked");
}

TEST_CASE("sharded runs in any order merge into the same bytes as one run - a foreign result file is refused") {
  ScratchDir dir;
  const campaign::Setup s = setup_of(small_guest());
  campaign::PlanOptions o = ept_adopt_exhaustive();
  o.exhaustive = false;
  o.samples = 12;
  o.targets = {campaign::Target::kEpt, campaign::Target::kVmcs, campaign::Target::kRegs, campaign::Target::kMemslot,
               campaign::Target::kRam};
  o.methods = {sim::Method::kAdopt, sim::Method::kLazy};
  auto plan = campaign::make_plan(o, s);
  REQUIRE(plan);
  campaign::RunOptions ro;
  ro.out = dir / "all.jsonl";
  ro.jobs = 2;
  auto st = campaign::run_campaign(*plan, s, ro);
  REQUIRE(st);
  CHECK(st->ran == 12);
  std::vector<std::string> shards;
  for (unsigned i = 0; i < 3; ++i) {
    campaign::RunOptions r = ro;
    r.shard = i;
    r.shards = 3;
    r.jobs = 1;
    r.chunk = 1;
    r.out = dir / ("shard" + std::to_string(i) + ".jsonl");
    REQUIRE(campaign::run_campaign(*plan, s, r));
    shards.insert(shards.begin(), r.out);  // reversed
  }
  std::string t1, t2;
  std::size_t m1 = 9, m2 = 9;
  auto a = campaign::merge_results(*plan, {ro.out}, {}, t1, m1);
  auto b = campaign::merge_results(*plan, shards, {}, t2, m2);
  REQUIRE(a);
  REQUIRE(b);
  CHECK(m1 == 0);
  CHECK(m2 == 0);
  CHECK(*a == *b);
  // Results of another plan are refused, not mixed in.
  o.seed = 7;
  auto other = campaign::make_plan(o, s);
  REQUIRE(other);
  auto c = campaign::merge_results(*other, {ro.out}, {}, t1, m1);
  REQUIRE_FALSE(c);
  CHECK(c.error().message.find("not of this plan") != std::string::npos);
  // A results file of another shard is refused on resume.
  campaign::RunOptions wrong = ro;
  wrong.shard = 1;
  wrong.shards = 3;
  CHECK_FALSE(campaign::run_campaign(*plan, s, wrong));
}

TEST_CASE("a run killed midway resumes: no result is repeated or lost, and the summary is the uninterrupted one") {
  ScratchDir dir;
  const std::string plan = dir / "p.plan", res = dir / "r.jsonl", ref = dir / "ref.jsonl";
  auto p = baton::test::run_baton(dir, "campaign plan memtouch --mem 16M -p size=1M -p passes=2 --method local-adopt "
                                       "--targets ept,regs,ram --samples 24 -o " + plan);
  REQUIRE(p.code == 0);
  // Start a run with one job and one injection per zygote, and kill it once a few results are in.
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    setpgid(0, 0);
    execl(BATON_EXE, BATON_EXE, "campaign", "run", plan.c_str(), "-j", "1", "--chunk", "1", "-o", res.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  const auto t0 = std::chrono::steady_clock::now();
  while (count_lines(slurp(res)) < 5 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ::kill(-pid, SIGKILL);  // the run and the injections it forked
  int st = 0;
  waitpid(pid, &st, 0);
  const std::size_t before = count_lines(slurp(res)) - 1;
  INFO("results before the kill: " << before);
  REQUIRE(before >= 4);
  REQUIRE(before < 24);
  // A torn last line, as a kill during a write leaves it.
  { std::ofstream(res, std::ios::app) << "{\"i\": 3, \"id\": \"tor"; }
  auto r = baton::test::run_baton(dir, "campaign run " + plan + " -j 2 -o " + res);
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("already done") != std::string::npos);
  const std::string text = slurp(res);
  CHECK(count_lines(text) == 25);  // the header and 24 results
  std::set<std::string> ids;
  std::size_t pos = text.find('\n') + 1;
  while (pos < text.size()) {
    const std::size_t e = text.find('\n', pos);
    auto line = campaign::parse_result_line(text.substr(pos, e - pos));
    REQUIRE(line);
    CHECK(ids.insert(line->id).second);  // never twice
    pos = e + 1;
  }
  CHECK(ids.size() == 24);
  REQUIRE(baton::test::run_baton(dir, "campaign run " + plan + " -o " + ref).code == 0);
  REQUIRE(baton::test::run_baton(dir, "campaign merge " + res + " --plan " + plan + " -o " + (dir / "a.json")).code == 0);
  REQUIRE(baton::test::run_baton(dir, "campaign merge " + ref + " --plan " + plan + " -o " + (dir / "b.json")).code == 0);
  CHECK(slurp(dir / "a.json") == slurp(dir / "b.json"));
}

TEST_CASE("slurm scripts chunk the plan into an array and refuse more tasks than MaxArraySize") {
  const campaign::Setup s = setup_of(small_guest());
  auto plan = campaign::make_plan(ept_adopt_exhaustive(), s);
  REQUIRE(plan);
  campaign::SlurmOptions o{"/usr/bin/baton", "/shared/p.plan", "/shared/c", 100, "debug", "00:10:00", "1G", 2};
  auto sc = campaign::slurm_scripts(*plan, o);
  REQUIRE(sc);
  CHECK(sc->tasks == 4);  // 320 faults in chunks of 100
  CHECK(sc->run.find("#SBATCH --array=0-3") != std::string::npos);
  CHECK(sc->run.find("--shard \"${SLURM_ARRAY_TASK_ID}/4\"") != std::string::npos);
  CHECK(sc->run.find("#SBATCH --partition=debug") != std::string::npos);
  CHECK(sc->merge.find("campaign merge --plan '/shared/p.plan'") != std::string::npos);
  o.chunk = 0;
  CHECK_FALSE(campaign::slurm_scripts(*plan, o));
}
