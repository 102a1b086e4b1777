"""Snapshot files: Caffe's binary .caffemodel and .solverstate, plus our side file.

``<prefix>_iter_<N>.solverstate`` is Caffe's SolverState (iter, learned_net, history,
current_step), readable by Caffe and read back from Caffe's own files. State Caffe
has no field for (layer iteration counters, RNG states) goes to
``<prefix>_iter_<N>.solverstate.pfl.json``, which Caffe ignores. Every write is atomic.
"""

import json
import logging
import os

import numpy as np

from .. import backend
from ..fileio.blobs import array_to_blob, blob_shape, blob_to_array
from ..proto import caffe_pb2
from ..fileio import atomic_write, read_binary_proto, write_binary_proto
from .lr_policy import SolverError

log = logging.getLogger("pyfacelayers")

EXTRA_SUFFIX = ".pfl.json"
EXTRA_FORMAT = "pyfacelayers-solverstate-extra"


def write_model(path, net_param):
    write_binary_proto(path, net_param)


def write_state(path, iteration, learned_net, current_step, history):
    state = caffe_pb2.SolverState()
    state.iter = iteration
    state.learned_net = learned_net
    state.current_step = current_step
    for h in history:
        state.history.add().CopyFrom(array_to_blob(backend.to_numpy(h)))
    write_binary_proto(path, state)


def read_state(path):
    return read_binary_proto(path, caffe_pb2.SolverState, "solverstate")


def extra_path(state_path):
    return os.fspath(state_path) + EXTRA_SUFFIX


def write_extra(state_path, extra):
    document = dict(extra, format=EXTRA_FORMAT, version=1)
    atomic_write(extra_path(state_path), json.dumps(document, indent=1, sort_keys=True))


def read_extra(state_path, iteration):
    """The side file's dict, or None when absent (a Caffe snapshot) or stale."""
    path = extra_path(state_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            extra = json.load(f)
    except ValueError as exc:
        raise SolverError("%s: corrupt side file (%s)" % (path, exc)) from None
    if extra.get("format") != EXTRA_FORMAT:
        raise SolverError("%s: not a pyfacelayers solverstate side file" % path)
    if extra.get("iter") != iteration:
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
