"""Aligning a whole data set (CASIA-WebFace or LFW layout): ``pyfacelayers align``.

Input: ``ROOT/<identity>/<image>`` files (or the paths of a list, relative to ROOT).
Output, under OUT:

- ``<identity>/<image stem>.jpg`` (JPEG quality 75, as MATLAB's imwrite default; or
  ``.png``, lossless): the 112x96 aligned face;
- ``landmarks.tsv``: a ``#`` header line, then one tab-separated line per aligned face:
  the image path relative to ROOT, the kept face's box ``x1 y1 x2 y2 score`` and its
  landmarks ``x1 y1 x2 y2 ... x5 y5`` (left eye, right eye, nose, left and right mouth
  corners, image left/right), in MTCNN's 1-based MATLAB pixel coordinates, float32
  values written in their shortest exact form;
- ``no_face.txt``: the paths (relative to ROOT) of images where no face was found.
  SphereFace's MATLAB script writes nothing for them; so does ``no_face="skip"`` (the
  default), while ``"center"`` writes the image's centre 112x96 window instead;
- ``unreadable.txt``: the images of this run that could not be read (also reported on
  stderr); they are tried again by the next run.

The run is resumable: an image with its output file and its landmarks (or no-face)
record is skipped. Images are written atomically and records appended after them, so
an interrupted run leaves no half-written file and loses at most the image in flight.
"""

import os
import sys
from collections import namedtuple

import numpy as np

from ..fileio.atomic import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff",
                    ".gif", ".webp")
LANDMARKS, NO_FACE, UNREADABLE = "landmarks.tsv", "no_face.txt", "unreadable.txt"
HEADER = "\t".join(["# path", "x1", "y1", "x2", "y2", "score"]
                   + ["p%d_%s" % (k, c) for k in range(1, 6) for c in "xy"])

Summary = namedtuple("Summary", "total skipped aligned no_face unreadable")


def walk(root):
    """The image files ``<identity>/<image>`` under ``root``, relative, sorted."""
    if not os.path.isdir(root):
        raise FileNotFoundError("data set folder not found: %s" % root)
    found = []
    for identity in sorted(os.listdir(root)):
        folder = os.path.join(root, identity)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if name.lower().endswith(IMAGE_EXTENSIONS) and \
                    os.path.isfile(os.path.join(folder, name)):
                found.append(identity + "/" + name)
    if not found:
        raise FileNotFoundError("no images under %s (expected <identity>/<image> files with "
                                "one of the extensions %s)" % (root, " ".join(IMAGE_EXTENSIONS)))
    return found


def read_list(list_path):
    """The image paths of a list file (one per line, an optional label after them)."""
    from ..verification.features import read_image_list
    return [path for path, _ in read_image_list(list_path)]


def output_name(relative, ext):
    return os.path.splitext(relative)[0] + "." + ext


def _number(value):
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def landmark_line(relative, face):
    values = list(face.box) + [v for point in face.points for v in point]
    return "\t".join([relative] + [_number(v) for v in values])


def parse_landmarks(path):
    """{relative path: (box (5,), points (5, 2))} of a landmarks.tsv file."""
    records = {}
    for line in _complete_lines(path):
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        values = np.array(fields[1:], np.float32)
        records[fields[0]] = (values[:5], values[5:].reshape(5, 2))
    return records


