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

// I is the index type: 32-bit when every index fits (the common case: 64-bit integer
// division costs several times more and these passes are memory-bound only without it).
// With ``save`` the input is also copied there (an in-place layer keeps its bottom for
// the backward in the same pass).
template <typename T, typename I>
__global__ void prelu_forward_kernel(const T* x, const T* slope, T* y, T* save, I total,
                                     I channels, I inner) {
  for (I idx = (I)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (I)gridDim.x * blockDim.x) {
    const T v = x[idx];
    if (save) save[idx] = v;
    const T a = slope[(idx / inner) % channels];
    y[idx] = v > T(0) ? v : a * v;  // max(v, 0) + a * min(v, 0)
  }
}

template <typename T, typename I>
__global__ void prelu_backward_data_kernel(const T* x, const T* dy, const T* slope, T* dx,
                                           I total, I channels, I inner) {
  for (I idx = (I)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (I)gridDim.x * blockDim.x) {
    const T a = slope[(idx / inner) % channels];
    dx[idx] = dy[idx] * (x[idx] <= T(0) ? a : T(1));
  }
}

template <typename T, typename I>
__global__ void prelu_backward_slope_kernel(const T* x, const T* dy, T* partial, I num,
                                            I channels, I inner, I segments) {
  const I c = blockIdx.x;
  const I seg = blockIdx.y;
  const I per = (num + segments - 1) / segments;
  const I n0 = seg * per;
  const I n1 = n0 + per < num ? n0 + per : num;
  T sum = T(0);
  if (n0 < n1) {
    const I count = (n1 - n0) * inner;
    for (I t = threadIdx.x; t < count; t += blockDim.x) {
      const I q = t / inner;
      const I idx = ((n0 + q) * channels + c) * inner + (t - q * inner);
      const T v = x[idx];
      if (v <= T(0)) sum += dy[idx] * v;
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[c * segments + seg] = sum;
}

// Whether 32-bit indices reach every element (with room for the grid stride).
bool small_index(long total) { return total < (1L << 31); }

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
         uptr stream, uptr save) {
        require_dims(num, channels, inner, "prelu_forward");
        const long total = num * channels * inner;
        if (total == 0) return;
        auto s = stream_of(stream);
        const int grid = grid_for(total);
#define PFL_PRELU_FWD(T, I)                                                              \
  prelu_forward_kernel<T, I><<<grid, kThreads, 0, s>>>(                                  \
      device_ptr<T>(x), device_ptr<T>(slope), device_ptr<T>(y), device_ptr<T>(save),     \
      static_cast<I>(total), static_cast<I>(channels), static_cast<I>(inner))
        if (is_double) {
          if (small_index(total)) PFL_PRELU_FWD(double, unsigned); else PFL_PRELU_FWD(double, long);
        } else {
          if (small_index(total)) PFL_PRELU_FWD(float, unsigned); else PFL_PRELU_FWD(float, long);
        }
#undef PFL_PRELU_FWD
        check_launch("prelu_forward");
      },
      py::arg("x"), py::arg("slope"), py::arg("y"), py::arg("num"), py::arg("channels"),
      py::arg("inner"), py::arg("is_double"), py::arg("stream"), py::arg("save") = 0);
  m.def(
      "prelu_backward_data",
      [](uptr x, uptr dy, uptr slope, uptr dx, long num, long channels, long inner,
         bool is_double, uptr stream) {
        require_dims(num, channels, inner, "prelu_backward_data");
        const long total = num * channels * inner;
        if (total == 0) return;
        auto s = stream_of(stream);
        const int grid = grid_for(total);
#define PFL_PRELU_BWD(T, I)                                                              \
  prelu_backward_data_kernel<T, I><<<grid, kThreads, 0, s>>>(                            \
      device_ptr<T>(x), device_ptr<T>(dy), device_ptr<T>(slope), device_ptr<T>(dx),      \
      static_cast<I>(total), static_cast<I>(channels), static_cast<I>(inner))
        if (is_double) {
          if (small_index(total)) PFL_PRELU_BWD(double, unsigned); else PFL_PRELU_BWD(double, long);
        } else {
          if (small_index(total)) PFL_PRELU_BWD(float, unsigned); else PFL_PRELU_BWD(float, long);
        }
#undef PFL_PRELU_BWD
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
#define PFL_PRELU_SLOPE(T, I)                                                            \
  prelu_backward_slope_kernel<T, I><<<grid, kThreads, 0, s>>>(                           \
      device_ptr<T>(x), device_ptr<T>(dy), device_ptr<T>(partial), static_cast<I>(num),  \
      static_cast<I>(channels), static_cast<I>(inner), static_cast<I>(segments))
        const bool small = small_index(num * channels * inner);
        if (is_double) {
          if (small) PFL_PRELU_SLOPE(double, unsigned); else PFL_PRELU_SLOPE(double, long);
        } else {
          if (small) PFL_PRELU_SLOPE(float, unsigned); else PFL_PRELU_SLOPE(float, long);
        }
#undef PFL_PRELU_SLOPE
        check_launch("prelu_backward_slope");
      },
      py::arg("x"), py::arg("dy"), py::arg("partial"), py::arg("num"), py::arg("channels"),
      py::arg("inner"), py::arg("segments"), py::arg("is_double"), py::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
