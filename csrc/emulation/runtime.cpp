// The emulator's scheduler: blocks one after another (index order, or a
// shuffled order on request), the threads of a block as fibers on one OS
// thread that switch at __syncthreads and warp collectives; shared memory
// per block, poisoned and guarded; the few CUDA runtime calls the host entry
// points make, over host memory.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>

#include "controls.h"
#include "state.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define GF_EMU_ASAN 1
#else
#define GF_EMU_ASAN 0
#endif

namespace gf {
namespace emu {

thread_local Current current;
thread_local Launch* active = nullptr;

namespace {

// ---- fibers ------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the
// current stack, stores the stack pointer in *save and resumes `next`.
extern "C" void gf_emu_switch(void** save, void* next);
extern "C" void gf_emu_trampoline();
asm(R"(
  .text
  .globl gf_emu_switch
  .hidden gf_emu_switch
  .type gf_emu_switch, @function
gf_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gf_emu_switch, .-gf_emu_switch

  .globl gf_emu_trampoline
  .hidden gf_emu_trampoline
  .type gf_emu_trampoline, @function
gf_emu_trampoline:
  movq %rbx, %rdi
  callq *%r12
  ud2
  .size gf_emu_trampoline, .-gf_emu_trampoline
)");
#else
#error "the CUDA emulator's context switch is written for x86-64"
#endif

#if GF_EMU_ASAN
constexpr size_t kStackSize = 512 * 1024;
#else
constexpr size_t kStackSize = 128 * 1024;
#endif
constexpr size_t kPage = 4096;

struct Stack {
  char* base = nullptr;  // guard page, then the usable stack
};

// Stacks are kept per OS thread and reused by every launch on it.
struct StackPool {
  std::vector<Stack> stacks;
  ~StackPool() {
    for (Stack& s : stacks) munmap(s.base, kStackSize + kPage);
  }
  char* get(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, kStackSize + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("gflops CUDA emulator: out of memory for fiber stacks");
      mprotect(p, kPage, PROT_NONE);  // an overflowing fiber faults instead of corrupting its neighbour
      stacks.push_back(Stack{static_cast<char*>(p)});
    }
    return stacks[i].base + kPage;
  }
};

thread_local StackPool pool;
thread_local void* scheduler_sp = nullptr;
#if GF_EMU_ASAN
thread_local void* scheduler_fake = nullptr;
thread_local const void* scheduler_bottom = nullptr;
thread_local size_t scheduler_size = 0;
#endif

struct RunArgs {
  void (*body)(void*);
  void* arg;
};
thread_local RunArgs run_args;

void to_scheduler(Fiber& f) {
#if GF_EMU_ASAN
  __sanitizer_start_switch_fiber(&f.asan_fake, scheduler_bottom, scheduler_size);
  gf_emu_switch(&f.sp, scheduler_sp);
  __sanitizer_finish_switch_fiber(f.asan_fake, &scheduler_bottom, &scheduler_size);
#else
  gf_emu_switch(&f.sp, scheduler_sp);
#endif
}

[[noreturn]] void leave_for_good(Fiber& f) {
#if GF_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, scheduler_bottom, scheduler_size);
#endif
  gf_emu_switch(&f.sp, scheduler_sp);
  __builtin_trap();  // a finished fiber is never resumed
}

void check_exit(Launch& l, Fiber& f);

void fiber_main(void* p) {
  Fiber& f = *static_cast<Fiber*>(p);
#if GF_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_bottom, &scheduler_size);
#endif
  run_args.body(run_args.arg);
  Launch& l = *active;
  check_exit(l, f);
  if (l.exited < 0) l.exited = f.linear;
  f.state = FiberState::Done;
  leave_for_good(f);
}

void start_fiber(Fiber& f, char* stack) {
  f.stack = stack;
  f.stack_size = kStackSize;
#if GF_EMU_ASAN
  __asan_unpoison_memory_region(stack, kStackSize);  // frames of an abandoned fiber may have left poison
#endif
  auto top = reinterpret_cast<uintptr_t>(stack + kStackSize) & ~uintptr_t(15);
  auto* w = reinterpret_cast<uint64_t*>(top);
  w[-1] = reinterpret_cast<uint64_t>(&gf_emu_trampoline);  // `ret` lands here with rsp 16-aligned
  w[-2] = 0;                                               // rbp
  w[-3] = reinterpret_cast<uint64_t>(&f);                  // rbx: the trampoline's argument
  w[-4] = reinterpret_cast<uint64_t>(&fiber_main);         // r12: the trampoline's callee
  w[-5] = w[-6] = w[-7] = 0;                               // r13-r15
  uint32_t csr[2] = {0, 0};
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(*reinterpret_cast<uint16_t*>(&csr[1])));
  std::memcpy(&w[-8], csr, 8);
  f.sp = &w[-8];
}

void resume(Launch& l, Fiber& f) {
  l.running = &f;
  current.thread_idx = f.idx;
#if GF_EMU_ASAN
  __sanitizer_start_switch_fiber(&scheduler_fake, f.stack, f.stack_size);
  gf_emu_switch(&scheduler_sp, f.sp);
  __sanitizer_finish_switch_fiber(scheduler_fake, nullptr, nullptr);
#else
  gf_emu_switch(&scheduler_sp, f.sp);
#endif
  l.running = nullptr;
}

// ---- settings ----------------------------------------------------------------

std::atomic<int> g_num_sms{3};
std::atomic<bool> g_shuffle{false};
std::atomic<uint64_t> g_seed{0};
std::atomic<uint64_t> g_launches{0};
std::mutex g_log_mutex;
bool g_logging = false;
std::vector<LaunchRecord> g_log;

constexpr size_t kSharedLimit = 48 * 1024;  // static + dynamic, without the opt-in attribute
constexpr size_t kGuard = 32;               // poisoned gap after each shared variable
constexpr size_t kArenaSlack = 16 * 1024;   // room for the guards

std::string signature_to_name(const char* sig) {
  std::string s(sig);
  const std::string key = "K = ";
  size_t b = s.find(key);
  if (b == std::string::npos) return s;
  b += key.size();
  size_t e = s.rfind(']');
  std::string name = s.substr(b, e == std::string::npos ? std::string::npos : e - b);
  if (!name.empty() && name[0] == '&') name.erase(0, 1);
  return name;
}

std::string dims(const uint3& d) {
  std::ostringstream o;
  o << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return o.str();
}

// __launch_bounds__(N) is N NOPs at the entry (device.h); none means 1024.
int launch_bound(const void* entry) {
  const auto* b = static_cast<const unsigned char*>(entry);
  if (b[0] == 0xf3 && b[1] == 0x0f && b[2] == 0x1e && b[3] == 0xfa) b += 4;  // endbr64
  int n = 0;
  while (n < 1024 && b[n] == 0x90) ++n;
  return n == 0 ? 1024 : n;
}

[[noreturn]] void config_error(const std::string& name, const std::string& what) {
  throw std::runtime_error("gflops CUDA emulator: launch of " + name + ": " + what);
}

unsigned lanes_of_warp(const Launch& l, int warp) {
  int n = l.nthreads - warp * 32;
  return n >= 32 ? 0xffffffffu : ((1u << n) - 1u);
}

std::string lane_list(unsigned bits) {
  std::ostringstream o;
  bool first = true;
  for (int i = 0; i < 32; ++i)
    if (bits >> i & 1) {
      o << (first ? "" : ",") << i;
      first = false;
    }
  return o.str();
}

const char* collective_name(Collective k) {
  switch (k) {
    case Collective::ShflIdx: return "__shfl_sync";
    case Collective::ShflUp: return "__shfl_up_sync";
    case Collective::ShflDown: return "__shfl_down_sync";
    case Collective::ShflXor: return "__shfl_xor_sync";
    case Collective::Ballot: return "__ballot_sync";
    case Collective::Any: return "__any_sync";
    case Collective::All: return "__all_sync";
    case Collective::SyncWarp: return "__syncwarp";
  }
  return "?";
}

std::string hex(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

void check_exit(Launch& l, Fiber& f) {
  if (l.at_barrier > 0)
    fail_running("exited while " + std::to_string(l.at_barrier) + " of " + std::to_string(l.nthreads) +
                 " threads wait at __syncthreads at " + short_site(l.barrier_site) +
                 " (a barrier must be reached by every thread of the block)");
  const int lane = f.linear & 31;
  WarpSlot& w = l.warps[f.linear >> 5];
  if (w.busy && !w.complete && (w.mask >> lane & 1) && !(w.arrived >> lane & 1))
    fail_running("exited while lanes " + lane_list(w.arrived) + " of its warp wait in " + collective_name(w.kind) +
                 " at " + short_site(w.site) + " with mask " + hex(w.mask) + ", which names it");
}

void poison_arena(Launch& l) {
#if GF_EMU_ASAN
  __asan_unpoison_memory_region(l.arena, l.arena_cap);
#endif
  std::memset(l.arena, 0xff, l.arena_cap);  // NaN as float, -1 as int: reads of unwritten shared memory show
#if GF_EMU_ASAN
  __asan_poison_memory_region(l.arena, l.arena_cap);
  if (l.dynamic_smem) __asan_unpoison_memory_region(l.arena, l.dynamic_smem);
#endif
  l.shared_vars.clear();
  l.static_bytes = 0;
  l.arena_used = l.dynamic_smem ? ((l.dynamic_smem + 15) & ~size_t(15)) + kGuard : 0;
}

void deadlock(Launch& l) {
  std::vector<Fiber>& fs = *l.fibers;
  for (Fiber& f : fs) {
    if (f.state == FiberState::InCollective) {
      WarpSlot& w = l.warps[f.linear >> 5];
      unsigned missing = w.mask & ~w.arrived;
      l.error = "warp " + std::to_string(f.linear >> 5) + ": " + collective_name(w.kind) + " at " + short_site(w.site) +
                " with mask " + hex(w.mask) + " waits for lanes " + lane_list(missing) +
                " that never arrive (thread " + thread_name(l, f.linear) + " waits)";
      return;
    }
  }
  for (Fiber& f : fs) {
    if (f.state == FiberState::AtBarrier) {
      l.error = "__syncthreads at " + short_site(l.barrier_site) + " reached by " + std::to_string(l.at_barrier) +
                " of " + std::to_string(l.nthreads) + " threads and never by the rest (thread " +
                thread_name(l, f.linear) + " waits)";
      return;
    }
  }
  l.error = "no thread can make progress";
}

void run_block(Launch& l) {
  std::vector<Fiber>& fs = *l.fibers;
  current.block_idx = l.block_idx;
  l.at_barrier = 0;
  l.exited = -1;
  l.barrier_site = nullptr;
  for (WarpSlot& w : l.warps) w = WarpSlot{};
  poison_arena(l);
  ++l.phase;
  const uint3 bd{l.block.x, l.block.y, l.block.z};
  for (int t = 0; t < l.nthreads; ++t) {
    Fiber& f = fs[t];
    f.state = FiberState::Ready;
    f.linear = t;
    f.idx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    f.site = nullptr;
    start_fiber(f, pool.get(t));
  }
  for (;;) {
    bool ran = false;
    int done = 0;
    for (Fiber& f : fs) {
      if (f.state == FiberState::Done) {
        ++done;
        continue;
      }
      if (f.state != FiberState::Ready) continue;
      resume(l, f);
      ran = true;
      if (l.failed) return;
    }
    if (done == l.nthreads) return;
    if (!ran) {
      deadlock(l);
      l.error = "in block " + dims(l.block_idx) + ": " + l.error;
      l.failed = true;
      return;
    }
  }
}

}  // namespace

// ---- used by kernels ---------------------------------------------------------

std::string short_site(const char* site) {
  if (!site) return "?";
  const char* s = std::strrchr(site, '/');
  return s ? s + 1 : site;
}

std::string thread_name(const Launch& l, int linear) {
  const uint3 t{linear % l.block.x, (linear / l.block.x) % l.block.y, linear / (l.block.x * l.block.y)};
  return dims(t);
}

void fail_running(const std::string& what) {
  Launch& l = *active;
  Fiber& f = *l.running;
  if (!l.failed) {
    l.failed = true;
    l.error = "block " + dims(l.block_idx) + ", thread " + thread_name(l, f.linear) + ": " + what;
  }
  f.state = FiberState::Done;
  leave_for_good(f);
}

void trap(const char* site, const char* what) { fail_running(std::string(what) + " at " + short_site(site)); }

void syncthreads(const char* site) {
  Launch& l = *active;
  Fiber& f = *l.running;
  if (l.exited >= 0)
    fail_running("reached __syncthreads at " + short_site(site) + " after thread " + thread_name(l, l.exited) +
                 " exited without reaching it (a barrier must be reached by every thread of the block)");
  if (l.at_barrier == 0) {
    l.barrier_site = site;
  } else if (std::strcmp(site, l.barrier_site) != 0) {
    fail_running("reached __syncthreads at " + short_site(site) + " while " + std::to_string(l.at_barrier) +
                 " threads wait at __syncthreads at " + short_site(l.barrier_site) + " (divergent barriers)");
  }
  if (++l.at_barrier == l.nthreads) {
    l.at_barrier = 0;
    ++l.phase;
    for (Fiber& o : *l.fibers)
      if (o.state == FiberState::AtBarrier) o.state = FiberState::Ready;
    return;
  }
  f.state = FiberState::AtBarrier;
  f.site = site;
  to_scheduler(f);
}

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* site) {
  Launch& l = *active;
  Fiber& f = *l.running;
  const int lane = f.linear & 31;
  const int warp = f.linear >> 5;
  const std::string what = std::string(collective_name(kind)) + " at " + short_site(site);
  if (!(mask >> lane & 1)) fail_running(what + ": mask " + hex(mask) + " does not include the calling lane " + std::to_string(lane));
  const unsigned exist = lanes_of_warp(l, warp);
  if (mask & ~exist)
    fail_running(what + ": mask " + hex(mask) + " names lanes " + lane_list(mask & ~exist) + " of warp " +
                 std::to_string(warp) + ", which has only " + std::to_string(__builtin_popcount(exist)) +
                 " threads (partial warp)");
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail_running(what + ": width must be a power of two in [1, 32], got " + std::to_string(width));
  WarpSlot& w = l.warps[warp];
  while (w.busy && w.complete) to_scheduler(f);  // lanes of the previous collective still pick up results
  if (!w.busy) {
    w.busy = true;
    w.complete = false;
    w.kind = kind;
    w.mask = mask;
    w.arrived = 0;
    w.width = width;
    w.site = site;
  } else if (w.kind != kind || w.mask != mask || w.width != width) {
    fail_running(what + " with mask " + hex(mask) + " while lanes " + lane_list(w.arrived) + " wait in " +
                 collective_name(w.kind) + " at " + short_site(w.site) + " with mask " + hex(w.mask));
  }
  w.value[lane] = value;
  w.arg[lane] = arg;
  w.arrived |= 1u << lane;
  if (w.arrived != w.mask) {
    f.state = FiberState::InCollective;
    f.site = site;
    to_scheduler(f);
  } else {
    for (int i = 0; i < 32; ++i) {
      if (!(w.mask >> i & 1)) continue;
      const int seg = i & ~(w.width - 1);
      int src = i;
      switch (w.kind) {
        case Collective::ShflIdx: src = seg + (w.arg[i] & (w.width - 1)); break;
        case Collective::ShflUp: src = (i - seg) >= w.arg[i] ? i - w.arg[i] : i; break;
        case Collective::ShflDown: src = (i - seg) + w.arg[i] < w.width ? i + w.arg[i] : i; break;
        case Collective::ShflXor: src = i ^ w.arg[i]; src = (src >= 32 || (src & ~(w.width - 1)) > seg) ? i : src; break;
        default: break;
      }
      if (!(w.mask >> src & 1)) {
        w.complete = true;  // keep the slot consistent for the report
        fail_running(what + ": lane " + std::to_string(i) + " reads lane " + std::to_string(src) +
                     ", which is not in the mask " + hex(w.mask) + " (its value is undefined)");
      }
      uint64_t r = w.value[src];
      if (w.kind == Collective::Ballot || w.kind == Collective::Any || w.kind == Collective::All) {
        unsigned votes = 0;
        for (int j = 0; j < 32; ++j)
          if ((w.mask >> j & 1) && w.value[j]) votes |= 1u << j;
        r = w.kind == Collective::Ballot ? votes : (w.kind == Collective::Any ? votes != 0 : votes == w.mask);
      }
      w.result[i] = r;
    }
    w.complete = true;
    w.unread = w.mask;
    ++w.syncs;
    for (Fiber& o : *l.fibers)
      if (o.state == FiberState::InCollective && (o.linear >> 5) == warp) o.state = FiberState::Ready;
  }
  const uint64_t r = w.result[lane];
  w.unread &= ~(1u << lane);
  if (!w.unread) w.busy = false;
  return r;
}

