// CPU kernels of NMS (SPEC.md section 7): nms, batched_nms and the batched
// multiclass post-process of the GFL head.
//
// Greedy NMS goes through the boxes in score order in blocks of kNmsBlock:
// within a block one box after another (each kept box suppresses the rest
// of its block), then the block's kept boxes suppress the later boxes, in
// parallel over chunks of kNmsChunk. In a chunk the boxes are sorted by x1,
// so a kept box sweeps only the boxes whose x-range can meet its own (two
// binary searches); each sweep is a vectorised pass of IoUs over
// structure-of-arrays coordinates. No K x K matrix: memory is O(K).
// batched_nms runs this per class (independent runs, so in parallel).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/nms.h"
#include "../nms_checks.h"
#include "reduce.h"

namespace gflops {
namespace {

constexpr int64_t kNmsBlock = 256;
constexpr int64_t kNmsChunk = 2048;

// Scratch arrays as CPU tensors (kept alive by the holder), so that the
// allocator, and with it the profiler's peak memory, sees every byte.
struct Workspace {
  std::vector<at::Tensor> held;
  template <typename T> T* take(int64_t n) {
    held.push_back(at::empty({std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T))}, at::kByte));
    return reinterpret_cast<T*>(held.back().data_ptr<uint8_t>());
  }
};

// alive[j] &= !(IoU(box k, box j) > thr) for j in [j0, j1).
template <typename acc_t>
GF_CPU_CLONES_EXACT void suppress_by(const acc_t* x1, const acc_t* y1, const acc_t* x2, const acc_t* y2, int64_t k,
                                     int64_t j0, int64_t j1, acc_t thr, uint8_t* alive) {
  const gf::Box4<acc_t> a{x1[k], y1[k], x2[k], y2[k]};
#pragma omp simd
  for (int64_t j = j0; j < j1; ++j) {
    const gf::Box4<acc_t> b{x1[j], y1[j], x2[j], y2[j]};
    alive[j] = static_cast<uint8_t>(alive[j] & static_cast<uint8_t>(!gf::nms_suppresses(a, b, thr)));
  }
}

// The later boxes of the cross pass, chunk by chunk, sorted by x1 within
// each chunk. Only boxes of positive width and height are here: any other
// box has zero intersection with everything (IoU 0, or NaN), so it can be
// neither suppressed nor suppress. A kept box k can only suppress a box j
// with x1_j < x2_k and x2_j > x1_k, i.e. x1_j in (x1_k - wmax, x2_k) for the
// chunk's widest box wmax: two binary searches cut the sweep to that range,
// a superset of the boxes that overlap k, so the result is unchanged.
template <typename acc_t> struct SweepChunks {
  acc_t *x1, *y1, *x2, *y2;
  int64_t* pos;     // position in score order
  uint8_t* alive;   // the cross pass's flags, in this order
  int64_t* inv;     // position -> index here, or -1
  std::vector<int64_t> start;   // chunk c: [start[c], start[c + 1])
  std::vector<double> wmax;

  SweepChunks(const acc_t* bx1, const acc_t* by1, const acc_t* bx2, const acc_t* by2, const uint8_t* alive0,
              int64_t n, Workspace& ws)
      : x1(ws.take<acc_t>(n)), y1(ws.take<acc_t>(n)), x2(ws.take<acc_t>(n)), y2(ws.take<acc_t>(n)),
        pos(ws.take<int64_t>(n)), alive(ws.take<uint8_t>(n)), inv(ws.take<int64_t>(n)) {
    std::vector<int64_t> idx;
    idx.reserve(kNmsChunk);
    int64_t m = 0;
    start.push_back(0);
    for (int64_t c0 = 0; c0 < n; c0 += kNmsChunk) {
      idx.clear();
      double w = 0.0;
      for (int64_t i = c0; i < std::min(n, c0 + kNmsChunk); ++i) {
        inv[i] = -1;
        if (bx2[i] > bx1[i] && by2[i] > by1[i]) {
          idx.push_back(i);
          w = std::max(w, static_cast<double>(bx2[i]) - static_cast<double>(bx1[i]));
        }
      }
      std::sort(idx.begin(), idx.end(),
                [&](int64_t a, int64_t b) { return bx1[a] < bx1[b] || (bx1[a] == bx1[b] && a < b); });
      for (const int64_t i : idx) {
        inv[i] = m;
        pos[m] = i;
        x1[m] = bx1[i];
        y1[m] = by1[i];
        x2[m] = bx2[i];
        y2[m] = by2[i];
        alive[m++] = alive0[i];
      }
      start.push_back(m);
      wmax.push_back(w);
    }
  }
};

