// The ftrace importer on hand-written captures in the tracefs and trace-cmd formats, and the
// reconstruction of gfn->pfn maps from the imported events.
#include "baton/traces/ftrace.hpp"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

using namespace baton::traces;

namespace {
// Reads a sample capture from tests/traces/data.
std::string data(const std::string& name) {
  std::ifstream in(std::string(BATON_TRACES_DATA_DIR) + "/" + name, std::ios::binary);
  REQUIRE(in);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Returns the events of one type.
std::vector<TraceEvent> of_type(const Trace& t, EventType type) {
  std::vector<TraceEvent> out;
  for (const auto& e : t.events)
    if (e.type == type) out.push_back(e);
  return out;
}

// Returns the index of the first event of a VM at or after `from` that has the given type.
std::size_t first_index(const Trace& t, std::uint32_t vm, EventType type) {
  for (std::size_t i = 0; i < t.events.size(); ++i)
    if (t.events[i].vm == vm && t.events[i].type == type) return i;
  return t.events.size();
}
}  // namespace

TEST_CASE("A tracefs capture with TGIDs imports both VMM processes as VMs", "[traces][ftrace]") {
  auto r = parse_ftrace(data("tracefs-tdp.txt"), {.input_name = "tracefs-tdp.txt"});
  REQUIRE(r.ok());
  const auto& st = r->stats;
  CHECK(st.style == "tracefs");
  CHECK(st.isa == "vmx");
  CHECK(st.vms == std::set<std::uint32_t>{4242, 5150});
  CHECK(st.unknown_lines == 0);
  CHECK(st.malformed_lines == 0);
  CHECK(st.other_event_lines == 1);  // kvm_cpuid
  CHECK(st.event_lines == 82);
  CHECK(r->trace.header.time_unit == "ns");
  CHECK(r->trace.header.meta.at("vms") == "4242,5150");
  const auto& ev = r->trace.events;
  REQUIRE_FALSE(ev.empty());
  CHECK(ev.front().type == EventType::kEntry);
  CHECK(ev.front().time == 5021318792000ull);
  CHECK(ev.front().c == 0x401000);
  // The first exit is an EPT violation whose GPA comes from the following kvm_page_fault.
  const auto exits = of_type(r->trace, EventType::kExit);
  REQUIRE(exits.size() >= 3);
  CHECK(exits[0].code == 48);
  CHECK(exits[0].a == 0x184);
  CHECK(exits[0].b == 0x401000);
  CHECK(exits[0].c == 0x401000);
  // The EPT misconfiguration exit gets its GPA from kvm_mmio.
  bool saw_misconfig = false;
  for (const auto& e : exits)
    if (e.code == 49) {
      saw_misconfig = true;
      CHECK(e.b == 0xd0000004);
    }
  CHECK(saw_misconfig);
  const auto pio = of_type(r->trace, EventType::kIo);
  REQUIRE(pio.size() == 4);
  CHECK(pio[0].code == 0x3f8);
  CHECK(pio[0].a == 'h');
  CHECK((pio[0].flags & kAccessIn) == 0);
  CHECK(((pio[0].flags >> kAccessSizeShift) & 0xff) == 1);
  const auto ue = of_type(r->trace, EventType::kUserspaceExit);
  REQUIRE_FALSE(ue.empty());
  CHECK(ue[0].code == 2);
  bool saw_restart = false;
  for (const auto& e : ue) saw_restart |= (e.flags & 1) && e.a == 4;
  CHECK(saw_restart);
}

TEST_CASE("The source map before teardown and the worker map after migration share every pfn",
          "[traces][ftrace][mappings]") {
  auto r = parse_ftrace(data("tracefs-tdp.txt"));
  REQUIRE(r.ok());
  const Trace& t = r->trace;
  // The source's teardown zaps come from its main thread at the end of the capture.
  std::size_t teardown = t.events.size();
  for (std::size_t i = 0; i < t.events.size(); ++i)
    if (t.events[i].vm == 4242 && t.events[i].type == EventType::kEptClear) {
      teardown = i;
      break;
    }
  REQUIRE(teardown < t.events.size());
  auto before = mappings(t, 4242, teardown);
  REQUIRE(before.ok());
  const std::map<std::uint64_t, Mapping> expected_src = {
      {0x100, {.pfn = 0x1a2b00, .level = 1, .perms = 7}},
      {0x200, {.pfn = 0x1c0000, .level = 2, .perms = 7}},
      {0x401, {.pfn = 0x1a2b01, .level = 1, .perms = 7}},
  };
  REQUIRE(before->size() == expected_src.size());
  for (const auto& [gfn, m] : expected_src) {
    CAPTURE(gfn);
    REQUIRE(before->count(gfn) == 1);
    CHECK(before->at(gfn).pfn == m.pfn);
    CHECK(before->at(gfn).level == m.level);
    CHECK(before->at(gfn).perms == m.perms);
    CHECK(before->at(gfn).perms_known);
  }
  auto after_teardown = mappings(t, 4242);
  REQUIRE(after_teardown.ok());
  CHECK(after_teardown->empty());
  auto worker = mappings(t, 5150);
  REQUIRE(worker.ok());
  REQUIRE(worker->size() == 3);
  for (const auto& [gfn, m] : *worker) {
    CAPTURE(gfn);
    CHECK(before->at(gfn).pfn == m.pfn);
    CHECK(before->at(gfn).level == m.level);
  }
  CHECK(lookup_pfn(*worker, 0x2a5) == 0x1c00a5);
  CHECK(lookup_pfn(*worker, 0x3ff) == 0x1c01ff);
  CHECK_FALSE(lookup_pfn(*worker, 0x400).has_value());
  CHECK_FALSE(lookup_pfn(*worker, 0xd0000).has_value());  // MMIO SPTEs map nothing
}

TEST_CASE("A pid filter keeps one VMM, matching either its process or one of its threads", "[traces][ftrace]") {
  auto by_process = parse_ftrace(data("tracefs-tdp.txt"), {.pid = 5150});
  REQUIRE(by_process.ok());
  CHECK(by_process->stats.vms == std::set<std::uint32_t>{5150});
  CHECK(by_process->stats.filtered_lines > 0);
  for (const auto& e : by_process->trace.events) CHECK(e.vm == 5150);
  auto by_thread = parse_ftrace(data("tracefs-tdp.txt"), {.pid = 4245});
  REQUIRE(by_thread.ok());
  CHECK(by_thread->stats.vms == std::set<std::uint32_t>{4242});
  auto none = parse_ftrace(data("tracefs-tdp.txt"), {.pid = 9999});
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().message == "no KVM events from pid 9999 (VMM pids in the capture: 4242,5150)");
}

