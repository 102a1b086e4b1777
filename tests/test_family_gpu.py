"""The family-ref layer cases on the GPU (cupy): every case of every registered family
layer type, with the CPU semantics against the fixture and with the default (GPU)
semantics against the same run on the CPU backend. Reusable by the other family
layers (it replays whatever ``family_ref.case_names()`` lists and is registered).

Skips cleanly without cupy or without a CUDA device.
"""

import numpy as np
import pytest

from conftest import require_gpu  # noqa: E402

cupy = require_gpu()

from conftest import assert_close  # noqa: E402
from family_ref import TOL, Case, case_names, check_case, replay  # noqa: E402
from test_family_nets import NET_KEYS, check_net_fixture_forward_backward  # noqa: E402

CASES = case_names()
# Caffe's RNG drew these values: only their row norms are portable.
RNG_KEYS = {"Parameter__blob_filler_gaussian_unitball": ("step0_data__p", "step0_param__P__0")}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_gpu_cpu_semantics_match_the_fixture(case, dtype):
    check_case(case, dtype, xp=cupy, skip=RNG_KEYS.get(case, ()))


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_gpu_default_semantics_match_the_cpu_backend(case, dtype):
    c = Case(case, dtype)
    on_gpu = replay(c, xp=cupy, semantics="gpu")
    on_cpu = replay(c, xp=np, semantics="gpu")
    for key, value in on_cpu.items():
        if key.endswith("_loss") or key in RNG_KEYS.get(case, ()):
            continue
        expected = np.asarray(value)
        finite = np.isfinite(expected)
        assert np.array_equal(finite, np.isfinite(on_gpu[key])), key
        assert_close(np.where(finite, on_gpu[key], 0), np.where(finite, expected, 0),
                     TOL[dtype], key)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("key", NET_KEYS)
def test_gpu_net_fixture_forward_backward(key, dtype):
    check_net_fixture_forward_backward(key, dtype, xp=cupy)
