"""pycaffe names beyond the everyday ones: caffe.coord_map, the built-in exceptions
scripts catch, Net's index-based bindings and per-layer hooks, Solver.share_weights,
Blob device pointers, and the process-wide opt-in for Python layers."""

import sys
from collections import OrderedDict

import numpy as np
import pytest
from google.protobuf import text_format

import pyfacelayers as caffe
from pyfacelayers import layers as L
from pyfacelayers import params as P
from pyfacelayers.coord_map import (AxisMismatchException, UndefinedMapException, compose,
                                    coord_map_from_to, crop, inverse)
from pyfacelayers.errors import LayerError, NetError
from pyfacelayers.proto import caffe_pb2


# -- caffe.coord_map ---------------------------------------------------------------------

def _conv_relu(bottom, nout, ks=3, pad=1):
    conv = L.Convolution(bottom, kernel_size=ks, num_output=nout, pad=pad)
    return conv, L.ReLU(conv, in_place=True)


def _fcn_vgg16():
    """The VGG16 trunk of FCN (conv1_1 padded by 100), as FCN's net.py writes it."""
    n = caffe.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 3, 500, 500])))
    bottom = n.data
    for stage, (count, width) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512),
                                            (3, 512)], start=1):
        for k in range(1, count + 1):
            pad = 100 if (stage, k) == (1, 1) else 1
            conv, relu = _conv_relu(bottom, width, pad=pad)
            n["conv%d_%d" % (stage, k)], n["relu%d_%d" % (stage, k)] = conv, relu
            bottom = relu
        n["pool%d" % stage] = bottom = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2,
                                                 stride=2)
    n.fc6, n.relu6 = _conv_relu(n.pool5, 4096, ks=7, pad=0)
    n.drop6 = L.Dropout(n.relu6, dropout_ratio=0.5, in_place=True)
    n.fc7, n.relu7 = _conv_relu(n.drop6, 4096, ks=1, pad=0)
    n.drop7 = L.Dropout(n.relu7, dropout_ratio=0.5, in_place=True)
    n.score_fr = L.Convolution(n.drop7, num_output=21, kernel_size=1, pad=0)
    return n


def _up(bottom, kernel, stride):
    return L.Deconvolution(bottom, convolution_param=dict(num_output=21, kernel_size=kernel,
                                                          stride=stride, bias_term=False),
                           param=[dict(lr_mult=0)])


def _crop_offsets(proto):
    return {layer.name: (layer.crop_param.axis, list(layer.crop_param.offset))
            for layer in proto.layer if layer.type == "Crop"}


def test_crop_gives_the_published_fcn_offsets():
    # FCN-32s and FCN-8s (fcn.berkeleyvision.org's voc-fcn32s / voc-fcn8s prototxts):
    # score 19; score_pool4c 5, score_pool3c 9, score 31.
    n = _fcn_vgg16()
    n.upscore = _up(n.score_fr, 64, 32)
    n.score = crop(n.upscore, n.data)
    assert _crop_offsets(n.to_proto()) == {"score": (2, [19])}

    n = _fcn_vgg16()
    n.upscore2 = _up(n.score_fr, 4, 2)
    n.score_pool4 = L.Convolution(n.pool4, num_output=21, kernel_size=1, pad=0)
    n.score_pool4c = crop(n.score_pool4, n.upscore2)
    n.fuse_pool4 = L.Eltwise(n.upscore2, n.score_pool4c, operation=P.Eltwise.SUM)
    n.upscore_pool4 = _up(n.fuse_pool4, 4, 2)
    n.score_pool3 = L.Convolution(n.pool3, num_output=21, kernel_size=1, pad=0)
    n.score_pool3c = crop(n.score_pool3, n.upscore_pool4)
    n.fuse_pool3 = L.Eltwise(n.upscore_pool4, n.score_pool3c, operation=P.Eltwise.SUM)
    n.upscore8 = _up(n.fuse_pool3, 16, 8)
    n.score = crop(n.upscore8, n.data)
    assert _crop_offsets(n.to_proto()) == {"score_pool4c": (2, [5]),
                                           "score_pool3c": (2, [9]), "score": (2, [31])}


