// UnicornVcpu: Unicorn 2.0.1 set-up, the fast-path hooks, block decoding and counting, the
// RDTSC fix-up, the TLB model and region surgery for deviating pages.
#include "unicorn_vcpu.hpp"

#include <capstone/capstone.h>
#include <unicorn/unicorn.h>

#include <algorithm>
#include <cstring>

#if defined(__SANITIZE_ADDRESS__)
// LeakSanitizer's built-in suppressions for sanitizer builds (BATON_SANITIZE), in every program
// that runs Unicorn (they all link this file). Unicorn 2.0.1 leaks a page's self-modifying-code
// bitmap: tb_invalidate_phys_page_fast allocates PageDesc::code_bitmap once a page that holds
// translated code is written often, and uc_close's tb_cleanup frees the PageDesc arrays without
// it (qemu/accel/tcg/translate-all.c at tag 2.0.1). 512 bytes a page, in the library, not ours.
extern "C" const char* __lsan_default_suppressions() { return "leak:tb_invalidate_phys_page_fast\n"; }
extern "C" const char* __lsan_default_options() { return "print_suppressions=0"; }
#endif

namespace baton::sim {

namespace {

constexpr std::size_t kBlockCacheSize = std::size_t{1} << 16;
static_assert(kBlockCacheSize == (std::size_t{1} << 16), "block_index() masks with 16 bits");
// Executions of a block (translated with the memory hooks) before it is retranslated without
// them; its stores and loads are checked against the decoded ones meanwhile.
constexpr std::uint32_t kPromoteAfter = 8;

// What the memory hooks see of one instruction: whether it may load, and how many stores it
// makes per execution (-1: unknown or more than one, as for ENTER, PUSHA, far calls, interrupts,
// masked stores and stores wider than 8 bytes, which Unicorn splits or makes in a helper).
struct InsnMemory {
  bool load = false;
  int stores = 0;
};

// Classifies an instruction from capstone's operand access flags (see InsnMemory).
InsnMemory classify(const cs_insn& insn) {
  InsnMemory m;
  const cs_x86* x = insn.detail != nullptr ? &insn.detail->x86 : nullptr;
  bool mem_operand = false;
  if (x != nullptr)
    for (std::uint8_t i = 0; i < x->op_count; ++i) mem_operand = mem_operand || x->operands[i].type == X86_OP_MEM;
  switch (insn.id) {
    case X86_INS_NOP: return m;
    case X86_INS_PUSH: case X86_INS_PUSHF: case X86_INS_PUSHFD: case X86_INS_PUSHFQ: case X86_INS_CALL:
      m.load = mem_operand;  // push [m] and call [m] load first
      m.stores = 1;
      return m;
    case X86_INS_POP: case X86_INS_POPF: case X86_INS_POPFD: case X86_INS_POPFQ: case X86_INS_RET:
    case X86_INS_LEAVE:
      m.load = true;
      m.stores = insn.id == X86_INS_POP && mem_operand ? 1 : 0;  // pop [m] stores after its load
      return m;
    case X86_INS_PUSHAW: case X86_INS_PUSHAL: case X86_INS_LCALL: case X86_INS_ENTER: case X86_INS_MASKMOVQ:
    case X86_INS_MASKMOVDQU: case X86_INS_VMASKMOVDQU: case X86_INS_INT: case X86_INS_INT1: case X86_INS_INT3:
    case X86_INS_INTO: case X86_INS_SYSCALL: case X86_INS_SYSENTER: case X86_INS_CMPXCHG16B: case X86_INS_FXSAVE:
    case X86_INS_FXSAVE64: case X86_INS_XSAVE: case X86_INS_XSAVE64: case X86_INS_XSAVEOPT: case X86_INS_FNSAVE:
    case X86_INS_FNSTENV: case X86_INS_SGDT: case X86_INS_SIDT: case X86_INS_IRET: case X86_INS_IRETD:
    case X86_INS_IRETQ: case X86_INS_RETF: case X86_INS_RETFQ:
      m.load = true;
      m.stores = -1;
      return m;
    default: break;
  }
  if (x == nullptr) return InsnMemory{true, -1};
  int written = 0;
  for (std::uint8_t i = 0; i < x->op_count; ++i) {
    const cs_x86_op& op = x->operands[i];
    if (op.type != X86_OP_MEM) continue;
    if (op.access == 0) return InsnMemory{true, -1};  // capstone does not know
    if ((op.access & CS_AC_READ) != 0) m.load = true;
    if ((op.access & CS_AC_WRITE) != 0) written += op.size <= 8 ? 1 : 2;
  }
  m.stores = written <= 1 ? written : -1;
  return m;
}

// C trampolines into the vCPU.
void tramp_block(uc_engine*, std::uint64_t addr, std::uint32_t size, void* user) {
  static_cast<UnicornVcpu*>(user)->on_block(addr, size);
}
void tramp_mem(uc_engine*, uc_mem_type type, std::uint64_t addr, int size, std::int64_t, void* user) {
  static_cast<UnicornVcpu*>(user)->on_mem(type == UC_MEM_WRITE, addr, size);
}
void tramp_rdtsc(uc_engine*, std::uint64_t addr, std::uint32_t, void* user) {
  static_cast<UnicornVcpu*>(user)->on_rdtsc_next(addr);
}
void tramp_tb_generated(uc_engine*, uc_tb* cur, uc_tb*, void* user) {
  static_cast<UnicornVcpu*>(user)->on_tb_generated(cur->pc, cur->size);
}

}  // namespace

// Trampolines that need the VcpuExits interface.
struct UnicornVcpuHooks {
  // Handles OUT.
  static void out(uc_engine*, std::uint32_t port, int size, std::uint32_t value, void* user) {
    static_cast<UnicornVcpu*>(user)->on_out(static_cast<std::uint16_t>(port), static_cast<unsigned>(size), value);
  }
  // Handles IN.
  static std::uint32_t in(uc_engine*, std::uint32_t port, int size, void* user) {
    return static_cast<UnicornVcpu*>(user)->on_in(static_cast<std::uint16_t>(port), static_cast<unsigned>(size));
  }
  // Handles CPUID; returning 1 skips Unicorn's own CPUID.
  static int cpuid(uc_engine*, void* user) {
    static_cast<VcpuExits*>(user)->cpuid();
    return 1;
  }
  // Handles a CPU exception: the machine decides, emulation stops.
  static void intr(uc_engine* uc, std::uint32_t vector, void* user) {
    static_cast<VcpuExits*>(user)->exception(vector);
    uc_emu_stop(uc);
  }
};

UnicornVcpu::UnicornVcpu(VcpuExits& exits, std::uint64_t gpa_limit)
    : exits_(exits),
      flags_(gpa_limit >> model::kPageShift, 0),
      is_ram_(gpa_limit >> model::kPageShift, 0),
      ff_page_(model::kPageSize, 0xFF) {}

UnicornVcpu::~UnicornVcpu() {
  if (uc_ != nullptr) uc_close(uc_);
  if (cs_ != nullptr) {
    csh h = reinterpret_cast<csh>(cs_);
    cs_close(&h);
  }
}

Result<void> UnicornVcpu::open() {
  if (uc_err e = uc_open(UC_ARCH_X86, UC_MODE_64, &uc_); e != UC_ERR_OK)
    return make_error(std::string("uc_open: ") + uc_strerror(e));
  csh h = 0;
  if (cs_open(CS_ARCH_X86, CS_MODE_64, &h) != CS_ERR_OK) return make_error("capstone: cs_open failed");
  cs_ = reinterpret_cast<void*>(h);
  cs_option(h, CS_OPT_DETAIL, CS_OPT_ON);  // operand access: the loads and stores of each block
  // Unicorn 2.0.1 never marks RAM dirty (cpu_physical_memory_is_clean() is a stub that returns
  // true), so every TLB entry of a writable page keeps TLB_NOTDIRTY, and every store leaves the
  // inline path for store_helper(), which calls the write hooks before anything else. Blocks
  // that store can then run without hooks in their translation. Another version may keep
  // stores inline: there, only load-only blocks go hook-less.
  const unsigned version = uc_version(nullptr, nullptr);
  hookless_stores_ = (version >> 8) == ((2u << 16) | (0u << 8) | 1u);
  uc_hook hh;
  auto add = [&](uc_err e, const char* what) -> Result<void> {
    if (e != UC_ERR_OK) return make_error(std::string("uc_hook_add ") + what + ": " + uc_strerror(e));
    return ok_result();
  };
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_BLOCK, reinterpret_cast<void*>(tramp_block), this, 1, 0), "block"));
  // Reports every block the execution translates (not those uc_ctl_request_cache makes): a
  // hook-less translation that was removed is replaced by one with the memory hooks.
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_EDGE_GENERATED, reinterpret_cast<void*>(tramp_tb_generated), this, 1, 0),
                     "edge"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INSN, reinterpret_cast<void*>(UnicornVcpuHooks::out), this, 1, 0,
                                 UC_X86_INS_OUT), "out"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INSN, reinterpret_cast<void*>(UnicornVcpuHooks::in), this, 1, 0,
                                 UC_X86_INS_IN), "in"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INSN, reinterpret_cast<void*>(UnicornVcpuHooks::cpuid), &exits_, 1, 0,
                                 UC_X86_INS_CPUID), "cpuid"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INTR, reinterpret_cast<void*>(UnicornVcpuHooks::intr), &exits_, 1, 0),
                     "intr"));
  return ok_result();
}

