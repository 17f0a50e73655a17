"""The emulated device's check (emulated_device.EmulatedDevice): a test that
mixes CPU tensors with tensors of the device under test fails on the CPU
machine as it would on a GPU; what a GPU allows stays allowed. Runs on the
CPU kernels (the check is about where tensors live, not which kernels run),
so it needs no emulated build."""
import pytest
import torch

import gflops
from emulated_device import EMU_DEVICE, DeviceMixError, EmulatedDevice, side
from nms_cases import random_boxes


@pytest.fixture
def emu():
    with EmulatedDevice():
        yield EMU_DEVICE


def test_cpu_tensor_times_device_output_fails(emu):
    # python_tests/test_autoassign_fused.py's _run before 2026-12-04: weights left on the CPU.
    x = torch.rand(2, 5, device=emu)
    out = gflops.box_iou(x[:, None, :].expand(2, 3, 5)[..., :4].contiguous(), torch.rand(2, 4, 4, device=emu))
    assert side(out) == "D" and out.device == torch.device("cpu")
    w = torch.linspace(0.7, 1.4, 2, dtype=out.dtype)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        (out * w[:, None, None]).sum()
    w = torch.linspace(0.7, 1.4, 2, dtype=out.dtype, device=out.device)  # the fix
    assert side(out * w[:, None, None]) == "D"


def test_what_a_gpu_refuses(emu):
    d, h = torch.rand(4, 3, device=emu), torch.rand(4, 3)
    for mix in (lambda: d + h, lambda: torch.cat([d, h]), lambda: torch.equal(d, h),
                lambda: torch.testing.assert_close(d, h), lambda: h[torch.tensor([0, 1], device=emu)],
                lambda: torch.where(h > 0.5, d, h)):
        with pytest.raises(RuntimeError) as e:  # assert_close wraps the error in its own
            mix()
        assert "same device" in str(e.value) + str(e.value.__cause__) + str(e.value.__context__)
    boxes, scores = random_boxes(10, 1)
    with pytest.raises(DeviceMixError, match=r"torch\.ops\.gflops\.nms got"):
        gflops.nms(boxes.to(emu), scores, 0.5)
    with pytest.raises(TypeError, match="numpy"):
        d.numpy()


def test_what_a_gpu_allows(emu):
    d, h = torch.rand(4, 3, device=emu), torch.rand(4, 3)
    assert side(d * torch.tensor(2.0)) == "D"  # a 0-dim CPU tensor: a scalar
    assert side(d[torch.tensor([0, 2])]) == "D" and side(d[h[:, 0] > 0.5]) == "D"  # host indices
    d[torch.tensor([1])] = 0.5
    d.copy_(h)  # copies across devices
    moved = h.to(emu)
    assert side(moved) == "D" and side(h) == "H" and moved is not h  # a move is a copy; h stays on the host
    back = d.cpu()
    assert side(back) == "H" and side(d) == "D" and back is not d
    torch.testing.assert_close(back, h)
    assert side(h.to(d.device)) == side(torch.zeros(3, device=d.device)) == side(torch.zeros_like(d)) == "D"
    assert side(h.to(d)) == "D" and side(d.to(torch.float64)) == "D" and side(d.to("cpu")) == "H"
    p = d.clone().requires_grad_(True)
    (p * 2).sum().backward()
    (g,) = torch.autograd.grad((p * 3).sum(), p)
    assert side(p.grad) == side(g) == "D"
    assert d.device == h.device == torch.device("cpu") and emu == "cpu"  # nothing else changes
    # A meta tensor stands for "another device": the ops' own checks name it.
    with pytest.raises(RuntimeError, match="boxes2 is on meta but boxes1 is on cpu"):
        gflops.box_iou(d[:, :3].repeat(1, 2)[:, :4], h[:, :3].repeat(1, 2)[:, :4].to("meta"))


def test_compile_and_gradients_through_the_ops(emu):
    pred = torch.randn(2, 6, 68, device=emu)
    points, strides = torch.rand(6, 2, device=emu) * 100, torch.full((6,), 8.0, device=emu)

    def f(q):
        return gflops.decode_distribution(q, points, strides, max_shape=(320, 320))

    q = pred.clone().requires_grad_(True)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q)
    assert torch.equal(out, f(pred))
    out.sum().backward()
    assert side(q.grad) == "D" and torch.isfinite(q.grad).all()
