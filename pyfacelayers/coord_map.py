"""pycaffe's ``caffe.coord_map``: how the spatial coordinates of two net_spec tops relate,
and the Crop layer that aligns one with the other (as FCN-style scripts use it).

A coordinate map is a triple ``(axis, scale, shift)``: a position ``x`` in a layer's
input lands at ``scale * x + shift`` in its output, along the spatial axes from ``axis``
on (``axis`` None: any axis, for pointwise layers). ``scale`` and ``shift`` are numbers
or numpy arrays (one entry per spatial axis when the layer gives per-axis sizes).

    from pyfacelayers import layers as L
    from pyfacelayers.coord_map import crop
    n.score = crop(n.upscore, n.data)   # a Crop layer with the offset that aligns them

As in pycaffe, the checks of :func:`crop` and :func:`conv_params` raise AssertionError
(pycaffe uses ``assert``; here they are raised explicitly, so ``python -O`` keeps them).
"""

import numpy as np

from .net_spec import layers as L

# Layers that move no coordinate: their output position i is their input position i.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU",
                       "Log", "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale",
                       "Sigmoid", "Split", "TanH", "Threshold"]

_LEGACY_FIELDS = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(Exception):
    """The layer's type has no coordinate map (the walk does not pass through it)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes and cannot be composed."""


def _fields(fn, message):
    """The layer's fields of ``message`` (given as a dict) or, else, its own keywords."""
    return fn.params.get(message, fn.params)


def conv_params(fn):
    """(axis, stride, effective kernel extent, pad) of a Convolution, Deconvolution,
    Im2col or Pooling layer made by net_spec; each size as a 1-d array. The extent of a
    dilated kernel is (kernel_size - 1) * dilation + 1."""
    params = _fields(fn, "convolution_param")
    if params is fn.params and "pooling_param" in fn.params:
        params = fn.params["pooling_param"]
    if _LEGACY_FIELDS & set(params):
        raise AssertionError("cropping does not support legacy _h/_w params")
    if "kernel_size" not in params:
        raise KeyError("%s layer: kernel_size is needed for its coordinate map"
                       % fn.type_name)
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = _fields(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The (axis, scale, shift) map of one layer, input to output. Raises
    UndefinedMapException for a type without one."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        # Output i covers input stride*i - pad .. +extent; its centre maps back.
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == "Crop":
        axis, offset = crop_params(fn)
        # The map's axis counts from the last axis that is not a coordinate.
        return axis - 1, 1, -offset
    raise UndefinedMapException


def compose(base_map, next_map):
    """The map of ``base_map`` followed by ``next_map``: scales multiply; the further
    shift is scaled by the first map's scale."""
    axis1, scale1, shift1 = base_map
    axis2, scale2, shift2 = next_map
    if axis1 is None:
        axis = axis2
    elif axis2 is None or axis1 == axis2:
        axis = axis1
    else:
        raise AxisMismatchException
    return axis, scale1 * scale2, scale1 * shift2 + shift1


def inverse(coord_map):
    """The map that undoes ``coord_map`` (output to input)."""
    axis, scale, shift = coord_map
    return axis, 1 / scale, -shift / scale


def _mappable_bottoms(top):
    """The bottoms a walk goes through: all of them, except that a Crop layer's second
    bottom only gives the output's size, not its coordinates."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _walk_back(start):
    """{top: map from that top to ``start``} for every top reachable from ``start`` by
    going back through layers that have a coordinate map."""
    maps = {start: (None, 1, 0)}
    pending = [start]
    while pending:
        top = pending.pop()
        try:
            step = coord_map(top.fn) if _mappable_bottoms(top) else None
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            pending.append(bottom)
    return maps


def coord_map_from_to(top_from, top_to):
    """The (axis, scale, shift) map from ``top_from``'s coordinates to ``top_to``'s,
    through the nearest top both derive from. RuntimeError when they share none that
    spatial layers connect."""
    from_maps = _walk_back(top_from)
    to_maps = {top_to: (None, 1, 0)}
    pending = [top_to]
    while pending:
        top = pending.pop(0)
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            step = coord_map(top.fn) if _mappable_bottoms(top) else None
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            to_maps[bottom] = compose(to_maps[top], step)
            pending.append(bottom)
    raise RuntimeError("Could not compute map between tops; are they connected by "
                       "spatial layers?")


def crop(top_from, top_to):
    """A net_spec Crop layer that crops ``top_from`` to ``top_to``'s extent, with the
    axis and offset their coordinate map gives. The map must be a pure, non-positive,
    whole-number shift (AssertionError otherwise, as in pycaffe)."""
    axis, scale, shift = coord_map_from_to(top_from, top_to)
    scale, shift = np.asarray(scale), np.asarray(shift)
    if not (scale == 1).all():
        raise AssertionError("scale mismatch on crop (a = {})".format(scale))
    if not (shift <= 0).all():
        raise AssertionError("cannot crop negative offset (b = {})".format(shift))
    if not (np.round(shift) == shift).all():
        raise AssertionError("cannot crop noninteger offset (b = {})".format(shift))
    if axis is None:
        raise AssertionError("no spatial layer between the tops: nothing to crop")
    offsets = [int(v) for v in np.atleast_1d(-np.round(shift)).astype(int)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