Result<void> UnicornVcpu::map_ram(std::uint64_t gpa, std::uint64_t size, std::uint8_t* host) {
  if (((gpa + size) >> model::kPageShift) > flags_.size()) return make_error("memslot beyond the guest-physical limit");
  if (uc_err e = uc_mem_map_ptr(uc_, gpa, size, UC_PROT_ALL, host); e != UC_ERR_OK)
    return make_error(std::string("uc_mem_map_ptr: ") + uc_strerror(e));
  slots_.push_back(Slot{gpa, size, host});
  const std::uint64_t first = gpa >> model::kPageShift, n = size >> model::kPageShift;
  for (std::uint64_t i = 0; i < n; ++i) {
    is_ram_[first + i] = 1;
    if ((flags_[first + i] & pageflag::kAll) != pageflag::kAll) ++slow_pages_;
  }
  return ok_result();
}

Result<void> UnicornVcpu::map_mmio(std::uint64_t gpa, std::uint64_t size) {
  auto region = std::make_unique<MmioRegion>(MmioRegion{this, gpa});
  auto rd = [](uc_engine*, std::uint64_t off, unsigned size, void* user) -> std::uint64_t {
    auto* r = static_cast<MmioRegion*>(user);
    return r->self->exits_.mmio_read(r->base + off, size);
  };
  auto wr = [](uc_engine*, std::uint64_t off, unsigned size, std::uint64_t value, void* user) {
    auto* r = static_cast<MmioRegion*>(user);
    r->self->exits_.mmio_write(r->base + off, size, value);
  };
  if (uc_err e = uc_mmio_map(uc_, gpa, size, rd, region.get(), wr, region.get()); e != UC_ERR_OK)
    return make_error(std::string("uc_mmio_map: ") + uc_strerror(e));
  mmio_.push_back(std::move(region));
  // The fast path lets MMIO accesses through; the MMIO callbacks take the exit.
  set_flags(gpa >> model::kPageShift, size >> model::kPageShift, pageflag::kAll);
  return ok_result();
}

