// Each C++ source file registers its own Python bindings with PFL_REGISTER_BINDINGS,
// so adding a kernel never means editing a central file.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace pfl {

using BindFunction = void (*)(pybind11::module_&);

inline std::vector<BindFunction>& binding_registry() {
  static std::vector<BindFunction> functions;
  return functions;
}

inline int register_bindings(BindFunction fn) {
  binding_registry().push_back(fn);
  return 0;
}

}  // namespace pfl

#define PFL_CONCAT_INNER(a, b) a##b
#define PFL_CONCAT(a, b) PFL_CONCAT_INNER(a, b)
#define PFL_REGISTER_BINDINGS(fn) \
  static const int PFL_CONCAT(pfl_bindings_, __LINE__) = ::pfl::register_bindings(fn);
