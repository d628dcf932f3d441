// The host reference: runs a built-in guest's workload code on the host with recording hooks,
// so that the expected checksum comes from the very same C source the guest runs.
#include <new>
#include <vector>

#include "baton/guests/abi.hpp"
#include "baton/guests/registry.hpp"
#include "workloads.hpp"

namespace baton::guests {

namespace {

// Host-side state behind the environment's hooks: the port recorder and the synthetic TSC.
struct HostPorts {
  PortRecorder ports;
  std::uint64_t tsc = 0;
};

// Returns the host state behind an environment.
HostPorts& host(baton_env* env) { return *static_cast<HostPorts*>(env->ctx); }

// Announces a sync point, as an OUT to the sync port would.
void host_sync(baton_env* env, std::uint32_t stage) { host(env).ports.out(kPortSync, 4, stage); }

// Reads the input port.
std::uint32_t host_input(baton_env* env) { return host(env).ports.in(kPortInput, 4).value; }

// Writes a console byte.
void host_console(baton_env* env, std::uint8_t byte) { host(env).ports.out(kPortConsole, 1, byte); }

// Returns a synthetic TSC that advances by 1000 per read.
std::uint64_t host_rdtsc(baton_env* env) { return host(env).tsc += 1000; }

// Reports a result through the three result ports.
void host_result(baton_env* env, std::uint32_t tag, std::uint64_t value) {
  PortRecorder& p = host(env).ports;
  p.out(kPortResultTag, 4, tag);
  p.out(kPortResultLo, 4, static_cast<std::uint32_t>(value));
  p.out(kPortResultHi, 4, static_cast<std::uint32_t>(value >> 32));
}

const baton_env_ops kHostOps = {host_sync, host_input, host_console, host_rdtsc, host_result};

// The largest working set the reference allocates on the host.
constexpr std::uint64_t kMaxReferenceArena = std::uint64_t{16} << 30;

}  // namespace

Result<GuestRun> reference_run(std::string_view name, std::span<const Param> params) {
  auto guest = get_builtin(name);
  if (!guest) return guest.error();
  auto full = complete_params(**guest, params);
  if (!full) return full.error();
  const detail::WorkloadOps* w = detail::find_workload(name);
  if (w == nullptr) return make_error("guest '" + std::string(name) + "' has no host-side workload");
  const baton_boot boot = detail::boot_with_params(*full);
  if (const char* why = w->validate(&boot)) return make_error(std::string(name) + ": bad parameters: " + why);
  const std::uint64_t need = w->arena_bytes(&boot, 1);
  if (need > kMaxReferenceArena)
    return make_error(std::string(name) + ": the host reference would need more than 16 GiB");
  std::vector<std::uint64_t> arena;
  try {
    arena.resize((need + 7) / 8 + 1);
  } catch (const std::bad_alloc&) {
    return make_error(std::string(name) + ": cannot allocate the host reference's working set");
  }
  HostPorts h{PortRecorder(baton_param(&boot, BATON_PARAM_INPUT_SEED, 0)), 0};
  baton_env env{&kHostOps, reinterpret_cast<std::uint8_t*>(arena.data()), need, 1, 0, &h};
  h.ports.out(kPortExit, 4, static_cast<std::uint32_t>(w->main(&boot, &env)));
  return h.ports.run();
}

Result<std::uint64_t> expected_result(std::string_view name, std::span<const Param> params) {
  auto run = reference_run(name, params);
  if (!run) return run.error();
  if (run->exit_code != kExitOk)
    return make_error(std::string(name) + ": the reference run exited with code " + std::to_string(run->exit_code));
  return run->checksum;
}

}  // namespace baton::guests
