"""The simple fork layers (Normalize, NormL2, InnerProduct/Scale extensions, Flip,
Parameter, Reduction, Axpy, ChannelScale, DepthwiseConvolution) against the forks' own
CPU code (../shared/fixtures/family-ref, with PYFACELAYERS_FORK_SEMANTICS=cpu), and the
default GPU semantics against float64 references of the spec."""

import numpy as np
import pytest

from family_ref import Case, case_names, check_case, replay
from conftest import assert_close

SIMPLE_TYPES = ("Normalize", "NormL2", "InnerProduct", "Scale", "Flip", "Parameter",
                "Reduction", "Axpy", "ChannelScale", "DepthwiseConvolution")
CASES = [c for t in SIMPLE_TYPES for c in case_names(t)]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_cpu_semantics_match_the_fixture(case, dtype):
    skip = ()
    if case == "Parameter__blob_filler_gaussian_unitball":
        skip = ("step0_data__p", "step0_param__P__0")  # Caffe's RNG: not portable
    check_case(case, dtype, skip=skip)


# -- the default (GPU) semantics ------------------------------------------------------

# Types and cases whose CPU and GPU code compute the same thing: the default must also
# reproduce the fixture.
SAME_ON_BOTH = [c for c in CASES if c.split("__")[0] in
                ("NormL2", "Scale", "Flip", "Parameter", "Reduction", "Axpy",
                 "DepthwiseConvolution")
                or (c.startswith("ChannelScale") and "global" not in c)
                or (c.startswith("Normalize") and "l1" in c)
                or c.startswith("InnerProduct__weight_bottom")]
# (this one feeds an L2 Normalize, whose epsilon differs)
SAME_ON_BOTH = [c for c in SAME_ON_BOTH if c != "Parameter__blob_explicit_into_normalize"]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", SAME_ON_BOTH or ["<family-ref absent>"])
def test_default_semantics_match_where_cpu_and_gpu_agree(case, dtype):
    skip = ()
    if case == "Parameter__blob_filler_gaussian_unitball":
        skip = ("step0_data__p", "step0_param__P__0")
    check_case(case, dtype, semantics="gpu", skip=skip)


def normalize_l2_gpu(x, dy, dnorm, bp_norm, fix_gradient=False, poison=None):
    """float64 reference of the GPU Normalize (L2): epsilon 1e-12 inside the root."""
    n, c = x.shape[:2]
    xs = x.reshape(n, c, -1)
    norm = np.sqrt((xs * xs).sum(axis=1, keepdims=True) + 1e-12)
    y = xs / norm
    a = (y * dy.reshape(xs.shape)).sum(axis=1, keepdims=True)
    dx = dy.reshape(xs.shape) - y * a
    if not fix_gradient:
        dx = dx / norm
    if bp_norm and dnorm is not None:
        dx = dx + dnorm.reshape(norm.shape) * y
    return y, norm, dx


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("Normalize")
                                  and "l1" not in c] or ["<family-ref absent>"])
def test_normalize_gpu_semantics_against_the_spec(case):
    c = Case(case, "f64")
    ours = replay(c, semantics="gpu")
    x = c.arrays["step0_in__x"].astype(np.float64)
    dy = c.arrays["step0_topdiff__y"]
    dnorm = c.arrays.get("step0_topdiff__norm")
    bp_norm = "bp_norm: true" in c.meta["layer_prototxt"] and dnorm is not None
    y, norm, dx = normalize_l2_gpu(x, dy, dnorm, bp_norm)
    assert_close(ours["step0_data__y"].reshape(y.shape), y, 1e-10, "y")
    assert_close(ours["step0_diff__x"].reshape(dx.shape), dx, 1e-10, "dx")
    if "step0_data__norm" in ours:
        assert_close(ours["step0_data__norm"].reshape(norm.shape), norm, 1e-10, "norm")


