"""Activations, Eltwise, shape layers and Softmax against float64 numpy references,
central finite differences, in-place runs and bad inputs."""

import numpy as np
import pytest

from conftest import assert_close
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.proto import caffe_pb2
from simple_layer_utils import assert_gradients, blob, make, run

RNG = np.random.default_rng(42)


def away_from_zero(shape, rng=RNG):
    """Random values with |x| >= 0.1, so kinks at 0 stay out of finite differences."""
    x = rng.uniform(0.1, 2.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


TOL = {np.float32: 1e-5, np.float64: 1e-10}


# -- ReLU / Sigmoid / TanH --------------------------------------------------------

NEURONS = [
    ("ReLU", "", lambda x: np.maximum(x, 0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }",
     lambda x: np.where(x > 0, x, np.float64(np.float32(0.1)) * x)),
    ("Sigmoid", "", lambda x: 1 / (1 + np.exp(-x))),
    ("TanH", "", np.tanh),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("type_name,text,ref", NEURONS)
def test_neuron_forward(type_name, text, ref, dtype):
    x = away_from_zero((2, 3, 4)).astype(dtype)
    _, (top,) = run(make(type_name, text, dtype=dtype), [x])
    assert top.shape == x.shape
    assert_close(top.data, ref(x.astype(np.float64)), TOL[dtype], type_name)


@pytest.mark.parametrize("type_name,text,ref", NEURONS)
def test_neuron_gradient(type_name, text, ref):
    x = away_from_zero((2, 3, 4))
    assert_gradients(lambda: make(type_name, text), [x])


@pytest.mark.parametrize("type_name,text,ref", NEURONS)
def test_neuron_in_place_matches_separate_top(type_name, text, ref):
    x = away_from_zero((3, 5))
    dy = RNG.standard_normal(x.shape)
    layer = make(type_name, text)
    (separate,), (top,) = run(layer, [x])
    top.diff[...] = dy
    layer.backward([top], [True], [separate])

    shared = blob(x)
    layer = make(type_name, text)
    layer.setup([shared], [shared])
    layer.forward([shared], [shared])
    assert_close(shared.data, top.data, 1e-15, "in-place forward")
    shared.diff[...] = dy
    layer.backward([shared], [True], [shared])
    assert_close(shared.diff, separate.diff, 1e-15, "in-place backward")


def test_relu_gradient_at_zero_uses_slope():
    layer = make("ReLU", "relu_param { negative_slope: 0.25 }")
    bottoms, (top,) = run(layer, [np.array([-1.0, 0.0, 2.0])])
    top.diff[...] = 1.0
    layer.backward([top], [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [0.25, 0.25, 1.0])


def test_sigmoid_saturates_without_overflow_warning():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, (top,) = run(make("Sigmoid", dtype=np.float32), [np.array([-1000.0, 0, 1000.0])])
    np.testing.assert_array_equal(top.data, [0.0, 0.5, 1.0])


def test_propagate_down_false_leaves_diff():
    layer = make("TanH")
    bottoms, (top,) = run(layer, [np.ones(3)])
    bottoms[0].diff[...] = 7.0
    layer.backward([top], [False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 7.0)


# -- Dropout ------------------------------------------------------------------------

def test_dropout_train_mask_and_scale():
    x = RNG.standard_normal((4, 50)) + 3.0  # nonzero, so dropped units show as zeros
    layer = make("Dropout", "dropout_param { dropout_ratio: 0.3 }", seed=7)
    bottoms, (top,) = run(layer, [x])
    keep = np.random.default_rng(7).random(x.shape) < 1.0 - np.float32(0.3)
    scale = 1.0 / (1.0 - np.float64(np.float32(0.3)))
    assert_close(top.data, x * keep * scale, 1e-12, "dropout forward")
    assert 0.5 < keep.mean() < 0.9
    dy = RNG.standard_normal(x.shape)
    top.diff[...] = dy
    layer.backward([top], [True], bottoms)
    assert_close(bottoms[0].diff, dy * keep * scale, 1e-12, "dropout backward")


def test_dropout_in_place_and_gradient():
    x = RNG.standard_normal((3, 6))
    shared = blob(x)
    layer = make("Dropout", seed=3)
    layer.setup([shared], [shared])
    layer.forward([shared], [shared])
    keep = np.random.default_rng(3).random(x.shape) < 0.5
    assert_close(shared.data, x * keep * 2.0, 1e-15, "in-place dropout")
    shared.diff[...] = 1.0
    layer.backward([shared], [True], [shared])
    assert_close(shared.diff, keep * 2.0, 1e-15, "in-place dropout backward")
    # The same seed gives the same mask, so finite differences see a fixed function.
    assert_gradients(lambda: make("Dropout", seed=3), [x])


def test_dropout_test_phase_is_identity():
    x = RNG.standard_normal((2, 5))
    layer = make("Dropout", "dropout_param { dropout_ratio: 0.9 }", phase=caffe_pb2.TEST)
    bottoms, (top,) = run(layer, [x])
    np.testing.assert_array_equal(top.data, x)
    top.diff[...] = 3.0
    layer.backward([top], [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 3.0)


def test_dropout_bad_ratio():
    with pytest.raises(LayerError, match="my_dropout.*dropout_ratio"):
        run(make("Dropout", "dropout_param { dropout_ratio: 1.0 }"), [np.ones(3)])


# -- Eltwise ------------------------------------------------------------------------

def three_inputs(shape=(2, 3, 2)):
    return [RNG.standard_normal(shape) for _ in range(3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eltwise_sum_with_coeff(dtype):
    a, b, c = [x.astype(dtype) for x in three_inputs()]
    text = "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }"
    _, (top,) = run(make("Eltwise", text, dtype=dtype), [a, b, c])
    ref = a.astype(float) - 0.5 * b.astype(float) + 2 * c.astype(float)
    assert_close(top.data, ref, TOL[dtype], "eltwise sum")
    assert_gradients(lambda: make("Eltwise", text), three_inputs(), check=(0, 1, 2))


def test_eltwise_sum_gradient_is_coeff_times_top_diff():
    text = "eltwise_param { coeff: 3 coeff: -1 }"
    layer = make("Eltwise", text)
    bottoms, (top,) = run(layer, three_inputs()[:2])
    top.diff[...] = 2.0
    layer.backward([top], [True, True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 6.0)
    np.testing.assert_array_equal(bottoms[1].diff, -2.0)


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod(stable):
    inputs = [away_from_zero((2, 3)) for _ in range(3)]
    text = "eltwise_param { operation: PROD stable_prod_grad: %s }" % stable
    _, (top,) = run(make("Eltwise", text), inputs)
    assert_close(top.data, inputs[0] * inputs[1] * inputs[2], 1e-15, "eltwise prod")
    assert_gradients(lambda: make("Eltwise", text), inputs, check=(0, 1, 2))


def test_eltwise_prod_stable_gradient_with_zero_input():
    a = np.array([0.0, 2.0])
    b = np.array([3.0, 4.0])
    layer = make("Eltwise", "eltwise_param { operation: PROD }")
    bottoms, (top,) = run(layer, [a, b])
    top.diff[...] = 1.0
    layer.backward([top], [True, True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [3.0, 4.0])  # no 0/0
    np.testing.assert_array_equal(bottoms[1].diff, [0.0, 2.0])


def test_eltwise_max_routes_gradient_to_argmax():
    inputs = three_inputs((3, 4))
    text = "eltwise_param { operation: MAX }"
    layer = make("Eltwise", text)
    bottoms, (top,) = run(layer, inputs)
    stacked = np.stack(inputs)
    np.testing.assert_array_equal(top.data, stacked.max(axis=0))
    dy = RNG.standard_normal(top.shape)
    top.diff[...] = dy
    layer.backward([top], [True, True, True], bottoms)
    winner = stacked.argmax(axis=0)
    for i, b in enumerate(bottoms):
        np.testing.assert_array_equal(b.diff, np.where(winner == i, dy, 0))
    assert_gradients(lambda: make("Eltwise", text), inputs, check=(0, 1, 2))


def test_eltwise_max_ties_follow_caffe():
    # Caffe: bottom 1 wins a tie with bottom 0; a later bottom must be strictly larger.
    a = np.array([1.0, 1.0, 0.0])
    b = np.array([1.0, 0.0, 2.0])
    c = np.array([1.0, 1.0, 2.0])
    layer = make("Eltwise", "eltwise_param { operation: MAX }")
    bottoms, (top,) = run(layer, [a, b, c])
    top.diff[...] = 1.0
    layer.backward([top], [True] * 3, bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [0, 1, 0])
    np.testing.assert_array_equal(bottoms[1].diff, [1, 0, 1])
    np.testing.assert_array_equal(bottoms[2].diff, [0, 0, 0])


@pytest.mark.parametrize("text,shapes,message", [
    ("", [(2, 3), (3, 2)], "same shape"),
    ("", [(2, 3), (2, 3, 1)], "same shape"),
    ("eltwise_param { coeff: 1 }", [(2,), (2,)], "one coefficient per bottom"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2,), (2,)], "only allowed"),
])
def test_eltwise_bad_inputs(text, shapes, message):
    with pytest.raises(LayerError, match="my_eltwise.*" + message):
        run(make("Eltwise", text), [np.ones(s) for s in shapes])


def test_eltwise_needs_two_bottoms():
    with pytest.raises(LayerError, match="my_eltwise"):
        run(make("Eltwise"), [np.ones(2)])


# -- Concat / Slice / Split -------------------------------------------------------------

@pytest.mark.parametrize("text,axis", [("", 1), ("concat_param { axis: -1 }", 2),
                                       ("concat_param { concat_dim: 0 }", 0)])
def test_concat(text, axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    for s, n in zip(shapes, (1, 2, 3)):
        s[axis] = n
    inputs = [RNG.standard_normal(s) for s in shapes]
    _, (top,) = run(make("Concat", text), inputs)
    np.testing.assert_array_equal(top.data, np.concatenate(inputs, axis=axis))
    assert_gradients(lambda: make("Concat", text), inputs, check=(0, 1, 2))


def test_concat_propagate_down_only_some():
    inputs = [np.ones((2, 1)), np.ones((2, 2))]
    layer = make("Concat")
    bottoms, (top,) = run(layer, inputs)
    top.diff[...] = np.arange(6.0).reshape(2, 3)
    bottoms[0].diff[...] = -1.0
    layer.backward([top], [False, True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, -1.0)
    np.testing.assert_array_equal(bottoms[1].diff, [[1, 2], [4, 5]])


@pytest.mark.parametrize("text,shapes,message", [
    ("", [(2, 3, 4), (2, 3, 5)], "must match"),
    ("", [(2, 3, 4), (2, 3)], "must match"),
    ("concat_param { axis: 3 }", [(2, 3), (2, 3)], "out of range"),
    ("concat_param { axis: 1 concat_dim: 1 }", [(2, 3), (2, 3)], "not both"),
])
def test_concat_bad_inputs(text, shapes, message):
    with pytest.raises(LayerError, match="my_concat.*" + message):
        run(make("Concat", text), [np.ones(s) for s in shapes])


@pytest.mark.parametrize("text,axis,sizes", [
    ("slice_param { slice_point: 1 slice_point: 4 }", 1, [1, 3, 2]),
    ("slice_param { axis: -1 }", 2, [2, 2, 2]),
    ("slice_param { slice_dim: 0 slice_point: 2 slice_point: 3 }", 0, [2, 1, 3]),
])
def test_slice(text, axis, sizes):
    shape = [6, 6, 6]
    x = RNG.standard_normal(shape)
    _, tops = run(make("Slice", text), [x], num_top=3)
    parts = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    for t, part in zip(tops, parts):
        np.testing.assert_array_equal(t.data, part)
    small = RNG.standard_normal((6, 6, 2)) if axis != 2 else RNG.standard_normal((2, 2, 6))
    assert_gradients(lambda: make("Slice", text), [small], num_top=3)


@pytest.mark.parametrize("text,message", [
    ("slice_param { slice_point: 3 slice_point: 2 }", "strictly increasing"),
    ("slice_param { slice_point: 2 slice_point: 2 }", "strictly increasing"),
    ("slice_param { slice_point: 2 slice_point: 6 }", "strictly increasing"),
    ("slice_param { slice_point: 2 }", "need 2"),
    ("slice_param { axis: 0 }", "split equally"),
    ("slice_param { axis: 5 }", "out of range"),
])
def test_slice_bad_inputs(text, message):
    with pytest.raises(LayerError, match="my_slice.*" + message):
        run(make("Slice", text), [np.ones((4, 6))], num_top=3)


def test_split_shares_data_and_sums_gradients():
    x = RNG.standard_normal((2, 3))
    layer = make("Split")
    bottoms, tops = run(layer, [x], num_top=3)
    for t in tops:
        np.testing.assert_array_equal(t.data, x)
    tops[0].data[...] = 0  # Caffe's tops share the bottom's data: no copy
    np.testing.assert_array_equal(tops[1].data, 0)
    np.testing.assert_array_equal(bottoms[0].data, 0)
    diffs = [RNG.standard_normal(x.shape) for _ in tops]
    for t, d in zip(tops, diffs):
        t.diff[...] = d
    layer.backward(tops, [True], bottoms)
    assert_close(bottoms[0].diff, sum(diffs), 1e-15, "split backward")


def test_split_rejects_in_place():
    b = blob(np.ones(3))
    with pytest.raises(LayerError, match="my_split.*in-place"):
        make("Split").setup([b], [b, Blob()])


# -- Flatten / Reshape / Silence --------------------------------------------------------

@pytest.mark.parametrize("text,shape", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 20)),
    ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
    ("flatten_param { axis: -2 end_axis: -1 }", (2, 3, 20)),
    ("flatten_param { axis: 0 end_axis: 0 }", (2, 3, 4, 5)),
])
def test_flatten(text, shape):
    x = RNG.standard_normal((2, 3, 4, 5))
    layer = make("Flatten", text)
    bottoms, (top,) = run(layer, [x])
    assert top.shape == shape
    np.testing.assert_array_equal(top.data, x.reshape(shape))
    bottoms[0].data[0, 0, 0, 0] = 99.0  # the top views the bottom's data
    assert top.data.reshape(-1)[0] == 99.0
    dy = RNG.standard_normal(shape)
    top.diff[...] = dy
    layer.backward([top], [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, dy.reshape(x.shape))


def test_flatten_end_before_start():
    with pytest.raises(LayerError, match="my_flatten.*end_axis"):
        run(make("Flatten", "flatten_param { axis: 2 end_axis: 1 }"), [np.ones((2, 3, 4))])


@pytest.mark.parametrize("dims,extra,shape", [
    ("0 -1", "", (2, 60)),
    ("-1 4 5", "", (6, 4, 5)),
    ("0 0 20", "", (2, 3, 20)),
    ("2 2", "axis: 2 num_axes: 1", (2, 3, 2, 2, 5)),
    ("1", "axis: 1 num_axes: 0", (2, 1, 3, 4, 5)),
    ("-1", "axis: -3", (2, 3, 20)),
    ("", "axis: 0 num_axes: 0", (2, 3, 4, 5)),
    ("0 -1 1", "axis: 1 num_axes: 2", (2, 3, 4, 1, 5)),
])
def test_reshape(dims, extra, shape):
    x = RNG.standard_normal((2, 3, 4, 5))
    dim_text = " ".join("dim: %s" % d for d in dims.split())
    layer = make("Reshape", "reshape_param { shape { %s } %s }" % (dim_text, extra))
    bottoms, (top,) = run(layer, [x])
    assert top.shape == shape
    np.testing.assert_array_equal(top.data, x.reshape(shape))
    top.diff[...] = RNG.standard_normal(shape)
    layer.backward([top], [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, top.diff.reshape(x.shape))


@pytest.mark.parametrize("dims,extra,message", [
    ("-1 -1", "", "more than one -1"),
    ("7 10", "", "120"),
    ("7 -1", "", "cannot infer"),
    ("0 0 0 0 0", "", "no axis 4"),
    ("-2 60", "", "negative"),
    ("2", "axis: 5", "out of range"),
    ("2", "axis: 3 num_axes: 2", "exceeds"),
])
def test_reshape_bad_inputs(dims, extra, message):
    dim_text = " ".join("dim: %s" % d for d in dims.split())
    layer = make("Reshape", "reshape_param { shape { %s } %s }" % (dim_text, extra))
    with pytest.raises(LayerError, match="my_reshape.*" + message):
        run(layer, [np.ones((2, 3, 4, 5))])


def test_silence_zeroes_gradients():
    layer = make("Silence")
    bottoms = [blob(np.ones((2, 3))), blob(np.ones(4))]
    layer.setup(bottoms, [])
    layer.forward(bottoms, [])
    for b in bottoms:
        b.diff[...] = 5.0
    layer.backward([], [True, False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 0.0)
    np.testing.assert_array_equal(bottoms[1].diff, 5.0)
    with pytest.raises(LayerError, match="my_silence.*0 top"):
        layer.setup(bottoms, [Blob()])


# -- Softmax ------------------------------------------------------------------------

def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("text,axis", [("", 1), ("softmax_param { axis: -1 }", 3),
                                       ("softmax_param { axis: 0 }", 0)])
def test_softmax_forward(text, axis, dtype):
    x = (RNG.standard_normal((2, 3, 4, 5)) * 3).astype(dtype)
    _, (top,) = run(make("Softmax", text, dtype=dtype), [x])
    assert_close(top.data, softmax_ref(x.astype(np.float64), axis), TOL[dtype], "softmax")


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], dtype=np.float32)
    with np.errstate(all="raise"):
        _, (top,) = run(make("Softmax", dtype=np.float32), [x])
    assert_close(top.data, softmax_ref(x.astype(np.float64), 1), 1e-6, "softmax large")


@pytest.mark.parametrize("text", ["", "softmax_param { axis: 2 }"])
def test_softmax_gradient_and_in_place(text):
    x = RNG.standard_normal((2, 3, 4))
    analytic = assert_gradients(lambda: make("Softmax", text), [x], seed=5)
    dy = np.random.default_rng(5).standard_normal(x.shape)
    shared = blob(x)
    layer = make("Softmax", text)
    layer.setup([shared], [shared])
    layer.forward([shared], [shared])
    shared.diff[...] = dy
    layer.backward([shared], [True], [shared])
    assert_close(shared.diff, analytic[0], 1e-14, "in-place softmax backward")


def test_softmax_bad_axis():
    with pytest.raises(LayerError, match="my_softmax.*axis 4"):
        run(make("Softmax", "softmax_param { axis: 4 }"), [np.ones((2, 3))])
