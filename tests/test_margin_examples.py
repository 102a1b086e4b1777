"""examples/margin_nets.py: the published AM-Softmax (fixed and annealed margin) and
ArcFace training nets train from the command line for a few iterations on generated
images."""

import importlib.util
import math
import os
import re

import pytest
from conftest import ROOT, shared_path

from pyfacelayers.cli import main
from pyfacelayers.fileio import read_net
from pyfacelayers.layers import registered_types

NETS = [
    ("happynear-AMSoftmax/prototxt/face_train_test.prototxt",
     {"Normalize", "LabelSpecificAdd"}),
    ("happynear-AMSoftmax/prototxt/face_train_test_wo_fn.prototxt",
     {"Normalize", "LabelSpecificAdd", "ChannelScale"}),
    ("xialuxi-arcface-caffe/cosin_add_m.prototxt", {"Normalize", "CosinAddm", "FocalLoss"}),
]
SOLVER = "happynear-AMSoftmax/prototxt/face_solver.prototxt"  # xialuxi publishes none


def _script():
    spec = importlib.util.spec_from_file_location(
        "margin_nets", os.path.join(ROOT, "examples", "margin_nets.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("net,types", NETS, ids=[n.split("/")[-1] for n, _ in NETS])
def test_published_net_trains_from_the_command_line(net, types, tmp_path):
    missing = sorted(types - set(registered_types()))
    if missing:
        pytest.skip("layer type(s) %s not registered yet" % ", ".join(missing))
    net_path, solver_path = shared_path("nets", *net.split("/")), shared_path(
        "nets", *SOLVER.split("/"))
    out = tmp_path / "run"
    assert _script().main([net_path, solver_path, str(out), "--classes", "4",
                           "--per-class", "2", "--height", "28", "--width", "24",
                           "--batch", "4", "--iters", "2", "--slim", "8"]) == 0
    adapted, published = read_net(str(out / "train_test.prototxt")), read_net(net_path)
    assert [l.type for l in adapted.layer if l.type != "ImageData"] == \
        [l.type for l in published.layer if l.type not in ("Data", "ImageData")]
    log = str(tmp_path / "train.log")
    assert main(["train", "--solver", str(out / "solver.prototxt"), "--log", log]) == 0
    assert (out / "snapshot_iter_2.caffemodel").exists()
    losses = [float(v) for v in re.findall(r"Iteration \d+(?: \([^)]*\))?, loss = (\S+)",
                                           open(log).read())]
    assert losses and all(math.isfinite(v) for v in losses), losses
