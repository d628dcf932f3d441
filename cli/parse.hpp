// Parsing of command-line values shared by the subcommands: sizes, numbers, page sizes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace baton::cli {

// Parses a byte size: a number with an optional K/M/G/T suffix (binary units, "KiB" etc.
// accepted), e.g. "256M", "4G", "4096". Returns nullopt on malformed input or overflow.
std::optional<std::uint64_t> parse_size(const std::string& text);

// Parses an unsigned number in decimal or 0x-hex. Returns nullopt on malformed input.
std::optional<std::uint64_t> parse_u64(const std::string& text);

// Parses a leaf/page size name: "4k" -> 1, "2m" -> 2, "1g" -> 3. Returns nullopt otherwise.
std::optional<unsigned> parse_page_level(const std::string& text);

// Formats a byte count for people: "256 MiB", "4 GiB", "12 KiB", "100 B".
std::string format_size(std::uint64_t bytes);

// Formats a number as 0x-hex.
std::string hex(std::uint64_t v);

// Makes text safe to print on one line: control characters (newlines included), DEL and bytes
// of invalid UTF-8 become \xNN escapes.
std::string printable(const std::string& text);

}  // namespace baton::cli
