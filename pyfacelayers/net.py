"""Net: Caffe's Net<Dtype> built from a NetParameter, with pycaffe's Python API.

Construction follows Caffe's Net::Init: filter layers by the NetState, insert Split
layers, create and set up each layer, wire in-place tops, share parameters named by
``param { name }``, and work out which layers and bottoms need a backward pass.
"""

import os
from collections import OrderedDict

import numpy as np

from . import backend, channels_last, limits
from .blob import Blob
from .errors import FormatError, NetError
from .fileio import blob_to_array, legacy_shape_matches, read_net
from .fileio.weights import read_weights
from .fileio.atomic import atomic_write
from .fileio.blobs import blob_chunks, fill_blob, message_chunks
from .fileio.hdf5_weights import is_hdf5_path, read_hdf5_weights, write_hdf5_weights
from .layers import create_layer
from .layers.python_layer import python_layers_allowed
from .net_graph import filter_net, insert_splits
from .proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
_random = {"seed": None}


def set_random_seed(seed):
    """Seed every net built afterwards (pycaffe's caffe.set_random_seed)."""
    _random["seed"] = int(seed)


def _layer_rngs(seed, count):
    sequence = np.random.SeedSequence(seed)
    return [np.random.default_rng(s) for s in sequence.spawn(count)]


class RngJournal:
    """While started, the state each layer's Generator had just before its first use.

    The solver starts it at every iteration, so that a snapshot after an interrupt
    inside an iteration records the states from the iteration's start. Reading every
    Generator's state eagerly costs a few microseconds per layer per iteration; this
    only reads the ones used (Dropout, data layers)."""

    def __init__(self):
        self.before = None

    def start(self):
        self.before = {}

    def stop(self):
        self.before = None


class JournaledRng:
    """A layer's numpy Generator that tells the journal before its first use (every
    attribute, methods and bit_generator alike, passes through to the Generator)."""

    __slots__ = ("generator", "_journal", "_key")

    def __init__(self, generator, journal, key):
        self.generator, self._journal, self._key = generator, journal, key

    def __getattr__(self, name):
        if name.startswith("__"):  # copy/pickle probing a bare instance
            raise AttributeError(name)
        before = self._journal.before
        if before is not None and self._key not in before:
            before[self._key] = self.generator.bit_generator.state
        return getattr(self.generator, name)


