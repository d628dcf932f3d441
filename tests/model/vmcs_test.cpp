// Tests for the VMCS field catalog (SDM Vol. 3D Appendix B) and the Vmcs store.
#include "baton/model/vmcs.hpp"

#include <catch2/catch.hpp>

#include <set>
#include <string>

using namespace baton::model;

TEST_CASE("every catalog entry's width and area agree with the bits of its encoding", "[vmcs]") {
  for (const VmcsField& f : vmcs_catalog()) {
    INFO(f.name);
    CHECK(f.width == width_of_encoding(f.encoding));
    CHECK(f.area == area_of_encoding(f.encoding));
    CHECK((f.encoding & 1) == 0);       // listed by the full encoding
    CHECK((f.encoding & 0x1000) == 0);  // bit 12 is reserved
    CHECK((f.encoding >> 15) == 0);     // bits 31:15 are reserved
  }
}

TEST_CASE("catalog encodings and names are unique", "[vmcs]") {
  std::set<std::uint32_t> encodings;
  std::set<std::string> names;
  for (const VmcsField& f : vmcs_catalog()) {
    INFO(f.name);
    CHECK(encodings.insert(f.encoding).second);
    CHECK(names.insert(f.name).second);
  }
}

TEST_CASE("the catalog lists every field of Appendix B", "[vmcs]") {
  CHECK(vmcs_catalog().size() >= 160);
  // Each of the fifteen tables B-1..B-15 contributes at least one field.
  std::set<std::pair<VmcsWidth, VmcsArea>> tables;
  for (const VmcsField& f : vmcs_catalog()) tables.insert({f.width, f.area});
  CHECK(tables.size() == 15);  // there are no 16-bit read-only fields
  CHECK(tables.count({VmcsWidth::k16, VmcsArea::kReadOnly}) == 0);
}

TEST_CASE("finding a field by name or by encoding round-trips", "[vmcs]") {
  for (const VmcsField& f : vmcs_catalog()) {
    INFO(f.name);
    CHECK(find_vmcs_field(f.name) == &f);
    CHECK(find_vmcs_field(f.encoding) == &f);
  }
  CHECK(find_vmcs_field("no_such_field") == nullptr);
  CHECK(find_vmcs_field(std::string_view{}) == nullptr);
}

TEST_CASE("a 64-bit field's high encoding finds the field but other widths have no high encoding", "[vmcs]") {
  const VmcsField* ept = find_vmcs_field(0x201Bu);
  REQUIRE(ept != nullptr);
  CHECK(ept->encoding == 0x201Au);
  CHECK(find_vmcs_field(0x681Fu) == nullptr);  // guest RIP is natural width
  CHECK(find_vmcs_field(0x4403u) == nullptr);  // exit reason is 32-bit
  CHECK(find_vmcs_field(0x0801u) == nullptr);  // ES selector is 16-bit
}

