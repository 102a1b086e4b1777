"""Target: the C++ kernels through their Python entry points (``pyfacelayers._C``).

The bytes pick a function, a dtype and a geometry; the arrays are built to fit it
(so most calls reach the kernel with edge geometry: zero-size axes, 1s, padding,
huge window parameters), then one argument may be spoiled: another dtype, shape or
ndim, a non-contiguous or read-only view, a list instead of an array. Values carry
NaN/inf and labels are valid or not (negative, >= N, fractional, NaN). The CUDA twins
(``pyfacelayers._cuda``) need a GPU and are not run here."""

import numpy as np

from pyfacelayers import _C

from .decoder import Decoder
from .expected import KERNEL_ERRORS

NAME = "kernels"
DOCUMENTED = KERNEL_ERRORS
TEXT = False
MAX_LEN = 256
HUGE = [2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 2 ** 40, 2 ** 62, 2 ** 63 - 1, -2 ** 63]


def _param(d, lo=0):
    """A window parameter: mostly small, sometimes negative or huge."""
    b = d.byte()
    if b < 220:
        return lo + b % 4
    if b < 240:
        return d.choice([-1, 0, -7])
    return d.choice(HUGE)


def _array(d, shape, dtype):
    count = int(np.prod(shape)) if len(shape) else 1
    return d.values(count, dtype).reshape(shape)


def _spoil(d, arrays):
    """Maybe replace one argument by a wrong one (returns the list)."""
    if not arrays or d.byte() >= 60:
        return arrays
    i = d.int(0, len(arrays) - 1)
    a = arrays[i]
    how = d.int(0, 8)
    if how == 0:
        a = a.astype(d.choice([np.float16, np.int32, np.int64, np.float32, np.float64,
                               np.bool_, np.complex64]))
    elif how == 1 and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]  # same shape, not contiguous
    elif how == 2:
        a = a.reshape(a.shape + (1,))
    elif how == 3:
        a = a.reshape(-1)
    elif how == 4:
        a = np.zeros(tuple(max(0, s + d.int(-1, 1)) for s in a.shape), a.dtype)
    elif how == 5:
        a = a.copy()
        a.flags.writeable = False
    elif how == 6:
        a = a.tolist()
    elif how == 7:
        a = None
    elif how == 8:
        a = np.asfortranarray(a.reshape(a.shape + (1,) * (2 - a.ndim)) if a.ndim < 2 else a)
    arrays = list(arrays)
    arrays[i] = a
    return arrays


def _labels(d, m, n, dtype):
    labels = d.values(m, dtype) if m else np.zeros(0, dtype)
    if m:
        labels[:] = np.abs(labels.astype(np.int64)) % max(n, 1)
    for _ in range(d.int(0, 1)):
        if m:
            labels[d.int(0, m - 1)] = d.choice([-1.0, float(n), n + 0.5, 0.5, np.nan, np.inf,
                                                -np.inf, 1e30, 2.0 ** 31, -0.0])
    return labels


def _margin(d, dtype):
    m, n, k = d.small_int() % 5, d.small_int() % 5, d.small_int() % 5
    mtype = d.choice([0, 1, 2, 3, 3, -1, 4, 2 ** 31 - 1])
    lam = d.float()
    fn = d.int(0, 5)
    if fn == 0:
        w = _spoil(d, [_array(d, (n, k), dtype)])[0]
        return _C.margin_normalize_rows, (w,)
    if fn == 1:
        args = _spoil(d, [_array(d, (m, n), dtype), _array(d, (m, k), dtype),
                          _labels(d, m, n, dtype), np.zeros(m, dtype), np.zeros(m, dtype),
                          np.zeros(m, dtype)])
        return _C.margin_forward, (args[0], args[1], args[2], lam, mtype, *args[3:])
    if fn == 2:
        args = _spoil(d, [_array(d, (m, k), dtype), _array(d, (m, n), dtype),
                          _array(d, (m, k), dtype), _array(d, (n, k), dtype),
                          _labels(d, m, n, dtype), np.abs(_array(d, (m,), dtype)),
                          np.clip(_array(d, (m,), dtype), -1, 1)])
        return _C.margin_backward, (*args, lam, mtype, d.bool())
    if fn == 3:
        args = _spoil(d, [_array(d, (m, k), dtype), _array(d, (m, n), dtype),
                          _array(d, (m,), dtype), _labels(d, m, n, dtype)])
        return _C.margin_semihard_mask, (*args, mtype)
    if fn == 4:
        args = _spoil(d, [_array(d, (n, k), dtype), _array(d, (m, k), dtype),
                          _labels(d, m, n, dtype)])
        return _C.margin_triplet_replace, (*args, d.uint(8), d.uint(8))
    args = _spoil(d, [np.clip(_array(d, (m, n), dtype), -1.5, 1.5)])
    return _C.margin_psi, (args[0], mtype)


