"""Caffe's HDF5 solver states (``snapshot_format: HDF5``: ``.solverstate.h5``).

Layout, as Caffe's SnapshotSolverStateToHDF5 writes it: int datasets ``iter`` and
``current_step`` of shape (1,), a string dataset ``learned_net`` (the weights file, a
``.caffemodel.h5``), and a group ``history`` with datasets ``"0"``, ``"1"``, ... (the
solver's history blobs in learnable-parameter order, then the extra sets of Adam and
AdaDelta). Needs h5py.
"""

import io
import os

import numpy as np

from .. import limits
from ..errors import FormatError
from ..fileio.atomic import atomic_write
from ..fileio.hdf5_weights import open_hdf5, require_h5py


class Hdf5SolverState:
    """What a .solverstate.h5 holds (the fields of Caffe's SolverState message, with the
    history as arrays)."""

    def __init__(self, iteration, learned_net, current_step, history):
        self.iter = iteration
        self.learned_net = learned_net
        self.current_step = current_step
        self.history = history


def write_state_hdf5(path, iteration, learned_net, current_step, history):
    """Write the state atomically (built in memory, then one atomic file write)."""
    h5py = require_h5py(path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("iter", data=np.array([iteration], np.int32))
        f.create_dataset("learned_net", data=np.bytes_(learned_net.encode("utf-8")))
        f.create_dataset("current_step", data=np.array([current_step], np.int32))
        group = f.create_group("history")
        for i, values in enumerate(history):
            group.create_dataset(str(i), data=values)
    atomic_write(path, buffer.getvalue())


def _int(handle, name, path):
    dataset = handle.get(name)
    if dataset is None or dataset.dtype.kind not in "iu" or dataset.size != 1:
        raise FormatError('expected an integer dataset "%s" of one value' % name, path)
    return int(np.asarray(dataset[()]).reshape(-1)[0])


def read_state_hdf5(path):
    """An :class:`Hdf5SolverState` from a .solverstate.h5; FormatError naming what is
    missing or malformed."""
    h5py, handle = open_hdf5(path)
    path = os.fspath(path)
    with handle:
        iteration = _int(handle, "iter", path)
        current_step = _int(handle, "current_step", path) if "current_step" in handle else 0
        learned_net = ""
        if "learned_net" in handle:
            raw = handle["learned_net"][()]
            if isinstance(raw, np.ndarray):
                raw = raw.reshape(-1)[0] if raw.size == 1 else b""
            learned_net = (raw.decode("utf-8", "replace") if isinstance(raw, bytes)
                           else str(raw)).rstrip("\0")
        group = handle.get("history")
        if not isinstance(group, h5py.Group):
            raise FormatError('no group "history": not a Caffe HDF5 solver state', path)
        keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if keys != [str(i) for i in range(len(keys))]:
            raise FormatError("history: expected datasets named 0, 1, ..., got %s" % keys, path)
        history = []
        for key in keys:
            dataset = group[key]
            if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind != "f":
                raise FormatError("history/%s: expected a floating-point dataset" % key, path)
            limits.check_array(dataset.shape, dataset.dtype, "%s: history/%s" % (path, key))
            history.append(np.asarray(dataset[()]))
    return Hdf5SolverState(iteration, learned_net, current_step, history)
