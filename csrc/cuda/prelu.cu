// PReLU on the GPU in one pass each way (the numpy-style cupy expression takes
// several passes over the data). Data viewed as (num, channels, inner); a shared
// slope is channels = 1 with the real channels folded into inner.
#include <cstdint>
#include <string>

#include "../bind_registry.h"
#include "cuda_check.h"
#include "reduce.cuh"

namespace pfl {

namespace {

template <typename T>
__global__ void prelu_forward_kernel(const T* x, const T* slope, T* y, long total, long channels,
                                     long inner) {
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const T v = x[idx];
    const T a = slope[(idx / inner) % channels];
    y[idx] = v > T(0) ? v : a * v;  // max(v, 0) + a * min(v, 0)
  }
}

template <typename T>
__global__ void prelu_backward_data_kernel(const T* x, const T* dy, const T* slope, T* dx,
                                           long total, long channels, long inner) {
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const T a = slope[(idx / inner) % channels];
    dx[idx] = dy[idx] * (x[idx] <= T(0) ? a : T(1));
  }
}

// Block (c, s) sums dy * x over x <= 0 for channel c and the images of segment s;
// partial has channels x segments entries (summed by the caller, deterministic).
template <typename T>
__global__ void prelu_backward_slope_kernel(const T* x, const T* dy, T* partial, long num,
                                            long channels, long inner, long segments) {
  const long c = blockIdx.x;
  const long seg = blockIdx.y;
  const long per = (num + segments - 1) / segments;
  const long n0 = seg * per;
  const long n1 = n0 + per < num ? n0 + per : num;
  T sum = T(0);
  if (n0 < n1) {
    const long count = (n1 - n0) * inner;
    for (long t = threadIdx.x; t < count; t += blockDim.x) {
      const long n = n0 + t / inner;
      const long j = t - (t / inner) * inner;
      const long idx = (n * channels + c) * inner + j;
      const T v = x[idx];
      if (v <= T(0)) sum += dy[idx] * v;
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[c * segments + seg] = sum;
}

namespace py = pybind11;
using uptr = std::uintptr_t;

void require_dims(long num, long channels, long inner, const char* fn) {
  if (num < 0 || channels < 1 || inner < 0)
    throw py::value_error(std::string(fn) + ": bad sizes");
}

void bind(py::module_& m) {
  m.def(
      "prelu_forward",
      [](uptr x, uptr slope, uptr y, long num, long channels, long inner, bool is_double,
         uptr stream) {
        require_dims(num, channels, inner, "prelu_forward");
        const long total = num * channels * inner;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          prelu_forward_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(x), device_ptr<double>(slope), device_ptr<double>(y), total,
              channels, inner);
        else
          prelu_forward_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(x), device_ptr<float>(slope), device_ptr<float>(y), total,
              channels, inner);
        check_launch("prelu_forward");
      },
      py::arg("x"), py::arg("slope"), py::arg("y"), py::arg("num"), py::arg("channels"),
      py::arg("inner"), py::arg("is_double"), py::arg("stream"));
  m.def(
      "prelu_backward_data",
      [](uptr x, uptr dy, uptr slope, uptr dx, long num, long channels, long inner,
         bool is_double, uptr stream) {
        require_dims(num, channels, inner, "prelu_backward_data");
        const long total = num * channels * inner;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          prelu_backward_data_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(x), device_ptr<double>(dy), device_ptr<double>(slope),
              device_ptr<double>(dx), total, channels, inner);
        else
          prelu_backward_data_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(x), device_ptr<float>(dy), device_ptr<float>(slope),
              device_ptr<float>(dx), total, channels, inner);
        check_launch("prelu_backward_data");
      },
      py::arg("x"), py::arg("dy"), py::arg("slope"), py::arg("dx"), py::arg("num"),
      py::arg("channels"), py::arg("inner"), py::arg("is_double"), py::arg("stream"));
  m.def(
      "prelu_backward_slope",
      [](uptr x, uptr dy, uptr partial, long num, long channels, long inner, long segments,
         bool is_double, uptr stream) {
        require_dims(num, channels, inner, "prelu_backward_slope");
        if (segments < 1 || segments > 65535 || channels > 2147483647L)
          throw py::value_error("prelu_backward_slope: segments must be in [1, 65535]");
        auto s = stream_of(stream);
        const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(segments));
        if (is_double)
          prelu_backward_slope_kernel<double><<<grid, kThreads, 0, s>>>(
              device_ptr<double>(x), device_ptr<double>(dy), device_ptr<double>(partial), num,
              channels, inner, segments);
        else
          prelu_backward_slope_kernel<float><<<grid, kThreads, 0, s>>>(
              device_ptr<float>(x), device_ptr<float>(dy), device_ptr<float>(partial), num,
              channels, inner, segments);
        check_launch("prelu_backward_slope");
      },
      py::arg("x"), py::arg("dy"), py::arg("partial"), py::arg("num"), py::arg("channels"),
      py::arg("inner"), py::arg("segments"), py::arg("is_double"), py::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
