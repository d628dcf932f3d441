// baton explore: the views of a state: registers, disassembly, guest memory, console, the EPT
// (walk, dump, diff), the VMCS and the memslots. Views of the EPT, VMCS and memslots take the
// current state or any named one (@NAME).
#include <capstone/capstone.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "cmd_explore.hpp"
#include "parse.hpp"
#include "render.hpp"

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

// The named registers of a vCPU state, in display order.
std::vector<std::pair<std::string, std::uint64_t>> registers(const model::VcpuState& v) {
  std::vector<std::pair<std::string, std::uint64_t>> r;
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) r.emplace_back(model::gpr_name(i), v.gpr[i]);
  r.emplace_back("rip", v.rip);
  r.emplace_back("rflags", v.rflags);
  for (const auto& [n, seg] : {std::pair{"cs", &v.cs}, {"ds", &v.ds}, {"es", &v.es}, {"fs", &v.fs}, {"gs", &v.gs},
                               {"ss", &v.ss}, {"tr", &v.tr}, {"ldt", &v.ldt}})
    r.emplace_back(n, seg->selector);
  r.emplace_back("cr0", v.cr0);
  r.emplace_back("cr2", v.cr2);
  r.emplace_back("cr3", v.cr3);
  r.emplace_back("cr4", v.cr4);
  r.emplace_back("cr8", v.cr8);
  r.emplace_back("efer", v.efer);
  r.emplace_back("gdtr", v.gdtr.base);
  r.emplace_back("idtr", v.idtr.base);
  r.emplace_back("tsc", v.guest_tsc());
  return r;
}

// Access name r/w/x.
std::optional<model::Access> access_of(const std::string& s) {
  if (s == "r" || s == "read") return model::Access::kRead;
  if (s == "w" || s == "write") return model::Access::kWrite;
  if (s == "x" || s == "fetch") return model::Access::kFetch;
  return std::nullopt;
}

// Prints every present entry under table `t`, depth first (`ept dump --tree`).
void tree(const model::PhysicalMemory& mem, const model::EptConfig& cfg, model::Hfn t, unsigned level, std::uint64_t base,
          int depth, json* out) {
  const std::uint8_t* page = mem.frame(t);
  if (page == nullptr) return;
  for (unsigned i = 0; i < 512; ++i) {
    std::uint64_t raw = 0;
    std::memcpy(&raw, page + i * 8, 8);
    const model::EptEntry e{raw};
    const model::EntryKind k = e.classify(level, cfg);
    if (k == model::EntryKind::kNotPresent) continue;
    const std::uint64_t gpa = base + model::level_span(level) * i;
    if (out != nullptr)
      out->push_back(json{{"level", level}, {"index", i}, {"gpa", hex(gpa)}, {"raw", hex(raw)}, {"kind", model::to_string(k)}});
    else
      std::printf("%*sL%u[%3u] gpa %#14llx  %s\n", depth * 2, "", level, i, static_cast<unsigned long long>(gpa),
                  model::describe(e, level, cfg).c_str());
    if (k == model::EntryKind::kTable) tree(mem, cfg, e.table_hfn(), level - 1, gpa, depth + 1, out);
  }
}

// ept walk GPA [r|w|x] [@S]
Result<void> ept_walk(Session& s, std::vector<std::string> w) {
  auto st = state_arg(s, w);
  if (!st) return st.error();
  if (w.size() < 3 || w.size() > 4) return make_error("usage: ept walk GPA [r|w|x] [@SNAPSHOT]");
  auto gpa = parse_u64(w[2]);
  if (!gpa) return make_error("GPA '" + w[2] + "' is not a number (decimal or 0x-hex)");
  auto acc = access_of(w.size() == 4 ? w[3] : "r");
  if (!acc) return make_error("access '" + w[3] + "' is not r, w or x");
  const model::HandoverSnapshot& x = **st;
  const model::WalkResult r = model::walk(x.eptp, model::Gpa{*gpa}, *acc, x.tables, x.ept_config);
  s.last.walk = model::to_string(r.kind);
  if (s.json) std::cout << walk_json(r, model::Gpa{*gpa}, *acc, x.ept_config).dump(2) << "\n";
  else
    std::printf("walk of gpa %s (%s) under EPTP %s:\n%s", hex(*gpa).c_str(), model::to_string(*acc), hex(x.eptp.raw()).c_str(),
                model::describe(r, model::Gpa{*gpa}, x.ept_config).c_str());
  return ok_result();
}

