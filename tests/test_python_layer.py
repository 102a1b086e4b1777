"""Caffe's Python layer: refused unless the caller opts in; when allowed, pycaffe's
interface (setup/reshape/forward/backward, param_str, phase, blobs.add_blob), checked
against numpy on a small net with a Python parameter layer and a Python loss layer."""

import sys
import textwrap

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers.cli import main
from pyfacelayers.errors import LayerError
from pyfacelayers.fileio import read_net

# Written in the style of pycaffe's examples/pycaffe/layers (pyloss.py), by hand.
MODULE = '''
import json
import os

import numpy as np

import pyfacelayers as caffe

MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported.txt")
with open(MARKER, "a") as f:  # lets the tests see whether the module was ever imported
    f.write("imported\\n")


class EuclideanLoss(caffe.Layer):
    """loss = sum((a - b)^2) / num / 2."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class Scale(caffe.Layer):
    """top = s * bottom, with s a learned scalar; param_str is JSON {"init": value}."""

    def setup(self, bottom, top):
        self.init = json.loads(self.param_str)["init"]
        self.seen_phase = self.phase
        if len(self.blobs) == 0:
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = self.init

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff
'''

NET = """
name: "pynet"
force_backward: true
layer { name: "input" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "%(module)s" layer: "Scale" param_str: '{"init": 1.5}' } }
layer { name: "loss" type: "Python" bottom: "scaled" bottom: "label" top: "loss"
        python_param { module: "%(module)s" layer: "EuclideanLoss" } loss_weight: 1 }
"""


@pytest.fixture
def pymodule(tmp_path, monkeypatch):
    """A fresh module name per test, importable from tmp_path (as PYTHONPATH would)."""
    name = "pfl_pylayers_%s" % tmp_path.name.replace("-", "_")
    (tmp_path / (name + ".py")).write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / "imported.txt"
    sys.modules.pop(name, None)


def write_net(tmp_path, module):
    path = tmp_path / "net.prototxt"
    path.write_text(NET % {"module": module})
    return str(path)


def test_refused_by_default_without_importing(pymodule, tmp_path):
    name, marker = pymodule
    with pytest.raises(LayerError) as info:
        caffe.Net(write_net(tmp_path, name), caffe.TRAIN)
    message = str(info.value)
    assert 'layer "scale" (Python)' in message
    assert name in message and "Scale" in message
    assert "allow_python_layers=True" in message and "--allow-python-layers" in message
    assert not marker.exists()  # the module's code never ran


