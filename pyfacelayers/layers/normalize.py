"""happynear's ``Normalize`` and xialuxi's ``NormL2`` (margin-family.md 3.1, 4.4).

Both give the legacy 4-D top shape ``(num, channels, height, width)`` (a 2-D bottom
``(N, C)`` gives ``(N, C, 1, 1)``), as the originals' Reshape does. The arithmetic is
written once over the array module of the blobs (numpy or cupy); where the forks' CPU
and GPU code differ, :mod:`pyfacelayers.fork_semantics` picks (default: the GPU code).
"""

import numpy as np

from .. import fork_semantics
from ..backend import array_module
from .base import Layer, register


def legacy_shape(layer, blob):
    """(num, channels, height, width) of a blob of at most 4 axes (Caffe's accessors)."""
    shape = tuple(blob.shape)
    if len(shape) > 4:
        raise layer.error("bottom of shape %s has %d axes; this layer reads the legacy "
                          "num/channels/height/width and takes at most 4" % (shape, len(shape)))
    return shape + (1,) * (4 - len(shape))


def add_constant(values, constant):
    """``values + constant`` as C++ does ``Dtype + double`` stored back in Dtype."""
    return (values.astype(np.float64) + constant).astype(values.dtype)


@register
class Normalize(Layer):
    """L2 (or L1) normalisation over the channel axis at every (n, h, w).

    Top 0: ``x / norm``; optional top 1: ``norm``, shape (N, 1, H, W). L2 norm:
    ``sqrt(S + 1e-12)`` with the GPU semantics, ``sqrt(fl(S + 1e-6))`` with the CPU
    ones (S = sum of squares); L1: ``sum |x| + 1e-6``. Backward overwrites the bottom
    diff with ``(dy - y a) / norm`` (L1: ``sign(x)`` for ``y``), a = sum_c y dy;
    ``fix_gradient`` (GPU semantics only) skips the division; with ``bp_norm`` and two
    tops the norm's gradient ``norm_diff * y`` (L1: ``* sign(x)``) is ADDED to the bottom
    diff, even when the bottom is not propagated into (the original's quirk).
    """

    type = "Normalize"
    exact_num_bottom = 1
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.normalize_param
        if p.normalize_type not in ("L2", "L1"):
            raise self.error('normalize_type must be "L2" or "L1", got "%s"' % p.normalize_type)
        self.l1 = p.normalize_type == "L1"
        self.semantics = fork_semantics.for_layer(self)
        self.fix_gradient = p.fix_gradient and self.semantics == "gpu"
        self.bp_norm = p.bp_norm and len(top) == 2
        if len(top) > 1 and top[1] is bottom[0]:
            raise self.error("the norm top cannot be computed in place")

    def reshape(self, bottom, top):
        n, c, h, w = self.dims = legacy_shape(self, bottom[0])
        if top[0] is not bottom[0]:
            top[0].reshape((n, c, h, w))
        if len(top) > 1:
            top[1].reshape((n, 1, h, w))

    def _norm(self, x):
        xp = array_module(x)
        if self.l1:
            return add_constant(xp.abs(x).sum(axis=1, keepdims=True), 1e-6)
        squares = (x * x).sum(axis=1, keepdims=True)
        if self.semantics == "cpu":
            return xp.sqrt(add_constant(squares, 1e-6))
        return xp.sqrt(squares + x.dtype.type(1e-12))

    def forward(self, bottom, top):
        n, c, h, w = self.dims
        x = bottom[0].data.reshape(n, c, h * w)
        norm = self._norm(x)
        self.x_saved = x.copy() if top[0] is bottom[0] else None
        self.norm = norm
        top[0].data.reshape(n, c, h * w)[...] = x / norm
        if len(top) > 1:
            top[1].data.reshape(n, 1, h * w)[...] = norm

    def backward(self, top, propagate_down, bottom):
        n, c, h, w = self.dims
        xp = array_module(top[0].data)
        y = top[0].data.reshape(n, c, h * w)
        x = self.x_saved if self.x_saved is not None else bottom[0].data.reshape(n, c, h * w)
        direction = xp.sign(x) if self.l1 else y
        dx = bottom[0].diff.reshape(n, c, h * w)
        if propagate_down[0]:
            dy = top[0].diff.reshape(n, c, h * w)
            a = (y * dy).sum(axis=1, keepdims=True)
            grad = dy - direction * a
            dx[...] = grad if self.fix_gradient else grad / self.norm
        if self.bp_norm:
            dx += top[1].diff.reshape(n, 1, h * w) * direction


@register
class NormL2(Layer):
    """xialuxi's AdaCos ``NormL2``: every sample (all count/N values) scaled to unit L2
    norm: ``y = x * fl(1 / sqrt(S + 1e-7))`` in double math (GPU: ``pow(S + 1e-7, -0.5)``,
    the same up to the last bit). Backward always writes the bottom diff (the original
    ignores propagate_down): ``dx = (dy - (y . dy) y) * fl(1 / sqrt(x . x + 1e-7))``."""

    type = "NormL2"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.semantics = fork_semantics.for_layer(self)
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (its backward reads the input)")

    def reshape(self, bottom, top):
        self.dims = legacy_shape(self, bottom[0])
        top[0].reshape(self.dims)

    def _inverse_norm(self, x):
        xp = array_module(x)
        squares = (x * x).sum(axis=1, keepdims=True).astype(np.float64) + 1e-7
        inverse = squares ** -0.5 if self.semantics == "gpu" else 1.0 / xp.sqrt(squares)
        return inverse.astype(x.dtype)

    def forward(self, bottom, top):
        n = self.dims[0]
        x = bottom[0].data.reshape(n, -1)
        top[0].data.reshape(n, -1)[...] = x * self._inverse_norm(x)

    def backward(self, top, propagate_down, bottom):
        n = self.dims[0]
        x = bottom[0].data.reshape(n, -1)
        y = top[0].data.reshape(n, -1)
        dy = top[0].diff.reshape(n, -1)
        a = (y * dy).sum(axis=1, keepdims=True)
        bottom[0].diff.reshape(n, -1)[...] = (dy - a * y) * self._inverse_norm(x)
