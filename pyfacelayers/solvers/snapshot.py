"""Snapshot files: Caffe's .caffemodel and .solverstate (binary proto, or HDF5 with
``snapshot_format: HDF5``: .caffemodel.h5 and .solverstate.h5), plus our side file.

``<prefix>_iter_<N>.solverstate`` is Caffe's SolverState (iter, learned_net, history,
current_step), readable by Caffe and read back from Caffe's own files. State Caffe
has no field for (layer iteration counters, RNG states) goes to
``<prefix>_iter_<N>.solverstate.pfl.json``, which Caffe ignores. Every write is atomic.

A snapshot is a set of files written in this order: the caffemodel, the side file
(which records the caffemodel's size and CRC-32), then the solverstate. The
solverstate is the commit mark: a set is complete when its solverstate exists, and
:func:`latest_snapshot` also checks that the three files belong together, so a process
killed at any moment leaves the previous snapshot usable and never a half-written file
under a final name.
"""

import json
import logging
import os
import re
import zlib

import numpy as np

from .. import backend
from ..fileio.blobs import blob_chunks, blob_shape, blob_to_array, message_chunks
from ..proto import caffe_pb2
from ..errors import PyFaceLayersError
from ..fileio import atomic_write, read_binary_proto, read_caffemodel
from ..fileio.hdf5_weights import is_hdf5_path, read_hdf5_weights
from .hdf5_state import read_state_hdf5, write_state_hdf5
from .lr_policy import SolverError

log = logging.getLogger("pyfacelayers")

EXTRA_SUFFIX = ".pfl.json"
EXTRA_FORMAT = "pyfacelayers-solverstate-extra"


def write_model(path, net, write_diff=False):
    """Write the net's caffemodel; returns its {"file", "bytes", "crc32"} for the side
    file. A ``.h5`` path is written as Caffe's HDF5 weights."""
    if is_hdf5_path(path):
        size, crc = net.save_hdf5(path, write_diff=write_diff)
        return {"file": os.path.basename(os.fspath(path)), "bytes": size, "crc32": crc}
    if hasattr(net, "caffemodel_chunks"):
        pieces = net.caffemodel_chunks(write_diff)
    else:  # a net object with pycaffe's to_proto only
        pieces = net.to_proto(write_diff=write_diff).SerializeToString()
    size, crc = atomic_write(path, pieces)
    return {"file": os.path.basename(os.fspath(path)), "bytes": size, "crc32": crc}


