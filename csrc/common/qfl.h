// Quality Focal Loss, per element (SPEC.md section 1). Torch-free.
#pragma once

#include "math.h"

namespace gf {

// sigmoid(x) and BCE(x, y) from a single exp(-|x|).
template <typename T> struct SigBce { T s; T bce; };

template <typename T> GF_HD SigBce<T> sigmoid_bce(T x, T y) {
  T e = gexp(-(x < T(0) ? -x : x));
  T inv = T(1) / (T(1) + e);
  SigBce<T> r;
  r.s = x >= T(0) ? inv : e * inv;
  r.bce = gmax(x, T(0)) - x * y + glog1p_unit(e);
  return r;
}

template <typename T> struct LossGrad { T loss; T grad; };

// loss = BCE(x, y) * |y - s|^beta and d loss / d x, from one sigmoid/BCE, with
// the modulating factor not detached:
// beta*|d|^(beta-1)*sign(d)*s*(1-s)*BCE + |d|^beta*d, first term 0 when d == 0.
// BETA2 is the beta == 2 fast path. A caller that uses one of the two gets
// the other removed by the compiler (inlined, pure arithmetic).
template <typename T, bool BETA2> GF_HD LossGrad<T> qfl_loss_grad(T x, T y, T beta) {
  SigBce<T> sb = sigmoid_bce(x, y);
  const T s = sb.s;
  const T d = s - y;
  const T ds = s * (T(1) - s);
  LossGrad<T> r;
  if constexpr (BETA2) {
    r.loss = sb.bce * (d * d);
    r.grad = T(2) * d * ds * sb.bce + d * d * d;
  } else {
    const T ad = d < T(0) ? -d : d;
    const T sign = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
    const T p = gpow_nonneg(ad, beta);
    r.loss = sb.bce * p;
    // |d|^(beta-1) * s(1-s) as (|d|^beta * s(1-s)) / |d|: for beta < 1 the power
    // itself overflows on a denormal |d| (a logit near -90 with y = 0) before the
    // vanishing s(1-s)*BCE can cancel it; this order stays finite (|d| = s there).
    const T first = ad > T(0) ? beta * sign * ((p * ds) / ad) * sb.bce : T(0);
    r.grad = first + p * d;
  }
  return r;
}

template <typename T, bool BETA2> GF_HD T qfl_loss(T x, T y, T beta) { return qfl_loss_grad<T, BETA2>(x, y, beta).loss; }

template <typename T, bool BETA2> GF_HD T qfl_grad(T x, T y, T beta) { return qfl_loss_grad<T, BETA2>(x, y, beta).grad; }

// The target of element (row, c): the row's score on its label column, else 0.
// Labels outside [0, C) are background, so they never match a column, and a
// background row's score is never read into a value (SPEC section 1 ignores
// it: NaN there must not leak). A select, not a branch: CPU loops vectorise.
template <typename T, typename I, typename J> GF_HD T qfl_target(I c, J label, T score) {
  return c == label ? score : T(0);
}

// SPEC section 1's valid scores: only a positive row (label in [0, C)) reads
// its score, which must lie in [0, 1] (NaN fails). Tested per row in the CPU
// sweep; the CUDA path runs the same test as tensor ops.
template <typename T> GF_HD bool qfl_score_ok(int64_t label, int64_t C, T score) {
  return label < 0 || label >= C || (score >= T(0) && score <= T(1));
}

}  // namespace gf
