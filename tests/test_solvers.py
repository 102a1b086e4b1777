"""Solvers on a tiny fake net (two parameter blobs, a quadratic loss), checked against
an independent float64 computation of Caffe's formulas written here."""

import logging
import math
import os
import signal
from collections import OrderedDict

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import shared_path
from pyfacelayers.blob import Blob
from pyfacelayers.proto import caffe_pb2
from pyfacelayers import solvers
from pyfacelayers.solvers import SolverError, get_solver
from pyfacelayers.solvers import solver as solver_module


# ---------------------------------------------------------------------------------------
# The fake net: loss = 0.5 * sum(A * (W - T_k)^2) + 0.5 * sum((b - c_k)^2), where the
# targets move with a per-net counter k (a layer state, like MarginInnerProduct's iter).
W_SHAPE, B_SHAPE = (3, 2), (2,)
W0 = np.array([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]])
B0 = np.array([0.05, -0.4])
A = np.array([[1.0, 2.0], [0.5, 3.0], [1.5, 0.25]])
LR_MULT = (1.0, 2.0)
DECAY_MULT = (1.0, 0.5)


def targets(k):
    t = np.array([[0.1, 0.2], [-0.3, 0.4], [0.5, -0.6]]) * (1.0 + 0.3 * k) + 0.05 * math.sin(k)
    c = np.array([0.3, -0.2]) - 0.1 * k
    return t, c


def grads(w, b, k):
    t, c = targets(k)
    return A * (w - t), (b - c), 0.5 * float((A * (w - t) ** 2).sum() + ((b - c) ** 2).sum())


class NoiseLayer:
    def __init__(self, name, rng):
        self.name, self.rng = name, rng


class FakeNet:
    """Implements the part of Net's interface the solvers use."""

    instances = []
    noise = 0.0

    def __init__(self, net_param, phase, level=0, stages=(), dtype=np.float32, seed=None):
        self.name = net_param.name or "fake"
        self.phase, self.level, self.stages, self.seed = phase, level, tuple(stages), seed
        self.state = net_param.state
        self.dtype = np.dtype(dtype)
        self.learnable_params = [Blob(W_SHAPE, self.dtype), Blob(B_SHAPE, self.dtype)]
        self.learnable_params[0].data[...] = W0
        self.learnable_params[1].data[...] = B0
        self.params_lr = list(LR_MULT)
        self.params_weight_decay = list(DECAY_MULT)
        self.param_display_names = ["quad__0", "quad__1"]
        self.blobs = OrderedDict([("loss", Blob((1,), self.dtype))])
        self.outputs = ["loss"]
        self.blob_loss_weights = {"loss": 1.0}
        # A layer with its own random generator (as Dropout or a random data layer);
        # with FakeNet.noise > 0 it perturbs the targets of every forward.
        self.layers = [NoiseLayer("noise", np.random.default_rng(seed))]
        self.counter = 0
        self.fail_at = None
        FakeNet.instances.append(self)

    def _forward(self):
        if self.fail_at is not None and self.counter == self.fail_at:
            raise KeyboardInterrupt
        w = self.learnable_params[0].data.astype(np.float64)
        b = self.learnable_params[1].data.astype(np.float64)
        gw, gb, loss = grads(w, b, self.counter)
        if FakeNet.noise:
            gw = gw + FakeNet.noise * self.layers[0].rng.standard_normal(gw.shape)
        self.counter += 1
        self.blobs["loss"].data[...] = loss
        return gw, gb, loss

    def forward(self):
        self._forward()
        return {"loss": self.blobs["loss"].data}

    def forward_backward(self):
        gw, gb, loss = self._forward()
        self.learnable_params[0].diff[...] += gw.astype(self.dtype)
        self.learnable_params[1].diff[...] += gb.astype(self.dtype)
        return loss

    def clear_param_diffs(self):
        for p in self.learnable_params:
            p.diff[...] = 0

    def share_trained_layers_with(self, other):
        self.learnable_params = other.learnable_params

    def to_proto(self, write_diff=False):
        from pyfacelayers.fileio import array_to_blob
        net = caffe_pb2.NetParameter(name=self.name)
        layer = net.layer.add(name="quad", type="Quad")
        for p in self.learnable_params:
            layer.blobs.add().CopyFrom(array_to_blob(p.data, p.diff if write_diff else None))
        return net

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.to_proto().SerializeToString())

    def copy_from(self, path):
        from pyfacelayers.fileio import blob_to_array
        net = caffe_pb2.NetParameter()
        with open(path, "rb") as f:
            net.ParseFromString(f.read())
        for p, blob in zip(self.learnable_params, net.layer[0].blobs):
            p.data[...] = blob_to_array(blob).reshape(p.shape)

    def get_layer_states(self):
        return {"quad": {"iter": self.counter}}

    def set_layer_states(self, states):
        self.counter = states["quad"]["iter"]


@pytest.fixture(autouse=True)
def fake_net(monkeypatch):
    FakeNet.instances = []
    monkeypatch.setattr(solver_module, "make_net", FakeNet)
    yield FakeNet


BASE = """
net_param { name: "quadnet" }
base_lr: 0.1
lr_policy: "fixed"
max_iter: 5
display: 1
snapshot_after_train: false
"""


def make_solver(extra="", tmp_path=None, dtype=np.float64, base=BASE, **kwargs):
    text = base + extra
    if tmp_path is not None and "snapshot_prefix" not in text:
        text += '\nsnapshot_prefix: "%s"\n' % os.path.join(str(tmp_path), "snap")
    # Merge: a later field overrides BASE's (text_format.Parse would reject it).
    return get_solver(text_format.Merge(text, caffe_pb2.SolverParameter()), dtype=dtype,
                      **kwargs)


