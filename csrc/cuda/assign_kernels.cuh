// CUDA kernels of ATSS assignment (SPEC.md section 5; math in
// ../common/atss.h) and their torch-free host entry point. Included by
// assign.cu alone.
//
// 1. init: (B, N) claim words reset; the first L x kAtssProbeChunks blocks
//    also test whether each level's centres form a grid (atss_grid_holds),
//    a chunk of the level each, and write the shape (or 0) per chunk.
// 2. candidates: one block per (image, GT), one warp per level. On a grid
//    level the warp finds the columns and rows before the GT's centre (a
//    32-ary search, two load rounds) and ranks the anchors of a window of
//    cells around it, lane by lane (a window of at most 32 anchors) or
//    through the sorted list below; the window doubles until it is provably
//    the level's k nearest (atss_window_exact). On any other level the warp
//    scans the level 32 anchors at a time into a k-entry list sorted in
//    shared memory (an anchor goes in only when nearer than the current
//    k-th, lowest lane first). Either way the level's k slots get the
//    candidates' IoUs; then warp 0 takes the threshold over the slots in
//    order (each lane adding every slot, broadcast by shuffles), and each
//    positive claims its anchor with an integer atomicMax of its IoU key.
// 3. claim: each positive whose key equals its anchor's maximum takes an
//    atomicMin of its GT index. Max then min of integers: the winner (highest
//    IoU, then lowest GT) does not depend on the order of the atomics.
// 4. write: per anchor, the outputs from (key, owner).
// Workspace: (B, G, K) slots + (B, N) keys and owners + L x 32 probe words;
// nothing B x N x G.
#pragma once

#include <climits>

#include "../common/atss.h"
#include "common.cuh"

