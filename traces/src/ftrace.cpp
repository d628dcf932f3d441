// The ftrace text importer: tracefs `trace` files and `trace-cmd report` output of the kvm and
// kvmmmu events, converted into trace v1 events (docs/trace-format.md, "ftrace import").
#include "baton/traces/ftrace.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "baton/model/file_io.hpp"
#include "chunk_compressor.hpp"
#include "ftrace_text.hpp"
#include "trace_codec.hpp"

namespace baton::traces {

namespace {

using namespace ftrace_text;
using detail::ChunkCompressor;

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

// Finds the "[cpu]" column: a '[' after a blank, digits, and ']'. Returns the '[' position.
std::optional<std::size_t> find_cpu_column(std::string_view line) {
  for (std::size_t i = 1; i < line.size(); ++i) {
    const void* b = std::memchr(line.data() + i, '[', line.size() - i);
    if (b == nullptr) break;
    i = static_cast<std::size_t>(static_cast<const char*>(b) - line.data());
    if (line[i - 1] != ' ' && line[i - 1] != '\t') continue;
    std::size_t j = i + 1;
    while (j < line.size() && line[j] >= '0' && line[j] <= '9') ++j;
    if (j > i + 1 && j < line.size() && line[j] == ']') return i;
  }
  return std::nullopt;
}

// The task columns ("comm-pid (tgid) ") of recent lines: lines of one thread repeat them
// byte for byte, so a line that starts with a known prefix followed by '[' reuses its pid and
// tgid (no column before the prefix's end can be the CPU column of either line).
struct TaskCache {
  struct Entry {
    std::string prefix;
    std::uint32_t pid = 0;
    std::optional<std::uint32_t> tgid;
  };
  std::array<Entry, 8> entries;
  unsigned next = 0;
};

// Returns the ']' of the CPU column ('[', digits, ']') that starts at `at`, or npos.
std::size_t cpu_column_end(std::string_view line, std::size_t at) {
  if (at >= line.size() || line[at] != '[') return std::string_view::npos;
  std::size_t j = at + 1;
  while (j < line.size() && line[j] >= '0' && line[j] <= '9') ++j;
  return j > at + 1 && j < line.size() && line[j] == ']' ? j : std::string_view::npos;
}

// Whether the first n bytes of a and b are equal (n >= 16: two words near the end first, where
// the task columns of two threads differ).
bool same_prefix(const char* a, const char* b, std::size_t n) {
  if (n >= 16) {
    std::uint64_t x[2], y[2];
    std::memcpy(x, a + n - 16, 16);
    std::memcpy(y, b + n - 16, 16);
    if (x[0] != y[0] || x[1] != y[1]) return false;
  }
  return std::memcmp(a, b, n) == 0;
}

// Parses the task columns before the CPU column at `cpu_at` into h.pid and h.tgid.
bool parse_task(std::string_view line, std::size_t cpu_at, LineHead& h) {
  std::string_view task = trim(line.substr(0, cpu_at));
  if (!task.empty() && task.back() == ')') {
    const auto open = task.rfind('(');
    if (open == std::string_view::npos) return false;
    const auto inner = trim(task.substr(open + 1, task.size() - open - 2));
    if (all_digits(inner)) h.tgid = static_cast<std::uint32_t>(*parse_dec(inner));
    task = trim(task.substr(0, open));
  }
  const auto dash = task.rfind('-');
  if (dash == std::string_view::npos || !all_digits(task.substr(dash + 1)) || task.size() - dash > 11) return false;
  const std::uint64_t pid = *parse_dec(task.substr(dash + 1));
  if (pid > 0xffffffffu) return false;
  h.pid = static_cast<std::uint32_t>(pid);
  return true;
}

// Parses the columns of a trace line: "comm-pid [(tgid)] [cpu] [flags] secs.frac: event: fields".
std::optional<LineHead> parse_head(std::string_view line, bool tabs, TaskCache& cache) {
  LineHead h;
  std::size_t close = std::string_view::npos;  // the ']' of the CPU column
  for (const TaskCache::Entry& e : cache.entries) {
    const std::size_t n = e.prefix.size();
    if (n == 0 || line.size() <= n || line[n] != '[' || !same_prefix(line.data(), e.prefix.data(), n)) continue;
    close = cpu_column_end(line, n);
    if (close == std::string_view::npos) break;
    h.pid = e.pid;
    h.tgid = e.tgid;
    break;
  }
  if (close == std::string_view::npos) {
    const auto cpu_at = find_cpu_column(line);
    if (!cpu_at || !parse_task(line, *cpu_at, h)) return std::nullopt;
    TaskCache::Entry& e = cache.entries[cache.next++ % cache.entries.size()];
    e.prefix.assign(line.data(), *cpu_at);
    e.pid = h.pid;
    e.tgid = h.tgid;
    close = line.find(']', *cpu_at);
  }
  std::string_view rest = line.substr(close + 1);
  const Tokens toks = split(rest, 3, tabs);
  // Up to one flags column ("d..1.") precedes the timestamp; the event name follows it.
  std::size_t k = 0;
  if (k < toks.size() && toks[k].back() != ':') ++k;
  if (k + 1 >= toks.size() || toks[k].back() != ':' || toks[k + 1].back() != ':') return std::nullopt;
  const auto ts = parse_timestamp(toks[k].substr(0, toks[k].size() - 1));
  if (!ts) return std::nullopt;
  h.ns = *ts;
  std::string_view ev = toks[k + 1].substr(0, toks[k + 1].size() - 1);
  if (const void* colon = ::memrchr(ev.data(), ':', ev.size()); colon != nullptr)  // "kvm:kvm_exit"
    ev = ev.substr(static_cast<std::size_t>(static_cast<const char*>(colon) - ev.data()) + 1);
  if (ev.empty()) return std::nullopt;
  h.event = ev;
  const char* fields_begin = toks[k + 1].data() + toks[k + 1].size();
  h.fields = trim(std::string_view(fields_begin, static_cast<std::size_t>(line.data() + line.size() - fields_begin)));
  return h;
}

// Converts one capture, line by line, keeping per-thread state.
class Importer {
 public:
  // Parses into `out`; with a sink, hands final events to it, and without `keep` drops them
  // from `out` once handed over (then `out` holds only the events still open to change).
  Importer(const FtraceImportOptions& o, FtraceImportStats& s, std::vector<TraceEvent>& out,
           ChunkCompressor* sink = nullptr, bool keep = true)
      : opt_(o), st_(s), out_(out), keep_(keep || sink == nullptr), sink_(sink) {}

