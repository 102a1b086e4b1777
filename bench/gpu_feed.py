"""Feeding the GPU: SphereFace-20 training from a list of JPEG files against the same
step on data already on the device (GPU benchmark, run by bench/gpu_check.sh).

The published sphereface_model.prototxt is used as written (ImageData: batch 256,
shuffle, mirror, mean 127.5, scale 1/128), its list pointing at generated 112x96 JPEGs
(one identity per 20 images). "compute only" is the same net with its data layer
swapped for Input blobs filled once. Both run solver.step() in blocks between CUDA events
(the host may run ahead, as in training), after a warm-up.

    python bench/gpu_feed.py [--images 2048] [--iters 8] [--cpu-smoke]
"""

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gpu_bench import row, shared_dir, summary, time_cupy  # noqa: E402


def make_jpegs(folder, count, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    lines = []
    base = rng.integers(0, 256, (8, 112, 96, 3), dtype=np.uint8)
    for i in range(count):
        identity = i // 20
        noise = rng.integers(-20, 21, (112, 96, 3))
        pixels = np.clip(base[identity % 8].astype(int) + noise, 0, 255).astype(np.uint8)
        name = "%05d/%05d.jpg" % (identity, i)
        os.makedirs(os.path.join(folder, "%05d" % identity), exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(folder, name), quality=90)
        lines.append("%s %d" % (name, identity))
    path = os.path.join(folder, "list.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path, (count - 1) // 20 + 1


def solver_for(param, gpu):
    from pyfacelayers import backend
    from pyfacelayers.proto import caffe_pb2
    from pyfacelayers.solvers import SGDSolver
    sp = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=0.0005,
                                   lr_policy="fixed", max_iter=1000000, display=0,
                                   random_seed=1)
    sp.net_param.CopyFrom(param)
    (backend.set_mode_gpu if gpu else backend.set_mode_cpu)()
    return SGDSolver(sp)


def timed_steps(solver, warmup, iters, gpu):
    import time
    solver.step(warmup)
    if gpu:
        return time_cupy(lambda: solver.step(iters), 0, 3) / iters
    start = time.perf_counter()
    solver.step(iters)
    return (time.perf_counter() - start) / iters * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    gpu = not args.cpu_smoke
    batch = 2 if args.cpu_smoke else args.batch
    from pyfacelayers.fileio import read_net
    from pyfacelayers.input_swap import swap_data_layers
    path = os.path.join(shared_dir(), "nets", "sphereface", "sphereface_model.prototxt")
    folder = tempfile.mkdtemp(prefix="pfl_jpegs_")
    source, classes = make_jpegs(folder, args.images if gpu else 40)
    print("  %d JPEGs of 112x96 in %s; %d CPU cores" % (args.images if gpu else 40, folder,
                                                        os.cpu_count()), flush=True)
    param = read_net(path)
    for layer in param.layer:
        if layer.type == "ImageData":
            layer.image_data_param.source = source
            layer.image_data_param.root_folder = folder + "/"
            layer.image_data_param.batch_size = batch
        if layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = max(classes, 2)
    fed = solver_for(param, gpu)
    ms_fed = timed_steps(fed, 2, args.iters, gpu)
    del fed
    compute = swap_data_layers(param, shapes={"data": (batch, 3, 112, 96), "label": (batch,)})
    solver = solver_for(compute, gpu)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data = rng.standard_normal((batch, 3, 112, 96)).astype(np.float32)
    solver.net.blobs["label"].data = rng.integers(0, max(classes, 2), batch).astype(np.float32)
    ms_compute = timed_steps(solver, 2, args.iters, gpu)
    where = "GPU" if gpu else "CPU smoke"
    row("SphereFace-20 step from JPEGs (ImageData, %s, batch %d)" % (where, batch), ms_fed, "ms")
    row("SphereFace-20 step, compute only (Input blobs)", ms_compute, "ms")
    row("JPEG-fed images/s as a share of compute-only (target >= 0.9)",
        ms_compute / ms_fed, "x", "%d CPU cores" % os.cpu_count())
    return summary()


if __name__ == "__main__":
    sys.exit(main())