def test_normalize_zero_row_cpu_and_gpu_differ_as_documented():
    from simple_layer_utils import make, run
    from pyfacelayers import fork_semantics
    x = np.zeros((1, 3))
    for setting, norm in (("cpu", 1e-3), ("gpu", 1e-6)):
        with fork_semantics.using(setting):
            layer = make("Normalize")
            _, (y, n) = run(layer, [x], num_top=2)
        assert np.allclose(n.data.ravel(), norm, rtol=1e-9)
        assert not y.data.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_fix_gradient_is_gpu_only(dtype):
    from simple_layer_utils import make, run
    from pyfacelayers import fork_semantics
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    results = {}
    for setting in ("cpu", "gpu"):
        with fork_semantics.using(setting):
            layer = make("Normalize", "normalize_param { fix_gradient: true }", dtype=dtype)
            (bottom,), (top,) = run(layer, [x])
        top.diff[...] = dy.reshape(top.shape)
        layer.backward([top], [True], [bottom])
        results[setting] = bottom.diff.copy()
    y, norm, plain = normalize_l2_gpu(x, dy, None, False, fix_gradient=True)
    tol = {np.float32: 1e-5, np.float64: 1e-10}[dtype]
    assert_close(results["gpu"], plain.reshape(x.shape), tol, "GPU fix_gradient")
    _, _, divided = normalize_l2_gpu(x, dy, None, False)
    # (the CPU epsilon is 1e-6, the reference's 1e-12: close, not equal)
    assert_close(results["cpu"], divided.reshape(x.shape), 1e-5, "CPU ignores fix_gradient")


@pytest.mark.parametrize("case", [c for c in CASES if c.startswith("InnerProduct__normalize")]
                         or ["<family-ref absent>"])
def test_inner_product_normalize_gpu_semantics_against_the_spec(case):
    c = Case(case, "f64")
    ours = replay(c, semantics="gpu")
    w = c.arrays["param_init__fc__0"].astype(np.float64)
    w_hat = w * (np.sum(w * w, axis=1, keepdims=True) + 1e-12) ** -0.5
    assert_close(ours["step0_param__fc__0"], w_hat, 1e-10, "normalised weight")
    x = c.arrays["step0_in__x"].reshape(len(c.arrays["step0_in__x"]), -1)
    y = x @ w_hat.T
    if "param_init__fc__1" in c.arrays:
        y = y + c.arrays["param_init__fc__1"]
    assert_close(ours["step0_data__y"].reshape(y.shape), y, 1e-10, "y")


def test_channel_scale_gpu_leaves_the_scale_diff_alone_when_not_propagated():
    from simple_layer_utils import make, run
    from pyfacelayers import fork_semantics
    rng = np.random.default_rng(5)
    x, s = rng.standard_normal((3, 4)), rng.uniform(1, 2, (3,))
    for setting, expected in (("gpu", 7.0), ("cpu", 0.0)):
        with fork_semantics.using(setting):
            layer = make("ChannelScale")
            (bx, bs), (top,) = run(layer, [x, s])
        top.diff[...] = 1
        bs.diff[...] = 7.0
        layer.backward([top], [True, False], [bx, bs])
        assert np.all(bs.diff == expected), setting
        assert_close(bx.diff, np.ones((3, 4)) * s[:, None], 1e-12, "dx")


def test_channel_scale_global_gpu_running_mean():
    from simple_layer_utils import make, run
    from pyfacelayers import fork_semantics
    from pyfacelayers.proto import caffe_pb2
    rng = np.random.default_rng(6)
    x, s = rng.standard_normal((3, 4)), rng.uniform(1, 2, (3,))
    text = "channel_scale_param { global_scale: true max_global_scale: 100 }"
    with fork_semantics.using("gpu"):
        layer = make("ChannelScale", text)
        (bx, bs), (top, g) = run(layer, [x, s], num_top=2)
    first = np.abs(s).mean()
    assert np.isclose(g.data[0], first)
    assert_close(top.data, first * x, 1e-12, "top")
    bs.data[...] = s * 3
    layer.forward([bx, bs], [top, g])
    assert np.isclose(g.data[0], 0.99 * first + 0.01 * np.abs(3 * s).mean())
    with fork_semantics.using("gpu"):
        test_layer = make("ChannelScale", text, phase=caffe_pb2.TEST)
        _, (t_top, t_g) = run(test_layer, [x, s], num_top=2)
    assert t_g.data[0] == -1  # TEST uses the blob as it is (no update, no clamp)


