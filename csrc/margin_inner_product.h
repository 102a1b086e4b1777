// CPU kernels of the SphereFace MarginInnerProduct layer (A-Softmax) and the
// Angular-Triplet fork's semihard / triplet steps.
//
// Only the O(M*K) and O(N*K) work lives here; the three matrix products with the
// weight (X.W^T, top_diff.W, top_diff^T.X) are done by a real BLAS on the Python side.
// All arrays are dense row-major; every argument was validated by the bindings
// (shapes, dtype, contiguity, labels integral and in [0, n)). Per-element math:
// margin_math.h (shared with the CUDA twins).
#pragma once

#include <stdint.h>

namespace pfl {

// Scale every row of w (n x k) to unit L2 norm, in place. Returns -1, or the index of
// the first row whose sum of squares is 0 (then w is left unchanged).
// inv_norm: scratch of n elements.
template <typename T>
long margin_normalize_rows_cpu(T* w, long n, long k, T* inv_norm);

// Index of the first label that is not an integer in [0, n), or -1.
template <typename T>
long margin_find_bad_label_cpu(const T* labels, long m, long n);

// top (m x n) holds the plain logits X.W^T on entry. Per row i, with y = labels[i]:
// x_norm[i] = |x_i|, cos_y[i] = cos of the label column, logit_y[i] = the plain logit
// x_i.w_y, and top[i, y] becomes the margin output (unchanged for SINGLE).
template <typename T>
void margin_forward_cpu(T* top, const T* x, const T* labels, long m, long n, long k,
                        T lambda, int type, T* x_norm, T* cos_y, T* logit_y);

// bottom_diff (m x k) holds top_diff.W on entry; adds the label column's correction.
template <typename T>
void margin_backward_cpu(T* bottom_diff, const T* top_diff, const T* x, const T* w,
                         const T* labels, const T* x_norm, const T* cos_y, long m, long n,
                         long k, T lambda, int type, bool normalized);

// Angular-Triplet semihard mask: zero the feature gradient rows that are easy
// (label == argmax of top) or, unless SINGLE, hard (label != argmax of the plain
// logits, which are top with the label column replaced by logit_y). Returns the
// number of rows zeroed.
template <typename T>
long margin_semihard_mask_cpu(T* bottom_diff, const T* top, const T* logit_y,
                              const T* labels, long m, long n, long k, int type);

// Angular-Triplet weight replacement: for i = 0..m-1 in order, if draw (first_draw + i)
// of `seed` is true, w[labels[i]] = x_i (later rows win). Returns the rows replaced.
template <typename T>
long margin_triplet_replace_cpu(T* w, const T* x, const T* labels, long m, long k,
                                uint64_t seed, uint64_t first_draw);

}  // namespace pfl
