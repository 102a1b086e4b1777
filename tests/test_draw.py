"""Net diagrams (pycaffe's caffe.draw, Caffe's draw_net.py) as DOT text, rendered by
Graphviz's dot when present; a stand-in dot checks the rendering path everywhere."""

import os
import re
import shutil
import stat

import pytest

from conftest import shared_path

import pyfacelayers as caffe
from pyfacelayers import cli
from pyfacelayers.draw import DrawError, draw_net, draw_net_to_file, net_to_dot
from pyfacelayers.fileio import read_net
from pyfacelayers.proto import caffe_pb2


def lenet(name="examples_mnist_lenet"):
    return read_net(shared_path("nets", "caffe-examples", name + ".prototxt"))


def nodes(dot):
    return dict(re.findall(r'^  ("(?:layer|blob):[^"]*") \[(.*)\];$', dot, re.M))


def edges(dot):
    return re.findall(r'^  ("[^"]*") -> ("[^"]*");$', dot, re.M)


def test_layers_blobs_and_edges():
    dot = net_to_dot(lenet())
    assert dot.startswith('digraph "LeNet" {\n  rankdir=LR;')
    found = nodes(dot)
    layers = [k for k in found if k.startswith('"layer:')]
    assert len(layers) == len(lenet().layer) == 9
    assert 'label="conv1\\n(Convolution)\\noutputs: 20\\nkernel 5, stride 1, pad 0"' in \
        found['"layer:1"']
    assert 'fillcolor="#FF5050"' in found['"layer:1"']                 # convolution
    assert 'fillcolor="#FF9900"' in found['"layer:2"']                 # pooling
    assert 'MAX, kernel 2, stride 2, pad 0' in found['"layer:2"']
    assert 'fillcolor="#CC33FF"' in found['"layer:5"']                 # inner product
    # relu1 rewrites ip1 in place: a second ip1 node, no loop
    assert 'fillcolor="#90EE90"' in found['"layer:6"']
    assert ('"blob:ip1:1"', '"layer:6"') in edges(dot)
    assert ('"layer:6"', '"blob:ip1:2"') in edges(dot)
    assert ('"blob:ip1:2"', '"layer:7"') in edges(dot)
    assert all(a != b for a, b in edges(dot))


def test_phase_filter_and_lr_mults():
    net = lenet("examples_mnist_lenet_train_test")
    every = [n for n in nodes(net_to_dot(net)) if n.startswith('"layer:')]
    train = net_to_dot(net, phase=caffe_pb2.TRAIN, display_lrm=True)
    assert len(every) == len(net.layer)
    assert "(Accuracy)" not in train and "(Accuracy)" in net_to_dot(net, phase=caffe.TEST)
    assert "lr mult: 1, 2" in train


def test_names_are_quoted_and_rankdir_checked():
    net = read_net('name: "a\\"b" layer { name: "in \\"x\\"" type: "Input" top: "t\\\\1" '
                   'input_param { shape { dim: 1 } } }')
    dot = net_to_dot(net, rankdir="TB")
    assert 'digraph "a\\"b"' in dot and 'label="in \\"x\\"\\n(Input)"' in dot
    assert 'label="t\\\\1"' in dot and "rankdir=TB;" in dot
    with pytest.raises(ValueError, match="rankdir must be one of LR, TB, BT, RL"):
        net_to_dot(net, rankdir="UP")


@pytest.fixture
def fake_dot(tmp_path, monkeypatch):
    """A 'dot' on the PATH that records its arguments and answers with fixed bytes."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "dot"
    script.write_text('#!/bin/sh\necho "$@" > "%s/args"\ncat > "%s/input"\n'
                      'if [ "$1" = "-Tbad" ]; then echo "Format: bad not recognized" >&2; '
                      'exit 1; fi\nprintf FAKEIMAGE\n' % (tmp_path, tmp_path))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", os.pathsep.join([str(folder), "/usr/bin", "/bin"]))
    return tmp_path


def test_rendering_goes_through_graphviz(fake_dot):
    out = fake_dot / "net.png"
    draw_net_to_file(lenet(), out, rankdir="BT")
    assert out.read_bytes() == b"FAKEIMAGE"
    assert (fake_dot / "args").read_text().strip() == "-Tpng"
    assert (fake_dot / "input").read_text() == net_to_dot(lenet(), rankdir="BT")
    with pytest.raises(DrawError, match="dot -Tbad failed \\(exit 1\\): Format: bad not "
                                        "recognized"):
        draw_net(lenet(), ext="bad")


def test_without_graphviz_only_dot_files(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DrawError, match="needs Graphviz's 'dot' program"):
        draw_net_to_file(lenet(), tmp_path / "net.svg")
    assert not (tmp_path / "net.svg").exists()
    draw_net_to_file(lenet(), tmp_path / "net.dot")
    assert (tmp_path / "net.dot").read_text() == net_to_dot(lenet())
    with pytest.raises(ValueError, match="no extension"):
        draw_net_to_file(lenet(), tmp_path / "net")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_real_graphviz_reads_our_dot():
    svg = draw_net(read_net(shared_path("nets", "sphereface", "sphereface_model.prototxt")),
                   ext="svg").decode("utf-8")
    assert "<svg" in svg and "res4_3" in svg and "MarginInnerProduct" in svg


def test_cli(tmp_path, capsys):
    out = tmp_path / "sphereface.dot"
    path = shared_path("nets", "sphereface", "sphereface_model.prototxt")
    assert cli.main(["draw", path, str(out), "--phase", "TRAIN", "--rankdir", "TB"]) == 0
    assert capsys.readouterr().out == "Drawing net to %s\n" % out
    assert out.read_text() == net_to_dot(read_net(path), "TB", caffe_pb2.TRAIN)
    assert cli.main(["draw", os.path.join(str(tmp_path), "missing.prototxt"), str(out)]) == 1
