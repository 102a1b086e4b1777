"""A host-memory stand-in for ``cupy`` and ``cupy.cuda.nccl`` (one rank), so the CPU
suite runs the NCCL transport's code: which NCCL calls it makes, with which pointers,
counts, types and streams, and what it copies back. Arrays are numpy arrays of a
subclass with cupy's ``.data.ptr`` and ``.get()``; the communicator of one rank
records its calls (an all-reduce or broadcast over one rank leaves the data as is).
Install with :func:`install` (monkeypatch), which returns the recorded calls."""

import itertools
import sys
import types

import numpy as np

NCCL_TYPES = {"NCCL_UINT8": 1, "NCCL_INT64": 4, "NCCL_FLOAT32": 7, "NCCL_FLOAT64": 8}
NCCL_SUM = 0


class DeviceArray(np.ndarray):
    @property
    def data(self):  # cupy's MemoryPointer
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        return np.array(self)


def _device(values):
    return np.array(values).view(DeviceArray)


class Calls(list):
    """The recorded calls; ``current_stream``: the pointer of the default stream."""


def install(monkeypatch):
    calls = Calls()
    streams = itertools.count(1)

    class Event:
        def __init__(self, stream):
            self.stream = stream

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = next(streams)
            self.non_blocking = non_blocking

        def record(self):
            calls.append(("record", self.ptr))
            return Event(self)

        def wait_event(self, event):
            calls.append(("wait", self.ptr, event.stream.ptr))

    current = Stream()

    class Device:
        def __init__(self, index=0):
            self.id = index

        def use(self):
            calls.append(("device", self.id))

    class Communicator:
        def __init__(self, size, uid, rank):
            if size != 1 or rank != 0:
                raise RuntimeError("stand-in NCCL: one rank only")
            if len(uid) != 128 or not all(-128 <= b < 128 for b in uid):
                raise RuntimeError("stand-in NCCL: bad unique id")
            self.open = True

        def allReduce(self, send, recv, count, dtype, op, stream):
            assert self.open and send == recv and op == NCCL_SUM
            calls.append(("allReduce", count, dtype, stream))

        def bcast(self, buffer, count, dtype, root, stream):
            assert self.open and root == 0
            calls.append(("bcast", count, dtype, stream))

        def destroy(self):
            self.open = False
            calls.append(("destroy",))

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.get_version = lambda: 22105
    nccl.get_unique_id = lambda: tuple(range(-64, 64))
    nccl.NcclCommunicator = Communicator
    nccl.NCCL_SUM = NCCL_SUM
    for name, value in NCCL_TYPES.items():
        setattr(nccl, name, value)
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cuda.Stream = Stream
    cuda.Device = Device
    cuda.get_current_stream = lambda: current
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    cupy.ndarray = DeviceArray
    cupy.asarray = _device
    cupy.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(DeviceArray)
    cupy.asnumpy = lambda a: np.array(a)
    for name, module in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", nccl)):
        monkeypatch.setitem(sys.modules, name, module)
    calls.current_stream = current.ptr
    return calls
