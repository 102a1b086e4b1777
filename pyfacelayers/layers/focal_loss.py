"""FocalLoss: the softmax focal loss of xialuxi's ArcFace net (``cosin_add_m.prototxt``).

The implementation whose parameter message matches xialuxi's is zimenglan-sysu-512's
(``shared/reference/margin-family.md`` 4.5): with p the softmax probability of the label,
``w = alpha (1 - p)^gamma``, ``loss = -sum w log(max(p, FLT_MIN)) / normalizer``, and the
exact gradient ``k (prob - onehot) loss_weight / normalizer`` with
``k = w - gamma w p log(max(p, FLT_MIN)) / max(1 - p, 1e-10)``. The same code runs on
numpy and cupy arrays (the fork's CPU and GPU code agree).
"""

import numpy as np

from ..backend import array_module
from ..proto import caffe_pb2
from .base import register
from ._helpers import loss_weight
from .losses import _FLT_MIN, SoftmaxWithLossLayer

_TYPES = caffe_pb2.FocalLossParameter


@register
class FocalLoss(SoftmaxWithLossLayer):
    """``FocalLoss`` (type ORIGIN; ``gamma`` 2, ``alpha`` 0.25 by default; ``beta`` is
    unused, as in the fork). Softmax over ``softmax_param.axis``; ``loss_param``'s
    ignore_label and normalization as SoftmaxWithLoss. One top only: the fork's layer
    aborts at setup with two (its loss-weight bookkeeping), so a 2nd top is refused.
    """

    type = "FocalLoss"
    exact_num_bottom = 2
    min_num_bottom = None
    max_num_bottom = None
    exact_num_top = 1
    min_num_top = None
    max_num_top = None

    def layer_setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        if not p.HasField("normalization") and p.HasField("normalize"):
            self.normalization = (caffe_pb2.LossParameter.VALID if p.normalize
                                  else caffe_pb2.LossParameter.BATCH_SIZE)
        else:
            self.normalization = p.normalization
        self.class_weight = []
        fp = self.param.focal_loss_param
        if fp.type != _TYPES.ORIGIN:
            raise self.error("focal_loss_param.type %s is not supported (only ORIGIN, the type "
                             "the published net uses)" % _TYPES.Type.Name(fp.type))
        self.gamma, self.alpha = float(np.float32(fp.gamma)), float(np.float32(fp.alpha))
        if not (np.isfinite(self.gamma) and self.gamma >= 0):
            raise self.error("focal_loss_param.gamma must be >= 0, got %r" % fp.gamma)
        if not (np.isfinite(self.alpha) and self.alpha > 0):
            raise self.error("focal_loss_param.alpha must be > 0, got %r" % fp.alpha)

    def forward(self, bottom, top):
        super().forward(bottom, top)  # probabilities, labels, valid mask
        xp = array_module(self.prob)
        t = self.dtype.type
        picked = xp.take_along_axis(self.prob, xp.where(self.valid, self.labels, 0)[:, None],
                                    axis=1)[:, 0]
        self.picked = picked
        self.log_p = xp.log(xp.maximum(picked, t(_FLT_MIN)))
        self.w = t(self.alpha) * xp.power(t(1) - picked, t(self.gamma))
        loss = xp.where(self.valid, -self.w * self.log_p, 0).sum(dtype=self.dtype)
        count = int(self.valid.sum())
        top[0].data[...] = loss / t(self._normalizer(count))

    def backward(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise self.error("cannot backpropagate to the label input (bottom 1)")
        if not propagate_down[0]:
            return
        xp = array_module(self.prob)
        t = self.dtype.type
        p = self.picked
        k = (t(-self.gamma) * self.w / xp.maximum(t(1) - p, t(1e-10)) * self.log_p * p
             + self.w)
        grad = self.prob.copy()
        rows, cols = xp.nonzero(self.valid)
        grad[rows, self.labels[rows, cols], cols] -= 1
        grad *= xp.where(self.valid, k, 0)[:, None, :]
        count = int(self.valid.sum())
        scale = t(loss_weight(top[0]) / self._normalizer(count))
        bottom[0].diff[...] = (grad * scale).reshape(bottom[0].shape)
