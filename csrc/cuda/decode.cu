// CUDA registrations of the decoding family: shared checks, then the
// torch-free entry points of decode_kernels.cuh on the current stream.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../box_checks.h"
#include "decode_kernels.cuh"
#include "launch.h"

namespace gflops {
namespace {

namespace gc = gf::cuda;

at::Tensor integral_cuda(const at::Tensor& pred, int64_t reg_max) {
  DistInputs in = integral_prepare(pred, reg_max, "gflops.integral");
  check_rows_fit(in.n1, in.pred, reg_max, "gflops.integral");
  const DeviceGuard guard(in.pred.device());
  at::Tensor out = at::empty(in.out_shape, in.pred.options());
  GF_CUDA_CHECK(gc::integral(kernel_dtype(in.pred.scalar_type()), in.pred.data_ptr(), in.rows, in.n1, out.data_ptr(),
                              num_sms(in.pred.get_device()), current_stream()));
  return out;
}

at::Tensor integral_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, int64_t reg_max) {
  const char* op = "gflops.integral_backward";
  DistInputs in = integral_prepare(pred, reg_max, op);
  check_rows_fit(in.n1, in.pred, reg_max, op);
  at::Tensor g = check_grad_shape(grad, in.pred, in.out_shape, op);
  const DeviceGuard guard(in.pred.device());
  at::Tensor out = at::empty_like(in.pred);
  GF_CUDA_CHECK(gc::integral_backward(kernel_dtype(in.pred.scalar_type()), g.data_ptr(), in.pred.data_ptr(), in.rows,
                                       in.n1, out.data_ptr(), num_sms(in.pred.get_device()),
                                       current_stream()));
  return out;
}

gc::DecodeArgs decode_args(const DecodeInputs& in) {
  gc::DecodeArgs a;
  a.pred = in.dist.pred.data_ptr();
  a.points = in.points.data_ptr();
  a.strides = in.strides.data_ptr();
  a.boxes = in.dist.rows / 4;
  a.anchors = std::max<int64_t>(in.anchors, 1);
  a.n1 = in.dist.n1;
  a.clamp = in.clamp;
  a.max_h = in.max_h;
  a.max_w = in.max_w;
  a.dtype = kernel_dtype(in.dist.pred.scalar_type());
  a.num_sms = num_sms(in.dist.pred.get_device());
  return a;
}

at::Tensor decode_cuda(const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides, int64_t reg_max,
                       c10::optional<at::ArrayRef<double>> max_shape) {
  const char* op = "gflops.decode_distribution";
  DecodeInputs in = decode_prepare(pred, points, strides, reg_max, max_shape, op);
  check_rows_fit(in.dist.n1, in.dist.pred, reg_max, op);
  if (validation_enabled()) check_strides_positive(in.strides, op);
  const DeviceGuard guard(in.dist.pred.device());
  at::Tensor out = at::empty(in.dist.out_shape, in.dist.pred.options());
  GF_CUDA_CHECK(gc::decode(decode_args(in), out.data_ptr(), current_stream()));
  return out;
}

at::Tensor decode_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& points,
                                const at::Tensor& strides, int64_t reg_max,
                                c10::optional<at::ArrayRef<double>> max_shape) {
  const char* op = "gflops.decode_distribution_backward";
  DecodeInputs in = decode_prepare(pred, points, strides, reg_max, max_shape, op);
  check_rows_fit(in.dist.n1, in.dist.pred, reg_max, op);
  at::Tensor g = check_grad_shape(grad, in.dist.pred, in.dist.out_shape, op);
  const DeviceGuard guard(in.dist.pred.device());
  at::Tensor out = at::empty_like(in.dist.pred);
  GF_CUDA_CHECK(gc::decode_backward(decode_args(in), g.data_ptr(), out.data_ptr(), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> box_branch_cuda(const at::Tensor& pred, const at::Tensor& points,
                                                               const at::Tensor& strides, const at::Tensor& gt_boxes,
                                                               const at::Tensor& weight, int64_t reg_max) {
  const char* op = "gflops.gfl_box_branch";
  BoxBranchInputs in = box_branch_prepare(pred, points, strides, gt_boxes, weight, reg_max, op);
  check_rows_fit(in.dec.dist.n1, in.dec.dist.pred, reg_max, op, gc::kBranchLanes);
  if (validation_enabled()) check_strides_positive(in.dec.strides, op);
  const DeviceGuard guard(in.dec.dist.pred.device());
  gc::DecodeArgs a = decode_args(in.dec);
  auto opts = in.dec.dist.pred.options().dtype(acc_dtype(in.dec.dist.pred));
  at::Tensor giou = at::empty({}, opts), dfl = at::empty({}, opts), score = at::empty({in.dec.anchors}, opts);
  at::Tensor partials = at::empty({2 * gc::box_branch_blocks(a)}, opts);
  GF_CUDA_CHECK(gc::box_branch(a, in.gt.data_ptr(), in.weight.data_ptr(), giou.data_ptr(), dfl.data_ptr(),
                                score.data_ptr(), partials.data_ptr(), current_stream()));
  return {giou, dfl, score};
}

at::Tensor box_branch_backward_cuda(const at::Tensor& grad_giou, const at::Tensor& grad_dfl, const at::Tensor& pred,
                                    const at::Tensor& points, const at::Tensor& strides, const at::Tensor& gt_boxes,
                                    const at::Tensor& weight, int64_t reg_max) {
  const char* op = "gflops.gfl_box_branch_backward";
  BoxBranchInputs in = box_branch_prepare(pred, points, strides, gt_boxes, weight, reg_max, op);
  check_rows_fit(in.dec.dist.n1, in.dec.dist.pred, reg_max, op, gc::kBranchLanes);
  at::Tensor gg = check_grad_shape(grad_giou, in.dec.dist.pred, {}, op, "grad_giou");
  at::Tensor gd = check_grad_shape(grad_dfl, in.dec.dist.pred, {}, op, "grad_dfl");
  const DeviceGuard guard(in.dec.dist.pred.device());
  at::Tensor out = at::empty_like(in.dec.dist.pred);
  GF_CUDA_CHECK(gc::box_branch_backward(decode_args(in.dec), in.gt.data_ptr(), in.weight.data_ptr(), gg.data_ptr(),
                                         gd.data_ptr(), out.data_ptr(), current_stream()));
  return out;
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("integral", &integral_cuda);
  m.impl("integral_backward", &integral_backward_cuda);
  m.impl("decode_distribution", &decode_cuda);
  m.impl("decode_distribution_backward", &decode_backward_cuda);
  m.impl("gfl_box_branch", &box_branch_cuda);
  m.impl("gfl_box_branch_backward", &box_branch_backward_cuda);
}

}  // namespace gflops
