// The Python module gflops._C: loading it registers the ops; the few
// functions here are library switches, not ops.
#include <torch/extension.h>

#include "checks.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_validation", &gflops::set_validation, "Turn value checks on CUDA inputs on or off");
  m.def("validation_enabled", &gflops::validation_enabled);
  m.def("cuda_compiled", [] {
#ifdef GFLOPS_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
