// Property 6: vCPU and VMCS equivalence with declared allowed differences, as a bit-vector
// formula: every compared field equal, the TSC offset related to the host-time gap, and the
// EPTP root unchanged unless the trees were proven equivalent.
#include <z3++.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>

#include "z3_context.hpp"
#include "baton/checker/check.hpp"
#include "baton/model/vcpu_state.hpp"
#include "baton/model/vmcs.hpp"
#include "encode.hpp"

namespace baton::checker {

namespace {

using Clock = std::chrono::steady_clock;

// Formats a number as 0x-hex.
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// One named scalar of a vCPU state or VMCS.
struct Field {
  std::string name;
  std::uint64_t value;
};

// Appends the scalars of a segment register.
void add_segment(std::vector<Field>& out, const std::string& p, const model::Segment& s) {
  out.push_back({p + ".base", s.base});
  out.push_back({p + ".limit", s.limit});
  out.push_back({p + ".selector", s.selector});
  out.push_back({p + ".type", s.type});
  out.push_back({p + ".present", s.present});
  out.push_back({p + ".dpl", s.dpl});
  out.push_back({p + ".db", s.db});
  out.push_back({p + ".s", s.s});
  out.push_back({p + ".l", s.l});
  out.push_back({p + ".g", s.g});
  out.push_back({p + ".avl", s.avl});
  out.push_back({p + ".unusable", s.unusable});
}

// Appends a byte blob as 64-bit words, preceded by its length.
void add_blob(std::vector<Field>& out, const std::string& p, const std::vector<std::uint8_t>& b) {
  out.push_back({p + ".size", b.size()});
  for (std::size_t i = 0; i < b.size(); i += 8) {
    std::uint64_t w = 0;
    for (std::size_t k = 0; k < 8 && i + k < b.size(); ++k) w |= std::uint64_t{b[i + k]} << (8 * k);
    out.push_back({p + "[+" + hex(i) + "]", w});
  }
}

// Flattens a vCPU state into named scalars, leaving out the TSC fields (compared relationally)
// and IA32_TSC (the guest TSC itself, covered by the same relation).
std::vector<Field> flatten(const model::VcpuState& v, const std::string& p) {
  std::vector<Field> out;
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) out.push_back({p + model::gpr_name(i), v.gpr[i]});
  out.push_back({p + "rip", v.rip});
  out.push_back({p + "rflags", v.rflags});
  const std::pair<const char*, const model::Segment*> segs[] = {{"cs", &v.cs}, {"ds", &v.ds},  {"es", &v.es},
                                                                {"fs", &v.fs}, {"gs", &v.gs},  {"ss", &v.ss},
                                                                {"tr", &v.tr}, {"ldt", &v.ldt}};
  for (const auto& [n, s] : segs) add_segment(out, p + n, *s);
  out.push_back({p + "gdtr.base", v.gdtr.base});
  out.push_back({p + "gdtr.limit", v.gdtr.limit});
  out.push_back({p + "idtr.base", v.idtr.base});
  out.push_back({p + "idtr.limit", v.idtr.limit});
  out.push_back({p + "cr0", v.cr0});
  out.push_back({p + "cr2", v.cr2});
  out.push_back({p + "cr3", v.cr3});
  out.push_back({p + "cr4", v.cr4});
  out.push_back({p + "cr8", v.cr8});
  out.push_back({p + "efer", v.efer});
  for (unsigned i = 0; i < 8; ++i) out.push_back({p + "dr" + std::to_string(i), v.dr[i]});
  out.push_back({p + "xcr0", v.xcr0});
  add_blob(out, p + "xsave", v.xsave);
  add_blob(out, p + "lapic", v.lapic);
  const model::VcpuEvents& e = v.events;
  out.push_back({p + "events.exception_pending", e.exception_pending});
  out.push_back({p + "events.exception_nr", e.exception_nr});
  out.push_back({p + "events.exception_has_error_code", e.exception_has_error_code});
  out.push_back({p + "events.exception_error_code", e.exception_error_code});
  out.push_back({p + "events.interrupt_pending", e.interrupt_pending});
  out.push_back({p + "events.interrupt_nr", e.interrupt_nr});
  out.push_back({p + "events.nmi_pending", e.nmi_pending});
  out.push_back({p + "events.nmi_masked", e.nmi_masked});
  out.push_back({p + "events.interrupt_shadow", e.interrupt_shadow});
  out.push_back({p + "activity", static_cast<std::uint64_t>(v.activity)});
  return out;
}

// One conjunct of the property, with what a counterexample reports about it.
struct Item {
  std::string field;
  std::string before, after;
  std::string why;
  z3::expr holds;
  bool concrete = true;  // the same conjunct decided with plain C++ arithmetic
};

}  // namespace

