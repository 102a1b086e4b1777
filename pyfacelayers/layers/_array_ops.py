"""Whole-array sums and copies for Eltwise and Split: on the element-wise threads
(csrc/array_ops.cpp, the OpenMP pool oneDNN uses) for large float arrays on the CPU
laid out alike, where numpy would use one core; numpy (or cupy) otherwise. Each element
is computed alone, so the values are numpy's on any thread count."""

import numpy as np

from ..backend import array_module

MIN_ELEMENTS = 1 << 15  # below, numpy's own call is cheaper (csrc/parallel.h's cut-off)


def _flat(arrays):
    """1-D views of CPU arrays of one dtype, shape and strides that fill their memory
    (C order, or channels-last views), element i of each the same index; else None."""
    first = arrays[0]
    if (not isinstance(first, np.ndarray) or first.size < MIN_ELEMENTS
            or first.dtype not in (np.float32, np.float64)):
        return None
    if any(not isinstance(a, np.ndarray) or a.dtype != first.dtype or a.shape != first.shape
           or a.strides != first.strides for a in arrays):
        return None
    flat = [a.ravel(order="K") for a in arrays]  # views where the memory is dense
    if not all(np.may_share_memory(f, a) for f, a in zip(flat, arrays)):
        return None
    return flat


def add(a, b, out):
    """``out = a + b`` (out may be a or b)."""
    flat = _flat((a, b, out))
    if flat is None:
        array_module(out).add(a, b, out=out)
        return
    from .. import _C
    _C.add_arrays(*flat)


def copy(src, out):
    """``out[...] = src``."""
    flat = _flat((src, out))
    if flat is None:
        out[...] = src
        return
    from .. import _C
    _C.copy_array(*flat)
