// Per-element math of the SphereFace margin layer, shared by the CPU and CUDA kernels.
// Every function is inline and __host__ __device__, so the CPU tests exercise exactly
// the code the GPU runs. Formulas: ../shared/reference/margin-layers.md.
#pragma once

#if defined(__CUDACC__)
#define PFL_HD __host__ __device__ __forceinline__
#else
#define PFL_HD inline
#endif

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

}  // namespace pfl
