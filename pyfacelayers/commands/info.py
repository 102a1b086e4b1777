"""``pyfacelayers info FILE``: what a prototxt or caffemodel holds."""

import numpy as np

from ..fileio import blob_shape, read_net
from ..fileio.weights import read_weights
from ..fileio.hdf5_weights import is_hdf5_path, read_hdf5_weights
from ..fileio.text import read_text_file
from ..proto import caffe_pb2


def register(subparsers):
    p = subparsers.add_parser(
        "info", help="list the layers of a .prototxt (with blob shapes when known) or the "
                     "layers and blob shapes of a .caffemodel")
    p.add_argument("file", help="a net .prototxt, a .caffemodel or a .caffemodel.h5")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST",
                   help="phase used to compute blob shapes (default TEST)")
    from . import _common
    _common.add_python_layer_argument(p)
    p.set_defaults(func=run)


def _is_binary(path):
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        return "\x00" in head.decode("utf-8")
    except UnicodeDecodeError:
        return True


def run(args):
    try:
        binary = _is_binary(args.file)
    except FileNotFoundError:
        raise FileNotFoundError("no such file: %s" % args.file) from None
    if is_hdf5_path(args.file):
        show_hdf5_weights(args.file)
    elif binary:
        show_caffemodel(args.file)
    else:
        read_text_file(args.file)  # clear errors for odd files before parsing
        show_prototxt(args.file, getattr(caffe_pb2, args.phase),
                      getattr(args, "allow_python_layers", False))
    return 0


def show_caffemodel(path):
    net = read_weights(path)  # name, type and blobs: reads every fork's numbering
    print('caffemodel %s: net "%s", %d layers' % (path, net.name, len(net.layer)))
    total = 0
    for layer in net.layer:
        shapes = [blob_shape(b) for b in layer.blobs]
        total += sum(int(np.prod(s)) for s in shapes)
        print("  %-28s %-20s %s" % (layer.name, layer.type,
                                    "  ".join("x".join(map(str, s)) for s in shapes)))
    print("parameters: %d" % total)


def show_hdf5_weights(path):
    layers = read_hdf5_weights(path)
    print("HDF5 weights %s: %d layers" % (path, len(layers)))
    total = 0
    for name, params in layers.items():
        shapes = [params[k].shape for k in sorted(params)]
        total += sum(int(np.prod(s)) for s in shapes)
        print("  %-28s %s" % (name, "  ".join("x".join(map(str, s)) for s in shapes)))
    print("parameters: %d" % total)


def show_prototxt(path, phase, allow_python_layers=False):
    param = read_net(path)
    print('net "%s" (%s): %d layers' % (param.name, path, len(param.layer)))
    print("  %-28s %-20s %-30s %s" % ("name", "type", "bottoms", "tops"))
    for layer in param.layer:
        print("  %-28s %-20s %-30s %s" % (layer.name, layer.type, ",".join(layer.bottom),
                                          ",".join(layer.top)))
    try:
        from ..net import Net
        net = Net(param, phase, allow_python_layers=allow_python_layers)
    except Exception as exc:  # shapes need every input's shape and every layer type
        print("blob shapes unknown (%s)" % exc)
        return
    print("blob shapes (%s):" % caffe_pb2.Phase.Name(phase))
    for name, blob in net.blobs.items():
        print("  %-40s %s" % (name, "x".join(map(str, blob.shape)) or "scalar"))
    count = sum(b.count for b in net.learnable_params)
    print("parameters: %d" % count)
