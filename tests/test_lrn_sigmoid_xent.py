"""LRN and SigmoidCrossEntropyLoss against direct float64 references and finite
differences."""

import numpy as np
import pytest
from conftest import assert_close
from google.protobuf import text_format

from pyfacelayers.blob import Blob
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2


def make(text):
    return create_layer(text_format.Parse(text, caffe_pb2.LayerParameter()), dtype=np.float64)


def run(layer, *arrays):
    bottom = [Blob(a.shape, np.float64) for a in arrays]
    for b, a in zip(bottom, arrays):
        b.data[...] = a
    top = [Blob((), np.float64)]
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


def lrn_reference(x, size, alpha, beta, k, region):
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    out = np.empty_like(x)
    for i in range(c):
        if region == "ACROSS_CHANNELS":
            lo, hi = max(0, i - pre), min(c, i + size - pre)
            s = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
            out[:, i] = x[:, i] * s ** -beta
    if region == "WITHIN_CHANNEL":
        for y in range(h):
            for z in range(w):
                y0, z0 = y - pre, z - pre
                y1, z1 = min(y0 + size, h + pre), min(z0 + size, w + pre)
                area = (y1 - y0) * (z1 - z0)
                sq = (x[:, :, max(y0, 0):min(y1, h), max(z0, 0):min(z1, w)] ** 2).sum(axis=(2, 3))
                out[:, :, y, z] = x[:, :, y, z] * (1 + alpha * sq / area) ** -beta
    return out


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_forward_and_gradient(region):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 6))
    text = ('name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 '
            'norm_region: %s }' % region)
    layer = make(text)
    bottom, top = run(layer, x)
    assert_close(top[0].data, lrn_reference(x, 3, 0.5, 0.75, 2, region), 1e-12, "lrn")
    dy = rng.normal(size=x.shape)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    eps, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric[idx] = ((lrn_reference(xp, 3, 0.5, 0.75, 2, region) -
                         lrn_reference(xm, 3, 0.5, 0.75, 2, region)) * dy).sum() / (2 * eps)
    assert_close(bottom[0].diff, numeric, 1e-7, "lrn gradient")


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError, match='"n".*odd'):
        run(make('name: "n" type: "LRN" lrn_param { local_size: 4 }'), np.zeros((1, 2, 3, 3)))


def test_sigmoid_cross_entropy_loss():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)) * 5
    t = rng.uniform(size=(4, 3))
    layer = make('name: "l" type: "SigmoidCrossEntropyLoss"')
    bottom, top = run(layer, x, t)
    p = 1 / (1 + np.exp(-x))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / 4
    assert abs(float(top[0].data) - expected) < 1e-12
    top[0].diff[...] = 2.0
    layer.backward(top, [True, False], bottom)
    assert_close(bottom[0].diff, (p - t) * 2 / 4, 1e-12, "gradient")
    with pytest.raises(ValueError, match="count"):
        run(make('name: "l" type: "SigmoidCrossEntropyLoss"'), x, t[:2])
