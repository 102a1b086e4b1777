"""Text prototxt files: nets and solvers, read (with legacy upgrade) and written."""

import os
import re

from google.protobuf import text_format

from .. import limits
from ..errors import FormatError, ResourceLimitError
from ..proto import caffe_pb2
from .atomic import atomic_write
from .upgrade import upgrade_net, upgrade_solver

_LOCATION = re.compile(r"^(\d+):(\d+)\s*:\s*(.*)$", re.S)


def read_text_file(path):
    """The text of a prototxt file; a clear error for a missing or binary file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such file: %s" % path)
    size = os.stat(path).st_size
    limit = limits.memory_limit()
    if limit is not None and size > limit:
        raise ResourceLimitError(
            "%s: the text file is %s, over the memory limit of %s (%s) that parsing it "
            "would need; refused before reading. If the file is right, raise the limit "
            "with %s" % (path, limits.format_bytes(size), limits.format_bytes(limit),
                         limits.limit_source(), limits.ENV_VAR), requested=size, limit=limit)
    with open(path, "rb") as f:
        head = f.read(4096)
        if b"\x00" in head:  # binary: say so before reading the rest
            raw = head
        else:
            raw = head + f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        from .identify import MAGIC
        known = next((what for magic, what in MAGIC if raw.startswith(magic)), None)
        if known:
            raise FormatError("this is %s, expected a text .prototxt" % known, path)
        raise FormatError("this is a binary file, expected a text .prototxt "
                          "(is it a .caffemodel? load weights with copy_from / --weights)", path)
    return text


def read_list_file(path, what):
    """The text of a plain list file (image list, pairs file); FormatError naming the
    file when it cannot be read or is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise FormatError("cannot read %s: %s" % (what, exc.strerror), path=path) from None
    except UnicodeDecodeError as exc:
        raise FormatError("not a text file (%s)" % exc.reason, path=path) from None


def parse_text(text, message, path="<string>"):
    """Parse prototxt ``text`` into ``message``; errors carry file, line and column."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        m = _LOCATION.match(str(exc))
        if m:
            raise FormatError(m.group(3), path, int(m.group(1)), int(m.group(2))) from None
        raise FormatError(str(exc), path) from None
    return message


def _looks_like_path(source):
    return "\n" not in source and "{" not in source and ":" not in source.split("/")[-1]


def _read(source, message_class, upgrade):
    source = os.fspath(source)
    if os.path.exists(source) or _looks_like_path(source):
        text, where = read_text_file(source), source
    else:
        text, where = source, "<string>"
    try:
        message = parse_text(text, message_class(), where)
    except FormatError as exc:
        raise _wrong_kind(exc, text, message_class) from None
    return upgrade(message, where)


def _wrong_kind(error, text, expected_class):
    """``error`` (a parse error) reworded when the text is another Caffe message: a
    solver given as a net, a layer without its ``layer { }``, ..."""
    from .identify import TEXT_KINDS, identify_text  # only on this error path
    found = identify_text(text)
    if found.message is None or isinstance(found.message, expected_class):
        return error
    expected = next((d for _, cls, d in TEXT_KINDS if cls is expected_class),
                    expected_class.DESCRIPTOR.name)
    return FormatError("this is %s, expected %s (%s)"
                       % (found.description, expected, error.reason),
                       error.path, error.line, error.column)


def read_net(source):
    """A NetParameter from a .prototxt path or prototxt text, upgraded to the current form."""
    return _read(source, caffe_pb2.NetParameter, upgrade_net)


def read_solver(source):
    """A SolverParameter from a solver .prototxt path or text (``solver_type`` upgraded)."""
    return _read(source, caffe_pb2.SolverParameter, upgrade_solver)


def message_to_text(message):
    return text_format.MessageToString(message)


def write_prototxt(path, message):
    """Write any Caffe message as prototxt text, atomically."""
    atomic_write(path, message_to_text(message))
