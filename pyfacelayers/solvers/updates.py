"""Caffe's per-parameter update rules (the ComputeUpdateValue of each solver type).

Each rule turns the regularised gradient in ``diff`` into the step that
``data -= diff`` will apply, updating its history arrays in place, in the order
and Dtype of Caffe's CPU code (scalars are cast to the parameter's dtype so numpy
keeps float32 math in float32).
"""

import math

import numpy as np

from .lr_policy import SolverError


class UpdateRule:
    """Base rule. ``history_sets``: history arrays per parameter (Adam/AdaDelta: 2)."""

    type_name = None
    history_sets = 1

    def __init__(self, param):
        self.param = param

    def check(self, where):
        """Raise SolverError for settings Caffe's constructor rejects."""

    def compute(self, diff, history, rate, lr_mult, iteration):
        raise NotImplementedError

    def update_in_one_pass(self, data, diff, history, local_decay, rate, lr_mult):
        """L2 decay (``local_decay``; 0: none), ``compute`` and ``data -= diff`` in one
        kernel, with the same values, where the rule has one; returns whether it ran."""
        return False


class SGDRule(UpdateRule):
    # history = local_rate * g + momentum * history; step = history
    type_name = "SGD"

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        local_rate, momentum = t(rate) * t(lr_mult), t(self.param.momentum)
        h = history[0]
        h[...] = local_rate * diff + momentum * h
        diff[...] = h

    def update_in_one_pass(self, data, diff, history, local_decay, rate, lr_mult):
        # The C++ kernel (csrc/sgd_update.cpp) rounds as the numpy lines above, in one
        # pass on the element-wise threads; C-contiguous CPU arrays only (cupy, or a
        # view of a shared buffer with gaps, keeps the numpy lines).
        if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous
                   for a in (data, diff, history[0])):
            return False
        from .. import _C
        t = diff.dtype.type
        _C.sgd_update(data, diff, history[0], float(local_decay),
                      float(t(rate) * t(lr_mult)), float(t(self.param.momentum)))
        return True


class NesterovRule(UpdateRule):
    # history as SGD; step = (1 + momentum) * history_new - momentum * history_old
    type_name = "Nesterov"

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        local_rate, momentum = t(rate) * t(lr_mult), t(self.param.momentum)
        h = history[0]
        old = h.copy()
        h[...] = local_rate * diff + momentum * h
        diff[...] = (t(1) + momentum) * h + (-momentum) * old


class AdaGradRule(UpdateRule):
    # history += g^2; step = local_rate * g / (sqrt(history) + delta)
    type_name = "AdaGrad"

    def check(self, where):
        if self.param.momentum != 0:
            raise SolverError("%s: momentum cannot be used with AdaGrad (got momentum %g)"
                              % (where, self.param.momentum))

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        xp = _xp(diff)
        local_rate, delta = t(rate) * t(lr_mult), t(self.param.delta)
        h = history[0]
        h[...] = diff * diff + h
        diff[...] = local_rate * (diff / (xp.sqrt(h) + delta))


class RMSPropRule(UpdateRule):
    # history = (1 - rms_decay) g^2 + rms_decay history; step = local_rate g / (sqrt(h) + delta)
    type_name = "RMSProp"

    def check(self, where):
        if self.param.momentum != 0:
            raise SolverError("%s: momentum cannot be used with RMSProp (got momentum %g)"
                              % (where, self.param.momentum))
        if not 0 <= self.param.rms_decay < 1:
            raise SolverError("%s: RMSProp needs 0 <= rms_decay < 1, got %g"
                              % (where, self.param.rms_decay))

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        xp = _xp(diff)
        local_rate, delta = t(rate) * t(lr_mult), t(self.param.delta)
        decay = t(self.param.rms_decay)
        h = history[0]
        h[...] = (t(1) - decay) * (diff * diff) + decay * h
        diff[...] = local_rate * (diff / (xp.sqrt(h) + delta))


class AdaDeltaRule(UpdateRule):
    # g2 = m g2 + (1-m) g^2;  step = g sqrt((u2 + delta) / (g2 + delta));
    # u2 = m u2 + (1-m) step^2;  diff = local_rate * step
    type_name = "AdaDelta"
    history_sets = 2

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        xp = _xp(diff)
        local_rate, delta = t(rate) * t(lr_mult), t(self.param.delta)
        momentum = t(self.param.momentum)
        grad_sq, update_sq = history
        grad_sq[...] = (t(1) - momentum) * (diff * diff) + momentum * grad_sq
        ratio = (delta + update_sq) / (delta + grad_sq)
        diff[...] = diff * xp.sqrt(ratio)
        update_sq[...] = (t(1) - momentum) * (diff * diff) + momentum * update_sq
        diff[...] = local_rate * diff


class AdamRule(UpdateRule):
    # m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  t = iter + 1
    # diff = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    type_name = "Adam"
    history_sets = 2

    def compute(self, diff, history, rate, lr_mult, iteration):
        t = diff.dtype.type
        xp = _xp(diff)
        local_rate = t(rate) * t(lr_mult)
        beta1, beta2 = t(self.param.momentum), t(self.param.momentum2)
        step = iteration + 1
        # Caffe: pow(Dtype, int) is evaluated in double, the result stored in Dtype.
        correction = t(math.sqrt(1.0 - float(beta2) ** step) / (1.0 - float(beta1) ** step))
        eps = t(self.param.delta)
        m, v = history
        m[...] = (t(1) - beta1) * diff + beta1 * m
        v[...] = (t(1) - beta2) * (diff * diff) + beta2 * v
        diff[...] = (local_rate * correction) * (m / (xp.sqrt(v) + eps))


RULES = {rule.type_name: rule for rule in
         (SGDRule, NesterovRule, AdaGradRule, RMSPropRule, AdaDeltaRule, AdamRule)}


def _xp(array):
    from ..backend import array_module
    return array_module(array)
