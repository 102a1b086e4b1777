"""Prepare a published margin-family training net (AM-Softmax, ArcFace) for a short run
on a small generated data set, for the examples in am_softmax/ and arcface/.

    python margin_nets.py NET.prototxt SOLVER.prototxt OUT [--classes 10]
        [--per-class 4] [--height 112 --width 96] [--batch 8] [--iters 4]
        [--slim 1] [--seed 0]

writes

* ``OUT/data/<class>/<n>.png`` and ``OUT/data/train.txt`` (a generated face-like data set:
  ``--classes`` identities x ``--per-class`` images of ``--height`` x ``--width`` pixels,
  one "<class>/<n>.png <label>" line per image, as Caffe's ImageData reads it);
* ``OUT/train_test.prototxt``: the published net with only these changes (each printed):
  every data layer reads ``OUT/data/train.txt`` through an ``ImageData`` layer (a
  ``Data`` layer, which reads an LMDB, becomes an ``ImageData`` layer with the same tops,
  phase rules and ``transform_param``), with ``--batch`` images per batch; the classifier
  (every ``InnerProduct`` with ``normalize: true``, 10516 or 10575 identities in the
  published nets) gets ``--classes`` outputs; with ``--slim N`` every ``Convolution``
  has ``num_output / N`` filters and ``fc5`` 512 / N outputs (for a quick run);
* ``OUT/solver.prototxt``: the published solver with ``net`` pointing to that file,
  ``max_iter`` = ``--iters``, every iteration displayed, a snapshot
  ``OUT/snapshot_iter_<iters>.*`` at the end, and its test runs switched off (the
  published AM-Softmax solver tests every 500,000 iterations: never in practice).

Then ``pyfacelayers train --solver OUT/solver.prototxt`` trains it. The same arguments
write the same bytes.
"""

import argparse
import os
import sys

import numpy as np


def identity_pattern(rng, height, width):
    """float32 (height, width, 3) in [0, 1]: a few soft blobs of the identity's own colours,
    left-right symmetric like a face (the nets train with ``mirror: true``)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy, xx = yy / height, xx / width
    image = np.full((height, width, 3), 0.5, dtype=np.float32)
    for _ in range(5):
        cy, cx, radius = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.5), rng.uniform(0.07, 0.2)
        colour = rng.uniform(-0.5, 0.5, size=3).astype(np.float32)
        for x0 in (cx, 1.0 - cx):
            image += np.exp(-((yy - cy) ** 2 + (xx - x0) ** 2) / (2 * radius ** 2))[..., None] \
                * colour
    return np.clip(image, 0.0, 1.0)


def make_data(out, classes=10, per_class=4, height=112, width=96, seed=0):
    """Write ``out/<class>/<n>.png`` and ``out/train.txt``; return the list's path. Each
    image of a class is its pattern shifted by up to 2 pixels, re-lit and noised."""
    from PIL import Image

    if classes < 2 or per_class < 1 or min(height, width) < 8:
        raise ValueError("need classes >= 2, per_class >= 1 and images of at least 8x8; "
                         "got %d, %d, %dx%d" % (classes, per_class, height, width))
    rng = np.random.default_rng(seed)
    lines = []
    for label in range(classes):
        folder = "%03d" % label
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        pattern = identity_pattern(rng, height, width)
        for n in range(per_class):
            dy, dx = (int(v) for v in rng.integers(-2, 3, size=2))
            image = np.roll(pattern, (dy, dx), axis=(0, 1)) * rng.uniform(0.85, 1.15)
            image = image + rng.normal(0.0, 0.05, size=image.shape)
            pixels = (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
            name = "%s/%d.png" % (folder, n)
            Image.fromarray(pixels, "RGB").save(os.path.join(out, name))
            lines.append("%s %d\n" % (name, label))
    path = os.path.join(out, "train.txt")
    with open(path, "w") as f:
        f.writelines(lines)
    return path


def adapt_net(net, data_dir, classes, batch, slim=1, say=print):
    """Change the NetParameter ``net`` in place as the module docstring says."""
    if slim < 1:
        raise ValueError("--slim must be >= 1, got %d" % slim)
    root = os.path.abspath(data_dir) + os.sep
    for layer in net.layer:
        if layer.type in ("Data", "ImageData"):
            p = layer.image_data_param
            published_batch = p.batch_size
            if layer.type == "Data":
                say('layer "%s": Data (LMDB %s) -> ImageData' % (layer.name,
                                                                 layer.data_param.source))
                published_batch = layer.data_param.batch_size
                layer.type = "ImageData"
                layer.ClearField("data_param")
            say('layer "%s": list %s -> %s, batch %d -> %d'
                % (layer.name, p.source or "-", root + "train.txt", published_batch, batch))
            p.source, p.root_folder, p.batch_size = root + "train.txt", root, batch
            p.shuffle = True
        elif layer.type == "InnerProduct" and layer.inner_product_param.normalize:
            say('layer "%s": classes %d -> %d' % (layer.name,
                                                  layer.inner_product_param.num_output, classes))
            layer.inner_product_param.num_output = classes
        elif slim > 1 and layer.type == "Convolution":
            p = layer.convolution_param
            p.num_output = max(1, p.num_output // slim)
        elif slim > 1 and layer.name == "fc5":
            p = layer.inner_product_param
            say('layer "fc5": %d -> %d outputs (--slim %d; every Convolution / %d too)'
                % (p.num_output, max(1, p.num_output // slim), slim, slim))
            p.num_output = max(1, p.num_output // slim)
    return net


def adapt_solver(solver, net_path, out, iters):
    """The published solver, shortened to ``iters`` iterations, as the docstring says."""
    solver.net = os.path.abspath(net_path)
    solver.max_iter = iters
    solver.display = 1
    solver.snapshot = 0
    solver.snapshot_after_train = True
    solver.snapshot_prefix = os.path.join(os.path.abspath(out), "snapshot")
    solver.ClearField("test_iter")
    solver.ClearField("test_interval")
    solver.test_initialization = False
    return solver


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("net", help="the published training net (.prototxt)")
    parser.add_argument("solver", help="the published solver (.prototxt)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--slim", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from google.protobuf import text_format
    from pyfacelayers.fileio import read_net, read_solver

    try:
        net = read_net(args.net)
        solver = read_solver(args.solver)
        data = os.path.join(args.out, "data")
        make_data(data, args.classes, args.per_class, args.height, args.width, args.seed)
        adapt_net(net, data, args.classes, args.batch, args.slim)
    except (OSError, ValueError) as exc:
        print("margin_nets.py: %s" % exc, file=sys.stderr)
        return 2
    net_path = os.path.join(args.out, "train_test.prototxt")
    with open(net_path, "w") as f:
        f.write(text_format.MessageToString(net))
    with open(os.path.join(args.out, "solver.prototxt"), "w") as f:
        f.write(text_format.MessageToString(adapt_solver(solver, net_path, args.out,
                                                         args.iters)))
    print("wrote %s, %s and %d images under %s"
          % (net_path, os.path.join(args.out, "solver.prototxt"),
             args.classes * args.per_class, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
