// Campaign plans: the fault model (targets, triggers, ops), the exhaustive and sampled fault
// lists, stable ids, and the plan's JSON form.
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "baton/campaign/campaign.hpp"
#include "baton/model/file_io.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/vmcs.hpp"

namespace baton::campaign {

using nlohmann::json;

const char* to_string(Target t) {
  switch (t) {
    case Target::kEpt: return "ept";
    case Target::kVmcs: return "vmcs";
    case Target::kRegs: return "regs";
    case Target::kMemslot: return "memslot";
    case Target::kRam: return "ram";
  }
  return "?";
}

std::optional<Target> target_from_string(std::string_view s) {
  for (Target t : kAllTargets)
    if (s == to_string(t)) return t;
  return std::nullopt;
}

namespace {

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// The prefix of a spec that makes its op ("", "stuck0:", "stuck1:").
std::string op_prefix(sim::FaultOp op) {
  return op == sim::FaultOp::kFlip ? "" : std::string(sim::to_string(op)) + ":";
}

// One fault of the space before method, trigger and op are chosen.
struct Site {
  Target target;
  std::string field;
  unsigned bit;
  std::string spec;  // without the op prefix
};

// What the golden run learned about the VM at the migration point.
struct Catalog {
  model::HandoverSnapshot snap;
  std::vector<std::uint64_t> mapped_pages;  // GPAs of mapped 4 KiB pages (sampling)
  std::uint64_t walk_gpa = 0;
  std::vector<unsigned> walk_levels;        // levels of the walk's entries, root first
  std::vector<std::pair<std::string, unsigned>> vmcs_fields;  // name, width in bits
  std::vector<std::string> regs;
};

// Width in bits of a VMCS field.
unsigned width_bits(model::VmcsWidth w) {
  switch (w) {
    case model::VmcsWidth::k16: return 16;
    case model::VmcsWidth::k32: return 32;
    default: return 64;
  }
}

// Runs the guest to the migration point and learns the fault space there.
Result<Catalog> learn(const PlanOptions& o, const Setup& setup, std::uint64_t& total_insns) {
  Catalog c;
  auto m = sim::SimMachine::create(setup.cfg);
  if (!m) return m.error();
  BATON_TRY_VOID((*m)->load(setup.image));
  sim::RunLimits point;
  point.budget = 4'000'000'000ull;
  point.sync = o.at_sync;
  const sim::RunEvent e = (*m)->run(point);
  if (e.reason != sim::StopReason::kSyncPoint)
    return make_error("campaign plan: the guest never reached sync point " + std::to_string(o.at_sync) + " (it stopped with " +
                      sim::to_string(e.reason) + ": " + e.detail + ")");
  auto s = (*m)->snapshot();
  if (!s) return s.error();
  c.snap = std::move(*s);
  auto set = model::MappingSet::from_tree(c.snap.eptp, c.snap.tables, c.snap.ept_config);
  if (!set) return set.error();
  for (const model::MappingRun& r : set->runs())
    if (r.kind == model::RunKind::kMapped)
      for (std::uint64_t off = 0; off < r.size && c.mapped_pages.size() < (1u << 22); off += model::kPageSize)
        c.mapped_pages.push_back(r.gpa.value + off);
  if (c.mapped_pages.empty()) return make_error("campaign plan: the tree maps nothing at the migration point");
  c.walk_gpa = o.gpa ? (*o.gpa & ~model::kPageMask) : c.mapped_pages[c.mapped_pages.size() / 2];
  const model::WalkResult w = model::walk(c.snap.eptp, model::Gpa{c.walk_gpa}, model::Access::kRead, c.snap.tables,
                                          c.snap.ept_config);
  if (!w.translated()) return make_error("campaign plan: --gpa " + hex(c.walk_gpa) + " is not mapped at the migration point");
  for (unsigned i = 0; i < w.path_len; ++i) c.walk_levels.push_back(w.path[i].level);
  for (const auto& [enc, v] : c.snap.vmcs.values()) {
    const model::VmcsField* f = model::find_vmcs_field(enc);
    if (f == nullptr || (f->area != model::VmcsArea::kGuestState && f->area != model::VmcsArea::kControl)) continue;
    if (enc == model::vmcs::kEptPointer) continue;  // the EPT target's "eptp"
    c.vmcs_fields.emplace_back(f->name, width_bits(f->width));
  }
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) c.regs.push_back(model::gpr_name(i));
  for (const char* r : {"rip", "rflags", "cr0", "cr3", "cr4", "efer", "tsc_offset"}) c.regs.push_back(r);
  for (const auto& [idx, v] : c.snap.vcpus.at(0).msrs)
    if (!model::is_clock_msr(idx)) c.regs.push_back("msr:" + hex(idx));
  sim::RunLimits rest;
  rest.budget = 4'000'000'000ull;
  const sim::RunEvent end = (*m)->run(rest);
  if (end.reason != sim::StopReason::kExited)
    return make_error(std::string("campaign plan: the fault-free guest did not exit (") + sim::to_string(end.reason) + ": " +
                      end.detail + ")");
  total_insns = (*m)->instructions();
  return c;
}

// The EPT site of one entry bit: level 1..4, or 0 for the EPTP.
Site ept_site(std::uint64_t gpa, unsigned level, unsigned bit) {
  if (level == 0) return Site{Target::kEpt, "eptp", bit, "vmcs:ept_pointer:" + std::to_string(bit)};
  return Site{Target::kEpt, "L" + std::to_string(level), bit,
              "ept:" + hex(gpa) + ":" + std::to_string(bit) + ":" + std::to_string(level)};
}
Site reg_site(const std::string& r, unsigned bit) {
  const std::string spec = r.rfind("msr:", 0) == 0 ? "reg:msr:" + r.substr(4) : "reg:" + r;
  return Site{Target::kRegs, r, bit, spec + ":" + std::to_string(bit)};
}
Site slot_site(std::uint32_t id, const char* fld, unsigned bit) {
  return Site{Target::kMemslot, "slot" + std::to_string(id) + "." + fld, bit,
              "memslot:" + std::to_string(id) + ":" + fld + ":" + std::to_string(bit)};
}
Site ram_site(std::uint64_t gpa, unsigned bit) {
  return Site{Target::kRam, "word", bit, "ram:" + hex(gpa) + ":" + std::to_string(bit)};
}

// Every site of a target (the exhaustive space).
std::vector<Site> all_sites(Target t, const Catalog& c) {
  std::vector<Site> out;
  switch (t) {
    case Target::kEpt:
      for (unsigned l : c.walk_levels)
        for (unsigned b = 0; b < 64; ++b) out.push_back(ept_site(c.walk_gpa, l, b));
      for (unsigned b = 0; b < 64; ++b) out.push_back(ept_site(0, 0, b));
      break;
    case Target::kVmcs:
      for (const auto& [name, width] : c.vmcs_fields)
        for (unsigned b = 0; b < width; ++b) out.push_back(Site{t, name, b, "vmcs:" + name + ":" + std::to_string(b)});
      break;
    case Target::kRegs:
      for (const std::string& r : c.regs)
        for (unsigned b = 0; b < 64; ++b) out.push_back(reg_site(r, b));
      break;
    case Target::kMemslot:
      for (const model::Memslot& s : c.snap.memslots)
        for (const char* f : {"gpa", "size", "hpa"})
          for (unsigned b = 0; b < 64; ++b) out.push_back(slot_site(s.id, f, b));
      break;
    case Target::kRam:
      for (unsigned b = 0; b < 64; ++b) out.push_back(ram_site(c.walk_gpa, b));
      break;
  }
  return out;
}

// One random site of a target: EPT and RAM sample any mapped page, the others their space.
Site sample_site(Target t, const Catalog& c, std::mt19937_64& rng) {
  auto pick = [&](std::uint64_t n) { return n == 0 ? 0 : rng() % n; };
  if (t == Target::kEpt) {
    const std::uint64_t gpa = c.mapped_pages[pick(c.mapped_pages.size())];
    const model::WalkResult w =
        model::walk(c.snap.eptp, model::Gpa{gpa}, model::Access::kRead, c.snap.tables, c.snap.ept_config);
    const unsigned k = static_cast<unsigned>(pick(w.path_len + 1));  // w.path_len: the EPTP
    const unsigned bit = static_cast<unsigned>(pick(64));
    if (k == w.path_len) return ept_site(0, 0, bit);
    const unsigned level = w.path[k].level;
    return ept_site(gpa, level, bit);
  }
  if (t == Target::kRam) {
    const std::uint64_t gpa = c.mapped_pages[pick(c.mapped_pages.size())] + 8 * pick(model::kPageSize / 8);
    return ram_site(gpa, static_cast<unsigned>(pick(64)));
  }
  const std::vector<Site> all = all_sites(t, c);
  return all[pick(all.size())];
}

// Whether a trigger before the handover applies to a target: only state the running source
// holds (its EPT, its VMCS controls, guest RAM) can be hit before the pause.
bool early_ok(const Site& s) {
  if (s.target == Target::kEpt || s.target == Target::kRam) return true;
  if (s.target != Target::kVmcs) return false;
  const model::VmcsField* f = model::find_vmcs_field(s.field);
  return f != nullptr && f->area != model::VmcsArea::kGuestState;
}

// Checks a trigger's form: handover, sync:N (N below the migration point) or insn:N.
Result<void> check_trigger(const std::string& t, std::uint32_t at_sync) {
  if (t == "handover") return ok_result();
  const auto colon = t.find(':');
  const std::string kind = t.substr(0, colon);
  std::uint64_t n = 0;
  try {
    std::size_t used = 0;
    n = colon == std::string::npos ? 0 : std::stoull(t.substr(colon + 1), &used, 0);
    if (colon == std::string::npos || used != t.size() - colon - 1) throw std::invalid_argument(t);
  } catch (...) {
    return make_error("--triggers: '" + t + "' is not handover, sync:N or insn:N");
  }
  if (kind == "sync" && (n == 0 || n >= at_sync))
    return make_error("--triggers: " + t + " must come before the migration point (sync point " + std::to_string(at_sync) +
                      "; raise --at-sync)");
  if (kind == "insn" && n == 0) return make_error("--triggers: insn:N needs N > 0");
  if (kind != "sync" && kind != "insn") return make_error("--triggers: '" + t + "' is not handover, sync:N or insn:N");
  return ok_result();
}

PlannedFault planned(const Site& s, sim::Method m, const std::string& trigger, sim::FaultOp op) {
  PlannedFault f;
  f.method = m;
  f.trigger = trigger;
  f.target = s.target;
  f.field = s.field;
  f.bit = s.bit;
  f.op = op;
  f.spec = op_prefix(op) + s.spec;
  f.id = std::string(sim::to_string(m)) + "/" + trigger + "/" + f.spec;
  return f;
}

}  // namespace

