"""MarginInnerProduct against the original Caffe (fixture sets A, A_accum, A_edge), the
exact-gradient option against finite differences, and every bad input."""

import glob
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import FIXTURES, assert_close, shared_path
from pyfacelayers import _C
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import create_layer
from pyfacelayers.layers.margin_inner_product import MarginInnerProduct
from pyfacelayers.proto import caffe_pb2

TOL = {np.float32: 1e-5, np.float64: 1e-10}
TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"]


def fixture_files(subset):
    return sorted(os.path.relpath(p, FIXTURES)
                  for p in glob.glob(os.path.join(FIXTURES, subset, "f*", "*.npz")))


def make_layer(shape, num_output, dtype, **kwargs):
    """A set-up layer and its bottom/top blobs (two tops)."""
    layer = MarginInnerProduct.from_args(num_output=num_output, dtype=dtype, **kwargs)
    m = int(np.prod(shape[:kwargs.get("axis", 1)]))
    bottom = [Blob(shape, dtype), Blob((m,), dtype)]
    top = [Blob((1,), dtype), Blob((1,), dtype)]
    layer.setup(bottom, top)
    return layer, bottom, top


def run_fixture(relpath):
    """Replay a fixture file with the fixture's procedure; compare every step."""
    z = np.load(shared_path("fixtures", "caffe-ref", relpath))
    meta = json.loads(str(z["meta_json"]))
    dtype = np.float64 if "/f64/" in relpath else np.float32
    tol = TOL[dtype]
    layer, bottom, top = make_layer(
        tuple(meta["bottom_shape"]), meta["N"], dtype, type=meta["margin_type"],
        axis=meta["axis"], base=meta["base"], gamma=meta["gamma"], power=meta["power"],
        lambda_min=meta["lambda_min"], iteration=meta["iteration"])
    layer.blobs[0].data[...] = z["weight_init"]
    step = 0
    while "step%d_top0" % step in z:
        key = lambda name: "step%d_%s" % (step, name)  # noqa: E731
        bottom[0].data[...] = z[key("bottom")]
        bottom[1].data[...] = z[key("label")]
        # Zeros in set A, the carried-over diff in A_accum.
        layer.blobs[0].diff[...] = z[key("weight_diff_before_backward")]
        assert_close(layer.blobs[0].data, z[key("weight_before_forward")], tol,
                     "%s weight before forward" % key(""))
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        assert layer.iteration == meta["layer_iter_after_forward_per_step"][step]
        top[0].diff[...] = z[key("top_diff")]
        bottom[0].diff[...] = 12345.0  # poison: must be overwritten
        layer.backward(top, [True, False], bottom)
        for name, actual in [("top0", top[0].data), ("top1_lambda", top[1].data),
                             ("weight_after_forward", layer.blobs[0].data),
                             ("bottom_diff", bottom[0].diff),
                             ("weight_diff", layer.blobs[0].diff)]:
            expected = z[key(name)]
            assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
            nan = np.isnan(expected)
            # NaN exactly where Caffe has NaN (A_edge zero row), close elsewhere.
            np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=key(name))
            assert_close(actual[~nan], expected[~nan], tol, "%s %s" % (relpath, key(name)))
        step += 1
    assert step == len(meta["lambda_per_step"])


@pytest.mark.parametrize("relpath", fixture_files("A"))
def test_fixture_set_a(relpath):
    run_fixture(relpath)


@pytest.mark.parametrize("relpath", fixture_files("A_accum"))
def test_fixture_set_a_accum(relpath):
    run_fixture(relpath)


@pytest.mark.parametrize("relpath", fixture_files("A_edge"))
def test_fixture_set_a_edge(relpath):
    run_fixture(relpath)


def test_fixture_sets_are_complete():
    shared_path("fixtures", "caffe-ref", "A")
    assert len(fixture_files("A")) == 200
    assert len(fixture_files("A_accum")) == 8
    assert len(fixture_files("A_edge")) == 32


