// baton explore on KVM: migrate (the migration driver with KvmBackend, as `baton migrate
// --backend kvm`), check (vcpu; no-copy from a captured migration), the VMCS as KVM shows it,
// the memslot, `backend` (flavour and KVM_CAP_* values), and the commands KVM cannot
// serve, which refuse with one line saying why.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/hw/kvm.hpp"
#include "baton/checker/report.hpp"
#include "baton/model/file_io.hpp"
#include "baton/sim/kvm_migration.hpp"
#include "cmd_explore_kvm.hpp"
#include "migrate_render.hpp"
#include "parse.hpp"

namespace baton::cli::explore {

using nlohmann::json;

namespace {

// Takes a trailing "@NAME" off `w` and returns the state it names (the current one without).
Result<const model::HandoverSnapshot*> state_arg(Session& s, std::vector<std::string>& w) {
  if (w.size() > 1 && !w.back().empty() && w.back()[0] == '@') {
    const std::string n = w.back();
    w.pop_back();
    return s.state(n);
  }
  return s.current();
}

// What `vmcs` on KVM says it shows.
constexpr const char* kVmcsView =
    "KVM's view: the guest-state fields as KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_MSRS and KVM_GET_VCPU_EVENTS report "
    "them, and tsc_offset as guest TSC - host TSC. KVM keeps its VMCS (VMCB on AMD) to itself: controls, host state and "
    "the EPTP are not exposed.";

// A human name of the host flavours.
const char* flavour_text(const std::string& f) {
  if (f == "vmx") return "kvm_intel on bare metal (VT-x)";
  if (f == "svm") return "kvm_amd on bare metal (AMD-V)";
  if (f == "nested-vmx") return "kvm_intel inside a VM (nested VT-x): correctness, not speed";
  if (f == "nested-svm") return "kvm_amd inside a VM (nested SVM, e.g. scripts/nested-kvm.sh): correctness, not speed";
  if (f == "pvm") return "PVM, a software KVM: ring-3 guest code runs natively, ring 0 is emulated";
  return "no KVM module loaded";
}

// The check line of the last migration named `name`, if it has one.
const sim::CheckLine* migration_check(const KvmSide& k, const std::string& name) {
  for (const sim::CheckLine& c : k.migration_checks)
    if (c.name == name) return &c;
  return nullptr;
}

}  // namespace

// ept on KVM: refused.
Result<void> kvm_ept(Session&, const Args&) {
  return make_error("ept: KVM builds and owns its EPT inside the kernel, so there is no tree here to walk, dump or diff "
                    "(migrate --capture FILE records KVM's own mappings and proves no-copy from them)");
}

// inject on KVM: refused.
Result<void> kvm_inject(Session&, const Args&) {
  return make_error("inject: faults cannot be planted on KVM: its EPT entries, VMCS and memslot table belong to the "
                    "kernel (explore on the simulator plants them)");
}

// vmcs [FIELD] [@S] on KVM: the guest-state area as KVM reports it.
Result<void> kvm_vmcs(Session& s, const Args& a) {
  std::vector<std::string> w = a.words;
  auto st = state_arg(s, w);
  if (!st) return st.error();
  if (w.size() > 2) return make_error("usage: vmcs [FIELD] [@SNAPSHOT]");
  if ((*st)->vcpus.empty()) return make_error("this state has no vCPU");
  model::Vmcs view;
  model::sync_vmcs_guest_state((*st)->vcpus[0], view);
  view.set(model::vmcs::kTscOffset, (*st)->vcpus[0].tsc_offset);
  std::vector<const model::VmcsField*> fields;
  if (w.size() == 2) {
    const model::VmcsField* f = nullptr;
    if (auto e = parse_u64(w[1])) f = model::find_vmcs_field(static_cast<std::uint32_t>(*e));
    else f = model::find_vmcs_field(w[1] == "eptp" ? std::string("ept_pointer") : w[1]);
    if (f != nullptr) fields.push_back(f);
    else
      for (const model::VmcsField& c : model::vmcs_catalog())
        if (std::string(c.name).find(w[1]) != std::string::npos) fields.push_back(&c);
    if (fields.empty()) return make_error("no VMCS field '" + w[1] + "' (SDM names such as guest_rip, guest_cr3; Tab completes)");
  } else {
    for (const auto& [enc, v] : view.values())
      if (const model::VmcsField* f = model::find_vmcs_field(enc)) fields.push_back(f);
  }
  json j = json::object();
  if (!s.json) std::printf("%s\n", kVmcsView);
  for (const model::VmcsField* f : fields) {
    const auto v = view.get(f->encoding);
    if (s.json) j[f->name] = v ? json(hex(*v)) : json(nullptr);
    else
      std::printf("%#06x %-40s %-10s %s\n", f->encoding, f->name, model::to_string(model::area_of_encoding(f->encoding)),
                  v ? hex(*v).c_str() : "(KVM's own: not exposed)");
  }
  if (s.json) std::cout << json{{"view", "kvm"}, {"note", kVmcsView}, {"fields", j}}.dump(2) << "\n";
  return ok_result();
}

// memslots [@S] on KVM: the VM's one memslot (KVM_SET_USER_MEMORY_REGION over the memfd).
Result<void> kvm_memslots(Session& s, const Args& a) {
  if (a.words.size() == 2 && !a.words[1].empty() && a.words[1][0] == '@') return cmd_memslots(s, a);
  if (a.words.size() != 1) return make_error("usage: memslots [@SNAPSHOT]");
  const hw::GuestMemory& mem = side(s).m->memory();
  const auto hva = reinterpret_cast<std::uintptr_t>(mem.data());
  if (s.json) {
    json slot{{"id", 0}, {"gpa", hex(0)}, {"size", hex(mem.size())}, {"hva", hex(hva)}, {"backing", "memfd"}, {"flags", 0}};
    std::cout << json{{"memslots", json::array({slot})}, {"mmio", json::array()}}.dump(2) << "\n";
    return ok_result();
  }
  std::printf("slot 0  gpa %s .. %s (%s) -> memfd, hva %s in this VMM (KVM_SET_USER_MEMORY_REGION, flags 0)\n", hex(0).c_str(),
              hex(mem.size() - 1).c_str(), format_size(mem.size()).c_str(), hex(hva).c_str());
  return ok_result();
}

// migrate local-lazy|precopy [--policy P] [--max-rounds N] [--timeout S] [--capture FILE [--force]] [--no-verify]
Result<void> kvm_migrate(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  if (w.size() < 2) return make_error("usage: migrate local-lazy|precopy [--max-rounds N] [--capture FILE [--force]]");
  auto method = sim::method_from_string(w[1]);
  if (!method) return make_error("'" + w[1] + "' is not one of local-lazy, precopy (on kvm)");
  if (s.exited()) return make_error("the guest has exited: nothing to migrate; `restore` a snapshot first");
  KvmSide& k = side(s);
  sim::MigrationOptions opt;
  opt.method = *method;
  std::string capture;
  bool force = false;
  for (std::size_t i = 2; i < w.size(); ++i) {
    auto value = [&]() -> Result<std::string> {
      if (i + 1 >= w.size()) return make_error(w[i] + " needs a value");
      return w[++i];
    };
    if (w[i] == "--policy") {
      auto v = value();
      if (!v) return v.error();
      auto p = sim::policy_from_string(*v);
      if (!p) return make_error("--policy '" + *v + "' is not one of reject, fallback, accept");
      opt.policy = *p;
    } else if (w[i] == "--max-rounds") {
      auto v = value();
      if (!v) return v.error();
      auto n = number(*v, "--max-rounds");
      if (!n || *n == 0 || *n > 1000) return make_error("--max-rounds must be 1..1000");
      opt.max_rounds = static_cast<unsigned>(*n);
    } else if (w[i] == "--timeout") {
      auto v = value();
      if (!v) return v.error();
      try {
        opt.check.timeout_s = std::stod(*v);
      } catch (...) {
        return make_error("--timeout '" + *v + "' is not a number of seconds");
      }
      if (!(opt.check.timeout_s > 0)) return make_error("--timeout must be positive");
    } else if (w[i] == "--capture") {
      auto v = value();
      if (!v) return v.error();
      capture = *v;
    } else if (w[i] == "--force") {
      force = true;
    } else if (w[i] == "--no-verify") {
      opt.verify = false;
    } else if (w[i] == "--dirty" || w[i] == "--no-reference") {
      return make_error("migrate " + w[i] + " applies to the simulator only (KVM tracks dirty pages with KVM_GET_DIRTY_LOG "
                        "and has no unmigrated reference run)");
    } else {
      return make_error("migrate: unknown option '" + w[i] + "' (--policy, --max-rounds, --timeout, --capture, --force, --no-verify)");
    }
  }
  sim::KvmMigrationConfig kc;
  kc.device = k.device;
  kc.guest_name = s.opts.guest;
  const std::uint32_t stage = k.m->recorder().state().stage;
  if (!capture.empty()) {
    // The capture must see the source map its pages: the source is booted and run to the
    // session's sync point under it, as `baton migrate --capture` does.
    if (!k.at_sync || stage == 0)
      return make_error("migrate --capture needs the session right after a sync point (run to sync K first): the source is "
                        "replayed from boot to it under the capture, so that its mappings are in it");
    BATON_TRY_VOID(model::check_output_path(capture, force, "--capture"));
    kc.capture_path = capture;
    kc.overwrite_capture = force;
    opt.at_sync = stage;
  } else {
    // The source is a copy of the session's VM (its memory and vCPU), built in this process;
    // the session's own VM stays as it is.
    kc.source = [&s]() -> Result<std::unique_ptr<hw::KvmMachine>> {
      auto d = kvm_capture(s);
      if (!d) return d.error();
      return kvm_build(side(s), **d);
    };
  }
  if (!s.json && isatty(fileno(stderr)) != 0)
    opt.progress = [](const std::string& line) { std::fprintf(stderr, "  .. %s\n", line.c_str()); };
  auto r = sim::migrate_kvm(k.image, kc, opt);
  s.touched();
  if (!r) return r.error();
  if (capture.empty()) r->console = s.output_now().console + r->console;  // the copy's output starts at the copy
  s.last.have_checksum = true;
  s.last.checksum = r->checksum;
  s.last.expected = r->expected;
  s.last.verdicts.clear();
  for (const sim::CheckLine& c : r->checks) s.last.verdicts.emplace_back(c.name, c.verdict);
  s.last.overall = r->verdict;
  s.last.outcome = migration_outcome(*r);
  k.migrated = true;
  k.migration_checks = r->checks;
  k.migration_capture = capture;
  Snap before;
  before.state = r->before;
  before.stage = r->at_stage;
  before.origin = "migration " + std::string(sim::to_string(*method)) + " (old VMM at the pause)";
  s.snaps["migrate.before"] = before;
  if (!r->after.vcpus.empty()) {
    Snap after = before;
    after.state = r->after;
    after.origin = "migration " + std::string(sim::to_string(r->effective)) + " (the worker's restored vCPU)";
    s.snaps["migrate.after"] = after;
  } else {
    s.snaps.erase("migrate.after");
  }
  if (s.json) {
    json j = migration_json(*r);
    j["guest"] = s.opts.guest;
    j["mem"] = s.opts.mem;
    j["pages"] = s.opts.pages;
    j["source"] = capture.empty() ? "a copy of the session's VM" : "replayed from boot to sync point " + std::to_string(stage);
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("guest        %s on kvm (%s; source VMM pid %u, worker pid %u; mem %s), from %s\n", s.opts.guest.c_str(),
                r->host_flavour.c_str(), r->source_pid, r->worker_pid, s.opts.mem.c_str(),
                capture.empty() ? "a copy of the session's VM" : ("boot, replayed to sync point " + std::to_string(stage)).c_str());
    std::fputs(migration_text(*r).c_str(), stdout);
    std::printf("(the session stays before the migration, at stage %u; @migrate.before and @migrate.after hold the vCPU states)\n",
                stage);
  }
  return ok_result();
}

// check on KVM: vcpu between two states, or the last migration's handover (vcpu, and no-copy
// from its capture).
Result<void> kvm_check(Session& s, const Args& a) {
  std::vector<std::string> w(a.words.begin() + 1, a.words.end());
  checker::CheckOptions opt;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (w[i] != "--timeout") continue;
    if (i + 1 >= w.size()) return make_error("--timeout needs a value");
    try {
      opt.timeout_s = std::stod(w[i + 1]);
    } catch (...) {
      return make_error("--timeout '" + w[i + 1] + "' is not a number of seconds");
    }
    w.erase(w.begin() + static_cast<std::ptrdiff_t>(i), w.begin() + static_cast<std::ptrdiff_t>(i) + 2);
    break;
  }
  std::vector<std::string> states;
  while (!w.empty() && !w.front().empty() && w.front()[0] == '@') {
    states.push_back(w.front());
    w.erase(w.begin());
  }
  if (w.size() > 1 || (states.size() != 0 && states.size() != 2))
    return make_error("usage: check [vcpu|no-copy] | check @A @B [vcpu]");
  bool want_vcpu = true, want_nocopy = true;
  if (!w.empty()) {
    if (w[0] == "no-copy") {
      want_vcpu = false;
    } else if (w[0] == "vcpu") {
      want_nocopy = false;
    } else if (w[0] != "all") {
      auto p = checker::parse_property_list(w[0]);
      if (!p) return p.error();
      return make_error("check " + w[0] + ": KVM owns the EPT, so on kvm the checker proves vcpu (and no-copy from a "
                        "captured migration) only");
    }
  }
  KvmSide& k = side(s);
  model::HandoverSnapshot before, after;
  if (!states.empty()) {
    if (!want_vcpu) return make_error("check no-copy takes no states: it reads the last migration's capture");
    auto x = s.state(states[0]);
    if (!x) return x.error();
    before = **x;
    auto y = s.state(states[1]);
    if (!y) return y.error();
    after = **y;
    want_nocopy = false;
  } else {
    if (!k.migrated || s.snaps.count("migrate.before") == 0)
      return make_error("check on kvm checks a handover: migrate first, or check @A @B (KVM owns the EPT, so there is no "
                        "tree to check against the memslots)");
    if (s.snaps.count("migrate.after") == 0) return make_error("the last migration did not hand over: no after state to check");
    before = s.snaps["migrate.before"].state;
    after = s.snaps["migrate.after"].state;
    if (!want_vcpu && k.migration_capture.empty())
      return make_error("check no-copy needs a captured migration: migrate local-lazy --capture FILE (root, tracefs)");
  }
  checker::Report rep;
  if (want_vcpu) {
    if (before.vcpus.empty() || after.vcpus.empty()) return make_error("both states need a vCPU");
    auto r = checker::check_vcpu(before, after, checker::Verdict::kProven, opt);
    if (!r) return r.error();
    // The last migration's pair (the paused state, the worker's): the same reason as migrate gives.
    if (states.empty()) sim::explain_tsc_refutation(*r, before.vcpus[0], after.vcpus[0], hw::host_flavour());
    rep.seconds = r->seconds;
    rep.results.push_back(std::move(*r));
  }
  const sim::CheckLine* nc = want_nocopy ? migration_check(k, "no-copy") : nullptr;
  if (nc == nullptr) {
    report_check(s, rep);
    return ok_result();
  }
  // The no-copy line comes from the migration's run (its capture), beside the vcpu proof.
  s.last.verdicts.clear();
  for (const checker::PropertyResult& p : rep.results) s.last.verdicts.emplace_back(checker::to_string(p.property), p.verdict);
  s.last.verdicts.emplace_back("no-copy", nc->verdict);
  checker::Verdict overall = nc->verdict;
  if (!rep.results.empty()) {
    const checker::Verdict v = rep.overall();
    if (v == checker::Verdict::kRefuted || (v == checker::Verdict::kUnknown && overall == checker::Verdict::kProven)) overall = v;
  }
  s.last.overall = overall;
  const std::string detail = nc->summary + " (from the last migration's capture " + k.migration_capture + ")";
  if (s.json) {
    json j = json::parse(checker::to_json(rep));
    j["verdict"] = checker::to_string(overall);
    json line = json::object();
    line["property"] = "no-copy";
    line["verdict"] = checker::to_string(nc->verdict);
    line["seconds"] = nc->seconds;
    line["summary"] = nc->summary;
    line["capture"] = k.migration_capture;
    j["properties"].push_back(line);
    std::cout << j.dump(2) << "\n";
    return ok_result();
  }
  std::printf("%-16s %-8s %-9s %s\n", "property", "verdict", "time", "detail");
  for (const checker::PropertyResult& p : rep.results)
    std::printf("%-16s %-8s %-9s %s\n", checker::to_string(p.property), checker::to_string(p.verdict),
                (std::to_string(p.seconds).substr(0, 5) + "s").c_str(), p.summary.c_str());
  std::printf("%-16s %-8s %-9s %s\n", "no-copy", checker::to_string(nc->verdict), (std::to_string(nc->seconds).substr(0, 5) + "s").c_str(),
              detail.c_str());
  for (const checker::PropertyResult& p : rep.results)
    if (p.counterexample) std::printf("\n%s refuted: %s", checker::to_string(p.property), checker::to_text(*p.counterexample).c_str());
  std::printf("\noverall: %s\n", checker::to_string(overall));
  return ok_result();
}

