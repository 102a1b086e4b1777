"""``pyfacelayers info`` on solvers and on files that are not nets, and the readers'
errors naming what a misplaced file is (fileio.identify)."""

import gzip

import numpy as np
import pytest
from google.protobuf import text_format

import pyfacelayers as caffe
from conftest import shared_path
from pyfacelayers.cli import main
from pyfacelayers.errors import FormatError
from pyfacelayers.fileio import read_net, read_solver, write_binaryproto
from pyfacelayers.proto import caffe_pb2

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        inner_product_param { num_output: 4 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def run_info(path, capsys, *extra):
    code = main(["info", str(path)] + list(extra))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_describes_a_solver_and_its_net(tmp_path, capsys):
    (tmp_path / "tiny.prototxt").write_text(NET)
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "tiny.prototxt" type: "Adam" base_lr: 0.01 momentum: 0.9 '
                      'momentum2: 0.999 lr_policy: "multistep" gamma: 0.5 stepvalue: 100 '
                      'stepvalue: 300 max_iter: 400 snapshot: 50 snapshot_prefix: "out/m" '
                      'test_iter: 5 test_interval: 25 solver_mode: CPU random_seed: 7')
    code, out, err = run_info(solver, capsys)
    assert code == 0, err
    assert "type: Adam (momentum 0.9, momentum2 0.999, delta 1e-08)" in out
    assert 'lr_policy "multistep"' in out
    assert ("0.01 from iteration 0; 0.005 from iteration 100; 0.0025 from iteration 300"
            in out)
    assert "max_iter: 400" in out
    assert 'every 50 iterations, after training too; files "out/m_iter_N.caffemodel"' in out
    assert "test_iter 5, every 25 iterations" in out
    assert "solver_mode: CPU" in out and "random_seed 7" in out
    assert "(next to the solver)" in out
    # The net's summary, in the TRAIN phase: its layers, shapes and parameter count.
    assert 'net "tiny"' in out and "blob shapes (TRAIN)" in out
    assert "parameters: %d" % (4 * 3 + 4) in out


def test_info_solver_schedules_and_inline_nets(tmp_path, capsys):
    solver = caffe_pb2.SolverParameter(base_lr=1.0, lr_policy="poly", power=1.0,
                                       max_iter=100)
    solver.net_param.CopyFrom(text_format.Parse(NET, caffe_pb2.NetParameter()))
    path = tmp_path / "poly.prototxt"
    path.write_text(text_format.MessageToString(solver))
    code, out, _ = run_info(path, capsys)
    assert code == 0
    assert "base_lr * (1 - iter / max_iter) ^ power (power 1)" in out
    assert "1 at iteration 0; 0.75 at iteration 25; 0.5 at iteration 50" in out
    assert "0 at iteration 100" in out
    assert "net_param (given inline)" in out and "snapshots: no periodic snapshots" in out
    path.write_text('solver_type: NESTEROV base_lr: 0.1 lr_policy: "step" gamma: 0.1 '
                    'stepsize: 10 max_iter: 30 net: "missing.prototxt"')
    code, out, _ = run_info(path, capsys)
    assert code == 0  # the solver is described; the net it names is reported missing
    assert "type: Nesterov" in out
    assert "0.1 from iteration 0; 0.01 from iteration 10; 0.001 from iteration 20" in out
    assert 'net: "missing.prototxt" not found' in out


def test_info_on_sphereface_solver(capsys):
    code, out, _ = run_info(shared_path("nets", "sphereface", "sphereface_solver.prototxt"),
                            capsys)
    assert code == 0
    assert "type: SGD (momentum 0.9)" in out
    assert "0.0001 from iteration 28000" in out
    assert 'net "SpherefaceNet-20"' in out and "MarginInnerProduct" in out


def _mean_file(path):
    write_binaryproto(str(path), np.ones((1, 3, 4, 5), np.float32))
    return path


@pytest.mark.parametrize("name", ["mean.binaryproto", "mean.prototxt"])
def test_info_names_a_mean_file(tmp_path, capsys, name):
    code, out, err = run_info(_mean_file(tmp_path / name), capsys)
    assert code == 1 and not out
    assert "binaryproto blob (BlobProto) of shape 1x3x4x5 (a mean file?)" in err
    assert "info reads a net or solver .prototxt, a .caffemodel" in err


@pytest.mark.parametrize("text, says", [
    ('name: "c" type: "Convolution" bottom: "x" top: "y"', "a single layer's fields"),
    ("shape { dim: 2 } data: 1 data: 2", "a blob written as text (BlobProto) of shape 2"),
    ("# nothing here\n", "an empty prototxt"),
    ("foo: 1\nbar { baz: 2 }", 'top-level fields (foo, bar) fit no Caffe message'),
])
def test_info_names_other_text(tmp_path, capsys, text, says):
    path = tmp_path / "x.prototxt"
    path.write_text(text)
    code, _, err = run_info(path, capsys)
    assert code == 1 and says in err and "info reads a net or solver" in err


def test_info_names_well_known_binary_formats(tmp_path, capsys):
    path = tmp_path / "model.caffemodel"
    path.write_bytes(gzip.compress(b"not a model"))
    code, _, err = run_info(path, capsys)
    assert code == 1 and "gzip-compressed file" in err


def test_info_on_weights_written_as_text(tmp_path, capsys):
    net = caffe.Net(text_format.Parse(NET, caffe_pb2.NetParameter()), caffe.TEST, seed=1)
    path = tmp_path / "weights.prototxt"
    path.write_text(text_format.MessageToString(net.to_proto()))
    code, out, _ = run_info(path, capsys)
    assert code == 0
    assert "a caffemodel as prototxt: 16 stored values" in out
    assert "Caffe reads weights only from a binary .caffemodel" in out


def test_readers_say_what_a_misplaced_file_is(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "x.prototxt" base_lr: 0.1 lr_policy: "fixed"')
    with pytest.raises(FormatError, match=r"solver.prototxt:1:1: this is a solver prototxt "
                                          r"\(SolverParameter\), expected a net prototxt"):
        read_net(str(solver))
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    with pytest.raises(FormatError, match="this is a net prototxt .* expected a solver"):
        read_solver(str(net))
    with pytest.raises(FormatError, match="this is a net prototxt"):
        caffe.get_solver(str(net))
    tiny = caffe.Net(str(net), caffe.TEST)
    with pytest.raises(FormatError, match="binaryproto blob .* expected a caffemodel"):
        tiny.copy_from(str(_mean_file(tmp_path / "mean.binaryproto")))
    gz = tmp_path / "net.prototxt.gz"
    gz.write_bytes(gzip.compress(NET.encode()))
    with pytest.raises(FormatError, match="gzip-compressed file .* expected a text .prototxt"):
        read_net(str(gz))


def test_info_names_a_solverstate(tmp_path, capsys):
    from pyfacelayers.fileio import write_solverstate
    state = caffe_pb2.SolverState(iter=1200, learned_net="snap_iter_1200.caffemodel")
    state.history.add().data.extend([0.5, 0.25])
    path = tmp_path / "snap_iter_1200.solverstate"
    write_solverstate(str(path), state)
    code, _, err = run_info(path, capsys)
    assert code == 1
    assert "this is a solverstate (SolverState at iteration 1200), not a caffemodel" in err
