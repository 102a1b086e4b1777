// Element-wise CPU kernels over the shared math header, and their bindings.
#include "elementwise.h"

#include <pybind11/numpy.h>

#include "array_checks.h"
#include "bind_registry.h"
#include "margin_math.h"

namespace pfl {

template <typename T>
void margin_psi_cpu(const T* cos, T* out, long n, int type) {
  for (long i = 0; i < n; ++i) out[i] = margin_psi(cos[i], type);
}

template void margin_psi_cpu<float>(const float*, float*, long, int);
template void margin_psi_cpu<double>(const double*, double*, long, int);

namespace {

namespace py = pybind11;

template <typename T>
py::array_t<T> margin_psi_array(const py::handle& cos_obj, int type) {
  auto cos = require_array<T>(cos_obj, "margin_psi: cos");
  py::array_t<T> out(std::vector<py::ssize_t>(cos.shape(), cos.shape() + cos.ndim()));
  {
    py::gil_scoped_release release;
    margin_psi_cpu<T>(cos.data(), out.mutable_data(), static_cast<long>(cos.size()), type);
  }
  return out;
}

void bind(py::module_& m) {
  m.def(
      "margin_psi",
      [](const py::array& cos, int type) -> py::object {
        if (type < SINGLE || type > QUADRUPLE)
          throw py::value_error("margin type must be 0..3 (SINGLE..QUADRUPLE), got " +
                                std::to_string(type));
        if (cos.dtype().is(py::dtype::of<double>())) return margin_psi_array<double>(cos, type);
        return margin_psi_array<float>(cos, type);
      },
      py::arg("cos"), py::arg("type"),
      "psi(theta) of the SphereFace margin for an array of cos(theta) (float32 or float64).");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
