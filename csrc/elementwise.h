#pragma once

namespace pfl {

// out[i] = psi(cos[i]) for the given margin type (the trivial CPU kernel that pins
// the shared-header pattern; its CUDA twin is in cuda/elementwise.cu).
template <typename T>
void margin_psi_cpu(const T* cos, T* out, long n, int type);

}  // namespace pfl
