// Distribution ("integral") decoding, per row of n+1 bin logits
// (SPEC.md section 3): the expected bin under the row's softmax.
#pragma once

#include "dfl.h"

namespace gf {

// sum_b softmax(x)[b] * b, given the row's log-sum-exp.
template <typename T, typename scalar_t> GF_HD T integral_from_lse(const scalar_t* x, int n1, T lse) {
  T d = T(0);
  for (int b = 1; b < n1; ++b) d += gexp(cvt<T>(x[b]) - lse) * T(b);
  return d;
}

// d dist / d x_b = p_b * (b - dist).
template <typename T> GF_HD T integral_grad(T x_b, int b, T lse, T dist) {
  return gexp(x_b - lse) * (T(b) - dist);
}

}  // namespace gf
