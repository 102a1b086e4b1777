"""Shared pieces of the harnesses: where the seeds are, and a scratch folder where an
input is written as a file (the readers under test take paths, as users call them)."""

import atexit
import glob
import os
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
SHARED = os.environ.get("PFL_SHARED") or os.path.join(os.path.dirname(ROOT), "shared")
# Seeds cropped from large shared files: a prefix is a realistic truncated file.
CROP = 4096

_scratch = {}


def scratch_dir():
    """A private temp folder (in /dev/shm when there is one: no disk traffic)."""
    if "dir" not in _scratch:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
            else None
        _scratch["dir"] = tempfile.mkdtemp(prefix="pfl-fuzz-", dir=base)
        atexit.register(cleanup)
    return _scratch["dir"]


def cleanup():
    """Remove the scratch folder (also called before an os._exit, which skips atexit)."""
    if "dir" in _scratch:
        shutil.rmtree(_scratch.pop("dir"), True)


def write_scratch(name, data):
    path = os.path.join(scratch_dir(), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_files(patterns, crop=None):
    """The bytes of the files matching ``patterns`` (relative to corpus/ or shared/),
    sorted, each at most ``crop`` bytes; missing shared files are skipped."""
    out = []
    for pattern in patterns:
        base = SHARED if pattern.startswith("shared/") else CORPUS
        rel = pattern[len("shared/"):] if pattern.startswith("shared/") else pattern
        for path in sorted(glob.glob(os.path.join(base, rel))):
            with open(path, "rb") as f:
                data = f.read()
            if crop is not None and len(data) > crop:
                data = data[:crop]
            out.append(data)
    return out
