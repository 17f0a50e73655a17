// CPU kernels of the QFL/DFL family: at::parallel_for over fixed row blocks.
//
// Sums are taken per fixed block of rows (sized from the row length only,
// never from the thread count) and the block partials are added in order,
// so results are bitwise identical whatever the number of threads.
// The row loops are compiled for several x86-64 levels (target_clones) and
// picked at load time, so one binary runs anywhere and uses AVX2/AVX-512
// where the CPU has it.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <memory>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../common/dfl.h"
#include "../common/qfl.h"
#include "huge_pages.h"
#include "reduce.h"
#include "tiles.h"

namespace gflops {
namespace {

using cpu::rows_per_block;

template <typename acc_t>
acc_t row_weight(const acc_t* weight, int64_t r) { return weight ? weight[r] : acc_t(1); }

// Sum of the weighted QFL of rows [r0, r1); writes each row's loss when
// row_out is set and, with WITH_GRAD, w * d loss / d pred of every element to
// grad: one sweep of exponentials and logarithms for the loss and its gradient.
// Rows whose score is invalid go to `bad`. Columns are indexed in int (C <
// 2^31 is checked), so the label compare vectorises as 32-bit lanes.
template <typename scalar_t, typename acc_t, bool BETA2, bool WITH_GRAD>
GF_CPU_CLONES acc_t qfl_rows(const scalar_t* pred, const int64_t* label, const acc_t* score, const acc_t* weight,
                             int C, acc_t beta, int64_t r0, int64_t r1, acc_t* row_out, scalar_t* grad,
                             cpu::FirstBad* bad) {
  // Without per-row output the losses add up per column across the rows (one
  // vector add per vector of logits) and the columns once at the end: a
  // per-row horizontal sum costs as much as a fifth of the row's arithmetic.
  std::vector<acc_t> cols(row_out ? 0 : C, acc_t(0));
  acc_t* col = cols.data();
  acc_t total = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* x = pred + r * C;
    scalar_t* g = WITH_GRAD ? grad + r * C : nullptr;
    const int64_t lab64 = label[r];
    const acc_t sc = score[r];
    if (!gf::qfl_score_ok(lab64, C, sc)) bad->report(r);
    const int lab = lab64 >= 0 && lab64 < C ? static_cast<int>(lab64) : -1;
    const acc_t w = row_weight(weight, r);
    if (!row_out) {
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const auto lg = gf::qfl_loss_grad<acc_t, BETA2>(gf::cvt<acc_t>(x[c]), gf::qfl_target(c, lab, sc), beta);
        col[c] += w * lg.loss;
        if constexpr (WITH_GRAD) g[c] = gf::cvt<scalar_t>(w * lg.grad);
      }
      continue;
    }
    acc_t acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int c = 0; c < C; ++c) {
      const auto lg = gf::qfl_loss_grad<acc_t, BETA2>(gf::cvt<acc_t>(x[c]), gf::qfl_target(c, lab, sc), beta);
      acc += lg.loss;
      if constexpr (WITH_GRAD) g[c] = gf::cvt<scalar_t>(w * lg.grad);
    }
    acc *= w;
    row_out[r] = acc;
    total += acc;
  }
  for (int c = 0; c < static_cast<int>(cols.size()); ++c) total += col[c];
  return total;
}

template <typename scalar_t, typename acc_t, bool BETA2>
GF_CPU_CLONES void qfl_grad_rows(const scalar_t* pred, const int64_t* label, const acc_t* score,
                                 const acc_t* weight, const acc_t* grad, bool grad_per_row,
                                 int64_t C, acc_t beta, int64_t r0, int64_t r1, scalar_t* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* x = pred + r * C;
    scalar_t* g = out + r * C;
    const int64_t lab = label[r];
    const acc_t sc = score[r];
    const acc_t scale = grad[grad_per_row ? r : 0] * row_weight(weight, r);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      g[c] = gf::cvt<scalar_t>(
          scale * gf::qfl_grad<acc_t, BETA2>(gf::cvt<acc_t>(x[c]), gf::qfl_target(c, lab, sc), beta));
  }
}

