"""Data-parallel training (pyfacelayers.parallel): ``mpiexec -n 2`` against one process
with twice the batch, snapshots and logs from rank 0 only, resume with 2 and 1 ranks, a
rank killed mid-run, the launch errors, and the pieces (transports, sharding, the
supervisor) in one process."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers.parallel import DataParallel, launch, world
from pyfacelayers.parallel.transport import SingleProcess, Transport
from pyfacelayers.solvers import snapshot as snap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))


def _has_mpi():
    if MPIEXEC is None:
        return False
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(not _has_mpi(), reason="needs mpi4py and mpiexec "
                               "(pip install 'pyfacelayers[mpi]')")

RECORDS = 48
CLASSES = 4

NET = """name: "tiny_sphereface"
layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%(db)s" batch_size: %(batch)d backend: LMDB }
  transform_param { scale: 0.0078125 mean_value: 127.5 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5"
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
  top: "lambda"
  margin_inner_product_param { num_output: %(classes)d type: QUADRUPLE
    weight_filler { type: "xavier" } base: 1000 gamma: 0.5 power: 1 lambda_min: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }
"""

SOLVER = """net: "%(net)s"
type: "%(type)s"
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
%(extra)s
weight_decay: 0.0005
max_iter: %(iters)d
display: 1
snapshot: %(snapshot)d
snapshot_prefix: "%(prefix)s"
random_seed: 7
layer_wise_reduce: %(layer_wise)s
"""


def _make_db(path):
    lmdb = pytest.importorskip("lmdb")
    rng = np.random.default_rng(3)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(RECORDS):
            label = i % CLASSES
            pixels = (rng.integers(0, 256, (1, 9, 9)) // 2 + 60 * label).astype(np.uint8)
            datum = caffe.proto.caffe_pb2.Datum(channels=1, height=9, width=9, label=label,
                                                data=pixels.tobytes())
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()


def _setup(folder, name, batch, solver_type="SGD", iters=5, snapshot=5, layer_wise=True):
    """A net reading the shared LMDB with ``batch`` per rank and its solver."""
    folder.mkdir(exist_ok=True)
    db = folder.parent / "db"
    if not db.exists():
        _make_db(db)
    net = folder / (name + "_net.prototxt")
    net.write_text(NET % {"db": db, "batch": batch, "classes": CLASSES})
    solver = folder / (name + "_solver.prototxt")
    extra = "momentum2: 0.999\ndelta: 1e-8" if solver_type == "Adam" else ""
    solver.write_text(SOLVER % {"net": net, "type": solver_type, "iters": iters,
                                "snapshot": snapshot, "prefix": folder / name, "extra": extra,
                                "layer_wise": "true" if layer_wise else "false"})
    return str(solver), str(folder / name)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(launch.JOB_VARIABLE, None)
    return env


def _train(args, ranks=1, timeout=120, check=True):
    command = [sys.executable, "-m", "pyfacelayers", "train"] + list(args)
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks)] + command
    done = subprocess.run(command, env=_env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(log_path):
    text = open(log_path).read()
    return [float(v) for v in re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", text)]


def _state(prefix, iteration, solver_type):
    """(weights by layer, history arrays) of snapshot ``iteration``."""
    state = snap.read_state("%s_iter_%d.solverstate" % (prefix, iteration))
    weights = snap.read_weights("%s_iter_%d.caffemodel" % (prefix, iteration))
    params = [np.array(b.data, np.float64) for layer in weights.layer for b in layer.blobs]
    history = [np.array(h.data, np.float64) for h in state.history]
    return params, history


def _close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        scale = max(1.0, float(np.linalg.norm(y)))
        assert float(np.linalg.norm(x - y)) <= tol * scale, (x, y)


# -- two ranks under MPI against one process with the whole batch ---------------------

@needs_mpi
@pytest.mark.parametrize("solver_type,layer_wise", [("SGD", True), ("Adam", False)])
def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path, solver_type, layer_wise):
    one, one_prefix = _setup(tmp_path / "one", "one", batch=8, solver_type=solver_type,
                             layer_wise=layer_wise)
    two, two_prefix = _setup(tmp_path / "two", "two", batch=4, solver_type=solver_type,
                             layer_wise=layer_wise)
    _train(["--solver", one, "--log", str(tmp_path / "one.log")])
    done = _train(["--solver", two, "--log", str(tmp_path / "two.log")], ranks=2)
    assert "Data-parallel training: 2 ranks over MPI" in open(tmp_path / "two.log").read()
    a, b = _losses(tmp_path / "one.log"), _losses(tmp_path / "two.log")
    assert len(a) == len(b) == 5
    np.testing.assert_allclose(b, a, rtol=1e-5)
    params_one, history_one = _state(one_prefix, 5, solver_type)
    params_two, history_two = _state(two_prefix, 5, solver_type)
    _close(params_two, params_one)
    _close(history_two, history_one)
    # Rank 0 alone wrote the log and the snapshot; rank 1 printed nothing of its own.
    assert "rank 1" not in done.stderr
    assert sorted(os.listdir(tmp_path / "two")) == sorted(
        ["two_net.prototxt", "two_solver.prototxt", "two_iter_5.caffemodel",
         "two_iter_5.solverstate", "two_iter_5.solverstate" + snap.EXTRA_SUFFIX])
    extra = snap.read_extra("%s_iter_5.solverstate" % two_prefix, 5)
    assert extra["solver_count"] == 2 and len(extra["rank_states"]) == 1


@needs_mpi
def test_resume_with_two_ranks_and_with_one(tmp_path):
    whole, whole_prefix = _setup(tmp_path / "whole", "whole", batch=4, iters=6, snapshot=3)
    _train(["--solver", whole, "--log", str(tmp_path / "whole.log")], ranks=2)
    # Resumed by 2 ranks from iteration 3: the same run as the one never stopped.
    again, again_prefix = _setup(tmp_path / "again", "again", batch=4, iters=6, snapshot=3)
    _train(["--solver", again, "--snapshot", "%s_iter_3.solverstate" % whole_prefix,
            "--log", str(tmp_path / "again.log")], ranks=2)
    p_whole, h_whole = _state(whole_prefix, 6, "SGD")
    p_again, h_again = _state(again_prefix, 6, "SGD")
    _close(p_again, p_whole)
    _close(h_again, h_whole)
    # Resumed by 1 rank: a warning; iteration, weights and history carry over.
    alone, alone_prefix = _setup(tmp_path / "alone", "alone", batch=4, iters=6, snapshot=3)
    done = _train(["--solver", alone, "--snapshot", "%s_iter_3.solverstate" % whole_prefix])
    assert "written by a job of 2 rank(s) and is resumed by 1" in done.stderr
    assert os.path.exists("%s_iter_6.caffemodel" % alone_prefix)
    assert not os.path.exists("%s_iter_3.caffemodel" % alone_prefix)


@needs_mpi
def test_a_killed_rank_stops_the_job_and_the_last_snapshot_resumes(tmp_path):
    solver, prefix = _setup(tmp_path / "k", "k", batch=4, iters=100000, snapshot=2)
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "pyfacelayers", "train",
               "--solver", solver, "--log", str(tmp_path / "k.log")]
    job = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        log_text, pids = "", {}
        deadline = time.time() + 60
        while time.time() < deadline and not (len(pids) == 2 and os.path.exists(
                "%s_iter_4.solverstate" % prefix)):
            time.sleep(0.1)
            if os.path.exists(tmp_path / "k.log"):
                log_text = open(tmp_path / "k.log").read()
                pids = {int(r): int(p) for r, p in re.findall(r"Rank (\d+): pid (\d+)", log_text)}
        assert len(pids) == 2, log_text
        os.kill(pids[1], signal.SIGKILL)
        out, _ = job.communicate(timeout=30)  # bounded: no hang
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    # The launcher reports the dead process by pid; rank 0's log maps it to rank 1.
    assert "Rank 1: pid %d" % pids[1] in log_text
    assert re.search(r"PID %d .*\n.*EXIT CODE: 9" % pids[1], out), out
    latest = snap.latest_snapshot(prefix)
    assert latest is not None
    iteration = int(re.search(r"_iter_(\d+)\.solverstate$", latest).group(1))
    assert snap.verify_snapshot(latest).iter == iteration >= 4  # complete, CRC checked
    resumed, resumed_prefix = _setup(tmp_path / "r", "r", batch=4, iters=iteration + 2,
                                     snapshot=iteration + 2)
    _train(["--solver", resumed, "--snapshot", latest], ranks=2)
    assert os.path.exists("%s_iter_%d.caffemodel" % (resumed_prefix, iteration + 2))
