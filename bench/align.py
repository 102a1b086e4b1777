"""Detect + align throughput (``pyfacelayers align``): images/s on the CPU with 1 and 2
workers and, with --gpu, on the GPU; and what that means for LFW (13,233 images).

    python bench/align.py [--images 24] [--root LFW_DIR] [--gpu 0] [--gpu-workers 1,4]
                          [--no-cpu] [--shared ../shared]

Without --root, the images are copies of the 250x250 LFW-like reference image
(``shared/fixtures/preprocess-ref/mtcnn/inputs/sq250_test2.png``), so every image has
the work of a real LFW image (16 pyramid levels, ~80 RNet and ~10 ONet candidates).
With --root, the first --images images of that data set (e.g. LFW). The peer, SphereFace's
MATLAB + matcaffe pipeline, cannot run here, so the table gives absolute rates.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pyfacelayers.preprocess import dataset  # noqa: E402

LFW_IMAGES = 13233


def make_images(args, folder):
    """Relative image paths under ``folder`` (copied or linked there)."""
    if args.root:
        names = dataset.walk(args.root)[:args.images]
        for name in names:
            os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
            shutil.copy(os.path.join(args.root, name), os.path.join(folder, name))
        return names
    source = os.path.join(args.shared, "fixtures", "preprocess-ref", "mtcnn", "inputs",
                          "sq250_test2.png")
    if not os.path.isfile(source):
        sys.exit("no --root and no reference image at %s (pass --shared or --root)" % source)
    names = []
    for k in range(args.images):
        name = "person%02d/person%02d_%04d.png" % (k % 10, k % 10, k + 1)
        os.makedirs(os.path.join(folder, os.path.dirname(name)), exist_ok=True)
        shutil.copy(source, os.path.join(folder, name))
        names.append(name)
    return names


def run(folder, names, workers, gpu):
    out = tempfile.mkdtemp(prefix="align-bench-")
    try:
        before = os.times()
        start = time.perf_counter()
        summary = dataset.align_dataset(folder, out, names, workers=workers, gpu=gpu)
        seconds = time.perf_counter() - start
        after = os.times()
    finally:
        shutil.rmtree(out)
    # CPU time of this process and its (finished) workers: a figure that a busy
    # machine does not inflate, unlike the wall clock
    cpu = sum(after[k] - before[k] for k in range(4))
    return seconds, cpu, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--root", help="a data set (<identity>/<image>) to take images from")
    parser.add_argument("--gpu", help="also run on this GPU")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    parser.add_argument("--gpu-workers", default="1,4",
                        help="worker counts on the GPU, comma separated (default 1,4)")
    parser.add_argument("--shared", default=os.path.join(os.path.dirname(os.path.dirname(HERE)),
                                                         "shared"))
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="align-bench-images-")
    try:
        names = make_images(args, folder)
        configs = [] if args.no_cpu else [("CPU", 1, None), ("CPU", 2, None)]
        if args.gpu is not None:
            configs += [("GPU %s" % args.gpu, int(w), args.gpu)
                        for w in args.gpu_workers.split(",") if w]
        print("detect + align (MTCNN pinned, JPEG q75), %d images of %s; %s, %d CPU cores, "
              "Python %s" % (len(names), "--root" if args.root else "250x250",
                             platform.processor() or platform.machine(), os.cpu_count(),
                             platform.python_version()))
        print("%-8s %7s %9s %9s %12s %14s %15s" % ("device", "workers", "seconds", "images/s",
                                                    "ms/image", "LFW (13,233)",
                                                    "CPU ms/image"))
        for device, workers, gpu in configs:
            seconds, cpu, summary = run(folder, names, workers, gpu)
            rate = len(names) / seconds
            print("%-8s %7d %9.2f %9.2f %12.1f %11.1f min %15.1f" % (
                device, workers, seconds, rate, 1000.0 / rate, LFW_IMAGES / rate / 60,
                1000.0 * cpu / len(names)))
            if summary.aligned != len(names):
                print("  (only %d of %d images had a face)" % (summary.aligned, len(names)))
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
