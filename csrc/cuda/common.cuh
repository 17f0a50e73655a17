// Torch-free pieces every CUDA kernel header uses: the dtype switch of the
// host entry points, 16-byte packs, and the deterministic reductions.
#pragma once

#include <cstdint>

#include "reduce.cuh"
#include "runtime.cuh"

namespace gf {
namespace cuda {

enum class DType { Float, Double, Half, BFloat16 };

template <typename scalar_t, int VEC> struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

// Elements per 16-byte pack.
template <typename scalar_t> constexpr int pack_width() { return 16 / static_cast<int>(sizeof(scalar_t)); }

// Storage type and arithmetic type for each dtype.
template <typename S, typename A> struct Types { using scalar_t = S; using acc_t = A; };

template <typename F> void dispatch_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::Float: f(Types<float, float>{}); break;
    case DType::Double: f(Types<double, double>{}); break;
    case DType::Half: f(Types<__half, float>{}); break;
    case DType::BFloat16: f(Types<__nv_bfloat16, float>{}); break;
  }
}

inline size_t acc_size(DType dt) { return dt == DType::Double ? sizeof(double) : sizeof(float); }

// Test-only switch: take the 64-bit index path even for small sizes, so the
// emulated tests run it (see csrc/emulation/module.cpp).
inline std::atomic<bool>& force_int64_index() {
  static std::atomic<bool> on{false};
  return on;
}

// Test-only: where the ATSS kernels count their gf::AtssPath choices (a
// device buffer of gf::kAtssPaths words); nullptr (no counting) normally.
inline std::atomic<unsigned long long*>& atss_census_buffer() {
  static std::atomic<unsigned long long*> buffer{nullptr};
  return buffer;
}

// Test-only: where the AutoAssign point-tile kernel counts the GTs its tiles
// keep (kAaCensus words, see autoassign_kernels.cuh); nullptr normally.
inline std::atomic<unsigned long long*>& autoassign_census_buffer() {
  static std::atomic<unsigned long long*> buffer{nullptr};
  return buffer;
}

// Test-only: where the nms kernels count the rows each path settles
// (kNmsCensus words, see nms_kernels.cuh); nullptr normally.
inline std::atomic<unsigned long long*>& nms_census_buffer() {
  static std::atomic<unsigned long long*> buffer{nullptr};
  return buffer;
}

// 32-bit indexing when the flat index and its grid stride stay below 2^31.
inline bool fits_int32(int64_t n) { return n < (int64_t(1) << 30) && !force_int64_index().load(std::memory_order_relaxed); }

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename acc_t> __device__ __forceinline__ acc_t weight_of(const acc_t* w, int64_t r) {
  return w ? w[r] : acc_t(1);
}

// A kernel as a type, so that a generic lambda can take the instantiation to
// launch and size its grid from (launch<K>, grid_for<K>).
template <auto K> struct Kern { static constexpr auto value = K; };

#define GF_GRID_STRIDE(i, n)                                                              \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// (row, column) of flat element e of a (rows, cols) array, stepped by `step` elements at a time:
// one division when a thread starts instead of one per element or pack, (row, col) +=
// (step / cols, step % cols) after (nvcc did not hoist the divisor's reciprocal out of the loop).
// n > 0 (a caller with no columns has no elements either, and passes 1).
template <typename index_t> struct RowStep {
  index_t row, col, step_r, step_c, cols;
  __device__ __forceinline__ RowStep(index_t e, index_t step, index_t n)
      : row(e / n), col(e - row * n), step_r(step / n), step_c(step - step_r * n), cols(n) {}
  __device__ __forceinline__ void next() {
    row += step_r;
    col += step_c;
    if (col >= cols) {
      col -= cols;
      ++row;
    }
  }
  // The element's offset in a row-padded copy (a shared-memory tile of row pitch `stride`).
  __device__ __forceinline__ index_t at(index_t stride) const { return row * stride + col; }
};

}  // namespace cuda

}  // namespace gf