void* shared_alloc(const void* tag, size_t size, size_t align, const char* site) {
  Launch& l = *active;
  for (const SharedVar& v : l.shared_vars)
    if (v.tag == tag) return l.arena + v.offset;
  const size_t a = std::max<size_t>(align, 16);
  const size_t off = (l.arena_used + a - 1) / a * a;
  if (l.static_bytes + size + l.dynamic_smem > kSharedLimit)
    fail_running("shared memory over budget: " + std::to_string(l.static_bytes + size) + " bytes static (at " +
                 short_site(site) + ") + " + std::to_string(l.dynamic_smem) + " bytes dynamic > " +
                 std::to_string(kSharedLimit) + " bytes per block");
  if (off + size + kGuard > l.arena_cap) fail_running("too many shared variables for the emulator's arena");
  l.shared_vars.push_back(SharedVar{tag, off, size, site});
  l.static_bytes += size;
  l.arena_used = off + size + kGuard;
#if GF_EMU_ASAN
  __asan_unpoison_memory_region(l.arena + off, size);
#endif
  return l.arena + off;
}

void* dynamic_shared() { return active->arena; }

// ---- the launch --------------------------------------------------------------

void run_kernel(const char* signature, const void* entry, dim3 grid, dim3 block, size_t smem, cudaStream_t,
                void (*body)(void*), void* arg) {
  const std::string name = signature_to_name(signature);
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0)
    config_error(name, "empty grid " + dims(uint3{grid.x, grid.y, grid.z}) + " or block " +
                           dims(uint3{block.x, block.y, block.z}));
  if (grid.y > 65535 || grid.z > 65535 || block.z > 64 || block.x > 1024 || block.y > 1024)
    config_error(name, "grid " + dims(uint3{grid.x, grid.y, grid.z}) + " or block " +
                           dims(uint3{block.x, block.y, block.z}) + " exceeds the device limits");
  const int bound = launch_bound(entry);
  if (threads > bound)
    config_error(name, std::to_string(threads) + " threads per block exceed its __launch_bounds__(" +
                           std::to_string(bound) + ")" + (bound == 1024 ? " (the device maximum)" : ""));
  if (smem > kSharedLimit)
    config_error(name, std::to_string(smem) + " bytes of dynamic shared memory exceed the " +
                           std::to_string(kSharedLimit) + "-byte per-block budget");
  {
    std::lock_guard<std::mutex> g(g_log_mutex);
    if (g_logging) g_log.push_back(LaunchRecord{name, {grid.x, grid.y, grid.z}, {block.x, block.y, block.z}, smem});
  }

  Launch l;
  l.name = signature;
  l.grid = grid;
  l.block = block;
  l.dynamic_smem = smem;
  l.nthreads = static_cast<int>(threads);
  std::vector<Fiber> fibers(l.nthreads);
  l.fibers = &fibers;
  l.warps.resize((l.nthreads + 31) / 32);
  l.arena_cap = ((smem + 15) & ~size_t(15)) + kGuard + kSharedLimit + kArenaSlack;
  std::vector<char> arena_storage(l.arena_cap + 64);
  l.arena = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(arena_storage.data()) + 63) & ~uintptr_t(63));
  l.track_races = racecheck_built();
  if (l.track_races) l.shadow.assign(l.arena_cap, ShadowCell{});

  const int64_t nblocks = int64_t(grid.x) * grid.y * grid.z;
  std::vector<int64_t> order(nblocks);
  std::iota(order.begin(), order.end(), 0);
  const uint64_t launch_no = g_launches.fetch_add(1);
  if (g_shuffle.load()) {
    std::mt19937_64 rng(g_seed.load() * 0x9e3779b97f4a7c15ull + launch_no);
    std::shuffle(order.begin(), order.end(), rng);
  }

  Launch* outer = active;
  const Current saved = current;
  const RunArgs saved_args = run_args;
  active = &l;
  run_args = RunArgs{body, arg};
  current.block_dim = uint3{block.x, block.y, block.z};
  current.grid_dim = uint3{grid.x, grid.y, grid.z};
  for (int64_t b : order) {
    l.block_idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                        static_cast<unsigned>(b / (int64_t(grid.x) * grid.y))};
    run_block(l);
    if (l.failed) break;
  }
