"""Small layers of the SphereFace descendants: happynear's ``Flip`` and
``ChannelScale`` (margin-family.md 3.7, 3.5) and the SENet ``Axpy`` that xialuxi's
converted SE-ResNet uses (4.7). Array code written once over numpy or cupy; CPU/GPU
differences of the originals follow :mod:`pyfacelayers.fork_semantics`.
"""

from .. import fork_semantics
from ..backend import array_module
from .base import Layer, register
from .normalize import legacy_shape


@register
class Flip(Layer):
    """Mirror a (N, C, H, W) blob along W (``flip_width``, default true) and/or H
    (``flip_height``). The top takes the legacy 4-D shape. Backward applies the same
    permutation to the top diff (overwrite)."""

    type = "Flip"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise self.error("cannot run in place (a permutation of its own input)")
        p = self.param.flip_param
        self.axes = tuple(a for a, on in ((3, p.flip_width), (2, p.flip_height)) if on)

    def reshape(self, bottom, top):
        self.dims = legacy_shape(self, bottom[0])
        top[0].reshape(self.dims)

    def _flip(self, values):
        values = values.reshape(self.dims)
        return array_module(values).flip(values, axis=self.axes) if self.axes else values

    def forward(self, bottom, top):
        top[0].data[...] = self._flip(bottom[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff.reshape(self.dims)[...] = self._flip(top[0].diff)


@register
class ChannelScale(Layer):
    """top[n, c, h, w] = s[n, h, w] * x[n, c, h, w] (GNAP, feature-norm scaling).

    Bottoms: x (legacy (N, C, H, W)) and s with count(x) / C values, s.num == x.num.
    ``do_forward: false`` copies x. Backward: dx = s dy (dy with
    ``do_backward_feature: false``); ds = sum_c x dy (zeros with
    ``do_backward_scale: false``). The CPU code always zeroes ds first; the GPU code
    leaves ds alone when s is not propagated into (the default, GPU semantics).

    ``global_scale: true``: a scalar blob (init -1, never learned: lr_mult 0) clamped to
    [min_global_scale, max_global_scale] replaces s in the Forward; the GPU code first
    sets it, in TRAIN, to mean|s| (when negative) or 0.99 blob + 0.01 mean|s|, and
    does not clamp in TEST. An optional top[1] receives the blob. The backward still
    uses s (the original's bug, kept).
    """

    type = "ChannelScale"
    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.channel_scale_param
        self.semantics = fork_semantics.for_layer(self)
        if top[0] is bottom[0] or top[0] is bottom[1]:
            raise self.error("cannot run in place (its backward reads both bottoms)")
        self.blobs = []
        if p.global_scale:
            if p.min_global_scale > p.max_global_scale:
                raise self.error("min_global_scale %g is above max_global_scale %g"
                                 % (p.min_global_scale, p.max_global_scale))
            for spec in self.param.param[:1]:
                if spec.lr_mult != 0:
                    raise self.error("the global scale is not learned: its param must "
                                     "have lr_mult 0, got %g" % spec.lr_mult)
            self.default_lr_mult = 0.0
            from ..blob import Blob
            scale = Blob((1,), dtype=self.dtype, label="param 0 (global scale)")
            scale.data[...] = -1
            self.blobs.append(scale)
        elif len(top) > 1:
            raise self.error("a second top needs global_scale: true")
        x, s = legacy_shape(self, bottom[0]), bottom[1]
        if s.count * x[1] != bottom[0].count or (s.shape and s.shape[0] != x[0]):
            raise self.error("bottom[1] %s must hold one value per (n, h, w) of bottom[0] "
                             "%s (count(x) / channels = %d, first axis %d)"
                             % (tuple(s.shape), tuple(bottom[0].shape),
                                bottom[0].count // max(x[1], 1), x[0]))

    def reshape(self, bottom, top):
        self.dims = n, c, h, w = legacy_shape(self, bottom[0])
        if bottom[1].count * c != bottom[0].count:
            raise self.error("bottom[1] %s does not match bottom[0] %s"
                             % (tuple(bottom[1].shape), tuple(bottom[0].shape)))
        top[0].reshape(bottom[0].shape)
        if len(top) > 1:
            top[1].reshape((1,))

    def _views(self, blob, field="data"):
        n, c, h, w = self.dims
        values = getattr(blob, field)
        return values.reshape(n, -1, h * w)

    def _global_scale(self, s):
        p = self.param.channel_scale_param
        xp = array_module(s)
        g = self.blobs[0].data
        if self.semantics == "gpu":
            from ..proto import caffe_pb2
            if self.phase == caffe_pb2.TEST:
                return g
            mean = xp.abs(s).mean().astype(g.dtype)
            if float(g[0]) < 0:
                g[...] = mean
            else:
                g[...] = g.dtype.type(0.99) * g + g.dtype.type(0.01) * mean
        xp.clip(g, g.dtype.type(p.min_global_scale), g.dtype.type(p.max_global_scale), out=g)
        return g

    def forward(self, bottom, top):
        p = self.param.channel_scale_param
        x = self._views(bottom[0])
        y = self._views(top[0])
        if self.blobs:
            g = self._global_scale(bottom[1].data)
            y[...] = g[0] * x
            if len(top) > 1:
                top[1].data[...] = g
        elif not p.do_forward:
            y[...] = x
        else:
            y[...] = x * self._views(bottom[1])

    def backward(self, top, propagate_down, bottom):
        p = self.param.channel_scale_param
        dy = self._views(top[0], "diff")
        s = self._views(bottom[1])
        ds = self._views(bottom[1], "diff")
        if self.semantics == "cpu" or propagate_down[1]:
            ds[...] = 0
        if propagate_down[1] and p.do_backward_scale:
            ds[...] = (self._views(bottom[0]) * dy).sum(axis=1, keepdims=True)
        if propagate_down[0]:
            dx = self._views(bottom[0], "diff")
            dx[...] = dy * s if p.do_backward_feature else dy


@register
class Axpy(Layer):
    """SENet's Axpy: top = a[n, c] * x[n, c, :, :] + y, with a of shape (N, C) or
    (N, C, 1, 1) and x, y of one shape (N, C, H, W). Backward: da = sum_hw dy x,
    dx = a dy, dy_bottom = dy, each when its bottom is propagated into. (The CPU code
    computes dx only when ``a`` is propagated into, an index bug; the GPU semantics,
    the default, use x's own flag.)"""

    type = "Axpy"
    exact_num_bottom = 3
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        self.semantics = fork_semantics.for_layer(self)
        if top[0] is bottom[0] or top[0] is bottom[1]:
            raise self.error("cannot run in place on a or x (the backward reads them)")

    def reshape(self, bottom, top):
        a, x, y = (b.shape for b in bottom)
        if len(x) != 4 or tuple(y) != tuple(x):
            raise self.error("x and y must be (N, C, H, W) of one shape, got %s and %s"
                             % (tuple(x), tuple(y)))
        if tuple(a) not in ((x[0], x[1]), (x[0], x[1], 1, 1)):
            raise self.error("a must be (N, C) or (N, C, 1, 1) = %s, got %s"
                             % ((x[0], x[1]), tuple(a)))
        self.dims = tuple(x)
        if top[0] is not bottom[2]:
            top[0].reshape(x)

    def forward(self, bottom, top):
        n, c, h, w = self.dims
        a = bottom[0].data.reshape(n, c, 1, 1)
        top[0].data[...] = a * bottom[1].data + bottom[2].data

    def backward(self, top, propagate_down, bottom):
        n, c, h, w = self.dims
        dy = top[0].diff
        a = bottom[0].data.reshape(n, c, 1, 1)
        if propagate_down[0]:
            bottom[0].diff.reshape(n, c)[...] = (dy * bottom[1].data).sum(axis=(2, 3))
        wants_dx = propagate_down[0] if self.semantics == "cpu" else propagate_down[1]
        if wants_dx:
            bottom[1].diff[...] = a * dy
        if propagate_down[2] and bottom[2] is not top[0]:
            bottom[2].diff[...] = dy
