"""pycaffe's process-level functions, so that scripts calling them run unchanged:
glog-style logging (``init_log``, ``log``; the glog line layout is shared with the
command line's ``--log`` files), the multi-GPU solver count and rank, NCCL,
``set_multiprocess`` and ``Timer``.

The solver count and rank are pyfacelayers.parallel.world's; ``NCCL`` is its
DataParallel over the NCCL transport (docs/parallel.md).
"""

import logging
import os
import sys
import time

from .errors import PyFaceLayersError
from .parallel import DataParallel, world

log = logging.getLogger("pyfacelayers")
_GLOG_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.CRITICAL}


class GlogFormatter(logging.Formatter):
    """``I1127 00:10:05.123456 4242 solver.py:218] message``: glog's layout, so tools
    written for Caffe logs (parse_log.py, extract_seconds.py) read ours."""

    LEVELS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
              logging.ERROR: "E", logging.CRITICAL: "F"}

    def format(self, record):
        t = time.localtime(record.created)
        micro = int((record.created - int(record.created)) * 1e6)
        head = "%s%s.%06d %d %s:%d] " % (self.LEVELS.get(record.levelno, "I"),
                                        time.strftime("%m%d %H:%M:%S", t), micro,
                                        os.getpid(), record.filename, record.lineno)
        return head + record.getMessage()


def add_log_file(path):
    """Send the "pyfacelayers" logger's INFO lines to ``path`` in glog's layout."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(GlogFormatter())
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def add_console(stream=None, level=logging.INFO):
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(GlogFormatter())
    handler.setLevel(level)
    log.addHandler(handler)
    log.setLevel(min(log.level or level, level))
    return handler


def init_log(level=0, stderr=False):
    """Caffe's InitLog: our log lines (glog layout) at glog ``level`` (0 INFO, 1 WARNING,
    2 ERROR, 3 FATAL) and above, on stderr; ``stderr`` is accepted as pycaffe does."""
    if level not in _GLOG_LEVELS:
        raise ValueError("init_log level must be 0 (INFO) to 3 (FATAL), got %r" % (level,))
    for handler in list(log.handlers):
        if getattr(handler, "_pycaffe_init_log", False):
            log.removeHandler(handler)
    handler = add_console(sys.stderr, _GLOG_LEVELS[level])
    handler._pycaffe_init_log = True
    log.setLevel(_GLOG_LEVELS[level])


def log_message(message):
    """pycaffe's ``caffe.log(msg)``: one INFO line in our log."""
    log.info("%s", message)


def has_nccl():
    """True when cupy can load NCCL (multi-GPU training is possible)."""
    from .parallel import nccl
    return nccl.available()


def set_multiprocess(multiprocess):
    """pycaffe's: this process is one rank of a multi-process job (kept for scripts;
    pyfacelayers always runs one rank per process)."""
    world.set_multiprocess(multiprocess)


def solver_count():
    return world.size()


def solver_rank():
    return world.rank()


def set_solver_count(count):
    """How many ranks train together; set before making the solver (the data layers
    deal their items out by it)."""
    world.set_size(count)


def set_solver_rank(rank):
    world.set_rank(rank)


class NCCL(DataParallel):
    """pycaffe's NCCL: ``caffe.NCCL(solver, uid)`` joins the job of
    ``solver_count()`` ranks identified by ``uid`` (from ``NCCL.new_uid()``) as rank
    ``solver_rank()``, on the current GPU. Then ``bcast()``, ``solver.add_callback(nccl)``
    and, with layer_wise_reduce, ``solver.net.after_backward(nccl)``, as BVLC's
    python/train.py does."""

    def __init__(self, solver, uid):
        from . import backend
        from .parallel.nccl import NCCLTransport
        if world.rank() >= world.size():
            raise PyFaceLayersError("solver rank %d is not below the solver count %d (call "
                                    "set_solver_count and set_solver_rank first)"
                                    % (world.rank(), world.size()))
        device = backend._state["device"] if backend.mode() == "gpu" else None
        super().__init__(solver, NCCLTransport(world.size(), world.rank(), uid, device=device))

    @staticmethod
    def new_uid():
        from .parallel.nccl import new_uid
        return new_uid()


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, and ``ms``, the milliseconds between."""

    def __init__(self):
        self._start = self._stop = None

    def start(self):
        self._start, self._stop = time.perf_counter(), None

    def stop(self):
        if self._start is not None:
            self._stop = time.perf_counter()

    @property
    def ms(self):
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return (end - self._start) * 1000.0
