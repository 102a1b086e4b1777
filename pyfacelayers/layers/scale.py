"""Scale (Caffe's ScaleLayer): top = bottom * s (+ b), s broadcast over the other axes.

s is a learned blob covering ``num_axes`` axes of bottom[0] from ``axis`` (filler
default constant 1), or the second bottom. With ``bias_term`` a learned bias of s's
shape follows (filler ``bias_filler``, default constant 0), as Caffe's internal Bias
layer. Works in place (the input is kept for the gradient of s).

Fork extension (happynear, xialuxi; margin-family.md 3.3): ``min_value`` / ``max_value``
clamp the scale values IN PLACE (the learned blob, or bottom[1]'s data) before every
Forward, in any phase: first up to ``min_value``, then down to ``max_value``. The clamp
has no gradient.
"""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from ._vision_util import broadcast_axes, new_param_blob, outer_dim_inner, wants_param_grad
from .base import Layer, register


@register
class ScaleLayer(Layer):
    type = "Scale"
    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        sp = self.param.scale_param
        self.blobs = []
        if len(bottom) == 1:
            _, shape = broadcast_axes(self, sp.axis, sp.num_axes, bottom[0], "scale")
            filler = sp.filler if sp.HasField("filler") else caffe_pb2.FillerParameter(
                type="constant", value=1)
            self.blobs.append(new_param_blob(self, shape, filler, "filler"))
        else:
            shape = bottom[1].shape
        self.bias_index = None
        if sp.bias_term:
            filler = sp.bias_filler if sp.HasField("bias_filler") else \
                caffe_pb2.FillerParameter(type="constant", value=0)
            self.bias_index = len(self.blobs)
            self.blobs.append(new_param_blob(self, shape, filler, "bias_filler"))
        self.bottom_copy = None
        self.clamp = [float(np.float32(getattr(sp, f))) if sp.HasField(f) else None
                      for f in ("min_value", "max_value")]
        if None not in self.clamp and self.clamp[0] > self.clamp[1]:
            raise self.error("min_value %g is above max_value %g" % tuple(self.clamp))

    def _scale(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def reshape(self, bottom, top):
        scale = self._scale(bottom)
        self.dims = outer_dim_inner(self, bottom[0].shape, scale.shape,
                                    self.param.scale_param.axis, "scale")
        if self.bias_index is not None and self.blobs[self.bias_index].shape != scale.shape:
            raise self.error("bias shape %s differs from the scale shape %s"
                             % (self.blobs[self.bias_index].shape, scale.shape))
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def _clamp_scale(self, scale):
        low, high = self.clamp
        xp = array_module(scale.data)
        if low is not None:
            xp.maximum(scale.data, scale.dtype.type(low), out=scale.data)
        if high is not None:
            xp.minimum(scale.data, scale.dtype.type(high), out=scale.data)

    def forward(self, bottom, top):
        if self.clamp != [None, None]:
            self._clamp_scale(self._scale(bottom))
        x = bottom[0].data.reshape(self.dims)
        if top[0] is bottom[0]:
            self.bottom_copy = x.copy()
            x = self.bottom_copy
        y = x * self._scale(bottom).data.reshape(1, -1, 1)
        if self.bias_index is not None:
            y += self.blobs[self.bias_index].data.reshape(1, -1, 1)
        top[0].data.reshape(self.dims)[...] = y

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.dims)
        scale = self._scale(bottom)
        if self.bias_index is not None and wants_param_grad(self, self.bias_index):
            bias = self.blobs[self.bias_index]
            bias.diff[...] += dy.sum(axis=(0, 2)).reshape(bias.shape)
        x = self.bottom_copy if top[0] is bottom[0] else bottom[0].data.reshape(self.dims)
        if len(bottom) > 1:
            if len(propagate_down) > 1 and propagate_down[1]:
                scale.diff[...] = (dy * x).sum(axis=(0, 2)).reshape(scale.shape)
        elif wants_param_grad(self, 0):
            scale.diff[...] += (dy * x).sum(axis=(0, 2)).reshape(scale.shape)
        if propagate_down[0]:
            bottom[0].diff.reshape(self.dims)[...] = dy * scale.data.reshape(1, -1, 1)
