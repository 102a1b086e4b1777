"""The margin-family layers (LabelSpecificAdd, LabelSpecificRescale, LabelSpecificMargin,
CosinAddm, CombinedMargin, AdaCosAddmScale, GlobalLSEMargin, FocalLoss and the Accuracy /
SoftmaxWithLoss extensions) against the golden data made by the forks' own CPU code
(``../shared/fixtures/family-ref/layers``), with ``PYFACELAYERS_FORK_SEMANTICS=cpu``; the
default GPU semantics against float64 references of the spec written here; edge rows,
TRAIN/TEST, stateful steps, snapshots of the counters, and the errors.
"""

import math
import os

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import assert_close
from family_ref import case_names, check_case

import pyfacelayers as caffe
from pyfacelayers.backend import to_numpy
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

TOL = {"float32": 1e-5, "float64": 1e-10}
DTYPES = {"float32": np.float32, "float64": np.float64}
MY_TYPES = ("LabelSpecificAdd", "LabelSpecificRescale", "LabelSpecificMargin", "CosinAddm",
            "CombinedMargin", "AdaCosAddmScale", "Accuracy", "SoftmaxWithLoss", "FocalLoss")


CASES = [c for t in MY_TYPES for c in case_names(t)]


def _same(actual, expected, tol, what):
    actual = to_numpy(actual).astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64).reshape(actual.shape)
    bad_a, bad_e = ~np.isfinite(actual), ~np.isfinite(expected)
    assert np.array_equal(bad_a, bad_e), "%s: NaN/inf positions differ" % what
    assert np.array_equal(actual[bad_a], expected[bad_e], equal_nan=True), what
    assert_close(actual[~bad_a], expected[~bad_e], tol, what)


