// The campaign runner: one pre-fault snapshot per chunk of faults, kept by a zygote process
// that forks one child per injection (copy-on-write memory: the guest never re-runs from boot);
// chunks run in parallel (TBB); results are appended one line at a time, so a run resumes.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "baton/campaign/campaign.hpp"
#include "baton/model/file_io.hpp"
#include "classify.hpp"

namespace baton::campaign {

using Clock = std::chrono::steady_clock;

namespace {

// A forked process and the read end of its pipe.
struct Child {
  pid_t pid = -1;
  int fd = -1;
};

// Writes all of `s` to `fd` (a pipe or an O_APPEND file) in as few calls as it takes.
bool write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads a child's pipe to EOF and reaps it; kills it (our own child) at the deadline. Returns
// the text, or an error naming how the child ended.
Result<std::string> collect(Child c, double timeout_s) {
  std::string out;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  bool timed_out = false;
  char buf[65536];
  while (true) {
    const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{c.fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;
    const ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(c.fd);
  if (timed_out) {
    ::kill(-c.pid, SIGKILL);  // an injection and the policy runs it forked
    ::kill(c.pid, SIGKILL);   // a policy run (in its injection's group)
  }
  int st = 0;
  while (::waitpid(c.pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) return make_error("hang: the injection ran past the wall-clock limit of " + std::to_string(timeout_s) + " s");
  if (WIFSIGNALED(st))
    return make_error("crash: the simulator process died with signal " + std::to_string(WTERMSIG(st)) + " (" +
                      strsignal(WTERMSIG(st)) + ")");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || out.empty())
    return make_error("crash: the simulator process exited with status " + std::to_string(WEXITSTATUS(st)) +
                      " and no result");
  return out;
}

// Held around every fork and every Z3 context creation of a zygote, so that no thread holds a
// lock of Z3's (or of anything the child uses) while another forks.
std::mutex g_fork_mu;

// Forks; in the child returns 0 with `fd` the write end, in the parent the Child to collect.
// `group`: the child leads a process group of its own (an injection, with its policy runs).
Result<Child> fork_with_pipe(int& fd, bool group) {
  std::lock_guard<std::mutex> lock(g_fork_mu);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return make_error(std::string("pipe: ") + std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(p[0]);
    ::close(p[1]);
    return make_error(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    if (group) (void)::setpgid(0, 0);
    ::close(p[0]);
    fd = p[1];
    return Child{0, -1};
  }
  // Its own process group, so that a timeout also ends the policy runs it forked.
  if (group) (void)::setpgid(pid, pid);
  ::close(p[1]);
  return Child{pid, p[0]};
}

// Which checks a fault's target can break, where the fault-free handover was proven.
sim::CheckScope scope_of(const PlannedFault& f) {
  if (f.trigger != "handover") return sim::CheckScope::kAll;  // the guest ran on: its tree may differ
  switch (f.target) {
    case Target::kRam: return sim::CheckScope::kNone;
    case Target::kRegs: return sim::CheckScope::kVcpu;
    case Target::kVmcs: return f.field == "ept_pointer" ? sim::CheckScope::kAll : sim::CheckScope::kVcpu;
    default: return sim::CheckScope::kAll;
  }
}

// Whether a fault may change the tree the guest runs on.
bool tree_fault(const PlannedFault& f) {
  return f.target == Target::kEpt || f.target == Target::kMemslot;
}

// The run limits of a trigger ("sync:N", "insn:N"); the migration point for "handover".
sim::RunLimits trigger_point(const Plan& plan, const std::string& trigger) {
  sim::RunLimits l;
  l.budget = plan.budget;
  if (trigger.rfind("sync:", 0) == 0) l.sync = static_cast<std::uint32_t>(std::stoul(trigger.substr(5)));
  else if (trigger.rfind("insn:", 0) == 0) l.until_insn = std::stoull(trigger.substr(5));
  else l.sync = plan.at_sync;
  return l;
}

// What one process of the fork tree is.
struct Proc {
  enum Role { kZygote, kInjection, kPolicy } role = kZygote;
  int out = -1;                   // the pipe this process writes its record to
  std::string policy = "reject";
  std::vector<std::pair<std::string, Child>> policies;  // an injection's accept and fallback children
  sim::Fault fault;               // what the driver plants at the migration point
  std::string planted;            // an early trigger's description
  std::size_t index = 0;
  const PlannedFault* f = nullptr;
  Clock::time_point t0;
};

// Ends a forked process after writing its record.
[[noreturn]] void finish_child(const Proc& p, const std::string& record) {
  (void)write_all(p.out, record);
  ::close(p.out);
  ::_exit(0);
}

// The record of an injection that ended early or failed (every policy alike).
InjectionResult single(std::size_t index, const PlannedFault& f, const PolicyOutcome& o, const std::string& fault = "") {
  InjectionResult r;
  r.index = index;
  r.id = f.id;
  r.fault = fault;
  r.policy["reject"] = o;
  return r;
}

// The outcome of a migration that ended in an error: a fallback the new instance refuses (the
// package itself is bad) and a guest the hypervisor stops during pre-copy rounds are outcomes.
PolicyOutcome failed_outcome(const std::string& m) {
  if (m.rfind("fallback to local-rebuild failed", 0) == 0) return error_outcome(m, "detected-hypervisor");
  if (m.rfind("precopy round", 0) == 0 && m.find("the guest stopped") != std::string::npos)
    return error_outcome(m, m.find("misconfig") != std::string::npos || m.find("entry failed") != std::string::npos
                                ? "detected-hypervisor"
                                : "crash");
  return error_outcome(m);
}

// The options every injection of a plan migrates with.
sim::MigrationOptions base_options(const Plan& plan, sim::Method m) {
  sim::MigrationOptions mo;
  mo.method = m;
  mo.at_sync = plan.at_sync;
  mo.budget = plan.budget;
  mo.reference = false;
  mo.slowdown_window = 0;
  mo.policy = sim::Policy::kReject;
  mo.check.timeout_s = 30;
  return mo;
}

// Runs one chunk of faults (same method and trigger) from one zygote; `deliver` gets each line.
void run_chunk(const Plan& plan, const Setup& setup, const RunOptions& ro, const std::vector<std::size_t>& chunk,
               const std::function<void(const std::string&)>& deliver) {
  const PlannedFault& first = plan.faults[chunk.front()];
  Proc proc;
  sim::MigrationOptions mo = base_options(plan, first.method);
  mo.choose_fault = [&](const sim::MigrationResult&) { return proc.fault; };
  mo.choose_policy = [&](const sim::MigrationResult&) -> sim::Policy {
    if (proc.role != Proc::kInjection || !ro.all_policies) return sim::Policy::kReject;
    for (const char* pol : {"accept", "fallback"}) {
      int fd = -1;
      auto c = fork_with_pipe(fd, false);
      if (!c) continue;  // the record shows the policy missing
      if (c->pid == 0) {
        proc.role = Proc::kPolicy;
        proc.out = fd;
        proc.policy = pol;
        proc.policies.clear();
        return *sim::policy_from_string(pol);
      }
      proc.policies.emplace_back(pol, *c);
    }
    return sim::Policy::kReject;
  };
  std::string zygote_error;
  const sim::SourcePrep prep = [&](sim::SimMachine& src) -> Result<sim::RunEvent> {
    if (ro.fast) {
      // Every injection of this zygote starts with a ready Z3 context (copied by fork).
      std::lock_guard<std::mutex> lock(g_fork_mu);
      checker::reuse_z3_contexts(true);
      checker::warm_z3_context();
    }
    const sim::RunEvent at = src.run(trigger_point(plan, first.trigger));
    if (at.reason != sim::StopReason::kSyncPoint && at.reason != sim::StopReason::kInsnLimit) {
      zygote_error = "the fault-free guest never reached the trigger " + first.trigger + " (" + sim::to_string(at.reason) +
                     ": " + at.detail + ")";
      return make_error(zygote_error);
    }
    for (std::size_t idx : chunk) {
      const PlannedFault& f = plan.faults[idx];
      const auto t0 = Clock::now();
      int fd = -1;
      auto c = fork_with_pipe(fd, true);
      if (!c) {
        deliver(result_line(single(idx, f, error_outcome(c.error().message))));
        continue;
      }
      if (c->pid == 0) {
        proc.role = Proc::kInjection;
        proc.out = fd;
        proc.index = idx;
        proc.f = &f;
        proc.t0 = t0;
        mo.scope = ro.fast ? scope_of(f) : sim::CheckScope::kAll;
        auto parsed = sim::parse_fault(f.spec);
        if (!parsed) finish_child(proc, result_line(single(idx, f, error_outcome(parsed.error().message))));
        if (f.trigger == "handover") {
          proc.fault = *parsed;
          return at;
        }
        // An early trigger: the fault strikes now and the guest runs on to the migration point.
        auto d = sim::plant_source_fault(src, *parsed);
        if (!d) finish_child(proc, result_line(single(idx, f, error_outcome(d.error().message))));
        proc.planted = *d;
        const sim::RunEvent e = src.run(trigger_point(plan, "handover"));
        if (e.reason != sim::StopReason::kSyncPoint) {
          sim::MigrationResult r;
          r.final_event = e;
          r.checksum = src.output().checksum();
          if (auto ex = guests::expected_result(setup.cfg.guest_name, setup.image.params)) r.expected = *ex;
          auto s = src.snapshot();
          if (s) r.before = *s;
          PolicyOutcome o = classify(r, tree_fault(f) && s);
          o.evidence = "before the migration point: " + o.evidence;
          finish_child(proc, result_line(single(idx, f, o, *d)));
        }
        if (f.op != sim::FaultOp::kFlip) (void)sim::plant_source_fault(src, *parsed);  // still stuck at the handover
        proc.fault = sim::Fault{};
        return e;
      }
      auto text = collect(*c, ro.timeout_s);
      if (!text) {
        const std::string& m = text.error().message;
        deliver(result_line(single(idx, f, error_outcome(m, m.rfind("hang", 0) == 0 ? "hang" : "crash"))));
      } else {
        deliver(*text);
      }
    }
    return make_error("zygote");
  };
  auto r = sim::migrate(setup.image, setup.cfg, mo, {}, prep);
  if (proc.role == Proc::kZygote) {
    checker::reuse_z3_contexts(false);
    if (!zygote_error.empty())
      for (std::size_t idx : chunk) deliver(result_line(single(idx, plan.faults[idx], error_outcome(zygote_error))));
    return;
  }
  // An injection, or one of its policies: classify, and report up the tree.
  const PolicyOutcome o = r ? classify(*r, tree_fault(*proc.f)) : failed_outcome(r.error().message);
  if (proc.role == Proc::kPolicy) finish_child(proc, outcome_json(o));
  InjectionResult res = single(proc.index, *proc.f, o, r ? (r->fault.empty() ? proc.planted : r->fault) : proc.planted);
  for (auto& [name, c] : proc.policies) {
    auto text = collect(c, ro.timeout_s);
    auto po = text ? parse_outcome_json(*text) : Result<PolicyOutcome>(text.error());
    res.policy[name] = po ? *po : error_outcome(po.error().message, po.error().message.rfind("hang", 0) == 0 ? "hang" : "crash");
  }
  res.wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - proc.t0).count();
  finish_child(proc, result_line(res));
}

// Reads the results already in `path`: the ids done; truncates a torn last line. Creates the
// file with its header when it does not exist; refuses a file of another plan or shard.
Result<std::set<std::size_t>> resume(const std::string& path, const std::string& header, int& fd) {
  std::set<std::size_t> done;
  fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return make_error(path + ": cannot open (" + std::strerror(errno) + ")");
  std::string text;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
  if (text.empty()) {
    if (!write_all(fd, header + "\n")) return make_error(path + ": cannot write");
  } else {
    const std::size_t nl = text.find('\n');
    if (nl == std::string::npos || text.substr(0, nl) != header)
      return make_error(path + ": holds results of another plan or shard (its first line is not " + header + ")");
    std::size_t good = nl + 1, pos = nl + 1;
    while (pos < text.size()) {
      const std::size_t e = text.find('\n', pos);
      if (e == std::string::npos) break;  // a line torn by an interruption: dropped below
      auto r = parse_result_line(text.substr(pos, e - pos));
      if (!r) break;
      done.insert(r->index);
      pos = good = e + 1;
    }
    if (good < text.size() && ::ftruncate(fd, static_cast<off_t>(good)) != 0)
      return make_error(path + ": cannot truncate a torn last line");
  }
  ::close(fd);
  fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return make_error(path + ": cannot reopen for appending");
  return done;
}

}  // namespace

Result<RunStats> run_campaign(const Plan& plan, const Setup& setup, const RunOptions& o) {
  if (o.shards == 0 || o.shard >= o.shards) return make_error("--shard I/N needs 0 <= I < N");
  if (o.jobs == 0) return make_error("--jobs must be positive");
  const auto t0 = Clock::now();
  const std::string header = nlohmann::json{{"campaign-results", 1}, {"plan", plan.hash},
                                            {"shard", std::to_string(o.shard) + "/" + std::to_string(o.shards)}}.dump();
  int fd = -1;
  auto done = resume(o.out, header, fd);
  if (!done) return done.error();
  RunStats st;
  // Chunks of one method and trigger, in plan order.
  std::map<std::pair<int, std::string>, std::vector<std::size_t>> groups;
  for (std::size_t i = o.shard; i < plan.faults.size(); i += o.shards) {
    ++st.planned;
    if (done->count(i)) {
      ++st.resumed;
      continue;
    }
    groups[{static_cast<int>(plan.faults[i].method), plan.faults[i].trigger}].push_back(i);
  }
  std::vector<std::vector<std::size_t>> chunks;
  for (auto& [key, v] : groups)
    for (std::size_t k = 0; k < v.size(); k += std::max<std::size_t>(o.chunk, 1))
      chunks.emplace_back(v.begin() + static_cast<long>(k), v.begin() + static_cast<long>(std::min(v.size(), k + std::max<std::size_t>(o.chunk, 1))));
  std::mutex mu;
  std::size_t ran = 0;
  std::string write_error;
  const std::size_t todo = st.planned - st.resumed;
  auto deliver = [&](const std::string& line) {
    std::lock_guard<std::mutex> lock(mu);
    if (!write_all(fd, line + "\n")) write_error = o.out + ": cannot append a result (" + std::strerror(errno) + ")";
    ++ran;
    if (o.progress) o.progress(ran, todo);
  };
  // The threads of --jobs fork their injections while the others run. glibc's malloc locks its
  // arenas around fork(), but the allocator of GCC 12's AddressSanitizer does not: a child forked
  // while another thread held one of its locks waits for it forever (seen in `make sanitize`:
  // a child of campaign_tests stuck in SizeClassAllocator64::GetFromAllocator under uc_close,
  // then reported as a hang). Sanitizer builds therefore run the chunks one at a time.
#if defined(__SANITIZE_ADDRESS__)
  const int jobs = 1;
#else
  const int jobs = static_cast<int>(o.jobs);
#endif
  tbb::task_arena arena(jobs);
  arena.execute([&] {
    tbb::parallel_for(std::size_t{0}, chunks.size(), [&](std::size_t k) { run_chunk(plan, setup, o, chunks[k], deliver); });
  });
  ::fsync(fd);
  ::close(fd);
  if (!write_error.empty()) return make_error(write_error);
  st.ran = ran;
  st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return st;
}

Result<Explained> explain_fault(const Plan& plan, const Setup& setup, const PlannedFault& f) {
  std::size_t index = 0;
  (void)find_fault(plan, f.id, &index);
  Explained x;
  auto parsed = sim::parse_fault(f.spec);
  if (!parsed) return parsed.error();
  sim::MigrationOptions mo = base_options(plan, f.method);
  std::string planted;
  const sim::SourcePrep prep = [&](sim::SimMachine& src) -> Result<sim::RunEvent> {
    const sim::RunEvent at = src.run(trigger_point(plan, f.trigger));
    if (at.reason != sim::StopReason::kSyncPoint && at.reason != sim::StopReason::kInsnLimit)
      return make_error("the fault-free guest never reached the trigger " + f.trigger);
    auto s = src.snapshot();
    if (s) x.pre = std::move(*s);
    if (f.trigger == "handover") {
      mo.fault = *parsed;
      return at;
    }
    auto d = sim::plant_source_fault(src, *parsed);
    if (!d) return d.error();
    planted = *d;
    const sim::RunEvent e = src.run(trigger_point(plan, "handover"));
    if (e.reason != sim::StopReason::kSyncPoint) {
      x.early = std::string(sim::to_string(e.reason)) + ": " + e.detail;
      return make_error("early");
    }
    if (f.op != sim::FaultOp::kFlip) (void)sim::plant_source_fault(src, *parsed);
    return e;
  };
  auto r = sim::migrate(setup.image, setup.cfg, mo, {}, prep);
  if (!r) {
    if (!x.early.empty()) {
      x.result = single(index, f, error_outcome("the guest stopped before the migration point: " + x.early, "crash"), planted);
      return x;
    }
    PolicyOutcome o = failed_outcome(r.error().message);
    if (o.outcome == "error") return r.error();
    x.result = single(index, f, o, planted);
    return x;
  }
  x.migration = *r;
  x.result = single(index, f, classify(*r, tree_fault(f)), r->fault.empty() ? planted : r->fault);
  if (r->rejected || r->fell_back) {
    for (sim::Policy p : {sim::Policy::kFallback, sim::Policy::kAccept}) {
      mo.policy = p;
      auto q = sim::migrate(setup.image, setup.cfg, mo, {}, prep);
      x.result.policy[sim::to_string(p)] = q ? classify(*q, tree_fault(f)) : failed_outcome(q.error().message);
    }
  }
  return x;
}

}  // namespace baton::campaign
