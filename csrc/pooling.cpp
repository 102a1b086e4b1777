// Pooling CPU kernels (see pooling.h) and their Python bindings.
#include "pooling.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <string>

#include "array_checks.h"
#include "bind_registry.h"

namespace pfl {

template <typename T>
void max_pool_forward_cpu(const T* bottom, const PoolGeometry& g, T* top, int64_t* mask) {
  const long plane = g.height * g.width;
  const long pooled = g.pooled_h * g.pooled_w;
  for (long p = 0; p < g.planes; ++p) {
    const T* in = bottom + p * plane;
    for (long ph = 0; ph < g.pooled_h; ++ph)
      for (long pw = 0; pw < g.pooled_w; ++pw) {
        const long out = p * pooled + ph * g.pooled_w + pw;
        top[out] = max_window(in, g, ph, pw, mask + out);
      }
  }
}

template <typename T>
void max_pool_backward_cpu(const T* top_diff, const int64_t* mask, const PoolGeometry& g,
                           T* bottom_diff) {
  const long plane = g.height * g.width;
  const long pooled = g.pooled_h * g.pooled_w;
  std::fill(bottom_diff, bottom_diff + g.planes * plane, T(0));
  for (long p = 0; p < g.planes; ++p)
    for (long i = 0; i < pooled; ++i) {
      const int64_t arg = mask[p * pooled + i];
      if (arg >= 0) bottom_diff[p * plane + arg] += top_diff[p * pooled + i];
    }
}

template <typename T>
void ave_pool_forward_cpu(const T* bottom, const PoolGeometry& g, T* top) {
  const long plane = g.height * g.width;
  const long pooled = g.pooled_h * g.pooled_w;
  for (long p = 0; p < g.planes; ++p) {
    const T* in = bottom + p * plane;
    for (long ph = 0; ph < g.pooled_h; ++ph)
      for (long pw = 0; pw < g.pooled_w; ++pw)
        top[p * pooled + ph * g.pooled_w + pw] = ave_window(in, g, ph, pw);
  }
}

template <typename T>
void ave_pool_backward_cpu(const T* top_diff, const PoolGeometry& g, T* bottom_diff) {
  const long plane = g.height * g.width;
  const long pooled = g.pooled_h * g.pooled_w;
  std::fill(bottom_diff, bottom_diff + g.planes * plane, T(0));
  for (long p = 0; p < g.planes; ++p) {
    T* out = bottom_diff + p * plane;
    for (long ph = 0; ph < g.pooled_h; ++ph) {
      const PoolRange rh = pool_range(ph, g.stride_h, g.pad_h, g.kernel_h, g.height);
      for (long pw = 0; pw < g.pooled_w; ++pw) {
        const PoolRange rw = pool_range(pw, g.stride_w, g.pad_w, g.kernel_w, g.width);
        const T share = top_diff[p * pooled + ph * g.pooled_w + pw] /
                        static_cast<T>(rh.padded_size * rw.padded_size);
        for (long h = rh.start; h < rh.end; ++h)
          for (long w = rw.start; w < rw.end; ++w) out[h * g.width + w] += share;
      }
    }
  }
}

#define PFL_INSTANTIATE_POOLING(T)                                                        \
  template void max_pool_forward_cpu<T>(const T*, const PoolGeometry&, T*, int64_t*);     \
  template void max_pool_backward_cpu<T>(const T*, const int64_t*, const PoolGeometry&, \
                                         T*);                                             \
  template void ave_pool_forward_cpu<T>(const T*, const PoolGeometry&, T*);               \
  template void ave_pool_backward_cpu<T>(const T*, const PoolGeometry&, T*);
PFL_INSTANTIATE_POOLING(float)
PFL_INSTANTIATE_POOLING(double)

namespace {

namespace py = pybind11;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Checks the parameters and that image (N, C, H, W) and pooled (N, C, PH, PW) agree.
PoolGeometry make_geometry(const py::array& image, const py::array& pooled, long kernel_h,
                           long kernel_w, long stride_h, long stride_w, long pad_h,
                           long pad_w, const std::string& fn) {
  if (kernel_h < 1 || kernel_w < 1 || stride_h < 1 || stride_w < 1)
    throw py::value_error(fn + ": kernel and stride must be >= 1");
  if (pad_h < 0 || pad_w < 0 || pad_h >= kernel_h || pad_w >= kernel_w)
    throw py::value_error(fn + ": pad must be >= 0 and smaller than the kernel");
  for (long v : {kernel_h, kernel_w, stride_h, stride_w})
    require_window_param(v, 1, fn + ": kernel and stride");
  if (image.ndim() != 4 || pooled.ndim() != 4)
    throw py::value_error(fn + ": image and pooled arrays must be 4-D, got " +
                          shape_str(image) + " and " + shape_str(pooled));
  if (image.shape(0) != pooled.shape(0) || image.shape(1) != pooled.shape(1))
    throw py::value_error(fn + ": image " + shape_str(image) + " and pooled " +
                          shape_str(pooled) + " differ in num or channels");
  // Window starts (index * stride - pad) and ends must fit a long.
  for (int a = 2; a < 4; ++a) {
    require_axis_size(image.shape(a), fn + ": image axis " + std::to_string(a));
    if (checked_mul(pooled.shape(a), a == 2 ? stride_h : stride_w, fn) > kMaxAxisSize)
      throw py::value_error(fn + ": pooled axis " + std::to_string(a) + " of " +
                            shape_str(pooled) + " is too long for its stride");
  }
  return PoolGeometry{image.shape(0) * image.shape(1), image.shape(2), image.shape(3),
                      pooled.shape(2), pooled.shape(3), kernel_h, kernel_w, stride_h,
                      stride_w, pad_h, pad_w};
}

void check_mask(const py::array& mask, const py::array& pooled, const std::string& fn) {
  bool same = mask.ndim() == pooled.ndim();
  for (py::ssize_t i = 0; same && i < mask.ndim(); ++i) same = mask.shape(i) == pooled.shape(i);
  if (!same)
    throw py::value_error(fn + ": mask shape " + shape_str(mask) + " differs from " +
                          shape_str(pooled));
}

template <typename T>
void max_forward(const py::array& b, const py::array& t, const py::array& m, const long* k) {
  auto bottom = require_array<T>(b, "max_pool_forward: bottom");
  auto top = require_array<T>(t, "max_pool_forward: top");
  auto mask = require_array<int64_t>(m, "max_pool_forward: mask");
  const PoolGeometry g =
      make_geometry(bottom, top, k[0], k[1], k[2], k[3], k[4], k[5], "max_pool_forward");
  check_mask(mask, top, "max_pool_forward");
  T* out = top.mutable_data();
  int64_t* arg = mask.mutable_data();
  if (top.size() == 0) return;  // no windows (the loops would still walk the axes)
  py::gil_scoped_release release;
  max_pool_forward_cpu<T>(bottom.data(), g, out, arg);
}

template <typename T>
void max_backward(const py::array& td, const py::array& m, const py::array& bd) {
  auto top_diff = require_array<T>(td, "max_pool_backward: top_diff");
  auto mask = require_array<int64_t>(m, "max_pool_backward: mask");
  auto bottom_diff = require_array<T>(bd, "max_pool_backward: bottom_diff");
  // Window sizes do not matter here: only the mask indices, each checked in range.
  const PoolGeometry g =
      make_geometry(bottom_diff, top_diff, 1, 1, 1, 1, 0, 0, "max_pool_backward");
  check_mask(mask, top_diff, "max_pool_backward");
  const int64_t plane = g.height * g.width;
  const int64_t* arg = mask.data();
  for (py::ssize_t i = 0; i < mask.size(); ++i)
    if (arg[i] < -1 || arg[i] >= plane)
      throw py::value_error("max_pool_backward: mask index " + std::to_string(arg[i]) +
                            " outside the " + std::to_string(plane) + "-pixel plane");
  T* out = bottom_diff.mutable_data();
  py::gil_scoped_release release;
  max_pool_backward_cpu<T>(top_diff.data(), arg, g, out);
}

template <typename T>
void ave_forward(const py::array& b, const py::array& t, const long* k) {
  auto bottom = require_array<T>(b, "ave_pool_forward: bottom");
  auto top = require_array<T>(t, "ave_pool_forward: top");
  const PoolGeometry g =
      make_geometry(bottom, top, k[0], k[1], k[2], k[3], k[4], k[5], "ave_pool_forward");
  T* out = top.mutable_data();
  if (top.size() == 0) return;  // no windows (the loops would still walk the axes)
  py::gil_scoped_release release;
  ave_pool_forward_cpu<T>(bottom.data(), g, out);
}

template <typename T>
void ave_backward(const py::array& td, const py::array& bd, const long* k) {
  auto top_diff = require_array<T>(td, "ave_pool_backward: top_diff");
  auto bottom_diff = require_array<T>(bd, "ave_pool_backward: bottom_diff");
  const PoolGeometry g = make_geometry(bottom_diff, top_diff, k[0], k[1], k[2], k[3], k[4],
                                       k[5], "ave_pool_backward");
  T* out = bottom_diff.mutable_data();
  if (top_diff.size() == 0) {  // no windows: the gradient is zero
    std::fill(out, out + bottom_diff.size(), T(0));
    return;
  }
  py::gil_scoped_release release;
  ave_pool_backward_cpu<T>(top_diff.data(), g, out);
}

void bind(py::module_& m) {
  m.def(
      "max_pool_forward",
      [](const py::array& bottom, const py::array& top, const py::array& mask, long kernel_h,
         long kernel_w, long stride_h, long stride_w, long pad_h, long pad_w) {
        const long k[6] = {kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w};
        if (is_double(bottom)) max_forward<double>(bottom, top, mask, k);
        else max_forward<float>(bottom, top, mask, k);
      },
      py::arg("bottom"), py::arg("top"), py::arg("mask"), py::arg("kernel_h"),
      py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
      py::arg("pad_w"),
      "MAX pooling of bottom (N,C,H,W) into top (N,C,PH,PW); int64 mask gets the argmaxes.");
  m.def(
      "max_pool_backward",
      [](const py::array& top_diff, const py::array& mask, const py::array& bottom_diff) {
        if (is_double(top_diff)) max_backward<double>(top_diff, mask, bottom_diff);
        else max_backward<float>(top_diff, mask, bottom_diff);
      },
      py::arg("top_diff"), py::arg("mask"), py::arg("bottom_diff"),
      "Overwrite bottom_diff with each top diff routed to its argmax.");
  m.def(
      "ave_pool_forward",
      [](const py::array& bottom, const py::array& top, long kernel_h, long kernel_w,
         long stride_h, long stride_w, long pad_h, long pad_w) {
        const long k[6] = {kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w};
        if (is_double(bottom)) ave_forward<double>(bottom, top, k);
        else ave_forward<float>(bottom, top, k);
      },
      py::arg("bottom"), py::arg("top"), py::arg("kernel_h"), py::arg("kernel_w"),
      py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
      "AVE pooling of bottom (N,C,H,W) into top (N,C,PH,PW), Caffe's padded divisor.");
  m.def(
      "ave_pool_backward",
      [](const py::array& top_diff, const py::array& bottom_diff, long kernel_h,
         long kernel_w, long stride_h, long stride_w, long pad_h, long pad_w) {
        const long k[6] = {kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w};
        if (is_double(top_diff)) ave_backward<double>(top_diff, bottom_diff, k);
        else ave_backward<float>(top_diff, bottom_diff, k);
      },
      py::arg("top_diff"), py::arg("bottom_diff"), py::arg("kernel_h"), py::arg("kernel_w"),
      py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
      "Overwrite bottom_diff with each top diff spread evenly over its window.");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
