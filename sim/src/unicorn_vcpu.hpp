// UnicornVcpu (private to sim/): one vCPU on Unicorn 2.0.1 whose address space is
// guest-physical. Memslots are mapped once onto their host backing; the EPT is enforced in
// the fast path (memory hooks and a per-block fetch check) against per-page flags that mirror
// the EPT entries; instructions are counted per translated block (decoded once with
// capstone); RDTSC/RDTSCP get the modelled TSC through a code hook on the next instruction.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "baton/model/ept_walk.hpp"
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

struct uc_struct;

namespace baton::sim {

// Per-page flags: the fast path lets an access through when its bit is set.
namespace pageflag {
inline constexpr std::uint8_t kRead = 1;    // readable, A already set (or A/D off)
inline constexpr std::uint8_t kWrite = 2;   // writable, D already set (or A/D off), not tracked
inline constexpr std::uint8_t kFetch = 4;   // executable, A already set
inline constexpr std::uint8_t kAll = 7;
inline constexpr unsigned kGeoShift = 3;    // bits 6:3: guest levels - 2 (2 bits), EPT levels - 2 (2 bits)
}  // namespace pageflag

// What the vCPU asks of its owner (the machine) when the fast path cannot decide.
class VcpuExits {
 public:
  virtual ~VcpuExits() = default;
  // Handles an access the flags do not allow; returns false when the run must stop.
  virtual bool slow_access(std::uint64_t gpa, model::Access a) = 0;
  // Handles OUT to a port.
  virtual void port_out(std::uint16_t port, unsigned size, std::uint32_t value) = 0;
  // Handles IN from a port.
  virtual std::uint32_t port_in(std::uint16_t port, unsigned size) = 0;
  // Handles CPUID (registers through the vCPU).
  virtual void cpuid() = 0;
  // Handles an MMIO read or write at a GPA.
  virtual std::uint64_t mmio_read(std::uint64_t gpa, unsigned size) = 0;
  virtual void mmio_write(std::uint64_t gpa, unsigned size, std::uint64_t value) = 0;
  // Handles a CPU exception the guest raised.
  virtual void exception(std::uint32_t vector) = 0;
  // Returns the guest TSC after `insns` guest instructions have retired.
  virtual std::uint64_t guest_tsc(std::uint64_t insns) = 0;
};

// Why uc_emu_start returned.
struct VcpuStop {
  int uc_error = 0;          // uc_err
  bool requested = false;    // the machine asked to stop
  bool budget = false;       // the instruction limit was reached (before a block)
  bool maintenance = false;  // hooks or caches need work outside emulation
  std::uint64_t rip = 0;
};

class UnicornVcpu {
 public:
  UnicornVcpu(VcpuExits& exits, std::uint64_t gpa_limit);
  ~UnicornVcpu();
  UnicornVcpu(const UnicornVcpu&) = delete;
  UnicornVcpu& operator=(const UnicornVcpu&) = delete;

  // Opens Unicorn and installs the permanent hooks.
  Result<void> open();
  // Maps guest-physical [gpa, gpa + size) onto host memory.
  Result<void> map_ram(std::uint64_t gpa, std::uint64_t size, std::uint8_t* host);
  // Maps an MMIO range (accesses go to VcpuExits::mmio_*).
  Result<void> map_mmio(std::uint64_t gpa, std::uint64_t size);
  // Points one guest page at other host memory (a deviating EPT leaf), or back at `host`.
  Result<void> remap_page(std::uint64_t gpa, std::uint8_t* host);

  // Writes the whole architectural state into Unicorn.
  Result<void> set_state(const model::VcpuState& v);
  // Reads the state back, keeping fields Unicorn does not hold from `base`.
  model::VcpuState get_state(const model::VcpuState& base) const;
  std::uint64_t reg(int id) const;
  void set_reg(int id, std::uint64_t v);

  // Runs until a stop; `insn_limit` is the absolute instruction count to stop before.
  VcpuStop run(std::uint64_t insn_limit);
  // Asks the running emulation to stop at the next block boundary.
  void request_stop();

