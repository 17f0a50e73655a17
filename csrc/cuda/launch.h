// Helpers of the thin CUDA launchers (torch side): device facts, dtypes, the
// device guard and stream, and the registration key. The launchers compile
// twice from the same source: by nvcc for the CUDA backend of the `gflops`
// ops, and by g++ (GF_EMULATED) for the `gflops_emu` ops, whose "device" is
// the CPU emulator of csrc/emulation, taking CPU tensors. Everything between
// the tensors and the kernel arguments (checks, contiguity, vectorisation and
// alignment decisions, partial buffers, index width) is therefore shared.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common.cuh"
#include "row_tiles.cuh"

#if defined(GF_EMULATED)

#define GF_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(gflops_emu, CPU, m)
#define GF_CUDA_CHECK(expr)                                                                 \
  do {                                                                                      \
    const cudaError_t gf_err_ = (expr);                                                     \
    TORCH_CHECK(gf_err_ == cudaSuccess, "gflops (emulated CUDA): ", cudaGetErrorString(gf_err_)); \
  } while (0)

namespace gflops {
struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
}  // namespace gflops

#else

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define GF_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(gflops, CUDA, m)
#define GF_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)

namespace gflops {
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
}  // namespace gflops

#endif

namespace gflops {

// SM count per device, read once (a host attribute query, no sync). The
// emulator's count is a test setting, so it is read every time there.
inline int num_sms(int device) {
  device = device < 0 ? 0 : device;
#if defined(GF_EMULATED)
  int n = 0;
  GF_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
#else
  static int cache[64] = {0};
  int& n = cache[device & 63];
  if (n == 0) GF_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
#endif
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

// The distribution kernels hold whole rows in shared memory (a box-branch
// anchor: `rows` = 4 side rows); one item must fit the tile budget (47 KiB:
// 48 KiB, the most a block takes without opting in, less the kernels' static
// arrays).
inline void check_rows_fit(int64_t row_len, const at::Tensor& pred, int64_t reg_max, const char* op, int rows = 1) {
  const size_t acc = pred.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  TORCH_CHECK(row_len < (int64_t(1) << 30) && gf::cuda::tile_rows(static_cast<int>(row_len), acc) >= rows, op,
              ": reg_max = ", reg_max, " is too large for the CUDA kernels (", rows, " x ", row_len, " ",
              acc == sizeof(double) ? "float64" : "float32", " values must fit in ", gf::cuda::kTileBytes / 1024,
              " KiB of shared memory)");
}

}  // namespace gflops
