// The VMCS field catalog (Intel SDM Vol. 3D Appendix B, "Field Encoding in VMCS") and the Vmcs store.
//
// The table is ordered by encoding, which is also the order of Appendix B (16-bit, 64-bit, 32-bit,
// natural width; each split into control, read-only data, guest state, host state). Every entry is
// declared through a helper named after its SDM table, and compile-time checks below prove that the
// width and area each entry claims agree with the bits of its encoding, that encodings are full
// (even), sorted and unique, and that names are unique snake_case.
#include "baton/model/vmcs.hpp"

#include <algorithm>
#include <array>

namespace baton::model {

// Names a width as the SDM's tables do: "16", "32", "64" or "natural".
const char* to_string(VmcsWidth w) {
  switch (w) {
    case VmcsWidth::k16: return "16";
    case VmcsWidth::k64: return "64";
    case VmcsWidth::k32: return "32";
    case VmcsWidth::kNatural: return "natural";
  }
  return "?";
}

// Names an area: "control", "read-only", "guest-state" or "host-state".
const char* to_string(VmcsArea a) {
  switch (a) {
    case VmcsArea::kControl: return "control";
    case VmcsArea::kReadOnly: return "read-only";
    case VmcsArea::kGuestState: return "guest-state";
    case VmcsArea::kHostState: return "host-state";
  }
  return "?";
}

namespace {

using W = VmcsWidth;
using A = VmcsArea;

// Builds an entry of SDM table B-1 (16-bit control fields).
constexpr VmcsField c16(std::uint32_t e, const char* n) { return {e, n, W::k16, A::kControl}; }
// Builds an entry of SDM table B-2 (16-bit guest-state fields).
constexpr VmcsField g16(std::uint32_t e, const char* n) { return {e, n, W::k16, A::kGuestState}; }
// Builds an entry of SDM table B-3 (16-bit host-state fields).
constexpr VmcsField h16(std::uint32_t e, const char* n) { return {e, n, W::k16, A::kHostState}; }
// Builds an entry of SDM table B-4 (64-bit control fields), by its full encoding.
constexpr VmcsField c64(std::uint32_t e, const char* n) { return {e, n, W::k64, A::kControl}; }
// Builds an entry of SDM table B-5 (64-bit read-only data fields), by its full encoding.
constexpr VmcsField r64(std::uint32_t e, const char* n) { return {e, n, W::k64, A::kReadOnly}; }
// Builds an entry of SDM table B-6 (64-bit guest-state fields), by its full encoding.
constexpr VmcsField g64(std::uint32_t e, const char* n) { return {e, n, W::k64, A::kGuestState}; }
// Builds an entry of SDM table B-7 (64-bit host-state fields), by its full encoding.
constexpr VmcsField h64(std::uint32_t e, const char* n) { return {e, n, W::k64, A::kHostState}; }
// Builds an entry of SDM table B-8 (32-bit control fields).
constexpr VmcsField c32(std::uint32_t e, const char* n) { return {e, n, W::k32, A::kControl}; }
// Builds an entry of SDM table B-9 (32-bit read-only data fields).
constexpr VmcsField r32(std::uint32_t e, const char* n) { return {e, n, W::k32, A::kReadOnly}; }
// Builds an entry of SDM table B-10 (32-bit guest-state fields).
constexpr VmcsField g32(std::uint32_t e, const char* n) { return {e, n, W::k32, A::kGuestState}; }
// Builds an entry of SDM table B-11 (32-bit host-state fields).
constexpr VmcsField h32(std::uint32_t e, const char* n) { return {e, n, W::k32, A::kHostState}; }
// Builds an entry of SDM table B-12 (natural-width control fields).
constexpr VmcsField cnw(std::uint32_t e, const char* n) { return {e, n, W::kNatural, A::kControl}; }
// Builds an entry of SDM table B-13 (natural-width read-only data fields).
constexpr VmcsField rnw(std::uint32_t e, const char* n) { return {e, n, W::kNatural, A::kReadOnly}; }
// Builds an entry of SDM table B-14 (natural-width guest-state fields).
constexpr VmcsField gnw(std::uint32_t e, const char* n) { return {e, n, W::kNatural, A::kGuestState}; }
// Builds an entry of SDM table B-15 (natural-width host-state fields).
constexpr VmcsField hnw(std::uint32_t e, const char* n) { return {e, n, W::kNatural, A::kHostState}; }

constexpr auto kCatalog = std::to_array<VmcsField>({
    // B.1.1 16-bit control fields.
    c16(0x0000, "virtual_processor_id"),
    c16(0x0002, "posted_interrupt_notification_vector"),
    c16(0x0004, "eptp_index"),
    c16(0x0006, "hlat_prefix_size"),
    c16(0x0008, "last_pid_pointer_index"),
    // B.1.2 16-bit guest-state fields.
    g16(0x0800, "guest_es_selector"),
    g16(0x0802, "guest_cs_selector"),
    g16(0x0804, "guest_ss_selector"),
    g16(0x0806, "guest_ds_selector"),
    g16(0x0808, "guest_fs_selector"),
    g16(0x080A, "guest_gs_selector"),
    g16(0x080C, "guest_ldtr_selector"),
    g16(0x080E, "guest_tr_selector"),
    g16(0x0810, "guest_interrupt_status"),
    g16(0x0812, "pml_index"),
    g16(0x0814, "guest_uinv"),
    // B.1.3 16-bit host-state fields.
    h16(0x0C00, "host_es_selector"),
    h16(0x0C02, "host_cs_selector"),
    h16(0x0C04, "host_ss_selector"),
    h16(0x0C06, "host_ds_selector"),
    h16(0x0C08, "host_fs_selector"),
    h16(0x0C0A, "host_gs_selector"),
    h16(0x0C0C, "host_tr_selector"),
    // B.2.1 64-bit control fields.
    c64(0x2000, "io_bitmap_a_address"),
    c64(0x2002, "io_bitmap_b_address"),
    c64(0x2004, "msr_bitmap_address"),
    c64(0x2006, "vm_exit_msr_store_address"),
    c64(0x2008, "vm_exit_msr_load_address"),
    c64(0x200A, "vm_entry_msr_load_address"),
    c64(0x200C, "executive_vmcs_pointer"),
    c64(0x200E, "pml_address"),
    c64(0x2010, "tsc_offset"),
    c64(0x2012, "virtual_apic_address"),
    c64(0x2014, "apic_access_address"),
    c64(0x2016, "posted_interrupt_descriptor_address"),
    c64(0x2018, "vm_function_controls"),
    c64(0x201A, "ept_pointer"),
    c64(0x201C, "eoi_exit_bitmap_0"),
    c64(0x201E, "eoi_exit_bitmap_1"),
    c64(0x2020, "eoi_exit_bitmap_2"),
    c64(0x2022, "eoi_exit_bitmap_3"),
    c64(0x2024, "eptp_list_address"),
    c64(0x2026, "vmread_bitmap_address"),
    c64(0x2028, "vmwrite_bitmap_address"),
    c64(0x202A, "virtualization_exception_information_address"),
    c64(0x202C, "xss_exiting_bitmap"),
    c64(0x202E, "encls_exiting_bitmap"),
    c64(0x2030, "sub_page_permission_table_pointer"),
    c64(0x2032, "tsc_multiplier"),
    c64(0x2034, "tertiary_processor_based_vm_execution_controls"),
    c64(0x2036, "enclv_exiting_bitmap"),
    c64(0x2038, "low_pasid_directory_address"),
    c64(0x203A, "high_pasid_directory_address"),
    c64(0x203C, "shared_eptp"),
    c64(0x203E, "pconfig_exiting_bitmap"),
    c64(0x2040, "hlatp"),
    c64(0x2042, "pid_pointer_table_address"),
    c64(0x2044, "secondary_vm_exit_controls"),
    c64(0x204A, "ia32_spec_ctrl_mask"),
    c64(0x204C, "ia32_spec_ctrl_shadow"),
    c64(0x2052, "injected_event_data"),
    // B.2.2 64-bit read-only data fields.
    r64(0x2400, "guest_physical_address"),
    r64(0x2404, "original_event_data"),
    // B.2.3 64-bit guest-state fields.
    g64(0x2800, "vmcs_link_pointer"),
    g64(0x2802, "guest_ia32_debugctl"),
    g64(0x2804, "guest_ia32_pat"),
    g64(0x2806, "guest_ia32_efer"),
    g64(0x2808, "guest_ia32_perf_global_ctrl"),
    g64(0x280A, "guest_pdpte0"),
    g64(0x280C, "guest_pdpte1"),
    g64(0x280E, "guest_pdpte2"),
    g64(0x2810, "guest_pdpte3"),
    g64(0x2812, "guest_ia32_bndcfgs"),
    g64(0x2814, "guest_ia32_rtit_ctl"),
    g64(0x2816, "guest_ia32_lbr_ctl"),
    g64(0x2818, "guest_ia32_pkrs"),
    g64(0x281A, "guest_ia32_fred_config"),
    g64(0x281C, "guest_ia32_fred_rsp1"),
    g64(0x281E, "guest_ia32_fred_rsp2"),
    g64(0x2820, "guest_ia32_fred_rsp3"),
    g64(0x2822, "guest_ia32_fred_stklvls"),
    g64(0x2824, "guest_ia32_fred_ssp1"),
    g64(0x2826, "guest_ia32_fred_ssp2"),
    g64(0x2828, "guest_ia32_fred_ssp3"),
    // B.2.4 64-bit host-state fields.
    h64(0x2C00, "host_ia32_pat"),
    h64(0x2C02, "host_ia32_efer"),
    h64(0x2C04, "host_ia32_perf_global_ctrl"),
    h64(0x2C06, "host_ia32_pkrs"),
    h64(0x2C08, "host_ia32_fred_config"),
    h64(0x2C0A, "host_ia32_fred_rsp1"),
    h64(0x2C0C, "host_ia32_fred_rsp2"),
    h64(0x2C0E, "host_ia32_fred_rsp3"),
    h64(0x2C10, "host_ia32_fred_stklvls"),
    h64(0x2C12, "host_ia32_fred_ssp1"),
    h64(0x2C14, "host_ia32_fred_ssp2"),
    h64(0x2C16, "host_ia32_fred_ssp3"),
    // B.3.1 32-bit control fields.
    c32(0x4000, "pin_based_vm_execution_controls"),
    c32(0x4002, "primary_processor_based_vm_execution_controls"),
    c32(0x4004, "exception_bitmap"),
    c32(0x4006, "page_fault_error_code_mask"),
    c32(0x4008, "page_fault_error_code_match"),
    c32(0x400A, "cr3_target_count"),
    c32(0x400C, "primary_vm_exit_controls"),
    c32(0x400E, "vm_exit_msr_store_count"),
    c32(0x4010, "vm_exit_msr_load_count"),
    c32(0x4012, "vm_entry_controls"),
    c32(0x4014, "vm_entry_msr_load_count"),
    c32(0x4016, "vm_entry_interruption_information"),
    c32(0x4018, "vm_entry_exception_error_code"),
    c32(0x401A, "vm_entry_instruction_length"),
    c32(0x401C, "tpr_threshold"),
    c32(0x401E, "secondary_processor_based_vm_execution_controls"),
    c32(0x4020, "ple_gap"),
    c32(0x4022, "ple_window"),
    c32(0x4024, "instruction_timeout_control"),
    // B.3.2 32-bit read-only data fields.
    r32(0x4400, "vm_instruction_error"),
    r32(0x4402, "vm_exit_reason"),
    r32(0x4404, "vm_exit_interruption_information"),
    r32(0x4406, "vm_exit_interruption_error_code"),
    r32(0x4408, "idt_vectoring_information"),
    r32(0x440A, "idt_vectoring_error_code"),
    r32(0x440C, "vm_exit_instruction_length"),
    r32(0x440E, "vm_exit_instruction_information"),
    // B.3.3 32-bit guest-state fields (index 22, 0x482C, is unassigned).
    g32(0x4800, "guest_es_limit"),
    g32(0x4802, "guest_cs_limit"),
    g32(0x4804, "guest_ss_limit"),
    g32(0x4806, "guest_ds_limit"),
    g32(0x4808, "guest_fs_limit"),
    g32(0x480A, "guest_gs_limit"),
    g32(0x480C, "guest_ldtr_limit"),
    g32(0x480E, "guest_tr_limit"),
    g32(0x4810, "guest_gdtr_limit"),
    g32(0x4812, "guest_idtr_limit"),
    g32(0x4814, "guest_es_access_rights"),
    g32(0x4816, "guest_cs_access_rights"),
    g32(0x4818, "guest_ss_access_rights"),
    g32(0x481A, "guest_ds_access_rights"),
    g32(0x481C, "guest_fs_access_rights"),
    g32(0x481E, "guest_gs_access_rights"),
    g32(0x4820, "guest_ldtr_access_rights"),
    g32(0x4822, "guest_tr_access_rights"),
    g32(0x4824, "guest_interruptibility_state"),
    g32(0x4826, "guest_activity_state"),
    g32(0x4828, "guest_smbase"),
    g32(0x482A, "guest_ia32_sysenter_cs"),
    g32(0x482E, "vmx_preemption_timer_value"),
    // B.3.4 32-bit host-state field.
    h32(0x4C00, "host_ia32_sysenter_cs"),
    // B.4.1 natural-width control fields.
    cnw(0x6000, "cr0_guest_host_mask"),
    cnw(0x6002, "cr4_guest_host_mask"),
    cnw(0x6004, "cr0_read_shadow"),
    cnw(0x6006, "cr4_read_shadow"),
    cnw(0x6008, "cr3_target_value_0"),
    cnw(0x600A, "cr3_target_value_1"),
    cnw(0x600C, "cr3_target_value_2"),
    cnw(0x600E, "cr3_target_value_3"),
    // B.4.2 natural-width read-only data fields.
    rnw(0x6400, "exit_qualification"),
    rnw(0x6402, "io_rcx"),
    rnw(0x6404, "io_rsi"),
    rnw(0x6406, "io_rdi"),
    rnw(0x6408, "io_rip"),
    rnw(0x640A, "guest_linear_address"),
    // B.4.3 natural-width guest-state fields.
    gnw(0x6800, "guest_cr0"),
    gnw(0x6802, "guest_cr3"),
    gnw(0x6804, "guest_cr4"),
    gnw(0x6806, "guest_es_base"),
    gnw(0x6808, "guest_cs_base"),
    gnw(0x680A, "guest_ss_base"),
    gnw(0x680C, "guest_ds_base"),
    gnw(0x680E, "guest_fs_base"),
    gnw(0x6810, "guest_gs_base"),
    gnw(0x6812, "guest_ldtr_base"),
    gnw(0x6814, "guest_tr_base"),
    gnw(0x6816, "guest_gdtr_base"),
    gnw(0x6818, "guest_idtr_base"),
    gnw(0x681A, "guest_dr7"),
    gnw(0x681C, "guest_rsp"),
    gnw(0x681E, "guest_rip"),
    gnw(0x6820, "guest_rflags"),
    gnw(0x6822, "guest_pending_debug_exceptions"),
    gnw(0x6824, "guest_ia32_sysenter_esp"),
    gnw(0x6826, "guest_ia32_sysenter_eip"),
    gnw(0x6828, "guest_ia32_s_cet"),
    gnw(0x682A, "guest_ssp"),
    gnw(0x682C, "guest_ia32_interrupt_ssp_table_addr"),
    // B.4.4 natural-width host-state fields.
    hnw(0x6C00, "host_cr0"),
    hnw(0x6C02, "host_cr3"),
    hnw(0x6C04, "host_cr4"),
    hnw(0x6C06, "host_fs_base"),
    hnw(0x6C08, "host_gs_base"),
    hnw(0x6C0A, "host_tr_base"),
    hnw(0x6C0C, "host_gdtr_base"),
    hnw(0x6C0E, "host_idtr_base"),
    hnw(0x6C10, "host_ia32_sysenter_esp"),
    hnw(0x6C12, "host_ia32_sysenter_eip"),
    hnw(0x6C14, "host_rsp"),
    hnw(0x6C16, "host_rip"),
    hnw(0x6C18, "host_ia32_s_cet"),
    hnw(0x6C1A, "host_ssp"),
    hnw(0x6C1C, "host_ia32_interrupt_ssp_table_addr"),
});

// Returns true when every entry's declared width and area are the ones its encoding carries.
constexpr bool widths_and_areas_match_encodings() {
  for (const VmcsField& f : kCatalog)
    if (f.width != width_of_encoding(f.encoding) || f.area != area_of_encoding(f.encoding)) return false;
  return true;
}

// Returns true when every encoding is a full-access encoding with bit 12 and bits 31:15 clear.
constexpr bool encodings_are_well_formed() {
  for (const VmcsField& f : kCatalog)
    if ((f.encoding & 1) != 0 || (f.encoding & 0x1000) != 0 || (f.encoding >> 15) != 0) return false;
  return true;
}

// Returns true when encodings strictly increase, so they are unique and binary-searchable.
constexpr bool encodings_strictly_increase() {
  for (std::size_t i = 1; i < kCatalog.size(); ++i)
    if (kCatalog[i - 1].encoding >= kCatalog[i].encoding) return false;
  return true;
}

// Returns true when every name is non-empty snake_case: lowercase letters, digits, single inner underscores.
constexpr bool names_are_snake_case() {
  for (const VmcsField& f : kCatalog) {
    std::string_view n = f.name;
    if (n.empty() || n.front() == '_' || n.back() == '_' || n.find("__") != std::string_view::npos) return false;
    for (char c : n)
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

// Returns true when no two entries share a name.
constexpr bool names_are_unique() {
  for (std::size_t i = 0; i < kCatalog.size(); ++i)
    for (std::size_t j = i + 1; j < kCatalog.size(); ++j)
      if (std::string_view(kCatalog[i].name) == std::string_view(kCatalog[j].name)) return false;
  return true;
}

// Returns true when the catalog holds `enc` with the given name.
constexpr bool catalog_has(std::uint32_t enc, std::string_view name) {
  for (const VmcsField& f : kCatalog)
    if (f.encoding == enc) return name == f.name;
  return false;
}

static_assert(widths_and_areas_match_encodings(), "a catalog entry's width or area disagrees with its encoding");
static_assert(encodings_are_well_formed(), "a catalog encoding is a high encoding or has reserved bits set");
static_assert(encodings_strictly_increase(), "catalog encodings must be unique and sorted");
static_assert(names_are_snake_case(), "catalog names must be snake_case");
static_assert(names_are_unique(), "catalog names must be unique");

// The well-known constants in the header name the fields the SDM gives them.
static_assert(catalog_has(vmcs::kEptPointer, "ept_pointer"));
static_assert(catalog_has(vmcs::kTscOffset, "tsc_offset"));
static_assert(catalog_has(vmcs::kPmlAddress, "pml_address"));
static_assert(catalog_has(vmcs::kGuestPmlIndex, "pml_index"));
static_assert(catalog_has(vmcs::kVmcsLinkPointer, "vmcs_link_pointer"));
static_assert(catalog_has(vmcs::kGuestIa32Efer, "guest_ia32_efer"));
static_assert(catalog_has(vmcs::kGuestIa32Pat, "guest_ia32_pat"));
static_assert(catalog_has(vmcs::kPinBasedControls, "pin_based_vm_execution_controls"));
static_assert(catalog_has(vmcs::kProcBasedControls, "primary_processor_based_vm_execution_controls"));
static_assert(catalog_has(vmcs::kSecondaryControls, "secondary_processor_based_vm_execution_controls"));
static_assert(catalog_has(vmcs::kExitControls, "primary_vm_exit_controls"));
static_assert(catalog_has(vmcs::kEntryControls, "vm_entry_controls"));
static_assert(catalog_has(vmcs::kExitReason, "vm_exit_reason"));
static_assert(catalog_has(vmcs::kExitQualification, "exit_qualification"));
static_assert(catalog_has(vmcs::kGuestLinearAddress, "guest_linear_address"));
static_assert(catalog_has(vmcs::kGuestPhysicalAddress, "guest_physical_address"));
static_assert(catalog_has(vmcs::kVmExitInstructionLength, "vm_exit_instruction_length"));
static_assert(catalog_has(vmcs::kGuestCr0, "guest_cr0"));
static_assert(catalog_has(vmcs::kGuestCr3, "guest_cr3"));
static_assert(catalog_has(vmcs::kGuestCr4, "guest_cr4"));
static_assert(catalog_has(vmcs::kGuestDr7, "guest_dr7"));
static_assert(catalog_has(vmcs::kGuestRsp, "guest_rsp"));
static_assert(catalog_has(vmcs::kGuestRip, "guest_rip"));
static_assert(catalog_has(vmcs::kGuestRflags, "guest_rflags"));
static_assert(catalog_has(vmcs::kGuestActivityState, "guest_activity_state"));
static_assert(catalog_has(vmcs::kGuestInterruptibility, "guest_interruptibility_state"));
static_assert(catalog_has(vmcs::kHostCr3, "host_cr3"));
static_assert(catalog_has(vmcs::kHostRip, "host_rip"));

// Returns true when `encoding` is the high (upper 32 bits) access of a catalogued 64-bit field.
bool is_high_access(std::uint32_t encoding, const VmcsField& f) {
  return (encoding & 1) != 0 && f.width == VmcsWidth::k64;
}

// Keeps the bits of `value` that fit a field of width `w`.
std::uint64_t truncate_to_width(VmcsWidth w, std::uint64_t value) {
  switch (w) {
    case VmcsWidth::k16: return value & 0xFFFFu;
    case VmcsWidth::k32: return value & 0xFFFF'FFFFu;
    case VmcsWidth::k64:
    case VmcsWidth::kNatural: return value;
  }
  return value;
}

}  // namespace

// Returns the whole catalog, ordered by encoding.
std::span<const VmcsField> vmcs_catalog() { return kCatalog; }

// Binary-searches the catalog for an encoding, mapping a 64-bit field's high encoding to the field.
const VmcsField* find_vmcs_field(std::uint32_t encoding) {
  const std::uint32_t full = encoding & ~std::uint32_t{1};
  auto it = std::lower_bound(kCatalog.begin(), kCatalog.end(), full,
                             [](const VmcsField& f, std::uint32_t e) { return f.encoding < e; });
  if (it == kCatalog.end() || it->encoding != full) return nullptr;
  // Only 64-bit fields have a high encoding; an odd encoding of any other field is invalid.
  if ((encoding & 1) != 0 && it->width != VmcsWidth::k64) return nullptr;
  return &*it;
}

// Scans the catalog for a field with exactly this name.
const VmcsField* find_vmcs_field(std::string_view name) {
  for (const VmcsField& f : kCatalog)
    if (name == f.name) return &f;
  return nullptr;
}

// Stores a value truncated to the field's width; a high encoding replaces only the upper 32 bits.
bool Vmcs::set(std::uint32_t encoding, std::uint64_t value) {
  const VmcsField* f = find_vmcs_field(encoding);
  if (f == nullptr) return false;
  if (is_high_access(encoding, *f)) {
    std::uint64_t& slot = values_[f->encoding];  // a fresh field starts at 0
    slot = (slot & 0xFFFF'FFFFu) | ((value & 0xFFFF'FFFFu) << 32);
    return true;
  }
  values_[f->encoding] = truncate_to_width(f->width, value);
  return true;
}

// Reads a stored field; a high encoding yields only its upper 32 bits.
std::optional<std::uint64_t> Vmcs::get(std::uint32_t encoding) const {
  const VmcsField* f = find_vmcs_field(encoding);
  if (f == nullptr) return std::nullopt;
  auto it = values_.find(f->encoding);
  if (it == values_.end()) return std::nullopt;
  return is_high_access(encoding, *f) ? it->second >> 32 : it->second;
}

// Copies out the stored fields whose encoding lies in area `a`.
std::map<std::uint32_t, std::uint64_t> Vmcs::area(VmcsArea a) const {
  std::map<std::uint32_t, std::uint64_t> out;
  for (const auto& [enc, value] : values_)
    if (area_of_encoding(enc) == a) out.emplace_hint(out.end(), enc, value);
  return out;
}

}  // namespace baton::model
