// The CUDA extension module pyfacelayers._cuda. Kernels take raw device pointers
// (cupy's ``arr.data.ptr``) and the stream to launch on (cupy's current stream), so
// memory and streams stay cupy's. The Python side checks shapes and dtypes first.
// Each source registers its bindings (../bind_registry.h), as in the CPU module.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include "../bind_registry.h"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pyfacelayers CUDA kernels (device pointers from cupy)";
  m.def("device_count", []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the error left by a missing driver or device
      return 0;
    }
    return n;
  });
  for (auto fn : pfl::binding_registry()) fn(m);
}
