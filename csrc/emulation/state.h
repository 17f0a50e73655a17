// Internal state of the emulator, shared by runtime.cpp (the scheduler) and
// racecheck.cpp (the shared-memory race tracker). Not seen by kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "device.h"

namespace gf {
namespace emu {

enum class FiberState { Ready, AtBarrier, InCollective, Done };

struct Fiber {
  void* sp = nullptr;        // saved stack pointer while switched out
  char* stack = nullptr;     // lowest address of its stack
  size_t stack_size = 0;
  void* asan_fake = nullptr;
  FiberState state = FiberState::Ready;
  uint3 idx{0, 0, 0};
  int linear = 0;
  const char* site = nullptr;  // where it waits
};

struct WarpSlot {
  bool busy = false;         // gathering or handing out results
  bool complete = false;
  Collective kind = Collective::SyncWarp;
  unsigned mask = 0;
  unsigned arrived = 0;
  unsigned unread = 0;       // lanes that have not picked up their result yet
  int width = 32;
  const char* site = nullptr;
  uint32_t syncs = 0;        // completed collectives, for the race tracker
  int arg[32] = {};
  uint64_t value[32] = {};
  uint64_t result[32] = {};
};

struct SharedVar {
  const void* tag;
  size_t offset;
  size_t size;
  const char* site;  // where it is declared
};

// One access to a byte of shared memory, as the race tracker remembers it.
struct ShadowCell {
  uint32_t phase = 0;        // barrier interval of the access (0: none yet)
  int32_t writer = -1;
  uint32_t writer_sync = 0;  // the writer's warp collective count
  uint32_t read_phase = 0;
  int32_t reader = -1;       // the latest reader
  uint32_t reader_sync = 0;  // its warp collective count
  uint32_t reader_lanes = 0; // lanes of the reader's warp that read at that count
  bool cross_warp = false;   // read by threads of more than one warp in this interval
};

struct Launch {
  const char* name = nullptr;
  dim3 grid, block;
  size_t dynamic_smem = 0;
  int nthreads = 0;
  uint3 block_idx{0, 0, 0};
  std::vector<Fiber>* fibers = nullptr;
  Fiber* running = nullptr;
  bool failed = false;
  std::string error;
  // __syncthreads
  int at_barrier = 0;
  int exited = -1;           // the first thread of the block that returned, if any
  const char* barrier_site = nullptr;
  std::vector<WarpSlot> warps;
  // shared memory: [0, dynamic) then the static variables, each followed by a guard gap
  char* arena = nullptr;
  size_t arena_cap = 0;
  size_t static_bytes = 0;
  size_t arena_used = 0;
  std::vector<SharedVar> shared_vars;
  // race tracking: one cell per arena byte, phase bumped at each block and barrier
  bool track_races = false;
  uint32_t phase = 1;
  std::vector<ShadowCell> shadow;
};

extern thread_local Launch* active;

// Records an error for the running fiber and leaves it for good.
[[noreturn]] void fail_running(const std::string& what);
std::string thread_name(const Launch& l, int linear);
std::string short_site(const char* site);

// Whether this build carries the race tracker's instrumentation.
bool racecheck_built();

}  // namespace emu
}  // namespace gf
