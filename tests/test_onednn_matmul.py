"""oneDNN's matmul for the fully connected layers' products (cpu/onednn_matmul.py):
the same values as numpy within the one-layer tolerance, ``+=`` in place, and numpy
wherever oneDNN does not apply. Skipped where oneDNN is not installed."""

import numpy as np
import pytest

from conftest import assert_close
from simple_layer_utils import make
from test_margin_inner_product import fixture_files, run_fixture

from pyfacelayers.blob import Blob
from pyfacelayers.cpu import onednn, onednn_matmul
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import _products
from test_onednn import clean_env, needs_onednn  # noqa: F401 (an autouse fixture)

RNG = np.random.default_rng(7)


@pytest.fixture
def every_product(monkeypatch):
    """Send every float32 product, however small, to oneDNN."""
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 0)


def counted(monkeypatch):
    """A list that records the plan of every product oneDNN runs."""
    runs = []
    real = onednn_matmul.Product.run

    def run(self, a, b, out):
        runs.append(self)
        real(self, a, b, out)
    monkeypatch.setattr(onednn_matmul.Product, "run", run)
    return runs


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@needs_onednn
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True),
                                     (True, True)], ids=["ab", "aT", "bT", "aTbT"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
def test_products_in_place_match_numpy(every_product, a_t, b_t, accumulate):
    a = f32(7, 33).T if a_t else f32(33, 7)  # (33, 7) either way, transposed views too
    b = f32(5, 7).T if b_t else f32(7, 5)
    out = f32(33, 5)
    expected = a.astype(np.float64) @ b + (out if accumulate else 0)
    assert onednn_matmul.product(a, b, out, accumulate)
    assert_close(out, expected, 1e-5, "product")


@needs_onednn
def test_a_zero_output_gets_the_product_exactly_once(every_product):
    a, b = f32(4, 300), f32(300, 6)
    out = np.zeros((4, 6), np.float32)
    for _ in range(3):
        assert onednn_matmul.product(a, b, out, accumulate=True)
    assert_close(out, 3 * (a.astype(np.float64) @ b), 1e-5, "three additions")


@needs_onednn
def test_where_onednn_does_not_apply_numpy_computes(monkeypatch, every_product):
    a, b, out = f32(4, 5), f32(5, 6), np.zeros((4, 6), np.float32)
    assert not onednn_matmul.product(a.astype(np.float64), b, out, False)
    assert not onednn_matmul.product(f32(4, 10)[:, ::2], b, out, False)  # no unit stride
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 4 * 5 * 6 + 1)
    assert not onednn_matmul.product(a, b, out, False)
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 0)
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")  # the user's choice of BLAS
    assert not onednn_matmul.product(a, b, out, False)
    _products.multiply(make("InnerProduct", "inner_product_param { num_output: 6 }"),
                       a, b, out)  # the fallback
    assert_close(out, a @ b, 1e-6, "numpy")


def _inner_product(text, x, weight_bottom=None):
    layer = make("InnerProduct", "inner_product_param { %s weight_filler { type: "
                 "\"gaussian\" std: 0.1 } bias_filler { type: \"gaussian\" std: 1 } }"
                 % text, dtype=np.float32)
    bottoms = [Blob(x.shape, np.float32)] + ([Blob(weight_bottom.shape, np.float32)]
                                             if weight_bottom is not None else [])
    bottoms[0].data[...] = x
    if weight_bottom is not None:
        bottoms[1].data[...] = weight_bottom
    top = [Blob((), np.float32)]
    layer.setup(bottoms, top)
    layer.forward(bottoms, top)
    top[0].diff[...] = np.random.default_rng(3).standard_normal(top[0].shape)
    for blob in layer.blobs:
        blob.diff[...] = 0.5  # parameter gradients add to what is there
    layer.backward(top, [True] * len(bottoms), bottoms)
    out = {"y": top[0].data, "dx": bottoms[0].diff}
    out.update(("d%d" % i, blob.diff) for i, blob in enumerate(layer.blobs))
    if weight_bottom is not None:
        out["dw_bottom"] = bottoms[1].diff
    return {k: v.copy() for k, v in out.items()}


@needs_onednn
@pytest.mark.parametrize("text,weight_bottom", [
    ("num_output: 6", None), ("num_output: 6 transpose: true", None),
    ("num_output: 6 axis: 2", None), ("bias_term: false", (6, 12)),
    ("bias_term: false transpose: true", (12, 6))])
def test_inner_product_on_onednn_matches_numpy(monkeypatch, text, weight_bottom):
    x = f32(3, 2, 12) if "axis: 2" in text else f32(3, 12)
    w = None if weight_bottom is None else f32(*weight_bottom)
    with monkeypatch.context() as patch:
        patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
        expected = _inner_product(text, x, w)
    runs = counted(monkeypatch)
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 0)
    actual = _inner_product(text, x, w)
    assert len(runs) >= 2  # the forward and the data gradient at least
    for key in expected:
        assert_close(actual[key], expected[key], 1e-5, key)


@needs_onednn
@pytest.mark.parametrize("relpath", [p for p in fixture_files("A") if "/f32/" in p][::25]
                         + [p for p in fixture_files("A_accum") if "/f32/" in p])
def test_margin_inner_product_fixtures_on_onednn(monkeypatch, relpath):
    """SphereFace's golden outputs (forward, data and accumulated weight gradients) with
    every MarginInnerProduct product on oneDNN."""
    runs = counted(monkeypatch)
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 0)
    run_fixture(relpath)
    assert any(plan.accumulate for plan in runs)  # the weight gradient's += too


@needs_onednn
def test_a_failing_matmul_names_the_shapes(monkeypatch):
    def fail(name, *args):
        raise onednn.OnednnError("%s failed: unimplemented" % name)
    lib = onednn.library()
    monkeypatch.setattr(lib, "new", lambda name, *args: fail(name) if "matmul" in name
                        else type(lib).new(lib, name, *args))
    with pytest.raises(onednn.OnednnError, match=r"no matmul for \(\(2, 3\).*unimplemented"):
        onednn_matmul.Product(((2, 3), (3, 1)), ((3, 4), (4, 1)), ((2, 4), (4, 1)), False)


@pytest.mark.parametrize("setting,message", [
    (("PYFACELAYERS_CONV_ENGINE", "fast"), "PYFACELAYERS_CONV_ENGINE must be one of"),
    (("PYFACELAYERS_ONEDNN_LIBRARY", "/nonexistent/libdnnl.so.3"), "oneDNN not found")])
def test_a_bad_engine_setting_names_the_fully_connected_layer(monkeypatch, setting,
                                                              message):
    monkeypatch.setattr(onednn_matmul, "MIN_WORK", 0)
    monkeypatch.setenv(*setting)
    if setting[0] == "PYFACELAYERS_ONEDNN_LIBRARY":
        monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "onednn")  # asked for by name
    with pytest.raises(LayerError, match=r'layer "my_innerproduct" \(InnerProduct\): '
                                         r'oneDNN: %s' % message):
        _inner_product("num_output: 6", f32(3, 12))
