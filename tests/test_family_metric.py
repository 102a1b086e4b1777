"""NormFace's metric-learning layers: InnerDistance, GeneralContrastiveLoss,
GeneralTripletLoss (margin-family.md 3.9-3.11).

The forks' CPU option (PYFACELAYERS_FORK_SEMANTICS=cpu) against the family-ref fixtures
(made by the forks' own CPU code); the default (GPU) semantics against float64
references written here from the spec, loop by loop; state across steps; bad inputs.
"""

import numpy as np
import pytest

from conftest import assert_close
from family_ref import case_names, check_case

METRIC_TYPES = ("InnerDistance", "GeneralContrastiveLoss", "GeneralTripletLoss")
CASES = [c for t in METRIC_TYPES for c in case_names(t)]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_cpu_semantics_match_the_fixture(case, dtype):
    if case.startswith("<"):
        pytest.skip("../shared/fixtures/family-ref is not present")
    if "normalize_param" in case and not _has_filler("gaussian_unitball"):
        pytest.skip("the fork's gaussian_unitball filler is not registered yet")
    check_case(case, dtype)


def _has_filler(name):
    from pyfacelayers import fillers
    return name in fillers._FILLERS


# -- a one-layer net ------------------------------------------------------------------------

def _net(layer_text, shapes, dtype, semantics="gpu", xp=np):
    """A Net of Input layers (one per entry of ``shapes``) and the layer under test."""
    from pyfacelayers import fork_semantics
    from pyfacelayers.fileio.text import parse_text
    from pyfacelayers.net import Net
    from pyfacelayers.proto import caffe_pb2

    inputs = "".join('layer { name: "in_%s" type: "Input" top: "%s" input_param { shape { %s '
                     '} } }\n' % (name, name, " ".join("dim: %d" % s for s in shape))
                     for name, shape in shapes.items())
    param = parse_text("force_backward: true\n" + inputs + layer_text, caffe_pb2.NetParameter())
    with fork_semantics.using(semantics):
        net = Net(param, phase=caffe_pb2.TRAIN, dtype=dtype)
    if xp is not np:
        net.to_device(xp)
    return net


def _run(net, values, top_diffs=None, xp=np):
    """Set the inputs, Forward, seed the top diffs, Backward; returns the loss."""
    for name, value in values.items():
        net.blobs[name].data[...] = xp.asarray(value, dtype=net.blobs[name].data.dtype)
    net.clear_param_diffs()
    loss = net.forward_from_to()
    for name, value in (top_diffs or {}).items():
        net.blobs[name].diff[...] = xp.asarray(value, dtype=net.blobs[name].diff.dtype)
    net.backward_from_to()
    return loss


def _labels(rng, n, classes):
    labels = rng.integers(0, classes, n).astype(np.float64)
    labels[:2] = [0, classes - 1]
    return labels


f32 = lambda v: float(np.float32(v))  # noqa: E731 (a proto float as the layer reads it)


# -- float64 references written from the spec (margin-family.md 3.9-3.11) -----------------

def ref_inner_distance(x, w, dy, l1=False, normalize=False, semantics="gpu", labels=None):
    """(top, dx, dW, W after the in-place normalisation), every sum a loop."""
    x, w, dy = (np.array(a, np.float64) for a in (x, w, dy))
    m, k = x.shape
    n = w.shape[0]
    if normalize:
        for j in range(n):
            s = sum(w[j, q] * w[j, q] for q in range(k))
            w[j] = w[j] / np.sqrt(s + 1e-6) if semantics == "cpu" else w[j] * s ** -0.5
    sign = lambda g, v: g * (v > 0) - (v < 0)  # noqa: E731 (the forks' macro bug)
    top = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            top[i, j] = sum(abs(x[i, q] - w[j, q]) if l1 else (x[i, q] - w[j, q]) ** 2
                            for q in range(k))
    dx = np.zeros((m, k))
    dw = np.zeros((n, k))
    for i in range(m):
        for j in range(n):
            for q in range(k):
                diff = x[i, q] - w[j, q]
                dx[i, q] += sign(dy[i, j], diff) if l1 else dy[i, j] * 2 * diff
                if labels is None or int(labels[i]) == j:
                    dw[j, q] += sign(dy[i, j], -diff) if l1 else dy[i, j] * 2 * -diff
    return top, dx, dw, w


