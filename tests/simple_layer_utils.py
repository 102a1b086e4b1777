"""Helpers for the simple/loss layer tests: build a layer from prototxt text, run it,
and check its backward against central finite differences in float64."""

import numpy as np
from google.protobuf import text_format

from pyfacelayers.blob import Blob
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2


def make(type_name, text="", phase=caffe_pb2.TRAIN, dtype=np.float64, seed=0):
    param = text_format.Parse('name: "my_%s" type: "%s" %s' % (type_name.lower(), type_name,
                                                               text),
                              caffe_pb2.LayerParameter())
    return create_layer(param, phase=phase, dtype=dtype, rng=np.random.default_rng(seed))


def blob(array, dtype=np.float64):
    array = np.asarray(array)
    b = Blob(array.shape, dtype=dtype)
    b.data[...] = array
    return b


def run(layer, arrays, num_top=1, dtype=None):
    """setup + forward on fresh blobs; returns (bottoms, tops)."""
    dtype = dtype or layer.dtype
    bottoms = [a if isinstance(a, Blob) else blob(a, dtype) for a in arrays]
    tops = [Blob((), dtype=dtype) for _ in range(num_top)]
    layer.setup(bottoms, tops)
    layer.forward(bottoms, tops)
    return bottoms, tops


def analytic_and_numeric(make_layer, arrays, check, num_top=1, top_weights=None,
                         eps=1e-6, seed=1):
    """Gradients of sum_t <top_t, w_t> w.r.t. the bottoms in ``check``, from backward
    and from central differences. ``top_weights`` default to random normals."""
    layer = make_layer()
    bottoms, tops = run(layer, [np.array(a, dtype=np.float64) for a in arrays], num_top)
    rng = np.random.default_rng(seed)
    if top_weights is None:
        top_weights = [rng.standard_normal(t.shape) for t in tops]
    for t, w in zip(tops, top_weights):
        t.diff[...] = w
    for b in bottoms:
        b.diff[...] = 12345.0  # poison: backward must overwrite
    down = [i in check for i in range(len(bottoms))]
    layer.backward(tops, down, bottoms)
    analytic = {i: bottoms[i].diff.copy() for i in check}

    def objective(values):
        _, ts = run(make_layer(), values, num_top)
        return sum(float(np.sum(t.data * w)) for t, w in zip(ts, top_weights))

    numeric = {}
    for i in check:
        base = [np.array(a, dtype=np.float64) for a in arrays]
        grad = np.zeros_like(base[i])
        for j in range(base[i].size):
            plus = [a.copy() for a in base]
            minus = [a.copy() for a in base]
            plus[i].flat[j] += eps
            minus[i].flat[j] -= eps
            grad.flat[j] = (objective(plus) - objective(minus)) / (2 * eps)
        numeric[i] = grad
    return analytic, numeric


def assert_gradients(make_layer, arrays, check=(0,), num_top=1, tol=1e-6, **kw):
    analytic, numeric = analytic_and_numeric(make_layer, arrays, check, num_top, **kw)
    for i in check:
        expected = numeric[i]
        err = np.linalg.norm(analytic[i] - expected) / max(np.linalg.norm(expected), 1e-12)
        assert err < tol, "bottom %d: gradient relative error %.3g" % (i, err)
    return analytic
