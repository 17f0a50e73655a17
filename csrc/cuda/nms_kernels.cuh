// CUDA kernels of NMS (SPEC.md section 7; math in ../common/nms.h) and
// their torch-free host entry points. Included by nms.cu alone. The launcher
// sorts (a stable device sort, no host sync) between the phases.
//
// nms / batched_nms, on boxes already in score order:
// 1. gather: boxes (and classes) into score order; NaN scores start removed.
// 2. per tile of rows: mask: one thread per (row, 64 later columns) sets the
//    bits of the columns the row suppresses (same class, IoU > thr); rows
//    removed by earlier tiles are skipped. scan: one block walks the tile's
//    64-row words in order: one thread settles the word's own rows from the
//    diagonal mask words, then the block ORs the kept rows' masks into every
//    later word. The mask tile is at most kNmsMaskBytes (or 64 rows), so the
//    workspace is max(32 MiB, 8 K) bytes + O(K), never K x K / 8.
// 3. keep flags per sorted row; the launcher compacts them (the output's
//    length is data-dependent, as torchvision's).
//
// multiclass_nms, per padded batch, fixed shapes throughout:
// 1. select: one block per (image, level) finds the nms_pre-th largest
//    score by a radix select over the score's bits (8 bits a pass; the first
//    pass ends it when no more than nms_pre pairs pass score_thr), then
//    compacts the selected pairs in flat order (block scans), ties at the
//    threshold score going to the lowest flat indices.
// 2. decode: one thread per slot: box, clip, min-size test (failures and
//    empty slots get score -1).
// 3. (launcher) stable descending sort of each image's slot scores: slot
//    order is global flat order, so ties go to the lower flat index.
// 4. suppress: one block per image walks the sorted slots a chunk at a time:
//    each slot is tested against the boxes kept so far (at most
//    max_per_img, in the output itself), then the chunk's survivors are
//    settled lowest first. The block stops at max_per_img.
#pragma once

#include <climits>
#include <cstring>

#include "../common/nms.h"
#include "common.cuh"

