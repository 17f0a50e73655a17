// Autograd of the differentiable ops, registered in C++ for a library L (gflops,
// or the emulated twin gflops_emu): L::ns names it, L::fuses says whether its
// CPU kernels return the gradient from the forward sweep (*_and_grad ops).
//
// Why C++ and not torch.library.register_autograd: a Python autograd kernel
// runs on every call, gradient or not, and its Function costs more again, so
// at detector batch sizes a loss call was 3x its ATen counterpart in host
// time (benchmarks/bench_host.py). torch::autograd::Function is the public
// C++ API; the backward of every op is still an op of its own, so
// torch.compile and opcheck see the same graph as before.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/SavedTensorHooks.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace gflops {
namespace autograd_detail {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;
using OptT = c10::optional<Tensor>;
using Shape = c10::optional<at::ArrayRef<double>>;
using T2 = std::tuple<Tensor, Tensor>;
using OptD = c10::optional<double>;

template <class Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* ns, const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string(ns) + "::" + name).c_str(), "").typed<Sig>();
}

// The handle of L's op `name`, looked up once per library.
#define GF_OP(name, Sig)                                                                 \
  ([]() -> const c10::TypedOperatorHandle<Sig>& {                                        \
    static const auto handle = ::gflops::autograd_detail::find_op<Sig>(L::ns, name);     \
    return handle;                                                                       \
  }())

// Runs the ops below autograd (their backend kernels).
using Below = at::AutoDispatchBelowADInplaceOrView;

// Whether an op on `t` may be recorded rather than run: fake and functional tensors (torch.compile,
// opcheck), tensor subclasses, batched gradients, or a dispatch mode (make_fx). There the fused
// buffer is scaled by ops, out of place, never on its raw data.
inline bool traced(const Tensor& t) {
  return at::isTensorSubclassLike(t) || c10::impl::dispatch_mode_enabled() ||
         t.key_set().has(c10::DispatchKey::Functionalize);
}

// Whether L's CPU kernels return the gradient of a float32/float64 pred from the forward sweep
// (a 16-bit buffer would round the unscaled gradient, underflowing what a loss scaler multiplies up).
// Not under saved-tensor hooks (checkpointing, offloading): the buffer is held, not saved, so they
// could not move it; the backward op then runs as on the other backends.
template <class L>
bool fuses(const Tensor& pred) {
  const bool wide = pred.scalar_type() == at::kFloat || pred.scalar_type() == at::kDouble;
  return L::fuses && pred.device().is_cpu() && wide && !at::SavedTensorDefaultHooks::get_hooks().has_value();
}

// d out / d pred from a fused forward, for a unit incoming gradient per output element. Eager: held
// on ctx (not saved) so that the one backward that uses it scales it in place and drops it, one
// logits-sized buffer in all; it therefore bypasses saved-tensor hooks. Traced: scaled out of place.
// `visible`: the caller holds the buffer too (the *_and_grad op was called), so it is not scaled in place.
inline void keep_fused(AutogradContext* ctx, const Tensor& pred, const Tensor& fused, bool visible) {
  const bool fuse = fused.defined() && fused.sizes() == pred.sizes();
  ctx->saved_data["fuse"] = fuse;
  ctx->saved_data["visible"] = visible;
  if (fuse) ctx->saved_data["fused"] = fused;
  ctx->set_materialize_grads(false);  // else autograd hands the backward a zero gradient for the buffer
}

// buf *= grad (0-dim, on the CPU) / divisor. A small buffer is scaled on its raw data: the quotient
// and the products are the ones ATen's div and mul_ would round (one IEEE operation each, in the
// buffer's dtype), without the two ops' dispatch, which at detector batch sizes costs more than
// the loss itself. A large one goes to mul_, whose vector loop is faster than this one.
constexpr int64_t kRawScaleMax = 1 << 14;
inline Tensor scale_in_place(Tensor buf, const Tensor& grad, OptD divisor) {
  if (buf.numel() > kRawScaleMax) return buf.mul_(divisor.has_value() ? grad.div(*divisor) : grad);
  AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "gflops_scale_fused", [&] {
    scalar_t s = *grad.const_data_ptr<scalar_t>();
    if (divisor.has_value()) s = s / static_cast<scalar_t>(*divisor);
    scalar_t* p = buf.data_ptr<scalar_t>();
    for (int64_t i = 0, n = buf.numel(); i < n; ++i) p[i] *= s;
  });
  return buf;
}

