// CPU kernels of the box family: box_iou (pairwise, aligned) and the GIoU loss.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../box_checks.h"
#include "../common/box.h"
#include "reduce.h"
#include "tiles.h"

namespace gflops {
namespace {

template <typename scalar_t, typename acc_t> GF_HD gf::Box4<acc_t> box_at(const scalar_t* p) {
  return gf::Box4<acc_t>{gf::cvt<acc_t>(p[0]), gf::cvt<acc_t>(p[1]), gf::cvt<acc_t>(p[2]), gf::cvt<acc_t>(p[3])};
}

// One row of the pairwise matrix: box a against every box of b.
template <typename scalar_t, typename acc_t, bool GIOU>
GF_CPU_CLONES_EXACT void iou_row(const scalar_t* a, const scalar_t* b, int64_t m, acc_t eps, scalar_t* out) {
  const gf::Box4<acc_t> ba = box_at<scalar_t, acc_t>(a);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j)
    out[j] = gf::cvt<scalar_t>(gf::iou_or_giou(ba, box_at<scalar_t, acc_t>(b + 4 * j), eps, GIOU));
}

template <typename scalar_t, typename acc_t, bool GIOU>
GF_CPU_CLONES_EXACT void aligned_rows(const scalar_t* a, const scalar_t* b, int64_t i0, int64_t i1, acc_t eps,
                                      scalar_t* out) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i)
    out[i] = gf::cvt<scalar_t>(gf::iou_or_giou(box_at<scalar_t, acc_t>(a + 4 * i), box_at<scalar_t, acc_t>(b + 4 * i),
                                               eps, GIOU));
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                       bool aligned, double eps) {
  const char* op = "gflops.box_iou";
  BoxPairInputs in = box_iou_prepare(boxes1, boxes2, std::string(mode), aligned, eps, op);
  at::Tensor out = at::empty(in.out_shape, in.a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.a.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = in.a.data_ptr<scalar_t>();
    const scalar_t* b = in.b.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    if (aligned) {
      at::parallel_for(0, in.n, cpu::rows_per_block(8, in.n), [&](int64_t i0, int64_t i1) {
        if (in.giou) aligned_rows<scalar_t, acc_t, true>(a, b, i0, i1, e, o);
        else aligned_rows<scalar_t, acc_t, false>(a, b, i0, i1, e, o);
      });
      return;
    }
    const int64_t n = in.n, m = in.m;
    at::parallel_for(0, in.batch * n, cpu::rows_per_block(m), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* bb = b + (r / n) * m * 4;
        if (in.giou) iou_row<scalar_t, acc_t, true>(a + 4 * r, bb, m, e, o + r * m);
        else iou_row<scalar_t, acc_t, false>(a + 4 * r, bb, m, e, o + r * m);
      }
    });
  });
  return out;
}

// The weighted 1 - GIoU of boxes [i0, i1) to out[i - i0], vectorised across
// the boxes (HAS_W: w is set; a branch per box would stop the vectoriser).
template <bool HAS_W, typename scalar_t, typename acc_t>
GF_CPU_CLONES_EXACT void giou_loss_rows(const scalar_t* p, const acc_t* t, const acc_t* w, acc_t eps, int64_t i0,
                                  int64_t i1, acc_t* out) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const auto o = gf::overlap(box_at<scalar_t, acc_t>(p + 4 * i), gf::load_box(t + 4 * i), eps);
    out[i - i0] = HAS_W ? (acc_t(1) - o.giou) * w[i] : acc_t(1) - o.giou;
  }
}

template <typename scalar_t, typename acc_t>
void giou_loss_rows(const scalar_t* p, const acc_t* t, const acc_t* w, acc_t eps, int64_t i0, int64_t i1,
                    acc_t* out) {
  if (w) giou_loss_rows<true>(p, t, w, eps, i0, i1, out);
  else giou_loss_rows<false>(p, t, w, eps, i0, i1, out);
}

// Sum of the losses of boxes [i0, i1): chunks of kChunk summed in
// cpu::lane_sum's fixed order, the chunks in order, so the bits depend on
// neither the vector width of the CPU nor the thread count.
template <typename scalar_t, typename acc_t>
acc_t giou_loss_sum(const scalar_t* p, const acc_t* t, const acc_t* w, acc_t eps, int64_t i0, int64_t i1) {
  constexpr int kChunk = 256;
  acc_t buf[kChunk], total = 0;
  for (int64_t c0 = i0; c0 < i1; c0 += kChunk) {
    const int64_t c1 = std::min<int64_t>(i1, c0 + kChunk);
    giou_loss_rows<scalar_t, acc_t>(p, t, w, eps, c0, c1, buf);
    total += cpu::lane_sum(buf, static_cast<int>(c1 - c0));
  }
  return total;
}

