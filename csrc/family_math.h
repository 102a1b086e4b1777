// Per-element math of the margin-family layers (AM-Softmax / CosFace, ArcFace, combined
// margin, happynear's experimental margins), shared by the CPU kernels
// (../margin_family.cpp) and their CUDA twins (cuda/margin_family.cu): every function is
// inline and __host__ __device__, so the CPU tests exercise the code the GPU runs.
// Formulas and the forks' quirks: ../shared/reference/margin-family.md (sections 3.4,
// 3.12, 3.15, 4.1-4.3). "cpu" / "gpu" below name the fork's Forward_cpu / Forward_gpu
// semantics, not the device this code runs on.
#pragma once

#include "margin_math.h"  // PFL_HD, hd_sqrt

namespace pfl {

// One code per label-column operation (the `op` argument of the kernels).
enum FamilyOp {
  FAM_LABEL_ADD = 0,       // LabelSpecificAdd: v > -bias ? v + bias : v
  FAM_COSIN_ADDM_CPU = 1,  // CosinAddm / AdaCos margin, the fork's CPU code
  FAM_COSIN_ADDM_GPU = 2,  // CosinAddm / AdaCos margin, the fork's GPU code
  FAM_COMBINED = 3,        // CombinedMargin: cos(m1 acos(x) + m2) - m3
  FAM_LSM_HARD_CPU = 4,    // LabelSpecificMargin HARD, CPU code
  FAM_LSM_HARD_GPU = 5,    // LabelSpecificMargin HARD, GPU code
  FAM_LSM_SOFT_GPU = 6,    // LabelSpecificMargin SOFT, GPU code
  FAM_RESCALE = 7,         // LabelSpecificRescale's positive weight on the label column
  FAM_OP_COUNT = 8
};

PFL_HD float hd_cos(float x) { return cosf(x); }
PFL_HD double hd_cos(double x) { return cos(x); }
PFL_HD float hd_sin(float x) { return sinf(x); }
PFL_HD double hd_sin(double x) { return sin(x); }
PFL_HD float hd_acos(float x) { return acosf(x); }
PFL_HD double hd_acos(double x) { return acos(x); }
PFL_HD float hd_pow(float x, float y) { return powf(x, y); }
PFL_HD double hd_pow(double x, double y) { return pow(x, y); }
PFL_HD float hd_fabs(float x) { return fabsf(x); }
PFL_HD double hd_fabs(double x) { return fabs(x); }

// The constants of one operation, in the layer's dtype. Which fields an op reads:
//   LABEL_ADD:       a = bias
//   COSIN_ADDM_*:    a = m, b = sin(m), c = cos(m), d = cos(pi - m) (the threshold),
//                    e = sin(pi - m) (CPU fallback: c - m sin(pi - m))
//   COMBINED:        a = m1, b = m2, c = m3
//   LSM_HARD_*:      b = sin(r), c = cos(r) of the margin r in radians
//   LSM_SOFT_GPU:    a = m (a multiplier here)
//   RESCALE:         a = positive weight pw, flags: 1 bias_fix, 2 power_on_positive,
//                    4 for_ip (only rows whose target value is > 0)
template <typename T>
struct FamilyParams {
  T a, b, c, d, e;
  int flags;
};

enum RescaleFlags { RESCALE_BIAS_FIX = 1, RESCALE_POWER = 2, RESCALE_FOR_IP = 4 };

// The result of one label-column forward: the new value, and what the backward needs:
// `saved` (the input value as the backward must see it) and `flag` (op-specific).
template <typename T>
struct FamilyOut {
  T value, saved;
  int flag;
};

// Forward of the label column of one row: v is bottom[i, y] (= top[i, y] before).
template <typename T>
PFL_HD FamilyOut<T> family_forward(int op, T v, const FamilyParams<T>& p) {
  FamilyOut<T> r;
  r.value = v;
  r.saved = v;
  r.flag = 0;
  switch (op) {
    case FAM_LABEL_ADD:
      // Strict '>': with bias = -m only cosines above m get the margin (3.4 step 5).
      if (v > -p.a) r.value = v + p.a;
      break;
    case FAM_COSIN_ADDM_CPU: {
      T c = v;
      T s = hd_sqrt(T(1) - c * c);
      if (c > T(1)) {  // the CPU code clamps (and logs; the layer counts these rows)
        c = T(1);
        s = T(0);
        r.saved = c;
        r.flag = 2;
      }
      if (c <= p.d) {  // theta + m >= pi: insightface's fallback c - m sin(m)
        r.value = c - p.a * p.e;
        r.flag |= 1;
      } else {
        r.value = c * p.c - s * p.b;
      }
      break;
    }
    case FAM_COSIN_ADDM_GPU:
      // c >= 1 (or NaN) is left unchanged: no margin at all, as the GPU kernel.
      if (v < T(1)) {
        if (v > p.d) {
          r.value = hd_cos(hd_acos(v) + p.a);
        } else {
          r.value = v - p.a * p.b;
          r.flag = 1;
        }
      }
      break;
    case FAM_COMBINED: {
      // acos is stored in a 32-bit float even for double (the fork's buffer type).
      const float theta = static_cast<float>(hd_acos(v));
      r.value = hd_cos(p.a * static_cast<T>(theta) + p.b) - p.c;
      break;
    }
    case FAM_LSM_HARD_CPU:
      r.value = v * p.c - hd_sqrt(T(1) - v * v + T(1e-12)) * p.b;
      break;
    case FAM_LSM_HARD_GPU: {
      const T c = v < T(-1) + T(1e-4) ? T(-1) + T(1e-4) : (v > T(1) - T(1e-4) ? T(1) - T(1e-4) : v);
      r.value = c * p.c - hd_sqrt(T(1) - c * c) * p.b;
      break;
    }
    case FAM_LSM_SOFT_GPU: {
      T theta = hd_acos(v);
      const T cap = T(3.14159265358979323846) - T(1e-4);
      if (p.a * theta > cap) theta = cap;  // the replaced theta is not divided by m (quirk)
      r.value = hd_cos(p.a * theta);
      break;
    }
    case FAM_RESCALE: {
      if ((p.flags & RESCALE_FOR_IP) && !(v > T(0))) break;
      if (p.flags & RESCALE_POWER) {
        const T mag = hd_pow(hd_fabs(v), p.a);
        r.value = v > T(0) ? mag : (v < T(0) ? -mag : T(0) * mag);
      } else {
        r.value = v * p.a;
        if (p.flags & RESCALE_BIAS_FIX) r.value += T(1) - p.a;
      }
      break;
    }
    default:
      break;
  }
  return r;
}

// The factor the label column's gradient is multiplied by, from the forward's saved
// value and flag (or, for RESCALE, from the bottom value as the fork's backward reads it).
template <typename T>
PFL_HD T family_grad_factor(int op, T saved, int flag, const FamilyParams<T>& p) {
  switch (op) {
    case FAM_COSIN_ADDM_CPU: {
      const T s = hd_sqrt(T(1) - saved * saved);
      if ((flag & 1) || s == T(0)) return T(1);
      return p.c + p.b * saved / s;
    }
    case FAM_COSIN_ADDM_GPU:
      if (flag & 1) return T(1);
      // c >= 1 divides by 0 (inf/NaN): the GPU kernel's bug, reproduced.
      return p.c + p.b * saved / hd_sqrt(T(1) - saved * saved);
    case FAM_COMBINED: {
      const float theta = static_cast<float>(hd_acos(saved));
      const T a = p.a * static_cast<T>(theta) + p.b;
      return p.a * hd_pow(T(1) - saved * saved, T(-0.5)) * hd_sin(a);
    }
    case FAM_LSM_HARD_CPU:
      return p.c + saved / hd_sqrt(T(1) - saved * saved + T(1e-12)) * p.b;
    case FAM_LSM_HARD_GPU: {
      const T c = saved < T(-1) + T(1e-4) ? T(-1) + T(1e-4)
                                          : (saved > T(1) - T(1e-4) ? T(1) - T(1e-4) : saved);
      T g = p.c + c / hd_sqrt(T(1) - c * c) * p.b;
      return g < T(0) ? T(0) : (g > T(2) ? T(2) : g);
    }
    case FAM_LSM_SOFT_GPU: {
      const T c = saved < T(-1) + T(1e-4) ? T(-1) + T(1e-4)
                                          : (saved > T(1) - T(1e-4) ? T(1) - T(1e-4) : saved);
      T theta = hd_acos(c);
      const T cap = T(3.14159265358979323846) - T(1e-4);
      if (p.a * theta > cap) theta = cap;
      T g = p.a * hd_sin(p.a * theta) / hd_sqrt(T(1) - c * c);
      return g < T(0) ? T(0) : (g > T(2) ? T(2) : g);
    }
    case FAM_RESCALE:
      if ((p.flags & RESCALE_FOR_IP) && !(saved > T(0))) return T(1);
      if (p.flags & RESCALE_POWER) return p.a * hd_pow(hd_fabs(saved), p.a - T(1));
      return p.a;
    default:  // LABEL_ADD: the conditional add has derivative 1 both ways
      return T(1);
  }
}

// The label index of a row as the forks read it (int(label), truncation toward 0).
template <typename T>
PFL_HD long family_label(T v) {
  return static_cast<long>(v);
}

}  // namespace pfl