def param_of(text):
    return text_format.Merge(BASE + text, caffe_pb2.SolverParameter())


# ---------------------------------------------------------------------------------------
# The independent reference: Caffe's iteration in float64.
def ref_rate(p, it, state):
    """lr of iteration ``it``; ``state['step']`` is multistep's current_step."""
    pol = p.lr_policy
    if pol == "fixed":
        return p.base_lr
    if pol == "step":
        return p.base_lr * p.gamma ** (it // p.stepsize)
    if pol == "exp":
        return p.base_lr * p.gamma ** it
    if pol == "inv":
        return p.base_lr * (1 + p.gamma * it) ** (-p.power)
    if pol == "multistep":
        if state["step"] < len(p.stepvalue) and it >= p.stepvalue[state["step"]]:
            state["step"] += 1
        return p.base_lr * p.gamma ** state["step"]
    if pol == "poly":
        return p.base_lr * (1 - it / p.max_iter) ** p.power
    if pol == "sigmoid":
        return p.base_lr / (1 + math.exp(-p.gamma * (it - p.stepsize)))
    raise AssertionError(pol)


def reference_run(p, iters, start_iter=0):
    """Params and history after ``iters`` iterations of solver ``p`` on the fake net."""
    solver_type = p.type
    w, b = W0.copy(), B0.copy()
    params = [w, b]
    n_hist = 2 if solver_type in ("Adam", "AdaDelta") else 1
    hist = [np.zeros_like(x) for _ in range(n_hist) for x in params]
    k = 0
    state = {"step": 0}
    rates, losses = [], []
    for it in range(start_iter, start_iter + iters):
        acc = [np.zeros_like(x) for x in params]
        loss = 0.0
        for _ in range(p.iter_size):
            gw, gb, l = grads(params[0], params[1], k)
            k += 1
            acc[0] += gw
            acc[1] += gb
            loss += l
        losses.append(loss / p.iter_size)
        rate = ref_rate(p, it, state)
        rates.append(rate)
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum((g ** 2).sum() for g in acc))
            if norm > p.clip_gradients:
                acc = [g * (p.clip_gradients / norm) for g in acc]
        acc = [g / p.iter_size for g in acc]
        for i in range(2):
            decay = p.weight_decay * DECAY_MULT[i]
            if p.regularization_type == "L2":
                acc[i] = acc[i] + decay * params[i]
            else:
                acc[i] = acc[i] + decay * np.sign(params[i])
            g, lr = acc[i], rate * LR_MULT[i]
            if solver_type == "SGD":
                hist[i] = p.momentum * hist[i] + lr * g
                step = hist[i]
            elif solver_type == "Nesterov":
                old = hist[i]
                hist[i] = p.momentum * hist[i] + lr * g
                step = (1 + p.momentum) * hist[i] - p.momentum * old
            elif solver_type == "AdaGrad":
                hist[i] = hist[i] + g * g
                step = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif solver_type == "RMSProp":
                hist[i] = p.rms_decay * hist[i] + (1 - p.rms_decay) * g * g
                step = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif solver_type == "AdaDelta":
                m = p.momentum
                hist[i] = m * hist[i] + (1 - m) * g * g
                u = g * np.sqrt((hist[2 + i] + p.delta) / (hist[i] + p.delta))
                hist[2 + i] = m * hist[2 + i] + (1 - m) * u * u
                step = lr * u
            elif solver_type == "Adam":
                t = it + 1
                hist[i] = p.momentum * hist[i] + (1 - p.momentum) * g
                hist[2 + i] = p.momentum2 * hist[2 + i] + (1 - p.momentum2) * g * g
                corr = math.sqrt(1 - p.momentum2 ** t) / (1 - p.momentum ** t)
                step = lr * corr * hist[i] / (np.sqrt(hist[2 + i]) + p.delta)
            params[i] = params[i] - step
    return params, hist, rates, losses


def assert_rel(actual, expected, tol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-300)
    assert err <= tol, "%s: relative error %.3g > %g" % (what, err, tol)


def check_against_reference(extra, iters=5, dtype=np.float64, tol=1e-12):
    s = make_solver(extra, dtype=dtype)
    losses = []
    s.add_iteration_callback(lambda solver, loss: losses.append(loss))
    rates = []
    s.add_iteration_callback(lambda solver, loss: rates.append(solver.lr))
    s.step(iters)
    p = s.param
    params, hist, ref_rates, ref_losses = reference_run(p, iters)
    assert s.iter == iters
    for i in range(2):
        assert s.net.learnable_params[i].data.dtype == np.dtype(dtype)
        assert_rel(s.net.learnable_params[i].data, params[i], tol, "param %d" % i)
    assert len(s.history) == len(hist)
    for i, h in enumerate(hist):
        assert_rel(s.history[i], h, tol, "history %d" % i)
    assert_rel(rates, ref_rates, tol if dtype == np.float64 else 1e-7, "lr")
    assert_rel(losses, ref_losses, tol, "loss")
    return s


SOLVER_SETTINGS = {
    "SGD": 'type: "SGD" momentum: 0.9 weight_decay: 0.01',
    "Nesterov": 'type: "Nesterov" momentum: 0.95 weight_decay: 0.01',
    "AdaGrad": 'type: "AdaGrad" weight_decay: 0.01 delta: 1e-6',
    "RMSProp": 'type: "RMSProp" weight_decay: 0.01 rms_decay: 0.9 delta: 1e-6',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6 weight_decay: 0.01 base_lr: 1.0',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8 weight_decay: 0.01 '
            'base_lr: 0.01',
}


