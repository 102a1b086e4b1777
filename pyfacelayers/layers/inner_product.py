"""InnerProduct (Caffe's InnerProductLayer): a fully connected layer, one BLAS GEMM."""

from ..backend import array_module
from ._vision_util import new_param_blob, wants_param_grad
from .base import Layer, register


@register
class InnerProductLayer(Layer):
    """top (M, N) = bottom (M, K) * W^T + b, with M = count(0, axis), K = count(axis).

    Weight shape (N, K), or (K, N) with ``transpose: true``; bias (N,).
    """

    type = "InnerProduct"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        ip = self.param.inner_product_param
        self.num_output = ip.num_output
        if self.num_output < 1:
            raise self.error("num_output must be > 0, got %d" % self.num_output)
        self.axis = self._axis(bottom[0])
        self.K = bottom[0].count_from(self.axis)
        self.transpose = ip.transpose
        self.bias_term = ip.bias_term
        shape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        self.blobs = [new_param_blob(self, shape, ip.weight_filler, "weight_filler")]
        if self.bias_term:
            self.blobs.append(new_param_blob(self, (self.num_output,), ip.bias_filler,
                                             "bias_filler"))

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
        top[0].reshape(tuple(bottom[0].shape[:axis]) + (self.num_output,))

    def _weight_nk(self):
        """The weight as an (N, K) matrix (a view)."""
        w = self.blobs[0].data
        return w.T if self.transpose else w

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        y[...] = xp.matmul(x, self._weight_nk().T)  # (out= is slower with OpenBLAS)
        if self.bias_term:
            y += self.blobs[1].data[None, :]

    def backward(self, top, propagate_down, bottom):
        xp = array_module(top[0].data)
        dy = top[0].diff.reshape(self.M, self.num_output)
        if wants_param_grad(self, 0):
            x = bottom[0].data.reshape(self.M, self.K)
            if self.transpose:
                self.blobs[0].diff[...] += xp.matmul(x.T, dy)
            else:
                self.blobs[0].diff[...] += xp.matmul(dy.T, x)
        if self.bias_term and wants_param_grad(self, 1):
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            dx[...] = xp.matmul(dy, self._weight_nk())
