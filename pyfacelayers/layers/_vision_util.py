"""Small helpers shared by the vision layers: filling parameter blobs, and asking
whether a parameter wants its gradient."""

from ..blob import Blob
from ..proto import is_repeated


def new_param_blob(layer, shape, filler_param, what):
    """A Blob of ``shape`` in the layer's dtype, filled by ``filler_param``."""
    from ..fillers import fill

    # The blob first: its size is checked against the memory limit before the
    # filler allocates its values.
    label = "param %d (%s)" % (len(layer.blobs or ()), what.replace("_filler", "") or "param")
    blob = Blob(shape, dtype=layer.dtype, label=label)
    try:
        values = fill(filler_param, shape, layer.dtype, layer.rng)
    except ValueError as exc:
        raise layer.error("%s: %s" % (what, exc)) from None
    blob.data = values  # the setter moves host values to the device (cupy refuses [...] =)
    return blob


def wants_param_grad(layer, index):
    """Caffe's param_propagate_down(index); every parameter for a layer used alone.

    A Net sets ``layer.param_propagate_down`` (a list of bools) by Caffe's rule:
    False for a parameter with lr_mult 0 unless the net has ``force_backward``.
    """
    flags = getattr(layer, "param_propagate_down", None)
    if flags is None or index >= len(flags):
        return True
    return bool(flags[index])


# Caffe reads kernel, stride, pad and dilation (uint32 in the schema) into C++ ints.
INT32_MAX = 2147483647


def check_int_sizes(layer, param_name, fields):
    """Refuse (LayerError naming the field) a size over INT32_MAX, which the schema's
    uint32 allows: Caffe would read it as a negative int, and the kernels cannot take
    it. ``param_name``: the layer's message (``convolution_param``); ``fields``: the
    names of its fields to check, repeated or single (checked when set)."""
    message = getattr(layer.param, param_name)
    for name in fields:
        if is_repeated(message.DESCRIPTOR.fields_by_name[name]):
            values = list(getattr(message, name))
        else:
            values = [getattr(message, name)] if message.HasField(name) else []
        for i, value in enumerate(values):
            if value > INT32_MAX:
                index = "[%d]" % i if len(values) > 1 else ""
                raise layer.error("%s.%s%s is %d, over %d: Caffe reads it into a 32-bit "
                                  "int (where it would be negative)"
                                  % (param_name, name, index, value, INT32_MAX))


def broadcast_axes(layer, axis_param, num_axes_param, bottom, what):
    """Scale/Bias parameter placement: (axis, shape of the parameter blob).

    The parameter covers ``num_axes`` axes of ``bottom`` from ``axis`` (-1: to the end).
    """
    shape = bottom.shape
    n = len(shape)
    if not -n <= axis_param < n:
        raise layer.error("axis %d out of range for a %d-D bottom %s" % (axis_param, n, shape))
    axis = axis_param % n
    if num_axes_param < -1:
        raise layer.error("num_axes must be >= 0, or -1 to extend to the end of bottom[0]; "
                          "got %d" % num_axes_param)
    if num_axes_param >= 0 and n < axis + num_axes_param:
        raise layer.error("%s blob's shape extends past bottom[0]'s shape %s when applied "
                          "from axis %d over %d axes" % (what, shape, axis, num_axes_param))
    end = n if num_axes_param == -1 else axis + num_axes_param
    return axis, tuple(shape[axis:end])


def outer_dim_inner(layer, bottom_shape, param_shape, axis_param, what):
    """(outer, dim, inner) so that bottom reshapes to (outer, dim, inner) and the
    parameter (of ``param_shape``) to (1, dim, 1). Checks the shapes agree."""
    n = len(bottom_shape)
    if len(param_shape) == 0:
        axis = 0          # a scalar applies to everything
    else:
        if not -n <= axis_param < n:
            raise layer.error("axis %d out of range for a %d-D bottom %s"
                              % (axis_param, n, bottom_shape))
        axis = axis_param % n
    end = axis + len(param_shape)
    if end > n or tuple(bottom_shape[axis:end]) != tuple(param_shape):
        raise layer.error("%s shape %s does not match bottom[0] shape %s from axis %d"
                          % (what, tuple(param_shape), tuple(bottom_shape), axis))
    prod = 1
    outer = 1
    for d in bottom_shape[:axis]:
        outer *= d
    for d in param_shape:
        prod *= d
    inner = 1
    for d in bottom_shape[end:]:
        inner *= d
    return outer, prod, inner