TEST_CASE("trace-cmd report output of an older kernel imports, threads becoming VMs unless TGIDs are given",
          "[traces][ftrace]") {
  auto r = parse_ftrace(data("tracecmd-report.txt"));
  REQUIRE(r.ok());
  CHECK(r->stats.style == "trace-cmd");
  CHECK(r->stats.unknown_lines == 0);
  CHECK(r->stats.malformed_lines == 0);
  CHECK(r->stats.vms == std::set<std::uint32_t>{3105, 3209});
  auto tg = parse_saved_tgids(data("tracecmd-saved_tgids.txt"));
  REQUIRE(tg.ok());
  auto m = parse_ftrace(data("tracecmd-report.txt"), {.tgids = *tg});
  REQUIRE(m.ok());
  CHECK(m->stats.vms == std::set<std::uint32_t>{3101, 3201});
  // Old-format kvm_exit ("info 181 0") and kvm_entry without a RIP.
  const auto exits = of_type(m->trace, EventType::kExit);
  REQUIRE_FALSE(exits.empty());
  CHECK(exits[0].code == 48);
  CHECK(exits[0].a == 0x181);
  CHECK(exits[0].b == 0xff000);
  CHECK(exits[0].c == 0xfff0);
  CHECK(m->trace.events[first_index(m->trace, 3101, EventType::kEntry)].c == 0);
  auto a = mappings(m->trace, 3101);
  REQUIRE(a.ok());
  REQUIRE(a->size() == 3);
  CHECK(a->at(0xff).pfn == 0x23a4c1);
  CHECK(a->at(0xff).perms == 7);
  CHECK(a->at(0x7).pfn == 0x23a407);
  CHECK(a->at(0x200).level == 2);
  CHECK(a->at(0x200).pfn == 0x1c0000);
  auto b = mappings(m->trace, 3201);
  REQUIRE(b.ok());
  CHECK(b->at(0x40000).level == 3);
  CHECK(lookup_pfn(*b, 0x40123) == 0x2c0123);
  // An unsatisfied MMIO read is flagged as such.
  bool saw_unsatisfied = false;
  for (const auto& e : of_type(m->trace, EventType::kMmio))
    saw_unsatisfied |= (e.flags & kMmioUnsatisfied) && (e.flags & kAccessIn) && e.a == 0xfebf0004;
  CHECK(saw_unsatisfied);
}

