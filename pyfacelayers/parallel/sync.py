"""Keeping a solver in step with the other ranks (Caffe's NCCL class, parallel.cpp):

- ``bcast()``: rank 0's learnable weights to every rank, before the first iteration;
- after an iteration's backward (after all ``iter_size`` passes): every learnable
  parameter's diff summed over ranks and scaled by 1/N, so each rank applies the same
  update and the weights stay equal without another broadcast;
- ``layer_wise_reduce`` (SolverParameter, default true): a layer's reduce starts from the
  net's after_backward hook as soon as its diffs are final (last pass of iter_size), and
  the update waits for them all;
- for the solver: the job's mean loss (the displayed loss is the whole batch's), one
  answer to "stop or snapshot?" for all ranks, and every rank's layer states in the
  snapshot rank 0 writes.

It is pycaffe's ``caffe.NCCL`` object too: ``solver.add_callback(nccl)`` and
``solver.net.after_backward(nccl)`` work as in BVLC's python/train.py.
"""

import logging
import time

import numpy as np

from .. import backend
from . import world

log = logging.getLogger("pyfacelayers")

class DataParallel:
    """Ties ``solver`` to ``transport`` (default: the job's, see world.use)."""

    def __init__(self, solver, transport=None):
        self.solver = solver
        self.transport = transport or world.transport()
        if self.transport.size != world.size() or self.transport.rank != world.rank():
            world.use(self.transport)
        # A one-rank NCCL or MPI job still runs its collectives (so one GPU checks the
        # NCCL path); only the single-process transport skips them.
        self.active = not self.transport.trivial
        self.layer_wise = bool(solver.param.layer_wise_reduce) and self.active
        self._owned = _owned_params(solver.net)
        self._pending = []
        self._passes = 0
        self._warned = False
        # Time spent in the exchange on this process (starting, waiting, scaling): the
        # communication that computation did not hide.
        self.reduce_seconds = 0.0
        solver.parallel = self

    @property
    def rank(self):
        return self.transport.rank

    @property
    def size(self):
        return self.transport.size

    # -- pycaffe's NCCL ------------------------------------------------------------
    def bcast(self):
        """Rank 0's weights to every rank (Caffe's NCCL::Broadcast)."""
        if not self.active:
            return
        params = self.solver.net.learnable_params
        flat = _pack([p.data for p in params])
        self.transport.broadcast(flat, root=0)
        _unpack(flat, params, "data")

    def on_start(self):
        self._passes = 0
        self._pending = []

    def on_gradients_ready(self):
        if not self.active:
            return
        start = time.perf_counter()
        if self.layer_wise and self._passes == 0:
            # The net never called us back: a script set layer_wise_reduce but did not
            # install the hook. Reduce everything now rather than update unreduced.
            if not self._warned:
                log.warning("layer_wise_reduce is on but the net's after_backward hook is "
                            "not installed (solver.net.after_backward(nccl)): the diffs "
                            "are reduced in one buffer after backward instead")
                self._warned = True
            self.layer_wise = False
        if self.layer_wise:
            for request, flat, blobs in self._pending:
                request.wait()
                self._scale_back(flat, blobs)
            self._pending = []
        else:
            params = self.solver.net.learnable_params
            flat = _pack([p.diff for p in params])
            self.transport.allreduce_sum(flat)
            self._scale_back(flat, params)
        self.reduce_seconds += time.perf_counter() - start

    def __call__(self, layer):
        """The after_backward hook: start reducing ``layer``'s own parameters once the
        last of the iteration's iter_size backward passes has computed them."""
        if not self.layer_wise:
            return
        if self._passes == self.solver.param.iter_size - 1:
            blobs = self._owned.get(layer)
            start = time.perf_counter()
            if blobs:
                flat = _pack([b.diff for b in blobs])
                self._pending.append((self.transport.start_allreduce_sum(flat), flat, blobs))
            if self._pending:
                self.transport.progress()
            self.reduce_seconds += time.perf_counter() - start
        if layer == 0:
            self._passes += 1

    def _scale_back(self, flat, blobs):
        flat *= flat.dtype.type(1.0) / flat.dtype.type(self.size)
        _unpack(flat, blobs, "diff")

    # -- what the solver asks ----------------------------------------------------------
    def mean_loss(self, loss):
        return self.transport.mean_values([loss])[0]

    def mean_values(self, values):
        return self.transport.mean_values(values)

    def agree(self, request):
        """The job's request ("stop", "snapshot" or "none") from this rank's: a stop
        anywhere stops every rank, a snapshot anywhere snapshots."""
        stop, snapshot = self.transport.any_true([request == "stop", request == "snapshot"])
        return "stop" if stop else ("snapshot" if snapshot else "none")

    def gather(self, value):
        return self.transport.allgather_json(value)


def _owned_params(net):
    """{layer index: the learnable blobs that layer owns}. A shared blob belongs to the
    first layer using it, whose backward runs last, after every sharer added its part."""
    learnable = {id(b) for b in net.learnable_params}
    seen, owned = set(), {}
    for i, layer in enumerate(net.layers):
        for blob in getattr(layer, "blobs", []):
            if id(blob) in learnable and id(blob) not in seen:
                owned.setdefault(i, []).append(blob)
            seen.add(id(blob))
    return owned


def _pack(arrays):
    """One contiguous buffer holding ``arrays`` (one collective instead of many)."""
    if not arrays:
        return np.zeros(0, np.float32)
    if len(arrays) == 1:
        return arrays[0].reshape(-1).copy()
    return backend.array_module(arrays[0]).concatenate([a.reshape(-1) for a in arrays])


def _unpack(flat, blobs, field):
    offset = 0
    for blob in blobs:
        target = getattr(blob, field)
        n = target.size
        target[...] = flat[offset:offset + n].reshape(target.shape)
        offset += n