@pytest.mark.parametrize("solver_type", sorted(SOLVER_SETTINGS))
def test_solver_type_matches_reference(solver_type):
    s = check_against_reference(SOLVER_SETTINGS[solver_type])
    assert s.type == solver_type
    assert type(s).__name__ == solver_type + "Solver"


@pytest.mark.parametrize("solver_type", sorted(SOLVER_SETTINGS))
def test_solver_type_float32(solver_type):
    check_against_reference(SOLVER_SETTINGS[solver_type], dtype=np.float32, tol=2e-5)


@pytest.fixture
def element_threads():
    """Sets the C++ element-wise thread count for a test; restores it after."""
    from pyfacelayers import _C
    before = _C.elementwise_threads()
    yield _C.set_elementwise_threads
    _C.set_elementwise_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay", [0.0, 5e-4])
@pytest.mark.parametrize("threads", [1, 3])
def test_sgd_one_pass_update_is_the_numpy_update_bit_for_bit(element_threads, dtype,
                                                             decay, threads):
    from pyfacelayers.solvers.updates import SGDRule
    element_threads(threads)
    rng = np.random.default_rng(3)
    data, diff, history = (rng.standard_normal(100_003).astype(dtype) for _ in range(3))
    rule = SGDRule(caffe_pb2.SolverParameter(momentum=0.9))
    t = np.dtype(dtype).type
    local_decay = t(decay) * t(2)  # decay_mult 2
    ref_data, ref_diff, ref_history = data.copy(), diff.copy(), history.copy()
    if local_decay:
        ref_diff += local_decay * ref_data  # Solver.regularize
    rule.compute(ref_diff, [ref_history], 0.01, 1.5, 0)
    ref_data -= ref_diff  # Net::Update
    assert rule.update_in_one_pass(data, diff, [history], local_decay, 0.01, 1.5)
    for got, want in ((data, ref_data), (diff, ref_diff), (history, ref_history)):
        np.testing.assert_array_equal(got, want)


def test_sgd_one_pass_update_leaves_strided_arrays_to_numpy():
    from pyfacelayers.solvers.updates import SGDRule
    rule = SGDRule(caffe_pb2.SolverParameter(momentum=0.9))
    data, history = np.ones(8, np.float32), np.zeros(8, np.float32)
    strided = np.ones(16, np.float32)[::2]
    assert not rule.update_in_one_pass(data, strided, [history], 0.0, 0.1, 1.0)
    assert (data == 1).all() and (history == 0).all()


def test_sgd_one_pass_update_refuses_bad_arrays():
    from pyfacelayers import _C
    a, b = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        _C.sgd_update(a, b, a, 0.0, 0.1, 0.9)
    with pytest.raises(ValueError, match="same size, got 8, 8 and 7"):
        _C.sgd_update(a, b, np.zeros(7, np.float32), 0.0, 0.1, 0.9)
    with pytest.raises(ValueError, match="diff: array must be C-contiguous"):
        _C.sgd_update(a, np.zeros(16, np.float32)[::2], b, 0.0, 0.1, 0.9)
    with pytest.raises(TypeError, match="history: expected dtype float32, got float64"):
        _C.sgd_update(a, b, np.zeros(8), 0.0, 0.1, 0.9)


def test_clear_param_diffs_zeroes_every_diff(element_threads):
    import pyfacelayers as caffe
    element_threads(2)
    param = text_format.Parse(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 300 } } }'
        'layer { name: "fc" type: '
        '"InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 201 } }',
        caffe_pb2.NetParameter())
    net = caffe.Net(param, caffe.TRAIN)
    for blob in net.learnable_params:
        blob.diff[...] = 1
    net.clear_param_diffs()
    assert [b.diff.shape for b in net.learnable_params] == [(201, 300), (201,)]
    assert not any(b.diff.any() for b in net.learnable_params)


LR_SETTINGS = {
    "fixed": '',
    "step": 'stepsize: 2 gamma: 0.5',
    "exp": 'gamma: 0.9',
    "inv": 'gamma: 0.3 power: 0.75',
    "multistep": 'gamma: 0.5 stepvalue: 1 stepvalue: 3 stepvalue: 4',
    "poly": 'power: 2.0 max_iter: 6',
    "sigmoid": 'gamma: -0.8 stepsize: 2',
}


@pytest.mark.parametrize("policy", sorted(LR_SETTINGS))
def test_lr_policy_matches_reference(policy):
    extra = 'type: "SGD" momentum: 0.5 lr_policy: "%s" %s' % (policy, LR_SETTINGS[policy])
    s = check_against_reference(extra, iters=6)
    if policy == "multistep":
        assert s.current_step == 3


def test_lr_policy_values_known():
    # A few hand-written values, independent of the reference function above.
    p = param_of('lr_policy: "multistep" gamma: 0.1 stepvalue: 2 stepvalue: 4')
    step, rates = 0, []
    for it in range(6):
        rate, step = solvers.learning_rate(p, it, step)
        rates.append(rate)
    np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    # A stale current_step catches up one step per call (Caffe's 'if', not 'while').
    rate, step = solvers.learning_rate(p, 10, 0)
    assert step == 1 and rate == pytest.approx(0.01, rel=1e-6)
    p = param_of('lr_policy: "inv" gamma: 0.0001 power: 0.75')
    assert solvers.learning_rate(p, 100, 0)[0] == pytest.approx(0.1 * 1.01 ** -0.75, rel=1e-6)
    p = param_of('lr_policy: "poly" power: 1 max_iter: 10')
    assert solvers.learning_rate(p, 5, 0)[0] == pytest.approx(0.05, rel=1e-6)
    p = param_of('lr_policy: "sigmoid" gamma: -1 stepsize: 3')
    assert solvers.learning_rate(p, 3, 0)[0] == pytest.approx(0.05, rel=1e-6)


