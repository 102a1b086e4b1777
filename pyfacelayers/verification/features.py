"""Deep features of a list of aligned face images, as the SphereFace evaluation takes them.

Each image is read as OpenCV does (8-bit BGR), checked against the deploy net's input
size, and transformed as the SphereFace nets' ``transform_param``: ``(pixel - 127.5) *
0.0078125`` (1/128), by Caffe's DataTransformer. Batches go through the net and the
rows of one output blob are the features. ``mirror`` adds the features of the
horizontally flipped image: ``"concat"`` (``[f(img), f(flip(img))]``, as SphereFace's
evaluation.m) or ``"sum"`` (``f(img) + f(flip(img))``, as the AM-Softmax paper).

Feature files: ``.npz`` with arrays ``names`` (the image paths as listed) and
``features`` (rows in list order); or ``.npy`` (the features) with the names, one per
line, in a sidecar ``<stem>.names.txt``.
"""

import os
import re
import sys

import numpy as np

from ..errors import FormatError
from ..fileio.atomic import atomic_write
from ..fileio.text import read_list_file
from ..proto import caffe_pb2

MEAN = 127.5
SCALE = 0.0078125  # 1/128
MIRROR_MODES = ("none", "concat", "sum")

_LABEL = re.compile(r"^(.+?)[ \t]+[+-]?\d+$")


def read_image_list(path):
    """(image path, line number) for each non-blank line of an image list.

    A line is an image path, optionally followed by an integer label (Caffe's
    ImageData list); the label is dropped. A path may contain spaces.
    """
    text = read_list_file(path, "image list")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        match = _LABEL.match(line)
        entries.append((match.group(1) if match else line, number))
    if not entries:
        raise FormatError("the image list is empty", path=path)
    return entries


def feature_key(name):
    """The key a pairs file uses for an image path: its last two components (person
    folder and file) without the extension. ``lfw/Abel_Pacheco/Abel_Pacheco_0001.jpg``
    -> ``Abel_Pacheco/Abel_Pacheco_0001``."""
    parts = [p for p in str(name).replace("\\", "/").split("/") if p]
    parts = parts[-2:]
    parts[-1] = os.path.splitext(parts[-1])[0]
    return "/".join(parts)


def preprocess(image, dtype=np.float32):
    """A uint8 HxWxC BGR image -> (C, H, W) net input: (pixel - 127.5) * 0.0078125."""
    from ..transform import DataTransformer
    param = caffe_pb2.TransformationParameter(mean_value=[MEAN], scale=SCALE)
    return DataTransformer(param, phase=caffe_pb2.TEST, dtype=dtype).transform_image(image)


