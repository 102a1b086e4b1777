"""NormFace's metric-learning layers: InnerDistance, GeneralContrastiveLoss,
GeneralTripletLoss (margin-family.md 3.9-3.11).

The forks' CPU option (PYFACELAYERS_FORK_SEMANTICS=cpu) against the family-ref fixtures
(made by the forks' own CPU code); the default (GPU) semantics against float64
references written here from the spec, loop by loop; state across steps; bad inputs.
"""

import numpy as np
import pytest

from conftest import assert_close
from family_ref import case_names, check_case

METRIC_TYPES = ("InnerDistance", "GeneralContrastiveLoss", "GeneralTripletLoss")
CASES = [c for t in METRIC_TYPES for c in case_names(t)]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_cpu_semantics_match_the_fixture(case, dtype):
    if case.startswith("<"):
        pytest.skip("../shared/fixtures/family-ref is not present")
    if "normalize_param" in case and not _has_filler("gaussian_unitball"):
        pytest.skip("the fork's gaussian_unitball filler is not registered yet")
    check_case(case, dtype)


def _has_filler(name):
    from pyfacelayers import fillers
    return name in fillers._FILLERS