@pytest.mark.parametrize("setting,dx_expected", [("gpu", True), ("cpu", False)])
def test_axpy_dx_flag(setting, dx_expected):
    """dx follows x's propagate_down on the GPU, a's on the CPU (an index bug)."""
    from simple_layer_utils import make, run
    from pyfacelayers import fork_semantics
    rng = np.random.default_rng(7)
    a, x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3, 2, 2)), \
        rng.standard_normal((2, 3, 2, 2))
    with fork_semantics.using(setting):
        layer = make("Axpy")
        bottoms, (top,) = run(layer, [a, x, y])
    top.diff[...] = 1
    bottoms[1].diff[...] = 5
    layer.backward([top], [False, True, True], bottoms)
    expected = np.broadcast_to(a[:, :, None, None], x.shape) if dx_expected else 5
    assert np.all(bottoms[1].diff == expected)


# -- fillers, Parameter, bad parameters ------------------------------------------------

def test_parameter_gaussian_unitball_rows_are_unit():
    c = Case("Parameter__blob_filler_gaussian_unitball", "f64")
    ours = replay(c)
    rows = ours["step0_param__P__0"].reshape(c.arrays["step0_param__P__0"].shape[0], -1)
    expected = c.arrays["step0_param__P__0"].reshape(rows.shape[0], -1)
    assert_close(np.linalg.norm(rows, axis=1), np.linalg.norm(expected, axis=1), 1e-10, "norms")
    assert_close(ours["step0_data__p"], ours["step0_param__P__0"], 0, "top shares the blob")


def test_fillers_of_the_fork():
    from pyfacelayers.fillers import fill
    from pyfacelayers.proto import caffe_pb2
    rng = np.random.default_rng(0)
    unit = fill(caffe_pb2.FillerParameter(type="gaussian_unitball"), (6, 4, 2), np.float64, rng)
    assert np.allclose(np.linalg.norm(unit.reshape(6, -1), axis=1), 1)
    eye = fill(caffe_pb2.FillerParameter(type="identity"), (3, 3), np.float32, rng)
    assert np.array_equal(eye, np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="identity filler"):
        fill(caffe_pb2.FillerParameter(type="identity"), (3, 4), np.float32, rng)
    draws = fill(caffe_pb2.FillerParameter(type="msra", alpha=1.0), (400, 50), np.float64, rng)
    assert abs(draws.std() - np.sqrt(2 / 50 / 2)) < 0.01  # std = sqrt(2/n/(1+alpha^2))


def test_parameter_layer_zero_by_default_and_its_gradient_is_the_top_diff():
    from simple_layer_utils import make, run
    layer = make("Parameter", "parameter_param { shape { dim: 2 dim: 3 } }")
    _, (top,) = run(layer, [])
    assert top.shape == (2, 3) and not top.data.any()
    top.diff[...] = 4.0
    assert np.all(layer.blobs[0].diff == 4.0)
    layer.blobs[0].data[...] = 2.0
    assert np.all(top.data == 2.0)


