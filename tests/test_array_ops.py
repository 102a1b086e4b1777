"""Whole-array sums and copies of Eltwise and Split (layers/_array_ops.py and
csrc/array_ops.cpp): numpy's values bit for bit on any thread count, the layouts they
take, and what they refuse."""

import numpy as np
import pytest

from pyfacelayers import _C
from pyfacelayers.layers import _array_ops as array_ops

RNG = np.random.default_rng(11)


@pytest.fixture
def threads():
    before = _C.elementwise_threads()
    yield _C.set_elementwise_threads
    _C.set_elementwise_threads(before)


def channels_last(values):
    """An NCHW view of NHWC memory holding ``values``."""
    n, c, h, w = values.shape
    out = np.empty((n, h, w, c), values.dtype).transpose(0, 3, 1, 2)
    out[...] = values
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["c_order", "channels_last"])
@pytest.mark.parametrize("count", [1, 3])
def test_sums_and_copies_are_numpys_on_any_thread_count(threads, dtype, layout, count):
    threads(count)
    make = (lambda v: v.copy()) if layout == "c_order" else channels_last
    a, b = (make(RNG.standard_normal((2, 40, 30, 20)).astype(dtype)) for _ in range(2))
    out = make(np.zeros(a.shape, dtype))
    array_ops.add(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    array_ops.add(out, a, out)  # an accumulation, as Eltwise with three bottoms
    np.testing.assert_array_equal(out, (a + b) + a)
    copied = make(np.zeros(a.shape, dtype))
    array_ops.copy(b, copied)
    np.testing.assert_array_equal(copied, b)
    assert array_ops._flat((a, b, out)) is not None  # the C++ path ran


def test_mixed_layouts_small_arrays_and_other_types_stay_on_numpy():
    a = RNG.standard_normal((2, 40, 30, 20)).astype(np.float32)
    last = channels_last(a)
    assert array_ops._flat((a, last)) is None  # different strides
    assert array_ops._flat((a[:, ::2], a[:, ::2])) is None  # not dense
    assert array_ops._flat((a[0, 0], a[0, 1])) is None  # below the cut-off
    assert array_ops._flat((a.astype(np.int32), a.astype(np.int32))) is None
    out = np.empty_like(a)
    array_ops.add(a, last, out)
    np.testing.assert_array_equal(out, 2 * a)


def test_the_kernels_refuse_bad_arrays():
    a, b = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="add_arrays: b has 7 elements, expected 8"):
        _C.add_arrays(a, np.zeros(7, np.float32), b)
    with pytest.raises(TypeError, match="add_arrays: out: expected dtype float32"):
        _C.add_arrays(a, b, np.zeros(8))
    with pytest.raises(ValueError, match="copy_array: src: array must be C-contiguous"):
        _C.copy_array(np.zeros(16, np.float32)[::2], a)
    with pytest.raises(ValueError, match="copy_array: src and out overlap"):
        buffer = np.zeros(12, np.float32)
        _C.copy_array(buffer[:8], buffer[4:])
