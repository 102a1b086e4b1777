"""Small helpers shared by the simple layers (axis checks, loss weight, labels)."""

import numpy as np

from ..backend import to_numpy


def canonical_axis(layer, blob, axis, what="axis"):
    """``blob.canonical_axis(axis)``, but a bad axis raises a LayerError naming the layer."""
    try:
        return blob.canonical_axis(int(axis))
    except ValueError:
        raise layer.error("%s %d is out of range for a bottom of shape %s"
                          % (what, axis, blob.shape)) from None


def legacy_or_axis(layer, param, legacy_field, blob):
    """Concat/Slice: the axis from ``axis`` or from the legacy unsigned ``*_dim`` field."""
    if param.HasField("axis") and param.HasField(legacy_field):
        raise layer.error("set either axis or %s, not both" % legacy_field)
    if param.HasField(legacy_field):
        axis = getattr(param, legacy_field)
        if axis >= len(blob.shape):
            raise layer.error("%s %d is out of range for a bottom of shape %s"
                              % (legacy_field, axis, blob.shape))
        return axis
    return canonical_axis(layer, blob, param.axis)


def loss_weight(top_blob):
    """The loss weight the net wrote into a loss top's diff (Caffe's rule)."""
    return float(top_blob.diff.reshape(-1)[0])


def checked_labels(layer, xp, label_data, rows, inner, num_classes, ignore_label):
    """Labels as an int array of shape (rows, inner), and the mask of counted ones.

    Caffe reads float labels with ``static_cast<int>`` (truncation toward zero).
    ``ignore_label`` is None when the layer has none. A label that is neither in
    ``[0, num_classes)`` nor the ignore label raises a LayerError naming the row.
    """
    labels = label_data.reshape(rows, inner)
    finite = xp.isfinite(labels)
    as_int = xp.trunc(xp.where(finite, labels, 0)).astype(np.int64)
    if ignore_label is None:
        ignored = xp.zeros(as_int.shape, dtype=bool)
    else:
        ignored = finite & (as_int == ignore_label)
    ok = finite & (ignored | ((as_int >= 0) & (as_int < num_classes)))

    def verdict(ok, labels):
        if ok.all():
            return
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        value = float(labels[bad])
        where = "row %d" % bad[0] if inner == 1 else "row %d, position %d" % bad
        ignore = "" if ignore_label is None else " or ignore_label %d" % ignore_label
        raise layer.error("label %r at %s is out of range: expected an integer in "
                          "[0, %d)%s" % (value, where, num_classes, ignore))

    if xp is not np and layer.defer_checks:
        # Training on the GPU: read the verdict one iteration later (Layer.defer_checks),
        # so the host does not wait for the device here.
        from ..gpu.pending import HostCopy
        layer.settle_checks()
        copy = HostCopy(ok, labels)
        layer.defer_check(lambda: verdict(*copy.values()))
    else:
        verdict(to_numpy(ok), to_numpy(labels))
    valid = ~ignored
    return as_int, valid

