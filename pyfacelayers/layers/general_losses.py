"""NormFace's metric losses on a distance matrix: ``GeneralContrastiveLoss`` and
``GeneralTripletLoss`` (happynear's fork; margin-family.md 3.10, 3.11).

Both read an ``(N, C)`` matrix ``d`` of distances from each sample to each class centre
(InnerDistance's output) and the labels; the label column holds the positive distance
``p = d[i, y_i]``, the other columns the negatives. The forks have only CPU code for
them (GPU mode runs it too), so there is one behaviour; it is written once over the
blobs' array module (numpy or cupy), vectorised where the originals loop.

As the originals, the Forward writes its per-element loss terms into ``bottom[0]``'s
diff (the scratch the Backward starts from); the Backward overwrites that diff. The
reported loss is ``sum |terms| / N``; an optional second top gives mean distances.
"""

import numpy as np

from ..backend import array_module, to_numpy
from ._helpers import checked_labels, loss_weight
from .base import Layer, register


def _f32(value, dtype):
    """A proto float field as the layer sees it: float32, widened to the layer dtype."""
    return dtype.type(np.float32(value))


class _DistanceLoss(Layer):
    """What both losses share: the (N, C) view, the labels, the tops, the checks."""

    min_num_top = 1
    max_num_top = 2
    is_loss = True

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def _check_dtype(self):
        if self.dtype not in (np.float32, np.float64):
            raise self.error("dtype must be float32 or float64, got %s" % self.dtype)

    def _dims(self, bottom):
        shape = bottom[0].shape
        if len(shape) < 1 or shape[0] == 0:
            raise self.error("distances (bottom[0]) have shape %s, expected (N, C) with "
                             "N > 0" % (shape,))
        num = shape[0]
        dim = bottom[0].count // num
        if dim == 0:
            raise self.error("distances (bottom[0]) have shape %s: no class column" % (shape,))
        if bottom[1].shape[:1] != shape[:1]:
            raise self.error("data %s and label %s must have the same first dimension"
                             % (shape, bottom[1].shape))
        if bottom[1].count != num:
            raise self.error("labels (bottom[1]) have %d values (shape %s), expected one per "
                             "sample: %d" % (bottom[1].count, bottom[1].shape, num))
        return num, dim

    def _reshape_tops(self, bottom, top, second_size):
        self.dims = self._dims(bottom)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((second_size,))

    def _inputs(self, bottom):
        """(d, labels as ints, a boolean mask of the label columns)."""
        num, dim = self.dims
        d = bottom[0].data.reshape(num, dim)
        xp = array_module(d)
        labels, _ = checked_labels(self, xp, bottom[1].data, num, 1, dim, None)
        labels = labels[:, 0]
        is_label = xp.arange(dim)[None, :] == labels[:, None]
        return d, labels, is_label

    def _check_no_label_gradient(self, propagate_down):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the label input (bottom[1])")

    def _finish_forward(self, bottom, top, terms, means):
        num, dim = self.dims
        bottom[0].diff.reshape(num, dim)[...] = terms
        self._terms = terms
        top[0].data[...] = abs(terms).sum(dtype=terms.dtype) / self.dtype.type(num)
        if len(top) > 1:
            top[1].data[...] = array_module(terms).asarray(means, dtype=self.dtype)

    def _scale(self, top, grad):
        num, _ = self.dims
        t = self.dtype.type
        return grad * t(t(loss_weight(top[0])) / t(num))


