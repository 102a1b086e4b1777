"""Caffe's HDF5 weights (.caffemodel.h5): pycaffe's save_hdf5 / load_hdf5, and
copy_from / Net(model, weights) picking the HDF5 reader by the .h5 suffix."""

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers.errors import FormatError

from conftest import shared_path

h5py = pytest.importorskip("h5py", reason="HDF5 weights need h5py")

SHARED_NET = """
name: "tied"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "y"
        param { name: "w" } inner_product_param { num_output: 3
        weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "b" type: "InnerProduct" bottom: "y" top: "z"
        param { name: "w" } inner_product_param { num_output: 3
        bias_filler { type: "constant" value: -1 } } }
"""


def tied_net(tmp_path, seed=0):
    path = tmp_path / "tied.prototxt"
    path.write_text(SHARED_NET)
    return caffe.Net(str(path), caffe.TEST, seed=seed), str(path)


def test_b1_small_round_trip_and_caffes_layout(tmp_path):
    model = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small_train.prototxt")
    weights = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")
    net = caffe.Net(model, weights, caffe.TRAIN)
    out = tmp_path / "b1.caffemodel.h5"
    net.save_hdf5(str(out))
    with h5py.File(out, "r") as f:
        assert set(f.keys()) == {"data"}
        # one group per layer, parameter-free layers included, datasets "0", "1", ...
        assert set(f["data"].keys()) == set(net._layer_names)
        for name, layer in zip(net._layer_names, net.layers):
            group = f["data"][name]
            assert sorted(group.keys()) == [str(k) for k in range(len(layer.blobs))]
            for k, blob in enumerate(layer.blobs):
                assert group[str(k)].dtype == np.float32
                np.testing.assert_array_equal(group[str(k)][()], blob.data)
    fresh = caffe.Net(model, caffe.TRAIN, seed=5)
    fresh.copy_from(str(out))                       # the suffix picks the HDF5 reader
    by_weights = caffe.Net(model, str(out), caffe.TRAIN)
    for name in net.params:
        for a, b, c in zip(net.params[name], fresh.params[name], by_weights.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.data, c.data)


def test_shared_parameter_written_by_its_owner_only(tmp_path):
    net, model = tied_net(tmp_path)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.diff[...] = 7.0
    out = tmp_path / "tied.h5"
    net.save_hdf5(str(out), write_diff=True)
    with h5py.File(out, "r") as f:
        assert sorted(f["data"]["a"].keys()) == ["0", "1"]
        assert sorted(f["data"]["b"].keys()) == ["1"]        # "0" is a's weight
        assert sorted(f["diff"]["b"].keys()) == ["0", "1"]   # diffs regardless of sharing
        assert list(f["data"]["relu"].keys()) == []
    other, _ = tied_net(tmp_path, seed=3)
    other.load_hdf5(str(out))
    for name in ("a", "b"):
        for p, q in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(p.data, q.data)
    assert other.params["b"][0] is other.params["a"][0]


def write_h5(path, layers, dtype=np.float64):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, params in layers.items():
            group = data.create_group(name)
            for key, values in params.items():
                group.create_dataset(key, data=np.asarray(values, dtype=dtype))


def test_hand_written_file_is_read_as_caffe_reads_it(tmp_path):
    net, _ = tied_net(tmp_path)
    path = tmp_path / "hand.h5"
    w = np.arange(9.0).reshape(3, 3)
    # float64 values into a float32 net (HDF5 converts, as Caffe's H5LT reads do);
    # an unknown layer is ignored; b's weight is shared so it may be absent.
    write_h5(path, {"a": {"0": w, "1": [1, 2, 3]}, "b": {"1": [4, 5, 6]},
                    "not_in_net": {"0": [1.0]}})
    net.copy_from(str(path))
    np.testing.assert_array_equal(net.params["a"][0].data, w.astype(np.float32))
    np.testing.assert_array_equal(net.params["a"][1].data, [1, 2, 3])
    np.testing.assert_array_equal(net.params["b"][1].data, [4, 5, 6])


@pytest.mark.parametrize("layers, message", [
    ({"a": {"0": np.zeros((3, 3))}}, 'layer "a": param 1 is missing'),
    ({"a": {"0": np.zeros((3, 4)), "1": np.zeros(3)}}, "shape mismatch, the weights have "
                                                       "\\(3, 4\\), the net has \\(3, 3\\)"),
    ({"a": {"0": np.zeros((3, 3)), "1": np.zeros(3), "2": np.zeros(1)}},
     'layer "a": the weights have params \\[0, 1, 2\\]'),
    ({"a": {"w": np.zeros(3)}}, "expected datasets named 0, 1"),
])
def test_bad_layouts_are_clear_errors(tmp_path, layers, message):
    net, _ = tied_net(tmp_path)
    path = tmp_path / "bad.h5"
    write_h5(path, layers)
    with pytest.raises(FormatError, match=message):
        net.load_hdf5(str(path))


