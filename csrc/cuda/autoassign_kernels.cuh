// CUDA kernels of the AutoAssign loss terms (SPEC.md section 6; math in
// ../common/autoassign.h) and their torch-free host entry points. Included by
// autoassign.cu alone.
//
// Forward:
// 1. best_iou: a block per (point tile, image), a thread per point. The
//    point's 1 / (1 - best IoU) over the image's valid GTs, or 0 when the
//    point lies inside no GT; each block walks only the GTs that may hold one
//    of its points, then those that may overlap one of their predicted boxes.
// 2. gt: a block per (image, GT). The block walks the grid cells the GT's
//    box spans on each level, tests each exactly, and sums the positive
//    weights, the bag numerator and the prior. It takes the range of t over
//    the GT's points. Block sums run in a fixed tree.
// 3. neg_fix: per point tile, a thread per point inside some GT: the
//    negative term of each class a GT gives it, at the weight of that class's
//    winner (SPEC section 6: the GT of the class with the highest index). Its
//    GTs are walked in descending order and the first of a class wins, marked
//    in a bit per (point, class).
// 4. neg_loss: the dense x^2 BCE(x, 0) over the other (point, class)
//    elements, at weight 1, as per-block partials per image (a grid fixed by
//    the shapes, so the sum order is too). Each element is added once, at its
//    own weight: nothing is added and then taken away.
// 5. finish: a block per image sums the partials and the GTs in order.
// Backward:
// 1. per point tile, a thread per point: its GTs descending. The first GT of
//    a class sets that class's negative gradient at its weight and marks it,
//    then every GT adds its positive pair, into the point's own rows, with no
//    atomics;
// 2. a warp per (image, point): the negative term's gradient of the unmarked
//    classes, at weight 1 (lanes over classes, the objectness by a warp sum);
// 3. a block per (image, GT): the prior's gradient w.r.t. mu and sigma;
// 4. a block per class: those partials summed over (image, GT) in a fixed order.
// Workspace: O(B (P + G)) and a bit per (point, class) for the winners. No
// (B, P, C) tensor but the gradient: the weights are 1 but at the classes of
// a point's GTs, so only t (B, P) and the GTs' ranges of t are kept for the
// backward. Nothing is of size points x GTs, and no thread loops over every
// GT: a point tile keeps the GTs near it, chunk by chunk, in shared memory
// (aa_gt_chunks).
#pragma once

#include "../common/autoassign.h"
#include "common.cuh"

namespace gf {
namespace cuda {

constexpr int kAutoAssignMaxLevels = 16;
constexpr int kAaNegPerBlock = 8192;  // elements a block of the dense negative term takes, about
constexpr int kAaNegMaxBlocks = 4096;  // per image

struct AutoAssignLevels {
  int64_t start[kAutoAssignMaxLevels];
  // The first point tile of each level (aa_tile_point); tile_start[count] is the total.
  int64_t tile_start[kAutoAssignMaxLevels + 1];
  int h[kAutoAssignMaxLevels], w[kAutoAssignMaxLevels];
  int count;
};

// The point tiles of a level of h x w points: kThreads / 32 rows x 32 columns each.
inline int64_t aa_level_tiles(int64_t h, int64_t w) {
  const int64_t rows = kThreads / 32;
  return ((h + rows - 1) / rows) * ((w + 31) / 32);
}

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
  unsigned long long* census;  // nullptr, or the kAaCensus counters (autoassign_census_buffer)
  bool cull;                   // the tiles' culls on (off: tests compare with the full loops)
  int64_t batch, points_n, classes, num_gt;
  // forward workspace and outputs
  // t (B, P): 1 / (1 - best IoU), 0 outside every GT; written by the forward, read by the backward
  void* t;
  void* gt_part;    // (B, G, 3): BCE of the bag, prior sum, points inside
  // (B, neg_blocks + fix_tiles): the dense term's partials, then neg_fix's per tile
  void* neg_part;
  int64_t neg_rows;           // points a block of the dense term takes
  int neg_blocks, fix_tiles;  // aa_plan
  unsigned* seen;   // (B, P, ceil(C / 32)): the classes whose winner a point has met
  // stats (B, G, 4): sum of positive weights, bag, min and max of t over the GT's points; written by the
  // forward, read by the backward
  void* stats;
  void* loss_pos;   // (B,)
  void* loss_neg;
  void* prior_sum;
  bool* any_inside;
  // the whole loss (autoassign_loss_totals), or nullptr: image (B, 3) = (prior sum, valid GTs, any inside),
  // then the three totals (0-dim each)
  void* image;
  void* totals[3];
  // backward
  const void* grad_pos;    // (B,)
  const void* grad_neg;
  const void* grad_prior;
  // autoassign_loss_totals: the totals' gradients, turned into image_grads (3, B), which the three above
  // then point into
  const void* grad_totals[3];
  void* image_grads;
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

// v[0, S) summed, v[S, S + M) their minimum and the rest their maximum over
// the block, each in the same fixed tree (shuffles down within a warp, then
// warp 0 over the warps), with one pair of barriers for all of them; valid in
// thread 0. Every thread calls.
template <int S, int M, typename T, int N> __device__ void aa_block_reduce(T (&v)[N]) {
  GF_SHARED(T, part, [N][32]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
  const auto op = [](int k, T a, T b) { return k < S ? a + b : k < S + M ? (b < a ? b : a) : (b > a ? b : a); };
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = op(k, v[k], __shfl_down_sync(0xffffffffu, v[k], o));
  if (lane == 0)
    for (int k = 0; k < N; ++k) part[k][warp] = v[k];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = part[k][lane < nwarps ? lane : 0];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const T other = __shfl_down_sync(0xffffffffu, v[k], o);
        if (lane + o < nwarps) v[k] = op(k, v[k], other);
      }
    }
  }
  __syncthreads();
}


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

