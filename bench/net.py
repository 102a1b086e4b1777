"""SphereFace-20 Forward+Backward on the CPU: pyfacelayers against the FLOP floor and,
when PyTorch is installed, the same architecture in PyTorch (ratios from one run); then
a whole solver iteration (clear the gradients, Forward+Backward, SGD update with
momentum 0.9 and weight decay 5e-4) against PyTorch's with torch.optim.SGD.

    python bench/net.py [--batch 8] [--iters 3] [--classes 10572] [--threads N]
                        [--shared ../shared]

Convolutions run on oneDNN when it is installed (PYFACELAYERS_CONV_ENGINE=caffe: im2col).
--threads N gives both sides N threads (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS set before
the libraries load, torch.set_num_threads); default: each library's own (the machine's
cores). The CPU-time columns (process CPU seconds per step) are the work itself with
--threads 1, a fair figure on a machine other processes share.
"""

import argparse
import os


def _threads_from_argv():
    """--threads must act before numpy / oneDNN load their thread pools."""
    argv = os.sys.argv
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None)
        if value:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[name] = value
    return None


_threads_from_argv()
import statistics
import sys
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the source tree ahead of an installed copy

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers.fileio import read_net  # noqa: E402
from pyfacelayers.input_swap import swap_data_layers  # noqa: E402


def sphereface20(shared, batch, classes):
    param = read_net(os.path.join(shared, "nets", "sphereface", "sphereface_model.prototxt"))
    for layer in param.layer:
        if layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = classes
    return swap_data_layers(param, {"data": (batch, 3, 112, 96), "label": (batch,)})


def forward_flops(net):
    """Multiply-adds x 2 of every Convolution / InnerProduct / MarginInnerProduct."""
    flops = []
    for layer, name in zip(net.layers, net._layer_names):
        if layer.type in ("Convolution", "InnerProduct", "MarginInnerProduct"):
            top = net.blobs[net.top_names[name][0]]
            weight = layer.blobs[0]
            per_output = weight.count // weight.shape[0]
            flops.append(2.0 * top.count * per_output)
    return flops


def gemm_rate(n=2048, repeats=5):
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2.0 * n ** 3 / min(times)


def time_ours(param, batch, iters):
    tracemalloc.start()  # numpy reports its buffers: parameters, blobs and temporaries
    net = caffe.Net(param, caffe.TRAIN, seed=0)
    rng = np.random.default_rng(1)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, net.blobs["fc6"].shape[1], batch)
    net.forward_backward()  # warm-up
    times, cpu = [], []
    for _ in range(iters):
        net.clear_param_diffs()
        t, c = time.perf_counter(), time.process_time()
        net.forward_backward()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return net, statistics.median(times), statistics.median(cpu), peak


def time_torch(param, batch, iters):
    import torch
    from torch_from_prototxt import TorchNet
    torch.manual_seed(0)
    model = TorchNet(param, {"data": (batch, 3, 112, 96)})
    data = torch.randn(batch, 3, 112, 96)
    label = torch.randint(0, 10, (batch,)).float()
    model(data, label).backward()
    times, cpu = [], []
    for _ in range(iters):
        model.zero_grad()
        t, c = time.perf_counter(), time.process_time()
        model(data, label).backward()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(times), statistics.median(cpu), torch.get_num_threads(), \
        torch.__version__


def _median_time(run, iters):
    run()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_ours_solver(param, batch, iters):
    """Seconds per SGDSolver.step(1) (ClearParamDiffs, Forward+Backward, ApplyUpdate)."""
    from pyfacelayers.proto import caffe_pb2
    solver_param = caffe_pb2.SolverParameter(
        base_lr=0.01, lr_policy="fixed", momentum=0.9, weight_decay=5e-4, max_iter=10 ** 6,
        display=0)
    solver_param.net_param.CopyFrom(param)
    solver = caffe.SGDSolver(solver_param)
    rng = np.random.default_rng(1)
    net = solver.net
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, net.blobs["fc6"].shape[1], batch)
    return _median_time(lambda: solver.step(1), iters)


