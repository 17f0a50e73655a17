// Autograd of the gflops library's differentiable ops (csrc/autograd.h), and
// of the Triton twin's, whose ops Python defines at run time.
#include "autograd.h"

#include <memory>

namespace {
struct Gflops {
  static constexpr const char* ns = "gflops";
  static constexpr bool fuses = true;  // the CPU kernels of *_and_grad return the gradient
};

// torch.ops.gflops_triton (gflops/triton): Python launchers, which never fuse the gradient.
struct GflopsTriton {
  static constexpr const char* ns = "gflops_triton";
  static constexpr bool fuses = false;
};
}  // namespace

TORCH_LIBRARY_IMPL(gflops, Autograd, m) { gflops::register_autograd<Gflops>(m); }
TORCH_LIBRARY_IMPL(gflops, CompositeExplicitAutograd, m) { gflops::register_fused_defaults<Gflops>(m); }

namespace gflops {
// The Triton twin's Autograd and *_and_grad default kernels, once per process, after Python has
// defined its ops: the same Functions as gflops' own, so that its host path is no Python autograd
// either (the Python autograd kernels made a DFL forward+backward 1.3x the C++ ones' host cost,
// benchmarks/bench_host.py's triton_us).
void register_triton_autograd() {
  static const bool once = [] {
    // Leaked on purpose: a Library deregisters its kernels when destroyed, and the ops must
    // keep them until the process ends, past the order of static destructors.
    auto* autograd = new torch::Library(torch::Library::IMPL, "gflops_triton", c10::DispatchKey::Autograd,
                                        __FILE__, __LINE__);
    auto* defaults = new torch::Library(torch::Library::IMPL, "gflops_triton",
                                        c10::DispatchKey::CompositeExplicitAutograd, __FILE__, __LINE__);
    register_loss_autograd<GflopsTriton>(*autograd);
    register_fused_defaults<GflopsTriton>(*defaults);
    return true;
  }();
  (void)once;
}
}  // namespace gflops
