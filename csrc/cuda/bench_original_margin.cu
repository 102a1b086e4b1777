// BENCHMARK ONLY (bench/gpu_bench.py): a port of the ORIGINAL SphereFace GPU kernels'
// design for the QUADRUPLE margin, to measure what the project's layer replaces.
// It is not used by any layer. Its structure follows the original on purpose:
//   forward:  one thread per weight row normalises it (serial over K); one thread per
//             feature row computes |x|; after the GEMM X.W^T (done by the caller)
//             full M x N buffers are built (cos, sign_0, cos^2, cos^3, cos^4, sign_3,
//             sign_4), each by its own element-wise pass, then every output entry is
//             rewritten by one more M x N pass;
//   backward: one thread per element of the feature gradient loops over ALL N
//             classes (O(M*N*K), no GEMM).
// Numbers: the same formulas as ../margin_math.h (psi and the normalised
// coefficients), so its results can be checked against the layer's.
#include <cstdint>
#include <string>

#include "../bind_registry.h"
#include "../margin_math.h"
#include "cuda_check.h"

namespace pfl {

namespace {

template <typename T>
__global__ void orig_weight_norm(T* w, long n, long k) {
  for (long j = (long)blockIdx.x * blockDim.x + threadIdx.x; j < n;
       j += (long)gridDim.x * blockDim.x) {
    T s = T(0);
    for (long c = 0; c < k; ++c) s += w[j * k + c] * w[j * k + c];
    const T inv = T(1) / hd_sqrt(s);
    for (long c = 0; c < k; ++c) w[j * k + c] *= inv;
  }
}

template <typename T>
__global__ void orig_x_norm(const T* x, T* x_norm, long m, long k) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < m;
       i += (long)gridDim.x * blockDim.x) {
    T s = T(0);
    for (long c = 0; c < k; ++c) s += x[i * k + c] * x[i * k + c];
    x_norm[i] = hd_sqrt(s);
  }
}