def test_float32_rate_rounding_like_caffe():
    # Caffe: base_lr * pow(gamma, step) in double from float32 fields, stored as float.
    s = make_solver('lr_policy: "multistep" gamma: 0.1 stepvalue: 1 stepvalue: 2',
                    dtype=np.float32)
    lrs = []
    s.add_iteration_callback(lambda solver, loss: lrs.append(solver.lr))
    s.step(3)
    assert lrs == [0.10000000149011612, 0.010000000707805157, 0.0010000000474974513]


def test_iter_size_clip_l1_l2_and_mults():
    base = 'type: "SGD" momentum: 0.9 weight_decay: 0.05 '
    check_against_reference(base + "iter_size: 3")
    s = check_against_reference(base + "clip_gradients: 0.5")
    check_against_reference(base + 'regularization_type: "L1"')
    check_against_reference(base + 'regularization_type: "L1" iter_size: 2 clip_gradients: 0.3')
    # lr_mult / decay_mult are used per param: param 1 (lr_mult 2, decay_mult 0.5) moves
    # differently from a run where both are 1.
    assert s.net.params_lr == [1.0, 2.0]


def test_clip_gradients_really_clips(caplog):
    s = make_solver('type: "SGD" clip_gradients: 0.01')
    with caplog.at_level(logging.INFO, logger="pyfacelayers"):
        s.step(1)
    assert "Gradient clipping: scaling down gradients" in caplog.text
    w = s.net.learnable_params[0].data - W0
    b = s.net.learnable_params[1].data - B0
    # step norm: lr * 0.01 with lr_mult 1 on W and 2 on b, so between 0.001 and 0.002
    norm = math.sqrt((w ** 2).sum() + (b ** 2).sum())
    assert 0.001 <= norm <= 0.002 + 1e-12


def test_base_lr_setter_affects_next_updates():
    s = make_solver('type: "SGD"')
    s.step(1)
    s.base_lr = 0.0
    before = [p.data.copy() for p in s.net.learnable_params]
    s.step(2)
    for p, q in zip(s.net.learnable_params, before):
        np.testing.assert_array_equal(p.data, q)
    assert s.base_lr == 0.0


def test_apply_update_and_callbacks():
    s = make_solver('type: "SGD"')
    order = []
    s.add_callback(lambda: order.append("start"), lambda: order.append("gradients"))
    s.add_iteration_callback(lambda solver, loss: order.append(("iter", solver.iter)))
    s.step(2)
    assert order == ["start", "gradients", ("iter", 1), "start", "gradients", ("iter", 2)]
    # apply_update on hand-set diffs: data -= lr * diff (no momentum, no decay)
    s.net.learnable_params[0].diff[...] = 1.0
    s.net.learnable_params[1].diff[...] = 0.0
    before = s.net.learnable_params[0].data.copy()
    s.apply_update()
    np.testing.assert_allclose(s.net.learnable_params[0].data, before - float(np.float32(0.1)),
                               rtol=0, atol=1e-15)


def test_log_lines_like_caffe(caplog):
    s = make_solver('type: "SGD" display: 2 average_loss: 2')
    with caplog.at_level(logging.INFO, logger="pyfacelayers"):
        s.step(3)
    text = caplog.text
    assert "Iteration 0 (" in text and "), loss = " in text
    assert "    Train net output #0: loss = " in text and "(* 1 = " in text
    assert "Iteration 0, lr = 0.1" in text and "Iteration 2, lr = 0.1" in text
    assert "Iteration 1, lr" not in text
    # smoothed loss over average_loss = 2 iterations
    losses = reference_run(s.param, 3)[3]
    assert s.smoothed_loss == pytest.approx((losses[1] + losses[2]) / 2, rel=1e-12)


# ---------------------------------------------------------------------------------------
# Test nets and the Solve loop.
def test_test_nets_built_and_run(caplog):
    s = make_solver('type: "SGD" test_iter: 2 test_interval: 2 test_compute_loss: true '
                    'test_state { stage: "val" } max_iter: 4 random_seed: 7')
    assert len(s.test_nets) == 1
    t = s.test_nets[0]
    assert t.phase == caffe_pb2.TEST and t.stages == ("val",)
    assert s.net.phase == caffe_pb2.TRAIN
    assert s.net.seed == 7 and t.seed == 8
    assert t.learnable_params is s.net.learnable_params
    with caplog.at_level(logging.INFO, logger="pyfacelayers"):
        s.solve()
    text = caplog.text
    # tests at iterations 0 (test_initialization), 2 and 4 (after training)
    for it in (0, 2, 4):
        assert "Iteration %d, Testing net (#0)" % it in text
    assert "    Test net output #0: loss = " in text and "Test loss: " in text
    assert "Optimization Done." in text
    assert t.counter == 6


