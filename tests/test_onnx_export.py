"""ONNX export: every exportable layer type run by onnxruntime against our forward
(float32, 1e-5 of the norm per layer), the three deploy nets of fixture set B3 against
the original Caffe's fc5 (1e-4, whole-net standard), a free batch size, the CLI, and
the errors. Skips without onnx and onnxruntime (both in the test extra)."""

import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from caffe_ref import load, portable_values, set_recipe_weights  # noqa: E402
from conftest import assert_close, shared_path  # noqa: E402
from test_net_parity import B3_CASES  # noqa: E402  (the fixture files and their nets)

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers import cli  # noqa: E402
from pyfacelayers.fileio import read_net  # noqa: E402
from pyfacelayers.onnx_export import ExportError, export  # noqa: E402

LAYER_TOL, NET_TOL = 1e-5, 1e-4


def run_onnx(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def one_layer_net(layer_text, shape, extra_input=None):
    text = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n' \
        % " ".join("dim: %d" % d for d in shape)
    if extra_input:
        text += ('layer { name: "data2" type: "Input" top: "data2" input_param { shape { %s '
                 '} } }\n' % " ".join("dim: %d" % d for d in extra_input))
    net = caffe.Net(read_net(text + layer_text), caffe.TEST, seed=0)
    rng = np.random.default_rng(1)
    for blobs in net.params.values():  # biases and slopes away from their fillers' 0
        for b in blobs:
            b.data[...] = b.data + rng.standard_normal(b.data.shape).astype(np.float32) * 0.3
    return net


def check(net, shapes):
    rng = np.random.default_rng(2)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    ours = {k: np.array(v) for k, v in net.forward(**feeds).items()}
    theirs = run_onnx(export(net), feeds)
    # an input rewritten in place keeps its name for the graph input
    theirs = {name.split("@")[0]: value for name, value in theirs.items()}
    assert set(theirs) == set(ours)
    for name in ours:
        assert_close(theirs[name], ours[name], LAYER_TOL, name)


W = 'weight_filler { type: "gaussian" std: 0.5 }'
LAYERS = {
    "conv": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param '
             '{ num_output: 4 kernel_size: 3 pad: 1 %s } }' % W, (2, 3, 7, 6)),
    "conv_group_stride_dilation_nobias": (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
        'num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 2 pad_w: 1 dilation: 2 '
        'group: 3 bias_term: false %s } }' % W, (2, 6, 11, 9)),
    "conv_1d": ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                'convolution_param { num_output: 3 kernel_size: 3 stride: 2 %s } }' % W,
                (2, 2, 11)),
    "deconv": ('layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
               'convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 %s } }' % W,
               (2, 3, 5, 4)),
    "prelu": ('layer { name: "p" type: "PReLU" bottom: "data" top: "p" }', (2, 3, 4, 5)),
    "prelu_shared_in_place": (
        'layer { name: "p" type: "PReLU" bottom: "data" top: "data" prelu_param { '
        'channel_shared: true } }', (2, 3, 4, 5)),
    "relu_leaky": ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { '
                   'negative_slope: 0.1 } }', (2, 3)),
    "relu_sigmoid_tanh_chain": (
        'layer { name: "r" type: "ReLU" bottom: "data" top: "a" }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "a" top: "b" }\n'
        'layer { name: "t" type: "TanH" bottom: "data" top: "c" }', (3, 4)),
    "inner_product_from_4d": ('layer { name: "ip" type: "InnerProduct" bottom: "data" '
                              'top: "ip" inner_product_param { num_output: 5 %s } }' % W,
                              (2, 3, 4, 2)),
    "inner_product_transpose": ('layer { name: "ip" type: "InnerProduct" bottom: "data" '
                                'top: "ip" inner_product_param { num_output: 5 transpose: '
                                'true bias_term: false %s } }' % W, (3, 7)),
    "pool_max_ceil": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                      'pooling_param { pool: MAX kernel_size: 3 stride: 2 } }', (2, 3, 8, 7)),
    "pool_max_pad": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                     'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }',
                     (2, 3, 6, 5)),
    "pool_ave_pad": ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                     'pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
                     (2, 3, 7, 9)),
    "pool_global": ('layer { name: "m" type: "Pooling" bottom: "data" top: "m" '
                    'pooling_param { pool: MAX global_pooling: true } }\n'
                    'layer { name: "a" type: "Pooling" bottom: "data" top: "a" '
                    'pooling_param { pool: AVE global_pooling: true } }', (2, 3, 5, 4)),
    "softmax_dropout_flatten": (
        'layer { name: "f" type: "Flatten" bottom: "data" top: "f" }\n'
        'layer { name: "d" type: "Dropout" bottom: "f" top: "f" }\n'
        'layer { name: "s" type: "Softmax" bottom: "f" top: "s" }', (2, 3, 2, 2)),
    "reshape_concat_slice": (
        'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { '
        'dim: 0 dim: 2 dim: -1 } } }\n'
        'layer { name: "sl" type: "Slice" bottom: "r" top: "a" top: "b" slice_param { axis: 2 '
        'slice_point: 2 } }\n'
        'layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" concat_param { '
        'axis: 2 } }', (2, 4, 3)),
    "batchnorm_scale_bias": (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        'layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" scale_param { bias_term: true '
        '} }\n'
        'layer { name: "bi" type: "Bias" bottom: "sc" top: "bi" }', (2, 3, 4, 4)),
    "lrn": ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 3 '
            'alpha: 0.5 beta: 0.75 k: 2 } }', (2, 5, 3, 3)),
}
ELTWISE = {
    "prod": "operation: PROD", "sum_coeffs": "operation: SUM coeff: 0.5 coeff: -2",
    "max": "operation: MAX"}


