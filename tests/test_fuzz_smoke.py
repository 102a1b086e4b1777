"""A short run of every fuzz harness (fuzz/): its seeds plus a few hundred seeded
mutations each, with the built-in mutator (atheris is not needed). Any outcome other
than a return or a documented exception fails, naming the input. The long runs are
``python -m fuzz.run`` (see the README)."""

import os
import sys
import warnings

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fuzz.engine import BuiltinFuzzer, run_one  # noqa: E402
from fuzz.expected import EXPECTED, PENDING  # noqa: E402
from fuzz.targets import NAMES, load  # noqa: E402

# Inputs per target beyond the seeds, sized for about a second each.
MUTATIONS = {"prototxt": 200, "net": 50, "caffemodel": 300, "binaryproto": 300,
             "solverstate": 200, "kernels": 600, "layers": 120}


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_smoke(name):
    target = load(name)
    fuzzer = BuiltinFuzzer(target, seed=1234)
    inputs = list(fuzzer.seeds)
    assert inputs, "no seeds for %s" % name
    inputs += [fuzzer.next_input() for _ in range(MUTATIONS[name])]
    bad = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for data in inputs:
            kind, exc_name, exc = run_one(target, data, timeout=20)
            if kind not in (None, EXPECTED, PENDING):
                bad.append("%s %s: %s (input %r)" % (kind, exc_name, exc, data[:200]))
    assert not bad, "\n".join(bad[:5])