// ---- point tiles -------------------------------------------------------------
// The per-point kernels run a block per (tile, image): a tile is kAaTileRows
// rows x 32 columns of one level's grid, a thread a point. The block reads the
// image's GTs in chunks of kThreads and keeps, in shared memory and in
// ascending order, only those that may matter to one of its points; each
// thread then walks that short list instead of every GT. A kept GT is tested
// exactly, so the culls below only ever drop GTs whose result is known.

constexpr int kAaTileRows = kThreads / 32;

// Test-only counters of aa_best_iou_kernel, summed over its blocks.
enum AaCensus { kAaKeptInside, kAaKeptIou, kAaTilesWithPoints, kAaTilesInside, kAaCensus };

__device__ __forceinline__ void aa_count(unsigned long long* census, int what, unsigned long long n) {
  if (census && threadIdx.x == 0) atomicAdd(census + what, n);
}

// The point of this thread in tile `tile` (over all levels) of the image.
struct AaTilePoint { int64_t p; bool has; };

__device__ __forceinline__ AaTilePoint aa_tile_point(const AutoAssignArgs& a, int64_t tile) {
  int l = 0;
  while (l + 1 < a.levels.count && tile >= a.levels.tile_start[l + 1]) ++l;
  const int k = static_cast<int>(tile - a.levels.tile_start[l]);
  const int w = a.levels.w[l], across = (w + 31) / 32;
  const int row = (k / across) * kAaTileRows + (threadIdx.x >> 5), col = (k % across) * 32 + (threadIdx.x & 31);
  const bool has = row < a.levels.h[l] && col < w;
  return AaTilePoint{has ? a.levels.start[l] + static_cast<int64_t>(row) * w + col : 0, has};
}

// The bounding rectangle of what the threads with `on` contribute, in every
// thread: lo = min, hi = max (exact, so the order does not matter); `any`
// and `wild` are ORs over the block. No thread may contribute a NaN.
template <typename acc_t> struct AaBounds { acc_t lx, ly, hx, hy; bool any, wild; };

template <typename acc_t>
__device__ AaBounds<acc_t> aa_bounds(bool on, bool wild, acc_t lx, acc_t ly, acc_t hx, acc_t hy) {
  GF_SHARED(acc_t, part, [kThreads / 32][4]);
  GF_SHARED(unsigned, flags, [kThreads / 32]);
  const acc_t inf = acc_t(INFINITY);
  acc_t v[4] = {on ? lx : inf, on ? ly : inf, on ? hx : -inf, on ? hy : -inf};
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const acc_t u = __shfl_xor_sync(0xffffffffu, v[k], o);
      v[k] = k < 2 ? (u < v[k] ? u : v[k]) : (u > v[k] ? u : v[k]);
    }
  }
  const unsigned any_lanes = __ballot_sync(0xffffffffu, on), wild_lanes = __ballot_sync(0xffffffffu, wild);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    for (int k = 0; k < 4; ++k) part[warp][k] = v[k];
    flags[warp] = (any_lanes ? 1u : 0u) | (wild_lanes ? 2u : 0u);
  }
  __syncthreads();
  AaBounds<acc_t> r{inf, inf, -inf, -inf, false, false};
  unsigned f = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    r.lx = part[w][0] < r.lx ? part[w][0] : r.lx;
    r.ly = part[w][1] < r.ly ? part[w][1] : r.ly;
    r.hx = part[w][2] > r.hx ? part[w][2] : r.hx;
    r.hy = part[w][3] > r.hy ? part[w][3] : r.hy;
    f |= flags[w];
  }
  r.any = (f & 1u) != 0;
  r.wild = (f & 2u) != 0;
  __syncthreads();  // part and flags are free again
  return r;
}

