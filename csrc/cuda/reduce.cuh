// Deterministic reductions: fixed per-thread order, warp shuffles, one
// partial per block, then one block adds the partials in a fixed order.
// No float atomics anywhere. Torch-free.
#pragma once

#include <atomic>
#include <cstdint>

#include "runtime.cuh"

namespace gf {
namespace cuda {

constexpr int kThreads = 256;
// 2048 resident threads per SM on sm_80/sm_90: no kernel of kThreads threads
// has more blocks resident, so partial-sum buffers are sized with this.
constexpr int kMaxBlocksPerSm = 2048 / kThreads;

// Blocks of kernel K (kThreads threads, no dynamic shared memory) resident on
// one SM, from the occupancy calculator (registers included), cached per
// device: the kernel's resources are fixed for a device, so a grid sized from
// this (and with it the order of a reduction) is the same on every call.
template <auto K> int resident_blocks() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
  std::atomic<int>& c = cache[dev & 63];
  int n = c.load(std::memory_order_relaxed);
  if (n == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, K, kThreads, 0) != cudaSuccess || n < 1) {
      (void)cudaGetLastError();
      n = 1;
    }
    n = n < kMaxBlocksPerSm ? n : kMaxBlocksPerSm;
    c.store(n, std::memory_order_relaxed);
  }
  return n;
}

// Blocks for a grid-stride loop of kernel K over `work` items: one full wave
// of the device, never more than the work needs, at most max_grid().
template <auto K> int grid_for(int64_t work, int num_sms) {
  int64_t need = (work + kThreads - 1) / kThreads;
  int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * resident_blocks<K>();
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

// The largest grid grid_for() returns: the size of a buffer of per-block partials.
inline int max_grid(int64_t work, int num_sms) {
  int64_t need = (work + kThreads - 1) / kThreads;
  int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Sum over the block; the result is valid in thread 0. Every thread must
// call. Ends with a barrier, so it can be called again in the same kernel.
template <typename T> __device__ T block_sum(T v) {
  GF_SHARED(T, warp_totals, [32]);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nwarps ? warp_totals[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();
  return v;
}

// The factor that folds a loss's "mean" into its kernels: x * (1 / divisor),
// the reciprocal computed in double and rounded to T on the host. ATen's CUDA
// division of a tensor by a Python number rounds exactly so (a CPU-scalar
// divisor becomes a multiply by its reciprocal, BinaryDivTrueKernel.cu; the
// reciprocal in double since PyTorch 2.10, pytorch#169507: before, in T, which
// differs only for a divisor that is not a T), so the fold changes no bit
// against the division it replaces, and saves its launch. 1 (exact) when the
// loss is not a mean.
template <typename T> T mean_scale(bool mean, double divisor) {
  return mean ? static_cast<T>(1.0 / divisor) : T(1);
}

// Block b: outs[b] = (sum of partials[b n, (b + 1) n)) * scale; n = 0 writes
// 0 * scale. One or two blocks (two sums from one kernel's partials: one launch).
template <typename T>
__global__ void __launch_bounds__(kThreads)
sum_partials_kernel(const T* __restrict__ partials, int n, T scale, T* __restrict__ out, T* __restrict__ out2) {
  const T* p = partials + static_cast<int64_t>(blockIdx.x) * n;
  T v = T(0);
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += p[i];
  v = block_sum(v);
  if (threadIdx.x == 0) *(blockIdx.x == 0 ? out : out2) = v * scale;
}

}  // namespace cuda
}  // namespace gf