namespace gf {
namespace cuda {

// ---- nms / batched_nms -----------------------------------------------------------

constexpr int kNmsBits = 64;
constexpr int64_t kNmsMaskBytes = int64_t(32) << 20;

struct NmsArgs {
  const void* boxes;        // (K, 4), boxes' dtype
  const int64_t* order;     // (K,) score order
  const int64_t* idxs;      // (K,) classes, or nullptr
  const bool* nan_score;    // (K,)
  int64_t count, words;     // K, ceil(K / 64)
  double thr;
  void* sorted;             // (K, 4) accumulation dtype
  int64_t* sorted_idx;      // (K,) when idxs
  unsigned long long* mask;     // (tile rows, words)
  unsigned long long* removed;  // (words)
  unsigned long long* kept;     // (words)
  bool* keep;                   // (K,) in score order
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) nms_gather_kernel(NmsArgs p) {
  const auto* boxes = static_cast<const scalar_t*>(p.boxes);
  auto* sorted = static_cast<acc_t*>(p.sorted);
  GF_GRID_STRIDE(i, p.count) {
    const int64_t o = p.order[i];
    for (int c = 0; c < 4; ++c) sorted[4 * i + c] = cvt<acc_t>(boxes[4 * o + c]);
    if (p.idxs) p.sorted_idx[i] = p.idxs[o];
  }
  GF_GRID_STRIDE(w, p.words) {
    unsigned long long bits = 0;
    for (int k = 0; k < kNmsBits && w * kNmsBits + k < p.count; ++k)
      if (p.nan_score[p.order[w * kNmsBits + k]]) bits |= 1ull << k;
    p.removed[w] = bits;
    p.kept[w] = 0;
  }
}

// grid (words, tile rows / 64), kNmsBits threads: thread t, row rb * 64 + t,
// against the 64 columns of word cb.
template <typename acc_t>
__global__ void __launch_bounds__(kNmsBits) nms_mask_kernel(NmsArgs p, int64_t row0, int64_t rows) {
  GF_SHARED(acc_t, cols, [kNmsBits * 4]);
  GF_SHARED(int64_t, col_idx, [kNmsBits]);
  const int64_t rb = row0 / kNmsBits + blockIdx.y, cb = blockIdx.x;
  if (cb < rb) return;  // only later columns matter; uniform over the block
  const auto* sorted = static_cast<const acc_t*>(p.sorted);
  const int t = threadIdx.x;
  const int64_t K = p.count;
  const int64_t j = cb * kNmsBits + t;
  if (j < K) {
    for (int c = 0; c < 4; ++c) cols[4 * t + c] = sorted[4 * j + c];
    if (p.idxs) col_idx[t] = p.sorted_idx[j];
  }
  __syncthreads();
  const int64_t i = rb * kNmsBits + t;
  if (i >= K || i >= row0 + rows) return;
  unsigned long long bits = 0;
  if (!((p.removed[rb] >> t) & 1ull)) {
    const Box4<acc_t> a = load_box(sorted + 4 * i);
    const int64_t label = p.idxs ? p.sorted_idx[i] : 0;
    const acc_t thr = static_cast<acc_t>(p.thr);
    const int64_t left = K - cb * kNmsBits;
    const int n = static_cast<int>(left < kNmsBits ? left : kNmsBits);
    for (int c = cb == rb ? t + 1 : 0; c < n; ++c)
      if ((!p.idxs || col_idx[c] == label) &&
          nms_suppresses(a, load_box(static_cast<const acc_t*>(cols) + 4 * c), thr))
        bits |= 1ull << c;
  }
  p.mask[(i - row0) * p.words + cb] = bits;
}

// One block: the row words of one tile, in order.
__global__ void __launch_bounds__(kThreads) nms_scan_kernel(NmsArgs p, int64_t row0, int64_t rows) {
  GF_SHARED(unsigned long long, diag, [kNmsBits]);
  GF_SHARED(unsigned long long, kept_word, [1]);
  const int64_t K = p.count, W = p.words;
  const int64_t end = row0 + rows < K ? row0 + rows : K;
  for (int64_t rb = row0 / kNmsBits; rb * kNmsBits < end; ++rb) {
    const int64_t first = rb * kNmsBits;
    const int n = static_cast<int>(end - first < kNmsBits ? end - first : kNmsBits);
    if (threadIdx.x < n) diag[threadIdx.x] = p.mask[(first + threadIdx.x - row0) * W + rb];
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long cur = p.removed[rb], kept = 0;
      for (int k = 0; k < n; ++k)
        if (!((cur >> k) & 1ull)) {
          kept |= 1ull << k;
          cur |= diag[k];
        }
      p.removed[rb] = cur;
      p.kept[rb] = kept;
      kept_word[0] = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_word[0];
    if (kept)
      for (int64_t w = rb + 1 + threadIdx.x; w < W; w += blockDim.x) {
        unsigned long long acc = p.removed[w];
        for (unsigned long long m = kept; m; m &= m - 1)
          acc |= p.mask[(first + __ffsll(static_cast<long long>(m)) - 1 - row0) * W + w];
        p.removed[w] = acc;
      }
    __syncthreads();  // removed[rb + 1], diag and kept_word are read or rewritten next
  }
}

__global__ void __launch_bounds__(kThreads) nms_keep_kernel(NmsArgs p) {
  GF_GRID_STRIDE(i, p.count) p.keep[i] = (p.kept[i / kNmsBits] >> (i % kNmsBits)) & 1ull;
}

// Rows of one mask tile: a multiple of 64, the tile at most kNmsMaskBytes
// unless even 64 rows are larger.
inline int64_t nms_tile_rows(int64_t count, int64_t words) {
  int64_t rows = kNmsMaskBytes / (words * 8 > 0 ? words * 8 : 1) / kNmsBits * kNmsBits;
  const int64_t all = words * kNmsBits;
  rows = rows < kNmsBits ? kNmsBits : rows;
  return rows < all ? rows : all;
}

inline cudaError_t nms_suppress(DType dt, const NmsArgs& args, int64_t tile_rows, int num_sms, cudaStream_t stream) {
  if (args.count == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto G = nms_gather_kernel<scalar_t, acc_t>;
    launch<G>(grid_for<G>(args.count, num_sms), kThreads, 0, stream, args);
    for (int64_t row0 = 0; row0 < args.count; row0 += tile_rows) {
      const int64_t rows = args.count - row0 < tile_rows ? args.count - row0 : tile_rows;
      const dim3 grid(static_cast<unsigned>(args.words), static_cast<unsigned>((rows + kNmsBits - 1) / kNmsBits));
      launch<nms_mask_kernel<acc_t>>(grid, kNmsBits, 0, stream, args, row0, rows);
      launch<nms_scan_kernel>(1, kThreads, 0, stream, args, row0, rows);
    }
  });
  constexpr auto Kp = nms_keep_kernel;
  launch<Kp>(grid_for<Kp>(args.count, num_sms), kThreads, 0, stream, args);
  return cudaGetLastError();
}

// ---- multiclass_nms ----------------------------------------------------------------

struct McArgs {
  const void* cls;            // (B, N, C) logits
  const void* reg;            // (B, N, 4 * n1)
  const void* points;         // (N, 2) accumulation dtype
  const void* strides;        // (N,)
  const void* image_shapes;   // (B, 2) (H, W)
  const void* scale_factors;  // (B, 2) (sx, sy)
  int64_t level_start[kNmsMaxLevels + 1];
  int64_t slot_start[kNmsMaxLevels + 1];
  int levels, n1;
  int64_t batch, anchors, classes, slots, max_per_img;
  double score_thr, score_floor, iou_thr, min_size;
  int64_t* cand_flat;         // (B, M) anchor * C + class
  void* cand_score;           // (B, M) accumulation dtype; -1 = no candidate
  void* cand_box;             // (B, M, 4)
  const int64_t* order;       // (B, M) slots by descending score (from the sort)
  void* out_boxes;            // (B, P, 4), pre-filled with the pad values
  void* out_scores;           // (B, P)
  int64_t* out_labels;        // (B, P)
  int64_t* counts;            // (B,)
};

// The order of positive scores as unsigned integers.
template <typename acc_t> struct KeyOf;
template <> struct KeyOf<float> { using type = unsigned int; };
template <> struct KeyOf<double> { using type = unsigned long long; };

template <typename acc_t> __device__ __forceinline__ typename KeyOf<acc_t>::type score_key(acc_t s) {
  typename KeyOf<acc_t>::type k;
  memcpy(&k, &s, sizeof(k));
  return k;
}

// Exclusive prefix sum of v over the block (warp shuffles, then the warp
// totals); `sums` holds one int per warp. Every thread of the block calls it.
__device__ __forceinline__ int block_exclusive_scan(int v, int* sums, int& total) {
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(full, incl, o);
    if (lane >= o) incl += n;
  }
  if (lane == 31) sums[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < warps; ++w) {
    before += w < warp ? sums[w] : 0;
    all += sums[w];
  }
  __syncthreads();  // sums is rewritten by the next scan
  total = all;
  return before + incl - v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_select_kernel(McArgs p) {
  using key_t = typename KeyOf<acc_t>::type;
  GF_SHARED(unsigned int, hist, [256]);
  GF_SHARED(int, sums, [kThreads / 32]);
  GF_SHARED(key_t, sh_prefix, [1]);
  GF_SHARED(long long, sh_want, [1]);
  GF_SHARED(int, sh_all, [1]);
  const int l = blockIdx.y;
  const int64_t b = blockIdx.x, C = p.classes, M = p.slots;
  const int64_t f0 = p.level_start[l] * C, f1 = p.level_start[l + 1] * C;
  const int64_t s0 = p.slot_start[l], cap = p.slot_start[l + 1] - s0;
  const scalar_t* x = static_cast<const scalar_t*>(p.cls) + b * p.anchors * C;
  const acc_t thr = static_cast<acc_t>(p.score_thr), floor = static_cast<acc_t>(p.score_floor);
  auto key_of = [&](int64_t f, acc_t& s) -> key_t {
    return candidate_score(cvt<acc_t>(x[f]), floor, thr, s) ? score_key(s) : key_t(0);
  };

  // Radix select of the cap-th largest key among the candidates (key 0 = none).
  key_t prefix = 0, pmask = 0;
  long long want = cap;
  bool all = false;
  for (int shift = static_cast<int>(sizeof(key_t)) * 8 - 8; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    for (int64_t f = f0 + threadIdx.x; f < f1; f += blockDim.x) {
      acc_t s;
      const key_t k = key_of(f, s);
      if (k != 0 && (k & pmask) == prefix) atomicAdd(&hist[(k >> shift) & 255], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      long long total = 0;
      for (int d = 0; d < 256; ++d) total += hist[d];
      int all_now = pmask == 0 && total <= want;
      long long above = 0;
      int d = 255;
      if (!all_now)
        for (; d > 0; --d) {
          if (above + hist[d] >= want) break;
          above += hist[d];
        }
      sh_all[0] = all_now;
      sh_prefix[0] = prefix | (static_cast<key_t>(d) << shift);
      sh_want[0] = want - above;
    }
    __syncthreads();
    all = sh_all[0] != 0;
    prefix = sh_prefix[0];
    want = sh_want[0];
    pmask |= static_cast<key_t>(255) << shift;
    __syncthreads();  // the shared results are rewritten by the next pass
    if (all) break;
  }

  // Compaction in flat order: keys above the threshold key, then the first
  // `want` keys equal to it.
  auto* score = static_cast<acc_t*>(p.cand_score) + b * M + s0;
  int64_t* flat = p.cand_flat + b * M + s0;
  long long base = 0, eq_base = 0;
  for (int64_t c0 = f0; c0 < f1; c0 += blockDim.x) {
    const int64_t f = c0 + threadIdx.x;
    acc_t s = acc_t(0);
    const key_t k = f < f1 ? key_of(f, s) : key_t(0);
    const bool gt = all ? k != 0 : k > prefix;
    const bool eq = !all && k != 0 && k == prefix;
    int eq_total = 0, sel_total = 0;
    const int eq_before = block_exclusive_scan(eq ? 1 : 0, sums, eq_total);
    const bool sel = gt || (eq && eq_base + eq_before < want);
    const int sel_before = block_exclusive_scan(sel ? 1 : 0, sums, sel_total);
    if (sel) {
      score[base + sel_before] = s;
      flat[base + sel_before] = f;
    }
    base += sel_total;
    eq_base += eq_total;
  }
  for (int64_t i = base + threadIdx.x; i < cap; i += blockDim.x) {
    score[i] = acc_t(-1);
    flat[i] = 0;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_decode_kernel(McArgs p) {
  const int64_t M = p.slots, C = p.classes, n1 = p.n1;
  auto* score = static_cast<acc_t*>(p.cand_score);
  auto* box = static_cast<acc_t*>(p.cand_box);
  const auto* pts = static_cast<const acc_t*>(p.points);
  const auto* st = static_cast<const acc_t*>(p.strides);
  const auto* shape = static_cast<const acc_t*>(p.image_shapes);
  const auto* scale = static_cast<const acc_t*>(p.scale_factors);
  const acc_t min_size = static_cast<acc_t>(p.min_size);
  GF_GRID_STRIDE(i, p.batch * M) {
    Box4<acc_t> bx{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    if (score[i] >= acc_t(0)) {
      const int64_t b = i / M, a = p.cand_flat[i] / C;
      const scalar_t* x = static_cast<const scalar_t*>(p.reg) + (b * p.anchors + a) * 4 * n1;
      bx = candidate_box<acc_t>(x, static_cast<int>(n1), pts[2 * a], pts[2 * a + 1], st[a], shape[2 * b],
                                shape[2 * b + 1]);
      if (!big_enough(bx, scale[2 * b], scale[2 * b + 1], min_size)) score[i] = acc_t(-1);
    }
    box[4 * i] = bx.x1;
    box[4 * i + 1] = bx.y1;
    box[4 * i + 2] = bx.x2;
    box[4 * i + 3] = bx.y2;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_suppress_kernel(McArgs p) {
  GF_SHARED(int, warp_first, [kThreads / 32]);
  GF_SHARED(int, sh_kept, [1]);
  GF_SHARED(acc_t, lead_box, [4]);
  GF_SHARED(int64_t, lead_label, [1]);
  const unsigned full = 0xffffffffu;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int64_t b = blockIdx.x, M = p.slots, C = p.classes, P = p.max_per_img;
  const auto* score = static_cast<const acc_t*>(p.cand_score) + b * M;
  const auto* cbox = static_cast<const acc_t*>(p.cand_box) + b * M * 4;
  const int64_t* flat = p.cand_flat + b * M;
  const int64_t* order = p.order + b * M;
  auto* ob = static_cast<acc_t*>(p.out_boxes) + b * P * 4;
  auto* os = static_cast<acc_t*>(p.out_scores) + b * P;
  int64_t* ol = p.out_labels + b * P;
  const acc_t thr = static_cast<acc_t>(p.iou_thr);
  if (threadIdx.x == 0) sh_kept[0] = 0;
  __syncthreads();
  int64_t kept = 0;
  for (int64_t c0 = 0; c0 < M && kept < P; c0 += blockDim.x) {
    const int64_t j = c0 + threadIdx.x;
    bool alive = false;
    Box4<acc_t> bx{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    int64_t label = -1, src = 0;
    if (j < M) {
      src = order[j];
      alive = score[src] >= acc_t(0);
      if (alive) {
        bx = load_box(cbox + 4 * src);
        label = flat[src] % C;
      }
    }
    for (int64_t k = 0; k < kept && alive; ++k)
      alive = !(ol[k] == label && nms_suppresses(load_box(static_cast<const acc_t*>(ob) + 4 * k), bx, thr));
    while (true) {
      const unsigned ballot = __ballot_sync(full, alive);
      if (lane == 0) warp_first[warp] = ballot ? warp * 32 + __ffs(static_cast<int>(ballot)) - 1 : INT_MAX;
      __syncthreads();
      int lead = INT_MAX;
      for (int w = 0; w < warps; ++w) lead = warp_first[w] < lead ? warp_first[w] : lead;
      if (lead == INT_MAX) break;
      if (threadIdx.x == lead) {
        for (int c = 0; c < 4; ++c) ob[4 * kept + c] = c == 0 ? bx.x1 : c == 1 ? bx.y1 : c == 2 ? bx.x2 : bx.y2;
        os[kept] = score[src];
        ol[kept] = label;
        lead_box[0] = bx.x1;
        lead_box[1] = bx.y1;
        lead_box[2] = bx.x2;
        lead_box[3] = bx.y2;
        lead_label[0] = label;
        sh_kept[0] = static_cast<int>(kept + 1);
        alive = false;
      }
      __syncthreads();
      kept = sh_kept[0];
      if (alive && static_cast<int>(threadIdx.x) > lead && lead_label[0] == label &&
          nms_suppresses(load_box(static_cast<const acc_t*>(lead_box)), bx, thr))
        alive = false;
      if (kept >= P) break;
    }
    __syncthreads();  // warp_first, lead_box and the outputs are used by the next chunk
  }
  if (threadIdx.x == 0) p.counts[b] = kept;
}

inline cudaError_t multiclass_candidates(DType dt, const McArgs& args, int num_sms, cudaStream_t stream) {
  if (args.batch == 0 || args.slots == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    launch<mc_select_kernel<scalar_t, acc_t>>(dim3(static_cast<unsigned>(args.batch),
                                                   static_cast<unsigned>(args.levels)),
                                              kThreads, 0, stream, args);
    constexpr auto D = mc_decode_kernel<scalar_t, acc_t>;
    launch<D>(grid_for<D>(args.batch * args.slots, num_sms), kThreads, 0, stream, args);
  });
  return cudaGetLastError();
}

inline cudaError_t multiclass_suppress(DType dt, const McArgs& args, cudaStream_t stream) {
  if (args.batch == 0) return cudaSuccess;
  if (args.slots == 0) return cudaSuccess;  // counts stay 0
  dispatch_dtype(dt, [&](auto t) {
    using acc_t = typename decltype(t)::acc_t;
    launch<mc_suppress_kernel<acc_t>>(static_cast<unsigned>(args.batch), kThreads, 0, stream, args);
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
