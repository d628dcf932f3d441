// baton explore: the command table, `help`, `expect`, and the dispatch of one line.
#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cmd_explore.hpp"

namespace baton::cli::explore {

namespace {

// Lower-cases ASCII.
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Result<void> cmd_help(Session& s, const Args& a);
Result<void> cmd_expect(Session& s, const Args& a);

// Fails an expectation: one line, and the session remembers it (exit 1 in scripts).
Result<void> unmet(Session& s, const std::string& what) {
  s.expect_failed = true;
  return make_error("expectation failed: " + what);
}

const std::vector<Command> kCommands = {
    {"run", "run [N | to sync K | to insn N | to exit]", "run the guest (Ctrl-C stops it)",
     "Runs the guest: N more instructions, to sync point K, to instruction N, or to its exit. Plain `run`\n"
     "stops at a breakpoint, the exit, or the instruction budget; `run to exit` ignores breakpoints.\n"
     "On KVM: no instruction counts; `run N` single-steps N instructions (where the host allows it), and\n"
     "--timeout S (default 60) makes a run that long a hang.",
     cmd_run, kvm_run},
    {"step", "step [N]", "run N instructions (default 1)",
     "Runs N instructions; the simulator stops at the first block boundary at or after them. On KVM each\n"
     "is a single step (KVM_SET_GUEST_DEBUG); PVM hosts refuse it.", cmd_step, kvm_step},
    {"break", "break [sync K | insn N | port P | del N | clear]", "set, list or delete breakpoints",
     "Stops later runs after sync point K, at instruction N, or after an IN/OUT on port P (a number or an\n"
     "ABI port name: console, sync, exit, input, ...). Without arguments, lists them. KVM takes sync and port.",
     cmd_break, kvm_break},
    {"regs", "regs [REG...]", "vCPU registers", "Prints the general registers, RIP, RFLAGS, selectors, control registers, EFER, TSC.", cmd_regs},
    {"disas", "disas [ADDR] [N]", "disassemble N instructions (default at RIP)", "Disassembles guest memory (capstone); => marks RIP.", cmd_disas},
    {"mem", "mem GPA [LEN]", "hex dump of guest-physical memory", "Dumps LEN bytes (default 64) as the guest sees them.", cmd_mem},
    {"console", "console", "what the guest printed", "Prints the guest's console output so far.", cmd_console},
    {"ept", "ept walk GPA | dump [--runs|--tree] | diff @A @B", "the EPT: walk, dump, diff",
     "walk: the SDM walk of one GPA, level by level. dump: the coalesced runs, or every entry (--tree).\n"
     "diff: where two states' trees translate differently. walk takes an access (r, w, x); walk and dump\n"
     "take a trailing @SNAPSHOT. Refused on KVM: KVM owns its EPT.",
     cmd_ept, kvm_ept},
    {"vmcs", "vmcs [FIELD] [@SNAPSHOT]", "VMCS fields (SDM names)",
     "Prints every set VMCS field, or one (an SDM name such as ept_pointer, or an encoding); a part of a\n"
     "name lists the fields that contain it. On KVM: KVM's view, the guest-state area it reports.",
     cmd_vmcs, kvm_vmcs},
    {"memslots", "memslots [@SNAPSHOT]", "the memslot table and MMIO ranges", "Prints the memslots (GPA range, size, host address).", cmd_memslots, kvm_memslots},
    {"inject", "inject FAULT", "plant a fault (syntax of migrate --fault)",
     "FAULT: ept[:GPA[:BIT]] flips a leaf bit (default: its lowest frame bit), vmcs[:FIELD[:BIT]] a VMCS\n"
     "bit, memslot[:ID[:gpa|size|hpa[:BIT]]] a memslot bit. EPT and VMCS control faults strike the running\n"
     "VM now; memslot and guest-state faults go into the handover package of the next migrate. Refused\n"
     "on KVM: its EPT, VMCS and memslots belong to the kernel.",
     cmd_inject, kvm_inject},
    {"migrate", "migrate METHOD [--policy reject|fallback|accept]", "migrate from here, as baton migrate",
     "METHOD: local-adopt, local-rebuild, local-lazy, precopy. Prints the timeline, checks and outcome of\n"
     "baton migrate. Options: --policy, --dirty pml|wp, --max-rounds N, --timeout S, --no-reference,\n"
     "--no-verify. The session stays where it was; @migrate.before/@migrate.after hold the handover.\n"
     "On KVM (baton migrate --backend kvm): local-lazy or precopy of a copy of the session's VM to a\n"
     "vmm-worker process; --capture FILE [--force] replays the source from boot to this sync point under\n"
     "a tracefs capture and proves no-copy.",
     cmd_migrate, kvm_migrate},
    {"check", "check [PROPERTIES] | check @A @B [PROPERTIES]", "run the checker",
     "Without states: the current state against its memslots (baton check --spec). With two: the\n"
     "handover properties between them (baton check A B). PROPERTIES: a comma list or all. On KVM:\n"
     "vcpu between two states, or the last migration's vcpu and no-copy (when it was captured).",
     cmd_check, kvm_check},
    {"snapshot", "snapshot NAME", "remember the current state", "Names the current state so `restore NAME` returns to it.", cmd_snapshot, kvm_snapshot_cmd},
    {"restore", "restore NAME", "go back to a snapshot", "Rebuilds the VM of snapshot NAME (a deterministic replay; on KVM a new VM from its memory copy).", cmd_restore, kvm_restore},
    {"snapshots", "snapshots", "list the named states", "Lists snapshots and the two sides of the last migration.", cmd_snapshots},
    {"save", "save NAME|now FILE [--force]", "write a state as a snapshot file",
     "Writes the state in baton's snapshot format (docs/formats.md): baton check, baton ept read it.\n"
     "Refused on KVM: the format needs the EPT tree, which KVM owns.", cmd_save, kvm_save},
    {"load", "load GUEST [-p k=v]... [--mem M] [--pages P]", "start over with a guest",
     "Loads a built-in guest on a fresh VM of the session's backend (--backend sim|kvm switches);\n"
     "snapshots and breakpoints are dropped.", cmd_load},
    {"backend", "backend", "what this backend is and allows", "Names the backend and what it can do; on KVM the host flavour and its KVM_CAP_* values.", cmd_backend, kvm_backend},
    {"expect", "expect WHAT VALUE [PROPERTY]", "assert on the last result (scripts)",
     "expect checksum match|mismatch; expect verdict proven|refuted|unknown [PROPERTY]; expect outcome\n"
     "ok|rejected|fell-back|MISMATCH|sdc; expect stop REASON [STAGE]; expect diff equal|differ; expect walk\n"
     "translated|violation|misconfig. A failed expectation exits 1 from --script.",
     cmd_expect},
    {"help", "help [CMD]", "this list, or one command", "Prints the command list, or the details of one command.", cmd_help},
};

Result<void> cmd_help(Session&, const Args& a) {
  if (a.words.size() > 2) return make_error("usage: help [CMD]");
  if (a.words.size() == 2) {
    for (const Command& c : kCommands)
      if (a.words[1] == c.name) {
        std::printf("%s\n  %s\n%s\n", c.usage, c.summary, c.help);
        return ok_result();
      }
    return make_error("no command '" + a.words[1] + "' (type help)");
  }
  std::printf("commands (each takes --json; Tab completes; Ctrl-C stops a running guest; quit or Ctrl-D leaves):\n");
  for (const Command& c : kCommands) std::printf("  %-52s %s\n", c.usage, c.summary);
  std::printf("states: @NAME is a snapshot, @now the current state.  help CMD for details.\n");
  return ok_result();
}

// expect checksum|verdict|outcome|stop|diff|walk ...
Result<void> cmd_expect(Session& s, const Args& a) {
  const std::vector<std::string>& w = a.words;
  if (w.size() < 3) return make_error("usage: expect checksum|verdict|outcome|stop|diff|walk VALUE [...]");
  const std::string what = w[1], want = lower(w[2]);
  if (what == "checksum") {
    if (want != "match" && want != "mismatch") return make_error("expect checksum match|mismatch");
    if (!s.last.have_checksum) return unmet(s, "no checksum yet (run to exit or migrate first)");
    const bool match = s.last.checksum && s.last.expected && *s.last.checksum == *s.last.expected;
    if (match != (want == "match")) return unmet(s, "checksum " + want + ", got " + (match ? "match" : "mismatch"));
    return ok_result();
  }
  if (what == "verdict") {
    if (want != "proven" && want != "refuted" && want != "unknown") return make_error("expect verdict proven|refuted|unknown [PROPERTY]");
    if (!s.last.overall) return unmet(s, "no verdict yet (migrate or check first)");
    if (w.size() == 3) {
      const std::string got = checker::to_string(*s.last.overall);
      if (lower(got) != want) return unmet(s, "overall verdict " + want + ", got " + got);
      return ok_result();
    }
    std::string prop;
    for (std::size_t i = 3; i < w.size(); ++i) prop += (prop.empty() ? "" : " ") + w[i];
    bool seen = false;
    for (const auto& [name, v] : s.last.verdicts) {
      if (name != prop && name.rfind(prop + " ", 0) != 0) continue;
      seen = true;
      if (lower(checker::to_string(v)) != want) return unmet(s, "verdict " + want + " for " + name + ", got " + checker::to_string(v));
    }
    if (!seen) return unmet(s, "no verdict for '" + prop + "' in the last result");
    return ok_result();
  }
  if (what == "outcome") {
    if (s.last.outcome.empty()) return unmet(s, "no migration outcome yet (migrate first)");
    // sdc: silent data corruption, the VM switched and finished with a wrong checksum.
    const std::string got = lower(s.last.outcome);
    if (got != want && !(want == "sdc" && got == "mismatch")) return unmet(s, "outcome " + w[2] + ", got " + s.last.outcome);
    return ok_result();
  }
  if (what == "stop") {
    if (!s.last.stop) return unmet(s, "no run yet");
    const std::string got = sim::to_string(s.last.stop->reason);
    if (got != want && !(want == "sync" && got == "sync-point")) return unmet(s, "stop " + want + ", got " + got);
    if (w.size() == 4 && w[3] != std::to_string(s.last.stop->stage))
      return unmet(s, "stage " + w[3] + ", got " + std::to_string(s.last.stop->stage));
    return ok_result();
  }
  if (what == "diff") {
    if (want != "equal" && want != "differ") return make_error("expect diff equal|differ");
    if (!s.last.diff_equal) return unmet(s, "no ept diff yet");
    if (*s.last.diff_equal != (want == "equal")) return unmet(s, "trees " + want + ", got " + (*s.last.diff_equal ? "equal" : "differ"));
    return ok_result();
  }
  if (what == "walk") {
    if (s.last.walk.empty()) return unmet(s, "no ept walk yet");
    if (lower(s.last.walk) != want) return unmet(s, "walk " + want + ", got " + s.last.walk);
    return ok_result();
  }
  return make_error("expect: '" + what + "' is not one of checksum, verdict, outcome, stop, diff, walk");
}

}  // namespace

const std::vector<Command>& commands() { return kCommands; }

std::vector<std::string> split_words(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false, any = false;
  for (char c : line) {
    if (c == '"') {
      quoted = !quoted;
      any = true;
    } else if (!quoted && c == '#') {
      break;
    } else if (!quoted && (c == ' ' || c == '\t' || c == '\r' || c == '\n')) {
      if (any) out.push_back(cur);
      cur.clear();
      any = false;
    } else {
      cur += c;
      any = true;
    }
  }
  if (any) out.push_back(cur);
  return out;
}

Result<void> execute(Session& s, const std::string& line) {
  Args a;
  for (std::string& w : split_words(line)) {
    if (w == "--json") a.json = true;
    else a.words.push_back(std::move(w));
  }
  s.expect_failed = false;
  if (a.words.empty()) return ok_result();
  for (const Command& c : kCommands) {
    if (a.words[0] != c.name) continue;
    s.json = a.json;
    auto r = (s.kvm && c.kvm != nullptr ? c.kvm : c.fn)(s, a);
    s.json = false;
    std::fflush(stdout);
    return r;
  }
  return make_error("unknown command '" + a.words[0] + "' (type help for the list)");
}

}  // namespace baton::cli::explore
