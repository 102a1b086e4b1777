"""The process's place in a data-parallel job: its rank, the job's rank count (Caffe's
solver_rank / solver_count) and the transport that carries the collectives.

One process is one rank. Everything else in the package asks here: the solver (who
tests, logs and writes snapshots: rank 0), the data layers (which records are this
rank's), the seeds (Caffe seeds rank r with random_seed + r).
"""

import logging

from .transport import SingleProcess

_state = {"count": 1, "rank": 0, "transport": None, "multiprocess": False}


def size():
    """How many ranks train together (Caffe::solver_count)."""
    return _state["count"]


def rank():
    """This process's rank, 0 .. size() - 1 (Caffe::solver_rank)."""
    return _state["rank"]


def is_root():
    return _state["rank"] == 0


def set_size(count):
    count = _whole(count, "solver count")
    if count < 1:
        raise ValueError("solver count must be >= 1, got %d" % count)
    _state["count"] = count


def set_rank(value):
    value = _whole(value, "solver rank")
    if value < 0:
        raise ValueError("solver rank must be >= 0, got %d" % value)
    _state["rank"] = value


def set_multiprocess(value):
    _state["multiprocess"] = bool(value)


def transport():
    """The transport in use: the one given to :func:`use`, else the single-process one
    (which refuses to stand in for a job of several ranks)."""
    if _state["transport"] is None:
        return SingleProcess()
    return _state["transport"]


def use(transport_):
    """Make ``transport_`` the job's: rank and size follow it."""
    _state["transport"] = transport_
    _state["count"], _state["rank"] = transport_.size, transport_.rank


def reset():
    """Back to one process alone (tests, or after a job ends)."""
    current = _state["transport"]
    _state.update(count=1, rank=0, transport=None, multiprocess=False)
    if current is not None:
        current.close()


def _whole(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if int(value) == value:
                return int(value)
        except (TypeError, ValueError):
            pass
        raise TypeError("%s must be an integer, got %r" % (what, value))
    return value


class RootOnly(logging.Filter):
    """Caffe's LOG_IF(INFO, root_solver()): ranks other than 0 keep only their warnings
    and errors (prefixed with the rank), so a job prints one log, rank 0's."""

    def filter(self, record):
        if _state["rank"] == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "_rank_tagged", False):
            record.msg = "rank %d: %s" % (_state["rank"], record.msg)
            record._rank_tagged = True
        return True


def install_log_filter():
    logger = logging.getLogger("pyfacelayers")
    if not any(isinstance(f, RootOnly) for f in logger.filters):
        logger.addFilter(RootOnly())


install_log_filter()