// The bounds of this block's points (those with finite coordinates: no other
// point is strictly inside anything).
template <typename acc_t> __device__ AaBounds<acc_t> aa_point_bounds(const AutoAssignArgs& a, const AaTilePoint& tp) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const acc_t inf = acc_t(INFINITY);
  const acc_t px = tp.has ? pts[2 * tp.p] : acc_t(0), py = tp.has ? pts[2 * tp.p + 1] : acc_t(0);
  const bool on = tp.has && px > -inf && px < inf && py > -inf && py < inf;
  return aa_bounds(on, false, px, py, px, py);
}

// A GT may hold one of the points within `pt` strictly inside (common/autoassign.h), or the culls are off.
template <typename acc_t>
__device__ __forceinline__ bool aa_may_hold(const AutoAssignArgs& a, const Box4<acc_t>& g, const AaBounds<acc_t>& pt) {
  return !a.cull || may_hold_one_of(g, pt.lx, pt.ly, pt.hx, pt.hy);
}

// A GT chunk as the block keeps it: box, label and index in the image.
template <typename acc_t> struct AaChunk {
  const acc_t (*box)[4];
  const int* label;
  const int* index;
  int n;
  __device__ Box4<acc_t> at(int j) const { return Box4<acc_t>{box[j][0], box[j][1], box[j][2], box[j][3]}; }
};

// For each chunk of the image's GTs in turn (the last chunk first when
// `descending`): the usable GTs with keep(box) compacted in ascending order,
// then visit(chunk) by every thread.
template <typename acc_t, bool descending = false, typename Keep, typename Visit>
__device__ void aa_gt_chunks(const AutoAssignArgs& a, int64_t b, Keep keep, Visit visit,
                             unsigned long long* census = nullptr, int what = 0) {
  GF_SHARED(acc_t, box, [kThreads][4]);
  GF_SHARED(int, label, [kThreads]);
  GF_SHARED(int, index, [kThreads]);
  GF_SHARED(int, counts, [kThreads / 32]);
  const auto* gt = static_cast<const acc_t*>(a.gt);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t step = blockDim.x, last = a.num_gt > 0 ? (a.num_gt - 1) / step * step : -1;
  for (int64_t g0 = descending ? last : 0; descending ? g0 >= 0 : g0 < a.num_gt;
       g0 += descending ? -step : step) {  // block-uniform
    const int64_t g = g0 + threadIdx.x, r = b * a.num_gt + g;
    bool kept = false;
    Box4<acc_t> box_g{};
    if (g < a.num_gt && aa_usable(a, r)) {
      box_g = aa_box(gt + 4 * r);
      kept = keep(box_g);
    }
    const unsigned lanes = __ballot_sync(0xffffffffu, kept);
    if (lane == 0) counts[warp] = __popc(lanes);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
      before += w < warp ? counts[w] : 0;
      total += counts[w];
    }
    if (kept) {
      const int j = before + __popc(lanes & ((1u << lane) - 1u));
      box[j][0] = box_g.x1;
      box[j][1] = box_g.y1;
      box[j][2] = box_g.x2;
      box[j][3] = box_g.y2;
      label[j] = static_cast<int>(a.labels[r]);
      index[j] = static_cast<int>(g);
    }
    __syncthreads();
    aa_count(census, what, static_cast<unsigned long long>(total));
    visit(AaChunk<acc_t>{box, label, index, total});
    __syncthreads();
  }
}

