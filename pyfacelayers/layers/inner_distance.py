"""happynear's ``InnerDistance`` (NormFace, margin-family.md 3.9): distances to centres.

An inner product's shape with a distance instead of a dot product: the output
``(M, N)`` holds, for every feature row ``x_m`` (M rows of K values after ``axis``) and
every centre ``w_n`` (the layer's own ``(N, K)`` weight, or the second bottom), the
SQUARED Euclidean distance ``sum_k (x - w)^2`` (``distance_type: "L2"``, no square
root) or ``sum_k |x - w|`` (``"L1"``).

The arithmetic is written once over the blobs' array module (numpy or cupy). L2 goes
through matrix products (|x|^2 + |w|^2 - 2 x.w, accumulated in float64 and clamped at
0 so that rounding never gives a negative distance); L1 works on bounded blocks of
rows. The forks' CPU and GPU code differ only in the in-place weight normalisation
(``normalize``): CPU ``w / sqrt(w.w + 1e-6)``, GPU ``w * (w.w)^-0.5`` (no epsilon: a zero
centre becomes NaN); :mod:`pyfacelayers.fork_semantics` picks, default GPU.
"""

import numpy as np

from .. import fork_semantics
from ..backend import array_module
from ..blob import Blob
from ..proto import caffe_pb2
from ._helpers import canonical_axis, checked_labels
from .base import Layer, register

# Bound on the (rows x N x K) temporaries of the L1 distance (elements).
_BLOCK_ELEMENTS = 1 << 22


