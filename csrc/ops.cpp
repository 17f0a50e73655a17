// Every schema of the gflops library. Backends register in cpu/ and cuda/;
// fake kernels and autograd are registered from Python (gflops/_fake.py,
// gflops/_autograd.py). `reduction` here is 'none' | 'sum'; the Python
// wrappers turn 'mean' and avg_factor into a division on the device.
#include <torch/library.h>

TORCH_LIBRARY(gflops, m) {
  m.def("quality_focal_loss(Tensor pred, Tensor label, Tensor score, Tensor? weight, float beta, str reduction) -> Tensor");
  m.def("quality_focal_loss_backward(Tensor grad, Tensor pred, Tensor label, Tensor score, Tensor? weight, float beta, str reduction) -> Tensor");
  m.def("distribution_focal_loss(Tensor pred, Tensor target, Tensor? weight, str reduction) -> Tensor");
  m.def("distribution_focal_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str reduction) -> Tensor");
}
