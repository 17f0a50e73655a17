// Autograd of the emulated twin (csrc/autograd.h): its kernels are the CUDA
// launchers, which never fuse the gradient into the forward.
#include "../autograd.h"

namespace {
struct GflopsEmu {
  static constexpr const char* ns = "gflops_emu";
  static constexpr bool fuses = false;
};
}  // namespace

TORCH_LIBRARY_IMPL(gflops_emu, Autograd, m) { gflops::register_autograd<GflopsEmu>(m); }
TORCH_LIBRARY_IMPL(gflops_emu, CompositeExplicitAutograd, m) { gflops::register_fused_defaults<GflopsEmu>(m); }