TEST_CASE("An AMD capture gives SVM exit codes, the NPF address from info2 and NX as no execute", "[traces][ftrace]") {
  auto r = parse_ftrace(data("tracefs-svm.txt"));
  REQUIRE(r.ok());
  CHECK(r->stats.isa == "svm");
  CHECK(r->stats.vms == std::set<std::uint32_t>{7702});
  const auto exits = of_type(r->trace, EventType::kExit);
  REQUIRE(exits.size() == 3);
  CHECK(exits[0].code == 0x400);
  CHECK((exits[0].flags & kExitSvm) != 0);
  CHECK(exits[1].b == 0x100000);
  CHECK(exits[2].code == 0x7b);
  auto m = mappings(r->trace, 7702);
  REQUIRE(m.ok());
  CHECK(m->at(0x401).perms == 7);
  CHECK(m->at(0x100).perms == 3);
  CHECK(m->at(0x100).pfn == 0x3b7100);
}

TEST_CASE("Malformed and foreign lines are counted and sampled, never fatal", "[traces][ftrace]") {
  auto r = parse_ftrace(data("malformed.txt"));
  REQUIRE(r.ok());
  const auto& st = r->stats;
  CHECK(st.malformed_lines == 7);
  CHECK(st.unknown_lines == 3);
  CHECK(st.other_event_lines == 1);
  CHECK(st.lost_events == 17);
  CHECK(st.samples.size() == 5);
  CHECK(st.samples[0].rfind("line 10: ", 0) == 0);
  // The good lines still convert: two entries, two exits, one set_spte and one spte_requested.
  CHECK(of_type(r->trace, EventType::kExit).size() == 2);
  CHECK(of_type(r->trace, EventType::kEptSet).size() == 2);
}

TEST_CASE("Text without any trace line is rejected with one error line", "[traces][ftrace]") {
  auto empty = parse_ftrace("");
  REQUIRE_FALSE(empty.ok());
  CHECK(empty.error().message == "no ftrace event lines found in 0 lines");
  auto prose = parse_ftrace("hello\nworld\n");
  REQUIRE_FALSE(prose.ok());
  CHECK(prose.error().message == "no ftrace event lines found in 2 lines (line 1: hello)");
  auto missing = import_ftrace_file("/nonexistent/trace.txt");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("/nonexistent/trace.txt") != std::string::npos);
}