def test_coord_map_algebra_and_errors():
    data = L.Input(input_param=dict(shape=dict(dim=[1, 1, 20, 20])))
    conv = L.Convolution(data, kernel_size=5, num_output=1)
    axis, scale, shift = coord_map_from_to(data, conv)  # conv output i <- input i + 2
    assert axis == 1 and scale == 1 and shift == -2
    assert compose((None, 1, 0), (1, 2.0, 3.0)) == (1, 2.0, 3.0)
    assert compose((1, 2.0, 1.0), (1, 0.5, 4.0)) == (1, 1.0, 9.0)
    assert inverse((1, 2.0, 3.0)) == (1, 0.5, -1.5)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    with pytest.raises(UndefinedMapException):
        caffe.coord_map.coord_map(L.InnerProduct(data, num_output=2).fn)
    other = L.Input(input_param=dict(shape=dict(dim=[1, 1, 20, 20])))
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(other, conv)
    pooled = L.Pooling(data, kernel_size=2, stride=2)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(pooled, data)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(conv, data)
    with pytest.raises(AssertionError, match="legacy _h/_w"):
        crop(L.Convolution(data, kernel_h=3, kernel_w=3, num_output=1), data)


# -- the built-in exceptions pycaffe raises ----------------------------------------------

def test_exceptions_scripts_catch_as_in_pycaffe():
    blob = caffe_pb2.BlobProto()
    blob.data.extend([1.0, 2.0, 3.0])  # no shape: pycaffe's reshape fails
    with pytest.raises(ValueError, match="holds 3 values but its shape"):
        caffe.io.blobproto_to_array(blob)
    del blob.data[1:]
    assert caffe.io.blobproto_to_array(blob).shape == ()
    with pytest.raises(TypeError, match="bottom 0 must be a top"):
        L.ReLU(np.zeros(3))
    with pytest.raises(NetError):  # the same error, caught the project's way
        L.ReLU("data")
    with pytest.raises(AttributeError, match="no field 'no_such_field'"):
        caffe.to_proto(L.ReLU(L.Input(), no_such_field=1))
    with pytest.raises(TypeError):
        caffe.to_proto(L.Convolution(L.Input(), num_output=dict(a=1)))


# -- Net's bindings and hooks ---------------------------------------------------------------