BAD = [
    ("Normalize", 'normalize_param { normalize_type: "L3" }', [(2, 3)], 1, "normalize_type"),
    ("Normalize", "", [(1, 2, 3, 4, 5)], 1, "at most 4"),
    ("Normalize", "", [(2, 3), (2, 3)], 1, "bottom"),
    ("NormL2", "", [(2, 3)], 2, "top"),
    ("Flip", "", [(1, 2, 3, 4, 5)], 1, "at most 4"),
    ("ChannelScale", "", [(2, 3), (3,)], 1, "bottom\\[1\\]"),
    ("ChannelScale", "", [(2, 3)], 1, "bottom"),
    ("ChannelScale", "channel_scale_param { global_scale: true } param { lr_mult: 1 }",
     [(2, 3), (2,)], 1, "lr_mult 0"),
    ("ChannelScale", "", [(2, 3), (2,)], 2, "global_scale"),
    ("Axpy", "", [(2, 3), (2, 3, 2, 2), (2, 3, 2, 1)], 1, "one shape"),
    ("Axpy", "", [(2, 4), (2, 3, 2, 2), (2, 3, 2, 2)], 1, "a must be"),
    ("Reduction", "reduction_param { axis: 3 }", [(2, 3)], 1, "axis 3"),
    ("Parameter", "", [], 1, "shape"),
    ("InnerProduct", "inner_product_param { num_output: 4 }", [(2, 3), (4, 3)], 1,
     "bias_term must be false"),
    ("InnerProduct", "inner_product_param { num_output: 4 bias_term: true }",
     [(2, 3), (4, 3), (4,)], 1, "bias"),
    ("InnerProduct", "inner_product_param { bias_term: false }", [(2, 3), (4, 2)], 1,
     "weight bottom"),
    ("Scale", "scale_param { min_value: 2 max_value: 1 }", [(2, 3)], 1, "min_value"),
    ("DepthwiseConvolution", "convolution_param { num_output: 4 kernel_size: 1 group: 2 }",
     [(1, 4, 3, 3)], 1, "group 2"),
]


@pytest.mark.parametrize("type_name,text,shapes,num_top,message", BAD,
                         ids=["%s-%d" % (b[0], i) for i, b in enumerate(BAD)])
def test_bad_parameters_name_the_layer(type_name, text, shapes, num_top, message):
    from simple_layer_utils import make, run
    from pyfacelayers.errors import LayerError
    with pytest.raises(LayerError, match=message) as info:
        run(make(type_name, text), [np.ones(s) for s in shapes], num_top=num_top)
    assert "my_%s" % type_name.lower() in str(info.value)


# -- PYFACELAYERS_FORK_SEMANTICS -----------------------------------------------------

def test_fork_semantics_environment(monkeypatch):
    from pyfacelayers import fork_semantics
    from simple_layer_utils import make, run
    monkeypatch.delenv(fork_semantics.ENV_VAR, raising=False)
    assert fork_semantics.mode("Normalize") == "gpu"
    monkeypatch.setenv(fork_semantics.ENV_VAR, "gpu, Normalize=cpu")
    assert fork_semantics.mode("Normalize") == "cpu"
    assert fork_semantics.mode("InnerProduct") == "gpu"
    layer = make("Normalize")
    _, (_, norm) = run(layer, [np.zeros((1, 2))], num_top=2)
    assert layer.semantics == "cpu" and np.isclose(norm.data.ravel()[0], 1e-3)
    with fork_semantics.using("gpu"):
        assert fork_semantics.mode("Normalize") == "gpu"
    monkeypatch.setenv(fork_semantics.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="PYFACELAYERS_FORK_SEMANTICS.*'fast'"):
        fork_semantics.mode()


def test_per_layer_semantics_attribute():
    from simple_layer_utils import make, run
    from pyfacelayers.errors import LayerError
    layer = make("Normalize")
    layer.semantics = "cpu"
    _, (_, norm) = run(layer, [np.zeros((1, 2))], num_top=2)
    assert np.isclose(norm.data.ravel()[0], 1e-3)
    bad = make("Normalize")
    bad.semantics = "tpu"
    with pytest.raises(LayerError, match="my_normalize.*'tpu'"):
        run(bad, [np.zeros((1, 2))])
