"""``pyfacelayers draw NET OUT``: a diagram of a net, as Caffe's ``python/draw_net.py``.

The format comes from OUT's extension: ``.dot`` is written directly; ``.png``, ``.svg``,
``.pdf`` and the other Graphviz formats need Graphviz's ``dot`` program."""

from ..draw import RANKDIRS, draw_net_to_file
from ..fileio import read_net
from ..proto import caffe_pb2


def register(subparsers):
    p = subparsers.add_parser("draw", help="draw a net (as Caffe's draw_net.py)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("input_net_proto_file", help="the net .prototxt")
    p.add_argument("output_image_file", help="the diagram: .dot, .png, .svg, .pdf, ...")
    p.add_argument("--rankdir", choices=RANKDIRS, default="LR",
                   help="direction of the graph layout (default LR)")
    p.add_argument("--phase", choices=["TRAIN", "TEST", "ALL"], default="ALL",
                   help="draw only the layers of one phase (default ALL)")
    p.add_argument("--display_lrm", action="store_true",
                   help="show the lr_mult of each parameter")
    p.set_defaults(func=run)


def run(args, out=print):
    net = read_net(args.input_net_proto_file)
    phase = None if args.phase == "ALL" else getattr(caffe_pb2, args.phase)
    out("Drawing net to %s" % args.output_image_file)
    draw_net_to_file(net, args.output_image_file, args.rankdir, phase, args.display_lrm)
    return 0
