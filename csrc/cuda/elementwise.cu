// Element-wise CUDA kernels over the shared math header (twins of ../elementwise.cpp).
#include "../bind_registry.h"
#include "../margin_math.h"
#include "cuda_check.h"

namespace pfl {

template <typename T>
__global__ void margin_psi_kernel(const T* cos, T* out, long n, int type) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
       i += (long)gridDim.x * blockDim.x)
    out[i] = margin_psi(cos[i], type);
}

namespace {

void bind(pybind11::module_& m) {
  m.def(
      "margin_psi",
      [](std::uintptr_t cos, std::uintptr_t out, long n, int type, bool is_double,
         std::uintptr_t stream) {
        if (n <= 0) return;
        auto s = stream_of(stream);
        if (is_double)
          margin_psi_kernel<double><<<grid_for(n), kThreads, 0, s>>>(
              device_ptr<double>(cos), device_ptr<double>(out), n, type);
        else
          margin_psi_kernel<float><<<grid_for(n), kThreads, 0, s>>>(
              device_ptr<float>(cos), device_ptr<float>(out), n, type);
        check_launch("margin_psi");
      },
      pybind11::arg("cos"), pybind11::arg("out"), pybind11::arg("n"), pybind11::arg("type"),
      pybind11::arg("is_double"), pybind11::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
