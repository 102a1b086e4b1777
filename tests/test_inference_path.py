"""The TEST-phase path: diffs made only when used, and ReLU / PReLU applied inside the
oneDNN convolution before them (post-ops) where no backward can need the values in
between; results as the plain layer-by-layer run (im2col) within the net tolerance."""

import os

import numpy as np
import pytest

from conftest import assert_close

import pyfacelayers as caffe
from pyfacelayers.cpu import onednn

HAVE_ONEDNN, WHY = onednn.available()
needs_onednn = pytest.mark.skipif(not HAVE_ONEDNN, reason="oneDNN not installed: %s" % WHY)
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
DEPLOY = os.path.join(SHARED, "nets", "sphereface", "sphereface_deploy.prototxt")

SMALL = """
name: "small"
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 8 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.1 } }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 group: 2
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "p2" type: "PReLU" bottom: "c2" top: "c2"
        prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
        convolution_param { num_output: 4 kernel_size: 1 bias_term: false
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "r3" type: "ReLU" bottom: "c3" top: "r3" }
layer { name: "c4" type: "Convolution" bottom: "r3" top: "c4"
        convolution_param { num_output: 2 kernel_size: 1
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "p4" type: "PReLU" bottom: "c4" top: "c4" prelu_param { channel_shared: true
          filler { type: "constant" value: -0.3 } } }
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("PYFACELAYERS_CONV_ENGINE", "PYFACELAYERS_ONEDNN_LAYOUT"):
        monkeypatch.delenv(name, raising=False)


def small_net(tmp_path, phase=caffe.TEST):
    path = tmp_path / "small.prototxt"
    path.write_text(SMALL)
    return caffe.Net(str(path), phase, seed=3)


def run(net, x, **kwargs):
    out = net.forward(data=x, **kwargs)
    return {k: np.array(v) for k, v in out.items()}, {k: b.data.copy()
                                                        for k, b in net.blobs.items()}


def reference(monkeypatch, make, x, **kwargs):
    with monkeypatch.context() as patch:
        patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
        return run(make(), x, **kwargs)


def fused_layers(net):
    return [net._layer_names[i] for i, layer in enumerate(net.layers)
            if getattr(layer, "activation_fused", False)]


@needs_onednn
@pytest.mark.parametrize("layout,fused", [("any", ["c1", "c2", "c4"]), ("plain", ["c1"])])
def test_activations_fused_in_a_test_net_give_the_same_blobs(monkeypatch, tmp_path, layout,
                                                            fused):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    _, ref = reference(monkeypatch, lambda: small_net(tmp_path), x)
    monkeypatch.setenv("PYFACELAYERS_ONEDNN_LAYOUT", layout)
    net = small_net(tmp_path)
    assert sorted(net._fusions) == [1, 3, 7]  # c3 -> r3 is not in place: never fused
    _, blobs = run(net, x)
    assert fused_layers(net) == fused
    for name in ref:
        assert_close(blobs[name], ref[name], 1e-5, name)
    # a blob's value between a convolution and its activation is never stored, as in
    # Caffe's in-place layers; the PReLU slopes are read at each pass
    net.params["p2"][0].data[...] *= -1
    changed, _ = run(net, x)
    _, ref2 = reference(monkeypatch, lambda: _with_p2_flipped(small_net(tmp_path)), x)
    assert_close(changed["c4"], ref2["c4"], 1e-5, "c4 after new slopes")


def _with_p2_flipped(net):
    net.params["p2"][0].data[...] *= -1
    return net


@needs_onednn
def test_a_pass_ending_at_the_convolution_leaves_it_unactivated(monkeypatch, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    _, ref = reference(monkeypatch, lambda: small_net(tmp_path), x, end="c2")
    net = small_net(tmp_path)
    _, blobs = run(net, x, end="c2")
    assert fused_layers(net) == ["c1"]
    assert (blobs["c2"] < 0).any()  # no PReLU has run on it
    assert_close(blobs["c2"], ref["c2"], 1e-5, "c2")


@needs_onednn
def test_nothing_is_fused_where_backward_can_run(tmp_path):
    with_loss = SMALL.replace('input: "data"', 'input: "t" input_shape { dim: 2 dim: 2 dim: 4 '
                              'dim: 3 } input: "data"') + (
        'layer { name: "loss" type: "EuclideanLoss" bottom: "c4" bottom: "t" top: "loss" }')
    forced = SMALL.replace('name: "small"', 'name: "small" force_backward: true')
    for text, phase in ((with_loss, caffe.TRAIN), (with_loss, caffe.TEST),
                        (forced, caffe.TEST)):
        path = tmp_path / "net.prototxt"
        path.write_text(text)
        assert caffe.Net(str(path), phase)._fusions == {}


@needs_onednn
def test_float64_and_im2col_run_the_activation_layers(monkeypatch, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 8))
    path = tmp_path / "small.prototxt"
    path.write_text(SMALL)
    net = caffe.Net(str(path), caffe.TEST, seed=3, dtype=np.float64)
    net.forward(data=x)
    assert fused_layers(net) == []
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
    net = small_net(tmp_path)
    net.forward(data=x.astype(np.float32))
    assert fused_layers(net) == []


def test_a_net_that_never_runs_backward_holds_no_diffs(tmp_path):
    net = small_net(tmp_path)
    net.forward(data=np.ones((2, 3, 9, 8), np.float32))
    assert not any(b.has_diff for b in net.blobs.values())
    assert not any(b.has_diff for blobs in net.params.values() for b in blobs)
    # asked for, a diff is there (zeros), as before
    assert not net.blobs["c1"].diff.any() and net.blobs["c1"].has_diff


@needs_onednn
@pytest.mark.skipif(not os.path.exists(DEPLOY), reason="needs ../shared (SphereFace nets)")
@pytest.mark.parametrize("batch", [1, 3])
def test_sphereface_deploy_through_onednn_matches_im2col(monkeypatch, batch):
    def make():
        net = caffe.Net(DEPLOY, caffe.TEST, seed=5)
        net.blobs["data"].reshape(batch, 3, 112, 96)
        net.reshape()
        return net
    x = np.random.default_rng(batch).standard_normal((batch, 3, 112, 96)).astype(np.float32)
    out_ref, _ = reference(monkeypatch, make, x)
    net = make()
    out, _ = run(net, x)
    assert len(fused_layers(net)) == 20  # every convolution, with its PReLU
    assert_close(out["fc5"], out_ref["fc5"], 1e-4, "fc5")


# -- the weights' reordered copy (kept while Blob.data_version holds) -------------------
def _weight_buffer(net, name):
    """The forward's buffer of reordered weights, or None (plain weights: no reorder)."""
    step = net.layers[list(net._layer_names).index(name)]._onednn_conv[1]._steps["forward"]
    return next((buffer for arg, _, _, buffer in step.before
                 if arg == onednn.ARG_WEIGHTS), None)