TEST_CASE("unassigned or malformed encodings are not found", "[vmcs]") {
  CHECK(find_vmcs_field(0x482Cu) == nullptr);  // the gap in the 32-bit guest-state table
  CHECK(find_vmcs_field(0x0002u | 0x1000u) == nullptr);
  CHECK(find_vmcs_field(0x0000'681Eu | 0x8000u) == nullptr);
  CHECK(find_vmcs_field(0xFFFF'FFFFu) == nullptr);
}

TEST_CASE("known encodings match the SDM", "[vmcs]") {
  struct Known {
    const char* name;
    std::uint32_t encoding;
    VmcsWidth width;
    VmcsArea area;
  };
  const Known known[] = {
      {"virtual_processor_id", 0x0000, VmcsWidth::k16, VmcsArea::kControl},
      {"posted_interrupt_notification_vector", 0x0002, VmcsWidth::k16, VmcsArea::kControl},
      {"eptp_index", 0x0004, VmcsWidth::k16, VmcsArea::kControl},
      {"guest_es_selector", 0x0800, VmcsWidth::k16, VmcsArea::kGuestState},
      {"guest_tr_selector", 0x080E, VmcsWidth::k16, VmcsArea::kGuestState},
      {"guest_interrupt_status", 0x0810, VmcsWidth::k16, VmcsArea::kGuestState},
      {"pml_index", 0x0812, VmcsWidth::k16, VmcsArea::kGuestState},
      {"host_es_selector", 0x0C00, VmcsWidth::k16, VmcsArea::kHostState},
      {"host_tr_selector", 0x0C0C, VmcsWidth::k16, VmcsArea::kHostState},
      {"io_bitmap_a_address", 0x2000, VmcsWidth::k64, VmcsArea::kControl},
      {"msr_bitmap_address", 0x2004, VmcsWidth::k64, VmcsArea::kControl},
      {"pml_address", 0x200E, VmcsWidth::k64, VmcsArea::kControl},
      {"tsc_offset", 0x2010, VmcsWidth::k64, VmcsArea::kControl},
      {"virtual_apic_address", 0x2012, VmcsWidth::k64, VmcsArea::kControl},
      {"ept_pointer", 0x201A, VmcsWidth::k64, VmcsArea::kControl},
      {"eoi_exit_bitmap_3", 0x2022, VmcsWidth::k64, VmcsArea::kControl},
      {"xss_exiting_bitmap", 0x202C, VmcsWidth::k64, VmcsArea::kControl},
      {"tsc_multiplier", 0x2032, VmcsWidth::k64, VmcsArea::kControl},
      {"tertiary_processor_based_vm_execution_controls", 0x2034, VmcsWidth::k64, VmcsArea::kControl},
      {"enclv_exiting_bitmap", 0x2036, VmcsWidth::k64, VmcsArea::kControl},
      {"guest_physical_address", 0x2400, VmcsWidth::k64, VmcsArea::kReadOnly},
      {"vmcs_link_pointer", 0x2800, VmcsWidth::k64, VmcsArea::kGuestState},
      {"guest_ia32_debugctl", 0x2802, VmcsWidth::k64, VmcsArea::kGuestState},
      {"guest_ia32_pat", 0x2804, VmcsWidth::k64, VmcsArea::kGuestState},
      {"guest_ia32_efer", 0x2806, VmcsWidth::k64, VmcsArea::kGuestState},
      {"guest_pdpte0", 0x280A, VmcsWidth::k64, VmcsArea::kGuestState},
      {"guest_ia32_pkrs", 0x2818, VmcsWidth::k64, VmcsArea::kGuestState},
      {"host_ia32_pat", 0x2C00, VmcsWidth::k64, VmcsArea::kHostState},
      {"host_ia32_pkrs", 0x2C06, VmcsWidth::k64, VmcsArea::kHostState},
      {"pin_based_vm_execution_controls", 0x4000, VmcsWidth::k32, VmcsArea::kControl},
      {"primary_processor_based_vm_execution_controls", 0x4002, VmcsWidth::k32, VmcsArea::kControl},
      {"exception_bitmap", 0x4004, VmcsWidth::k32, VmcsArea::kControl},
      {"primary_vm_exit_controls", 0x400C, VmcsWidth::k32, VmcsArea::kControl},
      {"vm_entry_controls", 0x4012, VmcsWidth::k32, VmcsArea::kControl},
      {"secondary_processor_based_vm_execution_controls", 0x401E, VmcsWidth::k32, VmcsArea::kControl},
      {"vm_instruction_error", 0x4400, VmcsWidth::k32, VmcsArea::kReadOnly},
      {"vm_exit_reason", 0x4402, VmcsWidth::k32, VmcsArea::kReadOnly},
      {"vm_exit_instruction_length", 0x440C, VmcsWidth::k32, VmcsArea::kReadOnly},
      {"guest_es_limit", 0x4800, VmcsWidth::k32, VmcsArea::kGuestState},
      {"guest_interruptibility_state", 0x4824, VmcsWidth::k32, VmcsArea::kGuestState},
      {"guest_activity_state", 0x4826, VmcsWidth::k32, VmcsArea::kGuestState},
      {"vmx_preemption_timer_value", 0x482E, VmcsWidth::k32, VmcsArea::kGuestState},
      {"host_ia32_sysenter_cs", 0x4C00, VmcsWidth::k32, VmcsArea::kHostState},
      {"cr0_guest_host_mask", 0x6000, VmcsWidth::kNatural, VmcsArea::kControl},
      {"cr3_target_value_3", 0x600E, VmcsWidth::kNatural, VmcsArea::kControl},
      {"exit_qualification", 0x6400, VmcsWidth::kNatural, VmcsArea::kReadOnly},
      {"guest_linear_address", 0x640A, VmcsWidth::kNatural, VmcsArea::kReadOnly},
      {"guest_cr0", 0x6800, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_cr3", 0x6802, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_dr7", 0x681A, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_rsp", 0x681C, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_rip", 0x681E, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_rflags", 0x6820, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"guest_ia32_interrupt_ssp_table_addr", 0x682C, VmcsWidth::kNatural, VmcsArea::kGuestState},
      {"host_cr0", 0x6C00, VmcsWidth::kNatural, VmcsArea::kHostState},
      {"host_cr3", 0x6C02, VmcsWidth::kNatural, VmcsArea::kHostState},
      {"host_rsp", 0x6C14, VmcsWidth::kNatural, VmcsArea::kHostState},
      {"host_rip", 0x6C16, VmcsWidth::kNatural, VmcsArea::kHostState},
      {"host_ia32_interrupt_ssp_table_addr", 0x6C1C, VmcsWidth::kNatural, VmcsArea::kHostState},
  };
  for (const Known& k : known) {
    INFO(k.name);
    const VmcsField* f = find_vmcs_field(std::string_view{k.name});
    REQUIRE(f != nullptr);
    CHECK(f->encoding == k.encoding);
    CHECK(f->width == k.width);
    CHECK(f->area == k.area);
  }
}

TEST_CASE("the well-known constants name catalogued fields", "[vmcs]") {
  CHECK(std::string(find_vmcs_field(vmcs::kEptPointer)->name) == "ept_pointer");
  CHECK(std::string(find_vmcs_field(vmcs::kExitReason)->name) == "vm_exit_reason");
  CHECK(std::string(find_vmcs_field(vmcs::kGuestRip)->name) == "guest_rip");
  CHECK(std::string(find_vmcs_field(vmcs::kHostRip)->name) == "host_rip");
  CHECK(std::string(find_vmcs_field(vmcs::kVmcsLinkPointer)->name) == "vmcs_link_pointer");
  CHECK(std::string(find_vmcs_field(vmcs::kGuestPmlIndex)->name) == "pml_index");
  CHECK(std::string(find_vmcs_field(vmcs::kExitQualification)->name) == "exit_qualification");
  CHECK(std::string(find_vmcs_field(vmcs::kGuestPhysicalAddress)->name) == "guest_physical_address");
}

TEST_CASE("widths and areas have readable names", "[vmcs]") {
  CHECK(std::string(to_string(VmcsWidth::k16)) == "16");
  CHECK(std::string(to_string(VmcsWidth::k32)) == "32");
  CHECK(std::string(to_string(VmcsWidth::k64)) == "64");
  CHECK(std::string(to_string(VmcsWidth::kNatural)) == "natural");
  CHECK(std::string(to_string(VmcsArea::kControl)) == "control");
  CHECK(std::string(to_string(VmcsArea::kReadOnly)) == "read-only");
  CHECK(std::string(to_string(VmcsArea::kGuestState)) == "guest-state");
  CHECK(std::string(to_string(VmcsArea::kHostState)) == "host-state");
}

TEST_CASE("setting a field truncates the value to the field's width", "[vmcs]") {
  Vmcs v;
  REQUIRE(v.set(0x0800, 0x1234'5678));  // guest ES selector, 16-bit
  CHECK(v.get(0x0800) == 0x5678u);
  REQUIRE(v.set(vmcs::kExitReason, 0xAAAA'BBBB'CCCC'DDDDull));  // 32-bit
  CHECK(v.get(vmcs::kExitReason) == 0xCCCC'DDDDu);
  REQUIRE(v.set(vmcs::kEptPointer, 0xFFFF'FFFF'FFFF'FFFFull));  // 64-bit
  CHECK(v.get(vmcs::kEptPointer) == 0xFFFF'FFFF'FFFF'FFFFull);
  REQUIRE(v.set(vmcs::kGuestRip, 0xFFFF'8000'0000'1000ull));  // natural width is stored as 64 bits
  CHECK(v.get(vmcs::kGuestRip) == 0xFFFF'8000'0000'1000ull);
}

TEST_CASE("setting an unknown encoding is rejected and stores nothing", "[vmcs]") {
  Vmcs v;
  CHECK_FALSE(v.set(0x482C, 1));  // unassigned index
  CHECK_FALSE(v.set(0x681F, 1));  // high access of a natural-width field
  CHECK_FALSE(v.set(0xDEAD'BEEF, 1));
  CHECK(v.values().empty());
  CHECK(v.get(0x482C) == std::nullopt);
}

TEST_CASE("reading a field that was never set yields nothing, or zero on request", "[vmcs]") {
  Vmcs v;
  CHECK(v.get(vmcs::kGuestCr3) == std::nullopt);
  CHECK(v.get_or_zero(vmcs::kGuestCr3) == 0);
  CHECK_FALSE(v.contains(vmcs::kGuestCr3));
}

TEST_CASE("the high encoding of a 64-bit field reads and writes its upper 32 bits", "[vmcs]") {
  Vmcs v;
  REQUIRE(v.set(vmcs::kTscOffset, 0x1111'2222'3333'4444ull));
  CHECK(v.get(vmcs::kTscOffset + 1) == 0x1111'2222u);

  REQUIRE(v.set(vmcs::kTscOffset + 1, 0xFFFF'FFFF'AAAA'BBBBull));  // only the low 32 bits of the value count
  CHECK(v.get(vmcs::kTscOffset) == 0xAAAA'BBBB'3333'4444ull);
  CHECK(v.get(vmcs::kTscOffset + 1) == 0xAAAA'BBBBu);
  // The value lives under the full encoding only.
  CHECK(v.values().size() == 1);
  CHECK(v.contains(vmcs::kTscOffset));

  Vmcs fresh;  // writing only the high half of an unset field leaves the low half zero
  REQUIRE(fresh.set(vmcs::kVmcsLinkPointer + 1, 0xFFFF'FFFF));
  CHECK(fresh.get(vmcs::kVmcsLinkPointer) == 0xFFFF'FFFF'0000'0000ull);
}

TEST_CASE("area() returns only the fields of the requested area", "[vmcs]") {
  Vmcs v;
  REQUIRE(v.set(vmcs::kEptPointer, 1));       // control
  REQUIRE(v.set(vmcs::kPinBasedControls, 2));  // control
  REQUIRE(v.set(vmcs::kExitReason, 3));        // read-only
  REQUIRE(v.set(vmcs::kGuestRip, 4));          // guest state
  REQUIRE(v.set(vmcs::kHostRip, 5));           // host state
  REQUIRE(v.set(vmcs::kHostCr3, 6));           // host state

  auto control = v.area(VmcsArea::kControl);
  CHECK(control.size() == 2);
  CHECK(control.at(vmcs::kEptPointer) == 1);
  CHECK(control.at(vmcs::kPinBasedControls) == 2);
  CHECK(v.area(VmcsArea::kReadOnly) == std::map<std::uint32_t, std::uint64_t>{{vmcs::kExitReason, 3}});
  CHECK(v.area(VmcsArea::kGuestState) == std::map<std::uint32_t, std::uint64_t>{{vmcs::kGuestRip, 4}});
  CHECK(v.area(VmcsArea::kHostState).size() == 2);
  CHECK(Vmcs{}.area(VmcsArea::kControl).empty());
}

TEST_CASE("two VMCSs with the same fields compare equal", "[vmcs]") {
  Vmcs a, b;
  REQUIRE(a.set(vmcs::kGuestRip, 0x1000));
  REQUIRE(b.set(vmcs::kGuestRip, 0x1000));
  CHECK(a == b);
  REQUIRE(b.set(vmcs::kGuestRsp, 0x2000));
  CHECK_FALSE(a == b);
}
