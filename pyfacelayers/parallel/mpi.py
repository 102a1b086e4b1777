"""The MPI transport (mpi4py): ranks are the processes ``mpiexec`` (or ``srun``)
started; collectives run on host arrays. Device arrays given to it are copied to the
host and back, which is why GPU ranks under MPI exchange gradients through NCCL and
use MPI only to agree on NCCL's id (see :func:`pyfacelayers.parallel.launch`).
"""

import os

import numpy as np

from .transport import Transport, TransportError

EXTRA_HINT = "pip install 'pyfacelayers[mpi]' (mpi4py and an MPI, the mpich wheel)"

# Variables the common launchers set in each rank's environment: (size, rank, local rank).
LAUNCHER_VARIABLES = (
    ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),                        # MPICH (Hydra)
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("PMIX_SIZE", "PMIX_RANK", "PMIX_LOCAL_RANK"),
    ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"),
)


def launched_size(environ=None):
    """The rank count an MPI launcher gave this process (1 when none did)."""
    environ = os.environ if environ is None else environ
    for size_name, _, _ in LAUNCHER_VARIABLES:
        value = environ.get(size_name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def local_rank_from_environment(environ=None):
    environ = os.environ if environ is None else environ
    for _, _, local_name in LAUNCHER_VARIABLES:
        value = environ.get(local_name, "")
        if value.isdigit():
            return int(value)
    return None


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise TransportError("this process was started by an MPI launcher (%d ranks) but "
                             "mpi4py cannot be imported (%s): %s"
                             % (launched_size(), exc, EXTRA_HINT)) from None
    return MPI


class _Request:
    def __init__(self, request, array, host, copy_back):
        self.request, self.array, self.host, self.copy_back = request, array, host, copy_back

    def wait(self):
        self.request.Wait()
        if self.copy_back:
            self.array[...] = self.copy_back(self.host)


class MPITransport(Transport):
    name = "MPI"

    def __init__(self, comm=None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._outstanding = []  # started non-blocking all-reduces, for progress()
        local = local_rank_from_environment()
        self.local_rank = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank() \
            if local is None else local

    def _host(self, array):
        """(a contiguous host array to reduce, how to copy its result back, or None
        when the reduction works on ``array`` itself)."""
        if isinstance(array, np.ndarray):
            if array.flags.c_contiguous:
                return array, None
            return np.ascontiguousarray(array), lambda host: host
        return np.ascontiguousarray(array.get()), lambda host: _to_device(array, host)

    def allreduce_sum(self, array):
        host, back = self._host(array)
        self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        if back is not None:
            array[...] = back(host)

    def start_allreduce_sum(self, array):
        host, back = self._host(array)
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
        self._outstanding.append(request)
        return _Request(request, array, host, back)

    def progress(self):
        if self._outstanding:
            if self.MPI.Request.Testall(self._outstanding):
                self._outstanding = []

    def broadcast(self, array, root=0):
        host, back = self._host(array)
        self.comm.Bcast(host, root=root)
        if back is not None:
            array[...] = back(host)

    def allgather_json(self, value):
        return self.comm.allgather(value)

    def bcast_bytes(self, value, root=0):
        return self.comm.bcast(value, root=root)

    def abort(self, code=1):
        self.comm.Abort(code)


def _to_device(like, host):
    from ..backend import array_module
    return array_module(like).asarray(host)