  // Sets the flags of `count` pages from `gfn`.
  void set_flags(std::uint64_t gfn, std::uint64_t count, std::uint8_t flags);
  std::uint8_t flags(std::uint64_t gfn) const { return gfn < flags_.size() ? flags_[gfn] : 0; }
  // Keeps the memory hooks on even when every page is fast (TLB model, write recording).
  void set_always_watch(bool on) { always_watch_ = on; }
  // Enables the TLB model with entries per size (powers of two).
  void set_tlb(bool on, std::uint64_t e4k, std::uint64_t e2m, std::uint64_t e1g);
  // Lets hot blocks run without the memory hooks (on by default; off, every access is hooked).
  void set_hookless(bool on) { hookless_ = on; }
  // Records the gfn of every data write (tests).
  void set_record_writes(bool on) { record_writes_ = on; }
  const std::vector<std::uint64_t>& written_gfns() const { return written_; }
  void clear_written() { written_.clear(); }
  // Reads guest-physical memory as the guest sees it (through remapped pages).
  bool read(std::uint64_t gpa, void* out, std::size_t n) const;

  std::uint64_t instructions() const { return insns_; }
  void set_instructions(std::uint64_t n) { insns_ = n; }
  std::uint64_t tlb_misses() const { return tlb_misses_; }
  std::uint64_t tlb_walk_refs() const { return tlb_refs_; }
  std::uint64_t blocks_decoded() const { return decoded_; }
  std::uint64_t rdtsc_fixed() const { return rdtsc_fixed_; }
  std::uint64_t hook_toggles() const { return hook_toggles_; }
  bool watching() const { return mem_hook_ != 0; }
  // Blocks retranslated without the memory hooks since the last full drop (and the drops).
  std::uint64_t fast_blocks() const { return fast_count_; }
  std::uint64_t fast_drops() const { return fast_drops_; }
  // Softmmu flushes done because a page lost its read permission.
  std::uint64_t softmmu_flushes() const { return softmmu_flushes_; }
  // Block executions, and those that ran a hook-less translation.
  std::uint64_t block_execs() const { return block_execs_; }
  std::uint64_t hookless_execs() const { return hookless_execs_; }
  // Retranslations without the hooks, and hook-less blocks Unicorn retranslated with them.
  std::uint64_t promotions() const { return promotions_; }
  std::uint64_t fast_lost() const { return fast_lost_; }
  // The guest RIP of the access or I/O instruction being handled: from the decoded block for
  // an IN/OUT and inside a hook-less translation (Unicorn does not write RIP there), else Unicorn's.
  std::uint64_t exit_rip() const;
  // Hook-less blocks that stored more often than decoded (sent back to the hooks).
  std::uint64_t store_mismatches() const { return store_mismatches_; }
  // Calls of the memory hook for loads and for stores.
  std::uint64_t read_hooks() const { return read_hooks_; }
  std::uint64_t write_hooks() const { return write_hooks_; }
  // Number of Unicorn memory regions.
  std::uint64_t regions() const;
  // Returns the length of the instruction at `rip` and its capstone mnemonic ("" if unknown).
  std::pair<unsigned, std::string> decode_one(std::uint64_t rip) const;

  // Callbacks (public for the C trampolines). on_block is the block hook; its common case is
  // inline: a block that on_block_slow checked in the current epoch (one page, executable, its
  // fetch looked up in the TLB model, not due for a promotion) just counts its instructions.
  void on_block(std::uint64_t addr, std::uint32_t size) {
    Block* b = blocks_.find(block_index(addr, size));
    if (b != nullptr && b->ready == epoch_ && b->addr == addr && b->size == size && insns_ < limit_) {
      enter(*b);
      return;
    }
    on_block_slow(addr, size);
  }
  void on_block_slow(std::uint64_t addr, std::uint32_t size);
  void on_mem(bool write, std::uint64_t addr, int size);
  void on_rdtsc_next(std::uint64_t addr);
  void on_tb_generated(std::uint64_t pc, std::uint32_t size);
  void on_out(std::uint16_t port, unsigned size, std::uint32_t value);
  std::uint32_t on_in(std::uint16_t port, unsigned size);

