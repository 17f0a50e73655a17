// CPU kernels of the AutoAssign loss terms (SPEC.md section 6; math in
// common/autoassign.h), forward and backward.
//
// Images run in parallel. Within an image, the grid points strictly inside
// each valid GT are enumerated from the GT box itself, level by level: the
// rows and columns its box spans, each candidate tested exactly. So work and
// memory grow with the (point, GT) pairs inside, plus one dense pass over
// points x classes for the negative term. Nothing of size points x GTs is
// built. The best-IoU search of the points inside some GT walks, per tile of
// points, the GTs that may overlap one of the tile's predicted boxes (O(P)
// memory; time that many x those GTs). Sums run in a fixed order
// (GTs ascending, then levels, rows, columns) and in double, so results do
// not depend on the thread count.
//
// The forward also returns what the backward needs: the negative weights
// (B, P, C) and per GT the sum of the positive weights and the bag
// probability (B, G, 2).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../autoassign_checks.h"
#include "../common/autoassign.h"
#include "reduce.h"

namespace gflops {
namespace {

constexpr const char* kOp = "gflops.autoassign_loss_terms";
constexpr const char* kOpBackward = "gflops.autoassign_loss_terms_backward";

// One image's inputs, in the accumulation type A (logits T).
template <typename T, typename A> struct Image {
  const T* cls;     // (P, C)
  const T* obj;     // (P,)
  const A* dist;    // (P, 4)
  const A* gt;      // (G, 4)
  const int64_t* lab;
  const bool* valid;
};

template <typename T, typename A> Image<T, A> image(const AutoAssignInputs& in, int64_t b) {
  const int64_t P = in.points_n, C = in.classes, G = in.num_gt;
  return Image<T, A>{in.cls.data_ptr<T>() + b * P * C, in.obj.data_ptr<T>() + b * P,
                     in.dist.data_ptr<A>() + b * P * 4, in.gt_boxes.data_ptr<A>() + b * G * 4,
                     in.gt_labels.data_ptr<int64_t>() + b * G, in.gt_valid.data_ptr<bool>() + b * G};
}

// f(p) for every point strictly inside box g: levels ascending, row-major.
template <typename A, typename F>
void for_each_inside(const AutoAssignInputs& in, const A* pts, const A* strides, const gf::Box4<A>& g, F&& f) {
  for (size_t l = 0; l < in.level_start.size(); ++l) {
    const int64_t h = in.level_h[l], w = in.level_w[l], start = in.level_start[l];
    if (h == 0 || w == 0) continue;
    const A s = strides[start];
    int c0, c1, r0, r1;
    gf::grid_span(g.x1, g.x2, s, static_cast<int>(w), c0, c1);
    gf::grid_span(g.y1, g.y2, s, static_cast<int>(h), r0, r1);
    for (int r = r0; r <= r1; ++r) {
      for (int c = c0; c <= c1; ++c) {
        const int64_t p = start + static_cast<int64_t>(r) * w + c;
        if (gf::strictly_inside(pts[2 * p], pts[2 * p + 1], g)) f(p);
      }
    }
  }
}

template <typename A> gf::Box4<A> pred_box(const A* pts, const A* dist, int64_t p) {
  return gf::distance2bbox(pts[2 * p], pts[2 * p + 1], dist + 4 * p);
}

// Everything one (point, GT) pair of the positive term has.
template <typename A> struct Pair {
  gf::PriorTerm<A> prior;
  gf::PosTerm<A> pos;
  A sc, so, e3, cw;
};

template <typename T, typename A>
Pair<A> pair_terms(const AutoAssignInputs& in, const Image<T, A>& im, const A* pts, const A* strides, const A* mu,
                   const A* sigma, int64_t p, const gf::Box4<A>& g, int64_t c) {
  const int64_t C = in.classes;
  Pair<A> r;
  r.prior = gf::center_prior(pts[2 * p], pts[2 * p + 1], strides[p], (g.x1 + g.x2) / A(2), (g.y1 + g.y2) / A(2),
                             mu[2 * c], mu[2 * c + 1], sigma[2 * c], sigma[2 * c + 1]);
  r.sc = gf::sigmoid_of(gf::cvt<A>(im.cls[p * C + c]));
  r.so = gf::sigmoid_of(gf::cvt<A>(im.obj[p]));
  r.pos = gf::pos_term(r.sc, r.so, pred_box(pts, im.dist, p), g);
  r.e3 = gf::gexp(A(3) * r.pos.p_pos);
  r.cw = r.e3 * r.prior.value;
  return r;
}

// IoU of a predicted box with each GT of the image (SoA; 0 for padded slots),
// into iou[0, G): vectorised, no multiply-add fused, as the reference rounds.
template <typename A>
GF_CPU_CLONES_EXACT void ious_with_gts(const gf::Box4<A>& pb, const A* x1, const A* y1, const A* x2, const A* y2,
                                       const uint8_t* valid, int64_t G, A* iou) {
#pragma omp simd
  for (int64_t g = 0; g < G; ++g) {
    const A v = gf::iou_only(pb, gf::Box4<A>{x1[g], y1[g], x2[g], y2[g]}, A(gf::kAutoAssignIouEps));
    iou[g] = valid[g] ? v : A(0);
  }
}

// t = 1 / (1 - best IoU over the image's valid GTs) of the points with
// in_some, a tile of kTileRows x kTileCols points of a level at a time: the
// GTs whose IoU is exactly 0 with every predicted box of the tile's points
// (gf::iou_surely_zero) are dropped first, the rest searched as before, so
// each maximum is the full search's (a padded slot's IoU counts as 0, and a
// NaN IoU stays NaN, as amax keeps it).
template <typename T, typename A>
void best_ious(const AutoAssignInputs& in, const Image<T, A>& im, const A* pts, const std::vector<uint8_t>& in_some,
               A* t, bool& any) {
  constexpr int64_t kTileRows = 8, kTileCols = 32;
  const int64_t G = in.num_gt;
  const bool cull = autoassign_cull().load(std::memory_order_relaxed);
  std::vector<A> soa(5 * G);  // x1, y1, x2, y2 of the kept GTs, then their IoUs with one point's box
  const std::vector<uint8_t> ones(G, 1);
  std::vector<int64_t> tile;
  std::vector<gf::Box4<A>> boxes;
  A* iou = soa.data() + 4 * G;
  for (size_t l = 0; l < in.level_start.size(); ++l) {
    const int64_t h = in.level_h[l], w = in.level_w[l], start = in.level_start[l];
    for (int64_t r0 = 0; r0 < h; r0 += kTileRows) {
      for (int64_t c0 = 0; c0 < w; c0 += kTileCols) {
        tile.clear();
        boxes.clear();
        bool tame = true;
        A lx = std::numeric_limits<A>::infinity(), ly = lx, hx = -lx, hy = -lx;
        for (int64_t r = r0; r < std::min(h, r0 + kTileRows); ++r) {
          for (int64_t c = c0; c < std::min(w, c0 + kTileCols); ++c) {
            const int64_t p = start + r * w + c;
            if (!in_some[p]) continue;
            const gf::Box4<A> pb = pred_box(pts, im.dist, p);
            tile.push_back(p);
            boxes.push_back(pb);
            tame = tame && gf::tame_box(pb);
            lx = std::min({lx, pb.x1, pb.x2});
            ly = std::min({ly, pb.y1, pb.y2});
            hx = std::max({hx, pb.x1, pb.x2});
            hy = std::max({hy, pb.y1, pb.y2});
          }
        }
        if (tile.empty()) continue;
        any = true;
        int64_t kept = 0;
        for (int64_t g = 0; g < G; ++g) {
          const gf::Box4<A> box = gf::load_box(im.gt + 4 * g);
          if (!im.valid[g] || (cull && gf::iou_surely_zero(box, tame, lx, ly, hx, hy))) continue;
          soa[kept] = box.x1;
          soa[G + kept] = box.y1;
          soa[2 * G + kept] = box.x2;
          soa[3 * G + kept] = box.y2;
          ++kept;
        }
        for (size_t q = 0; q < tile.size(); ++q) {
          ious_with_gts(boxes[q], soa.data(), soa.data() + G, soa.data() + 2 * G, soa.data() + 3 * G, ones.data(),
                        kept, iou);
          A best = A(0);
          for (int64_t g = 0; g < kept && best == best; ++g)
            if (iou[g] > best || iou[g] != iou[g]) best = iou[g];
          t[tile[q]] = gf::inverse_miss(best);
        }
      }
    }
  }
}

// The dense negative term of points [0, P): sum of x^2 BCE(x, 0) with x =
// sigma(cls) sigma(obj) neg_w, rows summed in order.
template <typename T, typename A>
GF_CPU_CLONES double neg_rows(const T* cls, const T* obj, const A* w, int64_t P, int64_t C) {
  double total = 0.0;
  for (int64_t p = 0; p < P; ++p) {
    const A so = gf::sigmoid_of(gf::cvt<A>(obj[p]));
    const T* x = cls + p * C;
    const A* wr = w + p * C;
    A row = A(0);
#pragma omp simd reduction(+ : row)
    for (int64_t c = 0; c < C; ++c) row += gf::neg_loss(gf::sigmoid_of(gf::cvt<A>(x[c])) * so * wr[c]);
    total += row;
  }
  return total;
}

// Its gradient: d_cls for every (point, class) and d_obj per point.
template <typename T, typename A>
GF_CPU_CLONES void neg_grad_rows(const T* cls, const T* obj, const A* w, A g, int64_t P, int64_t C, A* dcls,
                                 A* dobj) {
  for (int64_t p = 0; p < P; ++p) {
    const A so = gf::sigmoid_of(gf::cvt<A>(obj[p]));
    const T* x = cls + p * C;
    const A* wr = w + p * C;
    A* d = dcls + p * C;
    A to_obj = A(0);
#pragma omp simd reduction(+ : to_obj)
    for (int64_t c = 0; c < C; ++c) {
      const A sc = gf::sigmoid_of(gf::cvt<A>(x[c]));
      const A d_joint = g * gf::neg_loss_grad(sc * so * wr[c]) * wr[c];
      d[c] = d_joint * so * (sc * (A(1) - sc));
      to_obj += d_joint * sc;
    }
    dobj[p] = to_obj * (so * (A(1) - so));
  }
}

// The negative weights of one image: 1, but 1 - t_norm at (p, lab_g) for the
// points inside g, from t and each GT's range of t (stats[4g + 2], [4g + 3]).
// GTs ascending, so the highest GT index of a class wins a point. Rebuilt by
// the backward rather than saved: P x C per image is the largest tensor here.
template <typename T, typename A>
void neg_weights(const AutoAssignInputs& in, const Image<T, A>& im, const A* pts, const A* strides, const A* t,
                 const A* stats, A* neg_w) {
  const int64_t C = in.classes;
  std::fill(neg_w, neg_w + in.points_n * C, A(1));
  for (int64_t g = 0; g < in.num_gt; ++g) {
    const int64_t c = im.lab[g];
    if (!im.valid[g] || c < 0 || c >= C) continue;  // the backward checks no values: never index past a row
    const A lo = stats[4 * g + 2], hi = stats[4 * g + 3];
    for_each_inside(in, pts, strides, gf::load_box(im.gt + 4 * g),
                    [&](int64_t p) { neg_w[p * C + c] = gf::aa_neg_weight(t[p], lo, hi); });
  }
}

template <typename T, typename A>
void forward_image(const AutoAssignInputs& in, int64_t b, A* loss_pos, A* loss_neg, A* prior_sum, bool* any_inside,
                   A* t_out, A* stats) {
  const int64_t P = in.points_n, C = in.classes, G = in.num_gt;
  const Image<T, A> im = image<T, A>(in, b);
  const A* pts = in.points.data_ptr<A>();
  const A* strides = in.strides.data_ptr<A>();
  const A* mu = in.mu.data_ptr<A>();
  const A* sigma = in.sigma.data_ptr<A>();
  const A eps = A(gf::kAutoAssignEps);

  // The points inside some GT, and their 1 / (1 - best IoU over the image's valid GTs).
  A* t = t_out;
  std::fill(t, t + P, A(0));
  std::vector<uint8_t> in_some(P, 0);
  for (int64_t g = 0; g < G; ++g) {
    if (im.valid[g]) for_each_inside(in, pts, strides, gf::load_box(im.gt + 4 * g), [&](int64_t p) { in_some[p] = 1; });
  }
  bool any = false;
  best_ious(in, im, pts, in_some, t, any);

  // Per GT: the positive bag and the range of t over its points.
  double pos_total = 0.0, prior_total = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    std::fill(stats + 4 * g, stats + 4 * g + 4, A(0));
    if (!im.valid[g]) continue;
    const gf::Box4<A> box = gf::load_box(im.gt + 4 * g);
    const int64_t c = im.lab[g];
    double s = 0.0, a = 0.0, psum = 0.0;
    A lo = std::numeric_limits<A>::infinity(), hi = -std::numeric_limits<A>::infinity();
    for_each_inside(in, pts, strides, box, [&](int64_t p) {
      const Pair<A> r = pair_terms(in, im, pts, strides, mu, sigma, p, box, c);
      s += r.cw;
      a += double(r.cw) * r.pos.p_pos;
      psum += r.prior.value;
      lo = gf::gmin(lo, t[p]);
      hi = gf::gmax(hi, t[p]);
    });
    const A s_a = A(s);
    const A bag = A(a) / gf::clamp_min_nan(s_a, eps);
    pos_total += gf::bce_one(bag);
    prior_total += psum;
    stats[4 * g] = s_a;
    stats[4 * g + 1] = bag;
    stats[4 * g + 2] = lo;
    stats[4 * g + 3] = hi;
  }

