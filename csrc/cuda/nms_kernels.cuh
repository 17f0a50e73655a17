// CUDA kernels of NMS (SPEC.md section 7; math in ../common/nms.h) and
// their torch-free host entry points. Included by nms.cu alone. The launcher
// sorts (a stable device sort, no host sync) between the phases.
//
// nms / batched_nms, on rows grouped by class (one class for nms), each
// class in score order; the boxes of one class only ever suppress each other,
// so the work is the sum over classes of K_c^2, not K^2:
// 1. gather: boxes (and classes) into row order; NaN scores start removed.
// 2. segment: classes of at most segment_max rows (1024), and those of up to
//    4096 rows when at least 16 such classes fill the GPU: one block each,
//    greedy 64 rows a step against the step's kept boxes, no mask in memory.
// 3. bigger classes (one block would be slower than the whole GPU's mask
//    and a serial scan), per tile of rows: mask: one thread per (row, 64 later
//    columns of its class) sets the bits of the columns the row suppresses;
//    rows removed by earlier tiles are skipped. scan: one block walks the
//    tile's 64-row words in order: one thread settles the word's own rows
//    from the diagonal mask words, then the block ORs the kept rows' masks
//    into the later words of their class. The mask tile is at most 32 MiB
//    (or 64 rows), so the workspace is max(32 MiB, 8 K) bytes + O(K), never
//    K x K / 8. Not launched when K <= segment_max.
// 4. keep flags by score rank; the launcher compacts them (the output's
//    length is data-dependent, as torchvision's).
//
// multiclass_nms, per padded batch, fixed shapes throughout:
// 1. select, spread over chunks of 16384 (anchor, class) pairs of a level:
//    the nms_pre-th largest score of each (image, level) by a radix select
//    over the score's bits, 8 bits a pass: per pass, every chunk's block
//    histograms the keys that match the prefix so far (shared memory, a
//    warp's equal digits added once), adds it to the (image, level)'s
//    histogram (integer atomics: any order, same counts), then one block per
//    (image, level) picks the digit. The first pass ends it when no more
//    than nms_pre pairs pass score_thr. Then each warp counts the keys of
//    its run of the chunk above and equal to the threshold key, and the
//    warps whose run selects any write them into the level's slots in flat
//    order (ballots), ties at the threshold score going to the lowest flat
//    indices.
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
constexpr int kNmsSegmentWords = 64;  // the segment kernel's removal bits
constexpr int64_t kNmsSegmentRows = kNmsSegmentWords * kNmsBits;  // = kNmsSegmentCap (nms.cu checks)
// Classes of segment_max to 4096 rows take one block each only when at least
// this many of them fill the GPU; fewer are faster on the device-wide path.
constexpr int kNmsMidClasses = 16;
constexpr int kNmsSegmentThreads = 512;
enum NmsCensus { kNmsSegmentRowsSettled, kNmsBigRowsSettled, kNmsCensus };
constexpr int kNmsScanThreads = 1024;  // later words a step ORs: 1024 at a time
constexpr int kNmsScanLoads = 16;      // mask loads in flight per thread

struct NmsArgs {
  const void* boxes;        // (K, 4), boxes' dtype
  const int64_t* order;     // (K,) original index of each row (rows by class, then score)
  const int64_t* rank;      // (K,) score rank of each row, or nullptr (rows in score order)
  const int64_t* idxs;      // (K,) classes, or nullptr
  const int64_t* seg_lo;    // (K,) first row of the row's class, or nullptr (one class)
  const int64_t* seg_hi;    // (K,) one past its last row
  const bool* nan_score;    // (K,)
  int64_t count, words;     // K, ceil(K / 64)
  int64_t segment_max;      // classes of at most this many rows: one block each
  int* class_counts;        // (2,) zeroed: classes of segment_max to kNmsSegmentRows rows, and more
  unsigned long long* census;  // nullptr, or kNmsCensus counters (nms_census_buffer)
  double thr;
  void* sorted;             // (K, 4) accumulation dtype
  int64_t* sorted_idx;      // (K,) when idxs
  unsigned long long* mask;     // (tile rows, words)
  unsigned long long* removed;  // (words)
  unsigned long long* kept;     // (words)
  bool* keep;                   // (K,) by score rank
};

