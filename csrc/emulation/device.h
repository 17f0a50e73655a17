// The emulated CUDA device: what csrc/cuda/runtime.cuh gives the kernels when
// they are compiled by g++ as host code (GF_EMULATED). The threads of a block
// are fibers that run concurrently on one OS thread and switch only at
// barriers and warp collectives (csrc/emulation/runtime.cpp), so a barrier or
// a shuffle means what it means on a GPU, and misuse is reported as an error
// naming the kernel, block and thread.
//
// What it cannot tell: timing, occupancy, coalescing, the memory model of
// real hardware (blocks run one after another, so inter-block races and the
// ordering of global-memory atomics across blocks are never exercised).
#pragma once

// __launch_bounds__(N) becomes N patchable NOPs at the kernel's entry, the one
// per-function number g++ keeps that the launcher can read back at run time
// (the emulator counts them to enforce the bound). Must precede cuda_runtime.h,
// which leaves __launch_bounds__ undefined for host compilers.
#define __launch_bounds__(...) GF_EMU_LAUNCH_BOUNDS_(__VA_ARGS__, 0)
// (sizeof folds the bound to a constant, which g++ requires of this attribute.)
#define GF_EMU_LAUNCH_BOUNDS_(n, ...) __attribute__((patchable_function_entry(sizeof(char[(n)]))))

// Kernels get internal linkage: each translation unit keeps its own copy, so
// the linker never discards a duplicate whose NOP record (above) it keeps.
#define __global__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gf {
namespace emu {

// The indices of the fiber that runs now (set by the scheduler at each switch).
struct Current {
  uint3 thread_idx;
  uint3 block_idx;
  uint3 block_dim;  // uint3, not dim3: a trivial type keeps thread_local access cheap
  uint3 grid_dim;
};
extern thread_local Current current;

enum class Collective : int { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All, SyncWarp };

void syncthreads(const char* site);
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int arg, int width, const char* site);
void* shared_alloc(const void* tag, size_t size, size_t align, const char* site);
void* dynamic_shared();
[[noreturn]] void trap(const char* site, const char* what);

// Runs `body(arg)` as every thread of every block of the grid. `entry` is the
// kernel's address (its __launch_bounds__ are read from it), `name` its
// signature. Throws std::runtime_error on misuse.
void run_kernel(const char* name, const void* entry, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                void (*body)(void*), void* arg);

template <typename T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T> inline T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <auto K> const char* kernel_signature() { return __PRETTY_FUNCTION__; }

}  // namespace emu

namespace cuda {

template <auto K, typename... A>
inline void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
  auto call = [&]() { K(args...); };
  using Call = decltype(call);
  ::gf::emu::run_kernel(::gf::emu::kernel_signature<K>(), reinterpret_cast<const void*>(K), grid, block, smem, stream,
                        [](void* p) { (*static_cast<Call*>(p))(); }, &call);
}

}  // namespace cuda
}  // namespace gf

#define GF_EMU_STR2_(x) #x
#define GF_EMU_STR_(x) GF_EMU_STR2_(x)
#define GF_EMU_SITE __FILE__ ":" GF_EMU_STR_(__LINE__)

#define threadIdx (::gf::emu::current.thread_idx)
#define blockIdx (::gf::emu::current.block_idx)
#define blockDim (::gf::emu::current.block_dim)
#define gridDim (::gf::emu::current.grid_dim)
constexpr int warpSize = 32;

// One shared variable per block: every thread of the block that reaches the
// declaration gets the same storage, poisoned (0xff bytes) when each block
// starts, with a guarded gap after it.
#define GF_SHARED(type, name, dims)                                                                        \
  static const char name##_gf_tag = 0;                                                                     \
  using name##_gf_t = type dims;                                                                           \
  name##_gf_t& name = *static_cast<name##_gf_t*>(                                                          \
      ::gf::emu::shared_alloc(&name##_gf_tag, sizeof(name##_gf_t), alignof(name##_gf_t), GF_EMU_SITE))
#define GF_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::gf::emu::dynamic_shared())

#define __syncthreads() ::gf::emu::syncthreads(GF_EMU_SITE)
#define __syncwarp(...) ::gf::emu::syncwarp_(GF_EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::gf::emu::shfl_(::gf::emu::Collective::ShflIdx, GF_EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::gf::emu::shfl_(::gf::emu::Collective::ShflUp, GF_EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::gf::emu::shfl_(::gf::emu::Collective::ShflDown, GF_EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::gf::emu::shfl_(::gf::emu::Collective::ShflXor, GF_EMU_SITE, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  static_cast<unsigned>(::gf::emu::warp_collective(::gf::emu::Collective::Ballot, mask, (pred) != 0, 0, 32, GF_EMU_SITE))
#define __any_sync(mask, pred) \
  static_cast<int>(::gf::emu::warp_collective(::gf::emu::Collective::Any, mask, (pred) != 0, 0, 32, GF_EMU_SITE))
#define __all_sync(mask, pred) \
  static_cast<int>(::gf::emu::warp_collective(::gf::emu::Collective::All, mask, (pred) != 0, 0, 32, GF_EMU_SITE))
#define __trap() ::gf::emu::trap(GF_EMU_SITE, "__trap()")

namespace gf {
namespace emu {

template <typename T> inline T shfl_(Collective kind, const char* site, unsigned mask, T v, int arg, int width = 32) {
  return from_bits<T>(warp_collective(kind, mask, to_bits(v), arg, width, site));
}
inline void syncwarp_(const char* site, unsigned mask = 0xffffffffu) {
  warp_collective(Collective::SyncWarp, mask, 0, 0, 32, site);
}

// Atomics. Fibers switch only at barriers and collectives, so each of these
// is indivisible; the __atomic builtins make the racecheck build (whose
// instrumentation turns them into atomic events) not report them as races.
template <typename T> inline T atomic_rmw_bits(T* addr, T (*op)(T, T), T v) {
  using B = std::conditional_t<sizeof(T) == 4, uint32_t, std::conditional_t<sizeof(T) == 8, uint64_t, uint16_t>>;
  B* p = reinterpret_cast<B*>(addr);
  B old = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T cur = from_bits<T>(old);
    B next = static_cast<B>(to_bits(op(cur, v)));
    if (__atomic_compare_exchange_n(p, &old, next, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return cur;
  }
}

}  // namespace emu
}  // namespace gf

template <typename T, typename = std::enable_if_t<std::is_integral<T>::value>> inline T atomicAdd(T* a, T v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* a, float v) {
  return ::gf::emu::atomic_rmw_bits<float>(a, [](float x, float y) { return x + y; }, v);
}
inline double atomicAdd(double* a, double v) {
  return ::gf::emu::atomic_rmw_bits<double>(a, [](double x, double y) { return x + y; }, v);
}
template <typename T> inline T atomicSub(T* a, T v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicAnd(T* a, T v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicOr(T* a, T v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicXor(T* a, T v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
template <typename T> inline T atomicExch(T* a, T v) {
  if constexpr (std::is_integral<T>::value) return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
  else return ::gf::emu::atomic_rmw_bits<T>(a, [](T, T y) { return y; }, v);
}
template <typename T> inline T atomicCAS(T* a, T compare, T v) {
  __atomic_compare_exchange_n(a, &compare, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value either way
}
template <typename T> inline T atomicMax(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
  return old;
}
template <typename T> inline T atomicMin(T* a, T v) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while (old > v && !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
  return old;
}

template <typename T> inline T __ldg(const T* p) { return *p; }

// Fast-math intrinsics: libm, as accurate as or more than the device's.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
