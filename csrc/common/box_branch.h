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
  for (int k = 0; k < 4; ++k) {
    lse[k] = row_logsumexp<T>(x + k * n1, n1);
    dist[k] = integral_from_lse<T>(x + k * n1, n1, lse[k]);
  }
}

template <typename T> struct BranchOut { T giou_loss, dfl, score; };

template <typename T, typename scalar_t>
GF_HD BranchOut<T> box_branch_forward(const scalar_t* x, int n1, T px, T py, T stride, const T* gt, T w) {
  const T eps = T(kBranchEps);
  T lse[4], dist[4], tgt_dist[4];
  sides_lse_dist(x, n1, lse, dist);
  const T cx = px / stride, cy = py / stride;
  const Box4<T> box = distance2bbox(cx, cy, dist);
  const Box4<T> tgt{gt[0] / stride, gt[1] / stride, gt[2] / stride, gt[3] / stride};
  const Overlap<T> o = overlap(box, tgt, eps);
  bbox2distance(cx, cy, tgt, T(n1 - 1), T(kDflTargetEps), tgt_dist);
  T dfl = T(0);
  for (int k = 0; k < 4; ++k) {
    const scalar_t* xk = x + k * n1;
    const DflSplit<T> sp = dfl_split(tgt_dist[k], n1 - 1);
    dfl += dfl_loss_from_lse(lse[k], cvt<T>(xk[sp.l]), cvt<T>(xk[sp.l + 1]), sp);
  }
  return BranchOut<T>{w * (T(1) - o.giou), w * dfl, o.iou};
}

// d(g_giou * giou_loss + g_dfl * dfl) / d x, written to g (4 * (n+1)).
template <typename T, typename scalar_t>
GF_HD void box_branch_backward(const scalar_t* x, int n1, T px, T py, T stride, const T* gt, T w,
                               T g_giou, T g_dfl, scalar_t* g) {
  const T eps = T(kBranchEps);
  T lse[4], dist[4], tgt_dist[4];
  sides_lse_dist(x, n1, lse, dist);
  const T cx = px / stride, cy = py / stride;
  const Box4<T> box = distance2bbox(cx, cy, dist);
  const Box4<T> tgt{gt[0] / stride, gt[1] / stride, gt[2] / stride, gt[3] / stride};
  const Box4<T> d = overlap_grad_a(box, tgt, eps, true, -g_giou * w);
  const T g_dist[4] = {-d.x1, -d.y1, d.x2, d.y2};
  bbox2distance(cx, cy, tgt, T(n1 - 1), T(kDflTargetEps), tgt_dist);
  for (int k = 0; k < 4; ++k) {
    const scalar_t* xk = x + k * n1;
    const DflSplit<T> sp = dfl_split(tgt_dist[k], n1 - 1);
    for (int b = 0; b < n1; ++b) {
      const T xb = cvt<T>(xk[b]);
      g[k * n1 + b] = cvt<scalar_t>(g_dist[k] * integral_grad(xb, b, lse[k], dist[k]) +
                                    g_dfl * w * dfl_grad_from_lse(xb, b, lse[k], sp));
    }
  }
}

// Pixel box of one anchor: distance2bbox(point, integral(x) * stride), clamped
// to [0, W] x [0, H] when clamp is set.
template <typename T, typename scalar_t>
GF_HD Box4<T> decode_forward(const scalar_t* x, int n1, T px, T py, T stride, bool clamp, T h, T w) {
  T lse[4], dist[4];
  sides_lse_dist(x, n1, lse, dist);
  for (int k = 0; k < 4; ++k) dist[k] *= stride;
  Box4<T> b = distance2bbox(px, py, dist);
  if (clamp) {
    b.x1 = gmin(gmax(b.x1, T(0)), w); b.x2 = gmin(gmax(b.x2, T(0)), w);
    b.y1 = gmin(gmax(b.y1, T(0)), h); b.y2 = gmin(gmax(b.y2, T(0)), h);
  }
  return b;
}

// d(sum_c gb[c] * box[c]) / d x; a clamped coordinate passes no gradient
// (clamp passes it when min <= v <= max, as autograd does).
template <typename T, typename scalar_t>
GF_HD void decode_backward(const scalar_t* x, int n1, T px, T py, T stride, bool clamp, T h, T w,
                           const T* gb, scalar_t* g) {
  T lse[4], dist[4];
  sides_lse_dist(x, n1, lse, dist);
  const T lim[4] = {w, h, w, h};
  const T sign[4] = {T(-1), T(-1), T(1), T(1)};
  const T pt[4] = {px, py, px, py};
  for (int k = 0; k < 4; ++k) {
    const T v = pt[k] + sign[k] * dist[k] * stride;
    const T pass = clamp ? (v >= T(0) && v <= lim[k] ? T(1) : T(0)) : T(1);
    const T gd = gb[k] * sign[k] * stride * pass;
    const scalar_t* xk = x + k * n1;
    for (int b = 0; b < n1; ++b)
      g[k * n1 + b] = cvt<scalar_t>(gd * integral_grad(cvt<T>(xk[b]), b, lse[k], dist[k]));
  }
}

}  // namespace gf
