// The importer's compressor thread (traces/src/ftrace.cpp): chunks of encoded events are
// compressed while lines are still being parsed.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include <zstd.h>

#include "trace_codec.hpp"

namespace baton::traces::detail {

// Compresses chunks of encoded events on a thread of its own while the importer parses.
class ChunkCompressor {
 public:
  ChunkCompressor() : thread_([this] { run(); }) {}
  ~ChunkCompressor() { (void)finish(); }
  ChunkCompressor(const ChunkCompressor&) = delete;
  ChunkCompressor& operator=(const ChunkCompressor&) = delete;

  // Returns a buffer for raw records: one a compressed chunk gave back (its old bytes still
  // there, so that sizing it again writes no zeros), or a new one.
  std::vector<std::uint8_t> buffer() {
    std::lock_guard lock(mutex_);
    if (spare_.empty()) return {};
    std::vector<std::uint8_t> b = std::move(spare_.back());
    spare_.pop_back();
    return b;
  }

  // Queues the raw records of `count` events (waits while many chunks are queued: bounded memory).
  void submit(std::vector<std::uint8_t> raw, std::uint32_t count) {
    std::unique_lock lock(mutex_);
    room_.wait(lock, [this] { return queue_.size() < kMaxQueued; });
    queue_.push_back({std::move(raw), count, chunks_.size()});
    chunks_.emplace_back();
    ready_.notify_one();
  }

  // Waits for every queued chunk; returns them in order.
  std::vector<EncodedChunk> finish() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    ready_.notify_one();
    if (thread_.joinable()) thread_.join();
    return std::move(chunks_);
  }

 private:
  struct Job {
    std::vector<std::uint8_t> raw;
    std::uint32_t count;
    std::size_t index;
  };
  static constexpr std::size_t kMaxQueued = 16;

  // The thread: compresses queued chunks until finish().
  void run() {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    for (;;) {
      Job job;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return closed_ || !queue_.empty(); });
        if (queue_.empty()) break;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      room_.notify_one();
      EncodedChunk c;
      c.count = job.count;
      c.sum = encode_chunk(c.bytes, job.raw, job.count, cctx);
      std::lock_guard lock(mutex_);
      chunks_[job.index] = std::move(c);
      spare_.push_back(std::move(job.raw));
    }
    ZSTD_freeCCtx(cctx);
  }

  std::mutex mutex_;
  std::condition_variable ready_, room_;
  std::deque<Job> queue_;
  std::vector<EncodedChunk> chunks_;
  std::vector<std::vector<std::uint8_t>> spare_;  // raw buffers to reuse
  bool closed_ = false;
  std::thread thread_;
};

}  // namespace baton::traces::detail
