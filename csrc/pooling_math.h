// Pooling window bounds as Caffe computes them, shared by the CPU and CUDA kernels.
#pragma once

#ifndef PFL_HD
#if defined(__CUDACC__)
#define PFL_HD __host__ __device__ __forceinline__
#else
#define PFL_HD inline
#endif
#endif

namespace pfl {

struct PoolGeometry {
  long planes, height, width;  // planes = num * channels
  long pooled_h, pooled_w;
  long kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
};

// One axis of a pooling window. MAX clips [start, end) to the image; AVE first
// clips the end to the padded image and divides by that (padded) size, then clips
// both ends to the image for the sum.
struct PoolRange {
  long start, end, padded_size;
};

PFL_HD PoolRange pool_range(long index, long stride, long pad, long kernel, long size) {
  long start = index * stride - pad;
  long end = start + kernel;
  if (end > size + pad) end = size + pad;
  const long padded_size = end - start;
  if (start < 0) start = 0;
  if (end > size) end = size;
  return PoolRange{start, end, padded_size};
}

// Caffe's -FLT_MAX, the start value of a MAX window (also for double).
PFL_HD double pool_lowest() { return -0x1.fffffep+127; }  // exactly -FLT_MAX

}  // namespace pfl