def test_test_net_from_test_net_param_and_no_initial_test(caplog):
    s = make_solver('test_net_param { name: "t1" state { stage: "x" } } test_iter: 1 '
                    'test_interval: 3 test_initialization: false max_iter: 3',
                    base=BASE.replace('net_param { name: "quadnet" }',
                                      'train_net_param { name: "quadnet" }'))
    assert s.test_nets[0].name == "t1" and s.test_nets[0].phase == caffe_pb2.TEST
    with caplog.at_level(logging.INFO, logger="pyfacelayers"):
        s.solve()
    assert "Iteration 0, Testing" not in caplog.text
    assert "Iteration 3, Testing net (#0)" in caplog.text


def test_net_from_file_relative_to_solver(tmp_path):
    (tmp_path / "n.prototxt").write_text('name: "fromfile"\n')
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n'
                           'test_iter: 1\ntest_interval: 5\n')
    s = solvers.SGDSolver(str(solver_file))
    assert s.net.name == "fromfile" and s.test_nets[0].name == "fromfile"
    assert s.test_nets[0].phase == caffe_pb2.TEST


def test_request_stop_snapshots_in_solve(tmp_path):
    s = make_solver('type: "SGD" max_iter: 10 snapshot_after_train: true', tmp_path)
    s.add_iteration_callback(lambda solver, loss: solver.iter == 3 and solver.request_stop())
    s.solve()
    assert s.iter == 3
    assert os.path.exists(os.path.join(str(tmp_path), "snap_iter_3.solverstate"))


# ---------------------------------------------------------------------------------------
# Snapshots and restore.
def read_state(path):
    state = caffe_pb2.SolverState()
    with open(path, "rb") as f:
        state.ParseFromString(f.read())
    return state


