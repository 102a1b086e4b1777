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

}  // namespace pfl
