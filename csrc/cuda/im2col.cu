// CUDA twins of ../im2col.cpp (2-D, with padding, stride and dilation), same layout:
// images (num, channels, height, width); columns (channels*kernel_h*kernel_w, num,
// out_h*out_w). col2im gathers (one thread per pixel, kernel offsets in the CPU's
// order), so it needs no atomics and sums exactly as the CPU does.
#include <cstdint>
#include <string>

#include "../bind_registry.h"
#include "cuda_check.h"

namespace pfl {

namespace {

struct Geometry2D {
  long num, channels, height, width;
  long kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  long out_h, out_w;
};

// One thread per (channel, image, output position): writes its kernel_h*kernel_w
// column entries.
template <typename T>
__global__ void im2col_kernel(const T* im, Geometry2D g, T* col) {
  const long positions = g.out_h * g.out_w;
  const long row_len = g.num * positions;
  const long total = g.channels * row_len;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long ow = idx % g.out_w;
    const long oh = (idx / g.out_w) % g.out_h;
    const long n = (idx / positions) % g.num;
    const long c = idx / row_len;
    const T* src = im + (n * g.channels + c) * g.height * g.width;
    T* dst = col + (c * g.kernel_h * g.kernel_w) * row_len + n * positions + oh * g.out_w + ow;
    for (long ki = 0; ki < g.kernel_h; ++ki) {
      const long h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
      for (long kj = 0; kj < g.kernel_w; ++kj) {
        const long w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
        const bool inside = h >= 0 && h < g.height && w >= 0 && w < g.width;
        *dst = inside ? src[h * g.width + w] : T(0);
        dst += row_len;
      }
    }
  }
}

// One thread per image pixel: the sum of every column entry that im2col took from it.
template <typename T>
__global__ void col2im_kernel(const T* col, Geometry2D g, T* im) {
  const long positions = g.out_h * g.out_w;
  const long row_len = g.num * positions;
  const long plane = g.height * g.width;
  const long total = g.num * g.channels * plane;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long w = idx % g.width;
    const long h = (idx / g.width) % g.height;
    const long c = (idx / plane) % g.channels;
    const long n = idx / (plane * g.channels);
    const T* src = col + (c * g.kernel_h * g.kernel_w) * row_len + n * positions;
    T sum = T(0);
    for (long ki = 0; ki < g.kernel_h; ++ki) {
      const long h_off = h + g.pad_h - ki * g.dilation_h;
      const bool h_ok = h_off >= 0 && h_off % g.stride_h == 0 && h_off / g.stride_h < g.out_h;
      for (long kj = 0; kj < g.kernel_w; ++kj) {
        const long w_off = w + g.pad_w - kj * g.dilation_w;
        if (h_ok && w_off >= 0 && w_off % g.stride_w == 0 && w_off / g.stride_w < g.out_w)
          sum += src[(ki * g.kernel_w + kj) * row_len + (h_off / g.stride_h) * g.out_w +
                     w_off / g.stride_w];
      }
    }
    im[idx] = sum;
  }
}

namespace py = pybind11;
using uptr = std::uintptr_t;

Geometry2D make_geometry(long num, long channels, long height, long width, long kernel_h,
                         long kernel_w, long pad_h, long pad_w, long stride_h, long stride_w,
                         long dilation_h, long dilation_w, const char* fn) {
  if (num < 0 || channels < 0 || height < 1 || width < 1 || kernel_h < 1 || kernel_w < 1 ||
      stride_h < 1 || stride_w < 1 || dilation_h < 1 || dilation_w < 1 || pad_h < 0 || pad_w < 0)
    throw py::value_error(std::string(fn) + ": bad geometry (sizes, kernel, stride and "
                          "dilation must be >= 1, pad >= 0)");
  Geometry2D g{num, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,
               stride_h, stride_w, dilation_h, dilation_w, 0, 0};
  g.out_h = (height + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) / stride_h + 1;
  g.out_w = (width + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) / stride_w + 1;
  if (g.out_h < 1 || g.out_w < 1)
    throw py::value_error(std::string(fn) + ": the (dilated) kernel is larger than the padded image");
  return g;
}

void bind(py::module_& m) {
  m.def(
      "im2col",
      [](uptr im, uptr col, long num, long channels, long height, long width, long kernel_h,
         long kernel_w, long pad_h, long pad_w, long stride_h, long stride_w, long dilation_h,
         long dilation_w, bool is_double, uptr stream) {
        const Geometry2D g = make_geometry(num, channels, height, width, kernel_h, kernel_w,
                                           pad_h, pad_w, stride_h, stride_w, dilation_h,
                                           dilation_w, "im2col");
        const long total = g.channels * g.num * g.out_h * g.out_w;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          im2col_kernel<double><<<grid_for(total), kThreads, 0, s>>>(device_ptr<double>(im), g,
                                                                     device_ptr<double>(col));
        else
          im2col_kernel<float><<<grid_for(total), kThreads, 0, s>>>(device_ptr<float>(im), g,
                                                                    device_ptr<float>(col));
        check_launch("im2col");
      },
      py::arg("im"), py::arg("col"), py::arg("num"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("pad_h"),
      py::arg("pad_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("dilation_h"),
      py::arg("dilation_w"), py::arg("is_double"), py::arg("stream"));
  m.def(
      "col2im",
      [](uptr col, uptr im, long num, long channels, long height, long width, long kernel_h,
         long kernel_w, long pad_h, long pad_w, long stride_h, long stride_w, long dilation_h,
         long dilation_w, bool is_double, uptr stream) {
        const Geometry2D g = make_geometry(num, channels, height, width, kernel_h, kernel_w,
                                           pad_h, pad_w, stride_h, stride_w, dilation_h,
                                           dilation_w, "col2im");
        const long total = g.num * g.channels * g.height * g.width;
        if (total == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          col2im_kernel<double><<<grid_for(total), kThreads, 0, s>>>(device_ptr<double>(col), g,
                                                                     device_ptr<double>(im));
        else
          col2im_kernel<float><<<grid_for(total), kThreads, 0, s>>>(device_ptr<float>(col), g,
                                                                    device_ptr<float>(im));
        check_launch("col2im");
      },
      py::arg("col"), py::arg("im"), py::arg("num"), py::arg("channels"), py::arg("height"),
      py::arg("width"), py::arg("kernel_h"), py::arg("kernel_w"), py::arg("pad_h"),
      py::arg("pad_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("dilation_h"),
      py::arg("dilation_w"), py::arg("is_double"), py::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
