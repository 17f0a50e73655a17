// The Python module gflops._C: loading it registers the ops; the functions
// here are library switches and the shared argument checks, bound so that the
// Triton launchers (gflops/triton) reject exactly what the C++ backends reject,
// with the same text. They are not ops.
#include <torch/extension.h>

#include "assign_checks.h"
#include "autoassign_checks.h"
#include "box_checks.h"
#include "checks.h"
#include "nms_hooks.h"
#include "runtime_check.h"

namespace gflops {
void register_triton_autograd();  // autograd.cpp
}

namespace py = pybind11;

namespace {

using gflops::LossInputs;

py::tuple loss_tuple(const LossInputs& in) {
  py::object weight = in.weight.defined() ? py::cast(in.weight) : py::none();
  return py::make_tuple(in.pred, in.index, in.target, weight, in.rows, in.cols, in.sum,
                        in.mean ? py::cast(in.divisor) : py::none());
}

// The incoming gradient of a loss, checked against its prepared inputs.
at::Tensor loss_grad(const at::Tensor& grad, const at::Tensor& pred, int64_t rows, bool sum,
                     c10::optional<double> divisor, const std::string& op) {
  LossInputs in;
  in.pred = pred;
  in.rows = rows;
  in.sum = sum;
  in.mean = divisor.has_value();
  in.divisor = divisor.value_or(1.0);
  return gflops::check_loss_grad(grad, in, op.c_str());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_validation", &gflops::set_validation, "Turn value checks on CUDA inputs on or off");
  m.def("atss_census", &gflops::atss_census_cpu,
        "Test hook: how the CPU ATSS kernel found each level's nearest anchors since the last call "
        "(rank window, list window, scan, doublings; gf::AtssPath)");
  m.def("validation_enabled", &gflops::validation_enabled);
  gflops::def_nms_hooks(m);
  m.def("set_autoassign_cull", [](bool on) { gflops::autoassign_cull().store(on); },
        "Test hook: the AutoAssign kernels' culls of the GTs a tile of points walks, on (default) or off");
  m.def("register_triton_autograd", &gflops::register_triton_autograd,
        "Autograd (C++) of torch.ops.gflops_triton, once its ops are defined");
  m.def("cxx_runtime_problem", &gflops::cxx_runtime_problem,
        "'' when the library calls the process's C++ runtime, else what is wrong");
  m.def("cuda_compiled", [] {
#ifdef GFLOPS_WITH_CUDA
    return true;
#else
    return false;
#endif
  });

  // (pred, label, score, weight | None, rows, cols, sum, divisor | None), contiguous, side tensors in the
  // accumulation dtype; divisor: what "mean" divides the sum by.
  m.def("prepare_qfl", [](const at::Tensor& pred, const at::Tensor& label, const at::Tensor& score,
                          const c10::optional<at::Tensor>& weight, double beta, const std::string& reduction,
                          c10::optional<double> avg_factor, bool check_values, const std::string& op) {
    LossInputs in = gflops::qfl_prepare(pred, label, score, weight, beta, reduction, avg_factor, op.c_str());
    if (check_values) gflops::qfl_check_values(in, op.c_str());
    return loss_tuple(in);
  });
  // (pred, undefined, target, weight | None, rows, cols, sum, divisor | None).
  m.def("prepare_dfl", [](const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                          const std::string& reduction, c10::optional<double> avg_factor, bool check_values,
                          const std::string& op) {
    LossInputs in = gflops::dfl_prepare(pred, target, weight, reduction, avg_factor, op.c_str());
    if (check_values) gflops::dfl_check_values(in, op.c_str());
    return loss_tuple(in);
  });
  m.def("check_loss_grad", &loss_grad);
  m.def("check_grad_shape", [](const at::Tensor& grad, const at::Tensor& pred, std::vector<int64_t> shape,
                               const std::string& op) {
    return gflops::check_grad_shape(grad, pred, shape, op.c_str());
  });
  // (pred, rows, n1, out_shape).
  m.def("prepare_integral", [](const at::Tensor& pred, int64_t reg_max, const std::string& op) {
    gflops::DistInputs in = gflops::integral_prepare(pred, reg_max, op.c_str());
    return py::make_tuple(in.pred, in.rows, in.n1, in.out_shape);
  });
  // (pred, rows, n1, out_shape, points, strides, anchors, clamp, max_h, max_w).
  m.def("prepare_decode", [](const at::Tensor& pred, const at::Tensor& points, const at::Tensor& strides,
                             int64_t reg_max, c10::optional<std::vector<double>> max_shape, bool check_strides,
                             const std::string& op) {
    c10::optional<at::ArrayRef<double>> shape;
    if (max_shape.has_value()) shape = at::ArrayRef<double>(*max_shape);
    gflops::DecodeInputs in = gflops::decode_prepare(pred, points, strides, reg_max, shape, op.c_str());
    if (check_strides) gflops::check_strides_positive(in.strides, op.c_str());
    const gflops::DistInputs& d = in.dist;
    return py::make_tuple(d.pred, d.rows, d.n1, d.out_shape, in.points, in.strides, in.anchors, in.clamp, in.max_h,
                          in.max_w);
  });
}
