// NMS and the detector post-process (SPEC.md section 7): the suppression
// test, the candidate score and the box of a candidate. Torch-free; shared
// by the CPU loops and the CUDA kernels.
#pragma once

#include <cmath>

#include "box.h"
#include "box_branch.h"

namespace gf {

// Levels of the post-process (a fixed array in the CUDA kernels' arguments).
constexpr int kNmsMaxLevels = 32;

// box_iou's epsilon: the IoU is box_iou(a, b), bit for bit the same formula.
template <typename T> GF_HD T nms_eps() { return T(1e-6); }

// Only an IoU strictly above the threshold suppresses; a NaN IoU never does.
template <typename T> GF_HD bool nms_suppresses(const Box4<T>& a, const Box4<T>& b, T thr) {
  return overlap(a, b, nms_eps<T>()).iou > thr;
}

// A logit below this cannot have sigmoid > thr: logit(thr) less a margin far
// wider than any rounding of the sigmoid, so the cheap compare decides the
// bulk of the (anchor, class) pairs and the sigmoid is taken only near and
// above the threshold. NaN logits fail it, so they are never candidates.
inline double logit_floor(double thr) {
  if (!(thr > 0.0)) return -INFINITY;
  if (!(thr < 1.0)) return INFINITY;
  return std::log(thr) - std::log1p(-thr) - 0.05;
}

template <typename T> GF_HD T sigmoid(T x) { return T(1) / (T(1) + gexp(-x)); }

// The candidate test of the post-process: sigmoid(x) > thr (x > floor first).
template <typename T> GF_HD bool candidate_score(T x, T floor, T thr, T& score) {
  if (!(x > floor)) return false;
  score = sigmoid(x);
  return score > thr;
}

// The clamp of the post-process: a NaN coordinate stays NaN (as torch's
// clamp leaves it), so the size test drops the box.
template <typename T> GF_HD T clamp_keep_nan(T v, T hi) { return v != v ? v : gmin(gmax(v, T(0)), hi); }

// The box of a candidate: the distribution logits x (4 rows of n1 bins)
// decoded at (px, py) with the stride and clamped to [0, w] x [0, h], then
// rounded to the logits' dtype: exactly what decode_distribution returns
// (float16 boxes stay float16-exact, as in a float16 model).
// A NaN or +inf logit, or a side whose logits are all -inf, makes the box
// NaN (softmax gives NaN there), checked up front because the CPU's
// vectorisable exp does not carry NaN through.
template <typename T, typename scalar_t>
GF_HD Box4<T> candidate_box(const scalar_t* x, int n1, T px, T py, T stride, T h, T w) {
  bool bad = false;
  for (int k = 0; k < 4; ++k) {
    bool all_neg_inf = true;
    for (int b = 0; b < n1; ++b) {
      const T v = cvt<T>(x[k * n1 + b]);
      bad = bad || v != v || v == T(INFINITY);
      all_neg_inf = all_neg_inf && v == -T(INFINITY);
    }
    bad = bad || all_neg_inf;
  }
  if (bad) return Box4<T>{T(NAN), T(NAN), T(NAN), T(NAN)};
  const Box4<T> b = decode_forward<T>(x, n1, px, py, stride, false, h, w);
  return Box4<T>{cvt<T>(cvt<scalar_t>(clamp_keep_nan(b.x1, w))), cvt<T>(cvt<scalar_t>(clamp_keep_nan(b.y1, h))),
                 cvt<T>(cvt<scalar_t>(clamp_keep_nan(b.x2, w))), cvt<T>(cvt<scalar_t>(clamp_keep_nan(b.y2, h)))};
}

// MMDetection's min_bbox_size filter, measured in original image pixels
// (the box divided by the image's scale factors); NaN boxes fail it.
template <typename T> GF_HD bool big_enough(const Box4<T>& b, T sx, T sy, T min_size) {
  return (b.x2 - b.x1) / sx > min_size && (b.y2 - b.y1) / sy > min_size;
}

}  // namespace gf