Result<void> UnicornVcpu::remap_page(std::uint64_t gpa, std::uint8_t* host) {
  gpa &= ~model::kPageMask;
  if (uc_err e = uc_mem_unmap(uc_, gpa, model::kPageSize); e != UC_ERR_OK)
    return make_error(std::string("uc_mem_unmap: ") + uc_strerror(e));
  std::uint8_t* target = host != nullptr ? host : ff_page_.data();
  if (uc_err e = uc_mem_map_ptr(uc_, gpa, model::kPageSize, UC_PROT_ALL, target); e != UC_ERR_OK)
    return make_error(std::string("uc_mem_map_ptr: ") + uc_strerror(e));
  return ok_result();
}

std::uint64_t UnicornVcpu::regions() const {
  uc_mem_region* r = nullptr;
  std::uint32_t n = 0;
  if (uc_mem_regions(uc_, &r, &n) != UC_ERR_OK) return 0;
  uc_free(r);
  return n;
}

std::uint64_t UnicornVcpu::reg(int id) const {
  std::uint64_t v = 0;
  uc_reg_read(uc_, id, &v);
  return v;
}

void UnicornVcpu::set_reg(int id, std::uint64_t v) { uc_reg_write(uc_, id, &v); }

namespace {
constexpr int kGprIds[] = {UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI, UC_X86_REG_RDI,
                           UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_R8,  UC_X86_REG_R9,  UC_X86_REG_R10, UC_X86_REG_R11,
                           UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15};
}  // namespace

Result<void> UnicornVcpu::set_state(const model::VcpuState& v) {
  auto check = [](uc_err e, const char* what) -> Result<void> {
    if (e != UC_ERR_OK) return make_error(std::string("setting ") + what + ": " + uc_strerror(e));
    return ok_result();
  };
  uc_x86_mmr gdtr{0, v.gdtr.base, v.gdtr.limit, 0};
  uc_x86_mmr idtr{0, v.idtr.base, v.idtr.limit, 0};
  uc_x86_msr efer{model::kMsrEfer, v.efer};
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_GDTR, &gdtr), "GDTR"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_IDTR, &idtr), "IDTR"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_MSR, &efer), "EFER"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_CR3, &v.cr3), "CR3"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_CR4, &v.cr4), "CR4"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_CR0, &v.cr0), "CR0"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_CR2, &v.cr2), "CR2"));
  const std::pair<int, std::uint64_t> segs[] = {{UC_X86_REG_CS, v.cs.selector}, {UC_X86_REG_SS, v.ss.selector},
                                                {UC_X86_REG_DS, v.ds.selector}, {UC_X86_REG_ES, v.es.selector},
                                                {UC_X86_REG_FS, v.fs.selector}, {UC_X86_REG_GS, v.gs.selector}};
  for (const auto& [id, sel] : segs) BATON_TRY_VOID(check(uc_reg_write(uc_, id, &sel), "segment selector"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_FS_BASE, &v.fs.base), "FS base"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_GS_BASE, &v.gs.base), "GS base"));
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i)
    BATON_TRY_VOID(check(uc_reg_write(uc_, kGprIds[i], &v.gpr[i]), "GPR"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_RFLAGS, &v.rflags), "RFLAGS"));
  BATON_TRY_VOID(check(uc_reg_write(uc_, UC_X86_REG_RIP, &v.rip), "RIP"));
  return ok_result();
}

model::VcpuState UnicornVcpu::get_state(const model::VcpuState& base) const {
  model::VcpuState v = base;
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) v.gpr[i] = reg(kGprIds[i]);
  v.rip = reg(UC_X86_REG_RIP);
  v.rflags = reg(UC_X86_REG_RFLAGS);
  v.cr0 = reg(UC_X86_REG_CR0);
  v.cr2 = reg(UC_X86_REG_CR2);
  v.cr3 = reg(UC_X86_REG_CR3);
  v.cr4 = reg(UC_X86_REG_CR4);
  v.cs.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_CS));
  v.ss.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_SS));
  v.ds.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_DS));
  v.es.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_ES));
  v.fs.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_FS));
  v.gs.selector = static_cast<std::uint16_t>(reg(UC_X86_REG_GS));
  v.fs.base = reg(UC_X86_REG_FS_BASE);
  v.gs.base = reg(UC_X86_REG_GS_BASE);
  uc_x86_msr efer{model::kMsrEfer, 0};
  if (uc_reg_read(uc_, UC_X86_REG_MSR, &efer) == UC_ERR_OK) v.efer = efer.value;
  return v;
}

