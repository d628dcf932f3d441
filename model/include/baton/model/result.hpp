// Result<T>: the value of an operation that can fail on external input, or its error.
//
// Expected failures (bad files, bad options, absent frames) travel as values; only `main`
// exits. Invariants that input cannot break use BATON_CHECK instead.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace baton {

// One error: a single human-readable line naming the problem.
struct Error {
  std::string message;
};

// Builds an Error from a message.
inline Error make_error(std::string message) { return Error{std::move(message)}; }

// Holds either a T or an Error.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT(google-explicit-constructor): result idiom
  Result(Error error) : v_(std::move(error)) {}      // NOLINT(google-explicit-constructor): result idiom

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return std::get<0>(v_); }
  const T& operator*() const& { return std::get<0>(v_); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Result of an operation with no value.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor): result idiom
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return err_; }

 private:
  Error err_;
  bool ok_ = true;
};

// Returns a successful Result<void>.
inline Result<void> ok_result() { return Result<void>{}; }

// Turns a library exception's text into words for people: drops a JSON library's
// "[json.exception.type_error.302] " tag and says "type must be ..." plainly.
inline std::string exception_text(const char* what) {
  std::string s = what;
  if (s.rfind("[json.exception.", 0) == 0) {
    const auto close = s.find("] ");
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  if (s == "stoull" || s == "stoul" || s == "stoi") s = "a number is out of range or not a number";
  return s;
}

}  // namespace baton

// Propagates the error of a Result expression, or evaluates to nothing on success.
#define BATON_TRY_VOID(expr)                       \
  do {                                             \
    auto baton_try_r_ = (expr);                    \
    if (!baton_try_r_.ok()) return baton_try_r_.error(); \
  } while (0)

// Aborts with a message when an internal invariant is false. Never for external input.
#define BATON_CHECK(cond)                                                            \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "baton: internal invariant failed: %s (%s:%d)\n", #cond, \
                   __FILE__, __LINE__);                                              \
      std::abort();                                                                  \
    }                                                                                \
  } while (0)