@pytest.mark.parametrize("margin_type", TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_feature_row_documented_nan(margin_type, dtype):
    """The documented behaviour (as Caffe): a zero feature row gives NaN in that row's
    label column of the output and, except SINGLE, in that row of the feature gradient;
    everything else, the weight gradient included, stays finite."""
    z = np.load(shared_path("fixtures", "caffe-ref", "A_edge",
                            "f32" if dtype == np.float32 else "f64",
                            "Aedge_%s_edge_zero_row_c.npz" % margin_type))
    layer, bottom, top = make_layer((9, 4), 4, dtype, type=margin_type, base=10)
    layer.blobs[0].data[...] = z["weight_init"]
    bottom[0].data[...] = z["step0_bottom"]
    bottom[1].data[...] = z["step0_label"]
    assert not bottom[0].data[8].any() and bottom[1].data[8] == 1
    layer.forward(bottom, top)
    top[0].diff[...] = z["step0_top_diff"]
    layer.backward(top, [True, False], bottom)
    nan_top = np.zeros((9, 4), bool)
    nan_top[8, 1] = margin_type != "SINGLE"
    np.testing.assert_array_equal(np.isnan(top[0].data), nan_top)
    nan_diff = np.zeros((9, 4), bool)
    nan_diff[8] = margin_type != "SINGLE"
    np.testing.assert_array_equal(np.isnan(bottom[0].diff), nan_diff)
    assert np.isfinite(layer.blobs[0].diff).all()


# -- lambda schedule, state, construction -------------------------------------------------

def test_lambda_schedule_and_state_roundtrip():
    kw = dict(type="QUADRUPLE", base=1000, gamma=0.12, power=1, lambda_min=5)
    layer, bottom, top = make_layer((2, 3), 4, np.float64, **kw)
    layer.blobs[0].data[...] = np.arange(12.0).reshape(4, 3) + 1
    bottom[0].data[...] = [[1, 2, 3], [3, -1, 0]]
    lambdas = []
    for _ in range(3):
        layer.forward(bottom, top)
        lambdas.append(float(top[1].data[0]))
    g = np.float64(np.float32(0.12))
    np.testing.assert_allclose(lambdas, [1000 / (1 + g * i) for i in (1, 2, 3)], rtol=1e-15)
    state = layer.get_state()
    assert state["iteration"] == 3
    resumed, b2, t2 = make_layer((2, 3), 4, np.float64, **kw)
    resumed.blobs[0].data[...] = layer.blobs[0].data
    resumed.set_state(state)
    layer.forward(bottom, top)
    resumed.forward(bottom, t2)
    assert t2[1].data[0] == top[1].data[0] == np.float64(1000) / (1 + g * 4)
    with pytest.raises(LayerError, match="unknown state keys"):
        resumed.set_state({"iter": 3})
    with pytest.raises(LayerError, match="integer"):
        resumed.set_state({"iteration": 2.5})


def test_lambda_clamps_at_lambda_min_in_float32():
    layer, bottom, top = make_layer((1, 2), 2, np.float32, type="DOUBLE", base=1000,
                                    gamma=0.12, power=1, lambda_min=5, iteration=1657)
    layer.blobs[0].data[...] = [[1, 0], [0, 1]]
    bottom[0].data[...] = [[1, 1]]
    seen = []
    for _ in range(3):
        layer.forward(bottom, top)
        seen.append(top[1].data[0])
    assert seen[0] > 5 and seen[1] == seen[2] == np.float32(5)
    assert top[1].data.dtype == np.float32


def test_one_top_and_layer_parameter_path():
    text = """name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
      margin_inner_product_param { num_output: 5 type: TRIPLE base: 10 gamma: 0 power: 1
        lambda_min: 0 iteration: 7 }"""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = create_layer(param, dtype=np.float64)
    assert isinstance(layer, MarginInnerProduct) and layer.iteration == 7
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    bottom, top = [Blob((3, 4), np.float64), Blob((3,), np.float64)], [Blob((1,), np.float64)]
    layer.setup(bottom, top)
    assert top[0].shape == (3, 5) and layer.blobs[0].shape == (5, 4)
    rng = np.random.default_rng(3)
    layer.blobs[0].data[...] = rng.normal(size=(5, 4))
    bottom[0].data[...] = rng.normal(size=(3, 4))
    bottom[1].data[...] = [4, 0, 2]
    layer.forward(bottom, top)
    assert layer.iteration == 8 and layer.lambda_ == 10
    # Non-label columns are the plain logits against the normalised weight.
    w = layer.blobs[0].data
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, rtol=1e-15)
    plain = bottom[0].data @ w.T
    mask = np.ones((3, 5), bool)
    mask[[0, 1, 2], [4, 0, 2]] = False
    np.testing.assert_allclose(top[0].data[mask], plain[mask], rtol=1e-14)


def test_from_args_rejects_bad_arguments():
    with pytest.raises(ValueError, match="margin type"):
        MarginInnerProduct.from_args(num_output=3, type="QUINTUPLE")
    with pytest.raises(LayerError, match="gradient"):
        MarginInnerProduct.from_args(num_output=3, gradient="approximate")
    layer = MarginInnerProduct.from_args(num_output=0)
    with pytest.raises(LayerError, match="num_output"):
        layer.setup([Blob((2, 3)), Blob((2,))], [Blob((1,))])


# -- the exact gradient against finite differences ----------------------------------------

def forward_value(layer, bottom, top, x, top_diff):
    bottom[0].data[...] = x
    layer.forward(bottom, top)
    return float(np.sum(top[0].data * top_diff))


