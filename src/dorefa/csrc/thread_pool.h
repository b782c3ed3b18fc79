// Persistent worker threads for the kernels (no OpenMP): a call with `threads` > 1 wakes
// threads that already exist, and they spin for a short while after their work before they
// sleep, so that back-to-back calls (the layers of one forward pass) do not pay a wake-up each.
//
// Why not OpenMP: on the 2-core VM this was tuned on, waking a sleeping thread costs 50-80 us
// (a whole svhn layer is 10-30 us), and OpenMP's wait policy is process-wide and also read by
// torch's own OpenMP runtime: spinning for us meant spinning for torch, and the reverse.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <new>
#include <vector>

namespace dorefa {

// The threads of one ParallelRun.
class Team {
 public:
  explicit Team(int size) : size_(size) {}
  int size() const { return size_; }
  // Every thread of the team waits here until all have arrived (spins; yields when there are
  // more threads than cores).
  void Barrier();

 private:
  const int size_;
  std::atomic<int> arrived_{0};
  std::atomic<int64_t> generation_{0};
};

// Runs fn(tid, team) for tid = 0 .. team.size() - 1, each on its own thread (the caller runs
// tid 0), and returns when all have returned. team.size() is `threads`, or 1 when another
// call holds the pool (two Python threads calling at once): work split over team.size()
// threads must give the same result for any size, as all the kernels' splits do. `fn` must
// not throw.
void ParallelRun(int threads, const std::function<void(int tid, Team& team)>& fn);

// Runs body(begin, end) for contiguous, near-equal shares of the items [0, n), one share per
// thread of a ParallelRun of up to `threads` threads (no more than n); a thread whose share is
// empty does not call it. `body` must not throw.
void ParallelFor(int threads, int64_t n,
                 const std::function<void(int64_t begin, int64_t end)>& body);

// ParallelFor for a body that may fail to allocate scratch: std::bad_alloc thrown by any share
// is carried out of the parallel region and rethrown on the calling thread (pybind11 turns it
// into MemoryError); the other shares still run.
template <class Body>
void ParallelForOrThrow(int threads, int64_t n, Body&& body) {
  std::atomic<bool> out_of_memory{false};
  ParallelFor(threads, n, [&](int64_t begin, int64_t end) {
    try {
      body(begin, end);
    } catch (const std::bad_alloc&) {
      out_of_memory = true;
    }
  });
  if (out_of_memory) throw std::bad_alloc();
}

// Runs worker(tid, barrier) on `threads` threads of a ParallelRun (inline on the caller when
// threads == 1, with a barrier that does nothing) and returns the OR of the uint8_t flags the
// threads return (the kernels' "some output needs a second pass" flags).
template <class Worker>
uint8_t ParallelOr(int threads, Worker&& worker) {
  if (threads == 1) return worker(0, [] {});
  std::vector<uint8_t> ors(static_cast<size_t>(threads), 0);
  ParallelRun(threads,
              [&](int tid, Team& team) { ors[tid] = worker(tid, [&] { team.Barrier(); }); });
  uint8_t all = 0;
  for (uint8_t o : ors) all |= o;
  return all;
}

}  // namespace dorefa
