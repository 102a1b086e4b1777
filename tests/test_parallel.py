"""Data-parallel training (pyfacelayers.parallel): ``mpiexec -n 2`` against one process
with twice the batch, snapshots and logs from rank 0 only, resume with 2 and 1 ranks, a
rank killed mid-run, signals, the launch errors, and the pieces (transports, sharding,
the supervisor, the NCCL transport and pycaffe's NCCL object on a host-memory stand-in,
tests/nccl_standin.py) in one process. The real NCCL path: bench/parallel_gpu_check.sh."""

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
from pyfacelayers.errors import LayerError, PyFaceLayersError
from pyfacelayers.parallel import DataParallel, launch, world
from pyfacelayers.parallel.transport import SingleProcess, Transport
from pyfacelayers.solvers import snapshot as snap

from conftest import child_env, shared_path

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

def _fixture():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "parallel_fixture", os.path.join(ROOT, "bench", "parallel_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIXTURE = _fixture()


def _make_db(path):
    pytest.importorskip("lmdb")
    FIXTURE.make_db(path)


def _setup(folder, name, batch, solver_type="SGD", iters=5, snapshot=5, layer_wise=True):
    """A net reading the shared LMDB with ``batch`` per rank, and its solver."""
    pytest.importorskip("lmdb")
    return FIXTURE.write_job(folder, name, batch, solver_type=solver_type, iters=iters,
                             snapshot=snapshot, layer_wise=layer_wise)


def _env(*paths_first):
    """The environment of a child process importing the same pyfacelayers as the tests
    (the installed package in CI), with ``paths_first`` ahead."""
    env = child_env(*paths_first)
    env.pop(launch.JOB_VARIABLE, None)
    return env


def _train(args, ranks=1, timeout=120, check=True):
    command = [sys.executable, "-m", "pyfacelayers", "train"] + list(args)
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks)] + command
    done = subprocess.run(command, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
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
    # --snapshot latest: rank 0 finds the newest set and every rank resumes it.
    done = _train(["--solver", whole, "--snapshot", "latest"], ranks=2)
    assert "Newest complete snapshot: %s_iter_6.solverstate" % whole_prefix in done.stderr
    assert "restored iteration 6" in done.stderr
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
                           stderr=subprocess.STDOUT, text=True)
    try:
        log_text, pids = "", {}
        deadline = time.time() + 60
        while time.time() < deadline and job.poll() is None and not (
                len(pids) == 2 and os.path.exists("%s_iter_4.solverstate" % prefix)):
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
    # The launcher reports a dead process by pid; rank 0's log maps pids to ranks.
    # MPICH names the first exit it notices: usually the killed rank, sometimes
    # rank 0, which its clean-up killed in the same instant.
    assert "Rank 1: pid %d" % pids[1] in log_text
    assert "BAD TERMINATION" in out, out
    assert any("PID %d " % pid in out for pid in pids.values()), out
    latest = snap.latest_snapshot(prefix)
    assert latest is not None
    iteration = int(re.search(r"_iter_(\d+)\.solverstate$", latest).group(1))
    assert snap.verify_snapshot(latest).iter == iteration >= 4  # complete, CRC checked
    resumed, resumed_prefix = _setup(tmp_path / "r", "r", batch=4, iters=iteration + 2,
                                     snapshot=iteration + 2)
    _train(["--solver", resumed, "--snapshot", latest], ranks=2)
    assert os.path.exists("%s_iter_%d.caffemodel" % (resumed_prefix, iteration + 2))


@needs_mpi
@pytest.mark.parametrize("signal_name,effect,stops", [("SIGHUP", "snapshot", False),
                                                      ("SIGINT", "stop", True)])