@register
class GeneralContrastiveLoss(_DistanceLoss):
    """NormFace's "C-contrastive" loss on distances (happynear's fork).

    With ``p = d[i, y_i]`` and the negative margin ``nm`` (``negative_margin``, plus the
    running ``intra_mae`` when ``add_intra_mae``):

    * terms: positive ``min(thresh, max(0, p - positive_margin)) * positive_weight``;
      every negative with ``d < nm`` (strict): ``(nm - d) * negative_weight``
      (``exp_negative_weight``: ``exp(-d) * negative_weight``), others 0.
      ``max_negative_only``: per row only the largest negative term survives (the fork's
      scan starts at column 0, which may be the label column: then no negative
      survives); ``max_positive_only``: only the SMALLEST positive term of the batch
      survives (first such row; the name says max, the code picks min);
      ``positive_first``: rows with ``p > positive_upper_bound`` keep no negative term.
    * loss ``sum |terms| / N``; ``top[1] = [sum of the truncated positives / N,
      sum of the hinges (nm - d) / N / (C - 1)(, intra_mae)]``; it counts in the net's
      loss when given a loss_weight (the NormFace nets do) but gets no gradient.
    * state: ``intra_mae = min(0.99 intra_mae + 0.01 positive / N, max_negative_margin)``
      after EVERY Forward (whatever ``add_intra_mae``); :meth:`get_state` /
      :meth:`set_state` (solver snapshots).
    * gradient (per element, times loss_weight / N): ``positive_weight`` on the
      positive if ``positive_margin < p < thresh`` (note: the forward truncates at
      ``p - positive_margin >= thresh``), ``-negative_weight`` (or ``-exp(-d) *
      negative_weight``) on the surviving negatives; ``positive_first`` rows get
      ``positive_weight`` and no negative gradient; ``normalize_negative`` (when set)
      divides the negative gradients by ``r = |sum of their magnitudes| /
      normalize_negative / N`` if ``r > positive_weight``.
    * an optional third bottom (same shape as ``d``) replaces ``d`` in every comparison
      and term, while the gradient goes to ``bottom[0]`` (happynear's ``ms`` fork).
    * ``square`` is read by nothing in the fork; accepted and ignored.
    """

    type = "GeneralContrastiveLoss"
    min_num_bottom = 2
    max_num_bottom = 3

    def layer_setup(self, bottom, top):
        self._check_dtype()
        p = self.param.general_contrastive_loss_param
        if p.HasField("normalize_negative") and p.normalize_negative == 0:
            raise self.error("normalize_negative must not be 0 (the gradient would be "
                             "divided by 0)")
        self.intra_mae = self.dtype.type(0)
        self._max_negative_index = None
        self._max_positive_index = 0

    def get_state(self):
        return {"intra_mae": float(self.intra_mae)}

    def set_state(self, state):
        unknown = set(state) - {"intra_mae"}
        if unknown:
            raise self.error("unknown state keys %s" % sorted(unknown))
        if "intra_mae" in state:
            value = state["intra_mae"]
            try:
                finite = not isinstance(value, bool) and np.isfinite(float(value))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise self.error("state intra_mae must be a finite number, got %r" % (value,))
            self.intra_mae = self.dtype.type(value)

    def reshape(self, bottom, top):
        p = self.param.general_contrastive_loss_param
        self._reshape_tops(bottom, top, 3 if p.add_intra_mae else 2)
        if len(bottom) == 3 and bottom[2].shape != bottom[0].shape:
            raise self.error("bottom[2] (the distances compared instead of bottom[0]) has "
                             "shape %s, expected %s" % (bottom[2].shape, bottom[0].shape))

    def _distances(self, bottom):
        """The compared distances: bottom[2]'s data when given, else bottom[0]'s."""
        num, dim = self.dims
        return bottom[-1 if len(bottom) == 3 else 0].data.reshape(num, dim)

    def _parameters(self):
        p = self.param.general_contrastive_loss_param
        t = self.dtype
        return {name: _f32(getattr(p, name), t) for name in (
            "positive_margin", "negative_margin", "positive_weight", "negative_weight",
            "normalize_negative", "positive_outlier_thresh", "positive_upper_bound",
            "max_negative_margin")}

    def forward(self, bottom, top):
        p = self.param.general_contrastive_loss_param
        v = self._parameters()
        num, dim = self.dims
        _, labels, is_label = self._inputs(bottom)
        d = self._distances(bottom)
        xp = array_module(d)
        t = self.dtype.type
        rows = xp.arange(num)
        # The margin of this Forward; the Backward uses the same one.
        self._negative_margin = (t(self.intra_mae + v["negative_margin"])
                                 if p.add_intra_mae else v["negative_margin"])
        nm = self._negative_margin
        positive = d[rows, labels]
        truncated = xp.minimum(v["positive_outlier_thresh"],
                               xp.maximum(t(0), positive - v["positive_margin"]))
        hinge = xp.maximum(t(0), nm - d)
        active = (~is_label) & (d < nm)
        if p.exp_negative_weight:
            negative_terms = xp.exp(-d) * v["negative_weight"]
        else:
            negative_terms = hinge * v["negative_weight"]
        terms = xp.where(active, negative_terms, t(0))
        terms[rows, labels] = truncated * v["positive_weight"]

        if p.max_negative_only:
            # The fork's scan: index 0 first, then a later active negative replaces it
            # on a strictly larger term; so the first maximum of (column 0, active ones).
            candidates = xp.where(active, terms, -xp.inf)
            candidates[:, 0] = terms[:, 0]
            self._max_negative_index = xp.argmax(candidates, axis=1)
        if p.positive_first:
            terms = xp.where((positive > v["positive_upper_bound"])[:, None] & ~is_label,
                             t(0), terms)
        if p.max_positive_only:
            # The first row with the smallest positive term (strict <, from row 0).
            self._max_positive_index = int(xp.argmin(terms[rows, labels]))
            keep = rows == self._max_positive_index
            terms[rows, labels] = xp.where(keep, terms[rows, labels], t(0))
        if p.max_negative_only:
            kept = xp.arange(dim)[None, :] == self._max_negative_index[:, None]
            terms = xp.where(is_label | kept, terms, t(0))

        positive_sum = truncated.sum(dtype=self.dtype)
        hinge_sum = xp.where(active, hinge, t(0)).sum(dtype=self.dtype)
        # C++: intra_mae_ = 0.99 * intra_mae_ + 0.01 * positive_distance / num (double
        # math, stored in Dtype), then capped.
        intra = t(0.99 * float(self.intra_mae) + 0.01 * float(positive_sum) / num)
        self.intra_mae = v["max_negative_margin"] if intra > v["max_negative_margin"] else intra
        means = [positive_sum / t(num), hinge_sum / t(num) / t(dim - 1) if dim > 1
                 else _divide_by_zero(hinge_sum)]
        if p.add_intra_mae:
            means.append(self.intra_mae)
        self._finish_forward(bottom, top, terms, [float(to_numpy(m)) for m in means])

    def backward(self, top, propagate_down, bottom):
        self._check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        p = self.param.general_contrastive_loss_param
        v = self._parameters()
        num, dim = self.dims
        _, labels, is_label = self._inputs(bottom)
        d = self._distances(bottom)
        xp = array_module(d)
        t = self.dtype.type
        rows = xp.arange(num)
        nm = self._negative_margin
        positive = d[rows, labels]

        positive_grad = (positive > v["positive_margin"]) & (positive < v["positive_outlier_thresh"])
        if p.max_positive_only:
            positive_grad &= rows == self._max_positive_index
        negative = (~is_label) & (d < nm)
        if p.max_negative_only:
            negative &= xp.arange(dim)[None, :] == self._max_negative_index[:, None]
        if p.exp_negative_weight:
            magnitude = xp.exp(-d) * v["negative_weight"]
        else:
            magnitude = xp.full(d.shape, v["negative_weight"], self.dtype)
        first = (positive > v["positive_upper_bound"]) if p.positive_first else \
            xp.zeros(num, bool)
        negative &= ~first[:, None]
        grad = xp.where(negative, -magnitude, t(0))
        grad[rows, labels] = xp.where(positive_grad | first, v["positive_weight"], t(0))

        if p.HasField("normalize_negative"):
            total = xp.where(negative, magnitude, t(0)).sum(dtype=self.dtype)
            ratio = t(abs(total) / v["normalize_negative"] / t(num))
            if ratio > v["positive_weight"]:
                grad = xp.where(is_label, grad, grad / ratio)
        bottom[0].diff.reshape(num, dim)[...] = self._scale(top, grad)


