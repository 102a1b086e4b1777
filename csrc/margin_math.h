// Per-element math of the SphereFace margin layer, shared by the CPU and CUDA kernels.
// Every function is inline and __host__ __device__, so the CPU tests exercise exactly
// the code the GPU runs. Formulas: ../shared/reference/margin-layers.md.
#pragma once

#if defined(__CUDACC__)
#define PFL_HD __host__ __device__ __forceinline__
#else
#define PFL_HD inline
#endif

#include <math.h>
#include <stdint.h>

namespace pfl {

// MarginInnerProductParameter.MarginType values (caffe.proto).
enum MarginType { SINGLE = 0, DOUBLE = 1, TRIPLE = 2, QUADRUPLE = 3 };

// Caffe's caffe_sign: -1, 0 or +1 (sign(0) = 0).
template <typename T>
PFL_HD T sign(T x) {
  return static_cast<T>((T(0) < x) - (x < T(0)));
}

// The sign helpers of one label-column cosine c.
template <typename T>
struct MarginSigns {
  T s0, s1, s2, s3, s4;
};

template <typename T>
PFL_HD MarginSigns<T> margin_signs(T c) {
  MarginSigns<T> s;
  s.s0 = sign(c);
  s.s1 = sign(c < T(0) ? -c - T(0.5) : c - T(0.5));  // sign(|c| - 0.5)
  s.s2 = s.s0 * (T(1) + s.s1) - T(2);
  s.s3 = s.s0 * sign(T(2) * c * c - T(1));
  s.s4 = T(2) * s.s0 + s.s3 - T(3);
  return s;
}

// psi(theta) = (-1)^k cos(m theta) - 2k evaluated from c = cos(theta), as the
// original computes it from the sign helpers (type SINGLE gives c itself).
template <typename T>
PFL_HD T margin_psi(T c, int type) {
  const MarginSigns<T> s = margin_signs(c);
  const T c2 = c * c;
  switch (type) {
    case DOUBLE:
      return T(2) * s.s0 * c2 - T(1);
    case TRIPLE:
      return s.s1 * (T(4) * c2 * c - T(3) * c) + s.s2;
    case QUADRUPLE:
      return s.s3 * (T(8) * c2 * c2 - T(8) * c2 + T(1)) + s.s4;
    default:
      return c;
  }
}

// Coefficients of d psi-term / d x: the label column's gradient is
// cw * w_y + cx * x (before the original's normalisation of (cw, cx)).
template <typename T>
struct MarginGradCoeffs {
  T cw, cx;
};

template <typename T>
PFL_HD MarginGradCoeffs<T> margin_grad_coeffs(T c, T x_norm, int type) {
  const MarginSigns<T> s = margin_signs(c);
  const T c2 = c * c;
  MarginGradCoeffs<T> g;
  switch (type) {
    case DOUBLE:
      g.cw = T(4) * s.s0 * c;
      g.cx = -(T(2) * s.s0 * c2 + T(1)) / x_norm;
      break;
    case TRIPLE:
      g.cw = s.s1 * (T(12) * c2 - T(3));
      g.cx = -(T(8) * s.s1 * c2 * c - s.s2) / x_norm;
      break;
    case QUADRUPLE:
      g.cw = s.s3 * (T(32) * c2 * c - T(16) * c);
      g.cx = -(s.s3 * (T(24) * c2 * c2 - T(8) * c2 - T(1)) - s.s4) / x_norm;
      break;
    default:
      g.cw = T(1);
      g.cx = T(0);
  }
  return g;
}

// sqrt for both element types, usable on host and device.
PFL_HD float hd_sqrt(float x) { return sqrtf(x); }
PFL_HD double hd_sqrt(double x) { return sqrt(x); }

// cos(theta) of one entry from its plain logit v = x.w (unit-norm w) and |x|. As the
// original, scale by the reciprocal of |x|: a zero feature row gives 0 * inf = NaN.
template <typename T>
PFL_HD T margin_cos(T v, T x_norm) {
  return v * (T(1) / x_norm);
}

// top[i, y] of the label column from its plain logit v and |x|:
// (|x| psi(cos) + lambda v) / (1 + lambda); SINGLE leaves v unchanged (no lambda).
template <typename T>
PFL_HD T margin_label_output(T v, T x_norm, T lambda, int type) {
  if (type == SINGLE) return v;
  const T c = margin_cos(v, x_norm);
  return (x_norm * margin_psi(c, type) + lambda * v) * (T(1) / (T(1) + lambda));
}

// The label column's feature gradient minus the plain part top_diff * w_y (which the
// GEMM top_diff . W already supplies): dx_i += top_diff_iy * (aw * w_y + ax * x_i).
// The label column's full contribution is
//   top_diff * [ (cw' w_y + cx' x) / (1 + lambda) + lambda / (1 + lambda) w_y ],
// so aw = (cw' - 1) / (1 + lambda) and ax = cx' / (1 + lambda). With `normalized`,
// (cw', cx') = (cw, cx) / |(cw, cx)| as the original; otherwise (cw, cx), the exact
// derivative of the forward.
template <typename T>
struct MarginLabelGrad {
  T aw, ax;
};

template <typename T>
PFL_HD MarginLabelGrad<T> margin_label_grad(T c, T x_norm, T lambda, int type, bool normalized) {
  MarginLabelGrad<T> r;
  if (type == SINGLE) {
    r.aw = T(0);
    r.ax = T(0);
    return r;
  }
  MarginGradCoeffs<T> g = margin_grad_coeffs(c, x_norm, type);
  if (normalized) {
    const T norm = hd_sqrt(g.cw * g.cw + g.cx * g.cx);
    g.cw = g.cw / norm;
    g.cx = g.cx / norm;
  }
  const T inv = T(1) / (T(1) + lambda);
  r.aw = (g.cw - T(1)) * inv;
  r.ax = g.cx * inv;
  return r;
}

// splitmix64's output function of one 64-bit state.
PFL_HD uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The triplet weight-replacement draw number `index` of generator `seed`: counter-based
// (splitmix64 of seed + (index + 1) * golden gamma), so the CPU and GPU kernels, any
// thread order, give the same draws. True with probability 1/2 (the top bit).
PFL_HD bool triplet_draw(uint64_t seed, uint64_t index) {
  const uint64_t h = splitmix64_mix(seed + (index + 1ULL) * 0x9E3779B97F4A7C15ULL);
  return (h >> 63) != 0ULL;
}

// Caffe's argmax scan of the Angular-Triplet fork: start at value -2, index 0, take a
// new best only on a strictly larger value (NaN never wins; all values <= -2 give 0).
// `label_col`/`label_value` substitute one column's value (the plain logit of the label
// column, so the same row of top serves for both the margin and the plain argmax).
template <typename T>
PFL_HD long fork_argmax(const T* row, long n, long label_col, T label_value) {
  T best = T(-2);
  long index = 0;
  for (long j = 0; j < n; ++j) {
    const T v = (j == label_col) ? label_value : row[j];
    if (v > best) {
      best = v;
      index = j;
    }
  }
  return index;
}

}  // namespace pfl
