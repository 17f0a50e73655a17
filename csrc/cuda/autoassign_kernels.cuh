// CUDA kernels of the AutoAssign loss terms (SPEC.md section 6; math in
// ../common/autoassign.h) and their torch-free host entry points. Included by
// autoassign.cu alone.
//
// Forward:
// 1. best_iou: a thread per (image, point). The point's 1 / (1 - best IoU)
//    over the image's valid GTs, or 0 when the point lies inside no GT.
// 2. gt: a block per (image, GT). The block walks the grid cells the GT's
//    box spans on each level, tests each exactly, and sums the positive
//    weights, the bag numerator and the prior. It takes the range of t over
//    the GT's points. Block sums run in a fixed tree.
// 3. neg_weight: a thread per (image, point) inside some GT. Its GTs in
//    ascending order overwrite the weight of their class, so the highest
//    index wins with no atomics.
// 4. neg_loss: the dense x^2 BCE(x, 0) over (point, class), as fixed
//    per-block partials per image.
// 5. finish: a block per image sums the partials and the GTs in order.
// Backward:
// 1. a warp per (image, point): the dense negative term's gradient (lanes
//    over classes, the objectness by a warp sum);
// 2. a thread per (image, point): the positive pairs of its GTs, ascending,
//    into its own rows, with no atomics;
// 3. a block per (image, GT): the prior's gradient w.r.t. mu and sigma;
// 4. a thread per class: those partials summed over (image, GT) in order.
// Workspace: O(B (P + G)) plus the (B, P, C) negative weights that the
// forward returns for the backward. Nothing is of size points x GTs; the
// per-point loops over GTs cost that much time only.
#pragma once

#include "../common/autoassign.h"
#include "common.cuh"

