"""Data-parallel training on the CPU, measured, and scaling out, on paper.

    python bench/parallel.py [--iters 15] [--batch 16] [--paper-only | --measured-only]

Measured (needs mpi4py + mpiexec: pip install 'pyfacelayers[mpi]'): a small
SphereFace-style net (bench/parallel_fixture.py at 32x32, 16 channels, 128 features)
trained by 1 rank x 1 thread and by 2 ranks x 1 thread (mpiexec -n 2) at the same
per-rank batch: images/s, scaling efficiency (2-rank images/s / (2 x 1-rank
images/s)), the time per iteration spent in the exchange that computation did not hide
(waiting for the slower rank included), with layer_wise_reduce on and off, and one
all-reduce of the same bytes with the ranks lined up by a barrier first.

On paper: the bytes all-reduced per iteration by SphereFace-20 and -64 (the deploy
nets of ../shared/nets/sphereface plus the 512 x classes MarginInnerProduct) at 10,572
(CASIA-WebFace) and 85,742 (MS1M) classes, and ring all-reduce estimates for 8 GPUs
over NVLink and 2-4 nodes at 100-400 Gb/s (see docs/parallel.md for the formula).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:  # the installed package; else this checkout's (built in place)
    import pyfacelayers
except ImportError:
    sys.path.insert(0, ROOT)
    import pyfacelayers
# The rank processes import the same pyfacelayers as this one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyfacelayers.__file__)))
SHARED = os.environ.get("PFL_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# -- measured --------------------------------------------------------------------------
def worker(args):
    """One rank: train, time, and (rank 0) print a JSON line."""
    import numpy as np
    import pyfacelayers as caffe
    from pyfacelayers.parallel import DataParallel, world
    from pyfacelayers.parallel.mpi import MPITransport, launched_size
    transport = MPITransport() if launched_size() > 1 else world.transport()
    world.use(transport)
    solver = caffe.get_solver(args.solver)
    sync = DataParallel(solver, transport)
    sync.bcast()
    solver.add_callback(sync)
    if sync.layer_wise:
        solver.net.after_backward(sync)
    solver.step(3)  # warm-up
    sync.reduce_seconds = 0.0
    start = time.perf_counter()
    solver.step(args.iters)
    elapsed = time.perf_counter() - start
    elapsed = max(transport.mean_values([elapsed]) if transport.size > 1 else [elapsed])
    params = sum(int(p.data.size) for p in solver.net.learnable_params)
    alone = []
    if transport.size > 1:  # the same bytes all-reduced with the ranks lined up first
        buffer = np.zeros(params, np.float32)
        for _ in range(20):
            transport.comm.Barrier()
            t = time.perf_counter()
            transport.allreduce_sum(buffer)
            alone.append(time.perf_counter() - t)
    if transport.rank == 0:
        print(json.dumps({"ranks": transport.size, "seconds": elapsed,
                          "reduce_ms": 1000 * sync.reduce_seconds / args.iters,
                          "alone_ms": 1000 * float(np.median(alone)) if alone else None,
                          "bytes": 4 * params}))


def measure(args):
    import parallel_fixture
    folder = tempfile.mkdtemp(prefix="pfl_parallel_bench_")
    env = dict(os.environ, **ONE_THREAD)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                           + os.environ.get("PATH", ""))
    rows = []
    try:
        for ranks, layer_wise in ((1, True), (2, False), (2, True)):
            name = "r%d_%s" % (ranks, "lw" if layer_wise else "flat")
            solver, _ = parallel_fixture.write_job(
                os.path.join(folder, name), name, args.batch, iters=10 ** 6, snapshot=0,
                layer_wise=layer_wise, display=0, side=32, channels=16, features=128,
                records=256)
            command = [sys.executable, os.path.abspath(__file__), "--worker", "--solver",
                       solver, "--iters", str(args.iters)]
            if ranks > 1:
                if mpiexec is None:
                    print("mpiexec not found: pip install 'pyfacelayers[mpi]'")
                    return None
                command = [mpiexec, "-n", str(ranks)] + command
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=600)
            if done.returncode:
                print(done.stderr[-2000:])
                return None
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["layer_wise"] = layer_wise
            rows.append(result)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def print_measured(rows, batch):
    base = batch / (rows[0]["seconds"] / ARGS.iters)  # 1 rank's images/s
    print("CPU, %s, %d cores; per-rank batch %d, 1 thread per rank, %s" % (
        platform.processor() or platform.machine(), os.cpu_count(), batch,
        _mpi_version()))
    print()
    print("| ranks x threads | layer_wise_reduce | images/s | scaling efficiency | "
          "exchange not hidden, ms/iter | one all-reduce alone, ms | bytes all-reduced/iter |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        rate = row["ranks"] * batch / (row["seconds"] / ARGS.iters)
        efficiency = rate / (row["ranks"] * base)
        alone = "%.2f" % row["alone_ms"] if row["alone_ms"] is not None else "-"
        print("| %d x 1 | %s | %.0f | %.2f | %.2f | %s | %s |" % (
            row["ranks"], "on" if row["layer_wise"] else "off", rate, efficiency,
            row["reduce_ms"], alone, "{:,}".format(row["bytes"]) if row["ranks"] > 1 else "-"))


def _mpi_version():
    try:
        from mpi4py import MPI
        return MPI.Get_library_version().splitlines()[0].strip()
    except Exception:
        return "no MPI"


# -- on paper --------------------------------------------------------------------------
CLASSES = (10572, 85742)
FEATURES = 512
NVLINK_BUS_GBS = 150.0   # GB/s per GPU, ring bus bandwidth over NVLink/NVSwitch (assumed)
NVLINK_LATENCY = 10e-6   # s per ring step (assumed)
NODE_LATENCY = 20e-6
MEASURED_STEP_SF20 = 0.1308  # s, SphereFace-20 step at batch 256 on one H200 (README)


def deploy_counts(path):
    """(learnable parameters, forward multiply-adds of the convolutions and inner
    products) of a deploy net, at batch 1."""
    import numpy as np
    import pyfacelayers as caffe
    from pyfacelayers.fileio import read_net
    param = read_net(path)
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = 1
    net = caffe.Net(param, caffe.TEST)
    params = sum(int(np.prod(b.data.shape)) for b in net.learnable_params)
    macs = 0
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type in ("Convolution", "InnerProduct") and layer.blobs:
            top = net.blobs[net.top_names[name][0]]
            weight = layer.blobs[0].data
            per_output = int(np.prod(weight.shape[1:]))
            macs += int(np.prod(top.data.shape)) * per_output
    return params, macs


def ring_seconds(nbytes, ranks, bus_bytes_per_s, latency):
    """Ring all-reduce: each rank sends and receives 2 (N-1)/N of the buffer, in
    2 (N-1) steps."""
    if ranks <= 1:
        return 0.0
    return 2.0 * (ranks - 1) / ranks * nbytes / bus_bytes_per_s + 2 * (ranks - 1) * latency


def paper():
    nets = os.path.join(SHARED, "nets", "sphereface")
    found = {"SphereFace-20": os.path.join(nets, "sphereface_deploy.prototxt"),
             "SphereFace-64": os.path.join(nets, "sphereface_64_deploy.prototxt")}
    if not all(os.path.exists(p) for p in found.values()):
        print("(../shared/nets/sphereface not found: no paper table)")
        return
    counts = {name: deploy_counts(path) for name, path in found.items()}
    print("Bytes all-reduced per iteration (float32 diffs of every learnable parameter, "
          "the 512 x classes MarginInnerProduct included):")
    print()
    print("| net | trunk parameters | classes | parameters | MB all-reduced/iter |")
    print("|---|---:|---:|---:|---:|")
    sizes = {}
    for name, (params, _) in counts.items():
        for classes in CLASSES:
            total = params + FEATURES * classes
            sizes[name, classes] = 4 * total
            print("| %s | {:,} | {:,} | {:,} | %.1f |".format(params, classes, total)
                  % (name, 4 * total / 1e6))
    ratio64 = counts["SphereFace-64"][1] / counts["SphereFace-20"][1]
    compute = {"SphereFace-20": MEASURED_STEP_SF20,
               "SphereFace-64": MEASURED_STEP_SF20 * ratio64}
    print()
    print("ESTIMATES (ring all-reduce, T = 2 (N-1)/N x S / B + 2 (N-1) x a; step = compute "
          "+ T without overlap, max(compute, T) with full layer-wise overlap). Compute per "
          "step: SphereFace-20 %.1f ms at batch 256 per GPU (measured on one H200, README), "
          "SphereFace-64 x%.2f by multiply-adds = %.1f ms. Links: NVLink bus B = %.0f GB/s, "
          "a = %.0f us; nodes: one NIC per node, B = line rate, a = %.0f us, ranks = nodes "
          "(intra-node reduce assumed free)." % (
              1000 * compute["SphereFace-20"], ratio64, 1000 * compute["SphereFace-64"],
              NVLINK_BUS_GBS, NVLINK_LATENCY * 1e6, NODE_LATENCY * 1e6))
    print()
    links = [("8 GPUs, NVLink", 8, NVLINK_BUS_GBS * 1e9, NVLINK_LATENCY)]
    for nodes in (2, 4):
        for gbit in (100, 200, 400):
            links.append(("%d nodes, %d Gb/s" % (nodes, gbit), nodes, gbit / 8 * 1e9,
                          NODE_LATENCY))
    print("| net | classes | link | all-reduce ms | step ms, no overlap | step ms, overlap |")
    print("|---|---:|---|---:|---:|---:|")
    for (name, classes), nbytes in sizes.items():
        for label, ranks, bandwidth, latency in links:
            t = ring_seconds(nbytes, ranks, bandwidth, latency)
            c = compute[name]
            print("| %s | {:,} | %s | %.1f | %.1f | %.1f |".format(classes)
                  % (name, label, 1000 * t, 1000 * (c + t), 1000 * max(c, t)))


ARGS = None


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--paper-only", action="store_true")
    parser.add_argument("--measured-only", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--solver", help=argparse.SUPPRESS)
    ARGS = parser.parse_args()
    if ARGS.worker:
        return worker(ARGS)
    if not ARGS.paper_only:
        rows = measure(ARGS)
        if rows:
            print_measured(rows, ARGS.batch)
            print()
    if not ARGS.measured_only:
        paper()


if __name__ == "__main__":
    main()
