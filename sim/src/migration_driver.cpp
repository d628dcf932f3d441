// The migration driver: one sequence, one set of fault and policy decisions and one result
// for every backend (include/baton/sim/migration.hpp). The mechanism and the clock are the
// backend's: the simulator's (migration.cpp) or KVM's (kvm_migration.cpp).
#include <chrono>

#include "baton/sim/migration.hpp"

namespace baton::sim {

const char* to_string(Method m) {
  switch (m) {
    case Method::kAdopt: return "local-adopt";
    case Method::kRebuild: return "local-rebuild";
    case Method::kLazy: return "local-lazy";
    case Method::kPrecopy: return "precopy";
  }
  return "?";
}

std::optional<Method> method_from_string(std::string_view s) {
  if (s == "local-adopt" || s == "adopt") return Method::kAdopt;
  if (s == "local-rebuild" || s == "rebuild") return Method::kRebuild;
  if (s == "local-lazy" || s == "lazy") return Method::kLazy;
  if (s == "precopy" || s == "pre-copy") return Method::kPrecopy;
  return std::nullopt;
}

const char* to_string(Policy p) {
  switch (p) {
    case Policy::kReject: return "reject";
    case Policy::kFallback: return "fallback";
    case Policy::kAccept: return "accept";
  }
  return "?";
}

std::optional<Policy> policy_from_string(std::string_view s) {
  if (s == "reject") return Policy::kReject;
  if (s == "fallback" || s == "fallback-rebuild") return Policy::kFallback;
  if (s == "accept") return Policy::kAccept;
  return std::nullopt;
}

namespace {

// Splits "a:b:c" at colons.
std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (true) {
    const std::size_t c = s.find(':', pos);
    out.push_back(s.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
    if (c == std::string::npos) return out;
    pos = c + 1;
  }
}

// Parses a number in decimal or 0x-hex; nullopt when it is not one.
std::optional<std::uint64_t> number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  std::size_t used = 0;
  try {
    const std::uint64_t v = std::stoull(s, &used, 0);
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (...) {
    return std::nullopt;
  }
}


}  // namespace

const char* to_string(FaultOp op) {
  switch (op) {
    case FaultOp::kFlip: return "flip";
    case FaultOp::kStuck0: return "stuck0";
    case FaultOp::kStuck1: return "stuck1";
  }
  return "?";
}

std::uint64_t* saved_register(model::VcpuState& v, const std::string& name) {
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i)
    if (name == model::gpr_name(i)) return &v.gpr[i];
  if (name == "rip") return &v.rip;
  if (name == "rflags") return &v.rflags;
  if (name == "cr0") return &v.cr0;
  if (name == "cr2") return &v.cr2;
  if (name == "cr3") return &v.cr3;
  if (name == "cr4") return &v.cr4;
  if (name == "efer") return &v.efer;
  if (name == "tsc_offset") return &v.tsc_offset;
  if (name.rfind("msr:", 0) == 0) {
    auto idx = number(name.substr(4));
    if (!idx) return nullptr;
    auto it = v.msrs.find(static_cast<std::uint32_t>(*idx));
    return it == v.msrs.end() ? nullptr : &it->second;
  }
  return nullptr;
}

