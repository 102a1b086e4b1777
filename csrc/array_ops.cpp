// Whole-array sums, copies and clears on the element-wise threads (parallel.h): the
// Eltwise sums, Split's gradient sums, their copies and the solver's diff clear, which
// numpy runs on one core. Each element is computed alone (a + b, or a copy), so the
// values are numpy's, bit for bit, on any thread count.
#include <pybind11/numpy.h>

#include <cstring>
#include <string>

#include "array_checks.h"
#include "bind_registry.h"
#include "parallel.h"

namespace pfl {

namespace {

namespace py = pybind11;

// fn(begin, end) over [0, n) split in one contiguous part per thread.
template <typename Fn>
void in_parts(long n, Fn fn) {
  const int threads = threads_for(n);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const long parts = omp_get_num_threads(), part = omp_get_thread_num();
      fn(n * part / parts, n * (part + 1) / parts);
    }
    return;
  }
#endif
  (void)threads;
  fn(0L, n);
}

template <typename T>
py::array_t<T> same_size(const py::handle& obj, const std::string& what, long n) {
  auto array = require_array<T>(obj, what);
  if (static_cast<long>(array.size()) != n)
    throw py::value_error(what + " has " + std::to_string(array.size()) + " elements, " +
                          "expected " + std::to_string(n));
  return array;
}

template <typename T>
void add(const py::handle& a_obj, const py::handle& b_obj, const py::handle& out_obj) {
  auto a = require_array<T>(a_obj, "add_arrays: a");
  const long n = static_cast<long>(a.size());
  auto b = same_size<T>(b_obj, "add_arrays: b", n);
  auto out = same_size<T>(out_obj, "add_arrays: out", n);
  const T* x = a.data();
  const T* y = b.data();
  T* z = out.mutable_data();  // may be x or y (an accumulation)
  py::gil_scoped_release release;
  in_parts(n, [=](long begin, long end) {
    for (long i = begin; i < end; ++i) z[i] = x[i] + y[i];
  });
}

template <typename T>
void copy(const py::handle& src_obj, const py::handle& out_obj) {
  auto src = require_array<T>(src_obj, "copy_array: src");
  const long n = static_cast<long>(src.size());
  auto out = same_size<T>(out_obj, "copy_array: out", n);
  const T* from = src.data();
  T* to = out.mutable_data();
  if (from == to) return;
  if (n && from < to + n && to < from + n)
    throw py::value_error("copy_array: src and out overlap");
  py::gil_scoped_release release;
  in_parts(n, [=](long begin, long end) {
    std::memcpy(to + begin, from + begin, sizeof(T) * (end - begin));
  });
}

template <typename T>
void fill_zeros(const py::handle& obj) {
  auto array = require_array<T>(obj, "fill_zeros: array");
  T* out = array.mutable_data();
  py::gil_scoped_release release;
  in_parts(static_cast<long>(array.size()), [=](long begin, long end) {
    std::memset(out + begin, 0, sizeof(T) * (end - begin));
  });
}

void bind(py::module_& m) {
  m.def(
      "add_arrays",
      [](py::handle a, py::handle b, py::handle out) {
        if (is_double(a)) return add<double>(a, b, out);
        add<float>(a, b, out);
      },
      py::arg("a"), py::arg("b"), py::arg("out"),
      "out = a + b over C-contiguous arrays of one dtype and size (out may be a or b).");
  m.def(
      "copy_array",
      [](py::handle src, py::handle out) {
        if (is_double(src)) return copy<double>(src, out);
        copy<float>(src, out);
      },
      py::arg("src"), py::arg("out"), "out[...] = src (C-contiguous, same dtype and size).");
  m.def(
      "fill_zeros",
      [](py::handle array) {
        if (is_double(array)) return fill_zeros<double>(array);
        fill_zeros<float>(array);
      },
      py::arg("array"), "array[...] = 0 on the element-wise threads.");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
