"""Pooling (Caffe's PoolingLayer): MAX and AVE over 4-D blobs, C++ kernels.

Output size per axis, as Caffe rounds it: ceil((H + 2*pad - kernel) / stride) + 1,
minus one when padding is used and the last window would start at or beyond H + pad
(so every window starts inside the image or its leading padding).
"""

import math

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from ._vision_kernels import (ave_pool_backward, ave_pool_forward, max_pool_backward,
                              max_pool_forward)
from ._vision_util import check_int_sizes
from .base import Layer, register

_P = caffe_pb2.PoolingParameter


def pooled_size(size, kernel, pad, stride):
    out = int(math.ceil((size + 2 * pad - kernel) / float(stride))) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register
class PoolingLayer(Layer):
    type = "Pooling"
    exact_num_bottom = 1
    min_num_top = 1

    def check_blob_counts(self, bottom, top):
        super().check_blob_counts(bottom, top)
        limit = 2 if self.param.pooling_param.pool == _P.MAX else 1
        if len(top) > limit:
            raise self.error("takes at most %d top blob(s) for this method, got %d"
                             % (limit, len(top)))

    def layer_setup(self, bottom, top):
        pp = self.param.pooling_param
        if pp.pool not in (_P.MAX, _P.AVE):
            name = _P.PoolMethod.Name(pp.pool) if pp.pool in _P.PoolMethod.values() \
                else str(pp.pool)
            raise self.error("pooling method %s is not supported (MAX or AVE)" % name)
        self.method = pp.pool
        check_int_sizes(self, "pooling_param", ("kernel_size", "stride", "pad", "kernel_h",
                                                "kernel_w", "stride_h", "stride_w", "pad_h",
                                                "pad_w"))
        self.global_pooling = pp.global_pooling
        has_k, has_kh, has_kw = (pp.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w"))
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise self.error("with global_pooling the kernel size cannot be given")
        else:
            if has_k and (has_kh or has_kw):
                raise self.error("give either kernel_size or kernel_h/kernel_w, not both")
            if not has_k and not (has_kh and has_kw):
                raise self.error("needs kernel_size, or both kernel_h and kernel_w")
        if pp.HasField("pad") and (pp.HasField("pad_h") or pp.HasField("pad_w")):
            raise self.error("give either pad or pad_h/pad_w, not both")
        if pp.HasField("stride") and (pp.HasField("stride_h") or pp.HasField("stride_w")):
            raise self.error("give either stride or stride_h/stride_w, not both")
        if pp.HasField("pad_h") != pp.HasField("pad_w"):
            raise self.error("pad_h and pad_w must be given together")
        if pp.HasField("stride_h") != pp.HasField("stride_w"):
            raise self.error("stride_h and stride_w must be given together")
        if pp.HasField("pad"):
            self.pad = (pp.pad, pp.pad)
        else:
            self.pad = (pp.pad_h, pp.pad_w)
        if pp.HasField("stride_h"):
            self.stride = (pp.stride_h, pp.stride_w)
        else:
            self.stride = (pp.stride, pp.stride)
        if has_k:
            self.kernel = (pp.kernel_size, pp.kernel_size)
        else:
            self.kernel = (pp.kernel_h, pp.kernel_w)
        if self.global_pooling:
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise self.error("with global_pooling only pad 0 and stride 1 are allowed")
        else:
            if min(self.kernel) < 1:
                raise self.error("kernel size must be >= 1, got %s" % (self.kernel,))
        if min(self.stride) < 1:
            raise self.error("stride must be >= 1, got %s" % (self.stride,))
        if not self.global_pooling and (self.pad[0] >= self.kernel[0]
                                        or self.pad[1] >= self.kernel[1]):
            raise self.error("pad %s must be smaller than the kernel %s"
                             % (self.pad, self.kernel))

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error("bottom must have 4 axes (num, channels, height, width), got %s"
                             % (shape,))
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        ph = pooled_size(h, self.kernel[0], self.pad[0], self.stride[0])
        pw = pooled_size(w, self.kernel[1], self.pad[1], self.stride[1])
        if ph < 1 or pw < 1:
            raise self.error("kernel %s is larger than the padded input %dx%d (pad %s)"
                             % (self.kernel, h, w, self.pad))
        for t in top:
            t.reshape(n, c, ph, pw)
        if self.method == _P.MAX:
            xp = array_module(bottom[0].data)
            mask = getattr(self, "mask", None)
            if mask is None or mask.shape != (n, c, ph, pw) or array_module(mask) is not xp:
                self.mask = xp.zeros((n, c, ph, pw), dtype=np.int64)

    def forward(self, bottom, top):
        if self.method == _P.MAX:
            max_pool_forward(bottom[0].data, top[0].data, self.mask, self.kernel, self.stride,
                             self.pad)
            if len(top) > 1:
                top[1].data[...] = self.mask  # Caffe's top mask: flat index as a float
        else:
            ave_pool_forward(bottom[0].data, top[0].data, self.kernel, self.stride, self.pad)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.method == _P.MAX:
            max_pool_backward(top[0].diff, self.mask, bottom[0].diff)
        else:
            ave_pool_backward(top[0].diff, bottom[0].diff, self.kernel, self.stride, self.pad)