def _divide_by_zero(value):
    """``value / 0`` as C++ floats give it (inf, or NaN for 0), without numpy's warning."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return value / value.dtype.type(0)


@register
class GeneralTripletLoss(_DistanceLoss):
    """NormFace's "C-triplet" loss on distances (happynear's fork).

    With ``p = d[i, y_i]``: every negative term is ``max(0, p + margin - d) *
    negative_weight``, the label column 0. ``hardest_only``: per row only the largest
    positive term survives (first wins); ``positive_first``: rows with ``p >
    positive_upper_bound`` keep no negative term. loss ``sum |terms| / N``; ``top[1] =
    [sum p / N, sum of all negative d / N / (C - 1)]``.

    Gradient (times loss_weight / N), the fork's, which is not the derivative of the
    loss: ``-negative_weight`` on every violating negative (``p + margin > d``), or only
    on the hardest one if its distance is non-zero (``hardest_only``: the other entries
    keep the Forward's terms, so a hardest negative at distance 0 keeps its loss term as
    its "gradient": the fork's bug, reproduced); ``positive_weight`` on the positive when
    ``add_center_loss`` or the row had a negative gradient, else the Forward's 0;
    ``positive_first`` rows: ``positive_weight`` on the positive only.

    Exactly 2 bottoms: the fork's code reads per-sample weights from a third, but the
    layer keeps LossLayer's bottom count of 2, so Caffe refuses a third at setup.
    """

    type = "GeneralTripletLoss"
    exact_num_bottom = 2

    def layer_setup(self, bottom, top):
        self._check_dtype()
        self._hardest = None

    def reshape(self, bottom, top):
        self._reshape_tops(bottom, top, 2)

    def _parameters(self):
        p = self.param.general_triplet_loss_param
        return {name: _f32(getattr(p, name), self.dtype) for name in (
            "margin", "positive_upper_bound", "positive_weight", "negative_weight")}

    def forward(self, bottom, top):
        p = self.param.general_triplet_loss_param
        v = self._parameters()
        num, dim = self.dims
        d, labels, is_label = self._inputs(bottom)
        xp = array_module(d)
        t = self.dtype.type
        rows = xp.arange(num)
        positive = d[rows, labels]
        terms = xp.maximum(t(0), positive[:, None] + v["margin"] - d) * v["negative_weight"]
        terms = xp.where(is_label, t(0), terms)
        if p.hardest_only:
            # First column with the largest positive term; -1 when every term is 0.
            best = xp.argmax(terms, axis=1)
            self._hardest = xp.where(terms[rows, best] > 0, best, -1)
            kept = xp.arange(dim)[None, :] == self._hardest[:, None]
            terms = xp.where(kept | (self._hardest < 0)[:, None], terms, t(0))
        if p.positive_first:
            terms = xp.where((positive > v["positive_upper_bound"])[:, None], t(0), terms)
        negative_sum = xp.where(is_label, t(0), d).sum(dtype=self.dtype)
        means = [positive.sum(dtype=self.dtype) / t(num),
                 negative_sum / t(num) / t(dim - 1) if dim > 1 else _divide_by_zero(negative_sum)]
        self._finish_forward(bottom, top, terms, [float(to_numpy(m)) for m in means])

    def backward(self, top, propagate_down, bottom):
        self._check_no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        p = self.param.general_triplet_loss_param
        v = self._parameters()
        num, dim = self.dims
        d, labels, is_label = self._inputs(bottom)
        xp = array_module(d)
        t = self.dtype.type
        rows = xp.arange(num)
        positive = d[rows, labels]
        if p.hardest_only:
            # Start from the Forward's terms (the fork's scratch) and set the hardest one.
            grad = self._terms.copy()
            hardest = self._hardest
            safe = xp.maximum(hardest, 0)
            hit = (hardest >= 0) & (d[rows, safe] != 0)
            grad[rows, safe] = xp.where(hit, -v["negative_weight"], grad[rows, safe])
            has_negative = hit
        else:
            violating = (~is_label) & (positive[:, None] + v["margin"] > d)
            grad = xp.where(violating, -v["negative_weight"], t(0))
            has_negative = violating.any(axis=1)
        centre = has_negative | bool(p.add_center_loss)
        grad[rows, labels] = xp.where(centre, v["positive_weight"], grad[rows, labels])
        if p.positive_first:
            first = positive > v["positive_upper_bound"]
            grad = xp.where(first[:, None], xp.where(is_label, v["positive_weight"], t(0)),
                            grad)
        bottom[0].diff.reshape(num, dim)[...] = self._scale(top, grad)
