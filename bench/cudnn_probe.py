"""Where does cuDNN's convolution time go? (GPU diagnostic, not a test.)

For every convolution geometry of SphereFace-20 at batch 256 (112x96), float32 with FMA
math (no TF32), each direction's algorithms are timed by cuDNN's own Find (every
algorithm, Winograd and FFT included) and checked against a float64 reference of the
same convolution: relative error ||out - ref|| / ||ref||, determinism and workspace.
PyTorch's strict float32 convolution (cudnn.benchmark, TF32 off) is timed on the same
geometry for comparison. The last table sums the best allowed algorithm per direction
over the net's layers (x the count of each geometry).

    python bench/cudnn_probe.py [--batch 256]
"""

import argparse
import ctypes
import sys

import numpy as np

# (in channels, out channels, stride, input height, input width, layers of this shape)
GEOMETRIES = [
    (3, 64, 2, 112, 96, 1), (64, 64, 1, 56, 48, 2),
    (64, 128, 2, 56, 48, 1), (128, 128, 1, 28, 24, 4),
    (128, 256, 2, 28, 24, 1), (256, 256, 1, 14, 12, 8),
    (256, 512, 2, 14, 12, 1), (512, 512, 1, 7, 6, 2),
]
NAMES = {
    "forward": {0: "IMPLICIT_GEMM", 1: "IMPLICIT_PRECOMP_GEMM", 2: "GEMM", 3: "DIRECT",
                4: "FFT", 5: "FFT_TILING", 6: "WINOGRAD", 7: "WINOGRAD_NONFUSED"},
    "backward_data": {0: "ALGO_0", 1: "ALGO_1", 2: "FFT", 3: "FFT_TILING", 4: "WINOGRAD",
                      5: "WINOGRAD_NONFUSED"},
    "backward_filter": {0: "ALGO_0", 1: "ALGO_1", 2: "FFT", 3: "ALGO_3", 4: "WINOGRAD",
                        5: "WINOGRAD_NONFUSED", 6: "FFT_TILING"},
}


def event_ms(fn, repeat=10):
    import cupy
    fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeat):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(cupy.cuda.get_elapsed_time(a, b))
    return float(np.median(times))


def rel(a, b):
    import cupy
    a = a.astype(cupy.float64)
    return float(cupy.linalg.norm((a - b).ravel()) / cupy.linalg.norm(b.ravel()))


def probe(geometry, batch, lib, totals):
    import cupy
    from pyfacelayers.gpu import cudnn
    cin, cout, stride, h, w, count = geometry
    oh, ow = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    xs, ws, ys = (batch, cin, h, w), (cout, cin, 3, 3), (batch, cout, oh, ow)
    rng = cupy.random.default_rng(1)
    x64 = rng.standard_normal(xs)
    w64 = rng.standard_normal(ws) * 0.05
    dy64 = rng.standard_normal(ys)
    x, wt, dy = (a.astype(cupy.float32) for a in (x64, w64, dy64))
    conv64 = cudnn.Convolution2d(xs, ws, ys, (1, 1), (stride, stride), (1, 1), 1,
                                 np.float64, lib=lib, mode="reproducible")
    ref = {"forward": cupy.empty(ys), "backward_data": cupy.empty(xs),
           "backward_filter": cupy.zeros(ws)}
    conv64.forward(x.astype(cupy.float64), w64.astype(cupy.float32).astype(cupy.float64),
                   ref["forward"])
    conv64.backward_data(wt.astype(cupy.float64), dy.astype(cupy.float64),
                         ref["backward_data"])
    conv64.backward_filter(x.astype(cupy.float64), dy.astype(cupy.float64),
                           ref["backward_filter"])
    conv = cudnn.Convolution2d(xs, ws, ys, (1, 1), (stride, stride), (1, 1), 1, np.float32,
                               lib=lib, mode="fastest")
    handle = lib.handle(0)
    lib.call("cudnnSetStream", handle, cupy.cuda.get_current_stream().ptr)
    label = "%dx%d->%d s%d %dx%d (x%d)" % (cin, cin, cout, stride, h, w, count)
    for direction in ("forward", "backward_data", "backward_filter"):
        query, run, _, descs = conv._directions[direction]
        perf = (cudnn.AlgoPerf * 8)()
        n = ctypes.c_int()
        lib.call("cudnnFindConvolution" + query, handle, *descs, 8, ctypes.byref(n), perf)
        first, second = {"forward": (x, wt), "backward_data": (wt, dy),
                         "backward_filter": (x, dy)}[direction]
        out_shape = {"forward": ys, "backward_data": xs, "backward_filter": ws}[direction]
        best = {}
        for p in perf[:n.value]:
            name = NAMES[direction].get(p.algo, str(p.algo))
            if p.status != 0:
                print("  %-34s %-15s %-18s status %d" % (label, direction, name, p.status))
                continue
            out = cupy.zeros(out_shape, cupy.float32)
            conv.algos[direction] = (p.algo, p.memory)
            conv._run(direction, first, second, out, 0.0)
            err = rel(out, ref[direction])
            ms = event_ms(lambda: conv._run(direction, first, second, out, 0.0))
            det = "det" if p.determinism == 1 else "nondet"
            print("  %-34s %-15s %-18s %7.3f ms  err %.1e  %-6s ws %6d KiB math %d"
                  % (label, direction, name, ms, err, det, p.memory >> 10, p.math_type),
                  flush=True)
            for policy, ok in (("current", p.algo in conv._directions[direction][2]
                                and p.determinism == 1),
                               ("current+nondet", p.algo in conv._directions[direction][2]),
                               ("det+winograd/fft", p.determinism == 1 and err < 2e-6),
                               ("any err<2e-6", err < 2e-6)):
                if ok and (policy not in best or ms < best[policy]):
                    best[policy] = ms
        for policy, ms in best.items():
            totals[policy] = totals.get(policy, 0.0) + ms * count
    try:
        import torch
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        tx = torch.as_tensor(x, device="cuda").requires_grad_(True)
        tw = torch.as_tensor(wt, device="cuda").requires_grad_(True)
        tdy = torch.as_tensor(dy, device="cuda")
        conv2d = torch.nn.functional.conv2d
        fwd = lambda: conv2d(tx, tw, stride=stride, padding=1)  # noqa: E731
        y = fwd()
        bwd = lambda: torch.autograd.grad(y, (tx, tw), tdy, retain_graph=True)  # noqa: E731
        f_ms, b_ms = event_ms(fwd), event_ms(bwd)
        print("  %-34s torch strict fp32: forward %.3f ms, backward (data+filter) %.3f ms"
              % (label, f_ms, b_ms), flush=True)
        totals["torch"] = totals.get("torch", 0.0) + (f_ms + b_ms) * count
    except Exception as exc:  # information only
        print("  torch: %s: %s" % (type(exc).__name__, exc))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    from pyfacelayers.gpu import cudnn
    lib = cudnn.library()
    print("cuDNN %d from %s" % (lib.version, lib.path))
    totals = {}
    for g in GEOMETRIES:
        try:
            probe(g, args.batch, lib, totals)
        except Exception as exc:
            print("  geometry %s FAILED: %s: %s" % (g, type(exc).__name__, exc), flush=True)
    print("\n== SphereFace-20 convolutions, batch %d, forward + both backwards, summed over "
          "the net (best algorithm per direction under each policy)" % args.batch)
    for policy, ms in sorted(totals.items()):
        print("  %-22s %8.2f ms" % (policy, ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
