"""Every solver under ../shared/nets parses and, with its net's data layers swapped for
Input layers, runs a few iterations."""

import glob
import os

import numpy as np
import pytest
from conftest import NETS, shared_path

from pyfacelayers.fileio import read_net, read_solver
from pyfacelayers.input_swap import swap_data_layers
from pyfacelayers.solvers import get_solver

SOLVERS = sorted(p for p in glob.glob(os.path.join(NETS, "*", "*.prototxt"))
                 if "solver" in os.path.basename(p))
SHAPES = {
    "mnist": {"data": (2, 1, 28, 28), "label": (2,)},
    "cifar10": {"data": (2, 3, 32, 32), "label": (2,)},
    "sphereface": {"data": (2, 3, 112, 96), "label": (2,)},
}


def _shared_net(solver_path, name):
    """Caffe's solvers name nets by their path in the Caffe tree; ../shared/nets keeps
    them flattened (examples/mnist/x -> caffe-examples/examples_mnist_x) or beside
    the solver."""
    folder = os.path.dirname(solver_path)
    for candidate in (os.path.join(folder, name), os.path.join(folder, name.replace("/", "_")),
                      os.path.join(folder, os.path.basename(name))):
        if os.path.exists(candidate):
            return candidate
    return None


def _prepare(path):
    solver = read_solver(path)
    shapes = next((s for key, s in SHAPES.items() if key in path), {})
    if solver.HasField("net"):
        net_path = _shared_net(path, solver.net)
        if net_path is None:
            pytest.skip("its net %s is not among ../shared/nets" % solver.net)
        solver.net_param.CopyFrom(read_net(net_path))
        solver.ClearField("net")
    elif not solver.HasField("net_param"):
        pytest.skip("its train/test nets %s are not among ../shared/nets"
                    % (solver.train_net or list(solver.test_net)))
    if "autoencoder" in path:
        shapes = {"data": (2, 1, 28, 28)}
    net = solver.net_param
    for layer in net.layer:
        if layer.type == "MarginInnerProduct":  # keep the classifier small for the test
            layer.margin_inner_product_param.num_output = 16
    solver.net_param.CopyFrom(swap_data_layers(net, shapes))
    solver.max_iter, solver.snapshot, solver.snapshot_after_train = 2, 0, False
    solver.test_interval, solver.test_initialization = 1000, False
    solver.display = 0
    solver.random_seed = 1
    return solver


@pytest.mark.parametrize("path", SOLVERS, ids=os.path.basename)
def test_shared_solver_runs_a_few_iterations(path):
    shared_path("nets")
    solver = get_solver(_prepare(path))
    rng = np.random.default_rng(0)
    net = solver.net
    before = [p.data.copy() for p in net.learnable_params]
    for _ in range(2):
        for name in net.inputs:
            blob = net.blobs[name]
            if name == "label":
                blob.data[...] = rng.integers(0, 2, blob.shape)
            else:
                blob.data[...] = rng.uniform(0, 1, blob.shape)
        solver.step(1)
    assert solver.iter == 2
    assert any(not np.array_equal(b, p.data) for b, p in zip(before, net.learnable_params))
