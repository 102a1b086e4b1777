"""Binary protobuf files: .caffemodel (NetParameter), .binaryproto (BlobProto, e.g. a
mean image) and .solverstate (SolverState). Writes are atomic."""

import os

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from ..errors import FormatError
from ..proto import caffe_pb2
from .atomic import atomic_write
from .blobs import array_to_blob, blob_to_array
from .upgrade import upgrade_net


def _read_bytes(path, what):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such file: %s" % path)
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise FormatError("the file is empty, expected a binary %s" % what, path)
    if _looks_like_text(raw):
        raise FormatError("this is a text file, expected a binary %s "
                          "(is it a .prototxt?)" % what, path)
    return raw


def _looks_like_text(raw):
    head = raw[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = text.lstrip()
    return bool(stripped) and (stripped[0].isalpha() or stripped[0] == "#")


def read_binary_proto(path, message_class, what):
    raw = _read_bytes(path, what)
    message = message_class()
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError("truncated or corrupt %s (%s)" % (what, exc), path) from None
    bad = _undecodable_text_field(message)
    if bad is not None:
        raise FormatError("corrupt %s: text field %s is not valid UTF-8" % (what, bad), path)
    return message


def _is_repeated(field):
    # protobuf >= 5 has is_repeated (and 7 dropped label); older ones only label.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == FieldDescriptor.LABEL_REPEATED


def _undecodable_text_field(message, prefix=""):
    """The dotted name of the first string field whose bytes are not UTF-8, or None.

    The protobuf runtime parses such a field but hands it back as bytes, and it fails
    later, far from the file, when copied into another message (a V1 upgrade)."""
    for field, value in message.ListFields():
        name = prefix + field.name
        repeated = _is_repeated(field)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for i, item in enumerate(value if repeated else [value]):
                bad = _undecodable_text_field(item, "%s[%d]." % (name, i) if repeated
                                              else name + ".")
                if bad is not None:
                    return bad
        elif field.type == FieldDescriptor.TYPE_STRING:
            for item in value if repeated else [value]:
                if isinstance(item, bytes):
                    return name
    return None


def write_binary_proto(path, message):
    """Serialize any message to ``path`` atomically."""
    atomic_write(path, message.SerializeToString())


def read_caffemodel(path):
    """The NetParameter of a .caffemodel, upgraded from V1 ``layers`` when needed."""
    net = read_binary_proto(path, caffe_pb2.NetParameter, "caffemodel")
    if not len(net.layer) and not len(net.layers):
        raise FormatError("the caffemodel holds no layers (truncated, or not a caffemodel)",
                          path)
    return upgrade_net(net, os.fspath(path))


def write_caffemodel(path, net_param):
    write_binary_proto(path, net_param)


def read_binaryproto(path, dtype=None):
    """A .binaryproto blob (such as a mean image) as a numpy array of its shape."""
    blob = read_binary_proto(path, caffe_pb2.BlobProto, "binaryproto blob")
    try:
        return blob_to_array(blob, dtype=dtype)
    except ValueError as exc:
        raise FormatError(str(exc), path) from None


def write_binaryproto(path, array):
    write_binary_proto(path, array_to_blob(array))


def read_solverstate(path):
    return read_binary_proto(path, caffe_pb2.SolverState, "solverstate")


def write_solverstate(path, state):
    write_binary_proto(path, state)
