// Capturing KVM's tracepoints through a private tracefs instance (docs/kvm-backend.md,
// "Capturing with baton trace capture").
//
// A TracefsCapture owns one instance directory `instances/baton-<pid>-<n>` of tracefs: it sets
// the buffer size, turns on record-tgid, filters by pid (set_event_pid, optionally following
// forks), enables the requested events and drains `trace_pipe`. The instance is removed
// (rmdir) by remove() or, whatever happens, by the destructor: on errors, on exceptions and on
// early returns alike.
//
// Finding tracefs: the first tracefs mount in /proc/mounts (preferring /sys/kernel/tracing).
// When none is mounted and we may mount (root), tracefs is mounted on a private temporary
// directory which is detached (MNT_DETACH) at once: baton keeps a directory fd to it and
// nothing stays mounted, even if baton is killed. Without the privilege to mount or to create
// an instance, one error line says that capturing needs root.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "baton/model/result.hpp"

namespace baton::hw {

inline constexpr const char* kTracefsDefaultPath = "/sys/kernel/tracing";

// The nine KVM events the importer handles ("system:name").
std::vector<std::string> kvm_capture_events();

struct TracefsOptions {
  std::vector<std::string> events = kvm_capture_events();  // "system:name"; missing ones are skipped with a warning
  std::vector<pid_t> pids = {};  // filter: these tasks only (empty: every task); see add_pid()
  bool follow_forks = true;      // options/event-fork: children and threads of filtered tasks are added
  std::size_t buffer_kb = 16384;  // buffer_size_kb (per CPU)
  // trace_clock of the instance, or "" for the kernel's default ("local"). "mono" stamps events
  // with CLOCK_MONOTONIC, the clock of the VMM's own events, so the two can be merged in order.
  std::string clock;
  // Where /proc/mounts is read from (tests point it elsewhere).
  std::string mounts_file = "/proc/mounts";
};

// Where tracefs was found.
struct TracefsLocation {
  std::string path;           // its mount point, or the (already removed) private mount point
  bool mounted_by_us = false;  // a private, detached mount made for this capture
};

class TracefsCapture {
 public:
  // Finds or mounts tracefs, creates the instance and configures it; tracing is still off.
  static Result<std::unique_ptr<TracefsCapture>> open(const TracefsOptions& opt = {});
  ~TracefsCapture();
  TracefsCapture(const TracefsCapture&) = delete;
  TracefsCapture& operator=(const TracefsCapture&) = delete;

  // Adds a task to the pid filter. For a process, add_process() adds all its threads.
  Result<void> add_pid(pid_t pid);
  // Adds every thread of a running process (from /proc/PID/task); errors if it does not exist.
  Result<void> add_process(pid_t pid);

  Result<void> start();  // tracing_on = 1
  Result<void> stop();   // tracing_on = 0
  // Appends what trace_pipe holds now (never blocks) to `out`; returns the bytes appended.
  Result<std::size_t> drain(std::string& out);
  // The `trace` file's comment header ("# tracer: nop", the column legend), read at open().
  const std::string& header() const { return header_; }
  // Events the ring buffer overwrote (the sum of per_cpu/cpu*/stats "overrun").
  std::uint64_t overruns() const;
  // Stops tracing and removes the instance. Idempotent; the destructor calls it too.
  Result<void> remove();

  const TracefsLocation& location() const { return loc_; }
  const std::string& name() const { return name_; }    // baton-<pid>-<n>
  std::string instance_path() const;                   // <tracefs>/instances/<name> (for messages)
  bool removed() const { return removed_; }
  const std::vector<std::string>& enabled_events() const { return enabled_; }
  // Non-fatal problems: missing events, missing options, the private mount.
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  TracefsCapture() = default;
  Result<void> write_file(const std::string& rel, const std::string& value, bool append = false) const;
  Result<std::string> read_file(const std::string& rel) const;

  TracefsLocation loc_;
  std::string name_;
  int root_fd_ = -1;      // tracefs root
  int inst_fd_ = -1;      // the instance directory
  int pipe_fd_ = -1;      // its trace_pipe (non-blocking)
  bool removed_ = false;
  bool have_pids_ = false;
  std::string header_;
  std::vector<std::string> enabled_, warnings_;
};

// Lists the tracefs instance directories whose names start with `prefix` (e.g. "baton-1234-"),
// for tests and diagnostics. Empty if tracefs cannot be found.
std::vector<std::string> list_tracefs_instances(const std::string& prefix);

// Why this process cannot capture here ("" when it can: root, or tracefs mounted and writable).
// Cheap; does not create anything.
std::string tracefs_unusable_reason();

}  // namespace baton::hw