// The weighted DFL of the nr rows at row t0 (NR, when not 0, is nr known at
// compile time: full tiles, whose loops across the rows then vectorise):
// losses to loss[], with WITH_GRAD w * d loss / d pred to e, which holds the
// rows' exponentials (rows_exp). The per-row scalars (split, log, loss) run as
// vector loops across the rows. Rows whose target is invalid go to `bad`.
template <int N1, int NR, bool WITH_GRAD, typename scalar_t, typename acc_t>
GF_HD void dfl_tile(const scalar_t* x, const acc_t* target, const acc_t* weight, int n1_rt, int nr_rt,
                    int64_t t0, acc_t* e, acc_t* loss, cpu::FirstBad* bad) {
  constexpr int kT = cpu::kTile;
  const int n1 = N1 ? N1 : n1_rt;
  const int nr = NR ? NR : nr_rt;
  acc_t m[kT], s[kT], lse[kT], inv[kT], wl[kT], wr[kT], w[kT];
  int li[kT];
  cpu::rows_exp<N1>(x, n1, nr, e, m, s);
  int any_bad = 0;
#pragma omp simd reduction(| : any_bad)
  for (int j = 0; j < nr; ++j) {
    const acc_t tj = target[t0 + j];
    any_bad |= !gf::dfl_target_ok(tj, n1 - 1);
    const auto sp = gf::dfl_split(tj, n1 - 1);
    li[j] = sp.l;
    wl[j] = sp.wl;
    wr[j] = sp.wr;
  }
  if (any_bad)
    for (int j = 0; j < nr; ++j)
      if (!gf::dfl_target_ok(target[t0 + j], n1 - 1)) bad->report(t0 + j);
#pragma omp simd
  for (int j = 0; j < nr; ++j) {
    lse[j] = m[j] + gf::glog(s[j]);
    inv[j] = acc_t(1) / s[j];
    w[j] = row_weight(weight, t0 + j);
  }
#pragma omp simd
  for (int j = 0; j < nr; ++j) {
    const gf::DflSplit<acc_t> sp{li[j], wl[j], wr[j]};
    const scalar_t* xr = x + j * n1;
    loss[j] = gf::dfl_loss_from_lse(lse[j], gf::cvt<acc_t>(xr[li[j]]), gf::cvt<acc_t>(xr[li[j] + 1]), sp) * w[j];
  }
  if constexpr (WITH_GRAD) {
    for (int j = 0; j < nr; ++j) {
      acc_t* g = e + j * n1;
      const gf::DflSplit<acc_t> sp{li[j], wl[j], wr[j]};
      const acc_t iv = inv[j], wj = w[j];
#pragma omp simd
      for (int k = 0; k < n1; ++k) g[k] = wj * gf::dfl_grad_from_p(g[k] * iv, k, sp);
    }
  }
}

// Sum of the weighted DFL of rows [r0, r1) (each row's loss to row_out when
// set); with WITH_GRAD also w * d loss / d pred to grad, whose exponentials
// are those of the loss: rows_exp writes them straight into grad (without,
// into a buffer, so that the loss has the same bits with and without the
// gradient). N1: the row length when it is one of the common ones, else 0.
template <typename scalar_t, typename acc_t, bool WITH_GRAD, int N1>
GF_CPU_CLONES acc_t dfl_rows(const scalar_t* pred, const acc_t* target, const acc_t* weight, int n1_rt,
                             int64_t r0, int64_t r1, acc_t* row_out, scalar_t* grad, cpu::FirstBad* bad) {
  constexpr int kT = cpu::kTile;
  const int n1 = N1 ? N1 : n1_rt;
  // Without the gradient the exponentials go to a buffer of one tile, or of the block when it is shorter.
  const int64_t buf_rows = WITH_GRAD ? 0 : std::min<int64_t>(kT, r1 - r0);
  std::unique_ptr<acc_t[]> buf(buf_rows ? new acc_t[buf_rows * n1] : nullptr);
  acc_t total = 0;
  for (int64_t t0 = r0; t0 < r1; t0 += kT) {
    const int nr = static_cast<int>(std::min<int64_t>(kT, r1 - t0));
    const scalar_t* x = pred + t0 * n1;
    acc_t* e;
    if constexpr (WITH_GRAD) e = grad + t0 * n1;  // fused only where scalar_t is acc_t
    else e = buf.get();
    acc_t loss[kT];
    if (nr == kT) dfl_tile<N1, kT, WITH_GRAD>(x, target, weight, n1, nr, t0, e, loss, bad);
    else dfl_tile<N1, 0, WITH_GRAD>(x, target, weight, n1, nr, t0, e, loss, bad);
    for (int j = 0; j < nr; ++j) total += loss[j];
    if (row_out)
      for (int j = 0; j < nr; ++j) row_out[t0 + j] = loss[j];
  }
  return total;
}

