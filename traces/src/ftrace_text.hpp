// Private text scanning of the ftrace importer (traces/src/ftrace.cpp): trimming, number
// parsing, an allocation-free tokenizer and a strict cursor for fixed field layouts.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace baton::traces::ftrace_text {

// Trims spaces and tabs at both ends.
inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Returns whether s is a non-empty run of decimal digits.
inline bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

// Parses a decimal number (digits only, no sign; nullopt past 2^64 - 1).
inline std::optional<std::uint64_t> parse_dec(std::string_view s) {
  if (s.empty()) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    const unsigned d = static_cast<unsigned char>(c) - '0';
    if (d > 9) return std::nullopt;
    if (v >= 1844674407370955161ull && (v > 1844674407370955161ull || d > 5)) return std::nullopt;  // past 2^64 - 1
    v = v * 10 + d;
  }
  return v;
}

// The value of each byte as a hex digit, or 16.
constexpr std::array<std::uint8_t, 256> kHexDigit = [] {
  std::array<std::uint8_t, 256> t{};
  for (unsigned c = 0; c < 256; ++c)
    t[c] = c >= '0' && c <= '9' ? static_cast<std::uint8_t>(c - '0')
           : c >= 'a' && c <= 'f' ? static_cast<std::uint8_t>(c - 'a' + 10)
           : c >= 'A' && c <= 'F' ? static_cast<std::uint8_t>(c - 'A' + 10)
                                  : 16;
  return t;
}();

// Parses a hex number with or without a 0x prefix (nullopt past 2^64 - 1).
inline std::optional<std::uint64_t> parse_hex(std::string_view s) {
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  if (s.empty()) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    const unsigned d = kHexDigit[static_cast<unsigned char>(c)];
    if (d > 15 || (v >> 60) != 0) return std::nullopt;
    v = (v << 4) | d;
  }
  return v;
}

// Parses an ftrace timestamp ("1234.567890" seconds, any number of fraction digits up to 9,
// or a bare counter) into nanoseconds.
inline std::optional<std::uint64_t> parse_timestamp(std::string_view s) {
  const auto dot = s.find('.');
  if (dot == std::string_view::npos) return parse_dec(s);
  if (dot == 0 || dot > 10 || s.size() - dot - 1 == 0 || s.size() - dot - 1 > 9) return std::nullopt;
  std::uint64_t secs = 0, f = 0;  // at most 10 and 9 digits: no overflow
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == dot) continue;
    const unsigned d = static_cast<unsigned char>(s[i]) - '0';
    if (d > 9) return std::nullopt;
    (i < dot ? secs : f) = (i < dot ? secs : f) * 10 + d;
  }
  for (std::size_t i = s.size() - dot - 1; i < 9; ++i) f *= 10;
  return secs * 1000000000ull + f;
}

// The blank-separated tokens of a line, without allocating: up to kMax of them.
struct Tokens {
  static constexpr std::size_t kMax = 48;
  // Token storage, left uninitialized (only the first n are ever read): zeroing it cost more
  // than splitting the line.
  struct Span {
    const char* p;
    std::size_t len;
  };
  Span t[kMax];
  std::size_t n = 0;
  bool overflow = false;  // more than kMax tokens
  std::size_t size() const { return n; }
  bool empty() const { return n == 0; }
  std::string_view operator[](std::size_t i) const { return {t[i].p, t[i].len}; }
  std::string_view back() const { return (*this)[n - 1]; }
  // Iterates over the tokens as string_views.
  struct Iter {
    const Span* s;
    std::string_view operator*() const { return {s->p, s->len}; }
    Iter& operator++() {
      ++s;
      return *this;
    }
    bool operator!=(const Iter& o) const { return s != o.s; }
  };
  Iter begin() const { return {t}; }
  Iter end() const { return {t + n}; }
};

