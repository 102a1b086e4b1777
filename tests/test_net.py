"""The net runtime: wiring, pycaffe API, weights I/O, every shared net building,
and bad definitions."""

import glob
import os

import numpy as np
import pytest
from conftest import NETS, shared_path

import pyfacelayers as caffe
from pyfacelayers.errors import FormatError, LayerError, NetError
from pyfacelayers.fileio import read_net
from pyfacelayers.input_swap import swap_data_layers
from pyfacelayers.proto import caffe_pb2

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 dim: 5 dim: 5 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


def tiny_net(phase=caffe.TRAIN, text=TINY, **kw):
    return caffe.Net(caffe_pb2.NetParameter() if False else read_net(text), phase, seed=3, **kw)


def test_pycaffe_api_shapes_and_names():
    net = tiny_net(caffe.TEST)
    assert net.inputs == ["data", "label"]
    assert net.outputs == ["acc", "loss"]
    assert list(net.params) == ["conv", "ip"]
    assert [l.type for l in net.layers][:2] == ["Input", "Split"]
    assert net.blobs["conv"].shape == (4, 4, 5, 5)
    assert net.blobs["data"].num == 4 and net.blobs["data"].channels == 3
    assert net.params["ip"][0].shape == (3, 100)
    assert "ip_ip_0_split_0" in net.blobs


def test_forward_backward_and_split_gradients_sum():
    net = tiny_net(caffe.TRAIN)
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    out = net.forward(data=data, label=np.array([0, 1, 2, 1], np.float32))
    assert set(out) == {"loss"} and np.isfinite(out["loss"]).all()
    net.clear_param_diffs()
    net.backward()
    grad = net.params["ip"][0].diff.copy()
    assert np.abs(grad).sum() > 0
    # diffs accumulate until cleared, as in Caffe
    net.forward()
    net.backward()
    np.testing.assert_allclose(net.params["ip"][0].diff, 2 * grad, rtol=1e-5)


def test_force_backward_gives_input_gradient():
    text = "force_backward: true\n" + TINY
    net = tiny_net(caffe.TRAIN, text)
    net.forward(data=np.ones((4, 3, 5, 5), np.float32), label=np.zeros(4, np.float32))
    diffs = net.backward()
    assert np.abs(diffs["data"]).sum() > 0
    plain = tiny_net(caffe.TRAIN)
    plain.forward(data=np.ones((4, 3, 5, 5), np.float32), label=np.zeros(4, np.float32))
    assert np.abs(plain.backward()["data"]).sum() == 0  # no layer needs it


def test_save_and_copy_from_round_trip(tmp_path):
    net = tiny_net()
    path = str(tmp_path / "tiny.caffemodel")
    net.save(path)
    other = caffe.Net(read_net(TINY), path, caffe.TRAIN, seed=99)
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_shared_params_are_one_blob():
    text = TINY.replace('top: "ip"\n', 'top: "ip"\n param { name: "w" } param { name: "b" }\n')
    text += """layer { name: "ip2" type: "InnerProduct" bottom: "conv" top: "ip2"
                 param { name: "w" } param { name: "b" }
                 inner_product_param { num_output: 3 } }
               layer { name: "l2" type: "EuclideanLoss" bottom: "ip" bottom: "ip2" top: "l2" }"""
    net = tiny_net(caffe.TRAIN, text)
    assert net.params["ip"][0] is net.params["ip2"][0]
    assert len(net.learnable_params) == 4


def test_float64_net():
    net = tiny_net(dtype=np.float64)
    assert net.blobs["conv"].data.dtype == np.float64
    assert net.params["conv"][0].data.dtype == np.float64


# -- every shared net builds ------------------------------------------------------------

KNOWN_DATA_SHAPES = {
    "mnist": {"data": (4, 1, 28, 28), "label": (4,)},
    "cifar10": {"data": (4, 3, 32, 32), "label": (4,)},
    "sphereface": {"data": (2, 3, 112, 96), "label": (2,)},
}


def _phases(param):
    phases = {rule.phase for layer in param.layer for rule in layer.include if
              rule.HasField("phase")}
    return sorted(phases) or [caffe.TRAIN, caffe.TEST]


# The SphereFace descendants' folders (happynear-*, xialuxi-*, ...) are built, every
# phase and every file, by test_family_nets.py.
_FORK_FOLDERS = ("happynear-", "xialuxi-", "luameows-", "Chaiyanchong-", "cunjian-")


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(NETS, "*", "*.prototxt"))
                                        if "solver" not in os.path.basename(p)
                                        and not os.path.basename(os.path.dirname(p))
                                        .startswith(_FORK_FOLDERS)))
