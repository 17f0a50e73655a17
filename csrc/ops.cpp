// The gflops operator library. Backends register in cpu/ and cuda/, autograd
// in autograd.cpp; fake kernels are registered from Python (gflops/_fake.py).
#include <torch/library.h>

#include "schemas.h"

TORCH_LIBRARY(gflops, m) { gflops::define_schemas(m); }
