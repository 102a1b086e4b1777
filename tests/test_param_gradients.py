"""Caffe's rule for which parameters get a diff (Net::Init's param_propagate_down,
layer_need_backward and bottom_need_backward), and what it means for the solvers."""

import numpy as np
import pytest
from google.protobuf import text_format

import pyfacelayers as caffe
from pyfacelayers.errors import NetError
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.solvers import get_solver

# A small classifier: conv (bias frozen, as SphereFace's residual units) -> ReLU ->
# InnerProduct (bias frozen) -> softmax loss. {extra} goes at the net's top level.
NET = """
name: "frozen_biases" {extra}
layer {{ name: "data" type: "Input" top: "data" top: "label"
        input_param {{ shape {{ dim: 4 dim: 2 dim: 5 dim: 5 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        {conv_params}
        convolution_param {{ num_output: 3 kernel_size: 3
          weight_filler {{ type: "gaussian" std: 0.3 }}
          bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
        {fc_params}
        inner_product_param {{ num_output: 5
          weight_filler {{ type: "gaussian" std: 0.3 }}
          bias_filler {{ type: "constant" value: 0.2 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""
FROZEN_BIAS = ("param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }")


def net_param(extra="", conv_params=FROZEN_BIAS, fc_params=FROZEN_BIAS):
    return text_format.Parse(NET.format(extra=extra, conv_params=conv_params,
                                        fc_params=fc_params), caffe_pb2.NetParameter())


def run_once(param, seed=5):
    net = caffe.Net(param, caffe.TRAIN, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = [0, 3, 1, 4]
    net.forward_backward()
    return net


def test_frozen_parameters_keep_a_zero_diff_without_force_backward():
    net = run_once(net_param())
    for layer in ("conv", "fc"):
        weight, bias = net.params[layer]
        assert np.abs(weight.diff).sum() > 0, layer
        assert not bias.diff.any(), "%s bias (lr_mult 0) got a diff" % layer
        assert net.layer_dict[layer].param_propagate_down == [True, False]


def test_force_backward_computes_every_diff():
    frozen = run_once(net_param(extra="force_backward: true"))
    learned = run_once(net_param(conv_params="", fc_params=""))
    for layer in ("conv", "fc"):
        assert frozen.layer_dict[layer].param_propagate_down == [True, True]
        for k in range(2):
            got, want = frozen.params[layer][k].diff, learned.params[layer][k].diff
            assert np.abs(want).sum() > 0
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # force_backward also gives the input its diff (AllowForceBackward), not the label.
    assert np.abs(frozen.blobs["data"].diff).sum() > 0
    assert not frozen.blobs["label"].diff.any()


@pytest.mark.parametrize("solver_type", ["AdaGrad", "Adam", "AdaDelta"])
def test_adaptive_history_of_frozen_parameters_stays_zero(solver_type):
    extra = {"AdaGrad": "", "Adam": "momentum: 0.9 momentum2: 0.999",
             "AdaDelta": "momentum: 0.95"}[solver_type]
    solver_param = text_format.Parse(
        'type: "%s" base_lr: 0.1 lr_policy: "fixed" weight_decay: 0.01 max_iter: 10 '
        'display: 0 snapshot_after_train: false random_seed: 3 delta: 1e-6 %s'
        % (solver_type, extra), caffe_pb2.SolverParameter())
    solver_param.net_param.CopyFrom(net_param())
    solver = get_solver(solver_param)
    net = solver.net
    rng = np.random.default_rng(2)
    biases = [net.params["conv"][1], net.params["fc"][1]]
    before = [b.data.copy() for b in biases]
    for _ in range(4):
        net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
        net.blobs["label"].data[...] = rng.integers(0, 5, 4)
        solver.step(1)
    n = len(net.learnable_params)
    for blob, start in zip(biases, before):
        i = next(k for k, p in enumerate(net.learnable_params) if p is blob)
        for h in range(solver.rule.history_sets):
            assert not np.asarray(solver.history[i + h * n]).any(), \
                "%s history %d of a frozen bias is not zero" % (solver_type, h)
        np.testing.assert_array_equal(blob.data, start)
    weight_i = next(k for k, p in enumerate(net.learnable_params)
                    if p is net.params["conv"][0])
    assert np.asarray(solver.history[weight_i]).any()  # the learned weight has history


BLOCKED = """
name: "blocked"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "frozen"
        %s
        inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "act" type: "TanH" bottom: "frozen" top: "act" }