@pytest.mark.parametrize("solver_type", ["SGD", "Adam", "AdaDelta", "Nesterov"])
def test_snapshot_restore_resume_equals_uninterrupted(tmp_path, monkeypatch, solver_type):
    monkeypatch.setattr(FakeNet, "noise", 0.05)  # random gradients: the RNG state matters
    extra = SOLVER_SETTINGS[solver_type] + (' lr_policy: "multistep" gamma: 0.5 '
                                            'stepvalue: 2 stepvalue: 3 iter_size: 2 random_seed: 3')
    full = make_solver(extra, tmp_path)
    full.step(6)

    first = make_solver(extra, tmp_path)
    first.step(4)
    state_path = first.snapshot()
    assert state_path == os.path.join(str(tmp_path), "snap_iter_4.solverstate")
    state = read_state(state_path)
    assert state.iter == 4 and state.current_step == 2
    n_hist = 4 if solver_type in ("Adam", "AdaDelta") else 2
    assert len(state.history) == n_hist
    assert list(state.history[0].shape.dim) == list(W_SHAPE)
    assert state.learned_net == os.path.join(str(tmp_path), "snap_iter_4.caffemodel")
    assert os.path.exists(state_path + ".pfl.json")
    del first  # "killed"

    resumed = make_solver(extra, tmp_path)
    resumed.net.layers[0].rng.standard_normal(5)  # a different RNG position, restored below
    resumed.restore(state_path)
    assert resumed.iter == 4 and resumed.current_step == 2
    assert resumed.net.counter == 8  # layer state from the side file
    resumed.step(2)
    for a, b in zip(resumed.net.learnable_params, full.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    for a, b in zip(resumed.history, full.history):
        np.testing.assert_array_equal(a, b)


def test_solve_with_resume_file_and_periodic_snapshots(tmp_path):
    extra = 'type: "SGD" momentum: 0.9 max_iter: 6 snapshot: 2 snapshot_after_train: true'
    full = make_solver(extra, tmp_path)
    full.solve()
    names = sorted(os.listdir(str(tmp_path)))
    assert "snap_iter_2.caffemodel" in names and "snap_iter_6.solverstate" in names
    assert "snap_iter_5.caffemodel" not in names
    final = [p.data.copy() for p in full.net.learnable_params]
    resumed = make_solver(extra, tmp_path)
    resumed.solve(os.path.join(str(tmp_path), "snap_iter_4.solverstate"))
    assert resumed.iter == 6
    for p, q in zip(resumed.net.learnable_params, final):
        np.testing.assert_array_equal(p.data, q)


def test_restore_relative_learned_net_and_without_side_file(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    s = make_solver('type: "SGD" momentum: 0.9 snapshot_prefix: "rel"')
    s.step(2)
    s.snapshot()
    os.remove("rel_iter_2.solverstate.pfl.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))
    r = make_solver('type: "SGD" momentum: 0.9 snapshot_prefix: "rel"')
    r.restore(str(tmp_path / "rel_iter_2.solverstate"))  # learned_net "rel_iter_2.caffemodel"
    for a, b in zip(r.net.learnable_params, s.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    assert r.net.counter == 0  # no side file: layer states untouched (Caffe's behaviour)


def test_snapshot_diff_and_atomic_files(tmp_path):
    s = make_solver('type: "SGD" snapshot_diff: true', tmp_path)
    s.step(1)
    s.net.learnable_params[0].diff[...] = 3.0
    s.snapshot()
    net = caffe_pb2.NetParameter()
    with open(os.path.join(str(tmp_path), "snap_iter_1.caffemodel"), "rb") as f:
        net.ParseFromString(f.read())
    assert list(net.layer[0].blobs[0].double_diff)[:2] == [3.0, 3.0]
    leftovers = [n for n in os.listdir(str(tmp_path)) if n.endswith(".tmp")]
    assert leftovers == []


def test_caffe_solverstate_fixture_readable():
    path = shared_path("fixtures", "caffe-ref", "B2_solver", "b2_solver_iter_6.solverstate")
    from pyfacelayers.solvers.snapshot import read_state as ours
    state = ours(path)
    assert state.iter == 6 and state.current_step == 2
    assert state.learned_net == "b2_solver_iter_6.caffemodel"
    z = np.load(os.path.join(os.path.dirname(path), "B2_solver_f32.npz"))
    import json
    names = json.loads(str(z["meta_json"]))["history_index_to_param"]
    assert len(state.history) == len(names) > 0
    from pyfacelayers.fileio import blob_to_array
    for k in (0, len(names) - 1):
        np.testing.assert_array_equal(blob_to_array(state.history[k]), z["history__%d" % k])
    from pyfacelayers.solvers.snapshot import resolve_learned_net
    assert os.path.samefile(resolve_learned_net(path, state.learned_net),
                            os.path.join(os.path.dirname(path), "b2_solver_iter_6.caffemodel"))


# ---------------------------------------------------------------------------------------
# Bad input: a clear error before any iteration.
@pytest.mark.parametrize("text, message", [
    ('base_lr: 0.1 lr_policy: "fixed"', "no net"),
    ('net_param {} base_lr: 0.1 lr_policy: "fixed" type: "Sgd"', 'unknown solver type "Sgd"'),
    ('net_param {} base_lr: 0.1 lr_policy: "fixd"', 'unknown lr_policy "fixd"'),
    ('net_param {} base_lr: 0.1', "lr_policy is not set"),
    ('net_param {} lr_policy: "multistep" stepvalue: 5 stepvalue: 5',
     "increasing stepvalue"),
    ('net_param {} lr_policy: "multistep" stepvalue: 5 stepvalue: 3',
     "increasing stepvalue"),
    ('net_param {} lr_policy: "step" stepsize: 0', "stepsize > 0"),
    ('net_param {} lr_policy: "fixed" regularization_type: "L3"', "regularization_type"),
    ('net_param {} lr_policy: "fixed" type: "AdaGrad" momentum: 0.9', "momentum cannot"),
    ('net_param {} lr_policy: "fixed" type: "RMSProp" rms_decay: 1.5', "rms_decay"),
    ('net_param {} train_net_param {} lr_policy: "fixed"', "more than one train net"),
    ('net_param {} lr_policy: "fixed" test_iter: 1', "test_interval > 0"),
    ('train_net_param {} lr_policy: "fixed" test_iter: 1 test_interval: 1',
     "test_iter must be given once per test net"),
    ('net_param {} lr_policy: "fixed" snapshot: 10', "snapshot_prefix is not set"),
    ('net_param {} lr_policy: "fixed" snapshot: 10 snapshot_prefix: "/nonexistent/dir/x"',
     'directory "/nonexistent/dir" does not exist'),
    ('net: "/nonexistent/net.prototxt" lr_policy: "fixed"', "not found"),
])
def test_bad_solver_definitions(text, message):
    with pytest.raises(SolverError) as info:
        get_solver(text)
    assert message in str(info.value)
    assert FakeNet.instances == []  # rejected before any net was built


def test_unwritable_snapshot_dir_fails_before_first_iteration():
    # /proc refuses new files even to root.
    text = 'type: "SGD" snapshot_prefix: "/proc/pfl_snapshot"'
    with pytest.raises(SolverError, match='directory "/proc" is not writable'):
        make_solver(text + " snapshot: 2")
    s = make_solver(text + " snapshot_after_train: true")  # checked by solve()
    with pytest.raises(SolverError, match="not writable"):
        s.solve()
    assert s.iter == 0 and s.net.counter == 0


def test_solve_checks_missing_snapshot_dir_before_iterating():
    s = make_solver('type: "SGD" snapshot_prefix: "/nonexistent/dir/x" '
                    'snapshot_after_train: true')
    with pytest.raises(SolverError, match="does not exist"):
        s.solve()
    assert s.iter == 0 and s.net.counter == 0


def test_restore_rejects_mismatched_history(tmp_path):
    sgd = make_solver('type: "SGD" momentum: 0.9', tmp_path)
    sgd.step(1)
    path = sgd.snapshot()
    adam = make_solver(SOLVER_SETTINGS["Adam"], tmp_path)
    with pytest.raises(SolverError, match="holds 2 history blobs but this Adam solver"):
        adam.restore(path)
    assert adam.iter == 0
    # wrong shape
    state = read_state(path)
    state.history[0].shape.dim[:] = [2, 3]
    bad = os.path.join(str(tmp_path), "bad.solverstate")
    with open(bad, "wb") as f:
        f.write(state.SerializeToString())
    other = make_solver('type: "SGD" momentum: 0.9', tmp_path)
    with pytest.raises(SolverError, match=r"history blob 0 has shape \(2, 3\)"):
        other.restore(bad)
    assert other.iter == 0
    with pytest.raises(FileNotFoundError, match="no such file"):
        other.restore(os.path.join(str(tmp_path), "missing.solverstate.h5"))
    with pytest.raises(FileNotFoundError):
        other.restore(os.path.join(str(tmp_path), "missing.solverstate"))


def test_legacy_solver_type_upgraded():
    s = get_solver(BASE + "solver_type: NESTEROV momentum: 0.9")
    assert s.type == "Nesterov" and isinstance(s, solvers.NesterovSolver)


# ---------------------------------------------------------------------------------------
# Command line: train / test / time.
from pyfacelayers.cli import main as cli_main  # noqa: E402

TRAIN_SOLVER = """net_param { name: "quadnet" }
type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001
lr_policy: "step" stepsize: 3 gamma: 0.5
max_iter: 8 display: 2 snapshot: 4 random_seed: 11
snapshot_prefix: "%s"
"""


def write_solver(tmp_path, prefix="snap"):
    path = tmp_path / "solver.prototxt"
    path.write_text(TRAIN_SOLVER % os.path.join(str(tmp_path), prefix))
    return str(path)


def uninterrupted_final(tmp_path):
    s = make_solver(base="", extra=TRAIN_SOLVER % os.path.join(str(tmp_path), "ref"))
    s.step(8)
    return [p.data.copy() for p in s.net.learnable_params]


def test_train_command_writes_log_and_snapshots(tmp_path, capsys):
    solver = write_solver(tmp_path)
    logfile = str(tmp_path / "train.log")
    assert cli_main(["train", "--solver", solver, "--log", logfile, "--dtype", "float64"]) == 0
    text = open(logfile).read()
    import re
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ solver\.py:\d+\] Iteration 0 \(", text, re.M)
    assert "Iteration 2, lr = 0.05" in text and "Train net output #0: loss = " in text
    assert "Snapshotting to binary proto file %s" % os.path.join(str(tmp_path), "snap_iter_4")\
        in text
    assert "Optimization Done." in text
    err = capsys.readouterr().err
    # not a terminal: plain progress lines every `display` iterations
    assert "iter 2/8 | loss " in err and "iter 8/8" in err and "\r" not in err
    assert "lr 0.025" in err  # step policy: 0.05 * 0.5 from iteration 3 on
    for n in (4, 8):
        assert os.path.exists(os.path.join(str(tmp_path), "snap_iter_%d.solverstate" % n))
    final = FakeNet.instances[0].learnable_params
    for p, q in zip(final, uninterrupted_final(tmp_path)):
        np.testing.assert_array_equal(p.data, q)


def test_train_ctrl_c_snapshots_and_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FakeNet, "noise", 0.05)
    solver = write_solver(tmp_path)
    # A KeyboardInterrupt inside iteration 5's forward (as a second Ctrl-C would).
    orig_init = FakeNet.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        self.fail_at = FakeNet.fail_at_class
    monkeypatch.setattr(FakeNet, "fail_at_class", 5, raising=False)
    monkeypatch.setattr(FakeNet, "__init__", init)
    assert cli_main(["train", "--solver", solver, "--dtype", "float64"]) == 130
    state = os.path.join(str(tmp_path), "snap_iter_5.solverstate")
    assert os.path.exists(state)
    assert "resume with --snapshot" in capsys.readouterr().err
    import json
    extra = json.load(open(state + ".pfl.json"))
    # the layer state from before the interrupted iteration, not after its partial forward
    assert extra["train_net_layer_states"] == {"quad": {"iter": 5}}
    assert extra["train_net_rng_states"]["noise"]["bit_generator"] == "PCG64"
    monkeypatch.setattr(FakeNet, "fail_at_class", None)
    FakeNet.instances = []
    assert cli_main(["train", "--solver", solver, "--snapshot", state,
                     "--dtype", "float64"]) == 0
    for p, q in zip(FakeNet.instances[0].learnable_params, uninterrupted_final(tmp_path)):
        np.testing.assert_array_equal(p.data, q)


def test_train_first_sigint_stops_after_the_iteration(tmp_path, monkeypatch):
    import signal
    solver = write_solver(tmp_path)
    orig = FakeNet.forward_backward

    def forward_backward(self):
        if self.counter == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return orig(self)
    monkeypatch.setattr(FakeNet, "forward_backward", forward_backward)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    if before is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process (started in the background)")
    assert cli_main(["train", "--solver", solver]) == 0
    assert FakeNet.instances[0].counter == 3
    assert os.path.exists(os.path.join(str(tmp_path), "snap_iter_3.solverstate"))
    assert signal.getsignal(signal.SIGINT) is before


def _signal_at(monkeypatch, signum, counter=2):
    """Send ``signum`` to this process during iteration ``counter``'s forward."""
    orig = FakeNet.forward_backward

    def forward_backward(self):
        if self.counter == counter:
            os.kill(os.getpid(), signum)
        return orig(self)
    monkeypatch.setattr(FakeNet, "forward_backward", forward_backward)


def _snapshots(tmp_path):
    return sorted(int(n.split("_iter_")[1].split(".")[0]) for n in os.listdir(str(tmp_path))
                  if n.endswith(".solverstate"))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
@pytest.mark.parametrize("argv,signum,forwards,snapshots", [
    ([], "SIGHUP", 9, [3, 4, 8]),                              # Caffe's default: snapshot
    (["-sighup_effect", "stop"], "SIGHUP", 3, [3]),             # gflags-style flag
    (["--sighup_effect", "none"], "SIGHUP", 9, [4, 8]),
    (["--sigint_effect", "snapshot"], "SIGINT", 9, [3, 4, 8]),
    (["--sigint_effect", "none"], "SIGINT", 9, [4, 8]),
])
def test_train_signal_effects(tmp_path, monkeypatch, argv, signum, forwards, snapshots):
    """caffe train's --sigint_effect / --sighup_effect: stop, snapshot (and go on), none.
    A run to the end makes 9 forwards: 8 iterations and the final loss display."""
    solver = write_solver(tmp_path)
    _signal_at(monkeypatch, getattr(signal, signum))
    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)]
    assert cli_main(["train", "-solver", solver] + argv) == 0
    assert FakeNet.instances[0].counter == forwards
    assert _snapshots(tmp_path) == snapshots
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGHUP)] == before


