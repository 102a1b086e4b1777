"""Softmax over one axis (Caffe's: subtract the max before exp)."""

from ..backend import array_module
from .base import Layer, register
from ._helpers import canonical_axis


def softmax(x, outer, channels, inner):
    """Softmax of ``x`` viewed as (outer, channels, inner), over the channels."""
    xp = array_module(x)
    x = x.reshape(outer, channels, inner)
    if x.size == 0:  # nothing to normalise (and max() of an empty axis is an error)
        return xp.empty_like(x)
    e = xp.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def split_axis(blob, axis):
    """(outer, channels, inner) counts of a blob around ``axis``."""
    return blob.count_from(0, axis), blob.shape[axis], blob.count_from(axis + 1)


@register
class SoftmaxLayer(Layer):
    type = "Softmax"
    exact_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = canonical_axis(self, bottom[0], self.param.softmax_param.axis)
        self.dims = split_axis(bottom[0], self.axis)
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = softmax(bottom[0].data, *self.dims).reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = top[0].data.reshape(self.dims)
        dy = top[0].diff.reshape(self.dims)
        dot = (dy * y).sum(axis=1, keepdims=True)
        bottom[0].diff[...] = ((dy - dot) * y).reshape(bottom[0].shape)
