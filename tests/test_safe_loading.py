"""Safe loading: model files never run code (no pickle, Python layers only on request),
caffemodels over protobuf's 2 GiB limit are read part by part or refused clearly, and a
stored blob whose length disagrees with its shape is an error naming file, layer and
blob, on every path that reads blobs."""

import os
import pathlib
import re
import sys

import numpy as np
import pytest
from conftest import shared_path

import pyfacelayers as caffe
from pyfacelayers import io as caffe_io
from pyfacelayers import limits
from pyfacelayers.cli import main
from pyfacelayers.errors import FormatError, ResourceLimitError
from pyfacelayers.fileio import (binary, read_binaryproto, read_caffemodel, read_net,
                                 read_solverstate, write_binaryproto, write_caffemodel,
                                 write_solverstate)
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.solvers.lr_policy import SolverError
from pyfacelayers.transform import load_mean_file

PACKAGE = pathlib.Path(caffe.__file__).parent

NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def small_net(phase=caffe.TRAIN):
    return caffe.Net(read_net(NET), phase, seed=1)


# -- no code from files ----------------------------------------------------------------
def _package_sources():
    return [p for p in PACKAGE.rglob("*.py") if "proto" not in p.parts]


def test_package_never_unpickles_or_evaluates():
    """No pickle/marshal/shelve, no eval/exec, every np.load with allow_pickle=False,
    and modules are imported by name only where the package decides the name (its own
    modules) or the user opted in (the Python layer)."""
    importers = {"cli.py", "__init__.py", "python_layer.py"}
    problems = []
    for path in _package_sources():
        text = path.read_text(encoding="utf-8")
        for pattern in (r"^\s*(import|from)\s+(c?pickle|cPickle|_pickle|marshal|shelve|dill)\b",
                        r"(?<![\w.])(eval|exec)\(", r"yaml\.load\(",
                        r"torch\.load\("):
            if re.search(pattern, text, re.M):
                problems.append("%s: %s" % (path.name, pattern))
        for call in re.findall(r"np\.load\([^)]*\)", text):
            if "allow_pickle=False" not in call:
                problems.append("%s: %s" % (path.name, call))
        if "import_module(" in text and path.name not in importers:
            problems.append("%s imports modules by name" % path.name)
    assert not problems, problems


class _RunsCode:
    """Unpickling this calls pathlib.Path.touch(marker): a stand-in for any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_npy_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "mean.npy"
    array = np.empty(1, dtype=object)
    array[0] = _RunsCode(str(marker))
    np.save(str(path), array, allow_pickle=True)
    with pytest.raises(FormatError, match=r"mean\.npy.*pickle.*refused"):
        caffe_io.load_array(str(path))
    assert not marker.exists()


def test_plain_npy_and_binaryproto_load(tmp_path):
    mean = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.save(str(tmp_path / "mean.npy"), mean)
    np.testing.assert_array_equal(caffe_io.load_array(str(tmp_path / "mean.npy")), mean)
    write_binaryproto(str(tmp_path / "mean.binaryproto"), mean)
    np.testing.assert_array_equal(caffe_io.load_array(str(tmp_path / "mean.binaryproto")),
                                  mean)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    with pytest.raises(FormatError, match="bad.npy"):
        caffe_io.load_array(str(tmp_path / "bad.npy"))


def test_caffemodel_naming_a_python_layer_runs_nothing(tmp_path, monkeypatch, capsys):
    """A caffemodel is data: its layer definitions are never built, so a Python layer
    named inside one is never imported (copy_from, Net(..., weights), info)."""
    module = "pfl_evil_%s" % tmp_path.name.replace("-", "_")
    marker = tmp_path / "imported.txt"
    (tmp_path / (module + ".py")).write_text(
        "open(%r, 'w').write('ran')\nclass L: pass\n" % str(marker))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = small_net()
    model = net.to_proto()
    evil = model.layer.add(name="evil", type="Python")
    evil.python_param.module, evil.python_param.layer = module, "L"
    path = str(tmp_path / "evil.caffemodel")
    write_caffemodel(path, model)
    read_caffemodel(path)
    small_net().copy_from(path)
    (tmp_path / "net.prototxt").write_text(NET)
    caffe.Net(str(tmp_path / "net.prototxt"), path, caffe.TEST)
    assert main(["info", path]) == 0
    assert "evil" in capsys.readouterr().out
    assert not marker.exists() and module not in sys.modules


# -- caffemodels over 2 GiB --------------------------------------------------------------
def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _sparse(path, head, size):
    """A file of ``size`` bytes starting with ``head``, the rest a hole (no disk)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return str(path)