def ref_contrastive(d, labels, p, intra_mae=0.0, loss_weight=1.0):
    """(loss, top1, gradient, new intra_mae) of GeneralContrastiveLoss, row by row."""
    g = lambda name, default: f32(p.get(name, default))  # noqa: E731
    pm, pw, nw = g("positive_margin", 0), g("positive_weight", 1), g("negative_weight", 1)
    thresh, bound = g("positive_outlier_thresh", 4), g("positive_upper_bound", 1)
    nm = g("negative_margin", 1) + (intra_mae if p.get("add_intra_mae") else 0.0)
    n, c = d.shape
    e = np.zeros((n, c))
    pos_sum = neg_sum = 0.0
    max_neg = [0] * n
    max_pos = 0
    for i in range(n):
        y = int(labels[i])
        for j in range(c):
            if j == y:
                t = min(thresh, max(0.0, d[i, j] - pm))
                e[i, j] = t * pw
                pos_sum += t
                if p.get("max_positive_only") and e[i, j] < e[max_pos, int(labels[max_pos])]:
                    max_pos = i
            elif d[i, j] < nm:
                e[i, j] = (np.exp(-d[i, j]) if p.get("exp_negative_weight")
                           else max(0.0, nm - d[i, j])) * nw
                neg_sum += max(0.0, nm - d[i, j])
                if p.get("max_negative_only") and e[i, j] > e[i, max_neg[i]]:
                    max_neg[i] = j
        if p.get("positive_first") and d[i, y] > bound:
            e[i, [j for j in range(c) if j != y]] = 0
    for i in range(n):
        y = int(labels[i])
        for j in range(c):
            if p.get("max_positive_only") and j == y and i != max_pos:
                e[i, j] = 0
            if p.get("max_negative_only") and j != y and j != max_neg[i]:
                e[i, j] = 0
    new_mae = min(0.99 * intra_mae + 0.01 * pos_sum / n, g("max_negative_margin", 1.2))
    top1 = [pos_sum / n, neg_sum / n / (c - 1)] + ([new_mae] if p.get("add_intra_mae") else [])
    grad = np.zeros((n, c))
    total = 0.0
    for i in range(n):
        y = int(labels[i])
        if p.get("positive_first") and d[i, y] > bound:
            grad[i, y] = pw
            continue
        for j in range(c):
            if j == y:
                keep = not (p.get("max_positive_only") and i != max_pos)
                grad[i, j] = pw if (pm < d[i, j] < thresh and keep) else 0.0
            elif d[i, j] < nm and not (p.get("max_negative_only") and j != max_neg[i]):
                mag = (np.exp(-d[i, j]) if p.get("exp_negative_weight") else 1.0) * nw
                grad[i, j] = -mag
                total += mag
    if "normalize_negative" in p:
        r = abs(total) / g("normalize_negative", 0) / n
        if r > pw:
            for i in range(n):
                for j in range(c):
                    if j != int(labels[i]):
                        grad[i, j] /= r
    return np.abs(e).sum() / n, np.array(top1), grad * loss_weight / n, new_mae


def ref_triplet(d, labels, p, loss_weight=1.0):
    """(loss, top1, gradient) of GeneralTripletLoss, row by row."""
    g = lambda name, default: f32(p.get(name, default))  # noqa: E731
    margin, bound = g("margin", 0.2), g("positive_upper_bound", 1)
    pw, nw = g("positive_weight", 1), g("negative_weight", 1)
    center = p.get("add_center_loss", True)
    n, c = d.shape
    e = np.zeros((n, c))
    hardest = [-1] * n
    for i in range(n):
        y = int(labels[i])
        for j in range(c):
            if j != y:
                e[i, j] = max(0.0, d[i, y] + margin - d[i, j]) * nw
                if p.get("hardest_only") and e[i, j] > 0 and (
                        hardest[i] < 0 or e[i, j] > e[i, hardest[i]]):
                    hardest[i] = j
        if p.get("hardest_only") and hardest[i] >= 0:
            e[i, [j for j in range(c) if j not in (y, hardest[i])]] = 0
        if p.get("positive_first") and d[i, y] > bound:
            e[i, [j for j in range(c) if j != y]] = 0
    top1 = [sum(d[i, int(labels[i])] for i in range(n)) / n,
            sum(d[i, j] for i in range(n) for j in range(c) if j != int(labels[i])) / n / (c - 1)]
    grad = e.copy()
    for i in range(n):
        y = int(labels[i])
        if p.get("positive_first") and d[i, y] > bound:
            grad[i] = 0
            grad[i, y] = pw
            continue
        count = 0
        if p.get("hardest_only"):
            h = hardest[i]
            if h >= 0 and d[i, h] != 0:
                grad[i, h] = -nw
                count += 1
        else:
            for j in range(c):
                if j != y:
                    grad[i, j] = -nw if d[i, y] + margin > d[i, j] else 0.0
                    count += grad[i, j] != 0
        if center or count > 0:
            grad[i, y] = pw
    return np.abs(e).sum() / n, np.array(top1), grad * loss_weight / n


