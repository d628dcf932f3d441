// Files in and out (baton/model/file_io.hpp): regular-file readers with size caps, and the one
// output writer (temporary file, no-replace publish, cleanup on error and on SIGINT/SIGTERM).
#include "baton/model/file_io.hpp"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>

namespace baton::model {

namespace {

// Names what a non-regular file is.
const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

// The error text of the current errno.
std::string err_text() { return std::strerror(errno); }

// Formats a byte count exactly, with a binary unit when it divides evenly ("64 MiB").
std::string bytes_text(std::uint64_t n) {
  static const char* const kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  std::uint64_t v = n;
  while (u < 4 && v >= 1024 && v % 1024 == 0) {
    v /= 1024;
    ++u;
  }
  return std::to_string(v) + " " + kUnits[u];
}

// ---- temporary files removed on SIGINT/SIGTERM ----

// Temporary output paths in progress, readable from a signal handler. A slot is free (0),
// being filled (1) or ready (2); the handler reads only ready slots.
struct TempSlot {
  std::atomic<int> state{0};
  char path[4096] = {};
};
std::array<TempSlot, 32> g_temps;
std::atomic<bool> g_cleanup_installed{false};

// Remembers a temporary path; returns its slot or -1 when all are taken (then it is not
// removed on a signal, only on errors).
int remember_temp(const std::string& p) {
  if (p.size() >= sizeof(TempSlot::path)) return -1;
  for (std::size_t i = 0; i < g_temps.size(); ++i) {
    TempSlot& s = g_temps[i];
    int expected = 0;
    if (!s.state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) continue;
    std::memcpy(s.path, p.c_str(), p.size() + 1);
    s.state.store(2, std::memory_order_release);
    return static_cast<int>(i);
  }
  return -1;
}

// Forgets a temporary path.
void forget_temp(int slot) {
  if (slot >= 0) g_temps[static_cast<std::size_t>(slot)].state.store(0, std::memory_order_release);
}

// Removes every remembered temporary file, then ends the process as the signal would have.
extern "C" void on_fatal_signal(int sig) {
  for (TempSlot& s : g_temps)
    if (s.state.load(std::memory_order_acquire) == 2) ::unlink(s.path);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Holds SIGINT and SIGTERM for the lifetime of the object.
struct SignalsHeld {
  sigset_t old{};
  SignalsHeld() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    ::sigprocmask(SIG_BLOCK, &set, &old);
  }
  ~SignalsHeld() { ::sigprocmask(SIG_SETMASK, &old, nullptr); }
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;
};

// Moves a finished temporary file to `path`; without `overwrite` an existing path is kept.
Result<void> publish(const std::string& tmp, const std::string& path, bool overwrite) {
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0) return make_error("cannot write '" + path + "': " + err_text());
    return ok_result();
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return ok_result();
  if (errno == EEXIST) return make_error(exists_message(path));
  if (errno != EINVAL && errno != ENOSYS) return make_error("cannot write '" + path + "': " + err_text());
  // The file system lacks RENAME_NOREPLACE: link() refuses an existing target too.
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    if (errno == EEXIST) return make_error(exists_message(path));
    return make_error("cannot write '" + path + "': " + err_text());
  }
  ::unlink(tmp.c_str());
  return ok_result();
}

// The directory part of a path ("." for a bare name).
std::string dir_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

// ---- input ----

Result<InputFile> InputFile::open(const std::string& path, std::uint64_t max_bytes, const char* what) {
  // O_NONBLOCK: opening a FIFO without a writer must not wait.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return make_error("cannot open '" + path + "': " + err_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = err_text();
    ::close(fd);
    return make_error("cannot read '" + path + "': " + why);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error("'" + path + "' is " + kind_of(st.st_mode) + ", not a " + what + " file");
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return make_error("'" + path + "' is " + bytes_text(static_cast<std::uint64_t>(st.st_size)) + "; a " + what +
                      " holds at most " + bytes_text(max_bytes));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  InputFile f;
  f.fd_ = fd;
  f.size_ = static_cast<std::uint64_t>(st.st_size);
  f.path_ = path;
  return f;
}

InputFile::InputFile(InputFile&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), size_(o.size_), path_(std::move(o.path_)), map_(std::exchange(o.map_, nullptr)) {}

InputFile& InputFile::operator=(InputFile&& o) noexcept {
  if (this != &o) {
    this->~InputFile();
    fd_ = std::exchange(o.fd_, -1);
    size_ = o.size_;
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
  }
  return *this;
}

InputFile::~InputFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
  if (fd_ >= 0) ::close(fd_);
  map_ = nullptr;
  fd_ = -1;
}

