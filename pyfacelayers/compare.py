"""Parity check against a real Caffe, blob by blob (``pyfacelayers compare``).

Two steps: ``tools/dump_caffe_blobs.py`` runs a net in an environment that has pycaffe
and writes every blob to a *reference* ``.npz``; :func:`compare_net` (or the
``pyfacelayers compare`` command) runs the same net here and reports, in net order,
where the numbers part.

Reference format (``format: pyfacelayers-blob-dump``, version 1)
---------------------------------------------------------------
An ``.npz`` read with ``np.load(path, allow_pickle=False)`` (no pickle anywhere).
Every array is optional, so partial references (golden fixtures, hand-made files) work:
what is present is compared, what is absent is listed as "not in reference".

``meta_json``
    0-d unicode array, a JSON object: ``format``, ``format_version``, ``caffe_version``,
    ``tool``, ``model`` (prototxt file name), ``weights``, ``net_name``, ``phase``
    ("TRAIN"/"TEST"), ``dtype`` ("float32"; "float64" for a Net<double> dump),
    ``backward`` (bool), ``backward_from`` ("loss", "top_diff" or null),
    ``force_backward``, ``loss``, ``blob_order`` (pycaffe's ``net.blobs`` order),
    ``layers`` (``[{"name", "type", "bottoms", "tops"}]`` in net order, Split layers
    included), ``inputs``, ``outputs`` and ``margin`` (per MarginInnerProduct layer:
    ``iteration_field``, ``forwards``, ``lambda_source``). Only ``format`` is required.
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

from . import backend
from .errors import PyFaceLayersError

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


def save_reference(path, meta, arrays):
    """Write a reference .npz (meta as the 0-d unicode ``meta_json``)."""
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    out = {"meta_json": np.array(json.dumps(meta, sort_keys=True))}
    out.update((k, np.asarray(v)) for k, v in arrays.items())
    with open(path, "wb") as f:
        np.savez(f, **out)


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


# -- inputs -----------------------------------------------------------------------------
def load_inputs(source, input_names, input_shapes=None, mean=127.5, scale=0.0078125):
    """Arrays for the net's input blobs from an .npz (one array per input blob, by
    name), an .npy (a net with one input) or an image list (text lines ``path
    [label]``: BGR, resized to the input's height and width, ``(pixel - mean) *
    scale``; labels go to an input named ``label``). Returns {blob: array}."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError("input not found: %s" % path)
    if path.endswith((".npz", ".npy")):
        try:
            z = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CompareError("%s: cannot read (%s)" % (path, exc)) from None
        if not hasattr(z, "files"):
            if len(input_names) != 1:
                raise CompareError("%s: a .npy fills one input blob but the net has %d (%s);"
                                   " give an .npz with one array per input"
                                   % (path, len(input_names), ", ".join(input_names)))
            return {input_names[0]: z}
        with z:
            arrays = {k: z[k] for k in z.files}
        unknown = sorted(set(arrays) - set(input_names))
        if unknown:
            raise CompareError("%s: %s not input blob(s) of the net (inputs: %s)" % (
                path, ", ".join(unknown), ", ".join(input_names)))
        return arrays
    return _load_image_list(path, input_names, input_shapes or {}, mean, scale)


def _load_image_list(path, input_names, input_shapes, mean, scale):
    from .io import load_image, resize_image
    if not input_names:
        raise CompareError("%s: the net has no input blob to fill" % path)
    data_name = input_names[0]
    shape = input_shapes.get(data_name)
    if not shape or len(shape) != 4:
        raise CompareError("%s: an image list needs a 4-axis input blob, %s has shape %s"
                           % (path, data_name, shape))
    images, labels = [], []
    base = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise CompareError("%s:%d: expected 'path [label]', got %r"
                                   % (path, lineno, line.strip()))
            name = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            img = load_image(name, color=shape[1] == 3)
            img = resize_image(img, shape[2:])
            chw = (img * 255.0)[:, :, ::-1].transpose(2, 0, 1) if shape[1] == 3 else \
                (img * 255.0).transpose(2, 0, 1)
            images.append(((chw - mean) * scale).astype(np.float32))
            if len(fields) == 2:
                labels.append(float(fields[1]))
    if not images:
        raise CompareError("%s: no image in the list" % path)
    out = {data_name: np.stack(images)}
    if "label" in input_names and labels:
        if len(labels) != len(images):
            raise CompareError("%s: some lines have a label and some not" % path)
        out["label"] = np.array(labels, np.float32)
    return out