# -- the default (GPU) semantics against the references -------------------------------------

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def _param_text(message, params):
    fields = " ".join("%s: %s" % (k, str(v).lower() if isinstance(v, bool) else
                                  ('"%s"' % v if isinstance(v, str) else v))
                      for k, v in params.items())
    return "%s { %s }" % (message, fields)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", [
    dict(distance_type="L2", normalize=True),
    dict(distance_type="L2"),
    dict(distance_type="L1", normalize=True),
])
def test_inner_distance_own_centres_default_semantics(setting, dtype):
    rng = np.random.default_rng(5)
    m, k, n = 7, 6, 5
    x, w0, dy = rng.normal(size=(m, k)), rng.normal(size=(n, k)), rng.normal(size=(m, n))
    text = ('layer { name: "dist" type: "InnerDistance" bottom: "x" top: "d" %s }'
            % _param_text("inner_distance_param", dict(setting, num_output=n)))
    net = _net(text, {"x": (m, k)}, dtype)
    net.params["dist"][0].data[...] = w0
    _run(net, {"x": x.astype(dtype)}, {"d": dy.astype(dtype)})
    top, dx, dw, w = ref_inner_distance(x.astype(dtype), w0.astype(dtype), dy.astype(dtype),
                                        l1=setting["distance_type"] == "L1",
                                        normalize=setting.get("normalize", False))
    tol = TOL[dtype]
    assert_close(net.params["dist"][0].data, w, tol, "centres after the normalisation")
    assert_close(net.blobs["d"].data, top, tol, "distances")
    assert_close(net.blobs["x"].diff, dx, tol, "feature gradient")
    assert_close(net.params["dist"][0].diff, dw, tol, "centre gradient")


def test_inner_distance_normalize_cpu_and_gpu_semantics_differ_as_documented():
    """GPU: w (w.w)^-0.5, no epsilon (a zero centre turns NaN); CPU: w / sqrt(w.w + 1e-6)."""
    w0 = np.array([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]])
    text = ('layer { name: "dist" type: "InnerDistance" bottom: "x" top: "d" '
            'inner_distance_param { num_output: 3 normalize: true } }')
    results = {}
    for semantics in ("gpu", "cpu"):
        net = _net(text, {"x": (2, 2)}, np.float64, semantics)
        net.params["dist"][0].data[...] = w0
        with np.errstate(all="ignore"):
            _run(net, {"x": np.ones((2, 2))})
            _, _, _, expected = ref_inner_distance(np.ones((2, 2)), w0, np.zeros((2, 3)),
                                                   normalize=True, semantics=semantics)
        results[semantics] = net.params["dist"][0].data.copy()
        np.testing.assert_array_equal(np.isnan(results[semantics]), np.isnan(expected))
        assert_close(np.nan_to_num(results[semantics]), np.nan_to_num(expected), 1e-12, semantics)
    assert np.isnan(results["gpu"][1]).all() and (results["cpu"][1] == 0).all()
    assert results["gpu"][2, 0] == 1.0 and results["cpu"][2, 0] < 0.1  # 1e-4/sqrt(1e-6 + 1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("l1", [False, True])
