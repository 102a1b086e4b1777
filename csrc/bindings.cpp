// The CPU extension module pyfacelayers._C: collects the bindings every source
// file registered (see bind_registry.h).
#include <pybind11/pybind11.h>

#include "bind_registry.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyfacelayers C++ kernels (CPU)";
  for (auto fn : pfl::binding_registry()) fn(m);
}