 private:
  struct Block {
    std::uint64_t addr = ~std::uint64_t{0};
    std::uint64_t ready = 0;      // the epoch in which on_block may skip every check (0: never)
    std::uint32_t size = 0;
    std::uint32_t count = 0;
    std::uint64_t rdtsc_end = 0;  // addr + size when the last instruction is RDTSC/RDTSCP, else 0
    bool promotable = false;  // every instruction makes 0 or 1 stores, and the hooked runs agreed (check_access)
    bool fast = false;       // retranslated without the memory hooks (loads take Unicorn's inline path)
    bool plain = false;      // on one page inside the flags, its RDTSC successors (if any) hooked
    std::uint32_t hot = 0;   // executions while translated with the hooks
    std::vector<std::uint16_t> offsets;  // instruction offsets inside the block
    std::vector<std::uint16_t> after_rdtsc;  // offsets of instructions right after RDTSC/RDTSCP
    std::vector<std::uint16_t> rdtsc_before;  // for each: instructions of the block before it
    std::vector<std::uint16_t> stores;       // offsets of the instructions that store, in order
    std::vector<std::uint16_t> loads;        // offsets of the instructions that may load
    std::vector<std::uint16_t> io;           // offsets of the IN and OUT instructions (not string I/O), in order
    std::vector<std::uint8_t> io_len;        // and their lengths
  };
  // The direct-mapped decode cache: 2^16 slots, a block allocated when a slot is first used.
  // Only a few hundred ever are, so a new vCPU (one per handover) neither builds nor destroys
  // 2^16 empty blocks (10 MiB); the slot table comes zeroed from calloc, untouched until read.
  class BlockCache {
   public:
    BlockCache() : slots_(static_cast<Block**>(std::calloc(kSlots, sizeof(Block*)))) { BATON_CHECK(slots_ != nullptr); }
    ~BlockCache() {
      for (std::uint32_t i : used_) delete slots_[i];
      std::free(slots_);
    }
    BlockCache(const BlockCache&) = delete;
    BlockCache& operator=(const BlockCache&) = delete;
    // The block in slot `i`, or null if the slot was never used.
    Block* find(std::size_t i) const { return slots_[i]; }
    // The block in slot `i`, created empty on first use.
    Block& operator[](std::size_t i) {
      if (slots_[i] == nullptr) {
        slots_[i] = new Block;
        used_.push_back(static_cast<std::uint32_t>(i));
      }
      return *slots_[i];
    }