@pytest.mark.parametrize("dt", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_fixture_cpu_semantics(case, dt):
    """Every top, bottom diff, param and loss of each step, with the CPU semantics (the
    fixtures' code path), replayed by the shared harness (tests/family_ref.py)."""
    check_case(case, dt)


# -- direct layer runs ------------------------------------------------------------------

def make_layer(text, bottoms, dtype=np.float64, phase=caffe.TRAIN, semantics=None,
               tops=None, in_place=False, xp=None):
    """A layer built from prototxt text, set up on blobs holding ``bottoms``."""
    param = caffe_pb2.LayerParameter()
    text_format.Merge(text, param)
    layer = create_layer(param, phase=phase, dtype=dtype)
    if semantics is not None:
        layer.semantics = semantics
    bottom = []
    for a in bottoms:
        b = Blob(np.shape(a), dtype=dtype, xp=xp)
        b.data = np.asarray(a, dtype=dtype)
        bottom.append(b)
    n_top = tops if tops is not None else max(1, len(param.top))
    top = [bottom[0] if (in_place and j == 0) else Blob((), dtype=dtype, xp=xp)
           for j in range(n_top)]
    layer.setup(bottom, top)
    return layer, bottom, top


def run(layer, bottom, top, dy=None):
    """Forward, then (with ``dy``) backward; returns (top 0, bottom 0 diff) as numpy."""
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    y = to_numpy(top[0].data).copy()
    if dy is None:
        return y, None
    top[0].diff = np.asarray(dy, dtype=top[0].dtype)
    layer.backward(top, [True] + [False] * (len(bottom) - 1), bottom)
    return y, to_numpy(bottom[0].diff).copy()


def cosines(rows, cols, seed, low=-0.95, high=0.95):
    return np.random.default_rng(seed).uniform(low, high, (rows, cols))


def f32(v):
    return float(np.float32(v))


# float64 references of the spec's GPU semantics ----------------------------------------

def ref_cosin_addm_gpu(x, labels, m, dy, phase_train=True, in_place=False):
    y, dx = x.copy(), dy.copy()
    if not phase_train:
        return y, dx
    for i, g in enumerate(labels.astype(int)):
        c = x[i, g]
        fallback = False
        if c < 1:
            if c > math.cos(math.pi - m):
                y[i, g] = math.cos(math.acos(c) + m)
            else:
                y[i, g] = c - m * math.sin(m)
                fallback = True
        if not in_place and not fallback:
            with np.errstate(all="ignore"):
                dx[i, g] *= math.cos(m) + math.sin(m) * c / np.sqrt(1 - c * c)
    return y, dx


def ref_label_margin_gpu(x, labels, m_deg, dy, soft=False):
    y, dx = x.copy(), dy.copy()
    r = m_deg * math.pi / 180
    for i, g in enumerate(labels.astype(int)):
        c = x[i, g]
        cc = min(max(c, -1 + 1e-4), 1 - 1e-4)
        if soft:
            theta = math.acos(c)  # the forward: unclamped, the replaced angle not / m
            if m_deg * theta > math.pi - 1e-4:
                theta = math.pi - 1e-4
            y[i, g] = math.cos(m_deg * theta)
            theta_b = math.acos(cc)
            if m_deg * theta_b > math.pi - 1e-4:
                theta_b = math.pi - 1e-4
            k = m_deg * math.sin(m_deg * theta_b) / math.sqrt(1 - cc * cc)
        else:
            y[i, g] = cc * math.cos(r) - math.sqrt(1 - cc * cc) * math.sin(r)
            k = math.cos(r) + cc / math.sqrt(1 - cc * cc) * math.sin(r)
        dx[i, g] *= min(max(k, 0.0), 2.0)
    return y, dx


def ref_adacos_gpu(x, labels, m, s_old, dy):
    """One GPU forward/backward: (top, dx, new s_d)."""
    y, dx = ref_cosin_addm_gpu(x, labels, m, dy, phase_train=True)
    n, c = x.shape
    buf = x.reshape(-1).copy()
    buf[:n] = np.arccos(buf[:n])
    theta = np.abs(buf).sum() / (n * c)
    cos_med = math.cos(min(theta, math.pi / 4))
    mask = np.ones_like(x)
    mask[np.arange(n), labels.astype(int)] = 0
    s_d = math.log(np.exp(s_old * x * mask).sum() / n) / cos_med
    return s_d * y, s_d * dx, s_d


def ref_mean_shift(d, mu, rounds):
    done = 0
    while done < rounds:
        near = [v for v in d if abs(v - mu) < 0.1]
        if not near:
            if mu == np.mean(d):
                return float("nan")
            mu = float(np.mean(d))
            continue
        new = float(np.mean(near))
        moved, mu = abs(new - mu), new
        done += 1
        if moved < 0.001:
            break
    return mu


def ref_global_lse(x, labels, s, m, dy):
    """One TRAIN forward/backward of GlobalLSEMargin: (top, dx, s diff, new m, stats)."""
    n, c = x.shape
    t, lse, mn = np.zeros(n), np.zeros(n), np.zeros(n)
    for i, g in enumerate(labels.astype(int)):
        t[i] = x[i, g]
        mn[i] = max([-1.0] + [x[i, j] for j in range(c) if j != g])
        lse[i] = math.log(sum(math.exp(s * (x[i, j] - mn[i])) for j in range(c) if j != g)) / s \
            + mn[i]
    d = t - lse
    if m == 0:
        b = ref_mean_shift(d, d.mean(), 20)
        m = m if math.isnan(b) else b
    else:
        b = ref_mean_shift(d, m, 1)
        m = m if math.isnan(b) else 0.9 * m + 0.1 * b
    y = x.copy()
    if m > 0:
        y[np.arange(n), labels.astype(int)] -= m
    y *= s
    return y, s * dy, (dy * y).sum() / s, m, [s, t.mean(), lse.mean(), mn.mean(), m]


# GPU semantics (the default) against the references --------------------------------

@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_cosin_addm_gpu_semantics(dt, phase):
    dtype = DTYPES[dt]
    x = cosines(9, 6, 1)
    labels = np.arange(9) % 6
    # edge rows: theta + m > pi (fallback), c just below 1, c = 1 (unchanged, inf gradient)
    x[0, 0], x[1, 1], x[2, 2] = -0.95, 0.999, 1.0
    x = x.astype(dtype)
    dy = cosines(9, 6, 2).astype(dtype)
    layer, bottom, top = make_layer(
        'name: "arc" type: "CosinAddm" bottom: "x" bottom: "l" top: "y" '
        'cosin_add_m_param { m: 0.5 }', [x, labels], dtype, phase=phase)
    assert layer.semantics == "gpu"
    y, dx = run(layer, bottom, top, dy)
    ry, rdx = ref_cosin_addm_gpu(x.astype(float), labels, f32(0.5), dy.astype(float),
                                 phase == caffe.TRAIN)
    _same(y, ry, TOL[dt], "top")
    _same(dx, rdx, TOL[dt], "bottom diff")
    if phase == caffe.TRAIN:
        assert y[2, 2] == 1 and not np.isfinite(dx[2, 2])  # the GPU kernel's quirks


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_cosin_addm_gpu_in_place_has_no_margin_gradient(dt):
    dtype = DTYPES[dt]
    x = cosines(5, 4, 3).astype(dtype)
    labels = np.array([0, 1, 2, 3, 0])
    dy = cosines(5, 4, 4).astype(dtype)
    layer, bottom, top = make_layer('name: "arc" type: "CosinAddm"', [x, labels], dtype,
                                    in_place=True)
    y, dx = run(layer, bottom, top, dy)
    ry, rdx = ref_cosin_addm_gpu(x.astype(float), labels, 0.5, dy.astype(float), in_place=True)
    _same(y, ry, TOL[dt], "top")
    _same(dx, rdx, TOL[dt], "diff")
    # CPU semantics apply the factor in place too
    layer, bottom, top = make_layer('name: "arc" type: "CosinAddm"', [x, labels], dtype,
                                    in_place=True, semantics="cpu")
    _, dx_cpu = run(layer, bottom, top, dy)
    assert not np.allclose(dx_cpu, dy)


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("soft", [False, True])
def test_label_specific_margin_gpu_semantics(dt, soft):
    dtype = DTYPES[dt]
    x = cosines(7, 5, 5, -0.99, 0.99)
    x[0, 0], x[1, 1] = 0.99995, -0.99995  # outside the GPU clamp
    labels = np.array([0, 1, 2, 3, 4, 0, 1])
    x = x.astype(dtype)
    dy = cosines(7, 5, 6).astype(dtype)
    kind = "SOFT" if soft else "HARD"
    base = 2 if soft else 20
    text = ('name: "lsm" type: "LabelSpecificMargin" bottom: "x" bottom: "l" top: "y" '
            'top: "m" label_specific_margin_param { type: %s margin_base: %d gamma: 0 }'
            % (kind, base))
    layer, bottom, top = make_layer(text, [x, labels], dtype)
    y, dx = run(layer, bottom, top, dy)
    ry, rdx = ref_label_margin_gpu(x.astype(float), labels, base, dy.astype(float), soft)
    _same(y, ry, TOL[dt], "top")
    _same(dx, rdx, TOL[dt], "diff")
    assert float(top[1].data[0]) == base


def test_label_specific_margin_schedule_phases():
    """GPU: the schedule runs in TRAIN only; CPU: in every phase (TEST stays identity)."""
    x = cosines(4, 5, 7)
    labels = np.array([0, 1, 2, 3])
    text = ('name: "lsm" type: "LabelSpecificMargin" bottom: "x" bottom: "l" top: "y" top: "m" '
            'label_specific_margin_param { margin_base: 0 gamma: 1 margin_max: 2 iteration: 1 }')
    for semantics, phase, expected in (("gpu", caffe.TRAIN, [1, 2, 2]),
                                       ("gpu", caffe.TEST, [0, 0, 0]),
                                       ("cpu", caffe.TEST, [1, 2, 2])):
        layer, bottom, top = make_layer(text, [x, labels], phase=phase, semantics=semantics)
        seen = []
        for _ in range(3):
            y, _ = run(layer, bottom, top)
            seen.append(float(top[1].data[0]))
            if phase == caffe.TEST:
                assert np.array_equal(y, x)
        assert seen == expected, (semantics, phase)


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_adacos_gpu_semantics_three_steps(dt):
    dtype = DTYPES[dt]
    layer, bottom, top = make_layer(
        'name: "ada" type: "AdaCosAddmScale" bottom: "x" bottom: "l" top: "y" '
        'adacos_add_m_scale_param { m: 0.5 num_classes: 100 }',
        [np.zeros((6, 5)), np.zeros(6)], dtype)
    s = float(dtype(math.sqrt(2) * math.log(99)))
    for step in range(3):
        # high cosines: the mean angle is below pi/4, where CPU and GPU estimates differ
        x = cosines(6, 5, 10 + step, 0.3 if step else 0.82, 0.98).astype(dtype)
        labels = (np.arange(6) + step) % 5
        dy = cosines(6, 5, 20 + step).astype(dtype)
        bottom[0].data = x  # host values, on either device
        bottom[1].data = labels
        y, dx = run(layer, bottom, top, dy)
        ry, rdx, s = ref_adacos_gpu(x.astype(float), labels, f32(0.5), s, dy.astype(float))
        _same(y, ry, TOL[dt] * 10 if dt == "float32" else TOL[dt], "top step %d" % step)
        _same(dx, rdx, TOL[dt] * 10 if dt == "float32" else TOL[dt], "diff step %d" % step)
        assert math.isclose(float(layer.s_d), s, rel_tol=1e-5 if dt == "float32" else 1e-12)


def _global_lse_layer(dtype, phase=caffe.TRAIN, extra=""):
    return make_layer('name: "glse" type: "GlobalLSEMargin" bottom: "x" bottom: "l" top: "y" '
                      'top: "stats" ' + extra, [np.zeros((8, 6)), np.zeros(8)], dtype,
                      phase=phase)


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_global_lse_margin_three_steps(dt):
    dtype = DTYPES[dt]
    layer, bottom, top = _global_lse_layer(dtype)
    assert float(layer.blobs[0].data[0]) == 30 and float(layer.blobs[1].data[0]) == 0
    assert [p.lr_mult for p in layer.param.param] == [1, 0]
    s, m = 30.0, 0.0
    for step in range(3):
        x = cosines(8, 6, 30 + step, -0.5, 0.5)
        labels = (np.arange(8) * 5 + step) % 6
        x[np.arange(8), labels] += 0.4  # targets ahead: a positive margin
        x = x.astype(dtype)
        dy = cosines(8, 6, 40 + step).astype(dtype)
        bottom[0].data = x  # host values, on either device
        bottom[1].data = labels
        layer.blobs[0].diff[...] = 123  # overwritten, not accumulated
        y, dx = run(layer, bottom, top, dy)
        ry, rdx, ds, m, stats = ref_global_lse(x.astype(float), labels, s, m, dy.astype(float))
        tol = 1e-4 if dt == "float32" else 1e-10
        _same(y, ry, tol, "top step %d" % step)
        _same(dx, rdx, tol, "diff step %d" % step)
        _same(layer.blobs[0].diff, [ds], tol, "scale diff step %d" % step)
        _same(top[1].data, stats, tol, "stats step %d" % step)
        assert m > 0


def test_global_lse_margin_test_phase_leaves_state():
    """Hazard bounded: TEST computes with the updated margin but writes no blob."""
    layer, bottom, top = _global_lse_layer(np.float64, phase=caffe.TEST,
                                           extra="scale_param { min_value: 40 }")
    x = cosines(8, 6, 50)
    labels = np.arange(8) % 6
    x[np.arange(8), labels] += 0.4
    bottom[0].data = x  # host values, on either device
    bottom[1].data = labels
    y, _ = run(layer, bottom, top)
    ry, _, _, m, _ = ref_global_lse(x, labels, 40.0, 0.0, np.zeros_like(x))
    _same(y, ry, 1e-10, "TEST top")
    assert float(layer.blobs[0].data[0]) == 30 and float(layer.blobs[1].data[0]) == 0


def test_global_lse_mean_shift_hang_is_bounded(caplog):
    from pyfacelayers.layers.margin_family import mean_shift
    d = np.array([-1.0, 1.0], dtype=np.float64)  # no gap within 0.1 of their mean 0
    mu, hung = mean_shift(d, 0.5, 20)
    assert hung and math.isnan(mu)
    layer, bottom, top = make_layer('name: "glse" type: "GlobalLSEMargin" bottom: "x" '
                                    'bottom: "l" top: "y"', [np.zeros((2, 3)), np.zeros(2)])
    bottom[0].data = [[0.9, -0.9, -0.9], [-0.9, -0.9, -0.9]]
    bottom[1].data = [0, 0]
    run(layer, bottom, top)
    assert float(layer.blobs[1].data[0]) == 0
    assert "loop forever" in caplog.text


# phases, state, snapshots --------------------------------------------------------------

def test_label_specific_add_train_test_and_counter():
    x = cosines(5, 4, 60, 0.4, 0.9)
    labels = np.array([0, 1, 2, 3, 0])
    text = ('name: "am" type: "LabelSpecificAdd" bottom: "x" bottom: "l" top: "y" top: "b" '
            'label_specific_add_param { bias_base: 0 bias_gamma: -0.1 bias_min: -0.35 '
            'bias_max: 0 iteration: 2 transform_test: true }')
    layer, bottom, top = make_layer(text, [x, labels])
    biases = []
    for _ in range(3):
        y, _ = run(layer, bottom, top)
        biases.append(float(top[1].data[0]))
        expected = x.copy()
        hit = expected[np.arange(5), labels] > -biases[-1]
        expected[np.arange(5)[hit], labels[hit]] += biases[-1]
        np.testing.assert_array_equal(y, expected)
    np.testing.assert_allclose(biases, [-0.2, -0.3, -0.35], rtol=1e-6)
    assert layer.get_state() == {"iteration": 5}
    layer.set_state({"iteration": 2})
    run(layer, bottom, top)
    assert math.isclose(float(top[1].data[0]), -0.2, rel_tol=1e-6)
    test_layer, bottom, top = make_layer(text, [x, labels], phase=caffe.TEST)
    y, _ = run(test_layer, bottom, top)
    np.testing.assert_array_equal(y, x)  # TEST: identity despite transform_test
    assert test_layer.get_state() == {"iteration": 2}


ANNEALED_NET = """
name: "annealed"
layer { name: "data" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "margin" type: "LabelSpecificAdd" bottom: "fc" bottom: "label" top: "fc_margin"
        top: "bias" label_specific_add_param { bias_base: 0 bias_gamma: -0.01 bias_min: -0.4
        bias_max: 0 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc_margin" bottom: "label" top: "loss" }
"""


def test_label_specific_add_counter_survives_snapshot(tmp_path):
    from pyfacelayers.solvers import SGDSolver
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(ANNEALED_NET)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text('net: "%s" base_lr: 0.01 lr_policy: "fixed" max_iter: 10 '
                           'snapshot_prefix: "%s" random_seed: 1\n'
                           % (net_path, tmp_path / "snap"))

    def feed(solver):
        solver.net.blobs["x"].data = np.linspace(-1, 1, 24).reshape(4, 6)
        solver.net.blobs["label"].data = [0, 1, 2, 3]

    solver = SGDSolver(str(solver_path))
    feed(solver)
    solver.step(3)
    solver.snapshot()
    solver.step(2)
    after5 = float(solver.net.blobs["bias"].data[0])
    resumed = SGDSolver(str(solver_path))
    feed(resumed)
    resumed.restore(str(tmp_path / "snap_iter_3.solverstate"))
    assert resumed.net.layer_dict["margin"].get_state() == {"iteration": 3}
    resumed.step(2)
    assert float(resumed.net.blobs["bias"].data[0]) == after5
    assert math.isclose(after5, -0.04, rel_tol=1e-5)


# bad parameters and inputs -----------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('type: "CosinAddm" cosin_add_m_param { m: 4 }', "outside [0, pi)"),
    ('type: "CosinAddm" cosin_add_m_param { m: -0.1 }', "outside [0, pi)"),
    ('type: "CombinedMargin" combined_margin_param { m1: 0 }', "m1"),
    ('type: "CombinedMargin" combined_margin_param { m2: 5 }', "m2"),
    ('type: "AdaCosAddmScale" adacos_add_m_scale_param { num_classes: 2 }', "num_classes"),
    ('type: "LabelSpecificAdd" label_specific_add_param { bias: -2.5 }', "outside (-2, 2)"),
    ('type: "LabelSpecificAdd" label_specific_add_param { bias_base: 0 bias_min: 0.1 '
     'bias_max: 0 }', "bias_min"),
    ('type: "LabelSpecificMargin" label_specific_margin_param { auto_tune: true }',
     "auto_tune"),
    ('type: "FocalLoss" focal_loss_param { gamma: -1 }', "gamma"),
    ('type: "FocalLoss" focal_loss_param { type: LINEAR }', "LINEAR"),
    ('type: "SoftmaxWithLoss" softmax_param { normalize_type: "L2" }', "normalize_type"),
    ('type: "SoftmaxWithLoss" softmax_param { label_smooth_factor: 0.1 }',
     "label_smooth_factor"),
])
def test_bad_parameters_name_the_layer(text, message):
    with pytest.raises(LayerError) as info:
        make_layer('name: "bad" ' + text, [cosines(3, 4, 1), [0, 1, 2]])
    assert '"bad"' in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("layer_type", ["LabelSpecificAdd", "CosinAddm", "CombinedMargin",
                                        "AdaCosAddmScale", "LabelSpecificMargin",
                                        "LabelSpecificRescale", "GlobalLSEMargin"])