  // Hands the events from `sent_` up to `end` to the compressor, a chunk at a time.
  void send(std::size_t end) {
    while (sent_ < end) {
      const std::size_t n = std::min<std::size_t>(detail::kEventsPerChunk, end - sent_);
      std::vector<std::uint8_t> raw = sink_->buffer();
      raw.resize(n * detail::kEventSize);
      for (std::size_t i = 0; i < n; ++i) {
        const TraceEvent& e = at(sent_ + i);
        detail::encode_event_at(raw.data() + i * detail::kEventSize, e);
        ++by_type_[static_cast<std::uint8_t>(e.type)];
      }
      sink_->submit(std::move(raw), static_cast<std::uint32_t>(n));
      sent_ += n;
    }
    // Events handed over are final: unless the caller keeps them, only the rest stays.
    if (!keep_ && sent_ - base_ >= 16 * detail::kEventsPerChunk) {
      out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(sent_ - base_));
      base_ = sent_;
    }
  }

  // Sends every full chunk of events that no later line can change: those before the oldest
  // exit still waiting for a GPA from a kvm_page_fault or kvm_mmio (backfill_gpa).
  void send_final() {
    std::size_t final_end = count();
    for (const auto& [tid, t] : threads_)
      if (t.pending_exit && could_backfill(at(*t.pending_exit))) final_end = std::min(final_end, *t.pending_exit);
    send(sent_ + (final_end - sent_) / detail::kEventsPerChunk * detail::kEventsPerChunk);
  }

