// CUDA twins of ../margin_inner_product.cpp: the O(M*K) and O(N*K) parts of the
// MarginInnerProduct layer (the three products with the weight are cuBLAS GEMMs
// called through cupy on the Python side, pyfacelayers/gpu/margin.py).
//
// Pointers are device addresses from cupy; the Python wrappers check dtypes,
// contiguity and shapes before calling, and the layer checks the labels. As a last
// guard every kernel skips a row whose label is not in [0, n), so no kernel indexes
// out of bounds whatever it is given. Per-element math: ../margin_math.h, shared
// with the CPU kernels.
#include <climits>
#include <cstdint>
#include <string>

#include "../bind_registry.h"
#include "../margin_math.h"
#include "cuda_check.h"
#include "reduce.cuh"

namespace pfl {

namespace {

// The label of row i as an index, or -1 when it is not a value in [0, n).
template <typename T>
__device__ __forceinline__ long label_index(const T* labels, long i, long n) {
  const T v = labels[i];
  if (!(v >= T(0) && v < static_cast<T>(n))) return -1;
  return static_cast<long>(v);
}

// Sum of squares of a row, one warp per row (lane 0 gets the result).
template <typename T>
__device__ __forceinline__ T warp_row_sumsq(const T* row, long k, int lane) {
  T s = T(0);
  for (long c = lane; c < k; c += 32) s += row[c] * row[c];
  return warp_sum(s);
}

// Pass 1 of the weight normalisation: 1 / |w_j| per row; bad_row gets the smallest
// index of a zero row (it starts at n).
template <typename T>
__global__ void row_inv_norm_kernel(const T* w, long n, long k, T* inv_norm, int* bad_row) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long j = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; j < n; j += warps) {
    const T s = warp_row_sumsq(w + j * k, k, lane);
    if (lane == 0) {
      if (s == T(0)) atomicMin(bad_row, static_cast<int>(j));
      inv_norm[j] = T(1) / hd_sqrt(s);  // as Caffe: multiply by 1 / |w|
    }
  }
}

// Pass 2: scale every row, unless a label was bad (flags[0] < m) or some row was zero
// (flags[1] < n); then w stays unchanged.
template <typename T>
__global__ void row_scale_kernel(T* w, long n, long k, const T* inv_norm, const int* flags,
                                 long m) {
  if (flags[0] < m || flags[1] < n) return;
  const long total = n * k;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x)
    w[idx] *= inv_norm[idx / k];
}

// One warp per row: |x_i|, the label column's cosine and plain logit, and the margin
// output written into top (which holds X.W^T on entry).
template <typename T>
__global__ void margin_forward_kernel(T* top, const T* x, const T* labels, long m, long n,
                                      long k, T lambda, int type, T* x_norm, T* cos_y,
                                      T* logit_y) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long i = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5; i < m; i += warps) {
    const T s = warp_row_sumsq(x + i * k, k, lane);
    if (lane != 0) continue;
    const T xn = hd_sqrt(s);
    x_norm[i] = xn;
    const long y = label_index(labels, i, n);
    if (y < 0) continue;
    const T v = top[i * n + y];
    logit_y[i] = v;
    cos_y[i] = margin_cos(v, xn);
    top[i * n + y] = margin_label_output(v, xn, lambda, type);
  }
}

// bottom_diff (m x k) holds top_diff.W on entry; add the label column's correction.
template <typename T>
__global__ void margin_backward_kernel(T* bottom_diff, const T* top_diff, const T* x,
                                       const T* w, const T* labels, const T* x_norm,
                                       const T* cos_y, long m, long n, long k, T lambda,
                                       int type, bool normalized) {
  const long total = m * k;
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
       idx += (long)gridDim.x * blockDim.x) {
    const long i = idx / k, c = idx - i * k;
    const long y = label_index(labels, i, n);
    if (y < 0) continue;
    const MarginLabelGrad<T> g = margin_label_grad(cos_y[i], x_norm[i], lambda, type, normalized);
    const T d = top_diff[i * n + y];
    const T aw = d * g.aw, ax = d * g.ax;
    bottom_diff[idx] += aw * w[y * k + c] + ax * x[idx];
  }
}

