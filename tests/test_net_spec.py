"""net_spec (pycaffe's NetSpec / layers / params / to_proto): naming, field routing,
values, errors; and SphereFace-20/-64 written with it (examples/sphereface_netspec.py)
equal, field by field, to the published prototxts in ../shared/nets."""

import os
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import ROOT, shared_path

import pyfacelayers as caffe
from pyfacelayers import layers as L
from pyfacelayers import params as P
from pyfacelayers.errors import NetError
from pyfacelayers.fileio import read_net
from pyfacelayers.proto import caffe_pb2

sys.path.insert(0, os.path.join(ROOT, "examples"))
import sphereface_netspec  # noqa: E402


def small_net():
    n = caffe.NetSpec()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[2, 3, 8, 8]),
                                                               dict(dim=[2])]))
    n.conv1 = L.Convolution(n.data, num_output=4, kernel_size=3, pad=1,
                            weight_filler=dict(type="xavier"))
    n.relu1 = L.PReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip = L.InnerProduct(L.ReLU(n.pool1), num_output=3)
    n.loss = L.SoftmaxWithLoss(n.ip, n.label, loss_weight=0.5)
    return n


def test_names_tops_and_routing():
    net = small_net().to_proto()
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in net.layer] == [
        ("data", "Input", [], ["data", "label"]),
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("relu1", "PReLU", ["conv1"], ["conv1"]),          # in place: the bottom's name
        ("pool1", "Pooling", ["conv1"], ["pool1"]),
        ("ReLU1", "ReLU", ["pool1"], ["ReLU1"]),            # unnamed: type + counter
        ("ip", "InnerProduct", ["ReLU1"], ["ip"]),
        ("loss", "SoftmaxWithLoss", ["ip", "label"], ["loss"])]
    conv, pool, loss = net.layer[1], net.layer[3], net.layer[6]
    assert list(conv.convolution_param.kernel_size) == [3]   # scalar into a repeated field
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.MAX
    assert list(loss.loss_weight) == [0.5]                   # not a *_param field: the layer's
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[2, 3, 8, 8], [2]]


def test_the_spec_builds_and_runs():
    net = caffe.Net(small_net().to_proto(), caffe.TRAIN, seed=0)
    loss = net.forward()["loss"]
    assert np.isfinite(loss) and loss > 0
    assert net.blobs["ip"].data.shape == (2, 3)


def test_prototxt_text_round_trips():
    text = str(small_net().to_proto())
    assert text_format.Parse(text, caffe_pb2.NetParameter()) == small_net().to_proto()


def test_counters_ntop_zero_and_explicit_names():
    n = caffe.NetSpec()
    n.x = L.Input(input_param=dict(shape=dict(dim=[1, 2])))
    a = L.ReLU(n.x)
    b = L.ReLU(a)
    n.out = L.TanH(b)
    n.silence = L.Silence(n.out, ntop=0)
    n.named = L.Sigmoid(n.x, name="custom_layer_name")
    layers = n.to_proto().layer
    assert [(l.name, list(l.top)) for l in layers] == [
        ("x", ["x"]), ("ReLU1", ["ReLU1"]), ("ReLU2", ["ReLU2"]), ("out", ["out"]),
        ("silence", []), ("custom_layer_name", ["named"])]
    assert "silence" in n.keys() and len(n.vals()) == 4


def test_to_proto_of_tops_names_everything():
    top = L.InnerProduct(L.Input(input_param=dict(shape=dict(dim=[4, 5]))), num_output=2)
    net = caffe.to_proto(top)
    assert [l.name for l in net.layer] == ["Input1", "InnerProduct1"]
    assert top.to_proto() == net


def test_values_lists_of_messages_dicts_enums_by_name():
    n = caffe.NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[1, 1, 4, 4])))
    n.conv = L.Convolution(n.data, num_output=2, kernel_h=3, kernel_w=1,
                           param=[dict(lr_mult=1), dict(lr_mult=2, decay_mult=0)],
                           include=dict(phase=caffe.TRAIN), engine="CUDNN")
    n.pool = L.Pooling(n.conv, pool="AVE", global_pooling=True)
    n.margin = L.MarginInnerProduct(n.pool, n.pool, num_output=3, type="DOUBLE", base=10,
                                    propagate_down=[True, False])
    conv, pool, margin = n.to_proto().layer[1:]
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in conv.param] == [(1, False),
                                                                             (2, True)]
    assert [i.phase for i in conv.include] == [caffe_pb2.TRAIN]
    assert conv.convolution_param.engine == caffe_pb2.ConvolutionParameter.CUDNN
    assert (conv.convolution_param.kernel_h, conv.convolution_param.kernel_w) == (3, 1)
    assert pool.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    # "type" exists in the layer and in margin_inner_product_param: the type's own wins
    assert margin.type == "MarginInnerProduct"
    assert margin.margin_inner_product_param.type == \
        caffe_pb2.MarginInnerProductParameter.DOUBLE
    assert list(margin.propagate_down) == [True, False]


