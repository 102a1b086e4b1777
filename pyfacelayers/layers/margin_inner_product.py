"""MarginInnerProduct: SphereFace's A-Softmax inner product (and the Angular-Triplet fork).

The three products with the weight (X.W^T forward; top_diff.W and top_diff^T.X
backward) go to numpy's BLAS; the C++ kernels in ``pyfacelayers._C`` do the O(M*K)
rest: the row norms, the label-column margin of the output and the label-column
correction of the feature gradient. Apart from the output, nothing of size M x N is
allocated. Exact semantics: ``shared/reference/margin-layers.md``.
"""

import numpy as np

from ..backend import array_module
from ..blob import Blob
from ..proto import caffe_pb2
from ._products import add_product, multiply
from .base import Layer, register

_P = caffe_pb2.MarginInnerProductParameter
_TYPE_NAMES = {"SINGLE": _P.SINGLE, "DOUBLE": _P.DOUBLE, "TRIPLE": _P.TRIPLE,
               "QUADRUPLE": _P.QUADRUPLE}
_GRADIENTS = ("normalized", "exact")


def _kernels(xp):
    """The module holding the margin kernels for arrays of ``xp`` (numpy: ``_C``)."""
    if xp is np:
        from .. import _C
        return _C
    from ..gpu import margin  # the CUDA twins, same signatures, cupy arrays (gpu helper)
    return margin


