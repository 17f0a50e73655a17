// CUDA registration of ATSS assignment: shared checks, workspace, then the
// torch-free entry point of assign_kernels.cuh on the current stream. No
// value is read back to the host.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../assign_checks.h"
#include "assign_kernels.cuh"
#include "launch.h"

namespace gflops {
namespace {

namespace gc = gf::cuda;

std::tuple<at::Tensor, at::Tensor, at::Tensor> atss_assign_cuda(
    const at::Tensor& anchors, at::IntArrayRef num_level_anchors, const at::Tensor& gt_boxes,
    const at::Tensor& gt_labels, const at::Tensor& gt_valid, const c10::optional<at::Tensor>& anchor_valid,
    int64_t topk, int64_t background_label) {
  const char* op = "gflops.atss_assign";
  AtssInputs in = atss_prepare(anchors, num_level_anchors, gt_boxes, gt_labels, gt_valid, anchor_valid, topk,
                               background_label, op);
  const gc::DType dt = kernel_dtype(in.anchors.scalar_type());
  // The list holds min(topk, largest level) entries: no level needs more.
  int64_t list_len = 1;
  for (size_t l = 0; l + 1 < in.level_start.size(); ++l)
    list_len = std::max(list_len, std::min(topk, in.level_start[l + 1] - in.level_start[l]));
  TORCH_CHECK(gc::atss_warps_per_block(dt, list_len) >= 1, op, ": topk = ", topk,
              " is too large for the CUDA kernel's shared-memory list (at most ",
              gc::kAtssSharedBytes / (dt == gc::DType::Double ? gc::atss_entry_bytes<double>()
                                                              : gc::atss_entry_bytes<float>()),
              ")");
  const DeviceGuard guard(in.anchors.device());
  const int64_t B = in.batch, G = in.num_gt, N = in.num_anchors, K = in.num_candidates;
  auto opts = in.anchors.options();
  at::Tensor assigned = at::empty({B, N}, opts.dtype(at::kLong));
  at::Tensor labels = at::empty({B, N}, opts.dtype(at::kLong));
  at::Tensor max_iou = at::empty({B, N}, opts);
  // One workspace allocation (host time counts at these sizes): the 8-byte
  // words first, so every part is aligned to its type.
  const bool work = G > 0;
  const int64_t levels = static_cast<int64_t>(in.level_start.size()) - 1;
  const int64_t slots = work ? B * G * K : 0, claims = work ? B * N : 0;
  const int64_t probes = work ? levels * gc::kAtssProbeChunks : 0;
  const int64_t acc_bytes = static_cast<int64_t>(gc::acc_size(dt));
  const int64_t bytes = 8 * (claims + probes) + acc_bytes * slots + 4 * (claims + slots);
  at::Tensor workspace = at::empty({bytes}, opts.dtype(at::kByte));
  unsigned char* w = workspace.data_ptr<uint8_t>();
  auto take = [&w](int64_t n) {
    unsigned char* p = w;
    w += n;
    return p;
  };

  gc::AtssArgs a{};
  a.anchors = in.anchors.data_ptr();
  a.gt_boxes = in.gt_boxes.data_ptr();
  a.gt_labels = in.gt_labels.data_ptr<int64_t>();
  a.gt_valid = in.gt_valid.data_ptr<bool>();
  a.anchor_valid = in.anchor_valid.defined() ? in.anchor_valid.data_ptr<bool>() : nullptr;
  a.anchor_valid_stride = in.anchor_valid_per_image ? N : 0;
  a.levels.count = static_cast<int>(in.level_start.size()) - 1;
  for (size_t l = 0; l < in.level_start.size(); ++l) a.levels.start[l] = in.level_start[l];
  a.batch = B;
  a.num_gt = G;
  a.num_anchors = N;
  a.slots = K;
  a.topk = static_cast<int>(list_len);
  a.background_label = background_label;
  a.best_key = reinterpret_cast<unsigned long long*>(take(8 * claims));
  a.grid_probe = reinterpret_cast<int64_t*>(take(8 * probes));
  a.cand_iou = take(acc_bytes * slots);
  a.owner = reinterpret_cast<int32_t*>(take(4 * claims));
  a.cand_idx = reinterpret_cast<int32_t*>(take(4 * slots));
  a.census = gc::atss_census_buffer().load(std::memory_order_relaxed);
  a.assigned_gt = assigned.data_ptr<int64_t>();
  a.assigned_label = labels.data_ptr<int64_t>();
  a.max_iou = max_iou.data_ptr();
  GF_CUDA_CHECK(gc::atss_assign(dt, a, num_sms(in.anchors.get_device()), current_stream()));
  return {assigned, labels, max_iou};
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) { m.impl("atss_assign", &atss_assign_cuda); }

}  // namespace gflops