namespace gf {
namespace cuda {

__device__ __forceinline__ void atss_count(unsigned long long* census, int path, int lane) {
  if (census && lane == 0) atomicAdd(census + path, 1ull);
}

// Chunks of a level the grid test is split into (blocks of the init kernel).
constexpr int kAtssProbeChunks = 32;

struct AtssLevels {
  int64_t start[kAtssMaxLevels + 1];
  int count;
};

struct AtssArgs {
  const void* anchors;        // (N, 4)
  const void* gt_boxes;       // (B, G, 4), anchors' dtype
  const int64_t* gt_labels;   // (B, G)
  const bool* gt_valid;       // (B, G)
  const bool* anchor_valid;   // nullptr, (N,) or (B, N)
  int64_t anchor_valid_stride;  // 0 for (N,), N for (B, N)
  AtssLevels levels;
  int64_t batch, num_gt, num_anchors, slots;  // slots: K = sum over levels of min(topk, level size)
  int topk;
  int64_t background_label;
  // workspace
  int32_t* cand_idx;            // (B, G, K), -1 = empty or not positive
  void* cand_iou;               // (B, G, K), accumulation dtype
  int64_t* grid_probe;          // (L, kAtssProbeChunks): per_cell | width << 32, or 0
  unsigned long long* census;   // nullptr, or kAtssPaths counters (atss_census_buffer)
  unsigned long long* best_key; // (B, N)
  int32_t* owner;               // (B, N)
  // outputs, (B, N)
  int64_t* assigned_gt;
  int64_t* assigned_label;
  void* max_iou;                // anchors' dtype
};

template <typename scalar_t, typename acc_t> __device__ __forceinline__ Box4<acc_t> atss_box(const scalar_t* p) {
  return Box4<acc_t>{cvt<acc_t>(p[0]), cvt<acc_t>(p[1]), cvt<acc_t>(p[2]), cvt<acc_t>(p[3])};
}

// Bytes of one list entry: squared distance, distance, anchor index.
template <typename acc_t> constexpr int atss_entry_bytes() { return 2 * static_cast<int>(sizeof(acc_t)) + 4; }

// The centre of anchor a along x (lo = 0) or y (lo = 1), as atss_box + center_of compute it.
template <typename scalar_t, typename acc_t> __device__ __forceinline__ acc_t atss_centre(const scalar_t* anchors,
                                                                                         int64_t a, int lo) {
  const scalar_t* q = anchors + 4 * a + lo;
  return center_of(cvt<acc_t>(q[0]), cvt<acc_t>(q[2]));
}

// A warp's k-entry list of the nearest anchors, ascending (distance, index),
// in shared memory; empty entries are (inf, INT_MAX). Ranges must come in
// ascending index order: an anchor that ties the k-th is then later and
// loses, so a square distance above the k-th's rejects it before any sqrt.
template <typename acc_t> struct AtssList {
  acc_t *d2, *d;
  int32_t* idx;
  int k;
  acc_t worst_d2, worst_d;
  int32_t worst_i;

  __device__ void reset(int lane) {
    for (int i = lane; i < k; i += 32) {
      d2[i] = acc_t(INFINITY);
      d[i] = acc_t(INFINITY);
      idx[i] = INT_MAX;
    }
    __syncwarp();
    worst_d2 = worst_d = acc_t(INFINITY);
    worst_i = INT_MAX;
  }

  template <typename scalar_t>
  __device__ void visit(const scalar_t* anchors, const bool* valid, acc_t gx, acc_t gy, int64_t a0, int64_t a1,
                        int lane) {
    const unsigned full = 0xffffffffu;
    for (int64_t c0 = a0; c0 < a1; c0 += 32) {
      const int64_t a = c0 + lane;
      acc_t ad2 = acc_t(INFINITY), ad = acc_t(INFINITY);
      bool want = false;
      if (a < a1 && (!valid || valid[a])) {
        ad2 = center_dist2(gx, gy, atss_centre<scalar_t, acc_t>(anchors, a, 0),
                           atss_centre<scalar_t, acc_t>(anchors, a, 1));
        if (!(ad2 > worst_d2)) {
          ad = gsqrt(ad2);
          want = nearer(ad, a, worst_d, static_cast<int64_t>(worst_i));
        }
      }
      unsigned ballot = __ballot_sync(full, want);
      while (ballot) {
        const int src = __ffs(static_cast<int>(ballot)) - 1;
        const acc_t nd2 = __shfl_sync(full, ad2, src);
        const acc_t nd = __shfl_sync(full, ad, src);
        const int32_t ni = static_cast<int32_t>(c0) + src;
        int pos = 0;  // entries nearer than the newcomer
        for (int base = 0; base < k; base += 32) {
          const int i = base + lane;
          const bool before = i < k && nearer(d[i], static_cast<int64_t>(idx[i]), nd, static_cast<int64_t>(ni));
          pos += __popc(__ballot_sync(full, before));
        }
        // Shift [pos, k - 1) up by one, highest chunk first so no entry is overwritten unread.
        for (int base = ((k - 1) / 32) * 32; base >= 0; base -= 32) {
          const int i = base + lane;
          const bool move = i >= pos && i < k - 1;
          acc_t t2 = acc_t(0), t = acc_t(0);
          int32_t ti = 0;
          if (move) {
            t2 = d2[i];
            t = d[i];
            ti = idx[i];
          }
          __syncwarp();
          if (move) {
            d2[i + 1] = t2;
            d[i + 1] = t;
            idx[i + 1] = ti;
          }
          __syncwarp();
        }
        if (lane == 0) {
          d2[pos] = nd2;
          d[pos] = nd;
          idx[pos] = ni;
        }
        __syncwarp();
        worst_d2 = d2[k - 1];
        worst_d = d[k - 1];
        worst_i = idx[k - 1];
        want = want && lane != src && nearer(ad, a, worst_d, static_cast<int64_t>(worst_i));
        ballot = __ballot_sync(full, want);
      }
    }
  }

  // Entries held (the list is sorted, empties last).
  __device__ int held(int lane) const {
    int n = 0;
    for (int base = 0; base < k; base += 32) {
      const bool has = base + lane < k && idx[base + lane] != INT_MAX;
      n += __popc(__ballot_sync(0xffffffffu, has));
    }
    return n;
  }

  // The level's k slots from the list: candidates in (distance, index) order, then empties.
  template <typename scalar_t>
  __device__ void write(const scalar_t* anchors, const Box4<acc_t>& g, int32_t* ci, acc_t* cu, int lane) const {
    for (int i = lane; i < k; i += 32) {
      const int32_t a = idx[i];
      const bool has = a != INT_MAX;
      ci[i] = has ? a : -1;
      cu[i] = has ? overlap(g, atss_box<scalar_t, acc_t>(anchors + 4 * static_cast<int64_t>(a)), acc_t(1e-6)).iou
                  : acc_t(0);
    }
    __syncwarp();
  }
};

// The grid the init kernel found for level l (every chunk agreeing), or none.
__device__ __forceinline__ AtssGrid atss_probed_grid(const AtssArgs& p, int l, int64_t size, int lane) {
  const int64_t v = lane < kAtssProbeChunks ? p.grid_probe[l * kAtssProbeChunks + lane] : 0;
  const int64_t v0 = __shfl_sync(0xffffffffu, v, 0);
  AtssGrid g;
  if (!__all_sync(0xffffffffu, v0 != 0 && (lane >= kAtssProbeChunks || v == v0))) return g;
  g.per_cell = v0 & 0xffffffff;
  g.width = v0 >> 32;
  g.height = size / (g.width * g.per_cell);
  return g;
}

// How many of the columns' x are < gx and of the rows' y are < gy (each
// strictly increasing, so "< v" holds for a prefix): a 32-ary search per
// axis, both axes in the same rounds. A round probes 32 evenly spaced
// centres (one load each) and narrows [lo, hi] to one gap between probes:
// two rounds for up to 1056 columns or rows.
template <typename scalar_t, typename acc_t>
__device__ void atss_count_below(const scalar_t* anchors, int64_t a0, const AtssGrid& grid, acc_t gx, acc_t gy,
                                 int64_t* below, int lane) {
  const unsigned full = 0xffffffffu;
  const int64_t stride[2] = {grid.per_cell, grid.width * grid.per_cell};
  const acc_t v[2] = {gx, gy};
  int64_t lo[2] = {0, 0}, hi[2] = {grid.width, grid.height};
  while (lo[0] < hi[0] || lo[1] < hi[1]) {
    bool probe[2], under[2];
    int64_t step[2];
#pragma unroll
    for (int ax = 0; ax < 2; ++ax) {
      step[ax] = (hi[ax] - lo[ax] + 31) / 32;
      const int64_t i = lo[ax] + lane * step[ax];
      probe[ax] = i < hi[ax];
      under[ax] = probe[ax] && atss_centre<scalar_t, acc_t>(anchors, a0 + i * stride[ax], ax) < v[ax];
    }
#pragma unroll
    for (int ax = 0; ax < 2; ++ax) {
      const int t = __popc(__ballot_sync(full, under[ax]));  // probes below: lanes 0 .. t - 1
      const int probes = __popc(__ballot_sync(full, probe[ax]));
      const int64_t first = lo[ax];
      if (t > 0) lo[ax] = first + (t - 1) * step[ax] + 1;  // probe t - 1 is below
      if (t < probes) hi[ax] = first + t * step[ax];       // probe t is not
    }
  }
  below[0] = lo[0];
  below[1] = lo[1];
}

// Level [a0, a0 + size) of a grid: its k nearest to (gx, gy) into the k slots
// (ci, cu), from windows of cells that double until one is exact.
template <typename scalar_t, typename acc_t>
__device__ void atss_grid_level(const scalar_t* anchors, const bool* valid, const AtssGrid& grid, int64_t a0,
                                const Box4<acc_t>& g, acc_t gx, acc_t gy, AtssList<acc_t>& list, int32_t* ci,
                                acc_t* cu, unsigned long long* census, int lane) {
  const unsigned full = 0xffffffffu;
  const int k = list.k;
  const int64_t per = grid.per_cell, row = grid.width * per;
  int64_t below[2];
  atss_count_below<scalar_t, acc_t>(anchors, a0, grid, gx, gy, below, lane);
  const int64_t below_x = below[0], below_y = below[1];
  for (int64_t r = atss_first_half_width(k, per);; r *= 2, atss_count(census, kAtssWiden, lane)) {
    const AtssSpan cs = atss_span(below_x, grid.width, r), rs = atss_span(below_y, grid.height, r);
    const bool whole = cs.lo == 0 && cs.hi == grid.width && rs.lo == 0 && rs.hi == grid.height;
    const acc_t outside = atss_outside_bound(
        grid, a0, cs, rs, gx, gy, [&](int64_t a) { return atss_centre<scalar_t, acc_t>(anchors, a, 0); },
        [&](int64_t a) { return atss_centre<scalar_t, acc_t>(anchors, a, 1); });
    const int64_t span = (cs.hi - cs.lo) * per, cells = span * (rs.hi - rs.lo);
    if (cells <= 32) {
      // One anchor a lane, ranked by how many lanes are nearer (keys are distinct: the indices differ).
      // Its box and validity load together; the IoU is taken now, while the box is in registers.
      acc_t d = acc_t(INFINITY), iou = acc_t(0);
      int32_t a = INT_MAX;
      bool want = false;
      if (lane < cells) {
        const int64_t q = lane / span;
        const int64_t at = a0 + (rs.lo + q) * row + cs.lo * per + (lane - q * span);
        const Box4<acc_t> ab = atss_box<scalar_t, acc_t>(anchors + 4 * at);
        want = !valid || valid[at];
        if (want) {
          d = gsqrt(center_dist2(gx, gy, center_of(ab.x1, ab.x2), center_of(ab.y1, ab.y2)));
          iou = overlap(g, ab, acc_t(1e-6)).iou;
          a = static_cast<int32_t>(at);
        }
      }
      int rank = 0;
      for (int src = 0; src < 32; ++src) {
        const acc_t ds = __shfl_sync(full, d, src);
        const int32_t as = __shfl_sync(full, a, src);
        rank += nearer(ds, static_cast<int64_t>(as), d, static_cast<int64_t>(a)) ? 1 : 0;
      }
      const int have = __popc(__ballot_sync(full, want));
      const unsigned kth_lane = __ballot_sync(full, want && rank == k - 1);
      const acc_t kth = __shfl_sync(full, d, kth_lane ? __ffs(static_cast<int>(kth_lane)) - 1 : 0);
      if (atss_window_exact(whole, have, k, kth, outside)) {
        if (want && rank < k) {
          ci[rank] = a;
          cu[rank] = iou;
        }
        for (int i = have + lane; i < k; i += 32) {
          ci[i] = -1;
          cu[i] = acc_t(0);
        }
        __syncwarp();
        atss_count(census, kAtssRankWindow, lane);
        return;
      }
    } else {
      list.reset(lane);
      for (int64_t i = rs.lo; i < rs.hi; ++i) {
        const int64_t first = a0 + i * row + cs.lo * per;
        list.visit(anchors, valid, gx, gy, first, first + span, lane);
      }
      const int have = list.held(lane);
      if (atss_window_exact(whole, have, k, list.d[k - 1], outside)) {
        list.write(anchors, g, ci, cu, lane);
        atss_count(census, kAtssListWindow, lane);
        return;
      }
      __syncwarp();
    }
  }
}

// The sum of term(IoU) over a row's held slots (index >= 0) in slot order,
// by a warp: 32 slots are loaded at a time (one round) and broadcast lane by
// lane, so that every lane adds the same terms in the same order.
template <typename acc_t, typename Term>
__device__ double atss_slot_sum(const acc_t* cu, const int32_t* ci, int64_t K, int lane, Term term, int* held_count) {
  const unsigned full = 0xffffffffu;
  double s = 0.0;
  int n = 0;
  for (int64_t base = 0; base < K; base += 32) {
    const bool has = base + lane < K && ci[base + lane] >= 0;
    const double x = has ? static_cast<double>(cu[base + lane]) : 0.0;
    const unsigned held = __ballot_sync(full, has);
    for (int j = 0; j < 32; ++j) {
      const double xj = __shfl_sync(full, x, j);
      if (held >> j & 1u) s = s + term(xj);
    }
    n += __popc(held);
  }
  *held_count = n;
  return s;
}

// atss_threshold over a row's K slots, by a warp; every lane holds the result.
template <typename acc_t>
__device__ double atss_threshold_warp(const acc_t* cu, const int32_t* ci, int64_t K, int* count, int lane) {
  const double sum = atss_slot_sum(cu, ci, K, lane, [](double x) { return x; }, count);
  const double mean = atss_mean(sum, *count);
  const double spread = atss_slot_sum(cu, ci, K, lane, [mean](double x) { return atss_spread(x, mean); }, count);
  return atss_mean_plus_std(mean, spread, *count);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_candidates_kernel(AtssArgs p) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int topk = p.topk;
  AtssList<acc_t> list;
  list.d2 = reinterpret_cast<acc_t*>(smem) + warp * topk;
  list.d = reinterpret_cast<acc_t*>(smem) + (warps + warp) * topk;
  list.idx = reinterpret_cast<int32_t*>(smem + 2 * warps * topk * sizeof(acc_t)) + warp * topk;
  const auto* anchors = static_cast<const scalar_t*>(p.anchors);
  const auto* gts = static_cast<const scalar_t*>(p.gt_boxes);
  const int64_t N = p.num_anchors, K = p.slots, rows = p.batch * p.num_gt;

  // r is uniform across the block, so every barrier and collective below is reached by all its threads.
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int32_t* ci = p.cand_idx + r * K;
    acc_t* cu = static_cast<acc_t*>(p.cand_iou) + r * K;
    if (!p.gt_valid[r]) {
      for (int64_t i = threadIdx.x; i < K; i += blockDim.x) ci[i] = -1;
      continue;
    }
    const int64_t b = r / p.num_gt;
    const Box4<acc_t> g = atss_box<scalar_t, acc_t>(gts + 4 * r);
    const acc_t gx = center_of(g.x1, g.x2), gy = center_of(g.y1, g.y2);
    const bool finite = gx - gx == acc_t(0) && gy - gy == acc_t(0);  // a NaN or inf centre: the scan decides
    const bool* valid = p.anchor_valid ? p.anchor_valid + b * p.anchor_valid_stride : nullptr;

    int64_t slot0 = 0;
    for (int l = 0; l < p.levels.count; ++l) {
      const int64_t a0 = p.levels.start[l], a1 = p.levels.start[l + 1];
      const int k = static_cast<int>(a1 - a0 < topk ? a1 - a0 : topk);
      if (k > 0 && l % warps == warp) {
        list.k = k;
        const AtssGrid grid = atss_probed_grid(p, l, a1 - a0, lane);
        if (grid.per_cell > 0 && finite) {
          atss_grid_level<scalar_t, acc_t>(anchors, valid, grid, a0, g, gx, gy, list, ci + slot0, cu + slot0,
                                           p.census, lane);
        } else {
          list.reset(lane);
          list.visit(anchors, valid, gx, gy, a0, a1, lane);
          list.write(anchors, g, ci + slot0, cu + slot0, lane);
          atss_count(p.census, kAtssScan, lane);
        }
      }
      slot0 += k;
    }
    __syncthreads();  // every level's slots are written before warp 0 reads them

    if (warp == 0) {
      int count = 0;
      const double thr = atss_threshold_warp(cu, ci, K, &count, lane);
      for (int64_t i = lane; i < K; i += 32) {
        const int32_t idx = ci[i];
        if (idx < 0) continue;
        const Box4<acc_t> ab = atss_box<scalar_t, acc_t>(anchors + 4 * static_cast<int64_t>(idx));
        const acc_t iou = cu[i];
        if (atss_positive(iou, thr, count, center_inside(center_of(ab.x1, ab.x2), center_of(ab.y1, ab.y2), g)))
          atomicMax(p.best_key + b * N + idx, static_cast<unsigned long long>(iou_key(iou)));
        else
          ci[i] = -1;
      }
      __syncwarp();
    }
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_claim_kernel(AtssArgs p) {
  const int64_t K = p.slots, total = p.batch * p.num_gt * K;
  const auto* iou = static_cast<const acc_t*>(p.cand_iou);
  GF_GRID_STRIDE(i, total) {
    const int32_t idx = p.cand_idx[i];
    if (idx < 0) continue;
    const int64_t r = i / K, b = r / p.num_gt;
    const int64_t at = b * p.num_anchors + idx;
    if (static_cast<unsigned long long>(iou_key(iou[i])) == p.best_key[at])
      atomicMin(p.owner + at, static_cast<int32_t>(r - b * p.num_gt));
  }
}

// Block (level l, chunk c) of the grid test: warp 0 finds the shape the
// leading anchors imply (the first anchor off anchor a0's centre, the first
// cell off its row: atss_grid_shape, 32 at a time), then every thread tests
// its anchors of the chunk; the chunk's word is the shape, or 0.
template <typename scalar_t, typename acc_t>
__device__ void atss_probe_chunk(const AtssArgs& p, int l, int c, int64_t* smem) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const auto* anchors = static_cast<const scalar_t*>(p.anchors);
  const int64_t a0 = p.levels.start[l], n = p.levels.start[l + 1] - a0;
  auto cx = [anchors](int64_t a) { return atss_centre<scalar_t, acc_t>(anchors, a, 0); };
  auto cy = [anchors](int64_t a) { return atss_centre<scalar_t, acc_t>(anchors, a, 1); };
  if (warp == 0) {
    int64_t per = n, w = 0;
    if (n > 0) {
      const acc_t x0 = cx(a0), y0 = cy(a0);
      for (int64_t base = 1; base < n; base += 32) {
        const int64_t t = base + lane;
        const unsigned off = __ballot_sync(full, t < n && !(cx(a0 + t) == x0 && cy(a0 + t) == y0));
        if (off) {
          per = base + __ffs(static_cast<int>(off)) - 1;
          break;
        }
      }
      // width: the first cell off row 0, by a 32-ary search over cells [1, n / per) (row 0's y is
      // y0 up to it on a grid; on anything else the test below fails whatever width this finds).
      int64_t lo = 1, hi = n / per;
      while (lo < hi) {
        const int64_t step = (hi - lo + 31) / 32, j = lo + lane * step;
        const bool probe = j < hi, on_row = probe && cy(a0 + j * per) == y0;
        const int t = __popc(__ballot_sync(full, on_row)), probes = __popc(__ballot_sync(full, probe));
        const int64_t first = lo;
        if (t > 0) lo = first + (t - 1) * step + 1;
        if (t < probes) hi = first + t * step;
      }
      w = lo;
    }
    if (lane == 0) {
      const bool shaped = n > 0 && n % (w * per) == 0;
      smem[0] = shaped ? per : 0;
      smem[1] = shaped ? w : 0;
    }
  }
  __syncthreads();
  AtssGrid g;
  g.per_cell = smem[0];
  g.width = smem[1];
  bool ok = g.per_cell > 0;
  if (ok) {
    g.height = n / (g.width * g.per_cell);
    const int64_t chunk = (n + kAtssProbeChunks - 1) / kAtssProbeChunks;
    const int64_t lo = a0 + c * chunk, hi = a0 + (n < (c + 1) * chunk ? n : (c + 1) * chunk);
    for (int64_t a = lo + threadIdx.x; a < hi; a += blockDim.x) ok = ok && atss_grid_holds(g, cx, cy, a0, a);
  }
  ok = __all_sync(full, ok);
  if (lane == 0) smem[2 + warp] = ok ? 1 : 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    bool all = true;
    for (int i = 0; i < warps; ++i) all = all && smem[2 + i] != 0;
    p.grid_probe[l * kAtssProbeChunks + c] = all ? (g.per_cell | (g.width << 32)) : 0;
  }
}

// Shared words of the init kernel: the shape, then a flag per warp.
constexpr size_t kAtssProbeShared = (2 + kThreads / 32) * sizeof(int64_t);

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_init_kernel(AtssArgs p) {
  GF_DYNAMIC_SHARED(unsigned char, smem);  // one type for every kernel's dynamic shared memory
  if (blockIdx.x < p.levels.count * kAtssProbeChunks)  // block-uniform: the probe's barriers are safe
    atss_probe_chunk<scalar_t, acc_t>(p, blockIdx.x / kAtssProbeChunks, blockIdx.x % kAtssProbeChunks,
                                      reinterpret_cast<int64_t*>(smem));
  GF_GRID_STRIDE(i, p.batch * p.num_anchors) {
    p.best_key[i] = 0ull;
    p.owner[i] = INT_MAX;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_write_kernel(AtssArgs p) {
  auto* out_iou = static_cast<scalar_t*>(p.max_iou);
  GF_GRID_STRIDE(i, p.batch * p.num_anchors) {
    const unsigned long long key = p.num_gt > 0 ? p.best_key[i] : 0ull;
    if (key == 0ull) {
      p.assigned_gt[i] = 0;
      p.assigned_label[i] = p.background_label;
      out_iou[i] = cvt<scalar_t>(acc_t(0));
    } else {
      const int64_t g = p.owner[i], b = i / p.num_anchors;
      acc_t v;
      iou_from_key(static_cast<uint64_t>(key), v);
      p.assigned_gt[i] = g + 1;
      p.assigned_label[i] = p.gt_labels[b * p.num_gt + g];
      out_iou[i] = cvt<scalar_t>(v);
    }
  }
}

// ---- host side -------------------------------------------------------------

constexpr int kAtssSharedBytes = 48 * 1024;

// Warps per block of the candidates kernel for this topk (each warp keeps a
// topk-entry list in shared memory); 0 when even one warp's list does not fit.
inline int atss_warps_per_block(DType dt, int64_t topk) {
  const int64_t entry = dt == DType::Double ? atss_entry_bytes<double>() : atss_entry_bytes<float>();
  const int64_t w = kAtssSharedBytes / (entry * (topk > 0 ? topk : 1));
  return static_cast<int>(w < kThreads / 32 ? w : kThreads / 32);
}

inline cudaError_t atss_assign(DType dt, const AtssArgs& args, int num_sms, cudaStream_t stream) {
  const int64_t anchors_total = args.batch * args.num_anchors;
  if (anchors_total == 0) return cudaSuccess;
  const int fit = atss_warps_per_block(dt, args.topk);
  if (fit < 1) return cudaErrorInvalidValue;
  const int warps = fit < args.levels.count ? fit : args.levels.count;  // levels > 0 whenever anchors exist
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    if (args.num_gt > 0) {
      constexpr auto I = atss_init_kernel<scalar_t, acc_t>;
      const int init_grid = grid_for<I>(anchors_total, num_sms);
      const int probes = args.levels.count * kAtssProbeChunks;
      launch<I>(init_grid > probes ? init_grid : probes, kThreads, kAtssProbeShared, stream, args);
      // One block per (image, GT) row, one warp per level; as many blocks as
      // can be resident (at most 32 an SM, 64 warps), the rest by grid stride.
      const int64_t rows = args.batch * args.num_gt;
      const int per_sm = 64 / warps < 32 ? 64 / warps : 32;
      const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * per_sm;
      const size_t smem = static_cast<size_t>(warps) * args.topk * atss_entry_bytes<acc_t>();
      launch<atss_candidates_kernel<scalar_t, acc_t>>(static_cast<unsigned>(rows < cap ? rows : cap), warps * 32,
                                                      smem, stream, args);
      constexpr auto C = atss_claim_kernel<acc_t>;
      launch<C>(grid_for<C>(rows * args.slots, num_sms), kThreads, 0, stream, args);
    }
    constexpr auto W = atss_write_kernel<scalar_t, acc_t>;
    launch<W>(grid_for<W>(anchors_total, num_sms), kThreads, 0, stream, args);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
