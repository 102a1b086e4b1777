"""The NCCL transport (cupy.cuda.nccl, the nvidia-nccl wheel): collectives on device
arrays, no host round trip. Each rank drives one GPU; the ranks find each other through
a unique id made by one of them (``new_uid``) and handed to the others: on the command
line by the parent process (``--gpu 0,1``), under MPI by a broadcast, in pycaffe
scripts by the script (``caffe.NCCL.new_uid()``).
"""

import numpy as np

from .transport import Transport, TransportError

EXTRA_HINT = "pip install 'pyfacelayers[gpu]' nvidia-nccl-cu12 (cupy with NCCL)"


def import_nccl():
    """cupy and cupy.cuda.nccl, or TransportError saying what is missing."""
    try:
        import cupy
    except ImportError as exc:
        raise TransportError("multi-GPU training needs cupy with NCCL (%s): %s"
                             % (exc, EXTRA_HINT)) from None
    try:
        from cupy.cuda import nccl
        nccl.get_version()
    except Exception as exc:  # ImportError, or the library cannot be loaded
        raise TransportError("multi-GPU training needs NCCL, which cupy cannot load (%s): %s"
                             % (exc, EXTRA_HINT)) from None
    return cupy, nccl


def available():
    try:
        import_nccl()
    except TransportError:
        return False
    return True


def new_uid():
    """A fresh NCCL unique id, as bytes (pycaffe's NCCL.new_uid())."""
    _, nccl = import_nccl()
    uid = nccl.get_unique_id()
    return bytes(b % 256 for b in uid)


def _uid_tuple(uid):
    """cupy takes the id as a tuple of signed chars."""
    if isinstance(uid, str):
        uid = uid.encode("latin-1")
    values = bytes(uid)
    if len(values) != 128:
        raise TransportError("an NCCL unique id has 128 bytes, got %d" % len(values))
    return tuple(b - 256 if b > 127 else b for b in values)


class _StreamRequest:
    """An all-reduce running on the transport's side stream; ``wait`` makes the
    current stream wait for it (Caffe synchronises its NCCL stream the same way)."""

    def __init__(self, cupy, stream, array, result):
        self.cupy, self.stream, self.array, self.result = cupy, stream, array, result
        self.event = stream.record()

    def wait(self):
        self.cupy.cuda.get_current_stream().wait_event(self.event)
        if self.result is not self.array:
            self.array[...] = self.result


class NCCLTransport(Transport):
    name = "NCCL"

    def __init__(self, size, rank, uid, device=None):
        cupy, nccl = import_nccl()
        self.cupy, self.nccl = cupy, nccl
        self.size, self.rank = int(size), int(rank)
        if device is not None:
            cupy.cuda.Device(int(device)).use()
        self.device = cupy.cuda.Device().id
        self.local_rank = self.rank
        try:
            self.comm = nccl.NcclCommunicator(self.size, _uid_tuple(uid), self.rank)
        except Exception as exc:
            raise TransportError("NCCL could not make rank %d of %d on GPU %d: %s"
                                 % (self.rank, self.size, self.device, exc)) from None
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64,
                       np.dtype(np.uint8): nccl.NCCL_UINT8,
                       np.dtype(np.int64): nccl.NCCL_INT64}

    def _device(self, array):
        """(a contiguous device array to work on, whether it is ``array`` itself)."""
        if isinstance(array, self.cupy.ndarray) and array.flags.c_contiguous:
            return array, True
        return self.cupy.ascontiguousarray(self.cupy.asarray(array)), False

    def _type(self, array):
        try:
            return self._types[np.dtype(array.dtype)]
        except KeyError:
            raise TransportError("NCCL transport: unsupported dtype %s" % array.dtype) from None

    def allreduce_sum(self, array):
        work, same = self._device(array)
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(work.data.ptr, work.data.ptr, work.size, self._type(work),
                            self.nccl.NCCL_SUM, stream.ptr)
        if not same:
            array[...] = work if isinstance(array, self.cupy.ndarray) else work.get()

    def start_allreduce_sum(self, array):
        work, same = self._device(array)
        # The side stream starts once the gradients queued so far are computed.
        self.stream.wait_event(self.cupy.cuda.get_current_stream().record())
        self.comm.allReduce(work.data.ptr, work.data.ptr, work.size, self._type(work),
                            self.nccl.NCCL_SUM, self.stream.ptr)
        return _StreamRequest(self.cupy, self.stream, array, work)

    def broadcast(self, array, root=0):
        work, same = self._device(array)
        stream = self.cupy.cuda.get_current_stream()
        self.comm.bcast(work.data.ptr, work.size, self._type(work), root, stream.ptr)
        if not same:
            array[...] = work if isinstance(array, self.cupy.ndarray) else work.get()

    def host_array(self, values, dtype):
        return self.cupy.asarray(np.asarray(values, dtype=dtype))

    def to_host(self, array):
        return self.cupy.asnumpy(array)

    def close(self):
        comm, self.comm = getattr(self, "comm", None), None
        if comm is not None:
            comm.destroy()
