"""Loss and metric layers: SoftmaxWithLoss, EuclideanLoss, Accuracy (with happynear's
fork extensions: per-sample weights as a 3rd bottom, class weights, ``min_is_better``;
``shared/reference/margin-family.md`` 3.13, 3.14)."""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from .base import Layer, register
from ._helpers import canonical_axis, checked_labels, loss_weight
from .softmax import softmax, split_axis

_NORM = caffe_pb2.LossParameter
_FLT_MIN = float(np.finfo(np.float32).tiny)  # Caffe clamps probabilities at FLT_MIN


def _check_first_dim(layer, bottom):
    if bottom[0].shape[:1] != bottom[1].shape[:1]:
        raise layer.error("data %s and label %s must have the same first dimension"
                          % (bottom[0].shape, bottom[1].shape))


def _ignore_label(p):
    return p.ignore_label if p.HasField("ignore_label") else None


def _sample_weights(layer, bottom, rows, inner):
    """The 3rd bottom (per-sample weights) as a (rows, inner) array, or None."""
    if len(bottom) < 3:
        return None
    w = bottom[2].data
    if w.size != rows * inner:
        raise layer.error("the weights (bottom 2) have %d values (shape %s), expected one "
                          "per label: %d" % (w.size, bottom[2].shape, rows * inner))
    return w.reshape(rows, inner)


# happynear's SoftmaxParameter fields that only its GPU code implements (none of the
# published nets sets them): refused rather than silently ignored.
_UNSUPPORTED_SOFTMAX = (("hard_ratio", 1.0), ("label_smooth_factor", 0.0))


@register
class SoftmaxWithLossLayer(Layer):
    """Mean of -log(softmax(x)[label]) over counted labels, normalised per
    loss_param; optional top[1] holds the probabilities.

    happynear's fork: an optional 3rd bottom of per-sample weights w and
    ``softmax_param.class_weight`` cw. Then ``loss = -sum w cw_y log p / norm(sum w cw_y)``
    (samples with w cw_y = 0 skipped) and the gradient is ``(p - onehot) w cw_y
    loss_weight / norm(sum w)``: the forward and backward normalisers differ when class
    weights are given, as the fork's CPU code.
    """

    type = "SoftmaxWithLoss"
    min_num_bottom = 2
    max_num_bottom = 3
    min_num_top = 1
    max_num_top = 2
    is_loss = True

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = _ignore_label(p)
        if not p.HasField("normalization") and p.HasField("normalize"):
            self.normalization = _NORM.VALID if p.normalize else _NORM.BATCH_SIZE
        else:
            self.normalization = p.normalization
        sp = self.param.softmax_param
        if sp.normalize_type != "Softmax":
            raise self.error('softmax_param.normalize_type "%s" is not supported (only the '
                             'default "Softmax"; the fork replaces the softmax by a Normalize '
                             'layer for "L2"/"L1")' % sp.normalize_type)
        for field, default in _UNSUPPORTED_SOFTMAX:
            if getattr(sp, field) != default:
                raise self.error("softmax_param.%s is not supported (only the fork's GPU code "
                                 "implements it)" % field)
        for field in ("cutting_point", "hard_mining_label"):
            if sp.HasField(field):
                raise self.error("softmax_param.%s is not supported (only the fork's GPU code "
                                 "implements it)" % field)
        self.class_weight = [float(np.float32(v)) for v in sp.class_weight]
        if any(not np.isfinite(v) for v in self.class_weight):
            raise self.error("softmax_param.class_weight must be finite")

    def reshape(self, bottom, top):
        _check_first_dim(self, bottom)
        self.axis = canonical_axis(self, bottom[0], self.param.softmax_param.axis)
        self.dims = split_axis(bottom[0], self.axis)
        outer, channels, inner = self.dims
        if channels == 0 and outer * inner:
            raise self.error("prediction %s has no classes (axis %d is 0)"
                             % (bottom[0].shape, self.axis))
        if outer * inner != bottom[1].count:
            raise self.error(
                "prediction %s with softmax axis %d needs %d labels (one per outer x inner "
                "position, values in [0, %d)), got label blob %s with %d"
                % (bottom[0].shape, self.axis, outer * inner, channels, bottom[1].shape,
                   bottom[1].count))
        if self.class_weight and len(self.class_weight) != channels:
            raise self.error("softmax_param has %d class_weight values for %d classes"
                             % (len(self.class_weight), channels))
        _sample_weights(self, bottom, outer, inner)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def _normalizer(self, valid_count):
        outer, _, inner = self.dims
        mode = self.normalization
        if mode == _NORM.FULL or (mode == _NORM.VALID and valid_count is None):
            n = outer * inner
        elif mode == _NORM.VALID:
            n = valid_count
        elif mode == _NORM.BATCH_SIZE:
            n = outer
        else:
            n = 1
        return max(1.0, float(n))

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        outer, channels, inner = self.dims
        self.prob = softmax(bottom[0].data, *self.dims)
        self.labels, self.valid = checked_labels(
            self, xp, bottom[1].data, outer, inner, channels, self.ignore_label)
        picked = xp.take_along_axis(self.prob, xp.where(self.valid, self.labels, 0)[:, None],
                                    axis=1)[:, 0]
        logs = -xp.log(xp.maximum(picked, self.dtype.type(_FLT_MIN)))
        self.weights = self._weights(bottom, xp)
        if self.weights is None:
            loss = xp.where(self.valid, logs, 0).sum(dtype=self.dtype)
            count = int(self.valid.sum())
        else:
            w, wc = self.weights
            counted = self.valid & (wc != 0)
            loss = xp.where(counted, wc * logs, 0).sum(dtype=self.dtype)
            count = float(xp.where(counted, wc, 0).sum(dtype=self.dtype))
        top[0].data[...] = loss / self.dtype.type(self._normalizer(count))
        if len(top) > 1:
            top[1].data[...] = self.prob.reshape(top[1].shape)

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the label input (bottom 1)")
        if not propagate_down[0]:
            return
        xp = array_module(self.prob)
        grad = self.prob.copy()
        outer, channels, inner = self.dims
        rows, cols = xp.nonzero(self.valid)
        grad[rows, self.labels[rows, cols], cols] -= 1
        grad *= self.valid[:, None, :]
        if self.weights is None:
            count = int(self.valid.sum())
        else:
            w, wc = self.weights
            counted = self.valid & (w != 0)
            grad *= xp.where(counted, wc, 0)[:, None, :]
            count = float(xp.where(counted, w, 0).sum(dtype=self.dtype))
        scale = self.dtype.type(loss_weight(top[0]) / self._normalizer(count))
        bottom[0].diff[...] = (grad * scale).reshape(bottom[0].shape)

    def _weights(self, bottom, xp):
        """(w, w * class_weight[label]) per label, or None for the plain BVLC loss."""
        outer, _, inner = self.dims
        w = _sample_weights(self, bottom, outer, inner)
        if w is None and not self.class_weight:
            return None
        if w is None:
            w = xp.ones((outer, inner), dtype=self.dtype)
        w = w.astype(self.dtype)
        if self.class_weight:
            cw = xp.asarray(self.class_weight, dtype=self.dtype)
            wc = w * cw[xp.where(self.valid, self.labels, 0)]
        else:
            wc = w
        return w, wc

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0


