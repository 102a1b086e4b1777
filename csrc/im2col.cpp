// im2col / col2im CPU kernels and their Python bindings (see im2col.h).
#include "im2col.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "array_checks.h"
#include "bind_registry.h"

namespace pfl {

namespace {

// The output columns ow in [lo, hi) whose input column ow*stride + offset lies in
// [0, width): lets the inner loops run without a bounds test per element.
struct ValidRange {
  long lo, hi;
};

ValidRange valid_columns(long offset, long stride, long width, long out_w) {
  long lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  long hi = offset > width - 1 ? 0 : (width - 1 - offset) / stride + 1;
  if (lo > out_w) lo = out_w;
  if (hi > out_w) hi = out_w;
  if (hi < lo) hi = lo;
  return ValidRange{lo, hi};
}

}  // namespace

template <typename T>
void im2col_cpu(const T* im, const ConvGeometry& g, T* col) {
  const long plane = g.height * g.width;
  const long out_plane = g.out_h * g.out_w;
  const long row_len = g.num * out_plane;  // one column-buffer row covers all images
  for (long c = 0; c < g.channels; ++c) {
    for (long ki = 0; ki < g.kernel_h; ++ki) {
      for (long kj = 0; kj < g.kernel_w; ++kj) {
        const long row = (c * g.kernel_h + ki) * g.kernel_w + kj;
        const long w_offset = kj * g.dilation_w - g.pad_w;
        const ValidRange r = valid_columns(w_offset, g.stride_w, g.width, g.out_w);
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
            std::fill(out_row, out_row + r.lo, T(0));
            if (g.stride_w == 1) {
              std::copy(in_row + r.lo + w_offset, in_row + r.hi + w_offset, out_row + r.lo);
            } else {
              for (long ow = r.lo; ow < r.hi; ++ow)
                out_row[ow] = in_row[ow * g.stride_w + w_offset];
            }
            std::fill(out_row + r.hi, out_row + g.out_w, T(0));
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
        const long w_offset = kj * g.dilation_w - g.pad_w;
        const ValidRange r = valid_columns(w_offset, g.stride_w, g.width, g.out_w);
        for (long n = 0; n < g.num; ++n) {
          T* dst = im + (n * g.channels + c) * plane;
          const T* src = col + row * row_len + n * out_plane;
          for (long oh = 0; oh < g.out_h; ++oh) {
            const long h = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
            if (h < 0 || h >= g.height) continue;
            const T* col_row = src + oh * g.out_w;
            T* im_row = dst + h * g.width;
            for (long ow = r.lo; ow < r.hi; ++ow)
              im_row[ow * g.stride_w + w_offset] += col_row[ow];
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

long product(const long* v, int n) {
  long p = 1;
  for (int i = 0; i < n; ++i) p *= v[i];
  return p;
}

// Walks every (row, image, output position) of the column buffer and calls
// visit(col_index, image_index) for the entries inside the image, or
// visit(col_index, -1) for those in the padding.
template <typename Visit>
void walk_nd(const ConvGeometryND& g, Visit visit) {
  const int d = g.axes;
  const long kernel_count = product(g.kernel, d);
  const long out_count = product(g.out, d);
  const long in_count = product(g.in, d);
  long k[kMaxSpatialAxes], o[kMaxSpatialAxes];
  for (long c = 0; c < g.channels; ++c) {
    for (long kidx = 0; kidx < kernel_count; ++kidx) {
      for (long rest = kidx, a = d - 1; a >= 0; --a) {
        k[a] = rest % g.kernel[a];
        rest /= g.kernel[a];
      }
      const long row = c * kernel_count + kidx;
      for (long n = 0; n < g.num; ++n) {
        const long im_base = (n * g.channels + c) * in_count;
        const long col_base = (row * g.num + n) * out_count;
        for (int a = 0; a < d; ++a) o[a] = 0;
        for (long oidx = 0; oidx < out_count; ++oidx) {
          long offset = 0;
          bool inside = true;
          for (int a = 0; a < d; ++a) {
            const long i = o[a] * g.stride[a] - g.pad[a] + k[a] * g.dilation[a];
            if (i < 0 || i >= g.in[a]) {
              inside = false;
              break;
            }
            offset = offset * g.in[a] + i;
          }
          visit(col_base + oidx, inside ? im_base + offset : -1);
          for (int a = d - 1; a >= 0; --a) {  // next output position, row-major
            if (++o[a] < g.out[a]) break;
            o[a] = 0;
          }
        }
      }
    }
  }
}

}  // namespace

template <typename T>
void im2col_nd_cpu(const T* im, const ConvGeometryND& g, T* col) {
  walk_nd(g, [&](long ci, long ii) { col[ci] = ii >= 0 ? im[ii] : T(0); });
}

template <typename T>
void col2im_nd_cpu(const T* col, const ConvGeometryND& g, T* im) {
  std::fill(im, im + g.num * g.channels * product(g.in, g.axes), T(0));
  walk_nd(g, [&](long ci, long ii) {
    if (ii >= 0) im[ii] += col[ci];
  });
}

template void im2col_nd_cpu<float>(const float*, const ConvGeometryND&, float*);
template void im2col_nd_cpu<double>(const double*, const ConvGeometryND&, double*);
template void col2im_nd_cpu<float>(const float*, const ConvGeometryND&, float*);
template void col2im_nd_cpu<double>(const double*, const ConvGeometryND&, double*);

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
  for (long v : {kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w, pad_h, pad_w})
    require_window_param(v, 0, name + ": kernel, pad, stride and dilation");
  if (im.ndim() != 4)
    throw py::value_error(name + ": image must be 4-D (num, channels, height, width), got " +
                          shape_str(im));
  require_axis_size(im.shape(2), name + ": image height");
  require_axis_size(im.shape(3), name + ": image width");
  ConvGeometry g{im.shape(0), im.shape(1), im.shape(2), im.shape(3), kernel_h, kernel_w,
                 pad_h,       pad_w,       stride_h,    stride_w,    dilation_h, dilation_w,
                 0,           0};
  g.out_h = conv_out_size(g.height, kernel_h, pad_h, stride_h, dilation_h);
  g.out_w = conv_out_size(g.width, kernel_w, pad_w, stride_w, dilation_w);
  if (g.out_h < 1 || g.out_w < 1)
    throw py::value_error(name + ": the (dilated) kernel is larger than the padded image");
  const long rows = checked_mul(g.channels, checked_mul(kernel_h, kernel_w, name), name);
  const long positions = checked_mul(g.out_h, g.out_w, name);
  if (col.ndim() != 3 || col.shape(0) != rows || col.shape(1) != g.num ||
      col.shape(2) != positions)
    throw py::value_error(name + ": column buffer must have shape (" + std::to_string(rows) +
                          ", " + std::to_string(g.num) + ", " +
                          std::to_string(positions) + "), got " + shape_str(col));
  return g;
}

template <typename T>
void im2col_array(const py::array& im_obj, const py::array& col_obj, const long* p) {
  auto im = require_array<T>(im_obj, "im2col: image");
  auto col = require_array<T>(col_obj, "im2col: columns");
  ConvGeometry g = make_geometry(im, col, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7],
                                 "im2col");
  T* out = col.mutable_data();
  if (col.size() == 0) return;  // no columns to write (the window loops would still run)
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
  if (col.size() == 0) return;  // then the image is empty too: nothing to write
  py::gil_scoped_release release;
  col2im_cpu<T>(col.data(), g, out);
}


ConvGeometryND make_geometry_nd(const py::array& im, const py::array& col,
                                const std::vector<long>& kernel, const std::vector<long>& pad,
                                const std::vector<long>& stride,
                                const std::vector<long>& dilation, const std::string& name) {
  const long axes = static_cast<long>(im.ndim()) - 2;
  if (axes < 1 || axes > kMaxSpatialAxes)
    throw py::value_error(name + ": image must be (num, channels, *spatial) with 1 to " +
                          std::to_string(kMaxSpatialAxes) + " spatial axes, got " +
                          shape_str(im));
  for (const auto* v : {&kernel, &pad, &stride, &dilation})
    if (static_cast<long>(v->size()) != axes)
      throw py::value_error(name + ": kernel, pad, stride and dilation need one value per "
                            "spatial axis (" + std::to_string(axes) + ")");
  ConvGeometryND g{};
  g.num = im.shape(0);
  g.channels = im.shape(1);
  g.axes = static_cast<int>(axes);
  long rows = g.channels, positions = 1;
  for (long a = 0; a < axes; ++a) {
    if (kernel[a] < 1 || stride[a] < 1 || dilation[a] < 1 || pad[a] < 0)
      throw py::value_error(name + ": kernel, stride and dilation must be >= 1 and pad >= 0");
    for (long v : {kernel[a], stride[a], dilation[a], pad[a]})
      require_window_param(v, 0, name + ": kernel, pad, stride and dilation");
    require_axis_size(im.shape(a + 2), name + ": image axis " + std::to_string(a + 2));
    g.in[a] = im.shape(a + 2);
    g.kernel[a] = kernel[a];
    g.pad[a] = pad[a];
    g.stride[a] = stride[a];
    g.dilation[a] = dilation[a];
    g.out[a] = conv_out_size(g.in[a], kernel[a], pad[a], stride[a], dilation[a]);
    if (g.out[a] < 1)
      throw py::value_error(name + ": the (dilated) kernel is larger than the padded image");
    rows = checked_mul(rows, kernel[a], name);
    positions = checked_mul(positions, g.out[a], name);
  }
  if (col.ndim() != 3 || col.shape(0) != rows || col.shape(1) != g.num ||
      col.shape(2) != positions)
    throw py::value_error(name + ": column buffer must have shape (" + std::to_string(rows) +
                          ", " + std::to_string(g.num) + ", " + std::to_string(positions) +
                          "), got " + shape_str(col));
  return g;
}

template <typename T>
void im2col_nd_array(const py::array& im_obj, const py::array& col_obj,
                     const std::vector<long>& k, const std::vector<long>& p,
                     const std::vector<long>& s, const std::vector<long>& d) {
  auto im = require_array<T>(im_obj, "im2col_nd: image");
  auto col = require_array<T>(col_obj, "im2col_nd: columns");
  const ConvGeometryND g = make_geometry_nd(im, col, k, p, s, d, "im2col_nd");
  T* out = col.mutable_data();
  if (col.size() == 0) return;
  py::gil_scoped_release release;
  im2col_nd_cpu<T>(im.data(), g, out);
}

template <typename T>
void col2im_nd_array(const py::array& col_obj, const py::array& im_obj,
                     const std::vector<long>& k, const std::vector<long>& p,
                     const std::vector<long>& s, const std::vector<long>& d) {
  auto col = require_array<T>(col_obj, "col2im_nd: columns");
  auto im = require_array<T>(im_obj, "col2im_nd: image");
  const ConvGeometryND g = make_geometry_nd(im, col, k, p, s, d, "col2im_nd");
  T* out = im.mutable_data();
  if (col.size() == 0) return;
  py::gil_scoped_release release;
  col2im_nd_cpu<T>(col.data(), g, out);
}

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
  m.def(
      "im2col_nd",
      [](const py::array& im, const py::array& col, const std::vector<long>& kernel,
         const std::vector<long>& pad, const std::vector<long>& stride,
         const std::vector<long>& dilation) {
        if (is_double(im)) im2col_nd_array<double>(im, col, kernel, pad, stride, dilation);
        else im2col_nd_array<float>(im, col, kernel, pad, stride, dilation);
      },
      py::arg("im"), py::arg("col"), py::arg("kernel"), py::arg("pad"), py::arg("stride"),
      py::arg("dilation"),
      "im2col for images (N, C, *spatial): columns (C*prod(kernel), N, prod(out)).");
  m.def(
      "col2im_nd",
      [](const py::array& col, const py::array& im, const std::vector<long>& kernel,
         const std::vector<long>& pad, const std::vector<long>& stride,
         const std::vector<long>& dilation) {
        if (is_double(col)) col2im_nd_array<double>(col, im, kernel, pad, stride, dilation);
        else col2im_nd_array<float>(col, im, kernel, pad, stride, dilation);
      },
      py::arg("col"), py::arg("im"), py::arg("kernel"), py::arg("pad"), py::arg("stride"),
      py::arg("dilation"),
      "Overwrite images (N, C, *spatial) with the sum of their columns (im2col_nd's adjoint).");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