TEST_CASE("Timestamps in nanoseconds, raw counters and odd task names parse", "[traces][ftrace]") {
  const std::string text =
      "  my-vmm worker-1-77  [003]  12.000000001: kvm_entry: vcpu 2, rip 0xfff0[immediate exit]\n"
      "  my-vmm worker-1-77  [003]  123456789: kvm_entry: vcpu 2, rip 0x10 inj 0x00000000 inj_error_code 0x00000000\n"
      "  <...>-88  (     80) [000] .N..  1.5: kvm:kvm_entry: vcpu 0, rip 0x20\n";
  auto r = parse_ftrace(text);
  REQUIRE(r.ok());
  REQUIRE(r->trace.events.size() == 3);
  CHECK(r->trace.events[0].time == 12000000001ull);
  CHECK(r->trace.events[0].vm == 77);
  CHECK(r->trace.events[0].vcpu == 2);
  CHECK(r->trace.events[0].c == 0xfff0);
  CHECK(r->trace.events[1].time == 123456789ull);
  CHECK(r->trace.events[1].c == 0x10);
  CHECK(r->trace.events[2].time == 1500000000ull);
  CHECK(r->trace.events[2].vm == 80);
}

TEST_CASE("A huge leaf split into a table keeps its frames as 512 smaller leaves", "[traces][ftrace][mappings]") {
  const std::string text =
      "  v-10 (10) [000] .... 1.000001: kvm_tdp_mmu_spte_changed: as id 0 gfn 200 level 2 old_spte "
      "8000000000000000 new_spte 6000001c00009f7\n"
      "  v-10 (10) [000] .... 1.000002: kvm_tdp_mmu_spte_changed: as id 0 gfn 200 level 2 old_spte "
      "6000001c00009f7 new_spte 1a0c06907\n"
      "  v-10 (10) [000] .... 1.000003: kvm_tdp_mmu_spte_changed: as id 0 gfn 2a5 level 1 old_spte "
      "6000001c00a5977 new_spte 6000001c00a5975\n";
  auto r = parse_ftrace(text);
  REQUIRE(r.ok());
  CHECK(r->trace.events.size() == 1 + 512 + 1);
  auto m = mappings(r->trace, 10);
  REQUIRE(m.ok());
  CHECK(m->size() == 512);
  CHECK(m->at(0x200).level == 1);
  CHECK(m->at(0x3ff).pfn == 0x1c01ff);
  CHECK(m->at(0x2a5).perms == 5);  // write permission removed (dirty logging)
  auto before_split = mappings(r->trace, 10, 1);
  REQUIRE(before_split.ok());
  CHECK(before_split->size() == 1);
  CHECK(before_split->at(0x200).level == 2);
}

TEST_CASE("Mapping reconstruction replaces overlapping leaves and checks its inputs", "[traces][mappings]") {
  Trace t;
  t.events = {
      ept_set_event(1, 0, 0x200, 0x1000, 2, 7),  // 2M leaf
      ept_set_event(1, 1, 0x205, 0x9999, 1, 3),  // a 4K leaf under it: the 2M leaf is gone
      ept_set_event(1, 2, 0x400, 0x2000, 1, 7), ept_set_event(1, 3, 0x401, 0x2001, 1, 7),
      ept_set_event(1, 4, 0x400, 0x3000, 2, 7),  // a 2M leaf over two 4K ones replaces both
      ept_clear_event(1, 5, 0x400, 2),          ept_set_event(2, 6, 0x10, 0x10, 1, 7),
  };
  auto at2 = mappings(t, 1, 2);
  REQUIRE(at2.ok());
  CHECK(at2->size() == 1);
  CHECK(at2->at(0x205).pfn == 0x9999);
  auto at5 = mappings(t, 1, 5);
  REQUIRE(at5.ok());
  CHECK(at5->size() == 2);
  CHECK(at5->at(0x400).level == 2);
  auto end = mappings(t, 1);
  REQUIRE(end.ok());
  CHECK(end->size() == 1);
  CHECK(trace_vms(t) == std::vector<std::uint32_t>{1, 2});
  auto past = mappings(t, 1, 8);
  REQUIRE_FALSE(past.ok());
  CHECK(past.error().message == "event index 8 is past the end of the trace (7 events)");
  auto unknown = mappings(t, 3);
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message == "no VM 3 in the trace");
  t.events.push_back(ept_set_event(1, 7, 0, 0, 4, 7));
  auto bad = mappings(t, 1);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "event 7: leaf level 4 is not 1..3");
}