// d loss / d pred of boxes [i0, i1) for the incoming gradient grad (per box
// with PER_ROW, else one), vectorised across the boxes.
template <bool HAS_W, bool PER_ROW, typename scalar_t, typename acc_t>
GF_CPU_CLONES_EXACT void giou_grad_rows(const scalar_t* p, const acc_t* t, const acc_t* w, const acc_t* grad, acc_t eps,
                                  int64_t i0, int64_t i1, scalar_t* o) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t g = PER_ROW ? grad[i] : grad[0];
    const acc_t gi = HAS_W ? -g * w[i] : -g;  // loss = 1 - giou
    const auto d = gf::overlap_grad_a(box_at<scalar_t, acc_t>(p + 4 * i), gf::load_box(t + 4 * i), eps, true, gi);
    o[4 * i + 0] = gf::cvt<scalar_t>(d.x1);
    o[4 * i + 1] = gf::cvt<scalar_t>(d.y1);
    o[4 * i + 2] = gf::cvt<scalar_t>(d.x2);
    o[4 * i + 3] = gf::cvt<scalar_t>(d.y2);
  }
}

at::Tensor giou_loss_cpu(const at::Tensor& pred, const at::Tensor& target,
                         const c10::optional<at::Tensor>& weight, double eps, c10::string_view reduction,
                         c10::optional<double> avg_factor) {
  const char* op = "gflops.giou_loss";
  LossInputs in = giou_loss_prepare(pred, target, weight, eps, std::string(reduction), avg_factor, op);
  const auto opts = in.pred.options().dtype(acc_dtype(in.pred));
  // Fixed blocks (a function of the shape alone), at least 16 where the boxes allow.
  const int64_t rpb = cpu::rows_per_block(8, in.rows);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "giou_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* t = in.target.data_ptr<acc_t>();
    const acc_t* w = in.weight.defined() ? in.weight.data_ptr<acc_t>() : nullptr;
    const acc_t e = static_cast<acc_t>(eps);
    if (!in.sum) {
      out = at::empty({in.rows}, opts);
      acc_t* o = out.data_ptr<acc_t>();
      at::parallel_for(0, in.rows, rpb, [&](int64_t i0, int64_t i1) {
        giou_loss_rows<scalar_t, acc_t>(p, t, w, e, i0, i1, o + i0);
      });
      return;
    }
    auto total = cpu::blocked_sums<acc_t, 1>(in.rows, rpb, [&](int64_t i0, int64_t i1, acc_t* s) {
      s[0] += giou_loss_sum<scalar_t, acc_t>(p, t, w, e, i0, i1);
    });
    out = at::scalar_tensor(in.mean ? total[0] / static_cast<acc_t>(in.divisor) : total[0], opts);
  });
  return out;
}

at::Tensor giou_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight, double eps,
                                  c10::string_view reduction, c10::optional<double> avg_factor) {
  const char* op = "gflops.giou_loss_backward";
  LossInputs in = giou_loss_prepare(pred, target, weight, eps, std::string(reduction), avg_factor, op);
  at::Tensor g = check_loss_grad(grad, in, op);
  at::Tensor out = at::empty_like(in.pred);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "giou_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* t = in.target.data_ptr<acc_t>();
    const acc_t* w = in.weight.defined() ? in.weight.data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.data_ptr<acc_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    at::parallel_for(0, in.rows, cpu::rows_per_block(8, in.rows), [&](int64_t i0, int64_t i1) {
      if (w && in.sum) giou_grad_rows<true, false>(p, t, w, gp, e, i0, i1, o);
      else if (w) giou_grad_rows<true, true>(p, t, w, gp, e, i0, i1, o);
      else if (in.sum) giou_grad_rows<false, false>(p, t, w, gp, e, i0, i1, o);
      else giou_grad_rows<false, true>(p, t, w, gp, e, i0, i1, o);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
  m.impl("giou_loss", &giou_loss_cpu);
  m.impl("giou_loss_backward", &giou_loss_backward_cpu);
}

}  // namespace gflops