def test_a_signal_to_one_rank_acts_on_the_whole_job(tmp_path, signal_name, effect, stops):
    """A signal reaching rank 1 alone: every rank snapshots (or stops) after the same
    iteration, and rank 0 writes the files."""
    solver, prefix = _setup(tmp_path / "s", "s", batch=4, iters=100000 if stops else 400,
                            snapshot=0)
    flag = "--" + signal_name.lower() + "_effect"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "pyfacelayers", "train",
               "--solver", solver, "--log", str(tmp_path / "s.log"), flag, effect]
    job = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        pids, deadline = {}, time.time() + 60
        while time.time() < deadline and len(pids) < 2 and job.poll() is None:
            time.sleep(0.1)
            if os.path.exists(tmp_path / "s.log"):
                text = open(tmp_path / "s.log").read()
                if "Iteration 3 " in text:
                    pids = {int(r): int(p) for r, p in re.findall(r"Rank (\d+): pid (\d+)",
                                                                  text)}
        assert len(pids) == 2
        os.kill(pids[1], getattr(signal, signal_name))
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, out
    # (the snapshot after training, at iteration 400, aside)
    written = [i for i in snap.snapshot_iterations(prefix) if i != 400]
    assert len(written) == 1, (written, out)
    iteration = written[0]
    extra = snap.read_extra("%s_iter_%d.solverstate" % (prefix, iteration), iteration)
    assert extra["solver_count"] == 2
    log_text = open(tmp_path / "s.log").read()
    if stops:
        assert "Stopped at iteration %d" % iteration in out
        assert "Optimization stopped early." in log_text
    else:
        assert "Optimization Done." in log_text


def test_bad_gpu_lists_are_refused_clearly():
    with pytest.raises(ValueError, match="GPU 0 is listed twice"):
        launch.parse_gpus("0,0", count=4)
    with pytest.raises(ValueError, match="there is no GPU 2 \\(this machine has 2 CUDA "
                                         "devices: 0, 1\\)"):
        launch.parse_gpus("0,2", count=2)
    with pytest.raises(ValueError, match="'x' is not a device id"):
        launch.parse_gpus("0,x", count=2)
    assert launch.parse_gpus("all", count=3) == [0, 1, 2]
    assert launch.parse_gpus("1,0", count=2) == [1, 0]


def _cli_error(args, env_extra=None, tmp_path=None):
    env = _env()
    env.update(env_extra or {})
    done = subprocess.run([sys.executable, "-m", "pyfacelayers", "train"] + args, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    return done.stderr


def test_gpu_list_without_cupy_or_nccl_names_the_extra(tmp_path):
    import importlib.util
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here: bench/parallel_gpu_check.sh covers the GPU path")
    solver, _ = _setup(tmp_path / "g", "g", batch=4)
    err = _cli_error(["--solver", solver, "--gpu", "0,1"])
    assert "--gpu needs cupy" in err and "pyfacelayers[gpu]" in err
    err = _cli_error(["--solver", solver, "--gpu", "0,0"])
    assert "GPU 0 is listed twice" in err


def test_mpi_launcher_without_the_extra_names_it(tmp_path):
    """Started by an MPI launcher (its variables set) where mpi4py cannot be imported."""
    blocker = tmp_path / "blocked"
    (blocker / "mpi4py").mkdir(parents=True)
    (blocker / "mpi4py" / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    solver, _ = _setup(tmp_path / "m", "m", batch=4)
    err = _cli_error(["--solver", solver], {"PMI_SIZE": "2", "PMI_RANK": "0",
                                            "PYTHONPATH": _env(blocker)["PYTHONPATH"]})
    assert "started by an MPI launcher (2 ranks) but mpi4py cannot be imported" in err
    assert "pip install 'pyfacelayers[mpi]'" in err


def test_supervisor_stops_the_other_ranks_and_names_the_dead_one():
    import io
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    children = [subprocess.Popen(sleeper) for _ in range(3)]
    stream = io.StringIO()
    children[1].kill()
    start = time.time()
    code = launch.supervise(children, ["rank %d (GPU %d)" % (r, r) for r in range(3)],
                            stream, grace_seconds=5)
    assert time.time() - start < 10
    assert code == 128 + signal.SIGKILL
    assert "rank 1 (GPU 1) (pid %d) was killed by SIGKILL; stopping the other ranks" \
        % children[1].pid in stream.getvalue()
    assert all(child.poll() is not None for child in children)


def test_supervisor_returns_zero_when_every_rank_finishes():
    import io
    children = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2)]
    assert launch.supervise(children, ["a", "b"], io.StringIO()) == 0


