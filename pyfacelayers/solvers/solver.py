"""Caffe's Solver: the training loop (Step/Solve), test nets, gradient processing
(clip, normalise, regularise), updates, snapshots and restore.

The loop follows Caffe's Solver::Step exactly: per iteration, clear the param diffs,
test when due, run ForwardBackward ``iter_size`` times (diffs accumulate, the loss is
averaged), then ApplyUpdate (clip -> normalise -> regularise -> update rule ->
``data -= diff``), and only then ``iter += 1``; snapshots come after the increment.
"""

import logging
import math
import os
import tempfile
import time

import numpy as np

from .. import backend, limits
from ..parallel import world
from ..proto import caffe_pb2
from . import snapshot as snap
from ..fileio import read_net, read_solver
from ..layers.python_layer import python_layers_allowed
from .lr_policy import SolverError, check_lr_policy, learning_rate

log = logging.getLogger("pyfacelayers")

TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def make_net(net_param, phase, level=0, stages=(), dtype=np.float32, seed=None,
             allow_python_layers=None):
    """Build a Net (pyfacelayers.net.Net); tests replace this with a fake net."""
    from ..net import Net
    return Net(net_param, phase, level=level, stages=tuple(stages), dtype=dtype, seed=seed,
               allow_python_layers=allow_python_layers)


def _fmt(value):
    """A number as Caffe's LOG prints it (ostream default: 6 significant digits)."""
    return "%g" % value


