// Threads of the element-wise CPU kernels (PReLU, array_ops, the SGD update). Serial
// until Python turns them on (pyfacelayers/cpu/blas_threads.py, once oneDNN runs the
// convolutions): they then use OpenMP's pool, the same libgomp threads oneDNN uses, so
// the two never compete.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace pfl {

inline int elementwise_thread_count = 1;

// Below this many elements a kernel stays serial: waking the pool costs more.
constexpr long kParallelMinElements = 1L << 15;

inline int threads_for(long elements) {
  return elements >= kParallelMinElements ? elementwise_thread_count : 1;
}

// n <= 0: OpenMP's default (OMP_NUM_THREADS or the cores); 1 without OpenMP.
inline void set_elementwise_threads(int n) {
#ifdef _OPENMP
  elementwise_thread_count = n > 0 ? n : omp_get_max_threads();
#else
  (void)n;
  elementwise_thread_count = 1;
#endif
}

}  // namespace pfl
