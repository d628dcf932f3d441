// Cost profiles: defaults, JSON parsing with strict checking, and names.
#include "baton/sim/cost_model.hpp"

#include <cstdio>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "baton/model/file_io.hpp"

namespace baton::sim {

using nlohmann::json;

const char* to_string(ExitReason r) {
  switch (r) {
    case ExitReason::kException: return "exception";
    case ExitReason::kTripleFault: return "triple-fault";
    case ExitReason::kCpuid: return "cpuid";
    case ExitReason::kHlt: return "hlt";
    case ExitReason::kVmcall: return "vmcall";
    case ExitReason::kVmclear: return "vmclear";
    case ExitReason::kVmlaunch: return "vmlaunch";
    case ExitReason::kVmptrld: return "vmptrld";
    case ExitReason::kVmptrst: return "vmptrst";
    case ExitReason::kVmread: return "vmread";
    case ExitReason::kVmresume: return "vmresume";
    case ExitReason::kVmwrite: return "vmwrite";
    case ExitReason::kVmxoff: return "vmxoff";
    case ExitReason::kVmxon: return "vmxon";
    case ExitReason::kIo: return "io";
    case ExitReason::kEntryFailGuestState: return "entry-fail-guest-state";
    case ExitReason::kEptViolation: return "ept-violation";
    case ExitReason::kEptMisconfig: return "ept-misconfig";
    case ExitReason::kInvept: return "invept";
    case ExitReason::kPmlFull: return "pml-full";
  }
  return "?";
}

const std::array<ExitReason, 20>& all_exit_reasons() {
  static const std::array<ExitReason, 20> all = {
      ExitReason::kException, ExitReason::kTripleFault, ExitReason::kCpuid,    ExitReason::kHlt,
      ExitReason::kVmcall,    ExitReason::kVmclear,     ExitReason::kVmlaunch, ExitReason::kVmptrld,
      ExitReason::kVmptrst,   ExitReason::kVmread,      ExitReason::kVmresume, ExitReason::kVmwrite,
      ExitReason::kVmxoff,    ExitReason::kVmxon,       ExitReason::kIo,       ExitReason::kEntryFailGuestState,
      ExitReason::kEptViolation, ExitReason::kEptMisconfig, ExitReason::kInvept, ExitReason::kPmlFull};
  return all;
}

const char* to_string(CostCategory c) {
  switch (c) {
    case CostCategory::kGuest: return "guest";
    case CostCategory::kExitRoundTrip: return "exit-round-trip";
    case CostCategory::kExitHandler: return "exit-handler";
    case CostCategory::kEptBuild: return "ept-build";
    case CostCategory::kTlbWalk: return "tlb-walk";
    case CostCategory::kDirtyTracking: return "dirty-tracking";
    case CostCategory::kCopy: return "copy";
    case CostCategory::kCount: break;
  }
  return "?";
}

CostProfile default_profile() { return CostProfile{}; }

namespace {

// One profile field: its JSON key and how to read and write it.
struct Field {
  const char* key;
  std::function<Result<void>(CostProfile&, const json&)> read;
  std::function<json(const CostProfile&)> write;
};

// Describes an unsigned integer field with its documented range [lo, hi] (docs/cost-model.md).
Field u64_field(const char* key, std::uint64_t CostProfile::*m, std::uint64_t lo, std::uint64_t hi) {
  return Field{key,
               [key, m, lo, hi](CostProfile& p, const json& v) -> Result<void> {
                 if (!v.is_number_unsigned() || v.get<std::uint64_t>() < lo || v.get<std::uint64_t>() > hi)
                   return make_error(std::string("\"") + key + "\" must be an integer within " + std::to_string(lo) +
                                     ".." + std::to_string(hi) + ", not " + v.dump());
                 p.*m = v.get<std::uint64_t>();
                 return ok_result();
               },
               [m](const CostProfile& p) { return json(p.*m); }};
}

// Formats a range bound without trailing zeros ("0.01", "1e+06").
std::string bound(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

// Describes a floating-point field with its documented range [lo, hi] (docs/cost-model.md).
Field double_field(const char* key, double CostProfile::*m, double lo, double hi) {
  return Field{key,
               [key, m, lo, hi](CostProfile& p, const json& v) -> Result<void> {
                 if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
                   return make_error(std::string("\"") + key + "\" must be a number within " + bound(lo) + ".." +
                                     bound(hi) + ", not " + v.dump());
                 p.*m = v.get<double>();
                 return ok_result();
               },
               [m](const CostProfile& p) { return json(p.*m); }};
}

// The range of every per-event cycle cost: up to 10^7 cycles (about 5 ms at 2.1 GHz).
constexpr std::uint64_t kMaxEventCycles = 10'000'000;
// The range of migration step costs: up to 10^9 cycles (about 0.5 s).
constexpr std::uint64_t kMaxStepCycles = 1'000'000'000;
// The most TLB entries per page size (the model allocates one slot per entry).
constexpr std::uint64_t kMaxTlbEntries = 65536;

// Every field of a profile, in the order profile_json writes them.
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      Field{"name",
            [](CostProfile& p, const json& v) -> Result<void> {
              if (!v.is_string() || v.get<std::string>().empty() || v.get<std::string>().size() > 64)
                return make_error("\"name\" must be a string of 1..64 characters");
              for (char c : v.get<std::string>())
                if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
                  return make_error("\"name\" must not hold control characters");
              p.name = v.get<std::string>();
              return ok_result();
            },
            [](const CostProfile& p) { return json(p.name); }},
      double_field("frequency_ghz", &CostProfile::frequency_ghz, 0.1, 10),
      double_field("base_cpi", &CostProfile::base_cpi, 0.01, 100),
      u64_field("exit_round_trip", &CostProfile::exit_round_trip, 0, kMaxEventCycles),
      u64_field("handler_ept_violation", &CostProfile::handler_ept_violation, 0, kMaxEventCycles),
      u64_field("handler_ept_misconfig", &CostProfile::handler_ept_misconfig, 0, kMaxEventCycles),
      u64_field("handler_io", &CostProfile::handler_io, 0, kMaxEventCycles),
      u64_field("handler_cpuid", &CostProfile::handler_cpuid, 0, kMaxEventCycles),
      u64_field("handler_hlt", &CostProfile::handler_hlt, 0, kMaxEventCycles),
      u64_field("handler_vmcall", &CostProfile::handler_vmcall, 0, kMaxEventCycles),
      u64_field("handler_exception", &CostProfile::handler_exception, 0, kMaxEventCycles),
      u64_field("handler_pml_full", &CostProfile::handler_pml_full, 0, kMaxEventCycles),
      u64_field("handler_vmx_ud", &CostProfile::handler_vmx_ud, 0, kMaxEventCycles),
      u64_field("handler_other", &CostProfile::handler_other, 0, kMaxEventCycles),
      u64_field("ept_install_leaf", &CostProfile::ept_install_leaf, 0, kMaxEventCycles),
      u64_field("ept_table_alloc", &CostProfile::ept_table_alloc, 0, kMaxEventCycles),
      u64_field("pml_drain_per_entry", &CostProfile::pml_drain_per_entry, 0, kMaxEventCycles),
      u64_field("dirty_clear_per_page", &CostProfile::dirty_clear_per_page, 0, kMaxEventCycles),
      u64_field("invept", &CostProfile::invept, 0, kMaxEventCycles),
      u64_field("migrate_pause", &CostProfile::migrate_pause, 0, kMaxStepCycles),
      u64_field("vcpu_state_save", &CostProfile::vcpu_state_save, 0, kMaxStepCycles),
      u64_field("vcpu_state_load", &CostProfile::vcpu_state_load, 0, kMaxStepCycles),
      u64_field("memslot_register", &CostProfile::memslot_register, 0, kMaxStepCycles),
      u64_field("handover_notify", &CostProfile::handover_notify, 0, kMaxStepCycles),
      u64_field("handover_wakeup", &CostProfile::handover_wakeup, 0, kMaxStepCycles),
      Field{"tlb_enabled",
            [](CostProfile& p, const json& v) -> Result<void> {
              if (!v.is_boolean()) return make_error("\"tlb_enabled\" must be true or false");
              p.tlb_enabled = v.get<bool>();
              return ok_result();
            },
            [](const CostProfile& p) { return json(p.tlb_enabled); }},
      u64_field("tlb_entries_4k", &CostProfile::tlb_entries_4k, 1, kMaxTlbEntries),
      u64_field("tlb_entries_2m", &CostProfile::tlb_entries_2m, 1, kMaxTlbEntries),
      u64_field("tlb_entries_1g", &CostProfile::tlb_entries_1g, 1, kMaxTlbEntries),
      double_field("mem_ref_cycles", &CostProfile::mem_ref_cycles, 0.1, 10000),
      double_field("memcpy_bytes_per_cycle", &CostProfile::memcpy_bytes_per_cycle, 0.01, 4096),
      double_field("transfer_bytes_per_cycle", &CostProfile::transfer_bytes_per_cycle, 0, 4096),
  };
  return f;
}

}  // namespace

