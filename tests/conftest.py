"""Shared test helpers: where ../shared is, and the norm-relative comparison."""

import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# PFL_SHARED points elsewhere (e.g. a copy inside the checkout on a GPU machine).
SHARED = os.environ.get("PFL_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
FIXTURES = os.path.join(SHARED, "fixtures", "caffe-ref")
NETS = os.path.join(SHARED, "nets")


def child_env(*paths_first):
    """Environment for a child Python process that imports the same pyfacelayers as the
    tests (the installed package in CI, the checkout built in place in development),
    with ``paths_first`` ahead of it on PYTHONPATH."""
    import pyfacelayers
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pyfacelayers.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(p) for p in paths_first]
                                                       + [package_root]))


def shared_path(*parts):
    """A path under ../shared, or skip the test (with the reason) when absent."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip("../shared/%s is not present (read-only reference data)" % "/".join(parts))
    return path


def rel_error(actual, expected):
    """||actual - expected|| / ||expected|| (absolute error when expected is zero)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = np.linalg.norm((actual - expected).ravel())
    norm = np.linalg.norm(expected.ravel())
    return diff / norm if norm > 0 else diff


def assert_close(actual, expected, tol, what=""):
    err = rel_error(actual, expected)
    assert err <= tol, "%s: relative error %.3g > %.1g" % (what, err, tol)


def require_gpu():
    """cupy, for a GPU test module; skips the whole module (with the reason) without
    cupy, without a CUDA device, or without pyfacelayers' CUDA module."""
    cupy = pytest.importorskip("cupy")
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no driver
        devices = 0
    if devices == 0:
        pytest.skip("no CUDA device", allow_module_level=True)
    try:
        from pyfacelayers import _cuda  # noqa: F401
    except ImportError:
        pytest.skip("pyfacelayers was built without its CUDA module", allow_module_level=True)
    return cupy
