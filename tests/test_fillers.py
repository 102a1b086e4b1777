"""Fillers: Caffe's formulas, checked exactly where deterministic and by statistics
where random (sample sizes chosen so a wrong formula fails by many standard errors)."""

import math

import numpy as np
import pytest
from google.protobuf import text_format

from pyfacelayers.fillers import fill, filler_types
from pyfacelayers.proto import caffe_pb2


def filler(text):
    return text_format.Parse(text, caffe_pb2.FillerParameter())


def rng(seed=0):
    return np.random.default_rng(seed)


def test_types_listed():
    assert set(filler_types()) == {"constant", "uniform", "gaussian", "positive_unitball",
                                   "xavier", "msra", "bilinear",
                                   "gaussian_unitball", "identity"}  # happynear's fork


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant(dtype):
    out = fill(filler('type: "constant" value: 0.3'), (2, 3, 4), dtype, rng())
    assert out.dtype == dtype and out.shape == (2, 3, 4)
    assert np.all(out == dtype(np.float32(0.3)))  # proto floats are float32, as in Caffe
    # The default FillerParameter is constant 0.
    assert np.all(fill(None, (5,), dtype, rng()) == 0)
    assert np.all(fill(caffe_pb2.FillerParameter(), (5,), dtype, rng()) == 0)


def test_uniform_range_and_moments():
    out = fill(filler('type: "uniform" min: -2 max: 3'), (200, 500), np.float64, rng(1))
    assert out.min() >= -2 and out.max() < 3
    assert abs(out.mean() - 0.5) < 0.02          # se = 5/sqrt(12*1e5) ~ 0.0046
    assert abs(out.var() - 25 / 12.0) < 0.05


def test_gaussian_moments():
    out = fill(filler('type: "gaussian" mean: 1.5 std: 0.2'), (100, 1000), np.float64, rng(2))
    assert abs(out.mean() - 1.5) < 0.003          # se 0.0006
    assert abs(out.std() - 0.2) < 0.003


def test_gaussian_sparse_keeps_sparse_per_output():
    # shape[0] = num_outputs = 50, sparse 5 -> each entry non-zero with p = 0.1.
    out = fill(filler('type: "gaussian" std: 1 sparse: 5'), (50, 4000), np.float64, rng(3))
    frac = np.mean(out != 0)
    assert abs(frac - 0.1) < 0.005                # se ~ 0.0007
    # The kept values are still N(0, 1).
    kept = out[out != 0]
    assert abs(kept.std() - 1.0) < 0.03
    # sparse 0: everything is zero.
    assert np.all(fill(filler('type: "gaussian" sparse: 0'), (4, 9), np.float32, rng()) == 0)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 3 * 5 * 7), ("FAN_OUT", 20 * 5 * 7),
                                    ("AVERAGE", (3 * 5 * 7 + 20 * 5 * 7) / 2.0)])
def test_xavier(norm, n):
    shape = (20, 3, 5, 7)
    out = fill(filler('type: "xavier" variance_norm: %s' % norm), shape, np.float64, rng(4))
    scale = math.sqrt(3.0 / n)
    assert out.min() >= -scale and out.max() <= scale
    # Uses most of the range (a wrong n would shrink or exceed it).
    assert out.max() > 0.98 * scale and out.min() < -0.98 * scale
    assert abs(out.var() / (scale * scale / 3.0) - 1.0) < 0.05


def test_xavier_fans_use_integer_division_and_1d():
    # 1-D blob: fan_in = count / shape[0] = 1, fan_out = count.
    out = fill(filler('type: "xavier"'), (10000,), np.float64, rng(5))
    assert out.max() <= math.sqrt(3.0) and out.max() > 0.99 * math.sqrt(3.0)
    out = fill(filler('type: "xavier" variance_norm: FAN_OUT'), (10000,), np.float64, rng(5))
    assert out.max() <= math.sqrt(3.0 / 10000) and out.max() > 0.99 * math.sqrt(3.0 / 10000)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 8 * 3 * 3), ("FAN_OUT", 64 * 3 * 3),
                                    ("AVERAGE", (8 * 9 + 64 * 9) / 2.0)])
def test_msra(norm, n):
    out = fill(filler('type: "msra" variance_norm: %s' % norm), (64, 8, 3, 3), np.float64,
               rng(6))
    assert abs(out.mean()) < 4 * math.sqrt(2.0 / n) / math.sqrt(out.size)
    assert abs(out.std() / math.sqrt(2.0 / n) - 1.0) < 0.04


def test_positive_unitball_rows_sum_to_one():
    out = fill(filler('type: "positive_unitball"'), (6, 3, 4), np.float64, rng(7))
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.reshape(6, -1).sum(axis=1), np.ones(6), rtol=1e-12)
    assert len(np.unique(out)) == out.size


@pytest.mark.parametrize("k,weights", [
    (2, [1.0, 0.0]),
    (3, [0.25, 0.75, 0.75]),
    (4, [0.25, 0.75, 0.75, 0.25]),
    (6, [1 / 3.0, 2 / 3.0, 1.0, 2 / 3.0, 1 / 3.0, 0.0]),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_kernel(k, weights, dtype):
    # f = ceil(k/2), c = (2f - 1 - f%2) / (2f), w(x) = 1 - |x/f - c|, kernel = w(y) w(x).
    out = fill(filler('type: "bilinear"'), (3, 2, k, k), dtype, rng())
    w = np.array(weights)
    expected = np.broadcast_to(np.outer(w, w), (3, 2, k, k))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert out.dtype == dtype


def test_same_seed_same_values_and_dtype():
    p = filler('type: "gaussian" std: 0.1')
    a = fill(p, (4, 5), np.float32, rng(11))
    b = fill(p, (4, 5), np.float32, rng(11))
    c = fill(p, (4, 5), np.float32, rng(12))
    assert a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("text,shape,match", [
    ('type: "nonsense"', (2, 2), 'unknown filler type "nonsense"'),
    ('type: "xavier" sparse: 3', (2, 2), "only supported by the gaussian"),
    ('type: "bilinear"', (2, 3, 3), "4-D"),
    ('type: "bilinear"', (1, 1, 3, 4), "square"),
    ('type: "uniform" min: 2 max: 1', (2,), "min"),
    ('type: "gaussian" std: 0', (2,), "std"),
    ('type: "gaussian" sparse: 5', (2, 3), "exceeds"),
    ('type: "msra"', (0, 3), "shape"),
])
def test_bad_fillers(text, shape, match):
    with pytest.raises(ValueError, match=match):
        fill(filler(text), shape, np.float32, rng())
