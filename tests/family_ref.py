"""Fixture-driven harness for ../shared/fixtures/family-ref/layers (the forks' own code,
CPU paths): rebuild a case's net, replay its steps, compare every stored array.

Reusable by every family layer test::

    from family_ref import case_names, check_case
    @pytest.mark.parametrize("case", case_names("Normalize"))
    @pytest.mark.parametrize("dtype", ["f32", "f64"])
    def test_normalize(case, dtype):
        check_case(case, dtype)            # CPU semantics (the fixtures' code path)

A case replays as the fixture README section 2 says: one Net (Input layers + the layer,
``force_backward``), per step: inputs, ClearParamDiffs, params (step 0: param_init),
Forward, seeded top diffs and poisoned bottom diffs, Backward, compare, and plain SGD
between steps when the case asks. Cases whose layer type is not registered skip with
the reason, so helpers can land their layers one at a time.
"""

import json
import os
import re

import numpy as np
import pytest

from conftest import SHARED, rel_error
from pyfacelayers import fork_semantics
from pyfacelayers.fileio.text import parse_text
from pyfacelayers.layers import registered_types
from pyfacelayers.proto import caffe_pb2

FAMILY = os.path.join(SHARED, "fixtures", "family-ref")
LAYERS = os.path.join(FAMILY, "layers")
DTYPES = {"f32": np.float32, "f64": np.float64}
# The project's per-layer tolerances (relative to the array's norm).
TOL = {"f32": 1e-5, "f64": 1e-10}
# Cancellation-dominated float32 cases (README section 4): an absolute tolerance at the
# scale of the operands, about 1e-6 x max|top diff| / min norm.
ABS_TOL_CASES = {"Normalize__l2_k1_m6c1", "NormL2__k1_m6c1"}


def case_names(layer_type=None, prefix=None):
    """The case names stored for ``layer_type`` (all when None); [] when ../shared is absent."""
    folder = os.path.join(LAYERS, "f64")
    if not os.path.isdir(folder):
        return []
    names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".npz"))
    if layer_type is not None:
        names = [n for n in names if n.split("__")[0] == layer_type]
    if prefix is not None:
        names = [n for n in names if n.startswith(prefix)]
    return names


class Case:
    """One stored case: ``arrays`` (name -> ndarray) and ``meta`` (the parsed meta_json)."""

    def __init__(self, name, dtype):
        path = os.path.join(LAYERS, dtype, name + ".npz")
        if not os.path.exists(path):
            pytest.skip("../shared/fixtures/family-ref/layers/%s/%s.npz is not present"
                        % (dtype, name))
        with np.load(path, allow_pickle=False) as z:
            self.arrays = {k: z[k] for k in z.files if k != "meta_json"}
            self.meta = json.loads(str(z["meta_json"]))
        self.name, self.dtype_key, self.dtype = name, dtype, DTYPES[dtype]

    @property
    def steps(self):
        return int(self.meta["steps"])

    @property
    def phase(self):
        return caffe_pb2.TRAIN if self.meta["phase"] == "TRAIN" else caffe_pb2.TEST

    def net_param(self):
        param = parse_text(self.meta["net_prototxt"], caffe_pb2.NetParameter(), self.name)
        param.force_backward = True
        return param

    def layer_types(self):
        return {l.type for l in self.net_param().layer}

    def step_keys(self, step, kind):
        """{suffix: array} of the keys ``step<S>_<kind>__<suffix>``."""
        head = "step%d_%s__" % (step, kind)
        return {k[len(head):]: v for k, v in self.arrays.items() if k.startswith(head)}


def skip_unregistered(case):
    missing = sorted(case.layer_types() - set(registered_types()))
    if missing:
        pytest.skip("layer type(s) %s not registered yet" % ", ".join(missing))


