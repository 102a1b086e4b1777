"""Caffe's upgrade tools as subcommands: ``upgrade_net_proto_text``,
``upgrade_net_proto_binary`` and ``upgrade_solver_proto_text`` IN OUT.

Each reads a file in any format pyfacelayers reads (V1 ``layers`` with enum types, the
``input:``/``input_dim`` header, transform fields inside data parameters, 3-parameter
BatchNorm, the solver's ``solver_type`` enum), writes it in the current format
(atomically), and prints Caffe's lines: ``File already in latest proto format: IN``
when nothing changed, then ``Wrote upgraded ... proto to OUT``."""

from ..fileio import (read_binary_proto, upgrade_net, upgrade_solver, write_binary_proto,
                      write_prototxt)
from ..fileio.text import parse_text, read_text_file
from ..proto import caffe_pb2

# subcommand: (what Caffe calls it, the reader of the file as it is, the upgrade, writer)
TOOLS = {
    "upgrade_net_proto_text": (
        "NetParameter text",
        lambda path: parse_text(read_text_file(path), caffe_pb2.NetParameter(), path),
        upgrade_net, write_prototxt),
    "upgrade_net_proto_binary": (
        "NetParameter binary",
        lambda path: read_binary_proto(path, caffe_pb2.NetParameter, "binary NetParameter"),
        upgrade_net, write_binary_proto),
    "upgrade_solver_proto_text": (
        "SolverParameter text",
        lambda path: parse_text(read_text_file(path), caffe_pb2.SolverParameter(), path),
        upgrade_solver, write_prototxt),
}


def register(subparsers):
    for name, (what, _, _, _) in TOOLS.items():
        p = subparsers.add_parser(
            name, help="write a %s proto in the current format (as Caffe's %s)"
                       % (what, name), description=__doc__.split("\n\n")[1])
        p.add_argument("input", help="the file to upgrade")
        p.add_argument("output", help="where to write the upgraded file (may be the input)")
        p.set_defaults(func=run, tool=name)


def run(args, out=print):
    what, read, upgrade, write = TOOLS[args.tool]
    message = read(args.input)
    original = message.SerializeToString(deterministic=True)
    upgrade(message, args.input)
    if message.SerializeToString(deterministic=True) == original:
        out("File already in latest proto format: %s" % args.input)
    write(args.output, message)
    out("Wrote upgraded %s proto to %s" % (what, args.output))
    return 0