@pytest.fixture
def roomy(monkeypatch):
    # The tests below are about protobuf's limit, not the machine's memory.
    monkeypatch.setenv(limits.ENV_VAR, "1T")


def test_sparse_3gib_of_zeros_is_a_clear_format_error(tmp_path, roomy):
    path = _sparse(tmp_path / "zeros.caffemodel", b"", 3 << 30)
    with pytest.raises(FormatError, match=r"zeros\.caffemodel.*corrupt caffemodel.*byte 0"):
        read_caffemodel(path)


def test_single_blob_over_2gib_is_refused_clearly(tmp_path, roomy):
    # A NetParameter whose one layer holds one 2.25 GiB blob: the file is read layer
    # by layer, the layer blob by blob, and the blob cannot be parsed by protobuf.
    blob_len = (9 << 30) // 4
    layer_head = _varint(7 << 3 | 2) + _varint(blob_len)
    layer_len = len(layer_head) + blob_len
    head = (_varint(1 << 3 | 2) + _varint(3) + b"big" + _varint(100 << 3 | 2)
            + _varint(layer_len) + layer_head)
    path = _sparse(tmp_path / "big.caffemodel", head, len(head) + blob_len)
    with pytest.raises(FormatError, match=r"LayerParameter\.blobs\[0\].*over protobuf's "
                                          r"2 GiB limit"):
        read_caffemodel(path)


def test_caffemodel_larger_than_the_memory_limit_is_refused_before_reading(
        tmp_path, monkeypatch):
    path = _sparse(tmp_path / "huge.caffemodel", b"", 3 << 30)
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    with pytest.raises(ResourceLimitError, match=r"huge\.caffemodel.*3\.0 GiB.*1\.0 GiB"):
        read_caffemodel(path)
    with pytest.raises(ResourceLimitError):
        small_net().copy_from(path)
    assert main(["info", path]) == 1


def _b1():
    return shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")


def test_part_by_part_reading_equals_protobuf(monkeypatch):
    path = _b1()
    expected = read_caffemodel(path)
    with open(path, "rb") as f:
        raw = f.read()
    whole = caffe_pb2.NetParameter.FromString(raw)
    assert binary.parse_in_parts(raw, caffe_pb2.NetParameter, "caffemodel") == whole
    monkeypatch.setattr(binary, "STREAM_THRESHOLD", 0)  # every file read in parts
    assert read_caffemodel(path) == expected
    # Layers "over the limit" are themselves read blob by blob: still the same.
    biggest_blob = max(b.ByteSize() for layer in whole.layer for b in layer.blobs)
    monkeypatch.setattr(binary, "PROTOBUF_LIMIT", biggest_blob + 16)
    assert any(layer.ByteSize() > biggest_blob + 16 for layer in whole.layer)
    assert read_caffemodel(path) == expected