// save on KVM: refused, since the snapshot format does not fit a KVM state.
Result<void> kvm_save(Session&, const Args&) {
  return make_error("save: the snapshot format does not fit a KVM state: baton check and baton ept need its EPT tree, which "
                    "KVM owns, and guest memory is not part of the format (snapshot NAME keeps the state for restore in "
                    "this session)");
}

// backend on KVM: the device, the host flavour and what the host allows.
Result<void> kvm_backend(Session& s, const Args& a) {
  if (a.words.size() != 1) return make_error("usage: backend");
  const KvmSide& k = side(s);
  auto sys = hw::KvmSystem::try_open(k.device);
  if (!sys) return sys.error();
  const std::string flavour = hw::host_flavour();
  const auto caps = sys->capabilities();
  int debug = 0;
  for (const auto& [n, v] : caps)
    if (n == "KVM_CAP_SET_GUEST_DEBUG") debug = v;
  const bool steps = debug > 0 && flavour != "pvm";  // PVM delivers the step's #DB to the guest (cmd_explore_kvm.cpp)
  const std::string allows = std::string("run to sync K | to exit") + (steps ? ", run N and step N (single-stepping)" : "") +
                             ", break sync|port, regs, mem, disas, console, memslots, vmcs (KVM's view), migrate "
                             "local-lazy|precopy, check vcpu (no-copy with migrate --capture), snapshot/restore (vCPU state "
                             "+ a copy of guest memory)";
  const std::string refuses = std::string("ept walk|dump|diff, inject, save, migrate local-adopt|local-rebuild, break insn") +
                             (steps ? "" : ", run N, step N") +
                             ": KVM owns its EPT, VMCS and memslots, and counts no instructions" +
                             (steps || debug == 0 ? "" : " (PVM delivers a single-step #DB to the guest)");
  if (s.json) {
    json c = json::object();
    for (const auto& [n, v] : caps) c[n] = v;
    std::cout << json{{"backend", "kvm"}, {"device", k.device}, {"host_flavour", flavour}, {"what", flavour_text(flavour)},
                      {"allows", allows}, {"refuses", refuses}, {"capabilities", c}}.dump(2)
              << "\n";
    return ok_result();
  }
  std::printf("backend  kvm: %s, host flavour %s (%s)\nallows   %s\nrefuses  %s\nhost     KVM_CHECK_EXTENSION on %s:\n",
              k.device.c_str(), flavour.c_str(), flavour_text(flavour), allows.c_str(), refuses.c_str(), k.device.c_str());
  for (const auto& [n, v] : caps) std::printf("  %-34s %d\n", n.c_str(), v);
  return ok_result();
}

}  // namespace baton::cli::explore