__device__ __forceinline__ int64_t seg_lo_of(const NmsArgs& p, int64_t r) { return p.seg_lo ? p.seg_lo[r] : 0; }
__device__ __forceinline__ int64_t seg_hi_of(const NmsArgs& p, int64_t r) { return p.seg_hi ? p.seg_hi[r] : p.count; }
__device__ __forceinline__ bool in_big_segment(const NmsArgs& p, int64_t r) {
  const int64_t n = seg_hi_of(p, r) - seg_lo_of(p, r);
  return n > p.segment_max && (n > kNmsSegmentRows || p.class_counts[0] < kNmsMidClasses);
}
// Whether any class takes the device-wide path (known once gather has run):
// its kernels are launched whenever K > segment_max and return at once if not.
__device__ __forceinline__ bool any_big_segment(const NmsArgs& p) {
  return p.class_counts[1] > 0 || (p.class_counts[0] > 0 && p.class_counts[0] < kNmsMidClasses);
}
// A big segment has more than 64 rows (segment_max >= 64), so one that meets
// a row word holds the word's first or last row.
__device__ __forceinline__ bool word_has_big(const NmsArgs& p, int64_t rb) {
  const int64_t last = (rb + 1) * kNmsBits < p.count ? (rb + 1) * kNmsBits - 1 : p.count - 1;
  return in_big_segment(p, rb * kNmsBits) || in_big_segment(p, last);
}
// The last column word a row of word rb can suppress: its class ends there.
__device__ __forceinline__ int64_t last_word_of(const NmsArgs& p, int64_t rb) {
  const int64_t last = (rb + 1) * kNmsBits < p.count ? (rb + 1) * kNmsBits - 1 : p.count - 1;
  return (seg_hi_of(p, last) - 1) / kNmsBits;
}
__device__ __forceinline__ int64_t rank_of(const NmsArgs& p, int64_t r) { return p.rank ? p.rank[r] : r; }

// The greedy order inside one 64-row word: row k, unless `removed` already
// has it, is kept and removes the rows its diagonal mask word holds. Returns
// the kept bits; `removed` ends with every settled removal. The mask words
// are read 8 at a time so that only the ORs form the dependent chain.
__device__ __forceinline__ unsigned long long settle_word(unsigned long long& removed, const unsigned long long* diag,
                                                          int n) {
  unsigned long long kept = 0;
  for (int k0 = 0; k0 < n; k0 += 8) {
    unsigned long long d[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) d[u] = k0 + u < n ? diag[k0 + u] : 0ull;
#pragma unroll
    for (int u = 0; u < 8; ++u)
      if (k0 + u < n && !((removed >> (k0 + u)) & 1ull)) {
        kept |= 1ull << (k0 + u);
        removed |= d[u];
      }
  }
  return kept;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) nms_gather_kernel(NmsArgs p) {
  const auto* boxes = static_cast<const scalar_t*>(p.boxes);
  auto* sorted = static_cast<acc_t*>(p.sorted);
  GF_GRID_STRIDE(i, p.count) {
    const int64_t o = p.order[i];
    for (int c = 0; c < 4; ++c) sorted[4 * i + c] = cvt<acc_t>(boxes[4 * o + c]);
    if (p.idxs) p.sorted_idx[i] = p.idxs[o];
    const int64_t n = seg_hi_of(p, i) - i;
    if (seg_lo_of(p, i) == i && n > p.segment_max) atomicAdd(p.class_counts + (n > kNmsSegmentRows), 1);
  }
  GF_GRID_STRIDE(w, p.words) {
    unsigned long long bits = 0;
    for (int k = 0; k < kNmsBits && w * kNmsBits + k < p.count; ++k)
      if (p.nan_score[p.order[w * kNmsBits + k]]) bits |= 1ull << k;
    p.removed[w] = bits;
    p.kept[w] = 0;
  }
}

// The 64 removal bits of rows r .. r + 63 (NaN scores), from the gathered words.
__device__ __forceinline__ unsigned long long nan_bits_at(const NmsArgs& p, int64_t r) {
  const int64_t w = r / kNmsBits;
  const int off = static_cast<int>(r % kNmsBits);
  unsigned long long bits = p.removed[w] >> off;
  if (off && w + 1 < p.words) bits |= p.removed[w + 1] << (kNmsBits - off);
  return bits;
}

