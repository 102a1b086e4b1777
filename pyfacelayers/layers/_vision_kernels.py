"""Thin Python doors to the C++ vision kernels (im2col/col2im, pooling).

Each helper checks the array module and forwards to ``pyfacelayers._C``; a CUDA
path can be added beside the CPU one here without touching the layers. The C++
side validates dtypes, contiguity and shapes again, so nothing reaches a kernel
unchecked.
"""

import numpy as np

from ..backend import array_module


def _cpu_module(what, *arrays):
    if any(array_module(a) is not np for a in arrays):
        # cupy arrays: the CUDA twins, same names and arguments (gpu helper)
        from ..gpu import vision
        return vision
    try:
        from .. import _C
    except ImportError as exc:  # the extension was not built
        raise ImportError("%s needs the compiled extension pyfacelayers._C (%s)"
                          % (what, exc)) from None
    return _C


def conv_out_size(size, kernel, pad, stride, dilation):
    """Caffe's convolution output length along one axis."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def im2col(im, col, kernel, pad, stride, dilation):
    """Columns (C*prod(kernel), N, prod(out)) of images (N, C, *spatial), into ``col``.

    kernel, pad, stride, dilation: one value per spatial axis. Two spatial axes take
    the 2-D kernel, any other count the N-D one.
    """
    _C = _cpu_module("im2col", im, col)
    if len(kernel) == 2:
        _C.im2col(im, col, kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1],
                  dilation[0], dilation[1])
    else:
        _C.im2col_nd(im, col, list(kernel), list(pad), list(stride), list(dilation))


def col2im(col, im, kernel, pad, stride, dilation):
    """Overwrite images (N, C, *spatial) with the sum of their columns (im2col's adjoint)."""
    _C = _cpu_module("col2im", col, im)
    if len(kernel) == 2:
        _C.col2im(col, im, kernel[0], kernel[1], pad[0], pad[1], stride[0], stride[1],
                  dilation[0], dilation[1])
    else:
        _C.col2im_nd(col, im, list(kernel), list(pad), list(stride), list(dilation))


def max_pool_forward(bottom, top, mask, kernel, stride, pad):
    """MAX pooling (N, C, H, W) -> top (N, C, PH, PW); int64 ``mask`` gets flat argmaxes."""
    _C = _cpu_module("max_pool_forward", bottom, top, mask)
    _C.max_pool_forward(bottom, top, mask, kernel[0], kernel[1], stride[0], stride[1],
                        pad[0], pad[1])


def max_pool_backward(top_diff, mask, bottom_diff):
    _C = _cpu_module("max_pool_backward", top_diff, mask, bottom_diff)
    _C.max_pool_backward(top_diff, mask, bottom_diff)


def ave_pool_forward(bottom, top, kernel, stride, pad):
    _C = _cpu_module("ave_pool_forward", bottom, top)
    _C.ave_pool_forward(bottom, top, kernel[0], kernel[1], stride[0], stride[1],
                        pad[0], pad[1])


def ave_pool_backward(top_diff, bottom_diff, kernel, stride, pad):
    _C = _cpu_module("ave_pool_backward", top_diff, bottom_diff)
    _C.ave_pool_backward(top_diff, bottom_diff, kernel[0], kernel[1], stride[0], stride[1],
                         pad[0], pad[1])
