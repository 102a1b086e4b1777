"""Caffe's upgrade tools (upgrade_net_proto_text / _binary, upgrade_solver_proto_text)
as pyfacelayers subcommands: legacy files in, current format out, Caffe's lines."""

import os
import shutil

import numpy as np
import pytest

from conftest import shared_path

from pyfacelayers import cli
from pyfacelayers.fileio import read_binary_proto, read_caffemodel, read_net, read_solver
from pyfacelayers.fileio.text import parse_text, read_text_file
from pyfacelayers.proto import caffe_pb2


def upgrade(tool, src, dst, capsys):
    assert cli.main([tool, str(src), str(dst)]) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("name", ["examples_mnist_lenet", "examples_mnist_lenet_train_test",
                                  "models_bvlc_reference_caffenet_deploy"])
def test_v1_prototxt_is_written_in_the_current_format(name, tmp_path, capsys):
    src = shared_path("nets", "caffe-v1", name + ".prototxt")
    dst = tmp_path / "upgraded.prototxt"
    lines = upgrade("upgrade_net_proto_text", src, dst, capsys)
    assert lines == ["Wrote upgraded NetParameter text proto to %s" % dst]
    raw = parse_text(read_text_file(str(dst)), caffe_pb2.NetParameter(), str(dst))
    assert len(raw.layers) == 0 and len(raw.input) == 0 and len(raw.layer) > 0
    assert raw == read_net(src)  # what every reader makes of the legacy file
    again = upgrade("upgrade_net_proto_text", dst, tmp_path / "again.prototxt", capsys)
    assert again[0] == "File already in latest proto format: %s" % dst


def test_v1_caffemodel_is_written_in_the_current_format(tmp_path, capsys):
    v1 = caffe_pb2.NetParameter(name="old")
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT,
                          bottom=["data"], top=["ip"])
    weights = np.arange(6, dtype=np.float32)
    layer.blobs.add(num=1, channels=1, height=2, width=3, data=weights)
    src, dst = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    src.write_bytes(v1.SerializeToString())
    lines = upgrade("upgrade_net_proto_binary", src, dst, capsys)
    assert lines == ["Wrote upgraded NetParameter binary proto to %s" % dst]
    raw = read_binary_proto(str(dst), caffe_pb2.NetParameter, "caffemodel")
    assert len(raw.layers) == 0 and [(l.name, l.type) for l in raw.layer] == [
        ("ip", "InnerProduct")]
    np.testing.assert_array_equal(raw.layer[0].blobs[0].data, weights)
    assert raw == read_caffemodel(str(src))


def test_solver_type_enum_becomes_type(tmp_path, capsys):
    src = tmp_path / "solver.prototxt"
    src.write_text('net: "n.prototxt" base_lr: 0.01 solver_type: NESTEROV momentum: 0.9\n')
    dst = tmp_path / "solver_new.prototxt"
    lines = upgrade("upgrade_solver_proto_text", src, dst, capsys)
    assert lines == ["Wrote upgraded SolverParameter text proto to %s" % dst]
    text = dst.read_text()
    assert "solver_type" not in text and 'type: "Nesterov"' in text
    assert read_solver(str(dst)) == read_solver(str(src))


def test_upgrading_in_place(tmp_path, capsys):
    path = tmp_path / "net.prototxt"
    shutil.copy(shared_path("nets", "caffe-v1", "examples_mnist_lenet.prototxt"), path)
    expected = read_net(str(path))
    upgrade("upgrade_net_proto_text", path, path, capsys)
    assert "layers {" not in path.read_text() and read_net(str(path)) == expected


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer {\n  name: 'x'\n  bogus_field: 3\n}\n")
    dst = tmp_path / "out.prototxt"
    assert cli.main(["upgrade_net_proto_text", str(bad), str(dst)]) == 1
    err = capsys.readouterr().err
    assert "bad.prototxt:3" in err and "bogus_field" in err
    assert cli.main(["upgrade_net_proto_binary", str(tmp_path / "missing"), str(dst)]) == 1
    assert "missing" in capsys.readouterr().err
    assert not dst.exists() and os.listdir(tmp_path) == ["bad.prototxt"]