// The small classes: one block greedily suppresses each class of at most
// segment_max rows that starts in its row word, 64 rows a step: the step's
// rows settle among themselves (a 64 x 64 mask built by the whole block,
// then one thread in order), then each warp tests the later rows of one
// 64-row word against the step's kept boxes. No mask leaves the block; the
// work is the sum over classes of (kept rows x later rows of the class).
template <typename acc_t>
__global__ void __launch_bounds__(kNmsSegmentThreads) nms_segment_kernel(NmsArgs p) {
  constexpr int kQuarters = kNmsSegmentThreads / kNmsBits;
  GF_SHARED(unsigned long long, rem, [kNmsSegmentWords]);
  GF_SHARED(unsigned long long, diag, [kNmsBits * kQuarters]);
  GF_SHARED(acc_t, kbox, [kNmsBits * 4]);
  GF_SHARED(unsigned long long, sh_kept, [1]);
  GF_SHARED(unsigned, starts, [2]);
  const auto* sorted = static_cast<const acc_t*>(p.sorted);
  const acc_t thr = static_cast<acc_t>(p.thr);
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5, warps = blockDim.x >> 5;
  const int a = t % kNmsBits, q = t / kNmsBits;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kNmsBits;
  const int64_t r1 = r0 + kNmsBits < p.count ? r0 + kNmsBits : p.count;
  // The word's rows that start a small class, found by 64 threads at once.
  if (t < kNmsBits) {
    const int64_t r = r0 + t;
    const unsigned ballot = __ballot_sync(0xffffffffu, r < r1 && seg_lo_of(p, r) == r && !in_big_segment(p, r));
    if (lane == 0) starts[warp] = ballot;
  }
  __syncthreads();
  for (unsigned long long m = starts[0] | static_cast<unsigned long long>(starts[1]) << 32; m; m &= m - 1) {
    const int64_t s = r0 + __ffsll(static_cast<long long>(m)) - 1;
    const int64_t n = seg_hi_of(p, s) - s;
    const int nw = static_cast<int>((n + kNmsBits - 1) / kNmsBits);
    if (p.census && t == 0) atomicAdd(p.census + kNmsSegmentRowsSettled, static_cast<unsigned long long>(n));
    for (int w = t; w < nw; w += blockDim.x) rem[w] = nan_bits_at(p, s + int64_t(w) * kNmsBits);
    __syncthreads();
    for (int lw = 0; lw < nw; ++lw) {
      const int64_t base = s + int64_t(lw) * kNmsBits;
      const int cnt = static_cast<int>(n - int64_t(lw) * kNmsBits < kNmsBits ? n - int64_t(lw) * kNmsBits : kNmsBits);
      const unsigned long long rw = rem[lw];
      unsigned long long bits = 0;
      if (a < cnt && !((rw >> a) & 1ull)) {
        const Box4<acc_t> A = load_box(sorted + 4 * (base + a));
        for (int c = a + 1 + q; c < cnt; c += kQuarters)
          if (nms_suppresses(A, load_box(sorted + 4 * (base + c)), thr)) bits |= 1ull << c;
      }
      diag[q * kNmsBits + a] = bits;
      __syncthreads();
      if (q == 0) {
        for (int qq = 1; qq < kQuarters; ++qq) bits |= diag[qq * kNmsBits + a];
        diag[a] = bits;
      }
      __syncthreads();
      if (t == 0) {
        unsigned long long cur = rw;
        sh_kept[0] = settle_word(cur, diag, cnt);
      }
      __syncthreads();
      const unsigned long long kept = sh_kept[0];
      if (q == 0 && a < cnt) {
        const bool k = (kept >> a) & 1ull;
        p.keep[rank_of(p, base + a)] = k;
        if (k) {
          const int at = __popcll(kept & ((1ull << a) - 1ull));
          for (int c = 0; c < 4; ++c) kbox[4 * at + c] = sorted[4 * (base + a) + c];
        }
      }
      __syncthreads();
      const int nk = __popcll(kept);
      for (int lw2 = lw + 1 + warp; lw2 < nw; lw2 += warps) {
        const unsigned long long rw2 = rem[lw2];
        unsigned long long hit_bits = 0;
        for (int half = 0; half < 2; ++half) {
          const int k = lane + 32 * half;
          const int64_t j = int64_t(lw2) * kNmsBits + k;
          bool hit = false;
          if (j < n && !((rw2 >> k) & 1ull)) {
            const Box4<acc_t> B = load_box(sorted + 4 * (s + j));
            for (int i = 0; i < nk && !hit; ++i) hit = nms_suppresses(load_box(kbox + 4 * i), B, thr);
          }
          hit_bits |= static_cast<unsigned long long>(__ballot_sync(0xffffffffu, hit)) << (32 * half);
        }
        if (lane == 0) rem[lw2] = rw2 | hit_bits;
      }
      __syncthreads();  // rem, diag and kbox are rewritten by the next step
    }
  }
}