def test_labels_and_bottom_counts_are_checked(layer_type):
    text = 'name: "bad" type: "%s"' % layer_type
    with pytest.raises(LayerError, match="bottom"):
        make_layer(text, [cosines(3, 4, 1)])
    with pytest.raises(LayerError, match="bottom"):
        make_layer(text, [cosines(3, 4, 1), [0, 1, 2], [1, 1, 1], [0, 0, 0]])
    layer, bottom, top = make_layer(text, [cosines(3, 4, 1), [0, 1, 2]])
    for bad in ([0, 4, 1], [0, np.nan, 1]):
        bottom[1].data = bad
        with pytest.raises(LayerError, match='"bad".*label 1 is'):
            run(layer, bottom, top)
    with pytest.raises(LayerError, match="labels have 2 values"):
        make_layer(text, [cosines(3, 4, 1), [0, 1]])
    if layer_type not in ("CombinedMargin", "AdaCosAddmScale"):
        bottom[1].data = [0, -1, 1]
        with pytest.raises(LayerError, match="label 1 is -1"):
            run(layer, bottom, top)


def test_negative_labels_skip_rows_where_the_fork_skips_them():
    x = cosines(3, 4, 2)
    layer, bottom, top = make_layer('name: "cm" type: "CombinedMargin"', [x, [0, -1, 2]])
    y, _ = run(layer, bottom, top)
    np.testing.assert_array_equal(y[1], x[1])
    assert not np.array_equal(y[0], x[0])


