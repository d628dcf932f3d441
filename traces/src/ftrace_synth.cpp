// A generator of synthetic ftrace captures shaped like a real QEMU one: tracefs text with a
// TGID column, two QEMU processes with two "CPU n/KVM" threads each, about half the lines
// kvm_mmu_set_spte (the shadow MMU installs several SPTEs per fault), and exits with their
// entries, page faults, port and MMIO I/O, userspace exits and some events the importer ignores.
#include <cstdio>
#include <cstring>
#include <fstream>

#include "baton/traces/ftrace.hpp"

namespace baton::traces {

namespace {

// splitmix64: the generator's deterministic random numbers.
std::uint64_t next(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Appends the lines of one capture, episode by episode, until `lines` lines are written.
class Synth {
 public:
  Synth(const SynthOptions& o, std::string& out, SynthStats& st) : o_(o), out_(out), st_(st), rng_(o.seed) {}

  // Writes the tracefs preamble.
  void header() {
    static const char* const kHeader[] = {
        "# tracer: nop",
        "#",
        "# entries-in-buffer/entries-written: 0/0   #P:2",
        "#",
        "#                                          _-----=> irqs-off/BH-disabled",
        "#                                         / _----=> need-resched",
        "#                                        | / _---=> hardirq/softirq",
        "#                                        || / _--=> preempt-depth",
        "#                                        ||| / _-=> migrate-disable",
        "#                                        |||| /     delay",
        "#           TASK-PID             TGID     CPU#  |||||  TIMESTAMP  FUNCTION",
        "#              | |                 |        |   |||||     |         |",
    };
    for (const char* l : kHeader) {
      out_ += l;
      out_ += '\n';
      ++st_.lines;
    }
  }

  // Writes one episode: a VM exit and what follows it, up to the next entry.
  void episode() {
    const unsigned vm = static_cast<unsigned>(next(rng_) % o_.vms);
    const unsigned vcpu = static_cast<unsigned>(next(rng_) % o_.vcpus);
    const std::uint64_t rip = 0xffffffff81000000ull + (next(rng_) & 0xfffff0);
    const unsigned kind = static_cast<unsigned>(next(rng_) % 100);
    if (kind < 55) {  // an EPT violation: page fault, a burst of SPTEs (prefetch), entry
      const std::uint64_t gfn = next(rng_) % (o_.guest_pages - 16);
      exit(vm, vcpu, "EPT_VIOLATION", rip, 0x181 + (next(rng_) & 2));
      event(vm, vcpu, "kvm_page_fault", "vcpu %u rip 0x%llx address 0x%016llx error_code 0x%x", vcpu,
            static_cast<unsigned long long>(rip), static_cast<unsigned long long>(gfn << 12), 0x181u);
      const unsigned burst = 1 + static_cast<unsigned>(next(rng_) % 11);
      for (unsigned i = 0; i < burst; ++i) {
        const std::uint64_t g = gfn + i, pfn = 0x100000 + vm * 0x200000 + g;
        const bool w = (next(rng_) & 3) != 0;
        event(vm, vcpu, "kvm_mmu_set_spte", "gfn %llx spte %llx (r%sx%s) level 1 at %llx",
              static_cast<unsigned long long>(g), static_cast<unsigned long long>((pfn << 12) | (w ? 0xb77u : 0xb75u)),
              w ? "w" : "-", "u", static_cast<unsigned long long>(0x1a0c03000ull + vm * 0x100000 + (g & 511) * 8));
      }
    } else if (kind < 75) {  // port I/O, completed by the VMM
      const bool in = next(rng_) % 3 == 0;
      const unsigned port = in ? 0x71 : 0x3f8;
      exit(vm, vcpu, "IO_INSTRUCTION", rip, (std::uint64_t{port} << 16) | (in ? 8u : 0u));
      event(vm, vcpu, "kvm_pio", "pio_%s at 0x%x size 1 count 1 val 0x%x ", in ? "read" : "write", port,
            static_cast<unsigned>(next(rng_) & 0xff));
      event(vm, vcpu, "kvm_userspace_exit", "reason KVM_EXIT_IO (2)");
    } else if (kind < 87) {  // MMIO through a misconfigured SPTE
      const std::uint64_t gpa = 0xfebf1000ull + (next(rng_) & 0xff0);
      exit(vm, vcpu, "EPT_MISCONFIG", rip, 0);
      event(vm, vcpu, "kvm_mmio", "mmio write len 4 gpa 0x%llx val 0x%llx", static_cast<unsigned long long>(gpa),
            static_cast<unsigned long long>(next(rng_) & 0xffff));
      event(vm, vcpu, "kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)");
    } else {  // an exit handled in the kernel, with events the importer does not use
      exit(vm, vcpu, kind < 94 ? "EXTERNAL_INTERRUPT" : "HLT", rip, 0);
      event(vm, vcpu, "kvm_fpu", "%s", "unload");
      event(vm, vcpu, "kvm_fpu", "%s", "load");
    }
    event(vm, vcpu, "kvm_entry", "vcpu %u, rip 0x%llx", vcpu, static_cast<unsigned long long>(rip));
  }

  bool done() const { return st_.lines >= o_.lines; }

 private:
  // Writes a kvm_exit line (the Linux >= 5.7 format).
  void exit(unsigned vm, unsigned vcpu, const char* reason, std::uint64_t rip, std::uint64_t info1) {
    event(vm, vcpu, "kvm_exit",
          "vcpu %u reason %s rip 0x%llx info1 0x%016llx info2 0x%016llx intr_info 0x%08x error_code 0x%08x", vcpu, reason,
          static_cast<unsigned long long>(rip), static_cast<unsigned long long>(info1), 0ull, 0u, 0u);
  }

  // Writes one event line of a VM's vCPU thread (nothing once the capture is long enough).
  template <typename... Args>
  void event(unsigned vm, unsigned vcpu, const char* name, const char* fmt, Args... args) {
    if (done()) return;
    const unsigned tgid = 4242 + vm * 1000, tid = tgid + 3 + vcpu;
    ns_ += 1 + next(rng_) % 2000;
    char head[128], body[256];
    const int h = std::snprintf(head, sizeof head, "       CPU %u/KVM-%u    (%7u) [%03u] d..1. %6llu.%06llu: %s: ", vcpu, tid,
                                tgid, (vm * o_.vcpus + vcpu) % 2, static_cast<unsigned long long>(ns_ / 1000000000ull),
                                static_cast<unsigned long long>(ns_ / 1000 % 1000000), name);
    const int b = std::snprintf(body, sizeof body, fmt, args...);
    out_.append(head, static_cast<std::size_t>(h));
    out_.append(body, static_cast<std::size_t>(b));
    out_ += '\n';
    ++st_.lines;
    ++st_.per_event[name];
  }

  const SynthOptions& o_;
  std::string& out_;
  SynthStats& st_;
  std::uint64_t rng_;
  std::uint64_t ns_ = 5021318792000ull;
};

}  // namespace

std::string synthetic_ftrace(const SynthOptions& o, SynthStats* stats) {
  SynthStats st;
  std::string out;
  out.reserve(o.lines * 140);
  Synth s(o, out, st);
  s.header();
  while (!s.done()) s.episode();
  st.bytes = out.size();
  if (stats != nullptr) *stats = st;
  return out;
}

Result<SynthStats> write_synthetic_ftrace(const std::string& path, const SynthOptions& o) {
  SynthStats st;
  const std::string text = synthetic_ftrace(o, &st);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) return make_error("cannot create '" + path + "': " + std::strerror(errno));
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!f) return make_error("cannot write '" + path + "'");
  return st;
}

}  // namespace baton::traces