namespace gf {
namespace cuda {

constexpr int kAutoAssignMaxLevels = 16;
constexpr int kAutoAssignNegBlocks = 32;  // per image: fixed, so the sum order is too

struct AutoAssignLevels {
  int64_t start[kAutoAssignMaxLevels];
  int h[kAutoAssignMaxLevels], w[kAutoAssignMaxLevels];
  int count;
};

struct AutoAssignArgs {
  const void* cls;      // (B, P, C) logits
  const void* obj;      // (B, P)
  const void* dist;     // (B, P, 4), accumulation dtype, like every tensor below
  const void* points;   // (P, 2)
  const void* strides;  // (P,)
  const void* gt;       // (B, G, 4)
  const int64_t* labels;
  const bool* valid;
  const void* mu;       // (C, 2)
  const void* sigma;    // (C, 2)
  AutoAssignLevels levels;
  int64_t batch, points_n, classes, num_gt;
  // forward workspace and outputs
  void* t;          // (B, P): 1 / (1 - best IoU), 0 outside every GT
  void* gt_part;    // (B, G, 5): BCE of the bag, prior sum, t min, t max, points inside
  void* neg_part;   // (B, kAutoAssignNegBlocks)
  void* neg_weight; // (B, P, C), filled with 1 by the caller
  void* stats;      // (B, G, 2): sum of positive weights, bag
  void* loss_pos;   // (B,)
  void* loss_neg;
  void* prior_sum;
  bool* any_inside;
  // backward
  const void* grad_pos;    // (B,)
  const void* grad_neg;
  const void* grad_prior;
  void* d_cls;             // (B, P, C), accumulation dtype
  void* d_obj;             // (B, P)
  void* d_dist;            // (B, P, 4)
  void* prior_part;        // (B, G, 4)
  void* d_mu;              // (C, 2)
  void* d_sigma;           // (C, 2)
};

// A GT the kernels use: valid, with a label in [0, C). Without validation a
// bad label is not an error on CUDA (that check costs a sync); such a GT is
// ignored rather than let the kernels index past the class dimension.
__device__ __forceinline__ bool aa_usable(const AutoAssignArgs& a, int64_t r) {
  return a.valid[r] && a.labels[r] >= 0 && a.labels[r] < a.classes;
}

template <typename acc_t> __device__ __forceinline__ Box4<acc_t> aa_box(const acc_t* p) {
  return Box4<acc_t>{p[0], p[1], p[2], p[3]};
}

// The grid cells a box spans on level l: [r0, r1] x [c0, c1] (empty: count 0).
struct Span { int r0, c0, rows, cols; };

template <typename acc_t>
__device__ __forceinline__ Span aa_span(const AutoAssignArgs& a, const acc_t* strides, int l, const Box4<acc_t>& g) {
  Span s{0, 0, 0, 0};
  if (a.levels.h[l] == 0 || a.levels.w[l] == 0) return s;
  const acc_t st = strides[a.levels.start[l]];
  int c0, c1, r0, r1;
  grid_span(g.x1, g.x2, st, a.levels.w[l], c0, c1);
  grid_span(g.y1, g.y2, st, a.levels.h[l], r0, r1);
  if (c1 < c0 || r1 < r0) return s;
  return Span{r0, c0, r1 - r0 + 1, c1 - c0 + 1};
}

// Sum, min or max over the block, valid in thread 0; every thread calls.
template <typename T, typename Op> __device__ T aa_block_reduce(T v, Op op) {
  GF_SHARED(T, part, [32]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = part[lane < nwarps ? lane : 0];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const T other = __shfl_down_sync(0xffffffffu, v, o);
      if (lane + o < nwarps) v = op(v, other);
    }
  }
  __syncthreads();
  return v;
}

struct AaSum { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct AaMin { template <typename T> __device__ T operator()(T a, T b) const { return b < a ? b : a; } };
struct AaMax { template <typename T> __device__ T operator()(T a, T b) const { return b > a ? b : a; } };

template <typename scalar_t, typename acc_t> struct AaPair {
  PriorTerm<acc_t> prior;
  PosTerm<acc_t> pos;
  acc_t sc, so, e3, cw;
};

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ AaPair<scalar_t, acc_t> aa_pair(const AutoAssignArgs& a, int64_t b, int64_t p,
                                                           const Box4<acc_t>& g, int64_t c) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* st = static_cast<const acc_t*>(a.strides);
  const auto* mu = static_cast<const acc_t*>(a.mu);
  const auto* sg = static_cast<const acc_t*>(a.sigma);
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
  const auto* dist = static_cast<const acc_t*>(a.dist);
  AaPair<scalar_t, acc_t> r;
  r.prior = center_prior(pts[2 * p], pts[2 * p + 1], st[p], (g.x1 + g.x2) / acc_t(2), (g.y1 + g.y2) / acc_t(2),
                         mu[2 * c], mu[2 * c + 1], sg[2 * c], sg[2 * c + 1]);
  r.sc = sigmoid_of(cvt<acc_t>(cls[(b * a.points_n + p) * a.classes + c]));
  r.so = sigmoid_of(cvt<acc_t>(obj[b * a.points_n + p]));
  r.pos = pos_term(r.sc, r.so, distance2bbox(pts[2 * p], pts[2 * p + 1], dist + 4 * (b * a.points_n + p)), g);
  r.e3 = gexp(acc_t(3) * r.pos.p_pos);
  r.cw = r.e3 * r.prior.value;
  return r;
}

// The cells of a GT's spans, level after level, are visited by the threads
// of a block in turn (thread k takes cells k, k + blockDim, ...): the point
// index of cell k of level l, or -1 when it is not strictly inside g.
template <typename acc_t>
__device__ __forceinline__ int64_t aa_cell(const AutoAssignArgs& a, int l, const Span& s, int k,
                                           const Box4<acc_t>& g) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const int64_t p = a.levels.start[l] + static_cast<int64_t>(s.r0 + k / s.cols) * a.levels.w[l] + s.c0 + k % s.cols;
  return strictly_inside(pts[2 * p], pts[2 * p + 1], g) ? p : -1;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_best_iou_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const auto* dist = static_cast<const acc_t*>(a.dist);
  auto* t = static_cast<acc_t*>(a.t);
  GF_GRID_STRIDE(i, a.batch * a.points_n) {
    const int64_t b = i / a.points_n, p = i - b * a.points_n;
    const acc_t px = pts[2 * p], py = pts[2 * p + 1];
    bool inside = false;
    for (int64_t g = 0; g < a.num_gt && !inside; ++g)
      inside = aa_usable(a, b * a.num_gt + g) && strictly_inside(px, py, aa_box(gt + 4 * (b * a.num_gt + g)));
    acc_t out = acc_t(0);
    if (inside) {
      const Box4<acc_t> pb = distance2bbox(px, py, dist + 4 * i);
      acc_t best = acc_t(0);
      for (int64_t g = 0; g < a.num_gt && best == best; ++g) {
        if (!aa_usable(a, b * a.num_gt + g)) continue;
        const acc_t v = iou_only(pb, aa_box(gt + 4 * (b * a.num_gt + g)), acc_t(kAutoAssignIouEps));
        if (v > best || v != v) best = v;
      }
      out = inverse_miss(best);
    }
    t[i] = out;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_gt_kernel(AutoAssignArgs a) {
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const auto* t = static_cast<const acc_t*>(a.t);
  auto* part = static_cast<acc_t*>(a.gt_part);
  auto* stats = static_cast<acc_t*>(a.stats);
  const acc_t inf = acc_t(INFINITY), eps = acc_t(kAutoAssignEps);
  for (int64_t r = blockIdx.x; r < a.batch * a.num_gt; r += gridDim.x) {  // block-uniform
    const int64_t b = r / a.num_gt;
    if (!aa_usable(a, r)) {
      if (threadIdx.x == 0) {
        for (int k = 0; k < 5; ++k) part[5 * r + k] = acc_t(0);
        stats[2 * r] = stats[2 * r + 1] = acc_t(0);
      }
      continue;
    }
    const Box4<acc_t> g = aa_box(gt + 4 * r);
    const int64_t c = a.labels[r];
    acc_t s = acc_t(0), num = acc_t(0), psum = acc_t(0), n = acc_t(0), lo = inf, hi = -inf;
    for (int l = 0; l < a.levels.count; ++l) {
      const Span sp = aa_span(a, static_cast<const acc_t*>(a.strides), l, g);
      const int cells = sp.rows * sp.cols;  // within one level: < P < 2^31
      for (int k = threadIdx.x; k < cells; k += blockDim.x) {
        const int64_t p = aa_cell(a, l, sp, k, g);
        if (p < 0) continue;
        const AaPair<scalar_t, acc_t> q = aa_pair<scalar_t, acc_t>(a, b, p, g, c);
        s += q.cw;
        num += q.cw * q.pos.p_pos;
        psum += q.prior.value;
        n += acc_t(1);
        const acc_t tp = t[b * a.points_n + p];
        lo = tp < lo ? tp : lo;
        hi = tp > hi ? tp : hi;
      }
    }
    s = aa_block_reduce(s, AaSum{});
    num = aa_block_reduce(num, AaSum{});
    psum = aa_block_reduce(psum, AaSum{});
    n = aa_block_reduce(n, AaSum{});
    lo = aa_block_reduce(lo, AaMin{});
    hi = aa_block_reduce(hi, AaMax{});
    if (threadIdx.x == 0) {
      const acc_t bag = num / clamp_min_nan(s, eps);
      part[5 * r] = bce_one(bag);
      part[5 * r + 1] = psum;
      part[5 * r + 2] = lo;
      part[5 * r + 3] = hi;
      part[5 * r + 4] = n;
      stats[2 * r] = s;
      stats[2 * r + 1] = bag;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_weight_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const auto* t = static_cast<const acc_t*>(a.t);
  const auto* part = static_cast<const acc_t*>(a.gt_part);
  auto* w = static_cast<acc_t*>(a.neg_weight);
  const acc_t eps = acc_t(kAutoAssignEps);
  const int64_t b = blockIdx.y;  // the image: no 64-bit division (a call, and spills on sm_80)
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < a.points_n;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = b * a.points_n + p;
    const acc_t tp = t[i];
    if (tp == acc_t(0)) continue;  // inside no GT
    const acc_t px = pts[2 * p], py = pts[2 * p + 1];
    acc_t* row = w + i * a.classes;
    for (int g = 0; g < static_cast<int>(a.num_gt); ++g) {
      const int64_t r = b * a.num_gt + g;
      if (!aa_usable(a, r) || !strictly_inside(px, py, aa_box(gt + 4 * r))) continue;
      const acc_t lo = part[5 * r + 2], hi = part[5 * r + 3];
      row[a.labels[r]] = acc_t(1) - (tp - lo + eps) / (hi - lo + eps);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_loss_kernel(AutoAssignArgs a) {
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
  const auto* w = static_cast<const acc_t*>(a.neg_weight);
  const int64_t b = blockIdx.y, n = a.points_n * a.classes;
  acc_t v = acc_t(0);
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < n;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = b * n + j;
    const acc_t so = sigmoid_of(cvt<acc_t>(obj[b * a.points_n + j / a.classes]));
    v += neg_loss(sigmoid_of(cvt<acc_t>(cls[e])) * so * w[e]);
  }
  v = block_sum(v);
  if (threadIdx.x == 0) static_cast<acc_t*>(a.neg_part)[b * gridDim.x + blockIdx.x] = v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_finish_kernel(AutoAssignArgs a) {
  const auto* part = static_cast<const acc_t*>(a.gt_part);
  const auto* neg = static_cast<const acc_t*>(a.neg_part);
  const int64_t b = blockIdx.x;
  acc_t pos = acc_t(0), prior = acc_t(0), inside = acc_t(0), negs = acc_t(0);
  for (int64_t g = threadIdx.x; g < a.num_gt; g += blockDim.x) {
    const int64_t r = b * a.num_gt + g;
    pos += part[5 * r];
    prior += part[5 * r + 1];
    inside += part[5 * r + 4];
  }
  for (int k = threadIdx.x; k < kAutoAssignNegBlocks; k += blockDim.x) negs += neg[b * kAutoAssignNegBlocks + k];
  pos = block_sum(pos);
  prior = block_sum(prior);
  inside = block_sum(inside);
  negs = block_sum(negs);
  if (threadIdx.x == 0) {
    static_cast<acc_t*>(a.loss_pos)[b] = pos;
    static_cast<acc_t*>(a.loss_neg)[b] = negs;
    static_cast<acc_t*>(a.prior_sum)[b] = prior;
    a.any_inside[b] = inside > acc_t(0);
  }
}

// ---- backward ----------------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_grad_kernel(AutoAssignArgs a) {
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
  const auto* w = static_cast<const acc_t*>(a.neg_weight);
  const auto* gneg = static_cast<const acc_t*>(a.grad_neg);
  auto* dcls = static_cast<acc_t*>(a.d_cls);
  auto* dobj = static_cast<acc_t*>(a.d_obj);
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  const int64_t rows = a.batch * a.points_n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5); i < rows;
       i += static_cast<int64_t>(gridDim.x) * warps) {  // warp-uniform
    const acc_t so = sigmoid_of(cvt<acc_t>(obj[i]));
    const acc_t g = gneg[i / a.points_n];
    acc_t to_obj = acc_t(0);
    for (int64_t c = lane; c < a.classes; c += 32) {
      const int64_t e = i * a.classes + c;
      const acc_t sc = sigmoid_of(cvt<acc_t>(cls[e]));
      const acc_t d_joint = g * neg_loss_grad(sc * so * w[e]) * w[e];
      dcls[e] = d_joint * so * (sc * (acc_t(1) - sc));
      to_obj += d_joint * sc;
    }
    to_obj = warp_sum(to_obj);
    if (lane == 0) dobj[i] = to_obj * (so * (acc_t(1) - so));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_pos_grad_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const auto* stats = static_cast<const acc_t*>(a.stats);
  const auto* gpos = static_cast<const acc_t*>(a.grad_pos);
  const auto* dist = static_cast<const acc_t*>(a.dist);
  auto* dcls = static_cast<acc_t*>(a.d_cls);
  auto* dobj = static_cast<acc_t*>(a.d_obj);
  auto* ddist = static_cast<acc_t*>(a.d_dist);
  const acc_t eps = acc_t(kAutoAssignEps);
  GF_GRID_STRIDE(i, a.batch * a.points_n) {
    const int64_t b = i / a.points_n, p = i - b * a.points_n;
    acc_t d_obj = acc_t(0), dd[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    for (int64_t g = 0; g < a.num_gt; ++g) {
      const int64_t r = b * a.num_gt + g;
      if (!aa_usable(a, r)) continue;
      const Box4<acc_t> box = aa_box(gt + 4 * r);
      if (!strictly_inside(pts[2 * p], pts[2 * p + 1], box)) continue;
      const int64_t c = a.labels[r];
      const acc_t s = stats[2 * r], bag = stats[2 * r + 1];
      const acc_t denom = clamp_min_nan(s, eps), kept = dclamp(s, eps);
      const acc_t g_bag = gpos[b] * bce_grad(bag, acc_t(1));
      const AaPair<scalar_t, acc_t> q = aa_pair<scalar_t, acc_t>(a, b, p, box, c);
      const acc_t spread = q.pos.p_pos - kept * bag;
      const acc_t d_pos = g_bag * (q.cw / denom) * (acc_t(1) + acc_t(3) * spread);
      const acc_t d_joint = d_pos * q.pos.loc;
      dcls[i * a.classes + c] += d_joint * q.so * (q.sc * (acc_t(1) - q.sc));
      d_obj += d_joint * q.sc * (q.so * (acc_t(1) - q.so));
      const Box4<acc_t> db = overlap_grad_a(distance2bbox(pts[2 * p], pts[2 * p + 1], dist + 4 * i), box,
                                            acc_t(kAutoAssignIouEps), true,
                                            acc_t(kAutoAssignGiouWeight) * q.pos.loc * (d_pos * q.pos.joint));
      dd[0] -= db.x1;
      dd[1] -= db.y1;
      dd[2] += db.x2;
      dd[3] += db.y2;
    }
    dobj[i] += d_obj;
    for (int k = 0; k < 4; ++k) ddist[4 * i + k] = dd[k];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_prior_grad_kernel(AutoAssignArgs a) {
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const auto* stats = static_cast<const acc_t*>(a.stats);
  const auto* gpos = static_cast<const acc_t*>(a.grad_pos);
  const auto* gpri = static_cast<const acc_t*>(a.grad_prior);
  const auto* sg = static_cast<const acc_t*>(a.sigma);
  auto* out = static_cast<acc_t*>(a.prior_part);
  const acc_t eps = acc_t(kAutoAssignEps);
  for (int64_t r = blockIdx.x; r < a.batch * a.num_gt; r += gridDim.x) {  // block-uniform
    const int64_t b = r / a.num_gt;
    acc_t acc[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    if (aa_usable(a, r)) {
      const Box4<acc_t> g = aa_box(gt + 4 * r);
      const int64_t c = a.labels[r];
      const acc_t s = stats[2 * r], bag = stats[2 * r + 1];
      const acc_t denom = clamp_min_nan(s, eps), kept = dclamp(s, eps);
      const acc_t g_bag = gpos[b] * bce_grad(bag, acc_t(1));
      for (int l = 0; l < a.levels.count; ++l) {
        const Span sp = aa_span(a, static_cast<const acc_t*>(a.strides), l, g);
        const int cells = sp.rows * sp.cols;  // within one level: < P < 2^31
        for (int k = threadIdx.x; k < cells; k += blockDim.x) {
          const int64_t p = aa_cell(a, l, sp, k, g);
          if (p < 0) continue;
          const AaPair<scalar_t, acc_t> q = aa_pair<scalar_t, acc_t>(a, b, p, g, c);
          const acc_t d_prior = g_bag * q.e3 * (q.pos.p_pos - kept * bag) / denom + gpri[b];
          center_prior_grad(q.prior, sg[2 * c], sg[2 * c + 1], d_prior, acc);
        }
      }
    }
    for (int k = 0; k < 4; ++k) {
      const acc_t v = aa_block_reduce(acc[k], AaSum{});
      if (threadIdx.x == 0) out[4 * r + k] = v;
    }
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_prior_reduce_kernel(AutoAssignArgs a) {
  const auto* part = static_cast<const acc_t*>(a.prior_part);
  GF_GRID_STRIDE(c, a.classes) {
    acc_t v[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    for (int64_t r = 0; r < a.batch * a.num_gt; ++r)
      if (aa_usable(a, r) && a.labels[r] == c)
        for (int k = 0; k < 4; ++k) v[k] += part[4 * r + k];
    auto* dmu = static_cast<acc_t*>(a.d_mu);
    auto* dsg = static_cast<acc_t*>(a.d_sigma);
    dmu[2 * c] = v[0];
    dmu[2 * c + 1] = v[1];
    dsg[2 * c] = v[2];
    dsg[2 * c + 1] = v[3];
  }
}

// ---- host side -------------------------------------------------------------

inline cudaError_t autoassign_forward(DType dt, const AutoAssignArgs& args, int num_sms, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto ty) {
    using scalar_t = typename decltype(ty)::scalar_t;
    using acc_t = typename decltype(ty)::acc_t;
    const int64_t rows = args.batch * args.points_n, gts = args.batch * args.num_gt;
    const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
    if (rows > 0) {
      constexpr auto K1 = aa_best_iou_kernel<scalar_t, acc_t>;
      launch<K1>(grid_for<K1>(rows, num_sms), kThreads, 0, stream, args);
    }
    if (gts > 0) launch<aa_gt_kernel<scalar_t, acc_t>>(static_cast<unsigned>(gts < cap ? gts : cap), kThreads, 0,
                                                       stream, args);
    if (rows > 0 && gts > 0) {
      constexpr auto K3 = aa_neg_weight_kernel<scalar_t, acc_t>;
      const int64_t per_image = (grid_for<K3>(rows, num_sms) + args.batch - 1) / args.batch;
      launch<K3>(dim3(static_cast<unsigned>(per_image), static_cast<unsigned>(args.batch)), kThreads, 0, stream,
                 args);
    }
    launch<aa_neg_loss_kernel<scalar_t, acc_t>>(dim3(kAutoAssignNegBlocks, static_cast<unsigned>(args.batch)),
                                                kThreads, 0, stream, args);
    launch<aa_finish_kernel<scalar_t, acc_t>>(static_cast<unsigned>(args.batch), kThreads, 0, stream, args);
  });
  return cudaGetLastError();
}

inline cudaError_t autoassign_backward(DType dt, const AutoAssignArgs& args, int num_sms, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto ty) {
    using scalar_t = typename decltype(ty)::scalar_t;
    using acc_t = typename decltype(ty)::acc_t;
    const int64_t rows = args.batch * args.points_n, gts = args.batch * args.num_gt;
    const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
    if (rows > 0) {
      const int64_t need = (rows + kThreads / 32 - 1) / (kThreads / 32);
      launch<aa_neg_grad_kernel<scalar_t, acc_t>>(static_cast<unsigned>(need < cap ? need : cap), kThreads, 0,
                                                  stream, args);
      constexpr auto K2 = aa_pos_grad_kernel<scalar_t, acc_t>;
      launch<K2>(grid_for<K2>(rows, num_sms), kThreads, 0, stream, args);
    }
    if (gts > 0)
      launch<aa_prior_grad_kernel<scalar_t, acc_t>>(static_cast<unsigned>(gts < cap ? gts : cap), kThreads, 0,
                                                    stream, args);
    if (args.classes > 0) {
      constexpr auto K4 = aa_prior_reduce_kernel<acc_t>;
      launch<K4>(grid_for<K4>(args.classes, num_sms), kThreads, 0, stream, args);
    }
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