def test_inner_distance_centres_and_labels_as_bottoms(l1, dtype):
    rng = np.random.default_rng(6)
    m, k, n = 8, 3, 4
    x, w, dy = rng.normal(size=(m, k)), rng.normal(size=(n, k)), rng.normal(size=(m, n))
    labels = _labels(rng, m, n)
    text = ('layer { name: "dist" type: "InnerDistance" bottom: "x" bottom: "w" bottom: "label" '
            'top: "d" inner_distance_param { distance_type: "%s" update_center_only: true } }'
            % ("L1" if l1 else "L2"))
    net = _net(text, {"x": (m, k), "w": (n, k), "label": (m,)}, dtype)
    net.blobs["w"].diff[...] = 777  # overwritten, not accumulated
    values = {"x": x.astype(dtype), "w": w.astype(dtype), "label": labels}
    for name, value in values.items():
        net.blobs[name].data[...] = value
    net.forward_from_to()
    net.blobs["d"].diff[...] = dy.astype(dtype)
    net.blobs["w"].diff[...] = 777
    net.backward_from_to()
    top, dx, dw, _ = ref_inner_distance(values["x"], values["w"], dy.astype(dtype), l1=l1,
                                        labels=labels)
    assert_close(net.blobs["d"].data, top, TOL[dtype], "distances")
    assert_close(net.blobs["x"].diff, dx, TOL[dtype], "feature gradient")
    assert_close(net.blobs["w"].diff, dw, TOL[dtype], "centre gradient (label columns only)")


