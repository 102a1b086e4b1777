"""LRN: Caffe's local response normalisation (AlexNet/CIFAR-10 full nets)."""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from .base import Layer, register

_REGION = caffe_pb2.LRNParameter


def _window_sums(xp, values, size, axis):
    """Sum over a centred window of ``size`` along ``axis`` (zero padding), via a
    cumulative sum: window of index i covers [i - (size-1)/2, i + size/2]."""
    pre = (size - 1) // 2
    n = values.shape[axis]
    pad = [(0, 0)] * values.ndim
    pad[axis] = (pre + 1, size - pre - 1)
    padded = xp.pad(values, pad)
    csum = xp.cumsum(padded, axis=axis)
    hi = xp.take(csum, xp.arange(size, size + n), axis=axis)
    lo = xp.take(csum, xp.arange(0, n), axis=axis)
    return hi - lo


@register
class LRN(Layer):
    """ACROSS_CHANNELS: top = x * (k + alpha/size * sum_window x^2)^-beta over the
    ``local_size`` neighbouring channels. WITHIN_CHANNEL: top = x * (1 + alpha *
    avg_window x^2)^-beta over a local_size x local_size spatial window, averaged as
    Caffe's AVE pooling averages (window clipped to the padded image); k is unused
    there, as in Caffe."""

    type = "LRN"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = p.norm_region
        if self.size % 2 == 0:
            raise self.error("local_size must be odd, got %d" % self.size)

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error("needs a 4-D bottom (num, channels, height, width), got %s"
                             % (bottom[0].shape,))
        top[0].reshape(bottom[0].shape)

    def _scale(self, xp, x):
        dt = x.dtype.type
        if self.region == _REGION.ACROSS_CHANNELS:
            return dt(self.k) + dt(self.alpha / self.size) * _window_sums(xp, x * x, self.size, 1)
        sums = _window_sums(xp, _window_sums(xp, x * x, self.size, 2), self.size, 3)
        return dt(1) + dt(self.alpha) * sums / self._pool_area(xp, x).astype(x.dtype)

    def _pool_area(self, xp, x):
        """Caffe's AVE pooling divisor with pad (size-1)/2, stride 1: the window clipped
        to [-pad, H + pad), then counted."""
        pad = (self.size - 1) // 2

        def extent(n):
            start = np.arange(n) - pad
            end = np.minimum(start + self.size, n + pad)
            return end - start

        h, w = x.shape[2], x.shape[3]
        return xp.asarray(np.outer(extent(h), extent(w)))

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = array_module(x)
        self._x = x.copy()
        self._s = self._scale(xp, x)
        top[0].data[...] = x * self._s ** -self.beta

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = array_module(top[0].diff)
        x, s, dt = self._x, self._s, self._x.dtype.type
        dy = top[0].diff
        y = x * s ** -self.beta
        # d top / d s, folded into the window sums that produced s.
        g = dy * y / s
        if self.region == _REGION.ACROSS_CHANNELS:
            back = _window_sums(xp, g, self.size, 1)  # symmetric window: its own adjoint
            coeff = dt(2 * self.alpha * self.beta / self.size)
            bottom[0].diff[...] = dy * s ** -self.beta - coeff * x * back
        else:
            g = g / self._pool_area(xp, x).astype(x.dtype)
            back = _window_sums(xp, _window_sums(xp, g, self.size, 2), self.size, 3)
            bottom[0].diff[...] = dy * s ** -self.beta - dt(2 * self.alpha * self.beta) * x * back
