"""examples/angular_triplet: the nets parse and build, and the two-step recipe trains
from the command line (step 1 plain SphereFace, step 2 triplet + semihard from the
step-1 weights) on a tiny generated data set."""

import importlib.util
import math
import os
import re

import numpy as np
import pytest
from conftest import ROOT, shared_path
from google.protobuf import text_format

from pyfacelayers import TRAIN, Net
from pyfacelayers.cli import main
from pyfacelayers.fileio import read_net, read_solver
from pyfacelayers.proto import caffe_pb2

EXAMPLE = os.path.join(ROOT, "examples", "angular_triplet")
SIZE = 36          # the smallest images the trunk takes are 33x33: keeps the runs quick
IDENTITIES = 10    # the nets' num_output


def _make_data_module():
    spec = importlib.util.spec_from_file_location(
        "angular_triplet_make_data", os.path.join(EXAMPLE, "make_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("angular_triplet_data")
    _make_data_module().make_data(str(out), identities=IDENTITIES, per_identity=2, size=SIZE)
    return out


def _net_on(data_dir, name, batch_size=None, fc6_lr_mult=None):
    """The example net ``name`` reading the list in ``data_dir`` (absolute paths)."""
    net = read_net(os.path.join(EXAMPLE, name))
    for layer in net.layer:
        if layer.type == "ImageData":
            layer.image_data_param.source = str(data_dir / "train.txt")
            layer.image_data_param.root_folder = str(data_dir) + os.sep
            if batch_size:
                layer.image_data_param.batch_size = batch_size
        if layer.type == "MarginInnerProduct" and fc6_lr_mult is not None:
            layer.param[0].lr_mult = fc6_lr_mult
    return net


def _solver_copy(tmp_path, solver_name, net_param, prefix, max_iter):
    """A copy of the example solver in tmp_path: its net, prefix and max_iter rewritten."""
    net_path = tmp_path / (prefix + "_net.prototxt")
    net_path.write_text(text_format.MessageToString(net_param))
    solver = read_solver(os.path.join(EXAMPLE, solver_name))
    solver.net = str(net_path)
    solver.max_iter = max_iter
    solver.snapshot_prefix = str(tmp_path / prefix)
    path = tmp_path / (prefix + "_solver.prototxt")
    path.write_text(text_format.MessageToString(solver))
    return str(path)


_LOSS_LINE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")


def _losses(log_path):
    with open(log_path) as f:
        return {int(m.group(1)): float(m.group(2)) for m in _LOSS_LINE.finditer(f.read())}


def _margin_params(net_param):
    (layer,) = [l for l in net_param.layer if l.type == "MarginInnerProduct"]
    return layer


def test_nets_differ_only_in_the_two_flags_and_set_the_forks_values():
    step1 = read_net(os.path.join(EXAMPLE, "step1_train.prototxt"))
    step2 = read_net(os.path.join(EXAMPLE, "face_train.prototxt"))
    p1, p2 = _margin_params(step1).margin_inner_product_param, \
        _margin_params(step2).margin_inner_product_param
    assert not p1.triplet and not p1.semihard
    assert p2.triplet and p2.semihard
    assert p2.type == caffe_pb2.MarginInnerProductParameter.DOUBLE
    assert (p2.num_output, p2.base, p2.power, p2.lambda_min, p2.iteration) == (10, 1000, 1, 3, 0)
    assert p2.gamma == pytest.approx(0.12)
    p1.triplet = p1.semihard = True
    assert list(step1.layer) == list(step2.layer)  # same layers in the same order
    assert [l.type for l in step2.layer][-2:] == ["MarginInnerProduct", "SoftmaxWithLoss"]


def test_trunk_is_the_forks_deploy_net():
    deploy = read_net(shared_path("nets", "angular-triplet", "face_deploy.prototxt"))
    train = read_net(os.path.join(EXAMPLE, "face_train.prototxt"))
    trunk = [l for l in train.layer
             if l.type not in ("ImageData", "MarginInnerProduct", "SoftmaxWithLoss")]
    theirs = [l for l in deploy.layer if l.type != "Input"]  # read_net upgrades input_dim
    assert len(trunk) == len(theirs) == 66
    for mine, theirs in zip(trunk, theirs):
        assert mine == theirs, mine.name
    assert sum(l.type == "Convolution" for l in trunk) == 27  # + fc5: the 28-layer net


def test_make_data_is_deterministic_and_lists_every_image(tmp_path):
    make_data = _make_data_module().make_data
    first = make_data(str(tmp_path / "a"), identities=3, per_identity=2, size=40, seed=5)
    second = make_data(str(tmp_path / "b"), identities=3, per_identity=2, size=40, seed=5)
    lines = open(first).read().split("\n")[:-1]
    assert lines == open(second).read().split("\n")[:-1]
    assert [int(line.split()[1]) for line in lines] == [0, 0, 1, 1, 2, 2]
    for line in lines:
        name = line.split()[0]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(ValueError, match="identities"):
        make_data(str(tmp_path / "c"), identities=1)


def test_triplet_net_builds_in_train_phase(data_dir):
    net = Net(_net_on(data_dir, "face_train.prototxt", batch_size=4), TRAIN, seed=3)
    fc6 = net.layer_dict["fc6"]
    p = fc6.param.margin_inner_product_param
    assert p.triplet and p.semihard and fc6.param_propagate_down == [True]
    assert net.blobs["data"].shape == (4, 3, SIZE, SIZE)
    assert net.params["fc6"][0].data.shape == (IDENTITIES, 512)
    assert "lambda" in net.blobs and "softmax_loss" in net.outputs


def test_two_step_recipe_from_the_command_line(tmp_path, data_dir):
    step1 = _solver_copy(tmp_path, "step1_solver.prototxt",
                         _net_on(data_dir, "step1_train.prototxt"), "step1", max_iter=3)
    log1 = str(tmp_path / "step1.log")
    assert main(["train", "--solver", step1, "--log", log1]) == 0
    weights = tmp_path / "step1_iter_3.caffemodel"
    assert weights.exists() and (tmp_path / "step1_iter_3.solverstate").exists()
    losses = _losses(log1)
    assert sorted(losses) == [0, 1, 2, 3]
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses

    step2 = _solver_copy(tmp_path, "face_solver.prototxt",
                         _net_on(data_dir, "face_train.prototxt"), "step2", max_iter=3)
    log2 = str(tmp_path / "step2.log")
    assert main(["train", "--solver", step2, "--weights", str(weights), "--log", log2]) == 0
    assert "Finetuning from %s" % weights in open(log2).read()
    assert (tmp_path / "step2_iter_3.caffemodel").exists()
    assert (tmp_path / "step2_iter_3.solverstate").exists()
    losses = _losses(log2)
    assert sorted(losses) == [0, 1, 2, 3]
    assert all(math.isfinite(v) for v in losses.values()), losses


def test_triplet_with_a_frozen_weight_leaves_it_alone(tmp_path, data_dir):
    """README: with lr_mult 0 on fc6 the triplet replacement does not happen (the fork
    would overwrite the frozen weight); only the forward's row normalisation acts."""
    from pyfacelayers.solvers import get_solver
    net = _net_on(data_dir, "face_train.prototxt", batch_size=4, fc6_lr_mult=0)
    path = _solver_copy(tmp_path, "face_solver.prototxt", net, "frozen", max_iter=2)
    solver = get_solver(read_solver(path), source=path)
    fc6 = solver.net.params["fc6"][0]
    start = fc6.data.copy()
    solver.step(2)
    normalised = start / np.linalg.norm(start, axis=1, keepdims=True)
    np.testing.assert_allclose(fc6.data, normalised, rtol=1e-6, atol=1e-7)
    assert not fc6.diff.any()
    # The same net with the weight learned: rows of the last batch's labels were
    # replaced by their raw features (the next forward would normalise them); the
    # other rows are unit rows from the forward. (Weight decay moves them by ~1e-5.)
    learned = _net_on(data_dir, "face_train.prototxt", batch_size=4)
    path = _solver_copy(tmp_path, "face_solver.prototxt", learned, "learned", max_iter=2)
    solver = get_solver(read_solver(path), source=path)
    solver.step(2)
    weight = solver.net.params["fc6"][0].data
    features = solver.net.blobs["fc5"].data
    labels = solver.net.blobs["label"].data.astype(int)
    replaced = 0
    for row in range(weight.shape[0]):
        if abs(np.linalg.norm(weight[row]) - 1) < 1e-4:
            continue
        matches = [np.allclose(weight[row], features[i], rtol=1e-3, atol=1e-4)
                   for i in range(len(labels)) if labels[i] == row]
        assert any(matches), "fc6 row %d is neither a unit row nor a feature of its label" % row
        replaced += 1
    assert replaced > 0