# -- the pieces, in one process ---------------------------------------------------------

@pytest.fixture
def two_ranks():
    """Pretend to be rank ``r`` of 2 (the data layers' view), restoring after."""
    def become(rank):
        world.set_size(2)
        world.set_rank(rank)
    yield become
    world.reset()


def _labels_read(net_text, tmp_path, batches=2):
    path = tmp_path / "n.prototxt"
    path.write_text(net_text)
    net = caffe.Net(str(path), caffe.TRAIN)
    out = []
    for _ in range(batches):
        net.forward()
        out.append(net.blobs["label"].data.ravel().astype(int).tolist())
    del net
    import gc
    gc.collect()  # (lmdb opens a database once per process)
    return out


def test_lmdb_records_are_dealt_k_mod_n(tmp_path, two_ranks):
    _make_db(tmp_path / "db")
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { '
            'source: "%s" batch_size: 3 backend: LMDB } }' % (tmp_path / "db"))
    alone = _labels_read(text.replace("batch_size: 3", "batch_size: 6"), tmp_path)
    two_ranks(0)
    rank0 = _labels_read(text, tmp_path)
    two_ranks(1)
    rank1 = _labels_read(text, tmp_path)
    for whole, r0, r1 in zip(alone, rank0, rank1):
        assert r0 == whole[0::2] and r1 == whole[1::2]


def test_memory_data_rows_are_dealt_k_mod_n(tmp_path, two_ranks):
    text = ('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
            'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 } }')
    path = tmp_path / "m.prototxt"
    path.write_text(text)
    data = np.arange(8, dtype=np.float32).reshape(8, 1, 1, 1)
    two_ranks(1)
    net = caffe.Net(str(path), caffe.TRAIN)
    net.set_input_arrays(data, np.arange(8, dtype=np.float32))
    seen = []
    for _ in range(3):
        net.forward()
        seen.append(net.blobs["label"].data.ravel().astype(int).tolist())
    assert seen == [[1, 3], [5, 7], [1, 3]]
    with pytest.raises(LayerError, match="multiple of batch_size 2 x 2 ranks"):
        net.set_input_arrays(data[:6], np.arange(6, dtype=np.float32))