CONTRASTIVE_SETTINGS = [
    dict(),
    dict(positive_margin=0.3, negative_margin=1.4, positive_weight=2, negative_weight=0.5),
    dict(max_negative_only=True, positive_outlier_thresh=1.0),
    dict(max_positive_only=True, exp_negative_weight=True, negative_margin=1.5),
    dict(positive_first=True, positive_upper_bound=0.8, normalize_negative=0.2),
    dict(add_intra_mae=True, max_negative_margin=0.5, normalize_negative=3),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", range(len(CONTRASTIVE_SETTINGS)))
def test_contrastive_against_the_spec_over_steps(setting, dtype):
    """Three Forward/Backward steps on one layer: intra_mae carries across them."""
    p = CONTRASTIVE_SETTINGS[setting]
    rng = np.random.default_rng(10 + setting)
    n, c = 9, 7
    text = ('layer { name: "L" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
            'top: "loss" top: "mean_distance" loss_weight: 0.5 loss_weight: 1 %s }'
            % _param_text("general_contrastive_loss_param", p))
    net = _net(text, {"d": (n, c), "label": (n,)}, dtype)
    intra = 0.0
    for step in range(3):
        d = rng.uniform(0, 2, size=(n, c)).astype(dtype).astype(np.float64)
        labels = _labels(rng, n, c)
        loss = _run(net, {"d": d, "label": labels})
        r_loss, r_top1, r_grad, intra = ref_contrastive(d, labels, p, intra, f32(0.5))
        tol = TOL[dtype]
        assert_close(net.blobs["loss"].data, r_loss, tol, "loss, step %d" % step)
        assert_close(net.blobs["mean_distance"].data, r_top1, tol, "top[1], step %d" % step)
        assert_close(net.blobs["d"].diff, r_grad, tol, "gradient, step %d" % step)
        assert loss == pytest.approx(f32(0.5) * r_loss + r_top1.sum(), rel=tol)
    layer = net.layers[-1]
    assert layer.get_state()["intra_mae"] == pytest.approx(intra, rel=TOL[dtype])


TRIPLET_SETTINGS = [
    dict(),
    dict(margin=0.8, hardest_only=True),
    dict(margin=0.5, add_center_loss=False, positive_weight=0.5, negative_weight=2),
    dict(positive_first=True, positive_upper_bound=0.9, hardest_only=True, add_center_loss=False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("setting", range(len(TRIPLET_SETTINGS)))
def test_triplet_against_the_spec(setting, dtype):
    p = TRIPLET_SETTINGS[setting]
    rng = np.random.default_rng(20 + setting)
    n, c = 9, 6
    d = rng.uniform(0, 2, size=(n, c)).astype(dtype).astype(np.float64)
    labels = _labels(rng, n, c)
    d[3, (int(labels[3]) + 1) % c] = 0.0  # a hardest negative at distance 0 (the fork's bug)
    text = ('layer { name: "L" type: "GeneralTripletLoss" bottom: "d" bottom: "label" '
            'top: "loss" top: "mean_distance" loss_weight: 2 loss_weight: 1 %s }'
            % _param_text("general_triplet_loss_param", p))
    net = _net(text, {"d": (n, c), "label": (n,)}, dtype)
    _run(net, {"d": d, "label": labels})
    r_loss, r_top1, r_grad = ref_triplet(d, labels, p, 2.0)
    tol = TOL[dtype]
    assert_close(net.blobs["loss"].data, r_loss, tol, "loss")
    assert_close(net.blobs["mean_distance"].data, r_top1, tol, "top[1]")
    assert_close(net.blobs["d"].diff, r_grad, tol, "gradient")


def test_contrastive_third_bottom_replaces_the_compared_distances():
    """happynear's ms fork: bottom[2]'s data are compared, the gradient goes to bottom[0]."""
    rng = np.random.default_rng(3)
    n, c = 6, 5
    d, other = rng.uniform(0, 2, (n, c)), rng.uniform(0, 2, (n, c))
    labels = _labels(rng, n, c)
    text = ('layer { name: "L" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
            'bottom: "other" top: "loss" }')
    net = _net(text, {"d": (n, c), "label": (n,), "other": (n, c)}, np.float64)
    _run(net, {"d": d, "label": labels, "other": other})
    r_loss, _, r_grad, _ = ref_contrastive(other, labels, {})
    assert_close(net.blobs["loss"].data, r_loss, 1e-12, "loss")
    assert_close(net.blobs["d"].diff, r_grad, 1e-12, "gradient into bottom[0]")
    assert not net.blobs["other"].diff.any()


def test_intra_mae_state_restores_and_caps():
    rng = np.random.default_rng(4)
    n, c = 5, 4
    text = ('layer { name: "L" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
            'top: "loss" top: "m" general_contrastive_loss_param { add_intra_mae: true '
            'max_negative_margin: 0.3 } }')
    batches = [(rng.uniform(0, 3, (n, c)), _labels(rng, n, c)) for _ in range(4)]
    first = _net(text, {"d": (n, c), "label": (n,)}, np.float64)
    for d, labels in batches[:2]:
        _run(first, {"d": d, "label": labels})
    state = first.layers[-1].get_state()
    assert 0 < state["intra_mae"] <= f32(0.3)
    second = _net(text, {"d": (n, c), "label": (n,)}, np.float64)
    second.layers[-1].set_state(state)
    for d, labels in batches[2:]:
        _run(first, {"d": d, "label": labels})
        _run(second, {"d": d, "label": labels})
        np.testing.assert_array_equal(first.blobs["m"].data, second.blobs["m"].data)
        np.testing.assert_array_equal(first.blobs["d"].diff, second.blobs["d"].diff)
    # A large positive distance drives the running mean to the cap.
    for _ in range(300):
        _run(first, {"d": np.full((n, c), 3.0), "label": batches[0][1]})
    assert first.blobs["m"].data[2] == pytest.approx(f32(0.3))
    with pytest.raises(Exception, match='"L".*intra_mae'):
        second.layers[-1].set_state({"intra_mae": float("nan")})


# -- bad inputs: clear errors naming the layer --------------------------------------------

@pytest.mark.parametrize("text,shapes,message", [
    ('layer { name: "T" type: "GeneralTripletLoss" bottom: "d" bottom: "label" bottom: "w" '
     'top: "loss" }', {"d": (4, 3), "label": (4,), "w": (4,)}, r'"T".*takes 2 bottom'),
    ('layer { name: "D" type: "InnerDistance" bottom: "x" bottom: "label" top: "d" '
     'inner_distance_param { update_center_only: true } }', {"x": (4, 3), "label": (4,)},
     r'"D".*update_center_only needs 3 bottoms'),
    ('layer { name: "D" type: "InnerDistance" bottom: "x" top: "d" inner_distance_param { '
     'num_output: 3 distance_type: "L3" } }', {"x": (4, 3)}, r'"D".*distance_type'),
    ('layer { name: "D" type: "InnerDistance" bottom: "x" top: "d" inner_distance_param { '
     'num_output: 3 transpose: true } }', {"x": (4, 3)}, r'"D".*transpose'),
    ('layer { name: "D" type: "InnerDistance" bottom: "x" top: "d" }', {"x": (4, 3)},
     r'"D".*num_output must be > 0'),
    ('layer { name: "D" type: "InnerDistance" bottom: "x" bottom: "w" top: "d" }',
     {"x": (4, 3), "w": (5, 2)}, r'"D".*centres have shape'),
    ('layer { name: "C" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
     'top: "loss" }', {"d": (4, 3), "label": (5,)}, r'"C".*same first dimension'),
    ('layer { name: "C" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
     'top: "loss" general_contrastive_loss_param { normalize_negative: 0 } }',
     {"d": (4, 3), "label": (4,)}, r'"C".*normalize_negative'),
    ('layer { name: "C" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
     'bottom: "o" top: "loss" }', {"d": (4, 3), "label": (4,), "o": (4, 2)}, r'"C".*bottom\[2\]'),
])
def test_bad_setups_name_the_layer(text, shapes, message):
    with pytest.raises(Exception, match=message):
        net = _net(text, shapes, np.float32)
        net.forward_from_to()  # the centres' K is checked when they are used


@pytest.mark.parametrize("layer_type", ["GeneralContrastiveLoss", "GeneralTripletLoss"])
@pytest.mark.parametrize("bad", [3.0, -1.0, float("nan")])
def test_labels_out_of_range_name_the_layer(layer_type, bad):
    text = 'layer { name: "L" type: "%s" bottom: "d" bottom: "label" top: "loss" }' % layer_type
    net = _net(text, {"d": (4, 3), "label": (4,)}, np.float32)
    with pytest.raises(Exception, match=r'"L".*label .* out of range.*\[0, 3\)'):
        _run(net, {"d": np.ones((4, 3)), "label": [0, 1, bad, 2]})


def test_inner_distance_bad_centre_label_names_the_layer():
    text = ('layer { name: "D" type: "InnerDistance" bottom: "x" bottom: "w" bottom: "label" '
            'top: "d" inner_distance_param { update_center_only: true } }')
    net = _net(text, {"x": (4, 3), "w": (2, 3), "label": (4,)}, np.float32)
    with pytest.raises(Exception, match=r'"D".*label .* out of range.*\[0, 2\)'):
        _run(net, {"x": np.ones((4, 3)), "w": np.zeros((2, 3)), "label": [0, 1, 2, 0]},
             {"d": np.ones((4, 2))})


def test_loss_layers_refuse_a_label_gradient():
    text = ('layer { name: "L" type: "GeneralTripletLoss" bottom: "d" bottom: "label" '
            'top: "loss" propagate_down: true propagate_down: true }')
    net = _net(text, {"d": (4, 3), "label": (4,)}, np.float32)
    with pytest.raises(Exception, match=r'"L".*label'):
        _run(net, {"d": np.ones((4, 3)), "label": [0, 1, 2, 0]})


# -- GPU (cupy): the same fixtures on the device; skipped without one ----------------------

def _cupy_or_skip():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception as exc:  # no driver
        pytest.skip("no usable CUDA device (%s)" % exc)
    return cupy


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_gpu_cpu_semantics_match_the_fixture(case, dtype):
    cupy = _cupy_or_skip()
    if case.startswith("<"):
        pytest.skip("../shared/fixtures/family-ref is not present")
    check_case(case, dtype, xp=cupy)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_default_semantics_match_numpy(dtype):
    """Each layer on cupy against the same layer on numpy (default GPU semantics)."""
    from pyfacelayers.backend import to_numpy
    cupy = _cupy_or_skip()
    rng = np.random.default_rng(8)
    m, k, n = 9, 5, 6
    text = ('layer { name: "dist" type: "InnerDistance" bottom: "x" top: "d" '
            'inner_distance_param { num_output: 6 normalize: true } }\n'
            'layer { name: "C" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" '
            'top: "loss" top: "m" loss_weight: 1 loss_weight: 0 general_contrastive_loss_param '
            '{ add_intra_mae: true max_negative_only: true normalize_negative: 0.5 } }')
    values = {"x": rng.normal(size=(m, k)) * 0.3, "label": _labels(rng, m, n)}
    w0 = rng.normal(size=(n, k))
    results = []
    for xp in (np, cupy):
        net = _net(text, {"x": (m, k), "label": (m,)}, dtype, xp=xp)
        net.params["dist"][0].data[...] = xp.asarray(w0, dtype)
        for _ in range(2):
            _run(net, values, xp=xp)
        results.append([to_numpy(a) for a in (net.blobs["d"].data, net.blobs["m"].data,
                                               net.blobs["x"].diff, net.params["dist"][0].diff)])
    for ours, reference in zip(results[1], results[0]):
        assert_close(ours, reference, TOL[dtype])