Result<CostProfile> parse_profile(const std::string& json_text) {
  json j;
  std::set<std::string> seen;
  std::string duplicate;
  // Notes a key given twice at the top level (the JSON library would keep the last silently).
  const json::parser_callback_t note_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() &&
        !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    j = json::parse(json_text, note_keys);
  } catch (const json::parse_error& e) {
    return make_error("not valid JSON: " + exception_text(e.what()));
  }
  if (!j.is_object()) return make_error("a cost profile must be a JSON object");
  if (!duplicate.empty()) return make_error("key \"" + duplicate + "\" is given twice");
  CostProfile p = default_profile();
  for (auto it = j.begin(); it != j.end(); ++it) {
    // Where a calibrated profile's figures come from (baton calibrate): kept by the file, not the model.
    if (it.key() == "provenance") {
      if (!it.value().is_object()) return make_error("\"provenance\" must be a JSON object");
      continue;
    }
    const Field* f = nullptr;
    for (const Field& cand : fields())
      if (it.key() == cand.key) f = &cand;
    if (f == nullptr) return make_error("unknown key \"" + it.key() + "\" (see docs/cost-model.md)");
    BATON_TRY_VOID(f->read(p, it.value()));
  }
  return p;
}

Result<CostProfile> load_profile(const std::string& path) {
  auto text = model::read_text_file(path, std::uint64_t{1} << 20, "cost profile");
  if (!text) return text.error();
  auto p = parse_profile(*text);
  if (!p) return make_error("cost profile '" + path + "': " + p.error().message);
  return p;
}

std::string profile_json(const CostProfile& p) {
  json j = json::object();
  for (const Field& f : fields()) j[f.key] = f.write(p);
  return j.dump(2);
}

}  // namespace baton::sim