TEST_CASE("A repeated mapping without permissions keeps the known permissions", "[traces][mappings]") {
  Trace t;
  TraceEvent requested = ept_set_event(1, 0, 0x100, 0x500, 1, 0);
  requested.flags |= kEptPermsUnknown;
  t.events = {ept_set_event(1, 0, 0x100, 0x500, 1, 5), requested};
  auto m = mappings(t, 1);
  REQUIRE(m.ok());
  CHECK(m->at(0x100).perms == 5);
  CHECK(m->at(0x100).perms_known);
  t.events = {requested};
  auto only = mappings(t, 1);
  REQUIRE(only.ok());
  CHECK_FALSE(only->at(0x100).perms_known);
}

TEST_CASE("An imported capture survives a trace file round trip", "[traces][ftrace][io]") {
  auto r = parse_ftrace(data("tracefs-tdp.txt"));
  REQUIRE(r.ok());
  auto back = decode_trace(encode_trace(r->trace));
  REQUIRE(back.ok());
  CHECK(back->header == r->trace.header);
  CHECK(back->events == r->trace.events);
}

TEST_CASE("Exit reason names map both ways", "[traces][ftrace]") {
  bool svm = true;
  CHECK(exit_reason_from_name("EPT_VIOLATION", &svm) == 48u);
  CHECK_FALSE(svm);
  CHECK(exit_reason_from_name("npf", &svm) == 0x400u);
  CHECK(svm);
  CHECK(exit_reason_from_name("PF excp") == 0x4eu);
  CHECK_FALSE(exit_reason_from_name("NOT_A_REASON").has_value());
  CHECK(exit_reason_name(30) == "IO_INSTRUCTION");
  CHECK(exit_reason_name(0x7b, true) == "io");
  CHECK(exit_reason_name(999).empty());
}

TEST_CASE("A synthetic QEMU-shaped capture imports every line it holds, as generated", "[traces][ftrace][synth]") {
  SynthOptions o;
  o.lines = 60'000;
  SynthStats st;
  const std::string text = synthetic_ftrace(o, &st);
  CHECK(st.lines == o.lines);
  CHECK(st.bytes == text.size());
  // About half the lines install SPTEs, as in the real capture (261,096 of 525,651).
  CHECK(st.per_event.at("kvm_mmu_set_spte") * 100 / st.lines >= 40);
  CHECK(st.per_event.at("kvm_mmu_set_spte") * 100 / st.lines <= 60);
  auto r = parse_ftrace(text);
  REQUIRE(r.ok());
  CHECK(r->stats.lines == st.lines);
  CHECK(r->stats.style == "tracefs");
  CHECK(r->stats.isa == "vmx");
  CHECK(r->stats.vms == std::set<std::uint32_t>{4242, 5242});
  CHECK(r->stats.unknown_lines == 0);
  CHECK(r->stats.malformed_lines == 0);
  CHECK(r->stats.other_event_lines == st.per_event.at("kvm_fpu"));
  for (const auto& [name, n] : st.per_event)
    if (name != "kvm_fpu") CHECK(r->stats.per_event.at(name) == n);
  CHECK(of_type(r->trace, EventType::kEptSet).size() == st.per_event.at("kvm_mmu_set_spte"));
  // Every EPT violation got its GPA from the kvm_page_fault that follows it, every
  // misconfiguration (MMIO) from its kvm_mmio.
  CHECK(r->stats.backfilled_gpas == st.per_event.at("kvm_page_fault") + st.per_event.at("kvm_mmio"));
  // Same seed, same capture; another seed, another one.
  CHECK(synthetic_ftrace(o) == text);
  o.seed = 2;
  CHECK(synthetic_ftrace(o) != text);
}