def time_torch_solver(param, batch, iters):
    import torch
    from torch_from_prototxt import TorchNet
    torch.manual_seed(0)
    model = TorchNet(param, {"data": (batch, 3, 112, 96)})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    data = torch.randn(batch, 3, 112, 96)
    label = torch.randint(0, 10, (batch,)).float()

    def iteration():
        optimizer.zero_grad()
        model(data, label).backward()
        optimizer.step()
    return _median_time(iteration, iters)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10572)
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        try:
            import torch
            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    param = sphereface20(args.shared, args.batch, args.classes)

    net, ours, ours_cpu, peak = time_ours(param, args.batch, args.iters)
    flops = forward_flops(net)
    # Backward: weight and input gradients (2x forward) except no input gradient for
    # the first convolution (the data needs none).
    total = 3 * sum(flops) - flops[0]
    rate = gemm_rate()
    floor = total / rate
    from pyfacelayers.cpu import onednn
    ok, why = onednn.available()
    engine = ("oneDNN %d.%d.%d" % onednn.library().version if ok and os.environ.get(
        "PYFACELAYERS_CONV_ENGINE", "auto") != "caffe" else "im2col")
    rows = [("pyfacelayers (%s)" % engine, ours, ours_cpu)]
    try:
        torch_time, torch_cpu, threads, version = time_torch(param, args.batch, args.iters)
        rows.append(("PyTorch %s (%d threads)" % (version, threads), torch_time, torch_cpu))
    except ImportError:
        torch_time = None
    rows.append(("FLOP floor (%.1f GFLOP at %.1f GFLOP/s GEMM)" % (total / 1e9, rate / 1e9),
                 floor, None))
    params = sum(b.count for b in net.learnable_params)
    activations = sum(b.count for b in net.blobs.values())
    analytic = 2 * 4 * (params + activations)  # data + diff, float32
    print("SphereFace-20 Forward+Backward, batch %d, 112x96, float32, fc6 %d classes, %d CPU(s), "
          "%s thread(s), load average %.1f" % (args.batch, args.classes, os.cpu_count(),
                                              args.threads or "default", os.getloadavg()[0]))
    print("%-50s %9s %9s %9s %9s %9s" % ("", "s/batch", "images/s", "vs ours", "CPU s",
                                          "vs ours"))
    for name, t, c in rows:
        print("%-50s %9.3f %9.1f %9.2f %9s %9s" % (name, t, args.batch / t, t / ours,
                                                   "%.3f" % c if c else "",
                                                   "%.2f" % (c / ours_cpu) if c else ""))
    if torch_time:
        print("ratio ours / PyTorch: %.2f wall, %.2f CPU time (target <= 1.0)"
              % (ours / torch_time, ours_cpu / torch_cpu))
    print("ratio ours / floor:   %.2f" % (ours / floor))
    print("peak traced memory (net + Forward+Backward): %.0f MB; parameters+activations+diffs: "
          "%.0f MB (ratio %.2f)" % (peak / 2 ** 20, analytic / 2 ** 20, peak / analytic))

    ours_iter = time_ours_solver(param, args.batch, args.iters)
    print("\nSolver iteration (clear gradients, Forward+Backward, SGD momentum 0.9, weight "
          "decay 5e-4)")
    print("%-50s %9s %9s %9s" % ("", "s/iter", "images/s", "vs ours"))
    rows = [("pyfacelayers SGDSolver.step(1)", ours_iter)]
    if torch_time:
        rows.append(("PyTorch + torch.optim.SGD", time_torch_solver(param, args.batch,
                                                                   args.iters)))
    for name, t in rows:
        print("%-50s %9.3f %9.1f %9.2f" % (name, t, args.batch / t, t / ours_iter))
    if torch_time:
        print("ratio ours / PyTorch: %.2f wall" % (ours_iter / rows[1][1]))


if __name__ == "__main__":
    main()
