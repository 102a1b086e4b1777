"""Resource bounds: how much memory one net's arrays may take, checked before allocating.

A prototxt can declare any size (``num_output: 4000000000``, an input of 10^9
elements); numpy would either fail late or, with Linux's memory overcommit, succeed
and get the process killed later when the pages are touched. So every Blob checks
its size before numpy allocates it:

* a shape must be non-negative integers (a clear error otherwise, never a numpy
  overflow: sizes are computed with Python integers);
* a net keeps a :class:`Ledger`, the running total of the bytes its blobs hold
  (data and diff), and refuses the blob that would take it over :func:`memory_limit`;
* a blob outside any net is checked on its own against the same limit.

The limit is ``PYFACELAYERS_MEMORY_LIMIT`` when set (bytes, or with a K/M/G/T suffix,
powers of 1024: ``512M``, ``4G``, ``1.5T``; ``unlimited`` turns the check off), else
half of the physical memory. Half, because a training run holds more than the net's
blobs (the solver's history, one per parameter or more; a test net; the caffemodel
being read; Python itself), so a net that alone needs more than half of the machine
would thrash or be killed later, long after the mistake could be reported clearly.
"""

import math
import os
import re
import threading

from .errors import ResourceLimitError, ShapeError

ENV_VAR = "PYFACELAYERS_MEMORY_LIMIT"
# When the physical memory cannot be read (not a POSIX system): assume 16 GiB.
FALLBACK_PHYSICAL = 16 << 30
DEFAULT_FRACTION = 0.5

_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGTP]?)(?:I?B)?\s*$", re.I)
_HINT = ("raise the limit with %s=<bytes, or e.g. 16G> (or 'unlimited')" % ENV_VAR)


def parse_size(text, what=ENV_VAR):
    """Bytes from ``"1073741824"``, ``"512M"``, ``"4G"``, ``"1.5T"`` (powers of 1024),
    or None for ``"unlimited"``. Anything else is a ValueError naming ``what``."""
    text = str(text)
    if text.strip().lower() in ("unlimited", "none", "inf"):
        return None
    match = _SIZE.match(text)
    if not match:
        raise ValueError("%s=%r is not a size: expected bytes or a number with a K/M/G/T "
                         "suffix (e.g. 512M, 4G), or 'unlimited'" % (what, text))
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()]
    if not value >= 1:
        raise ValueError("%s=%r: the limit must be at least 1 byte" % (what, text))
    return int(value)


def parse_count(text, what, zero_means):
    """A whole number >= 0 from an environment variable's ``text`` (threads, workers);
    anything else is a ValueError naming ``what`` and what 0 means."""
    try:
        count = int(str(text).strip())
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError("%s must be a whole number >= 0 (0: %s), got %r"
                         % (what, zero_means, text))
    return count


def physical_memory():
    """The machine's physical memory in bytes (FALLBACK_PHYSICAL when unknown)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return FALLBACK_PHYSICAL
    return pages * page_size if pages > 0 and page_size > 0 else FALLBACK_PHYSICAL


def memory_limit():
    """Bytes one net's arrays may take (None: no limit, ``unlimited`` was asked for)."""
    value = os.environ.get(ENV_VAR)
    if value is not None and value.strip():
        return parse_size(value)
    return int(physical_memory() * DEFAULT_FRACTION)


def limit_source():
    """Where the limit comes from, for messages."""
    if os.environ.get(ENV_VAR, "").strip():
        return "%s=%s" % (ENV_VAR, os.environ[ENV_VAR].strip())
    return "half of the %s of physical memory" % format_bytes(physical_memory())


def format_bytes(n):
    if n is None:
        return "unlimited"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            return ("%d bytes" % n) if unit == "bytes" else "%.1f %s" % (value, unit)
        value /= 1024
    return "%d bytes" % n  # pragma: no cover