Result<Fault> parse_fault(const std::string& spec_in) {
  Fault f;
  std::string spec = spec_in;
  if (spec.rfind("stuck0:", 0) == 0 || spec.rfind("stuck1:", 0) == 0) {
    f.op = spec[5] == '0' ? FaultOp::kStuck0 : FaultOp::kStuck1;
    spec = spec.substr(7);
  }
  const std::vector<std::string> p = split(spec);
  auto bit_at = [&](std::size_t i, unsigned max) -> Result<void> {
    if (p.size() <= i || p[i].empty()) return ok_result();
    auto b = number(p[i]);
    if (!b || *b > max) return make_error("fault '" + spec + "': bit must be 0.." + std::to_string(max));
    f.bit = static_cast<unsigned>(*b);
    return ok_result();
  };
  if (p[0] == "none" && p.size() == 1) return f;
  if (p[0] == "ept") {
    if (p.size() > 4) return make_error("fault '" + spec + "': expected ept[:GPA[:BIT[:LEVEL]]]");
    f.kind = FaultKind::kEptBit;
    if (p.size() > 1 && !p[1].empty()) {
      auto g = number(p[1]);
      if (!g) return make_error("fault '" + spec + "': '" + p[1] + "' is not a GPA");
      f.gpa = *g;
    }
    BATON_TRY_VOID(bit_at(2, 63));
    if (p.size() > 3 && !p[3].empty()) {
      auto l = number(p[3]);
      if (!l || *l < 1 || *l > 4) return make_error("fault '" + spec + "': the level must be 1..4");
      f.level = static_cast<unsigned>(*l);
    }
    return f;
  }
  if (p[0] == "reg") {
    if (p.size() > 4) return make_error("fault '" + spec + "': expected reg[:NAME[:BIT]] (NAME may be msr:INDEX)");
    f.kind = FaultKind::kRegBit;
    std::size_t bit_index = 2;
    if (p.size() > 1 && !p[1].empty()) f.reg = p[1];
    if (f.reg == "msr") {
      if (p.size() < 3 || !number(p[2])) return make_error("fault '" + spec + "': expected reg:msr:INDEX[:BIT]");
      f.reg = "msr:" + p[2];
      bit_index = 3;
    } else if (p.size() > 3) {
      return make_error("fault '" + spec + "': expected reg[:NAME[:BIT]]");
    }
    model::VcpuState probe;
    if (f.reg.rfind("msr:", 0) != 0 && saved_register(probe, f.reg) == nullptr)
      return make_error("fault '" + spec + "': no register '" + f.reg +
                        "' (rax..r15, rip, rflags, cr0, cr2, cr3, cr4, efer, tsc_offset, msr:INDEX)");
    BATON_TRY_VOID(bit_at(bit_index, 63));
    return f;
  }
  if (p[0] == "ram") {
    if (p.size() < 2 || p.size() > 3 || p[1].empty()) return make_error("fault '" + spec + "': expected ram:GPA[:BIT]");
    f.kind = FaultKind::kRamBit;
    auto g = number(p[1]);
    if (!g) return make_error("fault '" + spec + "': '" + p[1] + "' is not a GPA");
    f.gpa = *g & ~std::uint64_t{7};
    BATON_TRY_VOID(bit_at(2, 63));
    return f;
  }
  if (p[0] == "vmcs") {
    if (p.size() > 3) return make_error("fault '" + spec + "': expected vmcs[:FIELD[:BIT]]");
    f.kind = FaultKind::kVmcsBit;
    if (p.size() > 1 && !p[1].empty()) {
      const model::VmcsField* fld = nullptr;
      if (auto e = number(p[1])) fld = model::find_vmcs_field(static_cast<std::uint32_t>(*e));
      else fld = model::find_vmcs_field(p[1] == "eptp" ? std::string("ept_pointer") : p[1]);
      if (fld == nullptr)
        return make_error("fault '" + spec + "': no VMCS field '" + p[1] +
                          "' (give an encoding such as 0x201a or a name such as ept_pointer)");
      f.vmcs_field = fld->encoding;
    }
    BATON_TRY_VOID(bit_at(2, 63));
    return f;
  }
  if (p[0] == "memslot") {
    if (p.size() > 4) return make_error("fault '" + spec + "': expected memslot[:ID[:gpa|size|hpa[:BIT]]]");
    f.kind = FaultKind::kMemslotBit;
    if (p.size() > 1 && !p[1].empty()) {
      auto id = number(p[1]);
      if (!id || *id > 0xFFFFFFFFu) return make_error("fault '" + spec + "': '" + p[1] + "' is not a memslot id");
      f.slot = static_cast<std::uint32_t>(*id);
    }
    if (p.size() > 2 && !p[2].empty()) {
      if (p[2] != "gpa" && p[2] != "size" && p[2] != "hpa")
        return make_error("fault '" + spec + "': the memslot field must be gpa, size or hpa");
      f.slot_field = p[2];
    }
    BATON_TRY_VOID(bit_at(3, 63));
    return f;
  }
  return make_error("unknown fault '" + spec_in +
                    "' (expected none, ept[:GPA[:BIT[:LEVEL]]], vmcs[:FIELD[:BIT]], memslot[:ID[:FIELD[:BIT]]], "
                    "reg[:NAME[:BIT]] or ram:GPA[:BIT], optionally after stuck0: or stuck1:)");
}

checker::Verdict overall_verdict(const std::vector<CheckLine>& lines, std::size_t from) {
  bool unknown = false;
  for (std::size_t i = from; i < lines.size(); ++i) {
    if (lines[i].verdict == checker::Verdict::kRefuted) return checker::Verdict::kRefuted;
    unknown = unknown || lines[i].verdict == checker::Verdict::kUnknown;
  }
  return unknown ? checker::Verdict::kUnknown : checker::Verdict::kProven;
}

