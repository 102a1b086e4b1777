// Caffe's SGD update of one parameter in one pass over its arrays. The solver's numpy
// version (L2 decay, momentum, Net::Update) made about nine passes with temporaries:
// on SphereFace-20's 23M parameters that was a quarter of a training iteration.
//
//   diff    = diff + local_decay * data          (skipped when local_decay is 0)
//   history = local_rate * diff + momentum * history
//   diff    = history
//   data    = data - diff
//
// Every product and sum is rounded in T, as numpy rounds it: this file is built with
// -ffp-contract=off (no fused multiply-adds), so the results are the numpy solver's,
// bit for bit, on any thread count.
#include <pybind11/numpy.h>

#include <string>

#include "array_checks.h"
#include "bind_registry.h"
#include "parallel.h"

namespace pfl {

namespace {

namespace py = pybind11;

template <typename T>
void sgd_update_cpu(T* __restrict__ data, T* __restrict__ diff, T* __restrict__ history,
                    long n, T local_decay, T local_rate, T momentum) {
  const int threads = threads_for(n);
  const bool decay = local_decay != T(0);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
  for (long i = 0; i < n; ++i) {
    T g = diff[i];
    if (decay) g = g + local_decay * data[i];
    const T h = local_rate * g + momentum * history[i];
    history[i] = h;
    diff[i] = h;
    data[i] = data[i] - h;
  }
  (void)threads;
}

template <typename T>
void update(const py::handle& data_obj, const py::handle& diff_obj,
            const py::handle& history_obj, double local_decay, double local_rate,
            double momentum) {
  auto data = require_array<T>(data_obj, "sgd_update: data");
  auto diff = require_array<T>(diff_obj, "sgd_update: diff");
  auto history = require_array<T>(history_obj, "sgd_update: history");
  const long n = static_cast<long>(data.size());
  if (static_cast<long>(diff.size()) != n || static_cast<long>(history.size()) != n)
    throw py::value_error("sgd_update: data, diff and history must have the same size, got " +
                          std::to_string(n) + ", " + std::to_string(diff.size()) + " and " +
                          std::to_string(history.size()));
  T* p[3] = {data.mutable_data(), diff.mutable_data(), history.mutable_data()};
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b)
      if (n && p[a] < p[b] + n && p[b] < p[a] + n)
        throw py::value_error("sgd_update: data, diff and history must not overlap");
  py::gil_scoped_release release;
  sgd_update_cpu<T>(p[0], p[1], p[2], n, static_cast<T>(local_decay),
                    static_cast<T>(local_rate), static_cast<T>(momentum));
}

void bind(py::module_& m) {
  m.def(
      "sgd_update",
      [](py::handle data, py::handle diff, py::handle history, double local_decay,
         double local_rate, double momentum) {
        if (is_double(data))
          return update<double>(data, diff, history, local_decay, local_rate, momentum);
        update<float>(data, diff, history, local_decay, local_rate, momentum);
      },
      py::arg("data"), py::arg("diff"), py::arg("history"), py::arg("local_decay"),
      py::arg("local_rate"), py::arg("momentum"),
      "One pass of Caffe's SGD update (L2 decay, momentum, data -= step), the scalars "
      "rounded to the arrays' dtype; diff and history end up holding the step.");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
