"""ONNX export of the fork layers of the deploy nets (Normalize, NormL2, Flip, the
normalised InnerProduct), run by onnxruntime against our forward."""

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pyfacelayers as caffe  # noqa: E402
from conftest import assert_close, shared_path  # noqa: E402
from pyfacelayers import fork_semantics  # noqa: E402
from pyfacelayers.fileio import read_net  # noqa: E402
from pyfacelayers.onnx_export import ExportError, export  # noqa: E402
from test_onnx_export import run_onnx  # noqa: E402

LAYERS = [
    ('type: "Normalize"', (3, 5)),
    ('type: "Normalize" top: "norm"', (2, 4, 3, 2)),
    ('type: "Normalize" normalize_param { normalize_type: "L1" }', (2, 6)),
    ('type: "NormL2"', (3, 2, 2, 2)),
    ('type: "Flip"', (2, 3, 4, 5)),
    ('type: "Flip" flip_param { flip_height: true }', (1, 2, 3, 3)),
    ('type: "Flip" flip_param { flip_width: false flip_height: true }', (2, 2, 3, 4)),
    ('type: "Flip"', (3, 7)),
    ('type: "InnerProduct" inner_product_param { num_output: 4 normalize: true '
     'bias_term: false weight_filler { type: "gaussian" std: 3 } }', (3, 5)),
]


@pytest.mark.parametrize("semantics", ["gpu", "cpu"])
@pytest.mark.parametrize("layer,shape", LAYERS, ids=[l[0][6:30] for l in LAYERS])
def test_fork_layer_exports(layer, shape, semantics):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'
            'layer { name: "L" bottom: "data" top: "y" %s }'
            % (" ".join("dim: %d" % d for d in shape), layer))
    with fork_semantics.using(semantics):
        net = caffe.Net(read_net(text), caffe.TEST, seed=0)
    model = export(net)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    x[0] = 0 if "Normalize" in layer else x[0]  # a zero row: the epsilon shows
    ours = {k: np.array(v) for k, v in net.forward(data=x).items()}
    theirs = run_onnx(model, {"data": x})
    assert set(ours) == set(theirs)
    for name in ours:
        assert theirs[name].shape == ours[name].shape, name
        assert_close(theirs[name], ours[name], 1e-5, name)


def test_weight_as_bottom_is_refused():
    text = ('layer { name: "data" type: "Input" top: "data" top: "w" input_param { '
            'shape { dim: 2 dim: 3 } shape { dim: 4 dim: 3 } } }\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" bottom: "w" top: "y" '
            'inner_product_param { bias_term: false } }')
    net = caffe.Net(read_net(text), caffe.TEST, seed=0)
    with pytest.raises(ExportError, match='"ip".*weight is a bottom'):
        export(net)


@pytest.mark.parametrize("rel", [
    ("happynear-AMSoftmax", "prototxt", "face_deploy_mirror_normalize.prototxt"),
    ("happynear-NormFace", "prototxt", "example_of_mirror_face.prototxt"),
])
def test_mirror_deploy_net_exports(rel):
    param = read_net(shared_path("nets", *rel))
    for layer in param.layer:
        if layer.type == "Input":
            for s in layer.input_param.shape:
                s.dim[0] = 1
    net = caffe.Net(param, caffe.TEST, seed=0)
    rng = np.random.default_rng(4)
    for blobs in net.params.values():  # scale trained-looking weights down: finite outputs
        for b in blobs:
            b.data[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.05
    model = export(net)
    name = net.inputs[0]
    x = rng.uniform(-1, 1, net.blobs[name].shape).astype(np.float32)
    ours = {k: np.array(v) for k, v in net.forward(**{name: x}).items()}
    theirs = run_onnx(model, {name: x})
    for key in ours:
        assert_close(theirs[key], ours[key], 1e-4, key)