  // Sends the rest (all lines are read).
  void send_rest() { send(count()); }

  // Events so far (those dropped after sending included), and the event with that index.
  std::size_t count() const { return base_ + out_.size(); }
  TraceEvent& at(std::size_t i) { return out_[i - base_]; }

  // Handles one line (without its newline).
  void line(std::string_view raw, std::size_t number) {
    ++st_.lines;
    const std::string_view l = trim(raw);
    if (l.empty() || l.front() == '#') {
      ++st_.comment_lines;
      if (l.rfind("# tracer:", 0) == 0) saw_tracefs_ = true;
      return;
    }
    const bool tabs = std::memchr(l.data(), '\t', l.size()) != nullptr;
    const auto head = parse_head(l, tabs, task_cache_);
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
    const int kind = event_kind(ev);
    if (kind < 0) {
      ++st_.other_event_lines;
      return;
    }
    ++st_.event_lines;
    std::uint32_t vm = head->tgid.value_or(head->pid);
    if (!head->tgid)
      if (auto it = opt_.tgids.find(head->pid); it != opt_.tgids.end()) vm = it->second;
    if (vm != last_seen_vm_) {
      all_vms_.insert(vm);
      last_seen_vm_ = vm;
    }
    if (opt_.pid && *opt_.pid != head->pid && *opt_.pid != vm) {
      ++st_.filtered_lines;
      return;
    }
    ++per_event_[static_cast<std::size_t>(kind)];
    const std::size_t before = count();
    if (!tabs && fast_line(kind, *head, vm)) {
      after_event(vm, before);
      return;
    }
    const Tokens toks = split(head->fields, Tokens::kMax, tabs);
    bool ok = !toks.overflow;
    if (ok) switch (kind) {
        case 0: ok = on_exit(*head, vm, toks); break;
        case 1: ok = on_entry(*head, vm, toks); break;
        case 2: ok = on_pio(*head, vm, toks); break;
        case 3: ok = on_mmio(*head, vm, toks); break;
        case 4: ok = on_page_fault(*head, toks); break;
        case 5: ok = on_userspace_exit(*head, vm, toks); break;
        case 6: ok = on_set_spte(*head, vm, toks); break;
        case 7: ok = on_spte_requested(*head, vm, toks); break;
        default: ok = on_tdp_changed(*head, vm, toks); break;
      }
    if (!ok) {
      out_.resize(before - base_);
      ++st_.malformed_lines;
      sample(number, l);
      return;
    }
    after_event(vm, before);
  }

  // Notes the VM of a line that produced events and hands final chunks to the compressor.
  void after_event(std::uint32_t vm, std::size_t before) {
    if (count() > before && vm != last_event_vm_) {
      st_.vms.insert(vm);
      last_event_vm_ = vm;
    }
    if (sink_ != nullptr && count() >= sent_ + 2 * detail::kEventsPerChunk) send_final();
  }

