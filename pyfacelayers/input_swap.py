"""Swap a net's data layers for Input layers, so a training net runs on the caller's
arrays (``net.forward(data=..., label=...)`` or by writing ``net.blobs[...]``).

Shapes come from the data layer's own parameters where they say them (ImageData's
new_height/new_width or crop_size, MemoryData's dims, WindowData's crop) and from the
``shapes`` argument otherwise (a Data layer's image size lives in its database).
"""

from .errors import NetError
from .proto import caffe_pb2

DATA_LAYER_TYPES = ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData")


def _known_shapes(layer):
    """{top name: shape} that the layer's parameters determine."""
    shapes = {}
    tops = list(layer.top)
    crop = layer.transform_param.crop_size
    if layer.type == "ImageData":
        p = layer.image_data_param
        channels = 3 if p.is_color else 1
        h, w = (crop, crop) if crop else (p.new_height, p.new_width)
        if h and w:
            shapes[tops[0]] = (p.batch_size, channels, h, w)
    elif layer.type == "MemoryData":
        p = layer.memory_data_param
        h, w = (crop, crop) if crop else (p.height, p.width)
        shapes[tops[0]] = (p.batch_size, p.channels, h, w)
    elif layer.type == "WindowData":
        p = layer.window_data_param
        if p.crop_size or crop:
            size = p.crop_size or crop
            shapes[tops[0]] = (p.batch_size, 3, size, size)
    batch = _batch_size(layer)
    if batch and len(tops) > 1:
        shapes[tops[1]] = (batch,)
    return shapes


def _batch_size(layer):
    for field in ("data_param", "image_data_param", "memory_data_param",
                  "window_data_param", "hdf5_data_param"):
        if layer.HasField(field):
            return getattr(layer, field).batch_size
    return 0


def swap_data_layers(net_param, shapes=None):
    """A copy of ``net_param`` whose data layers are Input layers.

    ``shapes`` maps a top name to its shape (``{"data": (64, 1, 28, 28)}``); it
    overrides what the layers say.
    """
    shapes = dict(shapes or {})
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    for layer in out.layer:
        if layer.type not in DATA_LAYER_TYPES:
            continue
        known = _known_shapes(layer)
        known.update({top: tuple(shapes[top]) for top in layer.top if top in shapes})
        missing = [top for top in layer.top if top not in known]
        if missing:
            raise NetError('data layer "%s" (%s): the shape of top(s) %s is not in its '
                           'parameters; pass shapes={"%s": (N, C, H, W), ...}'
                           % (layer.name, layer.type, ", ".join(missing), missing[0]))
        replacement = caffe_pb2.LayerParameter(name=layer.name, type="Input",
                                               top=list(layer.top))
        replacement.include.extend(layer.include)
        replacement.exclude.extend(layer.exclude)
        for top in layer.top:
            replacement.input_param.shape.add().dim.extend(int(d) for d in known[top])
        layer.CopyFrom(replacement)
    return out