void UnicornVcpu::set_flags(std::uint64_t gfn, std::uint64_t count, std::uint8_t f) {
  const std::uint64_t end = std::min<std::uint64_t>(gfn + count, flags_.size());
  last_fetch_gfn_ = ~std::uint64_t{0};  // the page geometry (and so the TLB class) may change
  new_epoch();                           // and fetch permissions
  auto exec_only = [](std::uint8_t x) { return (x & pageflag::kFetch) != 0 && (x & pageflag::kRead) == 0; };
  for (std::uint64_t g = gfn; g < end; ++g) {
    const std::uint8_t old = flags_[g];
    if ((old & pageflag::kRead) != 0 && (f & pageflag::kRead) == 0) read_lost_ = true;
    if (exec_only(old) && !exec_only(f)) --xo_pages_;
    if (!exec_only(old) && exec_only(f)) ++xo_pages_;
    if (is_ram_[g]) {
      const bool was_fast = (flags_[g] & pageflag::kAll) == pageflag::kAll;
      const bool is_fast = (f & pageflag::kAll) == pageflag::kAll;
      if (was_fast && !is_fast) ++slow_pages_;
      if (!was_fast && is_fast) --slow_pages_;
    }
    flags_[g] = f;
  }
  update_page_watch();
  if (slow_pages_ == 0 && mem_hook_ != 0 && !always_watch_ && !tlb_ && !record_writes_) {
    attend(kMaintenance);  // the hooks can come off: do it outside emulation
    request_stop();
  }
}

void UnicornVcpu::set_tlb(bool on, std::uint64_t e4k, std::uint64_t e2m, std::uint64_t e1g) {
  auto pow2 = [](std::uint64_t n) {
    std::uint64_t p = 1;
    while (p * 2 <= n) p *= 2;
    return p;
  };
  tlb_ = on;
  last_fetch_gfn_ = ~std::uint64_t{0};
  code_tags_.clear();
  code_tags_overflow_ = false;
  new_epoch();
  tlb4k_.assign(pow2(e4k), 0);
  tlb2m_.assign(pow2(e2m), 0);
  tlb1g_.assign(pow2(e1g), 0);
}

std::uint64_t UnicornVcpu::tlb_access(std::uint64_t gfn, std::uint8_t f) {
  const unsigned gl = (f >> pageflag::kGeoShift) & 3;        // guest leaf level - 1
  const unsigned el = (f >> (pageflag::kGeoShift + 2)) & 3;  // EPT leaf level - 1
  const unsigned cls = std::min(gl, el);
  std::vector<std::uint64_t>& t = cls == 0 ? tlb4k_ : cls == 1 ? tlb2m_ : tlb1g_;
  const std::uint64_t tag = (gfn >> (9 * cls)) + 1;
  const std::uint64_t key = tag | (std::uint64_t{cls} << 62);
  std::uint64_t& slot = t[tag & (t.size() - 1)];
  if (slot == tag) return key;
  // A miss evicts the slot's old page: the last fetched one, perhaps, or the page a ready
  // block fetches from (then every block checks its fetch again).
  const std::uint64_t old = slot | (std::uint64_t{cls} << 62);
  slot = tag;
  last_fetch_gfn_ = ~std::uint64_t{0};
  if (code_tags_overflow_ || std::find(code_tags_.begin(), code_tags_.end(), old) != code_tags_.end()) new_epoch();
  ++tlb_misses_;
  tlb_refs_ += (4 - gl + 1) * (4 - el + 1) - 1;  // 2D walk (Bhargava et al.)
  return key;
}

void UnicornVcpu::fetch_lookup(std::uint64_t g0) {
  if (g0 == last_fetch_gfn_) return;
  if (tlb_) {
    const std::uint64_t key = tlb_access(g0, flags_[g0]);
    if (!code_tags_overflow_ && std::find(code_tags_.begin(), code_tags_.end(), key) == code_tags_.end()) {
      if (code_tags_.size() < kMaxCodeTags) code_tags_.push_back(key);
      else code_tags_overflow_ = true;  // many code pages: every miss starts a new epoch
    }
  }
  last_fetch_gfn_ = g0;
}

void UnicornVcpu::update_watch() {
  const bool need = always_watch_ || tlb_ || record_writes_ || slow_pages_ > 0;
  if (need && mem_hook_ == 0) {
    uc_hook h = 0;
    uc_hook_add(uc_, &h, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, reinterpret_cast<void*>(tramp_mem), this, 1, 0);
    mem_hook_ = h;
    mem_hook_listed_ = true;
    if (readd_after_promote_) {
      readd_after_promote_ = false;  // the hook was only off to retranslate hot blocks
    } else {
      if (unhooked_run_) drop_translations();  // translations made without the hook use the inline fast path
      ++hook_toggles_;
    }
    unhooked_run_ = false;
  } else if (!need && mem_hook_ != 0) {
    uc_hook_del(uc_, mem_hook_);
    mem_hook_ = 0;
    drop_translations();  // regenerate translations with Unicorn's inline fast path
    unhooked_run_ = true;
    ++hook_toggles_;
  }
}

void UnicornVcpu::drop_translations() {
  if (code_hi_ > code_lo_) uc_ctl_remove_cache(uc_, code_lo_, code_hi_);
  unfast_all();
}

void UnicornVcpu::unfast_all() {
  if (fast_count_ == 0) return;
  for (std::size_t idx : fast_list_) {
    blocks_[idx].fast = false;
    blocks_[idx].hot = 0;
  }
  fast_list_.clear();
  fast_count_ = 0;
  ++fast_drops_;
  new_epoch();
}