def test_forward_backward_match_numpy(pymodule, tmp_path):
    name, marker = pymodule
    net = caffe.Net(write_net(tmp_path, name), caffe.TRAIN, allow_python_layers=True)
    assert marker.exists()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    out = net.forward(data=a, label=b)
    s = 1.5
    expected_loss = np.sum((s * a - b) ** 2) / 4 / 2
    np.testing.assert_allclose(out["loss"], expected_loss, rtol=1e-6)
    net.clear_param_diffs()
    net.backward()
    # d loss / d data = s (s a - b) / num; d loss / d s = sum((s a - b) a) / num.
    np.testing.assert_allclose(net.blobs["data"].diff, s * (s * a - b) / 4, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(net.blobs["label"].diff, -(s * a - b) / 4, rtol=1e-5,
                               atol=1e-7)
    assert list(net.params) == ["scale"]
    np.testing.assert_allclose(net.params["scale"][0].diff[0],
                               np.sum((s * a - b) * a) / 4, rtol=1e-5)
    # pycaffe's attributes reach the user's object; its own attributes are visible.
    layer = net.layers[list(net._layer_names).index("scale")]
    assert layer.param_str == '{"init": 1.5}' and layer.seen_phase == caffe.TRAIN
    assert layer.type == "Python"


def test_python_loss_layer_needs_no_special_casing_in_the_loss(pymodule, tmp_path):
    name, _ = pymodule
    net = caffe.Net(write_net(tmp_path, name), caffe.TEST, allow_python_layers=True)
    assert net.blob_loss_weights["loss"] == 1.0
    net.blobs["data"].data[...] = 1.0
    net.blobs["label"].data[...] = 0.0
    # forward_backward returns the weighted loss: (1.5^2 * 12) / 4 / 2.
    assert net.forward_backward() == pytest.approx(1.5 ** 2 * 12 / 8)


def test_pycaffe_positional_signatures_with_weights(pymodule, tmp_path):
    name, _ = pymodule
    model = write_net(tmp_path, name)
    net = caffe.Net(model, caffe.TRAIN, allow_python_layers=True)
    net.params["scale"][0].data[...] = 2.5
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    for other in (caffe.Net(model, weights, caffe.TEST, allow_python_layers=True),
                  caffe.Net(model, caffe.TEST, weights=weights, allow_python_layers=True)):
        assert other.params["scale"][0].data[0] == 2.5
        assert other.phase == caffe.TEST


def test_missing_module_or_class_is_a_clear_error(pymodule, tmp_path):
    name, _ = pymodule
    text = NET % {"module": name}
    with pytest.raises(LayerError, match='cannot import module "no_such_module_pfl"'):
        caffe.Net(read_net(text.replace('"%s" layer: "Scale"' % name,
                                        '"no_such_module_pfl" layer: "Scale"')),
                  caffe.TRAIN, allow_python_layers=True)
    with pytest.raises(LayerError, match='has no class "Nope"'):
        caffe.Net(read_net(text.replace('layer: "Scale"', 'layer: "Nope"')), caffe.TRAIN,
                  allow_python_layers=True)


SOLVER = """
net: "%s"
base_lr: 0.1 lr_policy: "fixed" max_iter: 2 display: 0 random_seed: 1
snapshot_prefix: "%s/snap"
"""


def test_solver_refuses_by_default_and_trains_when_allowed(pymodule, tmp_path):
    name, _ = pymodule
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(SOLVER % (write_net(tmp_path, name), tmp_path))
    with pytest.raises(LayerError, match="allow_python_layers"):
        caffe.get_solver(str(solver_path))
    with pytest.raises(LayerError, match="allow_python_layers"):
        caffe.SGDSolver(str(solver_path))
    solver = caffe.get_solver(str(solver_path), allow_python_layers=True)
    net = solver.net
    net.blobs["data"].data[...] = 1.0
    net.blobs["label"].data[...] = 0.0
    solver.step(1)
    # Plain SGD: s <- s - lr * d loss / d s, with d loss / d s = sum(s * 1 * 1) / 4 = 3 s.
    assert net.params["scale"][0].data[0] == pytest.approx(1.5 - 0.1 * 3 * 1.5, rel=1e-6)
    assert caffe.SGDSolver(str(solver_path), allow_python_layers=True).net is not None


def test_cli_flag(pymodule, tmp_path, capsys):
    name, marker = pymodule
    model = write_net(tmp_path, name)
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(model, caffe.TEST, allow_python_layers=True).save(weights)
    marker.unlink()
    sys.modules.pop(name, None)
    args = ["test", "--model", model, "--weights", weights, "--iterations", "1"]
    assert main(args) == 1
    assert "--allow-python-layers" in capsys.readouterr().err
    assert not marker.exists()
    assert main(args + ["--allow-python-layers"]) == 0
    assert "loss" in capsys.readouterr().out
    assert main(["time", "--model", model, "--iterations", "1", "--allow-python-layers"]) == 0
    capsys.readouterr()
    assert main(["info", model, "--allow-python-layers"]) == 0
    assert "blob shapes" in capsys.readouterr().out


def test_cli_train_flag(pymodule, tmp_path, capsys):
    name, _ = pymodule
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(SOLVER % (write_net(tmp_path, name), tmp_path))
    assert main(["train", "--solver", str(solver_path)]) == 1
    assert "--allow-python-layers" in capsys.readouterr().err
    assert main(["train", "--solver", str(solver_path), "--allow-python-layers"]) == 0


def test_float64_net_gives_python_layers_float64_blobs(pymodule, tmp_path):
    name, _ = pymodule
    net = caffe.Net(write_net(tmp_path, name), caffe.TRAIN, allow_python_layers=True,
                    dtype=np.float64)
    assert net.params["scale"][0].data.dtype == np.float64


def test_module_written_for_pycaffe_style_import_layer(tmp_path, monkeypatch):
    # A layer class that does not subclass caffe.Layer and defines no __init__ also works
    # (pycaffe calls the class with the LayerParameter).
    name = "pfl_plain_%s" % tmp_path.name.replace("-", "_")
    (tmp_path / (name + ".py")).write_text(textwrap.dedent('''
        class Double:
            def __init__(self, param):
                self.param = param
            def setup(self, bottom, top):
                pass
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].shape)
            def forward(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
            def backward(self, top, propagate_down, bottom):
                bottom[0].diff[...] = 2 * top[0].diff
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        net = caffe.Net(read_net(
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }'
            'layer { name: "d" type: "Python" bottom: "x" top: "y" '
            'python_param { module: "%s" layer: "Double" } }' % name),
            caffe.TEST, allow_python_layers=True)
        out = net.forward(x=np.array([1.0, -3.0], np.float32))
        np.testing.assert_array_equal(out["y"], [2.0, -6.0])
    finally:
        sys.modules.pop(name, None)
