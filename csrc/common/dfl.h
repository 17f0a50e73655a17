// Distribution Focal Loss, per row of n+1 bin logits (SPEC.md section 2).
// Torch-free; `scalar_t` is whatever the caller stores (float, half, ...).
#pragma once

#include "math.h"

namespace gf {

template <typename T> struct DflSplit { int l; T wl; T wr; };

// The two bins around the target and their weights. Targets are clamped to
// [0, n] so that a kernel run without validation never indexes outside the
// row; in-range targets are unchanged.
template <typename T> GF_HD DflSplit<T> dfl_split(T target, int n) {
  T t = gmin(gmax(target, T(0)), T(n));
  t = t == t ? t : T(0);  // NaN never becomes an index
  int l = static_cast<int>(::floor(t));
  l = l > n - 1 ? n - 1 : l;
  DflSplit<T> r;
  r.l = l;
  r.wl = T(l + 1) - t;
  r.wr = t - T(l);
  return r;
}

// SPEC section 2's valid targets: [0, n) (NaN fails). The CPU loops test it
// per row in their sweep; the CUDA path runs the same test as tensor ops.
template <typename T> GF_HD bool dfl_target_ok(T target, int n) { return target >= T(0) && target < T(n); }

// -log softmax of a bin, lse - x: never below 0, though an unshifted lse (the
// CPU's) can round 1 ulp below the row's max. A NaN passes (d < 0 is false).
template <typename T> GF_HD T neg_log_softmax(T lse, T x) {
  const T d = lse - x;
  return d < T(0) ? T(0) : d;
}

// The loss of a row from its log-sum-exp and the logits of the two bins:
// -(wl*logS[l] + wr*logS[l+1]).
template <typename T> GF_HD T dfl_loss_from_lse(T lse, T x_left, T x_right, const DflSplit<T>& sp) {
  return sp.wl * neg_log_softmax(lse, x_left) + sp.wr * neg_log_softmax(lse, x_right);
}

// d loss / d x_k = softmax[k] - wl*[k==l] - wr*[k==l+1], from p = softmax[k].
// Arithmetic rather than a branch, so that CPU loops over k vectorise.
template <typename T> GF_HD T dfl_grad_from_p(T p, int k, DflSplit<T> sp) {
  return p - (sp.wl * T(k == sp.l) + sp.wr * T(k == sp.l + 1));
}

template <typename T> GF_HD T dfl_grad_from_lse(T x_k, int k, T lse, const DflSplit<T>& sp) {
  return dfl_grad_from_p(gexp(x_k - lse), k, sp);
}

// log-sum-exp of a row, max-shifted.
template <typename T, typename scalar_t> GF_HD T row_logsumexp(const scalar_t* x, int n1) {
  T m = cvt<T>(x[0]);
  for (int k = 1; k < n1; ++k) m = gmax(m, cvt<T>(x[k]));
  T s = T(0);
  for (int k = 0; k < n1; ++k) s += gexp(cvt<T>(x[k]) - m);
  return m + glog(s);
}

template <typename T, typename scalar_t>
GF_HD T dfl_row_loss(const scalar_t* x, int n1, T target) {
  DflSplit<T> sp = dfl_split(target, n1 - 1);
  return dfl_loss_from_lse(row_logsumexp<T>(x, n1), cvt<T>(x[sp.l]), cvt<T>(x[sp.l + 1]), sp);
}

template <typename T, typename scalar_t>
GF_HD void dfl_row_grad(const scalar_t* x, int n1, T target, T scale, scalar_t* g) {
  DflSplit<T> sp = dfl_split(target, n1 - 1);
  T lse = row_logsumexp<T>(x, n1);
  for (int k = 0; k < n1; ++k) g[k] = cvt<scalar_t>(scale * dfl_grad_from_lse(cvt<T>(x[k]), k, lse, sp));
}

}  // namespace gf
