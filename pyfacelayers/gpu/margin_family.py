"""GPU twins of the margin-family kernels of ``pyfacelayers._C`` (``family_forward``,
``family_backward``, ``family_scale_others``: same names, arguments and results, cupy
arrays). The layers (``layers/margin_family.py``) pick this module for cupy arrays.
"""

from . import check, cuda_module, ptr, stream


def _rows(top, labels, what):
    dt = check(top, what + ": array")
    if top.ndim != 2:
        raise ValueError("%s: expected a 2-D array, got shape %s" % (what, top.shape))
    m, n = top.shape
    check(labels, what + ": labels", dt, (m,))
    return dt, m, n


def family_forward(top, labels, op, params, saved, flags):
    """Apply ``op`` to the label column of every row of top (M, N) in place; fill
    ``saved`` (M,) and ``flags`` (M,) int32; returns the rows clamped from c > 1."""
    import cupy
    dt, m, n = _rows(top, labels, "family_forward")
    check(saved, "family_forward: saved", dt, (m,))
    check(flags, "family_forward: flags", cupy.int32, (m,))
    clamped = cupy.zeros(1, dtype=cupy.uint64)
    cuda_module().family_forward(ptr(top), ptr(labels), m, n, int(op), tuple(params),
                                 ptr(saved), ptr(flags), ptr(clamped), dt.itemsize == 8,
                                 stream())
    return clamped


def family_backward(diff, labels, op, params, saved, flags):
    """Multiply the label column of diff (M, N) by the op's local derivative."""
    import cupy
    dt, m, n = _rows(diff, labels, "family_backward")
    check(saved, "family_backward: saved", dt, (m,))
    check(flags, "family_backward: flags", cupy.int32, (m,))
    cuda_module().family_backward(ptr(diff), ptr(labels), m, n, int(op), tuple(params),
                                  ptr(saved), ptr(flags), dt.itemsize == 8, stream())


def family_scale_others(array, labels, factor):
    """Multiply every column but each row's label column of array (M, N) by factor."""
    dt, m, n = _rows(array, labels, "family_scale_others")
    cuda_module().family_scale_others(ptr(array), ptr(labels), m, n, float(factor),
                                      dt.itemsize == 8, stream())
