"""numpy's BLAS threads, limited while oneDNN runs the convolutions.

oneDNN (the GNU OpenMP build) and numpy's OpenBLAS each keep a pool of threads, one per
core, that spin for a while after their work before sleeping. In a net they take turns
(a oneDNN convolution, then an InnerProduct on BLAS, ...), so each pool's spinning
threads hold the cores the other pool needs: on 2 cores a batch-1 SphereFace-20
forward took 54 ms with both pools at 2 threads and 20 ms with OpenBLAS at 1 (the
training step 0.48 s against 0.42 s). The products left to BLAS in such nets are small
next to the convolutions, so one BLAS thread costs little.

So when oneDNN first runs a convolution, numpy's OpenBLAS is set to
``PYFACELAYERS_BLAS_THREADS`` threads: unset means 1, unless the user chose a count
with ``OPENBLAS_NUM_THREADS`` (then nothing is changed); ``0`` leaves numpy's BLAS
alone. Found through the process's loaded libraries (numpy's bundled OpenBLAS); other
BLAS libraries are left as they are. Where the limit applies, the C++ element-wise
kernels (PReLU, the Eltwise/Split sums, the SGD update) start using OpenMP's pool, the
libgomp threads oneDNN runs on, at the same moment; otherwise they stay serial.
"""

import ctypes
import logging
import os

from .. import limits

log = logging.getLogger("pyfacelayers")
ENV_VAR = "PYFACELAYERS_BLAS_THREADS"
# The setter's name in OpenBLAS builds: plain, and numpy's scipy-openblas (64-bit ints).
SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
           "openblas_set_num_threads64_", "openblas_set_num_threads")
_done = []


def wanted_count():
    """The thread count to set, or None to leave numpy's BLAS alone."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return None if os.environ.get("OPENBLAS_NUM_THREADS") else 1
    return limits.parse_count(text, ENV_VAR, "leave numpy's BLAS alone") or None


def openblas_libraries():
    """Paths of the OpenBLAS libraries loaded in this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def set_openblas_threads(count):
    """Set every loaded OpenBLAS to ``count`` threads; returns the paths changed."""
    changed = []
    for path in openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                setter(count)
                changed.append(path)
                break
    return changed


def share_cores_with_onednn():
    """Once per process, before oneDNN's first convolution: limit numpy's OpenBLAS."""
    if _done:
        return
    count = wanted_count()  # a bad value raises at every convolution set-up
    _done.append(True)
    if count is None:
        return
    if set_openblas_threads(count):
        log.info("numpy's OpenBLAS set to %d thread(s) while oneDNN runs the "
                 "convolutions (%s; 0 leaves it alone)", count, ENV_VAR)
    # The C++ element-wise kernels join oneDNN's OpenMP pool (serial before: beside a
    # multi-threaded OpenBLAS their spinning threads would compete with it).
    from .. import _C
    _C.set_elementwise_threads(0)
