"""oneDNN matrix products for the fully connected layers on the CPU (float32).

InnerProduct's and MarginInnerProduct's products are long and thin (SphereFace's fc5:
a batch of 8 rows against a 512 x 21,504 weight), so they are bound by reading and
writing the weight. With numpy's BLAS held to one thread while oneDNN runs the
convolutions (see blas_threads), one core does that alone; oneDNN's matmul runs them
on the same OpenMP threads as the convolutions, every core pulling memory.

The operands stay in the caller's arrays, in place (transposed views too: a plain
layout with any strides, one of them 1). ``out += a @ b`` is one primitive with a
``sum`` post-op: no temporary as large as ``out`` and no second pass over it. The
results differ from BLAS's by the order of the additions only (well within the
one-layer tolerance).
"""

import collections

import numpy as np

from . import blas_threads
from . import onednn

# Products smaller than this many multiply-adds stay on numpy: a oneDNN call costs some
# microseconds of binding, more than such a product takes.
MIN_WORK = 1 << 20
_CACHE_SIZE = 64  # geometries kept (batch sizes x layers); least recently used go


def _layout(array):
    """(shape, strides in elements) of a 2-D array, or None when oneDNN cannot read it
    in place (neither stride is 1)."""
    if array.ndim != 2 or any(s % array.itemsize for s in array.strides):
        return None
    strides = onednn.element_strides(array)
    if 1 not in strides and min(array.shape) > 1:
        return None
    return tuple(array.shape), strides


class Product:
    """``out = a @ b`` (or ``out += a @ b``) for one geometry: a (M, K), b (K, N), out
    (M, N), each a plain float32 layout given as (shape, strides in elements)."""

    def __init__(self, a_layout, b_layout, out_layout, accumulate, lib=None):
        self.lib = lib or onednn.library()
        blas_threads.share_cores_with_onednn()
        self.owned = onednn._Owned(self.lib, self)
        self.accumulate = bool(accumulate)
        mds = [self.owned.strided_md(*layout) for layout in (a_layout, b_layout, out_layout)]
        attr = onednn._sum_attr(self.owned) if accumulate else None
        try:
            pd = self.owned.pd("dnnl_matmul_primitive_desc_create", mds[0], mds[1], None,
                               mds[2], attr)
        except onednn.OnednnError as exc:
            raise onednn.OnednnError("oneDNN has no matmul for %s x %s -> %s: %s"
                                     % (a_layout, b_layout, out_layout, exc)) from None
        self.step = onednn._Step(self.owned, pd, {
            onednn.ARG_SRC: mds[0], onednn.ARG_WEIGHTS: mds[1], onednn.ARG_DST: mds[2]},
            {onednn.ARG_DST})

    def run(self, a, b, out):
        self.step.run({onednn.ARG_SRC: a, onednn.ARG_WEIGHTS: b, onednn.ARG_DST: out})


_products = collections.OrderedDict()


def product(a, b, out, accumulate):
    """``out = a @ b`` (or ``+=``) through oneDNN; False (nothing done) where it does not
    apply: oneDNN absent or not chosen, not float32 numpy arrays, layouts it cannot read
    in place, or a product too small to pay for the call."""
    if (not all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in (a, b, out))
            or a.shape[0] * a.shape[1] * b.shape[1] < MIN_WORK
            or not onednn.engine_wanted(onednn.ENGINE_DEFAULT)):
        return False
    layouts = (_layout(a), _layout(b), _layout(out))
    if None in layouts:
        return False
    key = layouts + (bool(accumulate),)
    plan = _products.get(key)
    if plan is None:
        plan = _products[key] = Product(*layouts, accumulate)
        if len(_products) > _CACHE_SIZE:
            _products.popitem(last=False)
    else:
        _products.move_to_end(key)
    plan.run(a, b, out)
    return True