def test_files_that_are_not_caffe_hdf5_weights(tmp_path):
    net, _ = tied_net(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        net.copy_from(str(tmp_path / "missing.caffemodel.h5"))
    binary = tmp_path / "really_binaryproto.h5"
    binary.write_bytes(b"\x0a\x03abc" * 10)
    with pytest.raises(FormatError, match="not a readable HDF5 file"):
        net.copy_from(str(binary))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    with pytest.raises(FormatError, match='no group "data"'):
        net.copy_from(str(tmp_path / "other.h5"))
    with h5py.File(tmp_path / "ints.h5", "w") as f:
        f.create_group("data").create_group("a").create_dataset("0", data=np.zeros((3, 3), int))
    with pytest.raises(FormatError, match="floating-point"):
        net.copy_from(str(tmp_path / "ints.h5"))


def test_dataset_over_the_memory_limit_is_refused_before_reading(tmp_path, monkeypatch):
    net, _ = tied_net(tmp_path)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:   # 8 GB declared, nothing stored (no fill value written)
        f.create_group("data").create_group("a").create_dataset("0", shape=(1 << 30,),
                                                                  dtype=np.float64)
    monkeypatch.setenv("PYFACELAYERS_MEMORY_LIMIT", "64M")
    with pytest.raises(MemoryError, match="data/a/0"):
        net.load_hdf5(str(path))


# -- snapshot_format: HDF5 -----------------------------------------------------------------
SOLVER = """net_param {
  name: "h5net"
  layer { name: "data" type: "DummyData" top: "x" top: "label"
          dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
                             data_filler { type: "gaussian" std: 1 }
                             data_filler { type: "uniform" min: 0 max: 2.9 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
          inner_product_param { num_output: 3 bias_term: false
                                      weight_filler { type: "gaussian" std: 0.3 } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
}
type: "%s" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "fixed"
max_iter: 10 random_seed: 5 snapshot_format: HDF5 snapshot_prefix: "%s"
"""


def h5_solver(tmp_path, solver_type="SGD"):
    path = tmp_path / ("solver_%s.prototxt" % solver_type)
    path.write_text(SOLVER % (solver_type, tmp_path / "snap"))
    return caffe.get_solver(str(path))


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_hdf5_snapshot_layout_and_exact_resume(tmp_path, solver_type):
    full = h5_solver(tmp_path, solver_type)
    full.step(5)
    first = h5_solver(tmp_path, solver_type)
    first.step(3)
    state_path = first.snapshot()
    assert state_path == str(tmp_path / "snap_iter_3.solverstate.h5")
    with h5py.File(state_path, "r") as f:   # Caffe's SnapshotSolverStateToHDF5 layout
        assert f["iter"].shape == (1,) and f["iter"][0] == 3
        assert f["current_step"][0] == 0
        assert f["learned_net"][()].decode() == str(tmp_path / "snap_iter_3.caffemodel.h5")
        sets = 2 if solver_type == "Adam" else 1
        assert sorted(f["history"].keys()) == [str(i) for i in range(sets)]
        np.testing.assert_array_equal(f["history"]["0"][()], first.history[0])
    with h5py.File(tmp_path / "snap_iter_3.caffemodel.h5", "r") as f:
        np.testing.assert_array_equal(f["data"]["ip"]["0"][()], first.net.params["ip"][0].data)
    from pyfacelayers.solvers.snapshot import latest_snapshot
    assert latest_snapshot(str(tmp_path / "snap")) == state_path
    resumed = h5_solver(tmp_path, solver_type)
    resumed.restore(state_path)
    assert resumed.iter == 3
    resumed.step(2)
    np.testing.assert_array_equal(resumed.net.params["ip"][0].data, full.net.params["ip"][0].data)


def test_caffe_written_hdf5_state_restores(tmp_path):
    # As Caffe's H5LT calls write it: int32 (1,) datasets and a null-terminated string.
    solver = h5_solver(tmp_path)
    weights = tmp_path / "w.caffemodel.h5"
    solver.net.params["ip"][0].data[...] = 0.125
    solver.net.save_hdf5(str(weights))
    state = tmp_path / "caffe.solverstate.h5"
    with h5py.File(state, "w") as f:
        f.create_dataset("iter", data=np.array([7], np.int32))
        f.create_dataset("current_step", data=np.array([0], np.int32))
        text = np.bytes_(b"w.caffemodel.h5\0")
        f.create_dataset("learned_net", data=text)
        f.create_group("history").create_dataset("0", data=np.full((3, 5), 0.5))
    fresh = h5_solver(tmp_path)
    fresh.restore(str(state))
    assert fresh.iter == 7
    np.testing.assert_array_equal(fresh.net.params["ip"][0].data, np.full((3, 5), 0.125))
    np.testing.assert_array_equal(fresh.history[0], np.full((3, 5), 0.5, np.float32))


def test_bad_hdf5_states_are_clear_errors(tmp_path):
    solver = h5_solver(tmp_path)
    path = tmp_path / "bad.solverstate.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([1], np.int32))
    with pytest.raises(FormatError, match='no group "history"'):
        solver.restore(str(path))
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([1], np.int32))
        f.create_group("history").create_dataset("0", data=np.zeros((2, 2)))
    from pyfacelayers.solvers.lr_policy import SolverError
    with pytest.raises(SolverError, match=r"history blob 0 has shape \(2, 2\)"):
        solver.restore(str(path))
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([1.5]))
    with pytest.raises(FormatError, match='integer dataset "iter"'):
        solver.restore(str(path))


def test_info_lists_hdf5_weights(tmp_path, capsys):
    from pyfacelayers.cli import main
    net, _ = tied_net(tmp_path)
    net.save_hdf5(str(tmp_path / "tied.caffemodel.h5"))
    assert main(["info", str(tmp_path / "tied.caffemodel.h5")]) == 0
    out = capsys.readouterr().out
    assert "HDF5 weights" in out and "4 layers" in out
    assert "3x3  3" in out and "parameters: 15" in out   # b's shared weight stored once
