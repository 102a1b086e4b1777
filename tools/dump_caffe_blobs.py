#!/usr/bin/env python
"""Dump every blob of a Caffe net to one .npz, as the reference of ``pyfacelayers compare``.

Run it where pycaffe works (the Caffe build you trust); it needs only ``caffe``
(pycaffe), numpy and the standard library, and does not use pyfacelayers:

    python dump_caffe_blobs.py --model net.prototxt --weights net.caffemodel \\
        --input faces.npz --phase TEST --out ref.npz [--backward] [--top-diff d.npz] \\
        [--compress]

``--input``: an .npz with one array per input blob (by name), an .npy (nets with one
input), or an image list (lines ``path [label]``; each image is read with
caffe.io.load_image, resized to the input blob's height and width with
caffe.io.resize_image, turned to BGR 0..255 and mapped to ``(pixel - mean) * scale``;
labels fill an input named ``label``). Whether this scikit-image anti-aliases when
resizing is probed and recorded, so that ``pyfacelayers compare --input`` resizes the
same way. When caffe.io.load_image fails because this scikit-image no longer knows its
``as_grey`` keyword (the SphereFace fork's pycaffe, scikit-image >= 0.19), the image is
read as it would have been, with ``as_gray``; the metadata says so.

The net runs one layer at a time (``net._forward(i, i)``, the same computation as one
``net.forward()``), so values of blobs that in-place layers later rewrite are kept too.
With ``--backward`` it runs Backward the same way: from the loss (each loss top's diff
is its loss weight, as Caffe sets it) or, for a net without a loss, from ``--top-diff``
(an .npz with one array per output blob). Caffe computes the diff of the input blobs
only when the prototxt says ``force_backward: true``; for a net without a loss it runs
no Backward at all without it, so ``--backward`` is refused there.

Sizes: every blob is stored, so a dump is about (sum of blob sizes) x batch + the
parameters (twice each with --backward): the SphereFace-20 deploy net at batch 2 is
126 MB, the training net with --backward several times that. A batch of 1-4 items
finds any layer fault; ``--compress`` (np.savez_compressed, read the same way) makes
the file smaller, less so for float data than for images.

Keys written (format "pyfacelayers-blob-dump" version 1; see pyfacelayers/compare/reference.py):
input/<blob>, data/<blob>, data/<blob>@<layer>, param/<layer>/<i>, lambda/<layer>,
iter/<layer>, and with --backward diff/<blob>, diff/<blob>@<layer>, param_diff/<layer>/<i>;
meta_json holds Caffe's version, phase, net name, blob order and layers.
"""

import argparse
import json
import os
import sys

import numpy as np

FORMAT = "pyfacelayers-blob-dump"
FORMAT_VERSION = 1


def parse_args(argv):
    p = argparse.ArgumentParser(description="Dump a Caffe net's blobs to an .npz "
                                            "(reference for pyfacelayers compare).")
    p.add_argument("--model", required=True, help="net .prototxt")
    p.add_argument("--weights", help=".caffemodel")
    p.add_argument("--input", help=".npz / .npy / image list (see above)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--backward", action="store_true", help="also run Backward")
    p.add_argument("--top-diff", help=".npz of diffs for the output blobs (nets without "
                                      "a loss)")
    p.add_argument("--mean", type=float, default=127.5, help="image list: mean")
    p.add_argument("--scale", type=float, default=0.0078125, help="image list: scale")
    p.add_argument("--gpu", type=int, help="GPU id (default: CPU)")
    p.add_argument("--caffe-version", help="text to record as Caffe's version (e.g. a git "
                                           "commit) when pycaffe does not say")
    p.add_argument("--compress", action="store_true",
                   help="write a compressed .npz (np.savez_compressed)")
    return p.parse_args(argv)


def read_net_param(caffe, path):
    """The prototxt as a NetParameter (for the net name, force_backward and the
    MarginInnerProduct settings), or None when this caffe_pb2 cannot parse it."""
    try:
        from google.protobuf import text_format
        param = caffe.proto.caffe_pb2.NetParameter()
        with open(path) as f:
            text_format.Merge(f.read(), param)
        return param
    except Exception as exc:  # an old caffe_pb2 or an odd file: the dump still works
        sys.stderr.write("note: cannot parse %s with this caffe_pb2 (%s); no net name or "
                         "MarginInnerProduct iteration in the metadata\n" % (path, exc))
        return None


