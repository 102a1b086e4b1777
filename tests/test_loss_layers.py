"""SoftmaxWithLoss, EuclideanLoss and Accuracy against float64 numpy references,
finite differences, loss weights, normalisation modes and bad inputs."""

import numpy as np
import pytest

from conftest import assert_close
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from simple_layer_utils import assert_gradients, blob, make, run

RNG = np.random.default_rng(7)
TOL = {np.float32: 1e-5, np.float64: 1e-10}
FLT_MIN = float(np.finfo(np.float32).tiny)


def softmax_loss_ref(x, labels, axis=1, ignore=None, mode="VALID"):
    """Loss and gradient (for loss weight 1) of Caffe's SoftmaxWithLoss, in float64."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    outer_inner = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    labels = np.trunc(np.asarray(labels, np.float64).reshape(-1)).astype(int)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    valid = np.ones(len(labels), bool) if ignore is None else labels != ignore
    rows = np.flatnonzero(valid)
    loss = -np.log(np.maximum(prob[rows, labels[rows]], FLT_MIN)).sum()
    grad = prob.copy()
    grad[rows, labels[rows]] -= 1
    grad[~valid] = 0
    outer = int(np.prod(outer_inner[:axis]))
    norm = {"FULL": len(labels), "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1.0, float(norm))
    grad = grad.reshape(outer_inner + (-1,))
    return loss / norm, np.moveaxis(grad, -1, axis) / norm


def labels_for(n, classes, rng=RNG):
    return rng.integers(0, classes, size=n).astype(np.float64)


# -- SoftmaxWithLoss ------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_loss_forward_backward(dtype):
    x = (RNG.standard_normal((6, 5)) * 2).astype(dtype)
    labels = labels_for(6, 5)
    layer = make("SoftmaxWithLoss", dtype=dtype)
    bottoms, (top,) = run(layer, [x, labels])
    assert top.shape == ()
    loss, grad = softmax_loss_ref(x, labels)
    assert_close(top.data, loss, TOL[dtype], "loss")
    top.diff[...] = 1.0
    bottoms[0].diff[...] = 12345.0
    layer.backward([top], [True, False], bottoms)
    assert_close(bottoms[0].diff, grad, TOL[dtype], "gradient")


MODES = [
    ("", "VALID"),
    ("loss_param { normalization: VALID }", "VALID"),
    ("loss_param { normalization: FULL }", "FULL"),
    ("loss_param { normalization: BATCH_SIZE }", "BATCH_SIZE"),
    ("loss_param { normalization: NONE }", "NONE"),
    ("loss_param { normalize: true }", "VALID"),
    ("loss_param { normalize: false }", "BATCH_SIZE"),
    ("loss_param { normalize: false normalization: FULL }", "FULL"),
]


@pytest.mark.parametrize("text,mode", MODES)
def test_softmax_loss_normalization_with_ignore_and_spatial_axis(text, mode):
    # (N, C, H, W) scores with (N, 1, H, W) labels: the normalisers all differ here.
    x = RNG.standard_normal((3, 4, 2, 3))
    labels = labels_for(18, 4).reshape(3, 1, 2, 3)
    labels.flat[[1, 5, 6, 11]] = 255
    full = "loss_param { ignore_label: 255 }" if not text else \
        text.replace("loss_param {", "loss_param { ignore_label: 255")
    layer = make("SoftmaxWithLoss", full)
    bottoms, (top,) = run(layer, [x, labels])
    loss, grad = softmax_loss_ref(x, labels, ignore=255, mode=mode)
    assert_close(top.data, loss, 1e-12, "loss " + mode)
    top.diff[...] = 1.0
    layer.backward([top], [True, False], bottoms)
    assert_close(bottoms[0].diff, grad, 1e-12, "gradient " + mode)
    assert_gradients(lambda: make("SoftmaxWithLoss", full), [x, labels],
                     top_weights=[np.array(1.0)])


def test_softmax_loss_valid_normalizer_is_at_least_one():
    x = RNG.standard_normal((2, 3))
    layer = make("SoftmaxWithLoss", "loss_param { ignore_label: -1 }")
    bottoms, (top,) = run(layer, [x, np.array([-1.0, -1.0])])
    assert float(top.data) == 0.0
    top.diff[...] = 1.0
    layer.backward([top], [True, False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 0.0)


def test_softmax_loss_weight_scales_gradient():
    x = RNG.standard_normal((4, 3))
    labels = labels_for(4, 3)
    layer = make("SoftmaxWithLoss")
    bottoms, (top,) = run(layer, [x, labels])
    top.diff[...] = 1.0
    layer.backward([top], [True, False], bottoms)
    once = bottoms[0].diff.copy()
    top.diff[...] = 2.0
    layer.backward([top], [True, False], bottoms)
    assert_close(bottoms[0].diff, 2 * once, 1e-15, "loss weight 2")


def test_softmax_loss_axis_and_prob_top():
    x = RNG.standard_normal((2, 3, 4))
    labels = labels_for(6, 4).reshape(2, 3)
    text = "softmax_param { axis: 2 }"
    layer = make("SoftmaxWithLoss", text)
    _, (top, prob) = run(layer, [x, labels], num_top=2)
    loss, _ = softmax_loss_ref(x, labels, axis=2)
    assert_close(top.data, loss, 1e-12, "loss axis 2")
    e = np.exp(x - x.max(axis=2, keepdims=True))
    assert_close(prob.data, e / e.sum(axis=2, keepdims=True), 1e-12, "prob top")
    assert_gradients(lambda: make("SoftmaxWithLoss", text), [x, labels],
                     top_weights=[np.array(1.0)])


def test_softmax_loss_clamps_probability_at_flt_min():
    # float32 exp(-200) underflows to 0: Caffe's loss is -log(FLT_MIN) = 87.3365.
    x = np.array([[0.0, 200.0]], dtype=np.float32)
    _, (top,) = run(make("SoftmaxWithLoss", dtype=np.float32), [x, np.array([0.0])])
    assert abs(float(top.data) - (-np.log(FLT_MIN))) < 1e-4


def test_softmax_loss_truncates_float_labels():
    x = RNG.standard_normal((2, 3))
    _, (top,) = run(make("SoftmaxWithLoss"), [x, np.array([1.7, 2.2])])
    assert_close(top.data, softmax_loss_ref(x, [1, 2])[0], 1e-14, "truncated labels")


@pytest.mark.parametrize("label,text,message", [
    (5.0, "", "label 5.0 at row 1 .*\\[0, 3\\)"),
    (-1.0, "", "label -1.0 at row 1"),
    (-1.0, "loss_param { ignore_label: 255 }", "or ignore_label 255"),
    (np.nan, "", "label nan at row 1"),
])
def test_softmax_loss_label_out_of_range(label, text, message):
    with pytest.raises(LayerError, match="my_softmaxwithloss.*" + message):
        run(make("SoftmaxWithLoss", text), [np.zeros((3, 3)), np.array([0.0, label, 1.0])])


def test_softmax_loss_bad_label_count_and_label_backward():
    with pytest.raises(LayerError, match="my_softmaxwithloss.*needs 6 labels"):
        run(make("SoftmaxWithLoss"), [np.zeros((2, 3, 3)), np.zeros((2, 2))])
    with pytest.raises(LayerError, match="my_softmaxwithloss.*first dimension"):
        run(make("SoftmaxWithLoss"), [np.zeros((2, 3)), np.zeros((1, 2))])
    layer = make("SoftmaxWithLoss")
    bottoms, (top,) = run(layer, [np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(LayerError, match="my_softmaxwithloss.*label"):
        layer.backward([top], [True, True], bottoms)
    assert layer.is_loss and not layer.allow_force_backward(1)


# -- EuclideanLoss -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_euclidean_loss(dtype):
    a = RNG.standard_normal((4, 3, 2)).astype(dtype)
    b = RNG.standard_normal((4, 6)).astype(dtype)  # same count per item: allowed as in Caffe
    layer = make("EuclideanLoss", dtype=dtype)
    bottoms, (top,) = run(layer, [a, b])
    d = a.astype(np.float64) - b.astype(np.float64).reshape(a.shape)
    assert_close(top.data, (d ** 2).sum() / 4 / 2, TOL[dtype], "euclidean loss")
    top.diff[...] = 2.0  # loss weight 2
    layer.backward([top], [True, True], bottoms)
    assert_close(bottoms[0].diff, 2 * d / 4, TOL[dtype], "gradient a")
    assert_close(bottoms[1].diff, -2 * d.reshape(b.shape) / 4, TOL[dtype], "gradient b")


def test_euclidean_loss_gradient_check():
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    assert_gradients(lambda: make("EuclideanLoss"), [a, b], check=(0, 1),
                     top_weights=[np.array(1.0)])
    assert make("EuclideanLoss").allow_force_backward(1)


@pytest.mark.parametrize("sa,sb,message", [
    ((4, 3), (4, 2), "same dimension"),
    ((4, 3), (3, 4), "first dimension"),
])
def test_euclidean_loss_bad_shapes(sa, sb, message):
    with pytest.raises(LayerError, match="my_euclideanloss.*" + message):
        run(make("EuclideanLoss"), [np.ones(sa), np.ones(sb)])


# -- Accuracy -----------------------------------------------------------------------------

def accuracy_ref(scores, labels, k, ignore=None):
    hits, count = 0, 0
    per_hit = np.zeros(scores.shape[1])
    per_count = np.zeros(scores.shape[1])
    for row, label in zip(scores, labels):
        label = int(label)
        if label == ignore:
            continue
        order = sorted(range(len(row)), key=lambda c: (row[c], c), reverse=True)
        hit = label in order[:k]
        hits += hit
        count += 1
        per_hit[label] += hit
        per_count[label] += 1
    per = np.where(per_count > 0, per_hit / np.maximum(per_count, 1), 0)
    return hits / count, per


@pytest.mark.parametrize("k", [1, 2, 3])
def test_accuracy_top_k_and_per_class(k):
    scores = RNG.standard_normal((20, 5))
    labels = labels_for(20, 5)
    text = "accuracy_param { top_k: %d }" % k
    _, (acc, per) = run(make("Accuracy", text), [scores, labels], num_top=2)
    ref, ref_per = accuracy_ref(scores, labels, k)
    assert acc.shape == () and per.shape == (5,)
    assert abs(float(acc.data) - ref) < 1e-15
    assert_close(per.data, ref_per, 1e-15, "per-class accuracy")


def test_accuracy_ignore_label_and_axis():
    scores = RNG.standard_normal((2, 4, 3))  # classes on axis 1, 3 positions each
    labels = labels_for(6, 4).reshape(2, 3)
    labels[0, 1] = -1
    _, (acc,) = run(make("Accuracy", "accuracy_param { ignore_label: -1 }"), [scores, labels])
    flat = np.moveaxis(scores, 1, -1).reshape(6, 4)
    ref, _ = accuracy_ref(flat, labels.reshape(-1), 1, ignore=-1)
    assert abs(float(acc.data) - ref) < 1e-15


def test_accuracy_ties_rank_higher_class_first():
    scores = np.array([[1.0, 1.0, 0.0]] * 3)
    _, (acc, per) = run(make("Accuracy"), [scores, np.array([1.0, 1.0, 0.0])], num_top=2)
    assert abs(float(acc.data) - 2 / 3) < 1e-15  # class 1 beats class 0 on a tie
    np.testing.assert_array_equal(per.data, [0.0, 1.0, 0.0])


def test_accuracy_all_ignored_is_nan_as_caffe():
    layer = make("Accuracy", "accuracy_param { ignore_label: 2 }")
    _, (acc,) = run(layer, [np.ones((2, 3)), np.array([2.0, 2.0])])
    assert np.isnan(float(acc.data))


def test_accuracy_bad_inputs():
    with pytest.raises(LayerError, match="my_accuracy.*top_k 4"):
        run(make("Accuracy", "accuracy_param { top_k: 4 }"), [np.ones((2, 3)), np.zeros(2)])
    with pytest.raises(LayerError, match="my_accuracy.*label 3.0 at row 0"):
        run(make("Accuracy"), [np.ones((2, 3)), np.array([3.0, 0.0])])
    with pytest.raises(LayerError, match="my_accuracy.*need 2 labels"):
        run(make("Accuracy"), [np.ones((2, 3)), np.zeros((1, 3))])


def test_accuracy_backward_writes_zero():
    layer = make("Accuracy")
    bottoms, (top,) = run(layer, [np.ones((2, 3)), np.zeros(2)])
    bottoms[0].diff[...] = 5.0
    layer.backward([top], [True, False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 0.0)
    assert not layer.is_loss


def test_blob_sizes_for_scalar_tops():
    # A loss top is a 0-axis blob of one element, as Caffe's.
    layer = make("EuclideanLoss")
    top = Blob((5,))
    a = blob(np.ones((2, 2)))
    layer.setup([a, blob(np.zeros((2, 2)))], [top])
    assert top.shape == () and top.count == 1


@pytest.mark.parametrize("name,dtype", [("B1_small_f32.npz", np.float32),
                                        ("B1_small_f64.npz", np.float64)])
def test_softmax_loss_matches_caffe_golden(name, dtype):
    # Caffe's SphereFace net fed fc6 and the labels into SoftmaxWithLoss.
    from conftest import shared_path
    z = np.load(shared_path("fixtures", "caffe-ref", "B1_small", name))
    _, (top,) = run(make("SoftmaxWithLoss", dtype=dtype), [z["out__fc6"], z["input_label"]])
    assert_close(top.data, z["out__softmax_loss"], TOL[dtype], "golden loss")
