// Reusing Z3 contexts: creating one costs milliseconds, more than many whole checks.
#include "z3_context.hpp"

#include "baton/checker/check.hpp"

namespace baton::checker {

namespace {
thread_local bool g_reuse = false;
thread_local std::unique_ptr<z3::context> g_kept;
}  // namespace

void reuse_z3_contexts(bool on) {
  g_reuse = on;
  if (!on) g_kept.reset();
}

void warm_z3_context() {
  if (g_reuse && !g_kept) g_kept = std::make_unique<z3::context>();
}

namespace detail {

ContextLease::ContextLease() {
  if (g_reuse) {
    warm_z3_context();
    ctx_ = g_kept.get();
  } else {
    own_ = std::make_unique<z3::context>();
    ctx_ = own_.get();
  }
}

}  // namespace detail

}  // namespace baton::checker
