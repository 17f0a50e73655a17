import pytest
import torch

import gflops

CUDA_OK = torch.cuda.is_available() and gflops.has_cuda()
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and gflops built with CUDA")

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def validation():
    """Value checks on for the test (CUDA needs them on to raise), then restored."""
    before = gflops.validation_enabled()
    gflops.set_validation(True)
    yield
    gflops.set_validation(before)
