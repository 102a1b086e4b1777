"""The fully connected layers' matrix products: ``out = a @ b`` and, for the weight
gradients, ``out += a @ b`` without an ``out``-sized temporary.

Large float32 products on the CPU run on oneDNN's matmul when oneDNN is the CPU engine
(cpu/onednn_matmul.py: on every core, and ``+=`` in the same pass); the rest on numpy
(or cupy), as below.

numpy's matmul cannot add into its output (BLAS beta = 1), and ``out += a @ b`` makes
a temporary as large as ``out`` and reads and writes it again: for SphereFace's fc5
(512 x 21,504) that is 44 MB more memory traffic per backward. So when ``out`` is all
zeros (the usual case: the solver clears the diffs every iteration) the product is
written straight into it; otherwise it is added in blocks of rows (a temporary of at
most CHUNK_BYTES).
"""

import numpy as np

from ..backend import array_module
from ..cpu import onednn_matmul

CHUNK_BYTES = 1 << 23  # 8 MB


def _on_onednn(layer, a, b, out, accumulate):
    """Whether oneDNN computed the product; its errors (and a bad engine setting) name
    the layer."""
    from ..cpu import onednn
    try:
        return onednn_matmul.product(a, b, out, accumulate)
    except (onednn.OnednnUnavailable, onednn.OnednnError, ValueError) as exc:
        raise layer.error("oneDNN: %s" % exc) from None


def multiply(layer, a, b, out):
    """``out[...] = a @ b`` (2-D arrays) for ``layer``."""
    if _on_onednn(layer, a, b, out, accumulate=False):
        return
    if isinstance(out, np.ndarray):
        out[...] = a @ b  # (matmul's out= is slower with OpenBLAS)
    else:
        array_module(out).matmul(a, b, out=out)


def add_product(layer, out, a, b):
    """``out += a @ b`` (2-D arrays; ``out`` C-contiguous) for ``layer``."""
    if not isinstance(out, np.ndarray):  # cupy: a temporary, as before
        out += a @ b
        return
    if _on_onednn(layer, a, b, out, accumulate=True):
        return
    if not out.any():
        np.matmul(a, b, out=out)
        return
    rows = max(1, CHUNK_BYTES // max(1, out.shape[1] * out.itemsize))
    scratch = np.empty((min(rows, out.shape[0]), out.shape[1]), out.dtype)
    for r0 in range(0, out.shape[0], rows):
        r1 = min(out.shape[0], r0 + rows)
        block = scratch[:r1 - r0]
        np.matmul(a[r0:r1], b, out=block)
        out[r0:r1] += block
