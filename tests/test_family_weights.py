"""Caffemodels written by any fork load (margin-family.md 2.1): weights are read per
layer from name, type, bottom, top and blobs only (pyfacelayers.fileio.weights), so
the forks' clashing sub-message numbers are never parsed."""

import numpy as np
import pytest

from conftest import assert_close, shared_path
from pyfacelayers.errors import FormatError
from pyfacelayers.fileio.binary import read_caffemodel
from pyfacelayers.fileio.text import parse_text, read_net
from pyfacelayers.fileio.weights import read_weights
from pyfacelayers.layers import registered_types
from pyfacelayers.net import Net
from pyfacelayers.proto import caffe_pb2

NCA = ("nets", "happynear-NormFace", "draw", "figure2", "lenet_iter_20000.caffemodel")


def varint(n):
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def bool_field(number, value):
    return varint(number << 3) + varint(int(value))


FILLER = caffe_pb2.FillerParameter(type="constant", value=1.0).SerializeToString()
# A fork's layer-specific sub-message, at that fork's number (its bytes as the fork
# writes them): (description, LayerParameter field number, payload).
FORK_SUBMESSAGES = [
    ("happynear margin_inner_product_param at 232", 232, bool_field(1, 10)),
    ("xialuxi margin_inner_product_param at 174", 174, bool_field(1, 10)),
    ("xialuxi st_loss_param at 145 (BVLC parameter_param)", 145, length_field(1, b"abc")),
    ("xialuxi st_param at 148", 148, length_field(1, b"\xff\xfe")),
    ("happynear bn_param at 200 (Angular-Triplet normalize_param)", 200,
     length_field(1, FILLER)),
    ("happynear normalize_param at 214 (Angular-Triplet normselect_param)", 214,
     length_field(1, b"L2") + bool_field(2, True) + bool_field(3, True)),
    ("xialuxi normalize_param at 170", 170, length_field(1, b"L2") + bool_field(3, True)),
    ("xialuxi-AdaCos adacos_add_m_scale_param at 211 (happynear center_loss_param)", 211,
     varint(1 << 3 | 5) + b"\x00\x00\x00?" + length_field(4, b"\x80\x81")),
    ("Angular-Triplet normalize_param at 200 with rescale (field 2)", 200,
     length_field(1, b"L2") + bool_field(2, True)),
]

NET = """
name: "forks"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4 } }
layer { name: "norm" type: "Normalize" bottom: "fc" top: "norm" }
"""


def fork_caffemodel(tmp_path, number, payload, v1=False):
    """A caffemodel whose fc layer carries weights and, after them, a fork's sub-message."""
    rng = np.random.default_rng(number)
    weight, bias = rng.standard_normal((4, 3)), rng.standard_normal(4)
    layer = caffe_pb2.V1LayerParameter() if v1 else caffe_pb2.LayerParameter()
    layer.name = "fc"
    if v1:
        layer.type = caffe_pb2.V1LayerParameter.INNER_PRODUCT
    else:
        layer.type = "InnerProduct"
    layer.bottom.append("data")
    layer.top.append("fc")
    for values in (weight, bias):
        blob = layer.blobs.add()
        blob.shape.dim.extend(values.shape)
        blob.data.extend(values.ravel().tolist())
    norm = caffe_pb2.LayerParameter(name="norm", type="Normalize")
    raw = layer.SerializeToString() + length_field(number, payload)
    net = caffe_pb2.NetParameter(name="forks").SerializeToString()
    net += length_field(2 if v1 else 100, raw)
    if not v1:
        net += length_field(100, norm.SerializeToString() + length_field(number, payload))
    path = tmp_path / ("fork_%d.caffemodel" % number)
    path.write_bytes(net)
    return path, weight.astype(np.float32), bias.astype(np.float32)


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "V1 layers"])
@pytest.mark.parametrize("what,number,payload", FORK_SUBMESSAGES,
                         ids=[m[0].split(" (")[0] for m in FORK_SUBMESSAGES])
def test_fork_numbered_caffemodel_loads(tmp_path, what, number, payload, v1):
    path, weight, bias = fork_caffemodel(tmp_path, number, payload, v1)
    weights = read_weights(path)
    assert [l.name for l in weights.layer] == ["fc"] + ([] if v1 else ["norm"])
    assert weights.layer[0].type == "InnerProduct"
    for layer in weights.layer:  # only the fields every fork numbers alike
        assert {f.name for f, _ in layer.ListFields()} <= {"name", "type", "bottom", "top",
                                                           "blobs"}
    net = Net(parse_text(NET, caffe_pb2.NetParameter()), caffe_pb2.TEST, weights=str(path))
    np.testing.assert_array_equal(net.params["fc"][0].data, weight)
    np.testing.assert_array_equal(net.params["fc"][1].data, bias)


def test_the_full_schema_misreads_what_the_weights_reader_skips(tmp_path):
    """Why the weights reader exists: with our whole schema, xialuxi's 145 is a corrupt
    parameter_param and happynear's bn_param at 200 lands in normalize_param."""
    path, _, _ = fork_caffemodel(tmp_path, 145, length_field(1, b"abc"))
    with pytest.raises(FormatError):
        read_caffemodel(path)
    path, _, _ = fork_caffemodel(tmp_path, 200, length_field(1, FILLER))
    try:
        misread = read_caffemodel(path).layer[0].normalize_param.normalize_type
    except FormatError:
        return
    assert misread != "L2"


def test_corrupt_fork_caffemodel_names_the_layer(tmp_path):
    path, _, _ = fork_caffemodel(tmp_path, 232, bool_field(1, 10))
    raw = path.read_bytes()
    path.write_bytes(raw[:40])
    with pytest.raises(FormatError, match="caffemodel"):
        read_weights(path)


def test_normface_caffemodel_reads_by_name_type_and_blobs():
    weights = read_weights(shared_path(*NCA))
    by_name = {l.name: l for l in weights.layer}
    assert by_name["id_weight"].type == "Parameter"
    assert tuple(by_name["id_weight"].blobs[0].shape.dim) == (10, 2)
    assert by_name["label_specific_rescale"].type == "LabelSpecificRescale"
    assert len(by_name["ip2"].blobs) == 0


def test_normface_caffemodel_runs_up_to_the_inner_product():
    """The real fork-written caffemodel through the layers before LabelSpecificRescale
    (the whole TEST forward is in test_family_nets.py)."""
    prototxt = shared_path("fixtures", "family-ref", "nets", "nca_lenet",
                           "lenet_NCA_nonorm_test_input.prototxt")
    fixture = np.load(shared_path("fixtures", "family-ref", "nets", "nca_lenet",
                                  "lenet_NCA_nonorm_test_forward_f32.npz"))
    param = read_net(prototxt)
    keep = [l for l in param.layer if l.name not in
            ("label_specific_rescale", "scale_ip2", "accuracy", "loss")]
    del param.layer[:]
    param.layer.extend(keep)
    net = Net(param, caffe_pb2.TEST, weights=shared_path(*NCA))
    net.blobs["data"].data[...] = fixture["input_data"]
    net.blobs["label"].data[...] = fixture["input_label"]
    net.forward()
    for name in ("conv1", "ip1", "ip1_dr", "id_weight", "ip2"):
        assert_close(net.blobs[name].data, fixture["blob__" + name], 1e-5, name)
    assert "Parameter" in registered_types()


def test_info_lists_a_fork_written_caffemodel(tmp_path, capsys):
    from pyfacelayers.cli import main
    path, _, _ = fork_caffemodel(tmp_path, 145, length_field(1, b"abc"))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fc" in out and "4x3" in out and "norm" in out