Result<void> InputFile::read(std::uint64_t offset, void* dst, std::size_t n) const {
  auto* p = static_cast<std::uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return make_error("cannot read '" + path_ + "': " + err_text());
    if (r == 0) return make_error("cannot read '" + path_ + "': it ended early (changed while being read?)");
    p += r;
    n -= static_cast<std::size_t>(r);
    offset += static_cast<std::uint64_t>(r);
  }
  return ok_result();
}

Result<std::size_t> InputFile::read_some(std::uint64_t offset, void* dst, std::size_t n) const {
  for (;;) {
    const ssize_t r = ::pread(fd_, dst, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return make_error("cannot read '" + path_ + "': " + err_text());
    return static_cast<std::size_t>(r);
  }
}

Result<std::vector<std::uint8_t>> InputFile::read_all() const {
  // Read to the end rather than trusting st_size, which is 0 for many /proc files.
  std::vector<std::uint8_t> out;
  out.reserve(size_);
  std::uint64_t off = 0;
  std::uint8_t buf[1 << 16];
  for (;;) {
    const ssize_t r = ::pread(fd_, buf, sizeof buf, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return make_error("cannot read '" + path_ + "': " + err_text());
    if (r == 0) break;
    out.insert(out.end(), buf, buf + r);
    off += static_cast<std::uint64_t>(r);
    if (off > std::max<std::uint64_t>(size_, 1 << 20) * 2)
      return make_error("cannot read '" + path_ + "': it keeps growing while being read");
  }
  return out;
}

Result<std::span<const std::uint8_t>> InputFile::map() {
  if (size_ == 0) return std::span<const std::uint8_t>{};
  if (map_ == nullptr) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (m == MAP_FAILED) return make_error("cannot read '" + path_ + "': " + err_text());
    map_ = m;
  }
  return std::span<const std::uint8_t>{static_cast<const std::uint8_t*>(map_), size_};
}

Result<std::vector<std::uint8_t>> read_file(const std::string& path, std::uint64_t max_bytes, const char* what) {
  auto f = InputFile::open(path, max_bytes, what);
  if (!f) return f.error();
  return f->read_all();
}

Result<InputFile> open_text_file(const std::string& path, std::uint64_t max_bytes, const char* what) {
  auto f = InputFile::open(path, max_bytes, what);
  if (!f) return f.error();
  const std::size_t head_n = static_cast<std::size_t>(std::min<std::uint64_t>(f->size(), 64 * 1024));
  std::vector<std::uint8_t> head(head_n);
  BATON_TRY_VOID(f->read(0, head.data(), head.size()));
  // Text with a few damaged lines is still text (importers count and skip them); a file whose
  // head is more than 5% NUL or other control bytes is binary (a sparse file, random bytes).
  std::size_t binary = 0;
  for (std::uint8_t c : head) binary += (c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f;
  if (binary * 20 > head.size())
    return make_error("'" + path + "' is not a text file (" + std::to_string(binary * 100 / head.size()) +
                      "% of its first " + bytes_text(head.size()) + " are NUL or control bytes); expected a " + what);
  return f;
}

Result<std::string> read_text_file(const std::string& path, std::uint64_t max_bytes, const char* what) {
  auto f = open_text_file(path, max_bytes, what);
  if (!f) return f.error();
  auto all = f->read_all();
  if (!all) return all.error();
  return std::string(all->begin(), all->end());
}

// ---- output ----

std::string exists_message(const std::string& path) {
  return "'" + path + "' already exists (refusing to overwrite; pass --force)";
}

Result<void> check_output_path(const std::string& path, bool overwrite, const char* what) {
  const std::string pre = what != nullptr ? std::string(what) + ": " : std::string();
  if (path.empty()) return make_error(pre + "the output path is empty");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return make_error(pre + "'" + path + "' is a directory; give a file name");
    if (!overwrite) return make_error(pre + exists_message(path));
  }
  const std::string dir = dir_of(path);
  if (::stat(dir.c_str(), &st) != 0) return make_error(pre + "cannot write '" + path + "': " + dir + ": " + err_text());
  if (!S_ISDIR(st.st_mode)) return make_error(pre + "cannot write '" + path + "': " + dir + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) return make_error(pre + "cannot write '" + path + "': " + err_text());
  return ok_result();
}

Result<void> check_output_dir(const std::string& dir, const char* what) {
  const std::string pre = what != nullptr ? std::string(what) + ": " : std::string();
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return make_error(pre + "'" + dir + "' is not a directory");
    if (::access(dir.c_str(), W_OK | X_OK) != 0)
      return make_error(pre + "cannot write into '" + dir + "': " + err_text());
    return ok_result();
  }
  const std::string parent = dir_of(dir);
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(pre + "cannot create '" + dir + "': " + parent + " is not a directory");
  if (::access(parent.c_str(), W_OK | X_OK) != 0) return make_error(pre + "cannot create '" + dir + "': " + err_text());
  return ok_result();
}

