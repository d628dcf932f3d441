// Cost profiles: defaults, JSON parsing with strict checking, and names.
#include "baton/sim/cost_model.hpp"

#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

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

// Describes an unsigned integer field.
Field u64_field(const char* key, std::uint64_t CostProfile::*m) {
  return Field{key,
               [key, m](CostProfile& p, const json& v) -> Result<void> {
                 if (!v.is_number_unsigned()) return make_error(std::string("\"") + key + "\" must be a non-negative integer");
                 p.*m = v.get<std::uint64_t>();
                 return ok_result();
               },
               [m](const CostProfile& p) { return json(p.*m); }};
}

// Describes a positive floating-point field.
Field double_field(const char* key, double CostProfile::*m) {
  return Field{key,
               [key, m](CostProfile& p, const json& v) -> Result<void> {
                 if (!v.is_number() || v.get<double>() <= 0)
                   return make_error(std::string("\"") + key + "\" must be a positive number");
                 p.*m = v.get<double>();
                 return ok_result();
               },
               [m](const CostProfile& p) { return json(p.*m); }};
}

// Every field of a profile, in the order profile_json writes them.
const std::vector<Field>& fields() {
  static const std::vector<Field> f = {
      Field{"name",
            [](CostProfile& p, const json& v) -> Result<void> {
              if (!v.is_string()) return make_error("\"name\" must be a string");
              p.name = v.get<std::string>();
              return ok_result();
            },
            [](const CostProfile& p) { return json(p.name); }},
      double_field("frequency_ghz", &CostProfile::frequency_ghz),
      double_field("base_cpi", &CostProfile::base_cpi),
      u64_field("exit_round_trip", &CostProfile::exit_round_trip),
      u64_field("handler_ept_violation", &CostProfile::handler_ept_violation),
      u64_field("handler_ept_misconfig", &CostProfile::handler_ept_misconfig),
      u64_field("handler_io", &CostProfile::handler_io),
      u64_field("handler_cpuid", &CostProfile::handler_cpuid),
      u64_field("handler_hlt", &CostProfile::handler_hlt),
      u64_field("handler_vmcall", &CostProfile::handler_vmcall),
      u64_field("handler_exception", &CostProfile::handler_exception),
      u64_field("handler_pml_full", &CostProfile::handler_pml_full),
      u64_field("handler_vmx_ud", &CostProfile::handler_vmx_ud),
      u64_field("handler_other", &CostProfile::handler_other),
      u64_field("ept_install_leaf", &CostProfile::ept_install_leaf),
      u64_field("ept_table_alloc", &CostProfile::ept_table_alloc),
      u64_field("pml_drain_per_entry", &CostProfile::pml_drain_per_entry),
      u64_field("dirty_clear_per_page", &CostProfile::dirty_clear_per_page),
      u64_field("invept", &CostProfile::invept),
      u64_field("migrate_pause", &CostProfile::migrate_pause),
      u64_field("vcpu_state_save", &CostProfile::vcpu_state_save),
      u64_field("vcpu_state_load", &CostProfile::vcpu_state_load),
      u64_field("memslot_register", &CostProfile::memslot_register),
      Field{"tlb_enabled",
            [](CostProfile& p, const json& v) -> Result<void> {
              if (!v.is_boolean()) return make_error("\"tlb_enabled\" must be true or false");
              p.tlb_enabled = v.get<bool>();
              return ok_result();
            },
            [](const CostProfile& p) { return json(p.tlb_enabled); }},
      u64_field("tlb_entries_4k", &CostProfile::tlb_entries_4k),
      u64_field("tlb_entries_2m", &CostProfile::tlb_entries_2m),
      u64_field("tlb_entries_1g", &CostProfile::tlb_entries_1g),
      double_field("mem_ref_cycles", &CostProfile::mem_ref_cycles),
      double_field("memcpy_bytes_per_cycle", &CostProfile::memcpy_bytes_per_cycle),
  };
  return f;
}

}  // namespace

Result<CostProfile> parse_profile(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return make_error(std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return make_error("a cost profile must be a JSON object");
  CostProfile p = default_profile();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const Field* f = nullptr;
    for (const Field& cand : fields())
      if (it.key() == cand.key) f = &cand;
    if (f == nullptr) return make_error("unknown key \"" + it.key() + "\" (see docs/cost-model.md)");
    BATON_TRY_VOID(f->read(p, it.value()));
  }
  if (p.tlb_entries_4k == 0 || p.tlb_entries_2m == 0 || p.tlb_entries_1g == 0)
    return make_error("TLB entry counts must be at least 1");
  return p;
}

Result<CostProfile> load_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error("cannot read cost profile '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  auto p = parse_profile(ss.str());
  if (!p) return make_error("cost profile '" + path + "': " + p.error().message);
  return p;
}

std::string profile_json(const CostProfile& p) {
  json j = json::object();
  for (const Field& f : fields()) j[f.key] = f.write(p);
  return j.dump(2);
}

}  // namespace baton::sim