void UnicornVcpu::unfast_overlapping(std::uint64_t begin, std::uint64_t end, std::vector<std::size_t>* redo) {
  for (std::size_t idx : fast_list_) {
    Block& f = blocks_[idx];
    if (!f.fast || f.addr >= end || f.addr + f.size <= begin) continue;
    f.fast = false;
    f.hot = 0;
    if (redo != nullptr) redo->push_back(idx);
  }
  new_epoch();
}

void UnicornVcpu::retranslate_fast() {
  // The memory hook was deleted inside the last emulation, so Unicorn has dropped it from its
  // hook lists by now: what is translated here uses the inline softmmu fast path.
  //
  // Removing a block's translation removes every translation that overlaps its bytes (blocks
  // that fall through into a loop head share its tail), hook-less ones included: those are
  // retranslated here too, so a promotion never silently puts another block back on the hooks.
  // All removals come first, since a removal after a retranslation would undo it.
  std::vector<std::size_t> todo;
  for (std::size_t idx : promote_) {
    Block& b = blocks_[idx];
    if (!b.promotable || b.fast || std::find(todo.begin(), todo.end(), idx) != todo.end()) continue;
    uc_ctl_remove_cache(uc_, b.addr, b.addr + b.size);
    todo.push_back(idx);
  }
  for (std::size_t i = 0, n = todo.size(); i < n; ++i) {
    const Block& b = blocks_[todo[i]];
    unfast_overlapping(b.addr, b.addr + b.size, &todo);
  }
  for (std::size_t idx : todo) {
    Block& b = blocks_[idx];
    if (b.fast) continue;  // listed twice
    uc_tb tb{};
    if (uc_ctl_request_cache(uc_, b.addr, &tb) == UC_ERR_OK && tb.pc == b.addr && tb.size == b.size) {
      b.fast = true;
      b.hot = 0;
      if (std::find(fast_list_.begin(), fast_list_.end(), idx) == fast_list_.end()) fast_list_.push_back(idx);
      ++fast_count_;
      ++promotions_;
    } else {
      // Not the same block (or no block): drop it and leave this address hooked. The removal
      // takes the overlapping hook-less translations with it; they are promoted again later.
      const std::uint64_t end = b.addr + std::max<std::uint64_t>(b.size, tb.pc == b.addr ? tb.size : 0);
      uc_ctl_remove_cache(uc_, b.addr, end);
      b.promotable = false;
      unfast_overlapping(b.addr, end, nullptr);
    }
  }
  // Keep the list to the blocks that are still fast.
  fast_list_.erase(std::remove_if(fast_list_.begin(), fast_list_.end(), [&](std::size_t i) { return !blocks_[i].fast; }),
                   fast_list_.end());
  promote_.clear();
  new_epoch();
}

void UnicornVcpu::on_tb_generated(std::uint64_t pc, std::uint32_t size) {
  // Translated while a memory hook is in Unicorn's lists: its loads call out.
  if (!mem_hook_listed_) return;
  Block* bp = blocks_.find(block_index(pc, size));
  if (bp == nullptr) return;
  Block& b = *bp;
  if (b.addr != pc || b.size != size || !b.fast) return;
  b.fast = false;
  b.hot = 0;
  b.ready = 0;
  ++fast_lost_;
}

void UnicornVcpu::flush_softmmu() {
  // uc_mem_map_ptr flushes the whole softmmu TLB; the page lies beyond every memslot and MMIO range.
  constexpr std::uint64_t k2m = std::uint64_t{1} << 21;
  const std::uint64_t at = ((static_cast<std::uint64_t>(flags_.size()) << model::kPageShift) + 2 * k2m) & ~(k2m - 1);
  if (uc_mem_map_ptr(uc_, at, model::kPageSize, UC_PROT_READ, ff_page_.data()) == UC_ERR_OK)
    uc_mem_unmap(uc_, at, model::kPageSize);
  ++softmmu_flushes_;
}

void UnicornVcpu::request_stop() {
  io_stop_ = io_stop_ || hook_ == HookKind::kIo;
  attend(kWantStop);
  if (uc_ != nullptr) uc_emu_stop(uc_);
}

VcpuStop UnicornVcpu::run(std::uint64_t insn_limit) {
  update_watch();
  if (!flush_.empty()) {
    for (const auto& [b, e] : flush_) {
      uc_ctl_remove_cache(uc_, b, e);
      unfast_overlapping(b, e, nullptr);
    }
    flush_.clear();
  }
  // Fast (hook-less) loads rely on Unicorn's softmmu TLB holding no page without kRead: an
  // executable-only page would get a readable entry from its code fetch, and a page that lost
  // kRead may still have one.
  if (xo_pages_ > 0 && fast_count_ > 0) drop_translations();
  if (read_lost_) {
    flush_softmmu();
    read_lost_ = false;
  }
  limit_ = insn_limit;
  attention_ = 0;
  update_page_watch();
  new_epoch();  // hooks may have come on or off: promotion counting restarts
  cur_ = nullptr;
  cur_rdtsc_end_ = prev_rdtsc_end_ = 0;
  const std::uint64_t rip = reg(UC_X86_REG_RIP);
  VcpuStop s;
  has_stopped_before_ = false;
  io_stop_ = false;
  s.uc_error = uc_emu_start(uc_, rip, ~std::uint64_t{0}, 0, 0);
  if (mem_hook_ == 0) mem_hook_listed_ = false;  // Unicorn drops deleted hooks when the emulation ends
  if (has_stopped_before_ && s.uc_error == UC_ERR_OK) set_reg(UC_X86_REG_RIP, stopped_before_);
  if (io_stop_ && s.uc_error == UC_ERR_OK) complete_io();
  if (!promote_.empty()) retranslate_fast();
  s.rip = reg(UC_X86_REG_RIP);
  // An error or a stop requested from an I/O hook can leave the block early: the
  // instructions from RIP on were counted at block entry but did not run.
  if (s.uc_error != UC_ERR_OK || (attention_ & kWantStop) != 0) uncount_tail(s.rip);
  s.requested = (attention_ & kWantStop) != 0;
  s.budget = (attention_ & kBudgetStop) != 0;
  s.maintenance = (attention_ & kMaintenance) != 0;
  return s;
}

