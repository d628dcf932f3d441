// Files in and out, one way for every baton command.
//
// Input: only regular files are read (a directory, FIFO, socket or device is refused at once),
// and a reader states the most bytes its format can hold, so that a huge or endless input is
// refused before it is read. Output: one writer. It refuses an existing path unless asked to
// overwrite, writes to a temporary file with a random name next to the target, publishes it
// with a rename that never replaces (renameat2 RENAME_NOREPLACE, or link + unlink where the
// file system lacks it), and removes the temporary file on any error and on SIGINT/SIGTERM.
// Errors are one line naming the file and the reason (errno).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "baton/model/result.hpp"

namespace baton::model {

// A regular file opened for reading.
class InputFile {
 public:
  // Opens `path` if it is a regular file of at most `max_bytes`; `what` names the kind of file
  // in errors ("snapshot", "cost profile").
  static Result<InputFile> open(const std::string& path, std::uint64_t max_bytes, const char* what);
  InputFile(InputFile&& o) noexcept;
  InputFile& operator=(InputFile&& o) noexcept;
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile();

  std::uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Reads `n` bytes at `offset` (which must lie inside the file).
  Result<void> read(std::uint64_t offset, void* dst, std::size_t n) const;
  // Reads up to `n` bytes at `offset`, to the real end of the file (not its st_size, which is 0
  // for tracefs and /proc files); 0 means the end.
  Result<std::size_t> read_some(std::uint64_t offset, void* dst, std::size_t n) const;
  // Reads the whole file.
  Result<std::vector<std::uint8_t>> read_all() const;
  // Maps the whole file read-only (for large inputs read in place); the view lives as long as
  // this object.
  Result<std::span<const std::uint8_t>> map();

 private:
  InputFile() = default;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string path_;
  void* map_ = nullptr;
};

// Reads a whole regular file of at most `max_bytes`; `what` names the kind of file in errors.
Result<std::vector<std::uint8_t>> read_file(const std::string& path, std::uint64_t max_bytes, const char* what);
// Reads a whole regular text file of at most `max_bytes`; a file whose first 64 KiB are more than
// 5% NUL or control bytes is not text (checked before the rest is read).
Result<std::string> read_text_file(const std::string& path, std::uint64_t max_bytes, const char* what);
// Opens a regular text file of at most `max_bytes` for reading in blocks, refusing it when its
// first 64 KiB are more than 5% NUL or control bytes (the check of read_text_file).
Result<InputFile> open_text_file(const std::string& path, std::uint64_t max_bytes, const char* what);

// The one-line refusal for an existing output path.
std::string exists_message(const std::string& path);
// Checks, before any work, that `path` can be written: its directory exists and is writable,
// it is not a directory, and it does not exist unless `overwrite`. `what` names the option.
Result<void> check_output_path(const std::string& path, bool overwrite, const char* what = nullptr);
// Checks that `dir` exists (or can be created: its parent exists) and is a writable directory.
Result<void> check_output_dir(const std::string& dir, const char* what = nullptr);

// One output file in progress: bytes go to a temporary file next to the target; commit()
// publishes it. Destroying an uncommitted file removes the temporary file.
class OutputFile {
 public:
  // Starts writing `path`; refuses an existing path unless `overwrite`.
  static Result<OutputFile> create(const std::string& path, bool overwrite);
  OutputFile(OutputFile&& o) noexcept;
  OutputFile& operator=(OutputFile&& o) noexcept;
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return tmp_; }
  // Appends bytes; the first failure is kept and reported by commit().
  Result<void> write(const void* data, std::size_t n);
  // Flushes to disk and closes the temporary file, without publishing it (see publish_all).
  Result<void> finish();
  // finish(), then publishes the file at its path (no-replace unless overwrite).
  Result<void> commit();
  // Publishes finished files together: all or (on an error) none. Catchable signals are held
  // while the renames run; only SIGKILL between two renames could leave a part.
  static Result<void> publish_all(std::vector<OutputFile*> files);

 private:
  OutputFile() = default;
  // Removes the temporary file (if any) and forgets it.
  void discard();
  int fd_ = -1;
  int slot_ = -1;  // where the temporary path is remembered for the signal handler
  std::string path_, tmp_, error_;
  bool overwrite_ = false, finished_ = false, published_ = false;
};

// Writes a whole file through OutputFile.
Result<void> write_file(const std::string& path, std::span<const std::uint8_t> bytes, bool overwrite);
// Writes a whole text file through OutputFile.
Result<void> write_text(const std::string& path, const std::string& text, bool overwrite);

// Installs SIGINT/SIGTERM handlers that remove every temporary output file in progress and then
// end the process as the signal would have. Call once, early in main.
void install_output_cleanup();

}  // namespace baton::model