def _blocks(rows, per_row):
    """Row ranges [r0, r1) whose temporaries hold at most _BLOCK_ELEMENTS values."""
    step = max(1, _BLOCK_ELEMENTS // max(1, per_row))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def buggy_sign_product(dy, d):
    """``dy * sign(d)`` as the forks compute it: their macro
    ``#define sign(x) (0 < (x)) - ((x) < 0)`` lacks outer parentheses, so
    ``dy * sign(d)`` expands to ``dy * [d > 0] - [d < 0]`` (CPU and GPU alike)."""
    return dy * (d > 0) - (d < 0)


@register
class InnerDistance(Layer):
    """Squared L2 (or L1) distances from each feature row to each centre.

    Bottoms: features ``x`` (any shape, split at ``axis`` into M rows of K); optionally
    the centres ``W`` (N, K) as ``bottom[1]`` (then the layer has no weight of its own and
    ``N = W.shape[0]``); with ``update_center_only``, the labels LAST (3 bottoms). Top:
    ``x.shape[:axis] + (N,)``. Blob 0 (one bottom only): the centres (N, K), filled by
    ``weight_filler``; ``bias_term`` is read and ignored, as in the fork (no bias exists).

    * ``normalize`` (own centres only): every Forward normalises the centre rows IN PLACE
      (GPU semantics ``w * (w.w)^-0.5``, CPU ``w * 1/sqrt(w.w + 1e-6)``).
    * Backward: the features' diff is OVERWRITTEN with ``sum_n dy[m,n] 2 (x - w_n)`` (L1:
      the forks' ``dy * sign`` bug, see :func:`buggy_sign_product`); own centres'
      diff ACCUMULATES ``sum_m dy[m,n] 2 (w_n - x_m)``; centres given as a bottom get their
      diff zeroed first (overwrite). ``update_center_only``: only the label column of each
      row contributes to the centre gradient.
    * Errors naming the layer: a distance_type other than L2/L1, ``transpose`` (the forks
      never implemented it and compute garbage), ``update_center_only`` without a label
      bottom (the fork reads the labels as centres, or the features as labels), centres
      whose K differs from the features', labels out of [0, N).
    """

    type = "InnerDistance"
    min_num_bottom = 1
    max_num_bottom = 3
    exact_num_top = 1

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None):
        super().__init__(param, phase=phase, dtype=dtype, rng=rng)
        self.param_propagate_down = [True]
        self.semantics = None  # None: PYFACELAYERS_FORK_SEMANTICS at setup

    def allow_force_backward(self, bottom_index):
        return not (self.param.inner_distance_param.update_center_only
                    and bottom_index == 2)  # labels

    # -- setup -------------------------------------------------------------------------
    def layer_setup(self, bottom, top):
        p = self.param.inner_distance_param
        if self.dtype not in (np.float32, np.float64):
            raise self.error("dtype must be float32 or float64, got %s" % self.dtype)
        if p.distance_type not in ("L2", "L1"):
            raise self.error('distance_type must be "L2" or "L1", got "%s"' % p.distance_type)
        if p.transpose:
            raise self.error("transpose: true is not supported (the fork never implemented "
                             "it: its math always reads the centres as (num_output, K))")
        if p.update_center_only and len(bottom) != 3:
            raise self.error("update_center_only needs 3 bottoms (features, centres, labels), "
                             "got %d (the fork would read the %s as the %s)"
                             % (len(bottom), "labels" if len(bottom) == 2 else "features",
                                "centres" if len(bottom) == 2 else "labels"))
        self.l1 = p.distance_type == "L1"
        self.semantics = fork_semantics.for_layer(self)
        self.axis = canonical_axis(self, bottom[0], p.axis)
        k = bottom[0].count_from(self.axis)
        if len(bottom) >= 2:
            return  # centres from bottom[1]: no weight of our own
        n = int(p.num_output)
        if n <= 0:
            raise self.error("num_output must be > 0 when the centres are the layer's own "
                             "weight (one bottom), got %d" % n)
        if self.blobs:  # set before setup (e.g. copied from a model)
            if tuple(self.blobs[0].shape) != (n, k):
                raise self.error("weight blob has shape %s, expected (%d, %d)"
                                 % (self.blobs[0].shape, n, k))
            return
        weight = Blob((n, k), dtype=self.dtype, label="param 0 (centres)")
        if p.HasField("weight_filler"):
            from ..fillers import fill
            try:
                weight.data = fill(p.weight_filler, (n, k), self.dtype, self.rng)
            except ValueError as exc:
                raise self.error("weight_filler: %s" % exc) from None
        self.blobs = [weight]

    def reshape(self, bottom, top):
        # The centres' K is checked when they are used (a net whose Parameter centres
        # are resized later still builds, as in the fork).
        m, n, k = self._dims(bottom, check_k=False)
        top[0].reshape(tuple(bottom[0].shape[:self.axis]) + (n,))

    def _dims(self, bottom, check_k=True):
        """(M, N, K), checking the centres and labels against the features."""
        shape = bottom[0].shape
        if len(shape) <= self.axis:
            raise self.error("features have shape %s, need more than %d axes"
                             % (shape, self.axis))
        m, k = bottom[0].count_from(0, self.axis), bottom[0].count_from(self.axis)
        centres = self._centres_blob(bottom)
        if len(centres.shape) < 1 or (check_k and centres.count_from(1) != k):
            raise self.error("centres have shape %s, expected (N, %d): the features have %d "
                             "values per row (shape %s from axis %d)"
                             % (centres.shape, k, k, shape, self.axis))
        n = centres.shape[0]
        if len(bottom) == 3 and self.param.inner_distance_param.update_center_only:
            if bottom[2].count != m:
                raise self.error("labels (bottom[2]) have %d values (shape %s), expected one "
                                 "per feature row: %d" % (bottom[2].count, bottom[2].shape, m))
        return m, n, k

    def _centres_blob(self, bottom):
        return bottom[1] if len(bottom) >= 2 else self.blobs[0]

    # -- forward -----------------------------------------------------------------------
    def _normalize_centres(self, w):
        """The fork's in-place row normalisation, in the layer's dtype."""
        xp = array_module(w)
        dots = (w * w).sum(axis=1, keepdims=True)
        if self.semantics == "cpu":
            # Dtype sum_sq = dot + 1e-6 (double add, stored); Dtype(1) / sqrt(sum_sq).
            sum_sq = (dots.astype(np.float64) + 1e-6).astype(w.dtype)
            scale = w.dtype.type(1) / xp.sqrt(sum_sq)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = dots ** w.dtype.type(-0.5)
        w *= scale

    def forward(self, bottom, top):
        p = self.param.inner_distance_param
        m, n, k = self._dims(bottom)
        x = bottom[0].data.reshape(m, k)
        w = self._centres_blob(bottom).data.reshape(n, k)
        xp = array_module(x)
        if p.normalize and len(bottom) == 1:
            self._normalize_centres(w)
        out = top[0].data.reshape(m, n)
        if self.l1:
            for r0, r1 in _blocks(m, n * k):
                out[r0:r1] = xp.abs(x[r0:r1, None, :] - w[None, :, :]).sum(axis=2)
            return
        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        squares = ((x64 * x64).sum(axis=1)[:, None] + (w64 * w64).sum(axis=1)[None, :]
                   - 2.0 * (x64 @ w64.T))
        out[...] = xp.maximum(squares, 0.0)

    # -- backward ----------------------------------------------------------------------
    def _weighted_differences(self, dy, a, b, pairs=None):
        """Rows i of ``a`` against rows j of ``b``: ``sum_j dy[i,j] g(a_i - b_j)`` with
        g(d) = 2d (L2) or the forks' sign product (L1), over the pairs (i, j) where
        ``pairs`` is true (all when None); shape of ``a``, float64."""
        xp = array_module(a)
        if pairs is not None:
            dy = xp.where(pairs, dy, 0.0)
        if not self.l1:
            return 2.0 * (a * dy.sum(axis=1)[:, None] - dy @ b)
        result = xp.empty(a.shape, np.float64)
        for r0, r1 in _blocks(a.shape[0], b.shape[0] * a.shape[1]):
            terms = buggy_sign_product(dy[r0:r1, :, None], a[r0:r1, None, :] - b[None, :, :])
            if pairs is not None:  # the bug's "- [d < 0]" does not vanish with dy = 0
                terms = terms * pairs[r0:r1, :, None]
            result[r0:r1] = terms.sum(axis=1)
        return result

    def backward(self, top, propagate_down, bottom):
        p = self.param.inner_distance_param
        m, n, k = self._dims(bottom)
        x = bottom[0].data.reshape(m, k).astype(np.float64)
        centres = self._centres_blob(bottom)
        w = centres.data.reshape(n, k).astype(np.float64)
        dy = top[0].diff.reshape(m, n).astype(np.float64)
        xp = array_module(x)

        own = len(bottom) == 1
        if (own and self.param_propagate_down[0]) or (not own and propagate_down[1]):
            pairs = None
            if p.update_center_only:  # only (label_m, m) pairs move the centres
                labels, _ = checked_labels(self, xp, bottom[2].data, m, 1, n, None)
                pairs = (xp.arange(n)[:, None] == labels[:, 0][None, :])
            grad = self._weighted_differences(dy.T, w, x, pairs).astype(self.dtype)
            diff = centres.diff.reshape(n, k)
            if own:
                diff += grad
            else:
                diff[...] = grad
        if propagate_down[0]:
            bottom[0].diff.reshape(m, k)[...] = self._weighted_differences(dy, x, w)
