"""SphereFace's ``face_align_demo.m``: a similarity transform of the five landmarks onto
fixed reference points, and the 112x96 warp, as MATLAB's ``cp2tform(uv, ref,
'similarity')`` and ``imtransform(img, tform, 'XData', [1 96], 'YData', [1 112],
'Size', [112 96])`` compute them (spec section 10), in float64.

Coordinates are 1-based MATLAB pixel coordinates throughout (the centre of pixel row r,
column c is x = c, y = r), as MTCNN's landmarks are. Transforms use MATLAB's row-vector
convention: ``[x y 1] = [u v 1] @ T``.
"""

from collections import namedtuple

import numpy as np

# SphereFace's reference points (x, y) in the 96-wide, 112-high output, 1-based:
# left eye, right eye, nose, left and right mouth corners (image left/right).
REFERENCE_POINTS = np.array([[30.2946, 51.6963],
                             [65.5318, 51.5014],
                             [48.0252, 71.7366],
                             [33.5493, 92.3655],
                             [62.7299, 92.2041]])
OUTPUT_SIZE = (112, 96)  # height, width

Similarity = namedtuple("Similarity", "T Tinv reflective norm_nonreflective norm_reflective")
Similarity.__doc__ = """``T`` (3, 3): input -> output frame, ``[x y 1] = [u v 1] @ T``;
``Tinv``: its inverse, what imtransform samples with; ``reflective``: whether the
reflective fit won; the two residual norms (spectral) the choice compared."""


def _fit_nonreflective(uv, xy):
    """Least squares for ``u = a x + b y + c``, ``v = -b x + a y + d`` (base -> input);
    returns MATLAB's ``T`` (its third column set to 0 0 1)."""
    x, y = xy[:, 0], xy[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, y, ones, zeros], axis=1),
                             np.stack([y, -x, zeros, ones], axis=1)])
    if np.linalg.matrix_rank(design) < 4:
        raise ValueError("a similarity fit needs at least 2 distinct points, got %s"
                         % xy.tolist())
    target = np.concatenate([uv[:, 0], uv[:, 1]])
    a, b, c, d = np.linalg.lstsq(design, target, rcond=None)[0]
    tinv = np.array([[a, -b, 0.0], [b, a, 0.0], [c, d, 1.0]])
    t = np.linalg.inv(tinv)
    t[:, 2] = [0.0, 0.0, 1.0]
    return t


def _residual_norm(t, uv, xy):
    mapped = np.concatenate([uv, np.ones((len(uv), 1))], axis=1) @ t
    return np.linalg.norm(mapped[:, :2] - xy, 2)  # spectral norm, as MATLAB's norm()


def similarity(points, reference=REFERENCE_POINTS):
    """``cp2tform(points, reference, 'similarity')``: fits a non-reflective and a
    reflective similarity from the reference (base) points to ``points`` and keeps the
    one whose forward residual has the smaller spectral norm (ties: non-reflective)."""
    uv = np.asarray(points, np.float64)
    xy = np.asarray(reference, np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2 or uv.shape != xy.shape:
        raise ValueError("similarity: points must be (M, 2) like the reference %s, got %s"
                         % (xy.shape, uv.shape))
    if not np.isfinite(uv).all():
        raise ValueError("similarity: the points hold NaN or infinite values")
    if np.ptp(uv, axis=0).max() == 0:
        raise ValueError("a similarity fit needs at least 2 distinct points, got %s"
                         % uv.tolist())
    t1 = _fit_nonreflective(uv, xy)
    mirrored = xy * np.array([-1.0, 1.0])  # a new array: the reference stays untouched
    t2 = _fit_nonreflective(uv, mirrored) @ np.diag([-1.0, 1.0, 1.0])
    n1, n2 = _residual_norm(t1, uv, xy), _residual_norm(t2, uv, xy)
    t = t1 if n1 <= n2 else t2
    return Similarity(t, np.linalg.inv(t), bool(n1 > n2), float(n1), float(n2))


def sample_positions(tinv, size=OUTPUT_SIZE):
    """(H, W, 2) input positions ``(u, v)`` (column, row; 1-based) that output pixel
    ``(r, c)`` samples: ``[u v 1] = [c r 1] @ Tinv``."""
    height, width = size
    r, c = np.meshgrid(np.arange(1, height + 1, dtype=np.float64),
                       np.arange(1, width + 1, dtype=np.float64), indexing="ij")
    u = c * tinv[0, 0] + r * tinv[1, 0] + tinv[2, 0]
    v = c * tinv[0, 1] + r * tinv[1, 1] + tinv[2, 1]
    return np.stack([u, v], axis=-1)


def bilinear_fill(image, uv):
    """Bilinear samples of ``image`` (H, W[, C]) at 1-based positions ``uv`` (..., 2),
    in float64, with the image extended by zeros: samples within one pixel outside
    the pixel-centre hull blend towards 0, samples further out are 0."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    u, v = uv[..., 0], uv[..., 1]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    # a frame of zeros around the image, so neighbours just outside read 0
    padded = np.zeros((height + 2, width + 2) + image.shape[2:], np.float64)
    padded[1:-1, 1:-1] = image
    far = ~((u > 0) & (u < width + 1) & (v > 0) & (v < height + 1))
    # padded index of MATLAB pixel i is i (pixel 0 and H+1 are the zero frame)
    col = np.where(far, 0, u0).astype(np.int64)
    row = np.where(far, 0, v0).astype(np.int64)
    col1, row1 = np.minimum(col + 1, width + 1), np.minimum(row + 1, height + 1)
    if image.ndim == 3:
        fu, fv = fu[..., None], fv[..., None]
    top = (1 - fu) * padded[row, col] + fu * padded[row, col1]
    bottom = (1 - fu) * padded[row1, col] + fu * padded[row1, col1]
    out = (1 - fv) * top + fv * bottom
    out[far] = 0
    return out


def round_uint8(values):
    """MATLAB's conversion to uint8: round half away from zero, clamp to 0..255."""
    return np.clip(np.floor(np.asarray(values) + 0.5), 0, 255).astype(np.uint8)


Aligned = namedtuple("Aligned", "image transform")


def align(image, points, reference=REFERENCE_POINTS, size=OUTPUT_SIZE):
    """The aligned face: ``image`` uint8 (H, W, 3) or (H, W) (a grey image stays grey),
    ``points`` (5, 2) ``[x y]`` landmarks, 1-based. Returns :class:`Aligned` with the
    uint8 (112, 96[, 3]) image and the :class:`Similarity` used."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError("align takes an (H, W, 3) or (H, W) image, got shape %s"
                         % (image.shape,))
    transform = similarity(points, reference)
    values = bilinear_fill(image, sample_positions(transform.Tinv, size))
    return Aligned(round_uint8(values), transform)
