// CPU kernels of the MarginInnerProduct layer and their bindings (see the header).
#include "margin_inner_product.h"

#include <pybind11/numpy.h>

#include <cmath>
#include <string>
#include <vector>

#include "array_checks.h"
#include "bind_registry.h"
#include "margin_math.h"

namespace pfl {

// Dot product with eight independent partial sums: the compiler can vectorise it
// (a single running sum is a serial dependency chain), as BLAS's dot does.
template <typename T>
static T dot(const T* a, const T* b, long k) {
  T part[8] = {T(0), T(0), T(0), T(0), T(0), T(0), T(0), T(0)};
  long i = 0;
  for (; i + 8 <= k; i += 8)
    for (int l = 0; l < 8; ++l) part[l] += a[i + l] * b[i + l];
  T s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < k; ++i) s += a[i] * b[i];
  return s;
}

template <typename T>
long margin_normalize_rows_cpu(T* w, long n, long k, T* inv_norm) {
  // First pass: every norm, so that a zero row is reported before anything changes.
  for (long j = 0; j < n; ++j) {
    const T* row = w + j * k;
    const T sumsq = dot(row, row, k);
    if (sumsq == T(0)) return j;
    inv_norm[j] = T(1) / hd_sqrt(sumsq);  // as Caffe: multiply by 1 / |w|
  }
  for (long j = 0; j < n; ++j) {
    T* row = w + j * k;
    const T s = inv_norm[j];
    for (long i = 0; i < k; ++i) row[i] *= s;
  }
  return -1;
}

template <typename T>
long margin_find_bad_label_cpu(const T* labels, long m, long n) {
  for (long i = 0; i < m; ++i) {
    const T v = labels[i];
    // The negated test also rejects NaN.
    if (!(v >= T(0) && v < static_cast<T>(n)) || v != std::floor(v)) return i;
  }
  return -1;
}

template <typename T>
void margin_forward_cpu(T* top, const T* x, const T* labels, long m, long n, long k,
                        T lambda, int type, T* x_norm, T* cos_y, T* logit_y) {
  for (long i = 0; i < m; ++i) {
    const T* xi = x + i * k;
    const long y = static_cast<long>(labels[i]);
    const T xn = hd_sqrt(dot(xi, xi, k));
    const T v = top[i * n + y];
    x_norm[i] = xn;
    logit_y[i] = v;
    cos_y[i] = margin_cos(v, xn);
    top[i * n + y] = margin_label_output(v, xn, lambda, type);
  }
}

template <typename T>
void margin_backward_cpu(T* bottom_diff, const T* top_diff, const T* x, const T* w,
                         const T* labels, const T* x_norm, const T* cos_y, long m, long n,
                         long k, T lambda, int type, bool normalized) {
  if (type == SINGLE) return;  // the GEMM top_diff . W is the whole gradient
  for (long i = 0; i < m; ++i) {
    const long y = static_cast<long>(labels[i]);
    const MarginLabelGrad<T> g = margin_label_grad(cos_y[i], x_norm[i], lambda, type, normalized);
    const T d = top_diff[i * n + y];
    const T aw = d * g.aw, ax = d * g.ax;
    const T* xi = x + i * k;
    const T* wy = w + y * k;
    T* di = bottom_diff + i * k;
    for (long c = 0; c < k; ++c) di[c] += aw * wy[c] + ax * xi[c];
  }
}

template <typename T>
long margin_semihard_mask_cpu(T* bottom_diff, const T* top, const T* logit_y,
                              const T* labels, long m, long n, long k, int type) {
  long zeroed = 0;
  for (long i = 0; i < m; ++i) {
    const long y = static_cast<long>(labels[i]);
    const T* row = top + i * n;
    const long a1 = fork_argmax(row, n, -1L, T(0));         // margin output
    const long a2 = fork_argmax(row, n, y, logit_y[i]);     // plain logits
    const bool easy = (y == a1);
    const bool hard = !easy && y != a2 && type != SINGLE;
    if (easy || hard) {
      T* di = bottom_diff + i * k;
      for (long c = 0; c < k; ++c) di[c] = T(0);
      ++zeroed;
    }
  }
  return zeroed;
}

