// Warp and block reductions shared by the CUDA kernels (sums and Caffe's argmax).
#pragma once

#include <cuda_runtime.h>

namespace pfl {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // lane 0 holds the sum
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
template <typename T>
__device__ T block_sum(T v) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  T total = T(0);
  if (warp == 0) {
    total = lane < warps ? partial[lane] : T(0);
    total = warp_sum(total);
    if (lane == 0) partial[0] = total;
  }
  __syncthreads();
  total = partial[0];
  __syncthreads();  // partial may be reused by a following call
  return total;
}

// The fork's argmax rule, combined across threads: the larger value wins, and on a
// tie the smaller index (what a left-to-right scan taking only strictly larger
// values gives). Index `none` marks "no value above the start value yet".
template <typename T>
__device__ __forceinline__ void argmax_merge(T& best, long& index, T other_best, long other_index) {
  if (other_best > best || (other_best == best && other_index < index)) {
    best = other_best;
    index = other_index;
  }
}

template <typename T>
__device__ void block_argmax(T& best, long& index) {
  __shared__ T best_s[32];
  __shared__ long index_s[32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T ob = __shfl_down_sync(0xffffffffu, best, offset);
    const long oi = __shfl_down_sync(0xffffffffu, index, offset);
    argmax_merge(best, index, ob, oi);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    best_s[warp] = best;
    index_s[warp] = index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    for (int w = 1; w < warps; ++w) argmax_merge(best, index, best_s[w], index_s[w]);
    best_s[0] = best;
    index_s[0] = index;
  }
  __syncthreads();
  best = best_s[0];
  index = index_s[0];
  __syncthreads();
}

}  // namespace pfl
