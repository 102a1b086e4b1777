"""A host-memory stand-in for ``cupy`` and ``cupy.cuda.nccl``, so the CPU suite runs
the NCCL transport's code: which NCCL calls it makes, with which pointers, counts,
types and streams, and what it copies back. Arrays are numpy arrays of a subclass with
cupy's ``.data.ptr`` and ``.get()``. The communicator records its calls; over one rank
an all-reduce or broadcast leaves the data as is, over several (under mpiexec) it does
the operation through MPI on the memory the pointers name. Install with
:func:`install` (``setitem``: monkeypatch.setitem in tests), which returns the calls."""

import ctypes
import itertools
import sys
import types

import numpy as np

NCCL_TYPES = {"NCCL_UINT8": 1, "NCCL_INT64": 4, "NCCL_FLOAT32": 7, "NCCL_FLOAT64": 8}
NCCL_SUM = 0
DTYPES = {1: np.uint8, 4: np.int64, 7: np.float32, 8: np.float64}


def _memory(ptr, count, dtype):
    """The ``count`` values of NCCL type ``dtype`` at address ``ptr``, as a numpy view."""
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    raw = (ctypes.c_char * (count * itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=DTYPES[dtype], count=count)


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


def install(setitem=None):
    setitem = setitem or (lambda mapping, key, value: mapping.__setitem__(key, value))
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
            if len(uid) != 128 or not all(-128 <= b < 128 for b in uid):
                raise RuntimeError("stand-in NCCL: bad unique id")
            self.mpi = None
            if size > 1:  # the ranks of an mpiexec job, which must agree on the id
                from mpi4py import MPI
                self.mpi = MPI
                comm = MPI.COMM_WORLD
                if comm.Get_size() != size or comm.Get_rank() != rank:
                    raise RuntimeError("stand-in NCCL: rank %d of %d is not the MPI job's"
                                       % (rank, size))
                if comm.allgather(tuple(uid)) != [tuple(uid)] * size:
                    raise RuntimeError("stand-in NCCL: the ranks were given different ids")
            self.open = True

        def allReduce(self, send, recv, count, dtype, op, stream):
            assert self.open and send == recv and op == NCCL_SUM
            calls.append(("allReduce", count, dtype, stream))
            if self.mpi is not None:
                self.mpi.COMM_WORLD.Allreduce(self.mpi.IN_PLACE, _memory(recv, count, dtype),
                                              op=self.mpi.SUM)

        def bcast(self, buffer, count, dtype, root, stream):
            assert self.open and root == 0
            calls.append(("bcast", count, dtype, stream))
            if self.mpi is not None:
                self.mpi.COMM_WORLD.Bcast(_memory(buffer, count, dtype), root=root)

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
        setitem(sys.modules, name, module)
    calls.current_stream = current.ptr
    return calls