// t = 1 / (1 - best IoU) of each point inside some GT, 0 elsewhere. Inside:
// over the GTs that may hold one of the tile's points. Best IoU: over every
// GT but those provably at IoU 0 with every inside point's predicted box
// (disjoint from their hull, all coordinates tame); a GT at 0 never changes
// the maximum (it starts at 0), so the value is the full loop's, NaN included.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_best_iou_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* dist = static_cast<const acc_t*>(a.dist);
  auto* t = static_cast<acc_t*>(a.t);
  const int64_t b = blockIdx.y;
  const AaTilePoint tp = aa_tile_point(a, blockIdx.x);
  const int64_t i = b * a.points_n + tp.p;
  const AaBounds<acc_t> pt = aa_point_bounds<acc_t>(a, tp);
  if (!pt.any) {  // block-uniform
    if (tp.has) t[i] = acc_t(0);
    return;
  }
  const acc_t px = tp.has ? pts[2 * tp.p] : acc_t(0), py = tp.has ? pts[2 * tp.p + 1] : acc_t(0);
  bool inside = false;
  aa_count(a.census, kAaTilesWithPoints, 1);
  aa_gt_chunks<acc_t>(
      a, b, [&](const Box4<acc_t>& g) { return aa_may_hold(a, g, pt); },
      [&](const AaChunk<acc_t>& c) {
        for (int j = 0; j < c.n && tp.has && !inside; ++j) inside = strictly_inside(px, py, c.at(j));
      },
      a.census, kAaKeptInside);
  Box4<acc_t> pb{};
  if (inside) pb = distance2bbox(px, py, dist + 4 * i);
  const bool tame = tame_box(pb);
  const AaBounds<acc_t> hull = aa_bounds(inside && tame, inside && !tame, gmin(pb.x1, pb.x2), gmin(pb.y1, pb.y2),
                                         gmax(pb.x1, pb.x2), gmax(pb.y1, pb.y2));
  if (!hull.any && !hull.wild) {  // block-uniform: no point inside
    if (tp.has) t[i] = acc_t(0);
    return;
  }
  acc_t best = acc_t(0);
  aa_count(a.census, kAaTilesInside, 1);
  aa_gt_chunks<acc_t>(
      a, b,
      [&](const Box4<acc_t>& g) {
        return !a.cull || !iou_surely_zero(g, !hull.wild, hull.lx, hull.ly, hull.hx, hull.hy);
      },
      [&](const AaChunk<acc_t>& c) {
        for (int j = 0; j < c.n && inside && best == best; ++j) {
          const acc_t v = iou_only(pb, c.at(j), acc_t(kAutoAssignIouEps));
          if (v > best || v != v) best = v;
        }
      },
      a.census, kAaKeptIou);
  if (tp.has) t[i] = inside ? inverse_miss(best) : acc_t(0);
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
      if (threadIdx.x == 0)
        for (int k = 0; k < 4; ++k) {
          if (k < 3) part[3 * r + k] = acc_t(0);
          stats[4 * r + k] = acc_t(0);
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
    acc_t v[6] = {s, num, psum, n, lo, hi};
    aa_block_reduce<4, 1>(v);
    s = v[0], num = v[1], psum = v[2], n = v[3], lo = v[4], hi = v[5];
    if (threadIdx.x == 0) {
      const acc_t bag = num / clamp_min_nan(s, eps);
      part[3 * r] = bce_one(bag);
      part[3 * r + 1] = psum;
      part[3 * r + 2] = n;
      stats[4 * r] = s;
      stats[4 * r + 1] = bag;
      stats[4 * r + 2] = lo;
      stats[4 * r + 3] = hi;
    }
  }
}

// The winner of a class at a point is the GT of that class with the highest
// index that holds it (SPEC section 6): walking the point's GTs descending,
// the first of its class. `seen` holds the point's bits, one per class,
// cleared by aa_clear_seen.
__device__ __forceinline__ bool aa_first_of_class(unsigned* seen, int label) {
  const unsigned bit = 1u << (label & 31);
  const unsigned word = seen[label >> 5];
  if (word & bit) return false;
  seen[label >> 5] = word | bit;
  return true;
}

__device__ __forceinline__ unsigned* aa_clear_seen(const AutoAssignArgs& a, int64_t i) {
  const int64_t words = (a.classes + 31) / 32;
  unsigned* seen = a.seen + i * words;
  for (int64_t k = 0; k < words; ++k) seen[k] = 0u;
  return seen;
}

// The winner bits of classes [c0, c0 + 32) of point row i (b P + p): bit k
// set when class c0 + k has a winner GT, whose weight aa_neg_fix_kernel and
// aa_pos_grad_kernel apply. Only a point inside some GT (t != 0) has any,
// and those kernels cleared its bits; c0 is a multiple of 32, so the warp
// that walks a row with lanes over classes loads one word for all lanes.
template <typename acc_t>
__device__ __forceinline__ unsigned aa_winners(const AutoAssignArgs& a, int64_t i, int64_t c0) {
  return static_cast<const acc_t*>(a.t)[i] != acc_t(0) ? a.seen[i * ((a.classes + 31) / 32) + (c0 >> 5)] : 0u;
}