void UnicornVcpu::begin_io(bool in, unsigned size) {
  io_ = IoInsn{};
  io_.in = in;
  io_.size = size;
  if (cur_ != nullptr && io_seq_ < cur_->io.size()) {
    io_.rip = cur_->addr + cur_->io[io_seq_];
    io_.len = cur_->io_len[io_seq_];
  } else {
    io_.rip = reg(UC_X86_REG_RIP);  // not decoded (cannot happen for a block that ran): Unicorn's RIP
  }
  ++io_seq_;
}

void UnicornVcpu::on_out(std::uint16_t port, unsigned size, std::uint32_t value) {
  begin_io(false, size);
  const HookScope scope(*this, HookKind::kIo);
  exits_.port_out(port, size, value);
}

std::uint32_t UnicornVcpu::on_in(std::uint16_t port, unsigned size) {
  begin_io(true, size);
  const HookScope scope(*this, HookKind::kIo);
  io_.value = exits_.port_in(port, size);
  return io_.value;
}

void UnicornVcpu::complete_io() {
  // Unicorn 2.0.1 leaves an I/O hook that stopped the emulation with the instruction not
  // retired and RIP not even at it (at the block start or the last access: its translation
  // writes RIP there only). A VMM completes an I/O exit before anyone reads the state: IN's
  // value goes to AL/AX/EAX and RIP moves past the instruction (the VM-exit instruction
  // length), as KVM does on the next KVM_RUN before a state save. Then the instructions of
  // the block after it are uncounted by run().
  const std::uint64_t rip = reg(UC_X86_REG_RIP);
  if (io_.len == 0 || cur_ == nullptr || rip < cur_->addr || rip > io_.rip) return;  // retired already, or unknown
  if (io_.in) {
    const std::uint64_t mask = io_.size == 1 ? 0xFFu : io_.size == 2 ? 0xFFFFu : 0;
    const std::uint64_t rax = reg(UC_X86_REG_RAX);
    set_reg(UC_X86_REG_RAX, mask == 0 ? io_.value : (rax & ~mask) | (io_.value & mask));  // a 32-bit write zero-extends
  }
  set_reg(UC_X86_REG_RIP, io_.rip + io_.len);
}

void UnicornVcpu::uncount_tail(std::uint64_t rip) {
  if (cur_ == nullptr || rip < cur_->addr || rip >= cur_->addr + cur_->size) return;
  const Block& b = *cur_;
  std::uint64_t tail = 0;
  for (std::uint16_t off : b.offsets)
    if (b.addr + off >= rip) ++tail;
  insns_ -= std::min(insns_, tail);
}

UnicornVcpu::Block& UnicornVcpu::decode(Block& b, std::uint64_t addr, std::uint32_t size) {
  b.addr = addr;
  b.size = size;
  b.count = 0;
  code_lo_ = std::min(code_lo_, addr);  // every block is decoded before it first runs
  code_hi_ = std::max(code_hi_, addr + size);
  b.promotable = false;
  b.fast = false;
  b.plain = false;  // on_block_slow decides, once the block's RDTSC successors are hooked
  b.ready = 0;
  b.rdtsc_end = 0;
  b.hot = 0;
  b.offsets.clear();
  b.after_rdtsc.clear();
  b.rdtsc_before.clear();
  b.stores.clear();
  b.loads.clear();
  b.io.clear();
  b.io_len.clear();
  std::vector<std::uint8_t> bytes(size);
  if (uc_mem_read(uc_, addr, bytes.data(), size) != UC_ERR_OK) {
    b.count = 1;
    b.offsets.push_back(0);
    return b;
  }
  ++decoded_;
  const csh h = reinterpret_cast<csh>(cs_);
  const std::uint8_t* code = bytes.data();
  std::size_t left = size;
  std::uint64_t pc = addr;
  cs_insn* insn = cs_malloc(h);
  bool counted = true;  // every instruction makes a known number (0 or 1) of stores
  while (left > 0 && cs_disasm_iter(h, &code, &left, &pc, insn)) {
    const auto off = static_cast<std::uint16_t>(insn->address - addr);
    b.offsets.push_back(off);
    const InsnMemory m = classify(*insn);
    if (m.load) b.loads.push_back(off);
    if (m.stores == 1) b.stores.push_back(off);
    counted = counted && m.stores >= 0;
    if (insn->id == X86_INS_IN || insn->id == X86_INS_OUT) {
      b.io.push_back(off);
      b.io_len.push_back(static_cast<std::uint8_t>(insn->size));
    }
    if (insn->id == X86_INS_RDTSC || insn->id == X86_INS_RDTSCP) {
      b.after_rdtsc.push_back(static_cast<std::uint16_t>(insn->address + insn->size - addr));
      b.rdtsc_before.push_back(static_cast<std::uint16_t>(b.offsets.size()));  // instructions up to the RDTSC
    }
  }
  cs_free(insn, 1);
  if (left > 0) b.offsets.push_back(static_cast<std::uint16_t>(size - left));  // undecodable tail: one instruction
  b.count = static_cast<std::uint32_t>(b.offsets.size());
  b.promotable = hookless_ && counted && left == 0 && (hookless_stores_ || b.stores.empty());
  if (!b.after_rdtsc.empty() && b.after_rdtsc.back() == size) b.rdtsc_end = addr + size;
  return b;
}