def _out(size, k, p, s, dil):
    if s < 1:
        return 1  # refused by the checks anyway
    return (size + 2 * p - (dil * (k - 1) + 1)) // s + 1


def _conv(d, dtype):
    nd = d.bool()
    axes = d.int(1, 3) if nd else 2
    num, ch = d.small_int() % 4, d.small_int() % 4
    spatial = [d.small_int() % 7 for _ in range(axes)]
    k = [_param(d, 1) for _ in range(axes)]
    p = [_param(d, 0) for _ in range(axes)]
    s = [_param(d, 1) for _ in range(axes)]
    dil = [_param(d, 1) for _ in range(axes)]
    outs = [_out(*v) for v in zip(spatial, k, p, s, dil)]
    rows = ch * int(np.prod(k, dtype=object))
    col_shape = (rows, num, int(np.prod(outs, dtype=object)))
    if any(v > 10 ** 6 or v < 0 for v in col_shape):
        col_shape = (ch, num, 1)  # unreachable sizes: let the checks refuse a small buffer
    im = _array(d, (num, ch, *spatial), dtype)
    col = _array(d, col_shape, dtype)
    backward = d.bool()
    if backward:
        col, im = _spoil(d, [col, im])
    else:
        im, col = _spoil(d, [im, col])
    if nd:
        return (_C.col2im_nd, (col, im, k, p, s, dil)) if backward else \
            (_C.im2col_nd, (im, col, k, p, s, dil))
    flat = (k[0], k[1], p[0], p[1], s[0], s[1], dil[0], dil[1])
    return (_C.col2im, (col, im, *flat)) if backward else (_C.im2col, (im, col, *flat))


def _pool(d, dtype):
    num, ch = d.small_int() % 4, d.small_int() % 4
    h, w = d.small_int() % 7, d.small_int() % 7
    kh, kw, sh, sw = _param(d, 1), _param(d, 1), _param(d, 1), _param(d, 1)
    ph, pw = _param(d, 0), _param(d, 0)

    def pooled(size, k, p, s):
        if s < 1 or k < 1 or abs(size + 2 * p) > 100:
            return d.small_int() % 4
        return max(0, -(-(size + 2 * p - k) // s) + 1)  # Caffe's ceil mode

    top_shape = (num, ch, pooled(h, kh, ph, sh) + d.int(0, 1) * d.int(-1, 1),
                 pooled(w, kw, pw, sw))
    top_shape = tuple(max(0, v) for v in top_shape)
    bottom, top = _array(d, (num, ch, h, w), dtype), _array(d, top_shape, dtype)
    mask = np.full(top_shape, -1, np.int64)
    if mask.size and h * w:
        mask[...] = np.random.default_rng(d.uint(2)).integers(-1, h * w, top_shape)
    if mask.size and d.byte() < 30:
        mask.flat[d.int(0, mask.size - 1)] = d.choice([-2, h * w, h * w + 1, 2 ** 62, -2 ** 63])
    fn = d.int(0, 3)
    win = (kh, kw, sh, sw, ph, pw)
    if fn == 0:
        bottom, top, mask = _spoil(d, [bottom, top, mask])
        return _C.max_pool_forward, (bottom, top, mask, *win)
    if fn == 1:
        top, mask, bottom = _spoil(d, [top, mask, bottom])
        return _C.max_pool_backward, (top, mask, bottom)
    if fn == 2:
        bottom, top = _spoil(d, [bottom, top])
        return _C.ave_pool_forward, (bottom, top, *win)
    top, bottom = _spoil(d, [top, bottom])
    return _C.ave_pool_backward, (top, bottom, *win)


def _draws(d, dtype):
    return _C.triplet_draws, (d.uint(8), d.uint(8), d.choice([0, 1, 5, 64, -1, -2 ** 40]))


FAMILIES = [_margin, _margin, _conv, _pool, _draws]


def call(data):
    """The (function, args) that ``data`` decodes to (for replaying a finding)."""
    d = Decoder(data)
    family = FAMILIES[d.int(0, len(FAMILIES) - 1)]
    dtype = d.choice([np.float32, np.float64])
    return family(d, dtype)


def seeds():
    return [bytes([f, t]) + bytes(range(i, i + 40)) for f in range(5) for t in (0, 1)
            for i in (0, 7)]


def one_input(data):
    with np.errstate(all="ignore"):
        fn, args = call(data)
        fn(*args)