  // The fast paths of the commonest lines in their usual layout (kvm_mmu_set_spte, kvm_exit,
  // kvm_entry, kvm_page_fault): the same events and state as the general handlers, without
  // tokenizing. Returns false, having changed nothing, when the line is laid out otherwise.
  bool fast_line(int kind, const LineHead& h, std::uint32_t vm) {
    Cursor c{h.fields.data(), h.fields.data() + h.fields.size()};
    std::uint64_t vcpu = 0, rip = 0, a = 0, b = 0, x = 0, y = 0;
    switch (kind) {
      case 6: {  // kvm_mmu_set_spte: "gfn %llx spte %llx (%s%s%s%s) level %d at %llx"
        std::uint64_t gfn = 0, spte = 0, level = 0;
        if (!c.lit("gfn ") || !c.hex(gfn) || !c.lit(" spte ") || !c.hex(spte) || !c.lit(" (")) return false;
        const std::string_view paren = c.word();  // "rwx)"
        if (paren.size() < 4 || paren.back() != ')' || !c.lit(" level ") || !c.dec(level) || !c.lit(" at ") || !c.hex(x) ||
            !c.done())
          return false;
        const std::string_view perms = paren.substr(0, paren.size() - 1);
        if (level < 1 || level > 3) {
          ++st_.unknown_levels;  // KVM installs leaves at 4K, 2M and 1G only
          return true;
        }
        const std::uint32_t p = (perms[0] == 'r' ? 1u : 0u) | (perms[1] == 'w' ? 2u : 0u) | (perms[2] == 'x' ? 4u : 0u);
        emit_set(h, vm, gfn, (spte >> 12) & kSptePfnMask, static_cast<unsigned>(level),
                 p | kEptOriginSetSpte << kEptOriginShift);
        return true;
      }
      case 1: {  // kvm_entry: "vcpu %u, rip 0x%lx"
        if (!c.lit("vcpu ")) return false;
        const std::string_view v = c.word();  // "0,"
        if (v.size() < 2 || v.back() != ',' || !parse_dec(v.substr(0, v.size() - 1)) || !c.lit(" rip ") || !c.hex(rip) ||
            !c.done())
          return false;
        vcpu = *parse_dec(v.substr(0, v.size() - 1));
        if (vcpu > 0xffffffffu) return false;
        thread(h.pid).vcpu = static_cast<std::uint32_t>(vcpu);
        TraceEvent e{.type = EventType::kEntry};
        e.c = rip;
        emit(e, h, vm);
        thread(h.pid).pending_exit.reset();
        return true;
      }
      case 4: {  // kvm_page_fault: "vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx"
        if (!c.lit("vcpu ") || !c.dec(vcpu) || vcpu > 0xffffffffu || !c.lit(" rip ") || !c.hex(rip) ||
            !c.lit(" address ") || !c.hex(a) || !c.lit(" error_code ") || !c.hex(x) || !c.done())
          return false;
        thread(h.pid).vcpu = static_cast<std::uint32_t>(vcpu);
        backfill_gpa(h.pid, a, false);
        return true;
      }
      case 0: {  // kvm_exit: "vcpu %u reason %s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code 0x%08x"
        if (!c.lit("vcpu ") || !c.dec(vcpu) || vcpu > 0xffffffffu || !c.lit(" reason ")) return false;
        const std::string_view name = c.word();
        static constexpr std::string_view kKeys[] = {"vcpu", "reason", "rip", "info1", "info2", "info", "excp",
                                                     "FAILED_VMENTRY"};
        for (std::string_view k : kKeys)
          if (bare(name) == k) return false;  // the general handler reads such a layout its own way
        if (!c.lit(" rip ") || !c.hex(rip) || !c.lit(" info1 ") || !c.hex(a) || !c.lit(" info2 ") || !c.hex(b) ||
            !c.lit(" intr_info ") || !c.hex(x) || !c.lit(" error_code ") || !c.hex(y) || !c.done())
          return false;
        thread(h.pid).vcpu = static_cast<std::uint32_t>(vcpu);
        TraceEvent e{.type = EventType::kExit};
        const bool svm = exit_code(name, e);
        e.c = rip;
        e.a = a;
        if (svm && e.code == kSvmNpf) e.b = b;  // exit_info_2 holds the faulting GPA
        const std::size_t at = emit(e, h, vm);
        thread(h.pid).pending_exit = at;
        return true;
      }
      default: return false;
    }
  }

  // Sets an exit's code (and the SVM flag) from its reason name; returns whether it is SVM.
  bool exit_code(std::string_view name, TraceEvent& e) {
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
    return svm;
  }

