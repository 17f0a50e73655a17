// The fused GFL box branch for one positive anchor (SPEC.md section 4), and
// the fused decode of distribution logits to pixel boxes (section 3).
// Torch-free; `x` points at the anchor's 4 * (n+1) logits (l, t, r, b).
#pragma once

#include "box.h"
#include "integral.h"

namespace gf {

constexpr double kBranchEps = 1e-6;    // IoU/GIoU eps of the GFL head
constexpr double kDflTargetEps = 0.1;  // bbox2distance eps for DFL targets

// Per side: log-sum-exp and expected distance (bins, i.e. stride units).
template <typename T, typename scalar_t>
GF_HD void sides_lse_dist(const scalar_t* x, int n1, T* lse, T* dist) {
  for (int k = 0; k < 4; ++k) row_lse_dist<T>(x + k * n1, n1, lse[k], dist[k]);
}

template <typename T> struct BranchOut { T giou_loss, dfl, score; };

// The anchor-wide part of the forward, from the four sides' expected
// distances: the box's overlap with the target and each side's DFL target.
// Split from the per-side parts so that a kernel can give each side a lane.
template <typename T> struct BranchBox {
  T giou, iou, tgt_dist[4];
};

template <typename T>
GF_HD BranchBox<T> box_branch_box(int n1, T px, T py, T stride, const T* gt, const T* dist) {
  BranchBox<T> r;
  const T cx = px / stride, cy = py / stride;
  const Box4<T> box = distance2bbox(cx, cy, dist);
  const Box4<T> tgt{gt[0] / stride, gt[1] / stride, gt[2] / stride, gt[3] / stride};
  const Overlap<T> o = overlap(box, tgt, T(kBranchEps));
  r.giou = o.giou;
  r.iou = o.iou;
  bbox2distance(cx, cy, tgt, T(n1 - 1), T(kDflTargetEps), r.tgt_dist);
  return r;
}

// Side k's DFL term, from its logits xk, its target and log-sum-exp.
template <typename T, typename scalar_t> GF_HD T box_branch_side_dfl(const scalar_t* xk, int n1, T tgt, T lse) {
  const DflSplit<T> sp = dfl_split(tgt, n1 - 1);
  return dfl_loss_from_lse(lse, cvt<T>(xk[sp.l]), cvt<T>(xk[sp.l + 1]), sp);
}

// The anchor's outputs from its box part and the sides' DFL terms, summed
// from side 0 up (the order every backend keeps).
template <typename T> GF_HD BranchOut<T> box_branch_out(const BranchBox<T>& bx, const T* side_dfl, T w) {
  T dfl = T(0);
  for (int k = 0; k < 4; ++k) dfl += side_dfl[k];
  return BranchOut<T>{w * (T(1) - bx.giou), w * dfl, bx.iou};
}

// From the sides' log-sum-exp and expected distances (sides_lse_dist), so a
// CPU loop can compute those for many rows at once.
template <typename T, typename scalar_t>
GF_HD BranchOut<T> box_branch_forward_stats(const scalar_t* x, int n1, T px, T py, T stride, const T* gt, T w,
                                            const T* lse, const T* dist) {
  const BranchBox<T> bx = box_branch_box(n1, px, py, stride, gt, dist);
  T side_dfl[4];
  for (int k = 0; k < 4; ++k) side_dfl[k] = box_branch_side_dfl(x + k * n1, n1, bx.tgt_dist[k], lse[k]);
  return box_branch_out(bx, side_dfl, w);
}

// The anchor-wide part of the backward: the GIoU term's gradient with
// respect to each side's distance, each side's DFL target, and the DFL
// term's weighted gradient.
template <typename T> struct BranchGrad {
  T g_dist[4], tgt_dist[4], gdw;
};

template <typename T>
GF_HD BranchGrad<T> box_branch_grad(int n1, T px, T py, T stride, const T* gt, T w, T g_giou, T g_dfl,
                                    const T* dist) {
  BranchGrad<T> r;
  const T cx = px / stride, cy = py / stride;
  const Box4<T> box = distance2bbox(cx, cy, dist);
  const Box4<T> tgt{gt[0] / stride, gt[1] / stride, gt[2] / stride, gt[3] / stride};
  const Box4<T> d = overlap_grad_a(box, tgt, T(kBranchEps), true, -g_giou * w);
  r.g_dist[0] = -d.x1;
  r.g_dist[1] = -d.y1;
  r.g_dist[2] = d.x2;
  r.g_dist[3] = d.y2;
  bbox2distance(cx, cy, tgt, T(n1 - 1), T(kDflTargetEps), r.tgt_dist);
  r.gdw = g_dfl * w;
  return r;
}

// Side k's gradient gk from its logits xk (gk may be xk: each logit is read
// before its gradient replaces it).
template <typename T, typename scalar_t>
GF_HD void box_branch_side_grad(const scalar_t* xk, int n1, T g_dist, T tgt, T gdw, T lse, T dist, scalar_t* gk) {
  const DflSplit<T> sp = dfl_split(tgt, n1 - 1);
  GF_SIMD
  for (int b = 0; b < n1; ++b) {
    const T p = gexp(cvt<T>(xk[b]) - lse);
    gk[b] = cvt<scalar_t>(g_dist * integral_grad_from_p(p, b, dist) + gdw * dfl_grad_from_p(p, b, sp));
  }
}

// d(g_giou * giou_loss + g_dfl * dfl) / d x, written to g (4 * (n+1)).
template <typename T, typename scalar_t>
GF_HD void box_branch_backward_stats(const scalar_t* x, int n1, T px, T py, T stride, const T* gt, T w, T g_giou,
                                     T g_dfl, const T* lse, const T* dist, scalar_t* g) {
  const BranchGrad<T> bg = box_branch_grad(n1, px, py, stride, gt, w, g_giou, g_dfl, dist);
  for (int k = 0; k < 4; ++k)
    box_branch_side_grad(x + k * n1, n1, bg.g_dist[k], bg.tgt_dist[k], bg.gdw, lse[k], dist[k], g + k * n1);
}

// One side k (0..3: l, t, r, b) of the pixel box distance2bbox(point,
// dist * stride): pt is the point's x (k even) or y (k odd); clamped to
// [0, lim] (lim = W for x, H for y) when clamp is set. Per side, so that a
// kernel can give each side row its own thread.
template <typename T> GF_HD T decode_side(T dist, int k, T pt, T stride, bool clamp, T lim) {
  const T d = dist * stride;
  const T v = k < 2 ? pt - d : pt + d;
  return clamp ? gmin(gmax(v, T(0)), lim) : v;
}

// d decode_side / d dist: +-stride, 0 where the clamp holds the coordinate
// (clamp passes the gradient when 0 <= v <= lim, as autograd does).
template <typename T> GF_HD T decode_side_grad(T dist, int k, T pt, T stride, bool clamp, T lim) {
  const T d = dist * stride;
  const T v = k < 2 ? pt - d : pt + d;
  const T pass = clamp ? (v >= T(0) && v <= lim ? T(1) : T(0)) : T(1);
  return (k < 2 ? -stride : stride) * pass;
}

// Pixel box of one anchor: its four decode_side()s.
template <typename T>
GF_HD Box4<T> decode_box(const T* dist, T px, T py, T stride, bool clamp, T h, T w) {
  return Box4<T>{decode_side(dist[0], 0, px, stride, clamp, w), decode_side(dist[1], 1, py, stride, clamp, h),
                 decode_side(dist[2], 2, px, stride, clamp, w), decode_side(dist[3], 3, py, stride, clamp, h)};
}

template <typename T, typename scalar_t>
GF_HD Box4<T> decode_forward(const scalar_t* x, int n1, T px, T py, T stride, bool clamp, T h, T w) {
  T lse[4], dist[4];
  sides_lse_dist(x, n1, lse, dist);
  return decode_box(dist, px, py, stride, clamp, h, w);
}

// d(sum_c gb[c] * box[c]) / d x; a clamped coordinate passes no gradient.
template <typename T, typename scalar_t>
GF_HD void decode_backward_stats(const scalar_t* x, int n1, T px, T py, T stride, bool clamp, T h, T w, const T* gb,
                                 const T* lse, const T* dist, scalar_t* g) {
  for (int k = 0; k < 4; ++k) {
    const T gd = gb[k] * decode_side_grad(dist[k], k, k % 2 ? py : px, stride, clamp, k % 2 ? h : w);
    integral_row_grad(x + k * n1, n1, gd, lse[k], dist[k], g + k * n1);
  }
}

// The same gradient from each side's exponentials e (n1 per side, with or
// without a shift: only e / s is used) and their sums s, as a CPU tile
// computes them once for all sides.
template <typename T, typename scalar_t>
GF_HD void decode_backward_exp(const T* e, const T* s, int n1, T px, T py, T stride, bool clamp, T h, T w,
                               const T* gb, const T* dist, scalar_t* g) {
  for (int k = 0; k < 4; ++k) {
    const T gd = gb[k] * decode_side_grad(dist[k], k, k % 2 ? py : px, stride, clamp, k % 2 ? h : w);
    integral_row_grad_exp(e + k * n1, s[k], n1, gd, dist[k], g + k * n1);
  }
}

template <typename T, typename scalar_t>
GF_HD void decode_backward(const scalar_t* x, int n1, T px, T py, T stride, bool clamp, T h, T w, const T* gb,
                           scalar_t* g) {
  T lse[4], dist[4];
  sides_lse_dist(x, n1, lse, dist);
  decode_backward_stats(x, n1, px, py, stride, clamp, h, w, gb, lse, dist, g);
}

}  // namespace gf