// ept dump [--runs|--tree] [@S]
Result<void> ept_dump(Session& s, std::vector<std::string> w) {
  auto st = state_arg(s, w);
  if (!st) return st.error();
  const bool as_tree = w.size() == 3 && w[2] == "--tree";
  if (w.size() > 3 || (w.size() == 3 && !as_tree && w[2] != "--runs")) return make_error("usage: ept dump [--runs|--tree] [@SNAPSHOT]");
  const model::HandoverSnapshot& x = **st;
  if (as_tree) {
    json entries = json::array();
    if (!s.json) std::printf("EPT tree under EPTP %s\n", hex(x.eptp.raw()).c_str());
    tree(x.tables, x.ept_config, x.eptp.root(), 4, 0, 0, s.json ? &entries : nullptr);
    if (s.json) std::cout << json{{"eptp", hex(x.eptp.raw())}, {"entries", entries}}.dump(2) << "\n";
    return ok_result();
  }
  model::TreeStats t;
  auto ms = model::MappingSet::from_tree(x.eptp, x.tables, x.ept_config, &t);
  if (!ms) return ms.error();
  if (s.json) {
    json runs = json::array();
    for (const auto& r : ms->runs()) runs.push_back(run_json(r));
    std::cout << json{{"eptp", hex(x.eptp.raw())}, {"tables", t.tables}, {"mapped_bytes", ms->mapped_bytes()}, {"runs", runs}}.dump(2)
              << "\n";
    return ok_result();
  }
  std::printf("EPTP %s: %llu tables, leaves 4K=%llu 2M=%llu 1G=%llu, %llu misconfigured, %s mapped in %zu runs\n",
              hex(x.eptp.raw()).c_str(), static_cast<unsigned long long>(t.tables), static_cast<unsigned long long>(t.leaves[1]),
              static_cast<unsigned long long>(t.leaves[2]), static_cast<unsigned long long>(t.leaves[3]),
              static_cast<unsigned long long>(t.misconfigured), format_size(ms->mapped_bytes()).c_str(), ms->runs().size());
  for (const auto& r : ms->runs()) std::printf("  %s\n", model::describe(r).c_str());
  return ok_result();
}

// ept diff @A @B
Result<void> ept_diff(Session& s, const std::vector<std::string>& w) {
  if (w.size() != 4) return make_error("usage: ept diff @A @B (@now is the current state)");
  auto a = s.state(w[2]);
  if (!a) return a.error();
  const model::HandoverSnapshot sa = **a;
  auto b = s.state(w[3]);
  if (!b) return b.error();
  const model::HandoverSnapshot& sb = **b;
  auto ma = model::MappingSet::from_tree(sa.eptp, sa.tables, sa.ept_config);
  if (!ma) return make_error(w[2] + ": " + ma.error().message);
  auto mb = model::MappingSet::from_tree(sb.eptp, sb.tables, sb.ept_config);
  if (!mb) return make_error(w[3] + ": " + mb.error().message);
  const auto diffs = ma->diff(*mb);
  s.last.diff_equal = diffs.empty();
  if (s.json) {
    json arr = json::array();
    for (const auto& d : diffs) {
      json j{{"gpa", hex(d.gpa.value)}, {"size", hex(d.size)}};
      j["a"] = d.a ? run_json(*d.a) : json(nullptr);
      j["b"] = d.b ? run_json(*d.b) : json(nullptr);
      arr.push_back(j);
    }
    std::cout << json{{"equal", diffs.empty()}, {"diffs", arr}}.dump(2) << "\n";
    return ok_result();
  }
  if (diffs.empty()) {
    std::printf("equal: both trees give every GPA the same outcome (%zu vs %zu runs)\n", ma->runs().size(), mb->runs().size());
    return ok_result();
  }
  std::printf("%zu differing GPA range(s):\n", diffs.size());
  for (const auto& d : diffs) {
    std::printf("  gpa %s .. %s (%s)\n", hex(d.gpa.value).c_str(), hex(d.gpa.value + d.size - 1).c_str(), format_size(d.size).c_str());
    std::printf("    %s: %s\n", w[2].c_str(), d.a ? model::describe(*d.a).c_str() : "not mapped");
    std::printf("    %s: %s\n", w[3].c_str(), d.b ? model::describe(*d.b).c_str() : "not mapped");
  }
  return ok_result();
}

}  // namespace