#define PFL_MN_LOOP(idx, total)                                             \
  for (long idx = (long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; \
       idx += (long)gridDim.x * blockDim.x)

template <typename T>
__global__ void orig_divide_rows(T* cos, const T* x_norm, long m, long n) {
  PFL_MN_LOOP(idx, m * n) cos[idx] /= x_norm[idx / n];
}

template <typename T>
__global__ void orig_sign(const T* a, T* out, long total) {
  PFL_MN_LOOP(idx, total) out[idx] = sign(a[idx]);
}

template <typename T>
__global__ void orig_power(const T* a, T* out, long total, int p) {
  PFL_MN_LOOP(idx, total) {
    T v = a[idx], r = v;
    for (int e = 1; e < p; ++e) r *= v;
    out[idx] = r;
  }
}

template <typename T>
__global__ void orig_sign3(const T* sign0, const T* cos2, T* sign3, long total) {
  PFL_MN_LOOP(idx, total) sign3[idx] = sign0[idx] * sign(T(2) * cos2[idx] - T(1));
}

template <typename T>
__global__ void orig_sign4(const T* sign0, const T* sign3, T* sign4, long total) {
  PFL_MN_LOOP(idx, total) sign4[idx] = T(2) * sign0[idx] + sign3[idx] - T(3);
}

// Every entry passes through (lambda * v + v') / (1 + lambda) with v' = v except on
// the label column, where v' = |x| psi.
template <typename T>
__global__ void orig_margin_forward(T* top, const T* labels, const T* x_norm, const T* sign3,
                                    const T* sign4, const T* cos2, const T* cos4, T lambda,
                                    long m, long n) {
  PFL_MN_LOOP(idx, m * n) {
    const long i = idx / n, j = idx - i * n;
    const T v = top[idx];
    T other = v;
    if (static_cast<long>(labels[i]) == j)
      other = x_norm[i] * (sign3[idx] * (T(8) * cos4[idx] - T(8) * cos2[idx] + T(1)) + sign4[idx]);
    top[idx] = (lambda * v + other) / (T(1) + lambda);
  }
}

template <typename T>
__global__ void orig_margin_backward(T* bottom_diff, const T* x, const T* w, const T* top_diff,
                                     const T* labels, const T* x_norm, const T* sign3,
                                     const T* sign4, const T* cos, const T* cos2,
                                     const T* cos3, const T* cos4, T lambda, long m, long n,
                                     long k) {
  PFL_MN_LOOP(idx, m * k) {
    const long i = idx / k, c = idx - i * k;
    const long y = static_cast<long>(labels[i]);
    T acc = T(0);
    for (long j = 0; j < n; ++j) {
      const long e = i * n + j;
      if (j != y) {
        acc += top_diff[e] * w[j * k + c];
      } else {
        T cw = sign3[e] * (T(32) * cos3[e] - T(16) * cos[e]);
        T cx = -(sign3[e] * (T(24) * cos4[e] - T(8) * cos2[e] - T(1)) - sign4[e]) / x_norm[i];
        const T norm = hd_sqrt(cw * cw + cx * cx);
        cw /= norm;
        cx /= norm;
        acc += top_diff[e] * (cw * w[j * k + c] + cx * x[idx]) / (T(1) + lambda);
        acc += top_diff[e] * lambda / (T(1) + lambda) * w[j * k + c];
      }
    }
    bottom_diff[idx] = acc;
  }
}

namespace py = pybind11;
using uptr = std::uintptr_t;

template <typename T>
void forward_prep(uptr w, uptr x, uptr x_norm, long m, long n, long k, cudaStream_t s) {
  orig_weight_norm<T><<<grid_for(n), kThreads, 0, s>>>(device_ptr<T>(w), n, k);
  check_launch("orig_weight_norm");
  orig_x_norm<T><<<grid_for(m), kThreads, 0, s>>>(device_ptr<T>(x), device_ptr<T>(x_norm), m, k);
  check_launch("orig_x_norm");
}

template <typename T>
void forward_finish(uptr cos, uptr top, uptr labels, uptr x_norm, uptr sign0, uptr cos2,
                    uptr cos3, uptr cos4, uptr sign3, uptr sign4, double lambda, long m, long n,
                    cudaStream_t s) {
  const long mn = m * n;
  const int g = grid_for(mn);
  orig_divide_rows<T><<<g, kThreads, 0, s>>>(device_ptr<T>(cos), device_ptr<T>(x_norm), m, n);
  orig_sign<T><<<g, kThreads, 0, s>>>(device_ptr<T>(cos), device_ptr<T>(sign0), mn);
  orig_power<T><<<g, kThreads, 0, s>>>(device_ptr<T>(cos), device_ptr<T>(cos2), mn, 2);
  orig_power<T><<<g, kThreads, 0, s>>>(device_ptr<T>(cos), device_ptr<T>(cos3), mn, 3);
  orig_power<T><<<g, kThreads, 0, s>>>(device_ptr<T>(cos), device_ptr<T>(cos4), mn, 4);
  orig_sign3<T><<<g, kThreads, 0, s>>>(device_ptr<T>(sign0), device_ptr<T>(cos2),
                                       device_ptr<T>(sign3), mn);
  orig_sign4<T><<<g, kThreads, 0, s>>>(device_ptr<T>(sign0), device_ptr<T>(sign3),
                                       device_ptr<T>(sign4), mn);
  orig_margin_forward<T><<<g, kThreads, 0, s>>>(
      device_ptr<T>(top), device_ptr<T>(labels), device_ptr<T>(x_norm), device_ptr<T>(sign3),
      device_ptr<T>(sign4), device_ptr<T>(cos2), device_ptr<T>(cos4), static_cast<T>(lambda), m,
      n);
  check_launch("orig_margin_forward");
}

template <typename T>
void backward(uptr bottom_diff, uptr x, uptr w, uptr top_diff, uptr labels, uptr x_norm,
              uptr sign3, uptr sign4, uptr cos, uptr cos2, uptr cos3, uptr cos4, double lambda,
              long m, long n, long k, cudaStream_t s) {
  orig_margin_backward<T><<<grid_for(m * k), kThreads, 0, s>>>(
      device_ptr<T>(bottom_diff), device_ptr<T>(x), device_ptr<T>(w), device_ptr<T>(top_diff),
      device_ptr<T>(labels), device_ptr<T>(x_norm), device_ptr<T>(sign3), device_ptr<T>(sign4),
      device_ptr<T>(cos), device_ptr<T>(cos2), device_ptr<T>(cos3), device_ptr<T>(cos4),
      static_cast<T>(lambda), m, n, k);
  check_launch("orig_margin_backward");
}

void require_sizes(long m, long n, long k) {
  if (m < 1 || n < 1 || k < 1) throw py::value_error("bench_original_margin: bad sizes");
}

void bind(py::module_& mod) {
  mod.def(
      "bench_original_margin_prep",
      [](uptr w, uptr x, uptr x_norm, long m, long n, long k, bool is_double, uptr stream) {
        require_sizes(m, n, k);
        if (is_double) forward_prep<double>(w, x, x_norm, m, n, k, stream_of(stream));
        else forward_prep<float>(w, x, x_norm, m, n, k, stream_of(stream));
      },
      "BENCHMARK ONLY: the original's weight normalisation and feature norms.");
  mod.def(
      "bench_original_margin_forward",
      [](uptr cos, uptr top, uptr labels, uptr x_norm, uptr sign0, uptr cos2, uptr cos3,
         uptr cos4, uptr sign3, uptr sign4, double lambda, long m, long n, bool is_double,
         uptr stream) {
        require_sizes(m, n, 1);
        if (is_double)
          forward_finish<double>(cos, top, labels, x_norm, sign0, cos2, cos3, cos4, sign3, sign4,
                                 lambda, m, n, stream_of(stream));
        else
          forward_finish<float>(cos, top, labels, x_norm, sign0, cos2, cos3, cos4, sign3, sign4,
                                lambda, m, n, stream_of(stream));
      },
      "BENCHMARK ONLY: the original's M x N buffers and output pass (QUADRUPLE); cos and "
      "top hold X.W^T on entry.");
  mod.def(
      "bench_original_margin_backward",
      [](uptr bottom_diff, uptr x, uptr w, uptr top_diff, uptr labels, uptr x_norm, uptr sign3,
         uptr sign4, uptr cos, uptr cos2, uptr cos3, uptr cos4, double lambda, long m, long n,
         long k, bool is_double, uptr stream) {
        require_sizes(m, n, k);
        if (is_double)
          backward<double>(bottom_diff, x, w, top_diff, labels, x_norm, sign3, sign4, cos, cos2,
                           cos3, cos4, lambda, m, n, k, stream_of(stream));
        else
          backward<float>(bottom_diff, x, w, top_diff, labels, x_norm, sign3, sign4, cos, cos2,
                          cos3, cos4, lambda, m, n, k, stream_of(stream));
      },
      "BENCHMARK ONLY: the original's O(M*N*K) feature gradient (QUADRUPLE).");
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