   private:
    static constexpr std::size_t kSlots = std::size_t{1} << 16;
    Block** slots_;
    std::vector<std::uint32_t> used_;
  };
  // What the running memory hook (or fetch check) is handling, for exit_rip().
  enum class HookKind : std::uint8_t { kNone, kLoad, kStore, kFetch, kIo };
  // Marks the duration of a hook.
  struct HookScope {
    HookScope(UnicornVcpu& v, HookKind k, std::uint64_t addr = 0) : v_(v) {
      v_.hook_ = k;
      v_.hook_addr_ = addr;
    }
    ~HookScope() { v_.hook_ = HookKind::kNone; }
    HookScope(const HookScope&) = delete;
    HookScope& operator=(const HookScope&) = delete;
    UnicornVcpu& v_;
  };
  // Checks a hooked access against the decoded stores and loads (RIP is exact there); a block
  // that disagrees is never promoted.
  void check_access(bool write);
  // Offsets (exclusive, inclusive) between which a load of the current execution of `b` lies.
  std::pair<std::int64_t, std::int64_t> load_window(const Block& b) const;
  // Sends a hook-less block that stored more often than decoded back to the hooks.
  void demote(Block& b);
  // Decodes a block into cache entry `b`.
  Block& decode(Block& b, std::uint64_t addr, std::uint32_t size);
  // The decode cache slot of a block.
  static std::size_t block_index(std::uint64_t addr, std::uint32_t size) {
    return (addr ^ (addr >> 13) ^ size) & ((std::size_t{1} << 16) - 1);
  }
  // Makes `b` the current block and counts its instructions (it is about to run).
  void enter(Block& b) {
    store_seq_ = 0;
    io_seq_ = 0;
    prev_rdtsc_end_ = cur_rdtsc_end_;
    cur_rdtsc_end_ = b.rdtsc_end;
    cur_ = &b;
    insns_ += b.count;
    ++block_execs_;
    hookless_execs_ += b.fast ? 1 : 0;
  }
  // Starts a new epoch: every block goes through on_block_slow once more.
  void new_epoch() { ++epoch_; }
  // Asks for the block hook's slow path (a stop or maintenance) from now on.
  void attend(std::uint8_t bit) {
    attention_ |= bit;
    new_epoch();
  }
  // Counts the TLB lookup of one access; returns the entry's key (class in bits 63:62, tag).
  std::uint64_t tlb_access(std::uint64_t gfn, std::uint8_t f);
  // The TLB lookup of a block fetch from page g0. A fetch from the page of the previous fetch,
  // with no TLB miss and no flags change since, hits the entry that fetch left: the lookup
  // would change nothing, so it is skipped. The entry's key joins code_tags_.
  void fetch_lookup(std::uint64_t g0);
  // Adds or removes the memory hooks so that they are on exactly when needed.
  void update_watch();
  // Stops the emulation before the block at `addr` runs (from the block hook).
  void stop_before(std::uint64_t addr);
  // Notes the IN or OUT whose hook is starting: the io_seq_-th of the current block.
  void begin_io(bool in, unsigned size);
  // Retires the IN or OUT whose hook asked to stop (see run()).
  void complete_io();
  // Undoes the count of the instructions of the current block at or after `rip`.
  void uncount_tail(std::uint64_t rip);
  // Drops the translations of every block seen (a full tb_flush memsets Unicorn's 1 GiB code buffer).
  void drop_translations();
  // Retranslates the blocks in promote_ without the memory hooks (outside emulation, hook removed).
  void retranslate_fast();
  // Forgets which blocks are fast (their translations were dropped).
  void unfast_all();
  // Marks the fast blocks overlapping [begin, end) as hooked again (their translations are
  // gone), appending them to `redo` when given.
  void unfast_overlapping(std::uint64_t begin, std::uint64_t end, std::vector<std::size_t>* redo);
  // Empties Unicorn's softmmu TLB (a dummy mapping beyond guest memory).
  void flush_softmmu();

  VcpuExits& exits_;
  uc_struct* uc_ = nullptr;
  // The block hook's state, first (one cache line for the fast path).
  BlockCache blocks_;              // direct-mapped decode cache
  std::uint64_t epoch_ = 1;        // bumped by anything that may change a block's checks
  std::uint64_t insns_ = 0;
  std::uint64_t limit_ = ~std::uint64_t{0};
  Block* cur_ = nullptr;           // the block running (null before the first of a run)
  std::uint64_t cur_rdtsc_end_ = 0, prev_rdtsc_end_ = 0;  // rdtsc_end of the current and the previous block
  std::uint64_t block_execs_ = 0, hookless_execs_ = 0;
  std::size_t store_seq_ = 0;      // stores of the current block execution so far
  std::size_t io_seq_ = 0;         // IN/OUT instructions of the current block execution so far
  // The IN or OUT being handled (rip, length 0 when not decoded), and whether its hook asked to stop.
  struct IoInsn {
    std::uint64_t rip = 0;
    unsigned len = 0;
    bool in = false;
    unsigned size = 0;
    std::uint32_t value = 0;  // what IN returns
  };
  IoInsn io_;
  bool io_stop_ = false;
  HookKind hook_ = HookKind::kNone;
  std::uint64_t hook_addr_ = 0;    // the block address of a fetch check
  std::uint64_t store_mismatches_ = 0;
  // Bits of attention_: a stop or work that sends the block hook down its slow path.
  static constexpr std::uint8_t kWantStop = 1;     // the machine asked to stop
  static constexpr std::uint8_t kBudgetStop = 2;   // the instruction limit was reached
  static constexpr std::uint8_t kMaintenance = 4;  // hooks or caches need work outside emulation
  static constexpr std::uint8_t kStops = kWantStop | kBudgetStop | kMaintenance;
  static constexpr std::uint8_t kPageWatch = 8;    // a page lost kRead, or executable-only pages exist
  std::uint8_t attention_ = 0;
  // Sets kPageWatch from read_lost_ and xo_pages_.
  void update_page_watch() {
    const bool on = read_lost_ || xo_pages_ > 0;
    if (on) attend(kPageWatch);
    else attention_ = static_cast<std::uint8_t>(attention_ & ~kPageWatch);
  }

