"""BatchNorm (Caffe's BatchNormLayer): normalise each channel to zero mean, unit variance.

Caffe's three blobs are running sums, not averages: blobs[0] (mean) and blobs[1]
(variance) are divided by the scale factor blobs[2] when used. In TRAIN (unless
use_global_stats) each forward uses the batch statistics and updates
    blobs[2] = maf * blobs[2] + 1
    blobs[0] = maf * blobs[0] + batch mean
    blobs[1] = maf * blobs[1] + m/(m-1) * batch variance      (m = values per channel)
with maf = moving_average_fraction. With global stats (the default in TEST) the
stored statistics are used. There is no scale/shift: a Scale layer follows in nets.
"""

import math

from ..backend import array_module
from ..proto import caffe_pb2
from .base import Layer, register
from ..blob import Blob


@register
class BatchNormLayer(Layer):
    type = "BatchNorm"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        bp = self.param.batch_norm_param
        self.moving_average_fraction = bp.moving_average_fraction
        self.use_global_stats = self.phase == caffe_pb2.TEST
        if bp.HasField("use_global_stats"):
            self.use_global_stats = bp.use_global_stats
        self.eps = bp.eps
        shape = bottom[0].shape
        if len(shape) < 1:
            raise self.error("bottom must have at least 1 axis, got shape %s" % (shape,))
        self.channels = 1 if len(shape) == 1 else shape[1]
        self.blobs = [Blob((self.channels,), dtype=self.dtype),
                      Blob((self.channels,), dtype=self.dtype),
                      Blob((1,), dtype=self.dtype)]
        # The statistics are not learned: Caffe pins their lr_mult to 0 and refuses
        # a configuration that tries to learn them.
        for i in range(len(self.blobs)):
            if i < len(self.param.param):
                if self.param.param[i].lr_mult != 0:
                    raise self.error("param %d has lr_mult %g: batch normalization "
                                     "statistics cannot be learned (lr_mult must be 0)"
                                     % (i, self.param.param[i].lr_mult))
            else:
                self.param.param.add().lr_mult = 0.0
        self.param_propagate_down = [False] * len(self.blobs)
        self.x_norm = None
        self.std = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 1:
            raise self.error("bottom must have at least 1 axis, got shape %s" % (shape,))
        channels = 1 if len(shape) == 1 else shape[1]
        if channels != self.channels:
            raise self.error("bottom has %d channels, the statistics have %d"
                             % (channels, self.channels))
        top[0].reshape(shape)

    def _view(self, array):
        """(N, C, spatial) view of a bottom-shaped array."""
        # The last axis explicitly: -1 cannot be inferred when N or C is 0.
        return array.reshape(array.shape[0] if array.ndim else 1, self.channels,
                             math.prod(array.shape[2:]))

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        dt = self.dtype.type
        x = self._view(bottom[0].data)
        if self.use_global_stats:
            factor = self.blobs[2].data[0]
            scale = dt(0) if factor == 0 else dt(1) / factor
            mean = scale * self.blobs[0].data
            var = scale * self.blobs[1].data
            centered = x - mean[None, :, None]
        else:
            mean = x.mean(axis=(0, 2))
            centered = x - mean[None, :, None]
            var = (centered * centered).mean(axis=(0, 2))
            maf = dt(self.moving_average_fraction)
            self.blobs[2].data[...] = self.blobs[2].data * maf + dt(1)
            m = x.size // self.channels if self.channels else 0
            correction = dt(m) / dt(m - 1) if m > 1 else dt(1)
            self.blobs[0].data[...] = mean + maf * self.blobs[0].data
            self.blobs[1].data[...] = correction * var + maf * self.blobs[1].data
        self.std = xp.sqrt(var + dt(self.eps))
        y = centered / self.std[None, :, None]
        self._view(top[0].data)[...] = y
        # Kept for backward (needed when top is bottom, in place).
        self.x_norm = y

    def backward(self, top, propagate_down, bottom):
        # Caffe's BatchNorm writes the bottom diff whatever propagate_down says (its
        # net runs this backward when the layer has no param specs, even over an input).
        dy = self._view(top[0].diff)
        inv_std = 1 / self.std[None, :, None]
        if self.use_global_stats:
            dx = dy * inv_std
        else:
            # dE/dx = (dy - mean(dy) - y * mean(dy * y)) / std, means per channel.
            y = self.x_norm
            mean_dy = dy.mean(axis=(0, 2), keepdims=True)
            mean_dy_y = (dy * y).mean(axis=(0, 2), keepdims=True)
            dx = (dy - mean_dy - y * mean_dy_y) * inv_std
        self._view(bottom[0].diff)[...] = dx
