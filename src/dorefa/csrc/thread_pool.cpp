// Thread pool behind ParallelRun (see thread_pool.h).
//
// One job at a time. The caller publishes the job (function, team) and then bumps `ticket_`,
// whose low 16 bits carry the team size: a worker that sees a new ticket reads the size from
// the ticket itself, so one that wakes late can never mistake the next job's size for its own.
// Workers with tid < size run the job and count down `pending_`; the caller, having run tid 0,
// waits for `pending_` to reach zero, so the job's data outlives every reader. Idle workers spin
// for kSpinMicros, then sleep on a condition variable (`sleepers_` and the ticket are
// sequentially consistent, so the caller either sees a sleeper and notifies it, or the sleeper
// sees the new ticket before it waits).
#include "thread_pool.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace dorefa {
namespace {

// How long an idle worker spins before it sleeps. Covers the gap between the layers of a
// forward pass; a longer spin only burns a core that other work may want.
constexpr int64_t kSpinMicros = 300;

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// The CPUs this process may run on (its affinity mask: `taskset`, container limits), not the
// machine's. Cached: std::thread::hardware_concurrency() reads /sys on every call (~5 us here).
unsigned Cores() {
  static const unsigned n = [] {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return n;
}

// Pauses before a waiting thread starts yielding its core (~100-200 us): the threads of one
// job finish within microseconds of each other when each has a core, and when they do not
// (more threads than cores, a CPU quota, other processes), a thread that kept spinning would
// only hold back the one it waits for.
constexpr int64_t kSpinPauses = 4096;

// Waits for `done()`: pauses, then yields; yields at once when the threads outnumber the cores.
template <class Done>
void WaitUntil(Done done, bool oversubscribed) {
  const int64_t spins = oversubscribed ? 64 : kSpinPauses;
  for (int64_t i = 0; !done(); ++i) {
    if (i >= spins) {
      std::this_thread::yield();
    } else {
      CpuRelax();
    }
  }
}

class Pool {
 public:
  // The process's pool. A child made by fork() has none of the parent's threads: it gets a
  // fresh pool (the parent's object is left alone: its mutexes may have been held at the fork).
  static Pool& Get() {
    static std::atomic<Pool*> pool{nullptr};
    static std::mutex create_mu;
    Pool* p = pool.load(std::memory_order_acquire);
    if (p != nullptr && p->pid_ == getpid()) return *p;
    std::lock_guard<std::mutex> lock(create_mu);
    p = pool.load(std::memory_order_acquire);
    if (p == nullptr || p->pid_ != getpid()) {
      p = new Pool();  // never deleted: detached workers use it until the process exits
      pool.store(p, std::memory_order_release);
    }
    return *p;
  }

  void Run(int threads, const std::function<void(int, Team&)>& fn) {
    std::unique_lock<std::mutex> run(run_mu_, std::try_to_lock);
    if (!run.owns_lock()) {
      Team solo(1);
      fn(0, solo);
      return;
    }
    threads = std::min(threads, 0xFFFF);
    Grow(threads - 1);
    const bool oversubscribed = static_cast<unsigned>(threads) > Cores();
    Team team(threads);
    job_ = &fn;
    team_ = &team;
    pending_.store(threads - 1, std::memory_order_relaxed);
    // seq_cst: pairs with the sleeper's increment of sleepers_ and its check of ticket_.
    // Only the holder of run_mu_ writes ticket_: one store publishes counter and size.
    const uint64_t counter = (ticket_.load(std::memory_order_relaxed) >> 16) + 1;
    ticket_.store(counter << 16 | static_cast<uint64_t>(threads), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(sleep_mu_);
      wake_.notify_all();
    }
    fn(0, team);
    WaitUntil([&] { return pending_.load(std::memory_order_acquire) == 0; }, oversubscribed);
  }

 private:
  Pool() : pid_(getpid()) {}

  // At least n workers (tids 1..n). Called with run_mu_ held.
  void Grow(int n) {
    // The ticket before this job's: a worker that starts after the job is published still
    // sees it as new.
    const uint64_t before = ticket_.load(std::memory_order_relaxed);
    while (static_cast<int>(workers_) < n) {
      const int tid = static_cast<int>(++workers_);
      std::thread([this, tid, before] { Work(tid, before); }).detach();
    }
  }

  void Work(int tid, uint64_t seen) {
    for (;;) {
      const uint64_t ticket = Await(seen);
      seen = ticket;
      const int size = static_cast<int>(ticket & 0xFFFF);
      if (tid >= size) continue;  // not in this job: back to waiting
      (*job_)(tid, *team_);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  // The first ticket other than `seen`: spin for kSpinMicros (none when the workers outnumber
  // the cores), then sleep until the caller notifies.
  uint64_t Await(uint64_t seen) {
    const auto spin_end = std::chrono::steady_clock::now() +
                          std::chrono::microseconds(workers_ + 1 > Cores() ? 0 : kSpinMicros);
    for (int64_t i = 0;; ++i) {
      const uint64_t t = ticket_.load(std::memory_order_acquire);
      if (t != seen) return t;
      if ((i & 63) == 63 && std::chrono::steady_clock::now() >= spin_end) break;
      CpuRelax();
    }
    std::unique_lock<std::mutex> lock(sleep_mu_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    uint64_t t;
    wake_.wait(lock, [&] {
      t = ticket_.load(std::memory_order_seq_cst);
      return t != seen;
    });
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return t;
  }

  const pid_t pid_;
  std::mutex run_mu_;  // one job at a time
  std::atomic<unsigned> workers_{0};
  std::atomic<uint64_t> ticket_{0};  // job counter << 16 | team size
  std::atomic<int> pending_{0};      // workers still running the current job
  const std::function<void(int, Team&)>* job_ = nullptr;
  Team* team_ = nullptr;
  std::mutex sleep_mu_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
};

}  // namespace

void Team::Barrier() {
  const int64_t gen = generation_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
    arrived_.store(0, std::memory_order_relaxed);
    generation_.store(gen + 1, std::memory_order_release);
    return;
  }
  WaitUntil([&] { return generation_.load(std::memory_order_acquire) != gen; },
            static_cast<unsigned>(size_) > Cores());
}

void ParallelRun(int threads, const std::function<void(int tid, Team& team)>& fn) {
  if (threads <= 1) {
    Team solo(1);
    fn(0, solo);
    return;
  }
  Pool::Get().Run(threads, fn);
}

void ParallelFor(int threads, int64_t n, const std::function<void(int64_t, int64_t)>& body) {
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  ParallelRun(nt, [&](int tid, Team& team) {
    const int64_t begin = n * tid / team.size(), end = n * (tid + 1) / team.size();
    if (begin < end) body(begin, end);
  });
}

}  // namespace dorefa
