"""PReLU (Caffe's PReLULayer): y = max(0, x) + a_c * min(0, x), a learned per channel."""

import numpy as np

from ..backend import array_module
from ..gpu import prelu as gpu_prelu
from ..proto import caffe_pb2
from ._vision_util import new_param_blob, wants_param_grad
from .base import Layer, register


def _kernels(xp):
    """The C++ kernels for numpy arrays, their CUDA twins for cupy ones."""
    if xp is not np:
        return gpu_prelu
    from .. import _C
    return _C


@register
class PReLULayer(Layer):
    """Channels are axis 1; ``channel_shared`` learns one slope for all of them.

    Works in place (top is bottom): the input is kept for backward, which needs the
    sign of x and x itself.
    """

    type = "PReLU"
    exact_num_bottom = 1
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        pp = self.param.prelu_param
        if len(bottom[0].shape) < 2:
            raise self.error("bottom must have at least 2 axes, got shape %s"
                             % (bottom[0].shape,))
        self.channel_shared = pp.channel_shared
        self.channels = bottom[0].shape[1]
        if pp.HasField("filler"):
            filler = pp.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        shape = () if self.channel_shared else (self.channels,)
        self.blobs = [new_param_blob(self, shape, filler, "filler")]
        self.bottom_copy = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise self.error("bottom must have at least 2 axes, got shape %s" % (shape,))
        if shape[1] != self.channels:
            raise self.error("bottom has %d channels, the slopes expect %d"
                             % (shape[1], self.channels))
        top[0].reshape(shape)

    def _view(self, array, shape):
        # The last axis explicitly: -1 cannot be inferred when N or C is 0.
        return array.reshape(shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64)))

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        shape = bottom[0].shape
        x = self._view(bottom[0].data, shape)
        kernels = _kernels(xp)  # one fused pass either way
        y = self._view(top[0].data, shape)
        if top[0] is bottom[0]:
            # Reuse the buffer between iterations: a fresh copy each time costs a page
            # fault per 4 KiB of activations.
            if self.bottom_copy is None or self.bottom_copy.shape != x.shape \
                    or array_module(self.bottom_copy) is not xp:
                self.bottom_copy = xp.empty_like(x)
            # the kernel keeps the bottom in the same pass
            kernels.prelu_forward(x, self.blobs[0].data, y, self.channel_shared,
                                  save=self.bottom_copy)
            return
        kernels.prelu_forward(x, self.blobs[0].data, y, self.channel_shared)

    def backward(self, top, propagate_down, bottom):
        xp = array_module(top[0].diff)
        shape = bottom[0].shape
        x = self.bottom_copy if top[0] is bottom[0] else self._view(bottom[0].data, shape)
        dy = self._view(top[0].diff, shape)
        # Fused passes; the slope gradient is taken before dx (maybe dy itself) is written.
        kernels = _kernels(xp)
        kernels.prelu_backward(
            x, dy, self.blobs[0].data,
            self._view(bottom[0].diff, shape) if propagate_down[0] else None,
            self.blobs[0].diff if wants_param_grad(self, 0) else None, self.channel_shared)
