"""Parity check against a real Caffe, blob by blob (``pyfacelayers compare``).

Two steps: ``tools/dump_caffe_blobs.py`` runs a net in an environment that has pycaffe
and writes every blob to a *reference* ``.npz``; :func:`compare_net` (or the
``pyfacelayers compare`` command) runs the same net here and reports, in net order,
where the numbers part.

Modules: ``reference`` (the file format), ``inputs`` (what is fed), ``capture`` (running a
net layer by layer into the format), ``report`` (rows, table, JSON); this one runs the
comparison.
"""

import os

import numpy as np

from .capture import capture, expected_keys
from .inputs import load_inputs
from .reference import (DEFAULT_TOLERANCE, ITERATION_NOTE, CompareError, Reference,
                        load_reference, make_key, save_reference, split_key)
from .report import Report, compare_row, rows_in_order

__all__ = ["CompareError", "Reference", "Report", "capture", "compare_net", "load_inputs",
           "load_reference", "save_reference", "split_key"]


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
    from ..commands import _common
    from ..net import Net
    from ..proto import caffe_pb2
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

    rows = rows_in_order(info["layers"], arrays, net, backward)
    for row in rows:
        if ref.has(row.key):
            compare_row(row, arrays[row.key], ref, tolerance)
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
