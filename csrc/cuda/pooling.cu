// CUDA twins of ../pooling.cpp: MAX and AVE pooling over (planes, height, width),
// window bounds from ../pooling_math.h (shared with the CPU). AVE backward gathers
// (one thread per input pixel, windows in the CPU's order), so it needs no atomics
// and sums exactly as the CPU does; MAX backward scatters (see its kernel).
#include <cstdint>
#include <string>

#include "../bind_registry.h"
#include "../pooling_math.h"
#include "cuda_check.h"

namespace pfl {

namespace {

// The pooled windows [first, last) along one axis that contain input index i.
struct WindowSpan {
  long first, last;
};

__device__ __forceinline__ WindowSpan windows_covering(long i, long kernel, long stride, long pad,
                                                       long pooled) {
  const long first = (i + pad < kernel) ? 0 : (i + pad - kernel) / stride + 1;
  long last = (i + pad) / stride + 1;
  if (last > pooled) last = pooled;
  return WindowSpan{first, last};
}

template <typename T>
__global__ void max_forward_kernel(const T* bottom, PoolGeometry g, T* top, int64_t* mask) {
  const long pooled = g.pooled_h * g.pooled_w;
  const long total = g.planes * pooled;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long pw = idx % g.pooled_w;
    const long ph = (idx / g.pooled_w) % g.pooled_h;
    const long p = idx / pooled;
    top[idx] = max_window(bottom + p * g.height * g.width, g, ph, pw, mask + idx);
  }
}

// Scatter each top diff to its argmax (the CPU's signature carries no window
// geometry). bottom_diff was zeroed; overlapping windows may add to one pixel, hence
// the atomics (the order of those few additions may vary between runs). A mask value
// that is no pixel of the plane is skipped.
template <typename T>
__global__ void max_backward_kernel(const T* top_diff, const int64_t* mask, long planes,
                                    long plane, long pooled, T* bottom_diff) {
  const long total = planes * pooled;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const int64_t arg = mask[idx];
    if (arg < 0 || arg >= plane) continue;
    atomicAdd(bottom_diff + (idx / pooled) * plane + arg, top_diff[idx]);
  }
}

template <typename T>
__global__ void ave_forward_kernel(const T* bottom, PoolGeometry g, T* top) {
  const long pooled = g.pooled_h * g.pooled_w;
  const long total = g.planes * pooled;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long pw = idx % g.pooled_w;
    const long ph = (idx / g.pooled_w) % g.pooled_h;
    const long p = idx / pooled;
    top[idx] = ave_window(bottom + p * g.height * g.width, g, ph, pw);
  }
}

template <typename T>
__global__ void ave_backward_kernel(const T* top_diff, PoolGeometry g, T* bottom_diff) {
  const long plane = g.height * g.width;
  const long pooled = g.pooled_h * g.pooled_w;
  const long total = g.planes * plane;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long w = idx % g.width;
    const long h = (idx / g.width) % g.height;
    const long p = idx / plane;
    const WindowSpan sh = windows_covering(h, g.kernel_h, g.stride_h, g.pad_h, g.pooled_h);
    const WindowSpan sw = windows_covering(w, g.kernel_w, g.stride_w, g.pad_w, g.pooled_w);
    const T* td = top_diff + p * pooled;
    T sum = T(0);
    for (long ph = sh.first; ph < sh.last; ++ph) {
      const PoolRange rh = pool_range(ph, g.stride_h, g.pad_h, g.kernel_h, g.height);
      for (long pw = sw.first; pw < sw.last; ++pw) {
        const PoolRange rw = pool_range(pw, g.stride_w, g.pad_w, g.kernel_w, g.width);
        sum += td[ph * g.pooled_w + pw] / static_cast<T>(rh.padded_size * rw.padded_size);
      }
    }
    bottom_diff[idx] = sum;
  }
}

namespace py = pybind11;
using uptr = std::uintptr_t;

PoolGeometry make_geometry(long planes, long height, long width, long pooled_h, long pooled_w,
                           long kernel_h, long kernel_w, long stride_h, long stride_w,
                           long pad_h, long pad_w, const char* fn) {
  if (planes < 0 || height < 1 || width < 1 || pooled_h < 1 || pooled_w < 1 || kernel_h < 1 ||
      kernel_w < 1 || stride_h < 1 || stride_w < 1 || pad_h < 0 || pad_w < 0 ||
      pad_h >= kernel_h || pad_w >= kernel_w)
    throw py::value_error(std::string(fn) + ": bad pooling geometry");
  return PoolGeometry{planes, height, width, pooled_h, pooled_w, kernel_h, kernel_w,
                      stride_h, stride_w, pad_h, pad_w};
}