Result<Plan> make_plan(const PlanOptions& o, const Setup& setup) {
  if (o.methods.empty()) return make_error("campaign plan: no --method");
  if (o.targets.empty()) return make_error("campaign plan: no --targets");
  if (o.exhaustive == (o.samples > 0)) return make_error("campaign plan: give --exhaustive or --samples N (one of them)");
  for (const std::string& t : o.triggers) BATON_TRY_VOID(check_trigger(t, o.at_sync));
  std::uint64_t total = 0;
  auto cat = learn(o, setup, total);
  if (!cat) return cat.error();
  Plan p;
  p.guest = o.guest;
  p.at_sync = o.at_sync;
  p.budget = 2 * total + 1'000'000;
  p.walk_gpa = cat->walk_gpa;
  std::set<std::string> seen;
  auto add = [&](const Site& s, sim::Method m, const std::string& trig, sim::FaultOp op) {
    if (trig != "handover" && !early_ok(s)) return false;
    PlannedFault f = planned(s, m, trig, op);
    if (!seen.insert(f.id).second) return false;
    p.faults.push_back(std::move(f));
    return true;
  };
  if (o.exhaustive) {
    p.mode = "exhaustive";
    for (Target t : o.targets) {
      const std::vector<Site> sites = all_sites(t, *cat);
      for (sim::Method m : o.methods)
        for (const std::string& trig : o.triggers)
          for (sim::FaultOp op : o.ops)
            for (const Site& s : sites) add(s, m, trig, op);
    }
  } else {
    p.mode = "samples " + std::to_string(o.samples) + " seed " + std::to_string(o.seed);
    std::mt19937_64 rng(o.seed);
    for (std::uint64_t tries = 0; p.faults.size() < o.samples && tries < 50 * o.samples; ++tries) {
      const Target t = o.targets[rng() % o.targets.size()];
      const sim::Method m = o.methods[rng() % o.methods.size()];
      const std::string& trig = o.triggers[rng() % o.triggers.size()];
      const sim::FaultOp op = o.ops[rng() % o.ops.size()];
      add(sample_site(t, *cat, rng), m, trig, op);
    }
  }
  if (p.faults.empty()) return make_error("campaign plan: the arguments give no fault (early triggers apply to ept, vmcs "
                                          "controls and ram only)");
  p.hash = "";
  const std::string text = plan_text(p);
  return parse_plan(text);  // the plan as it will be read back, hash included
}

