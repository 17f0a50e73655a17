// CUDA registrations of the QFL/DFL family: shared checks, then the
// torch-free entry points of losses_kernels.cuh on the current stream.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../checks.h"
#include "launch.h"
#include "losses_kernels.cuh"

namespace gflops {
namespace {

namespace gc = gf::cuda;

gc::LossArgs make_args(const LossInputs& in) {
  gc::LossArgs a;
  a.dtype = kernel_dtype(in.pred.scalar_type());
  a.pred = in.pred.data_ptr();
  a.label = in.index.defined() ? in.index.data_ptr<int64_t>() : nullptr;
  a.target = in.target.data_ptr();
  a.weight = opt_ptr(in.weight);
  a.rows = in.rows;
  a.cols = in.cols;
  const int64_t width = 16 / static_cast<int64_t>(in.pred.element_size());
  a.vectorized = reinterpret_cast<uintptr_t>(a.pred) % 16 == 0 && in.cols % width == 0;
  a.num_sms = num_sms(in.pred.get_device());
  a.mean = in.mean;  // folded into the kernels (gc::mean_scale): no division launched
  a.divisor = in.divisor;
  return a;
}

at::Tensor loss_output(const LossInputs& in) {
  auto opts = in.pred.options().dtype(acc_dtype(in.pred));
  return in.sum ? at::empty({}, opts) : at::empty({in.rows}, opts);
}

at::Tensor qfl_forward_cuda(const at::Tensor& pred, const at::Tensor& label, const at::Tensor& score,
                            const c10::optional<at::Tensor>& weight, double beta,
                            c10::string_view reduction, c10::optional<double> avg_factor) {
  const char* op = "gflops.quality_focal_loss";
  LossInputs in = qfl_prepare(pred, label, score, weight, beta, std::string(reduction), avg_factor, op);
  if (validation_enabled()) qfl_check_values(in, op);
  const DeviceGuard guard(in.pred.device());
  gc::LossArgs a = make_args(in);
  a.beta = beta;
  at::Tensor out = loss_output(in);
  at::Tensor partials = at::empty({in.sum ? gc::qfl_forward_blocks(a) : 0}, out.options());
  GF_CUDA_CHECK(gc::qfl_forward(a, in.sum, out.data_ptr(), partials.data_ptr(),
                                 current_stream()));
  return out;
}

at::Tensor qfl_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& label,
                             const at::Tensor& score, const c10::optional<at::Tensor>& weight,
                             double beta, c10::string_view reduction, c10::optional<double> avg_factor) {
  const char* op = "gflops.quality_focal_loss_backward";
  LossInputs in = qfl_prepare(pred, label, score, weight, beta, std::string(reduction), avg_factor, op);
  at::Tensor g = check_loss_grad(grad, in, op, /*apply_mean=*/false);
  const DeviceGuard guard(in.pred.device());
  gc::LossArgs a = make_args(in);
  a.beta = beta;
  a.grad = g.data_ptr();
  a.grad_per_row = !in.sum;
  at::Tensor out = at::empty_like(in.pred);
  GF_CUDA_CHECK(gc::qfl_backward(a, out.data_ptr(), current_stream()));
  return out;
}

at::Tensor dfl_forward_cuda(const at::Tensor& pred, const at::Tensor& target,
                            const c10::optional<at::Tensor>& weight, c10::string_view reduction,
                            c10::optional<double> avg_factor) {
  const char* op = "gflops.distribution_focal_loss";
  LossInputs in = dfl_prepare(pred, target, weight, std::string(reduction), avg_factor, op);
  check_rows_fit(in.cols, in.pred, in.cols - 1, op);
  if (validation_enabled()) dfl_check_values(in, op);
  const DeviceGuard guard(in.pred.device());
  gc::LossArgs a = make_args(in);
  at::Tensor out = loss_output(in);
  at::Tensor partials = at::empty({in.sum ? gc::dfl_forward_blocks(a) : 0}, out.options());
  GF_CUDA_CHECK(gc::dfl_forward(a, in.sum, out.data_ptr(), partials.data_ptr(),
                                 current_stream()));
  return out;
}

at::Tensor dfl_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                             const c10::optional<at::Tensor>& weight, c10::string_view reduction,
                             c10::optional<double> avg_factor) {
  const char* op = "gflops.distribution_focal_loss_backward";
  LossInputs in = dfl_prepare(pred, target, weight, std::string(reduction), avg_factor, op);
  check_rows_fit(in.cols, in.pred, in.cols - 1, op);
  at::Tensor g = check_loss_grad(grad, in, op, /*apply_mean=*/false);
  const DeviceGuard guard(in.pred.device());
  gc::LossArgs a = make_args(in);
  a.grad = g.data_ptr();
  a.grad_per_row = !in.sum;
  at::Tensor out = at::empty_like(in.pred);
  GF_CUDA_CHECK(gc::dfl_backward(a, out.data_ptr(), current_stream()));
  return out;
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("quality_focal_loss", &qfl_forward_cuda);
  m.impl("quality_focal_loss_backward", &qfl_backward_cuda);
  m.impl("distribution_focal_loss", &dfl_forward_cuda);
  m.impl("distribution_focal_loss_backward", &dfl_backward_cuda);
}

}  // namespace gflops
