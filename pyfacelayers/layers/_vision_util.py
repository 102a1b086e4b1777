"""Small helpers shared by the vision layers: filling parameter blobs, and asking
whether a parameter wants its gradient."""

from ..blob import Blob


def new_param_blob(layer, shape, filler_param, what):
    """A Blob of ``shape`` in the layer's dtype, filled by ``filler_param``."""
    from ..fillers import fill

    try:
        values = fill(filler_param, shape, layer.dtype, layer.rng)
    except ValueError as exc:
        raise layer.error("%s: %s" % (what, exc)) from None
    blob = Blob(shape, dtype=layer.dtype)
    blob.data[...] = values
    return blob


def wants_param_grad(layer, index):
    """Caffe's param_propagate_down(index); every parameter by default.

    The net may set ``layer.param_propagate_down`` (a list of bools) to skip work
    for frozen parameters (lr_mult 0).
    """
    flags = getattr(layer, "param_propagate_down", None)
    if flags is None or index >= len(flags):
        return True
    return bool(flags[index])