// The big classes, a tile of rows at a time. Block (x, y): row word x of the
// tile against column words y, y + gridDim.y, ... up to its class's end.
// Thread t: row rb * 64 + t. Rows of small classes or already removed set
// no bits.
template <typename acc_t>
__global__ void __launch_bounds__(kNmsBits) nms_mask_kernel(NmsArgs p, int64_t row0, int64_t rows) {
  GF_SHARED(acc_t, cols, [kNmsBits * 4]);
  GF_SHARED(int64_t, col_idx, [kNmsBits]);
  const int64_t rb = row0 / kNmsBits + blockIdx.x;
  if (!any_big_segment(p) || !word_has_big(p, rb)) return;  // uniform over the block
  const int64_t last = last_word_of(p, rb);
  const auto* sorted = static_cast<const acc_t*>(p.sorted);
  const int t = threadIdx.x;
  const int64_t K = p.count;
  const int64_t i = rb * kNmsBits + t;
  const bool live = i < K && i < row0 + rows && !((p.removed[rb] >> t) & 1ull) && in_big_segment(p, i);
  Box4<acc_t> a{};
  int64_t label = 0;
  if (live) {
    a = load_box(sorted + 4 * i);
    label = p.idxs ? p.sorted_idx[i] : 0;
  }
  const acc_t thr = static_cast<acc_t>(p.thr);
  for (int64_t cb = rb + blockIdx.y; cb <= last; cb += gridDim.y) {
    const int64_t j = cb * kNmsBits + t;
    if (j < K) {
      for (int c = 0; c < 4; ++c) cols[4 * t + c] = sorted[4 * j + c];
      if (p.idxs) col_idx[t] = p.sorted_idx[j];
    }
    __syncthreads();
    if (i < K && i < row0 + rows) {
      unsigned long long bits = 0;
      if (live) {
        const int64_t left = K - cb * kNmsBits;
        const int n = static_cast<int>(left < kNmsBits ? left : kNmsBits);
        for (int c = cb == rb ? t + 1 : 0; c < n; ++c)
          if ((!p.idxs || col_idx[c] == label) &&
              nms_suppresses(a, load_box(static_cast<const acc_t*>(cols) + 4 * c), thr))
            bits |= 1ull << c;
      }
      p.mask[(i - row0) * p.words + cb] = bits;
    }
    __syncthreads();  // cols is rewritten by the next column word
  }
}

