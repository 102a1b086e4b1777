"""The C++ extension and the shared host/device math header."""

import math

import numpy as np
import pytest

from pyfacelayers import _C


def psi_reference(cos, m):
    """(-1)^k cos(m theta) - 2k with k = floor(m theta / pi), in float64."""
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    k = np.floor(m * theta / math.pi)
    return (-1.0) ** k * np.cos(m * theta) - 2.0 * k


@pytest.mark.parametrize("margin_type", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
def test_margin_psi_matches_closed_form(margin_type, dtype, tol):
    # Avoid the exact branch points (k changes), where rounding may pick either side.
    cos = np.cos(np.linspace(0.013, math.pi - 0.013, 997)).astype(dtype)
    got = _C.margin_psi(cos, margin_type)
    assert got.dtype == dtype and got.shape == cos.shape
    np.testing.assert_allclose(got, psi_reference(cos.astype(np.float64), margin_type + 1),
                               atol=tol * 10, rtol=tol)


def test_margin_psi_rejects_bad_input():
    with pytest.raises(ValueError, match="margin type"):
        _C.margin_psi(np.zeros(3, np.float32), 7)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.margin_psi(np.zeros((4, 4), np.float32)[:, 1], 1)
    with pytest.raises(TypeError, match="float32"):
        _C.margin_psi(np.zeros(3, np.int32), 1)


def test_cuda_module_imports_without_a_gpu():
    cuda = pytest.importorskip("pyfacelayers._cuda", reason="built without nvcc")
    assert cuda.device_count() >= 0
