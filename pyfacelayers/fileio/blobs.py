"""BlobProto <-> numpy, with Caffe's legacy 4-D (num, channels, height, width) shapes."""

import math

import numpy as np

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
    array = np.asarray(array)
    blob = caffe_pb2.BlobProto()
    if legacy_shape:
        if array.ndim > 4:
            raise ValueError("a legacy blob shape has at most 4 axes, got %s" % (array.shape,))
        dims = (1,) * (4 - array.ndim) + tuple(array.shape)
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    if array.dtype == np.float64:
        blob.double_data.extend(array.ravel().tolist())
        if diff is not None:
            blob.double_diff.extend(np.asarray(diff, np.float64).ravel().tolist())
    else:
        blob.data.extend(array.astype(np.float32, copy=False).ravel().tolist())
        if diff is not None:
            blob.diff.extend(np.asarray(diff, np.float32).ravel().tolist())
    return blob


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
