// MAX and AVE pooling CPU kernels over (planes, height, width) arrays.
#pragma once

#include <cstdint>

#include "pooling_math.h"

namespace pfl {

// top gets the window maxima; mask the flat index h*width+w of each maximum (the
// first one in row-major scan order), or -1 when a window holds no value above -FLT_MAX.
template <typename T>
void max_pool_forward_cpu(const T* bottom, const PoolGeometry& g, T* top, int64_t* mask);

// bottom_diff is overwritten: each top diff goes to its argmax.
template <typename T>
void max_pool_backward_cpu(const T* top_diff, const int64_t* mask, const PoolGeometry& g,
                           T* bottom_diff);

template <typename T>
void ave_pool_forward_cpu(const T* bottom, const PoolGeometry& g, T* top);

// bottom_diff is overwritten.
template <typename T>
void ave_pool_backward_cpu(const T* top_diff, const PoolGeometry& g, T* bottom_diff);

}  // namespace pfl
