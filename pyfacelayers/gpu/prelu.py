"""PReLU on the GPU: one fused CUDA pass forward, one for the slope gradient and
one for the data gradient (``layers/prelu.py`` calls these for cupy arrays).

Arrays are (num, channels, inner) views; with a shared slope the channels are
folded into ``inner`` and the single slope serves them all.
"""

from . import check, cuda_module, ptr, stream

# Blocks the slope-gradient reduction aims for (a few per multiprocessor).
_TARGET_BLOCKS = 1024


def _dims(x, shared):
    num, channels, inner = x.shape
    if shared:
        return num, 1, channels * inner
    return num, channels, inner


def prelu_forward(x, slope, y, shared, save=None):
    """y = max(x, 0) + a * min(x, 0); x, y (N, C, inner), slope (C,) or () if shared.
    ``save`` (GPU only): also copy x there, in the same pass (y may be x itself)."""
    dt = check(x, "prelu_forward: bottom")
    check(y, "prelu_forward: top", dt, x.shape)
    if save is not None:
        check(save, "prelu_forward: saved bottom", dt, x.shape)
    num, channels, inner = _dims(x, shared)
    check(slope, "prelu_forward: slope", dt)
    if slope.size != channels:
        raise ValueError("prelu_forward: %d slopes for %d channels" % (slope.size, channels))
    cuda_module().prelu_forward(ptr(x), ptr(slope), ptr(y), num, channels, inner,
                                dt.itemsize == 8, stream(), ptr(save) if save is not None else 0)


def prelu_backward(x, dy, slope, dx, slope_diff, shared):
    """The slope gradient is ADDED to ``slope_diff`` (when given) and then ``dx`` (when
    given) is OVERWRITTEN with dy * (x <= 0 ? a : 1). ``dx`` may be ``dy`` itself (in
    place): the slope gradient is taken first."""
    import cupy
    dt = check(x, "prelu_backward: bottom")
    check(dy, "prelu_backward: top diff", dt, x.shape)
    num, channels, inner = _dims(x, shared)
    check(slope, "prelu_backward: slope", dt)
    if slope.size != channels:
        raise ValueError("prelu_backward: %d slopes for %d channels" % (slope.size, channels))
    kernels = cuda_module()
    if slope_diff is not None:
        check(slope_diff, "prelu_backward: slope diff", dt, slope.shape)
        segments = max(1, min(num, _TARGET_BLOCKS // channels, 65535))
        partial = cupy.empty((channels, segments), dtype=dt)
        kernels.prelu_backward_slope(ptr(x), ptr(dy), ptr(partial), num, channels, inner,
                                     segments, dt.itemsize == 8, stream())
        slope_diff += partial.sum(axis=1).reshape(slope_diff.shape)
    if dx is not None:
        check(dx, "prelu_backward: bottom diff", dt, x.shape)
        kernels.prelu_backward_data(ptr(x), ptr(dy), ptr(slope), ptr(dx), num, channels, inner,
                                    dt.itemsize == 8, stream())
