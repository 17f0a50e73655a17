// Autograd of the gflops library's differentiable ops (csrc/autograd.h).
#include "autograd.h"

namespace {
struct Gflops {
  static constexpr const char* ns = "gflops";
  static constexpr bool fuses = true;  // the CPU kernels of *_and_grad return the gradient
};
}  // namespace

TORCH_LIBRARY_IMPL(gflops, Autograd, m) { gflops::register_autograd<Gflops>(m); }
TORCH_LIBRARY_IMPL(gflops, CompositeExplicitAutograd, m) { gflops::register_fused_defaults<Gflops>(m); }