# -- running ----------------------------------------------------------------------------
def _np(array):
    return np.array(backend.to_numpy(array), copy=True)


def net_structure(net):
    """Per layer name/type/bottoms/tops, in net order (Split layers included)."""
    return [{"name": name, "type": net.layers[i].type,
             "bottoms": list(net.bottom_names[name]), "tops": list(net.top_names[name])}
            for i, name in enumerate(net._layer_names)]


def _writers(layers):
    """blob -> indices of the layers that write it (as a top), in order; and blob ->
    indices of the layers that read it (as a bottom)."""
    writers, readers = {}, {}
    for i, layer in enumerate(layers):
        for t in layer["tops"]:
            writers.setdefault(t, []).append(i)
        for b in layer["bottoms"]:
            readers.setdefault(b, []).append(i)
    return writers, readers


def capture(net, inputs, backward=False, top_diff=None):
    """Run ``net`` one layer at a time and return (arrays, info) in the reference
    format (the same procedure as tools/dump_caffe_blobs.py)."""
    layers = net_structure(net)
    writers, readers = _writers(layers)
    arrays = OrderedDict()
    for name, value in inputs.items():
        value = np.asarray(value)
        blob = net.blobs[name]
        blob.reshape(*value.shape)
        blob.data[...] = blob.xp.asarray(value, dtype=blob.dtype)
        arrays["input/" + name] = value.copy()
    margin = [(layer["name"], net.layers[i]) for i, layer in enumerate(layers)
              if layer["type"] == "MarginInnerProduct"]
    loss = 0.0
    for i, layer in enumerate(layers):
        loss += net.forward_from_to(i, i)
        for t in layer["tops"]:
            if writers[t][-1] != i:
                arrays[make_key("data", t, layer["name"])] = _np(net.blobs[t].data)
    for name, blob in net.blobs.items():
        arrays["data/" + name] = _np(blob.data)
    for name, params in net.params.items():
        for k, p in enumerate(params):
            arrays[make_key("param", name, k)] = _np(p.data)
    for name, layer in margin:
        if layer.lambda_ is not None:
            arrays["lambda/" + name] = np.array([layer.lambda_], dtype=net.dtype)
        arrays["iter/" + name] = np.array(layer.iteration, dtype=np.int64)
    backward_from = None
    if backward:
        backward_from = _set_top_diffs(net, top_diff)
        for params in net.params.values():
            for p in params:
                p.diff[...] = 0
        for i in range(len(layers) - 1, -1, -1):
            net.backward_from_to(i, i)
            for b in layers[i]["bottoms"]:
                if readers[b][0] != i:
                    arrays[make_key("diff", b, layers[i]["name"])] = _np(net.blobs[b].diff)
        for name, blob in net.blobs.items():
            arrays["diff/" + name] = _np(blob.diff)
        for name, params in net.params.items():
            for k, p in enumerate(params):
                arrays[make_key("param_diff", name, k)] = _np(p.diff)
    info = {"layers": layers, "blob_order": list(net.blobs), "inputs": list(net.inputs),
            "outputs": list(net.outputs), "loss": loss, "backward": bool(backward),
            "backward_from": backward_from, "net_name": net.name,
            "force_backward": bool(net._param.force_backward),
            "dtype": np.dtype(net.dtype).name}
    return arrays, info