// One block: the row words of one tile that hold big classes, in order. One
// thread settles the word's own rows from the diagonal mask words; then the
// block ORs the kept rows' masks into the later words of their class, 16
// loads in flight per thread: the step's time is load latency, not bandwidth.
__global__ void __launch_bounds__(kNmsScanThreads) nms_scan_kernel(NmsArgs p, int64_t row0, int64_t rows) {
  GF_SHARED(unsigned long long, diag, [kNmsBits]);
  GF_SHARED(unsigned long long, big, [2]);
  GF_SHARED(unsigned long long, kept_word, [1]);
  const int64_t K = p.count, W = p.words;
  const int t = threadIdx.x;
  const int64_t end = row0 + rows < K ? row0 + rows : K;
  if (!any_big_segment(p)) return;
  for (int64_t rb = row0 / kNmsBits; rb * kNmsBits < end; ++rb) {
    const int64_t first = rb * kNmsBits;
    const int n = static_cast<int>(end - first < kNmsBits ? end - first : kNmsBits);
    // Which rows are of big classes, and their diagonal mask words, in one load round.
    if (t < 2 * 32) {
      const bool b = t < n && in_big_segment(p, first + t);
      if (t < n) diag[t] = b ? p.mask[(first + t - row0) * W + rb] : 0ull;
      const unsigned ballot = __ballot_sync(0xffffffffu, b);
      if ((t & 31) == 0) big[t >> 5] = ballot;
    }
    __syncthreads();
    if (!(big[0] | big[1])) {  // uniform over the block: a word of small classes
      __syncthreads();  // big is rewritten by the next word
      continue;
    }
    if (t == 0) {
      unsigned long long cur = p.removed[rb] | ~(big[0] | (big[1] << 32));
      const unsigned long long kept = settle_word(cur, diag, n);
      p.removed[rb] = cur;
      p.kept[rb] = kept;
      kept_word[0] = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_word[0];
    if (kept) {
      const int64_t last = last_word_of(p, rb);
      for (int64_t w = rb + 1 + t; w <= last; w += blockDim.x) {
        unsigned long long acc = p.removed[w];
        for (unsigned long long m = kept; m;) {
          unsigned long long v[kNmsScanLoads];
#pragma unroll
          for (int u = 0; u < kNmsScanLoads; ++u) {
            v[u] = 0;
            if (m) {
              v[u] = p.mask[(first + __ffsll(static_cast<long long>(m)) - 1 - row0) * W + w];
              m &= m - 1;
            }
          }
#pragma unroll
          for (int u = 0; u < kNmsScanLoads; ++u) acc |= v[u];
        }
        p.removed[w] = acc;
      }
    }
    __syncthreads();  // removed[rb + 1], diag, big and kept_word are read or rewritten next
  }
}

__global__ void __launch_bounds__(kThreads) nms_keep_kernel(NmsArgs p) {
  if (!any_big_segment(p)) return;
  GF_GRID_STRIDE(i, p.count)
  if (in_big_segment(p, i)) {
    p.keep[rank_of(p, i)] = (p.kept[i / kNmsBits] >> (i % kNmsBits)) & 1ull;
    if (p.census) atomicAdd(p.census + kNmsBigRowsSettled, 1ull);
  }
}

// Rows of one mask tile: a multiple of 64, the tile at most `budget` bytes
// unless even 64 rows are larger.
inline int64_t nms_tile_rows(int64_t words, int64_t budget) {
  int64_t rows = budget / (words * 8 > 0 ? words * 8 : 1) / kNmsBits * kNmsBits;
  const int64_t all = words * kNmsBits;
  rows = rows < kNmsBits ? kNmsBits : rows;
  return rows < all ? rows : all;
}

// `big` says whether any class may exceed segment_max rows (the count does,
// as the host knows without reading the classes); if not, the device-wide
// path is not launched at all.
inline cudaError_t nms_suppress(DType dt, const NmsArgs& args, int64_t tile_rows, bool big, int num_sms,
                                cudaStream_t stream) {
  if (args.count == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto G = nms_gather_kernel<scalar_t, acc_t>;
    launch<G>(grid_for<G>(args.count, num_sms), kThreads, 0, stream, args);
    if (args.seg_lo || !big)
      launch<nms_segment_kernel<acc_t>>(static_cast<unsigned>(args.words), kNmsSegmentThreads, 0, stream, args);
    if (!big) return;
    for (int64_t row0 = 0; row0 < args.count; row0 += tile_rows) {
      const int64_t rows = args.count - row0 < tile_rows ? args.count - row0 : tile_rows;
      const int64_t row_words = (rows + kNmsBits - 1) / kNmsBits;
      // Enough blocks for 16 an SM; each walks its row's column words with this stride.
      int64_t spread = (int64_t(num_sms) * 16 + row_words - 1) / row_words;
      spread = spread < args.words ? spread : args.words;
      const dim3 grid(static_cast<unsigned>(row_words), static_cast<unsigned>(spread > 0 ? spread : 1));
      launch<nms_mask_kernel<acc_t>>(grid, kNmsBits, 0, stream, args, row0, rows);
      launch<nms_scan_kernel>(1, kNmsScanThreads, 0, stream, args, row0, rows);
    }
    constexpr auto Kp = nms_keep_kernel;
    launch<Kp>(grid_for<Kp>(args.count, num_sms), kThreads, 0, stream, args);
  });
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
  int64_t chunk_start[kNmsMaxLevels + 1];  // chunks of `chunk` pairs before each level
  int64_t chunk;                           // pairs a select block walks (16384)
  int levels, n1;
  int64_t batch, anchors, classes, slots, max_per_img;
  double score_thr, score_floor, iou_thr, min_size;
  unsigned int* hist;         // (B, L, 256) zeroed; each decide zeroes it again
  unsigned long long* state;  // (B, L, 4): prefix, prefix mask, want, flags
  int* chunk_counts;          // (B, chunks, 8 warps, 2): keys above and equal to the threshold key
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

constexpr unsigned long long kMcAll = 1, kMcDone = 2;
constexpr int kMcWarps = kThreads / 32;  // a count and a compaction run per warp

// The (image b, chunk c) of a block of a (B x chunks) grid: the chunk's
// level and pair range [f0, f1).
__device__ __forceinline__ bool mc_chunk(const McArgs& p, int64_t& b, int64_t& c, int& l, int64_t& f0,
                                         int64_t& f1) {
  const int64_t chunks = p.chunk_start[p.levels];
  b = static_cast<int64_t>(blockIdx.x) / chunks;
  c = static_cast<int64_t>(blockIdx.x) % chunks;
  for (l = 0; l < p.levels && p.chunk_start[l + 1] <= c; ++l) {
  }
  if (l >= p.levels) return false;
  const int64_t lo = p.level_start[l] * p.classes, hi = p.level_start[l + 1] * p.classes;
  f0 = lo + (c - p.chunk_start[l]) * p.chunk;
  f1 = f0 + p.chunk < hi ? f0 + p.chunk : hi;
  return true;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ typename KeyOf<acc_t>::type mc_key(const McArgs& p, const scalar_t* x, int64_t f,
                                                              acc_t& s) {
  using key_t = typename KeyOf<acc_t>::type;
  const acc_t thr = static_cast<acc_t>(p.score_thr), floor = static_cast<acc_t>(p.score_floor);
  return candidate_score(cvt<acc_t>(x[f]), floor, thr, s) ? score_key(s) : key_t(0);
}

// One radix pass: a block per (image, chunk). The (image, level)'s histogram of digit
// `shift` over the keys that match the prefix so far.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_hist_kernel(McArgs p, int shift, bool first) {
  using key_t = typename KeyOf<acc_t>::type;
  GF_SHARED(unsigned int, hist, [256]);
  int l;
  int64_t b, c, f0, f1;
  if (!mc_chunk(p, b, c, l, f0, f1)) return;
  const int64_t bl = b * p.levels + l;
  const unsigned long long* st = p.state + 4 * bl;
  if (!first && (st[3] & kMcDone)) return;
  const key_t prefix = first ? key_t(0) : static_cast<key_t>(st[0]);
  const key_t pmask = first ? key_t(0) : static_cast<key_t>(st[1]);
  const scalar_t* x = static_cast<const scalar_t*>(p.cls) + b * p.anchors * p.classes;
  const int t = threadIdx.x, lane = t & 31;
  for (int i = t; i < 256; i += blockDim.x) hist[i] = 0u;
  __syncthreads();
  for (int64_t c0 = f0; c0 < f1; c0 += blockDim.x) {  // same trip count for every thread
    const int64_t f = c0 + t;
    acc_t s;
    const key_t k = f < f1 ? mc_key<scalar_t, acc_t>(p, x, f, s) : key_t(0);
    const bool match = k != 0 && (k & pmask) == prefix;
    const int digit = match ? static_cast<int>((k >> shift) & 255) : -1;
    // Most keys of a pass share a few digits: the warp adds the first
    // matching lane's digit once for every lane that has it.
    const unsigned any = __ballot_sync(0xffffffffu, match);
    const int lead = any ? __shfl_sync(0xffffffffu, digit, __ffs(static_cast<int>(any)) - 1) : -1;
    const unsigned same = __ballot_sync(0xffffffffu, match && digit == lead);
    if (same && lane == __ffs(static_cast<int>(same)) - 1) atomicAdd(&hist[lead], static_cast<unsigned>(__popc(same)));
    if (match && digit != lead) atomicAdd(&hist[digit], 1u);
  }
  __syncthreads();
  unsigned int* out = p.hist + 256 * bl;
  for (int i = t; i < 256; i += blockDim.x)
    if (hist[i]) atomicAdd(&out[i], hist[i]);
}

// grid (B, L): the digit of this pass, as the one-block select picked it,
// then the histogram zeroed for the next pass.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_decide_kernel(McArgs p, int shift, bool first) {
  using key_t = typename KeyOf<acc_t>::type;
  const int l = blockIdx.y;
  const int64_t b = blockIdx.x, bl = b * p.levels + l;
  unsigned long long* st = p.state + 4 * bl;
  unsigned int* hist = p.hist + 256 * bl;
  const bool done = !first && (st[3] & kMcDone);
  __syncthreads();  // every thread has read the flags before thread 0 rewrites them
  if (done) return;  // uniform: the histogram stayed zero
  if (threadIdx.x == 0) {
    key_t prefix = first ? key_t(0) : static_cast<key_t>(st[0]);
    key_t pmask = first ? key_t(0) : static_cast<key_t>(st[1]);
    long long want = first ? static_cast<long long>(p.slot_start[l + 1] - p.slot_start[l])
                           : static_cast<long long>(st[2]);
    long long total = 0;
    for (int d = 0; d < 256; ++d) total += hist[d];
    const bool all = pmask == 0 && total <= want;
    long long above = 0;
    int d = 255;
    if (!all)
      for (; d > 0; --d) {
        if (above + hist[d] >= want) break;
        above += hist[d];
      }
    st[0] = static_cast<unsigned long long>(prefix | (static_cast<key_t>(d) << shift));
    st[1] = static_cast<unsigned long long>(pmask | (static_cast<key_t>(255) << shift));
    st[2] = static_cast<unsigned long long>(want - above);
    st[3] = all ? (kMcAll | kMcDone) : shift == 0 ? kMcDone : 0;
  }
  __syncthreads();  // thread 0 has read the histogram
  for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0u;
}