  loss_pos[b] = A(pos_total);
  std::vector<A> neg_w(P * C);
  neg_weights(in, im, pts, strides, t, stats, neg_w.data());
  loss_neg[b] = A(neg_rows(im.cls, im.obj, neg_w.data(), P, C));
  prior_sum[b] = A(prior_total);
  any_inside[b] = any;
}

template <typename T, typename A>
void backward_image(const AutoAssignInputs& in, int64_t b, A gpos, A gneg, A gprior, const A* t, const A* stats,
                    A* dcls, A* dobj, A* ddist, double* dprior_params) {
  const int64_t P = in.points_n, C = in.classes, G = in.num_gt;
  const Image<T, A> im = image<T, A>(in, b);
  const A* pts = in.points.data_ptr<A>();
  const A* strides = in.strides.data_ptr<A>();
  const A* mu = in.mu.data_ptr<A>();
  const A* sigma = in.sigma.data_ptr<A>();
  const A eps = A(gf::kAutoAssignEps);

  std::vector<A> neg_w(P * C);
  neg_weights(in, im, pts, strides, t, stats, neg_w.data());
  neg_grad_rows(im.cls, im.obj, neg_w.data(), gneg, P, C, dcls, dobj);
  // The positive bags and the prior sum, pair by pair.
  for (int64_t g = 0; g < G; ++g) {
    const gf::Box4<A> box = gf::load_box(im.gt + 4 * g);
    const int64_t c = im.lab[g];
    if (!im.valid[g] || c < 0 || c >= C) continue;  // as in neg_weights
    const A s = stats[4 * g], bag = stats[4 * g + 1];
    const A denom = gf::clamp_min_nan(s, eps);
    const A kept = gf::dclamp(s, eps);  // clamp(min=eps) passes the gradient when s >= eps
    const A g_bag = gpos * gf::bce_grad(bag, A(1));
    A local[4] = {A(0), A(0), A(0), A(0)};
    for_each_inside(in, pts, strides, box, [&](int64_t p) {
      const Pair<A> r = pair_terms(in, im, pts, strides, mu, sigma, p, box, c);
      const A spread = r.pos.p_pos - kept * bag;
      const A d_pos = g_bag * (r.cw / denom) * (A(1) + A(3) * spread);
      const A d_prior = g_bag * r.e3 * spread / denom + gprior;
      const A d_joint = d_pos * r.pos.loc;
      const A d_loc = d_pos * r.pos.joint;
      dcls[p * C + c] += d_joint * r.so * (r.sc * (A(1) - r.sc));
      dobj[p] += d_joint * r.sc * (r.so * (A(1) - r.so));
      // loc = exp(-5 (1 - GIoU)): d loc / d GIoU = 5 loc.
      const gf::Box4<A> db = gf::overlap_grad_a(pred_box(pts, im.dist, p), box, A(gf::kAutoAssignIouEps), true,
                                                A(gf::kAutoAssignGiouWeight) * r.pos.loc * d_loc);
      ddist[4 * p] -= db.x1;
      ddist[4 * p + 1] -= db.y1;
      ddist[4 * p + 2] += db.x2;
      ddist[4 * p + 3] += db.y2;
      gf::center_prior_grad(r.prior, sigma[2 * c], sigma[2 * c + 1], d_prior, local);
    });
    for (int k = 0; k < 4; ++k) dprior_params[4 * c + k] += local[k];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_cpu(
    const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
    const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid,
    const at::Tensor& mu, const at::Tensor& sigma, at::IntArrayRef level_shapes, const char* op = kOp) {
  AutoAssignInputs in = autoassign_prepare(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                                           level_shapes, op);
  autoassign_check_values(in, op);
  const int64_t B = in.batch, P = in.points_n, C = in.classes, G = in.num_gt;
  const auto opts = in.dist.options();
  at::Tensor loss_pos = at::zeros({B}, opts), loss_neg = at::zeros({B}, opts), prior_sum = at::zeros({B}, opts);
  at::Tensor any_inside = at::zeros({B}, opts.dtype(at::kBool));
  at::Tensor t = at::empty({B, P}, opts), stats = at::empty({B, G, 4}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.cls.scalar_type(), "autoassign_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        forward_image<scalar_t, A>(in, b, loss_pos.data_ptr<A>(), loss_neg.data_ptr<A>(), prior_sum.data_ptr<A>(),
                                   any_inside.data_ptr<bool>(), t.data_ptr<A>() + b * P,
                                   stats.data_ptr<A>() + b * G * 4);
    });
  });
  return {loss_pos, loss_neg, prior_sum, any_inside, t, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_backward_cpu(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_prior, const at::Tensor& cls,
    const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points, const at::Tensor& strides,
    const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
    const at::Tensor& sigma, const at::Tensor& point_t, const at::Tensor& stats, at::IntArrayRef level_shapes,
    const char* op = kOpBackward) {
  AutoAssignInputs in = autoassign_prepare(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                                           level_shapes, op);
  const int64_t B = in.batch, P = in.points_n, C = in.classes, G = in.num_gt;
  at::Tensor gp = check_grad_shape(grad_pos, in.cls, {B}, op, "grad_pos");
  at::Tensor gn = check_grad_shape(grad_neg, in.cls, {B}, op, "grad_neg");
  at::Tensor gr = check_grad_shape(grad_prior, in.cls, {B}, op, "grad_prior");
  at::Tensor tp = check_grad_shape(point_t, in.cls, {B, P}, op, "point_t");
  at::Tensor st = check_grad_shape(stats, in.cls, {B, G, 4}, op, "gt_stats");
  const auto opts = in.dist.options();
  at::Tensor dcls = at::empty({B, P, C}, opts), dobj = at::empty({B, P}, opts), ddist = at::zeros({B, P, 4}, opts);
  at::Tensor partial = at::zeros({B, C, 4}, opts.dtype(at::kDouble));  // per image: d mu_x, mu_y, sigma_x, sigma_y
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.cls.scalar_type(), "autoassign_backward_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        backward_image<scalar_t, A>(in, b, gp.data_ptr<A>()[b], gn.data_ptr<A>()[b], gr.data_ptr<A>()[b],
                                    tp.data_ptr<A>() + b * P, st.data_ptr<A>() + b * G * 4,
                                    dcls.data_ptr<A>() + b * P * C, dobj.data_ptr<A>() + b * P,
                                    ddist.data_ptr<A>() + b * P * 4, partial.data_ptr<double>() + b * C * 4);
    });
  });
  // Images summed in order: the same result for any thread count.
  at::Tensor total = at::zeros({C, 4}, partial.options());
  const double* part = partial.data_ptr<double>();
  double* tot = total.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < C * 4; ++k) tot[k] += part[b * C * 4 + k];
  at::Tensor params = total.to(opts.dtype());
  return {dcls.to(cls.scalar_type()), dobj.to(obj.scalar_type()), ddist, params.narrow(1, 0, 2).contiguous(),
          params.narrow(1, 2, 2).contiguous()};
}