def expected_keys(net, backward):
    """Every key :func:`capture` writes for this net (without running it)."""
    layers = net_structure(net)
    writers, readers = _writers(layers)
    keys = {"input/" + n for n in net.inputs} | {"data/" + b for b in net.blobs}
    for i, layer in enumerate(layers):
        keys |= {make_key("data", t, layer["name"]) for t in layer["tops"]
                 if writers[t][-1] != i}
        if layer["type"] == "MarginInnerProduct":
            keys |= {"lambda/" + layer["name"], "iter/" + layer["name"]}
        if backward:
            keys |= {make_key("diff", b, layer["name"]) for b in layer["bottoms"]
                     if readers[b][0] != i}
    for name, params in net.params.items():
        keys |= {make_key("param", name, k) for k in range(len(params))}
        if backward:
            keys |= {make_key("param_diff", name, k) for k in range(len(params))}
    if backward:
        keys |= {"diff/" + b for b in net.blobs}
    return keys


def _set_top_diffs(net, top_diff):
    has_loss = any(w for w in net.blob_loss_weights.values())
    if top_diff:
        for name, value in top_diff.items():
            if name not in net.blobs:
                raise CompareError('top diff for "%s": no such blob in the net' % name)
            blob = net.blobs[name]
            value = np.asarray(value)
            if tuple(value.shape) != tuple(blob.shape):
                raise CompareError('top diff for "%s" has shape %s, the blob has %s'
                                   % (name, value.shape, blob.shape))
            blob.diff[...] = blob.xp.asarray(value, dtype=blob.dtype)
        return "top_diff"
    if not has_loss:
        raise CompareError("Backward needs a loss or a top diff: the net has no loss layer;"
                           " give --top-diff FILE.npz (one array per output blob: %s)"
                           % ", ".join(net.outputs))
    return "loss"


# -- comparing --------------------------------------------------------------------------
class Row:
    """One compared (or absent) array."""

    def __init__(self, key, section, layer, layer_type, shape, note=""):
        self.key, self.section, self.layer, self.layer_type = key, section, layer, layer_type
        self.shape, self.ref_shape = shape, None
        self.max_abs = self.rel = None
        self.status = "absent"  # pass, FAIL, SHAPE, absent
        self.summary = False
        self.note = note
        self.chain, self.unresolved_chain = [], None

    @property
    def failed(self):
        return self.status in ("FAIL", "SHAPE")

    def to_dict(self):
        return {"key": self.key, "section": self.section, "layer": self.layer,
                "layer_type": self.layer_type,
                "shape": list(self.shape) if self.shape is not None else None,
                "reference_shape": list(self.ref_shape) if self.ref_shape is not None
                else None, "max_abs_error": self.max_abs, "relative_error": self.rel,
                "status": self.status, "summary": self.summary, "note": self.note}