template <typename T>
long margin_triplet_replace_cpu(T* w, const T* x, const T* labels, long m, long k,
                                uint64_t seed, uint64_t first_draw) {
  long replaced = 0;
  for (long i = 0; i < m; ++i) {
    if (!triplet_draw(seed, first_draw + static_cast<uint64_t>(i))) continue;
    const long y = static_cast<long>(labels[i]);
    T* wy = w + y * k;
    const T* xi = x + i * k;
    for (long c = 0; c < k; ++c) wy[c] = xi[c];
    ++replaced;
  }
  return replaced;
}

#define PFL_INSTANTIATE(T)                                                                    \
  template long margin_normalize_rows_cpu<T>(T*, long, long, T*);                             \
  template long margin_find_bad_label_cpu<T>(const T*, long, long);                           \
  template void margin_forward_cpu<T>(T*, const T*, const T*, long, long, long, T, int, T*,   \
                                      T*, T*);                                                \
  template void margin_backward_cpu<T>(T*, const T*, const T*, const T*, const T*, const T*,  \
                                       const T*, long, long, long, T, int, bool);             \
  template long margin_semihard_mask_cpu<T>(T*, const T*, const T*, const T*, long, long,     \
                                            long, int);                                       \
  template long margin_triplet_replace_cpu<T>(T*, const T*, const T*, long, long, uint64_t,   \
                                              uint64_t);
PFL_INSTANTIATE(float)
PFL_INSTANTIATE(double)
#undef PFL_INSTANTIATE