#define PFL_POOL_GEOMETRY_ARGS                                                          \
  long planes, long height, long width, long pooled_h, long pooled_w, long kernel_h,   \
      long kernel_w, long stride_h, long stride_w, long pad_h, long pad_w
#define PFL_POOL_GEOMETRY_NAMES                                                         \
  py::arg("planes"), py::arg("height"), py::arg("width"), py::arg("pooled_h"),          \
      py::arg("pooled_w"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), \
      py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w")
#define PFL_POOL_GEOMETRY(fn)                                                            \
  make_geometry(planes, height, width, pooled_h, pooled_w, kernel_h, kernel_w, stride_h, \
                stride_w, pad_h, pad_w, fn)

void bind(py::module_& m) {
  m.def(
      "max_pool_forward",
      [](uptr bottom, uptr top, uptr mask, PFL_POOL_GEOMETRY_ARGS, bool is_double,
         uptr stream) {
        const PoolGeometry g = PFL_POOL_GEOMETRY("max_pool_forward");
        const long total = g.planes * g.pooled_h * g.pooled_w;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          max_forward_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(bottom), g, device_ptr<double>(top), device_ptr<int64_t>(mask));
        else
          max_forward_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(bottom), g, device_ptr<float>(top), device_ptr<int64_t>(mask));
        check_launch("max_pool_forward");
      },
      py::arg("bottom"), py::arg("top"), py::arg("mask"), PFL_POOL_GEOMETRY_NAMES,
      py::arg("is_double"), py::arg("stream"));
  m.def(
      "max_pool_backward",
      [](uptr top_diff, uptr mask, uptr bottom_diff, long planes, long plane, long pooled,
         bool is_double, uptr stream) {
        if (planes < 0 || plane < 1 || pooled < 1)
          throw py::value_error("max_pool_backward: bad sizes");
        auto s = stream_of(stream);
        const size_t bytes = static_cast<size_t>(planes * plane) * (is_double ? 8 : 4);
        if (bytes == 0) return;
        check_cuda(cudaMemsetAsync(device_ptr<void>(bottom_diff), 0, bytes, s),
                   "max_pool_backward (clear)");
        const long total = planes * pooled;
        if (is_double)
          max_backward_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(top_diff), device_ptr<int64_t>(mask), planes, plane, pooled,
              device_ptr<double>(bottom_diff));
        else
          max_backward_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(top_diff), device_ptr<int64_t>(mask), planes, plane, pooled,
              device_ptr<float>(bottom_diff));
        check_launch("max_pool_backward");
      },
      py::arg("top_diff"), py::arg("mask"), py::arg("bottom_diff"), py::arg("planes"),
      py::arg("plane"), py::arg("pooled"), py::arg("is_double"), py::arg("stream"));
  m.def(
      "ave_pool_forward",
      [](uptr bottom, uptr top, PFL_POOL_GEOMETRY_ARGS, bool is_double, uptr stream) {
        const PoolGeometry g = PFL_POOL_GEOMETRY("ave_pool_forward");
        const long total = g.planes * g.pooled_h * g.pooled_w;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          ave_forward_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(bottom), g, device_ptr<double>(top));
        else
          ave_forward_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(bottom), g, device_ptr<float>(top));
        check_launch("ave_pool_forward");
      },
      py::arg("bottom"), py::arg("top"), PFL_POOL_GEOMETRY_NAMES, py::arg("is_double"),
      py::arg("stream"));
  m.def(
      "ave_pool_backward",
      [](uptr top_diff, uptr bottom_diff, PFL_POOL_GEOMETRY_ARGS, bool is_double, uptr stream) {
        const PoolGeometry g = PFL_POOL_GEOMETRY("ave_pool_backward");
        const long total = g.planes * g.height * g.width;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          ave_backward_kernel<double><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<double>(top_diff), g, device_ptr<double>(bottom_diff));
        else
          ave_backward_kernel<float><<<grid_for(total), kThreads, 0, s>>>(
              device_ptr<float>(top_diff), g, device_ptr<float>(bottom_diff));
        check_launch("ave_pool_backward");
      },
      py::arg("top_diff"), py::arg("bottom_diff"), PFL_POOL_GEOMETRY_NAMES,
      py::arg("is_double"), py::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
