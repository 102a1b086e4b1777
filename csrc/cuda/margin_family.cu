// CUDA twins of ../margin_family.cpp (the margin-family layers' label-column kernels),
// one thread per row. Pointers are device addresses from cupy; the Python door
// (pyfacelayers/gpu/margin_family.py) checks dtypes, contiguity and shapes, and every
// kernel skips a row whose label is not in [0, n). Per-element math: ../family_math.h.
#include <cstdint>

#include "../bind_registry.h"
#include "../family_math.h"
#include "cuda_check.h"

namespace pfl {

namespace {

template <typename T>
__device__ __forceinline__ bool label_ok(T v, long n) {
  return v >= T(0) && v < static_cast<T>(n);
}

template <typename T>
__global__ void family_forward_kernel(T* top, const T* labels, long m, long n, int op,
                                      FamilyParams<T> p, T* saved, int32_t* flags,
                                      unsigned long long* clamped) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < m;
       i += (long)gridDim.x * blockDim.x) {
    if (!label_ok(labels[i], n)) {
      flags[i] = -1;
      saved[i] = T(0);
      continue;
    }
    const long y = family_label(labels[i]);
    const FamilyOut<T> r = family_forward(op, top[i * n + y], p);
    top[i * n + y] = r.value;
    saved[i] = r.saved;
    flags[i] = r.flag;
    if (r.flag & 2) atomicAdd(clamped, 1ULL);
  }
}

template <typename T>
__global__ void family_backward_kernel(T* diff, const T* labels, long m, long n, int op,
                                       FamilyParams<T> p, const T* saved,
                                       const int32_t* flags) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < m;
       i += (long)gridDim.x * blockDim.x) {
    if (flags[i] < 0 || !label_ok(labels[i], n)) continue;
    const long y = family_label(labels[i]);
    diff[i * n + y] *= family_grad_factor(op, saved[i], flags[i], p);
  }
}

template <typename T>
__global__ void family_scale_others_kernel(T* a, const T* labels, long m, long n, T factor) {
  const long total = m * n;
  for (long t = blockIdx.x * (long)blockDim.x + threadIdx.x; t < total;
       t += (long)gridDim.x * blockDim.x) {
    const long i = t / n, j = t % n;
    const T v = labels[i];
    if (!(label_ok(v, n) && family_label(v) == j)) a[t] *= factor;
  }
}

template <typename T>
FamilyParams<T> params_of(int op, pybind11::tuple values) {
  if (op < 0 || op >= FAM_OP_COUNT)
    throw pybind11::value_error("margin family: unknown op " + std::to_string(op));
  if (values.size() != 6)
    throw pybind11::value_error("margin family: params must be (a, b, c, d, e, flags)");
  FamilyParams<T> p;
  p.a = static_cast<T>(values[0].cast<double>());
  p.b = static_cast<T>(values[1].cast<double>());
  p.c = static_cast<T>(values[2].cast<double>());
  p.d = static_cast<T>(values[3].cast<double>());
  p.e = static_cast<T>(values[4].cast<double>());
  p.flags = values[5].cast<int>();
  return p;
}

template <typename T>
void forward(std::uintptr_t top, std::uintptr_t labels, long m, long n, int op,
             pybind11::tuple values, std::uintptr_t saved, std::uintptr_t flags,
             std::uintptr_t clamped, std::uintptr_t stream) {
  const FamilyParams<T> p = params_of<T>(op, values);
  if (m <= 0) return;
  family_forward_kernel<T><<<grid_for(m), kThreads, 0, stream_of(stream)>>>(
      device_ptr<T>(top), device_ptr<T>(labels), m, n, op, p, device_ptr<T>(saved),
      device_ptr<int32_t>(flags), device_ptr<unsigned long long>(clamped));
  check_launch("family_forward");
}

template <typename T>
void backward(std::uintptr_t diff, std::uintptr_t labels, long m, long n, int op,
              pybind11::tuple values, std::uintptr_t saved, std::uintptr_t flags,
              std::uintptr_t stream) {
  const FamilyParams<T> p = params_of<T>(op, values);
  if (m <= 0) return;
  family_backward_kernel<T><<<grid_for(m), kThreads, 0, stream_of(stream)>>>(
      device_ptr<T>(diff), device_ptr<T>(labels), m, n, op, p, device_ptr<T>(saved),
      device_ptr<int32_t>(flags));
  check_launch("family_backward");
}

template <typename T>
void scale_others(std::uintptr_t a, std::uintptr_t labels, long m, long n, double factor,
                  std::uintptr_t stream) {
  if (m <= 0 || n <= 0) return;
  family_scale_others_kernel<T><<<grid_for(m * n), kThreads, 0, stream_of(stream)>>>(
      device_ptr<T>(a), device_ptr<T>(labels), m, n, static_cast<T>(factor));
  check_launch("family_scale_others");
}

void bind(pybind11::module_& mod) {
  mod.def(
      "family_forward",
      [](std::uintptr_t top, std::uintptr_t labels, long m, long n, int op,
         pybind11::tuple params, std::uintptr_t saved, std::uintptr_t flags,
         std::uintptr_t clamped, bool is_double, std::uintptr_t stream) {
        if (is_double)
          forward<double>(top, labels, m, n, op, params, saved, flags, clamped, stream);
        else
          forward<float>(top, labels, m, n, op, params, saved, flags, clamped, stream);
      },
      pybind11::arg("top"), pybind11::arg("labels"), pybind11::arg("m"), pybind11::arg("n"),
      pybind11::arg("op"), pybind11::arg("params"), pybind11::arg("saved"),
      pybind11::arg("flags"), pybind11::arg("clamped"), pybind11::arg("is_double"),
      pybind11::arg("stream"));
  mod.def(
      "family_backward",
      [](std::uintptr_t diff, std::uintptr_t labels, long m, long n, int op,
         pybind11::tuple params, std::uintptr_t saved, std::uintptr_t flags, bool is_double,
         std::uintptr_t stream) {
        if (is_double)
          backward<double>(diff, labels, m, n, op, params, saved, flags, stream);
        else
          backward<float>(diff, labels, m, n, op, params, saved, flags, stream);
      },
      pybind11::arg("diff"), pybind11::arg("labels"), pybind11::arg("m"), pybind11::arg("n"),
      pybind11::arg("op"), pybind11::arg("params"), pybind11::arg("saved"),
      pybind11::arg("flags"), pybind11::arg("is_double"), pybind11::arg("stream"));
  mod.def(
      "family_scale_others",
      [](std::uintptr_t a, std::uintptr_t labels, long m, long n, double factor,
         bool is_double, std::uintptr_t stream) {
        if (is_double)
          scale_others<double>(a, labels, m, n, factor, stream);
        else
          scale_others<float>(a, labels, m, n, factor, stream);
      },
      pybind11::arg("array"), pybind11::arg("labels"), pybind11::arg("m"), pybind11::arg("n"),
      pybind11::arg("factor"), pybind11::arg("is_double"), pybind11::arg("stream"));
}

}  // namespace

PFL_REGISTER_BINDINGS(bind)

}  // namespace pfl
