#include "checks.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace gflops {
namespace {

std::atomic<bool>& validation_flag() {
  static std::atomic<bool> flag([] {
    const char* env = std::getenv("GFLOPS_VALIDATE");
    return env != nullptr && std::strcmp(env, "") != 0 && std::strcmp(env, "0") != 0;
  }());
  return flag;
}

// A per-row side input: 1-D, one entry per row of pred, floating, same device.
at::Tensor row_vector(const at::Tensor& t, const at::Tensor& pred, const char* op,
                      const char* name) {
  check_same_device(pred, t, op, "pred", name);
  TORCH_CHECK(t.dim() == 1 && t.size(0) == pred.size(0), op, ": ", name,
              " must have shape (N,) = (", pred.size(0), ",) to match pred ", pred.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, ": ", name,
              " must be a floating tensor (float32/float64/float16/bfloat16), got ",
              t.scalar_type());
  return t.to(acc_dtype(pred)).contiguous();
}

LossInputs prepare_common(const at::Tensor& pred, const c10::optional<at::Tensor>& weight,
                          const std::string& reduction, c10::optional<double> avg_factor, const char* op,
                          const char* shape) {
  TORCH_CHECK(pred.dim() == 2, op, ": pred must be 2-D ", shape, ", got shape ", pred.sizes());
  check_float(pred, op, "pred");
  LossInputs in;
  in.pred = pred.contiguous();
  in.rows = pred.size(0);
  in.cols = pred.size(1);
  const Reduction r = parse_reduction(reduction, avg_factor, in.rows, op);
  in.sum = r.sum;
  in.mean = r.mean;
  in.divisor = r.divisor;
  if (weight.has_value() && weight->defined()) in.weight = row_vector(*weight, pred, op, "weight");
  return in;
}

constexpr const char* kScoreRule = "score must lie in [0, 1]";

std::string dfl_target_rule(int64_t n) { return "target must lie in [0, reg_max) = [0, " + std::to_string(n) + ")"; }

}  // namespace

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
}

void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* an,
                       const char* bn) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", an, " is on ", a.device(), " but ", bn, " is on ",
              b.device(), "; all inputs must be on one device");
}

void fail_on_first(const at::Tensor& bad, const at::Tensor& values, const char* op,
                   const char* what) {
  if (!bad.any().item<bool>()) return;
  fail_at(values, bad.nonzero()[0][0].item<int64_t>(), op, what);
}

void fail_at(const at::Tensor& values, int64_t i, const char* op, const char* what) {
  TORCH_CHECK(false, op, ": ", what, ", got ", values[i].item<double>(), " at index ", i);
  std::abort();  // not reached: TORCH_CHECK(false) throws
}

bool validation_enabled() { return validation_flag().load(std::memory_order_relaxed); }
void set_validation(bool enabled) { validation_flag().store(enabled); }

Reduction parse_reduction(const std::string& reduction, c10::optional<double> avg_factor, int64_t rows,
                          const char* op) {
  TORCH_CHECK(reduction == "none" || reduction == "sum" || reduction == "mean", op,
              ": reduction must be 'none', 'sum' or 'mean', got '", reduction, "'");
  TORCH_CHECK(!avg_factor.has_value() || reduction == "mean", op,
              ": avg_factor is only used with reduction='mean', got reduction='", reduction, "'");
  Reduction r;
  r.sum = reduction != "none";
  r.mean = reduction == "mean";
  if (r.mean) r.divisor = avg_factor.has_value() ? *avg_factor : static_cast<double>(std::max<int64_t>(rows, 1));
  return r;
}

at::ScalarType acc_dtype(const at::Tensor& pred) {
  return pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

LossInputs qfl_prepare(const at::Tensor& pred, const at::Tensor& label, const at::Tensor& score,
                       const c10::optional<at::Tensor>& weight, double beta,
                       const std::string& reduction, c10::optional<double> avg_factor, const char* op) {
  LossInputs in = prepare_common(pred, weight, reduction, avg_factor, op, "(N, C)");
  check_same_device(pred, label, op, "pred", "label");
  TORCH_CHECK(label.dim() == 1 && label.size(0) == in.rows, op, ": label must have shape (N,) = (",
              in.rows, ",) to match pred ", pred.sizes(), ", got ", label.sizes());
  TORCH_CHECK(label.scalar_type() == at::kLong, op, ": label must be int64, got ",
              label.scalar_type());
  TORCH_CHECK(std::isfinite(beta) && beta >= 0, op, ": beta must be finite and >= 0, got ", beta);
  TORCH_CHECK(in.cols < (int64_t(1) << 31), op, ": pred has too many classes per row (", in.cols,
              "; at most 2^31 - 1)");
  in.index = label.contiguous();
  in.target = row_vector(score, pred, op, "score");
  return in;
}

void qfl_check_values(const LossInputs& in, const char* op) {
  // Only positive rows (label in [0, C)) use their score; background rows' are ignored.
  const at::Tensor& s = in.target;
  const at::Tensor positive = in.index.ge(0) & in.index.lt(in.cols);
  fail_on_first((s.lt(0) | s.gt(1) | s.isnan()) & positive, s, op, kScoreRule);
}

void qfl_fail_score(const LossInputs& in, int64_t i, const char* op) { fail_at(in.target, i, op, kScoreRule); }

LossInputs dfl_prepare(const at::Tensor& pred, const at::Tensor& target,
                       const c10::optional<at::Tensor>& weight, const std::string& reduction,
                       c10::optional<double> avg_factor, const char* op) {
  LossInputs in = prepare_common(pred, weight, reduction, avg_factor, op, "(M, reg_max + 1)");
  TORCH_CHECK(in.cols >= 2, op, ": pred must have reg_max + 1 >= 2 bins per row, got ", in.cols);
  TORCH_CHECK(in.cols <= (1 << 20), op, ": pred has too many bins per row (", in.cols, ")");
  in.target = row_vector(target, pred, op, "target");
  return in;
}

void dfl_check_values(const LossInputs& in, const char* op) {
  const at::Tensor& t = in.target;
  const int64_t n = in.cols - 1;
  fail_on_first(t.lt(0) | t.ge(static_cast<double>(n)) | t.isnan(), t, op, dfl_target_rule(n).c_str());
}

void dfl_fail_target(const LossInputs& in, int64_t i, const char* op) {
  fail_at(in.target, i, op, dfl_target_rule(in.cols - 1).c_str());
}

at::Tensor check_grad_shape(const at::Tensor& grad, const at::Tensor& pred, at::IntArrayRef shape,
                            const char* op, const char* name) {
  check_same_device(pred, grad, op, "pred", name);
  TORCH_CHECK(grad.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", grad.sizes());
  return grad.to(acc_dtype(pred)).contiguous();
}

at::Tensor check_loss_grad(const at::Tensor& grad, const LossInputs& in, const char* op, bool apply_mean) {
  check_same_device(in.pred, grad, op, "pred", "grad");
  if (in.sum) {
    TORCH_CHECK(grad.numel() == 1, op, ": grad of a 'sum' loss must be a scalar, got ",
                grad.sizes());
  } else {
    TORCH_CHECK(grad.dim() == 1 && grad.size(0) == in.rows, op, ": grad must have shape (",
                in.rows, ",), got ", grad.sizes());
  }
  at::Tensor g = grad.to(acc_dtype(in.pred)).contiguous();
  return in.mean && apply_mean ? g.div(in.divisor) : g;
}

}  // namespace gflops
