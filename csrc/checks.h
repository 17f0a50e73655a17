// Argument checking shared by the CPU and CUDA implementations: one place
// per op family, so both backends reject the same inputs with the same text.
#pragma once

#include <ATen/ATen.h>
#include <string>

namespace gflops {

// One switch for the whole library: value checks on CUDA cost a host sync,
// so they run there only when this is on (CPU always checks values).
bool validation_enabled();
void set_validation(bool enabled);

// A loss op's reduction: "none", "sum", or "mean" (the sum over the rows divided by
// avg_factor where given, else by max(rows, 1)), as reduction and avg_factor of the
// loss ops' schemas; anything else is an error.
struct Reduction {
  bool sum = false;     // one scalar out ("sum" or "mean")
  bool mean = false;
  double divisor = 1;   // "mean": what the sum is divided by
};
Reduction parse_reduction(const std::string& reduction, c10::optional<double> avg_factor, int64_t rows,
                          const char* op);

// A loss op's inputs made contiguous, side tensors cast to the accumulation
// dtype (float32, or float64 for float64 logits).
struct LossInputs {
  at::Tensor pred;    // (N, C) logits
  at::Tensor index;   // QFL: label (N,) int64; unused by DFL
  at::Tensor target;  // QFL: score (N,); DFL: target (N,)
  at::Tensor weight;  // (N,) or undefined
  int64_t rows = 0;
  int64_t cols = 0;
  bool sum = false;
  bool mean = false;   // Reduction::mean, divisor
  double divisor = 1;
};

at::ScalarType acc_dtype(const at::Tensor& pred);

// Generic pieces the per-family checks are made of.
bool is_float_dtype(at::ScalarType t);
void check_float(const at::Tensor& t, const char* op, const char* name);
void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* an,
                       const char* bn);
// Entries of a 1-D mask that are set: fails naming the first, with its value.
void fail_on_first(const at::Tensor& bad, const at::Tensor& values, const char* op, const char* what);
// The error for entry i of `values`, in fail_on_first's words.
[[noreturn]] void fail_at(const at::Tensor& values, int64_t i, const char* op, const char* what);

LossInputs qfl_prepare(const at::Tensor& pred, const at::Tensor& label, const at::Tensor& score,
                       const c10::optional<at::Tensor>& weight, double beta,
                       const std::string& reduction, c10::optional<double> avg_factor, const char* op);
void qfl_check_values(const LossInputs& in, const char* op);
// The errors for row i, whose value the backend's own sweep found bad (the
// CPU kernels test gf::qfl_score_ok / gf::dfl_target_ok as they go).
[[noreturn]] void qfl_fail_score(const LossInputs& in, int64_t i, const char* op);

LossInputs dfl_prepare(const at::Tensor& pred, const at::Tensor& target,
                       const c10::optional<at::Tensor>& weight, const std::string& reduction,
                       c10::optional<double> avg_factor, const char* op);
void dfl_check_values(const LossInputs& in, const char* op);
[[noreturn]] void dfl_fail_target(const LossInputs& in, int64_t i, const char* op);

// An incoming gradient of a given shape on pred's device, made contiguous in
// the accumulation dtype.
at::Tensor check_grad_shape(const at::Tensor& grad, const at::Tensor& pred, at::IntArrayRef shape,
                            const char* op, const char* name = "grad");

// The incoming gradient of a loss: () for "sum" and "mean", (N,) for "none";
// for "mean" already divided by the divisor (as autograd's division would)
// unless the caller's kernel folds that in (apply_mean = false).
at::Tensor check_loss_grad(const at::Tensor& grad, const LossInputs& in, const char* op, bool apply_mean = true);

}  // namespace gflops
