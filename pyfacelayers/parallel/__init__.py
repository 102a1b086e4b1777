"""Data-parallel training: N ranks, each a full copy of the net and solver, exchanging
gradients after every iteration (Caffe's multi-GPU training, parallel.cpp).

- :mod:`.world`: this process's rank, the job's rank count and transport;
- :mod:`.transport`: the collectives' interface and the single-process transport;
  :mod:`.mpi` (mpi4py, host arrays) and :mod:`.nccl` (cupy.cuda.nccl, device arrays);
- :mod:`.sync`: :class:`DataParallel`, what the solver calls (also pycaffe's NCCL);
- :mod:`.launch`: starting a job: one process per GPU (``--gpu 0,1``), or joining the
  one an MPI launcher started (``mpiexec -n N pyfacelayers train``).

Layers know nothing of ranks except the data layers' sharding rule (world.rank/size).
"""

from . import world  # noqa: F401
from .sync import DataParallel  # noqa: F401
from .transport import SingleProcess, Transport, TransportError  # noqa: F401
