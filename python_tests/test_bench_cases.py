"""The box benchmarks time gflops and the reference on the same problem: at a
tiny size, each case's gflops call gives the reference's values and gradient."""
import pytest
import torch

import gflops
import reference
from benchmarks import bench_boxes

TINY = dict(batch=2, anchors=50, gts=7, pos=20, reg_max=16)
CPU = torch.device("cpu")


def _value_and_grad(fn, args, kw, loss_of):
    pred = args[0].detach().double().requires_grad_(loss_of is not None)
    rest = [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args[1:]]
    kw = {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()}
    out = fn(pred, *rest, **kw)
    if loss_of is not None:
        loss_of(out).sum().backward()
    return out, pred.grad


CASES = {
    "iou": (lambda: bench_boxes.iou_case(TINY, CPU, torch.float32, "iou"), "box_iou", None),
    "giou": (lambda: bench_boxes.iou_case(TINY, CPU, torch.float32, "giou"), "box_iou", None),
    "giou_loss": (lambda: bench_boxes.giou_case(TINY, CPU, torch.float32), "giou_loss", lambda o: o),
    "integral": (lambda: bench_boxes.integral_case(TINY, CPU, torch.float32), "integral", lambda o: o),
    "decode": (lambda: bench_boxes.decode_case(TINY, CPU, torch.float32), "decode_distribution", lambda o: o),
    "branch": (lambda: bench_boxes.branch_case(TINY, CPU, torch.float32), "gfl_box_branch",
               lambda o: 2.0 * o[0] + 0.25 * o[1]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_box_benchmark_case_gflops_matches_reference(case):
    make, op, loss_of = CASES[case]
    name, args, kw, nbytes = make()
    assert nbytes and all(v > 0 for v in nbytes.values()), name
    got, got_grad = _value_and_grad(getattr(gflops, op), args, kw, loss_of)
    want, want_grad = _value_and_grad(getattr(reference, op), args, kw, loss_of)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if loss_of is not None:
        assert want_grad is not None and torch.count_nonzero(want_grad) > 0, name
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-9)
