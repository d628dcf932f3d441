// The Z3 context of one check: the calling thread's kept context while reuse is on
// (reuse_z3_contexts), else a fresh one that dies with the check.
#pragma once

#include <z3++.h>

#include <memory>

namespace baton::checker::detail {

class ContextLease {
 public:
  // Takes the thread's kept context, or makes a fresh one.
  ContextLease();
  z3::context& get() { return *ctx_; }

 private:
  std::unique_ptr<z3::context> own_;
  z3::context* ctx_ = nullptr;
};

}  // namespace baton::checker::detail