@register
class MarginInnerProduct(Layer):
    """SphereFace's ``MarginInnerProduct`` layer (A-Softmax), numerically as the original.

    Bottoms: features (any shape; ``axis`` splits it into M rows of K values) and labels
    (M values, floats holding integers in [0, N)). Tops: the (M, N) output and, when a
    second top is given, lambda, shape (1,). Blob 0: the weight, (N, K), no bias.

    Build it from a LayerParameter (``margin_inner_product_param``) or with
    :meth:`from_args`, e.g.
    ``MarginInnerProduct.from_args(num_output=10, type="QUADRUPLE", base=1000, gamma=0.12,
    power=1, lambda_min=5)``, then ``setup(bottom, top)`` as every layer.

    Behaviour, as the original Caffe layer unless said otherwise:

    * Forward normalises every weight row IN PLACE (the stored weights change), then
      top = X.W^T except the label column: (|x| psi(cos) + lambda x.w_y) / (1 + lambda)
      (SINGLE: unchanged). At the START of every forward the counter advances,
      ``iteration += 1``, and lambda = max(base (1 + gamma iteration)^-power, lambda_min),
      in the layer's dtype from the float32 values of the proto. The counter is layer
      state: :meth:`get_state` / :meth:`set_state` (the solver snapshots it).
    * Backward: the weight gradient is the PLAIN inner-product gradient top_diff^T.X,
      ACCUMULATED into the weight diff. The feature gradient OVERWRITES bottom diff. With
      ``gradient="normalized"`` (default, parity) the label column uses the original's
      normalised coefficients (cw, cx) / |(cw, cx)|, which is not the derivative of the
      forward; ``gradient="exact"`` uses (cw, cx) themselves, the exact derivative of the
      output with respect to the features (the weights held fixed). Labels get no gradient.
    * A zero feature row (|x| = 0): as Caffe, cos = 0 * inf = NaN, so that row's label
      column of the output is NaN and (every type but SINGLE) its feature gradient row is
      NaN; the other columns and the weight gradient stay finite. NaN or inf in the
      features or weights propagate the same way (no error is raised for them).
    * Errors (LayerError naming the layer): labels not integers in [0, N) (names the
      index), label count != M, feature size K != the weight's, a weight row of zero
      norm (names the row; the weight is left unchanged), a dtype other than the layer's,
      non-contiguous arrays.

    Angular-Triplet fork (``semihard``, ``triplet``; GPU semantics of the fork):

    * ``semihard``: after the feature gradient, every row whose label is the argmax of
      the output (easy) is zeroed, and unless SINGLE every row whose label is not the
      argmax of the plain logits X.W^T (hard) is zeroed. Both scans start at value -2
      with index 0 and take a new best only on a strictly larger value (the fork's
      quirk: a row of values all <= -2 has argmax 0). The plain logits differ from the
      output only in the label column, so only that column's plain value is kept (M
      values), not an M x N copy.
    * ``triplet``: the weight is not learned by gradient. In backward (after the feature
      gradient), for every row in batch order, with probability 1/2 the label's weight
      row is overwritten with the raw feature (the next forward normalises it); when
      labels repeat the later row wins. Then the whole weight diff is set to 0. The
      draws are counter-based (splitmix64 of the seed and the draw index, the same on
      CPU and GPU); the seed is the ``seed`` argument or drawn from the layer's ``rng``,
      and seed and draw counter are part of :meth:`get_state`. With ``lr_mult: 0`` on
      the weight (a frozen weight), no replacement happens at all.
    """

    type = "MarginInnerProduct"
    exact_num_bottom = 2
    min_num_top = 1
    max_num_top = 2

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None,
                 gradient="normalized", seed=None):
        super().__init__(param, phase=phase, dtype=dtype, rng=rng)
        if gradient not in _GRADIENTS:
            raise self.error('gradient must be one of %s, got %r' % (_GRADIENTS, gradient))
        if self.dtype not in (np.float32, np.float64):
            raise self.error("dtype must be float32 or float64, got %s" % self.dtype)
        self.gradient = gradient
        p = self.param.margin_inner_product_param
        self.iteration = int(p.iteration)
        self.lambda_ = None
        self.triplet_seed = None if seed is None else int(seed) % (1 << 64)
        self.triplet_draws = 0
        # Whether the weight gets a diff (Caffe's param_propagate_down: the net sets it
        # from lr_mult and force_backward).
        self.param_propagate_down = [True]
        # A triplet layer whose weight has lr_mult 0 never replaces weight rows.
        self.weight_frozen = False
        self._saved = None  # per-row values of the last forward, for the backward

    @classmethod
    def from_args(cls, num_output, type="SINGLE", axis=1, base=1.0, gamma=0.0, power=1.0,
                  iteration=0, lambda_min=0.0, triplet=False, semihard=False,
                  weight_filler=None, name="margin_inner_product", phase=caffe_pb2.TRAIN,
                  dtype=np.float32, rng=None, gradient="normalized", seed=None):
        """Build the layer from keyword arguments (the fields of MarginInnerProductParameter).

        ``type`` is a name ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE") or the enum value;
        ``weight_filler`` a FillerParameter or a dict of its fields (None: Caffe's default,
        constant 0, which the first forward rejects unless the weight is set).
        """
        param = caffe_pb2.LayerParameter(name=name, type=cls.type)
        p = param.margin_inner_product_param
        p.num_output = int(num_output)
        if isinstance(type, str):
            if type.upper() not in _TYPE_NAMES:
                raise ValueError('MarginInnerProduct "%s": unknown margin type %r (expected %s)'
                                 % (name, type, ", ".join(_TYPE_NAMES)))
            type = _TYPE_NAMES[type.upper()]
        p.type = int(type)
        p.axis = int(axis)
        p.base, p.gamma, p.power, p.lambda_min = base, gamma, power, lambda_min
        p.iteration = int(iteration)
        p.triplet, p.semihard = bool(triplet), bool(semihard)
        if isinstance(weight_filler, dict):
            weight_filler = caffe_pb2.FillerParameter(**weight_filler)
        if weight_filler is not None:
            p.weight_filler.CopyFrom(weight_filler)
        return cls(param, phase=phase, dtype=dtype, rng=rng, gradient=gradient, seed=seed)

    # -- parameters ----------------------------------------------------------------
    @property
    def margin_type(self):
        return int(self.param.margin_inner_product_param.type)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1  # labels

    def layer_setup(self, bottom, top):
        p = self.param.margin_inner_product_param
        if p.num_output <= 0:
            raise self.error("num_output must be > 0, got %d" % p.num_output)
        if self.margin_type not in _TYPE_NAMES.values():
            raise self.error("unknown margin type %d" % self.margin_type)
        try:
            self.axis = bottom[0].canonical_axis(p.axis)
        except ValueError as exc:
            raise self.error(str(exc)) from None
        n, k = int(p.num_output), bottom[0].count_from(self.axis)
        if self.blobs:  # weights given before setup (e.g. copied from a model)
            if tuple(self.blobs[0].shape) != (n, k):
                raise self.error("weight blob has shape %s, expected (%d, %d)"
                                 % (self.blobs[0].shape, n, k))
        else:
            weight = Blob((n, k), dtype=self.dtype, label="param 0 (weight)")
            if p.HasField("weight_filler"):
                from ..fillers import fill  # lazy: fillers is its own module
                # The setter moves host values to the device (cupy refuses [...] = numpy).
                try:
                    weight.data = fill(p.weight_filler, (n, k), self.dtype, self.rng)
                except ValueError as exc:
                    raise self.error("weight_filler: %s" % exc) from None
            # else: Caffe's default filler, constant 0 (a forward rejects zero rows).
            self.blobs = [weight]
        if p.triplet and self.triplet_seed is None:
            self.triplet_seed = int(self.rng.integers(0, 1 << 63))
        if p.triplet and len(self.param.param) and self.param.param[0].lr_mult == 0:
            # A frozen weight stays frozen: no triplet replacement (the fork would
            # overwrite it regardless of lr_mult), and its diff stays untouched, even
            # under force_backward.
            self.weight_frozen = True
            self.param_propagate_down = [False]

    def reshape(self, bottom, top):
        m, n, k = self._dims(bottom)
        top[0].reshape(tuple(bottom[0].shape[:self.axis]) + (n,))
        if len(top) > 1:
            top[1].reshape(1)

    def _dims(self, bottom):
        """(M, N, K) of the bottoms, checked against the weight."""
        n, k = self.blobs[0].shape
        shape = bottom[0].shape
        if len(shape) <= self.axis:
            raise self.error("features have shape %s, need more than %d axes"
                             % (shape, self.axis))
        m, kx = bottom[0].count_from(0, self.axis), bottom[0].count_from(self.axis)
        if kx != k:
            raise self.error("features have %d values per row (shape %s from axis %d), the "
                             "weight expects %d (weight shape %s)"
                             % (kx, shape, self.axis, k, self.blobs[0].shape))
        if bottom[1].count != m:
            raise self.error("labels have %d values (shape %s), expected one per row: %d "
                             "(features shape %s)" % (bottom[1].count, bottom[1].shape, m, shape))
        return m, n, k

    def _lambda(self):
        """max(base (1 + gamma iter)^-power, lambda_min) in the layer dtype."""
        p = self.param.margin_inner_product_param
        t = self.dtype.type
        base, gamma, power, lmin = (t(np.float32(v)) for v in
                                    (p.base, p.gamma, p.power, p.lambda_min))
        with np.errstate(all="ignore"):
            lam = base * (t(1) + gamma * t(self.iteration)) ** (-power)
        return lmin if lam < lmin else lam  # std::max keeps a NaN lambda, as Caffe

    # -- state -----------------------------------------------------------------------
    def get_state(self):
        """The layer's non-blob state (saved with solver snapshots)."""
        return {"iteration": int(self.iteration), "triplet_seed": self.triplet_seed,
                "triplet_draws": int(self.triplet_draws)}

    def set_state(self, state):
        """Restore :meth:`get_state`'s dict (missing keys keep their current value)."""
        unknown = set(state) - {"iteration", "triplet_seed", "triplet_draws"}
        if unknown:
            raise self.error("unknown state keys %s" % sorted(unknown))
        for key in state:
            value = state[key]
            if key == "triplet_seed" and value is None:
                self.triplet_seed = None
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise self.error("state %s must be an integer, got %r" % (key, value))
            if key != "iteration" and value < 0:
                raise self.error("state %s must be >= 0, got %d" % (key, value))
            if abs(value) >= 2 ** 63:  # the kernels take 64-bit counters
                raise self.error("state %s is out of range, got %d" % (key, value))
            setattr(self, key, int(value))

    # -- checked views ---------------------------------------------------------------
    def _matrix(self, array, rows, cols, what):
        """``array`` as an (rows, cols) view, after checking its dtype and layout."""
        if array.dtype != self.dtype:
            raise self.error("%s has dtype %s, expected %s (the layer's dtype)"
                             % (what, array.dtype, self.dtype))
        if not array.flags.c_contiguous:
            raise self.error("%s (shape %s) must be C-contiguous" % (what, array.shape))
        if array.size != rows * (1 if cols is None else cols):
            raise self.error("%s has shape %s, expected %s values (%s)"
                             % (what, array.shape, rows * (1 if cols is None else cols),
                                (rows,) if cols is None else (rows, cols)))
        return array.reshape(rows, cols) if cols is not None else array.reshape(rows)

    def _labels(self, bottom, m, n, check_on_gpu=True):
        labels = self._matrix(bottom[1].data, m, None, "labels (bottom[1])")
        xp = array_module(labels)
        if xp is not np:
            # GPU (gpu helper): one fused check in forward, none in backward (every CUDA
            # kernel skips a row whose label is out of range, so nothing is indexed out
            # of bounds); each check costs a device synchronisation.
            i = _kernels(xp).first_bad_label(labels, n) if check_on_gpu else -1
            if i >= 0:
                raise self.error("label %d is %r, expected an integer in [0, %d) (num_output)"
                                 % (i, float(labels[i]), n))
            return labels
        bad = ~((labels >= 0) & (labels < n) & (labels == xp.floor(labels)))
        if bool(bad.any()):
            i = int(xp.argmax(bad))
            raise self.error("label %d is %r, expected an integer in [0, %d) (num_output)"
                             % (i, float(labels[i]), n))
        return labels

    def _settle(self, pending, iteration):
        """Raise what the deferred GPU check of an earlier forward found (bad label or
        zero weight row), naming the iteration whose forward met it."""
        try:
            pending.raise_if_bad()
        except ValueError as exc:
            raise self.error("%s (found by the forward of iteration %d; the device check "
                             "is read one iteration later in training)"
                             % (exc, iteration)) from None

    def _kernel(self, fn, *args):
        try:
            return fn(*args)
        except (ValueError, TypeError) as exc:
            raise self.error(str(exc)) from None

    # -- forward / backward ------------------------------------------------------------
    def forward(self, bottom, top):
        m, n, k = self._dims(bottom)
        x = self._matrix(bottom[0].data, m, k, "features (bottom[0])")
        labels = self._labels(bottom, m, n, check_on_gpu=False)  # GPU: checked below
        weight = self._matrix(self.blobs[0].data, n, k, "weight")
        if tuple(top[0].shape) != tuple(bottom[0].shape[:self.axis]) + (n,):
            raise self.error("top[0] has shape %s, expected %s (call reshape first)"
                             % (top[0].shape, tuple(bottom[0].shape[:self.axis]) + (n,)))
        out = self._matrix(top[0].data, m, n, "top[0]")
        xp = array_module(x)
        kernels = _kernels(xp)

        if xp is np:
            self._kernel(kernels.margin_normalize_rows, weight)
        else:  # GPU: the label check shares the norms' kernels (gpu helper); in training
            # its verdict is read one iteration later, so the host never waits here
            self.settle_checks()
            pending = self._kernel(kernels.margin_normalize_rows, weight, labels,
                                   not self.defer_checks)
            if pending is not None:
                self.defer_check(lambda it=self.iteration + 1: self._settle(pending, it))
        self.iteration += 1
        lam = self.lambda_ = self._lambda()
        multiply(self, x, weight.T, out)
        rows = xp.empty((3, m), self.dtype)  # one allocation for the three per-row values
        saved = {"x_norm": rows[0], "cos_y": rows[1], "logit_y": rows[2]}
        self._kernel(kernels.margin_forward, out, x, labels, float(lam), self.margin_type,
                     saved["x_norm"], saved["cos_y"], saved["logit_y"])
        saved["lambda"] = lam
        self._saved = saved
        if len(top) > 1:
            top[1].data[...] = lam

    def backward(self, top, propagate_down, bottom):
        if self._saved is None:
            raise self.error("backward called before forward")
        p = self.param.margin_inner_product_param
        m, n, k = self._dims(bottom)
        x = self._matrix(bottom[0].data, m, k, "features (bottom[0])")
        labels = self._labels(bottom, m, n, check_on_gpu=False)
        weight = self._matrix(self.blobs[0].data, n, k, "weight")
        saved = self._saved
        if saved["x_norm"].shape[0] != m:
            raise self.error("batch size changed between forward (%d) and backward (%d)"
                             % (saved["x_norm"].shape[0], m))
        top_diff = self._matrix(top[0].diff, m, n, "top[0] diff")
        xp = array_module(x)
        kernels = _kernels(xp)

        if propagate_down[0]:
            bottom_diff = self._matrix(bottom[0].diff, m, k, "features diff (bottom[0])")
            multiply(self, top_diff, weight, bottom_diff)
            self._kernel(kernels.margin_backward, bottom_diff, top_diff, x, weight, labels,
                         saved["x_norm"], saved["cos_y"], float(saved["lambda"]),
                         self.margin_type, self.gradient == "normalized")
            if p.semihard:
                out = self._matrix(top[0].data, m, n, "top[0]")
                self._kernel(kernels.margin_semihard_mask, bottom_diff, out,
                             saved["logit_y"], labels, self.margin_type)

        if self.param_propagate_down[0] and not self.weight_frozen:
            weight_diff = self._matrix(self.blobs[0].diff, n, k, "weight diff")
            if p.triplet:
                self._kernel(kernels.margin_triplet_replace, weight, x, labels,
                             self.triplet_seed, self.triplet_draws)
                self.triplet_draws += m
                weight_diff[...] = 0
            else:
                self._accumulate_weight_diff(xp, weight_diff, top_diff, x)

    def _accumulate_weight_diff(self, xp, weight_diff, top_diff, x):
        """weight_diff += top_diff^T . X without an N x K temporary."""
        if xp is not np:  # cuBLAS adds into the diff (beta = 1): no temporary (gpu helper)
            _kernels(xp).add_weight_grad(weight_diff, top_diff, x)
            return
        add_product(self, weight_diff, top_diff.T, x)