class Progress:
    """``done/total`` on stderr: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, total, what="images", stream=None, enabled=True):
        self.total, self.what, self.enabled = total, what, enabled
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._next_tenth = 1

    def update(self, done):
        if not self.enabled or not self.total:
            return
        percent = 100.0 * done / self.total
        text = "%d/%d %s (%.0f%%)" % (done, self.total, self.what, percent)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done >= self.total else ""))
        elif done >= self.total or percent >= 10 * self._next_tenth:
            self.stream.write(text + "\n")
            self._next_tenth = int(percent // 10) + 1
        self.stream.flush()


def _output_blob(net, blob):
    if blob is not None:
        if blob not in net.blobs:
            raise ValueError("the net has no blob %r (outputs: %s)"
                             % (blob, ", ".join(net.outputs)))
        return blob
    if len(net.outputs) != 1:
        raise ValueError("the net has %d outputs (%s); choose the feature blob with --blob"
                         % (len(net.outputs), ", ".join(net.outputs)))
    return net.outputs[0]


class FeatureExtractor:
    """Runs a deploy net over images; :meth:`extract` returns an (N, D) float array.

    ``blob``: the feature blob (default: the net's only output). ``resize``: bring
    images of another size to the net's input size with OpenCV's bilinear resize (as
    ImageData's new_height/new_width); without it such images are refused.
    """

    def __init__(self, net, blob=None, mirror="none", batch_size=32, resize=False):
        if mirror not in MIRROR_MODES:
            raise ValueError("mirror must be one of %s, got %r" % (", ".join(MIRROR_MODES), mirror))
        if batch_size <= 0:
            raise ValueError("batch size must be > 0, got %d" % batch_size)
        if not net.inputs:
            raise ValueError("the net has no input blob (a deploy net starts with an Input "
                             "layer or input:/input_dim lines)")
        self.net, self.mirror, self.batch_size, self.resize = net, mirror, batch_size, resize
        self.input = net.inputs[0]
        self.blob = _output_blob(net, blob)
        shape = net.blobs[self.input].shape
        if len(shape) != 4 or shape[1] not in (1, 3):
            raise ValueError("input blob %r has shape %s; expected (N, 1 or 3, H, W)"
                             % (self.input, tuple(shape)))
        self.channels, self.height, self.width = shape[1:]

    def load(self, path, where=None):
        """One image as the net's (C, H, W) input."""
        from .. import images
        where = where or path
        img = images.read_image(path, color=self.channels == 3, where=where)
        if img.shape[:2] != (self.height, self.width):
            if not self.resize:
                raise ValueError("image %s is %dx%d (height x width) but the net takes %dx%d; "
                                 "align/crop the faces to that size, or pass --resize "
                                 "(resize=True) to resize them bilinearly"
                                 % (where, img.shape[0], img.shape[1], self.height, self.width))
            img = images.resize_linear(img, self.height, self.width)
        return preprocess(img, self.net.dtype)

    def _forward(self, batch):
        from .. import backend
        blob = self.net.blobs[self.input]
        if blob.shape[0] != len(batch):
            blob.reshape(len(batch), self.channels, self.height, self.width)
            self.net.reshape()
        blob.data = batch
        self.net.forward()
        out = backend.to_numpy(self.net.blobs[self.blob].data)
        return np.array(out, dtype=np.float64).reshape(len(batch), -1)

    def features(self, batch):
        """Features of a (B, C, H, W) batch of preprocessed images, mirror applied."""
        feats = self._forward(batch)
        if self.mirror == "none":
            return feats
        flipped = self._forward(np.ascontiguousarray(batch[:, :, :, ::-1]))
        if self.mirror == "concat":
            return np.concatenate([feats, flipped], axis=1)
        return feats + flipped

    def extract(self, paths, wheres=None, progress=None):
        """Features of the image files ``paths`` (rows in the same order, the net's dtype)."""
        wheres = wheres or paths
        progress = progress or Progress(len(paths), enabled=False)
        rows = []
        for begin in range(0, len(paths), self.batch_size):
            chunk = range(begin, min(begin + self.batch_size, len(paths)))
            batch = np.stack([self.load(paths[i], wheres[i]) for i in chunk])
            rows.append(self.features(batch))
            progress.update(chunk[-1] + 1)
        return np.concatenate(rows).astype(self.net.dtype)


def extract_features(net, list_path, root="", blob=None, mirror="none", batch_size=32,
                     resize=False, progress=None):
    """(names, features) for the images of an image list; ``root`` is prepended to each
    name by plain concatenation, as Caffe's ImageData ``root_folder``."""
    names, paths, wheres = list_paths(list_path, root)
    extractor = FeatureExtractor(net, blob, mirror, batch_size, resize)
    return names, extractor.extract(paths, wheres, progress)


def list_paths(list_path, root=""):
    """(names, file paths, descriptions for errors) of an image list's images."""
    entries = read_image_list(list_path)
    names = [name for name, _ in entries]
    paths = [root + name for name in names]
    wheres = ["%s (line %d of %s)" % (p, n, list_path) for p, (_, n) in zip(paths, entries)]
    return names, paths, wheres


def names_path(npy_path):
    """The sidecar names file of a ``.npy`` feature file: ``feats.npy`` -> ``feats.names.txt``."""
    base = str(npy_path)
    return (base[:-4] if base.endswith(".npy") else base) + ".names.txt"


def save_features(path, names, features):
    """Write ``features.npz`` (names + features) or ``features.npy`` + ``.names.txt``."""
    import io
    path = str(path)
    features = np.asarray(features)
    if features.ndim != 2 or len(names) != len(features):
        raise ValueError("features must be (N, D) with one row per name; got %s for %d names"
                         % (features.shape, len(names)))
    buffer = io.BytesIO()
    if path.endswith(".npz"):
        np.savez(buffer, names=np.array(names, dtype=str), features=features)
        atomic_write(path, buffer.getvalue())
    elif path.endswith(".npy"):
        bad = [n for n in names if "\n" in n or "\r" in n]
        if bad:
            raise ValueError("image name %r has a line break; use an .npz output" % bad[0])
        np.save(buffer, features)
        atomic_write(path, buffer.getvalue())
        atomic_write(names_path(path), "".join(n + "\n" for n in names))
    else:
        raise ValueError("feature file %s: the name must end in .npy or .npz" % path)


class FeatureSet:
    """Features with their image names, looked up by :func:`feature_key`."""

    def __init__(self, names, features, sources=None):
        self.names = list(names)
        self.features = np.asarray(features)
        self.sources = sources or ["<features>"] * len(self.names)
        self._rows, self._dupes = {}, {}
        for row, name in enumerate(self.names):
            key = feature_key(name)
            if key in self._rows:
                self._dupes.setdefault(key, [self._rows[key]]).append(row)
            self._rows[key] = row

    @property
    def dim(self):
        return self.features.shape[1]

    def row(self, key, where="a pair"):
        if key in self._dupes:
            names = ", ".join("%s (%s)" % (self.names[r], self.sources[r]) for r in self._dupes[key])
            raise ValueError("%s names image %s, which matches several features: %s"
                             % (where, key, names))
        if key not in self._rows:
            raise ValueError("%s names image %s, but no feature has that name (%d features, "
                             "e.g. %s)" % (where, key, len(self.names),
                                           feature_key(self.names[0]) if self.names else "none"))
        return self._rows[key]


def _load_one(path, list_path=None):
    path = str(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError("feature file not found: %s" % path) from None
    except (OSError, ValueError) as exc:
        raise FormatError("not a .npy/.npz feature file (%s)" % exc, path=path) from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            missing = [k for k in ("names", "features") if k not in data.files]
            if missing:
                raise FormatError("an .npz feature file needs arrays 'names' and 'features'; "
                                  "missing %s" % ", ".join(missing), path=path)
            names, features = [str(n) for n in data["names"]], data["features"]
    else:
        features = data
        if list_path is not None:
            names = [name for name, _ in read_image_list(list_path)]
            names_from = list_path
        else:
            names_from = names_path(path)
            if not os.path.isfile(names_from):
                raise FileNotFoundError("%s has no names: expected the sidecar %s (written by "
                                        "extract) or an image list (--list)" % (path, names_from))
            with open(names_from, encoding="utf-8") as handle:
                names = [line.rstrip("\n") for line in handle if line.strip()]
        if len(names) != len(features):
            raise FormatError("%d feature rows but %d names in %s" % (len(features), len(names),
                                                                     names_from), path=path)
    if features.ndim != 2 or features.shape[1] == 0:
        raise FormatError("features must be a 2-D (images x width) array, got shape %s"
                          % (features.shape,), path=path)
    if features.dtype.kind not in "fiu":
        raise FormatError("features must be numbers, got dtype %s" % features.dtype, path=path)
    if len(names) != len(features):
        raise FormatError("%d feature rows but %d names" % (len(features), len(names)), path=path)
    return names, features


def load_features(paths, list_path=None, dim=None):
    """A :class:`FeatureSet` from one or more feature files (rows stacked, same width).

    ``list_path`` gives the names of ``.npy`` files without a sidecar; ``dim`` is the
    expected feature width.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    names, blocks, sources = [], [], []
    for path in paths:
        n, f = _load_one(path, list_path)
        if blocks and f.shape[1] != blocks[0].shape[1]:
            raise FormatError("features are %d wide but %s has %d-wide features"
                              % (f.shape[1], sources[0], blocks[0].shape[1]), path=path)
        if dim is not None and f.shape[1] != dim:
            raise FormatError("features are %d wide; expected %d" % (f.shape[1], dim), path=path)
        names += n
        blocks.append(f)
        sources += [str(path)] * len(n)
    return FeatureSet(names, np.concatenate(blocks).astype(np.float64), sources)
