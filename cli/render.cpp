// Rendering of model values for people and machines.
#include "render.hpp"

#include <cstdio>

#include "parse.hpp"

namespace baton::cli {

using nlohmann::json;

json walk_json(const model::WalkResult& w, model::Gpa gpa, model::Access access, const model::EptConfig& cfg) {
  json j;
  j["gpa"] = hex(gpa.value);
  j["access"] = model::to_string(access);
  j["outcome"] = model::to_string(w.kind);
  json path = json::array();
  for (unsigned i = 0; i < w.path_len; ++i) {
    const model::WalkStep& s = w.path[i];
    const bool absent = w.kind == model::WalkKind::kAbsentFrame && i + 1 == w.path_len;
    path.push_back(json{{"level", s.level},
                        {"index", model::level_index(gpa, s.level)},
                        {"entry_hpa", hex(s.entry_addr.value)},
                        {"raw", absent ? json(nullptr) : json(hex(s.entry.raw()))},
                        {"kind", absent ? "absent-frame" : model::to_string(s.entry.classify(s.level, cfg))}});
  }
  j["path"] = path;
  switch (w.kind) {
    case model::WalkKind::kTranslated:
      j["hpa"] = hex(w.hpa.value);
      j["leaf_level"] = w.leaf_level;
      j["perms"] = model::to_string(w.perms);
      j["memtype"] = model::memtype_name(w.memtype);
      j["ipat"] = w.ipat;
      break;
    case model::WalkKind::kViolation:
      j["level"] = w.level;
      j["qualification"] = hex(w.qualification);
      j["perms_found"] = model::to_string(w.perms);
      break;
    case model::WalkKind::kMisconfig:
      j["level"] = w.level;
      j["reason"] = model::to_string(w.reason);
      break;
    case model::WalkKind::kAbsentFrame:
      j["level"] = w.level;
      break;
  }
  return j;
}

json run_json(const model::MappingRun& r) {
  json j{{"gpa", hex(r.gpa.value)}, {"size", hex(r.size)}, {"kind", model::to_string(r.kind)}};
  if (r.kind == model::RunKind::kMapped) {
    j["hpa"] = hex(r.hpa.value);
    j["perms"] = model::to_string(r.perms);
    j["memtype"] = model::memtype_name(r.memtype);
    j["ipat"] = r.ipat;
  }
  return j;
}

json snapshot_summary_json(const model::HandoverSnapshot& s) {
  json j;
  j["vm_id"] = s.vm_id;
  j["eptp"] = hex(s.eptp.raw());
  j["ept_root_hpa"] = hex(model::hpa_of(s.eptp.root()).value);
  j["ad_enabled"] = s.eptp.ad_enabled();
  j["maxphyaddr"] = s.ept_config.maxphyaddr;
  j["table_pages"] = s.tables.size();
  json slots = json::array();
  for (const model::Memslot& m : s.memslots)
    slots.push_back(json{{"id", m.id}, {"gpa", hex(m.gpa.value)}, {"size", hex(m.size)}, {"hpa", hex(m.hpa.value)},
                         {"read_only", m.read_only}, {"dirty_log", m.dirty_log}});
  j["memslots"] = slots;
  json mmio = json::array();
  for (const model::GpaRange& r : s.mmio) mmio.push_back(json{{"gpa", hex(r.gpa.value)}, {"size", hex(r.size)}});
  j["mmio"] = mmio;
  j["vcpus"] = s.vcpus.size();
  j["vmcs_fields"] = s.vmcs.values().size();
  json owners = json::array();
  for (const model::OwnerRange& r : s.owners.ranges())
    owners.push_back(json{{"hpa", hex(model::hpa_of(r.first).value)}, {"size", hex(r.count << model::kPageShift)},
                          {"kind", model::to_string(r.kind)}, {"vm", r.vm}});
  j["owners"] = owners;
  j["meta"] = s.meta;
  return j;
}

std::string snapshot_summary_text(const model::HandoverSnapshot& s) {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf, "VM %u  EPTP %s (root hpa %s, %s, A/D %s)  MAXPHYADDR %u\n", s.vm_id,
                hex(s.eptp.raw()).c_str(), hex(model::hpa_of(s.eptp.root()).value).c_str(),
                model::memtype_name(s.eptp.memory_type()).c_str(), s.eptp.ad_enabled() ? "on" : "off",
                s.ept_config.maxphyaddr);
  out += buf;
  std::snprintf(buf, sizeof buf, "%zu paging-structure pages, %zu vCPU(s), %zu VMCS fields\n", s.tables.size(),
                s.vcpus.size(), s.vmcs.values().size());
  out += buf;
  out += "memslots:\n";
  for (const model::Memslot& m : s.memslots) {
    std::snprintf(buf, sizeof buf, "  #%u gpa %#14llx  size %-10s -> hpa %#14llx %s%s\n", m.id,
                  static_cast<unsigned long long>(m.gpa.value), format_size(m.size).c_str(),
                  static_cast<unsigned long long>(m.hpa.value), m.read_only ? "read-only" : "read-write",
                  m.dirty_log ? ", dirty-log" : "");
    out += buf;
  }
  for (const model::GpaRange& r : s.mmio) {
    std::snprintf(buf, sizeof buf, "  mmio gpa %#14llx  size %s\n", static_cast<unsigned long long>(r.gpa.value),
                  format_size(r.size).c_str());
    out += buf;
  }
  out += "host frames:\n";
  for (const model::OwnerRange& r : s.owners.ranges()) {
    std::snprintf(buf, sizeof buf, "  hpa %#14llx  size %-10s %s (vm %u)\n",
                  static_cast<unsigned long long>(model::hpa_of(r.first).value),
                  format_size(r.count << model::kPageShift).c_str(), model::to_string(r.kind), r.vm);
    out += buf;
  }
  return out;
}

}  // namespace baton::cli