// alive[t] &= !(pos[t] >= from && IoU(a, box t) > thr) for t in [t0, t1).
template <typename acc_t>
GF_CPU_CLONES_EXACT void suppress_sorted(const SweepChunks<acc_t>& sc, gf::Box4<acc_t> a, int64_t t0, int64_t t1,
                                         int64_t from, acc_t thr, uint8_t* alive) {
  const acc_t *x1 = sc.x1, *y1 = sc.y1, *x2 = sc.x2, *y2 = sc.y2;
  const int64_t* pos = sc.pos;
#pragma omp simd
  for (int64_t t = t0; t < t1; ++t) {
    const gf::Box4<acc_t> b{x1[t], y1[t], x2[t], y2[t]};
    const bool hit = pos[t] >= from && gf::nms_suppresses(a, b, thr);
    alive[t] = static_cast<uint8_t>(alive[t] & static_cast<uint8_t>(!hit));
  }
}

// Greedy NMS over boxes [0, n) of the columns, in order. alive: 1 for a box
// that may be kept (0 for NaN scores); on return 1 exactly for kept boxes.
template <typename acc_t>
void greedy(const acc_t* x1, const acc_t* y1, const acc_t* x2, const acc_t* y2, int64_t n, acc_t thr,
            uint8_t* alive, bool parallel) {
  Workspace ws;
  SweepChunks<acc_t> sc(x1, y1, x2, y2, alive, n, ws);
  const int64_t chunks = static_cast<int64_t>(sc.wmax.size());
  std::vector<int64_t> kept;
  kept.reserve(kNmsBlock);
  for (int64_t s = 0; s < n; s += kNmsBlock) {
    const int64_t e = std::min(n, s + kNmsBlock);
    for (int64_t i = s; i < e; ++i)
      if (sc.inv[i] >= 0) alive[i] = sc.alive[sc.inv[i]];
    kept.clear();
    for (int64_t i = s; i < e; ++i) {
      if (!alive[i]) continue;
      suppress_by(x1, y1, x2, y2, i, i + 1, e, thr, alive);
      if (sc.inv[i] >= 0) kept.push_back(i);  // only these can suppress anything
    }
    if (kept.empty() || e == n) continue;
    const int64_t c_first = e / kNmsChunk;
    auto apply = [&](int64_t c0, int64_t c1) {
      for (int64_t c = c_first + c0; c < c_first + c1; ++c) {
        const acc_t* cx = sc.x1;
        for (const int64_t k : kept) {
          const double lo = static_cast<double>(x1[k]) - sc.wmax[c];
          const double bound = lo - 1e-6 * (std::abs(lo) + sc.wmax[c]);  // slack: a superset is safe
          const int64_t t0 = std::lower_bound(cx + sc.start[c], cx + sc.start[c + 1], bound,
                                              [](acc_t v, double b) { return static_cast<double>(v) < b; }) - cx;
          const int64_t t1 = std::lower_bound(cx + t0, cx + sc.start[c + 1], x2[k]) - cx;
          suppress_sorted(sc, gf::Box4<acc_t>{x1[k], y1[k], x2[k], y2[k]}, t0, t1, e, thr, sc.alive);
        }
      }
    };
    const int64_t todo = chunks - c_first;
    if (parallel && todo > 1) at::parallel_for(0, todo, 1, apply);
    else apply(0, todo);
  }
}