// One block per row: the fork's two argmaxes (margin output; plain logits = the
// output with the label column replaced by logit_y), then zero easy / hard rows.
template <typename T>
__global__ void semihard_mask_kernel(T* bottom_diff, const T* top, const T* logit_y,
                                     const T* labels, long m, long n, long k, int type,
                                     int* zeroed) {
  for (long i = blockIdx.x; i < m; i += gridDim.x) {
    const long y = label_index(labels, i, n);
    if (y < 0) {  // uniform over the block: no thread reaches the barriers below
      if (threadIdx.x == 0) zeroed[i] = 0;
      continue;
    }
    const T* row = top + i * n;
    const T plain_y = logit_y[i];
    T best1 = T(-2), best2 = T(-2);
    long idx1 = LONG_MAX, idx2 = LONG_MAX;
    for (long j = threadIdx.x; j < n; j += blockDim.x) {
      const T v = row[j];
      if (v > best1) {
        best1 = v;
        idx1 = j;
      }
      const T p = (j == y) ? plain_y : v;
      if (p > best2) {
        best2 = p;
        idx2 = j;
      }
    }
    block_argmax(best1, idx1);
    block_argmax(best2, idx2);
    const long a1 = idx1 == LONG_MAX ? 0 : idx1;
    const long a2 = idx2 == LONG_MAX ? 0 : idx2;
    const bool easy = (y == a1);
    const bool hard = !easy && y != a2 && type != SINGLE;
    if (easy || hard) {
      for (long c = threadIdx.x; c < k; c += blockDim.x) bottom_diff[i * k + c] = T(0);
    }
    if (threadIdx.x == 0) zeroed[i] = (easy || hard) ? 1 : 0;
  }
}

// One block per row i: if its draw is true and no later row with the same label also
// draws true, copy x_i into w[label] (the later row wins, deterministically).
template <typename T>
__global__ void triplet_replace_kernel(T* w, const T* x, const T* labels, long m, long n,
                                       long k, uint64_t seed, uint64_t first_draw) {
  for (long i = blockIdx.x; i < m; i += gridDim.x) {
    const long y = label_index(labels, i, n);
    if (y < 0 || !triplet_draw(seed, first_draw + static_cast<uint64_t>(i))) continue;
    int overwritten = 0;
    for (long j = i + 1 + threadIdx.x; j < m; j += blockDim.x)
      if (label_index(labels, j, n) == y &&
          triplet_draw(seed, first_draw + static_cast<uint64_t>(j)))
        overwritten = 1;
    if (__syncthreads_or(overwritten)) continue;
    for (long c = threadIdx.x; c < k; c += blockDim.x) w[y * k + c] = x[i * k + c];
  }
}

// The smallest index of a label that is not an integer in [0, n) (NaN included);
// first_bad starts above every index.
template <typename T>
__global__ void check_labels_kernel(const T* labels, long m, long n, int* first_bad) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < m;
       i += (long)gridDim.x * blockDim.x) {
    const T v = labels[i];
    if (!(v >= T(0) && v < static_cast<T>(n)) || v != floor(v))
      atomicMin(first_bad, static_cast<int>(i));
  }
}

// Fill an int32 flag with a value above every index (0x7f7f7f7f), without a kernel.
void reset_flag(std::uintptr_t flag, cudaStream_t s, const char* what) {
  check_cuda(cudaMemsetAsync(device_ptr<int>(flag), 0x7f, sizeof(int), s), what);
}

int warp_grid(long rows) { return grid_for(rows * 32); }

int row_grid(long rows) {
  return static_cast<int>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535);
}

namespace py = pybind11;
using uptr = std::uintptr_t;

// flags (int32[2]): [0] the first bad label (m labels, 0 for none), [1] the first zero
// weight row; both reset to 0x7f7f7f7f, above every index.
template <typename T>
void normalize_rows(uptr w, uptr inv_norm, uptr flags, long n, long k, uptr labels, long m,
                    cudaStream_t s) {
  check_cuda(cudaMemsetAsync(device_ptr<int>(flags), 0x7f, 2 * sizeof(int), s),
             "margin_normalize_rows (reset)");
  if (m > 0) {
    check_labels_kernel<T><<<grid_for(m), kThreads, 0, s>>>(device_ptr<T>(labels), m, n,
                                                            device_ptr<int>(flags));
    check_launch("margin_normalize_rows (labels)");
  }
  row_inv_norm_kernel<T><<<warp_grid(n), kThreads, 0, s>>>(
      device_ptr<T>(w), n, k, device_ptr<T>(inv_norm), device_ptr<int>(flags) + 1);
  check_launch("margin_normalize_rows (norms)");
  row_scale_kernel<T><<<grid_for(n * k), kThreads, 0, s>>>(
      device_ptr<T>(w), n, k, device_ptr<T>(inv_norm), device_ptr<int>(flags), m);
  check_launch("margin_normalize_rows (scale)");
}