class Net:
    """A Caffe net.

    Accepts pycaffe's forms: ``Net(prototxt, phase)``, ``Net(prototxt, weights, phase)``,
    ``Net(prototxt, phase, weights=...)``, plus ``level``/``stages``; ``prototxt`` may
    also be a NetParameter. ``dtype`` (float32 or float64) picks Caffe's Dtype;
    ``seed`` seeds fillers and random layers (default: caffe.set_random_seed's value,
    else fresh entropy, as Caffe's random_seed -1). ``allow_python_layers``: build
    Caffe ``Python`` layers, which import and run the module the prototxt names
    (refused by default: loading a model file never runs code you did not ask for;
    None takes the process-wide setting, see :func:`pyfacelayers.allow_python_layers`).
    Blob sizes are checked against ``pyfacelayers.limits.memory_limit()`` before
    anything is allocated (ResourceLimitError).
    """

    def __init__(self, network, *args, weights=None, phase=None, level=0, stages=(),
                 dtype=np.float32, seed=None, allow_python_layers=None):
        args = list(args)
        if args and isinstance(args[0], (str, bytes)) or (args and hasattr(args[0], "__fspath__")):
            weights = args.pop(0)
        if args:
            phase = args.pop(0)
        if args:
            raise TypeError("Net(network, [weights,] phase): too many positional arguments")
        if phase is None:
            raise TypeError("Net needs a phase (caffe.TRAIN or caffe.TEST)")
        if isinstance(network, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(network)
        else:
            param = read_net(network)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError("Net dtype must be float32 or float64, got %s" % self.dtype)
        self.phase = phase
        state = caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))
        if param.HasField("state"):
            # Caffe merges the prototxt's state with the caller's (the caller wins).
            merged = caffe_pb2.NetState()
            merged.CopyFrom(param.state)
            merged.MergeFrom(state)
            merged.phase, merged.level = phase, level
            state = merged
        self.name = param.name
        self._param = insert_splits(filter_net(param, state))
        if seed is None:
            seed = _random["seed"]
        self.allow_python_layers = python_layers_allowed(allow_python_layers)
        # pycaffe's per-layer callbacks (before_forward, ...), each called with the layer
        # index; empty lists cost one truth test per layer.
        self._hooks = {"before_forward": [], "after_forward": [],
                       "before_backward": [], "after_backward": []}
        # Every blob of this net counts against one memory budget (pyfacelayers.limits).
        self._ledger = limits.Ledger()
        with limits.tracking(self._ledger):
            self._build(seed)
        self._ledger.layer = None
        if weights is not None:
            self.copy_from(weights)

    # -- construction -------------------------------------------------------------
    def _build(self, seed):
        layer_params = list(self._param.layer)
        self.rng_journal = RngJournal()
        rngs = [JournaledRng(g, self.rng_journal, lp.name)
                for g, lp in zip(_layer_rngs(seed, len(layer_params)), layer_params)]
        self.layers, self._layer_names = [], []
        self.blobs = OrderedDict()
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self._bottoms, self._tops = [], []
        self.inputs = []
        self._loss_weights = []  # per layer: list of (top index, weight)
        self.blob_loss_weights = OrderedDict()
        owners = {}  # shared param name -> (layer index, blob index)
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self.param_display_names = []
        self._explicit_mults = []  # per learnable param: whether lr/decay_mult were given
        self._param_need_backward = []
        blob_need_backward = {}
        self._layer_need_backward, self._bottom_need_backward = [], []
        available = []

        for i, lp in enumerate(layer_params):
            self._ledger.layer = (lp.name, lp.type)
            layer = create_layer(lp, phase=self.phase, dtype=self.dtype, rng=rngs[i],
                                 allow_python=self.allow_python_layers)
            bottoms, need_backward, bottom_need = [], False, []
            for j, name in enumerate(lp.bottom):
                if name not in self.blobs or name not in available:
                    raise NetError('layer "%s" (%s): unknown bottom blob "%s" (bottom %d)'
                                   % (lp.name, lp.type, name, j))
                bottoms.append(self.blobs[name])
                need_backward |= blob_need_backward[name]
                need = blob_need_backward[name]
                if len(lp.propagate_down):
                    if len(lp.propagate_down) != len(lp.bottom):
                        raise NetError('layer "%s": propagate_down has %d entries for %d '
                                       'bottoms' % (lp.name, len(lp.propagate_down),
                                                    len(lp.bottom)))
                    need = lp.propagate_down[j]
                bottom_need.append(need)
            tops = []
            for j, name in enumerate(lp.top):
                in_place = j < len(lp.bottom) and lp.bottom[j] == name
                if in_place:
                    tops.append(self.blobs[name])
                    continue
                if name in self.blobs:
                    raise NetError('layer "%s" (%s): top blob "%s" is already produced by an '
                                   'earlier layer (only in-place tops may repeat a name)'
                                   % (lp.name, lp.type, name))
                self.blobs[name] = Blob((), dtype=self.dtype, name=name)
                tops.append(self.blobs[name])
                available.append(name)
            for name in lp.bottom:
                if name in available and name not in lp.top:
                    available.remove(name)
            if lp.type == "Input":
                self.inputs.extend(lp.top)
            in_place_shapes = [(j, b.shape) for j, b in enumerate(bottoms)
                               if j < len(tops) and tops[j] is b]
            # The param specs as written: a layer's setup may add its own (BatchNorm
            # pins its statistics to lr_mult 0), but Caffe's Net::Init reads the net's.
            declared_lr = [spec.lr_mult for spec in lp.param]
            layer.setup(bottoms, tops)
            for j, shape in in_place_shapes:
                # The top is the bottom's blob: a layer that reshapes it (InnerProduct
                # "fc" -> "fc") would read its input in the wrong shape.
                if tops[j].shape != shape:
                    raise NetError('layer "%s" (%s) computes in place on blob "%s" but '
                                   'changes its shape from %s to %s; give the top another '
                                   'name' % (lp.name, lp.type, lp.top[j], shape,
                                             tops[j].shape))
            if len(declared_lr) > len(layer.blobs):
                raise NetError('layer "%s" (%s): %d param specs for %d parameter blob(s) '
                               '(too many params specified)'
                               % (lp.name, lp.type, len(declared_lr), len(layer.blobs)))
            self._share_params(i, layer, lp, owners)
            # Caffe's param_propagate_down: a parameter gets a diff only when its
            # lr_mult is not 0 (no param spec means lr_mult 1); force_backward turns
            # every one on below. A learned parameter makes the layer need backward.
            param_need = [(declared_lr[k] if k < len(declared_lr) else 1.0) != 0
                          for k in range(len(layer.blobs))]
            need_backward |= any(param_need)
            self._param_need_backward.append(param_need)
            layer.param_propagate_down = list(param_need)
            # Loss weights (Caffe's SetLossWeights): explicit, else 1 on a loss layer's top 0.
            weights = []
            for j, name in enumerate(lp.top):
                if j < len(lp.loss_weight):
                    w = lp.loss_weight[j]
                else:
                    w = 1.0 if (j == 0 and layer.is_loss) else 0.0
                if w:
                    weights.append((j, w))
                    self.blob_loss_weights[name] = w
                else:
                    self.blob_loss_weights.setdefault(name, 0.0)
            self._loss_weights.append(weights)
            for name in lp.top:
                blob_need_backward[name] = need_backward
            self.layers.append(layer)
            self._layer_names.append(lp.name)
            self.bottom_names[lp.name] = list(lp.bottom)
            self.top_names[lp.name] = list(lp.top)
            self._bottoms.append(bottoms)
            self._tops.append(tops)
            self._layer_need_backward.append(need_backward)
            self._bottom_need_backward.append(bottom_need)

        self._prune_backward(layer_params)
        if self._param.force_backward:
            for i, layer in enumerate(self.layers):
                self._layer_need_backward[i] = True
                self._bottom_need_backward[i] = [
                    need or layer.allow_force_backward(j)
                    for j, need in enumerate(self._bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)
        self.outputs = sorted(available)  # Caffe keeps them in a std::set
        self._mark_fixed_weights()
        self._fusions = self._plan_fusions()
        channels_last.plan(self)
        self.params = OrderedDict(
            (name, layer.blobs) for name, layer in zip(self._layer_names, self.layers)
            if layer.blobs)

    def _share_params(self, i, layer, lp, owners):
        for k, blob in enumerate(layer.blobs):
            spec = lp.param[k] if k < len(lp.param) else caffe_pb2.ParamSpec()
            shared = spec.name and spec.name in owners
            if shared:
                owner_layer, owner_k = owners[spec.name]
                owner = self.layers[owner_layer].blobs[owner_k] if owner_layer < len(
                    self.layers) else None
                if owner.shape != blob.shape and not (
                        spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
                        and owner.count == blob.count):
                    raise NetError('layer "%s": shared parameter "%s" has shape %s here but '
                                   '%s in its owner' % (lp.name, spec.name, blob.shape,
                                                        owner.shape))
                self._forget(blob)
                layer.blobs[k] = owner
                self._merge_shared_mults(lp.name, spec, owner)
                continue
            if spec.name:
                owners[spec.name] = (i, k)
            self.learnable_params.append(blob)
            self._explicit_mults.append({"lr_mult": spec.HasField("lr_mult"),
                                         "decay_mult": spec.HasField("decay_mult")})
            self.params_lr.append(spec.lr_mult)
            self.params_weight_decay.append(spec.decay_mult)
            self.param_display_names.append(spec.name or "%s__%d" % (lp.name, k))

    def _merge_shared_mults(self, layer_name, spec, owner):
        """Caffe's AppendParam for a shared parameter: an lr_mult or decay_mult given
        here applies to the shared blob when its owner left it unset, and must agree
        with the owner's when both give one."""
        index = next(n for n, b in enumerate(self.learnable_params) if b is owner)
        explicit = self._explicit_mults[index]
        for field, values in (("lr_mult", self.params_lr),
                              ("decay_mult", self.params_weight_decay)):
            if not spec.HasField(field):
                continue
            value = getattr(spec, field)
            if not explicit[field]:
                explicit[field] = True
                values[index] = value
            elif value != values[index]:
                raise NetError('layer "%s": shared parameter "%s" has mismatched %s '
                               '(%g here, %g in its owner)'
                               % (layer_name, spec.name, field, value, values[index]))

    def _prune_backward(self, layer_params):
        """Caffe's backward pruning: skip layers that do not contribute to a loss."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            lp = layer_params[i]
            contributes = False
            skip_down = True
            loss_tops = {j for j, _ in self._loss_weights[i]}
            for j, name in enumerate(lp.top):
                if j in loss_tops or name in under_loss:
                    contributes = True
                if name not in skip:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self._layer_need_backward[i] and skip_down:
                self._layer_need_backward[i] = False
                self._bottom_need_backward[i] = [False] * len(lp.bottom)
            if not contributes:
                self._layer_need_backward[i] = False
            for j, name in enumerate(lp.bottom):
                if contributes:
                    under_loss.add(name)
                else:
                    self._bottom_need_backward[i][j] = False
                if not self._bottom_need_backward[i][j]:
                    skip.add(name)

    def _mark_fixed_weights(self):
        """Convolutions that never run backward here may let their engine keep a copy
        of the weights in its own layout (Blob.data_version says when it is stale)."""
        for i, layer in enumerate(self.layers):
            if layer.type == "Convolution" and not self._layer_need_backward[i]:
                layer.weights_fixed = True

    def _plan_fusions(self):
        """{convolution index: activation index} for the activations a CPU engine may
        apply inside the convolution before it (oneDNN's post-ops): a ReLU or PReLU
        right after a Convolution, in place on its only top, where neither layer ever
        runs backward (a TEST net, or layers no loss reaches). Caffe's results are the
        same: the blob holds the activated values after that layer either way."""
        fusions = {}
        for i in range(len(self.layers) - 1):
            conv, act = self.layers[i], self.layers[i + 1]
            if conv.type != "Convolution" or act.type not in ("ReLU", "PReLU"):
                continue
            if len(self._tops[i]) != 1 or self._bottoms[i + 1] != self._tops[i] \
                    or self._tops[i + 1] != self._tops[i]:
                continue
            if self._layer_need_backward[i] or self._layer_need_backward[i + 1]:
                continue
            fusions[i] = i + 1
            conv.fusable_activation = act
        return fusions

    # -- running ------------------------------------------------------------------
    def _index(self, name, default):
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError('no layer named "%s"' % name) from None

    def forward_from_to(self, start=0, end=None):
        """Run layers start..end (inclusive); returns the weighted loss."""
        return float(self._forward_range(start, end))

    def _forward_range(self, start=0, end=None):
        """forward_from_to, with the loss left where it was computed: a float on the
        CPU, a 0-d device array on the GPU (reading it back would wait for the device;
        the solver reads losses only when it shows them)."""
        end = len(self.layers) - 1 if end is None else end
        loss = 0.0
        before, after = self._hooks["before_forward"], self._hooks["after_forward"]
        fused = False  # the previous layer applied this one (see _plan_fusions)
        for i in range(start, end + 1):
            for hook in before:
                hook(i)
            layer, bottom, top = self.layers[i], self._bottoms[i], self._tops[i]
            self._ledger.layer = (layer.name, layer.type)  # names it in a size refusal
            layer.reshape(bottom, top)
            if fused:
                fused = False
            else:
                if i in self._fusions:  # only when the activation runs in this pass too
                    layer.fuse_activation = i + 1 <= end
                layer.forward(bottom, top)
                fused = getattr(layer, "activation_fused", False)
            for j, weight in self._loss_weights[i]:
                top[j].diff[...] = weight
                total = top[j].data.sum()
                if top[j].xp is np:
                    loss += weight * float(total)
                else:  # summed in double, as float() does on the CPU
                    loss = loss + weight * total.astype(np.float64)
            for hook in after:
                hook(i)
        return loss

    def backward_from_to(self, start=None, end=0):
        start = len(self.layers) - 1 if start is None else start
        before, after = self._hooks["before_backward"], self._hooks["after_backward"]
        for i in range(start, end - 1, -1):
            for hook in before:  # Caffe calls the hooks for every layer, run or skipped
                hook(i)
            if self._layer_need_backward[i]:
                self.layers[i].backward(self._tops[i], self._bottom_need_backward[i],
                                        self._bottoms[i])
            for hook in after:
                hook(i)

    # pycaffe's Net callbacks: ``net.after_backward(fn)`` makes every later backward
    # call ``fn(i)`` after layer i (whether or not the layer needed backward).
    def before_forward(self, hook):
        self._add_hook("before_forward", hook)

    def after_forward(self, hook):
        self._add_hook("after_forward", hook)

    def before_backward(self, hook):
        self._add_hook("before_backward", hook)

    def after_backward(self, hook):
        self._add_hook("after_backward", hook)

    def _add_hook(self, when, hook):
        if not callable(hook):
            raise TypeError("Net.%s takes a callable (called with the layer index), got %s"
                            % (when, type(hook).__name__))
        self._hooks[when].append(hook)

    # pycaffe's private bindings (Net::ForwardFromTo / BackwardFromTo by layer index),
    # which scripts use to run one layer at a time.
    def _forward(self, start, end):
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        self.backward_from_to(start, end)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.forward: set inputs from kwargs, run, return the outputs
        (plus the blobs named in ``blobs``) as {name: array}."""
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise NetError('"%s" is not an input blob of this net (inputs: %s)'
                               % (name, ", ".join(self.inputs)))
            blob = self.blobs[name]
            value = np.asarray(value) if blob.xp is np else value
            if value.shape[:1] != blob.shape[:1]:
                raise NetError('input "%s": batch size %s differs from the blob\'s %s'
                               % (name, value.shape[:1], blob.shape[:1]))
            blob.data = value
        start_i = self._index(start, 0)
        end_i = self._index(end, len(self.layers) - 1)
        self.forward_from_to(start_i, end_i)
        names = list(self.outputs) if end is None else list(self.top_names[self._layer_names[end_i]])
        names += [b for b in (blobs or []) if b not in names]
        return {name: self.blobs[name].data for name in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's Net.backward: set output diffs from kwargs, run, return the input
        diffs (plus the blobs named in ``diffs``) as {name: array}."""
        for name, value in kwargs.items():
            if name not in self.outputs:
                raise NetError('"%s" is not an output blob of this net' % name)
            self.blobs[name].diff = value
        start_i = self._index(start, len(self.layers) - 1)
        end_i = self._index(end, 0)
        self.backward_from_to(start_i, end_i)
        names = list(self.inputs) if end is None else list(self.bottom_names[self._layer_names[end_i]])
        names += [d for d in (diffs or []) if d not in names]
        return {name: self.blobs[name].diff for name in names}

    def settle_checks(self):
        """Raise what the layers' pending device-side checks found (see
        Layer.defer_checks); waits for the device only if one is still running."""
        for layer in self.layers:
            layer.settle_checks()

    def forward_backward(self):
        """Caffe's ForwardBackward: returns the loss after a full forward and backward."""
        return float(self._forward_backward())

    def _forward_backward(self):
        """forward_backward with the loss left on the device (see _forward_range)."""
        loss = self._forward_range()
        self.backward_from_to()
        return loss

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's forward_all: run the input arrays through in batches of the net's
        batch size (the last one padded with zeros); the outputs (plus ``blobs``)
        concatenated, without the padding, as {name: array}."""
        names = list(self.outputs) + [b for b in (blobs or []) if b not in self.outputs]
        count, chunks = self._batches(kwargs, self.inputs, "input")
        results = {name: [] for name in names}
        for chunk in chunks:
            out = self.forward(blobs=blobs, **chunk)
            for name in names:
                results[name].append(backend.to_numpy(out[name]).copy())
        return _joined(results, count)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's forward_backward_all: input arrays (and output diffs, for outputs
        named in kwargs) in batches; returns ({output: array}, {input: diff array}), with
        ``blobs`` and ``diffs`` added, concatenated without the padding.

        pycaffe's version packs and trims only as many entries of each dict as the
        shorter one has (a zip), leaving the rest as lists; here every entry is an array.
        """
        out_names = list(self.outputs) + [b for b in (blobs or []) if b not in self.outputs]
        diff_names = list(self.inputs) + [d for d in (diffs or []) if d not in self.inputs]
        forward_in = {k: v for k, v in kwargs.items() if k in self.inputs}
        backward_in = {k: v for k, v in kwargs.items() if k not in self.inputs}
        count, chunks = self._batches(kwargs, self.inputs + self.outputs, "input or output")
        outs = {name: [] for name in out_names}
        grads = {name: [] for name in diff_names}
        for chunk in chunks:
            out = self.forward(blobs=blobs, **{k: chunk[k] for k in forward_in})
            grad = self.backward(diffs=diffs, **{k: chunk[k] for k in backward_in})
            for name in out_names:
                outs[name].append(backend.to_numpy(out[name]).copy())
            for name in diff_names:
                grads[name].append(backend.to_numpy(grad[name]).copy())
        return _joined(outs, count), _joined(grads, count)

    def _batches(self, arrays, allowed, what, batch=None):
        """(item count, chunks): ``arrays`` cut along axis 0 into ``batch`` (default:
        the net's batch size), the last chunk padded with zeros (pycaffe's _batch). No
        arrays: one chunk."""
        for name in arrays:
            if name not in allowed:
                raise NetError('"%s" is not an %s blob of this net (%s)'
                               % (name, what, ", ".join(allowed)))
        if batch is None:
            batch = self.blobs[self.inputs[0]].shape[0] if self.inputs else 1
        lengths = {name: len(value) for name, value in arrays.items()}
        if len(set(lengths.values())) > 1:
            raise NetError("the arrays have different lengths: %s" % lengths)
        count = next(iter(lengths.values())) if lengths else batch

        def chunks():
            for begin in range(0, max(count, 1), batch):
                chunk = {}
                for name, value in arrays.items():
                    part = np.asarray(value[begin:begin + batch])
                    if len(part) < batch:
                        pad = np.zeros((batch - len(part),) + part.shape[1:], part.dtype)
                        part = np.concatenate([part, pad])
                    chunk[name] = part
                yield chunk
        return count, chunks()

    def set_input_arrays(self, data, labels):
        """Feed arrays to the net's first layer, a MemoryData layer (pycaffe's API)."""
        if not self.layers or self.layers[0].type != "MemoryData":
            raise NetError("set_input_arrays needs a MemoryData layer as the first layer")
        self.layers[0].set_input_arrays(data, labels)

    # pycaffe's binding under set_input_arrays (labels (N, 1, 1, 1) there; both here).
    _set_input_arrays = set_input_arrays

    def reshape(self):
        for layer, bottom, top in zip(self.layers, self._bottoms, self._tops):
            self._ledger.layer = (layer.name, layer.type)
            layer.reshape(bottom, top)
        self._ledger.layer = None

    @property
    def memory_bytes(self):
        """Bytes the net's blobs hold (data and diff), as counted against
        pyfacelayers.limits.memory_limit()."""
        return self._ledger.total

    def clear_param_diffs(self):
        from . import _C  # (the package imports without its extension built)
        for blob in self.learnable_params:
            diff = blob.diff
            if isinstance(diff, np.ndarray) and diff.flags.c_contiguous:
                _C.fill_zeros(diff)  # on the element-wise threads (a training step's 92 MB)
            else:
                diff[...] = 0

    # -- weights ------------------------------------------------------------------
    def copy_from(self, source):
        """Copy weights by layer name from a caffemodel path or NetParameter (Caffe's
        CopyTrainedLayersFrom); layers absent from the source keep theirs."""
        path = None
        if not isinstance(source, caffe_pb2.NetParameter):
            path = str(source)
            if is_hdf5_path(path):  # Caffe picks the reader by the suffix too
                return self.load_hdf5(path)
            source = read_weights(path)  # name/type/blobs only: any fork's numbering
        by_name = dict(zip(self._layer_names, self.layers))
        for lp in source.layer:
            layer = by_name.get(lp.name)
            if layer is None:
                continue
            if len(lp.blobs) != len(layer.blobs):
                raise FormatError('layer "%s": the weights have %d blobs, the net\'s layer '
                                  'has %d' % (lp.name, len(lp.blobs), len(layer.blobs)), path)
            for k, (stored, blob) in enumerate(zip(lp.blobs, layer.blobs)):
                if not legacy_shape_matches(stored, blob.shape):
                    raise FormatError(
                        'cannot copy param %d of layer "%s": shape mismatch, the weights '
                        'have %s, the net has %s' % (k, lp.name, _stored_shape(stored),
                                                     blob.shape), path)
                try:
                    values = blob_to_array(stored).reshape(blob.shape)
                except ValueError as exc:
                    raise FormatError('layer "%s" param %d: %s' % (lp.name, k, exc),
                                      path) from None
                blob.data[...] = blob.xp.asarray(values, dtype=blob.dtype)

    def load_hdf5(self, path):
        """Copy weights by layer name from Caffe's HDF5 weights (pycaffe's load_hdf5,
        Caffe's CopyTrainedLayersFromHDF5): layers absent from the file keep theirs; a
        parameter the file lacks is an error unless the net shares it from another layer."""
        path = os.fspath(path)
        stored = read_hdf5_weights(path)
        owned = self._param_ownership()
        by_name = dict(zip(self._layer_names, self.layers))
        for name, params in stored.items():
            layer = by_name.get(name)
            if layer is None:
                continue
            if len(params) > len(layer.blobs) or any(k >= len(layer.blobs) for k in params):
                raise FormatError('layer "%s": the weights have params %s, the net\'s layer '
                                  'has %d' % (name, sorted(params), len(layer.blobs)), path)
            for k, blob in enumerate(layer.blobs):
                if k not in params:
                    if owned[name][k]:
                        raise FormatError('layer "%s": param %d is missing from the weights'
                                          % (name, k), path)
                    continue  # shared: its owner's values are copied
                if params[k].shape != blob.shape:
                    raise FormatError('cannot copy param %d of layer "%s": shape mismatch, '
                                      'the weights have %s, the net has %s'
                                      % (k, name, params[k].shape, blob.shape), path)
                blob.data[...] = blob.xp.asarray(params[k], dtype=blob.dtype)

    def save_hdf5(self, path, write_diff=False):
        """Write the weights as Caffe's HDF5 weights (pycaffe's save_hdf5), atomically.
        Returns (bytes written, their CRC-32)."""
        owned = self._param_ownership()
        layers = [(name, [(backend.to_numpy(blob.data),
                           backend.to_numpy(blob.diff) if write_diff else None, own)
                          for blob, own in zip(layer.blobs, owned[name])])
                  for name, layer in zip(self._layer_names, self.layers)]
        return write_hdf5_weights(path, layers, write_diff)

    def _param_ownership(self):
        """{layer name: [True where the layer owns param k, False where it shares an
        earlier layer's]}."""
        seen, owned = set(), {}
        for name, layer in zip(self._layer_names, self.layers):
            owned[name] = [id(blob) not in seen for blob in layer.blobs]
            seen.update(id(blob) for blob in layer.blobs)
        return owned

    def to_proto(self, write_diff=False):
        """The net and its weights as a NetParameter (Caffe's Net::ToProto)."""
        out = caffe_pb2.NetParameter()
        out.CopyFrom(self._param)
        for lp, layer in zip(out.layer, self.layers):
            lp.ClearField("blobs")
            for blob in layer.blobs:
                data = backend.to_numpy(blob.data)
                diff = backend.to_numpy(blob.diff) if write_diff else None
                fill_blob(lp.blobs.add(), data, diff)
        return out

    def save(self, path, write_diff=False):
        """Write the weights as a .caffemodel Caffe can read (atomically). Returns
        (bytes written, their CRC-32)."""
        return atomic_write(path, self.caffemodel_chunks(write_diff))

    def caffemodel_chunks(self, write_diff=False):
        """The serialized :meth:`to_proto` as bytes-like pieces (the weights' own
        memory, not copied through protobuf; the bytes are the same)."""
        out = caffe_pb2.NetParameter()
        out.CopyFrom(self._param)
        layers = []
        for lp, layer in zip(out.layer, self.layers):
            lp.ClearField("blobs")
            blobs = [blob_chunks(backend.to_numpy(blob.data),
                                 backend.to_numpy(blob.diff) if write_diff else None)
                     for blob in layer.blobs]
            layers.append(message_chunks(lp, "blobs", blobs) if blobs
                          else [lp.SerializeToString()])
        out.ClearField("layer")
        return message_chunks(out, "layer", layers)

    def share_with(self, other):
        """Use ``other``'s parameter blobs for layers of the same name (Caffe's
        ShareTrainedLayersWith; pycaffe's share_with)."""
        theirs = dict(zip(other._layer_names, other.layers))
        for name, layer in zip(self._layer_names, self.layers):
            source = theirs.get(name)
            if source is None or not layer.blobs:
                continue
            if len(source.blobs) != len(layer.blobs):
                raise NetError('layer "%s": cannot share %d blobs with %d'
                               % (name, len(source.blobs), len(layer.blobs)))
            for k, blob in enumerate(source.blobs):
                if blob.shape != layer.blobs[k].shape:
                    raise NetError('layer "%s": cannot share param %d of shape %s with %s'
                                   % (name, k, layer.blobs[k].shape, blob.shape))
                self._forget(layer.blobs[k])
                layer.blobs[k] = blob
        self.params = OrderedDict((n, l.blobs) for n, l in zip(self._layer_names, self.layers)
                                  if l.blobs)

    share_trained_layers_with = share_with

    def _forget(self, blob):
        """A blob of this net replaced by another's: its arrays no longer count."""
        if blob._ledger is self._ledger:
            self._ledger.total -= blob._held_data + blob._held_diff
            blob._held_data = blob._held_diff = 0

    # -- state Caffe has no field for (e.g. MarginInnerProduct's iteration) -------------
    def get_layer_states(self):
        return {name: layer.get_state() for name, layer in zip(self._layer_names, self.layers)
                if hasattr(layer, "get_state")}

    def set_layer_states(self, states):
        by_name = dict(zip(self._layer_names, self.layers))
        for name, state in states.items():
            if name in by_name and hasattr(by_name[name], "set_state"):
                by_name[name].set_state(state)

    # -- device -------------------------------------------------------------------
    def to_device(self, xp):
        """Move every blob (and parameter) to numpy or cupy, once."""
        for blob in self._all_blobs():
            blob.to(xp)

    def _all_blobs(self):
        seen = set()
        for blob in list(self.blobs.values()) + [b for l in self.layers for b in l.blobs]:
            if id(blob) not in seen:
                seen.add(id(blob))
                yield blob

    # -- pycaffe conveniences ------------------------------------------------------
    @property
    def layer_dict(self):
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def _blob_names(self):
        return list(self.blobs)

    # pycaffe's index-based bindings: blobs by id (the order of net.blobs), and per
    # layer the ids of its bottoms and tops.
    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _blob_loss_weights(self):
        return [self.blob_loss_weights.get(name, 0.0) for name in self.blobs]

    @property
    def _inputs(self):
        return [self._blob_id(name) for name in self.inputs]

    @property
    def _outputs(self):
        return [self._blob_id(name) for name in self.outputs]

    def _bottom_ids(self, i):
        return self._blob_ids(self._bottoms[i])

    def _top_ids(self, i):
        return self._blob_ids(self._tops[i])

    def _blob_id(self, name):
        return list(self.blobs).index(name)

    def _blob_ids(self, blobs):
        ids = {id(blob): k for k, blob in enumerate(self.blobs.values())}
        return [ids[id(blob)] for blob in blobs]

    def _batch(self, blobs):
        """pycaffe's Net._batch: {name: array} in batches of the first blob's first
        dimension, the last one padded with zeros."""
        _, chunks = self._batches(blobs, list(blobs), "", self._blobs[0].shape[0])
        return chunks

    def __repr__(self):
        return '<Net "%s": %d layers, %d blobs>' % (self.name, len(self.layers), len(self.blobs))


def _joined(results, count):
    """{name: list of per-batch arrays} -> {name: one array of ``count`` items}
    (0-d per-batch values, such as a loss, are stacked)."""
    return {name: np.concatenate(parts)[:count] if parts and parts[0].ndim
            else np.array(parts) for name, parts in results.items()}


def _stored_shape(blob):
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return "(%d, %d, %d, %d) (legacy num/channels/height/width)" % (
            blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)