at::Tensor nms_impl(const NmsInputs& in) {
  const int64_t K = in.count;
  auto long_opts = in.boxes.options().dtype(at::kLong);
  if (K == 0) return at::empty({0}, long_opts);
  // Descending score, equal scores by lower index (stable); NaN scores first, never kept.
  const at::Tensor order = std::get<1>(at::sort(in.scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* ord = order.data_ptr<int64_t>();
  Workspace ws;
  // pos[q]: the q-th box of the class-major order, as a position in score order.
  int64_t* pos = ws.take<int64_t>(K);
  for (int64_t q = 0; q < K; ++q) pos[q] = q;
  std::vector<int64_t> seg{0};
  if (in.idxs.defined()) {
    const int64_t* idx = in.idxs.data_ptr<int64_t>();
    std::stable_sort(pos, pos + K, [&](int64_t a, int64_t b) { return idx[ord[a]] < idx[ord[b]]; });
    for (int64_t q = 1; q < K; ++q)
      if (idx[ord[pos[q]]] != idx[ord[pos[q - 1]]]) seg.push_back(q);
  }
  seg.push_back(K);
  const at::Tensor nan_t = at::isnan(in.scores);
  const bool* nan = nan_t.data_ptr<bool>();
  uint8_t* alive = ws.take<uint8_t>(K);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.boxes.scalar_type(), "nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bx = in.boxes.data_ptr<scalar_t>();
    acc_t *x1 = ws.take<acc_t>(K), *y1 = ws.take<acc_t>(K), *x2 = ws.take<acc_t>(K), *y2 = ws.take<acc_t>(K);
    for (int64_t q = 0; q < K; ++q) {
      const int64_t i = ord[pos[q]];
      x1[q] = gf::cvt<acc_t>(bx[4 * i]);
      y1[q] = gf::cvt<acc_t>(bx[4 * i + 1]);
      x2[q] = gf::cvt<acc_t>(bx[4 * i + 2]);
      y2[q] = gf::cvt<acc_t>(bx[4 * i + 3]);
      alive[q] = !nan[i];
    }
    const acc_t thr = static_cast<acc_t>(in.iou_threshold);
    const int64_t segments = static_cast<int64_t>(seg.size()) - 1;
    auto run = [&](int64_t s, bool parallel) {
      const int64_t o = seg[s];
      greedy(x1 + o, y1 + o, x2 + o, y2 + o, seg[s + 1] - o, thr, alive + o, parallel);
    };
    if (segments == 1) run(0, true);
    else at::parallel_for(0, segments, 1, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) run(s, false);
    });
  });
  uint8_t* kept_at = ws.take<uint8_t>(K);
  for (int64_t q = 0; q < K; ++q) kept_at[pos[q]] = alive[q];
  int64_t n = 0;
  for (int64_t p = 0; p < K; ++p) n += kept_at[p];
  at::Tensor out = at::empty({n}, long_opts);
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t p = 0, w = 0; p < K; ++p)
    if (kept_at[p]) o[w++] = ord[p];
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(nms_prepare(boxes, scores, nullptr, iou_threshold, "gflops.nms"));
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  return nms_impl(nms_prepare(boxes, scores, &idxs, iou_threshold, "gflops.batched_nms"));
}

// ---- the multiclass post-process ---------------------------------------------

template <typename acc_t> struct Candidate {
  acc_t score;
  int64_t flat;  // anchor * C + class over the image's N anchors
};

// Descending score, equal scores by lower flat index: the final order.
template <typename acc_t> bool ahead(const Candidate<acc_t>& a, const Candidate<acc_t>& b) {
  return a.score > b.score || (a.score == b.score && a.flat < b.flat);
}

struct Outputs {
  void* boxes;
  void* scores;
  int64_t* labels;
  int64_t* counts;
};

