// The one runtime header of the CUDA kernels. Under nvcc it is the CUDA
// runtime; in the emulated build (g++, GF_EMULATED) it is the project's CPU
// emulation of it (csrc/emulation/device.h), so the same kernel source runs
// in both. Kernels launch through gf::cuda::launch<kernel>(...) and declare
// shared memory with GF_SHARED / GF_DYNAMIC_SHARED, the only spellings that
// differ between the two.
#pragma once

#if defined(GF_EMULATED)
#include "../emulation/device.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

// GF_SHARED(float, tile, [32][4]) declares `__shared__ float tile[32][4]`.
#define GF_SHARED(type, name, dims) __shared__ type name dims
// GF_DYNAMIC_SHARED(float, buf) declares `extern __shared__ float buf[]`.
#define GF_DYNAMIC_SHARED(type, name) extern __shared__ type name[]

namespace gf {
namespace cuda {

// kernel<<<grid, block, smem, stream>>>(args...), spelled as a function so
// that g++ can compile the emulated build of the same call site.
template <auto K, typename... A>
inline void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, A... args) {
  K<<<grid, block, smem, stream>>>(args...);
}

}  // namespace cuda
}  // namespace gf
#endif
