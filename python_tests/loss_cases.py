"""Input builders shared by the loss tests."""
import torch


def qfl_inputs(n, c, device, dtype=torch.float32, pos_frac=0.3, scale=3.0, seed=0, weight=False):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(n, c, generator=g) * scale).to(dtype)
    label = torch.randint(0, max(c, 1), (n,), generator=g)
    bg = torch.rand(n, generator=g) >= pos_frac
    label[bg] = c
    score = torch.rand(n, generator=g)
    w = torch.rand(n, generator=g) if weight else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(pred), to(label), to(score), to(w)


def dfl_inputs(m, reg_max, device, dtype=torch.float32, seed=0, weight=False):
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(m, reg_max + 1, generator=g) * 2).to(dtype)
    target = torch.rand(m, generator=g) * (reg_max - 0.01)
    w = torch.rand(m, generator=g) if weight else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return to(pred), to(target), to(w)


def tol(dtype):
    """(rtol, atol) for comparing gflops with the reference on the same inputs."""
    if dtype == torch.float64:
        return 1e-10, 1e-12
    if dtype == torch.float32:
        return 2e-5, 1e-6
    return 2e-2, 1e-3  # gradients are rounded to the 16-bit dtype


def grads(fn, pred, *args, **kw):
    """fn(pred, ...) and d(sum(out * up))/d pred for a fixed non-uniform upstream
    gradient `up`, so per-row scales are checked too."""
    p = pred.detach().clone().requires_grad_(True)
    out = fn(p, *args, **kw)
    up = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    (out * up).sum().backward()
    return out.detach(), p.grad
