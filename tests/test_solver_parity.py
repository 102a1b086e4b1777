"""B2: Caffe's SGD solver (multistep, momentum, L2) on the B1_small SphereFace net,
against the original Caffe's per-iteration numbers and its own snapshot files
(fixtures/caffe-ref/README.md, section B2)."""

import json
import os

import numpy as np
import pytest

from conftest import assert_close, shared_path

from pyfacelayers.fileio import blob_to_array
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.solvers import SGDSolver, get_solver

TOL = 1e-4  # whole nets: norm-relative


def portable(shape, seed, scale=1.0, dtype=np.float32):
    """README section 1: u(i) = ((i*2654435761 + seed*40503 + 12345) mod 2^32) / 2^32."""
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    mixed = (i * np.uint64(2654435761) + np.uint64(seed * 40503 + 12345)) % np.uint64(2 ** 32)
    u = mixed.astype(np.float64) / 2.0 ** 32
    return (((u - 0.5) * 2.0) * scale).astype(dtype).reshape(shape)


def portable_labels(n, seed, classes):
    return ((np.arange(n) * 7 + seed) % classes).astype(np.float32)


@pytest.fixture
def real_net():
    # The B2 runs need the real Net and the SphereFace layers.
    module = pytest.importorskip("pyfacelayers.net")
    from pyfacelayers.layers.base import registered_types
    needed = {"Input", "Convolution", "PReLU", "Eltwise", "InnerProduct",
              "MarginInnerProduct", "SoftmaxWithLoss"}
    missing = needed - set(registered_types())
    if missing:
        pytest.skip("layers not available yet: %s" % ", ".join(sorted(missing)))
    return module


@pytest.fixture(scope="module")
def b2():
    folder = shared_path("fixtures", "caffe-ref", "B2_solver")
    z = np.load(os.path.join(folder, "B2_solver_f32.npz"))
    meta = json.loads(str(z["meta_json"]))
    weights = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")
    return folder, z, meta, weights


def test_portable_generator_matches_fixture_inputs(b2):
    _, z, _, _ = b2
    for it in range(6):
        np.testing.assert_array_equal(portable((4, 3, 28, 24), 7000 + 10 * it + 1),
                                      z["iter%d_input_data" % it])
        np.testing.assert_array_equal(portable_labels(4, 7000 + 10 * it + 2, 16),
                                      z["iter%d_input_label" % it])


def run_b2(folder, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))  # snapshot_prefix "b2_solver" is relative
    solver = get_solver(os.path.join(folder, "B2_solver.prototxt"))
    assert isinstance(solver, SGDSolver)
    solver.net.copy_from(weights)
    record = {"loss": [], "lambda": [], "lr": [], "iter_before": [], "fc6": []}
    solver.add_iteration_callback(lambda s, loss: record["loss"].append(loss))
    for it in range(6):
        net = solver.net
        net.blobs["data"].data[...] = portable((4, 3, 28, 24), 7000 + 10 * it + 1)
        net.blobs["label"].data[...] = portable_labels(4, 7000 + 10 * it + 2, 16)
        record["iter_before"].append(solver.iter)
        solver.step(1)
        record["lambda"].append(float(np.asarray(net.blobs["lambda"].data).ravel()[0]))
        record["lr"].append(solver.lr)
        index = net.param_display_names.index("fc6__0")
        record["fc6"].append(np.array(net.learnable_params[index].data))
    return solver, record


def test_b2_sgd_trajectory_matches_caffe(b2, real_net, tmp_path, monkeypatch):
    folder, z, meta, weights = b2
    solver, rec = run_b2(folder, weights, tmp_path, monkeypatch)
    net = solver.net
    assert rec["iter_before"] == meta["solver_iter_before_step"]
    assert solver.iter == meta["final_iter"] == 6
    assert solver.current_step == 2
    np.testing.assert_allclose(rec["lr"], meta["lr_per_iter"], rtol=1e-7)
    assert_close(rec["loss"], meta["loss_per_iter"], TOL, "loss per iteration")
    assert_close(rec["lambda"], meta["lambda_per_iter"], TOL, "lambda per iteration")
    for it in range(6):
        assert_close(rec["fc6"][it], z["iter%d_param_full__fc6__0" % it], TOL,
                     "fc6 weight after iteration %d" % it)
    names = net.param_display_names
    assert names == meta["history_index_to_param"]
    for k, (name, blob) in enumerate(zip(names, net.learnable_params)):
        assert_close(np.asarray(blob.data), z["final_param__" + name], TOL, "final " + name)
        assert_close(np.asarray(solver.history[k]), z["history__%d" % k], TOL,
                     "momentum history %d (%s)" % (k, name))

    # Our snapshot: Caffe's layout and values.
    state_path = solver.snapshot()
    assert os.path.basename(state_path) == "b2_solver_iter_6.solverstate"
    ours, caffes = caffe_pb2.SolverState(), caffe_pb2.SolverState()
    with open(state_path, "rb") as f:
        ours.ParseFromString(f.read())
    with open(os.path.join(folder, "b2_solver_iter_6.solverstate"), "rb") as f:
        caffes.ParseFromString(f.read())
    assert (ours.iter, ours.current_step, ours.learned_net) == \
        (caffes.iter, caffes.current_step, caffes.learned_net)
    assert len(ours.history) == len(caffes.history)
    for k, (a, b) in enumerate(zip(ours.history, caffes.history)):
        assert list(a.shape.dim) == list(b.shape.dim)
        assert_close(blob_to_array(a), blob_to_array(b), TOL, "solverstate history %d" % k)
    model, caffe_model = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    with open(os.path.join(str(tmp_path), ours.learned_net), "rb") as f:
        model.ParseFromString(f.read())
    with open(os.path.join(folder, "b2_solver_iter_6.caffemodel"), "rb") as f:
        caffe_model.ParseFromString(f.read())
    caffe_layers = {l.name: l for l in caffe_model.layer}
    compared = 0
    for layer in model.layer:
        for k, blob in enumerate(layer.blobs):
            assert_close(blob_to_array(blob), blob_to_array(caffe_layers[layer.name].blobs[k]),
                         TOL, "caffemodel %s__%d" % (layer.name, k))
            compared += 1
    assert compared == len(names)


def test_restore_caffes_own_solverstate(b2, real_net, tmp_path, monkeypatch):
    folder, z, meta, weights = b2
    monkeypatch.chdir(str(tmp_path))  # learned_net is found next to the solverstate
    solver = get_solver(os.path.join(folder, "B2_solver.prototxt"))
    solver.restore(os.path.join(folder, "b2_solver_iter_6.solverstate"))
    assert solver.iter == 6 and solver.current_step == 2
    for k, (name, blob) in enumerate(zip(solver.net.param_display_names,
                                         solver.net.learnable_params)):
        np.testing.assert_array_equal(np.asarray(blob.data), z["final_param__" + name])
        np.testing.assert_array_equal(np.asarray(solver.history[k]), z["history__%d" % k])
    assert solver.learning_rate() == pytest.approx(meta["lr_per_iter"][-1], rel=1e-7)