Result<MigrationResult> drive_migration(MigrationBackend& b, const MigrationOptions& opt,
                                        std::optional<std::uint64_t> expected) {
  const auto wall0 = std::chrono::steady_clock::now();
  auto progress = [&](const std::string& s) {
    if (opt.progress) opt.progress(s);
  };
  MigrationResult res;
  b.begin(res);
  const MigrationBackend::Capabilities caps = b.capabilities();
  const auto refusal = [&](Method m) -> const std::string& { return caps.refuses[static_cast<unsigned>(m)]; };
  if (!refusal(opt.method).empty()) return make_error(refusal(opt.method));
  if (opt.fault.kind != FaultKind::kNone && !caps.faults)
    return make_error("--fault: faults cannot be planted on the " + res.backend + " backend");
  res.method = res.effective = opt.method;
  res.expected = expected;

  RunLimits point;
  point.budget = opt.budget;
  if (opt.at_insn != 0) point.until_insn = opt.at_insn;
  else point.sync = opt.at_sync.value_or(1);
  auto at = b.run_to_point(point);
  if (!at) return at.error();
  if (at->reason != StopReason::kSyncPoint && at->reason != StopReason::kInsnLimit)
    return make_error("the guest never reached the migration point (" +
                      (opt.at_insn != 0 ? "instruction " + std::to_string(opt.at_insn)
                                        : "sync point " + std::to_string(opt.at_sync.value_or(1))) +
                      "): it stopped with " + to_string(at->reason) + " (" + at->detail + ")");
  res.at_stage = at->stage;
  res.at_insn = b.source_instructions();
  const Fault fault = opt.choose_fault ? opt.choose_fault(res) : opt.fault;
  if (fault.kind != FaultKind::kNone && !caps.faults)
    return make_error("--fault: faults cannot be planted on the " + res.backend + " backend");

  // The fault strikes the old instance now.
  if (fault.kind != FaultKind::kNone) {
    auto d = b.plant_source_fault(fault);
    if (!d) return d.error();
    if (!d->empty()) res.fault = *d;
  }
  if (opt.method == Method::kPrecopy) {
    progress("precopy: copying memory while the guest runs");
    BATON_TRY_VOID(b.precopy());
  }
  auto before = b.pause_and_capture();
  if (!before) return before.error();
  model::HandoverSnapshot pkg = *before;
  if (fault.kind != FaultKind::kNone) {
    auto d = b.plant_package_fault(fault, pkg);
    if (!d) return d.error();
    if (!d->empty()) res.fault = *d;
  }
  // The old instance's memslot table and VMCS are what is wrong: "before" shows it. A saved
  // register is wrong only in the package: the old instance still holds the right value.
  if (fault.kind == FaultKind::kMemslotBit) before->memslots = pkg.memslots;
  if (fault.kind == FaultKind::kVmcsBit) before->vmcs = pkg.vmcs;
  if (opt.method == Method::kPrecopy) BATON_TRY_VOID(b.stop_and_copy());

  // The new instance.
  Method m = opt.method;
  progress("handing over to a new instance (" + std::string(to_string(m)) + ")");
  auto after = b.hand_over(m, pkg);
  const std::string restore_error = after ? "" : after.error().message;
  if (!restore_error.empty()) {
    res.checks.push_back(CheckLine{"handover", checker::Verdict::kRefuted,
                                   "the new instance refused the package: " + restore_error, 0, std::nullopt});
  } else if (opt.verify) {
    progress("checking the handover");
    b.verify(m, *before, *after);
  }
  res.verdict = overall_verdict(res.checks);
  bool go = restore_error.empty() && (res.verdict == checker::Verdict::kProven || !opt.verify);
  // Where the new instance resumed at once, the checks report on a handover that happened.
  if (restore_error.empty() && !caps.checks_before_resume) go = true;
  Policy policy = opt.policy;
  if (!go && opt.choose_policy) {
    res.verdict = overall_verdict(res.checks);
    if (!restore_error.empty()) res.reject_reason = restore_error;
    policy = opt.choose_policy(res);
    res.reject_reason.clear();
  }
  if (!go && restore_error.empty() && policy == Policy::kAccept) go = true;
  std::size_t verdict_from = 0;  // the first check line that decides the verdict
  if (!go && policy == Policy::kFallback && m != Method::kRebuild && refusal(Method::kRebuild).empty()) {
    res.fell_back = true;
    res.reject_reason = restore_error.empty() ? "the checker refuted the handover" : restore_error;
    b.discard_new(m);
    m = Method::kRebuild;
    res.effective = m;
    progress("falling back to local-rebuild");
    after = b.hand_over(m, pkg);
    if (!after) return make_error("fallback to local-rebuild failed: " + after.error().message);
    verdict_from = res.checks.size();
    b.verify(m, *before, *after);
    for (std::size_t i = verdict_from; i < res.checks.size(); ++i) res.checks[i].name += " (fallback)";
    res.verdict = overall_verdict(res.checks, verdict_from);  // the rejected handover's lines no longer decide
    go = res.verdict == checker::Verdict::kProven;
  }
  res.before = *before;
  if (after) res.after = *after;

  if (!go) {
    // Rejected: the VM stays on the old instance, which resumes it.
    res.rejected = true;
    if (res.reject_reason.empty())
      res.reject_reason = restore_error.empty() ? "the checker did not prove the handover" : restore_error;
    b.discard_new(m);
    progress("handover rejected: the old instance resumes the VM");
    BATON_TRY_VOID(b.resume_source());
  } else {
    res.switched = true;
    BATON_TRY_VOID(b.finish_on_new(m));
    res.verdict = overall_verdict(res.checks, verdict_from);
  }
  BATON_TRY_VOID(b.epilogue());
  res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return res;
}

}  // namespace baton::sim
