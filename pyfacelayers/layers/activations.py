"""Element-wise neurons: ReLU, Sigmoid, TanH, Dropout (all may run in place)."""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from .base import Layer, register


class _Neuron(Layer):
    """One bottom, one top of the same shape; top may be the bottom blob itself."""

    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register
class ReLULayer(_Neuron):
    """top = max(x, 0) + negative_slope * min(x, 0)."""

    type = "ReLU"

    def layer_setup(self, bottom, top):
        # Caffe keeps parameters as Dtype: the float field rounded to the layer dtype.
        self.slope = self.dtype.type(np.float32(self.param.relu_param.negative_slope))

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        x = bottom[0].data
        top[0].data[...] = xp.maximum(x, 0) + self.slope * xp.minimum(x, 0)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # Caffe tests the sign of bottom data, which in place is the top data: the
        # sign survives ReLU for any slope >= 0.
        x = bottom[0].data
        bottom[0].diff[...] = top[0].diff * ((x > 0) + self.slope * (x <= 0))


@register
class SigmoidLayer(_Neuron):
    """top = 1 / (1 + exp(-x)); the gradient uses only the top data."""

    type = "Sigmoid"

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        with np.errstate(over="ignore"):  # exp(-x) -> inf gives the right limit 0
            top[0].data[...] = 1 / (1 + xp.exp(-bottom[0].data))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * y * (1 - y)


@register
class TanHLayer(_Neuron):
    """top = tanh(x); the gradient uses only the top data."""

    type = "TanH"

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        top[0].data[...] = xp.tanh(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)


@register
class DropoutLayer(_Neuron):
    """TRAIN: keep each unit with probability 1 - p, scale kept ones by 1 / (1 - p).
    TEST: identity."""

    type = "Dropout"

    def layer_setup(self, bottom, top):
        ratio = np.float32(self.param.dropout_param.dropout_ratio)
        if not 0 <= ratio < 1:
            raise self.error("dropout_ratio must be in [0, 1), got %g" % ratio)
        self.threshold = self.dtype.type(ratio)
        # As Caffe: 1. / (1. - threshold) in double, stored as Dtype.
        self.scale = self.dtype.type(1.0 / (1.0 - float(self.threshold)))
        self.mask = None

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.mask = None

    def _train(self):
        return self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        if not self._train():
            if top[0] is not bottom[0]:
                top[0].data[...] = bottom[0].data
            return
        xp = array_module(bottom[0].data)
        keep = self.rng.random(bottom[0].shape) < (1.0 - float(self.threshold))
        self.mask = xp.asarray(keep.astype(self.dtype))
        top[0].data[...] = bottom[0].data * self.mask * self.scale

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if not self._train():
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        if self.mask is None:
            raise self.error("backward called before a TRAIN forward")
        bottom[0].diff[...] = top[0].diff * self.mask * self.scale