def _complete_lines(path):
    """The newline-terminated lines of a record file (a last line cut short by an
    interrupted run is dropped)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return text.split("\n")[:-1]


class _Records:
    """An append-only record file, cleaned on open: only complete lines whose image
    still counts as done are kept."""

    def __init__(self, path, header=None, keep=lambda line: True):
        lines = [l for l in _complete_lines(path) if not l.startswith("#") and keep(l)]
        self.paths = {l.split("\t")[0] for l in lines}
        text = "".join(l + "\n" for l in ([header] if header else []) + lines)
        atomic_write(path, text)
        self.handle = open(path, "a", encoding="utf-8")

    def add(self, line):
        self.handle.write(line + "\n")
        self.handle.flush()

    def close(self):
        self.handle.close()


# -- the per-image work, in this process or in a worker --------------------------------
_worker = {}


def _init_worker(version, no_face, gpu):
    from .. import backend
    from .pipeline import FaceAligner
    if gpu is not None:
        backend.set_device(int(gpu))
        backend.set_mode_gpu()
    _worker["aligner"] = FaceAligner(version=version, no_face=no_face)


def _align_one(job):
    """(relative, "face" | "noface" | "error", landmark line or message)."""
    from .pipeline import encode
    relative, source, target, ext = job
    try:
        result = _worker["aligner"].file(source)
    except (OSError, ValueError) as exc:
        return relative, "error", str(exc)
    if result.image is not None:
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        atomic_write(target, encode(result.image, ext))
    if result.face is None:
        return relative, "noface", ""
    return relative, "face", landmark_line(relative, result.face)


_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def align_dataset(root, out, images=None, ext="jpg", no_face="skip", version="pinned",
                  workers=1, gpu=None, progress=None, stderr=None):
    """Align the images (relative paths; default: :func:`walk` of ``root``) into
    ``out``; returns a :class:`Summary`. ``progress``: a callable taking the number
    of images done and the number to do (those not done by an earlier run)."""
    from .mtcnn import VERSIONS
    from .pipeline import FaceAligner
    stderr = stderr or sys.stderr
    if ext not in ("jpg", "png"):
        raise ValueError("--ext must be jpg or png, got %r" % (ext,))
    if no_face not in FaceAligner.NO_FACE:
        raise ValueError("no_face must be one of %s, got %r" % (", ".join(FaceAligner.NO_FACE),
                                                              no_face))
    if version not in VERSIONS:
        raise ValueError("version must be one of %s, got %r" % (", ".join(VERSIONS), version))
    if workers < 1:
        raise ValueError("workers must be >= 1, got %d" % workers)
    images = walk(root) if images is None else list(images)
    os.makedirs(out, exist_ok=True)

    def written(relative):
        return os.path.isfile(os.path.join(out, output_name(relative, ext)))

    faces = _Records(os.path.join(out, LANDMARKS), HEADER,
                     keep=lambda line: written(line.split("\t")[0]))
    misses = _Records(os.path.join(out, NO_FACE),
                      keep=lambda line: no_face == "skip" or written(line))
    done = faces.paths | misses.paths
    todo = [r for r in images if r not in done]
    jobs = [(r, os.path.join(root, r), os.path.join(out, output_name(r, ext)), ext)
            for r in todo]
    counts = {"face": 0, "noface": 0, "error": 0}
    unreadable = []
    try:
        for number, (relative, status, text) in enumerate(_run(jobs, version, no_face,
                                                               workers, gpu), 1):
            counts[status] += 1
            if status == "face":
                faces.add(text)
            elif status == "noface":
                misses.add(relative)
            else:
                unreadable.append(relative)
                stderr.write("align: skipped %s: %s\n" % (relative, text))
            if progress:
                progress(number, len(jobs))
    finally:
        faces.close()
        misses.close()
        atomic_write(os.path.join(out, UNREADABLE), "".join(r + "\n" for r in unreadable))
    return Summary(len(images), len(images) - len(todo), counts["face"], counts["noface"],
                   counts["error"])


def _run(jobs, version, no_face, workers, gpu):
    if not jobs:
        return
    if workers == 1 or len(jobs) == 1:
        _init_worker(version, no_face, gpu)
        for job in jobs:
            yield _align_one(job)
        return
    import multiprocessing
    context = multiprocessing.get_context("spawn")  # no CUDA or BLAS state forked
    # workers share the cores: one BLAS thread each, unless the user set a number
    saved = {name: os.environ.get(name) for name in _BLAS_THREADS}
    for name in _BLAS_THREADS:
        os.environ.setdefault(name, "1")
    try:
        pool = context.Pool(workers, _init_worker, (version, no_face, gpu))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
    with pool:
        yield from pool.imap(_align_one, jobs, chunksize=4)
