"""What a file holds, told from its content: which Caffe message a prototxt or binary
protobuf file parses as, or which other well-known format it is. Used by ``pyfacelayers
info`` and by the readers' errors, so that a file given in the wrong place is named for
what it is ("a solver prototxt", "a binaryproto blob of shape 1x3x112x96 (a mean
file?)") next to what was expected."""

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from ..proto import caffe_pb2

# Message classes a prototxt may hold, tried in this order.
TEXT_KINDS = (
    ("net", caffe_pb2.NetParameter, "a net prototxt (NetParameter)"),
    ("solver", caffe_pb2.SolverParameter, "a solver prototxt (SolverParameter)"),
    ("blob", caffe_pb2.BlobProto, "a blob written as text (BlobProto)"),
    ("solverstate", caffe_pb2.SolverState, "a solver state written as text (SolverState)"),
    ("layer", caffe_pb2.LayerParameter,
     "a single layer's fields (LayerParameter) without the enclosing layer { }"),
)

# Leading bytes of common formats that are not Caffe's.
MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint or a numpy .npz?)"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x80\x02", "a Python pickle"),
    (b"\x80\x04", "a Python pickle"),
    (b"ONNX", "an ONNX model"),
)


class Identified:
    """``kind`` (net, solver, caffemodel, binaryproto, solverstate, blob, layer, other,
    empty), the parsed ``message`` (None for kind other/empty) and a ``description``
    that reads after "this is"."""

    def __init__(self, kind, message, description):
        self.kind, self.message, self.description = kind, message, description

    def __repr__(self):
        return "Identified(%r, %r)" % (self.kind, self.description)


def identify_text(text):
    """The first message of TEXT_KINDS that ``text`` parses as (a net wins for text any
    of them would take), else kind "other"."""
    if not _top_level_names(text):
        return Identified("empty", None, "an empty prototxt (only comments or blanks)")
    for kind, cls, description in TEXT_KINDS:
        message = cls()
        try:
            text_format.Parse(text, message)
        except text_format.ParseError:
            continue
        if kind == "net" and _net_weights(message):
            description = ("a net with its weights written as text (a caffemodel as "
                           "prototxt: %d stored values)" % _net_weights(message))
        elif kind == "blob":
            description += " of shape %s" % _shape_text(message)
        return Identified(kind, message, description)
    names = _top_level_names(text)
    return Identified("other", None, "a text file whose top-level fields (%s) fit no Caffe "
                      "message" % ", ".join(names[:6]))


def identify_binary(raw):
    """What binary bytes hold: a known non-Caffe format by its magic bytes, else the
    Caffe message they parse as with content that makes sense for it."""
    for magic, description in MAGIC:
        if raw.startswith(magic):
            return Identified("other", None, description)
    net = _parse(caffe_pb2.NetParameter, raw)
    if net is not None and _layers_look_real(net):
        return Identified("caffemodel", net, "a caffemodel (binary NetParameter, %d layers)"
                          % (len(net.layer) or len(net.layers)))
    state = _parse(caffe_pb2.SolverState, raw)
    if state is not None and (state.learned_net.endswith((".caffemodel", ".h5"))
                              or (state.HasField("iter") and len(state.history))):
        return Identified("solverstate", state, "a solverstate (SolverState at iteration %d)"
                          % state.iter)
    blob = _parse(caffe_pb2.BlobProto, raw)
    if blob is not None and _blob_is_whole(blob):
        return Identified("binaryproto", blob, "a binaryproto blob (BlobProto) of shape %s "
                          "(a mean file?)" % _shape_text(blob))
    return Identified("other", None, "a binary file that is no Caffe message")


def _parse(cls, raw):
    message = cls()
    try:
        message.ParseFromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return None
    return message


def _layers_look_real(net):
    layers = list(net.layer) or list(net.layers)
    return bool(layers) and all(layer.name or layer.type for layer in layers)


def _blob_shape(blob):
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(blob.shape.dim)


def _blob_is_whole(blob):
    shape = _blob_shape(blob)
    count = 1
    for d in shape:
        count *= max(int(d), 0)
    stored = max(len(blob.data), len(blob.double_data))
    return bool(shape) and stored > 0 and stored == count


def _shape_text(blob):
    return "x".join(str(d) for d in _blob_shape(blob)) or "()"


def _net_weights(net):
    return sum(len(b.data) + len(b.double_data) for layer in list(net.layer) + list(net.layers)
               for b in layer.blobs)


def _top_level_names(text):
    """The field names at nesting depth 0, in order, without repeats (comments and
    quoted strings skipped)."""
    names, depth, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "\"'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
        elif c in "{<":
            depth += 1
        elif c in "}>":
            depth -= 1
        elif (c.isalpha() or c == "_") and depth == 0:
            start = i
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            rest = text[i:i + 64].lstrip()
            if rest[:1] in (":", "{", "<") and text[start:i] not in names:
                names.append(text[start:i])
            continue
        i += 1
    return names