std::vector<std::string> register_names() {
  std::vector<std::string> n;
  for (const auto& [name, v] : registers(model::VcpuState{})) n.push_back(name);
  return n;
}

std::vector<std::string> vmcs_field_names() {
  std::vector<std::string> n;
  for (const model::VmcsField& f : model::vmcs_catalog()) n.emplace_back(f.name);
  return n;
}

// regs [REG...]
Result<void> cmd_regs(Session& s, const Args& a) {
  auto vs = s.vcpu_now();
  if (!vs) return vs.error();
  const model::VcpuState& v = *vs;
  auto all = registers(v);
  std::vector<std::pair<std::string, std::uint64_t>> shown;
  for (std::size_t i = 1; i < a.words.size(); ++i) {
    auto it = std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.first == a.words[i]; });
    if (it == all.end()) return make_error("no register '" + a.words[i] + "' (rax..r15, rip, rflags, cs..ldt, cr0..cr8, efer, gdtr, idtr, tsc)");
    shown.push_back(*it);
  }
  if (shown.empty()) shown = all;
  if (s.json) {
    json j = json::object();
    for (const auto& [n, val] : shown) j[n] = hex(val);
    std::cout << j.dump(2) << "\n";
    return ok_result();
  }
  for (std::size_t i = 0; i < shown.size(); ++i)
    std::printf("%-6s %#018llx%s", shown[i].first.c_str(), static_cast<unsigned long long>(shown[i].second),
                i % 4 == 3 || i + 1 == shown.size() ? "\n" : "   ");
  return ok_result();
}

// disas [ADDR] [N]
Result<void> cmd_disas(Session& s, const Args& a) {
  if (a.words.size() > 3) return make_error("usage: disas [ADDR] [N]");
  auto vs = s.vcpu_now();
  if (!vs) return vs.error();
  const model::VcpuState& v = *vs;
  std::uint64_t addr = v.rip, count = 8;
  if (a.words.size() >= 2) {
    auto x = a.words[1] == "rip" ? std::optional<std::uint64_t>(v.rip) : parse_u64(a.words[1]);
    if (!x) return make_error("address '" + a.words[1] + "' is not a number (decimal or 0x-hex)");
    addr = *x;
  }
  if (a.words.size() == 3) {
    auto n = parse_u64(a.words[2]);
    if (!n || *n == 0 || *n > 1000) return make_error("count '" + a.words[2] + "' must be 1..1000");
    count = *n;
  }
  const std::vector<std::uint8_t> bytes = s.read_guest(addr, count * 15);
  if (bytes.empty()) return make_error("guest address " + hex(addr) + " is not readable (outside every memslot)");
  csh h = 0;
  if (cs_open(CS_ARCH_X86, v.cs.l != 0 ? CS_MODE_64 : CS_MODE_32, &h) != CS_ERR_OK) return make_error("capstone: cannot open");
  cs_insn* insn = nullptr;
  const std::size_t n = cs_disasm(h, bytes.data(), bytes.size(), addr, count, &insn);
  json arr = json::array();
  for (std::size_t i = 0; i < n; ++i) {
    std::string hexbytes;
    for (unsigned k = 0; k < insn[i].size; ++k) {
      char b[4];
      std::snprintf(b, sizeof b, "%02x", insn[i].bytes[k]);
      hexbytes += b;
    }
    if (s.json)
      arr.push_back(json{{"address", hex(insn[i].address)}, {"bytes", hexbytes}, {"mnemonic", insn[i].mnemonic}, {"operands", insn[i].op_str}});
    else
      std::printf("%s %#llx  %-22s %s %s\n", insn[i].address == v.rip ? "=>" : "  ", static_cast<unsigned long long>(insn[i].address),
                  hexbytes.c_str(), insn[i].mnemonic, insn[i].op_str);
  }
  if (n != 0) cs_free(insn, n);
  cs_close(&h);
  if (s.json) std::cout << json{{"instructions", arr}}.dump(2) << "\n";
  else if (n == 0) std::printf("no instruction decodes at %s\n", hex(addr).c_str());
  return ok_result();
}

