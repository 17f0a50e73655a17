// CUDA registration of the AutoAssign loss terms: shared checks, workspace,
// then the torch-free entry points of autoassign_kernels.cuh on the current
// stream. No value is read back to the host (the label check runs only with
// validation on, as the other ops' value checks do).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../autoassign_checks.h"
#include "autoassign_kernels.cuh"
#include "launch.h"

namespace gflops {
namespace {

namespace gc = gf::cuda;

gc::AutoAssignArgs args_of(const AutoAssignInputs& in, const char* op) {
  TORCH_CHECK(static_cast<int>(in.level_start.size()) <= gc::kAutoAssignMaxLevels, op, ": at most ",
              gc::kAutoAssignMaxLevels, " levels are supported, got ", in.level_start.size());
  TORCH_CHECK(in.batch <= 65535, op, ": the CUDA kernels take at most 65535 images, got ", in.batch);
  gc::AutoAssignArgs a{};
  a.cls = in.cls.data_ptr();
  a.obj = in.obj.data_ptr();
  a.dist = in.dist.data_ptr();
  a.points = in.points.data_ptr();
  a.strides = in.strides.data_ptr();
  a.gt = in.gt_boxes.data_ptr();
  a.labels = in.gt_labels.data_ptr<int64_t>();
  a.valid = in.gt_valid.data_ptr<bool>();
  a.mu = in.mu.data_ptr();
  a.sigma = in.sigma.data_ptr();
  a.levels.count = static_cast<int>(in.level_start.size());
  a.levels.tile_start[0] = 0;
  for (size_t l = 0; l < in.level_start.size(); ++l) {
    a.levels.start[l] = in.level_start[l];
    a.levels.h[l] = static_cast<int>(in.level_h[l]);
    a.levels.w[l] = static_cast<int>(in.level_w[l]);
    a.levels.tile_start[l + 1] = a.levels.tile_start[l] + gc::aa_level_tiles(in.level_h[l], in.level_w[l]);
  }
  TORCH_CHECK(a.levels.tile_start[a.levels.count] < (int64_t(1) << 31), op, ": too many points for the CUDA kernels");
  a.census = gc::autoassign_census_buffer().load(std::memory_order_relaxed);
  a.cull = autoassign_cull().load(std::memory_order_relaxed);
  a.batch = in.batch;
  a.points_n = in.points_n;
  a.classes = in.classes;
  a.num_gt = in.num_gt;
  gc::aa_plan(a);
  return a;
}

using Six = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Five = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The terms per image, and with `totals` the whole loss: (loss_pos, loss_neg, loss_center) totals, t, the GT
// stats and image_stats (B, 3) instead.
Six autoassign_cuda(const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
                    const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                    const at::Tensor& gt_valid, const at::Tensor& mu, const at::Tensor& sigma,
                    at::IntArrayRef level_shapes, bool totals) {
  const char* op = totals ? "gflops.autoassign_loss" : "gflops.autoassign_loss_terms";
  AutoAssignInputs in = autoassign_prepare(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                                           level_shapes, op);
  if (validation_enabled()) autoassign_check_values(in, op);
  const DeviceGuard guard(in.cls.device());
  const int64_t B = in.batch, P = in.points_n, C = in.classes, G = in.num_gt;
  const auto opts = in.dist.options();
  at::Tensor loss_pos = at::empty({B}, opts), loss_neg = at::empty({B}, opts), prior_sum = at::empty({B}, opts);
  at::Tensor any_inside = at::empty({B}, opts.dtype(at::kBool));
  at::Tensor t = at::empty({B, P}, opts), stats = at::empty({B, G, 4}, opts);
  gc::AutoAssignArgs a = args_of(in, op);
  // One workspace: the GTs' partials (B, G, 3), the negative term's (B, neg_blocks + fix_tiles), then the
  // winners' bits (B, P, ceil(C / 32)) as 32-bit words, all in the accumulation dtype's units.
  const int64_t gt_n = B * G * 3, neg_n = B * (a.neg_blocks + a.fix_tiles);
  const int64_t words = B * P * ((C + 31) / 32), per = static_cast<int64_t>(opts.dtype().itemsize()) / 4;
  at::Tensor work = at::empty({gt_n + neg_n + (words + per - 1) / per}, opts);
  a.t = t.data_ptr();
  a.gt_part = work.data_ptr();
  a.neg_part = static_cast<char*>(work.data_ptr()) + gt_n * opts.dtype().itemsize();
  a.seen = reinterpret_cast<unsigned*>(static_cast<char*>(work.data_ptr()) + (gt_n + neg_n) * opts.dtype().itemsize());
  a.stats = stats.data_ptr();
  at::Tensor image, out[3];
  if (totals) {
    image = at::empty({B, 3}, opts);
    a.image = image.data_ptr();
    for (int k = 0; k < 3; ++k) a.totals[k] = (out[k] = at::empty({}, opts)).data_ptr();
  }
  a.loss_pos = loss_pos.data_ptr();
  a.loss_neg = loss_neg.data_ptr();
  a.prior_sum = prior_sum.data_ptr();
  a.any_inside = any_inside.data_ptr<bool>();
  const gc::DType dt = kernel_dtype(in.cls.scalar_type());
  GF_CUDA_CHECK(gc::autoassign_forward(dt, a, num_sms(in.cls.get_device()), current_stream()));
  if (!totals) return {loss_pos, loss_neg, prior_sum, any_inside, t, stats};
  GF_CUDA_CHECK(gc::autoassign_totals(dt, a, current_stream()));
  return {out[0], out[1], out[2], t, stats, image};
}

template <bool totals>
Six autoassign_op(const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
                  const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                  const at::Tensor& gt_valid, const at::Tensor& mu, const at::Tensor& sigma,
                  at::IntArrayRef level_shapes) {
  return autoassign_cuda(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, level_shapes,
                         totals);
}

// The gradients of the terms (grads: grad_pos, grad_neg, grad_prior, each (B,)) or, with image_stats
// defined, of the totals (grads: three 0-dim tensors).
Five autoassign_backward_cuda(const at::Tensor* grads, const at::Tensor& cls, const at::Tensor& obj,
                              const at::Tensor& dist, const at::Tensor& points, const at::Tensor& strides,
                              const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid,
                              const at::Tensor& mu, const at::Tensor& sigma, const at::Tensor& point_t,
                              const at::Tensor& stats, const at::Tensor& image_stats, at::IntArrayRef level_shapes) {
  const bool totals = image_stats.defined();
  const char* op = totals ? "gflops.autoassign_loss_totals_backward" : "gflops.autoassign_loss_terms_backward";
  AutoAssignInputs in = autoassign_prepare(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                                           level_shapes, op);
  const int64_t B = in.batch, P = in.points_n, C = in.classes, G = in.num_gt;
  const char* names[3] = {"grad_pos", "grad_neg", totals ? "grad_center" : "grad_prior"};
  // g: what the kernels take as their incoming gradients; with totals, the per-image ones that
  // aa_total_grads_kernel computes from `given`, which must outlive that launch (it may be a converted copy).
  at::Tensor given[3], g[3], im, per_image;
  for (int k = 0; k < 3; ++k)
    g[k] = given[k] = totals ? check_grad_shape(grads[k], in.cls, {}, op, names[k])
                             : check_grad_shape(grads[k], in.cls, {B}, op, names[k]);
  if (totals) im = check_grad_shape(image_stats, in.cls, {B, 3}, op, "image_stats");
  at::Tensor tp = check_grad_shape(point_t, in.cls, {B, P}, op, "point_t");
  at::Tensor st = check_grad_shape(stats, in.cls, {B, G, 4}, op, "gt_stats");
  const DeviceGuard guard(in.cls.device());
  const auto opts = in.dist.options();
  at::Tensor dcls = at::empty({B, P, C}, opts), dobj = at::empty({B, P}, opts), ddist = at::empty({B, P, 4}, opts);
  at::Tensor dmu = at::empty({C, 2}, opts), dsigma = at::empty({C, 2}, opts);
  at::Tensor prior_part = at::empty({B, G, 4}, opts);
  at::Tensor seen = at::empty({B * P * ((C + 31) / 32)}, opts.dtype(at::kInt));  // the winners' bits
  gc::AutoAssignArgs a = args_of(in, op);
  a.t = tp.data_ptr();
  a.seen = reinterpret_cast<unsigned*>(seen.data_ptr<int>());
  a.stats = st.data_ptr();
  if (totals) {
    per_image = at::empty({3, B}, opts);
    a.image = im.data_ptr();
    for (int k = 0; k < 3; ++k) a.grad_totals[k] = given[k].data_ptr();
    a.image_grads = per_image.data_ptr();
    g[0] = per_image[0], g[1] = per_image[1], g[2] = per_image[2];
  }
  a.grad_pos = g[0].data_ptr();
  a.grad_neg = g[1].data_ptr();
  a.grad_prior = g[2].data_ptr();
  a.d_cls = dcls.data_ptr();
  a.d_obj = dobj.data_ptr();
  a.d_dist = ddist.data_ptr();
  a.prior_part = prior_part.data_ptr();
  a.d_mu = dmu.data_ptr();
  a.d_sigma = dsigma.data_ptr();
  const gc::DType dt = kernel_dtype(in.cls.scalar_type());
  if (totals) GF_CUDA_CHECK(gc::autoassign_total_grads(dt, a, current_stream()));
  GF_CUDA_CHECK(gc::autoassign_backward(dt, a, num_sms(in.cls.get_device()), current_stream()));
  return {dcls.to(cls.scalar_type()), dobj.to(obj.scalar_type()), ddist, dmu, dsigma};
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("autoassign_loss_terms", &autoassign_op<false>);
  m.impl("autoassign_loss_totals", &autoassign_op<true>);
  m.impl("autoassign_loss_terms_backward",
         [](const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_prior,
            const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
            const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
            const at::Tensor& gt_valid, const at::Tensor& mu, const at::Tensor& sigma, const at::Tensor& point_t,
            const at::Tensor& stats, at::IntArrayRef level_shapes) {
           const at::Tensor grads[3] = {grad_pos, grad_neg, grad_prior};
           return autoassign_backward_cuda(grads, cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu,
                                           sigma, point_t, stats, at::Tensor(), level_shapes);
         });
  m.impl("autoassign_loss_totals_backward",
         [](const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_center,
            const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
            const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
            const at::Tensor& gt_valid, const at::Tensor& mu, const at::Tensor& sigma, const at::Tensor& point_t,
            const at::Tensor& stats, const at::Tensor& image_stats, at::IntArrayRef level_shapes) {
           const at::Tensor grads[3] = {grad_pos, grad_neg, grad_center};
           return autoassign_backward_cuda(grads, cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu,
                                           sigma, point_t, stats, image_stats, level_shapes);
         });
}

}  // namespace gflops
