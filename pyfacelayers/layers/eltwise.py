"""Eltwise: element-wise SUM (with coefficients), PROD or MAX of two or more bottoms."""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from . import _array_ops as array_ops
from .base import Layer, register

_OP = caffe_pb2.EltwiseParameter


@register
class EltwiseLayer(Layer):
    type = "Eltwise"
    min_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error("takes one coefficient per bottom: got %d coeff for %d bottoms"
                             % (len(p.coeff), len(bottom)))
        if p.coeff and self.op == _OP.PROD:
            raise self.error("coeff is only allowed for operation SUM")
        # Caffe keeps coefficients as Dtype (float field rounded to the layer dtype).
        coeffs = p.coeff if p.coeff else [1.0] * len(bottom)
        self.coeffs = [self.dtype.type(np.float32(c)) for c in coeffs]
        self.stable_prod_grad = p.stable_prod_grad
        self.max_idx = None

    def reshape(self, bottom, top):
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != bottom[0].shape:
                raise self.error("all bottoms must have the same shape: bottom 0 is %s, "
                                 "bottom %d is %s" % (bottom[0].shape, i, b.shape))
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        if self.op == _OP.SUM and all(c == 1 for c in self.coeffs):
            # Plain sums straight into the top: one pass per bottom, no temporaries
            # (the same values: 1 * x is x). Any layout (Blob.raw_data): channels-last
            # bottoms make a channels-last top where the net lets them.
            if top[0].prefers_channels_last and all(b.is_channels_last for b in bottom):
                top[0].store_channels_last()
            data = [b.raw_data() for b in bottom]
            out = top[0].raw_data()
            if len(data) == 1:
                array_ops.copy(data[0], out)
                return
            array_ops.add(data[0], data[1], out)
            for x in data[2:]:
                array_ops.add(out, x, out)
            return
        xp = array_module(bottom[0].data)
        data = [b.data for b in bottom]
        if self.op == _OP.SUM:
            out = self.coeffs[0] * data[0]
            for c, x in zip(self.coeffs[1:], data[1:]):
                out = out + c * x
        elif self.op == _OP.PROD:
            out = data[0] * data[1]
            for x in data[2:]:
                out = out * x
        else:
            # Caffe's tie rule: bottom 1 wins a tie with bottom 0; after that a later
            # bottom must be strictly larger to take over.
            first = data[0] > data[1]
            out = xp.where(first, data[0], data[1])
            idx = xp.where(first, 0, 1).astype(np.int32)
            for i, x in enumerate(data[2:], 2):
                larger = x > out
                out = xp.where(larger, x, out)
                idx = xp.where(larger, i, idx).astype(np.int32)
            self.max_idx = idx
        top[0].data[...] = out

    def backward(self, top, propagate_down, bottom):
        xp = array_module(top[0].diff)
        top_diff = top[0].diff
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            if self.op == _OP.SUM:
                c = self.coeffs[i]
                if c == 1:
                    array_ops.copy(top_diff, b.diff)
                else:
                    b.diff[...] = c * top_diff
            elif self.op == _OP.PROD:
                if self.stable_prod_grad:
                    others = None
                    for j, other in enumerate(bottom):
                        if j != i:
                            others = other.data if others is None else others * other.data
                    b.diff[...] = others * top_diff
                else:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        b.diff[...] = top[0].data / b.data * top_diff
            else:
                if self.max_idx is None:
                    raise self.error("backward called before forward")
                b.diff[...] = xp.where(self.max_idx == i, top_diff, 0)