void UnicornVcpu::stop_before(std::uint64_t addr) {
  // The block has not started. RIP is written once the emulation has returned: Unicorn
  // re-derives it from the block at the exit only when no UC_HOOK_CODE is installed (the RDTSC
  // hooks are), and EIP can be stale after chained blocks. (Writing RIP here would not stop:
  // Unicorn treats it as "continue at the new RIP".)
  stopped_before_ = addr;
  has_stopped_before_ = true;
  uc_emu_stop(uc_);
}

void UnicornVcpu::on_block_slow(std::uint64_t addr, std::uint32_t size) {
  // A stop is pending: Unicorn calls the block hook before its exit check, so this block
  // will not run. It must not be counted.
  if ((attention_ & kStops) != 0) return;
  if (insns_ >= limit_) {
    attend(kBudgetStop);
    stop_before(addr);
    return;
  }
  Block* bp = &blocks_[block_index(addr, size)];
  if (bp->addr != addr || bp->size != size) bp = &decode(*bp, addr, size);
  Block& b = *bp;
  // RDTSC found for the first time: hook the next instruction, retranslate, restart here.
  bool fresh = false;
  for (std::uint16_t off : b.after_rdtsc) {
    const std::uint64_t next = addr + off;
    if (std::find(rdtsc_hooked_.begin(), rdtsc_hooked_.end(), next) != rdtsc_hooked_.end()) continue;
    uc_hook h = 0;
    uc_hook_add(uc_, &h, UC_HOOK_CODE, reinterpret_cast<void*>(tramp_rdtsc), this, next, next);
    rdtsc_hooked_.push_back(next);
    flush_.emplace_back(addr, addr + size);
    flush_.emplace_back(next, next + 1);
    fresh = true;
  }
  if (fresh) {
    attend(kMaintenance);
    stop_before(addr);
    return;
  }
  const std::uint64_t g0 = addr >> model::kPageShift, g1 = (addr + size - 1) >> model::kPageShift;
  b.plain = g0 == g1 && g1 < flags_.size();  // every RDTSC successor of the block is hooked by now
  // Fetch check of the block's pages (one page, executable: the common case).
  if (g0 != g1 || g0 >= flags_.size() || (flags_[g0] & pageflag::kFetch) == 0) {
    const HookScope scope(*this, HookKind::kFetch, addr);
    for (std::uint64_t g = g0; g <= g1; ++g) {
      if (g < flags_.size() && (flags_[g] & pageflag::kFetch) != 0) continue;
      if (!exits_.slow_access(g << model::kPageShift, model::Access::kFetch)) {
        attend(kWantStop);
        uc_emu_stop(uc_);
        return;
      }
    }
  }
  // A hot block is retranslated without the memory hooks; the hook is deleted now so
  // that Unicorn drops it when this emulation ends. Stop before the block (it is not counted).
  const std::size_t idx = block_index(addr, size);  // decode() fills the slot it is given
  if (mem_hook_ != 0 && b.promotable && !b.fast && xo_pages_ == 0 && ++b.hot >= kPromoteAfter) promote_.push_back(idx);
  if (!promote_.empty() || read_lost_ || (xo_pages_ > 0 && fast_count_ > 0)) {
    if (!promote_.empty() && mem_hook_ != 0) {
      uc_hook_del(uc_, mem_hook_);
      mem_hook_ = 0;
      readd_after_promote_ = true;
    }
    attend(kMaintenance);
    stop_before(addr);
    return;
  }
  if (g0 < flags_.size()) fetch_lookup(g0);
  // Until the next epoch, on_block may skip all of the above for this block: its pages keep
  // their flags and TLB entries (a lookup that hits changes nothing), no stop is pending, and
  // it is not counting executions towards a promotion.
  if (b.plain && attention_ == 0 && !(b.promotable && !b.fast) && (flags_[g0] & pageflag::kFetch) != 0) b.ready = epoch_;
  enter(b);
}

void UnicornVcpu::on_rdtsc_next(std::uint64_t addr) {
  // Only a fall-through from the RDTSC counts: inside the current block, or from the end of
  // the previous block when that block ended right before this address.
  if (cur_ == nullptr) return;
  const Block& b = *cur_;
  std::uint64_t before = 0;  // instructions of the block that precede `addr`
  bool after = false;
  if (addr > b.addr && addr < b.addr + b.size) {
    const std::uint16_t off = static_cast<std::uint16_t>(addr - b.addr);
    for (std::size_t i = 0; i < b.after_rdtsc.size() && !after; ++i)
      if (b.after_rdtsc[i] == off) {
        after = true;
        before = b.rdtsc_before[i];
      }
  } else if (addr == b.addr && prev_rdtsc_end_ == addr) {
    after = true;
  }
  if (!after) return;
  const std::uint64_t retired = insns_ - b.count + before;
  const std::uint64_t tsc = exits_.guest_tsc(retired);
  set_reg(UC_X86_REG_RAX, tsc & 0xFFFFFFFFu);
  set_reg(UC_X86_REG_RDX, tsc >> 32);
  ++rdtsc_fixed_;
}