// The selection of a key, once the passes are done: above the threshold
// key, or equal to it (the first `want` of those in flat order).
template <typename key_t> struct McCut {
  key_t prefix;
  long long want;
  bool all;
  __device__ bool above(key_t k) const { return all ? k != 0 : k > prefix; }
  __device__ bool equal(key_t k) const { return !all && k != 0 && k == prefix; }
};

template <typename acc_t> __device__ __forceinline__ McCut<typename KeyOf<acc_t>::type> mc_cut(const McArgs& p,
                                                                                            int64_t bl) {
  using key_t = typename KeyOf<acc_t>::type;
  const unsigned long long* st = p.state + 4 * bl;
  return McCut<key_t>{static_cast<key_t>(st[0]), static_cast<long long>(st[2]), (st[3] & kMcAll) != 0};
}

// The pairs of warp w of a chunk: a contiguous run, so that the warps'
// counts in order are the chunk's flat order.
__device__ __forceinline__ void mc_warp_run(int64_t f0, int64_t f1, int w, int warps, int64_t& r0, int64_t& r1) {
  const int64_t run = (f1 - f0 + warps - 1) / warps;
  r0 = f0 + w * run < f1 ? f0 + w * run : f1;
  r1 = r0 + run < f1 ? r0 + run : f1;
}

