// Helpers of the thin CUDA launchers (torch side): device facts and dtypes.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include "common.cuh"

namespace gflops {

// SM count per device, read once (a host attribute query, no sync).
inline int num_sms(int device) {
  static int cache[64] = {0};
  int& n = cache[device & 63];
  if (n == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

inline gf::cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return gf::cuda::DType::Float;
    case at::kDouble: return gf::cuda::DType::Double;
    case at::kHalf: return gf::cuda::DType::Half;
    case at::kBFloat16: return gf::cuda::DType::BFloat16;
    default: TORCH_CHECK(false, "gflops: unsupported dtype ", t);
  }
}

inline const void* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

}  // namespace gflops
