"""``pyfacelayers test``: score a trained model, as ``caffe test``.

Runs the TEST-phase net for --iterations batches and prints each output per batch,
then the mean of each output over the batches (with its loss contribution)."""

import logging

import numpy as np

from .. import backend
from . import _common

log = logging.getLogger("pyfacelayers")


def register(subparsers):
    p = subparsers.add_parser("test", help="score a model over some batches (as caffe test)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the net .prototxt")
    p.add_argument("--weights", required=True, help="the trained .caffemodel")
    p.add_argument("--iterations", type=int, default=50, help="batches to run (default 50)")
    _common.add_device_arguments(p)
    p.add_argument("--level", type=int, default=0, help="NetState level")
    p.add_argument("--stage", action="append", help="NetState stage(s)")
    _common.add_python_layer_argument(p)
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TEST")
    p.set_defaults(func=run)


def _make_net(args):
    from ..net import Net
    from ..proto import caffe_pb2
    return Net(args.model, getattr(caffe_pb2, args.phase), weights=args.weights,
               level=args.level, stages=tuple(_common.split_stages(args.stage)),
               allow_python_layers=getattr(args, "allow_python_layers", False) or None)


def run(args, out=print, make_net=None):
    if args.iterations <= 0:
        raise ValueError("--iterations must be > 0, got %d" % args.iterations)
    device = _common.select_device(args.gpu)
    net = (make_net or _make_net)(args)
    out("Using %s; running for %d iterations." % (device, args.iterations))
    totals, loss = None, 0.0
    for i in range(args.iterations):
        net.forward()
        values = []
        for name in net.outputs:
            flat = np.asarray(backend.to_numpy(net.blobs[name].data), np.float64).ravel()
            values.append((name, flat))
            for v in flat:
                out("Batch %d, %s = %g" % (i, name, v))
        loss += sum(float(w) * float(np.asarray(backend.to_numpy(net.blobs[n].data),
                                                 np.float64).sum())
                    for n, w in net.blob_loss_weights.items() if w)
        totals = values if totals is None else [(n, t + v) for (n, t), (_, v)
                                                 in zip(totals, values)]
    out("Loss: %g" % (loss / args.iterations))
    means = {}
    for name, total in totals:
        mean = total / args.iterations
        means[name] = mean
        weight = net.blob_loss_weights.get(name, 0)
        for v in mean:
            extra = " (* %g = %g loss)" % (weight, weight * v) if weight else ""
            out("%s = %g%s" % (name, v, extra))
    return 0 if make_net is None else means