  // Fills in the style and the per-event counts once all lines are read.
  void finish() {
    st_.style = saw_tracefs_ ? "tracefs" : saw_report_ ? "trace-cmd" : "plain";
    for (std::size_t k = 0; k < kHandled.size(); ++k)
      if (per_event_[k] != 0) st_.per_event[std::string(kHandled[k])] = per_event_[k];
    if (sink_ == nullptr)
      for (const TraceEvent& e : out_) ++by_type_[static_cast<std::uint8_t>(e.type)];
    st_.events = 0;
    for (std::size_t t = 0; t < by_type_.size(); ++t)
      if (by_type_[t] != 0) {
        st_.events_by_type[to_string(static_cast<EventType>(t))] += by_type_[t];
        st_.events += by_type_[t];
      }
  }

  // Returns every VM id seen, including those the pid filter dropped.
  const std::set<std::uint32_t>& all_vms() const { return all_vms_; }

 private:
  // The KVM events handled, in the order of event_kind().
  static constexpr std::array<std::string_view, 9> kHandled = {
      "kvm_exit", "kvm_entry", "kvm_pio", "kvm_mmio", "kvm_page_fault", "kvm_userspace_exit", "kvm_mmu_set_spte",
      "kvm_mmu_spte_requested", "kvm_tdp_mmu_spte_changed"};
  // Returns the index of a handled event in kHandled, or -1.
  static int event_kind(std::string_view ev) {
    if (ev.size() < 7 || ev[0] != 'k' || ev[3] != '_') return -1;
    for (std::size_t k = 0; k < kHandled.size(); ++k)
      if (ev == kHandled[k]) return static_cast<int>(k);
    return -1;
  }
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
    ThreadState& t = thread(tid);
    if (!t.vcpu) t.vcpu = next_vcpu_[vm]++;
    return *t.vcpu;
  }

  // Returns the state of a thread (the last one looked up is cached; map nodes do not move).
  ThreadState& thread(std::uint32_t tid) {
    if (tid != last_tid_ || last_thread_ == nullptr) {
      last_thread_ = &threads_[tid];
      last_tid_ = tid;
    }
    return *last_thread_;
  }

  // Whether backfill_gpa() may still change an exit (then its chunk is not final).
  static bool could_backfill(const TraceEvent& e) {
    if (e.b != 0) return false;
    return (e.flags & kExitSvm) ? e.code == kSvmNpf : (e.code == kVmxEptViolation || e.code == kVmxEptMisconfig);
  }

  // Records an explicitly printed vCPU id for a thread.
  void note_vcpu(std::uint32_t tid, const Tokens& toks) {
    if (auto v = value_after(toks, "vcpu"))
      if (auto n = parse_dec(*v); n && *n <= 0xffffffffu) thread(tid).vcpu = static_cast<std::uint32_t>(*n);
  }

  // Appends an event stamped with the line's time, VM and vCPU.
  std::size_t emit(TraceEvent e, const LineHead& h, std::uint32_t vm) {
    e.vm = vm;
    e.time = h.ns;
    e.vcpu = vcpu_of(h.pid, vm);
    out_.push_back(e);
    return count() - 1;
  }

  // kvm_exit: "vcpu %u reason %s%s%s rip 0x%lx info1 0x%016llx info2 0x%016llx intr_info ..."
  // or, before Linux 5.7, "reason %s rip 0x%lx info %llx %llx".
  bool on_exit(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
    note_vcpu(h.pid, toks);
    std::size_t r = 0;
    while (r < toks.size() && toks[r] != "reason") ++r;
    if (r + 1 >= toks.size()) return false;
    std::string_view name = toks[r + 1];
    std::string excp;  // SVM exception exits are named with two words ("PF excp")
    std::size_t k = r + 2;
    if (k < toks.size() && toks[k] == "excp") {
      excp = std::string(name) + " excp";
      name = excp;
      ++k;
    }
    TraceEvent e{.type = EventType::kExit};
    for (; k < toks.size() && toks[k] != "rip"; ++k)
      if (toks[k] == "FAILED_VMENTRY") e.flags |= kExitFailedVmentry;
    const bool svm = exit_code(name, e);
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
    const std::size_t at = emit(e, h, vm);
    thread(h.pid).pending_exit = at;
    return true;
  }