NET = """
name: "small" force_backward: false
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "frozen" type: "InnerProduct" bottom: "data" top: "h"
        param { lr_mult: 0 } param { lr_mult: 0 }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "fc" type: "InnerProduct" bottom: "h" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def small_net():
    return caffe.Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe.TRAIN, seed=0)


def test_index_bindings_give_pycaffes_derived_names():
    net = small_net()
    names = net._blob_names
    # pycaffe builds its dicts and lists from these bindings exactly so:
    assert OrderedDict(zip(names, net._blobs)) == net.blobs
    assert [names[i] for i in net._inputs] == net.inputs == ["data", "label"]
    assert [names[i] for i in net._outputs] == net.outputs == ["loss", "prob"]
    assert OrderedDict(zip(names, net._blob_loss_weights)) == net.blob_loss_weights
    assert net._blob_loss_weights[names.index("loss")] == 1.0
    for i, layer in enumerate(net._layer_names):
        assert [names[k] for k in net._bottom_ids(i)] == net.bottom_names[layer]
        assert [names[k] for k in net._top_ids(i)] == net.top_names[layer]
    # The split Caffe inserts for "fc" (two consumers) is a blob of its own.
    assert net.bottom_names["loss"][0] != "fc"


def test_hooks_are_called_with_the_layer_index_as_caffe_does():
    net = small_net()
    calls = []
    for when in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(net, when)(lambda i, when=when: calls.append((when, i)))
    net.blobs["data"].data[...] = [[1, -2, 3], [0.5, 0.25, -1]]
    net.forward()
    n = len(net.layers)
    assert calls == [(w, i) for i in range(n) for w in ("before_forward", "after_forward")]
    calls.clear()
    net.backward()
    # Every layer index, also those that need no backward (the frozen one, relu, prob).
    assert calls == [(w, i) for i in reversed(range(n))
                     for w in ("before_backward", "after_backward")]
    calls.clear()
    net._forward(1, 2)
    assert [i for w, i in calls] == [1, 1, 2, 2]
    with pytest.raises(TypeError, match="callable"):
        net.after_backward(3)


def test_set_input_arrays_binding_takes_pycaffes_4d_labels():
    text = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
            'memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    data = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1)
    net._set_input_arrays(data, np.array([5, 6, 7, 8], np.float32).reshape(4, 1, 1, 1))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [5, 6])
    chunks = list(net._batch({"data": data[:3]}))
    assert len(chunks) == 2 and chunks[1]["data"].shape == (2, 3, 1, 1)
    assert not chunks[1]["data"][1].any()  # padded with zeros, as pycaffe's _batch


def test_solver_share_weights_gives_the_test_net_the_training_parameters(tmp_path):
    solver_param = text_format.Parse('base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
                                     'display: 0 random_seed: 1', caffe_pb2.SolverParameter())
    solver_param.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    solver = caffe.get_solver(solver_param)
    other = small_net()
    assert other.params["fc"][0] is not solver.net.params["fc"][0]
    solver.share_weights(other)
    for name in ("frozen", "fc"):
        for k in range(2):
            assert other.params[name][k] is solver.net.params[name][k]


def test_blob_device_pointers_only_in_gpu_mode():
    blob = small_net().blobs["data"]
    assert not hasattr(blob, "_gpu_data_ptr")  # as the missing attribute of CPU-only pycaffe
    with pytest.raises(AttributeError, match="set_mode_gpu"):
        blob._gpu_diff_ptr


# -- Python layers: the process-wide opt-in --------------------------------------------------

PY_MODULE = '''
import pyfacelayers as caffe


class Twice(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''
PY_NET = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } } '
          'layer { name: "twice" type: "Python" bottom: "x" top: "y" '
          'python_param { module: "%s" layer: "Twice" } }')


@pytest.fixture
def py_net(tmp_path, monkeypatch):
    name = "pfl_twice_%s" % tmp_path.name.replace("-", "_")
    (tmp_path / (name + ".py")).write_text(PY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PYFACELAYERS_ALLOW_PYTHON_LAYERS", raising=False)
    yield text_format.Parse(PY_NET % name, caffe_pb2.NetParameter())
    caffe.allow_python_layers(None)
    sys.modules.pop(name, None)


def test_python_layers_off_by_default_then_on_by_environment_or_call(py_net, monkeypatch):
    with pytest.raises(LayerError, match="PYFACELAYERS_ALLOW_PYTHON_LAYERS=1"):
        caffe.Net(py_net, caffe.TEST)
    monkeypatch.setenv("PYFACELAYERS_ALLOW_PYTHON_LAYERS", "0")
    with pytest.raises(LayerError):
        caffe.Net(py_net, caffe.TEST)
    monkeypatch.setenv("PYFACELAYERS_ALLOW_PYTHON_LAYERS", "1")
    net = caffe.Net(py_net, caffe.TEST)
    assert net.forward(x=np.array([1.0, 2.0]))["y"].tolist() == [2.0, 4.0]
    with pytest.raises(LayerError):  # the caller's keyword wins
        caffe.Net(py_net, caffe.TEST, allow_python_layers=False)
    caffe.allow_python_layers(False)  # the call wins over the environment
    with pytest.raises(LayerError):
        caffe.Net(py_net, caffe.TEST)
    monkeypatch.delenv("PYFACELAYERS_ALLOW_PYTHON_LAYERS")
    caffe.allow_python_layers(True)
    assert caffe.Net(py_net, caffe.TEST).layers[1].type == "Python"
    caffe.allow_python_layers(None)
    with pytest.raises(LayerError):
        caffe.Net(py_net, caffe.TEST)


def test_environment_opt_in_reaches_the_command_line(py_net, tmp_path, monkeypatch, capsys):
    from pyfacelayers.cli import main
    path = tmp_path / "py.prototxt"
    path.write_text(text_format.MessageToString(py_net))
    monkeypatch.setenv("PYFACELAYERS_ALLOW_PYTHON_LAYERS", "1")
    assert main(["time", "--model", str(path), "--iterations", "1"]) == 0


def test_draw_label_helpers_as_pycaffe():
    layer = text_format.Parse('name: "c" type: "Convolution" convolution_param { '
                              'num_output: 3 kernel_size: 5 stride: 2 }',
                              caffe_pb2.LayerParameter())
    assert caffe.draw.get_layer_label(layer, "LR") == \
        '"c\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 0"'
    assert caffe.draw.get_layer_label(layer, "TB") == \
        '"c (Convolution) kernel size: 5 stride: 2 pad: 0"'
    assert caffe.draw.get_edge_label(layer) == "3"
    pool = text_format.Parse('name: "p" type: "Pooling" pooling_param { pool: AVE '
                             'kernel_size: 2 stride: 2 }', caffe_pb2.LayerParameter())
    assert caffe.draw.get_layer_label(pool, "BT") == \
        '"p (AVE Pooling) kernel size: 2 stride: 2 pad: 0"'
    assert caffe.draw.get_edge_label(pool) == '""'
    assert caffe.draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert caffe.draw.choose_color_by_layertype("Pooling") == "#FF9900"
    assert caffe.draw.choose_color_by_layertype("ReLU") == "#6495ED"
    assert isinstance(caffe.net_spec.layers, caffe.net_spec.Layers)
    assert isinstance(caffe.net_spec.params, caffe.net_spec.Parameters)