// The gradient from the buffer kept by keep_fused, scaled by `grad` (divided by `divisor` first, as the
// backward op would for "mean"); undefined when the op's backward must run (nothing fused, or
// create_graph: the buffer is a constant to autograd). `recompute` gives the buffer again for a
// second backward (retain_graph): the same sweep, so the same bits.
template <class F>
Tensor from_fused(AutogradContext* ctx, Tensor grad, F recompute, OptD divisor = OptD()) {
  if (!ctx->saved_data["fuse"].toBool() || at::GradMode::is_enabled()) return Tensor();
  c10::IValue& held = ctx->saved_data["fused"];
  Tensor fused = held.isTensor() ? held.toTensor() : recompute();
  held = c10::IValue();
  const bool eager = !traced(fused) && !traced(grad) && !ctx->saved_data["visible"].toBool();
  if (eager && grad.dim() == 0 && fused.is_cpu() && grad.is_cpu() && grad.scalar_type() == fused.scalar_type() &&
      fused.is_contiguous())
    return scale_in_place(fused, grad, divisor);  // a reduced loss: one scale for all, no ATen op
  if (divisor.has_value()) grad = grad.div(*divisor);
  // The explicit last size: an empty output leaves -1 ambiguous.
  auto per_output = [&](const Tensor& buf) {
    std::vector<int64_t> shape(grad.sizes().begin(), grad.sizes().end());
    shape.push_back(buf.numel() / std::max<int64_t>(grad.numel(), 1));
    return buf.view(shape);
  };
  if (!eager) return per_output(fused).mul(grad.unsqueeze(-1)).view(fused.sizes());
  if (grad.dim() == 0) return fused.mul_(grad);
  per_output(fused).mul_(grad.unsqueeze(-1));
  return fused;
}

inline void keep_reduction(AutogradContext* ctx, c10::string_view reduction, OptD avg) {
  ctx->saved_data["reduction"] = std::string(reduction);
  ctx->saved_data["avg_factor"] = avg;
}

inline OptD kept_avg_factor(AutogradContext* ctx) {
  const c10::IValue& v = ctx->saved_data["avg_factor"];
  return v.isNone() ? OptD() : OptD(v.toDouble());
}

// What "mean" divides by (the ops' rule, csrc/checks.cpp parse_reduction); none for "none" and "sum".
inline OptD mean_divisor(AutogradContext* ctx, int64_t rows) {
  if (ctx->saved_data["reduction"].toStringRef() != "mean") return OptD();
  const OptD avg = kept_avg_factor(ctx);
  return avg.has_value() ? avg : OptD(static_cast<double>(std::max<int64_t>(rows, 1)));
}

// The forward of Fn, an op with a *_and_grad twin: the twin where asked (`both`, returning its buffer)
// or where L fuses, else the plain op; the buffer is kept for the backward (keep_fused).
template <class L, class Fn, class... A>
variable_list fusable_forward(AutogradContext* ctx, bool both, const Tensor& pred, const A&... args) {
  Below below;
  Tensor out, fused;
  if (both || fuses<L>(pred))
    std::tie(out, fused) = Fn::fused_op().call(pred, args...);
  else
    out = Fn::plain_op().call(pred, args...);
  keep_fused(ctx, pred, fused, both);
  if (!both) return {out};
  ctx->mark_non_differentiable({fused});
  return {out, fused};
}