def json_safe(value):
    """NaN and infinities as strings, so --json output is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _errors(ours, ref):
    a = np.asarray(ours, np.float64)
    r = np.asarray(ref, np.float64)
    nan_a, nan_r = np.isnan(a), np.isnan(r)
    if not np.array_equal(nan_a, nan_r):
        return float("nan"), float("inf")
    d = np.where(nan_a, 0.0, a - r)
    norm = float(np.linalg.norm(np.where(nan_r, 0.0, r)))
    err = float(np.linalg.norm(d))
    max_abs = float(np.abs(d).max()) if d.size else 0.0
    return max_abs, err / norm if norm > 0 else err


def _summary(array):
    flat = np.asarray(array, np.float64).ravel()
    idx = (np.arange(64, dtype=np.int64) * 1000003) % max(flat.size, 1)
    finite = flat[~np.isnan(flat)]
    return np.array([finite.sum(), (finite ** 2).sum()]), idx, flat[idx] if flat.size else idx


def _compare_row(row, ours, ref, tol):
    if ref.full.get(row.key) is not None:
        want = ref.full[row.key]
        row.ref_shape = tuple(want.shape)
        if row.key.startswith("iter/"):
            row.max_abs = float(abs(int(ours) - int(want)))
            row.rel = row.max_abs
            row.status = "pass" if row.max_abs == 0 else "FAIL"
            return
        if tuple(np.shape(ours)) != row.ref_shape:
            row.status = "SHAPE"
            row.note = "reference shape %s, ours %s" % (row.ref_shape, tuple(np.shape(ours)))
            return
        row.max_abs, row.rel = _errors(ours, want)
    else:
        parts = ref.summaries[row.key]
        row.summary = True
        sums, idx, vals = _summary(ours)
        if not np.array_equal(np.asarray(parts["idx"]), idx):
            row.status = "SHAPE"
            row.note = "summary indices do not fit %d values (the reference blob has " \
                       "another size)" % int(np.size(ours))
            return
        row.max_abs, rel_vals = _errors(vals, np.asarray(parts["vals"]))
        want = np.asarray(parts["sum_sumsq"], np.float64)
        rel_sq = abs(sums[1] - want[1]) / want[1] / 2 if want[1] > 0 else abs(sums[1])
        row.rel = max(rel_vals, rel_sq)
    row.status = "pass" if row.rel <= tol else "FAIL"


class Report:
    """What :func:`compare_net` found: ``rows`` in execution order, ``passed``,
    ``first_failure`` (a Row or None), ``notes``, ``absent`` (net arrays the reference
    does not hold)."""

    def __init__(self, rows, tolerance, notes, meta, layers=None):
        self.rows, self.tolerance, self.notes, self.meta = rows, tolerance, notes, meta
        self.layers = layers or []
        compared = [r for r in rows if r.status != "absent"]
        self.compared = len(compared)
        self.failures = [r for r in compared if r.failed]
        self.first_failure = self.failures[0] if self.failures else None
        self.absent = [r.key for r in rows if r.status == "absent"]
        self.passed = not self.failures and self.compared > 0

    @property
    def exit_code(self):
        return 0 if self.passed else 1

    def where(self, row):
        """'top of layer conv1 (Convolution)' or 'Backward of layer ...'."""
        if row.layer is None:
            return "input of the net"
        what = {"forward": "top of layer", "backward": "Backward of layer",
                "param": "parameter of layer", "param_diff": "Backward of layer"}[row.section]
        if row.key.startswith(("lambda/", "iter/")):
            what = "lambda of layer"
        chain = getattr(row, "unresolved_chain", None)
        if chain:  # the reference has only the end of an in-place chain
            return "%s %s (in place; the reference holds only the last value)" % (
                what, " -> ".join('"%s" (%s)' % c for c in chain))
        return '%s "%s" (%s)' % (what, row.layer, row.layer_type)

    def suspects(self, row):
        """Layers (Split layers left out) that ran between the last passing array before
        ``row`` and ``row``: where the fault is when the reference holds no array in
        between (a partial reference). One layer when the fault is pinned."""
        if row.layer is None or not self.layers:
            return []
        index = {l["name"]: i for i, l in reversed(list(enumerate(self.layers)))}
        here = index[row.layer]
        before = [r for r in self.rows[:self.rows.index(row)]
                  if r.status == "pass" and r.layer is not None]
        if row.section in ("backward", "param_diff"):
            # A right bottom diff clears its layer; a right parameter diff clears only
            # the layer's top diff (its bottom diff is computed apart).
            bounds = [index[r.layer] if r.section == "backward" else index[r.layer] + 1
                      for r in before if r.section in ("backward", "param_diff")]
            span = range(here, min(bounds) if bounds else len(self.layers))
        else:  # a right top clears its layer and the ones before
            bounds = [index[r.layer] for r in before if r.section == "forward"]
            span = range(max(bounds) + 1 if bounds else 0, here + 1)
        return [self.layers[i]["name"] for i in span if self.layers[i]["type"] != "Split"]

    def to_dict(self):
        first = self.first_failure
        return {"passed": self.passed, "tolerance": self.tolerance,
                "compared": self.compared, "failed": len(self.failures),
                "first_failure": None if first is None else json_safe(dict(
                    first.to_dict(), where=self.where(first))),
                "suspect_layers": self.suspects(first) if first is not None else [],
                "not_in_reference": self.absent, "notes": self.notes,
                "reference": {k: self.meta.get(k) for k in (
                    "caffe_version", "model", "net_name", "phase", "dtype", "tool")},
                "rows": [json_safe(r.to_dict()) for r in self.rows]}

    def format_table(self, show_absent=False):
        lines = []
        m = self.meta
        lines.append("reference: Caffe %s, net %s, phase %s, %s" % (
            m.get("caffe_version", "(not recorded)"),
            m.get("net_name") or m.get("model") or "(not recorded)",
            m.get("phase", "?"), m.get("dtype", "float32")))
        head = "%-44s %-18s %12s %12s  %s" % ("blob", "shape", "max abs err", "rel err",
                                             "status")
        lines += [head, "-" * len(head)]
        for row in self.rows:
            if row.status == "absent" and not show_absent:
                continue
            shape = "x".join(map(str, row.shape)) if row.shape else "scalar"
            if row.summary:
                shape += " (sum)"
            num = (lambda v: "-" if v is None else "%.3g" % v)
            line = "%-44s %-18s %12s %12s  %s" % (row.key, shape, num(row.max_abs),
                                                 num(row.rel), row.status)
            if row.note:
                line += "  (%s)" % row.note
            if row is self.first_failure:
                line += "  <== first over tolerance: " + self.where(row)
            lines.append(line)
        lines.append("")
        for note in self.notes:
            lines.append("note: " + note)
        if self.absent:
            kinds = OrderedDict()
            for key in self.absent:
                kind = key.split("/", 1)[0] + ("@" if "@" in key else "")
                kinds[kind] = kinds.get(kind, 0) + 1
            lines.append("not in reference: %d arrays (%s)%s" % (
                len(self.absent), ", ".join("%s %d" % kv for kv in kinds.items()),
                "" if show_absent else "; --all lists them"))
            if show_absent:
                lines.append("  " + " ".join(self.absent))
        if self.passed:
            lines.append("PASS: %d arrays within %g of the reference" % (self.compared,
                                                                           self.tolerance))
        elif not self.compared:
            lines.append("FAIL: nothing to compare (the reference holds none of this net's "
                         "arrays)")
        else:
            first = self.first_failure
            lines.append("FAIL: %d of %d arrays over %g; first: %s, %s" % (
                len(self.failures), self.compared, self.tolerance, first.key,
                self.where(first)))
            suspects = self.suspects(first)
            if len(suspects) > 1:
                shown = suspects if len(suspects) <= 12 else suspects[:6] + ["..."] + \
                    suspects[-5:]
                lines.append("  the reference holds nothing between the last passing array "
                             "and this one: the fault is in one of the %d layers %s "
                             "(dump every blob to pin it)" % (len(suspects), ", ".join(shown)))
        return "\n".join(lines)


def _rows_in_order(layers, arrays, net, backward):
    """Row skeletons in execution order for every array ``capture`` produced."""
    writers, readers = _writers(layers)
    rows = []
    for key in arrays:
        if key.startswith("input/"):
            rows.append(Row(key, "forward", None, None, arrays[key].shape))
    for name in net.blobs:  # blobs no layer writes (none in a well-formed net)
        if name not in writers:
            rows.append(Row("data/" + name, "forward", None, None, arrays["data/" + name].shape))
    for i, layer in enumerate(layers):
        lname, ltype = layer["name"], layer["type"]
        for k in range(len(net.layers[i].blobs)):
            key = make_key("param", lname, k)
            if key in arrays:
                rows.append(Row(key, "param", lname, ltype, arrays[key].shape))
        for key in ("lambda/" + lname, "iter/" + lname):  # layer state, as params
            if key in arrays:
                rows.append(Row(key, "param", lname, ltype, arrays[key].shape))
        for t in layer["tops"]:
            key = "data/" + t if writers[t][-1] == i else make_key("data", t, lname)
            rows.append(Row(key, "forward", lname, ltype, arrays[key].shape))
            rows[-1].chain = [(layers[j]["name"], layers[j]["type"]) for j in writers[t]
                              if j <= i]
    if backward:
        seen = set()
        for name in net.blobs:
            if name not in readers and "diff/" + name in arrays:
                rows.append(Row("diff/" + name, "backward", None, None,
                                arrays["diff/" + name].shape,
                                note="top diff (loss weight or given)"))
        for i in range(len(layers) - 1, -1, -1):
            lname, ltype = layers[i]["name"], layers[i]["type"]
            for k in range(len(net.layers[i].blobs)):
                key = make_key("param_diff", lname, k)
                rows.append(Row(key, "param_diff", lname, ltype, arrays[key].shape))
            for b in layers[i]["bottoms"]:
                key = "diff/" + b if readers[b][0] == i else make_key("diff", b, lname)
                if key in arrays and key not in seen:
                    seen.add(key)
                    rows.append(Row(key, "backward", lname, ltype, arrays[key].shape))
    return rows


def _sync_iterations(net, ref, notes, sync):
    for lname, layer in net.layer_dict.items():
        if layer.type != "MarginInnerProduct" or not ref.has("iter/" + lname):
            continue
        if "iter/" + lname not in ref.full:
            continue
        want_after = int(ref.full["iter/" + lname])
        forwards = int(ref.meta.get("margin", {}).get(lname, {}).get("forwards", 1))
        start = want_after - forwards
        if start == layer.iteration:
            continue
        if sync:
            notes.append('%s: iteration counter set to %d (the prototxt gives %d) so that '
                         'Forward uses the reference\'s iteration %d; %s'
                         % (lname, start, layer.iteration, want_after, ITERATION_NOTE))
            layer.iteration = start
        else:
            notes.append('%s: iteration %d vs %d (reference vs ours after Forward): %s; '
                         'without --no-sync-iteration compare sets ours to match'
                         % (lname, want_after, layer.iteration + forwards, ITERATION_NOTE))


def compare_net(model, weights, reference, inputs=None, backward=None, top_diff=None,
                phase=None, tolerance=DEFAULT_TOLERANCE, dtype=None, gpu=None,
                sync_iteration=True, level=0, stages=(), mean=127.5, scale=0.0078125):
    """Run ``model`` with ``weights`` here as the reference's Caffe run did and compare
    every array the reference holds. ``model``: a prototxt (or a built :class:`Net`,
    then ``weights`` is unused). ``reference``: path or :class:`Reference`.
    ``inputs``: None (use the reference's ``input/*``), a dict {blob: array} or a path
    (see :func:`load_inputs`). ``backward``: None follows the reference (Backward when
    it holds diffs). ``top_diff``: {blob: array} or an .npz path for nets without a
    loss (default: the reference's diffs of the net's outputs). ``gpu``: a device id
    to run on (cupy). Returns a :class:`Report`."""
    from .commands import _common
    from .net import Net
    from .proto import caffe_pb2
    ref = load_reference(reference)
    meta = ref.meta
    notes = []
    if phase is None:
        phase = meta.get("phase", "TEST")
    phase_value = getattr(caffe_pb2, phase) if isinstance(phase, str) else phase
    dtype = np.dtype(dtype or meta.get("dtype") or "float32")
    if gpu is not None:
        _common.select_device(gpu)
    if isinstance(model, Net):  # already built (and weighted) by the caller
        net = model
    else:
        net = Net(model, phase_value, weights=weights, dtype=dtype, level=level,
                  stages=tuple(stages), seed=0)
    if meta.get("net_name") and net.name and meta["net_name"] != net.name:
        notes.append('the reference is of net "%s", the model is "%s"'
                     % (meta["net_name"], net.name))
    # Arrays of the reference this net does not have: another net, or a wrong name.
    if backward is None:
        backward = any(k.startswith(("diff/", "param_diff/")) for k in ref.bases())
    expected = expected_keys(net, backward)
    foreign = sorted(b for b in ref.bases() if b not in expected)
    if foreign:
        shown = ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else "")
        if not backward and all(b.startswith(("diff/", "param_diff/")) for b in foreign):
            notes.append("the reference holds diffs; run with backward to compare them")
        else:
            raise CompareError(
                "%d array(s) of the reference are not in this net: %s (is the reference "
                "from another net or phase? reference net %r, phase %s; this net %r, "
                "phase %s)" % (len(foreign), shown, meta.get("net_name") or meta.get("model"),
                               meta.get("phase"), net.name, caffe_pb2.Phase.Name(phase_value)))
    # Inputs: given, else the reference's.
    ref_inputs = {k[len("input/"):]: v for k, v in ref.full.items() if k.startswith("input/")}
    shapes = {n: net.blobs[n].shape for n in net.inputs}
    if inputs is None:
        inputs = ref_inputs
        if not inputs and net.inputs:
            raise CompareError("the reference holds no input/* arrays; give the input "
                               "(--input) the Caffe run used")
    elif not isinstance(inputs, dict):
        inputs = load_inputs(inputs, list(net.inputs), shapes, mean, scale)
    unknown = [n for n in inputs if n not in net.blobs or n not in net.inputs]
    if unknown:
        raise CompareError("input(s) %s are not input blobs of the net (inputs: %s); is "
                           "the reference from another net?" % (
                               ", ".join(unknown), ", ".join(net.inputs) or "none"))
    missing = [n for n in net.inputs if n not in inputs]
    if missing:
        raise CompareError("no value for input blob(s) %s (neither --input nor the "
                           "reference has it)" % ", ".join(missing))
    if backward and top_diff is None and not any(w for w in net.blob_loss_weights.values()):
        top_diff = {n: ref.full["diff/" + n] for n in net.outputs if "diff/" + n in ref.full}
    elif isinstance(top_diff, (str, os.PathLike)):
        with np.load(top_diff, allow_pickle=False) as z:
            top_diff = {k: z[k] for k in z.files}
    if backward and not any(k.startswith(("diff/", "param_diff/")) for k in ref.bases()):
        notes.append("the reference holds no diffs (dump it with --backward to compare "
                     "Backward)")
    _sync_iterations(net, ref, notes, sync_iteration)
    arrays, info = capture(net, inputs, backward=backward, top_diff=top_diff)

    rows = _rows_in_order(info["layers"], arrays, net, backward)
    for row in rows:
        if ref.has(row.key):
            _compare_row(row, arrays[row.key], ref, tolerance)
    _explain(rows, ref, arrays, notes)
    report = Report(rows, tolerance, notes, meta, info["layers"])
    report.net_info = info  # our net's layers, blob order, loss
    return report


def _explain(rows, ref, arrays, notes):
    """Hints for common causes: the lambda's iteration, in-place chains the reference
    holds only the last value of."""
    for row in rows:
        if row.key.startswith("lambda/") and row.failed:
            it = "iter/" + row.key[len("lambda/"):]
            if it in ref.full and int(ref.full[it]) != int(arrays[it]):
                row.note = "iteration %d vs %d (reference vs ours): %s" % (
                    int(ref.full[it]), int(arrays[it]), ITERATION_NOTE)
        chain = getattr(row, "chain", [])
        if row.failed and len(chain) > 1 and not any(
                ref.has(make_key("data", row.key[len("data/"):], c[0])) for c in chain[:-1]):
            row.unresolved_chain = chain