void UnicornVcpu::check_access(bool write) {
  // A hooked translation writes RIP before each load and store (gen_op_ld_v/gen_op_st_v in
  // Unicorn's i386 translate.c); atomics, SSE and helpers do not, and fail the check.
  Block& b = *cur_;
  const std::uint64_t rip = reg(UC_X86_REG_RIP);
  if (write) {
    if (store_seq_ >= b.stores.size() || rip != b.addr + b.stores[store_seq_]) b.promotable = false;
    return;
  }
  if (b.stores.empty()) return;  // a load-only block needs no load map (see exit_rip)
  const auto [lo, hi] = load_window(b);
  const bool found = rip >= b.addr && rip - b.addr < b.size &&
                     std::find(b.loads.begin(), b.loads.end(), static_cast<std::uint16_t>(rip - b.addr)) != b.loads.end();
  if (!found || static_cast<std::int64_t>(rip - b.addr) <= lo || static_cast<std::int64_t>(rip - b.addr) > hi)
    b.promotable = false;
}

std::pair<std::int64_t, std::int64_t> UnicornVcpu::load_window(const Block& b) const {
  const std::int64_t lo = store_seq_ > 0 && store_seq_ <= b.stores.size() ? b.stores[store_seq_ - 1] : -1;
  const std::int64_t hi = store_seq_ < b.stores.size() ? b.stores[store_seq_] : static_cast<std::int64_t>(b.size);
  return {lo, hi};
}

void UnicornVcpu::demote(Block& b) {
  // More stores than decoded: the block goes back to a hooked translation at the next run
  // (not now: a stop from a memory hook would resume at the block's start).
  b.promotable = false;
  ++store_mismatches_;
  flush_.emplace_back(b.addr, b.addr + b.size);
}

std::uint64_t UnicornVcpu::exit_rip() const {
  // A hook-less translation does not write RIP before its accesses; it is derived from the
  // decoded block instead. Everywhere else Unicorn's RIP is exact.
  if (hook_ == HookKind::kFetch) return hook_addr_;
  if (hook_ == HookKind::kIo) return io_.rip;
  if (hook_ == HookKind::kNone || cur_ == nullptr || !cur_->fast) return reg(UC_X86_REG_RIP);
  const Block& b = *cur_;
  if (hook_ == HookKind::kStore)  // the n-th store of the block (each store reaches the hook once)
    return store_seq_ >= 1 && store_seq_ <= b.stores.size() ? b.addr + b.stores[store_seq_ - 1] : reg(UC_X86_REG_RIP);
  // A load lies after the last store and up to the next one (inclusive: an instruction that
  // loads and stores loads first): the first decoded load there, exact when it is the only one.
  const auto [lo, hi] = load_window(b);
  for (std::uint16_t off : b.loads)
    if (off > lo && off <= hi) return b.addr + off;
  return reg(UC_X86_REG_RIP);
}

void UnicornVcpu::on_mem(bool write, std::uint64_t addr, int size) {
  ++(write ? write_hooks_ : read_hooks_);
  if (cur_ != nullptr) {
    if (!cur_->fast && cur_->promotable) check_access(write);
    if (write && cur_->fast && store_seq_ >= cur_->stores.size()) demote(*cur_);
  }
  const HookScope scope(*this, write ? HookKind::kStore : HookKind::kLoad);
  store_seq_ += write ? 1 : 0;
  const std::uint64_t g0 = addr >> model::kPageShift;
  if (g0 >= flags_.size()) return;
  const std::uint8_t need = write ? pageflag::kWrite : pageflag::kRead;
  const std::uint64_t g1 = std::min<std::uint64_t>((addr + static_cast<std::uint64_t>(size) - 1) >> model::kPageShift,
                                                   flags_.size() - 1);
  for (std::uint64_t g = g0; g <= g1; ++g) {
    if ((flags_[g] & need) != 0) continue;
    if (!exits_.slow_access(g == g0 ? addr : g << model::kPageShift, write ? model::Access::kWrite : model::Access::kRead)) {
      request_stop();
      return;
    }
  }
  if (tlb_) tlb_access(g0, flags_[g0]);
  if (record_writes_ && write) written_.push_back(g0);
}

bool UnicornVcpu::read(std::uint64_t gpa, void* out, std::size_t n) const {
  return uc_mem_read(uc_, gpa, out, n) == UC_ERR_OK;
}

std::pair<unsigned, std::string> UnicornVcpu::decode_one(std::uint64_t rip) const {
  std::uint8_t bytes[16] = {};
  if (uc_mem_read(uc_, rip, bytes, sizeof bytes) != UC_ERR_OK) return {0, ""};
  const csh h = reinterpret_cast<csh>(cs_);
  cs_insn* insn = nullptr;
  const std::size_t n = cs_disasm(h, bytes, sizeof bytes, rip, 1, &insn);
  if (n == 0) return {0, ""};
  std::pair<unsigned, std::string> out{insn[0].size, insn[0].mnemonic};
  cs_free(insn, n);
  return out;
}

}  // namespace baton::sim
