"""Compared arrays, in execution order, and the report: table, JSON, first failure."""

from collections import OrderedDict

import numpy as np

from .capture import writers_and_readers
from .reference import make_key

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


def array_errors(ours, ref):
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


def summary_of(array):
    flat = np.asarray(array, np.float64).ravel()
    idx = (np.arange(64, dtype=np.int64) * 1000003) % max(flat.size, 1)
    finite = flat[~np.isnan(flat)]
    return np.array([finite.sum(), (finite ** 2).sum()]), idx, flat[idx] if flat.size else idx


def compare_row(row, ours, ref, tol):
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
        row.max_abs, row.rel = array_errors(ours, want)
    else:
        parts = ref.summaries[row.key]
        row.summary = True
        sums, idx, vals = summary_of(ours)
        if not np.array_equal(np.asarray(parts["idx"]), idx):
            row.status = "SHAPE"
            row.note = "summary indices do not fit %d values (the reference blob has " \
                       "another size)" % int(np.size(ours))
            return
        row.max_abs, rel_vals = array_errors(vals, np.asarray(parts["vals"]))
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


def rows_in_order(layers, arrays, net, backward):
    """Row skeletons in execution order for every array ``capture`` produced."""
    writers, readers = writers_and_readers(layers)
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
