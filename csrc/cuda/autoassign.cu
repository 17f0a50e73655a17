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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_cuda(
    const at::Tensor& cls, const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points,
    const at::Tensor& strides, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid,
    const at::Tensor& mu, const at::Tensor& sigma, at::IntArrayRef level_shapes) {
  const char* op = "gflops.autoassign_loss_terms";
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
  a.loss_pos = loss_pos.data_ptr();
  a.loss_neg = loss_neg.data_ptr();
  a.prior_sum = prior_sum.data_ptr();
  a.any_inside = any_inside.data_ptr<bool>();
  GF_CUDA_CHECK(gc::autoassign_forward(kernel_dtype(in.cls.scalar_type()), a, num_sms(in.cls.get_device()),
                                       current_stream()));
  return {loss_pos, loss_neg, prior_sum, any_inside, t, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> autoassign_backward_cuda(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& grad_prior, const at::Tensor& cls,
    const at::Tensor& obj, const at::Tensor& dist, const at::Tensor& points, const at::Tensor& strides,
    const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_valid, const at::Tensor& mu,
    const at::Tensor& sigma, const at::Tensor& point_t, const at::Tensor& stats, at::IntArrayRef level_shapes) {
  const char* op = "gflops.autoassign_loss_terms_backward";
  AutoAssignInputs in = autoassign_prepare(cls, obj, dist, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                                           level_shapes, op);
  const int64_t B = in.batch, P = in.points_n, C = in.classes, G = in.num_gt;
  at::Tensor gp = check_grad_shape(grad_pos, in.cls, {B}, op, "grad_pos");
  at::Tensor gn = check_grad_shape(grad_neg, in.cls, {B}, op, "grad_neg");
  at::Tensor gr = check_grad_shape(grad_prior, in.cls, {B}, op, "grad_prior");
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
  a.grad_pos = gp.data_ptr();
  a.grad_neg = gn.data_ptr();
  a.grad_prior = gr.data_ptr();
  a.d_cls = dcls.data_ptr();
  a.d_obj = dobj.data_ptr();
  a.d_dist = ddist.data_ptr();
  a.prior_part = prior_part.data_ptr();
  a.d_mu = dmu.data_ptr();
  a.d_sigma = dsigma.data_ptr();
  GF_CUDA_CHECK(gc::autoassign_backward(kernel_dtype(in.cls.scalar_type()), a, num_sms(in.cls.get_device()),
                                        current_stream()));
  return {dcls.to(cls.scalar_type()), dobj.to(obj.scalar_type()), ddist, dmu, dsigma};
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("autoassign_loss_terms", &autoassign_cuda);
  m.impl("autoassign_loss_terms_backward", &autoassign_backward_cuda);
}

}  // namespace gflops
