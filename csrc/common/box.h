// Box geometry (SPEC.md sections 3-4): IoU/GIoU of two boxes and its
// gradient, distance <-> box conversion. Torch-free; boxes are
// (x1, y1, x2, y2) and a degenerate side (x2 < x1) has zero length.
//
// The gradient follows the subgradient conventions of PyTorch autograd on
// the same formula, so the kernels agree with the reference even at ties:
// max/min split the gradient in half when both sides are equal, and a
// clamp(min=m) passes it when the value is >= m.
#pragma once

#include "math.h"

namespace gf {

template <typename T> struct Box4 { T x1, y1, x2, y2; };

template <typename T> GF_HD Box4<T> load_box(const T* p) { return Box4<T>{p[0], p[1], p[2], p[3]}; }

// Boxes pass by value: inside a CPU `omp simd` loop, a reference bound to a
// temporary box becomes a per-lane stack array that GCC does not vectorise.
template <typename T> GF_HD T box_area(Box4<T> a) {
  return mul_rn(gmax(a.x2 - a.x1, T(0)), gmax(a.y2 - a.y1, T(0)));
}

// Everything IoU/GIoU need, kept for the backward pass.
template <typename T> struct Overlap {
  T iw, ih, inter, area_a, area_b, uni, uni_c, ew, eh, enc, enc_c, iou, giou;
};

// overlap() given each box's box_area(): the same operations, so the same
// bits, for kernels that compute a box's area once for many pairs.
template <typename T> GF_HD Overlap<T> overlap_areas(Box4<T> a, T area_a, Box4<T> b, T area_b, T eps) {
  Overlap<T> o;
  o.iw = gmax(gmin(a.x2, b.x2) - gmax(a.x1, b.x1), T(0));
  o.ih = gmax(gmin(a.y2, b.y2) - gmax(a.y1, b.y1), T(0));
  o.inter = mul_rn(o.iw, o.ih);
  o.area_a = area_a;
  o.area_b = area_b;
  o.uni = o.area_a + o.area_b - o.inter;
  // clamp(min=eps) as torch has it: a NaN union (inf - inf) stays NaN.
  o.uni_c = o.uni < eps ? eps : o.uni;
  o.iou = o.inter / o.uni_c;
  o.ew = gmax(gmax(a.x2, b.x2) - gmin(a.x1, b.x1), T(0));
  o.eh = gmax(gmax(a.y2, b.y2) - gmin(a.y1, b.y1), T(0));
  o.enc = mul_rn(o.ew, o.eh);
  o.enc_c = o.enc < eps ? eps : o.enc;
  o.giou = o.iou - (o.enc_c - o.uni_c) / o.enc_c;
  return o;
}

template <typename T> GF_HD Overlap<T> overlap(Box4<T> a, Box4<T> b, T eps) {
  return overlap_areas(a, box_area(a), b, box_area(b), eps);
}

// IoU alone, with overlap()'s operations (so the same value), for loops that
// need nothing else.
template <typename T> GF_HD T iou_only(Box4<T> a, Box4<T> b, T eps) {
  const T iw = gmax(gmin(a.x2, b.x2) - gmax(a.x1, b.x1), T(0));
  const T ih = gmax(gmin(a.y2, b.y2) - gmax(a.y1, b.y1), T(0));
  const T inter = mul_rn(iw, ih);
  const T uni = box_area(a) + box_area(b) - inter;
  return inter / (uni < eps ? eps : uni);
}

template <typename T> GF_HD T iou_or_giou(Box4<T> a, Box4<T> b, T eps, bool giou) {
  Overlap<T> o = overlap(a, b, eps);
  return giou ? o.giou : o.iou;
}

// d max(a, b) / d a and d min(a, b) / d a: 1, 1/2 on a tie (autograd's tie
// rule), else 0; with a NaN, 0 (this code's own rule: the result is NaN
// downstream anyway). Written without branches so that the CPU loops over
// boxes vectorise.
template <typename T> GF_HD T dmax_da(T a, T b) { return T(0.5) * (T(a > b) + T(a >= b)); }
template <typename T> GF_HD T dmin_da(T a, T b) { return T(0.5) * (T(a < b) + T(a <= b)); }
// d clamp(v, min=m) / d v.
template <typename T> GF_HD T dclamp(T v, T m) { return T(v >= m); }

// Gradient of g * IoU(a, b) (or GIoU) with respect to box a.
template <typename T>
GF_HD Box4<T> overlap_grad_a(Box4<T> a, Box4<T> b, T eps, bool giou, T g) {
  const Overlap<T> o = overlap(a, b, eps);
  T g_uc = -g * o.inter / (o.uni_c * o.uni_c);
  T g_ec = T(0);
  if (giou) {  // giou = iou - 1 + uni_c / enc_c
    g_uc += g / o.enc_c;
    g_ec = -g * o.uni_c / (o.enc_c * o.enc_c);
  }
  const T g_uni = g_uc * dclamp(o.uni, eps);
  const T g_inter = g / o.uni_c - g_uni;
  const T g_area = g_uni;
  const T g_enc = g_ec * dclamp(o.enc, eps);

  Box4<T> d{T(0), T(0), T(0), T(0)};
  // area_a = clamp(w, 0) * clamp(h, 0)
  const T aw = a.x2 - a.x1, ah = a.y2 - a.y1;
  const T g_aw = g_area * gmax(ah, T(0)) * dclamp(aw, T(0));
  const T g_ah = g_area * gmax(aw, T(0)) * dclamp(ah, T(0));
  d.x2 += g_aw; d.x1 -= g_aw;
  d.y2 += g_ah; d.y1 -= g_ah;
  // inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0)
  const T g_iw = g_inter * o.ih * dclamp(gmin(a.x2, b.x2) - gmax(a.x1, b.x1), T(0));
  const T g_ih = g_inter * o.iw * dclamp(gmin(a.y2, b.y2) - gmax(a.y1, b.y1), T(0));
  d.x2 += g_iw * dmin_da(a.x2, b.x2); d.x1 -= g_iw * dmax_da(a.x1, b.x1);
  d.y2 += g_ih * dmin_da(a.y2, b.y2); d.y1 -= g_ih * dmax_da(a.y1, b.y1);
  if (giou) {  // enclose = clamp(max(x2) - min(x1), 0) * clamp(max(y2) - min(y1), 0)
    const T g_ew = g_enc * o.eh * dclamp(gmax(a.x2, b.x2) - gmin(a.x1, b.x1), T(0));
    const T g_eh = g_enc * o.ew * dclamp(gmax(a.y2, b.y2) - gmin(a.y1, b.y1), T(0));
    d.x2 += g_ew * dmax_da(a.x2, b.x2); d.x1 -= g_ew * dmin_da(a.x1, b.x1);
    d.y2 += g_eh * dmax_da(a.y2, b.y2); d.y1 -= g_eh * dmin_da(a.y1, b.y1);
  }
  return d;
}

// (x - l, y - t, x + r, y + b).
template <typename T> GF_HD Box4<T> distance2bbox(T px, T py, const T* dist) {
  return Box4<T>{px - dist[0], py - dist[1], px + dist[2], py + dist[3]};
}

// Inverse of distance2bbox; with max_dis > 0 each distance is clamped to
// [0, max_dis - eps].
template <typename T> GF_HD void bbox2distance(T px, T py, const Box4<T>& b, T max_dis, T eps, T* out) {
  out[0] = px - b.x1;
  out[1] = py - b.y1;
  out[2] = b.x2 - px;
  out[3] = b.y2 - py;
  if (max_dis > T(0))
    for (int k = 0; k < 4; ++k) out[k] = gmin(gmax(out[k], T(0)), max_dis - eps);
}

}  // namespace gf
