"""docs/development.md stays true: its build requirements are pyproject.toml's, its
build variables are setup.py's, and its fuzz command runs from the repository root."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "development.md")


def _doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def _build_requires():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["build-system"]["requires"]


def test_the_listed_build_requirements_are_pyprojects():
    line = next(l for l in _doc().splitlines() if l.startswith("pip install 'setuptools"))
    listed = [w.strip("'") for w in line.split()[2:]]
    assert listed == _build_requires() + ["numpy"]


def test_the_build_variables_are_those_setup_py_reads():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        setup_py = f.read()
    documented = set(re.findall(r"`(PYFACELAYERS_[A-Z_]+)=", _doc()))
    assert documented == set(re.findall(r'"(PYFACELAYERS_[A-Z_]+)"', setup_py))


def test_the_fuzz_command_runs_from_the_repository_root(tmp_path):
    if sys.platform == "win32":
        pytest.skip("fuzz.run needs POSIX signals and rlimits")
    command = next(l.strip() for l in _doc().splitlines()
                   if l.strip().startswith("python -m fuzz.run"))
    argv = command.split()[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    argv[argv.index("--runs") + 1] = "40"  # the doc's 300, cut for the suite
    env = dict(os.environ, PYTHONPATH="")  # the checkout from the working directory
    done = subprocess.run([sys.executable] + argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(l for l in done.stdout.splitlines() if l.startswith("net "))
    assert row.split()[1:5] == ["40", row.split()[2], "0", "0"]  # inputs, -, crashes, hangs