// mem GPA [LEN]
Result<void> cmd_mem(Session& s, const Args& a) {
  if (a.words.size() < 2 || a.words.size() > 3) return make_error("usage: mem GPA [LEN]");
  auto gpa = parse_u64(a.words[1]);
  if (!gpa) return make_error("GPA '" + a.words[1] + "' is not a number (decimal or 0x-hex)");
  std::uint64_t len = 64;
  if (a.words.size() == 3) {
    auto n = parse_size(a.words[2]);
    if (!n || *n == 0 || *n > 65536) return make_error("length '" + a.words[2] + "' must be 1..65536 bytes");
    len = *n;
  }
  const std::vector<std::uint8_t> b = s.read_guest(*gpa, len);
  if (b.empty()) return make_error("GPA " + hex(*gpa) + " is not readable (outside every memslot)");
  if (s.json) {
    std::string h;
    for (std::uint8_t c : b) {
      char x[4];
      std::snprintf(x, sizeof x, "%02x", c);
      h += x;
    }
    std::cout << json{{"gpa", hex(*gpa)}, {"length", b.size()}, {"bytes", h}}.dump(2) << "\n";
    return ok_result();
  }
  for (std::size_t i = 0; i < b.size(); i += 16) {
    std::printf("%#012llx ", static_cast<unsigned long long>(*gpa + i));
    std::string text;
    for (std::size_t k = i; k < i + 16; ++k) {
      if (k < b.size()) std::printf(" %02x", b[k]);
      else std::printf("   ");
      if (k < b.size()) text += b[k] >= 0x20 && b[k] < 0x7f ? static_cast<char>(b[k]) : '.';
    }
    std::printf("  %s\n", text.c_str());
  }
  return ok_result();
}

// console
Result<void> cmd_console(Session& s, const Args& a) {
  if (a.words.size() != 1) return make_error("usage: console");
  const sim::GuestOutput o = s.output_now();
  if (s.json) {
    json res = json::array();
    for (const auto& r : o.results) res.push_back(json{{"tag", r.tag}, {"value", hex(r.value)}});
    std::cout << json{{"console", o.console}, {"stages", o.stages}, {"results", res},
                      {"exit_code", o.exit_code ? json(*o.exit_code) : json(nullptr)}}.dump(2)
              << "\n";
    return ok_result();
  }
  std::fputs(o.console.empty() ? "(the guest has printed nothing yet)\n" : o.console.c_str(), stdout);
  if (!o.console.empty() && o.console.back() != '\n') std::printf("\n");
  return ok_result();
}

