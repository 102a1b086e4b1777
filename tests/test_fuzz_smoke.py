"""A short run of every fuzz harness (fuzz/): its seeds plus a few hundred seeded
mutations each, with the built-in mutator (atheris is not needed). Any outcome other
than a return or a documented exception fails, naming the input. The long runs are
``python -m fuzz.run`` (see docs/fuzzing.md)."""

import os
import sys
import warnings

import numpy as np
import pytest

if sys.platform == "win32":  # the harness bounds time with SIGALRM, memory with rlimits
    pytest.skip("fuzz harnesses need POSIX signals and rlimits", allow_module_level=True)

import resource  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # for the fuzz/ harnesses; after the installed pyfacelayers
    sys.path.append(ROOT)

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


def test_runner_records_a_crashing_child(tmp_path, monkeypatch):
    # The parent of fuzz.run must survive a child that dies on a signal, count the
    # crash, save the input it was running, and go on in a fresh child.
    import argparse
    import json
    import subprocess
    from fuzz import run

    def fake_child(args, target, runs, chunk, seed, seconds):
        stats = os.path.join(args.out, "%s-%s.json" % (target, chunk))
        crash = int(chunk.rsplit("-", 1)[1]) == 0  # the first child crashes
        code = (
            "import ctypes, json, struct, os\n"
            "open(%r + '.current', 'wb').write(struct.pack('<Q', 3) + b'bad')\n"
            "json.dump({'target': %r, 'executed': %d, 'counts': {'ok': %d}, 'seconds': 1},"
            " open(%r, 'w'))\n"
            "%s\n" % (stats, target, 5 if crash else runs, 5 if crash else runs, stats,
                      "ctypes.string_at(0)" if crash else ""))
        return subprocess.Popen([sys.executable, "-c", code])

    monkeypatch.setattr(run, "_child", fake_child)
    args = argparse.Namespace(
        runs=8, seconds=0, out=str(tmp_path), tag="t", seed=0, timeout=10,
        engine="builtin", memory_mb=0)
    crashes, hangs = run.run_target(args, "kernels")
    assert len(crashes) == 1 and not hangs
    with open(crashes[0], "rb") as f:
        assert f.read() == b"bad"
    totals = run.collect(str(tmp_path))["kernels"]
    assert totals["executed"] == 8 and totals["counts"]["crash"] == 1
    with open(os.path.join(str(tmp_path), "kernels-t-0.json")) as f:
        assert json.load(f)["child_exit"] < 0  # killed by a signal
