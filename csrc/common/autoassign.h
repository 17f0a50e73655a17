// AutoAssign (SPEC.md section 6): the per-(point, GT) terms of the loss and
// their gradients, and the enumeration of the grid points inside a GT box.
// Torch-free. T is the compute type: float (for float32/half/bfloat16
// logits) or double.
#pragma once

#include <cmath>

#include "box.h"
#include "math.h"

namespace gf {

constexpr double kAutoAssignEps = 1e-12;  // every clamp of SPEC section 6
constexpr double kAutoAssignIouEps = 1e-6;  // the GIoU and IoU eps
constexpr double kAutoAssignGiouWeight = 5.0;

// SPEC section 6's negative weight of a point inside a GT: 1 minus t's place
// in that GT's range [lo, hi] of t. One formula for CPU and CUDA, which must
// agree bit for bit (the forward sums with it, the backward rebuilds it).
template <typename T> GF_HD T aa_neg_weight(T t, T lo, T hi) {
  const T eps = T(kAutoAssignEps);
  return T(1) - (t - lo + eps) / (hi - lo + eps);
}

// The strict inside test of SPEC: min(px - x1, py - y1, x2 - px, y2 - py) > 0.
// A NaN side is never inside.
template <typename T> GF_HD bool strictly_inside(T px, T py, const Box4<T>& g) {
  return px - g.x1 > T(0) && py - g.y1 > T(0) && g.x2 - px > T(0) && g.y2 - py > T(0);
}

// Grid indices i in [0, n) whose coordinate i * stride may lie strictly
// inside (lo, hi): a superset by one on each side (the caller tests each
// candidate exactly, so rounding here never loses a point). Empty: first > last.
template <typename T> GF_HD void grid_span(T lo, T hi, T stride, int n, int& first, int& last) {
  T a = lo / stride, b = hi / stride;
  // Infinite or far-off bounds are clamped before the conversion to int; a
  // NaN bound becomes the whole level (its points then fail the exact test).
  a = a > T(-1) ? a : T(-1);
  b = b < T(n) ? b : T(n);
  if (!(a <= b)) {  // an inverted box
    first = 1;
    last = 0;
    return;
  }
  int f = static_cast<int>(a) - 1, l = static_cast<int>(b) + 1;
  first = f < 0 ? 0 : f;
  last = l > n - 1 ? n - 1 : l;
}

// Culls of the loops over a point's GTs, taken for a group of points at a
// time (a tile): each drops only GTs whose outcome is known, and a kept GT is
// tested exactly, so the results are the full loops'.
//
// Coordinates within 2^60: the areas, unions and intersections of such boxes
// stay finite (2^122 < float's 2^128), so a box disjoint from another has an
// IoU of exactly 0 with it.
template <typename T> GF_HD bool tame_box(const Box4<T>& b) {
  const T m = T(1152921504606846976.0);  // 2^60
  return b.x1 >= -m && b.x1 <= m && b.y1 >= -m && b.y1 <= m && b.x2 >= -m && b.x2 <= m && b.y2 >= -m && b.y2 <= m;
}

// A GT may hold strictly inside one of the points within [lx, hx] x [ly, hy]:
// px - x1 > 0 implies x1 < px <= hx, and so on for each side (a NaN side: never).
template <typename T> GF_HD bool may_hold_one_of(const Box4<T>& g, T lx, T ly, T hx, T hy) {
  return g.x1 < hx && g.x2 > lx && g.y1 < hy && g.y2 > ly;
}

// A GT's IoU is exactly 0 with every box inside the hull [lx, hx] x [ly, hy]
// (of corners in either order) when all of them are tame (hull_tame: every
// box that made the hull was) and the GT lies apart from the hull, an edge
// shared included: the intersection's width or height clamps to 0, and
// 0 / max(union, eps) is 0. A maximum that starts at 0 never needs it.
template <typename T> GF_HD bool iou_surely_zero(const Box4<T>& g, bool hull_tame, T lx, T ly, T hx, T hy) {
  return hull_tame && tame_box(g) && (g.x2 <= lx || g.x1 >= hx || g.y2 <= ly || g.y1 >= hy);
}

// The center prior of a point for a GT (SPEC section 6), with what its
// gradient needs: the stride-normalised offsets less mu.
template <typename T> struct PriorTerm { T value, ex, ey, dx, dy; };

template <typename T>
GF_HD PriorTerm<T> center_prior(T px, T py, T stride, T cx, T cy, T mux, T muy, T sx, T sy) {
  PriorTerm<T> r;
  r.dx = (px - cx) / stride - mux;
  r.dy = (py - cy) / stride - muy;
  r.ex = gexp(-(r.dx * r.dx) / (T(2) * (sx * sx)));
  r.ey = gexp(-(r.dy * r.dy) / (T(2) * (sy * sy)));
  r.value = r.ex * r.ey;
  return r;
}

// g * d prior / d (mu_x, mu_y, sigma_x, sigma_y), added to out[0..3].
template <typename T> GF_HD void center_prior_grad(const PriorTerm<T>& r, T sx, T sy, T g, T* out) {
  const T gv = g * r.value;
  out[0] += gv * r.dx / (sx * sx);
  out[1] += gv * r.dy / (sy * sy);
  out[2] += gv * (r.dx * r.dx) / (sx * sx * sx);
  out[3] += gv * (r.dy * r.dy) / (sy * sy * sy);
}

// The C library's log and log1p, exact at 0 and 1 (-inf, then the clamp),
// where the fast host logf of math.h is not meant to be called.
GF_HD float log_libm(float x) { return ::logf(x); }
GF_HD double log_libm(double x) { return ::log(x); }
GF_HD float log1p_libm(float x) { return ::log1pf(x); }
GF_HD double log1p_libm(double x) { return ::log1p(x); }

// log1p(-x) for x in [0, 1]. On the host, in float, the classic
// log(u) * (-x) / (u - 1) with u = 1 - x on the vectorisable logf of math.h
// (within a few ulp; u is never subnormal), so the dense negative term's loops
// vectorise; x >= 1 gives -inf as log1p does.
GF_HD float log1p_neg(float x) {
#if defined(GF_DEVICE_MATH)
  return ::log1pf(-x);
#else
  const float u = 1.0f - x, d = u - 1.0f;
  const float r = d == 0.0f ? -x : host_logf(u) * (-x / d);
  return x >= 1.0f ? -INFINITY : r;
#endif
}
GF_HD double log1p_neg(double x) { return ::log1p(-x); }

// max(v, m) as std::max and torch's clamp(min=m) take it: a NaN v stays NaN
// (math.h's gmax would return m), so a NaN input is not hidden in a loss.
template <typename T> GF_HD T clamp_min_nan(T v, T m) { return v < m ? m : v; }

// torch's binary_cross_entropy on probabilities: log(x) and log1p(-x), each
// clamped at -100.
template <typename T> GF_HD T bce_one(T x) { return -clamp_min_nan(log_libm(x), T(-100)); }
template <typename T> GF_HD T bce_zero(T x) { return -clamp_min_nan(log1p_neg(x), T(-100)); }
// d BCE(x, y) / d x as torch computes it: (x - y) / max(x (1 - x), 1e-12).
template <typename T> GF_HD T bce_grad(T x, T y) {
  return (x - y) / clamp_min_nan((T(1) - x) * x, T(kAutoAssignEps));
}

// The negative weights' 1 / max(1 - best IoU, 1e-12).
template <typename T> GF_HD T inverse_miss(T best_iou) {
  return T(1) / clamp_min_nan(T(1) - best_iou, T(kAutoAssignEps));
}

// The negative term of one (point, class): x^2 BCE(x, 0) and its derivative.
template <typename T> GF_HD T neg_loss(T x) { return x * x * bce_zero(x); }
template <typename T> GF_HD T neg_loss_grad(T x) { return T(2) * x * bce_zero(x) + x * x * bce_grad(x, T(0)); }

template <typename T> GF_HD T sigmoid_of(T x) { return T(1) / (T(1) + gexp(-x)); }

// One (point, GT) pair of the positive term: p_pos = joint * exp(-5 (1 - GIoU)).
template <typename T> struct PosTerm { T joint, loc, p_pos; };

template <typename T> GF_HD PosTerm<T> pos_term(T sc, T so, const Box4<T>& pred, const Box4<T>& gt) {
  PosTerm<T> r;
  r.joint = sc * so;
  const T giou = overlap(pred, gt, T(kAutoAssignIouEps)).giou;
  r.loc = gexp(-(T(kAutoAssignGiouWeight) * (T(1) - giou)));
  r.p_pos = r.joint * r.loc;
  return r;
}

// ---- the batch totals (SPEC section 6, without reduce_mean) ----------------
// From what each image gives: its loss_pos and loss_neg sums and
// image[3 i .. 3 i + 2] = (prior sum, valid GTs, 1 if a point lies inside one
// of its GTs else 0). Images are summed in order, so CPU and CUDA (one
// thread) compute the same values.
constexpr double kAutoAssignPosWeight = 0.25, kAutoAssignNegWeight = 0.75, kAutoAssignCenterWeight = 0.75;

template <typename T> struct AaNorms { T pos, neg; };

// N_pos = max(sum of G_i, 1) and N_neg = max(sum of the priors, 1), NaN kept.
template <typename T> GF_HD AaNorms<T> aa_norms(const T* image, int64_t B) {
  T gts = T(0), prior = T(0);
  for (int64_t i = 0; i < B; ++i) {
    prior += image[3 * i];
    gts += image[3 * i + 1];
  }
  return AaNorms<T>{clamp_min_nan(gts, T(1)), clamp_min_nan(prior, T(1))};
}

// out = (loss_pos, loss_neg, loss_center): 0.25 sum loss_pos / N_pos,
// 0.75 sum loss_neg / N_neg, and 0.75 times the mean over images of
// any_i G_i / max(prior_i, 1e-12) (0 without images).
template <typename T> GF_HD void aa_totals(const T* loss_pos, const T* loss_neg, const T* image, int64_t B, T* out) {
  const AaNorms<T> n = aa_norms(image, B);
  T pos = T(0), neg = T(0), center = T(0);
  for (int64_t i = 0; i < B; ++i) {
    pos += loss_pos[i];
    neg += loss_neg[i];
    center += image[3 * i + 2] * image[3 * i + 1] / clamp_min_nan(image[3 * i], T(kAutoAssignEps));
  }
  out[0] = T(kAutoAssignPosWeight) * pos / n.pos;
  out[1] = T(kAutoAssignNegWeight) * neg / n.neg;
  out[2] = B > 0 ? T(kAutoAssignCenterWeight) * (center / T(B)) : T(0);
}

// The per-image gradients of the totals, grads (3, B): w.r.t. loss_pos_i,
// loss_neg_i and prior_i (the normalisers take the priors detached; the
// clamp of the center term passes a gradient where prior_i >= 1e-12).
template <typename T>
GF_HD void aa_total_grads(T g_pos, T g_neg, T g_center, const T* image, int64_t B, T* grads) {
  const AaNorms<T> n = aa_norms(image, B);
  const T d_pos = g_pos / n.pos * T(kAutoAssignPosWeight), d_neg = g_neg / n.neg * T(kAutoAssignNegWeight);
  const T d_center = B > 0 ? g_center * T(kAutoAssignCenterWeight) / T(B) : T(0);
  for (int64_t i = 0; i < B; ++i) {
    const T p = image[3 * i], num = image[3 * i + 2] * image[3 * i + 1];
    grads[i] = d_pos;
    grads[B + i] = d_neg;
    grads[2 * B + i] = p >= T(kAutoAssignEps) ? -d_center * (num / p / p) : T(0);
  }
}

}  // namespace gf
