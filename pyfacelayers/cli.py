"""The ``pyfacelayers`` command line, mirroring Caffe's ``caffe`` tool.

Each module of :mod:`pyfacelayers.commands` adds one subcommand through its
``register(subparsers)`` function, which sets ``func`` (taking the parsed args and
returning an exit code) on its parser.
"""

import argparse
import importlib
import pkgutil
import re
import sys

from . import __version__, commands
from .errors import PyFaceLayersError


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pyfacelayers",
        description="Run and train Caffe face-recognition nets (SphereFace) without Caffe.")
    parser.add_argument("--version", action="version", version="pyfacelayers " + __version__)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        importlib.import_module("%s.%s" % (commands.__name__, module.name)).register(subparsers)
    return parser


# gflags' -flag / -flag=value, as Caffe's tools take them: a single dash before two or
# more letters (argparse's own short options are one letter).
_GFLAG = re.compile(r"-[A-Za-z][A-Za-z0-9_-]+(=.*)?\Z", re.S)


def gflags_style(argv):
    """``caffe train -solver s.prototxt -gpu 0`` as ``--solver ... --gpu 0``; nothing
    after a lone ``--`` is touched."""
    out = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + list(argv[i:])
        out.append("-" + word if _GFLAG.match(word) else word)
    return out


def main(argv=None):
    parser = build_parser()
    argv = gflags_style(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # a multi-GPU train starts its ranks with the same command line
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except (PyFaceLayersError, OSError, ValueError) as exc:
        print("pyfacelayers %s: error: %s" % (args.command, exc), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