def test_focal_loss_refuses_two_tops():
    with pytest.raises(LayerError, match="at most 1 top|takes 1 top"):
        make_layer('name: "fl" type: "FocalLoss"', [cosines(3, 4, 1), [0, 1, 2]], tops=2)


def test_semantics_follow_the_process_setting(monkeypatch):
    text = 'name: "arc" type: "CosinAddm"'
    monkeypatch.delenv("PYFACELAYERS_FORK_SEMANTICS", raising=False)
    assert make_layer(text, [cosines(2, 3, 1), [0, 1]])[0].semantics == "gpu"
    monkeypatch.setenv("PYFACELAYERS_FORK_SEMANTICS", "gpu,CosinAddm=cpu")
    assert make_layer(text, [cosines(2, 3, 1), [0, 1]])[0].semantics == "cpu"
    assert make_layer(text, [cosines(2, 3, 1), [0, 1]], semantics="gpu")[0].semantics == "gpu"
    with pytest.raises(LayerError, match="fork semantics"):
        make_layer(text, [cosines(2, 3, 1), [0, 1]], semantics="tpu")



# the documentation's commands -----------------------------------------------------------

def test_doc_example_runs(capsys):
    import re
    from conftest import ROOT
    with open(os.path.join(ROOT, "docs", "family-margins.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/family-margins.md", "exec"), {})
    assert "[-0.00010002] {'iteration': 3}" in capsys.readouterr().out