// 1 - t_norm: the negative weight that GT r gives the points inside it.
template <typename acc_t> __device__ __forceinline__ acc_t aa_stats_neg_weight(const acc_t* stats, int64_t r, acc_t t) {
  return aa_neg_weight(t, stats[4 * r + 2], stats[4 * r + 3]);
}

// Per point inside some GT: the negative term of each class that a GT gives
// it, at the winner's weight (aa_neg_loss_kernel skips those elements, so no
// term is added and taken away again). One partial per (tile, image).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_fix_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* t = static_cast<const acc_t*>(a.t);
  const auto* stats = static_cast<const acc_t*>(a.stats);
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
  const int64_t b = blockIdx.y;
  const AaTilePoint tp = aa_tile_point(a, blockIdx.x);
  const int64_t i = b * a.points_n + tp.p;
  const acc_t tv = tp.has ? t[i] : acc_t(0);
  const bool inside = tv != acc_t(0);  // t is 0 exactly for the points inside no GT
  const acc_t px = inside ? pts[2 * tp.p] : acc_t(0), py = inside ? pts[2 * tp.p + 1] : acc_t(0);
  const AaBounds<acc_t> pt = aa_bounds(inside, false, px, py, px, py);
  acc_t fix = acc_t(0);
  if (pt.any) {  // block-uniform
    unsigned* seen = inside ? aa_clear_seen(a, i) : nullptr;
    const acc_t so = inside ? sigmoid_of(cvt<acc_t>(obj[i])) : acc_t(0);
    aa_gt_chunks<acc_t, true>(a, b, [&](const Box4<acc_t>& g) { return aa_may_hold(a, g, pt); },
                              [&](const AaChunk<acc_t>& c) {
                                for (int j = c.n - 1; j >= 0 && inside; --j) {
                                  if (!strictly_inside(px, py, c.at(j)) || !aa_first_of_class(seen, c.label[j]))
                                    continue;
                                  const acc_t w = aa_stats_neg_weight(stats, b * a.num_gt + c.index[j], tv);
                                  const acc_t x = sigmoid_of(cvt<acc_t>(cls[i * a.classes + c.label[j]])) * so;
                                  fix += neg_loss(x * w);
                                }
                              });
  }
  fix = block_sum(fix);
  if (threadIdx.x == 0)
    static_cast<acc_t*>(a.neg_part)[b * (a.neg_blocks + a.fix_tiles) + a.neg_blocks + blockIdx.x] = fix;
}

// The dense x^2 BCE(x, 0) over (point, class) at weight 1, but for the
// elements with a winner GT (aa_neg_fix_kernel's, run before), as per-block
// partials per image: block k takes rows [k neg_rows, (k + 1) neg_rows), a
// warp a row, lanes over classes (so the objectness's sigmoid and the winner
// bits are loaded once a row). The grid and each lane's order are fixed by
// the shapes.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_loss_kernel(AutoAssignArgs a) {
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
  const int64_t C = a.classes, p0 = static_cast<int64_t>(blockIdx.x) * a.neg_rows;
  const int64_t p1 = p0 + a.neg_rows < a.points_n ? p0 + a.neg_rows : a.points_n;
  const int lane = threadIdx.x & 31;
  acc_t v = acc_t(0);
  for (int64_t p = p0 + (threadIdx.x >> 5); p < p1; p += blockDim.x >> 5) {  // warp-uniform
    const int64_t i = blockIdx.y * a.points_n + p;
    const acc_t so = sigmoid_of(cvt<acc_t>(obj[i]));
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
      const unsigned won = aa_winners<acc_t>(a, i, c0);
      const int64_t c = c0 + lane;
      if (c < C && !((won >> lane) & 1u)) v += neg_loss(sigmoid_of(cvt<acc_t>(cls[i * C + c])) * so);
    }
  }
  v = block_sum(v);
  if (threadIdx.x == 0) static_cast<acc_t*>(a.neg_part)[blockIdx.y * (a.neg_blocks + a.fix_tiles) + blockIdx.x] = v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_finish_kernel(AutoAssignArgs a) {
  const auto* part = static_cast<const acc_t*>(a.gt_part);
  const auto* neg = static_cast<const acc_t*>(a.neg_part);
  const int64_t b = blockIdx.x;
  acc_t pos = acc_t(0), prior = acc_t(0), inside = acc_t(0), negs = acc_t(0), gts = acc_t(0);
  for (int64_t g = threadIdx.x; g < a.num_gt; g += blockDim.x) {
    const int64_t r = b * a.num_gt + g;
    pos += part[3 * r];
    prior += part[3 * r + 1];
    inside += part[3 * r + 2];
    gts += a.valid[r] ? acc_t(1) : acc_t(0);  // SPEC's G_i: valid GTs, a bad label included
  }
  const int64_t parts = a.neg_blocks + a.fix_tiles;  // the dense term's partials, then the fixes, in order
  for (int64_t k = threadIdx.x; k < parts; k += blockDim.x) negs += neg[b * parts + k];
  pos = block_sum(pos);
  prior = block_sum(prior);
  inside = block_sum(inside);
  negs = block_sum(negs);
  gts = block_sum(gts);
  if (threadIdx.x == 0) {
    static_cast<acc_t*>(a.loss_pos)[b] = pos;
    static_cast<acc_t*>(a.loss_neg)[b] = negs;
    static_cast<acc_t*>(a.prior_sum)[b] = prior;
    a.any_inside[b] = inside > acc_t(0);
    if (a.image) {
      auto* im = static_cast<acc_t*>(a.image) + 3 * b;
      im[0] = prior;
      im[1] = gts;
      im[2] = inside > acc_t(0) ? acc_t(1) : acc_t(0);
    }
  }
}