@pytest.mark.parametrize("margin_type", TYPES)
@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_exact_gradient_matches_finite_differences(margin_type, lam):
    rng = np.random.default_rng(11)
    m, k, n = 5, 6, 7
    layer, bottom, top = make_layer((m, k), n, np.float64, type=margin_type, base=lam,
                                    gamma=0, power=1, gradient="exact")
    layer.blobs[0].data[...] = rng.normal(size=(n, k))
    x = rng.normal(size=(m, k))
    bottom[1].data[...] = rng.integers(0, n, size=m)
    top_diff = rng.normal(size=(m, n))
    forward_value(layer, bottom, top, x, top_diff)
    top[0].diff[...] = top_diff
    layer.backward(top, [True, False], bottom)
    analytic = bottom[0].diff.copy()
    h = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        numeric[idx] = (forward_value(layer, bottom, top, xp, top_diff)
                        - forward_value(layer, bottom, top, xm, top_diff)) / (2 * h)
    assert_close(analytic, numeric, 1e-7, "exact gradient vs finite differences")
    if margin_type != "SINGLE":
        # The default (the original's normalised coefficients) is not the derivative.
        layer.gradient = "normalized"
        forward_value(layer, bottom, top, x, top_diff)
        layer.backward(top, [True, False], bottom)
        assert np.linalg.norm(bottom[0].diff - numeric) > 1e-3 * np.linalg.norm(numeric)


def test_propagate_down_false_and_weight_not_learned():
    layer, bottom, top = make_layer((2, 3), 4, np.float32, type="DOUBLE")
    layer.blobs[0].data[...] = np.eye(4, 3) + 0.5
    bottom[0].data[...] = 1
    layer.forward(bottom, top)
    top[0].diff[...] = 1
    bottom[0].diff[...] = 7
    layer.param_propagate_down = [False]
    layer.backward(top, [False, False], bottom)
    assert (bottom[0].diff == 7).all() and not layer.blobs[0].diff.any()


# -- bad inputs ---------------------------------------------------------------------------

def ready_layer(dtype=np.float32, m=3, k=4, n=5):
    layer, bottom, top = make_layer((m, k), n, dtype, type="QUADRUPLE", base=10)
    layer.name = "fc6"
    layer.blobs[0].data[...] = np.random.default_rng(0).normal(size=(n, k))
    bottom[0].data[...] = np.random.default_rng(1).normal(size=(m, k))
    bottom[1].data[...] = [0, 4, 2][:m]
    return layer, bottom, top


@pytest.mark.parametrize("bad,index", [(1.5, 1), (-1.0, 0), (5.0, 2), (np.nan, 1),
                                        (np.inf, 0), (1e30, 2)])
def test_bad_labels(bad, index):
    layer, bottom, top = ready_layer()
    bottom[1].data[index] = bad
    weight = layer.blobs[0].data.copy()
    with pytest.raises(LayerError, match=r'"fc6" \(MarginInnerProduct\): label %d is' % index):
        layer.forward(bottom, top)
    # Nothing changed: the weight is not normalised, the counter did not advance.
    np.testing.assert_array_equal(layer.blobs[0].data, weight)
    assert layer.iteration == 0


def test_batch_size_mismatch():
    layer, bottom, top = ready_layer()
    bottom[1].reshape(4)
    with pytest.raises(LayerError, match=r"labels have 4 values.*expected one per row: 3"):
        layer.reshape(bottom, top)
    with pytest.raises(LayerError, match="labels have 4 values"):
        layer.forward(bottom, top)


def test_feature_dim_mismatch():
    layer, bottom, top = ready_layer()
    bottom[0].reshape(3, 6)
    with pytest.raises(LayerError, match=r"6 values per row.*weight expects 4"):
        layer.reshape(bottom, top)


def test_zero_norm_weight_row():
    layer, bottom, top = ready_layer()
    layer.blobs[0].data[3] = 0
    weight = layer.blobs[0].data.copy()
    with pytest.raises(LayerError, match=r'"fc6".*weight row 3 has zero norm'):
        layer.forward(bottom, top)
    np.testing.assert_array_equal(layer.blobs[0].data, weight)
    # Caffe's default filler (constant 0) gives zero rows: rejected at the first forward.
    fresh, b, t = make_layer((2, 3), 2, np.float32)
    with pytest.raises(LayerError, match="weight row 0 has zero norm"):
        fresh.forward(b, t)


def test_wrong_dtype():
    layer, bottom, top = ready_layer(np.float32)
    bottom[0] = Blob((3, 4), np.float64)
    with pytest.raises(LayerError, match=r"features \(bottom\[0\]\) has dtype float64, expected "
                                         r"float32"):
        layer.forward(bottom, top)
    layer, bottom, top = ready_layer(np.float64)
    bottom[1] = Blob((3,), np.float32)
    with pytest.raises(LayerError, match=r"labels \(bottom\[1\]\) has dtype float32"):
        layer.forward(bottom, top)
    with pytest.raises(LayerError, match="dtype must be float32 or float64"):
        MarginInnerProduct.from_args(num_output=3, dtype=np.int32)


