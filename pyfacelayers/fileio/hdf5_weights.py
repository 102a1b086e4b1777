"""Caffe's HDF5 weights files (``.caffemodel.h5``: Net::ToHDF5 and
CopyTrainedLayersFromHDF5, pycaffe's ``net.save_hdf5`` / ``net.load_hdf5``).

Layout: a group ``data`` holding one group per layer of the net (layers without
parameters too), each with datasets ``"0"``, ``"1"``, ... for the layer's parameter
blobs in their full N-D shape and the net's dtype. A parameter shared with an earlier
layer is written by its owner only. With ``write_diff`` a group ``diff`` holds the
gradients the same way (shared ones included), as Caffe writes them.

Needs h5py (``pip install 'pyfacelayers[hdf5]'``).
"""

import io
import os

import numpy as np

from .. import limits
from ..errors import FormatError
from .atomic import atomic_write


def is_hdf5_path(path):
    """Caffe picks the HDF5 reader by the ``.h5`` suffix."""
    return os.fspath(path).endswith(".h5")


def require_h5py(path):
    try:
        import h5py
    except ImportError:
        raise ImportError("%s: HDF5 weights need the h5py package "
                          "(pip install 'pyfacelayers[hdf5]')" % path) from None
    return h5py


def open_hdf5(path):
    """(the h5py module, the file opened for reading); FileNotFoundError for a missing
    file, FormatError for one that is not HDF5."""
    h5py = require_h5py(path)
    if not os.path.exists(path):
        raise FileNotFoundError("no such file: %s" % os.fspath(path))
    try:
        return h5py, h5py.File(path, "r")
    except OSError as exc:
        raise FormatError("not a readable HDF5 file (%s)" % exc, os.fspath(path)) from None


def write_hdf5_weights(path, layers, write_diff=False):
    """Write ``layers`` — (name, [(array, diff array or None, owned)]) per layer, in
    net order — as Caffe's HDF5 weights, atomically. Returns (bytes, CRC-32)."""
    h5py = require_h5py(path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if write_diff else None
        for name, params in layers:
            layer_data = data.create_group(name)
            layer_diff = diff.create_group(name) if write_diff else None
            for j, (values, grads, owned) in enumerate(params):
                if owned:
                    layer_data.create_dataset(str(j), data=values)
                if write_diff:
                    layer_diff.create_dataset(str(j), data=grads)
    return atomic_write(path, buffer.getvalue())


def read_hdf5_weights(path):
    """{layer name: {param index: array}} from an HDF5 weights file, in the file's
    order. Clear errors for a missing file, a file that is not HDF5, or a layout that is
    not Caffe's."""
    h5py, handle = open_hdf5(path)
    path = os.fspath(path)
    with handle:
        data = handle.get("data")
        if not isinstance(data, h5py.Group):
            raise FormatError('no group "data": not Caffe HDF5 weights', path)
        layers = {}
        for name, group in data.items():
            if not isinstance(group, h5py.Group):
                raise FormatError('data/%s: expected a group of parameter datasets' % name,
                                  path)
            params = {}
            for key, dataset in group.items():
                if not key.isdigit() or not isinstance(dataset, h5py.Dataset):
                    raise FormatError('data/%s/%s: expected datasets named 0, 1, ...'
                                      % (name, key), path)
                if dataset.dtype.kind != "f":
                    raise FormatError("data/%s/%s: expected floating-point values, got %s"
                                      % (name, key, dataset.dtype), path)
                limits.check_array(dataset.shape, dataset.dtype,
                                   "%s: data/%s/%s" % (path, name, key))
                params[int(key)] = np.asarray(dataset[()])
            layers[name] = params
    return layers
