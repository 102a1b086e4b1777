"""Weight fillers: Caffe's FillerParameter types, drawn from a numpy Generator.

``fill(filler_param, shape, dtype, rng)`` returns a new numpy array. The formulas
are Caffe's (filler.hpp); the random streams are numpy's, so values differ from
Caffe's draws but follow the same distributions.
"""

import math

import numpy as np

from .proto import caffe_pb2

_VN = caffe_pb2.FillerParameter


def _count(shape):
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _fans(shape):
    """fan_in and fan_out as Caffe computes them (integer divisions of the count)."""
    count = _count(shape)
    if len(shape) < 1 or shape[0] == 0:
        raise ValueError("needs a blob of at least 1 axis with shape[0] > 0, got %s"
                         % (tuple(shape),))
    fan_in = count // shape[0]
    if len(shape) > 1:
        if shape[1] == 0:
            raise ValueError("shape[1] is 0 in %s" % (tuple(shape),))
        fan_out = count // shape[1]
    else:
        fan_out = count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = _fans(shape)
    norm = param.variance_norm
    if norm == _VN.FAN_IN:
        n = float(fan_in)
    elif norm == _VN.FAN_OUT:
        n = float(fan_out)
    elif norm == _VN.AVERAGE:
        n = (fan_in + fan_out) / 2.0
    else:
        raise ValueError("unknown variance_norm %d" % norm)
    if n <= 0:
        raise ValueError("fan is 0 for shape %s" % (tuple(shape),))
    return n


def _no_sparse(param):
    # Caffe CHECKs that only the gaussian filler is given `sparse`.
    if param.sparse != -1:
        raise ValueError("sparse = %d is only supported by the gaussian filler"
                         % param.sparse)


def _constant(param, shape, rng):
    _no_sparse(param)
    return np.full(shape, param.value, dtype=np.float64)


def _uniform(param, shape, rng):
    _no_sparse(param)
    if not param.min <= param.max:
        raise ValueError("min %g > max %g" % (param.min, param.max))
    return rng.uniform(param.min, param.max, size=shape)


def _gaussian(param, shape, rng):
    if not param.std > 0:
        raise ValueError("std must be > 0, got %g" % param.std)
    data = rng.normal(param.mean, param.std, size=shape)
    if param.sparse >= 0:
        # Each output (row of shape[0]) keeps about `sparse` non-zero inputs:
        # a Bernoulli mask with p = sparse / num_outputs, as Caffe draws it.
        if len(shape) < 1 or shape[0] == 0:
            raise ValueError("sparse needs a blob with shape[0] > 0, got %s" % (tuple(shape),))
        p = param.sparse / shape[0]
        if p > 1.0:
            raise ValueError("sparse = %d exceeds num_outputs = %d (probability %g > 1)"
                             % (param.sparse, shape[0], p))
        mask = rng.random(size=shape) < p
        data = data * mask
    return data


def _positive_unitball(param, shape, rng):
    _no_sparse(param)
    if len(shape) < 1 or shape[0] == 0:
        raise ValueError("needs a blob with shape[0] > 0, got %s" % (tuple(shape),))
    data = rng.uniform(0.0, 1.0, size=shape)
    rows = data.reshape(shape[0], -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return data


def _xavier(param, shape, rng):
    _no_sparse(param)
    scale = math.sqrt(3.0 / _variance_n(param, shape))
    return rng.uniform(-scale, scale, size=shape)


def _msra(param, shape, rng):
    # happynear's fork: std = sqrt(2 / n / (1 + alpha^2)) (alpha 0: BVLC's filler).
    _no_sparse(param)
    alpha = float(np.float32(param.alpha))
    std = math.sqrt(2.0 / _variance_n(param, shape) / (1.0 + alpha * alpha))
    return rng.normal(0.0, std, size=shape)


def _gaussian_unitball(param, shape, rng):
    # happynear's fork: N(0, 1) values, every row (of shape[0]) scaled to unit norm.
    _no_sparse(param)
    if len(shape) < 1 or shape[0] == 0:
        raise ValueError("needs a blob with shape[0] > 0, got %s" % (tuple(shape),))
    data = rng.normal(0.0, 1.0, size=shape)
    rows = data.reshape(shape[0], -1)
    rows /= np.sqrt((rows * rows).sum(axis=1, keepdims=True) + 1e-12)
    return data


def _identity(param, shape, rng):
    # happynear's fork: zeros and 1 at [i, i] of the (num, count / num) matrix; the
    # fork requires count / num == count / channels (num == channels).
    _no_sparse(param)
    legacy = tuple(shape) + (1,) * (2 - len(shape)) if len(shape) < 2 else tuple(shape)
    if len(shape) < 1 or legacy[0] == 0 or legacy[0] != legacy[1]:
        raise ValueError("needs shape[0] == shape[1] (a square identity), got %s"
                         % (tuple(shape),))
    data = np.zeros(shape, dtype=np.float64)
    rows = data.reshape(legacy[0], -1)
    rows[np.arange(legacy[0]), np.arange(legacy[0])] = 1.0
    return data


def _bilinear(param, shape, rng):
    # The upsampling kernel of a Deconvolution: separable triangle weights.
    _no_sparse(param)
    if len(shape) != 4:
        raise ValueError("needs a 4-D blob, got shape %s" % (tuple(shape),))
    height, width = shape[2], shape[3]
    if height != width:
        raise ValueError("needs a square kernel, got %dx%d" % (height, width))
    f = math.ceil(width / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    # Caffe evaluates this in float; do the same so float32 results match bit for bit.
    f32, c32 = np.float32(f), np.float32(c)
    x = np.arange(width, dtype=np.float32)
    y = np.arange(height, dtype=np.float32)
    wx = np.float32(1) - np.abs(x / f32 - c32)
    wy = np.float32(1) - np.abs(y / f32 - c32)
    kernel = wy[:, None] * wx[None, :]
    return np.broadcast_to(kernel, shape).astype(np.float64)


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "gaussian_unitball": _gaussian_unitball,
    "identity": _identity,
    "bilinear": _bilinear,
}


def filler_types():
    return sorted(_FILLERS)


def fill(filler_param, shape, dtype=np.float32, rng=None):
    """A new numpy array of ``shape`` and ``dtype`` filled as ``filler_param`` says.

    ``filler_param`` is a ``caffe_pb2.FillerParameter`` (None means Caffe's default,
    constant 0). Raises ValueError naming the filler on unknown types or bad shapes.
    """
    if filler_param is None:
        filler_param = caffe_pb2.FillerParameter()
    if rng is None:
        rng = np.random.default_rng()
    shape = tuple(int(d) for d in shape)
    kind = filler_param.type
    try:
        make = _FILLERS[kind]
    except KeyError:
        raise ValueError('unknown filler type "%s" (supported: %s)'
                         % (kind, ", ".join(filler_types()))) from None
    try:
        data = make(filler_param, shape, rng)
    except ValueError as exc:
        raise ValueError('%s filler: %s' % (kind, exc)) from None
    return np.ascontiguousarray(data, dtype=np.dtype(dtype))
