// CUDA registration of the NMS ops: shared checks, the stable device sorts
// (and for batched_nms the grouping by class), workspace, then the torch-free
// entry points of nms_kernels.cuh on the current stream. multiclass_nms reads nothing back to the host; nms and
// batched_nms do once, at the end, for the length of their output.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../nms_checks.h"
#include "launch.h"
#include "nms_kernels.cuh"

namespace gflops {
namespace {

namespace gc = gf::cuda;
static_assert(gc::kNmsSegmentRows == kNmsSegmentCap, "the segment hook's cap is the kernel's shared removal bits");

at::Tensor nms_cuda_impl(const NmsInputs& in) {
  const int64_t K = in.count;
  auto opts = in.boxes.options();
  if (K == 0) return at::empty({0}, opts.dtype(at::kLong));
  const DeviceGuard guard(in.boxes.device());
  // Descending score, equal scores by lower index; NaN scores come first and start removed.
  const at::Tensor by_score = std::get<1>(at::sort(in.scores, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  // Rows grouped by class, each class in score order (a stable sort of the
  // classes in score order), with the bounds of each row's class.
  at::Tensor order = by_score, rank, seg_lo, seg_hi, classes;
  if (in.idxs.defined()) {
    auto sorted_classes = at::sort(in.idxs.index_select(0, by_score), c10::optional<bool>(true), /*dim=*/0, /*descending=*/false);
    classes = std::get<0>(sorted_classes);
    rank = std::get<1>(sorted_classes);
    order = by_score.index_select(0, rank);
    seg_lo = at::searchsorted(classes, classes);
    seg_hi = at::searchsorted(classes, classes, /*out_int32=*/false, /*right=*/true);
  }
  const at::Tensor nan = at::isnan(in.scores);
  const int64_t words = (K + gc::kNmsBits - 1) / gc::kNmsBits;
  const int64_t tile_rows = gc::nms_tile_rows(words, nms_mask_bytes().load(std::memory_order_relaxed));
  const int64_t segment_max = nms_segment_max().load(std::memory_order_relaxed);
  const bool big = K > segment_max;
  const auto u64 = opts.dtype(at::kLong);
  at::Tensor sorted = at::empty({K, 4}, opts.dtype(acc_dtype(in.boxes)));
  at::Tensor sorted_idx = at::empty({in.idxs.defined() ? K : 0}, u64);
  at::Tensor mask = at::empty({big ? std::min(tile_rows, words * gc::kNmsBits) * words : 0}, u64);
  at::Tensor removed = at::empty({words}, u64), kept = at::empty({words}, u64);
  at::Tensor keep = at::empty({K}, opts.dtype(at::kBool));
  at::Tensor class_counts = at::zeros({2}, opts.dtype(at::kInt));

  gc::NmsArgs a{};
  a.boxes = in.boxes.data_ptr();
  a.order = order.data_ptr<int64_t>();
  a.rank = rank.defined() ? rank.data_ptr<int64_t>() : nullptr;
  a.idxs = in.idxs.defined() ? in.idxs.data_ptr<int64_t>() : nullptr;
  a.seg_lo = seg_lo.defined() ? seg_lo.data_ptr<int64_t>() : nullptr;
  a.seg_hi = seg_hi.defined() ? seg_hi.data_ptr<int64_t>() : nullptr;
  a.nan_score = nan.data_ptr<bool>();
  a.count = K;
  a.words = words;
  a.segment_max = segment_max;
  a.class_counts = class_counts.data_ptr<int>();
  a.census = gc::nms_census_buffer().load(std::memory_order_relaxed);
  a.thr = in.iou_threshold;
  a.sorted = sorted.data_ptr();
  a.sorted_idx = in.idxs.defined() ? sorted_idx.data_ptr<int64_t>() : nullptr;
  a.mask = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  a.removed = reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>());
  a.kept = reinterpret_cast<unsigned long long*>(kept.data_ptr<int64_t>());
  a.keep = keep.data_ptr<bool>();
  GF_CUDA_CHECK(gc::nms_suppress(kernel_dtype(in.boxes.scalar_type()), a, tile_rows, big,
                                 num_sms(in.boxes.get_device()), current_stream()));
  return by_score.masked_select(keep);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl(nms_prepare(boxes, scores, nullptr, iou_threshold, "gflops.nms"));
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_cuda_impl(nms_prepare(boxes, scores, &idxs, iou_threshold, "gflops.batched_nms"));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms_cuda(
    const at::Tensor& cls_scores, const at::Tensor& bbox_preds, const at::Tensor& points, const at::Tensor& strides,
    at::IntArrayRef level_sizes, const at::Tensor& image_shapes, const c10::optional<at::Tensor>& scale_factors,
    int64_t reg_max, double score_thr, int64_t nms_pre, double iou_threshold, int64_t max_per_img,
    double min_bbox_size) {
  const char* op = "gflops.multiclass_nms";
  const MulticlassInputs in =
      multiclass_prepare(cls_scores, bbox_preds, points, strides, level_sizes, image_shapes, scale_factors, reg_max,
                         score_thr, nms_pre, iou_threshold, max_per_img, min_bbox_size, op);
  const int levels = static_cast<int>(in.level_start.size()) - 1;
  const int64_t chunk = multiclass_chunk().load(std::memory_order_relaxed);
  std::vector<int64_t> chunk_start(levels + 1, 0);
  for (int l = 0; l < levels; ++l) {
    const int64_t pairs = (in.level_start[l + 1] - in.level_start[l]) * in.classes;
    TORCH_CHECK(pairs < (int64_t(1) << 31), op,
                ": the CUDA kernel takes fewer than 2^31 (anchor, class) pairs per level, got ", pairs, " at level ",
                l);
    chunk_start[l + 1] = chunk_start[l] + (pairs + chunk - 1) / chunk;
  }
  TORCH_CHECK(in.batch * chunk_start[levels] < (int64_t(1) << 31), op, ": the CUDA kernel takes fewer than 2^31 x ",
              chunk, " (anchor, class) pairs per batch, got ", in.batch, " x ", in.anchors * in.classes);
  auto res = multiclass_outputs(in);
  const DeviceGuard guard(in.cls.device());
  const int64_t B = in.batch, M = in.slot_start.back();
  auto opts = in.cls.options();
  const at::ScalarType acc = acc_dtype(in.cls);
  at::Tensor cand_flat = at::empty({B, M}, opts.dtype(at::kLong));
  at::Tensor cand_score = at::empty({B, M}, opts.dtype(acc));
  at::Tensor cand_box = at::empty({B, M, 4}, opts.dtype(acc));
  at::Tensor hist = at::zeros({B, levels, 256}, opts.dtype(at::kInt));
  at::Tensor state = at::empty({B, levels, 4}, opts.dtype(at::kLong));
  at::Tensor chunk_counts = at::empty({B, chunk_start[levels], gc::kMcWarps, 2}, opts.dtype(at::kInt));

  gc::McArgs a{};
  a.cls = in.cls.data_ptr();
  a.reg = in.reg.data_ptr();
  a.points = in.points.data_ptr();
  a.strides = in.strides.data_ptr();
  a.image_shapes = in.image_shapes.data_ptr();
  a.scale_factors = in.scale_factors.data_ptr();
  a.levels = levels;
  for (int l = 0; l <= levels; ++l) {
    a.level_start[l] = in.level_start[l];
    a.slot_start[l] = in.slot_start[l];
    a.chunk_start[l] = chunk_start[l];
  }
  a.chunk = chunk;
  a.n1 = static_cast<int>(in.reg_max + 1);
  a.batch = B;
  a.anchors = in.anchors;
  a.classes = in.classes;
  a.slots = M;
  a.max_per_img = in.max_per_img;
  a.score_thr = in.score_thr;
  a.score_floor = gf::logit_floor(in.score_thr);
  a.iou_thr = in.iou_threshold;
  a.min_size = in.min_bbox_size;
  a.hist = reinterpret_cast<unsigned int*>(hist.data_ptr<int>());
  a.state = reinterpret_cast<unsigned long long*>(state.data_ptr<int64_t>());
  a.chunk_counts = chunk_counts.data_ptr<int>();
  a.cand_flat = cand_flat.data_ptr<int64_t>();
  a.cand_score = cand_score.data_ptr();
  a.cand_box = cand_box.data_ptr();
  a.out_boxes = std::get<0>(res).data_ptr();
  a.out_scores = std::get<1>(res).data_ptr();
  a.out_labels = std::get<2>(res).data_ptr<int64_t>();
  a.counts = std::get<3>(res).data_ptr<int64_t>();
  const gc::DType dt = kernel_dtype(in.cls.scalar_type());
  GF_CUDA_CHECK(gc::multiclass_candidates(dt, a, num_sms(in.cls.get_device()), current_stream()));
  // Slots are in global flat order, so a stable sort breaks score ties by the lower flat index.
  const at::Tensor order = std::get<1>(at::sort(cand_score, /*stable=*/true, /*dim=*/1, /*descending=*/true));
  a.order = order.data_ptr<int64_t>();
  GF_CUDA_CHECK(gc::multiclass_suppress(dt, a, current_stream()));
  return res;
}

}  // namespace

GF_CUDA_LIBRARY_IMPL(m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("multiclass_nms", &multiclass_nms_cuda);
}

}  // namespace gflops