inline bool needs(const Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool needs(const OptT& t) { return t.has_value() && needs(*t); }
template <class T>
bool needs(const T&) {  // the non-tensor arguments
  return false;
}

// Whether a call records a node: without one the Autograd kernel goes straight to the backend.
template <class... Ts>
bool wants_grad(const Ts&... ts) {
  return at::GradMode::is_enabled() && (needs(ts) || ...);
}

inline variable_list grads_for_pred(Tensor g, size_t n_inputs) {
  variable_list out(n_inputs);
  out[0] = std::move(g);
  return out;
}

// ---- Quality Focal Loss: pred, label, score, weight?, beta, reduction ----
template <class L>
struct Qfl : torch::autograd::Function<Qfl<L>> {
  using Sig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptT&, double, c10::string_view, OptD);
  using FusedSig = T2(const Tensor&, const Tensor&, const Tensor&, const OptT&, double, c10::string_view, OptD);
  using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptT&, double,
                        c10::string_view, OptD);
  static constexpr size_t kInputs = 8;
  static const c10::TypedOperatorHandle<Sig>& plain_op() { return GF_OP("quality_focal_loss", Sig); }
  static const c10::TypedOperatorHandle<FusedSig>& fused_op() {
    return GF_OP("quality_focal_loss_and_grad", FusedSig);
  }

  // both: called as the *_and_grad op (returns the buffer too).
  static variable_list forward(AutogradContext* ctx, const Tensor& pred, const Tensor& label, const Tensor& score,
                               const OptT& weight, double beta, c10::string_view reduction, OptD avg, bool both) {
    ctx->save_for_backward({pred, label, score, weight.value_or(Tensor())});
    ctx->saved_data["beta"] = beta;
    keep_reduction(ctx, reduction, avg);
    return fusable_forward<L, Qfl>(ctx, both, pred, label, score, weight, beta, reduction, avg);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(kInputs);
    auto s = ctx->get_saved_variables();
    const OptT weight = s[3].defined() ? OptT(s[3]) : OptT();
    const double beta = ctx->saved_data["beta"].toDouble();
    const std::string red = ctx->saved_data["reduction"].toStringRef();
    const OptD avg = kept_avg_factor(ctx);
    Tensor g = from_fused(ctx, grads[0], [&] {
      Below below;
      return std::get<1>(fused_op().call(s[0], s[1], s[2], weight, beta, red, avg));
    }, mean_divisor(ctx, s[0].size(0)));
    if (!g.defined())
      g = GF_OP("quality_focal_loss_backward", BwdSig).call(grads[0], s[0], s[1], s[2], weight, beta, red, avg);
    return grads_for_pred(g, kInputs);
  }
};

// ---- Distribution Focal Loss: pred, target, weight?, reduction ----
template <class L>
struct Dfl : torch::autograd::Function<Dfl<L>> {
  using Sig = Tensor(const Tensor&, const Tensor&, const OptT&, c10::string_view, OptD);
  using FusedSig = T2(const Tensor&, const Tensor&, const OptT&, c10::string_view, OptD);
  using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptT&, c10::string_view, OptD);
  static constexpr size_t kInputs = 6;
  static const c10::TypedOperatorHandle<Sig>& plain_op() { return GF_OP("distribution_focal_loss", Sig); }
  static const c10::TypedOperatorHandle<FusedSig>& fused_op() {
    return GF_OP("distribution_focal_loss_and_grad", FusedSig);
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& pred, const Tensor& target, const OptT& weight,
                               c10::string_view reduction, OptD avg, bool both) {
    ctx->save_for_backward({pred, target, weight.value_or(Tensor())});
    keep_reduction(ctx, reduction, avg);
    return fusable_forward<L, Dfl>(ctx, both, pred, target, weight, reduction, avg);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(kInputs);
    auto s = ctx->get_saved_variables();
    const OptT weight = s[2].defined() ? OptT(s[2]) : OptT();
    const std::string red = ctx->saved_data["reduction"].toStringRef();
    const OptD avg = kept_avg_factor(ctx);
    Tensor g = from_fused(ctx, grads[0], [&] {
      Below below;
      return std::get<1>(fused_op().call(s[0], s[1], weight, red, avg));
    }, mean_divisor(ctx, s[0].size(0)));
    if (!g.defined())
      g = GF_OP("distribution_focal_loss_backward", BwdSig).call(grads[0], s[0], s[1], weight, red, avg);
    return grads_for_pred(g, kInputs);
  }
};

