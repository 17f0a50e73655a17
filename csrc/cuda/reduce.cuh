// Deterministic reductions: fixed per-thread order, warp shuffles, one
// partial per block, then one block adds the partials in a fixed order.
// No float atomics anywhere. Torch-free.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gf {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 8;  // 2048 resident threads per SM on sm_80/sm_90

// Blocks for a grid-stride loop over `work` items: enough to fill the device,
// never more than the work needs. Depends on the device only through its SM
// count, so a given GPU always reduces in the same order.
inline int grid_for(int64_t work, int num_sms) {
  int64_t need = (work + kThreads - 1) / kThreads;
  int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kBlocksPerSm;
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
  __shared__ T warp_totals[32];
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

template <typename T>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const T* __restrict__ partials, int n, T* __restrict__ out) {
  T v = T(0);
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += partials[i];
  v = block_sum(v);
  if (threadIdx.x == 0) *out = v;
}

}  // namespace cuda
}  // namespace gf