void require_sizes(long m, long n, long k) {
  if (m < 0 || n <= 0 || k <= 0 || n > INT_MAX)
    throw py::value_error("margin kernels: bad sizes m=" + std::to_string(m) + ", n=" +
                          std::to_string(n) + ", k=" + std::to_string(k));
}

void require_type(int type) {
  if (type < SINGLE || type > QUADRUPLE)
    throw py::value_error("margin type must be 0..3 (SINGLE..QUADRUPLE), got " +
                          std::to_string(type));
}

void bind(py::module_& mod) {
  mod.def(
      "margin_normalize_rows",
      [](uptr w, uptr inv_norm, uptr flags, long n, long k, uptr labels, long m,
         bool is_double, uptr stream) {
        require_sizes(m, n, k);
        if (m > INT_MAX) throw py::value_error("margin_normalize_rows: too many labels");
        if (m > 0 && labels == 0) throw py::value_error("margin_normalize_rows: no labels");
        auto s = stream_of(stream);
        if (is_double) normalize_rows<double>(w, inv_norm, flags, n, k, labels, m, s);
        else normalize_rows<float>(w, inv_norm, flags, n, k, labels, m, s);
      },
      py::arg("w"), py::arg("inv_norm"), py::arg("flags"), py::arg("n"), py::arg("k"),
      py::arg("labels"), py::arg("m"), py::arg("is_double"), py::arg("stream"),
      "Check m labels (labels 0 when m is 0) and scale the rows of w (n x k) to unit norm, "
      "unless a label is not an integer in [0, n) or a row is zero. flags (int32[2]) gets "
      "the first bad label (or a value >= m) and the first zero row (or a value >= n).");
  mod.def(
      "margin_check_labels",
      [](uptr labels, uptr first_bad, long m, long n, bool is_double, uptr stream) {
        require_sizes(m, n, 1);
        if (m > INT_MAX) throw py::value_error("margin_check_labels: too many labels");
        auto s = stream_of(stream);
        reset_flag(first_bad, s, "margin_check_labels (reset)");
        if (m == 0) return;
        if (is_double)
          check_labels_kernel<double><<<grid_for(m), kThreads, 0, s>>>(
              device_ptr<double>(labels), m, n, device_ptr<int>(first_bad));
        else
          check_labels_kernel<float><<<grid_for(m), kThreads, 0, s>>>(
              device_ptr<float>(labels), m, n, device_ptr<int>(first_bad));
        check_launch("margin_check_labels");
      },
      py::arg("labels"), py::arg("first_bad"), py::arg("m"), py::arg("n"), py::arg("is_double"),
      py::arg("stream"),
      "first_bad (int32) gets the index of the first label that is not an integer in "
      "[0, n), or a value >= m.");
  mod.def(
      "margin_forward",
      [](uptr top, uptr x, uptr labels, uptr x_norm, uptr cos_y, uptr logit_y, long m, long n,
         long k, double lambda, int type, bool is_double, uptr stream) {
        require_sizes(m, n, k);
        require_type(type);
        if (m == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          margin_forward_kernel<double><<<warp_grid(m), kThreads, 0, s>>>(
              device_ptr<double>(top), device_ptr<double>(x), device_ptr<double>(labels), m, n,
              k, lambda, type, device_ptr<double>(x_norm), device_ptr<double>(cos_y),
              device_ptr<double>(logit_y));
        else
          margin_forward_kernel<float><<<warp_grid(m), kThreads, 0, s>>>(
              device_ptr<float>(top), device_ptr<float>(x), device_ptr<float>(labels), m, n, k,
              static_cast<float>(lambda), type, device_ptr<float>(x_norm),
              device_ptr<float>(cos_y), device_ptr<float>(logit_y));
        check_launch("margin_forward");
      },
      py::arg("top"), py::arg("x"), py::arg("labels"), py::arg("x_norm"), py::arg("cos_y"),
      py::arg("logit_y"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("lambda_"),
      py::arg("type"), py::arg("is_double"), py::arg("stream"));
  mod.def(
      "margin_backward",
      [](uptr bottom_diff, uptr top_diff, uptr x, uptr w, uptr labels, uptr x_norm, uptr cos_y,
         long m, long n, long k, double lambda, int type, bool normalized, bool is_double,
         uptr stream) {
        require_sizes(m, n, k);
        require_type(type);
        if (m == 0 || type == SINGLE) return;  // the GEMM is the whole gradient
        auto s = stream_of(stream);
        if (is_double)
          margin_backward_kernel<double><<<grid_for(m * k), kThreads, 0, s>>>(
              device_ptr<double>(bottom_diff), device_ptr<double>(top_diff),
              device_ptr<double>(x), device_ptr<double>(w), device_ptr<double>(labels),
              device_ptr<double>(x_norm), device_ptr<double>(cos_y), m, n, k, lambda, type,
              normalized);
        else
          margin_backward_kernel<float><<<grid_for(m * k), kThreads, 0, s>>>(
              device_ptr<float>(bottom_diff), device_ptr<float>(top_diff),
              device_ptr<float>(x), device_ptr<float>(w), device_ptr<float>(labels),
              device_ptr<float>(x_norm), device_ptr<float>(cos_y), m, n, k,
              static_cast<float>(lambda), type, normalized);
        check_launch("margin_backward");
      },
      py::arg("bottom_diff"), py::arg("top_diff"), py::arg("x"), py::arg("w"),
      py::arg("labels"), py::arg("x_norm"), py::arg("cos_y"), py::arg("m"), py::arg("n"),
      py::arg("k"), py::arg("lambda_"), py::arg("type"), py::arg("normalized"),
      py::arg("is_double"), py::arg("stream"));
  mod.def(
      "margin_semihard_mask",
      [](uptr bottom_diff, uptr top, uptr logit_y, uptr labels, uptr zeroed, long m, long n,
         long k, int type, bool is_double, uptr stream) {
        require_sizes(m, n, k);
        require_type(type);
        if (m == 0) return;
        auto s = stream_of(stream);
        if (is_double)
          semihard_mask_kernel<double><<<row_grid(m), kThreads, 0, s>>>(
              device_ptr<double>(bottom_diff), device_ptr<double>(top),
              device_ptr<double>(logit_y), device_ptr<double>(labels), m, n, k, type,
              device_ptr<int>(zeroed));
        else
          semihard_mask_kernel<float><<<row_grid(m), kThreads, 0, s>>>(
              device_ptr<float>(bottom_diff), device_ptr<float>(top),
              device_ptr<float>(logit_y), device_ptr<float>(labels), m, n, k, type,
              device_ptr<int>(zeroed));
        check_launch("margin_semihard_mask");
      },
      py::arg("bottom_diff"), py::arg("top"), py::arg("logit_y"), py::arg("labels"),
      py::arg("zeroed"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("type"),
      py::arg("is_double"), py::arg("stream"));
  mod.def(
      "margin_triplet_replace",
      [](uptr w, uptr x, uptr labels, long m, long n, long k, uint64_t seed,
         uint64_t first_draw, bool is_double, uptr stream) {
        require_sizes(m, n, k);
        long replaced = 0;  // as the CPU kernel: every true draw counts
        for (long i = 0; i < m; ++i)
          if (triplet_draw(seed, first_draw + static_cast<uint64_t>(i))) ++replaced;
        if (m == 0) return replaced;
        auto s = stream_of(stream);
        if (is_double)
          triplet_replace_kernel<double><<<row_grid(m), kThreads, 0, s>>>(
              device_ptr<double>(w), device_ptr<double>(x), device_ptr<double>(labels), m, n,
              k, seed, first_draw);
        else
          triplet_replace_kernel<float><<<row_grid(m), kThreads, 0, s>>>(
              device_ptr<float>(w), device_ptr<float>(x), device_ptr<float>(labels), m, n, k,
              seed, first_draw);
        check_launch("margin_triplet_replace");
        return replaced;
      },
      py::arg("w"), py::arg("x"), py::arg("labels"), py::arg("m"), py::arg("n"), py::arg("k"),
      py::arg("seed"), py::arg("first_draw"), py::arg("is_double"), py::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