def check_shape(shape, what="blob", layer=None):
    """``shape`` as a tuple of Python ints; a ShapeError (naming ``layer``, (name, type),
    and the offending shape) for a negative, fractional or non-numeric dimension."""
    dims = []
    for d in shape:
        try:
            value = int(d)
            exact = value == d
        except (TypeError, ValueError, OverflowError):
            exact = False
        if not exact or value < 0:
            where = 'layer "%s" (%s): ' % layer if layer else ""
            raise ShapeError("%s%s: invalid shape %s: every dimension must be an integer "
                             ">= 0, got %r" % (where, what, tuple(shape), d))
        dims.append(value)
    # numpy refuses a shape whose non-zero dimensions multiply past 64 bits even when
    # another one is 0 (the array would be empty, so no memory limit catches it).
    if 0 in dims and math.prod(d for d in dims if d) * 8 >= 1 << 63:
        where = 'layer "%s" (%s): ' % layer if layer else ""
        raise ShapeError("%s%s: invalid shape %s: its non-zero dimensions multiply past "
                         "64 bits" % (where, what, tuple(shape)))
    return tuple(dims)


def array_bytes(shape, itemsize):
    """Bytes of one array of ``shape`` (Python integers: never overflows)."""
    return math.prod(shape) * int(itemsize)


def check_allocation(nbytes, what, total=0, limit=None, layer=None):
    """Refuse (ResourceLimitError) ``nbytes`` more when ``total`` bytes are already held
    and the limit (``memory_limit()`` by default) would be passed. ``what`` describes the
    request (blob name, shape, dtype); ``layer`` is (name, type) or None."""
    if limit is None:
        limit = memory_limit()
    if limit is None or total + nbytes <= limit:
        return
    where = 'layer "%s" (%s): ' % layer if layer else ""
    running = (", on top of the %s this net already holds" % format_bytes(total)
               if total else "")
    raise ResourceLimitError(
        "%s%s needs %s (%d bytes)%s, over the memory limit of %s (%s); refused before "
        "allocating. If the size is intended and the machine has the memory, %s."
        % (where, what, format_bytes(nbytes), nbytes, running, format_bytes(limit),
           limit_source(), _HINT),
        layer_name=layer[0] if layer else None, layer_type=layer[1] if layer else None,
        requested=nbytes, total=total, limit=limit)


def check_array(shape, dtype, what="array", layer=None, total=0):
    """Check an array of ``shape`` and ``dtype`` before allocating it: the shape's
    validity (ShapeError) and its bytes against the limit (ResourceLimitError).
    Returns the bytes it needs."""
    import numpy as np  # only here: the rest of this module needs no numpy

    shape = check_shape(shape, what, layer)
    nbytes = array_bytes(shape, np.dtype(dtype).itemsize)
    check_allocation(nbytes, "%s of shape %s (%s)" % (what, shape, np.dtype(dtype).name),
                     total=total, layer=layer)
    return nbytes


class Ledger:
    """The bytes held by one net's blobs, checked against the memory limit.

    ``layer`` is the (name, type) of the layer being set up or reshaped, set by the
    net, so a refusal names it.
    """

    def __init__(self, limit=None):
        self.limit = memory_limit() if limit is None else limit
        self.total = 0
        self.layer = None

    def charge(self, old_bytes, new_bytes, what):
        """Swap ``old_bytes`` held for ``new_bytes``; refuse when over the limit."""
        if new_bytes > old_bytes:
            # Reported as the blob's new size on top of everything else the net holds.
            check_allocation(new_bytes, what, self.total - old_bytes, self.limit,
                             self.layer)
        self.total += new_bytes - old_bytes


_active = threading.local()


def active_ledger():
    """The ledger of the net being built on this thread, or None."""
    return getattr(_active, "ledger", None)


class tracking:
    """``with tracking(ledger):`` blobs created inside count against ``ledger``."""

    def __init__(self, ledger):
        self.ledger = ledger

    def __enter__(self):
        self.previous = active_ledger()
        _active.ledger = self.ledger
        return self.ledger

    def __exit__(self, *exc):
        _active.ledger = self.previous
        return False