template <typename scalar_t, typename acc_t>
GF_CPU_CLONES_EXACT void multiclass_image(const MulticlassInputs& in, int64_t b, const Outputs& out) {
  const int64_t N = in.anchors, C = in.classes, n1 = in.reg_max + 1;
  const scalar_t* cls = in.cls.data_ptr<scalar_t>() + b * N * C;
  const scalar_t* reg = in.reg.data_ptr<scalar_t>() + b * N * 4 * n1;
  const acc_t* pts = in.points.data_ptr<acc_t>();
  const acc_t* st = in.strides.data_ptr<acc_t>();
  const acc_t h = in.image_shapes.data_ptr<acc_t>()[2 * b], w = in.image_shapes.data_ptr<acc_t>()[2 * b + 1];
  const acc_t sx = in.scale_factors.data_ptr<acc_t>()[2 * b], sy = in.scale_factors.data_ptr<acc_t>()[2 * b + 1];
  const acc_t thr = static_cast<acc_t>(in.score_thr), floor = static_cast<acc_t>(gf::logit_floor(in.score_thr));
  const acc_t iou_thr = static_cast<acc_t>(in.iou_threshold), min_size = static_cast<acc_t>(in.min_bbox_size);

  // Per level a buffer of 2 nms_pre candidates (or the level's pairs, if
  // fewer): when full, the best nms_pre
  // stay (nth_element under the strict order `ahead`), so memory is bounded
  // by nms_pre however many pairs pass score_thr, and the result is the
  // level's exact top nms_pre.
  Workspace ws;
  const int64_t M = in.slot_start.back();
  auto* cands = ws.take<Candidate<acc_t>>(M);
  int64_t most = 0;  // the largest level's (anchor, class) pairs
  for (size_t l = 0; l + 1 < in.level_start.size(); ++l)
    most = std::max(most, (in.level_start[l + 1] - in.level_start[l]) * C);
  const int64_t keep = std::min(in.nms_pre, most), cap = std::min(2 * keep, most);
  auto* level = ws.take<Candidate<acc_t>>(cap);
  int64_t count = 0;
  for (size_t l = 0; l + 1 < in.level_start.size(); ++l) {
    const int64_t f0 = in.level_start[l] * C, f1 = in.level_start[l + 1] * C;
    int64_t n = 0;
    for (int64_t f = f0; f < f1; ++f) {
      acc_t s;
      if (!gf::candidate_score(gf::cvt<acc_t>(cls[f]), floor, thr, s)) continue;
      level[n++] = {s, f};
      if (n == cap && n > keep) {
        std::nth_element(level, level + keep, level + n, ahead<acc_t>);
        n = keep;
      }
    }
    if (n > keep) {
      std::nth_element(level, level + keep, level + n, ahead<acc_t>);
      n = keep;
    }
    std::copy(level, level + n, cands + count);
    count += n;
  }
  auto* boxes = ws.take<gf::Box4<acc_t>>(count);
  int64_t kept_cands = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t a = cands[i].flat / C;
    const gf::Box4<acc_t> box = gf::candidate_box<acc_t>(reg + a * 4 * n1, static_cast<int>(n1), pts[2 * a],
                                                         pts[2 * a + 1], st[a], h, w);
    if (!gf::big_enough(box, sx, sy, min_size)) continue;
    cands[kept_cands] = cands[i];
    boxes[kept_cands++] = box;
  }
  int64_t* order = ws.take<int64_t>(kept_cands);
  for (int64_t i = 0; i < kept_cands; ++i) order[i] = i;
  std::sort(order, order + kept_cands, [&](int64_t x, int64_t y) { return ahead(cands[x], cands[y]); });

  // Greedy over the sorted candidates; only the first max_per_img kept boxes
  // matter, so a candidate is checked against at most that many.
  auto* ob = static_cast<acc_t*>(out.boxes) + b * in.max_per_img * 4;
  auto* os = static_cast<acc_t*>(out.scores) + b * in.max_per_img;
  int64_t* ol = out.labels + b * in.max_per_img;
  std::vector<gf::Box4<acc_t>> kept;  // at most max_per_img
  std::vector<int64_t> kept_label;
  for (int64_t r = 0; r < kept_cands; ++r) {
    const int64_t i = order[r];
    if (static_cast<int64_t>(kept.size()) == in.max_per_img) break;
    const int64_t label = cands[i].flat % C;
    bool alive = true;
    for (size_t k = 0; k < kept.size() && alive; ++k)
      alive = !(kept_label[k] == label && gf::nms_suppresses(kept[k], boxes[i], iou_thr));
    if (!alive) continue;
    const int64_t slot = static_cast<int64_t>(kept.size());
    ob[4 * slot] = boxes[i].x1;
    ob[4 * slot + 1] = boxes[i].y1;
    ob[4 * slot + 2] = boxes[i].x2;
    ob[4 * slot + 3] = boxes[i].y2;
    os[slot] = cands[i].score;
    ol[slot] = label;
    kept.push_back(boxes[i]);
    kept_label.push_back(label);
  }
  out.counts[b] = static_cast<int64_t>(kept.size());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cpu(
    const at::Tensor& cls_scores, const at::Tensor& bbox_preds, const at::Tensor& points, const at::Tensor& strides,
    at::IntArrayRef level_sizes, const at::Tensor& image_shapes, const c10::optional<at::Tensor>& scale_factors,
    int64_t reg_max, double score_thr, int64_t nms_pre, double iou_threshold, int64_t max_per_img,
    double min_bbox_size) {
  const MulticlassInputs in =
      multiclass_prepare(cls_scores, bbox_preds, points, strides, level_sizes, image_shapes, scale_factors, reg_max,
                         score_thr, nms_pre, iou_threshold, max_per_img, min_bbox_size, "gflops.multiclass_nms");
  auto res = multiclass_outputs(in);
  const Outputs out{std::get<0>(res).data_ptr(), std::get<1>(res).data_ptr(), std::get<2>(res).data_ptr<int64_t>(),
                    std::get<3>(res).data_ptr<int64_t>()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.cls.scalar_type(), "multiclass_nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, in.batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) multiclass_image<scalar_t, acc_t>(in, b, out);
    });
  });
  return res;
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("multiclass_nms", &multiclass_nms_cpu);
}

}  // namespace gflops