@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layer_matches_onnxruntime(case):
    text, shape = LAYERS[case]
    net = one_layer_net(text, shape)
    if case == "batchnorm_scale_bias":  # stored statistics with Caffe's scale factor 2
        bn = net.params["bn"]
        bn[0].data[...] = [0.2, -0.4, 1.0]
        bn[1].data[...] = [1.5, 0.3, 2.2]
        bn[2].data[...] = 2.0
    check(net, {"data": shape})


@pytest.mark.parametrize("operation", sorted(ELTWISE))
def test_eltwise_matches_onnxruntime(operation):
    net = one_layer_net('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data2" '
                        'bottom: "data" top: "e" eltwise_param { %s } }'
                        % ELTWISE[operation].replace("coeff: -2", "coeff: -2 coeff: 3"),
                        (2, 3, 4), extra_input=(2, 3, 4))
    check(net, {"data": (2, 3, 4), "data2": (2, 3, 4)})


def test_random_pooling_and_convolution_geometries():
    """60 seeded random geometries (MAX/AVE pooling, convolution and deconvolution with
    stride, padding, dilation and groups): each one is exported and matches, or is
    refused with an ExportError (AVE windows past the padded edge, windows wholly
    outside the input), never exported wrong."""
    rng = np.random.default_rng(5)
    exported = 0
    for trial in range(60):
        channels, (height, width) = int(rng.integers(1, 4)), rng.integers(4, 12, 2)
        k, s = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        p = int(rng.integers(0, k))
        kind = ("MAX", "AVE", "Convolution", "Deconvolution")[trial % 4]
        if kind in ("MAX", "AVE"):
            text = ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param '
                    '{ pool: %s kernel_size: %d stride: %d pad: %d } }' % (kind, k, s, p))
        else:
            group = int(rng.choice([1, channels]))
            text = ('layer { name: "p" type: "%s" bottom: "data" top: "p" convolution_param { '
                    'num_output: %d kernel_size: %d stride: %d pad: %d dilation: %d group: %d '
                    '%s } }' % (kind, group * int(rng.integers(1, 3)), k, s, p,
                                int(rng.integers(1, 3)), group, W))
        shape = (2, channels, int(height), int(width))
        try:
            net = one_layer_net(text, shape)
        except caffe.errors.LayerError:  # a kernel larger than the padded input
            continue
        try:
            check(net, {"data": shape})
            exported += 1
        except ExportError as exc:
            assert kind in ("MAX", "AVE") and ("overhangs" in str(exc)
                                               or "wholly outside" in str(exc)), str(exc)
    assert exported >= 40


def test_window_wholly_outside_the_input_is_refused():
    net = one_layer_net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                        'pooling_param { pool: MAX kernel_size: 1 stride: 3 } }', (1, 1, 5, 5))
    with pytest.raises(ExportError, match="wholly outside the input \\(stride \\[3, 3\\] > "
                                          "kernel \\[1, 1\\]\\)"):
        export(net)


@pytest.mark.parametrize("npz,net_path", B3_CASES)
def test_exported_deploy_nets_reproduce_caffe(npz, net_path):
    """The original Caffe's fc5 (fixture B3) from the exported model, in onnxruntime,
    with a batch of 3 copies of the fixture input (the batch size is free)."""
    z, meta = load(shared_path("fixtures", "caffe-ref", "B3_deploy", npz))
    net = caffe.Net(shared_path("nets", *net_path), caffe.TEST, seed=0)
    set_recipe_weights(net, meta["param_recipe"])
    recipe = meta["input_recipe"]
    data = portable_values(recipe["shape"], recipe["seed"], recipe["scale"]).astype(np.float32)
    model = export(net)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    out = run_onnx(model, {"data": np.concatenate([data] * 3)})["fc5"]
    for row in out:
        assert_close(row[None], z["out__fc5"], NET_TOL, "fc5")


def test_cli_writes_a_loadable_model(tmp_path, capsys):
    import onnx
    deploy = shared_path("nets", "sphereface", "sphereface_deploy.prototxt")
    weights, out = tmp_path / "w.caffemodel", tmp_path / "sphereface.onnx"
    caffe.Net(deploy, caffe.TEST, seed=0).save(str(weights))
    assert cli.main(["export", "-model", deploy, "-weights", str(weights), "-out", str(out),
                     "--fixed-batch"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Wrote %s (ONNX opset 13): inputs data [1, 3, 112, 96]; "
                              "outputs fc5 [1, 512]" % out)
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node].count("Conv") == 20


def test_training_layers_and_inexact_settings_are_refused():
    train = read_net(shared_path("nets", "sphereface", "sphereface_model.prototxt"))
    from pyfacelayers.input_swap import swap_data_layers
    net = caffe.Net(swap_data_layers(train, shapes={"data": (2, 3, 112, 96), "label": (2,)}),
                    caffe.TEST, seed=0)
    for layer in net.params["fc6"]:
        layer.data[...] = 1
    with pytest.raises(ExportError, match='layer "fc6" \\(MarginInnerProduct\\) cannot be '
                                          'exported to ONNX; export the deploy net'):
        export(net)
    overhang = one_layer_net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                             'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }',
                             (1, 1, 8, 8))
    with pytest.raises(ExportError, match='layer "p": AVE pooling whose last window '
                                          'overhangs'):
        export(overhang)
    wide_ip = one_layer_net('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                            'inner_product_param { num_output: 2 axis: 2 } }', (2, 3, 4))
    with pytest.raises(ExportError, match="InnerProduct with axis 2"):
        export(wide_ip)


def test_without_onnx_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    net = one_layer_net(LAYERS["prelu"][0], (1, 3, 2, 2))
    with pytest.raises(ImportError, match="ONNX export needs the onnx package"):
        export(net)