def test_part_by_part_reading_of_a_truncated_file(tmp_path, monkeypatch):
    with open(_b1(), "rb") as f:
        raw = f.read()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(raw[:len(raw) // 2])
    monkeypatch.setattr(binary, "STREAM_THRESHOLD", 0)
    with pytest.raises(FormatError, match=r"cut\.caffemodel.*past the end"):
        read_caffemodel(str(path))


def test_part_by_part_solverstate(tmp_path, monkeypatch):
    state = caffe_pb2.SolverState(iter=7, learned_net="x.caffemodel", current_step=1)
    for shape in ((3, 5), (3,)):
        state.history.add().CopyFrom(caffe_io.array_to_blobproto(np.ones(shape)))
    path = str(tmp_path / "s.solverstate")
    write_solverstate(path, state)
    monkeypatch.setattr(binary, "STREAM_THRESHOLD", 0)
    assert read_solverstate(path) == state


# -- stored length vs shape ---------------------------------------------------------------
def _weights_with(tmp_path, edit):
    model = small_net().to_proto()
    edit(model.layer[1].blobs)
    path = str(tmp_path / "w.caffemodel")
    write_caffemodel(path, model)
    return path


def test_caffemodel_blob_with_a_missing_value(tmp_path):
    path = _weights_with(tmp_path, lambda blobs: blobs[0].data.pop())
    with pytest.raises(FormatError) as info:
        small_net().copy_from(path)
    message = str(info.value)
    assert path in message and 'layer "fc" param 0' in message
    assert "holds 14 values in data but its shape (3, 5) needs 15" in message
    (tmp_path / "net.prototxt").write_text(NET)
    with pytest.raises(FormatError, match='layer "fc" param 0'):
        caffe.Net(str(tmp_path / "net.prototxt"), path, caffe.TEST)


def test_caffemodel_blob_with_an_extra_double_value(tmp_path):
    def to_double(blobs):
        values = list(blobs[1].data) + [0.5]
        del blobs[1].data[:]
        blobs[1].double_data.extend(values)
    path = _weights_with(tmp_path, to_double)
    with pytest.raises(FormatError, match=r'layer "fc" param 1: blob holds 4 values in '
                                          r'double_data but its shape \(3,\) needs 3'):
        small_net().copy_from(path)


def test_caffemodel_blob_with_a_negative_dimension(tmp_path):
    def negative(blobs):
        blobs[0].shape.dim[:] = [-3, -5]
    path = _weights_with(tmp_path, negative)
    with pytest.raises(FormatError, match='layer "fc"'):
        small_net().copy_from(path)


def test_solverstate_history_blob_with_a_missing_value(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 1 display: 0 '
        'snapshot_prefix: "%s/snap" random_seed: 1'
        % (tmp_path / "net.prototxt", tmp_path))
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    solver.net.blobs["label"].data[...] = 1
    solver.step(1)
    state_path = solver.snapshot()
    state = read_solverstate(state_path)
    state.history[1].data.pop()
    write_solverstate(state_path, state)
    fresh = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    with pytest.raises(SolverError) as info:
        fresh.restore(state_path)
    message = str(info.value)
    assert state_path in message and "history blob 1" in message
    assert "holds 2 values in data but its shape (3,) needs 3" in message


def test_binaryproto_mean_with_a_missing_value(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    blob = caffe_io.array_to_blobproto(np.ones((3, 4, 4)))
    blob.data.pop()
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())
    for read in (read_binaryproto, load_mean_file, caffe_io.load_array):
        with pytest.raises(FormatError) as info:
            read(path)
        assert path in str(info.value) and "47" in str(info.value)
    with pytest.raises(ValueError, match="47 values"):
        caffe_io.blobproto_to_array(blob)


def test_datum_with_a_wrong_length():
    datum = caffe_io.array_to_datum(np.zeros((3, 2, 2), np.uint8))
    datum.height = 3
    with pytest.raises(ValueError, match="12 values in data but its shape"):
        caffe_io.datum_to_array(datum)


def test_every_model_file_write_survives_a_round_trip(tmp_path):
    # The checks above reject only inconsistent files: a consistent one reads back.
    net = small_net()
    path = str(tmp_path / "ok.caffemodel")
    net.save(path)
    other = small_net()
    other.copy_from(path)
    for a, b in zip(net.learnable_params, other.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert os.path.getsize(path) > 0


def test_huge_prototxt_refused_or_rejected_without_reading_it(tmp_path, monkeypatch):
    path = _sparse(tmp_path / "zeros.prototxt", b"", 3 << 30)
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    with pytest.raises(ResourceLimitError, match=r"zeros\.prototxt.*3\.0 GiB"):
        read_net(path)
    monkeypatch.setenv(limits.ENV_VAR, "1T")
    with pytest.raises(FormatError, match="binary file"):  # from its first bytes alone
        read_net(path)
