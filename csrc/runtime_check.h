#pragma once
#include <string>

namespace gflops {

// "" when this library uses the process's C++ runtime, else what is wrong.
// A library that carries its own copy of libstdc++ (a static link of it,
// however the toolchain came to do that) mixes two copies of the iostream and
// locale state with the one torch uses: formatting a number into an error
// message then prints nothing (seen with g++ 12) or segfaults (g++ 13, the
// first H200 run). The check reads addresses only, so it cannot crash itself.
std::string cxx_runtime_problem();

}  // namespace gflops
