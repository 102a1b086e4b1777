// im2col / col2im for 2-D convolution with padding, stride and dilation (Caffe's
// layout), over a batch of images at once.
//
// Images: (num, channels, height, width). Columns: (channels*kernel_h*kernel_w, num,
// out_h*out_w), i.e. for one image exactly Caffe's column buffer, and for a batch the
// images side by side along the columns, so one GEMM per group covers the whole batch.
#pragma once

namespace pfl {

struct ConvGeometry {
  long num, channels, height, width;
  long kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  long out_h, out_w;  // derived by conv_geometry_finish()
};

// Output size of a convolution along one axis (Caffe's formula).
inline long conv_out_size(long in, long kernel, long pad, long stride, long dilation) {
  const long extent = dilation * (kernel - 1) + 1;
  return (in + 2 * pad - extent) / stride + 1;
}

template <typename T>
void im2col_cpu(const T* im, const ConvGeometry& g, T* col);

// Overwrites im (zeroed first), then sums every column entry back into its pixel.
template <typename T>
void col2im_cpu(const T* col, const ConvGeometry& g, T* im);

// The same for any number of spatial axes (Caffe's im2col_nd): images
// (num, channels, *spatial), columns (channels*prod(kernel), num, prod(out)).
constexpr int kMaxSpatialAxes = 8;

struct ConvGeometryND {
  long num, channels;
  int axes;
  long in[kMaxSpatialAxes], kernel[kMaxSpatialAxes], pad[kMaxSpatialAxes];
  long stride[kMaxSpatialAxes], dilation[kMaxSpatialAxes], out[kMaxSpatialAxes];
};

template <typename T>
void im2col_nd_cpu(const T* im, const ConvGeometryND& g, T* col);

template <typename T>
void col2im_nd_cpu(const T* col, const ConvGeometryND& g, T* im);

}  // namespace pfl
