// im2col / col2im CPU kernels and their Python bindings (see im2col.h).
#include "im2col.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <string>
#include <vector>

#include "array_checks.h"
#include "bind_registry.h"

namespace pfl {

template <typename T>
void im2col_cpu(const T* im, const ConvGeometry& g, T* col) {
  const long plane = g.height * g.width;
  const long out_plane = g.out_h * g.out_w;
  const long row_len = g.num * out_plane;  // one column-buffer row covers all images
  for (long c = 0; c < g.channels; ++c) {
    for (long ki = 0; ki < g.kernel_h; ++ki) {
      for (long kj = 0; kj < g.kernel_w; ++kj) {
        const long row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        for (long n = 0; n < g.num; ++n) {
          const T* src = im + (n * g.channels + c) * plane;
          T* dst = col + row * row_len + n * out_plane;
          for (long oh = 0; oh < g.out_h; ++oh) {
            const long h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
            T* out_row = dst + oh * g.out_w;
            if (h < 0 || h >= g.height) {
              std::fill(out_row, out_row + g.out_w, T(0));
              continue;
            }
            const T* in_row = src + h * g.width;
            for (long ow = 0; ow < g.out_w; ++ow) {
              const long w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
              out_row[ow] = (w >= 0 && w < g.width) ? in_row[w] : T(0);
            }
          }
        }
      }
    }
  }
}

template <typename T>
void col2im_cpu(const T* col, const ConvGeometry& g, T* im) {
  const long plane = g.height * g.width;
  const long out_plane = g.out_h * g.out_w;
  const long row_len = g.num * out_plane;
  std::fill(im, im + g.num * g.channels * plane, T(0));
  for (long c = 0; c < g.channels; ++c) {
    for (long ki = 0; ki < g.kernel_h; ++ki) {
      for (long kj = 0; kj < g.kernel_w; ++kj) {
        const long row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        for (long n = 0; n < g.num; ++n) {
          T* dst = im + (n * g.channels + c) * plane;
          const T* src = col + row * row_len + n * out_plane;
          for (long oh = 0; oh < g.out_h; ++oh) {
            const long h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
            if (h < 0 || h >= g.height) continue;
            const T* col_row = src + oh * g.out_w;
            T* im_row = dst + h * g.width;
            for (long ow = 0; ow < g.out_w; ++ow) {
              const long w = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
              if (w >= 0 && w < g.width) im_row[w] += col_row[ow];
            }
          }
        }
      }
    }
  }
}

template void im2col_cpu<float>(const float*, const ConvGeometry&, float*);
template void im2col_cpu<double>(const double*, const ConvGeometry&, double*);
template void col2im_cpu<float>(const float*, const ConvGeometry&, float*);
template void col2im_cpu<double>(const double*, const ConvGeometry&, double*);

namespace {

namespace py = pybind11;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks the parameters and the image/column shapes; fills in the geometry.
ConvGeometry make_geometry(const py::array& im, const py::array& col, long kernel_h,
                           long kernel_w, long pad_h, long pad_w, long stride_h,
                           long stride_w, long dilation_h, long dilation_w,
                           const char* fn) {
  const std::string name(fn);
  if (kernel_h < 1 || kernel_w < 1 || stride_h < 1 || stride_w < 1 || dilation_h < 1 ||
      dilation_w < 1 || pad_h < 0 || pad_w < 0)
    throw py::value_error(name + ": kernel, stride and dilation must be >= 1 and pad >= 0");
  if (im.ndim() != 4)
    throw py::value_error(name + ": image must be 4-D (num, channels, height, width), got " +
                          shape_str(im));
  ConvGeometry g{im.shape(0), im.shape(1), im.shape(2), im.shape(3), kernel_h, kernel_w,
                 pad_h,       pad_w,       stride_h,    stride_w,    dilation_h, dilation_w,
                 0,           0};
  g.out_h = conv_out_size(g.height, kernel_h, pad_h, stride_h, dilation_h);
  g.out_w = conv_out_size(g.width, kernel_w, pad_w, stride_w, dilation_w);
  if (g.out_h < 1 || g.out_w < 1)
    throw py::value_error(name + ": the (dilated) kernel is larger than the padded image");
  const long rows = g.channels * kernel_h * kernel_w;
  if (col.ndim() != 3 || col.shape(0) != rows || col.shape(1) != g.num ||
      col.shape(2) != g.out_h * g.out_w)
    throw py::value_error(name + ": column buffer must have shape (" + std::to_string(rows) +
                          ", " + std::to_string(g.num) + ", " +
                          std::to_string(g.out_h * g.out_w) + "), got " + shape_str(col));
  return g;
}

template <typename T>
void im2col_array(const py::array& im_obj, const py::array& col_obj, const long* p) {
  auto im = require_array<T>(im_obj, "im2col: image");
  auto col = require_array<T>(col_obj, "im2col: columns");
  ConvGeometry g = make_geometry(im, col, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                 "im2col");
  T* out = col.mutable_data();
  py::gil_scoped_release release;
  im2col_cpu<T>(im.data(), g, out);
}

template <typename T>
void col2im_array(const py::array& col_obj, const py::array& im_obj, const long* p) {
  auto col = require_array<T>(col_obj, "col2im: columns");
  auto im = require_array<T>(im_obj, "col2im: image");
  ConvGeometry g = make_geometry(im, col, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                 "col2im");
  T* out = im.mutable_data();
  py::gil_scoped_release release;
  col2im_cpu<T>(col.data(), g, out);
}

bool is_double(const py::array& a) { return a.dtype().is(py::dtype::of<double>()); }

void bind(py::module_& m) {
  m.def(
      "im2col",
      [](const py::array& im, const py::array& col, long kernel_h, long kernel_w, long pad_h,
         long pad_w, long stride_h, long stride_w, long dilation_h, long dilation_w) {
        const long p[8] = {kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h,
                           dilation_w};
        if (is_double(im)) im2col_array<double>(im, col, p);
        else im2col_array<float>(im, col, p);
      },
      py::arg("im"), py::arg("col"), py::arg("kernel_h"), py::arg("kernel_w"),
      py::arg("pad_h"), py::arg("pad_w"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("dilation_h"), py::arg("dilation_w"),
      "Write the columns (C*kh*kw, N, out_h*out_w) of images (N, C, H, W) into col.");
  m.def(
      "col2im",
      [](const py::array& col, const py::array& im, long kernel_h, long kernel_w, long pad_h,
         long pad_w, long stride_h, long stride_w, long dilation_h, long dilation_w) {
        const long p[8] = {kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h,
                           dilation_w};
        if (is_double(col)) col2im_array<double>(col, im, p);
        else col2im_array<float>(col, im, p);
      },
      py::arg("col"), py::arg("im"), py::arg("kernel_h"), py::arg("kernel_w"),
      py::arg("pad_h"), py::arg("pad_w"), py::arg("stride_h"), py::arg("stride_w"),
      py::arg("dilation_h"), py::arg("dilation_w"),
      "Overwrite images (N, C, H, W) with the sum of their columns (inverse of im2col).");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
