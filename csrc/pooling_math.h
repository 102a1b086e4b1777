// Pooling window bounds as Caffe computes them, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>

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

// One MAX window (ph, pw) of the plane ``in``: its maximum, and in ``arg`` the flat
// index of the first pixel holding it (strictly greater wins), -1 for an empty window.
template <typename T>
PFL_HD T max_window(const T* in, const PoolGeometry& g, long ph, long pw, int64_t* arg) {
  const PoolRange rh = pool_range(ph, g.stride_h, g.pad_h, g.kernel_h, g.height);
  const PoolRange rw = pool_range(pw, g.stride_w, g.pad_w, g.kernel_w, g.width);
  T best = static_cast<T>(pool_lowest());
  *arg = -1;
  for (long h = rh.start; h < rh.end; ++h)
    for (long w = rw.start; w < rw.end; ++w)
      if (in[h * g.width + w] > best) {
        best = in[h * g.width + w];
        *arg = h * g.width + w;
      }
  return best;
}

// One AVE window (ph, pw): the sum of its pixels inside the image over its padded size.
template <typename T>
PFL_HD T ave_window(const T* in, const PoolGeometry& g, long ph, long pw) {
  const PoolRange rh = pool_range(ph, g.stride_h, g.pad_h, g.kernel_h, g.height);
  const PoolRange rw = pool_range(pw, g.stride_w, g.pad_w, g.kernel_w, g.width);
  T sum = T(0);
  for (long h = rh.start; h < rh.end; ++h)
    for (long w = rw.start; w < rw.end; ++w) sum += in[h * g.width + w];
  return sum / static_cast<T>(rh.padded_size * rw.padded_size);
}

}  // namespace pfl
