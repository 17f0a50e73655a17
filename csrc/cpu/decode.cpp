// CPU kernels of the decoding family: integral, the fused decode to pixel
// boxes, and the fused GFL box branch.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../box_checks.h"
#include "../common/box_branch.h"
#include "huge_pages.h"
#include "reduce.h"
#include "tiles.h"

namespace gflops {
namespace {

#define GF_DISPATCH(T, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, T, NAME, __VA_ARGS__)

// Rows of at most kMaxTileBins bins take their exponentials unshifted
// (cpu::rows_exp_dist) in tiles of kExpTileRows rows, so a row's bits do not
// depend on its tile or thread; longer rows take the max-shifted tiles of
// tile_row_stats, bin by bin across 16 rows. N1: n1 when it is a common row
// length (cpu::with_common_n1), else 0.
constexpr int kExpRows = cpu::kExpTileRows;

// check_strides_positive on the raw data (the strides are contiguous in the accumulation dtype):
// its four tensor ops and a host read cost more than decoding a small batch.
void check_strides(const at::Tensor& strides, const char* op) {
  AT_DISPATCH_FLOATING_TYPES(strides.scalar_type(), "check_strides", [&] {
    const scalar_t* s = strides.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < strides.numel(); ++i)
      if (!(s[i] > 0)) fail_at(strides, i, op, "strides must be > 0");
  });
}

// The expected bins of rows [r0, r1) to dist (when set) and, WITH_GRAD, each
// bin's derivative of its row's distance times grad[r] (1 when grad is null:
// the fused forward) to dx, from the same exponentials.
template <int N1, bool WITH_GRAD, typename scalar_t, typename acc_t>
GF_CPU_CLONES void integral_rows(const scalar_t* p, const acc_t* grad, int n1_rt, int64_t r0, int64_t r1,
                                 scalar_t* dist_out, scalar_t* dx) {
  const int n1 = N1 ? N1 : n1_rt;
  auto put = [&](int64_t r, acc_t d) {
    if (dist_out) dist_out[r] = gf::cvt<scalar_t>(d);
    return grad ? grad[r] : acc_t(1);
  };
  if (n1 > cpu::kMaxTileBins) {
    for (int64_t t0 = r0; t0 < r1; t0 += cpu::kTile) {
      const int nr = static_cast<int>(std::min<int64_t>(cpu::kTile, r1 - t0));
      acc_t lse[cpu::kTile], dist[cpu::kTile];
      cpu::tile_row_stats(p + t0 * n1, n1, nr, lse, dist);
      for (int j = 0; j < nr; ++j) {
        const int64_t r = t0 + j;
        const acc_t g = put(r, dist[j]);
        if constexpr (WITH_GRAD) gf::integral_row_grad(p + r * n1, n1, g, lse[j], dist[j], dx + r * n1);
      }
    }
    return;
  }
  acc_t e[kExpRows * cpu::kMaxTileBins], m[kExpRows], s[kExpRows], dist[kExpRows];
  for (int64_t t0 = r0; t0 < r1; t0 += kExpRows) {
    const int nr = static_cast<int>(std::min<int64_t>(kExpRows, r1 - t0));
    cpu::prefetch_values(p + (t0 + nr) * n1, std::min<int64_t>(kExpRows, r1 - t0 - nr) * n1);
    cpu::rows_exp_dist<N1>(p + t0 * n1, n1, nr, e, m, s, dist);
    for (int j = 0; j < nr; ++j) {
      const acc_t g = put(t0 + j, dist[j]);
      if constexpr (WITH_GRAD) gf::integral_row_grad_exp(e + j * n1, s[j], n1, g, dist[j], dx + (t0 + j) * n1);
    }
  }
}

// The max-shifted statistics of the long rows' boxes go kTile / 4 boxes at a
// time: the sides of a tile of boxes are one tile of rows. The loops are
// written out per op (no callbacks) so that each is compiled inside its
// target_clones function.
constexpr int kTileBoxes = cpu::kTile / 4;
constexpr int kExpBoxes = kExpRows / 4;

template <typename scalar_t, typename acc_t>
GF_HD int box_tile_stats(const scalar_t* p, int n1, int64_t t0, int64_t i1, acc_t* lse, acc_t* dist) {
  const int nb = static_cast<int>(std::min<int64_t>(kTileBoxes, i1 - t0));
  cpu::tile_row_stats(p + t0 * 4 * n1, n1, 4 * nb, lse, dist);
  return nb;
}

struct DecodeGeom {
  int64_t anchors;
  bool clamp;
  double h, w;
};

// The boxes of anchors [i0, i1) to o (when set) and, WITH_GRAD, each bin's
// derivative of its side times grad (per side; 1 when grad is null: the fused
// forward) to dx, from the same exponentials.
template <int N1, bool WITH_GRAD, typename scalar_t, typename acc_t>
GF_CPU_CLONES void decode_rows(const scalar_t* p, const acc_t* pts, const acc_t* st, const acc_t* grad, DecodeGeom geo,
                               int n1_rt, int64_t i0, int64_t i1, scalar_t* o, scalar_t* dx) {
  const int n1 = N1 ? N1 : n1_rt;
  const acc_t h = static_cast<acc_t>(geo.h), w = static_cast<acc_t>(geo.w);
  const acc_t ones[4] = {1, 1, 1, 1};
  auto put = [&](int64_t i, const acc_t* dist) {
    const int64_t a = i % geo.anchors;
    if (o) {
      const auto b = gf::decode_box(dist, pts[2 * a], pts[2 * a + 1], st[a], geo.clamp, h, w);
      o[4 * i + 0] = gf::cvt<scalar_t>(b.x1);
      o[4 * i + 1] = gf::cvt<scalar_t>(b.y1);
      o[4 * i + 2] = gf::cvt<scalar_t>(b.x2);
      o[4 * i + 3] = gf::cvt<scalar_t>(b.y2);
    }
    return a;
  };
  if (n1 > cpu::kMaxTileBins) {
    for (int64_t t0 = i0; t0 < i1; t0 += kTileBoxes) {
      acc_t lse[cpu::kTile], dist[cpu::kTile];
      const int nb = box_tile_stats(p, n1, t0, i1, lse, dist);
      for (int j = 0; j < nb; ++j) {
        const int64_t i = t0 + j, a = put(i, dist + 4 * j);
        if constexpr (WITH_GRAD)
          gf::decode_backward_stats<acc_t>(p + i * 4 * n1, n1, pts[2 * a], pts[2 * a + 1], st[a], geo.clamp, h, w,
                                           grad ? grad + 4 * i : ones, lse + 4 * j, dist + 4 * j, dx + i * 4 * n1);
      }
    }
    return;
  }
  acc_t e[kExpRows * cpu::kMaxTileBins], m[kExpRows], s[kExpRows], dist[kExpRows];
  for (int64_t t0 = i0; t0 < i1; t0 += kExpBoxes) {
    const int nb = static_cast<int>(std::min<int64_t>(kExpBoxes, i1 - t0));
    cpu::prefetch_values(p + (t0 + nb) * 4 * n1, std::min<int64_t>(kExpBoxes, i1 - t0 - nb) * 4 * n1);
    cpu::rows_exp_dist<N1>(p + t0 * 4 * n1, n1, 4 * nb, e, m, s, dist);
    for (int j = 0; j < nb; ++j) {
      const int64_t i = t0 + j, a = put(i, dist + 4 * j);
      if constexpr (WITH_GRAD)
        gf::decode_backward_exp<acc_t>(e + 4 * j * n1, s + 4 * j, n1, pts[2 * a], pts[2 * a + 1], st[a], geo.clamp,
                                       h, w, grad ? grad + 4 * i : ones, dist + 4 * j, dx + i * 4 * n1);
    }
  }
}

template <typename scalar_t, typename acc_t>
GF_CPU_CLONES void branch_rows(const scalar_t* p, const acc_t* pts, const acc_t* st, const acc_t* gt, const acc_t* w,
                               int n1, int64_t i0, int64_t i1, acc_t* sums, acc_t* score) {
  for (int64_t t0 = i0; t0 < i1; t0 += kTileBoxes) {
    acc_t lse[cpu::kTile], dist[cpu::kTile];
    const int nb = box_tile_stats(p, n1, t0, i1, lse, dist);
    for (int j = 0; j < nb; ++j) {
      const int64_t i = t0 + j;
      const auto r = gf::box_branch_forward_stats<acc_t>(p + i * 4 * n1, n1, pts[2 * i], pts[2 * i + 1], st[i],
                                                         gt + 4 * i, w[i], lse + 4 * j, dist + 4 * j);
      sums[0] += r.giou_loss;
      sums[1] += r.dfl;
      score[i] = r.score;
    }
  }
}

template <typename scalar_t, typename acc_t>
GF_CPU_CLONES void branch_grad_rows(const scalar_t* p, const acc_t* pts, const acc_t* st, const acc_t* gt,
                                    const acc_t* w, acc_t g_giou, acc_t g_dfl, int n1, int64_t i0, int64_t i1,
                                    scalar_t* o) {
  for (int64_t t0 = i0; t0 < i1; t0 += kTileBoxes) {
    acc_t lse[cpu::kTile], dist[cpu::kTile];
    const int nb = box_tile_stats(p, n1, t0, i1, lse, dist);
    for (int j = 0; j < nb; ++j) {
      const int64_t i = t0 + j;
      gf::box_branch_backward_stats<acc_t>(p + i * 4 * n1, n1, pts[2 * i], pts[2 * i + 1], st[i], gt + 4 * i, w[i],
                                           g_giou, g_dfl, lse + 4 * j, dist + 4 * j, o + i * 4 * n1);
    }
  }
}

// integral's distances (dist set) and / or d distance / d pred times grad
// (dx set; grad null: a unit gradient).
void integral_impl(const DistInputs& in, const at::Tensor* grad, at::Tensor* dist, at::Tensor* dx) {
  GF_DISPATCH(in.pred.scalar_type(), "integral_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* gp = grad ? grad->data_ptr<acc_t>() : nullptr;
    scalar_t* d = dist ? dist->data_ptr<scalar_t>() : nullptr;
    scalar_t* o = dx ? dx->data_ptr<scalar_t>() : nullptr;
    const int n1 = in.n1;
    at::parallel_for(0, in.rows, cpu::rows_per_block(n1), [&](int64_t r0, int64_t r1) {
      cpu::with_common_n1(n1, [&](auto n) {
        constexpr int N1 = decltype(n)::value;
        if (o)
          integral_rows<N1, true, scalar_t, acc_t>(p, gp, n1, r0, r1, d, o);
        else
          integral_rows<N1, false, scalar_t, acc_t>(p, gp, n1, r0, r1, d, o);
      });
    });
  });
}

