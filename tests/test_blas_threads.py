"""numpy's OpenBLAS threads, limited when oneDNN runs the convolutions
(pyfacelayers/cpu/blas_threads.py)."""

import ctypes

import numpy as np
import pytest

from pyfacelayers.cpu import blas_threads

GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
           "openblas_get_num_threads64_", "openblas_get_num_threads")


def _openblas_threads():
    for path in blas_threads.openblas_libraries():
        lib = ctypes.CDLL(path)
        for name in GETTERS:
            getter = getattr(lib, name, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                return getter()
    pytest.skip("numpy's BLAS here is not a loaded OpenBLAS")


@pytest.mark.parametrize("env,expected", [
    ({}, 1), ({"OPENBLAS_NUM_THREADS": "2"}, None), ({"PYFACELAYERS_BLAS_THREADS": "0"}, None),
    ({"PYFACELAYERS_BLAS_THREADS": "3", "OPENBLAS_NUM_THREADS": "2"}, 3)])
def test_the_count_follows_the_variables(monkeypatch, env, expected):
    for name in ("PYFACELAYERS_BLAS_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert blas_threads.wanted_count() == expected


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_a_bad_count_names_the_variable(monkeypatch, bad):
    monkeypatch.setenv("PYFACELAYERS_BLAS_THREADS", bad)
    with pytest.raises(ValueError, match="PYFACELAYERS_BLAS_THREADS"):
        blas_threads.wanted_count()


def test_numpy_openblas_is_set_and_products_are_unchanged():
    a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)
    before_threads = _openblas_threads()
    expected = a @ a.T
    try:
        assert blas_threads.set_openblas_threads(1)
        assert _openblas_threads() == 1
        np.testing.assert_allclose(a @ a.T, expected, rtol=1e-5, atol=1e-4)
    finally:
        blas_threads.set_openblas_threads(before_threads)
    assert _openblas_threads() == before_threads
