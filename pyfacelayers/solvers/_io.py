"""File helpers the solvers need: read a solver/net prototxt, write a binary proto.

They come from :mod:`pyfacelayers.fileio` when it offers them; the small local
versions below (same semantics) keep the solvers usable on their own.
"""

import os
import tempfile

from google.protobuf import text_format

from ..errors import FormatError
from ..proto import caffe_pb2

# Legacy SolverParameter.solver_type enum -> the current ``type`` string.
_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def _parse_text(text, message, where):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise FormatError(str(exc), where) from None
    return message


def _local_read_solver(source):
    source = os.fspath(source)
    if os.path.exists(source):
        with open(source, "r", encoding="utf-8") as f:
            param = _parse_text(f.read(), caffe_pb2.SolverParameter(), source)
        where = source
    elif "\n" in source or ":" in source:
        param, where = _parse_text(source, caffe_pb2.SolverParameter(), "<string>"), "<string>"
    else:
        raise FileNotFoundError("no such solver file: %s" % source)
    if param.HasField("solver_type"):
        if param.HasField("type"):
            raise FormatError("the solver sets both the legacy 'solver_type' and 'type'; "
                              "keep only 'type'", where)
        param.type = _SOLVER_TYPES[param.solver_type]
        param.ClearField("solver_type")
    return param


def _local_read_net(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such net file: %s" % path)
    with open(path, "r", encoding="utf-8") as f:
        return _parse_text(f.read(), caffe_pb2.NetParameter(), path)


def _local_write_binary_proto(path, message):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(message.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _local_write_text(path, text):
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


try:
    from ..fileio import read_solver
except ImportError:
    read_solver = _local_read_solver
try:
    from ..fileio import read_net
except ImportError:
    read_net = _local_read_net
try:
    from ..fileio import write_binary_proto
except ImportError:
    write_binary_proto = _local_write_binary_proto
try:
    from ..fileio import atomic_write as _atomic_write

    def write_text(path, text):
        _atomic_write(path, text)
except ImportError:
    write_text = _local_write_text


def read_binary(path, message_class, what):
    """A binary proto file as ``message_class``; clear errors for missing/corrupt files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such %s file: %s" % (what, path))
    with open(path, "rb") as f:
        raw = f.read()
    message = message_class()
    try:
        message.ParseFromString(raw)
    except Exception as exc:  # DecodeError and friends
        raise FormatError("truncated or corrupt %s (%s)" % (what, exc), path) from None
    return message