// The batch totals of the whole loss (common/autoassign.h), by one thread: the images in order.
template <typename acc_t> __global__ void aa_totals_kernel(AutoAssignArgs a) {
  if (threadIdx.x != 0) return;
  acc_t out[3];
  aa_totals(static_cast<const acc_t*>(a.loss_pos), static_cast<const acc_t*>(a.loss_neg),
            static_cast<const acc_t*>(a.image), a.batch, out);
  for (int k = 0; k < 3; ++k) *static_cast<acc_t*>(a.totals[k]) = out[k];
}

// ---- backward ----------------------------------------------------------------

// The totals' gradients per image (image_grads: grad_pos, grad_neg, grad_prior), by one thread.
template <typename acc_t> __global__ void aa_total_grads_kernel(AutoAssignArgs a) {
  if (threadIdx.x != 0) return;
  aa_total_grads(*static_cast<const acc_t*>(a.grad_totals[0]), *static_cast<const acc_t*>(a.grad_totals[1]),
                 *static_cast<const acc_t*>(a.grad_totals[2]), static_cast<const acc_t*>(a.image), a.batch,
                 static_cast<acc_t*>(a.image_grads));
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_neg_grad_kernel(AutoAssignArgs a) {
  const auto* cls = static_cast<const scalar_t*>(a.cls);
  const auto* obj = static_cast<const scalar_t*>(a.obj);
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
    for (int64_t c0 = 0; c0 < a.classes; c0 += 32) {
      const unsigned won = aa_winners<acc_t>(a, i, c0);  // at their winners' weights: aa_pos_grad_kernel's
      const int64_t c = c0 + lane;
      if (c >= a.classes || ((won >> lane) & 1u)) continue;
      const int64_t e = i * a.classes + c;
      const acc_t sc = sigmoid_of(cvt<acc_t>(cls[e]));
      const acc_t d_joint = g * neg_loss_grad(sc * so);
      dcls[e] = d_joint * so * (sc * (acc_t(1) - sc));
      to_obj += d_joint * sc;
    }
    to_obj = warp_sum(to_obj);
    if (lane == 0 && a.classes > 0) dobj[i] += to_obj * (so * (acc_t(1) - so));  // C = 0: a NaN logit adds nothing
  }
}

