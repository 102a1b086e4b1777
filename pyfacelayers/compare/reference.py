"""The reference file of ``pyfacelayers compare``: what Caffe computed, written by
``tools/dump_caffe_blobs.py`` (or built from other golden data).

Reference format (``format: pyfacelayers-blob-dump``, version 1)
---------------------------------------------------------------
An ``.npz``, plain or compressed (``np.savez_compressed``: the dump script's
``--compress``), read with ``np.load(path, allow_pickle=False)`` (no pickle anywhere).
Every array is optional, so partial references (golden fixtures, hand-made files) work:
what is present is compared, what is absent is listed as "not in reference".

``meta_json``
    0-d unicode array, a JSON object: ``format``, ``format_version``, ``caffe_version``,
    ``tool``, ``model`` (prototxt file name), ``weights``, ``net_name``, ``phase``
    ("TRAIN"/"TEST"), ``dtype`` ("float32"; "float64" for a Net<double> dump),
    ``backward`` (bool), ``backward_from`` ("loss", "top_diff" or null),
    ``force_backward``, ``loss``, ``blob_order`` (pycaffe's ``net.blobs`` order),
    ``layers`` (``[{"name", "type", "bottoms", "tops"}]`` in net order, Split layers
    included), ``inputs``, ``outputs``, ``margin`` (per MarginInnerProduct layer:
    ``iteration_field``, ``forwards``, ``lambda_source``), ``compressed``, and for an
    image-list input ``image_antialias`` (whether caffe.io.resize_image blurred before
    shrinking), ``skimage_version`` and, when caffe.io.load_image could not be used,
    ``image_reader``. Only ``format`` is required. With ``layers``, compare checks that
    the reference is of the same net (layer names and types, parameter shapes).
``input/<blob>``
    the array written into input blob ``<blob>`` before Forward.
``data/<blob>``
    ``net.blobs[<blob>].data`` after Forward (pycaffe's view: for a blob that in-place
    layers rewrite, the value after the last of them).
``data/<blob>@<layer>``
    the data of ``<blob>`` right after ``<layer>``'s Forward, for a layer whose top is
    later rewritten in place (e.g. a Convolution followed by an in-place PReLU), so a
    fault is pinned on the right layer of an in-place chain.
``diff/<blob>``
    ``net.blobs[<blob>].diff`` after Backward.
``diff/<blob>@<layer>``
    the diff of ``<blob>`` right after ``<layer>``'s Backward, for a consumer of
    ``<blob>`` that is not its first (in an in-place chain the later consumers write the
    diff before the first one rewrites it).
``param/<layer>/<index>`` and ``param_diff/<layer>/<index>``
    ``net.params[<layer>][<index>]`` data after Forward (MarginInnerProduct normalises
    its weight rows in place in Forward) and diff after Backward.
``lambda/<layer>`` (shape (1,)) and ``iter/<layer>`` (int64, 0-d)
    each MarginInnerProduct layer's lambda in Forward and its iteration counter after
    Forward. Caffe's counter starts at the prototxt's ``iteration`` field and is stored
    in no caffemodel; by default :func:`compare_net` sets ours to the reference's
    (``sync_iteration``) so the same Forward uses the same lambda.
``<key>#sum_sumsq``, ``<key>#idx``, ``<key>#vals``
    a summary instead of the full array for any of the keys above: float64
    [sum, sum of squares] (NaNs skipped), int64 indices ``(j * 1000003) mod count`` for
    j < 64, and the values at those indices (the golden fixtures' summaries).

Separators: ``/`` after the kind, ``@`` before a layer name, ``#`` before a summary
part; ``param`` keys end in ``/<index>``. Blob and layer names may contain ``/``.

Comparison: for each array, the max absolute error and the norm of the error relative
to the reference's norm (relative to 1 when the reference is all zeros); a row passes
when that is at most ``tolerance`` (default 1e-4, the whole-net standard for float32).
NaNs pass where both sides have them. Rows go in execution order: inputs, then per layer
its parameters, lambda and tops (Forward), then per layer in reverse order its parameter
diffs and bottom diffs (Backward). The first failing row names the layer whose Forward
(or Backward) produced it.
"""

import json
import os
from collections import OrderedDict

import numpy as np

from ..errors import PyFaceLayersError

FORMAT = "pyfacelayers-blob-dump"
FORMAT_VERSION = 1
DEFAULT_TOLERANCE = 1e-4
KINDS = ("input", "data", "diff", "param", "param_diff", "lambda", "iter")
SUMMARY_PARTS = ("sum_sumsq", "idx", "vals")
ITERATION_NOTE = ("Caffe's counter starts at the prototxt's `iteration` field and is not "
                  "stored in caffemodels")