template <typename scalar_t, typename acc_t>
GF_CPU_CLONES void dfl_grad_rows(const scalar_t* pred, const acc_t* target, const acc_t* weight,
                                 const acc_t* grad, bool grad_per_row, int n1, int64_t r0, int64_t r1,
                                 scalar_t* out) {
  for (int64_t t0 = r0; t0 < r1; t0 += cpu::kTile) {
    const int nr = static_cast<int>(std::min<int64_t>(cpu::kTile, r1 - t0));
    acc_t lse[cpu::kTile];
    cpu::tile_row_stats(pred + t0 * n1, n1, nr, lse, static_cast<acc_t*>(nullptr));
    for (int j = 0; j < nr; ++j) {
      const int64_t r = t0 + j;
      const scalar_t* x = pred + r * n1;
      scalar_t* g = out + r * n1;
      const auto sp = gf::dfl_split(target[r], n1 - 1);
      const acc_t scale = grad[grad_per_row ? r : 0] * row_weight(weight, r);
      const acc_t lj = lse[j];
#pragma omp simd
      for (int k = 0; k < n1; ++k)
        g[k] = gf::cvt<scalar_t>(scale * gf::dfl_grad_from_lse(gf::cvt<acc_t>(x[k]), k, lj, sp));
    }
  }
}

// Runs `rows_fn(r0, r1, row_out)` over fixed blocks; returns (N,) or the ordered sum.
template <typename acc_t, typename F>
at::Tensor reduce_rows(const LossInputs& in, F rows_fn) {
  const auto opts = in.pred.options().dtype(acc_dtype(in.pred));
  const int64_t rpb = rows_per_block(in.cols, in.rows);
  if (!in.sum) {
    at::Tensor out = at::empty({in.rows}, opts);
    acc_t* o = out.data_ptr<acc_t>();
    at::parallel_for(0, in.rows, rpb, [&](int64_t r0, int64_t r1) { rows_fn(r0, r1, o); });
    return out;
  }
  auto total = cpu::blocked_sums<acc_t, 1>(in.rows, rpb, [&](int64_t r0, int64_t r1, acc_t* sums) {
    sums[0] += rows_fn(r0, r1, nullptr);
  });
  // "mean": the division PyTorch would make of the summed tensor, in its dtype.
  return at::scalar_tensor(in.mean ? total[0] / static_cast<acc_t>(in.divisor) : total[0], opts);
}

template <typename acc_t>
const acc_t* opt_ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<acc_t>() : nullptr; }

