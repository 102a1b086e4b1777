"""The margin-family layers on the GPU (cupy + the CUDA kernels of csrc/cuda/margin_family.cu):
the tests of the default GPU semantics against their float64 references, the edge rows,
phases and errors, re-run in GPU mode. (The fixture cases of every family layer run on the
GPU in tests/test_family_gpu.py.)

Skips cleanly without cupy, without a CUDA device, or without the CUDA module.
"""

import pytest

from conftest import require_gpu  # noqa: E402

cupy = require_gpu()

from pyfacelayers import backend  # noqa: E402

# The CPU module's tests, collected again here and run in GPU mode (autouse fixture).
from test_margin_family import (  # noqa: E402,F401
                                test_adacos_gpu_semantics_three_steps,
                                test_cosin_addm_gpu_in_place_has_no_margin_gradient,
                                test_cosin_addm_gpu_semantics,
                                test_global_lse_margin_test_phase_leaves_state,
                                test_global_lse_margin_three_steps,
                                test_label_specific_add_train_test_and_counter,
                                test_label_specific_margin_gpu_semantics,
                                test_label_specific_margin_schedule_phases,
                                test_label_specific_margin_third_bottom_gives_the_margin,
                                test_fractional_labels_are_truncated_as_the_forks_int,
                                test_labels_and_bottom_counts_are_checked,
                                test_negative_labels_skip_rows_where_the_fork_skips_them)


@pytest.fixture(autouse=True)
def gpu_mode():
    backend.set_mode_gpu()
    yield
    backend.set_mode_cpu()


def test_blobs_are_on_the_device():
    from test_margin_family import make_layer
    layer, bottom, top = make_layer('name: "am" type: "LabelSpecificAdd"',
                                    [[[0.5, 0.1]], [0]])
    assert type(bottom[0].data).__module__.startswith("cupy")