  std::vector<std::uint8_t> flags_;
  std::uint64_t slow_pages_ = 0;  // RAM pages whose flags are not kAll
  std::vector<std::uint8_t> is_ram_;
  std::uint64_t mem_hook_ = 0;
  std::uint64_t code_lo_ = ~std::uint64_t{0}, code_hi_ = 0;  // range of translated blocks seen
  std::vector<std::size_t> fast_list_;  // decode-cache slots of the fast blocks
  bool mem_hook_listed_ = false;        // a memory hook is in Unicorn's lists (deleted ones stay until uc_emu_start returns)
  std::uint64_t promotions_ = 0, fast_lost_ = 0;
  std::uint64_t read_hooks_ = 0, write_hooks_ = 0;
  std::vector<std::size_t> promote_;    // blocks to retranslate without the hooks
  std::uint64_t fast_count_ = 0, fast_drops_ = 0, softmmu_flushes_ = 0;
  std::uint64_t xo_pages_ = 0;          // pages executable but not readable (fast blocks are unsafe then)
  bool read_lost_ = false;              // some page lost kRead: flush the softmmu TLB before running
  bool unhooked_run_ = false;           // a run went without memory hooks: any translation may be fast
  bool readd_after_promote_ = false;    // the hook is off only for retranslate_fast()
  std::uint64_t stopped_before_ = 0;    // the block stop_before() stopped in front of
  bool has_stopped_before_ = false;
  bool always_watch_ = false;
  bool hookless_ = true;                // promotions allowed at all (set_hookless)
  bool hookless_stores_ = false;        // this Unicorn calls the write hooks for stores of hook-less blocks (2.0.1)
  std::vector<std::uint64_t> rdtsc_hooked_;              // addresses after an RDTSC with a hook
  std::vector<std::pair<std::uint64_t, std::uint64_t>> flush_;  // TB ranges to retranslate
  std::unordered_map<std::uint64_t, std::uint8_t*> ram_base_;   // page -> original host pointer
  struct Slot { std::uint64_t gpa, size; std::uint8_t* host; };
  std::vector<Slot> slots_;
  struct MmioRegion { UnicornVcpu* self; std::uint64_t base; };
  std::vector<std::unique_ptr<MmioRegion>> mmio_;
  std::vector<std::uint8_t> ff_page_;  // what a page with no host memory behind it reads as
  bool tlb_ = false;
  std::vector<std::uint64_t> tlb4k_, tlb2m_, tlb1g_;
  std::uint64_t tlb_misses_ = 0, tlb_refs_ = 0;
  std::uint64_t last_fetch_gfn_ = ~std::uint64_t{0};  // page of the last fetch lookup, while it surely hits
  // TLB entries that ready blocks fetch through: a miss that evicts one starts a new epoch, so
  // that those blocks look their fetch up again (a lookup skipped in an epoch surely hits).
  static constexpr std::size_t kMaxCodeTags = 32;
  std::vector<std::uint64_t> code_tags_;
  bool code_tags_overflow_ = false;
  bool record_writes_ = false;
  std::vector<std::uint64_t> written_;
  std::uint64_t decoded_ = 0, rdtsc_fixed_ = 0, hook_toggles_ = 0;
  void* cs_ = nullptr;  // capstone handle (csh)
};

}  // namespace baton::sim
