"""``pyfacelayers time``: per-layer Forward/Backward timings, as ``caffe time``.

Runs one warm-up Forward/Backward, then --iterations timed passes, and prints each
layer's average Forward and Backward time in ms and the totals."""

import time as _time

from . import _common


def register(subparsers):
    p = subparsers.add_parser("time", help="per-layer forward/backward timings (as caffe time)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the net .prototxt")
    p.add_argument("--iterations", type=int, default=50, help="timed passes (default 50)")
    _common.add_device_arguments(p)
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default="TRAIN")
    p.add_argument("--level", type=int, default=0, help="NetState level")
    p.add_argument("--stage", action="append", help="NetState stage(s)")
    _common.add_python_layer_argument(p)
    p.add_argument("--weights", help="optional .caffemodel (random weights otherwise)")
    p.set_defaults(func=run)


def _make_net(args):
    from ..net import Net
    from ..proto import caffe_pb2
    return Net(args.model, getattr(caffe_pb2, args.phase), weights=args.weights,
               level=args.level, stages=tuple(_common.split_stages(args.stage)),
               allow_python_layers=getattr(args, "allow_python_layers", False) or None)


def _timed(fn):
    _common.synchronize()
    start = _time.perf_counter()
    fn()
    _common.synchronize()
    return (_time.perf_counter() - start) * 1000.0


def run(args, out=print, make_net=None):
    if args.iterations <= 0:
        raise ValueError("--iterations must be > 0, got %d" % args.iterations)
    device = _common.select_device(args.gpu)
    net = (make_net or _make_net)(args)
    names = _common.layer_names(net)
    n = len(names)
    out("Using %s. Performing Forward" % device)
    loss = net.forward_from_to(0, n - 1)
    out("Initial loss: %g" % (loss or 0.0))
    out("Performing Backward")
    net.backward_from_to(n - 1, 0)
    forward, backward = [0.0] * n, [0.0] * n
    total_forward = total_backward = 0.0
    for it in range(args.iterations):
        start = _time.perf_counter()
        for i in range(n):
            forward[i] += _timed(lambda: net.forward_from_to(i, i))
        middle = _time.perf_counter()
        for i in reversed(range(n)):
            backward[i] += _timed(lambda: net.backward_from_to(i, i))
        end = _time.perf_counter()
        total_forward += (middle - start) * 1000.0
        total_backward += (end - middle) * 1000.0
        out("Iteration: %d forward-backward time: %.3f ms." % (it + 1, (end - start) * 1000.0))
    width = max([10] + [len(x) for x in names])
    out("Average time per layer: ")
    for i, name in enumerate(names):
        out("%*s\tforward: %.5f ms." % (width, name, forward[i] / args.iterations))
        out("%*s\tbackward: %.5f ms." % (width, name, backward[i] / args.iterations))
    out("Average Forward pass: %.5f ms." % (total_forward / args.iterations))
    out("Average Backward pass: %.5f ms." % (total_backward / args.iterations))
    out("Average Forward-Backward: %.5f ms." % ((total_forward + total_backward) / args.iterations))
    out("Total Time: %.5f ms." % (total_forward + total_backward))
    return 0 if make_net is None else (forward, backward)
