"""Binary protobuf files: .caffemodel (NetParameter), .binaryproto (BlobProto, e.g. a
mean image) and .solverstate (SolverState). Writes are atomic."""

import mmap
import os

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from .. import limits
from ..errors import FormatError, ResourceLimitError
from ..proto import caffe_pb2, is_repeated
from .atomic import atomic_write
from .blobs import array_to_blob, blob_to_array
from .upgrade import upgrade_net

# protobuf parses at most 2 GiB - 1 bytes as one message.
PROTOBUF_LIMIT = (1 << 31) - 1
# Files at least this large are parsed one top-level sub-message at a time (each
# layer of a caffemodel, each history blob of a solverstate), so that a file over
# protobuf's limit still reads as long as each of those parts is under it.
STREAM_THRESHOLD = 1 << 30
# The repeated message fields read one by one: field number -> field name.
_SPLIT_FIELDS = {
    caffe_pb2.NetParameter: {100: "layer", 2: "layers"},
    caffe_pb2.SolverState: {3: "history"},
    caffe_pb2.LayerParameter: {7: "blobs"},
    caffe_pb2.V1LayerParameter: {6: "blobs"},
}


def _open_checked(path, what):
    """The file mapped read-only, after the checks that need no reading: exists, not
    empty, not larger than the memory limit, not text."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such file: %s" % path)
    size = os.stat(path).st_size
    if size == 0:
        raise FormatError("the file is empty, expected a binary %s" % what, path)
    limit = limits.memory_limit()
    if limit is not None and size > limit:
        raise ResourceLimitError(
            "%s: the %s is %s (%d bytes), over the memory limit of %s (%s) that reading it "
            "would need; refused before reading. If the file is right, set %s to a larger "
            "size (e.g. 64G)." % (path, what, limits.format_bytes(size), size,
                                  limits.format_bytes(limit), limits.limit_source(),
                                  limits.ENV_VAR), requested=size, limit=limit)
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if _looks_like_text(mapped[:4096]):
        mapped.close()
        raise FormatError("this is a text file, expected a binary %s "
                          "(is it a .prototxt?)" % what, path)
    return mapped


def read_bytes(path, what):
    """The bytes of a binary file, after _open_checked's checks (size, text)."""
    mapped = _open_checked(path, what)
    try:
        return mapped[:]
    finally:
        mapped.close()


def _looks_like_text(raw):
    head = raw[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = text.lstrip()
    return bool(stripped) and (stripped[0].isalpha() or stripped[0] == "#")


def read_binary_proto(path, message_class, what):
    mapped = _open_checked(path, what)
    try:
        if len(mapped) >= STREAM_THRESHOLD:
            message = parse_in_parts(mapped, message_class, what, path)
            raw = None
        else:
            raw = mapped[:]
    finally:
        mapped.close()
    if raw is not None:
        message = message_class()
        try:
            message.ParseFromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise FormatError("truncated or corrupt %s (%s)" % (what, exc), path) from None
    bad = _undecodable_text_field(message)
    if bad is not None:
        raise FormatError("corrupt %s: text field %s is not valid UTF-8" % (what, bad), path)
    return message


def _varint(buf, pos, end):
    value = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def wire_fields(buf, start, end, what, path, container):
    """(number, wire type, field start, body start, field end) of each protobuf field
    in ``buf[start:end]``; a malformed one is a FormatError naming the byte and the
    ``container`` message."""
    pos = start
    while pos < end:
        field_start = pos
        try:
            key, pos = _varint(buf, pos, end)
            number, wire = key >> 3, key & 7
            if number == 0:
                raise ValueError("field number 0")
            body = pos
            if wire == 0:
                _, pos = _varint(buf, pos, end)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, body = _varint(buf, pos, end)
                pos = body + length
            else:
                raise ValueError("unsupported wire type %d" % wire)
            if pos > end:
                raise ValueError("a field runs past the end of the data")
        except ValueError as exc:
            raise FormatError("truncated or corrupt %s: %s at byte %d (in a %s)"
                              % (what, exc, field_start, container), path) from None
        yield number, wire, field_start, body, pos


def parse_in_parts(buf, message_class, what, path=None, start=0, end=None):
    """Parse ``buf[start:end]`` (bytes, or an mmap) as ``message_class`` without handing
    protobuf more than one part at a time: each element of the repeated fields in
    _SPLIT_FIELDS is parsed on its own (recursively when it is itself over the limit),
    the remaining fields together. Gives the same message as ParseFromString."""
    end = len(buf) if end is None else end
    split = _SPLIT_FIELDS.get(message_class, {})
    message, rest = message_class(), bytearray()
    name = message_class.DESCRIPTOR.name
    counts = {}
    for number, wire, field_start, body, pos in wire_fields(buf, start, end, what, path,
                                                            name):
        length = pos - body
        if wire != 2 or number not in split:
            rest += buf[field_start:pos]
            continue
        field = split[number]
        index = counts.get(field, 0)
        counts[field] = index + 1
        target = getattr(message, field).add()
        part_class = type(target)
        label = "%s.%s[%d] (at byte %d, %d bytes)" % (name, field, index, body, length)
        if length > PROTOBUF_LIMIT:
            if part_class not in _SPLIT_FIELDS:
                raise FormatError(
                    "%s is over protobuf's 2 GiB limit for one message and cannot be read"
                    % label, path)
            target.CopyFrom(parse_in_parts(buf, part_class, what, path, body, pos))
            continue
        try:
            target.ParseFromString(bytes(buf[body:pos]))
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise FormatError("truncated or corrupt %s: %s: %s" % (what, label, exc),
                              path) from None
    if len(rest) > PROTOBUF_LIMIT:
        raise FormatError("the fields of a %s other than %s take %d bytes, over protobuf's "
                          "2 GiB limit" % (name, ", ".join(split.values()) or "-",
                                           len(rest)), path)
    others = message_class()
    try:
        others.ParseFromString(bytes(rest))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError("truncated or corrupt %s (%s)" % (what, exc), path) from None
    message.MergeFrom(others)
    return message


def _undecodable_text_field(message, prefix=""):
    """The dotted name of the first string field whose bytes are not UTF-8, or None.

    The protobuf runtime parses such a field but hands it back as bytes, and it fails
    later, far from the file, when copied into another message (a V1 upgrade)."""
    for field, value in message.ListFields():
        name = prefix + field.name
        repeated = is_repeated(field)
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
    try:
        net = read_binary_proto(path, caffe_pb2.NetParameter, "caffemodel")
    except FormatError as exc:
        raise _named(exc, path, "caffemodel") from None
    if not len(net.layer) and not len(net.layers):
        raise _named(FormatError("the caffemodel holds no layers (truncated, or not a "
                                 "caffemodel)", path), path, "caffemodel")
    return upgrade_net(net, os.fspath(path))


def _named(error, path, expected):
    """``error`` reworded when the file is recognisably something else (a mean file
    given as weights, a gzip file, ...): what it is, and what was expected."""
    from .identify import identify_binary  # only on this error path
    try:
        found = identify_binary(read_bytes(path, expected))
    except (FormatError, OSError, ResourceLimitError):
        return error
    if found.kind == expected or (found.kind == "other"
                                  and found.description.startswith("a binary file")):
        return error  # the file is what was expected (a damaged one), or unrecognised
    return FormatError("this is %s, expected a %s" % (found.description, expected), path)


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
