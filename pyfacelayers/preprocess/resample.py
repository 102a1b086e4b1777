"""pdollar's ``imResample(A, [m n], 'bilinear')``, the resampler of MTCNN's MATLAB code.

Not plain bilinear and not MATLAB's ``imresize``: down-sampling along an axis is an
area average (fractional pixel coverage), up-sampling is linear interpolation with
half-pixel centres and edge replication; x (columns) is resampled first, then y
(rows); every output is multiplied by ``1/(1+1e-6)``; an image already of the asked
size is returned unchanged. The arithmetic runs in the array's own type (float32 for
the pyramid, float64 for the crops), one rounding per operation in the order of the
original C++ (``imResampleMex.cpp``), so the results are bit-identical to it. The
spec is ``shared/reference/preprocess-mtcnn-align.md`` section 4.
"""

import functools

import numpy as np


class _Axis:
    """How one axis of length ``a`` becomes length ``b``.

    ``kind``: ``"sum"`` (exact integer factor 2, 3 or 4: plain sums, scaled once at the
    end), ``"down"`` (area weights) or ``"up"`` (linear). ``index``/``weight`` are
    (b, K) arrays, K terms per output summed left to right; padded terms have weight 0.
    For ``"up"``, ``edge`` marks the outputs that copy one input pixel.
    """

    def __init__(self, a, b, dtype):
        t = dtype.type
        self.a, self.b, self.factor = a, b, 1
        if a in (2 * b, 3 * b, 4 * b):
            self.kind, self.factor = "sum", a // b
            self.index = np.arange(b)[:, None] * self.factor + np.arange(self.factor)[None, :]
            return
        s = t(b) / t(a)
        s_inv = t(1) / s
        if a > b:
            self.kind = "down"
            self._down(a, b, s, s_inv, t)
        else:
            self.kind = "up"
            self._up(a, b, s_inv, t)

    def _down(self, a, b, s, s_inv, t):
        threshold = t(1e-3) * s
        rows = []
        for k in range(b):
            start = t(k) * s_inv
            end = start + s_inv
            first, last = int(np.ceil(start)), int(end)  # int(): truncation, as C++
            terms, total = [], t(0)
            for p in range(first - 1, last + 1):
                if p == first - 1:
                    w = (t(first) - start) * s
                elif p == last:
                    w = (end - t(last)) * s
                else:
                    w = s
                if w > threshold and p >= 0:
                    terms.append((p, w))
                    total = total + w
            if total > 1:  # only through rounding: renormalise
                terms = [(p, w / total) for p, w in terms]
            rows.append(terms)
        width = max(len(r) for r in rows)
        self.index = np.zeros((b, width), np.int64)
        self.weight = np.zeros((b, width), t)
        for k, terms in enumerate(rows):
            for j, (p, w) in enumerate(terms):
                self.index[k, j], self.weight[k, j] = p, w
            # padding: the next pixels (as the C++ reads C[ya+o]) with weight 0
            for j in range(len(terms), width):
                self.index[k, j] = terms[0][0] + j
        self.index = np.minimum(self.index, self.a - 1)  # weight 0 there anyway

    def _up(self, a, b, s_inv, t):
        pos = (t(0.5) + np.arange(b, dtype=t)) * s_inv - t(0.5)
        first = np.floor(pos).astype(np.int64)
        inside = (first >= 0) & (first < a - 1)
        weight = np.ones(b, t)
        weight[inside] = t(1) - (pos[inside] - first[inside].astype(t))
        self.edge = ~inside
        first = np.clip(first, 0, a - 1)
        self.index = np.stack([first, np.minimum(first + 1, a - 1)], axis=1)
        self.weight = weight


@functools.lru_cache(maxsize=512)
def _axis(a, b, dtype_char):
    """The coefficients of one axis, cached: LFW-like data sets repeat the same sizes."""
    axis = _Axis(a, b, np.dtype(dtype_char))
    for array in vars(axis).values():  # shared by every later call: never modified
        if isinstance(array, np.ndarray):
            array.setflags(write=False)
    return axis


def _sum_terms(parts):
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _pass(img, axis, r=None):
    """Resample along the first axis: (a, ...) -> (b, ...). ``r`` None: the x pass
    (no factor); else the y pass, the global factor ``r`` applied as the C++ does.
    Gathering whole rows of a contiguous array is what makes this fast."""
    t = img.dtype.type
    if axis.kind == "sum":
        total = _sum_terms([img[axis.index[:, k]] for k in range(axis.factor)])
        return total if r is None else total * (r / t(axis.factor))
    weight = axis.weight if r is None else axis.weight * r
    expand = (slice(None),) + (None,) * (img.ndim - 1)
    if axis.kind == "down":
        return _sum_terms([img[axis.index[:, k]] * weight[:, k][expand]
                           for k in range(axis.index.shape[1])])
    w = weight[expand]
    rest = (t(1) if r is None else r) - w
    out = img[axis.index[:, 0]] * w + img[axis.index[:, 1]] * rest
    first = img[axis.index[axis.edge, 0]]
    out[axis.edge] = first if r is None else first * w[axis.edge]  # edges: one pixel
    return out


def imresample(img, height, width):
    """``imResample(img, [height width], 'bilinear')`` for a float32 or float64
    (H, W) or (H, W, C) array; returns the same type (``img`` itself when the size
    is already right, as the original)."""
    img = np.asarray(img)
    if img.dtype not in (np.float32, np.float64):
        raise TypeError("imresample works on float32 or float64 images, got %s" % img.dtype)
    if img.ndim not in (2, 3):
        raise ValueError("imresample takes an (H, W) or (H, W, C) image, got shape %s"
                         % (img.shape,))
    height, width = int(height), int(width)
    if height <= 0 or width <= 0 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError("imresample: cannot resample a %dx%d image to %dx%d"
                         % (img.shape[0], img.shape[1], height, width))
    if img.shape[:2] == (height, width):
        return img
    flat = img.ndim == 2
    if flat:
        img = img[:, :, None]
    t = img.dtype.type
    axis_x = _axis(img.shape[1], width, img.dtype.char)
    axis_y = _axis(img.shape[0], height, img.dtype.char)
    r = t(1)
    if axis_x.kind == "sum":
        r = r / t(axis_x.factor)
    r = r / t(1 + 1e-6)
    columns = _pass(np.ascontiguousarray(img.transpose(1, 0, 2)), axis_x)  # x first
    out = _pass(np.ascontiguousarray(columns.transpose(1, 0, 2)), axis_y, r)
    return out[:, :, 0] if flat else out
