"""The simple fork layers (Normalize, NormL2, InnerProduct/Scale extensions, Flip,
Parameter, Reduction, Axpy, ChannelScale, DepthwiseConvolution) against the forks' own
CPU code (../shared/fixtures/family-ref, with PYFACELAYERS_FORK_SEMANTICS=cpu), and the
default GPU semantics against float64 references of the spec."""

import numpy as np
import pytest

from family_ref import Case, case_names, check_case, replay
from conftest import assert_close

SIMPLE_TYPES = ("Normalize", "NormL2", "InnerProduct", "Scale", "Flip", "Parameter",
                "Reduction", "Axpy", "ChannelScale", "DepthwiseConvolution")
CASES = [c for t in SIMPLE_TYPES for c in case_names(t)]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES or ["<family-ref absent>"])
def test_cpu_semantics_match_the_fixture(case, dtype):
    skip = ()
    if case == "Parameter__blob_filler_gaussian_unitball":
        skip = ("step0_data__p", "step0_param__P__0")  # Caffe's RNG: not portable
    check_case(case, dtype, skip=skip)
