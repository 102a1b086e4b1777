"""GPU twins of the vision kernels of ``pyfacelayers._C`` (im2col/col2im, MAX/AVE
pooling), same names and arguments, on cupy arrays. ``layers/_vision_kernels.py``
hands cupy arrays here. The N-D im2col (3 or more spatial axes) has no CUDA kernel:
it runs the CPU one on host copies (correct, slow).
"""

import numpy as np

from . import check, cuda_module, ptr, stream


# As the CPU kernels (csrc/array_checks.h): window parameters are Caffe's 32-bit
# fields; larger ones would overflow the kernels' long/int index arithmetic.
MAX_WINDOW_PARAM = 2 ** 31 - 1


def _check_window(fn, *values):
    if max(values) > MAX_WINDOW_PARAM:
        raise ValueError("%s: kernel, pad, stride and dilation must be at most %d, got %d"
                         % (fn, MAX_WINDOW_PARAM, max(values)))


def _out_size(size, kernel, pad, stride, dilation):
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def _conv_checks(im, col, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w,
                 dilation_h, dilation_w, fn):
    dt = check(im, fn + ": image")
    if im.ndim != 4:
        raise ValueError("%s: image must be 4-D (num, channels, height, width), got %s"
                         % (fn, im.shape))
    if min(kernel_h, kernel_w, stride_h, stride_w, dilation_h, dilation_w) < 1 or \
            min(pad_h, pad_w) < 0:
        raise ValueError(fn + ": kernel, stride and dilation must be >= 1 and pad >= 0")
    _check_window(fn, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h,
                  dilation_w)
    num, channels, height, width = im.shape
    oh = _out_size(height, kernel_h, pad_h, stride_h, dilation_h)
    ow = _out_size(width, kernel_w, pad_w, stride_w, dilation_w)
    if oh < 1 or ow < 1:
        raise ValueError(fn + ": the (dilated) kernel is larger than the padded image")
    check(col, fn + ": columns", dt, (channels * kernel_h * kernel_w, num, oh * ow))
    return dt, (num, channels, height, width)


def im2col(im, col, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h,
           dilation_w):
    """Write the columns (C*kh*kw, N, out_h*out_w) of images (N, C, H, W) into col."""
    dt, dims = _conv_checks(im, col, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w,
                            dilation_h, dilation_w, "im2col")
    cuda_module().im2col(ptr(im), ptr(col), *dims, kernel_h, kernel_w, pad_h, pad_w,
                         stride_h, stride_w, dilation_h, dilation_w, dt.itemsize == 8,
                         stream())


def col2im(col, im, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h,
           dilation_w):
    """Overwrite images (N, C, H, W) with the sum of their columns (im2col's adjoint)."""
    dt, dims = _conv_checks(im, col, kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w,
                            dilation_h, dilation_w, "col2im")
    cuda_module().col2im(ptr(col), ptr(im), *dims, kernel_h, kernel_w, pad_h, pad_w,
                         stride_h, stride_w, dilation_h, dilation_w, dt.itemsize == 8,
                         stream())


def im2col_nd(im, col, kernel, pad, stride, dilation):
    """N-D im2col: the CPU kernel on host copies (no CUDA kernel for 3+ axes)."""
    from .. import _C
    host = np.empty(col.shape, dtype=col.dtype)
    _C.im2col_nd(im.get(), host, list(kernel), list(pad), list(stride), list(dilation))
    col[...] = _to_device(host)


def col2im_nd(col, im, kernel, pad, stride, dilation):
    """N-D col2im: the CPU kernel on host copies (no CUDA kernel for 3+ axes)."""
    from .. import _C
    host = np.empty(im.shape, dtype=im.dtype)
    _C.col2im_nd(col.get(), host, list(kernel), list(pad), list(stride), list(dilation))
    im[...] = _to_device(host)


def _to_device(host):
    import cupy
    return cupy.asarray(host)


def _pool_checks(image, pooled, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, fn):
    dt = check(image, fn + ": image")
    check(pooled, fn + ": pooled", dt)
    if min(kernel_h, kernel_w, stride_h, stride_w) < 1:
        raise ValueError(fn + ": kernel and stride must be >= 1")
    if pad_h < 0 or pad_w < 0 or pad_h >= kernel_h or pad_w >= kernel_w:
        raise ValueError(fn + ": pad must be >= 0 and smaller than the kernel")
    _check_window(fn, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w)
    if image.ndim != 4 or pooled.ndim != 4:
        raise ValueError("%s: image and pooled arrays must be 4-D, got %s and %s"
                         % (fn, image.shape, pooled.shape))
    if image.shape[:2] != pooled.shape[:2]:
        raise ValueError("%s: image %s and pooled %s differ in num or channels"
                         % (fn, image.shape, pooled.shape))
    n, c, h, w = image.shape
    return dt, (n * c, h, w, pooled.shape[2], pooled.shape[3], kernel_h, kernel_w,
                stride_h, stride_w, pad_h, pad_w)


def max_pool_forward(bottom, top, mask, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w):
    """MAX pooling of bottom (N,C,H,W) into top (N,C,PH,PW); int64 mask gets the argmaxes."""
    dt, geo = _pool_checks(bottom, top, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                           "max_pool_forward")
    check(mask, "max_pool_forward: mask", np.int64, top.shape)
    cuda_module().max_pool_forward(ptr(bottom), ptr(top), ptr(mask), *geo, dt.itemsize == 8,
                                   stream())


def max_pool_backward(top_diff, mask, bottom_diff):
    """Overwrite bottom_diff with each top diff routed to its argmax."""
    dt = check(top_diff, "max_pool_backward: top_diff")
    check(bottom_diff, "max_pool_backward: bottom_diff", dt)
    check(mask, "max_pool_backward: mask", np.int64, top_diff.shape)
    if top_diff.ndim != 4 or bottom_diff.ndim != 4 or top_diff.shape[:2] != bottom_diff.shape[:2]:
        raise ValueError("max_pool_backward: top_diff %s and bottom_diff %s must be 4-D with "
                         "the same num and channels" % (top_diff.shape, bottom_diff.shape))
    n, c, h, w = bottom_diff.shape
    cuda_module().max_pool_backward(ptr(top_diff), ptr(mask), ptr(bottom_diff), n * c, h * w,
                                    top_diff.shape[2] * top_diff.shape[3], dt.itemsize == 8,
                                    stream())


def ave_pool_forward(bottom, top, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w):
    """AVE pooling of bottom (N,C,H,W) into top (N,C,PH,PW), Caffe's padded divisor."""
    dt, geo = _pool_checks(bottom, top, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                           "ave_pool_forward")
    cuda_module().ave_pool_forward(ptr(bottom), ptr(top), *geo, dt.itemsize == 8, stream())


def ave_pool_backward(top_diff, bottom_diff, kernel_h, kernel_w, stride_h, stride_w, pad_h,
                      pad_w):
    """Overwrite bottom_diff with each top diff spread evenly over its window."""
    dt, geo = _pool_checks(bottom_diff, top_diff, kernel_h, kernel_w, stride_h, stride_w,
                           pad_h, pad_w, "ave_pool_backward")
    cuda_module().ave_pool_backward(ptr(top_diff), ptr(bottom_diff), *geo, dt.itemsize == 8,
                                    stream())
