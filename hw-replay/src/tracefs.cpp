// The tracefs capture: a private instance, configured and always removed (baton/hw/tracefs.hpp).
#include "baton/hw/tracefs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace baton::hw {

namespace {

std::string err_text(int e) { return std::strerror(e); }

// Closes an fd if open.
void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// The tracefs mount points listed in a mounts file, /sys/kernel/tracing first.
std::vector<std::string> tracefs_mounts(const std::string& mounts_file) {
  std::vector<std::string> out;
  std::ifstream in(mounts_file);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string dev, dir, type;
    if (!(ls >> dev >> dir >> type) || type != "tracefs") continue;
    // /proc/mounts escapes blanks as \040; tracefs mount points rarely have any.
    if (dir == kTracefsDefaultPath)
      out.insert(out.begin(), dir);
    else
      out.push_back(dir);
  }
  return out;
}

const char* kNeedRoot =
    "capturing KVM events needs root (or CAP_SYS_ADMIN): run baton trace capture as root, e.g. with sudo";

// An open directory fd on the tracefs root, found in the mounts file or mounted privately.
struct Root {
  int fd = -1;
  TracefsLocation loc;
};

Result<Root> open_root(const std::string& mounts_file) {
  for (const std::string& dir : tracefs_mounts(mounts_file)) {
    const int fd = ::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == EACCES) return make_error("tracefs at " + dir + ": " + err_text(errno) + "; " + kNeedRoot);
      continue;
    }
    return Root{fd, TracefsLocation{dir, false}};
  }
  // Not mounted: mount it privately and detach it at once, keeping only our fd.
  if (::geteuid() != 0)
    return make_error(std::string("tracefs is not mounted and only root can mount it; ") + kNeedRoot +
                      " (or have root run: mount -t tracefs nodev " + kTracefsDefaultPath + ")");
  std::string tmpl = (std::filesystem::temp_directory_path() / "baton-tracefs-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr)
    return make_error("cannot create a mount point for tracefs (" + tmpl + "): " + err_text(errno));
  if (::mount("nodev", tmpl.c_str(), "tracefs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
    const int e = errno;
    ::rmdir(tmpl.c_str());
    if (e == EPERM || e == EACCES)
      return make_error("tracefs is not mounted and mounting it failed (" + err_text(e) + "); " + kNeedRoot);
    return make_error("tracefs is not mounted and 'mount -t tracefs nodev " + tmpl + "' failed: " + err_text(e) +
                      " (is CONFIG_TRACING enabled in this kernel?)");
  }
  const int fd = ::open(tmpl.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  const int open_errno = errno;
  ::umount2(tmpl.c_str(), MNT_DETACH);  // lives on through fd only; nothing stays mounted
  ::rmdir(tmpl.c_str());
  if (fd < 0) return make_error("cannot open the tracefs mounted at " + tmpl + ": " + err_text(open_errno));
  return Root{fd, TracefsLocation{tmpl, true}};
}

std::atomic<unsigned> g_instance_counter{0};

}  // namespace

std::vector<std::string> kvm_capture_events() {
  return {"kvm:kvm_exit",           "kvm:kvm_entry",           "kvm:kvm_pio",
          "kvm:kvm_mmio",           "kvm:kvm_page_fault",      "kvm:kvm_userspace_exit",
          "kvmmmu:kvm_mmu_set_spte", "kvmmmu:kvm_mmu_spte_requested", "kvmmmu:kvm_tdp_mmu_spte_changed"};
}

Result<std::unique_ptr<TracefsCapture>> TracefsCapture::open(const TracefsOptions& opt) {
  std::unique_ptr<TracefsCapture> c(new TracefsCapture());
  auto root = open_root(opt.mounts_file);
  if (!root) return root.error();
  c->root_fd_ = root->fd;
  c->loc_ = root->loc;
  if (c->loc_.mounted_by_us)
    c->warnings_.push_back("tracefs was not mounted: mounted it privately for this capture (detached at once, "
                           "nothing stays mounted)");

  // Create instances/baton-<pid>-<n>, taking the next n if the name is in use.
  for (int tries = 0;; ++tries) {
    std::string name = "baton-" + std::to_string(::getpid()) + "-" + std::to_string(g_instance_counter++);
    if (::mkdirat(c->root_fd_, ("instances/" + name).c_str(), 0700) == 0) {
      c->name_ = std::move(name);
      break;
    }
    const int e = errno;
    if (e == EEXIST && tries < 100) continue;
    if (e == EACCES || e == EPERM)
      return make_error("cannot create a tracefs instance in " + c->loc_.path + "/instances: " + err_text(e) + "; " +
                        kNeedRoot);
    if (e == ENOENT)
      return make_error(c->loc_.path + " has no instances/ directory (a kernel older than 3.10, or debugfs "
                                       "rather than tracefs?)");
    return make_error("cannot create tracefs instance " + c->loc_.path + "/instances/" + name + ": " + err_text(e));
  }
  // From here on the destructor removes the instance whatever fails.
  c->inst_fd_ = ::openat(c->root_fd_, ("instances/" + c->name_).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (c->inst_fd_ < 0) return make_error("cannot open " + c->instance_path() + ": " + err_text(errno));

  // A new instance records at once (tracing_on = 1); keep it quiet until start().
  BATON_TRY_VOID(c->write_file("tracing_on", "0"));
  BATON_TRY_VOID(c->write_file("buffer_size_kb", std::to_string(opt.buffer_kb)));
  if (!opt.clock.empty())
    if (auto r = c->write_file("trace_clock", opt.clock); !r)
      return make_error("cannot set trace_clock to '" + opt.clock + "': " + r.error().message);
  // The importer takes the VM (VMM process) from the TGID column.
  if (auto r = c->write_file("options/record-tgid", "1"); !r)
    c->warnings_.push_back("cannot turn on options/record-tgid (" + r.error().message +
                           "): events will carry thread ids only");
  // Set before any pid: the fork hook follows the tasks of set_event_pid, added now or later.
  if (auto r = c->write_file("options/event-fork", opt.follow_forks ? "1" : "0"); !r && opt.follow_forks)
    c->warnings_.push_back("cannot turn on options/event-fork (" + r.error().message +
                           "): threads and children started later are not followed");
  for (pid_t p : opt.pids) BATON_TRY_VOID(c->add_pid(p));
  for (const std::string& ev : opt.events) {
    const auto colon = ev.find(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == ev.size() || ev.find('/') != std::string::npos)
      return make_error("event '" + ev + "' is not of the form system:name");
    const std::string rel = "events/" + ev.substr(0, colon) + "/" + ev.substr(colon + 1) + "/enable";
    if (::faccessat(c->inst_fd_, rel.c_str(), F_OK, 0) != 0) {
      c->warnings_.push_back("event " + ev + " does not exist on this kernel; skipped");
      continue;
    }
    BATON_TRY_VOID(c->write_file(rel, "1"));
    c->enabled_.push_back(ev);
  }
  if (c->enabled_.empty())
    return make_error("none of the requested events exists on this kernel (for KVM events: is the kvm module "
                      "loaded?)");
  auto hdr = c->read_file("trace");
  if (!hdr) return hdr.error();
  c->header_ = std::move(*hdr);
  c->pipe_fd_ = ::openat(c->inst_fd_, "trace_pipe", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (c->pipe_fd_ < 0) return make_error("cannot open " + c->instance_path() + "/trace_pipe: " + err_text(errno));
  return c;
}

TracefsCapture::~TracefsCapture() {
  (void)remove();
  close_fd(root_fd_);
}

std::string TracefsCapture::instance_path() const {
  return loc_.path + (loc_.mounted_by_us ? " (private mount)" : "") + "/instances/" + name_;
}

Result<void> TracefsCapture::write_file(const std::string& rel, const std::string& value, bool append) const {
  const int fd = ::openat(inst_fd_, rel.c_str(), O_WRONLY | O_CLOEXEC | (append ? O_APPEND : O_TRUNC));
  if (fd < 0) return make_error("cannot open " + instance_path() + "/" + rel + ": " + err_text(errno));
  const ssize_t w = ::write(fd, value.data(), value.size());
  const int e = errno;
  ::close(fd);
  if (w != static_cast<ssize_t>(value.size()))
    return make_error("writing '" + value + "' to " + instance_path() + "/" + rel + " failed: " +
                      (w < 0 ? err_text(e) : std::string("short write")));
  return ok_result();
}

Result<std::string> TracefsCapture::read_file(const std::string& rel) const {
  const int fd = ::openat(inst_fd_, rel.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("cannot open " + instance_path() + "/" + rel + ": " + err_text(errno));
  std::string out;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      return make_error("reading " + instance_path() + "/" + rel + " failed: " + err_text(e));
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

Result<void> TracefsCapture::add_pid(pid_t pid) {
  if (removed_) return make_error("the tracefs instance is already removed");
  if (pid <= 0) return make_error("bad pid " + std::to_string(pid));
  // The first pid replaces the (empty) filter; later ones are appended.
  BATON_TRY_VOID(write_file("set_event_pid", std::to_string(pid) + "\n", have_pids_));
  have_pids_ = true;
  return ok_result();
}

Result<void> TracefsCapture::add_process(pid_t pid) {
  if (pid <= 0) return make_error("bad pid " + std::to_string(pid));
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return make_error("no process with pid " + std::to_string(pid) + " (" + dir + ": " + err_text(errno) + ")");
  std::vector<pid_t> tids;
  while (const dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long t = std::strtol(e->d_name, &end, 10);
    if (end != e->d_name && *end == '\0' && t > 0) tids.push_back(static_cast<pid_t>(t));
  }
  ::closedir(d);
  if (tids.empty()) return make_error("no process with pid " + std::to_string(pid));
  for (pid_t t : tids) BATON_TRY_VOID(add_pid(t));
  return ok_result();
}

Result<void> TracefsCapture::start() {
  if (removed_) return make_error("the tracefs instance is already removed");
  return write_file("tracing_on", "1");
}

Result<void> TracefsCapture::stop() {
  if (removed_) return ok_result();
  return write_file("tracing_on", "0");
}

Result<std::size_t> TracefsCapture::drain(std::string& out) {
  if (pipe_fd_ < 0) return std::size_t{0};
  std::size_t total = 0;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(pipe_fd_, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n < 0) return make_error("reading " + instance_path() + "/trace_pipe failed: " + err_text(errno));
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    total += static_cast<std::size_t>(n);
  }
  return total;
}

std::uint64_t TracefsCapture::overruns() const {
  if (removed_ || inst_fd_ < 0) return 0;
  const int fd = ::openat(inst_fd_, "per_cpu", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return 0;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return 0;
  }
  std::vector<std::string> cpus;
  while (const dirent* e = ::readdir(d))
    if (std::strncmp(e->d_name, "cpu", 3) == 0) cpus.emplace_back(e->d_name);
  ::closedir(d);
  std::uint64_t sum = 0;
  for (const std::string& cpu : cpus) {
    auto text = read_file("per_cpu/" + cpu + "/stats");
    if (!text) continue;
    std::istringstream in(*text);
    std::string key;
    std::uint64_t v = 0;
    while (in >> key)
      if (key == "overrun:" && (in >> v)) sum += v;
  }
  return sum;
}

Result<void> TracefsCapture::remove() {
  if (removed_ || name_.empty()) {
    removed_ = true;
    close_fd(pipe_fd_);
    close_fd(inst_fd_);
    return ok_result();
  }
  if (inst_fd_ >= 0) (void)write_file("tracing_on", "0");
  // An open file of the instance keeps it busy.
  close_fd(pipe_fd_);
  close_fd(inst_fd_);
  const std::string rel = "instances/" + name_;
  int e = 0;
  for (int tries = 0; tries < 50; ++tries) {
    if (::unlinkat(root_fd_, rel.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT) {
      removed_ = true;
      return ok_result();
    }
    e = errno;
    if (e != EBUSY) break;
    ::usleep(20'000);  // a reader of the instance (cat trace_pipe) may still hold it
  }
  removed_ = true;  // do not retry from the destructor
  return make_error("cannot remove tracefs instance " + loc_.path + "/" + rel + ": " + err_text(e) +
                    " (remove it by hand with rmdir)");
}

std::vector<std::string> list_tracefs_instances(const std::string& prefix) {
  std::vector<std::string> out;
  auto root = open_root("/proc/mounts");
  if (!root) return out;
  const int fd = ::openat(root->fd, "instances", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ::close(root->fd);
  if (fd < 0) return out;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return out;
  }
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n != "." && n != ".." && n.rfind(prefix, 0) == 0) out.push_back(n);
  }
  ::closedir(d);
  return out;
}

std::string tracefs_unusable_reason() {
  auto root = open_root("/proc/mounts");
  if (!root) return root.error().message;
  const bool ok = ::faccessat(root->fd, "instances", W_OK, AT_EACCESS) == 0;
  const int e = errno;
  ::close(root->fd);
  if (!ok) return "cannot create tracefs instances (" + err_text(e) + "); " + kNeedRoot;
  return "";
}

}  // namespace baton::hw