// A block per (image, chunk): each warp's run's keys above and equal to the threshold key.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_count_kernel(McArgs p) {
  using key_t = typename KeyOf<acc_t>::type;
  int l;
  int64_t b, c, f0, f1;
  if (!mc_chunk(p, b, c, l, f0, f1)) return;
  const int64_t bl = b * p.levels + l;
  const McCut<key_t> cut = mc_cut<acc_t>(p, bl);
  const scalar_t* x = static_cast<const scalar_t*>(p.cls) + b * p.anchors * p.classes;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int64_t r0, r1;
  mc_warp_run(f0, f1, warp, kMcWarps, r0, r1);
  int gt = 0, eq = 0;
  for (int64_t f = r0 + lane; f < r1; f += 32) {
    acc_t s;
    const key_t k = mc_key<scalar_t, acc_t>(p, x, f, s);
    gt += cut.above(k);
    eq += cut.equal(k);
  }
  for (int o = 16; o > 0; o >>= 1) {
    gt += __shfl_down_sync(0xffffffffu, gt, o);
    eq += __shfl_down_sync(0xffffffffu, eq, o);
  }
  if (lane == 0) {
    int* out = p.chunk_counts + 2 * ((b * p.chunk_start[p.levels] + c) * kMcWarps + warp);
    out[0] = gt;
    out[1] = eq;
  }
}

