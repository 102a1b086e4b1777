"""A short run of every fuzz harness (fuzz/): its seeds plus a few hundred seeded
mutations each, with the built-in mutator (atheris is not needed). Any outcome other
than a return or a documented exception fails, naming the input. The long runs are
``python -m fuzz.run`` (see the README)."""

import os
import sys
import warnings

import numpy as np
import pytest

if sys.platform == "win32":  # the harness bounds time with SIGALRM, memory with rlimits
    pytest.skip("fuzz harnesses need POSIX signals and rlimits", allow_module_level=True)

import resource  # noqa: E402

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
    # Bound the address space as the long runs do, so an absurd size fails at once
    # (MemoryError) instead of allocating; restored afterwards.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + (3 << 30)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        _run(target, inputs, bad)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert not bad, "\n".join(bad[:5])


def _address_space():
    """This process's virtual memory size in bytes (Linux), else 1 GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def _run(target, inputs, bad):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for data in inputs:
            kind, exc_name, exc = run_one(target, data, timeout=20)
            if kind not in (None, EXPECTED, PENDING):
                bad.append("%s %s: %s (input %r)" % (kind, exc_name, exc, data[:200]))
