"""The GPU side of the kernels: cupy arrays in, the ``pyfacelayers._cuda`` kernels
(or cuBLAS through cupy) run on cupy's current stream.

The layers never call ``_cuda`` directly: each kernel door (``margin``, ``vision``,
``prelu`` here) mirrors the signature of its CPU twin in ``pyfacelayers._C``, checks
what the CUDA code relies on (dtype, C-contiguity, shapes) and passes device
pointers. Only this package imports cupy, and only when it is used.
"""

import numpy as np

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def cuda_module():
    """The compiled ``pyfacelayers._cuda`` module, or a clear error."""
    try:
        from .. import _cuda
    except ImportError as exc:
        raise RuntimeError(
            "GPU kernels are not available: pyfacelayers was built without its CUDA "
            "module (nvcc was not found at build time, or PYFACELAYERS_CPU_ONLY was set): "
            "%s" % exc) from None
    return _cuda


def stream():
    """cupy's current stream, as the pointer the kernels launch on."""
    import cupy
    return cupy.cuda.get_current_stream().ptr


def is_cupy(array):
    return type(array).__module__.startswith("cupy")


def check(array, what, dtype=None, shape=None):
    """``array`` must be a C-contiguous cupy array (of ``dtype`` and ``shape`` when
    given; float32/float64 when ``dtype`` is None). Returns its dtype."""
    if not is_cupy(array):
        raise TypeError("%s: expected a cupy array, got %s" % (what, type(array).__name__))
    if dtype is None:
        if array.dtype not in _FLOATS:
            raise TypeError("%s: expected dtype float32 or float64, got %s" % (what, array.dtype))
    elif array.dtype != np.dtype(dtype):
        raise TypeError("%s: expected dtype %s, got %s" % (what, np.dtype(dtype), array.dtype))
    if not array.flags.c_contiguous:
        raise ValueError("%s: must be C-contiguous (shape %s)" % (what, array.shape))
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError("%s: expected shape %s, got %s" % (what, tuple(shape), tuple(array.shape)))
    return array.dtype


def ptr(array):
    return array.data.ptr
