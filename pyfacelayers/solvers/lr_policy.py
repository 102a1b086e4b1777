"""Caffe's learning-rate policies (SGDSolver::GetLearningRate).

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ current_step, where current_step moves on by ONE
               each time iter >= stepvalue[current_step] (so a restore with a stale
               current_step catches up one step per iteration, as in Caffe)
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))

Caffe reads its float parameters as float32 and computes in double; the rate is then
stored in the solver's Dtype (the caller rounds it).
"""

import math

from ..errors import PyFaceLayersError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class SolverError(PyFaceLayersError, ValueError):
    """A solver definition, state or snapshot location that cannot be used."""


def check_lr_policy(param, where="solver"):
    """Raise SolverError for an lr policy Caffe would reject (before any iteration)."""
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise SolverError("%s: lr_policy is not set (one of: %s)" % (where, ", ".join(POLICIES)))
    if policy not in POLICIES:
        raise SolverError("%s: unknown lr_policy \"%s\" (expected one of: %s)"
                          % (where, policy, ", ".join(POLICIES)))
    if policy == "step" and param.stepsize <= 0:
        raise SolverError("%s: lr_policy \"step\" needs stepsize > 0, got %d"
                          % (where, param.stepsize))
    if policy == "multistep":
        values = list(param.stepvalue)
        for a, b in zip(values, values[1:]):
            if b <= a:
                raise SolverError("%s: lr_policy \"multistep\" needs increasing stepvalue "
                                  "entries, got %s" % (where, values))
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError("%s: lr_policy \"poly\" needs max_iter > 0, got %d"
                          % (where, param.max_iter))


def learning_rate(param, iteration, current_step):
    """(rate as a Python float, new current_step) at ``iteration``."""
    policy = param.lr_policy
    base_lr, gamma, power = param.base_lr, param.gamma, param.power
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = base_lr * _pow(gamma, current_step)
    elif policy == "exp":
        rate = base_lr * _pow(gamma, iteration)
    elif policy == "inv":
        rate = base_lr * _pow(1.0 + gamma * iteration, -power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
        rate = base_lr * _pow(gamma, current_step)
    elif policy == "poly":
        rate = base_lr * _pow(1.0 - float(iteration) / float(param.max_iter), power)
    elif policy == "sigmoid":
        z = -gamma * (float(iteration) - float(param.stepsize))
        rate = base_lr * (1.0 / (1.0 + math.exp(z))) if z < 700 else 0.0
    else:
        raise SolverError("unknown lr_policy \"%s\" (expected one of: %s)"
                          % (policy, ", ".join(POLICIES)))
    return float(rate), current_step


def _pow(base, exponent):
    # C's pow: NaN for a negative base with a fractional exponent, inf on overflow.
    try:
        return math.pow(base, exponent)
    except OverflowError:
        return math.inf
    except ValueError:
        return math.inf if base == 0 else math.nan
