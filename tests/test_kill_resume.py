"""Kill and resume: SIGKILL at random moments, resume from the newest complete snapshot,
and the final state equals an uninterrupted run's; the snapshot-set checks behind it."""

import gc
import importlib.util
import io
import json
import os
import zlib

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers.errors import PyFaceLayersError
from pyfacelayers.fileio.atomic import atomic_write, stale_temp_files
from pyfacelayers.solvers import SolverError
from pyfacelayers.solvers import snapshot as snap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kill_resume_module():
    spec = importlib.util.spec_from_file_location(
        "kill_resume", os.path.join(ROOT, "bench", "kill_resume.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    pytest.importorskip("PIL")
    kr = _kill_resume_module()
    out = io.StringIO()
    # The 20 kills at a small size (the bench default is 120 iterations).
    summary = kr.run(str(tmp_path), kills=20, seed=5, iters=60, every=1, out=out)
    # A kill drawn late may find the run already finished on a slow, loaded machine.
    assert len(summary["kills"]) >= 15, out.getvalue()
    assert "OK" in out.getvalue()
    assert summary["runs"] == len(summary["kills"]) + 1  # the killed runs and the last
    assert summary["resumes"] >= 1 and summary["restore_lines"] >= 1
    # Whatever a kill interrupted, the newest complete set never went backwards.
    newest = [e["newest_complete"] for e in summary["kills"]]
    assert newest == sorted(newest)


def _write_solver(folder, iters=3):
    net = """name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 5 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    (folder / "net.prototxt").write_text(net)
    (folder / "solver.prototxt").write_text(
        'net: "%s" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: %d snapshot: 1 '
        'snapshot_prefix: "%s" random_seed: 2 display: 0 type: "SGD"'
        % (folder / "net.prototxt", iters, folder / "s"))
    return str(folder / "solver.prototxt")


def _three_snapshots(tmp_path):
    solver = caffe.get_solver(_write_solver(tmp_path))
    solver.solve()
    return str(tmp_path / "s")


def test_latest_snapshot_skips_incomplete_or_inconsistent_sets(tmp_path, caplog):
    prefix = _three_snapshots(tmp_path)
    state = lambda n: "%s_iter_%d.solverstate" % (prefix, n)  # noqa: E731
    assert snap.latest_snapshot(prefix) == state(3)
    assert sorted(snap.snapshot_iterations(prefix)) == [1, 2, 3]
    os.remove(state(3))                                   # killed before the commit mark
    assert snap.latest_snapshot(prefix) == state(2)
    with open(prefix + "_iter_2.caffemodel", "r+b") as f:  # a torn caffemodel
        f.truncate(40)
    assert snap.latest_snapshot(prefix) == state(1)
    assert "skipping snapshot %s" % state(2) in caplog.text
    with open(snap.extra_path(state(1))) as f:            # a side file of another iteration
        extra = json.load(f)
    extra["iter"] = 7
    with open(snap.extra_path(state(1)), "w") as f:
        json.dump(extra, f)
    assert snap.latest_snapshot(prefix) is None
    assert snap.latest_snapshot(str(tmp_path / "nothing" / "here")) is None


def test_restore_refuses_a_caffemodel_the_snapshot_did_not_write(tmp_path):
    prefix = _three_snapshots(tmp_path)
    with open(prefix + "_iter_3.caffemodel", "rb") as f:
        third = f.read()
    with open(snap.extra_path(prefix + "_iter_2.solverstate")) as f:
        recorded = json.load(f)["caffemodel"]
    with open(prefix + "_iter_2.caffemodel", "rb") as f:
        second = f.read()
    assert recorded == {"file": "s_iter_2.caffemodel", "bytes": len(second),
                        "crc32": zlib.crc32(second)}
    with open(prefix + "_iter_2.caffemodel", "wb") as f:  # valid, but from iteration 3
        f.write(third)
    solver = caffe.get_solver(str(tmp_path / "solver.prototxt"))
    with pytest.raises(SolverError, match="not the one this snapshot wrote"):
        solver.restore(prefix + "_iter_2.solverstate")
    with pytest.raises(SolverError, match="not the one this snapshot wrote"):
        snap.verify_snapshot(prefix + "_iter_2.solverstate")
    assert snap.latest_snapshot(prefix) == prefix + "_iter_3.solverstate"


def test_side_file_not_a_dict_is_a_clear_error(tmp_path):
    prefix = _three_snapshots(tmp_path)
    with open(snap.extra_path(prefix + "_iter_3.solverstate"), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(SolverError, match="not a pyfacelayers solverstate side file"):
        snap.verify_snapshot(prefix + "_iter_3.solverstate")


def test_stale_temp_files_are_found_by_prefix(tmp_path):
    atomic_write(str(tmp_path / "net_iter_1.caffemodel"), b"x")
    for name in (".net_iter_2.caffemodel.ab12_x.tmp", ".net_iter_2.solverstate.q1w2e3.tmp",
                 ".other_iter_2.caffemodel.ab12cd.tmp", "net_iter_3.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    found = [os.path.basename(p) for p in stale_temp_files(str(tmp_path / "net"))]
    assert found == [".net_iter_2.caffemodel.ab12_x.tmp", ".net_iter_2.solverstate.q1w2e3.tmp"]
    assert os.listdir(str(tmp_path)).count("net_iter_1.caffemodel") == 1


def test_train_snapshot_latest(tmp_path, capsys):
    from pyfacelayers import cli
    solver_path = _write_solver(tmp_path, iters=4)
    (tmp_path / ".s_iter_9.caffemodel.abcdef.tmp").write_bytes(b"torn")
    assert cli.main(["train", "--solver", solver_path, "--snapshot", "latest"]) == 0
    err = capsys.readouterr().err
    assert "No complete snapshot" in err and "Removing" in err
    assert not stale_temp_files(str(tmp_path / "s"))
    final = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "s_iter_4.caffemodel"),
                      caffe.TEST).params["ip"][0].data.copy()
    for n in (4, 3):
        os.remove(str(tmp_path / ("s_iter_%d.solverstate" % n)))
    os.remove(str(tmp_path / "s_iter_4.caffemodel"))
    assert cli.main(["train", "--solver", solver_path, "--snapshot", "latest"]) == 0
    assert "Newest complete snapshot: %s" % (tmp_path / "s_iter_2.solverstate") in \
        capsys.readouterr().err
    resumed = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "s_iter_4.caffemodel"),
                        caffe.TEST).params["ip"][0].data
    np.testing.assert_array_equal(resumed, final)


def _image_data_net(tmp_path, shuffle=True):
    from PIL import Image
    lines = []
    for i in range(7):
        Image.fromarray(np.full((3, 3), i * 30, np.uint8)).save(str(tmp_path / ("%d.png" % i)))
        lines.append("%d.png %d" % (i, i % 2))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    text = """layer { name: "d" type: "ImageData" top: "data" top: "label"
      image_data_param { source: "%s" root_folder: "%s/" batch_size: 3 shuffle: %s
                         is_color: false } }""" % (tmp_path / "list.txt", tmp_path,
                                                   "true" if shuffle else "false")
    (tmp_path / "net.prototxt").write_text(text)
    return str(tmp_path / "net.prototxt")


@pytest.mark.parametrize("shuffle", [True, False])
def test_image_data_position_and_order_restore(tmp_path, shuffle):
    pytest.importorskip("PIL")
    path = _image_data_net(tmp_path, shuffle)
    a = caffe.Net(path, caffe.TRAIN)
    for _ in range(4):  # past an epoch: a reshuffle
        a.forward()
    states = json.loads(json.dumps(a.get_layer_states()))  # through the side file's JSON
    assert states["d"]["line_id"] == 12 % 7
    assert ("order" in states["d"]) == shuffle
    _check_resumed_batches(a, path, states, 3)


def _check_resumed_batches(a, path, states, batches):
    """A fresh net given ``a``'s layer states and RNG state yields a's next batches."""
    rng_state = a.layers[0].rng.bit_generator.state
    expected = [a.forward()["label"].copy() for _ in range(batches)]
    b = caffe.Net(path, caffe.TRAIN)
    b.set_layer_states(states)
    b.layers[0].rng.bit_generator.state = rng_state
    got = [b.forward()["label"].copy() for _ in range(batches)]
    for x, y in zip(got, expected):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(b.blobs["data"].data, a.blobs["data"].data)


def test_image_data_state_checked(tmp_path):
    pytest.importorskip("PIL")
    net = caffe.Net(_image_data_net(tmp_path), caffe.TRAIN)
    layer = net.layers[0]
    with pytest.raises(PyFaceLayersError, match="does not match the 7 lines"):
        layer.set_state({"line_id": 0, "order": [1, 2, 3]})
    with pytest.raises(PyFaceLayersError, match="line_id 7 is not a line"):
        layer.set_state({"line_id": 7})
    with pytest.raises(PyFaceLayersError, match="expected keys"):
        layer.set_state({"position": 1})


def test_interrupt_inside_an_iteration_snapshots_the_start_states(tmp_path):
    """A KeyboardInterrupt in the middle of a forward (after the data and Dropout layers
    drew their random numbers): the snapshot records the RNG and layer states from the
    iteration's start, so the resumed run equals an uninterrupted one."""
    solver_path = _write_solver(tmp_path, iters=6)
    full = caffe.get_solver(solver_path)
    full.step(6)
    want = [p.data.copy() for p in full.net.learnable_params]

    run = caffe.get_solver(solver_path)
    run.param.snapshot = 0
    loss = run.net.layers[-1]
    calls = [0]
    forward = loss.forward

    def failing_forward(bottom, top):
        calls[0] += 1
        if calls[0] == 4:  # inside iteration 3 (0-based), after the RNGs were used
            raise KeyboardInterrupt
        return forward(bottom, top)

    loss.forward = failing_forward
    with pytest.raises(KeyboardInterrupt):
        run.step(6)
    assert run.iter == 3
    path = run.snapshot()
    with open(snap.extra_path(path)) as f:
        rngs = json.load(f)["train_net_rng_states"]
    assert rngs["data"] != run.net.layers[0].rng.bit_generator.state  # used since the start
    resumed = caffe.get_solver(solver_path)
    resumed.restore(path)
    resumed.step(3)
    for p, w in zip(resumed.net.learnable_params, want):
        np.testing.assert_array_equal(p.data, w)


def _hdf5_net(tmp_path, shuffle):
    h5py = pytest.importorskip("h5py")
    names = []
    for k, rows in enumerate((5, 3, 4)):
        name = str(tmp_path / ("p%d.h5" % k))
        with h5py.File(name, "w") as handle:
            handle.create_dataset("data", data=np.arange(rows * 2.0).reshape(rows, 2) + 100 * k)
            handle.create_dataset("label", data=np.arange(rows) + 10.0 * k)
        names.append(name)
    (tmp_path / "h5list.txt").write_text("\n".join(names) + "\n")
    text = """layer { name: "h" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param { source: "%s" batch_size: 4 shuffle: %s } }""" % (
        tmp_path / "h5list.txt", "true" if shuffle else "false")
    (tmp_path / "h5.prototxt").write_text(text)
    return str(tmp_path / "h5.prototxt")


@pytest.mark.parametrize("shuffle", [True, False])
def test_hdf5_data_position_and_orders_restore(tmp_path, shuffle):
    path = _hdf5_net(tmp_path, shuffle)
    a = caffe.Net(path, caffe.TRAIN)
    for _ in range(5):  # 20 rows: past the 12 rows of a whole pass, into the next
        a.forward()
    states = json.loads(json.dumps(a.get_layer_states()))
    assert ("row_order" in states["h"]) == shuffle
    _check_resumed_batches(a, path, states, 4)


def test_hdf5_data_state_checked(tmp_path):
    layer = caffe.Net(_hdf5_net(tmp_path, True), caffe.TRAIN).layers[0]
    with pytest.raises(PyFaceLayersError, match="file order does not match the 3 files"):
        layer.set_state({"current_file": 0, "current_row": 0, "file_order": [0, 1]})
    with pytest.raises(PyFaceLayersError, match="current_file 3 is not one of the 3 files"):
        layer.set_state({"current_file": 3, "current_row": 0, "file_order": [0, 1, 2]})
    with pytest.raises(PyFaceLayersError, match="row order does not match the 5 rows"):
        layer.set_state({"current_file": 0, "current_row": 0, "file_order": [0, 1, 2],
                         "row_order": [0, 1, 2, 3, 3]})
    with pytest.raises(PyFaceLayersError, match="current_row 5 is not one of the 5 rows"):
        layer.set_state({"current_file": 0, "current_row": 5, "file_order": [0, 1, 2],
                         "row_order": [4, 3, 2, 1, 0]})
    with pytest.raises(PyFaceLayersError, match="expected keys"):
        layer.set_state({"row": 1})


def test_lmdb_data_position_restores(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    from pyfacelayers.proto import caffe_pb2
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(7):
            datum = caffe_pb2.Datum(channels=1, height=1, width=2, label=i,
                                    data=bytes([i, 2 * i]))
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()
    (tmp_path / "db.prototxt").write_text(
        'layer { name: "db" type: "Data" top: "data" top: "label" '
        'data_param { source: "%s" batch_size: 3 backend: LMDB } }' % (tmp_path / "db"))
    a = caffe.Net(str(tmp_path / "db.prototxt"), caffe.TRAIN)
    a.forward()
    a.forward()  # 6 of 7 records read: the next batch wraps around
    states = json.loads(json.dumps(a.get_layer_states()))
    assert states == {"db": {"key": (b"%08d" % 6).hex()}}
    del a  # (lmdb opens a database once per process)
    gc.collect()
    b = caffe.Net(str(tmp_path / "db.prototxt"), caffe.TRAIN)
    b.set_layer_states(states)
    np.testing.assert_array_equal(b.forward()["label"], [6, 0, 1])
    layer = b.layers[0]
    with pytest.raises(PyFaceLayersError, match="is not in"):
        layer.set_state({"key": b"zzz".hex()})
    with pytest.raises(PyFaceLayersError, match="not a hex string"):
        layer.set_state({"key": "xyz"})
    with pytest.raises(PyFaceLayersError, match="expected the key"):
        layer.set_state({"cursor": 1})


def test_journaled_layer_rng_behaves_as_its_generator(tmp_path):
    import copy
    import pickle
    net = caffe.get_solver(_write_solver(tmp_path)).net
    rng = net.layers[0].rng
    twin = np.random.default_rng()
    twin.bit_generator.state = rng.bit_generator.state
    for clone in (copy.deepcopy(rng), pickle.loads(pickle.dumps(rng))):
        np.testing.assert_array_equal(clone.random(3), twin.random(3))
        twin.bit_generator.state = rng.bit_generator.state
    net.rng_journal.start()
    before = rng.bit_generator.state
    rng.standard_normal(4)
    rng.standard_normal(4)
    assert net.rng_journal.before == {"data": before}  # the state before the first use
    net.rng_journal.stop()
    rng.random()
    assert net.rng_journal.before is None
