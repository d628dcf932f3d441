// baton explore: the session (a simulator VM, its replayable history and named states) and the
// commands that act on it: run, step, break, inject, migrate, check, time travel, load, backend.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/checker/report.hpp"
#include "baton/guests/abi.hpp"
#include "baton/guests/registry.hpp"
#include "baton/model/snapshot_io.hpp"
#include "cmd_explore.hpp"
#include "migrate_render.hpp"
#include "parse.hpp"

namespace baton::cli::explore {

using nlohmann::json;

volatile std::sig_atomic_t g_interrupted = 0;

namespace {

// Instructions per run chunk: Ctrl-C is noticed between chunks.
constexpr std::uint64_t kChunk = 2'000'000;


// The VM's RIP now.
std::uint64_t rip_of(const sim::SimMachine& vm) { return vm.vcpu_state().rip; }

// Prints how a run or step stopped, and records it for `expect`.
void report_stop(Session& s, const sim::RunEvent& e, bool interrupted) {
  s.last.stop = e;
  const sim::GuestOutput& out = s.vm->output();
  const std::uint64_t insns = s.vm->instructions(), rip = rip_of(*s.vm);
  const bool exited = e.reason == sim::StopReason::kExited;
  std::optional<std::uint64_t> expected;  // the host reference run: only once the guest is done
  if (exited)
    if (auto ex = guests::expected_result(s.opts.guest, s.setup.image.params)) expected = *ex;
  if (exited) {
    s.last.have_checksum = true;
    s.last.checksum = out.checksum();
    s.last.expected = expected;
  }
  if (s.json) {
    json j{{"stop", interrupted ? "interrupted" : sim::to_string(e.reason)},
           {"detail", e.detail},
           {"stage", e.stage},
           {"instructions", insns},
           {"rip", hex(rip)}};
    if (exited) {
      j["checksum"] = out.checksum() ? json(hex(*out.checksum())) : json(nullptr);
      j["expected"] = expected ? json(hex(*expected)) : json(nullptr);
      j["checksum_match"] = out.checksum() && expected && *out.checksum() == *expected;
    }
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::string what = interrupted ? "interrupted (Ctrl-C)" : std::string(sim::to_string(e.reason));
  if (!interrupted && e.reason != sim::StopReason::kInsnLimit && e.reason != sim::StopReason::kSyncPoint) what += " (" + e.detail + ")";
  std::printf("stopped: %s at insn %llu, stage %u, rip %s\n", what.c_str(), static_cast<unsigned long long>(insns), e.stage,
              hex(rip).c_str());
  if (exited) {
    const auto c = out.checksum();
    std::printf("checksum %s (expected %s: %s)\n", c ? hex(*c).c_str() : "none", expected ? hex(*expected).c_str() : "none",
                c && expected && *c == *expected ? "match" : "MISMATCH");
  }
}

// A state's one-line description for `snapshots`.
json snap_json(const std::string& name, const Snap& n) {
  return json{{"name", name},     {"restorable", n.replayable}, {"instructions", n.insns},
              {"stage", n.stage}, {"origin", n.origin},         {"faults", n.faults},
              {"pending", n.pending_desc}};
}

}  // namespace

Result<std::uint64_t> number(const std::string& text, const std::string& what) {
  auto v = parse_u64(text);
  if (!v) return make_error(what + " '" + text + "' is not a number (decimal or 0x-hex)");
  return *v;
}

Result<std::string> snap_name(const std::string& text) {
  std::string n = !text.empty() && text[0] == '@' ? text.substr(1) : text;
  if (n.empty() || n == "now" || n == "." ||
      !std::all_of(n.begin(), n.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'; }))
    return make_error("'" + text + "' is not a snapshot name (letters, digits, . _ -; 'now' is the current state)");
  return n;
}

void report_check(Session& s, const checker::Report& rep) {
  s.last.verdicts.clear();
  for (const checker::PropertyResult& p : rep.results) s.last.verdicts.emplace_back(checker::to_string(p.property), p.verdict);
  s.last.overall = rep.overall();
  if (s.json) std::cout << checker::to_json(rep) << "\n";
  else std::cout << checker::to_text(rep);
}

Result<void> Session::load(const SimOptions& o) {
  if (kvm) return kvm_load(*this, o);
  auto st = make_sim_setup(o);
  if (!st) return st.error();
  auto m = sim::SimMachine::create(st->cfg);
  if (!m) return m.error();
  BATON_TRY_VOID((*m)->load(st->image));
  opts = o;
  setup = std::move(*st);
  vm = std::move(*m);
  steps.clear();
  pending.reset();
  pending_desc.clear();
  faults.clear();
  breaks.clear();
  snaps.clear();
  last = Findings{};
  last_event = sim::RunEvent{sim::StopReason::kInsnLimit, "loaded", 0};
  touched();
  return ok_result();
}

Result<sim::RunEvent> Session::replay(sim::SimMachine& m, const std::vector<Step>& list) const {
  sim::RunEvent e{sim::StopReason::kInsnLimit, "0 instructions", 0};
  for (const Step& st : list) {
    if (st.inject) {
      auto d = sim::plant_source_fault(m, st.fault);
      if (!d) return make_error("replay: " + d.error().message);
    } else {
      e = m.run(st.limits);
    }
  }
  return e;
}

bool Session::exited() const { return kvm ? kvm_exited(*this) : vm->output().exit_code.has_value(); }

Result<model::VcpuState> Session::vcpu_now() {
  if (kvm) return kvm_vcpu_now(*this);
  return vm->vcpu_state();
}

std::vector<std::uint8_t> Session::read_guest(std::uint64_t gpa, std::uint64_t len) const {
  return kvm ? kvm_read_guest(*this, gpa, len) : vm->read_guest(model::Gpa{gpa}, len);
}

sim::GuestOutput Session::output_now() const { return kvm ? kvm_output_now(*this) : vm->output(); }

sim::RunEvent Session::run(sim::RunLimits want) {
  touched();
  const std::uint32_t stage = last_event.stage;
  std::uint64_t stop_at = want.until_insn != 0 ? want.until_insn : ~std::uint64_t{0};
  for (const Break& b : breaks) {
    if (b.kind == Break::kSync && b.value > stage && (!want.sync || b.value < *want.sync))
      want.sync = static_cast<std::uint32_t>(b.value);
    if (b.kind == Break::kInsn && b.value > vm->instructions()) stop_at = std::min(stop_at, b.value);
    if (b.kind == Break::kPort && !want.port) want.port = static_cast<std::uint16_t>(b.value);
  }
  const bool to_budget = stop_at > budget;
  stop_at = std::min(stop_at, budget);
  for (;;) {
    sim::RunLimits l = want;
    l.budget = 0;
    l.until_insn = std::min(stop_at, vm->instructions() + kChunk);
    if (l.until_insn <= vm->instructions()) l.until_insn = vm->instructions() + 1;
    const sim::RunEvent e = vm->run(l);
    steps.push_back(Step{false, l, {}});
    last_event = e;
    if (e.reason != sim::StopReason::kInsnLimit) return e;
    if (vm->instructions() >= stop_at) {
      if (to_budget)
        return last_event = sim::RunEvent{sim::StopReason::kHang, "no exit within " + std::to_string(budget) + " instructions", e.stage};
      return e;
    }
    if (g_interrupted != 0) return last_event = sim::RunEvent{sim::StopReason::kInsnLimit, "interrupted", e.stage};
  }
}

Result<const model::HandoverSnapshot*> Session::current() {
  if (!cache_) {
    auto s = kvm ? kvm_snapshot(*this) : vm->snapshot();
    if (!s) return s.error();
    s->meta["guest"] = opts.guest;
    cache_ = std::move(*s);
  }
  return &*cache_;
}

Result<const model::HandoverSnapshot*> Session::state(const std::string& name) {
  std::string n = !name.empty() && name[0] == '@' ? name.substr(1) : name;
  if (n == "now" || n == ".") return current();
  auto it = snaps.find(n);
  if (it == snaps.end()) return make_error("no snapshot '" + n + "' (see `snapshots`; @now is the current state)");
  return &it->second.state;
}

// run [N [insns] | to sync K | to insn N | to exit]
Result<void> cmd_run(Session& s, const Args& a) {
  if (s.exited()) return make_error("the guest has exited; `restore` a snapshot or `load` a guest to run again");
  sim::RunLimits l;
  const std::vector<std::string>& w = a.words;
  std::vector<Break> saved;
  if (w.size() >= 2 && w[1] == "to") {
    if (w.size() == 3 && w[2] == "exit") {
      saved.swap(s.breaks);  // an explicit target: breakpoints do not apply
    } else if (w.size() == 4 && (w[2] == "sync" || w[2] == "insn")) {
      auto v = number(w[3], w[2] == "sync" ? "sync point" : "instruction");
      if (!v) return v.error();
      if (w[2] == "sync") {
        if (*v == 0 || *v > 0xFFFFFFFFu) return make_error("sync point must be 1..2^32-1");
        if (*v <= s.last_event.stage)
          return make_error("sync point " + w[3] + " has passed (the guest is at stage " + std::to_string(s.last_event.stage) + ")");
        l.sync = static_cast<std::uint32_t>(*v);
      } else {
        if (*v <= s.vm->instructions()) return make_error("instruction " + w[3] + " has passed");
        l.until_insn = *v;
      }
    } else {
      return make_error("usage: run [N | to sync K | to insn N | to exit]");
    }
  } else if (w.size() == 2 || (w.size() == 3 && (w[2] == "insns" || w[2] == "insn"))) {
    auto n = number(w[1], "instruction count");
    if (!n) return n.error();
    if (*n == 0) return make_error("run 0 does nothing; give a positive count");
    l.until_insn = s.vm->instructions() + *n;
  } else if (w.size() != 1) {
    return make_error("usage: run [N | to sync K | to insn N | to exit]");
  }
  const sim::RunEvent e = s.run(l);
  if (!saved.empty()) s.breaks.swap(saved);
  report_stop(s, e, e.detail == "interrupted");
  return ok_result();
}

// step [N]: N instructions (default 1); the simulator stops at block boundaries.
Result<void> cmd_step(Session& s, const Args& a) {
  if (s.exited()) return make_error("the guest has exited; `restore` a snapshot or `load` a guest to run again");
  if (a.words.size() > 2) return make_error("usage: step [N]");
  std::uint64_t n = 1;
  if (a.words.size() == 2) {
    auto v = number(a.words[1], "step count");
    if (!v) return v.error();
    if (*v == 0) return make_error("step 0 does nothing; give a positive count");
    n = *v;
  }
  sim::RunLimits l;
  l.until_insn = s.vm->instructions() + n;
  const sim::RunEvent e = s.run(l);
  report_stop(s, e, e.detail == "interrupted");
  if (s.json || s.exited()) return ok_result();
  return cmd_disas(s, Args{{"disas", "rip", "1"}, false});  // the next instruction
}

// Prints the breakpoints (a list, or JSON).
void list_breaks(const Session& s) {
  if (s.json) {
    json arr = json::array();
    for (const Break& b : s.breaks)
      arr.push_back(json{{"kind", b.kind == Break::kSync ? "sync" : b.kind == Break::kInsn ? "insn" : "port"}, {"value", b.value}});
    std::cout << json{{"breakpoints", arr}}.dump(2) << "\n";
    return;
  }
  if (s.breaks.empty()) std::printf("no breakpoints\n");
  for (std::size_t i = 0; i < s.breaks.size(); ++i) {
    const Break& b = s.breaks[i];
    std::printf("%zu  %s %s\n", i + 1, b.kind == Break::kSync ? "sync" : b.kind == Break::kInsn ? "insn" : "port",
                b.kind == Break::kPort ? hex(b.value).c_str() : std::to_string(b.value).c_str());
  }
}

// break [sync K | insn N | port P | del N | clear]; with --json each form prints the list.
Result<void> cmd_break(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  std::string said;
  if (w.size() == 1) {
    list_breaks(s);
    return ok_result();
  }
  if (w.size() == 2 && w[1] == "clear") {
    s.breaks.clear();
    said = "breakpoints cleared";
  } else if (w.size() != 3) {
    return make_error("usage: break [sync K | insn N | port P | del N | clear]");
  } else if (w[1] == "del") {
    auto i = number(w[2], "breakpoint number");
    if (!i) return i.error();
    if (*i == 0 || *i > s.breaks.size()) return make_error("no breakpoint " + w[2] + " (see `break`)");
    s.breaks.erase(s.breaks.begin() + static_cast<std::ptrdiff_t>(*i - 1));
    said = "deleted breakpoint " + w[2];
  } else {
    Break b;
    if (w[1] == "sync") b.kind = Break::kSync;
    else if (w[1] == "insn") b.kind = Break::kInsn;
    else if (w[1] == "port") b.kind = Break::kPort;
    else return make_error("break: '" + w[1] + "' is not one of sync, insn, port, del, clear");
    std::optional<std::uint64_t> v = parse_u64(w[2]);
    if (b.kind == Break::kPort && !v)
      for (std::uint16_t p : {guests::kPortConsole, guests::kPortResultTag, guests::kPortResultLo, guests::kPortResultHi,
                              guests::kPortSync, guests::kPortInput, guests::kPortExit})
        if (const char* n = guests::port_name(p); n != nullptr && w[2] == n) v = p;
    if (!v) return make_error("break " + w[1] + ": '" + w[2] + "' is not a number" + (b.kind == Break::kPort ? " or an ABI port name" : ""));
    if (b.kind == Break::kPort && *v > 0xFFFF) return make_error("break port: ports are 0..0xffff");
    b.value = *v;
    if (b.kind == Break::kPort)  // the simulator stops on one port at a time
      std::erase_if(s.breaks, [](const Break& x) { return x.kind == Break::kPort; });
    s.breaks.push_back(b);
    said = "breakpoint " + std::to_string(s.breaks.size()) + ": " + w[1] + " " + (b.kind == Break::kPort ? hex(b.value) : w[2]);
  }
  if (s.json) list_breaks(s);
  else std::printf("%s\n", said.c_str());
  return ok_result();
}

// inject FAULT | inject --id ID --plan PLAN
Result<void> cmd_inject(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  if (w.size() >= 2 && (w[1] == "--id" || w[1] == "--plan"))
    return make_error("inject --id/--plan: replay a campaign fault with `baton inject ID --plan PLAN --explain`; here use "
                      "inject ept[:GPA[:BIT]], vmcs[:FIELD[:BIT]] or memslot[:ID[:FIELD[:BIT]]]");
  if (w.size() != 2) return make_error("usage: inject ept[:GPA[:BIT]] | vmcs[:FIELD[:BIT]] | memslot[:ID[:gpa|size|hpa[:BIT]]]");
  auto f = sim::parse_fault(w[1]);
  if (!f) return f.error();
  if (f->kind == sim::FaultKind::kNone) return make_error("inject none plants nothing; give ept, vmcs or memslot");
  if (s.exited()) return make_error("the guest has exited; `restore` a snapshot first");
  auto d = sim::plant_source_fault(*s.vm, *f);
  if (!d) return d.error();
  std::string desc = *d, where = "planted in the running VM";
  if (d->empty()) {
    if (s.pending) return make_error("a package fault is already pending (" + s.pending_desc + "); one per migration");
    s.pending = *f;
    desc = w[1];
    if (f->kind == sim::FaultKind::kMemslotBit)
      desc = "memslot " + std::to_string(f->slot) + " " + f->slot_field + " bit " +
             (f->bit ? std::to_string(*f->bit) : std::string("(default)"));
    else if (f->kind == sim::FaultKind::kRegBit)
      desc = "saved register " + f->reg + " bit " + std::to_string(f->bit.value_or(0));
    else
      desc = "VMCS " + std::string(model::find_vmcs_field(f->vmcs_field)->name) + " bit " + std::to_string(f->bit.value_or(0));
    s.pending_desc = desc;
    where = "pending: the next migrate plants it in the handover package";
  } else {
    s.steps.push_back(Step{true, {}, *f});
    s.faults.push_back(desc);
    s.touched();
  }
  if (s.json) std::cout << json{{"fault", desc}, {"where", d->empty() ? "package" : "source"}}.dump(2) << "\n";
  else std::printf("%s: %s\n", where.c_str(), desc.c_str());
  return ok_result();
}

// migrate METHOD [--policy P] [--dirty pml|wp] [--max-rounds N] [--no-reference] [--no-verify] [--timeout S]
Result<void> cmd_migrate(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  if (w.size() < 2) return make_error("usage: migrate local-adopt|local-rebuild|local-lazy|precopy [--policy reject|fallback|accept]");
  auto method = sim::method_from_string(w[1]);
  if (!method) return make_error("'" + w[1] + "' is not one of local-adopt, local-rebuild, local-lazy, precopy");
  if (s.exited()) return make_error("the guest has exited: nothing to migrate; `restore` a snapshot first");
  sim::MigrationOptions opt;
  opt.method = *method;
  opt.budget = s.budget;
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
    } else if (w[i] == "--dirty") {
      auto v = value();
      if (!v) return v.error();
      if (*v == "pml") opt.dirty = sim::DirtyMode::kPml;
      else if (*v == "wp") opt.dirty = sim::DirtyMode::kWriteProtect;
      else return make_error("--dirty '" + *v + "' is not one of pml, wp");
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
    } else if (w[i] == "--no-reference") {
      opt.reference = false;
    } else if (w[i] == "--no-verify") {
      opt.verify = false;
    } else {
      return make_error("migrate: unknown option '" + w[i] + "' (--policy, --dirty, --max-rounds, --timeout, --no-reference, --no-verify)");
    }
  }
  if (s.pending) opt.fault = *s.pending;
  // Progress on a terminal, as baton migrate shows it (the replay and the checks take a while).
  if (!s.json && isatty(fileno(stderr)) != 0)
    opt.progress = [](const std::string& line) { std::fprintf(stderr, "  .. %s\n", line.c_str()); };
  const std::vector<Step> steps = s.steps;
  const sim::RunEvent at = s.last_event;
  auto prep = [&](sim::SimMachine& m) -> Result<sim::RunEvent> {
    auto e = s.replay(m, steps);
    if (!e) return e.error();
    // The driver migrates at a sync point or an instruction count: where the session stands is one.
    return sim::RunEvent{sim::StopReason::kInsnLimit, std::to_string(m.instructions()) + " instructions", at.stage};
  };
  sim::SimConfig cfg = s.setup.cfg;
  cfg.trace_params["method"] = sim::to_string(*method);
  auto r = sim::migrate(s.setup.image, cfg, opt, {}, prep);
  if (!r) return r.error();
  std::vector<std::string> planted = s.faults;
  if (!r->fault.empty()) planted.push_back(r->fault);
  r->fault.clear();
  for (const std::string& f : planted) r->fault += (r->fault.empty() ? "" : "; ") + f;
  s.last.have_checksum = true;
  s.last.checksum = r->checksum;
  s.last.expected = r->expected;
  s.last.verdicts.clear();
  for (const sim::CheckLine& c : r->checks) s.last.verdicts.emplace_back(c.name, c.verdict);
  s.last.overall = r->verdict;
  s.last.outcome = migration_outcome(*r);
  Snap before;
  before.state = r->before;
  before.insns = r->at_insn;
  before.stage = r->at_stage;
  before.faults = planted;
  before.origin = "migration " + std::string(sim::to_string(*method)) + " (old instance at the pause)";
  s.snaps["migrate.before"] = before;
  if (r->switched || r->after.eptp.raw() != 0) {
    Snap after = before;
    after.state = r->after;
    after.origin = "migration " + std::string(sim::to_string(r->effective)) + " (new instance before it resumed)";
    s.snaps["migrate.after"] = after;
  } else {
    s.snaps.erase("migrate.after");
  }
  if (s.json) {
    json j = migration_json(*r);
    j["guest"] = s.opts.guest;
    j["mem"] = s.opts.mem;
    j["pages"] = s.opts.pages;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("guest        %s on sim (mem %s, %s pages), migrated from insn %llu\n", s.opts.guest.c_str(),
                s.opts.mem.c_str(), s.opts.pages.c_str(), static_cast<unsigned long long>(r->at_insn));
    std::fputs(migration_text(*r).c_str(), stdout);
    std::printf("(the session stays before the migration, at insn %llu; @migrate.before and @migrate.after hold the handover)\n",
                static_cast<unsigned long long>(s.vm->instructions()));
  }
  return ok_result();
}

// check [PROPERTIES] | check @A @B [PROPERTIES] [--timeout S]
Result<void> cmd_check(Session& s, const Args& a) {
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
    return make_error("usage: check [PROPERTIES] | check @A @B [PROPERTIES]");
  std::vector<checker::Property> props;
  if (!w.empty()) {
    auto p = checker::parse_property_list(w[0]);
    if (!p) return p.error();
    props = *p;
  }
  if (states.empty()) {
    auto cur = s.current();
    if (!cur) return cur.error();
    auto rep = checker::check_spec(**cur, props.empty() ? checker::spec_properties() : props, opt);
    if (!rep) return rep.error();
    report_check(s, *rep);
    return ok_result();
  }
  auto x = s.state(states[0]);
  if (!x) return x.error();
  const model::HandoverSnapshot before = **x;  // state() may refresh the cache for the second one
  auto y = s.state(states[1]);
  if (!y) return y.error();
  auto rep = checker::check_handover(before, **y, props.empty() ? checker::default_handover_properties(**y) : props, opt);
  if (!rep) return rep.error();
  report_check(s, *rep);
  return ok_result();
}

// snapshot NAME
Result<void> cmd_snapshot(Session& s, const Args& a) {
  if (a.words.size() != 2) return make_error("usage: snapshot NAME");
  auto n = snap_name(a.words[1]);
  if (!n) return n.error();
  auto cur = s.current();
  if (!cur) return cur.error();
  Snap sn;
  sn.replayable = true;
  sn.steps = s.steps;
  sn.pending = s.pending;
  sn.pending_desc = s.pending_desc;
  sn.faults = s.faults;
  sn.state = **cur;
  sn.insns = s.vm->instructions();
  sn.stage = s.last_event.stage;
  sn.origin = "snapshot";
  const bool replaced = s.snaps.count(*n) != 0;
  s.snaps[*n] = std::move(sn);
  if (s.json) std::cout << snap_json(*n, s.snaps[*n]).dump(2) << "\n";
  else
    std::printf("snapshot %s%s: insn %llu, stage %u%s\n", n->c_str(), replaced ? " (replaced)" : "",
                static_cast<unsigned long long>(s.vm->instructions()), s.last_event.stage,
                s.faults.empty() && !s.pending ? "" : ", with faults");
  return ok_result();
}

// restore NAME
Result<void> cmd_restore(Session& s, const Args& a) {
  if (a.words.size() != 2) return make_error("usage: restore NAME");
  auto n = snap_name(a.words[1]);
  if (!n) return n.error();
  auto it = s.snaps.find(*n);
  if (it == s.snaps.end()) return make_error("no snapshot '" + *n + "' (see `snapshots`)");
  const Snap& sn = it->second;
  if (!sn.replayable) return make_error("@" + *n + " comes from a migration: it can be viewed, checked and saved, not restored");
  auto m = sim::SimMachine::create(s.setup.cfg);
  if (!m) return m.error();
  BATON_TRY_VOID((*m)->load(s.setup.image));
  auto e = s.replay(**m, sn.steps);
  if (!e) return e.error();
  if ((*m)->instructions() != sn.insns)
    return make_error("restore " + *n + ": the replay reached insn " + std::to_string((*m)->instructions()) + ", not " +
                      std::to_string(sn.insns) + " (the simulator was not deterministic)");
  s.vm = std::move(*m);
  s.steps = sn.steps;
  s.pending = sn.pending;
  s.pending_desc = sn.pending_desc;
  s.faults = sn.faults;
  s.last_event = *e;
  s.last_event.stage = sn.stage;
  s.touched();
  if (s.json) std::cout << snap_json(*n, sn).dump(2) << "\n";
  else std::printf("restored %s: insn %llu, stage %u\n", n->c_str(), static_cast<unsigned long long>(sn.insns), sn.stage);
  return ok_result();
}

// snapshots
Result<void> cmd_snapshots(Session& s, const Args& a) {
  if (a.words.size() != 1) return make_error("usage: snapshots");
  if (s.json) {
    json arr = json::array();
    for (const auto& [name, n] : s.snaps) arr.push_back(snap_json(name, n));
    std::cout << json{{"snapshots", arr}}.dump(2) << "\n";
    return ok_result();
  }
  if (s.snaps.empty()) std::printf("no snapshots (take one with `snapshot NAME`)\n");
  for (const auto& [name, n] : s.snaps) {
    if (s.kvm)  // KVM counts exits to user space, not instructions
      std::printf("@%-16s exits %-9llu stage %-3u %s%s\n", name.c_str(), static_cast<unsigned long long>(n.kvm ? n.kvm->exits : 0),
                  n.stage, n.origin.c_str(), n.replayable ? "" : " [view only]");
    else
      std::printf("@%-16s insn %-10llu stage %-3u %s%s\n", name.c_str(), static_cast<unsigned long long>(n.insns), n.stage,
                  n.origin.c_str(), n.replayable ? "" : " [view only]");
    for (const std::string& f : n.faults) std::printf("    fault: %s\n", f.c_str());
    if (n.pending) std::printf("    pending: %s\n", n.pending_desc.c_str());
  }
  return ok_result();
}

// save NAME FILE [--force]
Result<void> cmd_save(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  const bool force = w.size() == 4 && w[3] == "--force";
  if (w.size() != 3 && !force) return make_error("usage: save NAME|now FILE [--force]");
  auto st = s.state(w[1]);
  if (!st) return st.error();
  BATON_TRY_VOID(model::save_snapshot(**st, w[2], force));
  if (s.json) std::cout << json{{"saved", w[1]}, {"file", w[2]}}.dump(2) << "\n";
  else std::printf("saved %s to %s (baton check --spec %s, baton ept dump %s)\n", w[1].c_str(), w[2].c_str(), w[2].c_str(), w[2].c_str());
  return ok_result();
}

// load GUEST [-p k=v]... [--mem SIZE] [--pages 4k|2m|1g]
Result<void> cmd_load(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  if (w.size() < 2) return make_error("usage: load GUEST [-p k=v]... [--mem SIZE] [--pages 4k|2m|1g] [--backend sim|kvm]");
  SimOptions o;
  o.guest = w[1];
  o.mem = s.opts.mem;
  o.pages = s.opts.pages;
  std::string backend = s.backend_name();
  for (std::size_t i = 2; i < w.size(); ++i) {
    if (i + 1 >= w.size()) return make_error(w[i] + " needs a value");
    if (w[i] == "-p" || w[i] == "--param") o.params.push_back(w[++i]);
    else if (w[i] == "--mem") o.mem = w[++i];
    else if (w[i] == "--pages") o.pages = w[++i];
    else if (w[i] == "--backend") backend = w[++i];
    else return make_error("load: unknown option '" + w[i] + "' (-p k=v, --mem, --pages, --backend)");
  }
  if (backend == "kvm") {
    BATON_TRY_VOID(kvm_load(s, o));
  } else if (backend == "sim") {
    auto kept = std::move(s.kvm);  // back to the simulator; the KVM VM stays if the load fails
    if (auto r = s.load(o); !r) {
      s.kvm = std::move(kept);
      return r.error();
    }
  } else {
    return make_error("load --backend '" + backend + "' is not one of sim, kvm");
  }
  if (s.json) {
    json j{{"guest", o.guest}, {"mem", o.mem}, {"pages", o.pages}};
    if (s.kvm) j["backend"] = "kvm";
    std::cout << j.dump(2) << "\n";
  }
  else if (s.kvm) {
    auto v = s.vcpu_now();
    std::printf("loaded %s on kvm (mem %s, %s pages): rip %s\n", o.guest.c_str(), o.mem.c_str(), o.pages.c_str(),
                v ? hex(v->rip).c_str() : "?");
  } else {
    std::printf("loaded %s (mem %s, %s pages): insn 0, rip %s\n", o.guest.c_str(), o.mem.c_str(), o.pages.c_str(),
                hex(rip_of(*s.vm)).c_str());
  }
  return ok_result();
}

// backend
Result<void> cmd_backend(Session& s, const Args& a) {
  if (a.words.size() != 1) return make_error("usage: backend");
  const char* what = "the Unicorn simulator with the modelled VMX/EPT hypervisor";
  const char* allows = "faults (ept, vmcs, memslot), all four methods, time travel by deterministic replay";
  if (s.json) std::cout << json{{"backend", "sim"}, {"what", what}, {"allows", allows}, {"kvm", "baton explore --backend kvm"}}.dump(2) << "\n";
  else std::printf("backend  sim: %s\nallows   %s\nkvm      baton explore --backend kvm runs the same guests on /dev/kvm\n", what, allows);
  return ok_result();
}

}  // namespace baton::cli::explore
