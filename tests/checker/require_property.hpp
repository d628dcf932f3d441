// A Catch2 helper of the checker's property tests: requires that a property ran.
#pragma once

#include <catch2/catch.hpp>
#include <utility>

#include "baton/checker/check.hpp"

namespace baton::testing {

// Requires a property result (the error message shown otherwise) and returns it.
inline checker::PropertyResult ok(Result<checker::PropertyResult> r) {
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  CAPTURE(r->summary);
  return std::move(r).value();
}

}  // namespace baton::testing