@needs_onednn
def test_weights_are_reordered_once_and_again_after_a_write(monkeypatch, tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    net = small_net(tmp_path)
    assert all(layer.weights_fixed for layer in net.layers if layer.type == "Convolution")
    first, _ = run(net, x)
    reordering = [name for name in ("c1", "c2", "c3", "c4") if _weight_buffer(net, name)]
    if not reordering:
        pytest.skip("oneDNN runs every convolution on the plain weight layout here")
    name = reordering[0]
    buffer = _weight_buffer(net, name)
    kept = buffer.holds
    assert kept is not None
    again, _ = run(net, x)
    assert buffer.holds == kept
    assert_close(again["c4"], first["c4"], 0)

    # A write through blob.data is seen by the next pass, as on im2col.
    w = net.params[name][0].data
    w *= -2
    changed, _ = run(net, x)
    assert buffer.holds != kept
    with monkeypatch.context() as patch:
        patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
        ref_net = small_net(tmp_path)
        ref_net.params[name][0].data[...] = w
        expected, _ = run(ref_net, x)
    assert_close(changed["c4"], expected["c4"], 1e-5)
    assert not np.allclose(changed["c4"], first["c4"])


@needs_onednn
def test_a_reference_taken_before_the_pass_cannot_write_stale_weights(tmp_path):
    # As in Caffe's GPU mode, take .data again after a Forward to write: here a
    # write through the older reference raises instead of going unseen.
    x = np.zeros((2, 3, 9, 8), np.float32)
    net = small_net(tmp_path)
    held = net.params["c1"][0].data
    run(net, x)
    with pytest.raises(ValueError, match="read-only"):
        held[...] = 0
    net.params["c1"][0].data[...] = 0  # taking .data again makes it writable
    assert not held.any()


@needs_onednn
def test_a_test_net_sharing_the_training_weights_follows_the_updates(tmp_path):
    # The solver's test net shares the blobs the training net updates every step.
    train = tmp_path / "train.prototxt"
    train.write_text(SMALL.replace('name: "small"', 'name: "small"\nforce_backward: true'))
    net = caffe.Net(str(train), caffe.TRAIN, seed=3)
    test = small_net(tmp_path)
    test.share_with(net)
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 8)).astype(np.float32)
    before, _ = run(test, x)
    net.forward(data=x)
    net.blobs["c4"].diff[...] = 1
    net.backward()
    for blob in (b for layer in net.layers for b in layer.blobs):
        blob.data -= 0.1 * blob.diff  # what Solver.apply_update does
    after, _ = run(test, x)
    fresh = small_net(tmp_path)
    for name, blobs in net.params.items():
        for k, blob in enumerate(blobs):
            fresh.params[name][k].data[...] = blob.data
    expected, _ = run(fresh, x)
    assert not np.allclose(after["c4"], before["c4"])
    assert_close(after["c4"], expected["c4"], 1e-6)
