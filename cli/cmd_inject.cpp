// baton inject FAULT_ID --plan PLAN --explain: re-runs one campaign fault in this process, with
// every check, and tells its story: what flipped, the walk or field before and after, what the
// checker said, and what the guest did under each policy.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "baton/campaign/campaign.hpp"
#include "baton/model/ept_walk.hpp"
#include "campaign_setup.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

struct InjectCmd {
  std::string id, plan;
  bool explain = false, json_out = false;
};

// The walk of `gpa` in a snapshot's tree, as `describe` renders it.
std::string walk_text(const model::HandoverSnapshot& s, std::uint64_t gpa) {
  const model::WalkResult w = model::walk(s.eptp, model::Gpa{gpa}, model::Access::kRead, s.tables, s.ept_config);
  return model::describe(w, model::Gpa{gpa}, s.ept_config);
}

void run_inject(const InjectCmd& c) {
  if (!c.explain) return fail("inject: give --explain (the story of one fault is all inject prints)");
  auto plan = campaign::load_plan(c.plan);
  if (!plan) return fail(plan.error().message);
  std::size_t index = 0;
  const campaign::PlannedFault* f = campaign::find_fault(*plan, c.id, &index);
  if (f == nullptr) return fail("inject: no fault '" + c.id + "' in " + c.plan + " (give an id from the plan, or #INDEX)");
  auto setup = campaign_setup(plan->guest);
  if (!setup) return fail(setup.error().message);
  auto x = campaign::explain_fault(*plan, *setup, *f);
  if (!x) return fail(x.error().message);
  const campaign::InjectionResult& r = x->result;
  if (c.json_out) {
    std::cout << campaign::result_line(r) << "\n";
    return;
  }
  std::printf("fault        %s (#%zu of plan %s)\n", f->id.c_str(), index, plan->hash.c_str());
  std::printf("target       %s %s bit %u, %s, strikes at %s; %s migrates at sync point %u\n", campaign::to_string(f->target),
              f->field.c_str(), f->bit, sim::to_string(f->op), f->trigger.c_str(), sim::to_string(f->method), plan->at_sync);
  std::printf("planted      %s\n", r.fault.empty() ? "(nothing: see below)" : r.fault.c_str());
  auto parsed = sim::parse_fault(f->spec);
  if (f->target == campaign::Target::kEpt && parsed && parsed->gpa && x->pre) {
    std::printf("walk before  (the source just before the fault)\n%s", walk_text(*x->pre, *parsed->gpa).c_str());
    std::printf("walk after   (the old instance at the pause)\n%s", walk_text(x->migration.before, *parsed->gpa).c_str());
  }
  if (!x->early.empty()) {
    std::printf("guest        stopped before the migration point: %s\n", x->early.c_str());
  } else {
    const sim::MigrationResult& m = x->migration;
    std::printf("checker\n");
    if (m.checks.empty()) std::printf("  (no check ran)\n");
    for (const sim::CheckLine& l : m.checks)
      std::printf("  %-30s %-8s %s\n", l.name.c_str(), checker::to_string(l.verdict), l.summary.c_str());
    std::printf("handover     %s\n", m.switched ? "the new instance resumed the VM"
                                                : ("REJECTED (" + m.reject_reason + "): the old instance kept the VM").c_str());
    std::printf("guest        %s%s", sim::to_string(m.final_event.reason),
                m.final_event.detail.empty() ? "" : (" (" + m.final_event.detail + ")").c_str());
    if (m.checksum)
      std::printf(", checksum 0x%llx (expected %s)", static_cast<unsigned long long>(*m.checksum),
                  m.expected ? (m.checksum_ok() ? "it" : "another: MISMATCH") : "unknown");
    std::printf("\n");
  }
  for (const char* pol : {"reject", "fallback", "accept"}) {
    auto it = r.policy.find(pol);
    if (it == r.policy.end()) continue;
    const campaign::PolicyOutcome& o = it->second;
    std::printf("outcome      %-8s %s%s%s\n", pol, o.outcome.c_str(), o.evidence.empty() ? "" : ": ", o.evidence.c_str());
  }
}

}  // namespace

void register_inject(CLI::App& app) {
  auto o = std::make_shared<InjectCmd>();
  CLI::App* c = app.add_subcommand("inject", "Re-run one fault of a campaign plan and explain what happened");
  c->add_option("fault", o->id, "The fault's id in the plan (or #INDEX)")->required();
  c->add_option("--plan", o->plan, "The campaign plan")->required();
  c->add_flag("--explain", o->explain, "Print the story: what flipped, the walk before and after, the checks, the guest");
  c->add_flag("--json", o->json_out, "Print the result line instead");
  c->callback([o] { run_inject(*o); });
}

}  // namespace baton::cli
