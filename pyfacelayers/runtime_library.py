"""Optional engine libraries loaded at run time with ctypes (cuDNN on the GPU, oneDNN on
the CPU), so that nothing about them is needed to build or import the package.

The first candidate path that loads wins; either answer (the library, or the message
saying why none loaded and what was tried) is kept for the process, per value of the
library's environment variable, because the layers ask on every pass.
"""

import ctypes
import os


def load_cached(cache, env_var, candidates, make, errors, not_found):
    """The library object ``make(cdll, path)`` of the first loadable path of
    ``candidates()``, or a message (a str) starting with ``not_found``; ``errors`` are
    the exceptions that mean "try the next path"."""
    key = os.environ.get(env_var)
    if key not in cache:
        cache[key] = _first_loadable(candidates(), make, errors, not_found)
    return cache[key]


def _first_loadable(paths, make, errors, not_found):
    problems = []
    for path in paths:
        try:
            return make(ctypes.CDLL(path), path)
        except errors as exc:
            problems.append("%s: %s" % (path, exc))
    return "%s; tried: %s" % (not_found, "; ".join(problems))