def load_image(caffe, name, color, notes):
    """caffe.io.load_image; when it fails on the `as_grey` keyword that scikit-image
    0.19 removed (the SphereFace fork's pycaffe), the same steps with `as_gray`."""
    try:
        return caffe.io.load_image(name, color=color)
    except TypeError as exc:
        if "as_grey" not in str(exc):
            raise
    import skimage.io
    from skimage import img_as_float
    img = img_as_float(skimage.io.imread(name, as_gray=not color)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    notes["image_reader"] = "skimage.io.imread(as_gray) (caffe.io.load_image's as_grey " \
                            "is unknown to this scikit-image)"
    return img


def resize_antialiases(caffe):
    """Whether caffe.io.resize_image blurs before shrinking (newer scikit-image): stripes
    one pixel wide, shrunk by 3, keep full contrast without anti-aliasing."""
    stripes = np.tile((np.arange(12) % 2).astype(np.float32)[None, :, None], (12, 1, 3))
    out = caffe.io.resize_image(stripes, (4, 4))
    return bool(np.ptp(out[..., 0]) < 0.9)


def load_inputs(caffe, net, path, mean, scale, notes):
    names = list(net.inputs)
    if path.endswith(".npy"):
        if len(names) != 1:
            sys.exit("%s: a .npy fills one input but the net has %s" % (path, names))
        return {names[0]: np.load(path, allow_pickle=False)}
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            arrays = dict((k, z[k]) for k in z.files)
        unknown = sorted(set(arrays) - set(names))
        if unknown:
            sys.exit("%s: %s not input blobs of the net (inputs: %s)" % (path, unknown, names))
        return arrays
    shape = net.blobs[names[0]].data.shape
    images, labels = [], []
    base = os.path.dirname(path)
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            name = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            img = load_image(caffe, name, shape[1] == 3, notes)
            img = caffe.io.resize_image(img, shape[2:])
            chw = img * 255.0
            if shape[1] == 3:
                chw = chw[:, :, ::-1]  # RGB -> BGR, as Caffe's OpenCV reads
            images.append(((chw.transpose(2, 0, 1) - mean) * scale).astype(np.float32))
            if len(fields) > 1:
                labels.append(float(fields[1]))
    notes["image_antialias"] = resize_antialiases(caffe)
    try:
        import skimage
        notes["skimage_version"] = skimage.__version__
    except ImportError:
        pass
    out = {names[0]: np.stack(images)}
    if "label" in names and labels:
        out["label"] = np.array(labels, np.float32)
    return out


def margin_settings(param):
    """name -> MarginInnerProduct parameters as the prototxt gives them."""
    out = {}
    for layer in (param.layer if param is not None else []):
        if layer.type == "MarginInnerProduct":
            m = layer.margin_inner_product_param
            out[layer.name] = {"iteration_field": int(m.iteration), "base": m.base,
                               "gamma": m.gamma, "power": m.power,
                               "lambda_min": m.lambda_min}
    return out


def has_loss(net, layers):
    weights = getattr(net, "blob_loss_weights", None)  # pycaffe since 2015
    if weights is not None:
        return any(w for w in weights.values())
    return any(layer["type"].endswith("Loss") for layer in layers)


def dump(args):
    import caffe
    if args.gpu is not None:
        caffe.set_mode_gpu()
        caffe.set_device(args.gpu)
    else:
        caffe.set_mode_cpu()
    phase = getattr(caffe, args.phase)
    net = caffe.Net(args.model, args.weights, phase) if args.weights else \
        caffe.Net(args.model, phase)
    param = read_net_param(caffe, args.model)
    names = list(net._layer_names)
    layers = [{"name": n, "type": net.layers[i].type, "bottoms": list(net.bottom_names[n]),
               "tops": list(net.top_names[n])} for i, n in enumerate(names)]
    writers, readers = {}, {}
    for i, layer in enumerate(layers):
        for t in layer["tops"]:
            writers.setdefault(t, []).append(i)
        for b in layer["bottoms"]:
            readers.setdefault(b, []).append(i)
    arrays = {}
    notes = {}

    if args.input:
        for name, value in load_inputs(caffe, net, args.input, args.mean, args.scale,
                                       notes).items():
            value = np.asarray(value)
            net.blobs[name].reshape(*value.shape)
            net.blobs[name].data[...] = value
            arrays["input/" + name] = value.copy()
    elif net.inputs:
        sys.exit("the net has input blobs %s: give --input" % list(net.inputs))

    # Forward, one layer at a time.
    loss = 0.0
    for i, layer in enumerate(layers):
        loss += float(net._forward(i, i))
        for t in layer["tops"]:
            if writers[t][-1] != i:  # rewritten in place later: keep this value too
                arrays["data/%s@%s" % (t, layer["name"])] = net.blobs[t].data.copy()
    for name, blob in net.blobs.items():
        arrays["data/" + name] = blob.data.copy()
    for name, params in net.params.items():
        for k, p in enumerate(params):
            arrays["param/%s/%d" % (name, k)] = p.data.copy()

    # MarginInnerProduct: lambda (its second top, else its formula) and the counter,
    # which starts at the prototxt's `iteration` and advances once per Forward.
    settings = margin_settings(param)
    margin = {}
    for layer in layers:
        if layer["type"] != "MarginInnerProduct":
            continue
        info = dict(settings.get(layer["name"], {}), forwards=1)
        if len(layer["tops"]) > 1:
            arrays["lambda/" + layer["name"]] = \
                net.blobs[layer["tops"][1]].data.reshape(-1)[:1].copy()
            info["lambda_source"] = "top"
        if "iteration_field" in info:
            it = info["iteration_field"] + 1
            arrays["iter/" + layer["name"]] = np.array(it, dtype=np.int64)
            if len(layer["tops"]) == 1:
                f = np.float32
                lam = f(info["base"]) * (f(1) + f(info["gamma"]) * f(it)) ** (-f(info["power"]))
                arrays["lambda/" + layer["name"]] = np.array(
                    [max(lam, f(info["lambda_min"]))], np.float32)
                info["lambda_source"] = "formula"
        margin[layer["name"]] = info

    backward_from = None
    if args.backward and not has_loss(net, layers) and param is not None \
            and not param.force_backward:
        sys.exit("the net has no loss layer and no force_backward: true, so Caffe runs no "
                 "Backward for it (every diff would stay zero); add force_backward: true "
                 "to the prototxt to dump Backward from --top-diff")
    if args.backward:
        if args.top_diff:
            with np.load(args.top_diff, allow_pickle=False) as z:
                for name in z.files:
                    if name not in net.blobs:
                        sys.exit("%s: no blob %r in the net" % (args.top_diff, name))
                    if z[name].shape != net.blobs[name].diff.shape:
                        sys.exit("%s: %s has shape %s, the blob %s" % (
                            args.top_diff, name, z[name].shape, net.blobs[name].diff.shape))
                    net.blobs[name].diff[...] = z[name]
            backward_from = "top_diff"
        elif has_loss(net, layers):
            backward_from = "loss"
        else:
            sys.exit("the net has no loss: give --top-diff (an .npz with one array per "
                     "output blob: %s)" % list(net.outputs))
        for params in net.params.values():
            for p in params:
                p.diff[...] = 0
        for i in range(len(layers) - 1, -1, -1):
            net._backward(i, i)
            for b in layers[i]["bottoms"]:
                if readers[b][0] != i:  # the first consumer rewrites it later
                    arrays["diff/%s@%s" % (b, layers[i]["name"])] = net.blobs[b].diff.copy()
        for name, blob in net.blobs.items():
            arrays["diff/" + name] = blob.diff.copy()
        for name, params in net.params.items():
            for k, p in enumerate(params):
                arrays["param_diff/%s/%d" % (name, k)] = p.diff.copy()

    version = args.caffe_version or getattr(caffe, "__version__", None) or "unknown"
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool": "dump_caffe_blobs.py",
            "caffe_version": str(version), "caffe_module": getattr(caffe, "__file__", None),
            "model": os.path.basename(args.model),
            "weights": os.path.basename(args.weights) if args.weights else None,
            "net_name": param.name if param is not None else None,
            "force_backward": bool(param.force_backward) if param is not None else None,
            "phase": args.phase, "dtype": "float32", "backward": bool(args.backward),
            "backward_from": backward_from, "loss": loss, "blob_order": list(net.blobs),
            "layers": layers, "inputs": list(net.inputs), "outputs": list(net.outputs),
            "margin": margin, "mode": "GPU %d" % args.gpu if args.gpu is not None else "CPU",
            "compressed": bool(args.compress)}
    meta.update(notes)
    arrays["meta_json"] = np.array(json.dumps(meta, sort_keys=True))
    with open(args.out, "wb") as f:
        (np.savez_compressed if args.compress else np.savez)(f, **arrays)
    return meta, len(arrays) - 1


def main(argv=None):
    args = parse_args(argv)
    meta, count = dump(args)
    print("wrote %s: %d arrays, %d blobs, Caffe %s, phase %s%s" % (
        args.out, count, len(meta["blob_order"]), meta["caffe_version"], meta["phase"],
        ", Backward from the " + meta["backward_from"] if meta["backward"] else ""))


if __name__ == "__main__":
    main()