def file_crc32(path):
    """(size in bytes, CRC-32) of a file, read in pieces."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while True:
            piece = f.read(1 << 22)
            if not piece:
                return size, crc
            crc = zlib.crc32(piece, crc)
            size += len(piece)


def check_model(model_path, extra, state_path):
    """Raise SolverError unless the caffemodel is the one the side file recorded."""
    recorded = (extra or {}).get("caffemodel")
    if not recorded:
        return
    size, crc = file_crc32(model_path)
    if size != recorded.get("bytes") or crc != recorded.get("crc32"):
        raise SolverError("%s: the caffemodel %s is not the one this snapshot wrote (%d bytes, "
                          "CRC-32 %08x; the side file %s recorded %s bytes, CRC-32 %08x): was "
                          "it overwritten?" % (state_path, model_path, size, crc,
                                               extra_path(state_path), recorded.get("bytes"),
                                               recorded.get("crc32") or 0))


def write_state(path, iteration, learned_net, current_step, history):
    if is_hdf5_path(path):
        write_state_hdf5(path, iteration, learned_net, current_step,
                         [backend.to_numpy(h) for h in history])
        return
    state = caffe_pb2.SolverState()
    state.iter = iteration
    state.learned_net = learned_net
    state.current_step = current_step
    atomic_write(path, message_chunks(state, "history",
                                      [blob_chunks(backend.to_numpy(h)) for h in history]))


def read_state(path):
    """Caffe's SolverState message, or for a .h5 file an object with the same fields
    (its ``history`` holding arrays)."""
    if is_hdf5_path(path):
        return read_state_hdf5(path)
    return read_binary_proto(path, caffe_pb2.SolverState, "solverstate")


def read_weights(path):
    """Parse a caffemodel (binary or HDF5) in full: a check that it is readable."""
    return read_hdf5_weights(path) if is_hdf5_path(path) else read_caffemodel(path)


def extra_path(state_path):
    return os.fspath(state_path) + EXTRA_SUFFIX


def write_extra(state_path, extra):
    document = dict(extra, format=EXTRA_FORMAT, version=1)
    atomic_write(extra_path(state_path), json.dumps(document, indent=1, sort_keys=True))


def read_extra(state_path, iteration, strict=False):
    """The side file's dict, or None when absent (a Caffe snapshot) or stale (a
    SolverError for stale with ``strict``)."""
    path = extra_path(state_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            extra = json.load(f)
    except ValueError as exc:
        raise SolverError("%s: corrupt side file (%s)" % (path, exc)) from None
    if not isinstance(extra, dict) or extra.get("format") != EXTRA_FORMAT:
        raise SolverError("%s: not a pyfacelayers solverstate side file" % path)
    if extra.get("iter") != iteration:
        if strict:
            raise SolverError("%s is for iteration %s but the solverstate is at %d"
                              % (path, extra.get("iter"), iteration))
        log.warning("%s is for iteration %s but the solverstate is at %d; ignoring it",
                    path, extra.get("iter"), iteration)
        return None
    return extra


def resolve_learned_net(state_path, learned_net):
    """The caffemodel a solverstate names. Caffe wrote the path as given by the
    snapshot prefix (relative to its working directory); look next to the
    solverstate first, then where it says."""
    if os.path.isabs(learned_net):
        candidates = [learned_net]
    else:
        folder = os.path.dirname(os.path.abspath(state_path))
        candidates = [os.path.join(folder, learned_net),
                      os.path.join(folder, os.path.basename(learned_net)), learned_net]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise SolverError('%s: the weights it names, learned_net "%s", were not found (looked '
                      'at %s)' % (state_path, learned_net, ", ".join(candidates)))


def check_extra(extra, path, nets):
    """Raise SolverError unless the side file's layer and RNG states fit ``nets`` (the
    train net, then the test nets), trying each on a scratch copy: a corrupt side file
    is refused before restore changes anything."""
    if extra is None:
        return
    where = extra_path(path)
    recorded = extra.get("caffemodel")  # the caffemodel the set was written with
    if recorded is not None and not (
            isinstance(recorded, dict)
            and all(isinstance(recorded.get(k), int) for k in ("bytes", "crc32"))):
        raise SolverError("%s: corrupt side file (caffemodel must record integer bytes and "
                          "crc32, got %r)" % (where, recorded))

    keys = (("train_net_layer_states", "test_net_layer_states"),
            ("train_net_rng_states", "test_net_rng_states"))
    for train_key, test_key in keys:
        train = extra.get(train_key, {})
        tests = extra.get(test_key, [])
        if not isinstance(train, dict) or not isinstance(tests, list) or \
                not all(isinstance(t, dict) for t in tests):
            raise SolverError("%s: corrupt side file (%s must map layer names to states, "
                              "%s must be a list of such maps)" % (where, train_key, test_key))
        for net, states in zip(nets, [train] + tests):
            for layer in getattr(net, "layers", []):
                state = states.get(getattr(layer, "name", None))
                if state is None:
                    continue
                try:
                    if train_key == "train_net_layer_states":
                        _try_layer_state(layer, state)
                    else:
                        _try_rng_state(layer, state)
                except _BAD_STATE_ERRORS as exc:
                    raise SolverError('%s: corrupt side file: layer "%s": %s'
                                      % (where, layer.name, exc)) from None


def _try_layer_state(layer, state):
    if not hasattr(layer, "set_state"):
        return
    if not isinstance(state, dict):
        raise TypeError("the layer state must be a JSON object, got %r" % (state,))
    saved = layer.get_state()
    try:
        layer.set_state(state)
    finally:
        layer.set_state(saved)


def _try_rng_state(layer, state):
    bit_generator = getattr(getattr(layer, "rng", None), "bit_generator", None)
    if bit_generator is None:
        return
    type(bit_generator)().state = state  # a scratch generator: the layer's is untouched


# What a malformed state raises (numpy's bit generators raise all of these).
_BAD_STATE_ERRORS = (ValueError, TypeError, KeyError, OverflowError, AttributeError,
                     IndexError)


def history_arrays(state, path, shapes, sets, solver_type, dtype):
    """The history blobs of ``state`` as arrays, checked against the net's params."""
    expected = len(shapes) * sets
    if len(state.history) != expected:
        raise SolverError(
            "%s: the solverstate holds %d history blobs but this %s solver on this net needs "
            "%d (%d learnable params x %d); is it from another net or solver type?"
            % (path, len(state.history), solver_type, expected, len(shapes), sets))
    arrays = []
    for i, blob in enumerate(state.history):
        shape = tuple(shapes[i % len(shapes)])
        if isinstance(blob, np.ndarray):  # HDF5: already an array, N-D shape
            if blob.shape != shape:
                raise SolverError("%s: history blob %d has shape %s but learnable param %d "
                                  "of the net has shape %s"
                                  % (path, i, blob.shape, i % len(shapes), shape))
            arrays.append(np.ascontiguousarray(blob, dtype=dtype))
            continue
        stored = blob_shape(blob)
        legacy = any(blob.HasField(f) for f in ("num", "channels", "height", "width"))
        padded = (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else None
        if stored != shape and not (legacy and stored == padded):
            raise SolverError("%s: history blob %d has shape %s but learnable param %d of the "
                              "net has shape %s" % (path, i, stored, i % len(shapes), shape))
        try:
            values = blob_to_array(blob)
        except ValueError as exc:
            raise SolverError("%s: history blob %d: %s" % (path, i, exc)) from None
        arrays.append(np.ascontiguousarray(values.reshape(shape), dtype=dtype))
    return arrays


def snapshot_iterations(prefix):
    """{N: solverstate path} for the ``<prefix>_iter_<N>.solverstate`` (or
    ``.solverstate.h5``) files present."""
    prefix = os.fspath(prefix)
    folder = os.path.dirname(os.path.abspath(prefix))
    pattern = re.compile(r"%s_iter_([0-9]+)\.solverstate(\.h5)?\Z" % re.escape(os.path.basename(prefix)))
    found = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def verify_snapshot(state_path, iteration=None):
    """Check that a snapshot set is complete and consistent: the solverstate parses and
    holds ``iteration`` (from its name when None), its caffemodel exists, parses and
    (when our side file recorded it) has the recorded size and CRC-32, and the side
    file, when present, is for the same iteration. Raises SolverError (or a
    PyFaceLayersError / OSError from the readers) naming the problem."""
    state_path = os.fspath(state_path)
    if iteration is None:
        match = re.search(r"_iter_([0-9]+)\.solverstate(\.h5)?\Z", state_path)
        iteration = int(match.group(1)) if match else None
    state = read_state(state_path)
    if iteration is not None and state.iter != iteration:
        raise SolverError("%s: holds iteration %d, not %d as its name says"
                          % (state_path, state.iter, iteration))
    extra = read_extra(state_path, state.iter, strict=True)
    if state.learned_net:
        model = resolve_learned_net(state_path, state.learned_net)
        check_model(model, extra, state_path)
        read_weights(model)
    return state


def latest_snapshot(prefix):
    """The solverstate path of the newest complete snapshot written under ``prefix``
    (a solver's snapshot_prefix), or None when there is none. Incomplete or
    inconsistent sets (a process killed while writing them) are skipped with a
    warning."""
    for iteration, path in sorted(snapshot_iterations(prefix).items(), reverse=True):
        try:
            verify_snapshot(path, iteration)
        except (PyFaceLayersError, OSError) as exc:
            log.warning("skipping snapshot %s: %s", path, exc)
            continue
        return path
    return None