// ept walk|dump|diff ...
Result<void> cmd_ept(Session& s, const Args& a) {
  if (a.words.size() >= 2 && a.words[1] == "walk") return ept_walk(s, a.words);
  if (a.words.size() >= 2 && a.words[1] == "dump") return ept_dump(s, a.words);
  if (a.words.size() >= 2 && a.words[1] == "diff") return ept_diff(s, a.words);
  return make_error("usage: ept walk GPA [r|w|x] | ept dump [--runs|--tree] | ept diff @A @B");
}

// vmcs [FIELD] [@S]
Result<void> cmd_vmcs(Session& s, const Args& a) {
  std::vector<std::string> w = a.words;
  auto st = state_arg(s, w);
  if (!st) return st.error();
  if (w.size() > 2) return make_error("usage: vmcs [FIELD] [@SNAPSHOT]");
  const model::Vmcs& vmcs = (*st)->vmcs;
  std::vector<const model::VmcsField*> fields;
  if (w.size() == 2) {
    const model::VmcsField* f = nullptr;
    if (auto e = parse_u64(w[1])) f = model::find_vmcs_field(static_cast<std::uint32_t>(*e));
    else f = model::find_vmcs_field(w[1] == "eptp" ? std::string("ept_pointer") : w[1]);
    if (f != nullptr) fields.push_back(f);
    else
      for (const model::VmcsField& c : model::vmcs_catalog())  // a part of a name lists the fields that contain it
        if (std::string(c.name).find(w[1]) != std::string::npos) fields.push_back(&c);
    if (fields.empty()) return make_error("no VMCS field '" + w[1] + "' (SDM names such as ept_pointer, guest_rip; Tab completes)");
  } else {
    for (const auto& [enc, v] : vmcs.values())
      if (const model::VmcsField* f = model::find_vmcs_field(enc)) fields.push_back(f);
  }
  json j = json::object();
  for (const model::VmcsField* f : fields) {
    const auto v = vmcs.get(f->encoding);
    if (s.json) j[f->name] = v ? json(hex(*v)) : json(nullptr);
    else
      std::printf("%#06x %-40s %-10s %s\n", f->encoding, f->name, model::to_string(model::area_of_encoding(f->encoding)),
                  v ? hex(*v).c_str() : "(not set)");
  }
  if (s.json) std::cout << j.dump(2) << "\n";
  return ok_result();
}

// memslots [@S]
Result<void> cmd_memslots(Session& s, const Args& a) {
  std::vector<std::string> w = a.words;
  auto st = state_arg(s, w);
  if (!st) return st.error();
  if (w.size() != 1) return make_error("usage: memslots [@SNAPSHOT]");
  const model::HandoverSnapshot& x = **st;
  if (s.json) {
    json arr = json::array();
    for (const model::Memslot& m : x.memslots)
      arr.push_back(json{{"id", m.id}, {"gpa", hex(m.gpa.value)}, {"size", hex(m.size)}, {"hpa", hex(m.hpa.value)},
                         {"read_only", m.read_only}, {"dirty_log", m.dirty_log}});
    json mmio = json::array();
    for (const model::GpaRange& r : x.mmio) mmio.push_back(json{{"gpa", hex(r.gpa.value)}, {"size", hex(r.size)}});
    std::cout << json{{"memslots", arr}, {"mmio", mmio}}.dump(2) << "\n";
    return ok_result();
  }
  for (const model::Memslot& m : x.memslots)
    std::printf("slot %u  gpa %s .. %s (%s) -> hpa %s%s%s\n", m.id, hex(m.gpa.value).c_str(),
                m.size == 0 ? "(empty)" : hex(m.end().value - 1).c_str(), format_size(m.size).c_str(), hex(m.hpa.value).c_str(), m.read_only ? " read-only" : "",
                m.dirty_log ? " dirty-log" : "");
  for (const model::GpaRange& r : x.mmio)
    std::printf("mmio    gpa %s .. %s (%s)\n", hex(r.gpa.value).c_str(), hex(r.end().value - 1).c_str(), format_size(r.size).c_str());
  return ok_result();
}

}  // namespace baton::cli::explore