TEST_CASE("Importing to a file while compressing on a second thread writes what write_trace writes", "[traces][ftrace][synth]") {
  const std::string dir = std::filesystem::temp_directory_path() / ("baton-ftrace-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  SynthOptions o;
  o.lines = 200'000;  // many chunks, so that the compressor runs while lines are parsed
  const std::string in = dir + "/capture.txt";
  REQUIRE(write_synthetic_ftrace(in, o).ok());
  auto piped = import_ftrace_to(in, dir + "/piped.trace", false);
  REQUIRE(piped.ok());
  auto plain = import_ftrace_file(in);
  REQUIRE(plain.ok());
  REQUIRE(write_trace(dir + "/plain.trace", plain->trace).ok());
  auto bytes = [](const std::string& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  CHECK(bytes(dir + "/piped.trace") == bytes(dir + "/plain.trace"));
  // The streaming import keeps no events, but counts them as the in-memory one does.
  CHECK(piped->trace.events.empty());
  CHECK(piped->stats.events == plain->trace.events.size());
  CHECK(piped->stats.events_by_type == plain->stats.events_by_type);
  CHECK(plain->stats.events == plain->trace.events.size());
  CHECK(plain->stats.events_by_type.at("ept-set") == plain->stats.per_event.at("kvm_mmu_set_spte"));
  auto back = read_trace(dir + "/piped.trace");
  REQUIRE(back.ok());
  CHECK(back->events == plain->trace.events);
  // Refuses to overwrite without permission, and writes nothing for a capture without events.
  CHECK_FALSE(import_ftrace_to(in, dir + "/piped.trace", false).ok());
  {
    std::ofstream(dir + "/empty.txt") << "# tracer: nop\n";
  }
  CHECK_FALSE(import_ftrace_to(dir + "/empty.txt", dir + "/empty.trace", false).ok());
  CHECK_FALSE(std::filesystem::exists(dir + "/empty.trace"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("The fast paths of common lines read what the general tokenizer reads", "[traces][ftrace][synth]") {
  // A tab anywhere in a line sends it down the general path; the events must not change.
  SynthOptions o;
  o.lines = 30'000;
  // Plus leaves of levels KVM never installs: both paths count them and emit nothing.
  const std::string text = synthetic_ftrace(o) +
                           "        qemu-vcpu0-4243 (   4242) [000] ...1.  9000.000001: kvm_mmu_set_spte: gfn 403 spte "
                           "6000001a2b03977 (rwx) level 4 at 1a0c03018\n"
                           "        qemu-vcpu0-4243 (   4242) [000] ...1.  9000.000002: kvm_mmu_set_spte: gfn 404 spte "
                           "6000001a2b04977 (rwx) level 0 at 1a0c03020\n";
  std::string tabbed;
  tabbed.reserve(text.size());
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t nl = text.find('\n', at);
    std::string line = text.substr(at, nl - at);
    if (const std::size_t colon = line.find(": "); colon != std::string::npos && line[0] != '#') line[colon + 1] = '\t';
    tabbed += line + '\n';
    at = nl + 1;
  }
  auto fast = parse_ftrace(text), general = parse_ftrace(tabbed);
  REQUIRE(fast.ok());
  REQUIRE(general.ok());
  CHECK(fast->trace.events.size() > 20'000);
  CHECK(fast->trace.events == general->trace.events);
  CHECK(fast->stats.per_event == general->stats.per_event);
  CHECK(fast->stats.backfilled_gpas == general->stats.backfilled_gpas);
  CHECK(fast->stats.unknown_levels == 2);
  CHECK(general->stats.unknown_levels == 2);
  CHECK(fast->stats.skipped_sptes == general->stats.skipped_sptes);
  CHECK(general->stats.malformed_lines == 0);
}