// ---------------------------------------------------------------------------------------
// Bindings: every array is checked here (dtype, C-contiguity, shapes, label values)
// before a kernel runs, so the kernels never index out of bounds.
namespace {

namespace py = pybind11;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (d) s += ", ";
    s += std::to_string(a.shape(d));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <typename T>
py::array_t<T> require_shape(const py::handle& obj, const std::string& what,
                             std::vector<long> shape) {
  auto a = require_array<T>(obj, what);
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = a.shape(d) == shape[d];
  if (!ok) {
    std::string want = "(";
    for (size_t d = 0; d < shape.size(); ++d)
      want += (d ? ", " : "") + std::to_string(shape[d]);
    want += shape.size() == 1 ? ",)" : ")";
    throw py::value_error(what + ": expected shape " + want + ", got " + shape_str(a));
  }
  return a;
}

template <typename T>
py::array_t<T> require_matrix(const py::handle& obj, const std::string& what) {
  auto a = require_array<T>(obj, what);
  if (a.ndim() != 2)
    throw py::value_error(what + ": expected a 2-D array, got shape " + shape_str(a));
  return a;
}

void require_type(int type) {
  if (type < SINGLE || type > QUADRUPLE)
    throw py::value_error("margin type must be 0..3 (SINGLE..QUADRUPLE), got " +
                          std::to_string(type));
}

template <typename T>
void require_labels(const py::array_t<T>& labels, long m, long n, const std::string& what) {
  long bad = margin_find_bad_label_cpu(labels.data(), m, n);
  if (bad >= 0) {
    char value[64];
    snprintf(value, sizeof value, "%.17g", static_cast<double>(labels.data()[bad]));
    throw py::value_error(what + ": label " + std::to_string(bad) + " is " + value +
                          ", expected an integer in [0, " + std::to_string(n) + ")");
  }
}

template <typename T>
void normalize_rows(const py::handle& w_obj) {
  auto w = require_matrix<T>(w_obj, "margin_normalize_rows: weight");
  if (!w.writeable()) throw py::value_error("margin_normalize_rows: weight is read-only");
  const long n = w.shape(0), k = w.shape(1);
  // With no columns every row has zero norm; say so before sizing a buffer by n (an
  // empty (2^31, 0) weight must not allocate gigabytes).
  if (n > 0 && k == 0)
    throw py::value_error("weight row 0 has zero norm (cannot be normalised): the weight "
                          "has no columns");
  std::vector<T> inv(static_cast<size_t>(n));
  long bad;
  {
    py::gil_scoped_release release;
    bad = margin_normalize_rows_cpu(w.mutable_data(), n, k, inv.data());
  }
  if (bad >= 0)
    throw py::value_error("weight row " + std::to_string(bad) +
                          " has zero norm (cannot be normalised)");
}

template <typename T>
void forward(const py::handle& top_obj, const py::handle& x_obj, const py::handle& lab_obj,
             double lambda, int type, const py::handle& xn_obj, const py::handle& cos_obj,
             const py::handle& logit_obj) {
  require_type(type);
  auto top = require_matrix<T>(top_obj, "margin_forward: top");
  const long m = top.shape(0), n = top.shape(1);
  auto x = require_matrix<T>(x_obj, "margin_forward: features");
  if (x.shape(0) != m)
    throw py::value_error("margin_forward: features have " + std::to_string(x.shape(0)) +
                          " rows, top has " + std::to_string(m));
  const long k = x.shape(1);
  auto labels = require_shape<T>(lab_obj, "margin_forward: labels", {m});
  auto xn = require_shape<T>(xn_obj, "margin_forward: x_norm", {m});
  auto cs = require_shape<T>(cos_obj, "margin_forward: cos_y", {m});
  auto lg = require_shape<T>(logit_obj, "margin_forward: logit_y", {m});
  require_labels(labels, m, n, "margin_forward");
  py::gil_scoped_release release;
  margin_forward_cpu<T>(top.mutable_data(), x.data(), labels.data(), m, n, k,
                        static_cast<T>(lambda), type, xn.mutable_data(), cs.mutable_data(),
                        lg.mutable_data());
}

template <typename T>
void backward(const py::handle& bd_obj, const py::handle& td_obj, const py::handle& x_obj,
              const py::handle& w_obj, const py::handle& lab_obj, const py::handle& xn_obj,
              const py::handle& cos_obj, double lambda, int type, bool normalized) {
  require_type(type);
  auto td = require_matrix<T>(td_obj, "margin_backward: top_diff");
  const long m = td.shape(0), n = td.shape(1);
  auto w = require_matrix<T>(w_obj, "margin_backward: weight");
  if (w.shape(0) != n)
    throw py::value_error("margin_backward: weight has " + std::to_string(w.shape(0)) +
                          " rows, top_diff has " + std::to_string(n) + " columns");
  const long k = w.shape(1);
  auto bd = require_shape<T>(bd_obj, "margin_backward: bottom_diff", {m, k});
  auto x = require_shape<T>(x_obj, "margin_backward: features", {m, k});
  auto labels = require_shape<T>(lab_obj, "margin_backward: labels", {m});
  auto xn = require_shape<T>(xn_obj, "margin_backward: x_norm", {m});
  auto cs = require_shape<T>(cos_obj, "margin_backward: cos_y", {m});
  require_labels(labels, m, n, "margin_backward");
  py::gil_scoped_release release;
  margin_backward_cpu<T>(bd.mutable_data(), td.data(), x.data(), w.data(), labels.data(),
                         xn.data(), cs.data(), m, n, k, static_cast<T>(lambda), type,
                         normalized);
}

template <typename T>
long semihard_mask(const py::handle& bd_obj, const py::handle& top_obj,
                   const py::handle& logit_obj, const py::handle& lab_obj, int type) {
  require_type(type);
  auto top = require_matrix<T>(top_obj, "margin_semihard_mask: top");
  const long m = top.shape(0), n = top.shape(1);
  auto bd = require_matrix<T>(bd_obj, "margin_semihard_mask: bottom_diff");
  if (bd.shape(0) != m)
    throw py::value_error("margin_semihard_mask: bottom_diff has " +
                          std::to_string(bd.shape(0)) + " rows, top has " + std::to_string(m));
  const long k = bd.shape(1);
  auto lg = require_shape<T>(logit_obj, "margin_semihard_mask: logit_y", {m});
  auto labels = require_shape<T>(lab_obj, "margin_semihard_mask: labels", {m});
  require_labels(labels, m, n, "margin_semihard_mask");
  py::gil_scoped_release release;
  return margin_semihard_mask_cpu<T>(bd.mutable_data(), top.data(), lg.data(), labels.data(),
                                     m, n, k, type);
}

template <typename T>
long triplet_replace(const py::handle& w_obj, const py::handle& x_obj,
                     const py::handle& lab_obj, uint64_t seed, uint64_t first_draw) {
  auto w = require_matrix<T>(w_obj, "margin_triplet_replace: weight");
  const long n = w.shape(0), k = w.shape(1);
  auto x = require_matrix<T>(x_obj, "margin_triplet_replace: features");
  if (x.shape(1) != k)
    throw py::value_error("margin_triplet_replace: features have " +
                          std::to_string(x.shape(1)) + " columns, weight has " +
                          std::to_string(k));
  const long m = x.shape(0);
  auto labels = require_shape<T>(lab_obj, "margin_triplet_replace: labels", {m});
  require_labels(labels, m, n, "margin_triplet_replace");
  py::gil_scoped_release release;
  return margin_triplet_replace_cpu<T>(w.mutable_data(), x.data(), labels.data(), m, k, seed,
                                       first_draw);
}

void bind(py::module_& m) {
  m.def(
      "margin_normalize_rows",
      [](const py::array& w) {
        if (is_double(w)) return normalize_rows<double>(w);
        return normalize_rows<float>(w);
      },
      py::arg("weight"),
      "Scale every row of the (N, K) weight to unit norm in place; ValueError naming the "
      "first zero-norm row (the weight is then unchanged).");
  m.def(
      "margin_forward",
      [](const py::array& top, const py::array& x, const py::array& labels, double lambda,
         int type, const py::array& x_norm, const py::array& cos_y, const py::array& logit_y) {
        if (is_double(top)) return forward<double>(top, x, labels, lambda, type, x_norm, cos_y, logit_y);
        return forward<float>(top, x, labels, lambda, type, x_norm, cos_y, logit_y);
      },
      py::arg("top"), py::arg("x"), py::arg("labels"), py::arg("lambda_"), py::arg("type"),
      py::arg("x_norm"), py::arg("cos_y"), py::arg("logit_y"),
      "Given top = X.W^T (M, N), write the margin output of each label column in place and "
      "fill x_norm, cos_y and logit_y (M,) for the backward.");
  m.def(
      "margin_backward",
      [](const py::array& bottom_diff, const py::array& top_diff, const py::array& x,
         const py::array& w, const py::array& labels, const py::array& x_norm,
         const py::array& cos_y, double lambda, int type, bool normalized) {
        if (is_double(top_diff))
          return backward<double>(bottom_diff, top_diff, x, w, labels, x_norm, cos_y, lambda,
                                  type, normalized);
        return backward<float>(bottom_diff, top_diff, x, w, labels, x_norm, cos_y, lambda,
                               type, normalized);
      },
      py::arg("bottom_diff"), py::arg("top_diff"), py::arg("x"), py::arg("weight"),
      py::arg("labels"), py::arg("x_norm"), py::arg("cos_y"), py::arg("lambda_"),
      py::arg("type"), py::arg("normalized") = true,
      "Given bottom_diff = top_diff.W (M, K), add the label column's margin correction "
      "(normalized: the original's normalised (cw, cx); else the exact derivative).");
  m.def(
      "margin_semihard_mask",
      [](const py::array& bottom_diff, const py::array& top, const py::array& logit_y,
         const py::array& labels, int type) {
        if (is_double(top)) return semihard_mask<double>(bottom_diff, top, logit_y, labels, type);
        return semihard_mask<float>(bottom_diff, top, logit_y, labels, type);
      },
      py::arg("bottom_diff"), py::arg("top"), py::arg("logit_y"), py::arg("labels"),
      py::arg("type"),
      "Zero the easy (and, unless SINGLE, hard) rows of the feature gradient; returns the "
      "number of rows zeroed.");
  m.def(
      "margin_triplet_replace",
      [](const py::array& w, const py::array& x, const py::array& labels, uint64_t seed,
         uint64_t first_draw) {
        if (is_double(w)) return triplet_replace<double>(w, x, labels, seed, first_draw);
        return triplet_replace<float>(w, x, labels, seed, first_draw);
      },
      py::arg("weight"), py::arg("x"), py::arg("labels"), py::arg("seed"),
      py::arg("first_draw"),
      "For each row i in order, if draw first_draw + i of seed is true, weight[labels[i]] = "
      "x[i]; returns the number of rows replaced.");
  m.def(
      "triplet_draws",
      [](uint64_t seed, uint64_t first_draw, long count) {
        if (count < 0) throw py::value_error("triplet_draws: count must be >= 0");
        py::array_t<bool> out(count);
        bool* p = out.mutable_data();
        for (long i = 0; i < count; ++i)
          p[i] = triplet_draw(seed, first_draw + static_cast<uint64_t>(i));
        return out;
      },
      py::arg("seed"), py::arg("first_draw"), py::arg("count"),
      "The triplet replacement draws first_draw .. first_draw + count - 1 of seed.");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