constexpr const char* kOpTotals = "gflops.autoassign_loss";
constexpr const char* kOpTotalsBackward = "gflops.autoassign_loss_totals_backward";

// The whole loss (no reduce_mean): the terms, then SPEC's batch totals from the per-image sums
// (common/autoassign.h), and image_stats (B, 3) = (prior sum, valid GTs, any inside) for the backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_totals_cpu(
    const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
    const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid,
    const at::Tensor& mu, const at::Tensor& sigma, at::IntArrayRef level_shapes) {
  auto [loss_pos, loss_neg, prior_sum, any_inside, t, stats] = autoassign_cpu(
      cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes, kOpTotals);
  const int64_t B = loss_pos.size(0), G = gt_valid.size(1);
  const auto opts = loss_pos.options();
  at::Tensor image = at::empty({B, 3}, opts);
  at::Tensor out[3] = {at::empty({}, opts), at::empty({}, opts), at::empty({}, opts)};
  const at::Tensor valid = gt_valid.contiguous();
  AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "autoassign_totals_cpu", [&] {
    using A = scalar_t;
    const bool* v = valid.data_ptr<bool>();
    A* im = image.data_ptr<A>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t n = 0;
      for (int64_t g = 0; g < G; ++g) n += v[b * G + g];
      im[3 * b] = prior_sum.data_ptr<A>()[b];
      im[3 * b + 1] = A(n);
      im[3 * b + 2] = any_inside.data_ptr<bool>()[b] ? A(1) : A(0);
    }
    A totals[3];
    gf::aa_totals(loss_pos.data_ptr<A>(), loss_neg.data_ptr<A>(), im, B, totals);
    for (int k = 0; k < 3; ++k) out[k].fill_(totals[k]);
  });
  return {out[0], out[1], out[2], t, stats, image};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_totals_backward_cpu(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_center, const at::Tensor& cls,
    const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points, const at::Tensor& strides,
    const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
    const at::Tensor& sigma, const at::Tensor& point_t, const at::Tensor& stats, const at::Tensor& image,
    at::IntArrayRef level_shapes) {
  TORCH_CHECK(cls.dim() == 3, kOpTotalsBackward, ": cls_logits must have shape (B, P, C), got ", cls.sizes());
  const int64_t B = cls.size(0);
  const at::Tensor im = check_grad_shape(image, cls, {B, 3}, kOpTotalsBackward, "image_stats");
  const at::Tensor g[3] = {check_grad_shape(grad_pos, cls, {}, kOpTotalsBackward, "grad_pos"),
                           check_grad_shape(grad_neg, cls, {}, kOpTotalsBackward, "grad_neg"),
                           check_grad_shape(grad_center, cls, {}, kOpTotalsBackward, "grad_center")};
  at::Tensor per_image = at::empty({3, B}, im.options());
  AT_DISPATCH_FLOATING_TYPES(im.scalar_type(), "autoassign_totals_backward_cpu", [&] {
    gf::aa_total_grads(g[0].data_ptr<scalar_t>()[0], g[1].data_ptr<scalar_t>()[0], g[2].data_ptr<scalar_t>()[0],
                       im.data_ptr<scalar_t>(), B, per_image.data_ptr<scalar_t>());
  });
  return autoassign_backward_cpu(per_image[0], per_image[1], per_image[2], cls, obj, dist, points, strides, gt_boxes,
                                 gt_labels, gt_valid, mu, sigma, point_t, stats, level_shapes, kOpTotalsBackward);
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) {
  m.impl("autoassign_loss_terms", [](const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist,
                                     const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
                                     const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
                                     const at::Tensor& sigma, at::IntArrayRef level_shapes) {
    return autoassign_cpu(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes);
  });
  m.impl("autoassign_loss_terms_backward",
         [](const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_prior, const at::Tensor& cls,
            const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points, const at::Tensor& strides,
            const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
            const at::Tensor& sigma, const at::Tensor& point_t, const at::Tensor& stats, at::IntArrayRef level_shapes) {
           return autoassign_backward_cpu(grad_pos, grad_neg, grad_prior, cls, obj, dist, points, strides, gt_boxes,
                                          gt_labels, gt_valid, mu, sigma, point_t, stats, level_shapes);
         });
  m.impl("autoassign_loss_totals", &autoassign_totals_cpu);
  m.impl("autoassign_loss_totals_backward", &autoassign_totals_backward_cpu);
}

}  // namespace gflops