def replay(case, xp=np, semantics="cpu", on_step=None):
    """Run ``case`` on a fresh Net; returns {fixture key: our array (numpy)} for every
    stored result key. ``on_step(net, step)`` runs after each Backward (extra checks)."""
    from pyfacelayers.backend import to_numpy
    from pyfacelayers.net import Net

    skip_unregistered(case)
    with fork_semantics.using(semantics):
        net = Net(case.net_param(), phase=case.phase, dtype=case.dtype, seed=1701)
    if xp is not np:
        net.to_device(xp)
    params = {name: blobs for name, blobs in net.params.items()}
    ours = {}
    for step in range(case.steps):
        for blob, value in case.step_keys(step, "in").items():
            target = net.blobs[blob]
            if target.shape != value.shape:
                target.reshape(value.shape)
            target.data[...] = xp.asarray(value)
        net.clear_param_diffs()
        if step == 0:
            for key, value in case.arrays.items():
                if key.startswith("param_init__"):
                    layer, index = key[len("param_init__"):].rsplit("__", 1)
                    params[layer][int(index)].data[...] = xp.asarray(value)
        for key, value in case.step_keys(step, "param_before").items():
            ours["step%d_param_before__%s" % (step, key)] = _param(params, key, to_numpy)
        loss = net.forward_from_to()
        for blob, value in case.step_keys(step, "topdiff").items():
            target = net.blobs[blob]  # stored in the harness's shape, same count
            target.diff[...] = xp.asarray(value).reshape(target.shape)
        for blob, value in (case.meta.get("poison_bottom_diff_before_backward") or {}).items():
            net.blobs[blob].diff[...] = value
        if case.meta.get("backward", True):
            net.backward_from_to()
        if on_step is not None:
            on_step(net, step)
        for blob in case.step_keys(step, "data"):
            ours["step%d_data__%s" % (step, blob)] = to_numpy(net.blobs[blob].data).copy()
        for blob in case.step_keys(step, "diff"):
            ours["step%d_diff__%s" % (step, blob)] = to_numpy(net.blobs[blob].diff).copy()
        for key in case.step_keys(step, "param"):
            ours["step%d_param__%s" % (step, key)] = _param(params, key, to_numpy)
        for key in case.step_keys(step, "param_diff"):
            ours["step%d_param_diff__%s" % (step, key)] = _param(params, key, to_numpy,
                                                                 "diff")
        ours["step%d_loss" % step] = loss
        lr = case.meta.get("sgd_lr_between_steps")
        if lr:
            for blobs in params.values():
                for b in blobs:
                    b.data[...] -= case.dtype(lr) * b.diff
    return ours


def _param(params, key, to_numpy, field="data"):
    layer, index = key.rsplit("__", 1)
    return to_numpy(getattr(params[layer][int(index)], field)).copy()


def compare(case, ours, tol=None, skip=()):
    """Every array ``replay`` produced against the fixture; returns the worst error."""
    tol = TOL[case.dtype_key] if tol is None else tol
    worst = 0.0
    failures = []
    for key, value in ours.items():
        if re.fullmatch(r"step\d+_loss", key):  # not "step0_data__loss", a blob
            step = int(key[4:key.index("_")])
            expected = case.meta.get("loss_per_step", [None] * (step + 1))[step]
            if expected is not None and not np.isclose(value, expected, rtol=tol, atol=tol):
                failures.append("%s: %r vs %r" % (key, value, expected))
            continue
        if any(s in key for s in skip):
            continue
        expected = case.arrays[key]
        value = np.asarray(value).reshape(np.shape(expected)) if np.size(value) == np.size(
            expected) else np.asarray(value)
        if value.shape != expected.shape:
            failures.append("%s: shape %s vs %s" % (key, value.shape, expected.shape))
            continue
        same_nan = np.array_equal(np.isnan(value), np.isnan(expected))
        finite = np.isfinite(expected)
        if not same_nan or not np.array_equal(value[~finite], expected[~finite],
                                              equal_nan=True):
            failures.append("%s: NaN/inf positions differ" % key)
            continue
        if case.name in ABS_TOL_CASES and case.dtype_key == "f32":
            err = float(np.max(np.abs(value[finite] - expected[finite]), initial=0))
            err_tol = 1e-4 * max(1.0, float(np.max(np.abs(expected[finite]), initial=0)))
        else:
            err, err_tol = rel_error(np.where(finite, value, 0), np.where(finite, expected, 0)), tol
        worst = max(worst, err)
        if err > err_tol:
            failures.append("%s: error %.3g > %.1g" % (key, err, err_tol))
    assert not failures, "%s (%s):\n  %s" % (case.name, case.dtype_key, "\n  ".join(failures))
    return worst


def check_case(name, dtype, xp=np, semantics="cpu", tol=None, skip=()):
    """Replay case ``name`` in ``dtype`` ("f32"/"f64") and compare everything."""
    case = Case(name, dtype)
    return compare(case, replay(case, xp=xp, semantics=semantics), tol=tol, skip=skip)
