"""GPU benchmarks (run by bench/gpu_check.sh on a CUDA machine; not a test).

1. MarginInnerProduct, M=256, K=512, N=10572, QUADRUPLE, float32: our Forward+Backward
   (the layer as the net calls it) against (a) the three cuBLAS products alone (cupy
   matmul of the same sizes) and (b) a port of the ORIGINAL's kernel design
   (csrc/cuda/bench_original_margin.cu: M x N buffers forward, O(M*N*K) backward).
   Targets: ours within 1.3x of (a); at least 50x faster than (b).
2. SphereFace-20 training step (solver SGD step: forward, backward, update) at batch
   256, 112x96, float32, fc6 with 10572 classes: images/s of our GPU backend, once per
   convolution engine (cuDNN deterministic, the default; im2col + cuBLAS; cuDNN
   reproducible, fastest and with Winograd; the cuDNN runs fail with one clear line
   where cuDNN is not installed), against the same architecture in PyTorch
   (bench/torch_sphereface.py), strict float32 and TF32; device memory held by each.
   Target: at most 1.0x PyTorch strict float32.

Each part runs in its own try/except and prints one clear line when it fails. Times:
CUDA events, warm-up first, median of the repeats. PFL_SHARED (default ../shared)
locates sphereface_model.prototxt; without it the same architecture is generated.

    python bench/gpu_bench.py [--quick] [--cpu-smoke]

``--cpu-smoke`` runs part 2's code path for our backend on the CPU at batch 2 (to check
the script without a GPU); ``--quick`` uses fewer repeats.
"""

import argparse
import os
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = []  # (what, value, unit, note)


def row(what, value, unit="", note=""):
    ROWS.append((what, value, unit, note))
    text = "%.4g" % value if isinstance(value, float) else str(value)
    print("  %-58s %12s %-8s %s" % (what, text, unit, note), flush=True)


def part(name, fn, *args):
    print("\n== %s" % name, flush=True)
    try:
        fn(*args)
    except Exception as exc:  # keep going: one failure must not hide the rest
        traceback.print_exc()
        row(name, "FAILED", "", "%s: %s" % (type(exc).__name__, str(exc)[:150]))


def shared_dir():
    return os.environ.get("PFL_SHARED") or os.path.join(os.path.dirname(HERE), "..", "shared")


def time_cupy(fn, warmup, repeat):
    """Median milliseconds of fn() between CUDA events on cupy's current stream."""
    import cupy
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    times = []
    for _ in range(repeat):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