def test_bench_runs_at_a_tiny_size():
    import subprocess
    import sys
    from conftest import ROOT, child_env
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "margin_family.py"),
                          "--m", "4", "--k", "8", "--n", "10", "--repeat", "1"],
                         capture_output=True, text=True, env=child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("LabelSpecificAdd", "CosinAddm", "CombinedMargin"):
        assert "| %s |" % name in out.stdout


def test_global_lse_margin_per_row_scales():
    """3 bottoms: row i uses bottom[2][i] as its scale, which gets the gradient."""
    x = cosines(6, 5, 70, -0.02, 0.02)
    labels = np.arange(6) % 5
    x[np.arange(6), labels] += 0.6
    scales = np.linspace(10, 20, 6)
    dy = cosines(6, 5, 71)
    layer, bottom, top = make_layer(
        'name: "glse" type: "GlobalLSEMargin" bottom: "x" bottom: "l" bottom: "s" top: "y" '
        'top: "stats"', [x, labels, scales])
    assert [p.lr_mult for p in layer.param.param] == [0, 0]
    y, dx = run(layer, bottom, top, dy)
    gaps = []
    for i, g in enumerate(labels):
        others = [x[i, j] for j in range(5) if j != g]
        mn = max([-1.0] + others)
        lse = math.log(sum(math.exp(scales[i] * (v - mn)) for v in others)) / scales[i] + mn
        gaps.append(x[i, g] - lse)
    m = ref_mean_shift(np.array(gaps), np.mean(gaps), 20)
    assert m > 0
    ry = x.copy()
    ry[np.arange(6), labels] -= m
    ry *= scales[:, None]
    _same(y, ry, 1e-10, "top")
    _same(dx, scales[:, None] * dy, 1e-10, "dx")
    layer.backward(top, [True, False, True], bottom)
    _same(bottom[2].diff, (dy * ry).sum(axis=1) / scales, 1e-10, "scale diff")
    assert math.isclose(float(top[1].data[0]), scales.mean())


