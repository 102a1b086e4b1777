"""Bias (Caffe's BiasLayer): top = bottom + b, b broadcast over the other axes.

b is a learned blob covering ``num_axes`` axes of bottom[0] from ``axis``, or the
second bottom (then not learned here; its gradient goes to bottom[1]).
"""

from ..proto import caffe_pb2
from ._vision_util import broadcast_axes, new_param_blob, outer_dim_inner, wants_param_grad
from .base import Layer, register


@register
class BiasLayer(Layer):
    type = "Bias"
    min_num_bottom = 1
    max_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        bp = self.param.bias_param
        if len(bottom) == 1:
            _, shape = broadcast_axes(self, bp.axis, bp.num_axes, bottom[0], "bias")
            filler = bp.filler if bp.HasField("filler") else caffe_pb2.FillerParameter(
                type="constant", value=0)
            self.blobs = [new_param_blob(self, shape, filler, "filler")]

    def reshape(self, bottom, top):
        bias = bottom[1] if len(bottom) > 1 else self.blobs[0]
        self.dims = outer_dim_inner(self, bottom[0].shape, bias.shape,
                                    self.param.bias_param.axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        bias = bottom[1].data if len(bottom) > 1 else self.blobs[0].data
        x = bottom[0].data.reshape(self.dims)
        top[0].data.reshape(self.dims)[...] = x + bias.reshape(1, -1, 1)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.dims)
        if len(bottom) > 1:
            if len(propagate_down) > 1 and propagate_down[1]:
                bottom[1].diff[...] = dy.sum(axis=(0, 2)).reshape(bottom[1].shape)
        elif wants_param_grad(self, 0):
            self.blobs[0].diff[...] += dy.sum(axis=(0, 2)).reshape(self.blobs[0].shape)
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