def test_non_contiguous_arrays():
    layer, bottom, top = ready_layer()
    bottom[0]._data = np.zeros((4, 3), np.float32).T  # a transposed (Fortran-order) view
    with pytest.raises(LayerError, match=r"features \(bottom\[0\]\).*C-contiguous"):
        layer.forward(bottom, top)
    layer, bottom, top = ready_layer()
    layer.blobs[0]._data = np.ones((5, 8), np.float32)[:, ::2]
    with pytest.raises(LayerError, match="weight.*C-contiguous"):
        layer.forward(bottom, top)


def test_backward_before_forward_and_changed_batch():
    layer, bottom, top = ready_layer()
    with pytest.raises(LayerError, match="before forward"):
        layer.backward(top, [True, False], bottom)
    layer.forward(bottom, top)
    bottom[0].reshape(2, 4)
    bottom[1].reshape(2)
    with pytest.raises(LayerError, match="batch size changed"):
        layer.backward(top, [True, False], bottom)


def test_kernels_validate_their_arguments():
    """The C++ entry points check everything themselves (no out-of-bounds access)."""
    f = np.float32
    top, x = np.zeros((3, 5), f), np.ones((3, 4), f)
    labels, v = np.array([0, 1, 2], f), np.zeros(3, f)
    with pytest.raises(ValueError, match="label 1 is 5"):
        _C.margin_forward(top, x, np.array([0, 5, 2], f), 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(ValueError, match="label 2 is -1"):
        _C.margin_forward(top, x, np.array([0, 1, -1], f), 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(ValueError, match=r"labels: expected shape \(3,\), got \(2,\)"):
        _C.margin_forward(top, x, labels[:2].copy(), 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(ValueError, match="features have 2 rows"):
        _C.margin_forward(top, x[:2].copy(), labels, 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(TypeError, match="float32"):
        _C.margin_forward(top, x.astype(np.float64), labels, 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.margin_forward(top, np.ones((4, 3), f).T, labels, 1.0, 3, v, v.copy(), v.copy())
    with pytest.raises(ValueError, match="margin type"):
        _C.margin_forward(top, x, labels, 1.0, 4, v, v.copy(), v.copy())
    w = np.ones((5, 4), f)
    with pytest.raises(ValueError, match=r"bottom_diff: expected shape \(3, 4\)"):
        _C.margin_backward(np.zeros((3, 3), f), top, x, w, labels, v, v, 1.0, 3)
    with pytest.raises(ValueError, match="weight has 4 rows"):
        _C.margin_backward(np.zeros((3, 4), f), top, x, w[:4].copy(), labels, v, v, 1.0, 3)
    with pytest.raises(ValueError, match="label 0 is 7"):
        _C.margin_triplet_replace(w, x, np.array([7, 0, 0], f), 1, 0)
    with pytest.raises(ValueError, match="features have 3 columns"):
        _C.margin_triplet_replace(w, x[:, :3].copy(), labels, 1, 0)
    with pytest.raises(ValueError, match="label 0 is nan"):
        _C.margin_semihard_mask(np.zeros((3, 4), f), top, v, np.array([np.nan, 0, 0], f), 1)
    w[2] = 0
    with pytest.raises(ValueError, match="weight row 2 has zero norm"):
        _C.margin_normalize_rows(w)
    assert (w[0] == 1).all()  # unchanged on error


@pytest.mark.parametrize("carried", [0.0, 0.5])
def test_weight_diff_accumulates_in_blocks(monkeypatch, carried):
    """Both weight-gradient paths (a zero diff written directly; a non-zero diff added
    block by block) give diff + top_diff^T . X."""
    import pyfacelayers.layers._products as mod
    monkeypatch.setattr(mod, "CHUNK_BYTES", 3 * 4 * 8)  # 3 weight rows per block
    rng = np.random.default_rng(4)
    layer, bottom, top = make_layer((6, 4), 11, np.float64, type="TRIPLE", base=2)
    layer.blobs[0].data[...] = rng.normal(size=(11, 4))
    bottom[0].data[...] = rng.normal(size=(6, 4))
    bottom[1].data[...] = rng.integers(0, 11, size=6)
    layer.blobs[0].diff[...] = carried
    layer.forward(bottom, top)
    top[0].diff[...] = rng.normal(size=(6, 11))
    layer.backward(top, [True, False], bottom)
    expected = carried + top[0].diff.T @ bottom[0].data
    assert_close(layer.blobs[0].diff, expected, 1e-14, "weight diff")