// A block per (image, chunk): each warp writes its run's selected pairs into the
// level's slots, in flat order (ballots, no block barrier in the loop); a
// warp that selects nothing reads nothing. The level's last chunk fills the
// slots left over with -1.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mc_compact_kernel(McArgs p) {
  using key_t = typename KeyOf<acc_t>::type;
  GF_SHARED(long long, before, [2 * kMcWarps]);
  int l;
  int64_t b, c, f0, f1;
  if (!mc_chunk(p, b, c, l, f0, f1)) return;
  const int64_t bl = b * p.levels + l, M = p.slots;
  const McCut<key_t> cut = mc_cut<acc_t>(p, bl);
  const int* counts = p.chunk_counts + 2 * (b * p.chunk_start[p.levels]) * kMcWarps;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Keys above and equal to the cut in the level's earlier chunks.
  long long gt_before = 0, eq_before = 0;
  for (int64_t j = p.chunk_start[l] * kMcWarps + threadIdx.x; j < c * kMcWarps; j += blockDim.x) {
    gt_before += counts[2 * j];
    eq_before += counts[2 * j + 1];
  }
  for (int o = 16; o > 0; o >>= 1) {
    gt_before += __shfl_down_sync(0xffffffffu, gt_before, o);
    eq_before += __shfl_down_sync(0xffffffffu, eq_before, o);
  }
  if (lane == 0) {
    before[warp] = gt_before;
    before[kMcWarps + warp] = eq_before;
  }
  __syncthreads();
  gt_before = eq_before = 0;
  for (int w = 0; w < kMcWarps; ++w) {
    gt_before += before[w];
    eq_before += before[kMcWarps + w];
  }
  // ... and in this chunk's earlier warps; the chunk's own totals.
  const int* mine = counts + 2 * c * kMcWarps;
  long long gt_chunk = 0, eq_chunk = 0, gt_warp = 0, eq_warp = 0;
  for (int w = 0; w < kMcWarps; ++w) {
    if (w == warp) {
      gt_warp = gt_before + gt_chunk;
      eq_warp = eq_before + eq_chunk;
    }
    gt_chunk += mine[2 * w];
    eq_chunk += mine[2 * w + 1];
  }
  const int64_t s0 = p.slot_start[l], cap = p.slot_start[l + 1] - s0;
  auto* score = static_cast<acc_t*>(p.cand_score) + b * M + s0;
  int64_t* flat = p.cand_flat + b * M + s0;
  // Selected: every key above the cut, and the equal keys of flat rank < want.
  const long long eq_rank0 = eq_warp;
  const long long eq_here = mine[2 * warp + 1];
  const long long eq_left = cut.want - eq_rank0;
  const long long take_eq = eq_left <= 0 ? 0 : eq_left < eq_here ? eq_left : eq_here;
  if (mine[2 * warp] + take_eq > 0) {
    const scalar_t* x = static_cast<const scalar_t*>(p.cls) + b * p.anchors * p.classes;
    long long base = gt_warp + (eq_rank0 < cut.want ? eq_rank0 : cut.want);
    long long eq_seen = eq_rank0;
    int64_t r0, r1;
    mc_warp_run(f0, f1, warp, kMcWarps, r0, r1);
    const unsigned below = (1u << lane) - 1u;
    for (int64_t c0 = r0; c0 < r1; c0 += 32) {  // the same trip count for the warp's lanes
      const int64_t f = c0 + lane;
      acc_t s = acc_t(0);
      const key_t k = f < r1 ? mc_key<scalar_t, acc_t>(p, x, f, s) : key_t(0);
      const bool eq = cut.equal(k);
      const unsigned eqs = __ballot_sync(0xffffffffu, eq);
      const bool sel = cut.above(k) || (eq && eq_seen + __popc(eqs & below) < cut.want);
      const unsigned sels = __ballot_sync(0xffffffffu, sel);
      if (sel) {
        score[base + __popc(sels & below)] = s;
        flat[base + __popc(sels & below)] = f;
      }
      base += __popc(sels);
      eq_seen += __popc(eqs);
    }
  }
  if (c + 1 == p.chunk_start[l + 1]) {  // the level's last chunk
    const long long total = gt_before + gt_chunk + (eq_before + eq_chunk < cut.want ? eq_before + eq_chunk : cut.want);
    for (int64_t i = total + threadIdx.x; i < cap; i += blockDim.x) {
      score[i] = acc_t(-1);
      flat[i] = 0;
    }
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
  const int64_t chunks = args.chunk_start[args.levels];
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    const unsigned per_chunk = static_cast<unsigned>(args.batch * chunks);
    const dim3 per_level(static_cast<unsigned>(args.batch), static_cast<unsigned>(args.levels));
    constexpr int bits = static_cast<int>(sizeof(typename KeyOf<acc_t>::type)) * 8;
    for (int shift = bits - 8; shift >= 0; shift -= 8) {
      launch<mc_hist_kernel<scalar_t, acc_t>>(per_chunk, kThreads, 0, stream, args, shift, shift == bits - 8);
      launch<mc_decide_kernel<acc_t>>(per_level, kThreads, 0, stream, args, shift, shift == bits - 8);
    }
    launch<mc_count_kernel<scalar_t, acc_t>>(per_chunk, kThreads, 0, stream, args);
    launch<mc_compact_kernel<scalar_t, acc_t>>(per_chunk, kThreads, 0, stream, args);
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