// ---- integral: pred, reg_max ----
template <class L>
struct Integral : torch::autograd::Function<Integral<L>> {
  using Sig = Tensor(const Tensor&, int64_t);
  using FusedSig = T2(const Tensor&, int64_t);
  using BwdSig = Tensor(const Tensor&, const Tensor&, int64_t);
  static constexpr size_t kInputs = 3;
  static const c10::TypedOperatorHandle<Sig>& plain_op() { return GF_OP("integral", Sig); }
  static const c10::TypedOperatorHandle<FusedSig>& fused_op() {
    return GF_OP("integral_and_grad", FusedSig);
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& pred, int64_t reg_max, bool both) {
    ctx->save_for_backward({pred});
    ctx->saved_data["reg_max"] = reg_max;
    return fusable_forward<L, Integral>(ctx, both, pred, reg_max);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(kInputs);
    auto s = ctx->get_saved_variables();
    const int64_t reg_max = ctx->saved_data["reg_max"].toInt();
    Tensor g = from_fused(ctx, grads[0], [&] {
      Below below;
      return std::get<1>(fused_op().call(s[0], reg_max));
    });
    if (!g.defined()) g = GF_OP("integral_backward", BwdSig).call(grads[0], s[0], reg_max);
    return grads_for_pred(g, kInputs);
  }
};

inline c10::IValue keep_shape(const Shape& shape) {
  return shape.has_value() ? c10::IValue(shape->vec()) : c10::IValue();
}

// ---- decode_distribution: pred, points, strides, reg_max, max_shape? ----
template <class L>
struct Decode : torch::autograd::Function<Decode<L>> {
  using Sig = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, Shape);
  using FusedSig = T2(const Tensor&, const Tensor&, const Tensor&, int64_t, Shape);
  using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, Shape);
  static constexpr size_t kInputs = 6;
  static const c10::TypedOperatorHandle<Sig>& plain_op() { return GF_OP("decode_distribution", Sig); }
  static const c10::TypedOperatorHandle<FusedSig>& fused_op() {
    return GF_OP("decode_distribution_and_grad", FusedSig);
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& pred, const Tensor& points, const Tensor& strides,
                               int64_t reg_max, Shape max_shape, bool both) {
    ctx->save_for_backward({pred, points, strides});
    ctx->saved_data["reg_max"] = reg_max;
    ctx->saved_data["max_shape"] = keep_shape(max_shape);
    return fusable_forward<L, Decode>(ctx, both, pred, points, strides, reg_max, max_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(kInputs);
    auto s = ctx->get_saved_variables();
    const int64_t reg_max = ctx->saved_data["reg_max"].toInt();
    const c10::IValue& kept = ctx->saved_data["max_shape"];
    std::vector<double> dims = kept.isNone() ? std::vector<double>() : kept.toDoubleVector();
    const Shape max_shape = kept.isNone() ? Shape() : Shape(at::ArrayRef<double>(dims));
    Tensor g = from_fused(ctx, grads[0], [&] {
      Below below;
      return std::get<1>(fused_op().call(s[0], s[1], s[2], reg_max, max_shape));
    });
    if (!g.defined())
      g = GF_OP("decode_distribution_backward", BwdSig).call(grads[0], s[0], s[1], s[2], reg_max, max_shape);
    return grads_for_pred(g, kInputs);
  }
};

// ---- GIoU loss: pred, target, weight?, eps, reduction ----
template <class L>
struct Giou : torch::autograd::Function<Giou<L>> {
  using Sig = Tensor(const Tensor&, const Tensor&, const OptT&, double, c10::string_view, OptD);
  using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptT&, double, c10::string_view, OptD);

  static Tensor forward(AutogradContext* ctx, const Tensor& pred, const Tensor& target, const OptT& weight, double eps,
                        c10::string_view reduction, OptD avg) {
    Below below;
    ctx->save_for_backward({pred, target, weight.value_or(Tensor())});
    ctx->saved_data["eps"] = eps;
    keep_reduction(ctx, reduction, avg);
    return GF_OP("giou_loss", Sig).call(pred, target, weight, eps, reduction, avg);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const OptT weight = s[2].defined() ? OptT(s[2]) : OptT();
    Tensor g = GF_OP("giou_loss_backward", BwdSig)
                   .call(grads[0], s[0], s[1], weight, ctx->saved_data["eps"].toDouble(),
                         ctx->saved_data["reduction"].toStringRef(), kept_avg_factor(ctx));
    return grads_for_pred(g, 6);
  }
};