std::string plan_text(const Plan& p) {
  json h;
  h["format"] = "baton-campaign-plan";
  h["version"] = 1;
  h["guest"] = p.guest.guest;
  h["params"] = p.guest.params;
  h["mem"] = p.guest.mem;
  h["pages"] = p.guest.pages;
  h["no_ad"] = p.guest.no_ad;
  h["at_sync"] = p.at_sync;
  h["budget"] = p.budget;
  h["walk_gpa"] = hex(p.walk_gpa);
  h["mode"] = p.mode;
  h["faults"] = p.faults.size();
  std::string out = "{\"plan\": " + h.dump() + ",\n\"faults\": [\n";
  for (std::size_t i = 0; i < p.faults.size(); ++i) {
    const PlannedFault& f = p.faults[i];
    json j = {{"id", f.id},         {"method", sim::to_string(f.method)}, {"trigger", f.trigger},
              {"target", to_string(f.target)}, {"field", f.field}, {"bit", f.bit},
              {"op", sim::to_string(f.op)}, {"spec", f.spec}};
    out += j.dump() + (i + 1 < p.faults.size() ? ",\n" : "\n");
  }
  return out + "]}\n";
}

Result<Plan> parse_plan(const std::string& text) {
  Plan p;
  try {
    const json j = json::parse(text);
    const json& h = j.at("plan");
    if (h.at("format") != "baton-campaign-plan" || h.at("version") != 1)
      return make_error("not a baton campaign plan (format baton-campaign-plan, version 1)");
    p.guest.guest = h.at("guest");
    p.guest.params = h.at("params").get<std::vector<std::string>>();
    p.guest.mem = h.at("mem");
    p.guest.pages = h.at("pages");
    p.guest.no_ad = h.at("no_ad");
    p.at_sync = h.at("at_sync");
    p.budget = h.at("budget");
    p.walk_gpa = std::stoull(h.at("walk_gpa").get<std::string>(), nullptr, 0);
    p.mode = h.at("mode");
    for (const json& f : j.at("faults")) {
      PlannedFault x;
      x.id = f.at("id");
      auto m = sim::method_from_string(f.at("method").get<std::string>());
      auto t = target_from_string(f.at("target").get<std::string>());
      if (!m || !t) return make_error("plan: fault " + x.id + " has an unknown method or target");
      x.method = *m;
      x.target = *t;
      x.trigger = f.at("trigger");
      x.field = f.at("field");
      x.bit = f.at("bit");
      const std::string op = f.at("op");
      x.op = op == "stuck0" ? sim::FaultOp::kStuck0 : op == "stuck1" ? sim::FaultOp::kStuck1 : sim::FaultOp::kFlip;
      x.spec = f.at("spec");
      if (auto ok = sim::parse_fault(x.spec); !ok) return make_error("plan: fault " + x.id + ": " + ok.error().message);
      p.faults.push_back(std::move(x));
    }
    if (h.at("faults") != p.faults.size()) return make_error("plan: the header counts a different number of faults");
  } catch (const std::exception& e) {
    return make_error(std::string("plan: malformed JSON (") + e.what() + ")");
  }
  char b[20];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(XXH3_64bits(text.data(), text.size())));
  p.hash = b;
  return p;
}

Result<Plan> load_plan(const std::string& path) {
  auto text = model::read_text_file(path, std::uint64_t{4} << 30, "plan");
  if (!text) return text.error();
  auto p = parse_plan(*text);
  if (!p) return make_error(path + ": " + p.error().message);
  return p;
}

const PlannedFault* find_fault(const Plan& p, const std::string& id, std::size_t* index) {
  for (std::size_t i = 0; i < p.faults.size(); ++i)
    if (p.faults[i].id == id) {
      if (index) *index = i;
      return &p.faults[i];
    }
  std::string n = id;
  if (!n.empty() && n[0] == '#') n = n.substr(1);
  if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) return nullptr;
  const std::size_t i = std::stoull(n);
  if (i >= p.faults.size()) return nullptr;
  if (index) *index = i;
  return &p.faults[i];
}

}  // namespace baton::campaign