def test_label_specific_margin_third_bottom_gives_the_margin():
    """GPU semantics: m = bottom[2][0] (degrees); the CPU code takes 2 bottoms."""
    x = cosines(4, 5, 80)
    labels = np.array([0, 1, 2, 3])
    dy = cosines(4, 5, 81)
    text = ('name: "lsm" type: "LabelSpecificMargin" bottom: "x" bottom: "l" bottom: "m" '
            'top: "y" label_specific_margin_param { margin_base: 10 gamma: 0 }')
    layer, bottom, top = make_layer(text, [x, labels, [25.0]])
    y, dx = run(layer, bottom, top, dy)
    ry, rdx = ref_label_margin_gpu(x, labels, 25.0, dy)
    _same(y, ry, 1e-10, "top")
    _same(dx, rdx, 1e-10, "diff")
    with pytest.raises(LayerError, match="3rd bottom"):
        make_layer(text, [x, labels, [25.0]], semantics="cpu")


def test_fractional_labels_are_truncated_as_the_forks_int():
    x = cosines(2, 3, 90, 0.5, 0.9)
    layer, bottom, top = make_layer('name: "am" type: "LabelSpecificAdd" '
                                    'label_specific_add_param { bias: -0.35 }',
                                    [x, [-0.5, 2.9]])
    y, _ = run(layer, bottom, top)
    expected = x.copy()
    expected[0, 0] -= f32(0.35)
    expected[1, 2] -= f32(0.35)
    np.testing.assert_allclose(y, expected, rtol=1e-15)