layer { name: "fc" type: "InnerProduct" bottom: "act" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def _record_backward_calls(net):
    calls = []
    for name, layer in net.layer_dict.items():
        original = layer.backward

        def wrapped(top, down, bottom, _original=original, _name=name):
            calls.append(_name)
            return _original(top, down, bottom)
        layer.backward = wrapped
    return calls


def test_a_frozen_layer_over_the_input_is_skipped_in_backward():
    param = text_format.Parse(BLOCKED % "param { lr_mult: 0 } param { lr_mult: 0 }",
                              caffe_pb2.NetParameter())
    net = caffe.Net(param, caffe.TRAIN, seed=1)
    calls = _record_backward_calls(net)
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((4, 6))
    net.blobs["label"].data[...] = [0, 1, 2, 0]
    net.forward_backward()
    assert calls == ["loss", "fc"]  # Caffe: "act/frozen does not need backward computation"
    assert not any(net.params["frozen"][k].diff.any() for k in range(2))
    assert np.abs(net.params["fc"][0].diff).sum() > 0
    assert not net.blobs["act"].diff.any()  # fc's bottom needs no gradient either

    # With one learned parameter the same layers run, and the TanH passes the gradient.
    learned = caffe.Net(text_format.Parse(BLOCKED % "param { lr_mult: 0 }",
                                          caffe_pb2.NetParameter()), caffe.TRAIN, seed=1)
    calls = _record_backward_calls(learned)
    learned.blobs["data"].data[...] = net.blobs["data"].data
    learned.blobs["label"].data[...] = net.blobs["label"].data
    learned.forward_backward()
    assert calls == ["loss", "fc", "act", "frozen"]
    assert not learned.params["frozen"][0].diff.any()
    assert np.abs(learned.params["frozen"][1].diff).sum() > 0
    assert not learned.blobs["data"].diff.any()  # the input needs no gradient


def test_propagate_down_false_blocks_the_layers_below():
    text = BLOCKED % ""
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    param.layer[3].propagate_down.extend([False])  # fc: no gradient into "act"
    net = caffe.Net(param, caffe.TRAIN, seed=1)
    calls = _record_backward_calls(net)
    net.blobs["data"].data[...] = np.ones((4, 6))
    net.forward_backward()
    # Caffe skips act (its top needs no diff) and then frozen (its top is skipped too),
    # although frozen's parameters are learned.
    assert calls == ["loss", "fc"]
    assert not net.params["frozen"][0].diff.any()


SHARED = """
name: "shared"
layer { name: "data" type: "Input" top: "a" top: "b"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "a" top: "y1"
        param { name: "w" %s } inner_product_param { num_output: 2 bias_term: false
        weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "b" top: "y2"
        param { name: "w" %s } inner_product_param { num_output: 2 bias_term: false } }
layer { name: "loss1" type: "EuclideanLoss" bottom: "y1" bottom: "y2" top: "loss" }
"""


def _shared(owner, sharer):
    return text_format.Parse(SHARED % (owner, sharer), caffe_pb2.NetParameter())


def test_shared_parameters_follow_each_layers_own_lr_mult():
    # The owner is frozen, the sharer (no lr_mult: 1) learns: only the sharer's
    # layer adds to the shared diff; the shared blob takes the owner's lr_mult.
    net = caffe.Net(_shared("lr_mult: 0", ""), caffe.TRAIN, seed=2, dtype=np.float64)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    net.blobs["a"].data[...], net.blobs["b"].data[...] = a, b
    net.forward_backward()
    w = net.params["ip1"][0].data
    residual = (a @ w.T - b @ w.T) / 2  # EuclideanLoss: 1/(2N) |y1 - y2|^2
    np.testing.assert_allclose(net.params["ip2"][0].diff, -residual.T @ b, rtol=1e-12)
    assert net.params_lr == [0.0]
    # A sharer's explicit lr_mult applies when the owner gave none ...
    assert caffe.Net(_shared("", "lr_mult: 3"), caffe.TRAIN).params_lr == [3.0]
    # ... and must agree with the owner's when both give one.
    with pytest.raises(NetError, match='"ip2".*shared parameter "w".*mismatched lr_mult'):
        caffe.Net(_shared("lr_mult: 1", "lr_mult: 2"), caffe.TRAIN)
    with pytest.raises(NetError, match="mismatched decay_mult"):
        caffe.Net(_shared("decay_mult: 1", "decay_mult: 0"), caffe.TRAIN)


def test_more_param_specs_than_parameters_is_refused():
    param = net_param(fc_params="param {} param {} param {}")
    with pytest.raises(NetError, match='"fc".*3 param specs for 2 parameter blob'):
        caffe.Net(param, caffe.TRAIN)


def test_batch_norm_without_param_specs_needs_backward_as_in_caffe():
    # Caffe's Net::Init reads the prototxt's specs (none: lr_mult 1), not those the
    # BatchNorm layer adds for itself, so the layer counts as learning and its top
    # needs a diff even right over the input.
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label"
            input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
    layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" %s }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "bn" bottom: "label" top: "loss" }
    """
    plain = caffe.Net(text_format.Parse(text % "", caffe_pb2.NetParameter()), caffe.TRAIN)
    assert plain._layer_need_backward == [False, True, True]
    # Caffe's BatchNorm backward then writes the input's diff, propagate_down or not.
    plain.blobs["data"].data[...] = np.random.default_rng(4).standard_normal((4, 3))
    plain.blobs["label"].data[...] = [0, 1, 2, 1]
    plain.forward_backward()
    assert np.abs(plain.blobs["data"].diff).sum() > 0
    pinned = caffe.Net(text_format.Parse(
        text % "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }",
        caffe_pb2.NetParameter()), caffe.TRAIN)
    assert pinned._layer_need_backward == [False, False, False]
    assert plain.params_lr == pinned.params_lr == [0.0, 0.0, 0.0]
