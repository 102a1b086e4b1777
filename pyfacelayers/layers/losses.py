"""Loss and metric layers: SoftmaxWithLoss, EuclideanLoss, Accuracy."""

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


@register
class SoftmaxWithLossLayer(Layer):
    """Mean of -log(softmax(x)[label]) over counted labels, normalised per
    loss_param; optional top[1] holds the probabilities."""

    type = "SoftmaxWithLoss"
    exact_num_bottom = 2
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

    def _normalizer_of(self, xp):
        """The normaliser as a float; counted labels on the GPU stay there (a 0-d
        float64 array), so reading the count does not make the host wait."""
        if self.normalization == _NORM.VALID and self.ignore_label is not None:
            count = self.valid.sum()
            if xp is np:
                return self._normalizer(int(count))
            return xp.maximum(1.0, count.astype(np.float64))
        # every label counts (or the mode ignores the count): no device value needed
        return self._normalizer(None if self.normalization == _NORM.VALID else 0)

    def _as_dtype(self, value):
        return value.astype(self.dtype) if hasattr(value, "astype") else self.dtype.type(value)

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        outer, channels, inner = self.dims
        self.prob = softmax(bottom[0].data, *self.dims)
        self.labels, self.valid = checked_labels(
            self, xp, bottom[1].data, outer, inner, channels, self.ignore_label)
        picked = xp.take_along_axis(self.prob, xp.where(self.valid, self.labels, 0)[:, None],
                                    axis=1)[:, 0]
        logs = -xp.log(xp.maximum(picked, self.dtype.type(_FLT_MIN)))
        loss = xp.where(self.valid, logs, 0).sum(dtype=self.dtype)
        self.norm = self._normalizer_of(xp)
        top[0].data[...] = loss / self._as_dtype(self.norm)
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
        # minus one at each counted label (no nonzero(): on the GPU it would wait)
        picked = xp.where(self.valid, self.labels, 0)
        grad[xp.arange(outer)[:, None], picked, xp.arange(inner)[None, :]] -= \
            self.valid.astype(grad.dtype)
        grad *= self.valid[:, None, :]
        if xp is np:
            scale = self.dtype.type(loss_weight(top[0]) / self.norm)
        else:  # the same double division, on the device
            weight = top[0].diff.reshape(-1)[0].astype(np.float64)
            scale = (weight / self.norm).astype(self.dtype)
        bottom[0].diff[...] = (grad * scale).reshape(bottom[0].shape)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


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
    higher class index first."""

    type = "Accuracy"
    exact_num_bottom = 2
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
        safe = xp.where(valid, labels, 0)
        true = xp.take_along_axis(scores, safe[:, None], axis=1)
        classes = xp.arange(channels).reshape(1, channels, 1)
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
        return bottom_index != 1
