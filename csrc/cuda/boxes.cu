// CUDA registrations of the box family: shared checks, then the torch-free
// entry points of boxes_kernels.cuh on the current stream.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../box_checks.h"
#include "boxes_kernels.cuh"
#include "launch.h"

namespace gflops {
namespace {

namespace gc = gf::cuda;

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode, bool aligned,
                        double eps) {
  const char* op = "gflops.box_iou";
  BoxPairInputs in = box_iou_prepare(boxes1, boxes2, std::string(mode), aligned, eps, op);
  TORCH_CHECK(aligned || (in.batch <= 65535 && (in.n + gc::kIouRows - 1) / gc::kIouRows <= 65535), op,
              ": pairwise CUDA box_iou supports up to 65535 images and ", 65535 * gc::kIouRows,
              " boxes in boxes1, got ", in.batch, " and ", in.n);
  const DeviceGuard guard(in.a.device());
  at::Tensor out = at::empty(in.out_shape, in.a.options());
  GF_CUDA_CHECK(gc::box_iou(kernel_dtype(in.a.scalar_type()), in.a.data_ptr(), in.b.data_ptr(), in.batch, in.n, in.m,
                             aligned, in.giou, eps, out.data_ptr(), num_sms(in.a.get_device()),
                             current_stream()));
  return out;
}

at::Tensor giou_loss_cuda(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                          double eps, c10::string_view reduction, c10::optional<double> avg_factor) {
  LossInputs in =
      giou_loss_prepare(pred, target, weight, eps, std::string(reduction), avg_factor, "gflops.giou_loss");
  const DeviceGuard guard(in.pred.device());
  const int sms = num_sms(in.pred.get_device());
  auto opts = in.pred.options().dtype(acc_dtype(in.pred));
  at::Tensor out = in.sum ? at::empty({}, opts) : at::empty({in.rows}, opts);
  at::Tensor partials = at::empty({in.sum ? gc::giou_loss_blocks(in.rows, sms) : 0}, opts);
  GF_CUDA_CHECK(gc::giou_loss(kernel_dtype(in.pred.scalar_type()), in.pred.data_ptr(), in.target.data_ptr(),
                               opt_ptr(in.weight), in.rows, eps, in.sum, in.mean, in.divisor, out.data_ptr(),
                               partials.data_ptr(), sms, current_stream()));
  return out;
}

at::Tensor giou_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                                   const c10::optional<at::Tensor>& weight, double eps, c10::string_view reduction,
                                   c10::optional<double> avg_factor) {
  const char* op = "gflops.giou_loss_backward";
  LossInputs in = giou_loss_prepare(pred, target, weight, eps, std::string(reduction), avg_factor, op);
  at::Tensor g = check_loss_grad(grad, in, op, /*apply_mean=*/false);
  const DeviceGuard guard(in.pred.device());
  at::Tensor out = at::empty_like(in.pred);
  GF_CUDA_CHECK(gc::giou_loss_backward(kernel_dtype(in.pred.scalar_type()), in.pred.data_ptr(), in.target.data_ptr(),
                                        opt_ptr(in.weight), g.data_ptr(), !in.sum, in.mean, in.divisor, in.rows, eps,
                                        out.data_ptr(),
                                        num_sms(in.pred.get_device()), current_stream()));
  return out;
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("box_iou", &box_iou_cuda);
  m.impl("giou_loss", &giou_loss_cuda);
  m.impl("giou_loss_backward", &giou_loss_backward_cuda);
}

}  // namespace gflops
