// CUDA kernels of ATSS assignment (SPEC.md section 5; math in
// ../common/atss.h) and their torch-free host entry point. Included by
// assign.cu alone.
//
// 1. candidates: one warp per (image, GT). Per level the warp scans the
//    level's anchors 32 at a time and keeps the k nearest in a sorted list
//    in shared memory (an anchor goes in only when it is nearer than the
//    current k-th, lowest lane first, so after the first few chunks almost
//    every chunk costs one ballot). The candidates' IoUs fill k slots per
//    level; lane 0 takes the threshold over the slots in order; each
//    positive claims its anchor with an integer atomicMax of its IoU key.
// 2. claim: each positive whose key equals its anchor's maximum takes an
//    atomicMin of its GT index. Max then min of integers: the winner (highest
//    IoU, then lowest GT) does not depend on the order of the atomics.
// 3. write: per anchor, the outputs from (key, owner).
// Workspace: (B, G, K) slots + (B, N) keys and owners; nothing B x N x G.
#pragma once

#include <climits>

#include "../common/atss.h"
#include "common.cuh"

namespace gf {
namespace cuda {

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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_candidates_kernel(AtssArgs p) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int topk = p.topk;
  acc_t* list_d2 = reinterpret_cast<acc_t*>(smem) + warp * topk;
  acc_t* list_d = reinterpret_cast<acc_t*>(smem) + (warps + warp) * topk;
  int32_t* list_i = reinterpret_cast<int32_t*>(smem + 2 * warps * topk * sizeof(acc_t)) + warp * topk;
  const auto* anchors = static_cast<const scalar_t*>(p.anchors);
  const auto* gts = static_cast<const scalar_t*>(p.gt_boxes);
  const int64_t N = p.num_anchors, K = p.slots, rows = p.batch * p.num_gt;
  const acc_t inf = acc_t(INFINITY);
  const acc_t eps = acc_t(1e-6);

  // r is uniform across the warp, so every collective below is reached by all 32 lanes.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    int32_t* ci = p.cand_idx + r * K;
    acc_t* cu = static_cast<acc_t*>(p.cand_iou) + r * K;
    if (!p.gt_valid[r]) {
      for (int64_t i = lane; i < K; i += 32) ci[i] = -1;
      continue;
    }
    const int64_t b = r / p.num_gt;
    const Box4<acc_t> g = atss_box<scalar_t, acc_t>(gts + 4 * r);
    const acc_t gx = center_of(g.x1, g.x2), gy = center_of(g.y1, g.y2);
    const bool* valid = p.anchor_valid ? p.anchor_valid + b * p.anchor_valid_stride : nullptr;

    int64_t slot0 = 0;
    for (int l = 0; l < p.levels.count; ++l) {
      const int64_t a0 = p.levels.start[l], a1 = p.levels.start[l + 1];
      const int k = static_cast<int>(a1 - a0 < topk ? a1 - a0 : topk);
      if (k == 0) continue;
      for (int i = lane; i < k; i += 32) {
        list_d2[i] = inf;
        list_d[i] = inf;
        list_i[i] = INT_MAX;
      }
      __syncwarp();
      acc_t worst_d2 = inf, worst_d = inf;
      int32_t worst_i = INT_MAX;
      for (int64_t c0 = a0; c0 < a1; c0 += 32) {
        const int64_t a = c0 + lane;
        acc_t d2 = inf, d = inf;
        bool want = false;
        if (a < a1 && (!valid || valid[a])) {
          const Box4<acc_t> ab = atss_box<scalar_t, acc_t>(anchors + 4 * a);
          d2 = center_dist2(gx, gy, center_of(ab.x1, ab.x2), center_of(ab.y1, ab.y2));
          // d2 > worst_d2 implies d >= the k-th distance, and this anchor is later: no sqrt needed.
          if (!(d2 > worst_d2)) {
            d = gsqrt(d2);
            want = nearer(d, a, worst_d, static_cast<int64_t>(worst_i));
          }
        }
        unsigned ballot = __ballot_sync(full, want);
        while (ballot) {
          const int src = __ffs(static_cast<int>(ballot)) - 1;
          const acc_t nd2 = __shfl_sync(full, d2, src);
          const acc_t nd = __shfl_sync(full, d, src);
          const int32_t ni = static_cast<int32_t>(c0) + src;
          int pos = 0;  // entries nearer than the newcomer
          for (int base = 0; base < k; base += 32) {
            const int i = base + lane;
            pos += __popc(__ballot_sync(full, i < k && nearer(list_d[i], static_cast<int64_t>(list_i[i]), nd,
                                                                static_cast<int64_t>(ni))));
          }
          // Shift [pos, k - 1) up by one, highest chunk first so no entry is overwritten unread.
          for (int base = ((k - 1) / 32) * 32; base >= 0; base -= 32) {
            const int i = base + lane;
            const bool move = i >= pos && i < k - 1;
            acc_t t2 = acc_t(0), t = acc_t(0);
            int32_t ti = 0;
            if (move) {
              t2 = list_d2[i];
              t = list_d[i];
              ti = list_i[i];
            }
            __syncwarp();
            if (move) {
              list_d2[i + 1] = t2;
              list_d[i + 1] = t;
              list_i[i + 1] = ti;
            }
            __syncwarp();
          }
          if (lane == 0) {
            list_d2[pos] = nd2;
            list_d[pos] = nd;
            list_i[pos] = ni;
          }
          __syncwarp();
          worst_d2 = list_d2[k - 1];
          worst_d = list_d[k - 1];
          worst_i = list_i[k - 1];
          want = want && lane != src && nearer(d, a, worst_d, static_cast<int64_t>(worst_i));
          ballot = __ballot_sync(full, want);
        }
      }
      // This level's k slots: the candidates in (distance, index) order, then empties.
      for (int i = lane; i < k; i += 32) {
        const int32_t idx = list_i[i];
        const bool has = idx != INT_MAX;
        ci[slot0 + i] = has ? idx : -1;
        cu[slot0 + i] = has ? overlap(g, atss_box<scalar_t, acc_t>(anchors + 4 * static_cast<int64_t>(idx)), eps).iou
                            : acc_t(0);
      }
      slot0 += k;
      __syncwarp();  // the slots are read by lane 0 below; the list is reset by the next level
    }

    double thr = 0.0;
    int count = 0;
    if (lane == 0) thr = atss_threshold(cu, ci, static_cast<int>(K), &count);
    thr = __shfl_sync(full, thr, 0);
    count = __shfl_sync(full, count, 0);
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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) atss_init_kernel(AtssArgs p) {
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
  const int warps = atss_warps_per_block(dt, args.topk);
  if (warps < 1) return cudaErrorInvalidValue;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    if (args.num_gt > 0) {
      constexpr auto I = atss_init_kernel<scalar_t, acc_t>;
      launch<I>(grid_for<I>(anchors_total, num_sms), kThreads, 0, stream, args);
      const int64_t rows = args.batch * args.num_gt;
      const int64_t need = (rows + warps - 1) / warps;
      const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
      const size_t smem = static_cast<size_t>(warps) * args.topk * atss_entry_bytes<acc_t>();
      launch<atss_candidates_kernel<scalar_t, acc_t>>(static_cast<unsigned>(need < cap ? need : cap), warps * 32,
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
