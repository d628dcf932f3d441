// baton vmm-worker: the second VMM process of a local migration (docs/kvm-backend.md).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "baton/hw/worker.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

struct WorkerCliOptions {
  std::string socket;
  int fd = -1;
  double timeout_s = 60;
  int timeout_ms = -1;  // the old spelling, still accepted (hidden)
  int spin_before_ms = 0;
  int spin_ms = 1'000;
};

// Connects to a UNIX stream socket; errors name the path.
Result<hw::Fd> connect_unix(const std::string& path) {
  sockaddr_un a{};
  if (path.size() >= sizeof a.sun_path) return make_error("--socket '" + path + "' is longer than a UNIX socket path may be");
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  hw::Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return make_error(std::string("socket(AF_UNIX) failed: ") + std::strerror(errno));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return make_error("cannot connect to " + path + ": " + std::strerror(errno));
  return s;
}

void run_worker(const WorkerCliOptions& o) {
  if (o.socket.empty() == (o.fd < 0)) return fail("give exactly one of --socket PATH or --fd N");
  if (o.spin_before_ms < 0 || o.spin_before_ms > 3'600'000) return fail("--spin-before-ms must be within 0..3600000");
  if (o.spin_ms < 0 || o.spin_ms > 3'600'000) return fail("--spin-ms must be within 0..3600000");
  hw::Fd owned;
  int sock = o.fd;
  if (!o.socket.empty()) {
    auto s = connect_unix(o.socket);
    if (!s) return fail(s.error().message);
    owned = std::move(*s);
    sock = owned.get();
  }
  hw::WorkerOptions wo;
  if (!(o.timeout_s > 0) || o.timeout_s > 86400) return fail("--timeout must be within 0..86400 seconds");
  wo.timeout_ms = o.timeout_ms >= 0 ? o.timeout_ms : static_cast<int>(o.timeout_s * 1000);
  wo.device = hw::kvm_device();
  wo.spin_before_ms = o.spin_before_ms;
  wo.spin_ms = o.spin_ms;
  if (const char* d = std::getenv("BATON_WORKER_DIE_AT")) wo.die_at = d;  // tests: SIGKILL at a phase
  if (const char* k = std::getenv("BATON_WORKER_KEEP_TSC_OFFSET"); k != nullptr && std::string(k) == "1")
    wo.keep_tsc_offset = true;  // tests: a TSC offset the worker's KVM ignores, on any host
  if (const char* rt = std::getenv("BATON_KVM_RT"); rt != nullptr && std::string(rt) == "0") wo.realtime = false;
  auto r = hw::serve_worker(sock, wo);
  if (!r) return fail(r.error().message);
  std::printf("worker %d: guest exited with code %u, checksum 0x%llx, resumed at %llu ns (CLOCK_MONOTONIC)\n",
              static_cast<int>(::getpid()), r->ports.exit_code, static_cast<unsigned long long>(r->ports.checksum),
              static_cast<unsigned long long>(r->resumed_ns));
}

}  // namespace

void register_vmm_worker(CLI::App& app) {
  auto o = std::make_shared<WorkerCliOptions>();
  CLI::App* c = app.add_subcommand(
      "vmm-worker", "The receiving VMM of a local migration: adopts the guest memfd and vCPU state over a UNIX socket");
  c->add_option("--socket", o->socket, "Connect to the source VMM at this UNIX socket path");
  c->add_option("--fd", o->fd, "Use this inherited, connected socket fd instead");
  c->add_option("--timeout", o->timeout_s, "Seconds to wait for each message (as every baton --timeout)")
      ->capture_default_str();
  c->add_option("--timeout-ms", o->timeout_ms, "")->group("");  // the old spelling in milliseconds
  c->add_option("--spin-before-ms", o->spin_before_ms,
                "Spin on the state mailbox for up to this many ms before the pause instead of sleeping until the "
                "source wakes it (no wake-up inside the downtime; costs this process's CPU meanwhile)")
      ->capture_default_str();
  c->add_option("--spin-ms", o->spin_ms,
                "Once the source wakes it at the pause, spin on the state mailbox for up to this many ms (0: sleep "
                "until the source says the state is posted; for a worker that shares the source's CPU)")
      ->capture_default_str();
  c->callback([o] { run_worker(*o); });
}

}  // namespace baton::cli