Result<OutputFile> OutputFile::create(const std::string& path, bool overwrite) {
  BATON_TRY_VOID(check_output_path(path, overwrite));
  std::string tmp = path + ".tmp-XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return make_error("cannot write '" + path + "': " + err_text());
  OutputFile f;
  f.fd_ = fd;
  f.path_ = path;
  f.tmp_ = tmp;
  f.overwrite_ = overwrite;
  f.slot_ = remember_temp(tmp);
  // mkstemp creates 0600; give the file the usual permissions under the umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd, 0666 & ~mask);
  return f;
}

OutputFile::OutputFile(OutputFile&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      slot_(std::exchange(o.slot_, -1)),
      path_(std::move(o.path_)),
      tmp_(std::exchange(o.tmp_, std::string())),
      error_(std::move(o.error_)),
      overwrite_(o.overwrite_),
      finished_(o.finished_),
      published_(o.published_) {}

OutputFile& OutputFile::operator=(OutputFile&& o) noexcept {
  if (this != &o) {
    discard();
    fd_ = std::exchange(o.fd_, -1);
    slot_ = std::exchange(o.slot_, -1);
    path_ = std::move(o.path_);
    tmp_ = std::exchange(o.tmp_, std::string());
    error_ = std::move(o.error_);
    overwrite_ = o.overwrite_;
    finished_ = o.finished_;
    published_ = o.published_;
  }
  return *this;
}

OutputFile::~OutputFile() { discard(); }

void OutputFile::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!published_ && !tmp_.empty()) ::unlink(tmp_.c_str());
  forget_temp(slot_);
  slot_ = -1;
  tmp_.clear();
}

Result<void> OutputFile::write(const void* data, std::size_t n) {
  if (!error_.empty()) return make_error("cannot write '" + path_ + "': " + error_);
  if (fd_ < 0) return make_error("cannot write '" + path_ + "': it is already closed");
  const auto* p = static_cast<const std::uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      error_ = w < 0 ? err_text() : "no space written";
      return make_error("cannot write '" + path_ + "': " + error_);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return ok_result();
}

Result<void> OutputFile::finish() {
  if (finished_) return ok_result();
  if (error_.empty() && fd_ < 0) error_ = "it is already closed";
  if (error_.empty() && ::fsync(fd_) != 0) error_ = err_text();
  if (fd_ >= 0 && ::close(fd_) != 0 && error_.empty()) error_ = err_text();
  fd_ = -1;
  if (!error_.empty()) {
    discard();
    return make_error("cannot write '" + path_ + "': " + error_);
  }
  finished_ = true;
  return ok_result();
}

Result<void> OutputFile::commit() {
  OutputFile* one[] = {this};
  return publish_all({one[0]});
}

Result<void> OutputFile::publish_all(std::vector<OutputFile*> files) {
  for (OutputFile* f : files) {
    auto r = f->finish();
    if (!r) {
      for (OutputFile* g : files) g->discard();
      return r;
    }
  }
  SignalsHeld held;
  std::vector<OutputFile*> done;
  for (OutputFile* f : files) {
    auto r = publish(f->tmp_, f->path_, f->overwrite_);
    if (!r) {
      for (OutputFile* g : done) ::unlink(g->path_.c_str());
      for (OutputFile* g : files) g->discard();
      return r;
    }
    f->published_ = true;
    done.push_back(f);
  }
  for (OutputFile* f : files) f->discard();
  return ok_result();
}

Result<void> write_file(const std::string& path, std::span<const std::uint8_t> bytes, bool overwrite) {
  auto f = OutputFile::create(path, overwrite);
  if (!f) return f.error();
  BATON_TRY_VOID(f->write(bytes.data(), bytes.size()));
  return f->commit();
}

Result<void> write_text(const std::string& path, const std::string& text, bool overwrite) {
  return write_file(
      path, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), overwrite);
}

void install_output_cleanup() {
  if (g_cleanup_installed.exchange(true)) return;
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    ::sigaction(sig, nullptr, &old);
    if (old.sa_handler == SIG_IGN) continue;  // a shell that ignores the signal for us keeps it ignored
    struct sigaction sa {};
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(sig, &sa, nullptr);
  }
}

}  // namespace baton::model
