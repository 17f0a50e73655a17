#include "runtime_check.h"

#include <dlfcn.h>

#include <cstdint>
#include <locale>
#include <ostream>

#include <c10/util/ArrayRef.h>
#include <c10/util/StringUtil.h>

namespace gflops {
namespace {

std::string object_of(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

}  // namespace

std::string cxx_runtime_problem() {
#if defined(__GLIBCXX__)
  const std::string self = object_of(reinterpret_cast<const void*>(&cxx_runtime_problem));
  // A function and a piece of data of libstdc++'s, as this library's code
  // reaches them: in the process's libstdc++.so.6 they live there, in a
  // static copy they live here.
  const std::pair<const char*, const void*> probes[] = {
      {"std::locale::classic", reinterpret_cast<const void*>(&std::locale::classic)},
      {"std::num_put<char>::id", static_cast<const void*>(&std::num_put<char>::id)},
  };
  for (const auto& probe : probes) {
    const std::string where = object_of(probe.second);
    if (where.empty() || where == self) {
      return "the library " + self + " carries its own copy of the C++ runtime (" + probe.first +
             " resolves inside it) instead of using the process's libstdc++.so.6; error messages "
             "with numbers would crash the process or lose their numbers";
    }
  }
#endif
  // Formatting as every TORCH_CHECK message does; only reached with the one runtime.
  const std::string shape = c10::str(c10::IntArrayRef{3, 5});
  if (shape != "[3, 5]") {
    return "formatting the shape [3, 5] into an error message gave '" + shape + "'";
  }
  return "";
}

}  // namespace gflops