def test_params_are_the_schema_enums():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Eltwise.SUM == caffe_pb2.EltwiseParameter.SUM
    assert P.MarginInnerProduct.QUADRUPLE == caffe_pb2.MarginInnerProductParameter.QUADRUPLE
    with pytest.raises(AttributeError, match="no message NopeParameter"):
        P.Nope.MAX
    with pytest.raises(AttributeError, match="PoolingParameter has no value MEDIAN"):
        P.Pooling.MEDIAN


def test_package_level_names():
    assert caffe.layers.Convolution.__name__ == "Convolution"
    assert caffe.params.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert caffe.NetSpec is caffe.net_spec.NetSpec
    with pytest.raises(AttributeError):
        caffe.layers.not_a_layer_or_module  # lower case: still the layers package's miss
    from pyfacelayers.layers import ConvolutionLayer  # a class name is the class itself
    from pyfacelayers.layers.convolution import ConvolutionLayer as defined
    assert ConvolutionLayer is defined


def _error(make, match):
    with pytest.raises(NetError, match=match):
        make().to_proto()


def test_errors_name_the_layer_and_field():
    data = lambda: L.Input(input_param=dict(shape=dict(dim=[1, 2, 4, 4])))  # noqa: E731
    _error(lambda: L.Convolution(data(), kernel_sise=3),
           r"Convolution layer 'Convolution1': no field 'kernel_sise' in convolution_param "
           r"or LayerParameter")
    _error(lambda: L.Convolution(data(), num_output=2, weight_filler=dict(tpye="xavier")),
           r"convolution_param.weight_filler has no field 'tpye'")
    _error(lambda: L.Convolution(data(), num_output="two"),
           r"convolution_param.num_output: cannot take 'two'")
    _error(lambda: L.Convolution(data(), weight_filler="xavier"),
           r"weight_filler is a message: give a dict of its fields, got 'xavier'")
    _error(lambda: L.Pooling(data(), pool="MEDIAN"), r"MEDIAN is not one of MAX, AVE")
    _error(lambda: L.MyCustomLayer(data(), size=3),
           r"no field 'size' in LayerParameter \(and MyCustomLayer has no \*_param")
    _error(lambda: L.Convolution(data(), bogus_param=dict()),
           r"no field 'bogus_param' in convolution_param or LayerParameter")
    with pytest.raises(NetError, match="bottom 0 must be a top made by a layer"):
        L.ReLU("data")
    with pytest.raises(NetError, match="in_place needs as many tops as bottoms"):
        L.ReLU(data(), ntop=2, in_place=True)
    with pytest.raises(AttributeError, match="this NetSpec has no top 'nope'"):
        caffe.NetSpec().nope


# -- SphereFace written with net_spec == the published prototxts ------------------------------
NETS = os.path.join("nets", "sphereface")


@pytest.mark.parametrize("depth,name", [(20, "sphereface_model"), (64, "sphereface_64_model")])
def test_sphereface_train_nets_equal_the_published_ones(depth, name):
    published = read_net(shared_path(NETS, name + ".prototxt"))
    assert sphereface_netspec.sphereface(depth) == published


@pytest.mark.parametrize("depth,name", [(20, "sphereface_deploy"),
                                        (64, "sphereface_64_deploy")])
def test_sphereface_deploy_nets_equal_the_published_ones(depth, name):
    """The published deploy nets use the legacy ``input:`` header, which the reader turns
    into an Input layer named "input"; ours is named "data". Everything else is equal."""
    published = read_net(shared_path(NETS, name + ".prototxt"))
    ours = sphereface_netspec.sphereface(depth, deploy=True)
    assert ours.layer[0].input_param == published.layer[0].input_param
    assert list(ours.layer[0].top) == list(published.layer[0].top) == ["data"]
    assert ours.layer[1:] == published.layer[1:]
    assert ours.name == published.name


def test_example_script_prints_a_net_that_runs(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sphereface_netspec.py", "--deploy"])
    sphereface_netspec.main()
    text = capsys.readouterr().out
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST, seed=0)
    out = net.forward(data=np.random.default_rng(0).standard_normal((1, 3, 112, 96)))
    assert out["fc5"].shape == (1, 512) and np.all(np.isfinite(out["fc5"]))
