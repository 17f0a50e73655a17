// Scalar math shared by the CPU loops and the CUDA kernels. Torch-free.
//
// On the device the CUDA libm is used. On the host, float goes through
// branch-free polynomial exp/log (Cephes-style range reduction) so that the
// CPU loops vectorise under `#pragma omp simd` with no libmvec; double keeps
// std:: functions because it only serves gradcheck. The emulated CUDA build
// (GF_EMULATED: the kernels compiled by g++) takes the device paths with the
// host libm, so it computes what the device computes, overflows included.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDA_ARCH__) || defined(GF_EMULATED)
#define GF_DEVICE_MATH 1
#endif

#if defined(__CUDACC__) || defined(GF_EMULATED)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define GF_HALF_TYPES 1
#endif

#if defined(__CUDACC__)
#define GF_HD __host__ __device__ __forceinline__
#else
#define GF_HD inline __attribute__((always_inline))
#endif

// Vectorise the loop that follows in host builds (CPU kernels are compiled
// with -fopenmp); nothing in CUDA builds.
#if defined(__CUDACC__) || defined(GF_EMULATED)
#define GF_SIMD
#else
#define GF_SIMD _Pragma("omp simd")
#endif

namespace gf {

// Storage <-> arithmetic conversion. PyTorch builds CUDA code with the
// implicit half/bfloat16 conversions switched off, hence the explicit ones.
template <typename T, typename S> GF_HD T cvt(S v) { return static_cast<T>(v); }
#if defined(GF_HALF_TYPES)
template <> GF_HD float cvt<float, __half>(__half v) { return __half2float(v); }
template <> GF_HD __half cvt<__half, float>(float v) { return __float2half_rn(v); }
template <> GF_HD float cvt<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> GF_HD __nv_bfloat16 cvt<__nv_bfloat16, float>(float v) { return __float2bfloat16_rn(v); }
#endif

template <typename T> GF_HD T gmax(T a, T b) { return a > b ? a : b; }

// a * b rounded on its own. nvcc contracts a multiply followed by an add
// into one FMA by default, which rounds once where PyTorch's separate ops
// round twice; the _rn intrinsics are never contracted, so IoUs and
// distances come out bitwise as the reference computes them (ATSS compares
// them for ties). Host builds of the exact ops are compiled without FMA.
GF_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
GF_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

GF_HD float gsqrt(float x) { return ::sqrtf(x); }
GF_HD double gsqrt(double x) { return ::sqrt(x); }
template <typename T> GF_HD T gmin(T a, T b) { return a < b ? a : b; }

#if !defined(GF_DEVICE_MATH)
// __builtin_bit_cast, not memcpy: a memcpy inside an `omp simd` loop body
// makes GCC give up on vectorising it.
GF_HD float bits_to_float(int32_t i) { return __builtin_bit_cast(float, i); }
GF_HD int32_t float_to_bits(float f) { return __builtin_bit_cast(int32_t, f); }

// exp(x), ~1 ulp on [-87.3, 88.3]; exp(-87.34) ~ 2^-126 below that and
// exp(88.38) ~ 2.4e38 above (inf included), NaN for NaN. The clamps keep a NaN (a
// compare that is false passes x through) so that a diverged logit shows in
// the loss; the exponent's int conversion must not see it (UB), hence gmax.
GF_HD float host_expf(float x) {
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.37626f ? 88.37626f : x;
  float fx = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - fx * 0.693359375f;
  r = r + fx * 2.12194440e-4f;
  float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * z + r + 1.0f;
  int32_t e = static_cast<int32_t>(gmax(fx, -127.0f)) + 127;  // NaN -> 0.0f, and NaN * 0 is NaN
  return y * bits_to_float(e << 23);
}

// log(x), ~1 ulp for normal x > 0; -inf at 0, inf at inf, NaN below 0 or for
// NaN (bit tricks alone would give a finite number there, hiding a NaN sum).
GF_HD float host_logf(float x) {
  int32_t bits = float_to_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // [0.5, 1)
  bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  float fe = static_cast<float>(e);
  float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = m * z * p;
  y = y - 2.12194440e-4f * fe;
  y = y - 0.5f * z;
  const float r = m + y + 0.693359375f * fe;
  const float edge = x == 0.0f ? -INFINITY : (x > 0.0f ? x : NAN);
  return x > 0.0f && x <= 3.40282347e+38f ? r : edge;
}
#endif

GF_HD float gexp(float x) {
#if defined(GF_DEVICE_MATH)
  return ::expf(x);
#else
  return host_expf(x);
#endif
}
GF_HD double gexp(double x) { return ::exp(x); }

GF_HD float glog(float x) {
#if defined(GF_DEVICE_MATH)
  return ::logf(x);
#else
  return host_logf(x);
#endif
}
GF_HD double glog(double x) { return ::log(x); }

// log1p(e) for e in [0, 1] (QFL's e = exp(-|x|)): e * P(e), P a degree-8 fit
// of log1p(e)/e on [0, 1] (least squares on Chebyshev nodes; within 2.4 ulp,
// relative 2e-7, over the whole interval, and exact relative accuracy as
// e -> 0, where P -> 1). Nine multiply-adds where log(1+e) with its tiny-e
// correction took a range reduction, a longer polynomial and a division: this
// is the innermost step of every QFL element, on the host and on the device
// alike (CUDA's log1pf was 15 of the QFL kernels' ~70 instructions a logit,
// tools/sass_model.py), so every backend computes the same function.
GF_HD float glog1p_unit(float e) {
  float p = 5.253457929939032e-3f;
  p = p * e - 2.958850748836994e-2f;
  p = p * e + 7.836166769266129e-2f;
  p = p * e - 1.3674770295619965e-1f;
  p = p * e + 1.9111430644989014e-1f;
  p = p * e - 2.4844369292259216e-1f;
  p = p * e + 3.3319270610809326e-1f;
  p = p * e - 4.9999502301216125e-1f;
  p = p * e + 1.0f;
  return p * e;
}
GF_HD double glog1p_unit(double e) { return ::log1p(e); }

// a^b for a >= 0 with 0^0 = 1 (the convention SPEC section 1 asks for).
template <typename T> GF_HD T gpow_nonneg(T a, T b) {
  T safe = a > T(0) ? a : T(1);
  T v = gexp(b * glog(safe));
  return a > T(0) ? v : (b == T(0) ? T(1) : T(0));
}

}  // namespace gf