// The QFL forward; with_grad also returns w * d loss / d pred from the same sweep.
std::tuple<at::Tensor, at::Tensor> qfl_forward_impl(const at::Tensor& pred, const at::Tensor& label,
                                                    const at::Tensor& score, const c10::optional<at::Tensor>& weight,
                                                    double beta, c10::string_view reduction,
                                                    c10::optional<double> avg_factor, bool with_grad) {
  const char* op = "gflops.quality_focal_loss";
  LossInputs in = qfl_prepare(pred, label, score, weight, beta, std::string(reduction), avg_factor, op);
  cpu::FirstBad bad;
  at::Tensor out;
  at::Tensor grad = with_grad ? cpu::empty_output_like(in.pred) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "qfl_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const int64_t* lab = in.index.data_ptr<int64_t>();
    const acc_t* sc = in.target.data_ptr<acc_t>();
    const acc_t* w = opt_ptr<acc_t>(in.weight);
    const acc_t b = static_cast<acc_t>(beta);
    const int C = static_cast<int>(in.cols);
    scalar_t* g = with_grad ? grad.data_ptr<scalar_t>() : nullptr;
    out = reduce_rows<acc_t>(in, [&](int64_t r0, int64_t r1, acc_t* o) {
      if (with_grad)
        return beta == 2.0 ? qfl_rows<scalar_t, acc_t, true, true>(p, lab, sc, w, C, b, r0, r1, o, g, &bad)
                           : qfl_rows<scalar_t, acc_t, false, true>(p, lab, sc, w, C, b, r0, r1, o, g, &bad);
      return beta == 2.0 ? qfl_rows<scalar_t, acc_t, true, false>(p, lab, sc, w, C, b, r0, r1, o, g, &bad)
                         : qfl_rows<scalar_t, acc_t, false, false>(p, lab, sc, w, C, b, r0, r1, o, g, &bad);
    });
  });
  if (bad.any()) qfl_fail_score(in, bad.index(), op);
  return {out, grad};
}

at::Tensor qfl_forward_cpu(const at::Tensor& pred, const at::Tensor& label, const at::Tensor& score,
                           const c10::optional<at::Tensor>& weight, double beta, c10::string_view reduction,
                           c10::optional<double> avg_factor) {
  return std::get<0>(qfl_forward_impl(pred, label, score, weight, beta, reduction, avg_factor, false));
}

// float32/float64 only: a float16/bfloat16 buffer would round the unscaled gradient
// (underflowing what a loss scaler multiplies up later); there the backward op runs.
std::tuple<at::Tensor, at::Tensor> qfl_and_grad_cpu(const at::Tensor& pred, const at::Tensor& label,
                                                    const at::Tensor& score, const c10::optional<at::Tensor>& weight,
                                                    double beta, c10::string_view reduction,
                                                    c10::optional<double> avg_factor) {
  const bool fuse = cpu::fuses_gradient(pred);
  auto r = qfl_forward_impl(pred, label, score, weight, beta, reduction, avg_factor, fuse);
  if (!fuse) std::get<1>(r) = pred.new_empty({0});
  return r;
}

at::Tensor qfl_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& label,
                            const at::Tensor& score, const c10::optional<at::Tensor>& weight,
                            double beta, c10::string_view reduction, c10::optional<double> avg_factor) {
  const char* op = "gflops.quality_focal_loss_backward";
  LossInputs in = qfl_prepare(pred, label, score, weight, beta, std::string(reduction), avg_factor, op);
  at::Tensor g = check_loss_grad(grad, in, op);
  at::Tensor out = cpu::empty_output_like(in.pred);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "qfl_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const int64_t* lab = in.index.data_ptr<int64_t>();
    const acc_t* sc = in.target.data_ptr<acc_t>();
    const acc_t* w = opt_ptr<acc_t>(in.weight);
    const acc_t* gp = g.data_ptr<acc_t>();
    const acc_t b = static_cast<acc_t>(beta);
    const int64_t C = in.cols;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.rows, rows_per_block(C, in.rows), [&](int64_t r0, int64_t r1) {
      if (beta == 2.0)
        qfl_grad_rows<scalar_t, acc_t, true>(p, lab, sc, w, gp, !in.sum, C, b, r0, r1, o);
      else
        qfl_grad_rows<scalar_t, acc_t, false>(p, lab, sc, w, gp, !in.sum, C, b, r0, r1, o);
    });
  });
  return out;
}

