// PReLU on the CPU in one pass each way: the numpy expression takes five passes over
// the activations forward and as many backward, which made PReLU a tenth of a
// SphereFace step. Arrays are (num, channels, inner); a shared slope is channels = 1
// with the real channels folded into inner (as in the CUDA twin, cuda/prelu.cu).
#include <pybind11/numpy.h>

#include <string>

#include "array_checks.h"
#include "bind_registry.h"
#include "parallel.h"

namespace pfl {

namespace {

namespace py = pybind11;

struct PreluDims {
  long num, channels, inner;
};

// Caffe's expressions, kept exactly (NaN in gives what Caffe gives). Written without
// branches so that they vectorise; the file is built with -fno-trapping-math, without
// which GCC will not if-convert the comparisons.
template <typename T>
inline T prelu_value(T x, T a) {
  return (x < T(0) ? T(0) : x) + a * (T(0) < x ? T(0) : x);  // max(x, 0) + a * min(x, 0)
}

template <typename T>
inline T prelu_data_factor(T x, T a) {
  return static_cast<T>(x > T(0)) + a * static_cast<T>(x <= T(0));
}

// fn(offset, slope) for every (image, channel) row of d.inner values, on the
// element-wise threads (parallel.h): rows are independent.
template <typename T, typename Fn>
void for_each_row(const T* slope, PreluDims d, Fn fn) {
  const long rows = d.num * d.channels;
  const int threads = threads_for(rows * d.inner);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
  for (long r = 0; r < rows; ++r) fn(r * d.inner, slope[r % d.channels]);
  (void)threads;
}

// save (optional, another array): receives x in the same pass (an in-place layer's
// copy of its bottom for backward); y may then be x itself.
template <typename T>
void prelu_forward_cpu(const T* x, const T* slope, T* y, PreluDims d, T* save) {
  for_each_row(slope, d, [=](long base, T a) {
    if (save) {
      const T* in = x + base;
      T* out = y + base;
      T* __restrict__ keep = save + base;
      for (long j = 0; j < d.inner; ++j) {
        const T v = in[j];
        keep[j] = v;
        out[j] = prelu_value(v, a);
      }
      return;
    }
    const T* __restrict__ in = x + base;
    T* __restrict__ out = y + base;
    for (long j = 0; j < d.inner; ++j) out[j] = prelu_value(in[j], a);
  });
}

// Adds sum(dy * x * (x <= 0)) per channel to slope_diff: eight partial sums per image
// (so that it vectorises), the images added in double. kWriteDx: the data gradient
// dx = dy * ((x > 0) + a * (x <= 0)) is written in the same pass (dx may be dy: each
// value is read before it is written, so the loop has no carried dependency).
template <typename T, bool kWriteDx>
void prelu_slope_grad_cpu(const T* x, const T* dy, T* slope_diff, PreluDims d,
                          const T* slope = nullptr, T* dx = nullptr) {
  // One channel per thread, each summed in the same order as serially: the result does
  // not depend on the thread count.
  const int threads = threads_for(d.num * d.channels * d.inner);
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
#endif
  for (long c = 0; c < d.channels; ++c) {
    const T a = kWriteDx ? slope[c] : T(0);
    double sum = 0.0;
    for (long n = 0; n < d.num; ++n) {
      const long base = (n * d.channels + c) * d.inner;
      const T* in = x + base;
      const T* grad = dy + base;
      T* out = kWriteDx ? dx + base : nullptr;
      T part[8] = {};
      long j = 0;
#pragma GCC ivdep
      for (; j + 8 <= d.inner; j += 8)
        for (int k = 0; k < 8; ++k) {
          const T g = grad[j + k], v = in[j + k];
          part[k] += g * v * static_cast<T>(v <= T(0));
          if (kWriteDx) out[j + k] = g * prelu_data_factor(v, a);
        }
      for (; j < d.inner; ++j) {
        const T g = grad[j], v = in[j];
        part[0] += g * v * static_cast<T>(v <= T(0));
        if (kWriteDx) out[j] = g * prelu_data_factor(v, a);
      }
      for (int k = 0; k < 8; ++k) sum += part[k];
    }
    slope_diff[c] += static_cast<T>(sum);
  }
  (void)threads;
}

// dx = dy * ((x > 0) + a * (x <= 0)); dx may be dy itself.
template <typename T>
void prelu_data_grad_cpu(const T* x, const T* dy, const T* slope, T* dx, PreluDims d) {
  for_each_row(slope, d, [=](long base, T a) {
    const T* __restrict__ in = x + base;
    T* __restrict__ out = dx + base;
    if (dy == dx) {  // in place: a loop of its own, so that restrict stays true
      for (long j = 0; j < d.inner; ++j) out[j] *= prelu_data_factor(in[j], a);
    } else {
      const T* __restrict__ grad = dy + base;
      for (long j = 0; j < d.inner; ++j) out[j] = grad[j] * prelu_data_factor(in[j], a);
    }
  });
}

template <typename T>
py::array_t<T> checked(const py::handle& obj, const std::string& what, const py::array_t<T>& like) {
  auto arr = require_array<T>(obj, what);
  if (arr.ndim() != like.ndim() ||
      !std::equal(arr.shape(), arr.shape() + arr.ndim(), like.shape()))
    throw py::value_error(what + ": shape differs from the bottom's");
  return arr;
}

template <typename T>
PreluDims dims_of(const py::array_t<T>& x, const py::array_t<T>& slope, bool shared,
                  const std::string& fn) {
  if (x.ndim() != 3)
    throw py::value_error(fn + ": bottom must be a (num, channels, inner) array, got " +
                          std::to_string(x.ndim()) + " axes");
  PreluDims d{static_cast<long>(x.shape(0)), static_cast<long>(x.shape(1)),
              static_cast<long>(x.shape(2))};
  if (shared) {
    d.inner *= d.channels;
    d.channels = 1;
  }
  if (static_cast<long>(slope.size()) != d.channels)
    throw py::value_error(fn + ": " + std::to_string(slope.size()) + " slopes for " +
                          std::to_string(d.channels) + " channels");
  return d;
}

template <typename T>
void forward(const py::handle& x_obj, const py::handle& slope_obj, const py::handle& y_obj,
             bool shared, const py::handle& save_obj) {
  auto x = require_array<T>(x_obj, "prelu_forward: bottom");
  auto slope = require_array<T>(slope_obj, "prelu_forward: slope");
  auto y = checked<T>(y_obj, "prelu_forward: top", x);
  PreluDims d = dims_of(x, slope, shared, "prelu_forward");
  T* save = nullptr;
  py::array_t<T> save_arr;  // keeps the reference alive
  if (!save_obj.is_none()) {
    save_arr = checked<T>(save_obj, "prelu_forward: save", x);
    save = save_arr.mutable_data();
    const long n = static_cast<long>(x.size());
    for (const T* other : {x.data(), static_cast<const T*>(y.data())})
      if (n && save < other + n && other < save + n)
        throw py::value_error("prelu_forward: save must not overlap the bottom or the top");
  }
  py::gil_scoped_release release;
  prelu_forward_cpu<T>(x.data(), slope.data(), y.mutable_data(), d, save);
}

template <typename T>
void backward(const py::handle& x_obj, const py::handle& dy_obj, const py::handle& slope_obj,
              const py::handle& dx_obj, const py::handle& slope_diff_obj, bool shared) {
  auto x = require_array<T>(x_obj, "prelu_backward: bottom");
  auto dy = checked<T>(dy_obj, "prelu_backward: top diff", x);
  auto slope = require_array<T>(slope_obj, "prelu_backward: slope");
  PreluDims d = dims_of(x, slope, shared, "prelu_backward");
  T* slope_diff = nullptr;
  T* dx = nullptr;
  py::array_t<T> slope_diff_arr, dx_arr;  // keep the references alive
  if (!slope_diff_obj.is_none()) {
    slope_diff_arr = require_array<T>(slope_diff_obj, "prelu_backward: slope diff");
    if (slope_diff_arr.size() != slope.size())
      throw py::value_error("prelu_backward: slope diff size differs from the slopes'");
    slope_diff = slope_diff_arr.mutable_data();
  }
  if (!dx_obj.is_none()) {
    dx_arr = checked<T>(dx_obj, "prelu_backward: bottom diff", x);
    dx = dx_arr.mutable_data();
  }
  py::gil_scoped_release release;
  if (slope_diff && dx && d.channels > 1) {  // both in one pass, a channel per thread
    prelu_slope_grad_cpu<T, true>(x.data(), dy.data(), slope_diff, d, slope.data(), dx);
    return;
  }
  // The slope gradient reads dy before dx (possibly dy itself) is overwritten.
  if (slope_diff) prelu_slope_grad_cpu<T, false>(x.data(), dy.data(), slope_diff, d);
  if (dx) prelu_data_grad_cpu<T>(x.data(), dy.data(), slope.data(), dx, d);
}

void bind(py::module_& m) {
  m.def(
      "prelu_forward",
      [](py::handle x, py::handle slope, py::handle y, bool shared, py::handle save) {
        if (is_double(x)) return forward<double>(x, slope, y, shared, save);
        forward<float>(x, slope, y, shared, save);
      },
      py::arg("bottom"), py::arg("slope"), py::arg("top"), py::arg("channel_shared"),
      py::arg("save") = py::none(),
      "top = max(x, 0) + a * min(x, 0) over (num, channels, inner) arrays; save (unless "
      "None, another array) receives the bottom in the same pass (top may be the bottom).");
  m.def(
      "prelu_backward",
      [](py::handle x, py::handle dy, py::handle slope, py::handle dx, py::handle slope_diff,
         bool shared) {
        if (is_double(x)) return backward<double>(x, dy, slope, dx, slope_diff, shared);
        backward<float>(x, dy, slope, dx, slope_diff, shared);
      },
      py::arg("bottom"), py::arg("top_diff"), py::arg("slope"), py::arg("bottom_diff"),
      py::arg("slope_diff"), py::arg("channel_shared"),
      "Adds the slope gradient to slope_diff (unless None), then overwrites bottom_diff "
      "(unless None; may be top_diff) with dy * (x <= 0 ? a : 1).");
  m.def("set_elementwise_threads", &set_elementwise_threads, py::arg("threads"),
        "Threads of the element-wise kernels (PReLU, array sums, SGD): n <= 0 gives "
        "OpenMP's default; always 1 in a build without OpenMP.");
  m.def("elementwise_threads", [] { return elementwise_thread_count; },
        "Threads the element-wise kernels use now (1 until set).");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