def test_every_shared_net_builds_with_input_layers(path):
    param = read_net(path)
    shapes = next((s for key, s in KNOWN_DATA_SHAPES.items() if key in path), {})
    if "autoencoder" in path:
        shapes = {"data": (4, 1, 28, 28)}
    for layer in param.layer:  # keep the big nets light: small batches
        if layer.type == "ImageData":
            layer.image_data_param.batch_size = 2
    swapped = swap_data_layers(param, shapes)
    stages = {"autoencoder": ["test-on-test"]}
    for phase in _phases(param):
        extra = next((s for key, s in stages.items() if key in path), [])
        net = caffe.Net(swapped, phase, seed=0, stages=extra if phase == caffe.TEST else [])
        assert len(net.layers) >= len(param.layer) // 2


# -- bad input -----------------------------------------------------------------------

def test_unknown_bottom_is_named():
    text = TINY.replace('bottom: "conv" top: "ip"', 'bottom: "nope" top: "ip"')
    with pytest.raises(NetError, match='"ip".*unknown bottom blob "nope"'):
        tiny_net(caffe.TRAIN, text)


def test_duplicate_top_not_in_place():
    text = TINY.replace('bottom: "conv" top: "ip"', 'bottom: "conv" top: "conv2"').replace(
        'bottom: "ip"', 'bottom: "conv2"') + \
        'layer { name: "again" type: "ReLU" bottom: "data" top: "conv2" }'
    with pytest.raises(NetError, match='"again".*"conv2" is already produced'):
        tiny_net(caffe.TEST, text)


def test_caffemodel_shape_mismatch_names_layer_and_shapes(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    tiny_net().save(path)
    other = TINY.replace("num_output: 3", "num_output: 5")
    with pytest.raises(FormatError, match=r'param 0 of layer "ip".*\(3, 100\).*\(5, 100\)'):
        caffe.Net(read_net(other), path, caffe.TRAIN)


def test_unknown_layer_type_is_named():
    text = TINY + 'layer { name: "odd" type: "NoSuchLayer" bottom: "ip" top: "odd" }'
    with pytest.raises(LayerError, match='"odd".*unknown layer type "NoSuchLayer"'):
        tiny_net(caffe.TEST, text)


def test_data_swap_needs_shapes_it_cannot_know():
    param = read_net(shared_path("nets", "caffe-examples", "examples_mnist_lenet_train_test.prototxt"))
    with pytest.raises(NetError, match='"mnist".*pass shapes'):
        swap_data_layers(param)


def test_input_batch_size_checked():
    net = tiny_net()
    with pytest.raises(NetError, match="batch size"):
        net.forward(data=np.zeros((2, 3, 5, 5), np.float32))


# -- pycaffe's forward_all / forward_backward_all --------------------------------------------
BATCHED = """
name: "batched"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "act" type: "TanH" bottom: "ip" top: "act" }
"""


def _batched_net():
    net = caffe.Net(read_net(BATCHED), caffe.TEST, dtype=np.float64, seed=3)
    w, b = (p.data.copy() for p in net.params["ip"])
    return net, w, b


def test_forward_all_batches_pads_and_trims():
    net, w, b = _batched_net()
    x = np.random.default_rng(0).standard_normal((5, 3))  # 5 items, batch 2: 3 passes
    out = net.forward_all(blobs=["ip"], data=x)
    np.testing.assert_allclose(out["ip"], x @ w.T + b, rtol=1e-12)
    np.testing.assert_allclose(out["act"], np.tanh(x @ w.T + b), rtol=1e-12)
    assert set(out) == {"act", "ip"}
    assert net.forward_all(data=x[:0])["act"].shape == (0, 4)


def test_forward_backward_all_gives_outputs_and_input_diffs():
    net, w, b = _batched_net()
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((5, 3)), rng.standard_normal((5, 4))
    outs, diffs = net.forward_backward_all(blobs=["ip"], diffs=["ip"], data=x, act=dy)
    y = x @ w.T + b
    np.testing.assert_allclose(outs["act"], np.tanh(y), rtol=1e-12)
    np.testing.assert_allclose(outs["ip"], y, rtol=1e-12)
    dip = dy * (1 - np.tanh(y) ** 2)
    np.testing.assert_allclose(diffs["ip"], dip, rtol=1e-12)
    np.testing.assert_allclose(diffs["data"], dip @ w, rtol=1e-12)
    assert all(isinstance(v, np.ndarray) and len(v) == 5 for v in (*outs.values(),
                                                                     *diffs.values()))


def test_batched_calls_refuse_unknown_names_and_ragged_arrays():
    net, _, _ = _batched_net()
    with pytest.raises(NetError, match='"bogus" is not an input blob'):
        net.forward_all(bogus=np.zeros((2, 3)))
    with pytest.raises(NetError, match="different lengths"):
        net.forward_backward_all(data=np.zeros((4, 3)), act=np.zeros((3, 4)))