// ---- the GFL box branch: (giou_sum, dfl_sum, score); score is not differentiable ----
template <class L>
struct BoxBranch : torch::autograd::Function<BoxBranch<L>> {
  using Sig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                  const Tensor&, int64_t);
  using BwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, int64_t);

  static variable_list forward(AutogradContext* ctx, const Tensor& pred, const Tensor& points, const Tensor& strides,
                               const Tensor& gt_boxes, const Tensor& weight, int64_t reg_max) {
    Below below;
    auto r = GF_OP("gfl_box_branch", Sig).call(pred, points, strides, gt_boxes, weight, reg_max);
    ctx->save_for_backward({pred, points, strides, gt_boxes, weight});
    ctx->saved_data["reg_max"] = reg_max;
    ctx->mark_non_differentiable({std::get<2>(r)});  // the quality score is computed from detached boxes
    ctx->set_materialize_grads(false);  // else autograd fills a zero gradient for the score every backward
    return {std::get<0>(r), std::get<1>(r), std::get<2>(r)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    for (int i = 0; i < 2; ++i)  // a loss the caller left out: its 0-dim zero (the backward takes it in any dtype)
      if (!grads[i].defined()) grads[i] = at::zeros({}, s[0].options());
    Tensor g = GF_OP("gfl_box_branch_backward", BwdSig)
                   .call(grads[0], grads[1], s[0], s[1], s[2], s[3], s[4], ctx->saved_data["reg_max"].toInt());
    return grads_for_pred(g, 6);
  }
};

// ---- the AutoAssign loss: gradients to cls, obj, dist, mu and sigma ----
// Totals = false: autoassign_loss_terms, (loss_pos, loss_neg, prior_sum) per image (B,), any_inside, then t
// and the GT stats for the backward. Totals = true: autoassign_loss_totals, the whole loss as three 0-dim
// totals, then t, the GT stats and image_stats for the backward.
template <class L, bool Totals>
struct AutoAssign : torch::autograd::Function<AutoAssign<L, Totals>> {
  using Sig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, const Tensor&, at::IntArrayRef);
  using TermsBwd = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, at::IntArrayRef);
  using TotalsBwd = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const Tensor&, at::IntArrayRef);
  static constexpr int kSaved = Totals ? 3 : 2;  // the outputs the backward takes: the last kSaved

  static const c10::TypedOperatorHandle<Sig>& op() {
    if constexpr (Totals) return GF_OP("autoassign_loss_totals", Sig);
    else return GF_OP("autoassign_loss_terms", Sig);
  }

  static variable_list forward(AutogradContext* ctx, const Tensor& cls, const Tensor& obj, const Tensor& dist,
                               const Tensor& points, const Tensor& strides, const Tensor& gt_boxes,
                               const Tensor& gt_labels, const Tensor& gt_valid, const Tensor& mu, const Tensor& sigma,
                               at::IntArrayRef level_shapes) {
    Below below;
    auto r = op().call(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes);
    variable_list out = {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r),
                         std::get<5>(r)};
    variable_list saved = {cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma};
    saved.insert(saved.end(), out.end() - kSaved, out.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["level_shapes"] = level_shapes.vec();
    ctx->mark_non_differentiable({out[3], out[4], out[5]});
    ctx->set_materialize_grads(false);  // else autograd fills a zero gradient for each of outputs 3-5 every backward
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    for (int i = 0; i < 3; ++i)  // materialised: zeros, (B,) or 0-dim, in the distances' dtype
      if (!grads[i].defined())
        grads[i] = Totals ? at::zeros({}, s[2].options()) : at::zeros({s[0].size(0)}, s[2].options());
    const std::vector<int64_t> levels = ctx->saved_data["level_shapes"].toIntVector();
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> r;
    if constexpr (Totals)
      r = GF_OP("autoassign_loss_totals_backward", TotalsBwd)
              .call(grads[0], grads[1], grads[2], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                    s[11], s[12], levels);
    else
      r = GF_OP("autoassign_loss_terms_backward", TermsBwd)
              .call(grads[0], grads[1], grads[2], s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                    s[11], levels);
    variable_list out(11);
    out[0] = std::get<0>(r);
    out[1] = std::get<1>(r);
    out[2] = std::get<2>(r);
    out[8] = std::get<3>(r);
    out[9] = std::get<4>(r);
    return out;
  }

  // The Autograd kernel: straight to the backend when no gradient is wanted.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> kernel(
      const Tensor& cls, const Tensor& obj, const Tensor& dist, const Tensor& points, const Tensor& strides,
      const Tensor& gt_boxes, const Tensor& gt_labels, const Tensor& gt_valid, const Tensor& mu, const Tensor& sigma,
      at::IntArrayRef level_shapes) {
    if (!wants_grad(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma)) {
      Below below;
      return op().call(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes);
    }
    auto o = AutoAssign::apply(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                               level_shapes);
    return std::make_tuple(o[0], o[1], o[2], o[3], o[4], o[5]);
  }
};