  // kvm_entry: "vcpu %u, rip 0x%lx[ inj ...][[immediate exit]][[guest]]", or "vcpu %u" before Linux 5.9.
  bool on_entry(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
    thread(h.pid).pending_exit.reset();
    return true;
  }

  // kvm_pio: "pio_%s at 0x%x size %d count %d val 0x%x %s".
  bool on_pio(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
    ThreadState& t = thread(tid);
    if (!t.pending_exit) return;
    TraceEvent& e = at(*t.pending_exit);
    const bool svm = e.flags & kExitSvm;
    const bool match =
        svm ? e.code == kSvmNpf : (e.code == kVmxEptViolation || (misconfig_too && e.code == kVmxEptMisconfig));
    if (match && e.b == 0) {
      BATON_CHECK(*t.pending_exit >= sent_);  // send_final() keeps such exits
      e.b = gpa;
      ++st_.backfilled_gpas;
    }
  }

  // kvm_mmio: "mmio %s len %u gpa 0x%llx val 0x%llx".
  bool on_mmio(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
  bool on_page_fault(const LineHead& h, const Tokens& toks) {
    note_vcpu(h.pid, toks);
    const auto addr = value_after(toks, "address");
    if (!addr || !parse_hex(*addr)) return false;
    backfill_gpa(h.pid, *parse_hex(*addr), false);
    return true;
  }

  // kvm_userspace_exit: "reason %s (%d)"; "restart"/"error" carry an errno.
  bool on_userspace_exit(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
  bool on_set_spte(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
  bool on_spte_requested(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
  bool on_tdp_changed(const LineHead& h, std::uint32_t vm, const Tokens& toks) {
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
  bool keep_ = true;        // keep the events handed to sink_ in out_
  std::size_t base_ = 0;    // index of out_[0] (events before it were sent and dropped)
  std::array<std::size_t, 256> by_type_{};  // events by type (counted as sent, or at finish())
  ChunkCompressor* sink_ = nullptr;
  std::size_t sent_ = 0;  // events handed to sink_
  TaskCache task_cache_;
  std::unordered_map<std::uint32_t, ThreadState> threads_;
  std::uint32_t last_tid_ = 0;
  ThreadState* last_thread_ = nullptr;
  std::unordered_map<std::uint32_t, std::uint32_t> next_vcpu_;
  std::set<std::uint32_t> all_vms_;
  std::uint32_t last_seen_vm_ = ~0u, last_event_vm_ = ~0u;  // last ids inserted into all_vms_ and st_.vms
  std::array<std::size_t, kHandled.size()> per_event_{};
  bool saw_tracefs_ = false, saw_report_ = false;
};

// Joins VM ids with commas.
std::string join_ids(const std::set<std::uint32_t>& ids) {
  std::string s;
  for (auto id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

namespace {

// Feeds the complete lines of `text` to the importer; returns the unfinished rest (the text
// after the last newline).
std::string_view feed_lines(Importer& imp, std::string_view text, std::size_t& number) {
  const char* p = text.data();
  const char* const end = p + text.size();
  while (p < end) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
    if (nl == nullptr) break;
    imp.line(std::string_view(p, static_cast<std::size_t>(nl - p)), ++number);
    p = nl + 1;
  }
  return std::string_view(p, static_cast<std::size_t>(end - p));
}

// Completes an import: the style, the header, and the errors of a capture without events.
Result<FtraceImport> finish_import(Importer& imp, FtraceImport&& r, const FtraceImportOptions& options) {
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
  return std::move(r);
}

}  // namespace

Result<FtraceImport> parse_ftrace(std::string_view text, const FtraceImportOptions& options) {
  FtraceImport r;
  Importer imp(options, r.stats, r.trace.events);
  std::size_t number = 0;
  const std::string_view rest = feed_lines(imp, text, number);
  if (!rest.empty()) imp.line(rest, ++number);
  return finish_import(imp, std::move(r), options);
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

namespace {

// Reads and parses a capture file in blocks (only the events stay in memory), handing final
// events to `sink` as it goes when there is one.
Result<FtraceImport> import_file(const std::string& path, const FtraceImportOptions& options, ChunkCompressor* sink,
                                 bool keep) {
  // A regular text file within the size cap (checked before anything is parsed).
  auto in = model::open_text_file(path, kMaxFtraceText, "ftrace text capture");
  if (!in) return in.error();
  FtraceImportOptions o = options;
  if (o.input_name.empty()) o.input_name = path;
  FtraceImport r;
  if (!keep) {
    r.trace.events.reserve(20 * std::size_t{detail::kEventsPerChunk});  // a window: no regrowth
  } else if (in->size() > 0) {  // one event per 80 bytes at most, as a rule: no regrowth
    std::vector<TraceEvent>& ev = r.trace.events;
    ev.reserve(static_cast<std::size_t>(in->size()) / 80);
    // Huge pages for the events where the system allows them: thousands fewer page faults.
    constexpr std::uintptr_t k2m = std::uintptr_t{1} << 21;
    const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(ev.data()) + k2m - 1) & ~(k2m - 1);
    const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(ev.data() + ev.capacity())) & ~(k2m - 1);
    if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
  Importer imp(o, r.stats, r.trace.events, sink, keep);
  // 4 MiB blocks; a smaller file gets a buffer of its own size (tracefs files report size 0).
  constexpr std::size_t kBlock = std::size_t{4} << 20;
  const std::uint64_t first = in->size() == 0 ? kBlock : std::min<std::uint64_t>(kBlock, in->size() + 1);
  std::vector<char> buf(static_cast<std::size_t>(first));
  std::size_t have = 0, number = 0;
  std::uint64_t offset = 0;
  for (;;) {
    if (have == buf.size()) buf.resize(buf.size() * 2);  // one line longer than the buffer
    auto got = in->read_some(offset, buf.data() + have, buf.size() - have);
    if (!got) return got.error();
    if (*got == 0) break;
    offset += *got;
    if (offset > kMaxFtraceText)  // a file that grows past the cap while being read (tracefs)
      return make_error("'" + path + "' is larger than the " + std::to_string(kMaxFtraceText >> 30) +
                        " GiB an ftrace text capture may have");
    have += *got;
    const std::string_view rest = feed_lines(imp, std::string_view(buf.data(), have), number);
    std::memmove(buf.data(), rest.data(), rest.size());
    have = rest.size();
  }
  if (have > 0) imp.line(std::string_view(buf.data(), have), ++number);
  if (sink != nullptr) imp.send_rest();
  auto res = finish_import(imp, std::move(r), o);
  if (!res) return make_error(path + ": " + res.error().message);
  return res;
}

}  // namespace

Result<FtraceImport> import_ftrace_file(const std::string& path, const FtraceImportOptions& options) {
  return import_file(path, options, nullptr, true);
}

Result<FtraceImport> import_ftrace_to(const std::string& path, const std::string& out, bool overwrite,
                                      const FtraceImportOptions& options) {
  // A second thread compresses chunks of final events while this one parses: zstd costs about
  // as much as the parsing.
  ChunkCompressor compressor;
  auto r = import_file(path, options, &compressor, false);
  std::vector<detail::EncodedChunk> chunks = compressor.finish();
  if (!r) return r;
  std::vector<TraceEvent>().swap(r->trace.events);  // the last window: every event is in the chunks
  if (auto w = detail::write_encoded_trace(out, r->trace.header, chunks, overwrite); !w) return w.error();
  return r;
}

}  // namespace baton::traces
