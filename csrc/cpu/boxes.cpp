// CPU kernels of the box family: box_iou (pairwise, aligned) and the GIoU loss.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../box_checks.h"
#include "../common/box.h"
#include "reduce.h"

namespace gflops {
namespace {

template <typename scalar_t, typename acc_t> gf::Box4<acc_t> box_at(const scalar_t* p) {
  return gf::Box4<acc_t>{gf::cvt<acc_t>(p[0]), gf::cvt<acc_t>(p[1]), gf::cvt<acc_t>(p[2]), gf::cvt<acc_t>(p[3])};
}

// One row of the pairwise matrix: box a against every box of b.
template <typename scalar_t, typename acc_t, bool GIOU>
GF_CPU_CLONES void iou_row(const scalar_t* a, const scalar_t* b, int64_t m, acc_t eps, scalar_t* out) {
  const gf::Box4<acc_t> ba = box_at<scalar_t, acc_t>(a);
#pragma omp simd
  for (int64_t j = 0; j < m; ++j)
    out[j] = gf::cvt<scalar_t>(gf::iou_or_giou(ba, box_at<scalar_t, acc_t>(b + 4 * j), eps, GIOU));
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
      at::parallel_for(0, in.n, cpu::kBlockElems, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          o[i] = gf::cvt<scalar_t>(gf::iou_or_giou(box_at<scalar_t, acc_t>(a + 4 * i),
                                                   box_at<scalar_t, acc_t>(b + 4 * i), e, in.giou));
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

template <typename acc_t> acc_t weight_at(const acc_t* w, int64_t i) { return w ? w[i] : acc_t(1); }

at::Tensor giou_loss_cpu(const at::Tensor& pred, const at::Tensor& target,
                         const c10::optional<at::Tensor>& weight, double eps, c10::string_view reduction) {
  const char* op = "gflops.giou_loss";
  LossInputs in = giou_loss_prepare(pred, target, weight, eps, std::string(reduction), op);
  const auto opts = in.pred.options().dtype(acc_dtype(in.pred));
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "giou_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* t = in.target.data_ptr<acc_t>();
    const acc_t* w = in.weight.defined() ? in.weight.data_ptr<acc_t>() : nullptr;
    const acc_t e = static_cast<acc_t>(eps);
    auto loss_at = [&](int64_t i) {
      const auto o = gf::overlap(box_at<scalar_t, acc_t>(p + 4 * i), gf::load_box(t + 4 * i), e);
      return (acc_t(1) - o.giou) * weight_at(w, i);
    };
    if (!in.sum) {
      out = at::empty({in.rows}, opts);
      acc_t* o = out.data_ptr<acc_t>();
      at::parallel_for(0, in.rows, cpu::kBlockElems, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) o[i] = loss_at(i);
      });
      return;
    }
    auto total = cpu::blocked_sums<acc_t, 1>(in.rows, cpu::kBlockElems, [&](int64_t i0, int64_t i1, acc_t* s) {
      for (int64_t i = i0; i < i1; ++i) s[0] += loss_at(i);
    });
    out = at::scalar_tensor(total[0], opts);
  });
  return out;
}

at::Tensor giou_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                                  const c10::optional<at::Tensor>& weight, double eps,
                                  c10::string_view reduction) {
  const char* op = "gflops.giou_loss_backward";
  LossInputs in = giou_loss_prepare(pred, target, weight, eps, std::string(reduction), op);
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
    at::parallel_for(0, in.rows, cpu::kBlockElems, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const acc_t gi = -gp[in.sum ? 0 : i] * weight_at(w, i);  // loss = 1 - giou
        const auto d = gf::overlap_grad_a(box_at<scalar_t, acc_t>(p + 4 * i), gf::load_box(t + 4 * i), e, true, gi);
        o[4 * i + 0] = gf::cvt<scalar_t>(d.x1);
        o[4 * i + 1] = gf::cvt<scalar_t>(d.y1);
        o[4 * i + 2] = gf::cvt<scalar_t>(d.x2);
        o[4 * i + 3] = gf::cvt<scalar_t>(d.y2);
      }
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
