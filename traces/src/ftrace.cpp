// The ftrace text importer: tracefs `trace` files and `trace-cmd report` output of the kvm and
// kvmmmu events, converted into trace v1 events (docs/trace-format.md, "ftrace import").
#include "baton/traces/ftrace.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "baton/model/file_io.hpp"

namespace baton::traces {

namespace {

constexpr std::uint64_t kSpteMmuPresent = 1ull << 11;     // SPTE_MMU_PRESENT_MASK (Linux >= 5.13)
constexpr std::uint64_t kSpteLarge = 1ull << 7;           // PT_PAGE_SIZE_MASK: a 2M/1G leaf
constexpr std::uint64_t kSptePfnMask = (1ull << 40) - 1;  // pfn = bits 51:12 of an SPTE
constexpr std::uint32_t kVmxEptViolation = 48, kVmxEptMisconfig = 49, kSvmNpf = 0x400;
constexpr std::size_t kMaxSamples = 5;

// The columns every ftrace text line starts with.
struct LineHead {
  std::uint32_t pid = 0;              // thread id
  std::optional<std::uint32_t> tgid;  // process id, when the capture recorded it
  std::uint64_t ns = 0;
  std::string_view event;
  std::string_view fields;
};

// What the importer remembers about one thread between lines.
struct ThreadState {
  std::optional<std::uint32_t> vcpu;
  std::optional<std::size_t> pending_exit;  // the last kExit not yet followed by kvm_entry
};

// Trims spaces and tabs at both ends.
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Returns whether s is a non-empty run of decimal digits.
bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// Parses a decimal number.
std::optional<std::uint64_t> parse_dec(std::string_view s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// Parses a hex number with or without a 0x prefix.
std::optional<std::uint64_t> parse_hex(std::string_view s) {
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 16);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// Parses an ftrace timestamp ("1234.567890" seconds, any number of fraction digits up to 9,
// or a bare counter) into nanoseconds.
std::optional<std::uint64_t> parse_timestamp(std::string_view s) {
  const auto dot = s.find('.');
  if (dot == std::string_view::npos) return parse_dec(s);
  const auto secs = s.substr(0, dot), frac = s.substr(dot + 1);
  if (!all_digits(secs) || !all_digits(frac) || frac.size() > 9 || secs.size() > 10) return std::nullopt;
  std::uint64_t f = *parse_dec(frac);
  for (std::size_t i = frac.size(); i < 9; ++i) f *= 10;
  return *parse_dec(secs) * 1000000000ull + f;
}

// Splits on runs of blanks.
std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    std::size_t j = i;
    while (j < s.size() && s[j] != ' ' && s[j] != '\t') ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

// Strips one trailing ',' or ':' from a token.
std::string_view bare(std::string_view t) {
  if (!t.empty() && (t.back() == ',' || t.back() == ':')) t.remove_suffix(1);
  return t;
}

// Returns the token after the first token equal to `key` (ignoring a trailing ',' or ':').
std::optional<std::string_view> value_after(const std::vector<std::string_view>& toks, std::string_view key) {
  for (std::size_t i = 0; i + 1 < toks.size(); ++i)
    if (bare(toks[i]) == key) return bare(toks[i + 1]);
  return std::nullopt;
}

// Finds the "[cpu]" column: a '[' after a blank, digits, and ']'. Returns the '[' position.
std::optional<std::size_t> find_cpu_column(std::string_view line) {
  for (std::size_t i = 1; i < line.size(); ++i) {
    if (line[i] != '[' || (line[i - 1] != ' ' && line[i - 1] != '\t')) continue;
    std::size_t j = i + 1;
    while (j < line.size() && line[j] >= '0' && line[j] <= '9') ++j;
    if (j > i + 1 && j < line.size() && line[j] == ']') return i;
  }
  return std::nullopt;
}

// Parses the columns of a trace line: "comm-pid [(tgid)] [cpu] [flags] secs.frac: event: fields".
std::optional<LineHead> parse_head(std::string_view line) {
  const auto cpu_at = find_cpu_column(line);
  if (!cpu_at) return std::nullopt;
  LineHead h;
  std::string_view task = trim(line.substr(0, *cpu_at));
  if (!task.empty() && task.back() == ')') {
    const auto open = task.rfind('(');
    if (open == std::string_view::npos) return std::nullopt;
    const auto inner = trim(task.substr(open + 1, task.size() - open - 2));
    if (all_digits(inner)) h.tgid = static_cast<std::uint32_t>(*parse_dec(inner));
    task = trim(task.substr(0, open));
  }
  const auto dash = task.rfind('-');
  if (dash == std::string_view::npos || !all_digits(task.substr(dash + 1)) || task.size() - dash > 11)
    return std::nullopt;
  const std::uint64_t pid = *parse_dec(task.substr(dash + 1));
  if (pid > 0xffffffffu) return std::nullopt;
  h.pid = static_cast<std::uint32_t>(pid);
  std::string_view rest = line.substr(line.find(']', *cpu_at) + 1);
  auto toks = split(rest);
  // Up to one flags column ("d..1.") precedes the timestamp; the event name follows it.
  std::size_t k = 0;
  if (k < toks.size() && toks[k].back() != ':') ++k;
  if (k + 1 >= toks.size() || toks[k].back() != ':' || toks[k + 1].back() != ':') return std::nullopt;
  const auto ts = parse_timestamp(toks[k].substr(0, toks[k].size() - 1));
  if (!ts) return std::nullopt;
  h.ns = *ts;
  std::string_view ev = toks[k + 1].substr(0, toks[k + 1].size() - 1);
  if (const auto colon = ev.rfind(':'); colon != std::string_view::npos) ev = ev.substr(colon + 1);  // "kvm:kvm_exit"
  if (ev.empty()) return std::nullopt;
  h.event = ev;
  const char* fields_begin = toks[k + 1].data() + toks[k + 1].size();
  h.fields = trim(std::string_view(fields_begin, static_cast<std::size_t>(line.data() + line.size() - fields_begin)));
  return h;
}

// Converts one capture, line by line, keeping per-thread state.
class Importer {
 public:
  Importer(const FtraceImportOptions& o, FtraceImportStats& s, std::vector<TraceEvent>& out)
      : opt_(o), st_(s), out_(out) {}

  // Handles one line (without its newline).
  void line(std::string_view raw, std::size_t number) {
    ++st_.lines;
    const std::string_view l = trim(raw);
    if (l.empty() || l.front() == '#') {
      ++st_.comment_lines;
      if (l.rfind("# tracer:", 0) == 0) saw_tracefs_ = true;
      return;
    }
    const auto head = parse_head(l);
    if (!head) {
      if (l.rfind("cpus=", 0) == 0 || l.rfind("version =", 0) == 0) {  // trace-cmd report preamble
        saw_report_ = true;
        ++st_.comment_lines;
      } else if (l.rfind("CPU", 0) == 0 &&
                 (l.find("LOST") != std::string_view::npos || l.find("DROPPED") != std::string_view::npos)) {
        lost(l);
        ++st_.comment_lines;
      } else if (l.rfind("CPU ", 0) == 0 && l.find(" is empty") != std::string_view::npos) {
        ++st_.comment_lines;
      } else {
        ++st_.unknown_lines;
        sample(number, l);
      }
      return;
    }
    const std::string_view ev = head->event;
    static constexpr std::string_view kHandled[] = {"kvm_exit",
                                                    "kvm_entry",
                                                    "kvm_pio",
                                                    "kvm_mmio",
                                                    "kvm_page_fault",
                                                    "kvm_userspace_exit",
                                                    "kvm_mmu_set_spte",
                                                    "kvm_mmu_spte_requested",
                                                    "kvm_tdp_mmu_spte_changed"};
    bool handled = false;
    for (auto h : kHandled) handled |= ev == h;
    if (!handled) {
      ++st_.other_event_lines;
      return;
    }
    ++st_.event_lines;
    std::uint32_t vm = head->tgid.value_or(head->pid);
    if (!head->tgid)
      if (auto it = opt_.tgids.find(head->pid); it != opt_.tgids.end()) vm = it->second;
    all_vms_.insert(vm);
    if (opt_.pid && *opt_.pid != head->pid && *opt_.pid != vm) {
      ++st_.filtered_lines;
      return;
    }
    ++st_.per_event[std::string(ev)];
    const auto toks = split(head->fields);
    const std::size_t before = out_.size();
    bool ok = false;
    if (ev == "kvm_exit")
      ok = on_exit(*head, vm, toks);
    else if (ev == "kvm_entry")
      ok = on_entry(*head, vm, toks);
    else if (ev == "kvm_pio")
      ok = on_pio(*head, vm, toks);
    else if (ev == "kvm_mmio")
      ok = on_mmio(*head, vm, toks);
    else if (ev == "kvm_page_fault")
      ok = on_page_fault(*head, toks);
    else if (ev == "kvm_userspace_exit")
      ok = on_userspace_exit(*head, vm, toks);
    else if (ev == "kvm_mmu_set_spte")
      ok = on_set_spte(*head, vm, toks);
    else if (ev == "kvm_mmu_spte_requested")
      ok = on_spte_requested(*head, vm, toks);
    else
      ok = on_tdp_changed(*head, vm, toks);
    if (!ok) {
      out_.resize(before);
      ++st_.malformed_lines;
      sample(number, l);
      return;
    }
    if (out_.size() > before) st_.vms.insert(vm);
  }

  // Fills in the style once all lines are read.
  void finish() { st_.style = saw_tracefs_ ? "tracefs" : saw_report_ ? "trace-cmd" : "plain"; }

  // Returns every VM id seen, including those the pid filter dropped.
  const std::set<std::uint32_t>& all_vms() const { return all_vms_; }

 private:
  // Records a lost-events marker ("CPU:1 [LOST 42 EVENTS]"): the number inside the brackets.
  void lost(std::string_view l) {
    const auto open = l.find('['), close = l.rfind(']');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return;
    for (auto t : split(l.substr(open + 1, close - open - 1)))
      if (auto n = parse_dec(t)) st_.lost_events += *n;
  }

  // Keeps the first few problem lines for the report.
  void sample(std::size_t number, std::string_view l) {
    if (st_.samples.size() >= kMaxSamples) return;
    std::string s = "line " + std::to_string(number) + ": " + std::string(l.substr(0, 120));
    st_.samples.push_back(std::move(s));
  }

  // Returns the vCPU id of a thread: as last printed, else by order of appearance in its VM.
  std::uint32_t vcpu_of(std::uint32_t tid, std::uint32_t vm) {
    ThreadState& t = threads_[tid];
    if (!t.vcpu) t.vcpu = next_vcpu_[vm]++;
    return *t.vcpu;
  }

  // Records an explicitly printed vCPU id for a thread.
  void note_vcpu(std::uint32_t tid, const std::vector<std::string_view>& toks) {
    if (auto v = value_after(toks, "vcpu"))
      if (auto n = parse_dec(*v); n && *n <= 0xffffffffu) threads_[tid].vcpu = static_cast<std::uint32_t>(*n);
  }

  // Appends an event stamped with the line's time, VM and vCPU.
  std::size_t emit(TraceEvent e, const LineHead& h, std::uint32_t vm) {
    e.vm = vm;
    e.time = h.ns;
    e.vcpu = vcpu_of(h.pid, vm);
    out_.push_back(e);
    return out_.size() - 1;
  }

  // kvm_exit: "vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info ..."
  // or, before Linux 5.7, "reason %s rip 0x%lx info %llx %llx".
  bool on_exit(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    note_vcpu(h.pid, toks);
    std::size_t r = 0;
    while (r < toks.size() && toks[r] != "reason") ++r;
    if (r + 1 >= toks.size()) return false;
    std::string name(toks[r + 1]);
    std::size_t k = r + 2;
    if (k < toks.size() && toks[k] == "excp") name += " excp", ++k;
    TraceEvent e{.type = EventType::kExit};
    for (; k < toks.size() && toks[k] != "rip"; ++k)
      if (toks[k] == "FAILED_VMENTRY") e.flags |= kExitFailedVmentry;
    bool svm = false;
    if (auto code = exit_reason_from_name(name, &svm)) {
      e.code = *code;
      if (svm) e.flags |= kExitSvm;
      st_.isa = svm ? "svm" : "vmx";
    } else if (auto num = parse_hex(name)) {
      e.code = static_cast<std::uint32_t>(*num);
      if (st_.isa == "svm") e.flags |= kExitSvm;
    } else {
      e.code = 0xffffffffu;  // a reason this baton has no name for
    }
    const auto rip = value_after(toks, "rip");
    if (!rip || !parse_hex(*rip)) return false;
    e.c = *parse_hex(*rip);
    if (auto i1 = value_after(toks, "info1")) {
      auto a = parse_hex(*i1);
      auto b = value_after(toks, "info2");
      if (!a || !b || !parse_hex(*b)) return false;
      e.a = *a;
      if (svm && e.code == kSvmNpf) e.b = *parse_hex(*b);  // exit_info_2 holds the faulting GPA
    } else if (value_after(toks, "info")) {
      std::size_t at = 0;
      while (bare(toks[at]) != "info") ++at;
      if (at + 2 >= toks.size()) return false;
      auto a = parse_hex(toks[at + 1]), b = parse_hex(toks[at + 2]);
      if (!a || !b) return false;
      e.a = *a;
      if (svm && e.code == kSvmNpf) e.b = *b;
    }
    threads_[h.pid].pending_exit = emit(e, h, vm);
    return true;
  }

  // kvm_entry: "vcpu %u, rip 0x%lx[ inj ...][[immediate exit]][[guest]]", or "vcpu %u" before Linux 5.9.
  bool on_entry(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    note_vcpu(h.pid, toks);
    if (toks.empty() || toks[0] != "vcpu") return false;
    TraceEvent e{.type = EventType::kEntry};
    if (const auto rip = value_after(toks, "rip")) {
      std::string_view r = *rip;
      if (const auto br = r.find('['); br != std::string_view::npos) r = r.substr(0, br);
      const auto v = parse_hex(r);
      if (!v) return false;
      e.c = *v;
    }
    emit(e, h, vm);
    threads_[h.pid].pending_exit.reset();
    return true;
  }

  // kvm_pio: "pio_%s at 0x%x size %d count %d val 0x%x %s".
  bool on_pio(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    if (toks.empty() || (toks[0] != "pio_read" && toks[0] != "pio_write")) return false;
    const auto port = value_after(toks, "at"), size = value_after(toks, "size"), count = value_after(toks, "count"),
               val = value_after(toks, "val");
    if (!port || !size || !count || !val) return false;
    const auto p = parse_hex(*port), s = parse_dec(*size), c = parse_dec(*count), v = parse_hex(*val);
    if (!p || !s || !c || !v || *p > 0xffff || *s > 8) return false;
    TraceEvent e =
        io_event(vm, h.ns, 0, static_cast<std::uint16_t>(*p), toks[0] == "pio_read", static_cast<unsigned>(*s), *v);
    e.b = *c;
    emit(e, h, vm);
    return true;
  }

  // Gives the pending EPT-violation / NPF / misconfig exit of a thread its GPA, once.
  void backfill_gpa(std::uint32_t tid, std::uint64_t gpa, bool misconfig_too) {
    ThreadState& t = threads_[tid];
    if (!t.pending_exit) return;
    TraceEvent& e = out_[*t.pending_exit];
    const bool svm = e.flags & kExitSvm;
    const bool match =
        svm ? e.code == kSvmNpf : (e.code == kVmxEptViolation || (misconfig_too && e.code == kVmxEptMisconfig));
    if (match && e.b == 0) {
      e.b = gpa;
      ++st_.backfilled_gpas;
    }
  }

  // kvm_mmio: "mmio %s len %u gpa 0x%llx val 0x%llx".
  bool on_mmio(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    if (toks.size() < 2 || toks[0] != "mmio") return false;
    const std::string_view type = toks[1];
    if (type != "read" && type != "write" && type != "unsatisfied-read") return false;
    const auto len = value_after(toks, "len"), gpa = value_after(toks, "gpa"), val = value_after(toks, "val");
    if (!len || !gpa || !val) return false;
    const auto n = parse_dec(*len), g = parse_hex(*gpa), v = parse_hex(*val);
    if (!n || !g || !v || *n > 255) return false;
    TraceEvent e = mmio_event(vm, h.ns, 0, *g, type != "write", static_cast<unsigned>(*n), *v);
    if (type == "unsatisfied-read") e.flags |= kMmioUnsatisfied;
    emit(e, h, vm);
    backfill_gpa(h.pid, *g, true);
    return true;
  }

  // kvm_page_fault: "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx" or "address %lx error_code %x".
  bool on_page_fault(const LineHead& h, const std::vector<std::string_view>& toks) {
    note_vcpu(h.pid, toks);
    const auto addr = value_after(toks, "address");
    if (!addr || !parse_hex(*addr)) return false;
    backfill_gpa(h.pid, *parse_hex(*addr), false);
    return true;
  }

  // kvm_userspace_exit: "reason %s (%d)"; "restart"/"error" carry an errno.
  bool on_userspace_exit(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    const auto name = value_after(toks, "reason");
    if (!name || toks.empty()) return false;
    std::string_view num = toks.back();
    if (num.size() < 3 || num.front() != '(' || num.back() != ')') return false;
    const auto n = parse_dec(num.substr(1, num.size() - 2));
    if (!n || *n > 0xffffffffu) return false;
    const bool error = *name == "restart" || *name == "error";
    emit(userspace_exit_event(vm, h.ns, error ? 0u : static_cast<std::uint32_t>(*n), error, error ? *n : 0), h, vm);
    return true;
  }

  // Appends a kEptSet for a leaf, aligning gfn and pfn down to the leaf size.
  void emit_set(const LineHead& h, std::uint32_t vm, std::uint64_t gfn, std::uint64_t pfn, unsigned level,
                std::uint32_t flags) {
    const std::uint64_t mask = ~(frames_per_leaf(level) - 1);
    TraceEvent e = ept_set_event(vm, h.ns, gfn & mask, pfn & mask, level, flags & 7u);
    e.flags = flags;
    emit(e, h, vm);
  }

  // kvm_mmu_set_spte: "gfn %llx spte %llx (%s%s%s%s) level %d at %llx".
  bool on_set_spte(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    const auto gfn = value_after(toks, "gfn"), spte = value_after(toks, "spte"), level = value_after(toks, "level");
    if (!gfn || !spte || !level) return false;
    const auto g = parse_hex(*gfn), s = parse_hex(*spte), l = parse_dec(*level);
    if (!g || !s || !l) return false;
    std::string_view perms;
    for (auto t : toks)
      if (t.size() >= 5 && t.front() == '(' && t.back() == ')') perms = t.substr(1, t.size() - 2);
    if (perms.size() < 3) return false;
    if (*l < 1 || *l > 3) {  // KVM installs leaves at 4K, 2M and 1G only
      ++st_.unknown_levels;
      return true;
    }
    const std::uint32_t p = (perms[0] == 'r' ? 1u : 0u) | (perms[1] == 'w' ? 2u : 0u) | (perms[2] == 'x' ? 4u : 0u);
    emit_set(h, vm, *g, (*s >> 12) & kSptePfnMask, static_cast<unsigned>(*l), p | kEptOriginSetSpte << kEptOriginShift);
    return true;
  }

  // kvm_mmu_spte_requested: "gfn %llx pfn %llx level %d" (gfn and pfn of the faulting 4K page).
  bool on_spte_requested(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    const auto gfn = value_after(toks, "gfn"), pfn = value_after(toks, "pfn"), level = value_after(toks, "level");
    if (!gfn || !pfn || !level) return false;
    const auto g = parse_hex(*gfn), p = parse_hex(*pfn), l = parse_dec(*level);
    if (!g || !p || !l) return false;
    if (*l < 1 || *l > 3) {
      ++st_.unknown_levels;
      return true;
    }
    emit_set(h, vm, *g, *p, static_cast<unsigned>(*l), kEptPermsUnknown | kEptOriginSpteRequested << kEptOriginShift);
    return true;
  }

  // Reads permissions from a raw SPTE: EPT bits 2:0 on VMX, present/writable/!NX on SVM.
  std::uint32_t spte_perms(std::uint64_t spte) const {
    if (st_.isa == "svm") return (spte & 1 ? 1u : 0u) | (spte & 2 ? 2u : 0u) | (spte >> 63 ? 0u : 4u);
    return static_cast<std::uint32_t>(spte & 7u);
  }

  // kvm_tdp_mmu_spte_changed: "as id %d gfn %llx level %d old_spte %llx new_spte %llx".
  bool on_tdp_changed(const LineHead& h, std::uint32_t vm, const std::vector<std::string_view>& toks) {
    const auto as = value_after(toks, "id"), gfn = value_after(toks, "gfn"), level = value_after(toks, "level"),
               olds = value_after(toks, "old_spte"), news = value_after(toks, "new_spte");
    if (!as || !gfn || !level || !olds || !news) return false;
    const auto a = parse_dec(*as), g = parse_hex(*gfn), l = parse_dec(*level), o = parse_hex(*olds),
               n = parse_hex(*news);
    if (!a || !g || !l || !o || !n || *l < 1 || *l > 5) return false;
    const unsigned lv = static_cast<unsigned>(*l);
    const bool old_present = *o & kSpteMmuPresent, new_present = *n & kSpteMmuPresent;
    const bool old_leaf = old_present && (lv == 1 || (*o & kSpteLarge)),
               new_leaf = new_present && (lv == 1 || (*n & kSpteLarge));
    if (*a != 0 || lv > 3 || (!old_present && !new_present)) {  // SMM address space, PML4/5 tables, no-ops
      ++st_.skipped_sptes;
      return true;
    }
    const std::uint32_t origin_changed = kEptOriginTdpChanged << kEptOriginShift;
    if (new_leaf) {
      emit_set(h, vm, *g, (*n >> 12) & kSptePfnMask, lv, spte_perms(*n) | origin_changed);
    } else if (new_present && old_leaf && lv > 1) {
      // A huge leaf split into a table: KVM fills the child table with the same frames.
      const std::uint64_t child = frames_per_leaf(lv - 1);
      const std::uint64_t base_pfn = ((*o >> 12) & kSptePfnMask) & ~(frames_per_leaf(lv) - 1);
      const std::uint64_t base_gfn = *g & ~(frames_per_leaf(lv) - 1);
      for (std::uint64_t i = 0; i < 512; ++i)
        emit_set(h, vm, base_gfn + i * child, base_pfn + i * child, lv - 1,
                 spte_perms(*o) | kEptOriginTdpSplit << kEptOriginShift);
    } else if (!new_present && old_present) {
      TraceEvent e = ept_clear_event(vm, h.ns, *g & ~(frames_per_leaf(lv) - 1), lv);
      emit(e, h, vm);
    } else {
      ++st_.skipped_sptes;  // a table linked or replaced: its leaves come with their own events
    }
    return true;
  }

  const FtraceImportOptions& opt_;
  FtraceImportStats& st_;
  std::vector<TraceEvent>& out_;
  std::unordered_map<std::uint32_t, ThreadState> threads_;
  std::unordered_map<std::uint32_t, std::uint32_t> next_vcpu_;
  std::set<std::uint32_t> all_vms_;
  bool saw_tracefs_ = false, saw_report_ = false;
};

// Joins VM ids with commas.
std::string join_ids(const std::set<std::uint32_t>& ids) {
  std::string s;
  for (auto id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

Result<FtraceImport> parse_ftrace(std::string_view text, const FtraceImportOptions& options) {
  FtraceImport r;
  Importer imp(options, r.stats, r.trace.events);
  std::size_t number = 0;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    imp.line(line, ++number);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
  }
  imp.finish();
  FtraceImportStats& st = r.stats;
  if (st.event_lines + st.other_event_lines == 0 && !options.allow_empty) {
    std::string msg = "no ftrace event lines found in " + std::to_string(st.lines) + " lines";
    if (!st.samples.empty()) msg += " (" + st.samples.front() + ")";
    return make_error(msg);
  }
  if (options.pid && st.event_lines == st.filtered_lines && !(options.allow_empty && st.event_lines == 0))
    return make_error("no KVM events from pid " + std::to_string(*options.pid) + " (VMM pids in the capture: " +
                      (imp.all_vms().empty() ? std::string("none") : join_ids(imp.all_vms())) + ")");
  TraceHeader& hd = r.trace.header;
  hd.source = "ftrace-import";
  hd.time_unit = "ns";
  hd.meta["input"] = options.input_name;
  hd.meta["style"] = st.style;
  hd.meta["isa"] = st.isa;
  hd.meta["vms"] = join_ids(st.vms);
  hd.meta["lines"] = std::to_string(st.lines);
  hd.meta["unknown_lines"] = std::to_string(st.unknown_lines);
  hd.meta["malformed_lines"] = std::to_string(st.malformed_lines);
  hd.meta["unknown_levels"] = std::to_string(st.unknown_levels);
  hd.meta["lost_events"] = std::to_string(st.lost_events);
  if (options.pid) hd.meta["pid"] = std::to_string(*options.pid);
  return r;
}

Result<std::map<std::uint32_t, std::uint32_t>> parse_saved_tgids(std::string_view text) {
  std::map<std::uint32_t, std::uint32_t> m;
  std::size_t number = 0;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    const std::string_view line = trim(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    ++number;
    if (line.empty()) continue;
    const auto toks = split(line);
    const auto pid = toks.size() == 2 ? parse_dec(toks[0]) : std::nullopt;
    const auto tgid = toks.size() == 2 ? parse_dec(toks[1]) : std::nullopt;
    if (!pid || !tgid || *pid > 0xffffffffu || *tgid > 0xffffffffu)
      return make_error("saved_tgids line " + std::to_string(number) + " is not 'PID TGID'");
    m[static_cast<std::uint32_t>(*pid)] = static_cast<std::uint32_t>(*tgid);
  }
  return m;
}

Result<FtraceImport> import_ftrace_file(const std::string& path, const FtraceImportOptions& options) {
  auto text = model::read_text_file(path, kMaxFtraceText, "ftrace text capture");
  if (!text) return text.error();
  FtraceImportOptions o = options;
  if (o.input_name.empty()) o.input_name = path;
  auto r = parse_ftrace(*text, o);
  if (!r) return make_error(path + ": " + r.error().message);
  return r;
}

}  // namespace baton::traces
