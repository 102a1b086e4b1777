"""Training from JPEG files vs the compute-only step: SphereFace-20 (its own ImageData
layer: mean 127.5, scale 1/128, mirror, shuffle) on a list of generated 112x96 JPEGs,
with 0, 1 and 2 prefetch workers (PYFACELAYERS_DATA_WORKERS), against the same net fed
by Input layers (the data written once). Images/s of Forward+Backward, as ratios.

    python bench/data.py [--images 2000] [--batch 8] [--iters 4] [--classes 10572]
                         [--workers 0 1 2] [--shared ../shared]

Each configuration runs one warm-up step, then --iters timed steps; the table shows the
median. The same interleaving as bench/inference.py: configurations alternate step by
step, so a busy machine slows them alike.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers.fileio import read_net  # noqa: E402
from pyfacelayers.input_swap import swap_data_layers  # noqa: E402
from inference import cpu_name  # noqa: E402


def write_jpegs(folder, count, seed=0):
    """``count`` 112x96 JPEGs (smooth random colour fields, quality 90) and their list."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        small = rng.integers(0, 256, (14, 12, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((96, 112), Image.BILINEAR)
        name = "face_%05d.jpg" % i
        img.save(os.path.join(folder, name), quality=90)
        lines.append("%s %d" % (name, i % 100))
    path = os.path.join(folder, "list.txt")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def nets(shared, folder, listing, batch, classes, workers):
    param = read_net(os.path.join(shared, "nets", "sphereface", "sphereface_model.prototxt"))
    for layer in param.layer:
        if layer.type == "MarginInnerProduct":
            layer.margin_inner_product_param.num_output = classes
        if layer.type == "ImageData":
            layer.image_data_param.source = listing
            layer.image_data_param.root_folder = folder + "/"
            layer.image_data_param.batch_size = batch
    made = {}
    compute = swap_data_layers(param, {"data": (batch, 3, 112, 96), "label": (batch,)})
    made["compute only (Input layers)"] = caffe.Net(compute, caffe.TRAIN, seed=0)
    rng = np.random.default_rng(1)
    net = made["compute only (Input layers)"]
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 100, batch)
    for count in workers:
        os.environ["PYFACELAYERS_DATA_WORKERS"] = str(count)
        made["JPEG list, %d worker(s)" % count] = (caffe.Net(param, caffe.TRAIN, seed=0), count)
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10572)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        listing = write_jpegs(folder, args.images)
        print("wrote %d JPEGs in %.1f s" % (args.images, time.perf_counter() - start))
        made = nets(args.shared, folder, listing, args.batch, args.classes, args.workers)
        runs = {}
        for name, entry in made.items():
            net, count = entry if isinstance(entry, tuple) else (entry, None)
            runs[name] = (net, count)
            if count is not None:
                os.environ["PYFACELAYERS_DATA_WORKERS"] = str(count)
            net.forward_backward()  # warm-up (and the prefetch queue filled)
        times = {name: [] for name in runs}
        for _ in range(args.iters):
            for name, (net, count) in runs.items():
                if count is not None:
                    os.environ["PYFACELAYERS_DATA_WORKERS"] = str(count)
                net.clear_param_diffs()
                t = time.perf_counter()
                net.forward_backward()
                times[name].append(time.perf_counter() - t)
        print("SphereFace-20 training step from %d generated 112x96 JPEGs, batch %d, fc6 %d "
              "classes, float32; %s, %d CPU(s)" % (args.images, args.batch, args.classes,
                                                   cpu_name(), os.cpu_count()))
        base = statistics.median(times["compute only (Input layers)"])
        print("%-34s %10s %10s %14s" % ("", "s/step", "images/s", "vs compute"))
        for name, values in times.items():
            t = statistics.median(values)
            print("%-34s %10.3f %10.1f %13.0f%%" % (name, t, args.batch / t, 100 * base / t))
        for net, _ in runs.values():
            for layer in net.layers:
                if hasattr(layer, "close_prefetch"):
                    layer.close_prefetch()


if __name__ == "__main__":
    main()