// Whether a byte separates tokens (a blank or a tab).
constexpr std::array<bool, 256> kBlank = [] {
  std::array<bool, 256> t{};
  t[' '] = t['\t'] = true;
  return t;
}();

// Returns the first ' ' in [p, end), or end; eight bytes at a time (a zero-byte test on the
// word XOR spaces: its lowest flagged byte is always a real match).
inline const char* find_space(const char* p, const char* end) {
  constexpr std::uint64_t kOnes = 0x0101010101010101ull, kHigh = 0x8080808080808080ull, kSpaces = 0x2020202020202020ull;
  while (end - p >= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    const std::uint64_t x = w ^ kSpaces;
    const std::uint64_t hit = (x - kOnes) & ~x & kHigh;
    if (hit != 0) return p + (__builtin_ctzll(hit) >> 3);
    p += 8;
  }
  while (p < end && *p != ' ') ++p;
  return p;
}

// Splits on runs of blanks (spaces and tabs), keeping at most `max` tokens (the rest is not
// scanned). `tabs`: whether the text may hold a tab; without, tokens end at the next space.
inline Tokens split(std::string_view s, std::size_t max = Tokens::kMax, bool tabs = true) {
  Tokens out;
  const char* p = s.data();
  const char* const end = p + s.size();
  while (p < end) {
    while (p < end && kBlank[static_cast<unsigned char>(*p)]) ++p;
    if (p == end) break;
    const char* q = p;
    if (!tabs) {
      q = find_space(p, end);
    } else {
      while (q < end && !kBlank[static_cast<unsigned char>(*q)]) ++q;
    }
    if (out.n == max) {
      out.overflow = max == Tokens::kMax;
      break;
    }
    out.t[out.n++] = Tokens::Span{p, static_cast<std::size_t>(q - p)};
    p = q;
  }
  return out;
}

// Strips one trailing ',' or ':' from a token.
inline std::string_view bare(std::string_view t) {
  if (!t.empty() && (t.back() == ',' || t.back() == ':')) t.remove_suffix(1);
  return t;
}

// Returns the token after the first token equal to `key` (ignoring a trailing ',' or ':').
inline std::optional<std::string_view> value_after(const Tokens& toks, std::string_view key) {
  for (std::size_t i = 0; i + 1 < toks.size(); ++i) {
    const Tokens::Span& t = toks.t[i];
    // Cheap rejections first: the length (a trailing ',' or ':' may follow the key) and the first byte.
    if ((t.len != key.size() && t.len != key.size() + 1) || t.p[0] != key[0]) continue;
    if (bare(toks[i]) == key) return bare(toks[i + 1]);
  }
  return std::nullopt;
}

// A strict reader of one fixed field layout ("gfn 401 spte 6000001a2b01977 ..."): single
// spaces, literal keys, numbers ending at a space or the end. The fast paths of the commonest
// events use it and fall back to the general tokenizer on the first surprise.
struct Cursor {
  const char* p;
  const char* end;
  // Consumes `s` when the text continues with it.
  bool lit(std::string_view s) {
    if (static_cast<std::size_t>(end - p) < s.size() || std::memcmp(p, s.data(), s.size()) != 0) return false;
    p += s.size();
    return true;
  }
  // Returns the text up to the next space (or the end), consumed.
  std::string_view word() {
    const char* q = find_space(p, end);
    std::string_view w(p, static_cast<std::size_t>(q - p));
    p = q;
    return w;
  }
  // Reads a hex number (parse_hex) up to the next space.
  bool hex(std::uint64_t& v) {
    const auto x = parse_hex(word());
    if (!x) return false;
    v = *x;
    return true;
  }
  // Reads a decimal number (parse_dec) up to the next space.
  bool dec(std::uint64_t& v) {
    const auto x = parse_dec(word());
    if (!x) return false;
    v = *x;
    return true;
  }
  bool done() const { return p == end; }
};

}  // namespace baton::traces::ftrace_text
