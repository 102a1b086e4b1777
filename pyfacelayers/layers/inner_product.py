"""InnerProduct (Caffe's InnerProductLayer): a fully connected layer, one BLAS GEMM.

With happynear's fork extensions (margin-family.md 3.2): ``normalize: true`` scales
every stored weight row to unit L2 norm in place before each Forward, and the weight
(and, in the schema only, the bias) may come as bottoms.
"""

import numpy as np

from .. import fork_semantics
from ..backend import array_module
from ._products import add_product, multiply
from ._vision_util import new_param_blob, wants_param_grad
from .base import Layer, register


@register
class InnerProductLayer(Layer):
    """top (M, N) = bottom (M, K) * W^T + b, with M = count(0, axis), K = count(axis).

    Weight shape (N, K), or (K, N) with ``transpose: true``; bias (N,).

    Fork extensions: ``normalize: true`` (one bottom): every weight row (the contiguous
    K values) is scaled in place to unit norm before every Forward, in any phase
    (GPU semantics ``w * (w.w + 1e-12)^-0.5``, CPU ``w * (1 / sqrt(fl(w.w + 1e-6)))``);
    the weight gradient is taken against the normalised rows (no Jacobian of the
    normalisation), as the original. A second bottom is the weight (``num_output``
    and ``normalize`` are then ignored, no parameter blobs, its gradient OVERWRITES
    the bottom's diff); a third bottom is ignored with ``bias_term: false``. The
    configurations the original cannot run (a bias as third bottom, or a bias
    parameter with the weight as bottom) are refused.
    """

    type = "InnerProduct"
    min_num_bottom = 1
    max_num_bottom = 3
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        ip = self.param.inner_product_param
        self.axis = self._axis(bottom[0])
        self.K = bottom[0].count_from(self.axis)
        self.transpose = ip.transpose
        self.bias_term = ip.bias_term
        self.weight_bottom = len(bottom) > 1
        self.normalize = ip.normalize and not self.weight_bottom
        self.semantics = fork_semantics.for_layer(self)
        if self.weight_bottom:
            if self.bias_term:
                raise self.error(
                    "with the weight as bottom %s bias_term must be false (happynear's "
                    "fork cannot run a bias here: it aborts or reads a missing blob)"
                    % ("(and the bias as bottom[2])" if len(bottom) > 2 else "")
                    + "; set inner_product_param { bias_term: false }")
            self.blobs = []
            self.num_output = self._weight_outputs(bottom[1])
            return
        self.num_output = ip.num_output
        if self.num_output < 1:
            raise self.error("num_output must be > 0, got %d" % self.num_output)
        shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        self.blobs = [new_param_blob(self, shape, ip.weight_filler, "weight_filler")]
        if self.bias_term:
            self.blobs.append(new_param_blob(self, (self.num_output,), ip.bias_filler,
                                             "bias_filler"))

    def _weight_outputs(self, weight, check_k=False):
        """N from a weight given as bottom[1]: (N, K), or (K, N) with ``transpose``;
        trailing axes of 1 (a Parameter blob of shape (N, K, 1, 1)) are allowed. K is
        checked when the layer runs (``check_k``), not when the net is built, so that
        fragments whose trunk is not there yet still build."""
        shape = tuple(weight.shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape = shape[:-1]
        k_axis = 0 if self.transpose else 1
        if len(shape) != 2 or (check_k and shape[k_axis] != self.K):
            raise self.error("the weight bottom must be %s with K = %d, got shape %s"
                             % ("(K, N)" if self.transpose else "(N, K)", self.K,
                                tuple(weight.shape)))
        return shape[1 - k_axis]

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def _axis(self, blob):
        axis = self.param.inner_product_param.axis
        n = len(blob.shape)
        if not -n <= axis < n:
            raise self.error("axis %d out of range for a %d-D bottom %s" % (axis, n, blob.shape))
        return axis % n

    def reshape(self, bottom, top):
        axis = self._axis(bottom[0])
        k = bottom[0].count_from(axis)
        if k != self.K:
            raise self.error("input size incompatible with the weights: bottom %s has %d "
                             "inputs from axis %d, the weights expect %d"
                             % (bottom[0].shape, k, axis, self.K))
        self.axis = axis
        self.M = bottom[0].count_from(0, axis)
        if self.weight_bottom:
            self.num_output = self._weight_outputs(bottom[1])
        top[0].reshape(tuple(bottom[0].shape[:axis]) + (self.num_output,))

    def _weight_nk(self, bottom):
        """The weight as an (N, K) matrix (a view)."""
        if self.weight_bottom:
            self._weight_outputs(bottom[1], check_k=True)
            w = bottom[1].data.reshape((self.K, self.num_output) if self.transpose
                                       else (self.num_output, self.K))
        else:
            w = self.blobs[0].data
        return w.T if self.transpose else w

    def _normalize_rows(self):
        """Scale every stored weight row to unit norm, in place (the original's rows are
        the contiguous K values, also with ``transpose``: its quirk, kept)."""
        w = self.blobs[0].data
        rows = w.reshape(-1, self.K)  # the stored order, also with transpose
        xp = array_module(w)
        squares = (rows * rows).sum(axis=1, keepdims=True)
        if self.semantics == "cpu":
            shifted = (squares.astype(np.float64) + 1e-6).astype(w.dtype)
            rows *= w.dtype.type(1) / xp.sqrt(shifted)
        else:
            rows *= (squares + w.dtype.type(1e-12)) ** w.dtype.type(-0.5)

    def forward(self, bottom, top):
        if self.normalize:
            self._normalize_rows()
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        multiply(self, x, self._weight_nk(bottom).T, y)
        if self.bias_term:
            y += self.blobs[1].data[None, :]

    def backward(self, top, propagate_down, bottom):
        xp = array_module(top[0].data)
        dy = top[0].diff.reshape(self.M, self.num_output)
        if self.weight_bottom:
            if len(propagate_down) > 1 and propagate_down[1]:
                x = bottom[0].data.reshape(self.M, self.K)
                grad = xp.matmul(x.T, dy) if self.transpose else xp.matmul(dy.T, x)
                bottom[1].diff[...] = grad.reshape(bottom[1].shape)
        elif wants_param_grad(self, 0):
            x = bottom[0].data.reshape(self.M, self.K)
            weight_diff = self.blobs[0].diff
            if self.transpose:
                add_product(self, weight_diff.reshape(self.K, self.num_output), x.T, dy)
            else:
                add_product(self, weight_diff.reshape(self.num_output, self.K), dy.T, x)
        if self.bias_term and wants_param_grad(self, 1):
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            multiply(self, dy, self._weight_nk(bottom), bottom[0].diff.reshape(self.M, self.K))
