// CPU kernel of ATSS assignment (SPEC.md section 5; math in common/atss.h).
//
// Stage 1, parallel over (image, GT): per level, the k nearest anchors in a
// sorted list (a square-distance test rejects most anchors before any sqrt):
// on a level whose centres form a grid (checked once per call), from a few
// cells around the GT's centre; otherwise from a scan of the level. Then the
// candidates' IoUs, the threshold and the positives; only the positives are
// kept, (B, G, K) of them at most. Stage 2, parallel over images: each image's claims are
// resolved into per-anchor (best IoU, lowest GT) by the order-free rule.
// Memory: O(B*G*K + N), never anchors x GTs.
//
// Not compiled with GF_CPU_CLONES: the x86-64-v3 clone would let GCC fuse
// multiply-adds, and the distances and IoUs must round as the reference's.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../assign_checks.h"
#include "../common/atss.h"

namespace gflops {
namespace {

template <typename acc_t> struct Near { acc_t d2, d; int64_t idx; };

// The gf::AtssPath counts of every call so far (one atomic add per chunk of
// rows), read and cleared by the tests through _C.atss_census.
std::array<std::atomic<int64_t>, gf::kAtssPaths>& atss_census_counts() {
  static std::array<std::atomic<int64_t>, gf::kAtssPaths> counts{};
  return counts;
}

// The k nearest valid anchors to (gx, gy) seen so far, ascending (distance,
// index), in list[0..n). Ranges must come in ascending index order, so that
// an anchor that ties the current k-th is later and loses (which is what lets
// a square distance above the k-th's reject an anchor before any sqrt).
template <typename acc_t> struct NearestK {
  const acc_t *cx, *cy;
  const bool* valid;
  acc_t gx, gy;
  int k;
  Near<acc_t>* list;
  int n = 0;
  acc_t worst_d2 = std::numeric_limits<acc_t>::infinity();

  void reset() {
    n = 0;
    worst_d2 = std::numeric_limits<acc_t>::infinity();
  }

  void visit(int64_t a0, int64_t a1) {
    constexpr int kChunk = 64;
    acc_t d2[kChunk];
    for (int64_t c0 = a0; c0 < a1; c0 += kChunk) {
      const int m = static_cast<int>(std::min<int64_t>(kChunk, a1 - c0));
      GF_SIMD for (int j = 0; j < m; ++j) d2[j] = gf::center_dist2(gx, gy, cx[c0 + j], cy[c0 + j]);
      for (int j = 0; j < m; ++j) {
        // d2 > worst_d2 implies d >= the k-th distance: no sqrt needed to reject.
        if (d2[j] > worst_d2 || (valid && !valid[c0 + j])) continue;
        const acc_t d = gf::gsqrt(d2[j]);
        const int64_t idx = c0 + j;
        if (n == k && !gf::nearer(d, idx, list[k - 1].d, list[k - 1].idx)) continue;
        int p = n < k ? n : k - 1;
        for (; p > 0 && gf::nearer(d, idx, list[p - 1].d, list[p - 1].idx); --p) list[p] = list[p - 1];
        list[p] = Near<acc_t>{d2[j], d, idx};
        if (n < k) ++n;
        if (n == k) worst_d2 = list[k - 1].d2;
      }
    }
  }
};

// The level's grid, if its centres form one (common/atss.h): the property
// atss_grid_holds states, checked cell by cell without its index divisions.
template <typename acc_t> gf::AtssGrid level_grid(const acc_t* cx, const acc_t* cy, int64_t a0, int64_t a1) {
  auto x = [cx](int64_t a) { return cx[a]; };
  auto y = [cy](int64_t a) { return cy[a]; };
  const gf::AtssGrid g = gf::atss_grid_shape(x, y, a0, a1 - a0);
  const int64_t per = g.per_cell, row = g.width * per;
  bool ok = per > 0;
  for (int64_t j = 1; ok && j < g.width; ++j) ok = cx[a0 + (j - 1) * per] < cx[a0 + j * per];
  for (int64_t i = 1; ok && i < g.height; ++i) ok = cy[a0 + (i - 1) * row] < cy[a0 + i * row];
  for (int64_t i = 0; ok && i < g.height; ++i) {
    const acc_t ry = cy[a0 + i * row];
    const acc_t* px = cx + a0 + i * row;
    const acc_t* py = cy + a0 + i * row;
    bool row_ok = true;
    for (int64_t j = 0; j < g.width; ++j) {
      const acc_t col = cx[a0 + j * per];
      for (int64_t c = j * per; c < (j + 1) * per; ++c) row_ok &= (px[c] == col) & (py[c] == ry);
    }
    ok = row_ok;
  }
  return ok ? g : gf::AtssGrid{};
}

// Number of coordinates of a strictly increasing sequence (column or row
// centres, `stride` anchors apart from `first`) that are < v.
template <typename acc_t> int64_t count_below(const acc_t* c, int64_t first, int64_t stride, int64_t count, acc_t v) {
  int64_t lo = 0, hi = count;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (c[first + mid * stride] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The k nearest of a grid level [a0, a0 + size), from windows of cells
// around (gx, gy) that double until one is provably exact (common/atss.h).
// Returns the number of times the window doubled.
template <typename acc_t> int nearest_k_grid(NearestK<acc_t>& s, const gf::AtssGrid& g, int64_t a0) {
  const int64_t per = g.per_cell, row = g.width * per;
  const int64_t below_x = count_below(s.cx, a0, per, g.width, s.gx);
  const int64_t below_y = count_below(s.cy, a0, row, g.height, s.gy);
  for (int64_t r = gf::atss_first_half_width(s.k, per), widened = 0;; r *= 2, ++widened) {
    const gf::AtssSpan cs = gf::atss_span(below_x, g.width, r), rs = gf::atss_span(below_y, g.height, r);
    const bool whole = cs.lo == 0 && cs.hi == g.width && rs.lo == 0 && rs.hi == g.height;
    s.reset();
    if (whole) {
      s.visit(a0, a0 + g.height * row);
      return static_cast<int>(widened);
    }
    for (int64_t i = rs.lo; i < rs.hi; ++i) s.visit(a0 + i * row + cs.lo * per, a0 + i * row + cs.hi * per);
    const acc_t outside = gf::atss_outside_bound(g, a0, cs, rs, s.gx, s.gy, [&](int64_t a) { return s.cx[a]; },
                                                 [&](int64_t a) { return s.cy[a]; });
    const acc_t kth = s.n > 0 ? s.list[s.n - 1].d : acc_t(0);
    if (gf::atss_window_exact(false, s.n, s.k, kth, outside)) return static_cast<int>(widened);
  }
}

template <typename scalar_t, typename acc_t>
void atss_run(const AtssInputs& in, at::Tensor& assigned, at::Tensor& labels_out, at::Tensor& max_iou) {
  const int64_t B = in.batch, G = in.num_gt, N = in.num_anchors, K = in.num_candidates;
  const int levels = static_cast<int>(in.level_start.size()) - 1;
  const scalar_t* anc = in.anchors.data_ptr<scalar_t>();
  const scalar_t* gtb = in.gt_boxes.data_ptr<scalar_t>();
  const int64_t* gtl = in.gt_labels.data_ptr<int64_t>();
  const bool* gtv = in.gt_valid.data_ptr<bool>();
  const bool* av = in.anchor_valid.defined() ? in.anchor_valid.data_ptr<bool>() : nullptr;

  // Workspace as tensors, so that the allocator (and a memory profiler) sees it.
  const auto acc_opts = in.anchors.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor geom = at::empty({6 * N}, acc_opts);  // centres x, y; boxes
  acc_t* cx = geom.data_ptr<acc_t>();
  acc_t* cy = cx + N;
  auto* box = reinterpret_cast<gf::Box4<acc_t>*>(cy + N);
  for (int64_t a = 0; a < N; ++a) {
    const scalar_t* p = anc + 4 * a;
    box[a] = gf::Box4<acc_t>{gf::cvt<acc_t>(p[0]), gf::cvt<acc_t>(p[1]), gf::cvt<acc_t>(p[2]), gf::cvt<acc_t>(p[3])};
    cx[a] = gf::center_of(box[a].x1, box[a].x2);
    cy[a] = gf::center_of(box[a].y1, box[a].y2);
  }

  std::vector<gf::AtssGrid> grids(static_cast<size_t>(levels));
  for (int l = 0; l < levels; ++l) grids[l] = level_grid(cx, cy, in.level_start[l], in.level_start[l + 1]);

  // Stage 1: the positives of each (image, GT), in candidate slots.
  at::Tensor pos_idx_t = at::full({B * G * K}, -1, in.anchors.options().dtype(at::kInt));
  at::Tensor pos_iou_t = at::empty({B * G * K}, acc_opts);
  int32_t* pos_idx = pos_idx_t.data_ptr<int32_t>();
  acc_t* pos_iou = pos_iou_t.data_ptr<acc_t>();
  const acc_t eps = acc_t(1e-6);
  at::parallel_for(0, B * G, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<Near<acc_t>> list(static_cast<size_t>(std::min<int64_t>(in.topk, std::max<int64_t>(N, 1))));
    std::vector<int32_t> cidx(static_cast<size_t>(K));
    std::vector<acc_t> ciou(static_cast<size_t>(K));
    int64_t census[gf::kAtssPaths] = {};
    for (int64_t r = r0; r < r1; ++r) {
      if (!gtv[r]) continue;
      const int64_t b = r / G;
      const scalar_t* p = gtb + 4 * r;
      const gf::Box4<acc_t> g{gf::cvt<acc_t>(p[0]), gf::cvt<acc_t>(p[1]), gf::cvt<acc_t>(p[2]), gf::cvt<acc_t>(p[3])};
      const acc_t gx = gf::center_of(g.x1, g.x2), gy = gf::center_of(g.y1, g.y2);
      const bool finite = std::isfinite(gx) && std::isfinite(gy);  // a NaN or inf centre: the scan decides
      const bool* valid = av ? av + (in.anchor_valid_per_image ? b * N : 0) : nullptr;
      int n = 0;
      for (int l = 0; l < levels; ++l) {
        const int64_t a0 = in.level_start[l], a1 = in.level_start[l + 1];
        const int k = static_cast<int>(std::min<int64_t>(in.topk, a1 - a0));
        NearestK<acc_t> near{cx, cy, valid, gx, gy, k, list.data()};
        if (k > 0 && grids[l].per_cell > 0 && finite) {
          census[gf::kAtssWiden] += nearest_k_grid(near, grids[l], a0);
          ++census[gf::kAtssListWindow];
        } else if (k > 0) {
          near.visit(a0, a1);
          ++census[gf::kAtssScan];
        }
        const int m = near.n;
        // k slots per level, the empty ones (fewer valid anchors) marked -1.
        for (int i = 0; i < k; ++i, ++n) {
          cidx[n] = i < m ? static_cast<int32_t>(list[i].idx) : -1;
          ciou[n] = i < m ? gf::overlap(g, box[list[i].idx], eps).iou : acc_t(0);
        }
      }
      int count = 0;
      const double thr = gf::atss_threshold(ciou.data(), cidx.data(), n, &count);
      for (int i = 0; i < n; ++i) {
        const int32_t a = cidx[i];
        if (a >= 0 && gf::atss_positive(ciou[i], thr, count, gf::center_inside(cx[a], cy[a], g))) {
          pos_idx[r * K + i] = a;
          pos_iou[r * K + i] = ciou[i];
        }
      }
    }
    for (int i = 0; i < gf::kAtssPaths; ++i) atss_census_counts()[i].fetch_add(census[i], std::memory_order_relaxed);
  });

  // Stage 2: per image, each anchor to its best claim (highest IoU, then lowest GT).
  int64_t* out_gt = assigned.data_ptr<int64_t>();
  int64_t* out_label = labels_out.data_ptr<int64_t>();
  scalar_t* out_iou = max_iou.data_ptr<scalar_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor claims = at::empty({2 * N}, in.anchors.options().dtype(at::kLong));  // best key, owner
    auto* best = reinterpret_cast<uint64_t*>(claims.data_ptr<int64_t>());
    int64_t* owner = claims.data_ptr<int64_t>() + N;
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(best, best + N, uint64_t(0));
      for (int64_t g = 0; g < G; ++g) {
        const int64_t base = (b * G + g) * K;
        for (int64_t i = 0; i < K; ++i) {
          const int32_t a = pos_idx[base + i];
          if (a < 0) continue;
          const uint64_t key = gf::iou_key(pos_iou[base + i]);
          if (key > best[a] || (key == best[a] && g < owner[a])) {
            best[a] = key;
            owner[a] = g;
          }
        }
      }
      for (int64_t a = 0; a < N; ++a) {
        if (best[a] == 0) continue;
        acc_t v;
        gf::iou_from_key(best[a], v);
        out_gt[b * N + a] = owner[a] + 1;
        out_label[b * N + a] = gtl[b * G + owner[a]];
        out_iou[b * N + a] = gf::cvt<scalar_t>(v);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> atss_assign_cpu(
    const at::Tensor& anchors, at::IntArrayRef num_level_anchors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, const at::Tensor& gt_valid, const c10::optional<at::Tensor>& anchor_valid,
    int64_t topk, int64_t background_label) {
  AtssInputs in = atss_prepare(anchors, num_level_anchors, gt_boxes, gt_labels, gt_valid, anchor_valid, topk,
                               background_label, "gflops.atss_assign");
  auto [assigned, labels, max_iou] = atss_background(in);
  if (in.batch * in.num_anchors * in.num_gt == 0) return {assigned, labels, max_iou};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.anchors.scalar_type(), "atss_assign_cpu", [&] {
    atss_run<scalar_t, at::opmath_type<scalar_t>>(in, assigned, labels, max_iou);
  });
  return {assigned, labels, max_iou};
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) { m.impl("atss_assign", &atss_assign_cpu); }

std::vector<int64_t> atss_census_cpu() {
  std::vector<int64_t> out;
  for (auto& c : atss_census_counts()) out.push_back(c.exchange(0));
  return out;
}

}  // namespace gflops
