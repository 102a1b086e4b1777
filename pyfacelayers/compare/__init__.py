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


def _layer_list(layers):
    """(name, type) of each layer, Split and Input layers left out: where Splits go is a
    detail of how each Caffe inserts them, and a Caffe older than the Input layer keeps
    a legacy ``input:`` header as net inputs, not as a layer (the inputs are checked
    apart)."""
    return [(l["name"], l["type"]) for l in layers if l.get("type") not in ("Split", "Input")]


def check_same_net(net, ref):
    """A CompareError when the reference's recorded layers (names and types, in order)
    or its parameter shapes are not this net's: a dump of another net, perhaps of the
    same name. References without a layer list (partial, hand-made) are not checked."""
    from .capture import net_structure
    theirs = ref.meta.get("layers")
    if not theirs:
        return
    same_name = ref.meta.get("net_name") and ref.meta.get("net_name") == net.name
    lead = "the reference is of another net%s: " % (
        ' with the same name "%s"' % net.name if same_name else "")
    theirs, ours = _layer_list(theirs), _layer_list(net_structure(net))
    counts = "%d layers there, %d here, not counting Input and Split layers" % (
        len(theirs), len(ours))
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            after = ' after "%s"' % ours[i - 1][0] if i else " first"
            raise CompareError(lead + 'it has "%s" (%s) where this net has "%s" (%s)%s '
                               '(%s)' % (a[0], a[1], b[0], b[1], after, counts))
    if len(theirs) != len(ours):
        longer, extra = ("the reference", theirs) if len(theirs) > len(ours) \
            else ("this net", ours)
        raise CompareError(lead + "%s; %s goes on with %s" % (
            counts, longer,
            ", ".join('"%s" (%s)' % l for l in extra[min(len(theirs), len(ours)):][:4])))
    for name, params in net.params.items():
        for k, p in enumerate(params):
            want = ref.full.get(make_key("param", name, k))
            if want is not None and tuple(want.shape) != tuple(p.shape):
                raise CompareError(lead + "the same layers, but parameter %d of layer "
                                   '"%s" has shape %s there, %s here' % (
                                       k, name, tuple(want.shape), tuple(p.shape)))


def _check_phase(phase, meta):
    """The phase to run: the reference's, or ``phase`` when it is the same."""
    dumped = meta.get("phase")
    if phase is None:
        return dumped or "TEST"
    if dumped and phase != dumped:
        raise CompareError("--phase %s, but the reference was dumped in phase %s: the "
                           "same net runs other layers in another phase; leave --phase "
                           "out (the reference's is the default) or dump again with "
                           "--phase %s" % (phase, dumped, phase))
    return phase


def _backward_possible(net, backward, explicit, notes):
    """Caffe runs no Backward at all for a net without a loss unless the prototxt says
    force_backward: true (no layer is found to contribute to a loss); its diffs stay
    zero. Refuse an explicit Backward there; skip a defaulted one with a note."""
    if not backward:
        return backward
    has_loss = any(w for w in net.blob_loss_weights.values())
    if has_loss or net._param.force_backward:
        return backward
    why = ("the net has no loss layer and no force_backward: true, so Caffe runs no "
           "Backward for it (no diff is computed; a dump's diffs are zeros, except any "
           "top diffs given)")
    if explicit:
        raise CompareError("cannot compare Backward: %s. Add force_backward: true to the "
                           "prototxt and dump again, or compare without --backward" % why)
    notes.append("Backward not compared: %s" % why)
    return False


_PREBUILT = object()  # compare_net was given a built Net: its weights are the caller's


def _explain_weights(rows, meta, weights, notes):
    """When the first failure is a parameter, say why if the weights differ: a dump made
    without --weights (Caffe's own random fillers), or other weights files."""
    first = next((r for r in rows if r.failed), None)
    if first is None or not first.key.startswith("param/"):
        return
    theirs = meta.get("weights")
    if weights is _PREBUILT:  # the caller built and weighted the net: no file to name
        weights = None
        if theirs:
            return
    ours = os.path.basename(os.fspath(weights)) if isinstance(weights, (str, os.PathLike)) \
        else None
    if meta.get("tool") and not theirs:
        hint = ("the reference was dumped without --weights: Caffe filled the parameters "
                "with its own random fillers, which no other run reproduces; dump again "
                "with --weights%s" % (" " + ours if ours else " FILE.caffemodel (and give "
                                      "the same file here)"))
    elif theirs and not ours:
        hint = ("the reference was dumped with --weights %s; give the same file here "
                "(--weights)" % theirs)
    elif theirs and ours and theirs != ours:
        hint = "the reference was dumped with weights %s, this run uses %s" % (theirs, ours)
    else:
        return
    first.note = (first.note + "; " if first.note else "") + hint
    notes.append(hint)


def compare_net(model, weights, reference, inputs=None, backward=None, top_diff=None,
                phase=None, tolerance=DEFAULT_TOLERANCE, dtype=None, gpu=None,
                sync_iteration=True, level=0, stages=(), mean=127.5, scale=0.0078125,
                antialias=None):
    """Run ``model`` with ``weights`` here as the reference's Caffe run did and compare
    every array the reference holds. ``model``: a prototxt (or a built :class:`Net`,
    then ``weights`` is unused). ``reference``: path or :class:`Reference`.
    ``inputs``: None (use the reference's ``input/*``), a dict {blob: array} or a path
    (see :func:`load_inputs`). ``backward``: None follows the reference (Backward when
    it holds diffs). ``top_diff``: {blob: array} or an .npz path for nets without a
    loss (default: the reference's diffs of the net's outputs). ``gpu``: a device id
    to run on (cupy). ``phase``: must be the reference's (the default).
    ``antialias``: for an image list, resize as newer scikit-image does (see
    :func:`pyfacelayers.io.resize_image`); None: as the reference records (its dump
    probed caffe.io), else as pycaffe with the older scikit-image. Returns a
    :class:`Report`."""
    from ..commands import _common
    from ..net import Net
    from ..proto import caffe_pb2
    ref = load_reference(reference)
    meta = ref.meta
    notes = []
    phase = _check_phase(phase, meta)
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
    check_same_net(net, ref)
    explicit_backward = bool(backward)
    if backward is None:
        backward = any(k.startswith(("diff/", "param_diff/")) for k in ref.bases())
    backward = _backward_possible(net, backward, explicit_backward, notes)
    # Arrays of the reference this net does not have: another net, or a wrong name.
    expected = expected_keys(net, backward)
    foreign = sorted(b for b in ref.bases() if b not in expected)
    if foreign:
        shown = ", ".join(foreign[:8]) + (" ..." if len(foreign) > 8 else "")
        if not backward and all(b.startswith(("diff/", "param_diff/")) for b in foreign):
            if explicit_backward or not any("Backward not compared" in n for n in notes):
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
        if antialias is None:
            antialias = bool(meta.get("image_antialias", False))
        inputs = load_inputs(inputs, list(net.inputs), shapes, mean, scale, antialias)
    unknown = [n for n in inputs if n not in net.blobs or n not in net.inputs]
    if unknown:
        raise CompareError("input(s) %s are not input blobs of the net (inputs: %s); is "
                           "the reference from another net?" % (
                               ", ".join(unknown), ", ".join(net.inputs) or "none"))
    missing = [n for n in net.inputs if n not in inputs]
    if missing:
        raise CompareError("no value for input blob(s) %s (neither --input nor the "
                           "reference has it; is the reference from another net or "
                           "phase?)" % ", ".join(missing))
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
    _explain_weights(rows, meta, _PREBUILT if isinstance(model, Net) else weights, notes)
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