class CompareError(PyFaceLayersError, ValueError):
    """A reference or input file cannot be compared with this net (names what and why)."""


# -- reference files -------------------------------------------------------------------
def split_key(key):
    """'data/conv1@relu1#vals' -> ('data', 'conv1', 'relu1', 'vals'); param keys give
    (kind, layer, index, part). Raises ValueError for a key outside the format."""
    kind, sep, rest = key.partition("/")
    if not sep or kind not in KINDS or not rest:
        raise ValueError("key %r: expected <kind>/<name> with kind one of %s"
                         % (key, ", ".join(KINDS)))
    part = None
    if "#" in rest:
        rest, part = rest.rsplit("#", 1)
        if part not in SUMMARY_PARTS:
            raise ValueError("key %r: summary part must be one of %s" % (key, SUMMARY_PARTS))
    if kind in ("param", "param_diff"):
        name, sep, index = rest.rpartition("/")
        if not sep or not index.isdigit() or not name:
            raise ValueError("key %r: expected %s/<layer>/<index>" % (key, kind))
        return kind, name, int(index), part
    at = None
    if kind in ("data", "diff") and "@" in rest:
        rest, at = rest.rsplit("@", 1)
    return kind, rest, at, part


def make_key(kind, name, extra=None):
    if kind in ("param", "param_diff"):
        return "%s/%s/%d" % (kind, name, extra)
    return "%s/%s" % (kind, name) + ("@%s" % extra if extra else "")


class Reference:
    """A reference dump: ``meta`` (dict) and ``arrays`` (key -> numpy array)."""

    def __init__(self, meta, arrays, path=None):
        self.meta, self.arrays, self.path = meta, arrays, path
        self.full = {}       # base key -> array
        self.summaries = {}  # base key -> {part: array}
        for key, value in arrays.items():
            try:
                kind, name, extra, part = split_key(key)
            except ValueError as exc:
                raise CompareError("%s: %s" % (path or "reference", exc)) from None
            base = make_key(kind, name, extra)
            if part is None:
                self.full[base] = value
            else:
                self.summaries.setdefault(base, {})[part] = value
        for base, parts in self.summaries.items():
            if base not in self.full and set(parts) != set(SUMMARY_PARTS):
                raise CompareError("%s: summary of %s lacks %s" % (
                    path or "reference", base, sorted(set(SUMMARY_PARTS) - set(parts))))

    def has(self, base):
        return base in self.full or base in self.summaries

    def bases(self):
        return set(self.full) | set(self.summaries)

    def save(self, path):
        save_reference(path, self.meta, self.arrays)


def save_reference(path, meta, arrays, compress=False):
    """Write a reference .npz (meta as the 0-d unicode ``meta_json``); ``compress``:
    np.savez_compressed (read back the same way)."""
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    out = {"meta_json": np.array(json.dumps(meta, sort_keys=True))}
    out.update((k, np.asarray(v)) for k, v in arrays.items())
    with open(path, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **out)


def load_reference(source):
    """A :class:`Reference` from a path (or return one given)."""
    if isinstance(source, Reference):
        return source
    path = os.fspath(source)
    try:
        z = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError("reference not found: %s" % path) from None
    except (ValueError, OSError) as exc:
        raise CompareError("%s: not a reference .npz (%s)" % (path, exc)) from None
    if not hasattr(z, "files"):
        raise CompareError("%s: a .npy holds one array; a reference is an .npz" % path)
    with z:
        if "meta_json" not in z.files:
            raise CompareError("%s: no meta_json; not a %s file (made by "
                               "tools/dump_caffe_blobs.py)" % (path, FORMAT))
        try:
            meta = json.loads(str(z["meta_json"]))
        except ValueError as exc:  # not JSON, or an object array (pickle)
            raise CompareError("%s: meta_json is not JSON (%s)" % (path, exc)) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CompareError("%s: meta_json format is %r, expected %r" % (
                path, meta.get("format") if isinstance(meta, dict) else meta, FORMAT))
        if int(meta.get("format_version", 1)) > FORMAT_VERSION:
            raise CompareError("%s: format_version %s is newer than this pyfacelayers "
                               "reads (%d)" % (path, meta["format_version"], FORMAT_VERSION))
        arrays = OrderedDict()
        for key in z.files:
            if key != "meta_json":
                try:
                    arrays[key] = z[key]
                except ValueError as exc:  # object arrays: we never unpickle
                    raise CompareError("%s: array %s cannot be read without pickle (%s)"
                                       % (path, key, exc)) from None
    return Reference(meta, arrays, path)