// The pairs of each point, its GTs descending, into its own rows (no
// atomics): over the GTs that may hold one of the tile's points. The first
// GT of a class (its winner) sets that class's negative gradient at its
// weight and marks the class; then every GT adds its positive pair. Runs
// before aa_neg_grad_kernel, which fills the classes left unmarked; so it
// writes d_obj (and clears the bits of every point) rather than adding.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_pos_grad_kernel(AutoAssignArgs a) {
  const auto* pts = static_cast<const acc_t*>(a.points);
  const auto* stats = static_cast<const acc_t*>(a.stats);
  const auto* t = static_cast<const acc_t*>(a.t);
  const auto* gpos = static_cast<const acc_t*>(a.grad_pos);
  const auto* gneg = static_cast<const acc_t*>(a.grad_neg);
  const auto* dist = static_cast<const acc_t*>(a.dist);
  auto* dcls = static_cast<acc_t*>(a.d_cls);
  auto* dobj = static_cast<acc_t*>(a.d_obj);
  auto* ddist = static_cast<acc_t*>(a.d_dist);
  const acc_t eps = acc_t(kAutoAssignEps);
  const int64_t b = blockIdx.y;
  const AaTilePoint tp = aa_tile_point(a, blockIdx.x);
  const int64_t i = b * a.points_n + tp.p, p = tp.p;
  const AaBounds<acc_t> pt = aa_point_bounds<acc_t>(a, tp);
  acc_t d_obj = acc_t(0), dd[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  unsigned* seen = tp.has ? aa_clear_seen(a, i) : nullptr;
  if (pt.any) {  // block-uniform
    const acc_t px = tp.has ? pts[2 * p] : acc_t(0), py = tp.has ? pts[2 * p + 1] : acc_t(0);
    const acc_t tv = tp.has ? t[i] : acc_t(0), g_neg = gneg[b];
    aa_gt_chunks<acc_t, true>(a, b, [&](const Box4<acc_t>& g) { return aa_may_hold(a, g, pt); },
                        [&](const AaChunk<acc_t>& ch) {
                          for (int j = ch.n - 1; j >= 0 && tp.has; --j) {
                            const Box4<acc_t> box = ch.at(j);
                            if (!strictly_inside(px, py, box)) continue;
                            const int64_t r = b * a.num_gt + ch.index[j], c = ch.label[j];
                            const AaPair<scalar_t, acc_t> q = aa_pair<scalar_t, acc_t>(a, b, p, box, c);
                            if (aa_first_of_class(seen, ch.label[j])) {
                              const acc_t w = aa_stats_neg_weight(stats, r, tv);
                              const acc_t d_w = g_neg * neg_loss_grad(q.sc * q.so * w) * w;
                              dcls[i * a.classes + c] = d_w * q.so * (q.sc * (acc_t(1) - q.sc));
                              d_obj += d_w * q.sc * (q.so * (acc_t(1) - q.so));
                            }
                            const acc_t s = stats[4 * r], bag = stats[4 * r + 1];
                            const acc_t denom = clamp_min_nan(s, eps), kept = dclamp(s, eps);
                            const acc_t g_bag = gpos[b] * bce_grad(bag, acc_t(1));
                            const acc_t spread = q.pos.p_pos - kept * bag;
                            const acc_t d_pos = g_bag * (q.cw / denom) * (acc_t(1) + acc_t(3) * spread);
                            const acc_t d_joint = d_pos * q.pos.loc;
                            dcls[i * a.classes + c] += d_joint * q.so * (q.sc * (acc_t(1) - q.sc));
                            d_obj += d_joint * q.sc * (q.so * (acc_t(1) - q.so));
                            const Box4<acc_t> db = overlap_grad_a(
                                distance2bbox(px, py, dist + 4 * i), box, acc_t(kAutoAssignIouEps), true,
                                acc_t(kAutoAssignGiouWeight) * q.pos.loc * (d_pos * q.pos.joint));
                            dd[0] -= db.x1;
                            dd[1] -= db.y1;
                            dd[2] += db.x2;
                            dd[3] += db.y2;
                          }
                        });
  }
  if (!tp.has) return;
  dobj[i] = d_obj;
  for (int k = 0; k < 4; ++k) ddist[4 * i + k] = dd[k];
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
      const acc_t s = stats[4 * r], bag = stats[4 * r + 1];
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
    aa_block_reduce<4, 0>(acc);
    if (threadIdx.x == 0)
      for (int k = 0; k < 4; ++k) out[4 * r + k] = acc[k];
  }
}

// A block per class: the (image, GT) partials of that class summed in a
// fixed order (each thread its stride of GTs ascending, then a fixed tree).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) aa_prior_reduce_kernel(AutoAssignArgs a) {
  const auto* part = static_cast<const acc_t*>(a.prior_part);
  auto* dmu = static_cast<acc_t*>(a.d_mu);
  auto* dsg = static_cast<acc_t*>(a.d_sigma);
  for (int64_t c = blockIdx.x; c < a.classes; c += gridDim.x) {  // block-uniform
    acc_t v[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    for (int64_t r = threadIdx.x; r < a.batch * a.num_gt; r += blockDim.x)
      if (aa_usable(a, r) && a.labels[r] == c)
        for (int k = 0; k < 4; ++k) v[k] += part[4 * r + k];
    aa_block_reduce<4, 0>(v);
    if (threadIdx.x == 0) {
      dmu[2 * c] = v[0];
      dmu[2 * c + 1] = v[1];
      dsg[2 * c] = v[2];
      dsg[2 * c + 1] = v[3];
    }
  }
}

