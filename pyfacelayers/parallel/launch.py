"""Starting or joining a data-parallel job from the command line.

Three ways a ``pyfacelayers train`` process finds its place:

- ``--gpu 0,1,2,3`` (or ``all``) with no MPI launcher: this process is the parent. It
  makes an NCCL id, starts one child per GPU (the same command line, told its rank in
  the environment variable ``PYFACELAYERS_JOB``), watches them, and when one dies stops
  the others and names it (:func:`spawn_per_gpu`).
- a child of such a parent: :func:`join` reads ``PYFACELAYERS_JOB`` and opens NCCL.
- under ``mpiexec -n N`` (or ``srun``): :func:`join` opens MPI; CPU ranks all-reduce
  through it, GPU ranks (``--gpu``) take GPU number ``local rank`` of the list and
  open NCCL with an id rank 0 broadcasts over MPI.
"""

import os
import signal
import subprocess
import sys
import time

from . import mpi as mpi_module
from . import world
from .transport import TransportError

JOB_VARIABLE = "PYFACELAYERS_JOB"
GRACE_SECONDS = 10.0  # after a rank dies, how long the others get to stop on SIGTERM


def device_count():
    """How many CUDA devices there are, or TransportError saying why none can be used."""
    try:
        import cupy
    except ImportError as exc:
        raise TransportError("--gpu needs cupy (%s): pip install 'pyfacelayers[gpu]'"
                             % exc) from None
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:
        raise TransportError("--gpu: no usable CUDA device (%s)" % exc) from None


def parse_gpus(spec, count=None):
    """``--gpu``'s value as a list of device ids: "0", "0,1,3" or "all" (every device,
    as Caffe). ``count``: the device count (asked of CUDA when needed)."""
    if spec is None:
        return []
    text = str(spec).strip()
    if text == "all":
        count = device_count() if count is None else count
        if count == 0:
            raise TransportError("--gpu all: this machine has no CUDA device")
        return list(range(count))
    ids = []
    for word in text.split(","):
        word = word.strip()
        if not word.isdigit():
            raise ValueError("--gpu %s: %r is not a device id (expected ids like 0,1,2 or "
                             "\"all\")" % (spec, word))
        if int(word) in ids:
            raise ValueError("--gpu %s: GPU %s is listed twice (one rank per GPU; to run "
                             "several ranks on one GPU use mpiexec)" % (spec, word))
        ids.append(int(word))
    if len(ids) > 1 or count is not None:
        count = device_count() if count is None else count
        for i in ids:
            if i >= count:
                raise ValueError("--gpu %s: there is no GPU %d (this machine has %d CUDA "
                                 "device%s: %s)" % (spec, i, count, "" if count == 1 else "s",
                                                    ", ".join(map(str, range(count)))
                                                    or "none"))
    return ids


def multi_gpu_ready(spec):
    """Refuse a GPU list early, with the reason, when NCCL cannot run here."""
    from .nccl import import_nccl
    try:
        import_nccl()
    except TransportError as exc:
        raise TransportError("--gpu %s: %s" % (spec, exc)) from None


def wants_spawn(gpus):
    return len(gpus) > 1 and JOB_VARIABLE not in os.environ \
        and mpi_module.launched_size() == 1


def join(gpus, spec=None):
    """This process's transport when it is a rank of a job (None: it trains alone),
    after choosing its GPU. Sets pyfacelayers.parallel.world."""
    from .. import backend
    job = os.environ.get(JOB_VARIABLE)
    if job:
        rank, size, uid = _parse_job(job)
        device = gpus[rank]
        backend.set_device(device)
        backend.set_mode_gpu()
        from .nccl import NCCLTransport
        transport = NCCLTransport(size, rank, uid, device=device)
        world.use(transport)
        return transport
    if mpi_module.launched_size() > 1:
        transport = mpi_module.MPITransport()
        world.use(transport)
        if not gpus:
            backend.set_mode_cpu()
            return transport
        local = transport.local_rank
        if local >= len(gpus):
            raise TransportError("--gpu %s: local rank %d has no GPU (list one per rank on "
                                 "each node)" % (spec, local))
        backend.set_device(gpus[local])
        backend.set_mode_gpu()
        from .nccl import NCCLTransport, new_uid
        uid = transport.bcast_bytes(new_uid() if transport.rank == 0 else None)
        gpu_transport = NCCLTransport(transport.size, transport.rank, uid, device=gpus[local])
        world.use(gpu_transport)
        return gpu_transport
    return None


def _parse_job(text):
    try:
        rank, size, uid = text.split(":")
        return int(rank), int(size), bytes.fromhex(uid)
    except ValueError:
        raise TransportError("%s=%r is not rank:size:nccl-id (it is set by pyfacelayers "
                             "train --gpu for its children)" % (JOB_VARIABLE, text)) from None


def spawn_per_gpu(gpus, argv, stream=None):
    """The parent of a ``--gpu`` list: one child per GPU running ``argv``; returns the
    job's exit status."""
    from .nccl import new_uid
    stream = stream or sys.stderr
    uid = new_uid().hex()
    command = [sys.executable, "-m", "pyfacelayers"] + list(argv)
    children = []
    for rank, gpu in enumerate(gpus):
        env = dict(os.environ)
        env[JOB_VARIABLE] = "%d:%d:%s" % (rank, len(gpus), uid)
        # Own session: Ctrl-C reaches the parent once, which passes it on once.
        children.append(subprocess.Popen(command, env=env, start_new_session=True))
    names = ["rank %d (GPU %d)" % (r, g) for r, g in enumerate(gpus)]
    return supervise(children, names, stream)


def supervise(children, names, stream, poll_seconds=0.1, grace_seconds=GRACE_SECONDS):
    """Wait for ``children`` (Popen objects, one per rank); pass SIGINT/SIGHUP/SIGTERM
    on to them; when one fails, stop the others (SIGTERM, then SIGKILL after
    ``grace_seconds``) and say which rank it was. Returns the job's exit status."""
    forwarded = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(
        signal, "SIGHUP") else ())

    def forward(signum, frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {}
    for signum in forwarded:
        try:
            previous[signum] = signal.signal(signum, forward)
        except ValueError:  # not the main thread
            pass
    try:
        while True:
            codes = [child.poll() for child in children]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                i = failed[0]
                stream.write("pyfacelayers train: %s (pid %d) %s; stopping the other ranks\n"
                             % (names[i], children[i].pid, describe_exit(codes[i])))
                stream.flush()
                _stop(children, grace_seconds)
                return codes[i] if codes[i] > 0 else 128 - codes[i]
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop(children, grace_seconds):
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.time() + grace_seconds
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def describe_exit(code):
    if code < 0:
        try:
            return "was killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with status %d" % code