class Solver:
    """A Caffe solver of one type (``rule_class`` picks the update rule).

    ``solver`` is a SolverParameter, a solver .prototxt path or prototxt text.
    ``dtype`` is the nets' Dtype (float32 default, float64 supported). ``source``:
    the solver file a SolverParameter came from (relative net paths are also looked
    up next to it). ``allow_python_layers``: let the nets build Caffe ``Python``
    layers (refused by default; see pyfacelayers.layers.python_layer).
    """

    rule_class = None

    def __init__(self, solver, dtype=np.float32, net_factory=None, source=None,
                 allow_python_layers=None):
        if isinstance(solver, caffe_pb2.SolverParameter):
            self.param = caffe_pb2.SolverParameter()
            self.param.CopyFrom(solver)
            self._source = os.fspath(source) if source else None
        else:
            self._source = os.fspath(solver) if os.path.exists(os.fspath(solver)) else None
            self.param = read_solver(solver)
        self._where = "solver %s" % (self._source or "(SolverParameter)")
        self.dtype = np.dtype(dtype)
        self.allow_python_layers = python_layers_allowed(allow_python_layers)
        self._net_factory = net_factory or (lambda *a, **k: make_net(*a, **k))
        self.rule = self.rule_class(self.param)
        self._check_param()
        self.iter = 0
        self.current_step = 0
        self.lr = None            # the rate of the latest update (float, in the Dtype)
        self.smoothed_loss = 0.0  # (a property: see _update_smoothed_loss)
        self._losses = []
        self._callbacks = []      # pycaffe's (on_start, on_gradients) pairs
        self._iteration_callbacks = []
        self._action_function = None
        self._requests = []
        self.requested_early_exit = False
        self._in_update = False
        self._start_states = None  # layer states when the running iteration began
        self.last_snapshot = None  # (iter, solverstate path) of the latest snapshot
        self._iterations_last = 0
        self._timer = time.time()
        # A data-parallel job's link to the other ranks (pyfacelayers.parallel's
        # DataParallel, which sets itself here); None: this process trains alone.
        self.parallel = None

        log.info("Initializing solver from parameters: %s", self._where)
        # Caffe seeds rank r with random_seed + r (each rank its own shuffles and
        # dropout; rank 0's weights are broadcast, so the fillers' draws do not matter).
        seed = self.param.random_seed + world.rank() if self.param.random_seed >= 0 else None
        self.net = self._init_train_net(seed)
        for layer in self.net.layers:  # settled at display, test, snapshot and the end
            layer.defer_checks = True
        self.test_nets = self._init_test_nets(seed)
        log.info("Solver scaffolding done.")
        params = self.net.learnable_params
        # The update rule's history (1 to 3 copies of the parameters) joins the train
        # net's arrays under the memory limit, checked before it is allocated.
        limits.check_allocation(
            self.rule.history_sets * sum(int(p.data.nbytes) for p in params),
            "the %s solver's history (%d x the learnable parameters)"
            % (self.type, self.rule.history_sets),
            total=int(getattr(self.net, "memory_bytes", 0) or 0))
        self.history = [self._zeros_like(p) for _ in range(self.rule.history_sets) for p in params]

    # -- set-up and validation ------------------------------------------------------
    def _check_param(self):
        p, where = self.param, self._where
        check_lr_policy(p, where)
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError('%s: unknown regularization_type "%s" (expected "L1" or "L2")'
                              % (where, p.regularization_type))
        if p.average_loss < 1:
            raise SolverError("%s: average_loss must be >= 1, got %d" % (where, p.average_loss))
        if p.iter_size < 1:
            raise SolverError("%s: iter_size must be >= 1, got %d" % (where, p.iter_size))
        if p.snapshot < 0:
            raise SolverError("%s: snapshot must be >= 0, got %d" % (where, p.snapshot))
        self.rule.check(where)
        count = sum(p.HasField(f) for f in TRAIN_NET_FIELDS)
        if count == 0:
            raise SolverError("%s: no net: the solver must name its train net with one of %s"
                              % (where, ", ".join(TRAIN_NET_FIELDS)))
        if count > 1:
            raise SolverError("%s: more than one train net given (%s); keep one"
                              % (where, ", ".join(f for f in TRAIN_NET_FIELDS if p.HasField(f))))
        if p.HasField("net") and p.HasField("net_param"):
            raise SolverError("%s: both net and net_param are set" % where)
        self._test_net_count()
        for field in ("net", "train_net"):
            if p.HasField(field):
                self._resolve(getattr(p, field), field)
        for f in p.test_net:
            self._resolve(f, "test_net")
        if p.snapshot > 0:
            self.check_snapshot_prefix()

    def check_snapshot_prefix(self):
        """Raise SolverError unless snapshots can be written under snapshot_prefix
        (Caffe's CheckSnapshotWritePermissions, with the reason)."""
        prefix = self.param.snapshot_prefix
        if self.param.snapshot > 0 and not self.param.HasField("snapshot_prefix"):
            raise SolverError("%s: snapshot is %d but snapshot_prefix is not set"
                              % (self._where, self.param.snapshot))
        folder = os.path.dirname(os.path.abspath(prefix or "x"))
        if not os.path.isdir(folder):
            raise SolverError('%s: cannot write snapshots to snapshot_prefix "%s": directory '
                              '"%s" does not exist' % (self._where, prefix, folder))
        try:
            fd, probe = tempfile.mkstemp(prefix=".pfl_probe_", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise SolverError('%s: cannot write snapshots to snapshot_prefix "%s": directory '
                              '"%s" is not writable (%s)' % (self._where, prefix, folder,
                                                             exc.strerror or exc)) from None

    def _resolve(self, path, what):
        """A net file path: as given (Caffe: relative to the working directory), else
        relative to the solver file's directory."""
        if os.path.isabs(path) or os.path.exists(path) or not self._source:
            candidate = path
        else:
            candidate = os.path.join(os.path.dirname(os.path.abspath(self._source)), path)
        if not os.path.exists(candidate):
            raise SolverError('%s: %s "%s" not found' % (self._where, what, path))
        return candidate

    def _read_net(self, field, path):
        return read_net(self._resolve(path, field))

    def _init_train_net(self, seed):
        p = self.param
        net_param = caffe_pb2.NetParameter()
        if p.HasField("train_net_param"):
            net_param.CopyFrom(p.train_net_param)
        elif p.HasField("train_net"):
            net_param = self._read_net("train_net", p.train_net)
        elif p.HasField("net_param"):
            net_param.CopyFrom(p.net_param)
        else:
            net_param = self._read_net("net", p.net)
        # NetState precedence: TRAIN default < the net's own state < train_state.
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        net_param.state.CopyFrom(state)
        log.info("Creating training net")
        return self._make(net_param, state, seed)

    def _make(self, net_param, state, seed):
        extra = {"allow_python_layers": True} if self.allow_python_layers else {}
        return self._net_factory(net_param, state.phase, level=state.level,
                                 stages=tuple(state.stage), dtype=self.dtype, seed=seed,
                                 **extra)

    def _test_net_count(self):
        """How many test nets the solver defines (Caffe's InitTestNets rules)."""
        p = self.param
        generic = p.HasField("net_param") or p.HasField("net")
        specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < specific:
            raise SolverError("%s: test_iter must be given for each test net (%d test nets, "
                              "%d test_iter)" % (self._where, specific, len(p.test_iter)))
        if not generic and len(p.test_iter) != specific:
            raise SolverError("%s: test_iter must be given once per test net (%d test nets, "
                              "%d test_iter)" % (self._where, specific, len(p.test_iter)))
        instances = specific + (len(p.test_iter) - specific if generic else 0)
        if len(p.test_state) and len(p.test_state) != instances:
            raise SolverError("%s: test_state must be unset or given once per test net "
                              "(%d test nets, %d test_state)"
                              % (self._where, instances, len(p.test_state)))
        if instances and p.test_interval <= 0:
            raise SolverError("%s: test nets need test_interval > 0, got %d"
                              % (self._where, p.test_interval))
        return instances

    def _init_test_nets(self, seed):
        p = self.param
        specific = len(p.test_net_param) + len(p.test_net)
        instances = self._test_net_count()
        params = [("test_net_param", q) for q in p.test_net_param]
        params += [("test_net file: " + f, self._read_net("test_net", f)) for f in p.test_net]
        for _ in range(instances - specific):
            if p.HasField("net_param"):
                params.append(("net_param", p.net_param))
            else:
                params.append(("net file: " + p.net, self._read_net("net", p.net)))
        nets = []
        for i, (source, q) in enumerate(params):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(q)
            # NetState precedence: TEST default < the net's own state < test_state[i].
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(net_param.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            net_param.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, source)
            net = self._make(net_param, state, None if seed is None else seed + 1 + i)
            net.share_trained_layers_with(self.net)
            nets.append(net)
        return nets

    def _zeros_like(self, blob):
        xp = backend.array_module(blob.data)
        return xp.zeros(blob.data.shape, dtype=blob.data.dtype)

    # -- pycaffe API ----------------------------------------------------------------
    @property
    def type(self):
        return self.rule.type_name

    @property
    def base_lr(self):
        return self.param.base_lr

    @base_lr.setter
    def base_lr(self, value):
        # Stored as Caffe stores it (a float32 field); used from the next update on.
        self.param.base_lr = float(value)

    def share_weights(self, net):
        """pycaffe's Solver.share_weights: ``net`` uses this solver's training-net
        parameters for layers of the same name (Net::ShareTrainedLayersWith)."""
        net.share_with(self.net)

    def add_callback(self, on_start, on_gradients=None):
        """pycaffe's add_callback: ``on_start()`` before each iteration's
        ForwardBackward, ``on_gradients()`` after it, before the update; or one object
        with ``on_start`` and ``on_gradients_ready`` methods (``caffe.NCCL``)."""
        if on_gradients is None and hasattr(on_start, "on_gradients_ready"):
            on_start, on_gradients = on_start.on_start, on_start.on_gradients_ready
        if not callable(on_start) or not callable(on_gradients):
            raise TypeError("add_callback takes two functions (on_start, on_gradients) or an "
                            "object with on_start and on_gradients_ready (caffe.NCCL)")
        self._callbacks.append((on_start, on_gradients))

    def add_iteration_callback(self, fn):
        """Call ``fn(solver, loss)`` after every iteration's update, once ``solver.iter``
        counts it; ``loss`` is that iteration's loss (averaged over iter_size).
        ``solver.lr`` and ``solver.smoothed_loss`` hold the rate used and the
        displayed (smoothed) loss. Call ``solver.request_stop()`` in it to stop."""
        self._iteration_callbacks.append(fn)

    def set_action_function(self, fn):
        """Caffe's SetActionFunction: ``fn()`` returns "none", "snapshot" or "stop"; it
        is asked after every iteration and between test batches."""
        self._action_function = fn

    def request_stop(self):
        """Stop after the current iteration (as a SIGINT with Caffe's default effect)."""
        self._requests.append("stop")

    def request_snapshot(self):
        self._requests.append("snapshot")

    def _requested_action(self):
        if self._requests:
            return self._requests.pop(0)
        if self._action_function is not None:
            return self._action_function() or "none"
        return "none"

    def _job_action(self):
        """This iteration's request, the same on every rank of a data-parallel job (a
        signal may reach one rank only, or the ranks at different moments)."""
        request = self._requested_action()
        return self.parallel.agree(request) if self.parallel else request

    @property
    def _root(self):
        return world.is_root()

    # -- the loop -------------------------------------------------------------------
    def step(self, iters):
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        self.requested_early_exit = False
        self._losses = []
        self.smoothed_loss = 0.0
        self._timer = time.time()
        self._iterations_last = self.iter
        while self.iter < stop_iter:
            # Kept so that a snapshot taken after an interrupt inside this iteration
            # (which leaves the weights as they were) resumes it exactly.
            self._begin_iteration_states()
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                if self._root:  # Caffe: only rank 0 tests
                    self.test_all()
                if self.parallel:
                    self.requested_early_exit = self.parallel.agree(
                        "stop" if self.requested_early_exit else "none") == "stop"
                if self.requested_early_exit:
                    break
            for on_start, _ in self._callbacks:
                on_start()
            display = p.display and self.iter % p.display == 0
            loss = 0.0
            # Our Net leaves a GPU loss on the device (no wait); other nets give floats.
            forward_backward = getattr(self.net, "_forward_backward",
                                       self.net.forward_backward)
            for _ in range(p.iter_size):
                loss = loss + forward_backward()
            loss = loss / p.iter_size
            if self.parallel:  # the loss of the job's whole batch (read back: one wait)
                loss = self.parallel.mean_loss(float(loss))
            self._update_smoothed_loss(loss, start_iter)
            if display:
                self._log_train_outputs()
            for _, on_gradients in self._callbacks:
                on_gradients()
            self.apply_update()
            # iter counts the updates done (Caffe increments after ApplyUpdate).
            self.iter += 1
            self._end_iteration_states()
            for fn in self._iteration_callbacks:
                fn(self, loss)
            request = self._job_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    # Caffe's UpdateSmoothedLoss. A GPU loss is a 0-d device array: reading it would
    # make the host wait for the device every iteration, so such losses are queued and
    # folded in, with the same arithmetic and in order, only when the smoothed loss is
    # read (display lines, the end of step(), callbacks that ask for it).
    def _update_smoothed_loss(self, loss, start_iter):
        self._unsettled.append((loss, self.iter - start_iter))
        if isinstance(loss, float):
            self._settle_losses()

    @property
    def smoothed_loss(self):
        self._settle_losses()
        return self._smoothed_loss

    @smoothed_loss.setter
    def smoothed_loss(self, value):
        self._unsettled = []
        self._smoothed_loss = float(value)

    def _settle_losses(self):
        if not self._unsettled:
            return
        pending, self._unsettled = self._unsettled, []
        on_device = [loss for loss, _ in pending if not isinstance(loss, float)]
        if on_device:  # one transfer for all of them
            import cupy
            values = iter(cupy.stack(on_device).get().tolist())
        average = self.param.average_loss
        for loss, position in pending:
            loss = loss if isinstance(loss, float) else next(values)
            if len(self._losses) < average:
                self._losses.append(loss)
                size = len(self._losses)
                self._smoothed_loss = (self._smoothed_loss * (size - 1) + loss) / size
            else:
                idx = position % average
                self._smoothed_loss += (loss - self._losses[idx]) / average
                self._losses[idx] = loss

    def _settle_checks(self):
        settle = getattr(self.net, "settle_checks", None)  # nets of our own kind
        if settle is not None:
            settle()

    def _log_train_outputs(self):
        self._settle_checks()
        lapse = time.time() - self._timer
        per_s = (self.iter - self._iterations_last) / (lapse or 1.0)
        log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, _fmt(per_s),
                 _fmt(lapse), self.param.display, _fmt(self.smoothed_loss))
        self._timer = time.time()
        self._iterations_last = self.iter
        index = 0
        for name in self.net.outputs:
            weight = self.net.blob_loss_weights.get(name, 0)
            values = _values(self.net.blobs[name].data)
            if self.parallel:  # means over the ranks' batches
                values = self.parallel.mean_values(values)
            for value in values:
                extra = " (* %s = %s loss)" % (_fmt(weight), _fmt(weight * value)) if weight else ""
                log.info("    Train net output #%d: %s = %s%s", index, name, _fmt(value), extra)
                index += 1

    def solve(self, resume_file=None):
        """Train to max_iter (Caffe's Solver::Solve), optionally resuming first."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        if p.snapshot or p.snapshot_after_train:
            self.check_snapshot_prefix()
        self.requested_early_exit = False
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        start_iter = self.iter
        self.step(p.max_iter - self.iter)
        self._settle_checks()
        snapshotted_now = p.snapshot and self.iter % p.snapshot == 0
        if p.snapshot_after_train and not snapshotted_now:
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            # A forward only, to show the loss of the final weights (as Caffe).
            self.net.forward()
            loss = self._net_loss(self.net)
            if self.parallel:
                loss = self.parallel.mean_loss(loss)
            self._update_smoothed_loss(loss, start_iter)
            log.info("Iteration %d, loss = %s", self.iter, _fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0 and self._root:
            self.test_all()
        log.info("Optimization Done.")

    @staticmethod
    def _net_loss(net):
        """Net::Forward's loss: the sum of loss_weight * value over the loss blobs."""
        total = 0.0
        for name, weight in net.blob_loss_weights.items():
            if weight:
                total += float(weight) * float(sum(_values(net.blobs[name].data)))
        return total

    # -- testing ---------------------------------------------------------------------
    def test_all(self):
        self._settle_checks()
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_net_id=0):
        """Run test net ``test_net_id`` for its test_iter batches; log the mean outputs.
        Returns {output name: mean values array}."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, test_net_id)
        net = self.test_nets[test_net_id]
        net.share_trained_layers_with(self.net)
        iters = p.test_iter[test_net_id]
        scores, loss = None, 0.0
        for _ in range(iters):
            # In a job of several ranks, only rank 0 tests: signals wait for the
            # iteration's end, where all ranks agree on them.
            request = "none" if self.parallel and self.parallel.size > 1 \
                else self._requested_action()
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                elif request == "stop":
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            net.forward()
            if p.test_compute_loss:
                loss += self._net_loss(net)
            values = [(name, np.asarray(_values(net.blobs[name].data), np.float64))
                      for name in net.outputs]
            if scores is None:
                scores = values
            else:
                scores = [(n, s + v) for (n, s), (_, v) in zip(scores, values)]
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if p.test_compute_loss and iters > 0:
            log.info("Test loss: %s", _fmt(loss / iters))
        results, index = {}, 0
        for name, total in scores or []:
            weight = net.blob_loss_weights.get(name, 0)
            mean = total / iters
            results[name] = mean
            for value in mean:
                extra = " (* %s = %s loss)" % (_fmt(weight), _fmt(weight * value)) if weight else ""
                log.info("    Test net output #%d: %s = %s%s", index, name, _fmt(value), extra)
                index += 1
        return results

    # -- the update ------------------------------------------------------------------
    def learning_rate(self):
        """The rate for the current iteration (advances multistep's current_step)."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return float(self.dtype.type(rate))

    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate on the diffs the net holds now."""
        self._in_update = True
        try:
            rate = self.learning_rate()
            self.lr = rate
            if self.param.display and self.iter % self.param.display == 0:
                log.info("Iteration %d, lr = %s", self.iter, _fmt(rate))
            self.clip_gradients()
            params = self.net.learnable_params
            n = len(params)
            updated = set()  # the parameters whose data the rule's one pass updated
            for i, blob in enumerate(params):
                self._sync_history(i, blob)
                self.normalize(blob)
                history = [self.history[i + k * n] for k in range(self.rule.history_sets)]
                decay = self._local_decay(self.net.params_weight_decay[i])
                if self.param.regularization_type == "L2" and self.rule.update_in_one_pass(
                        blob.data, blob.diff, history, decay, rate, self.net.params_lr[i]):
                    updated.add(i)
                    continue
                self.regularize(blob, self.net.params_weight_decay[i])
                self.rule.compute(blob.diff, history, rate, self.net.params_lr[i], self.iter)
            for i, blob in enumerate(params):  # Net::Update: data -= diff
                if i not in updated:
                    data = blob.data
                    data -= blob.diff
        finally:
            self._in_update = False

    def _sync_history(self, i, blob):
        # The net may have moved to another device (numpy <-> cupy) since set-up.
        xp = backend.array_module(blob.data)
        n = len(self.net.learnable_params)
        for k in range(self.rule.history_sets):
            h = self.history[i + k * n]
            if backend.array_module(h) is not xp:
                self.history[i + k * n] = xp.asarray(backend.to_numpy(h))

    def clip_gradients(self):
        clip = self.param.clip_gradients
        if clip < 0:
            return
        params = self.net.learnable_params
        sumsq = sum(float((p.diff.astype(np.float64) ** 2).sum()) for p in params)
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = clip / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                     "factor %s", _fmt(norm), _fmt(clip), _fmt(scale))
            for p in params:
                diff = p.diff
                diff *= p.diff.dtype.type(scale)

    def normalize(self, blob):
        if self.param.iter_size == 1:
            return
        t = blob.diff.dtype.type
        diff = blob.diff
        diff *= t(1) / t(self.param.iter_size)

    def _local_decay(self, decay_mult):
        t = self.dtype.type
        return t(self.param.weight_decay) * t(decay_mult)

    def regularize(self, blob, decay_mult):
        local_decay = self._local_decay(decay_mult)
        if not local_decay:
            return
        xp = backend.array_module(blob.data)
        diff = blob.diff
        if self.param.regularization_type == "L2":
            diff += local_decay * blob.data
        else:  # L1
            diff += local_decay * xp.sign(blob.data)

    # -- snapshots -------------------------------------------------------------------
    def snapshot_filename(self, extension):
        return "%s_iter_%d%s" % (self.param.snapshot_prefix, self.iter, extension)

    def snapshot(self):
        """Write <prefix>_iter_<N>.caffemodel, the .solverstate and its side file (with
        ``snapshot_format: HDF5``: .caffemodel.h5 and .solverstate.h5, as Caffe).
        Returns the solverstate path."""
        self._settle_checks()  # nothing is saved from an iteration that met an error
        if self._in_update:
            raise SolverError("cannot snapshot in the middle of an update")
        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        suffix, kind = (".h5", "HDF5 file") if hdf5 else ("", "binary proto file")
        model = self.snapshot_filename(".caffemodel" + suffix)
        state_path = self.snapshot_filename(".solverstate" + suffix)
        extra = self._extra_state()
        if self.parallel and self.parallel.size > 1:
            # Every rank's own data positions, shuffles and RNGs, so that each resumes
            # its own sequence; rank 0 alone writes the files (Caffe's root solver).
            everyone = self.parallel.gather({k: extra[k] for k in _RANK_STATE_KEYS})
            extra["solver_count"] = self.parallel.size
            extra["rank_states"] = everyone[1:]
            if not self._root:
                self.last_snapshot = (self.iter, state_path)
                return state_path
        log.info("Snapshotting to %s %s", kind, model)
        written = snap.write_model(model, self.net, write_diff=self.param.snapshot_diff)
        log.info("Snapshotting solver state to %s %s", kind, state_path)
        # The solverstate goes last: its presence marks the set complete (see
        # snapshot.latest_snapshot), and the side file records which caffemodel it pairs.
        extra["caffemodel"] = written
        snap.write_extra(state_path, extra)
        snap.write_state(state_path, self.iter, model, self.current_step, self.history)
        self.last_snapshot = (self.iter, state_path)
        return state_path

    def _layer_states(self):
        nets = [self.net] + list(self.test_nets)
        return ([n.get_layer_states() for n in nets], [_rng_states(n) for n in nets])

    def _begin_iteration_states(self):
        """Record the layer states as the iteration starts: get_state() dicts (new dicts
        of values the layers replace, never change in place, so no copy is needed),
        and the RNG states through the nets' journals (read only for the Generators
        used), or eagerly for nets without one."""
        nets = [self.net] + list(self.test_nets)
        rngs = []
        for net in nets:
            journal = getattr(net, "rng_journal", None)
            if journal is not None:
                journal.start()
            rngs.append(None if journal is not None else _rng_states(net))
        self._start_states = ([n.get_layer_states() for n in nets], rngs)

    def _end_iteration_states(self):
        self._start_states = None
        for net in [self.net] + list(self.test_nets):
            journal = getattr(net, "rng_journal", None)
            if journal is not None:
                journal.stop()

    def _states_at_start(self):
        layers, rngs = self._start_states
        nets = [self.net] + list(self.test_nets)
        out = []
        for net, states in zip(nets, rngs):
            if states is None:  # journaled: now, except what was used since the start
                before = dict(net.rng_journal.before or {})
                states = _rng_states(net)
                states.update((k, v) for k, v in before.items() if k in states)
            out.append(states)
        return layers, out

    def _extra_state(self):
        layers, rngs = self._states_at_start() if self._start_states else self._layer_states()
        return {"iter": self.iter, "type": self.type,
                "train_net_layer_states": layers[0], "test_net_layer_states": layers[1:],
                "train_net_rng_states": rngs[0], "test_net_rng_states": rngs[1:]}

    @property
    def consistent(self):
        """False only while an update is half applied (then a snapshot would be wrong)."""
        return not self._in_update

    def restore(self, path):
        """Resume from a .solverstate (ours or Caffe's): iteration, current_step, the
        history, the weights of ``learned_net`` and our side file when present."""
        path = os.fspath(path)
        state = snap.read_state(path)
        params = self.net.learnable_params
        history = snap.history_arrays(state, path, [p.data.shape for p in params],
                                      self.rule.history_sets, self.type, self.dtype)
        extra = _states_for_this_rank(snap.read_extra(path, state.iter), path)
        snap.check_extra(extra, path, [self.net] + list(self.test_nets))
        if state.learned_net:
            model = snap.resolve_learned_net(path, state.learned_net)
            snap.check_model(model, extra, path)
            self.net.copy_from(model)
        self.iter = state.iter
        self.current_step = state.current_step
        for i, values in enumerate(history):
            xp = backend.array_module(params[i % len(params)].data)
            self.history[i] = xp.asarray(values)
        if extra is not None:
            self.net.set_layer_states(extra.get("train_net_layer_states", {}))
            for net, states in zip(self.test_nets, extra.get("test_net_layer_states", [])):
                net.set_layer_states(states)
            _set_rng_states(self.net, extra.get("train_net_rng_states", {}))
            for net, states in zip(self.test_nets, extra.get("test_net_rng_states", [])):
                _set_rng_states(net, states)
        log.info("%s: restored iteration %d from %s", self.type, self.iter, path)


_RANK_STATE_KEYS = ("train_net_layer_states", "train_net_rng_states")


def _states_for_this_rank(extra, path):
    """The side file as this rank restores it: a rank the snapshot's job had takes its
    own train-net states; any other starts from rank 0's data positions with its own
    seeds. A job of another rank count is warned about: its data order differs."""
    if extra is None:
        return None
    saved = extra.get("solver_count", 1)
    ranks = extra.get("rank_states", [])
    if isinstance(saved, bool) or not isinstance(saved, int) or saved < 1 \
            or not isinstance(ranks, list) or len(ranks) != saved - 1 \
            or not all(isinstance(r, dict) for r in ranks):
        raise SolverError("%s: corrupt side file (solver_count %r with %s rank_states)"
                          % (snap.extra_path(path), saved,
                             len(ranks) if isinstance(ranks, list) else repr(ranks)))
    rank, count = world.rank(), world.size()
    if saved != count and rank == 0:
        log.warning("%s was written by a job of %d rank(s) and is resumed by %d: the weights, "
                    "solver history and iteration carry over, but the data each rank reads "
                    "from here on differs from the original job's (records are dealt out "
                    "by rank count)", path, saved, count)
    if 0 < rank < saved:
        extra = dict(extra)
        for key in _RANK_STATE_KEYS:
            extra[key] = ranks[rank - 1].get(key, {})
    elif rank >= saved:
        extra = dict(extra, train_net_rng_states={})  # keep this rank's own seeds
    return extra


def _rng_states(net):
    """{layer name: its numpy Generator's state} for the layers of ``net`` that have one
    (dropout masks, random data, the triplet draw): Caffe keeps no such state, so a
    resumed run needs ours to continue the same random sequence."""
    states = {}
    for i, layer in enumerate(getattr(net, "layers", [])):
        rng = getattr(layer, "rng", None)
        bit_generator = getattr(rng, "bit_generator", None)
        if bit_generator is not None:
            states[getattr(layer, "name", str(i))] = bit_generator.state
    return states


def _set_rng_states(net, states):
    for i, layer in enumerate(getattr(net, "layers", [])):
        state = states.get(getattr(layer, "name", str(i)))
        rng = getattr(layer, "rng", None)
        if state is not None and getattr(rng, "bit_generator", None) is not None:
            rng.bit_generator.state = state


def _values(array):
    """The values of a blob array as a flat float64 numpy array (from CPU or GPU)."""
    return np.asarray(backend.to_numpy(array), dtype=np.float64).ravel()
