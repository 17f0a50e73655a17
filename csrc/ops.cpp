// The gflops operator library. Backends register in cpu/ and cuda/; fake
// kernels and autograd are registered from Python (gflops/_fake.py,
// gflops/_autograd.py).
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(gflops, m) { gflops::define_schemas(m); }