// The Autograd kernels of Fn's op (`plain`) and of its *_and_grad twin (`both`): straight to the
// backend when no gradient is wanted (no node, no saved state), else Fn; and the twin's default
// kernel (`composite`) for the backends that do not fuse: the plain op and an empty buffer.
template <class Fn, class Sig = typename Fn::Sig>
struct FusableKernels;
template <class Fn, class... A>
struct FusableKernels<Fn, Tensor(const Tensor&, A...)> {
  static Tensor plain(const Tensor& pred, A... args) {
    if (wants_grad(pred, args...)) return Fn::apply(pred, args..., false)[0];
    Below below;
    return Fn::plain_op().call(pred, args...);
  }
  static T2 both(const Tensor& pred, A... args) {
    if (!wants_grad(pred, args...)) {
      Below below;
      return Fn::fused_op().call(pred, args...);
    }
    auto o = Fn::apply(pred, args..., true);
    return T2(o[0], o[1]);
  }
  static T2 composite(const Tensor& pred, A... args) {
    return T2(Fn::plain_op().call(pred, args...), pred.new_empty({0}));
  }
};

template <class Fn>
void fusable(torch::Library& m, const std::string& name) {
  m.impl(name.c_str(), &FusableKernels<Fn>::plain);
  m.impl((name + "_and_grad").c_str(), &FusableKernels<Fn>::both);
}

}  // namespace autograd_detail

// Registers the Autograd kernels of L's differentiable ops, and the default
// (CompositeExplicitAutograd) kernels of its *_and_grad ops: the plain op and
// an empty buffer, for every backend that does not fuse.
//
// register_loss_autograd: the loss and decoding family (QFL, DFL, integral, decode, each with its
// *_and_grad op), which is all that the Triton twin defines.
template <class L>
void register_loss_autograd(torch::Library& m) {
  using namespace autograd_detail;
  fusable<Qfl<L>>(m, "quality_focal_loss");
  fusable<Dfl<L>>(m, "distribution_focal_loss");
  fusable<Integral<L>>(m, "integral");
  fusable<Decode<L>>(m, "decode_distribution");
}

template <class L>
void register_autograd(torch::Library& m) {
  using namespace autograd_detail;
  register_loss_autograd<L>(m);
  m.impl("giou_loss", [](const Tensor& p, const Tensor& t, const OptT& w, double eps, c10::string_view r, OptD avg) {
    if (wants_grad(p, t, w)) return Giou<L>::apply(p, t, w, eps, r, avg);
    Below below;
    return GF_OP("giou_loss", typename Giou<L>::Sig).call(p, t, w, eps, r, avg);
  });
  m.impl("gfl_box_branch", [](const Tensor& p, const Tensor& pts, const Tensor& st, const Tensor& gt,
                              const Tensor& w, int64_t reg_max) {
    if (!wants_grad(p, pts, st, gt, w)) {
      Below below;
      return GF_OP("gfl_box_branch", typename BoxBranch<L>::Sig).call(p, pts, st, gt, w, reg_max);
    }
    auto o = BoxBranch<L>::apply(p, pts, st, gt, w, reg_max);
    return std::make_tuple(o[0], o[1], o[2]);
  });
  m.impl("autoassign_loss_terms", &AutoAssign<L, false>::kernel);
  m.impl("autoassign_loss_totals", &AutoAssign<L, true>::kernel);
}

template <class L>
void register_fused_defaults(torch::Library& m) {
  using namespace autograd_detail;
  m.impl("quality_focal_loss_and_grad", &FusableKernels<Qfl<L>>::composite);
  m.impl("distribution_focal_loss_and_grad", &FusableKernels<Dfl<L>>::composite);
  m.impl("integral_and_grad", &FusableKernels<Integral<L>>::composite);
  m.impl("decode_distribution_and_grad", &FusableKernels<Decode<L>>::composite);
}

}  // namespace gflops
