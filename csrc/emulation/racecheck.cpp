// The shared-memory race check (compute-sanitizer racecheck's job) of the
// "race" build. That build compiles everything with g++'s -fsanitize=thread
// instrumentation but links no ThreadSanitizer runtime: the calls it inserts
// before every memory access land here. Accesses outside the running block's
// shared memory are ignored; inside it, two accesses to a byte by different
// threads, at least one a write, with no __syncthreads between them (and,
// within a warp, no warp collective such as __syncwarp between them) are
// reported as an error naming the kernel, block, both threads and the shared
// variable.
#include <cstring>
#include <string>

#include "state.h"

namespace gf {
namespace emu {

#if defined(__SANITIZE_THREAD__)
bool racecheck_built() { return true; }
#else
bool racecheck_built() { return false; }
#endif

}  // namespace emu
}  // namespace gf

#if defined(__SANITIZE_THREAD__)

#define GF_NO_TSAN __attribute__((no_sanitize_thread, noinline))

namespace {

using gf::emu::Launch;
using gf::emu::ShadowCell;

GF_NO_TSAN std::string variable_at(const Launch& l, size_t off) {
  if (off < l.dynamic_smem) return "dynamic shared memory, byte " + std::to_string(off);
  for (const auto& v : l.shared_vars)
    if (off >= v.offset && off < v.offset + v.size)
      return "byte " + std::to_string(off - v.offset) + " of the shared variable declared at " +
             gf::emu::short_site(v.site);
  return "shared memory byte " + std::to_string(off);
}

GF_NO_TSAN bool ordered(const Launch& l, int a, uint32_t a_sync, int b, uint32_t b_sync) {
  (void)l;
  return (a >> 5) == (b >> 5) && a_sync != b_sync;
}

GF_NO_TSAN void race(Launch& l, size_t off, const char* mine, int other, const char* theirs) {
  gf::emu::fail_running(std::string("shared-memory race: ") + mine + " of " + variable_at(l, off) + " after thread " +
                        gf::emu::thread_name(l, other) + "'s " + theirs +
                        " with no __syncthreads between them");
}

GF_NO_TSAN void access(const void* p, size_t n, bool write) {
  Launch* lp = gf::emu::active;
  if (!lp || !lp->track_races || !lp->running) return;
  Launch& l = *lp;
  const size_t off = static_cast<size_t>(static_cast<const char*>(p) - l.arena);
  if (off >= l.arena_cap) return;
  const int me = l.running->linear;
  const uint32_t sync = l.warps[me >> 5].syncs;
  const uint32_t phase = l.phase;
  for (size_t i = off; i < off + n && i < l.arena_cap; ++i) {
    ShadowCell& c = l.shadow[i];
    const bool wrote = c.phase == phase && c.writer >= 0 && c.writer != me;
    if (wrote && !ordered(l, c.writer, c.writer_sync, me, sync))
      race(l, i, write ? "write" : "read", c.writer, "write");
    if (write) {
      // Reads in this barrier interval that this write is not ordered after:
      // one from another warp, or one by another lane of this warp since its
      // last warp collective (reads before a collective are ordered by it).
      if (c.read_phase == phase && c.reader >= 0) {
        const uint32_t others = c.reader_lanes & ~(1u << (me & 31));
        if (c.cross_warp || (c.reader >> 5) != (me >> 5))
          race(l, i, "write", c.reader, "read");
        else if (c.reader_sync == sync && others)
          race(l, i, "write", (me & ~31) + __builtin_ctz(others), "read");
      }
      c.phase = phase;
      c.writer = me;
      c.writer_sync = sync;
    } else if (c.read_phase != phase || c.reader < 0) {
      c.read_phase = phase;
      c.reader = me;
      c.reader_sync = sync;
      c.reader_lanes = 1u << (me & 31);
      c.cross_warp = false;
    } else {
      if ((c.reader >> 5) != (me >> 5)) c.cross_warp = true;
      if (c.reader_sync != sync) c.reader_lanes = 0;  // earlier reads are ordered by the collectives since
      c.reader = me;
      c.reader_sync = sync;
      c.reader_lanes |= 1u << (me & 31);
    }
  }
}

}  // namespace

extern "C" {

GF_NO_TSAN void __tsan_init() {}
GF_NO_TSAN void __tsan_func_entry(void*) {}
GF_NO_TSAN void __tsan_func_exit() {}
GF_NO_TSAN void __tsan_ignore_thread_begin() {}
GF_NO_TSAN void __tsan_ignore_thread_end() {}
GF_NO_TSAN void __tsan_vptr_update(void**, void*) {}
GF_NO_TSAN void __tsan_vptr_read(void**) {}
GF_NO_TSAN void __tsan_read_range(void* p, unsigned long n) { access(p, n, false); }
GF_NO_TSAN void __tsan_write_range(void* p, unsigned long n) { access(p, n, true); }

#define GF_TSAN_ACCESS(N)                                                                 \
  GF_NO_TSAN void __tsan_read##N(void* p) { access(p, N, false); }                        \
  GF_NO_TSAN void __tsan_write##N(void* p) { access(p, N, true); }                        \
  GF_NO_TSAN void __tsan_unaligned_read##N(void* p) { access(p, N, false); }              \
  GF_NO_TSAN void __tsan_unaligned_write##N(void* p) { access(p, N, true); }              \
  GF_NO_TSAN void __tsan_volatile_read##N(void* p) { access(p, N, false); }               \
  GF_NO_TSAN void __tsan_volatile_write##N(void* p) { access(p, N, true); }               \
  GF_NO_TSAN void __tsan_unaligned_volatile_read##N(void* p) { access(p, N, false); }     \
  GF_NO_TSAN void __tsan_unaligned_volatile_write##N(void* p) { access(p, N, true); }
GF_TSAN_ACCESS(1)
GF_TSAN_ACCESS(2)
GF_TSAN_ACCESS(4)
GF_TSAN_ACCESS(8)
GF_TSAN_ACCESS(16)

// Atomics are performed (they are real operations of the instrumented code)
// and not tracked: atomics never race with each other.
#define GF_SC __ATOMIC_SEQ_CST
#define GF_TSAN_ATOMIC(N, T)                                                                                  \
  GF_NO_TSAN T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, GF_SC); }        \
  GF_NO_TSAN void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, GF_SC); }        \
  GF_NO_TSAN T __tsan_atomic##N##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, GF_SC); } \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, GF_SC); } \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, GF_SC); } \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, GF_SC); } \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, GF_SC); }   \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, GF_SC); } \
  GF_NO_TSAN T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) { return __atomic_fetch_nand(a, v, GF_SC); } \
  GF_NO_TSAN int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {           \
    return __atomic_compare_exchange_n(a, c, v, false, GF_SC, GF_SC);                                       \
  }                                                                                                          \
  GF_NO_TSAN int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {             \
    return __atomic_compare_exchange_n(a, c, v, false, GF_SC, GF_SC);                                       \
  }                                                                                                          \
  GF_NO_TSAN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                 \
    __atomic_compare_exchange_n(a, &c, v, false, GF_SC, GF_SC);                                             \
    return c;                                                                                                \
  }
GF_TSAN_ATOMIC(8, char)
GF_TSAN_ATOMIC(16, short)
GF_TSAN_ATOMIC(32, int)
GF_TSAN_ATOMIC(64, long long)

GF_NO_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(GF_SC); }
GF_NO_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(GF_SC); }

}  // extern "C"

#endif  // __SANITIZE_THREAD__