# -- 1. the margin layer ---------------------------------------------------------------
def bench_margin(quick, N=10572, with_original=True):
    import cupy
    from pyfacelayers import backend
    from pyfacelayers.blob import Blob
    from pyfacelayers.gpu import cuda_module, ptr, stream
    from pyfacelayers.layers.margin_inner_product import MarginInnerProduct

    M, K = 256, 512

    def row_n(what, *args):
        row(what.replace("margin", "margin N=%d" % N, 1), *args)
    repeat = 10 if quick else 30
    backend.set_mode_gpu()
    rng = np.random.default_rng(0)
    w0 = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    x0 = rng.standard_normal((M, K)).astype(np.float32)
    lab0 = rng.integers(0, N, M).astype(np.float32)
    td0 = (rng.standard_normal((M, N)) * 1e-3).astype(np.float32)

    layer = MarginInnerProduct.from_args(num_output=N, type="QUADRUPLE", base=1000,
                                         gamma=0.12, power=1, lambda_min=5)
    bottom = [Blob((M, K), np.float32), Blob((M,), np.float32)]
    top = [Blob((1,), np.float32)]
    layer.setup(bottom, top)
    layer.blobs[0].data = w0
    bottom[0].data = x0
    bottom[1].data = lab0
    layer.reshape(bottom, top)
    top[0].diff = td0

    def ours():
        layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)

    # One checked call first: its results are compared with the original's below.
    ours()
    lam = float(layer.lambda_)
    top_ours = top[0].data.copy()
    bd_ours = bottom[0].diff.copy()

    # As in training: the label check's verdict is read at the next forward (the solver
    # sets this on its net's layers), so no call waits for the device.
    layer.defer_checks = True
    t_ours = time_cupy(ours, 3, repeat)
    row_n("margin F+B, ours (layer forward+backward, one call between events)", t_ours, "ms")
    row_n("margin forward alone, ours", time_cupy(lambda: layer.forward(bottom, top), 2, repeat),
        "ms")
    row_n("margin backward alone, ours",
        time_cupy(lambda: layer.backward(top, [True, False], bottom), 2, repeat), "ms")

    x, td = bottom[0].data, top[0].diff
    w = layer.blobs[0].data
    out = cupy.empty((M, N), np.float32)
    bd = cupy.empty((M, K), np.float32)
    wd = cupy.empty((N, K), np.float32)

    def products():
        cupy.matmul(x, w.T, out=out)
        cupy.matmul(td, w, out=bd)
        cupy.matmul(td.T, x, out=wd)

    t_gemm = time_cupy(products, 3, repeat)
    row_n("margin, the 3 cuBLAS products alone (cupy matmul)", t_gemm, "ms")
    row_n("margin ratio ours / 3 products, one call between events", t_ours / t_gemm, "x")
    # Back to back (10 calls between two events), as a training loop runs them: the
    # host's launch overhead then overlaps the device's work, for both sides alike.
    b2b = 10
    t_ours_b2b = time_cupy(lambda: [ours() for _ in range(b2b)], 1, max(3, repeat // 5)) / b2b
    t_gemm_b2b = time_cupy(lambda: [products() for _ in range(b2b)], 1,
                           max(3, repeat // 5)) / b2b
    row_n("margin F+B, ours, back to back", t_ours_b2b, "ms")
    row_n("margin, the 3 products, back to back", t_gemm_b2b, "ms")
    row_n("margin ratio ours / 3 products, back to back (target <= 1.3)",
        t_ours_b2b / t_gemm_b2b, "x")
    layer.settle_checks()
    gflop = 3 * 2.0 * M * N * K / 1e9
    row_n("margin, 3 products throughput", gflop / (t_gemm / 1e3) / 1e3, "TFLOP/s")
    if not with_original:
        backend.set_mode_cpu()
        cupy.get_default_memory_pool().free_all_blocks()
        return

    kern = cuda_module()
    w_o = cupy.asarray(w0)
    lab = cupy.asarray(lab0)
    x_norm = cupy.empty(M, np.float32)
    cos = cupy.empty((M, N), np.float32)
    top_o = cupy.empty((M, N), np.float32)
    bufs = [cupy.empty((M, N), np.float32) for _ in range(6)]  # sign0, cos^2..4, sign3, sign4
    bd_o = cupy.empty((M, K), np.float32)
    wd_o = cupy.zeros((N, K), np.float32)

    from cupy import cublas  # a plain import here would make `cupy` local to original()

    def original(lam=lam):
        s = stream()
        kern.bench_original_margin_prep(ptr(w_o), ptr(x), ptr(x_norm), M, N, K, False, s)
        # The port runs the product once and copies it (conservative for the original).
        cupy.matmul(x, w_o.T, out=top_o)
        cupy.copyto(cos, top_o)
        kern.bench_original_margin_forward(ptr(cos), ptr(top_o), ptr(lab), ptr(x_norm),
                                           *[ptr(b) for b in bufs], lam, M, N, False, s)
        cublas.gemm("T", "N", td, x, out=wd_o, alpha=1.0, beta=1.0)
        sign3, sign4 = bufs[4], bufs[5]
        kern.bench_original_margin_backward(ptr(bd_o), ptr(x), ptr(w_o), ptr(td), ptr(lab),
                                            ptr(x_norm), ptr(sign3), ptr(sign4), ptr(cos),
                                            ptr(bufs[1]), ptr(bufs[2]), ptr(bufs[3]), lam, M,
                                            N, K, False, s)

    original()
    cupy.cuda.get_current_stream().synchronize()
    for name, a, b in (("top", top_o, top_ours), ("bottom diff", bd_o, bd_ours)):
        err = float(cupy.linalg.norm(a - b) / cupy.linalg.norm(b))
        row_n("margin, original port vs ours: %s rel. error" % name, err, "",
            "(both compute the same numbers; expect ~1e-6)")
    t_orig = time_cupy(original, 1, max(3, repeat // 5))
    row_n("margin F+B, port of the ORIGINAL's kernels", t_orig, "ms")
    row_n("margin speed-up ours vs original (target >= 50)", t_orig / t_ours, "x")
    backend.set_mode_cpu()
    cupy.get_default_memory_pool().free_all_blocks()


# -- 2. SphereFace-20 training step ----------------------------------------------------------
def sphereface20_param(batch, num_classes):
    """The SphereFace-20 train net with Input layers: from PFL_SHARED's prototxt when
    present, else generated (same architecture and parameters)."""
    from pyfacelayers.input_swap import swap_data_layers
    from pyfacelayers.proto import caffe_pb2
    path = os.path.join(shared_dir(), "nets", "sphereface", "sphereface_model.prototxt")
    if os.path.exists(path):
        from pyfacelayers.fileio import read_net
        param = swap_data_layers(read_net(path),
                                 shapes={"data": (batch, 3, 112, 96), "label": (batch,)})
        source = path
    else:
        from google.protobuf import text_format
        param = text_format.Parse(_generated_sphereface20(batch), caffe_pb2.NetParameter())
        source = "generated (no %s)" % path
    for layer in param.layer:
        if layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = num_classes
    return param, source


def _generated_sphereface20(batch):
    conv = ('layer {{ name: "{n}" type: "Convolution" bottom: "{b}" top: "{n}" '
            'param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: {blr} decay_mult: 0 }} '
            'convolution_param {{ num_output: {c} kernel_size: 3 stride: {s} pad: 1 '
            'weight_filler {{ type: "{f}" std: 0.01 }} bias_filler {{ type: "constant" }} }} }}\n'
            'layer {{ name: "relu{t}" type: "PReLU" bottom: "{n}" top: "{n}" }}\n')
    text = ('name: "SpherefaceNet-20" layer { name: "data" type: "Input" top: "data" '
            'top: "label" input_param { shape { dim: %d dim: 3 dim: 112 dim: 96 } '
            'shape { dim: %d } } }\n' % (batch, batch))
    prev = "data"
    for stage, (channels, units) in enumerate(((64, 1), (128, 2), (256, 4), (512, 1)), 1):
        first = "conv%d_1" % stage
        text += conv.format(n=first, b=prev, c=channels, s=2, blr=2, f="xavier",
                            t=first[4:])
        prev = first
        for u in range(units):
            a, b = "conv%d_%d" % (stage, 2 * u + 2), "conv%d_%d" % (stage, 2 * u + 3)
            text += conv.format(n=a, b=prev, c=channels, s=1, blr=0, f="gaussian", t=a[4:])
            text += conv.format(n=b, b=a, c=channels, s=1, blr=0, f="gaussian", t=b[4:])
            res = "res%d_%d" % (stage, 2 * u + 3)
            text += ('layer { name: "%s" type: "Eltwise" bottom: "%s" bottom: "%s" top: "%s" '
                     'eltwise_param { operation: SUM } }\n' % (res, prev, b, res))
            prev = res
    text += ('layer { name: "fc5" type: "InnerProduct" bottom: "%s" top: "fc5" '
             'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 } '
             'inner_product_param { num_output: 512 weight_filler { type: "xavier" } '
             'bias_filler { type: "constant" } } }\n' % prev)
    text += ('layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" '
             'top: "fc6" top: "lambda" param { lr_mult: 1 decay_mult: 1 } '
             'margin_inner_product_param { num_output: 10572 type: QUADRUPLE '
             'weight_filler { type: "xavier" } base: 1000 gamma: 0.12 power: 1 '
             'lambda_min: 5 iteration: 0 } }\n')
    text += ('layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" '
             'bottom: "label" top: "softmax_loss" }\n')
    return text


def ours_solver(batch, num_classes, gpu):
    from pyfacelayers import backend
    from pyfacelayers.proto import caffe_pb2
    from pyfacelayers.solvers import SGDSolver
    param, source = sphereface20_param(batch, num_classes)
    sp = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                                   lr_policy="fixed", max_iter=1000000, display=0,
                                   random_seed=1)
    sp.net_param.CopyFrom(param)
    if gpu:
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()
    solver = SGDSolver(sp)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data = rng.standard_normal((batch, 3, 112, 96)).astype(np.float32)
    solver.net.blobs["label"].data = rng.integers(0, num_classes, batch).astype(np.float32)
    return solver, source


# Our convolution engines on the GPU: (label, PYFACELAYERS_CONV_ENGINE, _CUDNN_ALGOS,
# _CUDNN_WINOGRAD). The first cuDNN one is the default.
ENGINES = (("cuDNN, deterministic (default)", "cudnn", "deterministic", "0"),
           ("im2col + cuBLAS", "caffe", None, "0"),
           ("cuDNN, reproducible (heuristic)", "cudnn", "reproducible", "0"),
           ("cuDNN, fastest (non-deterministic)", "cudnn", "fastest", "0"),
           ("cuDNN, deterministic + Winograd (opt-in)", "cudnn", "deterministic", "1"))


def bench_sphereface_ours(batch, num_classes, warmup, timed, gpu=True, engine=ENGINES[0]):
    from pyfacelayers import backend
    label, conv_engine, algos, winograd = engine
    os.environ["PYFACELAYERS_CONV_ENGINE"] = conv_engine
    os.environ["PYFACELAYERS_CUDNN_WINOGRAD"] = winograd
    if algos:
        os.environ["PYFACELAYERS_CUDNN_ALGOS"] = algos
    if conv_engine == "cudnn":
        from pyfacelayers.gpu import cudnn
        print("  %s" % cudnn.available()[1], flush=True)
    solver, source = ours_solver(batch, num_classes, gpu)
    print("  net: %s" % source, flush=True)
    if gpu:
        assert all(b.xp.__name__ == "cupy" for b in solver.net.learnable_params)
    losses = []  # device scalars on the GPU: read once at the end, not every iteration
    solver.add_iteration_callback(lambda s, loss: losses.append(loss))

    def step():
        solver.step(1)

    if gpu:  # one block of steps between two events: the host may run ahead, as in training
        solver.step(warmup)
        ms = time_cupy(lambda: solver.step(timed), 0, 3) / timed
    else:
        for _ in range(warmup):
            step()
        t0 = time.time()
        for _ in range(timed):
            step()
        ms = (time.time() - t0) / timed * 1e3
    if gpu:
        import cupy
        held = cupy.get_default_memory_pool().total_bytes() / 2 ** 20
        row("device memory held, ours (%s; cupy pool)" % label, held, "MiB")
    losses = [float(v) for v in losses]
    print("  losses: %s" % ", ".join("%.4g" % v for v in losses[:8]), flush=True)
    if gpu:
        try:
            layer_profile(solver.net)
            algorithms = {}
            for layer in solver.net.layers:
                conv = getattr(layer, "_cudnn_conv", None)
                for direction, name in (conv[1].algorithm_names() if conv else {}).items():
                    algorithms.setdefault(direction, {}).setdefault(name, 0)
                    algorithms[direction][name] += 1
            for direction, names in sorted(algorithms.items()):
                print("  cuDNN %s algorithms: %s" % (direction, names))
        except Exception as exc:  # information only
            print("  (layer profile failed: %s: %s)" % (type(exc).__name__, exc))
    if not all(np.isfinite(losses)):
        raise RuntimeError("non-finite training loss: %s" % losses)
    backend.set_mode_cpu()
    where = ("GPU, " + label) if gpu else "CPU"
    row("SphereFace-20 step, ours (%s, batch %d)" % (where, batch), ms, "ms")
    row("SphereFace-20, ours images/s (%s)" % where, batch / (ms / 1e3), "img/s")
    return ms


def layer_profile(net, top=12):
    """One forward and backward with CUDA events around every layer (synchronised
    layer by layer, so the sum exceeds a real step): where the time goes."""
    import cupy
    times = {}

    def timed(key, fn):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times[key] = times.get(key, 0.0) + cupy.cuda.get_elapsed_time(start, end)

    names = net._layer_names
    for i, layer in enumerate(net.layers):
        bottom, top_ = net._bottoms[i], net._tops[i]
        layer.reshape(bottom, top_)
        timed((names[i], layer.type, "forward"), lambda: layer.forward(bottom, top_))
    for i in range(len(net.layers) - 1, -1, -1):
        if net._layer_need_backward[i]:
            layer, bottom, top_ = net.layers[i], net._bottoms[i], net._tops[i]
            down = net._bottom_need_backward[i]
            timed((names[i], layer.type, "backward"), lambda: layer.backward(top_, down, bottom))
    total = sum(times.values())
    by_type = {}
    for (name, kind, phase), ms in times.items():
        by_type[(kind, phase)] = by_type.get((kind, phase), 0.0) + ms
    print("  layer profile: %.1f ms in all (synchronised per layer); by type:" % total)
    for (kind, phase), ms in sorted(by_type.items(), key=lambda kv: -kv[1])[:top]:
        print("    %-22s %-8s %8.2f ms  %5.1f%%" % (kind, phase, ms, 100 * ms / total))


def bench_sphereface_torch(batch, num_classes, warmup, timed, tf32):
    import torch
    sys.path.insert(0, HERE)
    from torch_sphereface import make_training_step
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = make_training_step(batch, num_classes, "cuda")
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(timed):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = float(np.median(times))
    if not torch.isfinite(loss).item():
        raise RuntimeError("PyTorch loss is not finite")
    label = "TF32 allowed" if tf32 else "strict fp32"
    row("device memory held, PyTorch %s (max reserved)" % label,
        torch.cuda.max_memory_reserved() / 2 ** 20, "MiB")
    row("SphereFace-20 step, PyTorch %s (cudnn.benchmark)" % label, ms, "ms")
    row("SphereFace-20, PyTorch %s images/s" % label, batch / (ms / 1e3), "img/s")
    del step
    torch.cuda.empty_cache()
    return ms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--engines", type=int, default=len(ENGINES),
                        help="time only the first N engines (default: all)")
    parser.add_argument("--no-tf32", action="store_true", help="skip PyTorch with TF32")
    args = parser.parse_args()
    if args.cpu_smoke:
        part("SphereFace-20 (CPU smoke, batch 2, 100 classes)", bench_sphereface_ours, 2, 100,
             1, 1, False)
        return summary()
    warmup, timed = 3, 8
    part("MarginInnerProduct M=256 K=512 N=10572 QUADRUPLE float32", bench_margin, args.quick)
    part("MarginInnerProduct M=256 K=512 N=85742 QUADRUPLE float32", bench_margin, args.quick,
         85742, False)
    results = {}

    def ours(engine):
        results[engine] = bench_sphereface_ours(256, 10572, warmup, timed, True, engine)

    def torch_strict():
        results["torch"] = bench_sphereface_torch(256, 10572, warmup, timed, False)

    def torch_tf32():
        results["torch_tf32"] = bench_sphereface_torch(256, 10572, warmup, timed, True)

    for engine in ENGINES[:args.engines]:
        part("SphereFace-20 training step, ours on the GPU (%s)" % engine[0], ours, engine)
        try:
            import cupy
            cupy.get_default_memory_pool().free_all_blocks()
        except Exception:
            pass
    part("SphereFace-20 training step, PyTorch (strict fp32)", torch_strict)
    if not args.no_tf32:
        part("SphereFace-20 training step, PyTorch (TF32 allowed, PyTorch's conv default)",
             torch_tf32)
    for engine in ENGINES:
        if engine in results and "torch" in results:
            row("SphereFace-20 ratio ours (%s) / PyTorch strict fp32 (target <= 1.0)"
                % engine[0], results[engine] / results["torch"], "x")
    for engine in ENGINES:
        if engine in results and "torch_tf32" in results:
            row("SphereFace-20 ratio ours (%s) / PyTorch TF32 (information)" % engine[0],
                results[engine] / results["torch_tf32"], "x")
    return summary()


def summary():
    print("\n== summary")
    print("  %-58s %12s %-8s %s" % ("what", "value", "unit", "note"))
    for what, value, unit, note in ROWS:
        text = "%.4g" % value if isinstance(value, float) else str(value)
        print("  %-58s %12s %-8s %s" % (what, text, unit, note))
    failed = [r for r in ROWS if r[1] == "FAILED"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
