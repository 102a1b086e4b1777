"""BlobProto <-> numpy, with Caffe's legacy 4-D (num, channels, height, width) shapes."""

import math

import numpy as np
from google.protobuf import unknown_fields

from ..proto import caffe_pb2


def blob_shape(blob):
    """The shape of a BlobProto: ``shape.dim`` when set, else legacy num/channels/height/width."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    # No shape at all: a flat blob of whatever data it holds (as Caffe treats 1-D).
    return (max(len(blob.data), len(blob.double_data)),)


def blob_to_array(blob, dtype=None, diff=False):
    """The data (or diff) of a BlobProto as a numpy array of its shape.

    Reads ``double_data`` when ``data`` is empty (a Net<double> wrote it). ``dtype``
    defaults to float32 for ``data`` and float64 for ``double_data``.
    """
    single, double = (blob.diff, blob.double_diff) if diff else (blob.data, blob.double_data)
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ValueError("blob shape %s has a negative dimension" % (shape,))
    # Checked before converting: the stored length must be the shape's count exactly.
    count = math.prod(shape)  # Python ints: no overflow for absurd dimensions
    use_double = len(double) > 0 and len(single) == 0
    stored = len(double) if use_double else len(single)
    if stored != count:
        field = ("double_" if use_double else "") + ("diff" if diff else "data")
        raise ValueError("blob holds %d values in %s but its shape %s needs %d"
                         % (stored, field, shape, count))
    values = np.array(double if use_double else single,
                      dtype=np.float64 if use_double else np.float32)
    values = values.reshape(shape)
    return values if dtype is None else values.astype(dtype, copy=False)


def array_to_blob(array, diff=None, legacy_shape=False):
    """A BlobProto holding ``array`` (float64 arrays go to ``double_data``).

    ``legacy_shape`` writes num/channels/height/width (at most 4 axes, padded on the
    left with 1s as old Caffe did) instead of ``shape``.
    """
    blob = caffe_pb2.BlobProto()
    fill_blob(blob, array, diff, legacy_shape)
    return blob


def fill_blob(blob, array, diff=None, legacy_shape=False):
    """Write ``array`` (and ``diff``) into the empty BlobProto ``blob`` (such as
    ``layer.blobs.add()``), as :func:`array_to_blob` does, without a copy."""
    blob.MergeFromString(encode_blob(array, diff, legacy_shape))


def encode_blob(array, diff=None, legacy_shape=False):
    """The serialized BlobProto of :func:`array_to_blob` (see :func:`blob_chunks`)."""
    return b"".join(blob_chunks(array, diff, legacy_shape))


def blob_chunks(array, diff=None, legacy_shape=False):
    """The serialized BlobProto of :func:`array_to_blob` as a list of bytes-like pieces
    whose concatenation is the message; the values are the arrays' own memory.

    Filling the repeated float fields from Python goes value by value (seconds for a
    100 MB net); the packed wire form is the little-endian array itself, so it is
    used as it is, in field-number order as protobuf writes it (the bytes equal
    protobuf's own serialization).
    """
    array = np.asarray(array)
    parts = []
    if legacy_shape:
        if array.ndim > 4:
            raise ValueError("a legacy blob shape has at most 4 axes, got %s" % (array.shape,))
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        for number, value in enumerate(dims, 1):  # num, channels, height, width (int32)
            parts.append(_key(number, 0) + _varint(int(value) & _INT64_MASK))
    double = array.dtype == np.float64
    wire = "<f8" if double else "<f4"
    values = array.astype(wire, copy=False)
    diffs = None if diff is None else np.asarray(diff).astype(wire, copy=False)
    if not double:
        parts += _packed(5, values) + _packed(6, diffs)
    if not legacy_shape:
        dims = b"".join(_varint(int(d) & _INT64_MASK) for d in array.shape)
        packed = _key(1, 2) + _varint(len(dims)) + dims if dims else b""
        parts.append(_key(7, 2) + _varint(len(packed)) + packed)
    if double:
        parts += _packed(8, values) + _packed(9, diffs)
    return parts


_INT64_MASK = (1 << 64) - 1


def _varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number, wire_type):
    return _varint((number << 3) | wire_type)


def _packed(number, values):
    """A packed repeated float/double field (absent when empty, as protobuf writes it):
    [key and length, the values' bytes]."""
    if values is None or values.size == 0:
        return []
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    return [_key(number, 2) + _varint(raw.nbytes), raw]


def message_chunks(message, field, elements):
    """The serialization of ``message`` with ``elements`` (each a list of bytes-like
    pieces of one serialized sub-message) as its repeated message ``field``, which
    must be empty in ``message``: the fields numbered below ``field``, the elements,
    then the others, the order protobuf writes. Returns a list of pieces."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    low, high = type(message)(), type(message)()
    low.CopyFrom(message)
    high.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        (high if descriptor.number < number else low).ClearField(descriptor.name)
    if len(unknown_fields.UnknownFieldSet(message)):
        # Unknown fields go last and would be in both halves; let protobuf do it all.
        whole = type(message)()
        whole.CopyFrom(message)
        for pieces in elements:
            getattr(whole, field).add().MergeFromString(b"".join(pieces))
        return [whole.SerializeToString()]
    out = [low.SerializeToString()]
    for pieces in elements:
        out.append(_key(number, 2) + _varint(sum(_nbytes(p) for p in pieces)))
        out += pieces
    out.append(high.SerializeToString())
    return out


def _nbytes(piece):
    return piece.nbytes if isinstance(piece, np.ndarray) else len(piece)


def legacy_shape_matches(blob, shape):
    """Caffe's Blob::ShapeEquals: does a stored BlobProto fit a blob of ``shape``?

    With legacy num/channels/height/width set, the four numbers are compared with
    ``shape`` aligned to the right, missing leading axes counting as 1 (so an
    InnerProduct weight (N, K) matches 1,1,N,K but not N,K,1,1). Otherwise
    ``shape.dim`` must equal ``shape`` exactly.
    """
    shape = tuple(int(d) for d in shape)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        if len(shape) > 4:
            return False
        padded = (1,) * (4 - len(shape)) + shape
        return padded == (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim) == shape