// ---- host side -------------------------------------------------------------

// The forward's partials per image: the dense term's blocks (fixed by the
// shapes), then neg_fix's tiles (none without points or GTs).
inline void aa_plan(AutoAssignArgs& a) {
  const int64_t warps = kThreads / 32, P = a.points_n;
  int64_t rows = kAaNegPerBlock / (a.classes > 1 ? a.classes : 1) / warps * warps;  // a multiple of the warps
  rows = rows < warps ? warps : rows;
  if ((P + rows - 1) / rows > kAaNegMaxBlocks)
    rows = ((P + kAaNegMaxBlocks - 1) / kAaNegMaxBlocks + warps - 1) / warps * warps;
  const int64_t blocks = (P + rows - 1) / rows;
  a.neg_rows = rows;
  a.neg_blocks = static_cast<int>(blocks < 1 ? 1 : blocks);
  a.fix_tiles = a.points_n > 0 && a.num_gt > 0 ? static_cast<int>(a.levels.tile_start[a.levels.count]) : 0;
}

inline cudaError_t autoassign_forward(DType dt, const AutoAssignArgs& args, int num_sms, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto ty) {
    using scalar_t = typename decltype(ty)::scalar_t;
    using acc_t = typename decltype(ty)::acc_t;
    const int64_t rows = args.batch * args.points_n, gts = args.batch * args.num_gt;
    const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
    const dim3 tiles(static_cast<unsigned>(args.levels.tile_start[args.levels.count]),
                     static_cast<unsigned>(args.batch));
    if (rows > 0) launch<aa_best_iou_kernel<scalar_t, acc_t>>(tiles, kThreads, 0, stream, args);
    if (gts > 0) launch<aa_gt_kernel<scalar_t, acc_t>>(static_cast<unsigned>(gts < cap ? gts : cap), kThreads, 0,
                                                       stream, args);
    if (args.fix_tiles > 0) launch<aa_neg_fix_kernel<scalar_t, acc_t>>(tiles, kThreads, 0, stream, args);
    launch<aa_neg_loss_kernel<scalar_t, acc_t>>(
        dim3(static_cast<unsigned>(args.neg_blocks), static_cast<unsigned>(args.batch)), kThreads, 0, stream, args);
    launch<aa_finish_kernel<scalar_t, acc_t>>(static_cast<unsigned>(args.batch), kThreads, 0, stream, args);
  });
  return cudaGetLastError();
}

// The whole loss's totals after autoassign_forward (with args.image set); also for an empty batch.
inline cudaError_t autoassign_totals(DType dt, const AutoAssignArgs& args, cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto ty) {
    launch<aa_totals_kernel<typename decltype(ty)::acc_t>>(1, 32, 0, stream, args);
  });
  return cudaGetLastError();
}

// Before autoassign_backward: grad_pos, grad_neg and grad_prior from the totals' gradients.
inline cudaError_t autoassign_total_grads(DType dt, const AutoAssignArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto ty) {
    launch<aa_total_grads_kernel<typename decltype(ty)::acc_t>>(1, 32, 0, stream, args);
  });
  return cudaGetLastError();
}

inline cudaError_t autoassign_backward(DType dt, const AutoAssignArgs& args, int num_sms, cudaStream_t stream) {
  dispatch_dtype(dt, [&](auto ty) {
    using scalar_t = typename decltype(ty)::scalar_t;
    using acc_t = typename decltype(ty)::acc_t;
    const int64_t rows = args.batch * args.points_n, gts = args.batch * args.num_gt;
    const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
    if (rows > 0) {
      const dim3 tiles(static_cast<unsigned>(args.levels.tile_start[args.levels.count]),
                       static_cast<unsigned>(args.batch));
      launch<aa_pos_grad_kernel<scalar_t, acc_t>>(tiles, kThreads, 0, stream, args);
      const int64_t need = (rows + kThreads / 32 - 1) / (kThreads / 32);
      launch<aa_neg_grad_kernel<scalar_t, acc_t>>(static_cast<unsigned>(need < cap ? need : cap), kThreads, 0,
                                                  stream, args);
    }
    if (gts > 0)
      launch<aa_prior_grad_kernel<scalar_t, acc_t>>(static_cast<unsigned>(gts < cap ? gts : cap), kThreads, 0,
                                                    stream, args);
    if (args.classes > 0)
      launch<aa_prior_reduce_kernel<acc_t>>(static_cast<unsigned>(args.classes < cap ? args.classes : cap), kThreads,
                                            0, stream, args);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