def test_hdf5_rows_are_dealt_k_mod_n(tmp_path, two_ranks):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((10, 1), np.float32)
        f["label"] = np.arange(10, dtype=np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5") + "\n")
    text = ('layer { name: "h" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "%s" batch_size: 3 } }' % (tmp_path / "list.txt"))
    two_ranks(1)
    assert _labels_read(text, tmp_path, 3) == [[1, 3, 5], [7, 9, 1], [3, 5, 7]]


def test_image_data_shuffles_with_the_rank_seed_or_deals_lines(tmp_path, two_ranks):
    from PIL import Image
    lines = []
    for i in range(6):
        Image.fromarray(np.full((2, 2, 3), i, np.uint8)).save(tmp_path / ("%d.png" % i))
        lines.append("%d.png %d" % (i, i))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")

    def text(shuffle):
        return ('layer { name: "i" type: "ImageData" top: "data" top: "label" '
                'image_data_param { source: "%s" root_folder: "%s/" batch_size: 3 '
                'shuffle: %s } }' % (tmp_path / "list.txt", tmp_path, shuffle))
    two_ranks(1)
    assert _labels_read(text("false"), tmp_path) == [[1, 3, 5], [1, 3, 5]]
    # With shuffle each rank has its own order, from random_seed + rank (the solver's).
    caffe.set_random_seed(11)
    mine = _labels_read(text("true"), tmp_path)
    caffe.set_random_seed(11)
    again = _labels_read(text("true"), tmp_path)
    assert mine == again and sorted(mine[0] + mine[1]) == list(range(6))


def test_solver_seeds_rank_r_with_random_seed_plus_r(tmp_path, two_ranks, monkeypatch):
    solver_path, _ = _setup(tmp_path / "seed", "seed", batch=4)
    seeds = []
    from pyfacelayers.solvers import solver as solver_module
    real = solver_module.make_net

    def spy(*args, **kwargs):
        seeds.append(kwargs.get("seed"))
        return real(*args, **kwargs)
    monkeypatch.setattr(solver_module, "make_net", spy)
    two_ranks(1)
    caffe.get_solver(solver_path)
    assert seeds == [8]


class _Recorder(Transport):
    """A transport of 2 ranks whose peer holds given arrays: sums against them."""

    name = "recorder"

    def __init__(self, peer):
        self.rank, self.size, self.peer, self.calls = 0, 2, peer, []

    def allreduce_sum(self, array):
        self.calls.append(array.size)
        array += self.peer(array)

    def broadcast(self, array, root=0):
        self.calls.append(("bcast", array.size))


@pytest.mark.parametrize("layer_wise", [True, False])
def test_data_parallel_reduces_every_param_once_and_averages(tmp_path, layer_wise):
    """With a peer whose gradients are twice ours, the update uses 1.5x ours; a layer-wise
    reduce runs once per layer owning params, and only on the last iter_size pass."""
    solver_path, _ = _setup(tmp_path / "dp", "dp", batch=4, layer_wise=layer_wise)
    text = open(solver_path).read() + "iter_size: 2\n"
    open(solver_path, "w").write(text)
    try:
        solver = caffe.get_solver(solver_path)
        transport = _Recorder(lambda a: 2 * a if a.dtype == np.float32 else 0 * a + a)
        sync = DataParallel(solver, transport)
        solver.add_callback(sync)
        if sync.layer_wise:
            solver.net.after_backward(sync)
        seen = {}

        def grab():
            seen.update({i: p.diff.copy() for i, p in enumerate(solver.net.learnable_params)})
        solver.add_callback(lambda: None, grab)
        local = {}

        def before_reduce():
            local.update({i: p.diff.copy() for i, p in enumerate(solver.net.learnable_params)})
        solver._callbacks.insert(0, (lambda: None, before_reduce))
        if layer_wise:  # the layer-wise reduce already ran: record it from the hooks
            solver._callbacks.pop(0)
            solver.net._hooks["after_backward"].insert(0, lambda i: i == 0 and before_reduce())
        solver.step(1)
    finally:
        world.reset()
    float_calls = [c for c in transport.calls if not isinstance(c, tuple) and c > 2]
    owners = len(sync._owned)
    assert len(float_calls) == (owners if layer_wise else 1)
    for i in seen:
        np.testing.assert_allclose(seen[i], 1.5 * local[i], rtol=1e-6)


def test_single_process_transport_and_hooks_run_in_caffe_order(tmp_path):
    solver_path, _ = _setup(tmp_path / "h", "h", batch=4)
    solver = caffe.get_solver(solver_path)
    order = []
    net = solver.net
    net.before_forward(lambda i: order.append(("f", i)))
    net.after_backward(lambda i: order.append(("b", i)))
    net.forward_backward()
    n = len(net.layers)
    assert order == [("f", i) for i in range(n)] + [("b", i) for i in reversed(range(n))]
    assert SingleProcess().mean_values([2.5]) == [2.5]
    with pytest.raises(TypeError, match="two functions .* or an object"):
        solver.add_callback(object())


FAILING_LAYER = '''
import pyfacelayers as caffe


class FailOnRankOne(caffe.Layer):
    """Passes its bottom through; on rank 1, raises at the fourth forward."""

    def setup(self, bottom, top):
        self.calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        if caffe.solver_rank() == 1 and self.calls == 4:
            raise RuntimeError("disk on fire")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


@needs_mpi
def test_an_error_on_one_rank_aborts_the_job_and_names_the_rank(tmp_path):
    solver, prefix = _setup(tmp_path / "e", "e", batch=4, iters=1000, snapshot=0)
    (tmp_path / "failing.py").write_text(FAILING_LAYER)
    net = open(solver).read().split('"')[1]
    text = open(net).read().replace(
        'layer { name: "fc5" type: "InnerProduct" bottom: "conv1"',
        'layer { name: "boom" type: "Python" bottom: "conv1" top: "boomed" python_param { '
        'module: "failing" layer: "FailOnRankOne" } }\n'
        'layer { name: "fc5" type: "InnerProduct" bottom: "boomed"')
    open(net, "w").write(text)
    env = _env(tmp_path)
    start = time.time()
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "pyfacelayers", "train",
                           "--solver", solver, "--allow-python-layers"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert time.time() - start < 30
    assert done.returncode != 0
    assert "pyfacelayers train: error: rank 1: " in done.stderr and "disk on fire" in \
        done.stderr, done.stderr[-2000:]


def test_rank_one_neither_tests_nor_writes_snapshots(tmp_path, two_ranks):
    solver_path, prefix = _setup(tmp_path / "r1", "r1", batch=4, iters=4, snapshot=2)
    # A test net reading a copy of the database (one process opens an LMDB once).
    shutil.copytree(tmp_path / "db", tmp_path / "db_test")
    text = open(solver_path).read()
    net = text.split('"')[1]
    test_net = net.replace("_net.prototxt", "_test_net.prototxt")
    with open(test_net, "w") as f:
        f.write(open(net).read().replace(str(tmp_path / "db"), str(tmp_path / "db_test")))
    with open(solver_path, "w") as f:
        f.write(text.replace('net: "%s"' % net, 'train_net: "%s"\ntest_net: "%s"'
                             % (net, test_net)) + "test_iter: 1\ntest_interval: 2\n")
    two_ranks(1)
    solver = caffe.get_solver(solver_path)
    transport = _Recorder(lambda a: a)
    transport.rank = 1
    transport.allgather_json = lambda value: [value, value]
    sync = DataParallel(solver, transport)
    solver.add_callback(sync)
    tested = []
    solver.test = lambda i=0: tested.append(i)
    solver.solve()
    assert solver.iter == 4 and tested == []
    assert not os.path.exists(prefix + "_iter_2.caffemodel")
    assert solver.last_snapshot[0] == 4  # it took part (its states went to rank 0)
    world.set_rank(0)
    transport.rank = 0
    solver.step(2)
    assert tested == [0] and os.path.exists(prefix + "_iter_6.caffemodel")


TRANSPORT_SCRIPT = '''
import numpy as np
from pyfacelayers.parallel.mpi import MPITransport
from pyfacelayers.parallel.transport import Transport
t = MPITransport()
r = t.rank
# The generic gather (what NCCL uses: sums of zero-padded rows), values of unequal size.
got = Transport.allgather_json(t, {"rank": r, "pad": "x" * (5 + 40 * r)})
assert got == [{"rank": 0, "pad": "x" * 5}, {"rank": 1, "pad": "x" * 45}], got
assert t.allgather_json([r]) == [[0], [1]]
assert t.mean_values([r, 2.0]) == [0.5, 2.0]
assert t.any_true([r == 1, False]) == [True, False]
a = np.full(7, r + 1.0, np.float32)
t.allreduce_sum(a)
assert (a == 3).all()
b = np.arange(6, dtype=np.float64).reshape(2, 3).T * (r + 1)  # not contiguous
t.broadcast(b)
assert (b == np.arange(6).reshape(2, 3).T).all()
c = np.full(1000, r + 1.0, np.float64)
request = t.start_allreduce_sum(c)
t.progress()
request.wait()
assert (c == 3).all()
import sys
sys.stdout.write("rank %d ok\\n" % r)  # one write: the ranks share the output
'''


@needs_mpi
def test_mpi_transport_collectives_and_the_generic_gather(tmp_path):
    script = tmp_path / "t.py"
    script.write_text(TRANSPORT_SCRIPT)
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    # (the launcher may interleave the two ranks' lines)
    assert done.stdout.count("ok") == 2 and done.stdout.count("rank") == 2, done.stdout


# -- the NCCL transport against a host-memory stand-in (tests/nccl_standin.py) -----------

@pytest.fixture
def standin_nccl(monkeypatch):
    import nccl_standin
    calls = nccl_standin.install(monkeypatch.setitem)
    yield calls, nccl_standin
    world.reset()


def test_nccl_transport_calls_on_the_standin(standin_nccl):
    calls, standin = standin_nccl
    from pyfacelayers.parallel.nccl import NCCLTransport, new_uid
    assert caffe.has_nccl() and caffe.NCCL.new_uid() == new_uid()
    assert len(new_uid()) == 128
    t = NCCLTransport(1, 0, new_uid(), device=0)
    current = calls.current_stream
    host = np.arange(5, dtype=np.float32)
    t.allreduce_sum(host)  # a host array goes to the device and comes back
    np.testing.assert_array_equal(host, np.arange(5))
    device = standin._device(np.ones(3))
    t.broadcast(device)
    assert calls[-2:] == [("allReduce", 5, 7, current), ("bcast", 3, 8, current)]
    flat = standin._device(np.ones(4, np.float32))
    request = t.start_allreduce_sum(flat)
    # The side stream waits for the current one, reduces, and the current one waits
    # for it when the result is needed.
    side = t.stream.ptr
    assert side != current and t.stream.non_blocking
    assert calls[-4:] == [("record", current), ("wait", side, current),
                          ("allReduce", 4, 7, side), ("record", side)]
    request.wait()
    assert calls[-1] == ("wait", current, side)
    assert t.allgather_json({"a": 1}) == [{"a": 1}]
    assert t.mean_values([3.0]) == [3.0]
    with pytest.raises(PyFaceLayersError, match="unsupported dtype int16"):
        t.allreduce_sum(np.zeros(2, np.int16))
    t.close()
    assert calls[-1] == ("destroy",)
    with pytest.raises(PyFaceLayersError, match="an NCCL unique id has 128 bytes, got 3"):
        NCCLTransport(1, 0, b"abc")


@pytest.mark.parametrize("layer_wise", [True, False])
def test_pycaffe_nccl_object_trains_like_the_plain_solver(tmp_path, standin_nccl,
                                                          layer_wise):
    """BVLC python/train.py's sequence with one rank on the stand-in: the weights equal
    the plain solver's; the diffs go through NCCL once per owning layer per iteration
    (layer-wise) or in one buffer."""
    calls, _ = standin_nccl
    solver_path, _ = _setup(tmp_path / "p", "p", batch=4, layer_wise=layer_wise)
    plain = caffe.get_solver(solver_path)
    plain.step(3)
    expected = [p.data.copy() for p in plain.net.learnable_params]
    del plain
    import gc
    gc.collect()  # (lmdb opens a database once per process)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(solver_path)
    nccl = caffe.NCCL(solver, caffe.NCCL.new_uid())
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    del calls[:]
    solver.step(3)
    for got, want in zip([p.data for p in solver.net.learnable_params], expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    params = sum(int(p.data.size) for p in solver.net.learnable_params)
    big = [c[1] for c in calls if c[0] == "allReduce" and c[2] == 7]
    if layer_wise:
        assert len(big) == 3 * len(nccl._owned) and sum(big) == 3 * params
    else:
        assert big == [params] * 3


# -- bench/parallel.py, at a tiny size -----------------------------------------------------

@needs_mpi
def test_bench_measures_one_and_two_ranks(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "parallel.py"),
                           "--iters", "2", "--batch", "2", "--measured-only"], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if re.match(r"\| [12] x 1 \|", line)]
    assert len(rows) == 3 and "1,846,464" in rows[1], done.stdout


def test_bench_scaling_out_on_paper():
    shared = shared_path("nets", "sphereface")
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "parallel_bench", os.path.join(ROOT, "bench", "parallel.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    params, macs = bench.deploy_counts(os.path.join(shared, "sphereface_deploy.prototxt"))
    # SphereFace-20's trunk: 20 3x3 convolutions and the 512-d fc5 on 7x6 maps (22.7M).
    assert 22_000_000 < params < 23_500_000 and macs > 1e9
    # Ring: 2 (N-1)/N x S / B + 2 (N-1) a; one rank moves nothing.
    assert bench.ring_seconds(100e6, 1, 1e9, 1e-5) == 0
    assert abs(bench.ring_seconds(100e6, 4, 10e9, 0.0) - 0.015) < 1e-12
    assert abs(bench.ring_seconds(0, 8, 1e9, 1e-5) - 14e-5) < 1e-12


def test_supervisor_passes_signals_on_to_every_rank_once(tmp_path):
    """``--gpu 0,1``'s parent: a SIGHUP sent to it reaches each rank once (the ranks run
    in their own sessions, so a terminal's signal is not doubled)."""
    import io
    import threading
    child = ("import os, signal, sys, time\n"
             "path = sys.argv[1]\n"
             "signal.signal(signal.SIGHUP, lambda n, f: open(path, 'a').write('hup\\n'))\n"
             "open(path + '.ready', 'w').close()\n"
             "deadline = time.time() + 20\n"
             "while time.time() < deadline and not os.path.exists(path):\n"
             "    time.sleep(0.05)\n"
             "time.sleep(0.3)\n")
    paths = [str(tmp_path / ("rank%d" % r)) for r in range(2)]
    children = [subprocess.Popen([sys.executable, "-c", child, p], start_new_session=True)
                for p in paths]

    def signal_parent():
        deadline = time.time() + 20
        while time.time() < deadline and not all(os.path.exists(p + ".ready") for p in paths):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)
    threading.Thread(target=signal_parent, daemon=True).start()
    assert launch.supervise(children, ["rank 0", "rank 1"], io.StringIO()) == 0
    assert [open(p).read() for p in paths] == ["hup\n", "hup\n"]


def test_layer_wise_without_the_hook_still_reduces_and_warns(tmp_path, caplog):
    solver_path, _ = _setup(tmp_path / "nh", "nh", batch=4, layer_wise=True)
    try:
        solver = caffe.get_solver(solver_path)
        transport = _Recorder(lambda a: 2 * a if a.dtype == np.float32 else a)
        sync = DataParallel(solver, transport)
        solver.add_callback(sync)  # (no solver.net.after_backward(sync))
        with caplog.at_level("WARNING", logger="pyfacelayers"):
            solver.step(2)
    finally:
        world.reset()
    params = sum(int(p.data.size) for p in solver.net.learnable_params)
    assert [c for c in transport.calls if c == params] == [params, params]
    assert caplog.text.count("after_backward hook is not installed") == 1


PYCAFFE_SCRIPT = '''
import sys
sys.path.insert(0, sys.argv[1])
import nccl_standin
nccl_standin.install()
from mpi4py import MPI
import pyfacelayers as caffe

rank = MPI.COMM_WORLD.Get_rank()
# BVLC python/train.py's sequence, the NCCL id handed out over MPI instead of by the
# parent process.
caffe.set_solver_count(2)
caffe.set_solver_rank(rank)
caffe.set_multiprocess(True)
uid = MPI.COMM_WORLD.bcast(caffe.NCCL.new_uid() if rank == 0 else None)
solver = caffe.SGDSolver(sys.argv[2])
nccl = caffe.NCCL(solver, uid)
nccl.bcast()
solver.add_callback(nccl)
if solver.param.layer_wise_reduce:
    solver.net.after_backward(nccl)
solver.step(solver.param.max_iter)
solver.snapshot()
'''


@needs_mpi
@pytest.mark.parametrize("layer_wise", [True, False])
def test_pycaffe_nccl_script_with_two_ranks_equals_one_process(tmp_path, layer_wise):
    """pycaffe's multi-GPU calls with 2 ranks, the NCCL stand-in moving the data through
    MPI: the weights equal one process with twice the batch."""
    one, one_prefix = _setup(tmp_path / "one", "one", batch=8, layer_wise=layer_wise)
    two, two_prefix = _setup(tmp_path / "two", "two", batch=4, layer_wise=layer_wise)
    _train(["--solver", one])
    script = tmp_path / "pycaffe_train.py"
    script.write_text(PYCAFFE_SCRIPT)
    done = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script),
                           os.path.dirname(os.path.abspath(__file__)), two], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    params_one, history_one = _state(one_prefix, 5, "SGD")
    params_two, history_two = _state(two_prefix, 5, "SGD")
    _close(params_two, params_one)
    _close(history_two, history_one)
