// Validation helpers for numpy arrays crossing into C++: every kernel receives
// arrays whose dtype, contiguity and shape were checked here, so no kernel reads
// or writes out of bounds. Failures raise Python exceptions (ValueError/TypeError).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace pfl {

namespace py = pybind11;

template <typename T>
const char* dtype_name() {
  return sizeof(T) == 4 ? "float32" : "float64";
}

// Whether obj is a float64 numpy array (the kernels' dispatch: float32 otherwise, which
// require_array then checks).
inline bool is_double(const py::handle& obj) {
  return py::isinstance<py::array>(obj) &&
         py::reinterpret_borrow<py::array>(obj).dtype().is(py::dtype::of<double>());
}

// Require a C-contiguous array of exactly dtype T (no silent copy or cast).
template <typename T>
py::array_t<T> require_array(const py::handle& obj, const std::string& what) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(what + ": expected a numpy array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  py::array arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<T>()))
    throw py::type_error(what + ": expected dtype " + dtype_name<T>() + ", got " +
                         std::string(py::str(arr.dtype())));
  if (!(arr.flags() & py::array::c_style))
    throw py::value_error(what + ": array must be C-contiguous");
  return py::reinterpret_borrow<py::array_t<T>>(arr);
}

// Window parameters (kernel, pad, stride, dilation) are Caffe's 32-bit fields, and no
// real image axis comes near 2^46 values: within these bounds every size the kernels
// derive (extent, padded size, output size) fits a long. Larger values (possible with
// zero-size arrays, or from a direct call) would overflow and let a wrapped size pass
// the shape checks; they are refused instead.
constexpr long kMaxWindowParam = (1L << 31) - 1;
constexpr long kMaxAxisSize = 1L << 46;

inline void require_window_param(long value, long lo, const std::string& what) {
  if (value < lo || value > kMaxWindowParam)
    throw py::value_error(what + " must be in [" + std::to_string(lo) + ", " +
                          std::to_string(kMaxWindowParam) + "], got " + std::to_string(value));
}

inline void require_axis_size(long value, const std::string& what) {
  if (value > kMaxAxisSize)
    throw py::value_error(what + " has " + std::to_string(value) + " entries, over " +
                          std::to_string(kMaxAxisSize));
}

// a * b, or a ValueError naming ``what`` when the product does not fit a long.
inline long checked_mul(long a, long b, const std::string& what) {
  long out;
  if (__builtin_mul_overflow(a, b, &out))
    throw py::value_error(what + ": size " + std::to_string(a) + " x " + std::to_string(b) +
                          " overflows");
  return out;
}

}  // namespace pfl
