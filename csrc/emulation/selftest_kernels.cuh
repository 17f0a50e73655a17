// Small kernels for the emulator's own tests (python_tests/test_emulator.py):
// one correct reduction, and one deliberately broken kernel per check, each
// of which the emulator or a sanitizer build must catch. Torch-free, written
// against the same runtime header as the real kernels.
#pragma once

#include "../cuda/common.cuh"

namespace gf {
namespace emu_test {

using gf::cuda::block_sum;
using gf::cuda::kThreads;

// Correct: one partial per block, threads striding over x.
__global__ void __launch_bounds__(kThreads) block_sum_kernel(const float* x, int n, float* partials) {
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  v = block_sum(v);
  if (threadIdx.x == 0) partials[blockIdx.x] = v;
}

// Broken: reads a neighbour's shared slot with no barrier after the writes.
__global__ void __launch_bounds__(kThreads) missing_barrier_kernel(const float* x, int n, float* out) {
  GF_SHARED(float, slots, [kThreads]);
  const int t = threadIdx.x;
  slots[t] = t < n ? x[t] : 0.0f;
  out[t] = slots[(t + 1) % blockDim.x];
}

// Every lane of a warp reads one shared slot, then lane 7 overwrites it:
// correct with the __syncwarp between (SYNC), a race without it.
template <bool SYNC>
__global__ void __launch_bounds__(kThreads) warp_read_then_write_kernel(const float* x, int n, float* out) {
  GF_SHARED(float, slot, [8]);
  const int t = threadIdx.x, w = t >> 5;
  if ((t & 31) == 0) slot[w] = x[w % n];
  __syncwarp();
  out[t] = slot[w];
  if (SYNC) __syncwarp();
  if ((t & 31) == 7) slot[w] = 0.0f;
}

// Broken: the last thread reads one element past the end of x.
__global__ void __launch_bounds__(kThreads) read_past_end_kernel(const float* x, int n, float* out) {
  const int t = threadIdx.x;
  if (t < n) out[t] = x[t] + (t == n - 1 ? x[t + 1] : 0.0f);
}

// Broken: reads one element past a shared array (through a pointer, where
// UBSan's array-bounds check cannot see it: the poisoned guard must).
__global__ void __launch_bounds__(kThreads) shared_past_end_kernel(const float* x, int n, float* out) {
  GF_SHARED(float, tile, [32]);
  const int t = threadIdx.x;
  if (t < 32) tile[t] = t < n ? x[t] : 0.0f;
  __syncthreads();
  const float* p = tile;
  if (t == 0) out[0] = p[31 + (n > 0)];
}

// Broken when launched with a block that is not a multiple of 32 threads:
// the full-mask shuffle names lanes of the last warp that do not exist.
__global__ void __launch_bounds__(kThreads) full_mask_shuffle_kernel(const float* x, int n, float* out) {
  const int t = threadIdx.x;
  float v = t < n ? x[t] : 0.0f;
  v = gf::cuda::warp_sum(v);
  if ((t & 31) == 0) out[t >> 5] = v;
}

// Broken: a barrier inside a branch that half the block takes.
__global__ void __launch_bounds__(kThreads) half_barrier_kernel(const float* x, int n, float* out) {
  GF_SHARED(float, s, [kThreads]);
  const int t = threadIdx.x;
  s[t] = t < n ? x[t] : 0.0f;
  if (t < static_cast<int>(blockDim.x) / 2) __syncthreads();
  out[t] = s[t];
}

// Broken: a float reduction through atomics, whose result depends on the
// order in which blocks finish.
__global__ void __launch_bounds__(kThreads) atomic_sum_kernel(const float* x, int n, float* out) {
  float v = 0.0f;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  v = block_sum(v);
  if (threadIdx.x == 0) atomicAdd(out, v);
}

// Broken when launched with more than 128 threads.
__global__ void __launch_bounds__(128) bounded_kernel(const float* x, int n, float* out) {
  const int t = threadIdx.x;
  if (t < n) out[t] = x[t];
}

// Broken: more static shared memory than a block may have.
__global__ void __launch_bounds__(kThreads) big_shared_kernel(const float* x, int n, float* out) {
  GF_SHARED(float, big, [13 * 1024]);
  const int t = threadIdx.x;
  big[t] = t < n ? x[t] : 0.0f;
  __syncthreads();
  out[t] = big[t];
}

}  // namespace emu_test
}  // namespace gf