@register
class EuclideanLossLayer(Layer):
    """sum((a - b)^2) / num / 2, with num the first dimension."""

    type = "EuclideanLoss"
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        _check_first_dim(self, bottom)
        if bottom[0].count_from(1) != bottom[1].count_from(1):
            raise self.error("inputs must have the same dimension: %s vs %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(())

    def forward(self, bottom, top):
        self.diff = bottom[0].data - bottom[1].data.reshape(bottom[0].shape)
        flat = self.diff.reshape(-1)
        num = self.dtype.type(bottom[0].shape[0])
        top[0].data[...] = flat.dot(flat) / num / self.dtype.type(2)

    def backward(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = self.dtype.type(sign * loss_weight(top[0]) / bottom[i].shape[0])
                bottom[i].diff[...] = (alpha * self.diff).reshape(bottom[i].shape)


@register
class AccuracyLayer(Layer):
    """Fraction of counted labels within the top_k scores; optional top[1] holds the
    accuracy per class. Ties rank as Caffe's sort of (score, index) pairs: the
    higher class index first.

    happynear's fork: ``min_is_better`` ranks ascending (distances; ties: the lower
    class index first); an optional 3rd bottom of per-sample weights skips the samples
    whose weight is 0 (the others count 1)."""

    type = "Accuracy"
    min_num_bottom = 2
    max_num_bottom = 3
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = p.top_k
        self.ignore_label = _ignore_label(p)

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise self.error("top_k %d must be at most the number of classes (%s scores "
                             "for %d labels)" % (self.top_k, bottom[0].shape,
                                                 bottom[1].count))
        self.axis = canonical_axis(self, bottom[0], self.param.accuracy_param.axis)
        self.dims = split_axis(bottom[0], self.axis)
        outer, channels, inner = self.dims
        if outer * inner != bottom[1].count:
            raise self.error("scores %s with axis %d need %d labels, got label blob %s"
                             % (bottom[0].shape, self.axis, outer * inner, bottom[1].shape))
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((channels,))

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        outer, channels, inner = self.dims
        scores = bottom[0].data.reshape(self.dims)
        labels, valid = checked_labels(self, xp, bottom[1].data, outer, inner, channels,
                                       self.ignore_label)
        weights = _sample_weights(self, bottom, outer, inner)
        if weights is not None:
            valid = valid & (weights != 0)
        safe = xp.where(valid, labels, 0)
        true = xp.take_along_axis(scores, safe[:, None], axis=1)
        classes = xp.arange(channels).reshape(1, channels, 1)
        if self.param.accuracy_param.min_is_better:
            ahead = (scores < true) | ((scores == true) & (classes < safe[:, None]))
        else:
            ahead = (scores > true) | ((scores == true) & (classes > safe[:, None]))
        hit = (ahead.sum(axis=1) < self.top_k) & valid
        count = int(valid.sum())
        hits = int(hit.sum())
        # As Caffe: accuracy / count, so no counted label gives NaN.
        with np.errstate(invalid="ignore", divide="ignore"):
            top[0].data[...] = self.dtype.type(hits) / self.dtype.type(count)
        if len(top) > 1:
            per_label = xp.bincount(safe[valid], minlength=channels)
            per_hit = xp.bincount(safe[hit], minlength=channels)
            top[1].data[...] = xp.where(per_label > 0,
                                        per_hit / xp.maximum(per_label, 1), 0)

    def backward(self, top, propagate_down, bottom):
        # Caffe does not implement it; the accuracy is piecewise constant, so its
        # gradient is zero wherever one is asked for.
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0
