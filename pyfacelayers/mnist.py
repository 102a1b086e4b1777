"""MNIST from its own IDX files, as Yann LeCun's site distributes them.

A folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``
(the ``.idx3-ubyte`` spelling of some mirrors is found too). Images are 28x28 uint8
(0 background, 255 ink); labels are uint8 digits 0-9.
"""

import os

import numpy as np

from .errors import FormatError
from .fileio.idx import read_idx

SIDE = 28
PARTS = (("train", "images", 3), ("train", "labels", 1),
         ("t10k", "images", 3), ("t10k", "labels", 1))


def find_file(directory, split, kind, ndim):
    """The path of one of the four files in ``directory`` (plain preferred to .gz);
    FileNotFoundError listing the names tried when none is there."""
    tried = []
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            name = "%s-%s%sidx%d-ubyte%s" % (split, kind, sep, ndim, ext)
            tried.append(name)
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError("%s: no MNIST %s %s file (looked for %s)"
                            % (directory, split, kind, ", ".join(tried)))


def _read_pair(directory, split):
    images_path = find_file(directory, split, "images", 3)
    labels_path = find_file(directory, split, "labels", 1)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise FormatError("expected MNIST images: uint8 of shape (N, %d, %d), got %s of "
                          "shape %s" % (SIDE, SIDE, images.dtype, images.shape), images_path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise FormatError("expected MNIST labels: uint8 of shape (N,), got %s of shape %s"
                          % (labels.dtype, labels.shape), labels_path)
    if len(labels) != len(images):
        raise FormatError("%d labels for the %d images of %s" % (
            len(labels), len(images), images_path), labels_path)
    if len(images) == 0:
        raise FormatError("no images", images_path)
    if labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise FormatError("label %d at item %d: MNIST labels are digits 0-9"
                          % (labels[bad], bad), labels_path)
    return images, labels


def load_mnist(directory):
    """(x_train, y_train, x_test, y_test): images as float32 (N, 1, 28, 28) in [0, 1]
    (ink 1, background 0), labels as float32 (Caffe's label convention), as the demo's
    MemoryData layers take them."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError("--mnist %s: no such folder" % directory)
    out = []
    for split in ("train", "t10k"):
        images, labels = _read_pair(directory, split)
        out.append(np.ascontiguousarray(images[:, None], dtype=np.float32) / np.float32(255))
        out.append(labels.astype(np.float32))
    return tuple(out)
