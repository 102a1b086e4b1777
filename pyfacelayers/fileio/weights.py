"""Read a .caffemodel for its weights only: each layer's name, type, bottoms, tops and
blobs, never its layer-specific parameters.

Why: the Caffe forks number their sub-messages differently (margin-family.md 2.1:
happynear's normalize_param is 214, xialuxi's 170, the Angular-Triplet fork's 200;
145 is parameter_param in BVLC but st_loss_param in xialuxi's; ...), so parsing a
fork-written layer with our schema can misread a sub-message, or fail on it. Copying
weights needs none of them, so the layer bytes are filtered down to the fields every
fork numbers alike before protobuf sees them:
LayerParameter name (1), type (2), bottom (3), top (4), blobs (7); V1LayerParameter
bottom (2), top (3), name (4), type (5), blobs (6).
"""

import os

from google.protobuf.message import DecodeError

from ..errors import FormatError
from ..proto import caffe_pb2
from .binary import (PROTOBUF_LIMIT, _open_checked, _undecodable_text_field, parse_in_parts,
                     wire_fields)
from .upgrade import upgrade_net

LAYER_FIELDS = frozenset((1, 2, 3, 4, 7))
V1_LAYER_FIELDS = frozenset((2, 3, 4, 5, 6))
_NET_LAYER, _NET_V1_LAYERS, _NET_NAME = 100, 2, 1


def _kept_bytes(buf, start, end, keep, what, path, container):
    kept = bytearray()
    for number, _, field_start, _, field_end in wire_fields(buf, start, end, what, path,
                                                            container):
        if number in keep:
            kept += buf[field_start:field_end]
    return bytes(kept)


def _parse_layer(kept, message, what, path, label):
    if len(kept) > PROTOBUF_LIMIT:  # one blob at a time (binary.parse_in_parts)
        message.CopyFrom(parse_in_parts(kept, type(message), what, path))
        return
    try:
        message.ParseFromString(kept)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise FormatError("truncated or corrupt %s: %s: %s" % (what, label, exc),
                          path) from None


def read_weights(path):
    """The NetParameter of a caffemodel holding, per layer, only name, type, bottom,
    top and blobs (V1 ``layers`` upgraded). Any fork's caffemodel reads the same.
    A file that is recognisably something else (a mean file, a gzip file...) is named
    in the error."""
    try:
        return _read_weights(path)
    except FormatError as exc:
        from .binary import _named  # only on this error path
        raise _named(exc, path, "caffemodel") from None


def _read_weights(path):
    what = "caffemodel"
    mapped = _open_checked(path, what)
    path = os.fspath(path)
    net = caffe_pb2.NetParameter()
    try:
        for number, wire, field_start, body, end in wire_fields(
                mapped, 0, len(mapped), what, path, "NetParameter"):
            if wire != 2:
                continue
            if number == _NET_NAME:
                try:  # Merge: keeps the layers read so far
                    net.MergeFromString(bytes(mapped[field_start:end]))
                except (DecodeError, RuntimeError, ValueError) as exc:
                    raise FormatError("corrupt %s: the net name: %s" % (what, exc),
                                      path) from None
            elif number in (_NET_LAYER, _NET_V1_LAYERS):
                v1 = number == _NET_V1_LAYERS
                target = net.layers.add() if v1 else net.layer.add()
                index = len(net.layers if v1 else net.layer) - 1
                label = "NetParameter.%s[%d] (at byte %d)" % ("layers" if v1 else "layer",
                                                             index, body)
                kept = _kept_bytes(mapped, body, end, V1_LAYER_FIELDS if v1 else LAYER_FIELDS,
                                   what, path, label)
                _parse_layer(kept, target, what, path, label)
    finally:
        mapped.close()
    bad = _undecodable_text_field(net)
    if bad is not None:
        raise FormatError("corrupt %s: text field %s is not valid UTF-8" % (what, bad), path)
    if not len(net.layer) and not len(net.layers):
        raise FormatError("the caffemodel holds no layers (truncated, or not a caffemodel)",
                          path)
    return upgrade_net(net, path)
