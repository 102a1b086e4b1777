"""The merged schema of the SphereFace descendants (margin-family.md section 2): every
prototxt the forks published parses, with the names and defaults the spec gives."""

import glob
import os

import pytest
from google.protobuf import text_format

from conftest import NETS, shared_path
from pyfacelayers.fileio.text import read_net, read_solver
from pyfacelayers.proto import caffe_pb2

FORK_FOLDERS = ("happynear-", "xialuxi-", "luameows-", "Chaiyanchong-", "cunjian-")


def fork_prototxts():
    """Every .prototxt under ../shared/nets/<fork folder>/, relative to ../shared/nets."""
    found = []
    for folder in sorted(os.listdir(NETS)) if os.path.isdir(NETS) else []:
        if folder.startswith(FORK_FOLDERS):
            pattern = os.path.join(NETS, folder, "**", "*.prototxt")
            found += sorted(os.path.relpath(p, NETS) for p in glob.glob(pattern, recursive=True))
    return found


def is_solver(rel):
    return "solver" in os.path.basename(rel)


@pytest.mark.parametrize("rel", fork_prototxts() or ["<no fork nets>"])
def test_every_fork_prototxt_parses(rel):
    if rel == "<no fork nets>":
        shared_path("nets", "happynear-AMSoftmax")  # skips, naming the missing folder
    path = shared_path("nets", rel)
    if is_solver(rel):
        assert read_solver(path).base_lr > 0
    else:
        net = read_net(path)
        assert len(net.layer) > 0


def test_the_published_nets_are_all_there():
    shared_path("nets", "happynear-AMSoftmax")
    rels = fork_prototxts()
    assert len(rels) >= 38
    assert "xialuxi-arcface-caffe/cosin_add_m.prototxt" in rels


def layer(net, name):
    return next(l for l in net.layer if l.name == name)


def test_fork_fields_read_with_their_values():
    net = read_net(shared_path("nets", "xialuxi-arcface-caffe", "cosin_add_m.prototxt"))
    focal = next(l for l in net.layer if l.type == "FocalLoss")
    # written `focal_loss_param:{` (a colon before the brace)
    assert focal.focal_loss_param.type == caffe_pb2.FocalLossParameter.ORIGIN
    assert focal.focal_loss_param.gamma == 2
    assert focal.focal_loss_param.alpha == pytest.approx(0.25)
    norm = next(l for l in net.layer if l.type == "Normalize")
    assert norm.normalize_param.bp_norm
    fc6 = next(l for l in net.layer if l.type == "InnerProduct" and l.inner_product_param.normalize)
    assert not fc6.inner_product_param.bias_term
    addm = next(l for l in net.layer if l.type == "CosinAddm")
    assert addm.cosin_add_m_param.m == pytest.approx(0.5)


def test_enum_by_number_and_legacy_fields():
    path = shared_path("nets", "happynear-NormFace", "prototxt", "example_of_mirror_face.prototxt")
    net = read_net(path)
    ops = [l.eltwise_param.operation for l in net.layer if l.type == "Eltwise"]
    assert caffe_pb2.EltwiseParameter.MAX in ops
    text = open(path).read()
    assert "slice_dim" in text


def test_eltwise_operation_given_as_a_number():
    rel = [r for r in fork_prototxts() if "operation: 1" in open(os.path.join(NETS, r)).read()]
    if not rel:
        pytest.skip("../shared/nets has no fork net with `operation: 1`")
    net = read_net(os.path.join(NETS, rel[0]))
    assert any(l.type == "Eltwise" and l.eltwise_param.operation == caffe_pb2.EltwiseParameter.SUM
               for l in net.layer)


DEFAULTS = [
    ("normalize_param", {"normalize_type": "L2", "fix_gradient": False, "bp_norm": False,
                         "rescale": False}),
    ("flip_param", {"flip_width": True, "flip_height": False}),
    ("channel_scale_param", {"do_forward": True, "do_backward_feature": True,
                             "do_backward_scale": True, "global_scale": False,
                             "max_global_scale": 1000, "min_global_scale": 0,
                             "init_global_scale": 1}),
    ("label_specific_add_param", {"bias": 0, "transform_test": False, "bias_power": 1,
                                  "iteration": 0}),
    ("general_contrastive_loss_param", {"negative_margin": 1, "positive_outlier_thresh": 4,
                                        "max_negative_margin": pytest.approx(1.2)}),
    ("general_triplet_loss_param", {"margin": pytest.approx(0.2), "add_center_loss": True}),
    ("focal_loss_param", {"gamma": 2, "alpha": 0.25, "beta": 1}),
    ("cosin_add_m_param", {"m": 0.5, "transform_test": False}),
    ("combined_margin_param", {"m1": 4, "m2": 0.5, "m3": pytest.approx(0.35)}),
    ("adacos_add_m_scale_param", {"m": 0.5, "num_classes": 8750}),
    ("label_specific_margin_param", {"margin_max": 10, "power": 1, "gamma": 1}),
    ("label_specific_rescale_param", {"positive_weight": 1, "negative_weight": 1}),
    ("softmax_param", {"normalize_type": "Softmax", "hard_ratio": 1, "label_smooth_factor": 0}),
    ("accuracy_param", {"min_is_better": False}),
    ("inner_product_param", {"normalize": False}),
]


@pytest.mark.parametrize("field,defaults", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_fork_message_defaults(field, defaults):
    sub = getattr(caffe_pb2.LayerParameter(), field)
    for name, value in defaults.items():
        assert getattr(sub, name) == value, (field, name)


def test_scale_clamps_are_presence_tested():
    p = text_format.Parse("min_value: 0.01", caffe_pb2.ScaleParameter())
    assert p.HasField("min_value") and not p.HasField("max_value")


def test_fork_numbers_do_not_collide_with_the_existing_schema():
    numbers = [f.number for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields]
    assert len(numbers) == len(set(numbers))
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert fields["margin_inner_product_param"].number == 147  # SphereFace's
    assert fields["parameter_param"].number == 145  # BVLC's (XA's 145 is st_loss_param)
    assert fields["normalize_param"].number == 200  # Angular-Triplet's, kept


def test_filler_alpha_and_parameter_blob_filler():
    p = text_format.Parse('blob_filler { type: "gaussian_unitball" } shape { dim: 3 dim: 2 }',
                          caffe_pb2.ParameterParameter())
    assert p.blob_filler.type == "gaussian_unitball"
    assert caffe_pb2.FillerParameter().alpha == 0
