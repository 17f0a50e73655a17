// Distribution ("integral") decoding, per row of n+1 bin logits
// (SPEC.md section 3): the expected bin under the row's softmax.
#pragma once

#include "dfl.h"

namespace gf {

// The row's log-sum-exp and expected bin sum_b softmax(x)[b] * b, from one
// pass of exponentials: dist = sum_b e_b * b / sum_b e_b, e_b = exp(x_b - max).
template <typename T, typename scalar_t> GF_HD void row_lse_dist(const scalar_t* x, int n1, T& lse, T& dist) {
  T m = cvt<T>(x[0]);
  for (int b = 1; b < n1; ++b) m = gmax(m, cvt<T>(x[b]));
  T s = T(0), d = T(0);
  for (int b = 0; b < n1; ++b) {
    const T e = gexp(cvt<T>(x[b]) - m);
    s += e;
    d += e * T(b);
  }
  lse = m + glog(s);
  dist = d / s;
}

// d dist / d x_b = p_b * (b - dist), from p_b = softmax[b].
template <typename T> GF_HD T integral_grad_from_p(T p, int b, T dist) { return p * (T(b) - dist); }

template <typename T> GF_HD T integral_grad(T x_b, int b, T lse, T dist) {
  return integral_grad_from_p(gexp(x_b - lse), b, dist);
}

// g * d dist / d x of one row, to out: from its logits and log-sum-exp ...
template <typename T, typename scalar_t>
GF_HD void integral_row_grad(const scalar_t* x, int n1, T g, T lse, T dist, scalar_t* out) {
  GF_SIMD
  for (int b = 0; b < n1; ++b) out[b] = cvt<scalar_t>(g * integral_grad(cvt<T>(x[b]), b, lse, dist));
}

// ... or from its exponentials e (with or without a shift: only e / s is
// used) and their sum s, as the CPU tiles keep them.
template <typename T, typename scalar_t>
GF_HD void integral_row_grad_exp(const T* e, T s, int n1, T g, T dist, scalar_t* out) {
  const T inv = T(1) / s;
  GF_SIMD
  for (int b = 0; b < n1; ++b) out[b] = cvt<scalar_t>(g * integral_grad_from_p(e[b] * inv, b, dist));
}

}  // namespace gf
