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


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_kernels_give_the_same_bits_on_any_thread_count(shared):
    from pyfacelayers import _C
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 16, 1200)).astype(np.float32)  # above the serial cut-off
    dy = rng.standard_normal(x.shape).astype(np.float32)
    slope = rng.uniform(-0.5, 0.5, 1 if shared else 16).astype(np.float32)
    results = []
    before = _C.elementwise_threads()
    try:
        for threads in (1, 2, 3):
            _C.set_elementwise_threads(threads)
            y, dx, ds = np.empty_like(x), np.empty_like(x), np.zeros_like(slope)
            _C.prelu_forward(x, slope, y, shared)
            _C.prelu_backward(x, dy, slope, dx, ds, shared)
            in_place = dy.copy()
            _C.prelu_backward(x, in_place, slope, in_place, None, shared)
            forward_in_place, saved = x.copy(), np.empty_like(x)  # the layer in place
            _C.prelu_forward(forward_in_place, slope, forward_in_place, shared, save=saved)
            # the slope gradient alone, and with dx written in place in the same pass
            ds_alone, ds_in_place, both_in_place = (np.zeros_like(slope), np.zeros_like(slope),
                                                    dy.copy())
            _C.prelu_backward(x, dy, slope, None, ds_alone, shared)
            _C.prelu_backward(x, both_in_place, slope, both_in_place, ds_in_place, shared)
            results.append((y, dx, ds, in_place, forward_in_place, saved, ds_alone,
                            ds_in_place, both_in_place))
    finally:
        _C.set_elementwise_threads(before)
    a = slope.reshape(1, -1, 1) if not shared else slope[0]
    np.testing.assert_allclose(results[0][0], np.maximum(x, 0) + a * np.minimum(x, 0),
                               rtol=1e-6)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert np.array_equal(got, want)
    assert np.array_equal(results[0][3], results[0][1])
    assert np.array_equal(results[0][4], results[0][0]) and np.array_equal(results[0][5], x)
    y, dx, ds, _, _, _, ds_alone, ds_in_place, both_in_place = results[0]
    assert np.array_equal(ds, ds_alone) and np.array_equal(ds_in_place, ds_alone)
    assert np.array_equal(both_in_place, dx)