#if GF_EMU_ASAN
  __asan_unpoison_memory_region(l.arena, l.arena_cap);
#endif
  active = outer;
  current = saved;
  run_args = saved_args;
  if (l.failed) throw std::runtime_error("gflops CUDA emulator: kernel " + name + ": " + l.error);
}

// ---- controls ----------------------------------------------------------------

void set_num_sms(int n) { g_num_sms = std::max(1, n); }
int num_sms() { return g_num_sms.load(); }
void set_block_order(bool shuffle, uint64_t seed) {
  g_shuffle = shuffle;
  g_seed = seed;
}
void set_launch_log(bool on) {
  std::lock_guard<std::mutex> g(g_log_mutex);
  g_logging = on;
  g_log.clear();
}
std::vector<LaunchRecord> launch_log() {
  std::lock_guard<std::mutex> g(g_log_mutex);
  return g_log;
}
const char* sanitizer() {
#if GF_EMU_ASAN
  return "address";
#else
  return racecheck_built() ? "race" : "none";
#endif
}

}  // namespace emu
}  // namespace gf

// ---- the CUDA runtime calls of the host entry points, over host memory -------

using gf::emu::num_sms;

extern "C" {

cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }  // launch errors throw instead
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidValue: return "invalid argument";
    default: return "CUDA error (emulated)";
  }
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = num_sms(); return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *v = 2048; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 * 1024; return cudaSuccess;
    case cudaDevAttrWarpSize: *v = 32; return cudaSuccess;
    default: return cudaErrorInvalidValue;
  }
}
// Resident blocks of an sm_80/sm_90 SM limited by threads alone: registers
// are unknown here (the ptxas report covers them).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, const void*, int block_size, size_t,
                                                                   unsigned) {
  if (block_size <= 0) return cudaErrorInvalidValue;
  *n = std::min(32, 2048 / block_size);
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* f, int block_size, size_t smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n, f, block_size, smem, 0);
}

}  // extern "C"