def test_train_command_errors(tmp_path, capsys):
    solver = write_solver(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(["train", "--solver", solver, "--weights", "a", "--snapshot", "b"])
    bad = tmp_path / "bad.prototxt"
    bad.write_text('net_param {} lr_policy: "sometimes"\n')
    assert cli_main(["train", "--solver", str(bad)]) == 1
    assert 'unknown lr_policy "sometimes"' in capsys.readouterr().err
    assert FakeNet.instances == []


class LayeredFake(FakeNet):
    class L:
        def __init__(self, name):
            self.name = name

    def __init__(self, *a, **k):
        super().__init__(caffe_pb2.NetParameter(name="f"), caffe_pb2.TEST)
        self.layers = [self.L("ip"), self.L("loss")]
        self.calls = []

    def forward_from_to(self, start=0, end=None):
        self.calls.append(("f", start, end))
        return self._forward()[2] if end == len(self.layers) - 1 else 0.0

    def backward_from_to(self, start=None, end=0):
        self.calls.append(("b", start, end))


def test_test_command_means(capsys):
    import argparse
    args = argparse.Namespace(iterations=3, gpu=None)
    lines = []
    means = __import__("pyfacelayers.commands.test", fromlist=["run"]).run(
        args, out=lines.append, make_net=LayeredFake)
    w, b = W0, B0
    expected = [grads(w, b, k)[2] for k in range(3)]
    assert means["loss"][0] == pytest.approx(sum(expected) / 3, rel=1e-6)
    assert "Batch 2, loss = %g" % np.float32(expected[2]) in lines
    assert any(line.startswith("loss = ") and "(* 1 = " in line for line in lines)
    with pytest.raises(ValueError, match="iterations"):
        __import__("pyfacelayers.commands.test", fromlist=["run"]).run(
            argparse.Namespace(iterations=0, gpu=None), out=lines.append, make_net=LayeredFake)


def test_time_command_table():
    import argparse
    from pyfacelayers.commands import time as time_cmd
    lines = []
    nets = []

    def make(args):
        nets.append(LayeredFake())
        return nets[-1]
    forward, backward = time_cmd.run(argparse.Namespace(iterations=2, gpu=None),
                                     out=lines.append, make_net=make)
    assert len(forward) == 2 and all(t >= 0 for t in forward + backward)
    calls = nets[0].calls
    assert calls[:2] == [("f", 0, 1), ("b", 1, 0)]
    assert calls[2:6] == [("f", 0, 0), ("f", 1, 1), ("b", 1, 1), ("b", 0, 0)]
    assert any("ip\tforward: " in line for line in lines)
    assert any("loss\tbackward: " in line for line in lines)
    assert lines[-1].startswith("Total Time: ")


class FakeTTY:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_on_a_terminal_redraws_one_line(tmp_path):
    import argparse
    from pyfacelayers.commands import train as train_cmd
    orig = FakeNet.forward_backward

    tty = FakeTTY()
    args = argparse.Namespace(solver=write_solver(tmp_path), weights=None, snapshot=None,
                              gpu=None, log=None, level=None, stage=None, dtype="float64")
    FakeNet.forward_backward = lambda self: (self.blobs.setdefault(
        "lambda", Blob((1,), self.dtype)).data.__setitem__(Ellipsis, 5.0 + self.counter),
        orig(self))[1]
    try:
        assert train_cmd.run(args, stream=tty) == 0
    finally:
        FakeNet.forward_backward = orig
    assert tty.text.count("\r\x1b[K") >= 8
    assert "iter 8/8 | loss " in tty.text and "lambda 12 | lr 0.0125 | " in tty.text
    assert " it/s" in tty.text
    # messages (snapshots) are printed on their own lines above the progress line
    assert "\r\x1b[KSnapshotting to binary proto file" in tty.text
    assert tty.text.endswith("\n")


def test_train_with_weights_finetunes(tmp_path):
    source = make_solver('type: "SGD"', tmp_path)
    source.step(3)
    weights = str(tmp_path / "w.caffemodel")
    source.net.save(weights)
    FakeNet.instances = []
    solver = write_solver(tmp_path).replace("solver.prototxt", "solver.prototxt")
    text = open(solver).read().replace("max_iter: 8", "max_iter: 0") \
        .replace("snapshot: 4", "snapshot_after_train: false")
    open(solver, "w").write(text)
    assert cli_main(["train", "--solver", solver, "--weights", weights,
                     "--dtype", "float64"]) == 0
    for p, q in zip(FakeNet.instances[0].learnable_params, source.net.learnable_params):
        np.testing.assert_array_equal(p.data, q.data)


def test_select_device(caplog, monkeypatch):
    from pyfacelayers import backend
    from pyfacelayers.commands import _common

    def no_gpu():
        raise RuntimeError("GPU mode: no CUDA device found")
    monkeypatch.setattr(backend, "import_cupy", no_gpu)
    assert _common.select_device(None) == "CPU"
    gpu_solver = param_of("solver_mode: GPU device_id: 0")
    with caplog.at_level(logging.WARNING, logger="pyfacelayers"):
        assert _common.select_device(None, gpu_solver) == "CPU"
    assert "solver_mode is GPU but no GPU can be used" in caplog.text
    assert backend.mode() == "cpu"
    with pytest.raises(ValueError, match="one device id"):
        _common.select_device("0,1")
    with pytest.raises(ValueError, match="--gpu 0: GPU mode: no CUDA device"):
        _common.select_device("0")
    backend.set_mode_cpu()
