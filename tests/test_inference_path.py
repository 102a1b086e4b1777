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


# -- channels-last activations between convolutions (Blob.raw_data) --------------------
RESIDUAL = """
name: "residual"
input: "data" input_shape { dim: 2 dim: 3 dim: 10 dim: 8 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1
          weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "p1" type: "PReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "p2" type: "PReLU" bottom: "c2" top: "c2"
        prelu_param { filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "sum" }
layer { name: "c3" type: "Convolution" bottom: "sum" top: "c3"
        convolution_param { num_output: 5 kernel_size: 3 stride: 2
          weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "c3" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 } }
"""


def residual_net(tmp_path, phase=caffe.TEST, text=RESIDUAL):
    path = tmp_path / "residual.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase, seed=4)


@needs_onednn
def test_activations_between_convolutions_are_stored_channels_last(monkeypatch, tmp_path):
    x = np.random.default_rng(5).standard_normal((2, 3, 10, 8)).astype(np.float32)
    _, ref = reference(monkeypatch, lambda: residual_net(tmp_path), x)
    net = residual_net(tmp_path)
    # c3 feeds a Pooling layer and the data comes from the user: both stay NCHW
    planned = sorted(n for n, b in net.blobs.items() if b.prefers_channels_last)
    assert planned == ["c1", "c2", "sum"]
    net.forward(data=x)
    for name in planned + ["c1_p1_0_split_0", "c1_p1_0_split_1"]:
        raw = net.blobs[name].raw_data()
        assert net.blobs[name].is_channels_last
        assert raw.transpose(0, 2, 3, 1).flags.c_contiguous, name
    implementations = net.layers[list(net._layer_names).index("c2")]._onednn_conv[1]
    assert implementations.x_strides and implementations.y_strides
    # Anyone taking .data gets a C-contiguous array with the same values as im2col.
    for name in ref:
        data = net.blobs[name].data
        assert data.flags.c_contiguous and not net.blobs[name].is_channels_last
        assert_close(data, ref[name], 1e-5, name)
    # The next pass stores them channels-last again, with the new values.
    again = net.forward(data=2 * x)["pool"].copy()
    assert net.blobs["sum"].is_channels_last
    _, ref2 = reference(monkeypatch, lambda: residual_net(tmp_path), 2 * x)
    assert_close(again, ref2["pool"], 1e-5, "second pass")
    assert_close(net.blobs["sum"].data, ref2["sum"], 1e-5, "sum, second pass")


@needs_onednn
@pytest.mark.parametrize("how", ["partial_pass", "engine_switched", "plain_layouts",
                                 "user_write"])
def test_channels_last_blobs_give_caffe_values_whoever_reads_them(monkeypatch, tmp_path,
                                                                  how):
    x = np.random.default_rng(6).standard_normal((2, 3, 10, 8)).astype(np.float32)
    net = residual_net(tmp_path)
    net.forward(data=x)  # every planned blob channels-last now
    if how == "partial_pass":  # p2 runs as its own layer on a channels-last c2
        _, ref = reference(monkeypatch, lambda: residual_net(tmp_path), x)
        net.forward(data=x, end="c2")
        net.forward(start="p2")
    elif how in ("engine_switched", "plain_layouts"):  # C arrays for im2col, and for
        # oneDNN's plain layouts (which have only reference kernels for NHWC)
        monkeypatch.setenv(*(("PYFACELAYERS_CONV_ENGINE", "caffe") if how == "engine_switched"
                             else ("PYFACELAYERS_ONEDNN_LAYOUT", "plain")))
        _, ref = reference(monkeypatch, lambda: residual_net(tmp_path), x)
        net.forward(data=x)
        if how == "plain_layouts":
            conv = net.layers[list(net._layer_names).index("c2")]._onednn_conv[1]
            assert conv.x_strides is None and conv.y_strides is None
            assert "ref" not in conv.implementations()["forward"]
    else:  # a value written into a stored blob is what the next layers read
        with monkeypatch.context() as patch:
            patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
            ref_net = residual_net(tmp_path)
            ref_net.forward(data=x, end="sum")
            ref_net.blobs["sum"].data[...] *= 2
            ref_net.forward(start="c3")
            ref = {name: blob.data.copy() for name, blob in ref_net.blobs.items()}
        net.blobs["sum"].data[...] *= 2
        net.forward(start="c3")
    for name in ("c2", "sum", "c3", "pool"):
        assert_close(net.blobs[name].data, ref[name], 1e-5, "%s (%s)" % (name, how))


@needs_onednn
def test_nothing_is_stored_channels_last_where_backward_can_run(tmp_path):
    with_loss = RESIDUAL.replace('input: "data"', 'input: "t" input_shape { dim: 2 dim: 5 '
                                 'dim: 3 dim: 2 } input: "data"') + (
        'layer { name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "t" top: "loss" }')
    forced = RESIDUAL.replace('name: "residual"', 'name: "residual" force_backward: true')
    for phase, text in ((caffe.TRAIN, with_loss), (caffe.TEST, with_loss),
                        (caffe.TEST, forced)):
        net = residual_net(tmp_path, phase, text)
        assert not any(b.prefers_channels_last for b in net.blobs.values())
    net = residual_net(tmp_path, text=RESIDUAL)
    net_f64 = caffe.Net(str(tmp_path / "residual.prototxt"), caffe.TEST, dtype=np.float64)
    assert any(b.prefers_channels_last for b in net.blobs.values())
    assert not any(b.prefers_channels_last for b in net_f64.blobs.values())


def test_a_channels_last_blob_is_an_nchw_view():
    from pyfacelayers.blob import Blob
    blob = Blob((2, 3, 4, 5))
    blob.data[...] = np.arange(120).reshape(2, 3, 4, 5)
    blob.store_channels_last()  # values not kept: the writer overwrites them all
    raw = blob.raw_data()
    assert raw.shape == (2, 3, 4, 5) and raw.transpose(0, 2, 3, 1).flags.c_contiguous
    raw[...] = np.arange(120).reshape(2, 3, 4, 5)
    other = Blob((2, 3, 4, 5))
    other.share_data(blob, any_layout=True)  # Split's view keeps the layout
    assert other.is_channels_last and np.shares_memory(other.raw_data(), raw)
    data = blob.data
    assert data.flags.c_contiguous and not blob.is_channels_last
    np.testing.assert_array_equal(data, np.arange(120).reshape(2, 3, 4, 5))
    blob.store_channels_last()
    blob.reshape(1, 3, 4, 5)  # a new shape: a new C-contiguous array
    assert not blob.is_channels_last and blob.raw_data().flags.c_contiguous