Result<PropertyResult> check_vcpu(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after,
                                  Verdict trees, const CheckOptions& opt) {
  const auto t0 = Clock::now();
  // A KVM handover has no EPTP to compare: KVM builds and owns the tree on both sides.
  const auto kvm_owned = [](const model::HandoverSnapshot& s) {
    const auto it = s.meta.find("ept");
    return s.eptp.raw() == 0 && it != s.meta.end() && it->second == kEptOwnedByKvm;
  };
  const bool no_eptp = kvm_owned(before) && kvm_owned(after);
  if (!no_eptp && (before.eptp.raw() == 0 || after.eptp.raw() == 0))
    return make_error("a snapshot has no EPTP (it is 0)");
  PropertyResult res;
  res.property = Property::kVcpu;
  detail::ContextLease lease;
  z3::context& c = lease.get();
  z3::solver s(c, "QF_BV");  // every formula here is quantifier-free bit-vector logic
  z3::params prm(c);
  prm.set("timeout", static_cast<unsigned>(std::max(1.0, opt.timeout_s * 1000.0)));
  if (opt.rlimit != 0) prm.set("rlimit", opt.rlimit);
  s.set(prm);
  std::vector<Item> items;
  std::size_t root_item = SIZE_MAX;  // the index of the EPTP-root item, if there is one
  // The formula is built twice at most. First with the snapshot values as bit-vector literals
  // (Z3 decides that ground formula at once); if some conjunct fails in C++, again with named
  // constants fixed to the values, so that the model, the counterexample and the SMT-LIB2 text
  // name the fields. Both are the same formula up to the naming.
  bool named = false;
  // A field pair: the two snapshot values (named constants fixed to them, when `named`).
  auto scalar = [&](const std::string& name, std::uint64_t b, std::uint64_t a) -> std::pair<z3::expr, z3::expr> {
    if (!named) return {c.bv_val(b, 64), c.bv_val(a, 64)};
    const z3::expr xb = c.bv_const(("before." + name).c_str(), 64);
    const z3::expr xa = c.bv_const(("after." + name).c_str(), 64);
    s.add(xb == c.bv_val(b, 64));
    s.add(xa == c.bv_val(a, 64));
    return {xb, xa};
  };
  auto equal = [&](const std::string& name, std::uint64_t b, std::uint64_t a, const std::string& why) {
    auto [xb, xa] = scalar(name, b, a);
    items.push_back(Item{name, hex(b), hex(a), why, xb == xa, b == a});
  };

  // Builds every conjunct into `items` (and the value assertions into `s`, when `named`).
  auto build = [&] {
    equal("vcpus.count", before.vcpus.size(), after.vcpus.size(), "the number of vCPUs changed");
    const std::size_t n = std::min(before.vcpus.size(), after.vcpus.size());
    for (std::size_t i = 0; i < n; ++i) {
      const model::VcpuState& vb = before.vcpus[i];
      const model::VcpuState& va = after.vcpus[i];
      const std::string p = "vcpu" + std::to_string(i) + ".";
      const std::vector<Field> fb = flatten(vb, p), fa = flatten(va, p);
      std::size_t k = 0;
      for (; k < fb.size() && k < fa.size() && fb[k].name == fa[k].name; ++k)
        equal(fb[k].name, fb[k].value, fa[k].value, "the guest state must be preserved");
      if (k < fb.size() || k < fa.size())
        items.push_back(Item{p + "layout", "", "", "the register blobs differ in size", c.bool_val(false), false});
      // MSRs: the same set of indices with the same values, except the clocks (IA32_TSC, whose
      // relation follows; Hyper-V's reference time, which counts the VM's own kvmclock).
      std::set<std::uint32_t> idx;
      for (const auto& [m, v] : vb.msrs) idx.insert(m);
      for (const auto& [m, v] : va.msrs) idx.insert(m);
      for (std::uint32_t m : idx) {
        if (model::is_clock_msr(m)) continue;
        const auto ib = vb.msrs.find(m), ia = va.msrs.find(m);
        const std::string name = p + "msr[" + hex(m) + "]";
        if (ib == vb.msrs.end() || ia == va.msrs.end()) {
          equal(name + ".present", ib != vb.msrs.end(), ia != va.msrs.end(), "an MSR was dropped or added");
          continue;
        }
        equal(name, ib->second, ia->second, "the guest state must be preserved");
      }
      // The guest TSC (host TSC + offset) at capture must be the same on both sides.
      auto [ob, oa] = scalar(p + "tsc_offset", vb.tsc_offset, va.tsc_offset);
      auto [hb, ha] = scalar(p + "host_tsc_at_capture", vb.host_tsc_at_capture, va.host_tsc_at_capture);
      items.push_back(
          Item{p + "tsc_offset", hex(vb.tsc_offset) + " (host tsc " + hex(vb.host_tsc_at_capture) + ")",
               hex(va.tsc_offset) + " (host tsc " + hex(va.host_tsc_at_capture) + ")",
               "the TSC offset must change by exactly minus the host-time gap, so that the guest TSC is "
               "continuous (guest TSC " +
                   hex(vb.guest_tsc()) + " before, " + hex(va.guest_tsc()) + " after)",
               detail::tsc_continuous(ob, oa, hb, ha),
               va.tsc_offset - vb.tsc_offset == std::uint64_t{0} - (va.host_tsc_at_capture - vb.host_tsc_at_capture)});
    }

    // VMCS guest-state area: the same fields with the same values. Host state may differ.
    const auto gb = before.vmcs.area(model::VmcsArea::kGuestState);
    const auto ga = after.vmcs.area(model::VmcsArea::kGuestState);
    std::set<std::uint32_t> encs;
    for (const auto& [e, v] : gb) encs.insert(e);
    for (const auto& [e, v] : ga) encs.insert(e);
    for (std::uint32_t e : encs) {
      const model::VmcsField* f = model::find_vmcs_field(e);
      const std::string name = "vmcs." + std::string(f != nullptr ? f->name : "field") + " (" + hex(e) + ")";
      const auto ib = gb.find(e), ia = ga.find(e);
      if (ib == gb.end() || ia == ga.end()) {
        equal(name + ".present", ib != gb.end(), ia != ga.end(), "a guest-state field was dropped or added");
        continue;
      }
      equal(name, ib->second, ia->second, "the VMCS guest-state area must be preserved");
    }
    // The VMCS TSC offset (a control field) follows the same relation, with vCPU 0's host TSCs.
    if (auto tb = before.vmcs.get(model::vmcs::kTscOffset), ta = after.vmcs.get(model::vmcs::kTscOffset);
        tb && ta && !before.vcpus.empty() && !after.vcpus.empty()) {
      auto [ob, oa] = scalar("vmcs.tsc_offset", *tb, *ta);
      auto [hb, ha] =
          scalar("vmcs.host_tsc_at_capture", before.vcpus[0].host_tsc_at_capture, after.vcpus[0].host_tsc_at_capture);
      items.push_back(Item{
          "vmcs.tsc_offset (0x2010)", hex(*tb), hex(*ta),
          "the VMCS TSC offset must change by exactly minus the host-time gap", detail::tsc_continuous(ob, oa, hb, ha),
          *ta - *tb == std::uint64_t{0} - (after.vcpus[0].host_tsc_at_capture - before.vcpus[0].host_tsc_at_capture)});
    }

    // EPTP: memory type, walk length and A/D enable must match; the root may differ only with proof.
    const std::uint64_t kRootMask = model::EptEntry::kAddrBitsMax;
    if (!no_eptp) {
      equal("eptp.flags", before.eptp.raw() & ~kRootMask, after.eptp.raw() & ~kRootMask,
            "the EPTP's memory type, walk length or A/D enable changed");
      auto [rb, ra] = scalar("eptp.root", before.eptp.root().value, after.eptp.root().value);
      z3::expr proven = c.bool_val(trees == Verdict::kProven);
      if (named) {
        proven = c.bool_const("trees_proven_equivalent");
        s.add(proven == c.bool_val(trees == Verdict::kProven));
      }
      root_item = items.size();
      items.push_back(Item{"eptp.root", hex(before.eptp.root().value), hex(after.eptp.root().value),
                           std::string("the EPTP root changed and the tree comparison was ") + to_string(trees),
                           rb == ra || proven, before.eptp.root() == after.eptp.root() || trees == Verdict::kProven});
    }
  };
  build();
  if (!std::all_of(items.begin(), items.end(), [](const Item& it) { return it.concrete; })) {
    items.clear();
    root_item = SIZE_MAX;
    named = true;
    build();
  }

  z3::expr_vector all(c);
  for (const Item& it : items) all.push_back(it.holds);
  s.add(!z3::mk_and(all));
  res.stats.z3_queries = 1;
  const z3::check_result r = s.check();
  if (r == z3::unsat) {
    res.verdict = Verdict::kProven;
    res.summary = std::to_string(items.size()) + " fields and relations hold (guest TSC continuous, " +
                  (no_eptp ? std::string("no EPTP: KVM owns the EPT")
                           : std::string("EPTP root ") + (before.eptp.root() == after.eptp.root()
                                                              ? "unchanged"
                                                              : "changed with proven equivalent trees")) +
                  ")";
  } else if (r == z3::unknown) {
    res.verdict = Verdict::kUnknown;
    res.unknown_reason = "Z3: " + s.reason_unknown();
    res.summary = "unknown: " + res.unknown_reason;
    if (opt.keep_smt2) res.smt2 = s.to_smt2("unknown");
  } else {
    const z3::model m = s.get_model();
    std::size_t hit = items.size();
    for (std::size_t i = 0; i < items.size() && hit == items.size(); ++i)
      if (!m.eval(items[i].holds, true).is_true()) hit = i;
    if (hit == items.size()) hit = 0;
    const Item& it = items[hit];
    if (hit == root_item && trees == Verdict::kUnknown) {
      res.verdict = Verdict::kUnknown;
      res.unknown_reason = "the EPTP root changed and the equivalence of the trees is unknown";
      res.summary = "unknown: " + res.unknown_reason;
    } else {
      res.verdict = Verdict::kRefuted;
      Counterexample cx;
      cx.field = it.field;
      cx.before = it.before;
      cx.after = it.after;
      cx.explanation = it.field + ": " + it.why;
      cx.confirmed_concretely = !it.concrete;
      res.summary = cx.explanation + " (before " + it.before + ", after " + it.after + ")";
      res.counterexample = cx;
    }
    if (opt.keep_smt2) res.smt2 = s.to_smt2(res.verdict == Verdict::kUnknown ? "unknown" : "sat");
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  res.stats.z3_s = res.seconds;
  return res;
}

}  // namespace baton::checker
