"""BVLC's ``Reduction`` (SUM, ASUM, SUMSQ, MEAN over all axes from ``axis``) and
``Parameter`` (a learned blob as a top; happynear's ``blob_filler`` fills it)."""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from ._helpers import canonical_axis
from ._vision_util import new_param_blob
from .base import Layer, register

_OP = caffe_pb2.ReductionParameter


@register
class Reduction(Layer):
    """top[i] = coeff * op(bottom[i, ...]) for the num = count(0, axis) leading entries,
    over dim = count(axis) values; MEAN uses coeff / dim (in the layer's dtype, as
    BVLC). The top has the shape of the leading axes (a scalar for axis 0).
    BVLC semantics on both backends; happynear's GPU kernel sums to the MEAN for SUM
    and sums sign(x) for ASUM (bugs, not reproduced; docs/family.md)."""

    type = "Reduction"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.reduction_param
        if p.operation not in (_OP.SUM, _OP.ASUM, _OP.SUMSQ, _OP.MEAN):
            raise self.error("unknown reduction operation %d" % p.operation)
        self.op = p.operation
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (the top has fewer axes)")

    def reshape(self, bottom, top):
        axis = canonical_axis(self, bottom[0], self.param.reduction_param.axis)
        self.num = bottom[0].count_from(0, axis)
        self.dim = bottom[0].count_from(axis)
        coeff = self.dtype.type(np.float32(self.param.reduction_param.coeff))
        if self.op == _OP.MEAN:
            coeff = coeff / self.dtype.type(max(self.dim, 1))
        self.coeff = coeff
        top[0].reshape(tuple(bottom[0].shape[:axis]))

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = array_module(x)
        if self.op == _OP.ASUM:
            total = xp.abs(x).sum(axis=1)
        elif self.op == _OP.SUMSQ:
            total = (x * x).sum(axis=1)
        else:
            total = x.sum(axis=1)
        top[0].data.reshape(self.num)[...] = total * self.coeff

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data.reshape(self.num, self.dim)
        xp = array_module(x)
        g = (top[0].diff.reshape(self.num, 1) * self.coeff).astype(self.dtype)
        dx = bottom[0].diff.reshape(self.num, self.dim)
        if self.op == _OP.ASUM:
            dx[...] = xp.sign(x) * g
        elif self.op == _OP.SUMSQ:
            dx[...] = x * (self.dtype.type(2) * g)
        else:
            dx[...] = xp.broadcast_to(g, dx.shape)


@register
class Parameter(Layer):
    """A learned blob of ``parameter_param.shape`` given as the top (no bottoms). The
    blob is zero (BVLC) unless happynear's ``blob_filler`` fills it. The top shares the
    blob's data and diff, so what consumers write into the top diff is the parameter
    gradient (Caffe's ShareData / ShareDiff)."""

    type = "Parameter"
    exact_num_bottom = 0
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.parameter_param
        if not p.HasField("shape"):
            raise self.error("parameter_param { shape { dim: ... } } is required")
        shape = tuple(int(d) for d in p.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error("shape %s has a negative dimension" % (shape,))
        filler = p.blob_filler if p.HasField("blob_filler") else caffe_pb2.FillerParameter()
        self.blobs = [new_param_blob(self, shape, filler, "blob_filler")]

    def reshape(self, bottom, top):
        top[0].reshape(self.blobs[0].shape)
        self._share(top[0])

    def _share(self, top_blob):
        if top_blob.data is not self.blobs[0].data:
            top_blob.share_data(self.blobs[0])
            top_blob.share_diff(self.blobs[0])

    def forward(self, bottom, top):
        self._share(top[0])  # again: the blob may have been replaced (weights, device)
