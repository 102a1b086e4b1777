// CPU kernels of the margin-family layers (LabelSpecificAdd, CosinAddm, CombinedMargin,
// AdaCosAddmScale's margin, LabelSpecificMargin, LabelSpecificRescale) and their
// bindings. Each layer copies bottom to top on the Python side and these kernels touch
// only the label column of every row (O(M)), plus the non-label scaling of
// LabelSpecificRescale. Per-element math: family_math.h, shared with cuda/margin_family.cu.
#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "array_checks.h"
#include "bind_registry.h"
#include "family_math.h"

namespace pfl {

// Row i's label column of top (m x n) goes through op; saved/flags keep what the
// backward needs. A row whose label is outside [0, n) (the layers allow negative
// labels only where the fork skips them) is skipped with flag -1. Returns the number
// of rows the CPU CosinAddm code clamped from c > 1 (the fork logs each).
template <typename T>
long family_forward_cpu(T* top, const T* labels, long m, long n, int op,
                        const FamilyParams<T>& p, T* saved, int32_t* flags) {
  long clamped = 0;
  for (long i = 0; i < m; ++i) {
    const long y = family_label(labels[i]);
    if (!(labels[i] >= T(0) && labels[i] < static_cast<T>(n))) {
      flags[i] = -1;
      saved[i] = T(0);
      continue;
    }
    const FamilyOut<T> r = family_forward(op, top[i * n + y], p);
    top[i * n + y] = r.value;
    saved[i] = r.saved;
    flags[i] = r.flag;
    if (r.flag & 2) ++clamped;
  }
  return clamped;
}

template <typename T>
void family_backward_cpu(T* diff, const T* labels, long m, long n, int op,
                         const FamilyParams<T>& p, const T* saved, const int32_t* flags) {
  for (long i = 0; i < m; ++i) {
    if (flags[i] < 0 || !(labels[i] >= T(0) && labels[i] < static_cast<T>(n))) continue;
    const long y = family_label(labels[i]);
    diff[i * n + y] *= family_grad_factor(op, saved[i], flags[i], p);
  }
}

// Every column but the label's times `factor` (LabelSpecificRescale's negative_weight).
template <typename T>
void family_scale_others_cpu(T* a, const T* labels, long m, long n, T factor) {
  for (long i = 0; i < m; ++i) {
    const bool ok = labels[i] >= T(0) && labels[i] < static_cast<T>(n);
    const long y = ok ? family_label(labels[i]) : -1;
    T* row = a + i * n;
    for (long j = 0; j < n; ++j)
      if (j != y) row[j] *= factor;
  }
}

namespace {

namespace py = pybind11;

template <typename T>
FamilyParams<T> params_of(int op, py::tuple values) {
  if (op < 0 || op >= FAM_OP_COUNT)
    throw py::value_error("margin family: unknown op " + std::to_string(op));
  if (values.size() != 6)
    throw py::value_error("margin family: params must be (a, b, c, d, e, flags)");
  FamilyParams<T> p;
  p.a = static_cast<T>(values[0].cast<double>());
  p.b = static_cast<T>(values[1].cast<double>());
  p.c = static_cast<T>(values[2].cast<double>());
  p.d = static_cast<T>(values[3].cast<double>());
  p.e = static_cast<T>(values[4].cast<double>());
  p.flags = values[5].cast<int>();
  return p;
}

// (m, n) of a writable C-contiguous matrix of T.
template <typename T>
py::array_t<T> matrix(const py::handle& obj, const std::string& what) {
  auto a = require_array<T>(obj, what);
  if (a.ndim() != 2) throw py::value_error(what + ": expected a 2-D array");
  if (!a.writeable()) throw py::value_error(what + ": array is read-only");
  return a;
}

template <typename A>
void require_len(const A& a, long m, const std::string& what) {
  if (a.ndim() != 1 || a.shape(0) != m)
    throw py::value_error(what + ": expected shape (" + std::to_string(m) + ",)");
}

template <typename T>
long forward(const py::handle& top_obj, const py::handle& lab_obj, int op, py::tuple values,
             const py::handle& saved_obj, const py::handle& flags_obj) {
  const FamilyParams<T> p = params_of<T>(op, values);
  auto top = matrix<T>(top_obj, "family_forward: top");
  const long m = top.shape(0), n = top.shape(1);
  auto labels = require_array<T>(lab_obj, "family_forward: labels");
  require_len(labels, m, "family_forward: labels");
  auto saved = require_array<T>(saved_obj, "family_forward: saved");
  require_len(saved, m, "family_forward: saved");
  auto flags = require_array<int32_t>(flags_obj, "family_forward: flags");
  require_len(flags, m, "family_forward: flags");
  py::gil_scoped_release release;
  return family_forward_cpu<T>(top.mutable_data(), labels.data(), m, n, op, p,
                               saved.mutable_data(), flags.mutable_data());
}

template <typename T>
void backward(const py::handle& diff_obj, const py::handle& lab_obj, int op, py::tuple values,
              const py::handle& saved_obj, const py::handle& flags_obj) {
  const FamilyParams<T> p = params_of<T>(op, values);
  auto diff = matrix<T>(diff_obj, "family_backward: diff");
  const long m = diff.shape(0), n = diff.shape(1);
  auto labels = require_array<T>(lab_obj, "family_backward: labels");
  require_len(labels, m, "family_backward: labels");
  auto saved = require_array<T>(saved_obj, "family_backward: saved");
  require_len(saved, m, "family_backward: saved");
  auto flags = require_array<int32_t>(flags_obj, "family_backward: flags");
  require_len(flags, m, "family_backward: flags");
  py::gil_scoped_release release;
  family_backward_cpu<T>(diff.mutable_data(), labels.data(), m, n, op, p, saved.data(),
                         flags.data());
}

template <typename T>
void scale_others(const py::handle& a_obj, const py::handle& lab_obj, double factor) {
  auto a = matrix<T>(a_obj, "family_scale_others: array");
  const long m = a.shape(0), n = a.shape(1);
  auto labels = require_array<T>(lab_obj, "family_scale_others: labels");
  require_len(labels, m, "family_scale_others: labels");
  py::gil_scoped_release release;
  family_scale_others_cpu<T>(a.mutable_data(), labels.data(), m, n, static_cast<T>(factor));
}

void bind(py::module_& m) {
  m.def(
      "family_forward",
      [](const py::array& top, const py::array& labels, int op, py::tuple params,
         const py::array& saved, const py::array& flags) {
        if (is_double(top)) return forward<double>(top, labels, op, params, saved, flags);
        return forward<float>(top, labels, op, params, saved, flags);
      },
      py::arg("top"), py::arg("labels"), py::arg("op"), py::arg("params"), py::arg("saved"),
      py::arg("flags"),
      "Apply margin-family op to the label column of every row of top (M, N) in place; "
      "fill saved (M,) and flags (M,) int32 for the backward; returns the number of rows "
      "the CPU CosinAddm code clamped from c > 1.");
  m.def(
      "family_backward",
      [](const py::array& diff, const py::array& labels, int op, py::tuple params,
         const py::array& saved, const py::array& flags) {
        if (is_double(diff)) return backward<double>(diff, labels, op, params, saved, flags);
        return backward<float>(diff, labels, op, params, saved, flags);
      },
      py::arg("diff"), py::arg("labels"), py::arg("op"), py::arg("params"), py::arg("saved"),
      py::arg("flags"),
      "Multiply the label column of diff (M, N) by the op's local derivative, in place.");
  m.def(
      "family_scale_others",
      [](const py::array& a, const py::array& labels, double factor) {
        if (is_double(a)) return scale_others<double>(a, labels, factor);
        return scale_others<float>(a, labels, factor);
      },
      py::arg("array"), py::arg("labels"), py::arg("factor"),
      "Multiply every column but each row's label column of array (M, N) by factor.");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
