// UnicornVcpu: Unicorn 2.0.1 set-up, the fast-path hooks, block decoding and counting, the
// RDTSC fix-up, the TLB model and region surgery for deviating pages.
#include "unicorn_vcpu.hpp"

#include <capstone/capstone.h>
#include <unicorn/unicorn.h>

#include <algorithm>
#include <cstring>

namespace baton::sim {

namespace {

constexpr std::size_t kBlockCacheSize = std::size_t{1} << 16;
static_assert(kBlockCacheSize == (std::size_t{1} << 16), "block_index() masks with 16 bits");
// Executions of a load-only block (translated with the memory hooks) before it is retranslated
// without them.
constexpr std::uint32_t kPromoteAfter = 8;

// Returns whether an instruction may write memory. Conservative: any memory operand that is
// the destination (operand 0) or that capstone marks as written, and every instruction that
// stores implicitly (stack, exchange, masked stores), count as writes.
bool may_store(const cs_insn& insn) {
  switch (insn.id) {
    case X86_INS_NOP: return false;  // multi-byte NOPs name a memory operand but do not access it
    case X86_INS_PUSH: case X86_INS_PUSHF: case X86_INS_PUSHFD: case X86_INS_PUSHFQ: case X86_INS_PUSHAW:
    case X86_INS_PUSHAL: case X86_INS_CALL: case X86_INS_LCALL: case X86_INS_ENTER: case X86_INS_XCHG:
    case X86_INS_XADD: case X86_INS_CMPXCHG: case X86_INS_CMPXCHG8B: case X86_INS_CMPXCHG16B:
    case X86_INS_MASKMOVQ: case X86_INS_MASKMOVDQU: case X86_INS_VMASKMOVDQU: case X86_INS_INT:
    case X86_INS_INT1: case X86_INS_INT3: case X86_INS_INTO: case X86_INS_SYSCALL: case X86_INS_SYSENTER:
      return true;
    default: break;
  }
  if (insn.detail == nullptr) return true;
  const cs_x86& x = insn.detail->x86;
  for (std::uint8_t i = 0; i < x.op_count; ++i) {
    const cs_x86_op& op = x.operands[i];
    if (op.type != X86_OP_MEM) continue;
    if (i == 0 || (op.access & CS_AC_WRITE) != 0) return true;
  }
  return false;
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

}  // namespace

// Trampolines that need the VcpuExits interface.
struct UnicornVcpuHooks {
  // Handles OUT.
  static void out(uc_engine*, std::uint32_t port, int size, std::uint32_t value, void* user) {
    static_cast<VcpuExits*>(user)->port_out(static_cast<std::uint16_t>(port), static_cast<unsigned>(size), value);
  }
  // Handles IN.
  static std::uint32_t in(uc_engine*, std::uint32_t port, int size, void* user) {
    return static_cast<VcpuExits*>(user)->port_in(static_cast<std::uint16_t>(port), static_cast<unsigned>(size));
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
      blocks_(kBlockCacheSize),
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
  cs_option(h, CS_OPT_DETAIL, CS_OPT_ON);  // operand access, for load-only blocks
  uc_hook hh;
  auto add = [&](uc_err e, const char* what) -> Result<void> {
    if (e != UC_ERR_OK) return make_error(std::string("uc_hook_add ") + what + ": " + uc_strerror(e));
    return ok_result();
  };
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_BLOCK, reinterpret_cast<void*>(tramp_block), this, 1, 0), "block"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INSN, reinterpret_cast<void*>(UnicornVcpuHooks::out), &exits_, 1, 0,
                                 UC_X86_INS_OUT), "out"));
  BATON_TRY_VOID(add(uc_hook_add(uc_, &hh, UC_HOOK_INSN, reinterpret_cast<void*>(UnicornVcpuHooks::in), &exits_, 1, 0,
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
  if (slow_pages_ == 0 && mem_hook_ != 0 && !always_watch_ && !tlb_ && !record_writes_) {
    maintenance_ = true;  // the hooks can come off: do it outside emulation
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
  tlb4k_.assign(pow2(e4k), 0);
  tlb2m_.assign(pow2(e2m), 0);
  tlb1g_.assign(pow2(e1g), 0);
}

void UnicornVcpu::tlb_access(std::uint64_t gfn, std::uint8_t f) {
  const unsigned gl = (f >> pageflag::kGeoShift) & 3;        // guest leaf level - 1
  const unsigned el = (f >> (pageflag::kGeoShift + 2)) & 3;  // EPT leaf level - 1
  const unsigned cls = std::min(gl, el);
  std::vector<std::uint64_t>& t = cls == 0 ? tlb4k_ : cls == 1 ? tlb2m_ : tlb1g_;
  const std::uint64_t tag = (gfn >> (9 * cls)) + 1;
  std::uint64_t& slot = t[tag & (t.size() - 1)];
  if (slot == tag) return;
  slot = tag;
  last_fetch_gfn_ = ~std::uint64_t{0};  // a miss may have evicted the last fetched page
  ++tlb_misses_;
  tlb_refs_ += (4 - gl + 1) * (4 - el + 1) - 1;  // 2D walk (Bhargava et al.)
}

void UnicornVcpu::update_watch() {
  const bool need = always_watch_ || tlb_ || record_writes_ || slow_pages_ > 0;
  if (need && mem_hook_ == 0) {
    uc_hook h = 0;
    uc_hook_add(uc_, &h, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, reinterpret_cast<void*>(tramp_mem), this, 1, 0);
    mem_hook_ = h;
    if (readd_after_promote_) {
      readd_after_promote_ = false;  // the hook was only off to retranslate load-only blocks
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
  for (Block& b : blocks_) {
    b.fast = false;
    b.hot = 0;
  }
  fast_count_ = 0;
  ++fast_drops_;
}

void UnicornVcpu::retranslate_fast() {
  // The memory hook was deleted inside the last emulation, so Unicorn has dropped it from its
  // hook lists by now: what is translated here uses the inline softmmu fast path.
  for (std::size_t idx : promote_) {
    Block& b = blocks_[idx];
    if (!b.load_only || b.fast) continue;
    uc_ctl_remove_cache(uc_, b.addr, b.addr + b.size);
    uc_tb tb{};
    if (uc_ctl_request_cache(uc_, b.addr, &tb) == UC_ERR_OK && tb.pc == b.addr && tb.size == b.size) {
      b.fast = true;
      ++fast_count_;
    } else {
      // Not the same block (or no block): drop it and leave this address hooked.
      uc_ctl_remove_cache(uc_, b.addr, b.addr + b.size);
      b.load_only = false;
    }
  }
  promote_.clear();
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
  want_stop_ = true;
  if (uc_ != nullptr) uc_emu_stop(uc_);
}

VcpuStop UnicornVcpu::run(std::uint64_t insn_limit) {
  update_watch();
  if (!flush_.empty()) {
    for (const auto& [b, e] : flush_) uc_ctl_remove_cache(uc_, b, e);
    flush_.clear();
    unfast_all();
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
  want_stop_ = budget_stop_ = maintenance_ = false;
  in_block_ = false;
  prev_block_rdtsc_end_ = 0;
  const std::uint64_t rip = reg(UC_X86_REG_RIP);
  VcpuStop s;
  has_stopped_before_ = false;
  s.uc_error = uc_emu_start(uc_, rip, ~std::uint64_t{0}, 0, 0);
  if (has_stopped_before_ && s.uc_error == UC_ERR_OK) set_reg(UC_X86_REG_RIP, stopped_before_);
  if (!promote_.empty()) retranslate_fast();
  s.rip = reg(UC_X86_REG_RIP);
  // An error or a stop requested from an I/O hook can leave the block early: the
  // instructions from RIP on were counted at block entry but did not run.
  if (s.uc_error != UC_ERR_OK || want_stop_) uncount_tail(s.rip);
  s.requested = want_stop_;
  s.budget = budget_stop_;
  s.maintenance = maintenance_;
  return s;
}

void UnicornVcpu::uncount_tail(std::uint64_t rip) {
  if (!in_block_ || rip < cur_block_addr_ || rip >= cur_block_addr_ + cur_block_size_) return;
  const Block& b = blocks_[cur_block_];
  std::uint64_t tail = 0;
  for (std::uint16_t off : b.offsets)
    if (cur_block_addr_ + off >= rip) ++tail;
  insns_ -= std::min(insns_, tail);
}

UnicornVcpu::Block& UnicornVcpu::block(std::uint64_t addr, std::uint32_t size) {
  Block& b = blocks_[block_index(addr, size)];
  if (b.addr == addr && b.size == size) return b;
  return decode(b, addr, size);
}

UnicornVcpu::Block& UnicornVcpu::decode(Block& b, std::uint64_t addr, std::uint32_t size) {
  b.addr = addr;
  b.size = size;
  b.count = 0;
  code_lo_ = std::min(code_lo_, addr);  // every block is decoded before it first runs
  code_hi_ = std::max(code_hi_, addr + size);
  b.load_only = false;
  b.fast = false;
  b.hot = 0;
  b.offsets.clear();
  b.after_rdtsc.clear();
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
  bool stores = false;
  while (left > 0 && cs_disasm_iter(h, &code, &left, &pc, insn)) {
    b.offsets.push_back(static_cast<std::uint16_t>(insn->address - addr));
    stores = stores || may_store(*insn);
    if (insn->id == X86_INS_RDTSC || insn->id == X86_INS_RDTSCP)
      b.after_rdtsc.push_back(static_cast<std::uint16_t>(insn->address + insn->size - addr));
  }
  cs_free(insn, 1);
  if (left > 0) b.offsets.push_back(static_cast<std::uint16_t>(size - left));  // undecodable tail: one instruction
  b.count = static_cast<std::uint32_t>(b.offsets.size());
  b.load_only = !stores && left == 0;
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

void UnicornVcpu::on_block(std::uint64_t addr, std::uint32_t size) {
  // A stop is pending: Unicorn calls the block hook before its exit check, so this block
  // will not run. It must not be counted.
  if (want_stop_ || maintenance_ || budget_stop_) return;
  if (insns_ >= limit_) {
    budget_stop_ = true;
    stop_before(addr);
    return;
  }
  Block* bp = &blocks_[block_index(addr, size)];
  if (bp->addr != addr || bp->size != size) bp = &decode(*bp, addr, size);
  Block& b = *bp;
  // RDTSC found for the first time: hook the next instruction, retranslate, restart here.
  bool fresh = false;
  if (!b.after_rdtsc.empty()) for (std::uint16_t off : b.after_rdtsc) {
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
    maintenance_ = true;
    stop_before(addr);
    return;
  }
  // Fetch check of the block's pages (one page, executable: the common case).
  const std::uint64_t g0 = addr >> model::kPageShift, g1 = (addr + size - 1) >> model::kPageShift;
  if (g0 != g1 || g0 >= flags_.size() || (flags_[g0] & pageflag::kFetch) == 0) {
    for (std::uint64_t g = g0; g <= g1; ++g) {
      if (g < flags_.size() && (flags_[g] & pageflag::kFetch) != 0) continue;
      if (!exits_.slow_access(g << model::kPageShift, model::Access::kFetch)) {
        want_stop_ = true;
        uc_emu_stop(uc_);
        return;
      }
    }
  }
  // A hot load-only block is retranslated without the memory hooks; the hook is deleted now so
  // that Unicorn drops it when this emulation ends. Stop before the block (it is not counted).
  const std::size_t idx = static_cast<std::size_t>(&b - blocks_.data());
  if (mem_hook_ != 0 && b.load_only && !b.fast && xo_pages_ == 0 && ++b.hot >= kPromoteAfter) promote_.push_back(idx);
  if (!promote_.empty() || read_lost_ || (xo_pages_ > 0 && fast_count_ > 0)) {
    if (!promote_.empty() && mem_hook_ != 0) {
      uc_hook_del(uc_, mem_hook_);
      mem_hook_ = 0;
      readd_after_promote_ = true;
    }
    maintenance_ = true;
    stop_before(addr);
    return;
  }
  // A fetch from the page of the previous fetch, with no TLB miss and no flags change since,
  // hits the entry that fetch left: the lookup would change nothing, so it is skipped.
  if (tlb_ && g0 < flags_.size() && g0 != last_fetch_gfn_) {
    tlb_access(g0, flags_[g0]);
    last_fetch_gfn_ = g0;
  }
  // The previous block fell through from an RDTSC into this one?
  prev_block_rdtsc_end_ = in_block_ && cur_ends_rdtsc_ && cur_block_addr_ + cur_block_size_ == addr ? addr : 0;
  cur_block_ = idx;
  cur_block_addr_ = addr;
  cur_block_size_ = size;
  cur_ends_rdtsc_ = !b.after_rdtsc.empty() && b.after_rdtsc.back() == size;
  in_block_ = true;
  insns_ += b.count;
}

void UnicornVcpu::on_rdtsc_next(std::uint64_t addr) {
  // Only a fall-through from the RDTSC counts: inside the current block, or from the end of
  // the previous block when that block ended right before this address.
  const Block& b = blocks_[cur_block_];
  std::uint64_t before = 0;  // instructions of the block that precede `addr`
  bool after = false;
  if (addr > cur_block_addr_ && addr < cur_block_addr_ + cur_block_size_) {
    const std::uint16_t off = static_cast<std::uint16_t>(addr - cur_block_addr_);
    after = std::find(b.after_rdtsc.begin(), b.after_rdtsc.end(), off) != b.after_rdtsc.end();
    for (std::uint16_t o : b.offsets) before += o < off ? 1 : 0;
  } else if (addr == cur_block_addr_ && prev_block_rdtsc_end_ == addr) {
    after = true;
  }
  if (!after) return;
  const std::uint64_t retired = insns_ - b.count + before;
  const std::uint64_t tsc = exits_.guest_tsc(retired);
  set_reg(UC_X86_REG_RAX, tsc & 0xFFFFFFFFu);
  set_reg(UC_X86_REG_RDX, tsc >> 32);
  ++rdtsc_fixed_;
}

void UnicornVcpu::on_mem(bool write, std::uint64_t addr, int size) {
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