at::Tensor integral_cpu(const at::Tensor& pred, int64_t reg_max) {
  DistInputs in = integral_prepare(pred, reg_max, "gflops.integral");
  at::Tensor out = at::empty(in.out_shape, in.pred.options());
  integral_impl(in, nullptr, &out, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor> integral_and_grad_cpu(const at::Tensor& pred, int64_t reg_max) {
  DistInputs in = integral_prepare(pred, reg_max, "gflops.integral");
  at::Tensor out = at::empty(in.out_shape, in.pred.options());
  const bool fuse = cpu::fuses_gradient(pred);
  at::Tensor dx = fuse ? cpu::empty_output_like(in.pred) : pred.new_empty({0});
  integral_impl(in, nullptr, &out, fuse ? &dx : nullptr);
  return {out, dx};
}

at::Tensor integral_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, int64_t reg_max) {
  const char* op = "gflops.integral_backward";
  DistInputs in = integral_prepare(pred, reg_max, op);
  at::Tensor g = check_grad_shape(grad, in.pred, in.out_shape, op);
  at::Tensor out = cpu::empty_output_like(in.pred);
  integral_impl(in, &g, nullptr, &out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> decode_impl(const at::Tensor& pred, const at::Tensor& points,
                                               const at::Tensor& strides, int64_t reg_max,
                                               c10::optional<at::ArrayRef<double>> max_shape, bool with_grad) {
  const char* op = "gflops.decode_distribution";
  DecodeInputs in = decode_prepare(pred, points, strides, reg_max, max_shape, op);
  check_strides(in.strides, op);
  at::Tensor out = at::empty(in.dist.out_shape, in.dist.pred.options());
  at::Tensor dside = with_grad ? cpu::empty_output_like(in.dist.pred) : at::Tensor();
  GF_DISPATCH(in.dist.pred.scalar_type(), "decode_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.dist.pred.data_ptr<scalar_t>();
    const acc_t* pts = in.points.data_ptr<acc_t>();
    const acc_t* st = in.strides.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    scalar_t* ds = with_grad ? dside.data_ptr<scalar_t>() : nullptr;
    const int n1 = in.dist.n1;
    const int64_t boxes = in.dist.rows / 4, A = in.anchors;
    const DecodeGeom geo{A, in.clamp, in.max_h, in.max_w};
    at::parallel_for(0, boxes, cpu::rows_per_block(4 * n1, boxes), [&](int64_t i0, int64_t i1) {
      cpu::with_common_n1(n1, [&](auto n) {
        constexpr int N1 = decltype(n)::value;
        if (with_grad)
          decode_rows<N1, true, scalar_t, acc_t>(p, pts, st, nullptr, geo, n1, i0, i1, o, ds);
        else
          decode_rows<N1, false, scalar_t, acc_t>(p, pts, st, nullptr, geo, n1, i0, i1, o, ds);
      });
    });
  });
  return {out, dside};
}

at::Tensor decode_cpu(const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides,
                      int64_t reg_max, c10::optional<at::ArrayRef<double>> max_shape) {
  return std::get<0>(decode_impl(pred, points, strides, reg_max, max_shape, false));
}

std::tuple<at::Tensor, at::Tensor> decode_and_grad_cpu(const at::Tensor& pred, const at::Tensor& points,
                                                       const at::Tensor& strides, int64_t reg_max,
                                                       c10::optional<at::ArrayRef<double>> max_shape) {
  const bool fuse = cpu::fuses_gradient(pred);
  auto r = decode_impl(pred, points, strides, reg_max, max_shape, fuse);
  if (!fuse) std::get<1>(r) = pred.new_empty({0});
  return r;
}

at::Tensor decode_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& points,
                               const at::Tensor& strides, int64_t reg_max,
                               c10::optional<at::ArrayRef<double>> max_shape) {
  const char* op = "gflops.decode_distribution_backward";
  DecodeInputs in = decode_prepare(pred, points, strides, reg_max, max_shape, op);
  at::Tensor g = check_grad_shape(grad, in.dist.pred, in.dist.out_shape, op);
  at::Tensor out = cpu::empty_output_like(in.dist.pred);
  GF_DISPATCH(in.dist.pred.scalar_type(), "decode_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.dist.pred.data_ptr<scalar_t>();
    const acc_t* pts = in.points.data_ptr<acc_t>();
    const acc_t* st = in.strides.data_ptr<acc_t>();
    const acc_t* gp = g.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int n1 = in.dist.n1;
    const int64_t boxes = in.dist.rows / 4, A = in.anchors;
    at::parallel_for(0, boxes, cpu::rows_per_block(4 * n1, boxes), [&](int64_t i0, int64_t i1) {
      cpu::with_common_n1(n1, [&](auto n) {
        decode_rows<decltype(n)::value, true, scalar_t, acc_t>(p, pts, st, gp, DecodeGeom{A, in.clamp, in.max_h, in.max_w},
                                                               n1, i0, i1, nullptr, o);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_branch_cpu(
    const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
    const at::Tensor& weight, int64_t reg_max) {
  const char* op = "gflops.gfl_box_branch";
  BoxBranchInputs in = box_branch_prepare(pred, points, strides, gt_boxes, weight, reg_max, op);
  check_strides(in.dec.strides, op);
  const auto opts = in.dec.dist.pred.options().dtype(acc_dtype(in.dec.dist.pred));
  const int64_t P = in.dec.anchors;
  at::Tensor score = at::empty({P}, opts);
  at::Tensor giou_sum, dfl_sum;
  GF_DISPATCH(in.dec.dist.pred.scalar_type(), "box_branch_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.dec.dist.pred.data_ptr<scalar_t>();
    const acc_t* pts = in.dec.points.data_ptr<acc_t>();
    const acc_t* st = in.dec.strides.data_ptr<acc_t>();
    const acc_t* gt = in.gt.data_ptr<acc_t>();
    const acc_t* w = in.weight.data_ptr<acc_t>();
    acc_t* sc = score.data_ptr<acc_t>();
    const int n1 = in.dec.dist.n1;
    auto sums = cpu::blocked_sums<acc_t, 2>(P, cpu::rows_per_block(4 * n1), [&](int64_t i0, int64_t i1, acc_t* s) {
      branch_rows<scalar_t, acc_t>(p, pts, st, gt, w, n1, i0, i1, s, sc);
    });
    giou_sum = at::scalar_tensor(sums[0], opts);
    dfl_sum = at::scalar_tensor(sums[1], opts);
  });
  return {giou_sum, dfl_sum, score};
}

at::Tensor box_branch_backward_cpu(const at::Tensor& grad_giou, const at::Tensor& grad_dfl, const at::Tensor& pred,
                                   const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
                                   const at::Tensor& weight, int64_t reg_max) {
  const char* op = "gflops.gfl_box_branch_backward";
  BoxBranchInputs in = box_branch_prepare(pred, points, strides, gt_boxes, weight, reg_max, op);
  const at::Tensor gg = check_grad_shape(grad_giou, in.dec.dist.pred, {}, op, "grad_giou");
  const at::Tensor gd = check_grad_shape(grad_dfl, in.dec.dist.pred, {}, op, "grad_dfl");
  at::Tensor out = cpu::empty_output_like(in.dec.dist.pred);
  GF_DISPATCH(in.dec.dist.pred.scalar_type(), "box_branch_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.dec.dist.pred.data_ptr<scalar_t>();
    const acc_t* pts = in.dec.points.data_ptr<acc_t>();
    const acc_t* st = in.dec.strides.data_ptr<acc_t>();
    const acc_t* gt = in.gt.data_ptr<acc_t>();
    const acc_t* w = in.weight.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int n1 = in.dec.dist.n1;
    const acc_t g_giou = *gg.data_ptr<acc_t>(), g_dfl = *gd.data_ptr<acc_t>();
    at::parallel_for(0, in.dec.anchors, cpu::rows_per_block(4 * n1), [&](int64_t i0, int64_t i1) {
      branch_grad_rows<scalar_t, acc_t>(p, pts, st, gt, w, g_giou, g_dfl, n1, i0, i1, o);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) {
  m.impl("integral", &integral_cpu);
  m.impl("integral_backward", &integral_backward_cpu);
  m.impl("integral_and_grad", &integral_and_grad_cpu);
  m.impl("decode_distribution", &decode_cpu);
  m.impl("decode_distribution_backward", &decode_backward_cpu);
  m.impl("decode_distribution_and_grad", &decode_and_grad_cpu);
  m.impl("gfl_box_branch", &box_branch_cpu);
  m.impl("gfl_box_branch_backward", &box_branch_backward_cpu);
}

}  // namespace gflops
