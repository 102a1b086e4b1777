"""The collectives a data-parallel solver needs, behind one interface.

A transport knows its ``rank`` and ``size`` and offers, on the arrays it works with
(host arrays for MPI, device arrays for NCCL; others are copied there and back):

- ``allreduce_sum(array)``: in place, every rank ends with the sum over ranks;
- ``start_allreduce_sum(array)``: the same, started now and finished by the returned
  handle's ``wait()`` (layer-wise reduce overlaps it with the rest of backward);
- ``broadcast(array, root=0)``: in place, every rank ends with root's values;
- ``progress()``: a chance for started collectives to advance;
- ``close()``.

What the solver builds on them (means, agreement on a stop, gathering each rank's
layer states for a snapshot) is written once here, in terms of those calls.
"""

import json

import numpy as np

from ..errors import PyFaceLayersError


class TransportError(PyFaceLayersError, RuntimeError):
    """A transport cannot be set up or a collective failed."""


class Done:
    """The handle of a collective that already finished."""

    def wait(self):
        pass


class Transport:
    name = "?"
    rank = 0
    size = 1
    trivial = False  # True: no other rank can exist, so nothing needs exchanging

    # -- what each transport provides ---------------------------------------------
    def allreduce_sum(self, array):
        raise NotImplementedError

    def start_allreduce_sum(self, array):
        self.allreduce_sum(array)
        return Done()

    def broadcast(self, array, root=0):
        raise NotImplementedError

    def progress(self):
        """Let started collectives advance (MPI moves a non-blocking all-reduce only
        inside MPI calls); called between layers of backward."""

    def host_array(self, values, dtype):
        """``values`` as an array this transport reduces (numpy here; NCCL: on the device)."""
        return np.array(values, dtype=dtype)

    def to_host(self, array):
        return np.asarray(array)

    def close(self):
        pass

    # -- built on them ------------------------------------------------------------
    def mean_values(self, values):
        """The mean over ranks of a few numbers (float64), one per entry of ``values``."""
        if self.trivial:
            return [float(v) for v in values]
        buffer = self.host_array(values, np.float64)
        self.allreduce_sum(buffer)
        return [float(v) / self.size for v in self.to_host(buffer)]

    def any_true(self, flags):
        """For each flag: whether any rank raised it."""
        if self.trivial:
            return [bool(f) for f in flags]
        buffer = self.host_array([1.0 if f else 0.0 for f in flags], np.float64)
        self.allreduce_sum(buffer)
        return [bool(v > 0) for v in self.to_host(buffer)]

    def allgather_json(self, value):
        """Every rank's ``value`` (JSON-serialisable), as a list in rank order."""
        if self.trivial:
            return [value]
        payload = np.frombuffer(json.dumps(value, sort_keys=True).encode("utf-8"), np.uint8)
        lengths_host = np.zeros(self.size)
        lengths_host[self.rank] = payload.size
        lengths = self.host_array(lengths_host, np.float64)
        self.allreduce_sum(lengths)
        lengths = [int(v) for v in self.to_host(lengths)]
        # One row per rank, zeros except this rank's: the sum is everybody's bytes.
        rows = np.zeros((self.size, max(lengths)), np.uint8)
        rows[self.rank, :payload.size] = payload
        rows = self.host_array(rows, np.uint8)
        self.allreduce_sum(rows)
        rows = self.to_host(rows)
        return [json.loads(bytes(rows[r, :lengths[r]]).decode("utf-8"))
                for r in range(self.size)]

    def describe(self):
        return "%s, rank %d of %d" % (self.name, self.rank, self.size)


class SingleProcess(Transport):
    """One rank: every collective is the identity."""

    name = "single process"
    trivial = True

    def allreduce_sum(self, array):
        pass

    def broadcast(self, array, root=0):
        pass
