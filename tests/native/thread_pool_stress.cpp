// Stress test of the kernels' thread pool (src/dorefa/csrc/thread_pool.cpp), meant to run
// under ThreadSanitizer (`make tsan`): many jobs of varying team sizes, barriers inside the
// jobs, several callers at once, and pauses long enough for the workers to fall asleep.
// Exits non-zero (and prints why) if any job loses or repeats a thread's work.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "thread_pool.h"

namespace {

// One job: every thread adds its tid + 1 to a slot, all meet at a barrier, then thread 0
// checks the sum of all slots (which needs every thread's first phase done).
std::atomic<int> full_teams{0};

bool OneJob(int threads) {
  std::vector<int64_t> slot(static_cast<size_t>(threads), 0);
  std::atomic<int64_t> after{0};
  std::atomic<bool> ok{true};
  int size = 0;
  dorefa::ParallelRun(threads, [&](int tid, dorefa::Team& team) {
    if (tid == 0) size = team.size();
    slot[static_cast<size_t>(tid)] += tid + 1;
    team.Barrier();
    if (tid == 0) {
      int64_t sum = 0;
      for (int k = 0; k < team.size(); ++k) sum += slot[static_cast<size_t>(k)];
      if (sum != int64_t{team.size()} * (team.size() + 1) / 2) ok = false;
    }
    team.Barrier();
    after.fetch_add(1);
  });
  if (size == threads && threads > 1) ++full_teams;
  return ok && after == size && (size == threads || size == 1);
}

}  // namespace

int main() {
  std::atomic<int> failures{0};
  auto caller = [&](int id) {
    for (int i = 0; i < 400; ++i) {
      const int threads = 1 + (i + id) % 4;
      if (!OneJob(threads)) {
        std::fprintf(stderr, "caller %d job %d (threads %d) went wrong\n", id, i, threads);
        ++failures;
      }
      if (i % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // sleep
    }
  };
  caller(0);                         // alone: every job gets its full team
  std::vector<std::thread> callers;  // then three at once: the pool's holder and solo runs
  for (int id = 0; id < 3; ++id) callers.emplace_back(caller, id);
  for (auto& t : callers) t.join();
  std::printf("thread pool stress: %d failures, %d multi-thread teams\n", failures.load(),
              full_teams.load());
  if (full_teams < 300) {
    std::fprintf(stderr, "too few jobs ran on several threads to test the pool\n");
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