// The DFL forward; with_grad also returns w * d loss / d pred from the same sweep.
std::tuple<at::Tensor, at::Tensor> dfl_forward_impl(const at::Tensor& pred, const at::Tensor& target,
                                                    const c10::optional<at::Tensor>& weight,
                                                    c10::string_view reduction, c10::optional<double> avg_factor,
                                                    bool with_grad) {
  const char* op = "gflops.distribution_focal_loss";
  LossInputs in = dfl_prepare(pred, target, weight, std::string(reduction), avg_factor, op);
  cpu::FirstBad bad;
  at::Tensor out;
  at::Tensor grad = with_grad ? cpu::empty_output_like(in.pred) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "dfl_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* t = in.target.data_ptr<acc_t>();
    const acc_t* w = opt_ptr<acc_t>(in.weight);
    const int n1 = static_cast<int>(in.cols);
    scalar_t* g = with_grad ? grad.data_ptr<scalar_t>() : nullptr;
    out = reduce_rows<acc_t>(in, [&](int64_t r0, int64_t r1, acc_t* o) {
      auto run = [&](auto n1_const) {
        constexpr int N1 = decltype(n1_const)::value;
        if constexpr (std::is_same_v<scalar_t, acc_t>)  // fuses_gradient: float32/float64 only
          if (with_grad) return dfl_rows<scalar_t, acc_t, true, N1>(p, t, w, n1, r0, r1, o, g, &bad);
        return dfl_rows<scalar_t, acc_t, false, N1>(p, t, w, n1, r0, r1, o, g, &bad);
      };
      return cpu::with_common_n1(n1, run);
    });
  });
  if (bad.any()) dfl_fail_target(in, bad.index(), op);
  return {out, grad};
}

at::Tensor dfl_forward_cpu(const at::Tensor& pred, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight, c10::string_view reduction,
                           c10::optional<double> avg_factor) {
  return std::get<0>(dfl_forward_impl(pred, target, weight, reduction, avg_factor, false));
}

// float32/float64 only, as qfl_and_grad_cpu.
std::tuple<at::Tensor, at::Tensor> dfl_and_grad_cpu(const at::Tensor& pred, const at::Tensor& target,
                                                    const c10::optional<at::Tensor>& weight,
                                                    c10::string_view reduction, c10::optional<double> avg_factor) {
  const bool fuse = cpu::fuses_gradient(pred);
  auto r = dfl_forward_impl(pred, target, weight, reduction, avg_factor, fuse);
  if (!fuse) std::get<1>(r) = pred.new_empty({0});
  return r;
}

at::Tensor dfl_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
                            const c10::optional<at::Tensor>& weight, c10::string_view reduction,
                            c10::optional<double> avg_factor) {
  const char* op = "gflops.distribution_focal_loss_backward";
  LossInputs in = dfl_prepare(pred, target, weight, std::string(reduction), avg_factor, op);
  at::Tensor g = check_loss_grad(grad, in, op);
  at::Tensor out = cpu::empty_output_like(in.pred);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.pred.scalar_type(), "dfl_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = in.pred.data_ptr<scalar_t>();
    const acc_t* t = in.target.data_ptr<acc_t>();
    const acc_t* w = opt_ptr<acc_t>(in.weight);
    const acc_t* gp = g.data_ptr<acc_t>();
    const int n1 = static_cast<int>(in.cols);
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, in.rows, rows_per_block(n1, in.rows), [&](int64_t r0, int64_t r1) {
      dfl_grad_rows<scalar_t, acc_t>(p, t, w, gp, !in.sum, n1, r0, r1, o);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gflops, CPU, m) {
  m.impl("quality_focal_loss", &qfl_forward_cpu);
  m.impl("quality_focal_loss_backward", &qfl_backward_cpu);
  m.impl("quality_focal_loss_and_grad", &qfl_and_grad_cpu);
  m.impl("distribution_focal_loss", &dfl_forward_cpu);
  m.impl("distribution_focal_loss_backward", &dfl_backward_cpu);
  m.impl("distribution_focal_loss_and_grad", &dfl_and_grad_cpu);
}

}  // namespace gflops
