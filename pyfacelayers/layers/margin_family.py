"""The margin layers of the SphereFace descendants: AM-Softmax / CosFace
(LabelSpecificAdd, GlobalLSEMargin), ArcFace (CosinAddm, CombinedMargin,
AdaCosAddmScale) and happynear's experimental LabelSpecificRescale and
LabelSpecificMargin.

Each layer copies its logits to the top and changes only each row's label column: the
per-row math is in ``csrc/family_math.h``, run by the C++ kernels of ``pyfacelayers._C``
on numpy arrays and by their CUDA twins (``pyfacelayers.gpu.margin_family``) on cupy
arrays. Whole-matrix reductions (AdaCos's scale, GlobalLSEMargin's log-sum-exp) are
array expressions that numpy and cupy both run.

Where the fork's CPU and GPU code differ, the GPU code (which trained the published
models) is the default; ``semantics="cpu"`` (or ``PYFACELAYERS_FORK_SEMANTICS=cpu``,
read when the layer is set up: ``pyfacelayers.fork_semantics``) selects the CPU code,
which produced the golden fixtures. Exact semantics, quirks and
the differences: ``shared/reference/margin-family.md`` and ``docs/family.md``.
"""

import logging
import math

import numpy as np

from .. import fork_semantics
from ..backend import array_module
from ..blob import Blob
from ..proto import caffe_pb2
from .base import Layer, register

log = logging.getLogger("pyfacelayers")

# Operation codes of csrc/family_math.h (FamilyOp).
LABEL_ADD, COSIN_ADDM_CPU, COSIN_ADDM_GPU, COMBINED = 0, 1, 2, 3
LSM_HARD_CPU, LSM_HARD_GPU, LSM_SOFT_GPU, RESCALE = 4, 5, 6, 7
RESCALE_BIAS_FIX, RESCALE_POWER, RESCALE_FOR_IP = 1, 2, 4


def _f32(value):
    """A proto float field as the fork sees it (float32), as a Python float."""
    return float(np.float32(value))


def _kernels(xp):
    if xp is np:
        from .. import _C
        return _C
    from ..gpu import margin_family
    return margin_family


class _LabelColumnLayer(Layer):
    """Base of the layers that copy (N, C...) logits and change each row's label column.

    Bottoms: logits (N rows of C = count / N values) and labels (N values, floats
    holding integers; ``int(label)`` as the forks). Top 0 has bottom 0's shape (in place
    allowed unless a subclass says otherwise).
    """

    min_num_bottom = 2
    max_num_bottom = 2
    min_num_top = 1
    max_num_top = 1
    # Labels < 0 skip the row (CombinedMargin, AdaCos) instead of raising.
    skip_negative_labels = False

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None,
                 semantics=None):
        super().__init__(param, phase=phase, dtype=dtype, rng=rng)
        if self.dtype not in (np.float32, np.float64):
            raise self.error("dtype must be float32 or float64, got %s" % self.dtype)
        self.semantics = semantics  # None: the process setting, read at setup
        self._saved = None

    def setup(self, bottom, top):
        self.semantics = fork_semantics.for_layer(self)
        super().setup(bottom, top)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0  # labels (and scales given as bottoms) get no gradient

    def _check_finite(self, **values):
        for name, value in values.items():
            if not math.isfinite(value):
                raise self.error("%s must be finite, got %r" % (name, value))

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 1:
            raise self.error("logits must have at least one axis (rows), got shape %s"
                             % (shape,))
        rows = shape[0]
        if bottom[1].count != rows:
            raise self.error("labels have %d values (shape %s), expected one per row of the "
                             "logits %s: %d" % (bottom[1].count, bottom[1].shape, shape, rows))
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def _dims(self, bottom):
        rows = bottom[0].shape[0]
        return rows, (bottom[0].count // rows if rows else 0)

    def _labels(self, bottom, rows, cols):
        """The labels truncated toward 0 (the forks' ``int(label)``) as a (rows,) array of
        the layer's dtype, after checking them."""
        labels = bottom[1].data.reshape(rows)
        if labels.dtype != self.dtype:
            raise self.error("labels have dtype %s, expected %s" % (labels.dtype, self.dtype))
        xp = array_module(labels)
        as_int = xp.trunc(labels)
        low = -np.inf if self.skip_negative_labels else 0
        bad = ~((as_int >= low) & (as_int < cols))  # also NaN
        if bool(bad.any()):
            i = int(xp.argmax(bad))
            allowed = ("an integer below %d (negative labels skip the row)" % cols
                       if self.skip_negative_labels else "an integer in [0, %d)" % cols)
            raise self.error("label %d is %r, expected %s (the number of classes is the "
                             "logits' count per row)" % (i, float(labels[i]), allowed))
        return xp.ascontiguousarray(as_int)

    def _rows(self, array, rows, cols):
        if not array.flags.c_contiguous:
            raise self.error("arrays must be C-contiguous")
        return array.reshape(rows, cols)

    def _copy_forward(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].data[...] = bottom[0].data

    def _apply(self, bottom, top, op, params):
        """Run ``op`` on the label column of top (already holding the logits)."""
        rows, cols = self._dims(bottom)
        labels = self._labels(bottom, rows, cols)
        xp = array_module(labels)
        out = self._rows(top[0].data, rows, cols)
        saved = xp.empty(rows, dtype=self.dtype)
        flags = xp.empty(rows, dtype=np.int32)
        clamped = _kernels(xp).family_forward(out, labels, op, params, saved, flags)
        self._saved = (op, params, labels, saved, flags)
        if op == COSIN_ADDM_CPU:
            count = int(clamped if xp is np else clamped[0])
            if count:
                log.warning('%s "%s": %d label cosine(s) > 1 clamped to 1 (the CPU code logs '
                            'each)', self.type, self.name, count)

    def _apply_backward(self, top, bottom, scale=None):
        """bottom diff = top diff (times ``scale``), label column times the op's factor."""
        rows, cols = self._dims(bottom)
        diff = self._rows(bottom[0].diff, rows, cols)
        if top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
        if scale is not None:
            diff *= scale
        if self._saved is None:
            raise self.error("backward called before forward")
        op, params, labels, saved, flags = self._saved
        if saved.shape[0] != rows:
            raise self.error("batch size changed between forward (%d) and backward (%d)"
                             % (saved.shape[0], rows))
        xp = array_module(diff)
        _kernels(xp).family_backward(diff, labels, op, params, saved, flags)


@register
class LabelSpecificAdd(_LabelColumnLayer):
    """happynear's ``LabelSpecificAdd`` (AM-Softmax / CosFace): in TRAIN, the label
    column becomes ``c + bias`` where ``c > -bias`` (strict; ``bias = -m``).

    TEST is the identity (``transform_test`` has no effect, as in the fork). Annealing
    (``bias_base`` present): per TRAIN forward, ``bias = base + (1 + gamma it)^power - 1``
    clamped to [bias_min, bias_max], then ``it += 1``; the counter ``iteration`` is layer
    state saved with snapshots (the fork restarts it from the field). Optional top 1:
    the bias used. Backward: ``dx = dy``.
    """

    type = "LabelSpecificAdd"
    max_num_top = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.param.label_specific_add_param
        self.iteration = int(p.iteration)
        self.anneal = p.HasField("bias_base")
        self.bias = self.dtype.type(_f32(p.bias))
        self._check_finite(bias=p.bias, bias_base=p.bias_base, bias_gamma=p.bias_gamma,
                           bias_power=p.bias_power, bias_min=p.bias_min, bias_max=p.bias_max)
        if not self.anneal and abs(p.bias) >= 2:
            raise self.error("bias %g is outside (-2, 2): cosines lie in [-1, 1] (bias = -m, "
                             "m the additive margin)" % p.bias)
        if self.anneal and p.bias_min > p.bias_max:
            raise self.error("bias_min %g is above bias_max %g" % (p.bias_min, p.bias_max))

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if len(top) > 1:
            top[1].reshape((1,))

    def _annealed_bias(self):
        p = self.param.label_specific_add_param
        t = self.dtype.type
        step = t(1) + t(t(_f32(p.bias_gamma)) * t(self.iteration))
        # pow in double (the C library's), the sum in double, stored in the dtype.
        with np.errstate(all="ignore"):
            bias = t(_f32(p.bias_base) + float(step) ** _f32(p.bias_power) - 1.0)
        bias = max(bias, t(_f32(p.bias_min)))
        return min(bias, t(_f32(p.bias_max)))

    def forward(self, bottom, top):
        self._copy_forward(bottom, top)
        self._saved = None
        if self.phase != caffe_pb2.TRAIN:
            return  # identity; top[1] is not written (as the fork)
        if self.anneal:
            self.bias = self._annealed_bias()
            self.iteration += 1
        if len(top) > 1:
            top[1].data[...] = self.bias
        self._apply(bottom, top, LABEL_ADD, (float(self.bias), 0, 0, 0, 0, 0))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff

    def get_state(self):
        return {"iteration": int(self.iteration)}

    def set_state(self, state):
        _set_counter(self, state)


def _set_counter(layer, state, key="iteration"):
    unknown = set(state) - {key}
    if unknown:
        raise layer.error("unknown state keys %s" % sorted(unknown))
    if key in state:
        value = state[key]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise layer.error("state %s must be an integer, got %r" % (key, value))
        if abs(value) >= 2 ** 63:
            raise layer.error("state %s is out of range, got %d" % (key, value))
        setattr(layer, key, int(value))


def _cosin_params(m, dtype):
    """(m, sin m, cos m, cos(pi - m), sin(pi - m)): double math on the dtype's m."""
    m = float(dtype.type(m))
    return (m, math.sin(m), math.cos(m), math.cos(math.pi - m), math.sin(math.pi - m), 0)


@register
class CosinAddm(_LabelColumnLayer):
    """xialuxi's ``CosinAddm`` (ArcFace): the label cosine c becomes cos(theta + m), or
    ``c - m sin(m)`` where theta + m >= pi (insightface's fallback).

    GPU semantics (default): TEST is the identity; ``c >= 1`` is left unchanged and its
    gradient factor divides by zero (inf/NaN, as the fork); in place the backward adds
    no margin gradient. CPU semantics: every phase; ``c > 1`` is clamped to 1 (logged);
    the gradient factor is 1 where sqrt(1 - c^2) is 0.
    """

    type = "CosinAddm"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m = self.param.cosin_add_m_param.m
        if not (0 <= m < math.pi):
            raise self.error("m = %r is outside [0, pi): the additive angular margin is in "
                             "radians" % m)
        self.params = _cosin_params(_f32(m), self.dtype)

    def _active(self):
        return self.semantics == "cpu" or self.phase == caffe_pb2.TRAIN

    def forward(self, bottom, top):
        self._copy_forward(bottom, top)
        self._saved = None
        if self._active():
            op = COSIN_ADDM_CPU if self.semantics == "cpu" else COSIN_ADDM_GPU
            self._apply(bottom, top, op, self.params)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.semantics == "gpu" and (top[0] is bottom[0] or self._saved is None):
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return  # GPU in place: no margin gradient at all (the fork's quirk)
        if self._saved is None:  # CPU semantics always saved; a TEST GPU pass copies
            bottom[0].diff[...] = top[0].diff
            return
        self._apply_backward(top, bottom)


@register
class CombinedMargin(_LabelColumnLayer):
    """xialuxi's ``CombinedMargin`` (insightface's combined margin): the label logit x
    becomes ``cos(m1 acos(x) + m2) - m3`` in every phase (acos kept in float32, as the
    fork); rows with a negative label are copied. Defaults m1 = 4 (sic), m2 = 0.5,
    m3 = 0.35. No clamp: x outside [-1, 1] gives NaN, |x| = 1 an infinite gradient.
    """

    type = "CombinedMargin"
    skip_negative_labels = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.param.combined_margin_param
        self._check_finite(m1=p.m1, m2=p.m2, m3=p.m3)
        if not p.m1 > 0:
            raise self.error("m1 = %r must be > 0 (the angle multiplier)" % p.m1)
        if not (0 <= p.m2 < math.pi):
            raise self.error("m2 = %r is outside [0, pi) (the additive angular margin, "
                             "radians)" % p.m2)
        t = self.dtype.type
        self.params = (float(t(_f32(p.m1))), float(t(_f32(p.m2))), float(t(_f32(p.m3))), 0, 0, 0)

    def forward(self, bottom, top):
        self._copy_forward(bottom, top)
        self._apply(bottom, top, COMBINED, self.params)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._apply_backward(top, bottom)


@register
class AdaCosAddmScale(_LabelColumnLayer):
    """xialuxi's ``AdaCosAddmScale``: the CosinAddm margin, then the whole output times
    the adaptive scale s_d, re-estimated at every forward (every phase, as the fork):
    ``s_d = ln(sum_ij exp(s_old x_ij mask_ij) / N) / cos(min(theta_mean, pi/4))``
    (mask 0 at the label column, whose entries count exp(0) = 1).

    CPU semantics: theta_mean is the mean of float32(acos(x)) over all entries. GPU
    (default): the fork's kernel converts only the first N entries to angles and takes
    the mean absolute value of that half-converted buffer. s_d is layer state (saved
    with snapshots; the fork keeps it only in memory).
    """

    type = "AdaCosAddmScale"
    skip_negative_labels = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.param.adacos_add_m_scale_param
        if not (0 <= p.m < math.pi):
            raise self.error("m = %r is outside [0, pi) (radians)" % p.m)
        if not (math.isfinite(p.num_classes) and p.num_classes > 2):
            raise self.error("num_classes = %r must be > 2 (the initial scale is "
                             "sqrt(2) ln(num_classes - 1))" % p.num_classes)
        self.params = _cosin_params(_f32(p.m), self.dtype)
        self.s_d = self.dtype.type(math.sqrt(2.0) * math.log(_f32(p.num_classes) - 1.0))

    def forward(self, bottom, top):
        rows, cols = self._dims(bottom)
        xp = array_module(bottom[0].data)
        t = self.dtype.type
        x = bottom[0].data.reshape(rows, cols).copy()  # the cosines (top may be bottom)
        self._copy_forward(bottom, top)
        op = COSIN_ADDM_CPU if self.semantics == "cpu" else COSIN_ADDM_GPU
        self._apply(bottom, top, op, self.params)
        labels = self._saved[2]
        total = rows * cols
        if self.semantics == "cpu":
            theta_sum = xp.arccos(x).astype(np.float32).sum(dtype=self.dtype)
        else:  # only the first N entries become angles; asum of the whole buffer
            buf = x.reshape(-1).copy()
            buf[:rows] = xp.arccos(buf[:rows])
            theta_sum = xp.abs(buf).sum(dtype=self.dtype)
        theta_mean = float(theta_sum) / total if total else float("nan")
        cos_med = t(math.cos(min(t(theta_mean), t(math.pi / 4))))
        mask = xp.ones((rows, cols), dtype=self.dtype)
        keep = labels >= 0
        idx = xp.nonzero(keep)[0]
        mask[idx, labels[idx].astype(np.int64)] = 0
        b_avg = xp.exp(self.s_d * x * mask).sum(dtype=self.dtype) / t(rows)
        self.s_d = t(t(math.log(float(b_avg))) / cos_med) if float(b_avg) > 0 else t("nan")
        top[0].data[...] *= self.s_d
        self._scale = self.s_d

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._apply_backward(top, bottom, scale=self._scale)

    def get_state(self):
        return {"s_d": float(self.s_d)}

    def set_state(self, state):
        unknown = set(state) - {"s_d"}
        if unknown:
            raise self.error("unknown state keys %s" % sorted(unknown))
        if "s_d" in state:
            value = state["s_d"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error("state s_d must be a number, got %r" % (value,))
            self.s_d = self.dtype.type(value)


@register
class LabelSpecificMargin(_LabelColumnLayer):
    """happynear's ``LabelSpecificMargin`` (experiment branch): ``cos(theta + m)`` with the
    margin m in DEGREES, held in blob 0 (lr_mult forced to 0).

    Schedule (``margin_base`` present): ``m = base + (1 + gamma it)^power - 1``, then
    ``it += 1`` and ``m = min(m, margin_max)``; GPU (default): TRAIN only, CPU: every
    phase. TEST forward and backward are the identity. HARD, GPU: the cosine is clamped
    to [-1 + 1e-4, 1 - 1e-4] and the gradient factor to [0, 2]; CPU: no clamps, 1e-12
    under the root, cos/sin of the margin in single precision. SOFT (GPU only; the CPU
    code treats it as HARD): ``cos(m theta)``. Optional 3rd bottom (GPU): m =
    bottom[2][0]. Optional top 1: the margin.
    """

    type = "LabelSpecificMargin"
    max_num_bottom = 3
    max_num_top = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.param.label_specific_margin_param
        self._check_finite(margin_base=p.margin_base, margin_max=p.margin_max,
                           power=p.power, gamma=p.gamma)
        if p.auto_tune:
            raise self.error("auto_tune is not supported (the fork's own initialisation "
                             "overflows its 3-value blob)")
        self.iteration = int(p.iteration)

    def layer_setup(self, bottom, top):
        if len(bottom) == 3 and self.semantics == "cpu":
            raise self.error("a 3rd bottom (the margin) is read only by the GPU code; the "
                             "CPU semantics take 2 bottoms")
        p = self.param.label_specific_margin_param
        if not self.blobs:
            margin = Blob((1,), dtype=self.dtype, label="param 0 (margin)")
            margin.data[...] = self.dtype.type(_f32(p.margin_base))
            self.blobs = [margin]
        # The fork forces lr_mult 0 on the margin.
        while len(self.param.param) < 1:
            self.param.param.add()
        self.param.param[0].lr_mult = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if len(top) > 1:
            top[1].reshape((1,))

    def _update_margin(self, bottom):
        p = self.param.label_specific_margin_param
        t = self.dtype.type
        train = self.phase == caffe_pb2.TRAIN
        gpu = self.semantics == "gpu"
        m = self.blobs[0].data.reshape(-1)[:1]
        if p.HasField("margin_base") and (train or not gpu):
            with np.errstate(all="ignore"):
                value = t(_f32(p.margin_base) + (1.0 + _f32(p.gamma) * self.iteration)
                          ** _f32(p.power) - 1.0)
            self.iteration += 1
            m[...] = value
        if p.HasField("margin_max") and (train or not gpu):
            if float(m[0]) > _f32(p.margin_max):
                m[...] = t(_f32(p.margin_max))
        if gpu and len(bottom) == 3:
            m[...] = bottom[2].data.reshape(-1)[0]
        return float(m[0])

    def forward(self, bottom, top):
        m = self._update_margin(bottom)
        if len(top) > 1:
            top[1].data[...] = self.dtype.type(m)
        self._copy_forward(bottom, top)
        self._saved = None
        if self.phase != caffe_pb2.TRAIN:
            return
        p = self.param.label_specific_margin_param
        if self.semantics == "gpu" and p.type == caffe_pb2.LabelSpecificMarginParameter.SOFT:
            self._apply(bottom, top, LSM_SOFT_GPU, (m, 0, 0, 0, 0, 0))
            return
        r = m * math.pi / 180.0
        if self.semantics == "gpu":  # cos/sin on the host in double
            params = (0, math.sin(r), math.cos(r), 0, 0, 0)
            self._apply(bottom, top, LSM_HARD_GPU, params)
        else:  # cosf/sinf of the single-precision angle
            rf = float(np.float32(r))
            params = (0, float(np.float32(math.sin(rf))), float(np.float32(math.cos(rf))),
                      0, 0, 0)
            self._apply(bottom, top, LSM_HARD_CPU, params)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        p = self.param.label_specific_margin_param
        skip = self._saved is None or (self.semantics == "gpu" and p.pass_bp)
        if skip:
            if top[0] is not bottom[0]:
                bottom[0].diff[...] = top[0].diff
            return
        self._apply_backward(top, bottom)

    def get_state(self):
        return {"iteration": int(self.iteration)}

    def set_state(self, state):
        _set_counter(self, state)


@register
class LabelSpecificRescale(_LabelColumnLayer):
    """happynear's ``LabelSpecificRescale`` (NormFace figure 2; HN-x code): the label
    column times the positive weight pw (or ``sign(x)|x|^pw`` with ``power_on_positive``,
    ``+ 1 - pw`` with ``bias_fix``, only rows whose target is > 0 with ``for_ip``), the
    other columns times ``negative_weight``; the backward applies the same factors.
    TEST without ``rescale_test`` is the identity. Annealing (``positive_weight_base``
    present, TRAIN): ``it += 1`` first, then ``pw = base (1 + gamma it)^-power`` clamped
    by ``positive_weight_min`` / ``_max`` when present. Optional top 1 = pw (written in
    every phase). With the published (1, 1) the layer is the identity.
    """

    type = "LabelSpecificRescale"
    max_num_top = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.param.label_specific_rescale_param
        self._check_finite(positive_weight=p.positive_weight,
                           negative_weight=p.negative_weight,
                           positive_weight_base=p.positive_weight_base, gamma=p.gamma,
                           power=p.power)
        self.iteration = int(p.iteration)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        p = self.param.label_specific_rescale_param
        if p.power_on_positive and top[0] is bottom[0]:
            raise self.error("power_on_positive cannot run in place (the fork forbids it): "
                             "give the top another name")
        if len(top) > 1:
            top[1].reshape((1,))

    def _positive_weight(self):
        p = self.param.label_specific_rescale_param
        t = self.dtype.type
        if not (p.HasField("positive_weight_base") and self.phase == caffe_pb2.TRAIN):
            return t(_f32(p.positive_weight))
        self.iteration += 1
        with np.errstate(all="ignore"):
            pw = t(t(_f32(p.positive_weight_base)) * (t(1) + t(_f32(p.gamma)) * t(self.iteration))
                   ** t(-_f32(p.power)))
        if p.HasField("positive_weight_min") and pw < t(_f32(p.positive_weight_min)):
            pw = t(_f32(p.positive_weight_min))
        if p.HasField("positive_weight_max") and pw > t(_f32(p.positive_weight_max)):
            pw = t(_f32(p.positive_weight_max))
        return pw

    def _params(self, pw):
        p = self.param.label_specific_rescale_param
        flags = ((RESCALE_BIAS_FIX if p.bias_fix else 0) | (RESCALE_POWER if p.power_on_positive
                                                             else 0)
                 | (RESCALE_FOR_IP if p.for_ip else 0))
        return (float(pw), 0, 0, 0, 0, flags)

    def _active(self):
        p = self.param.label_specific_rescale_param
        return self.phase == caffe_pb2.TRAIN or p.rescale_test

    def forward(self, bottom, top):
        pw = self.pw = self._positive_weight()
        if len(top) > 1:
            top[1].data[...] = pw
        self._copy_forward(bottom, top)
        if not self._active():
            return
        rows, cols = self._dims(bottom)
        nw = _f32(self.param.label_specific_rescale_param.negative_weight)
        labels = self._labels(bottom, rows, cols)
        if pw != 1:
            self._apply(bottom, top, RESCALE, self._params(pw))
        if nw != 1:
            xp = array_module(labels)
            _kernels(xp).family_scale_others(self._rows(top[0].data, rows, cols), labels, nw)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
        if not self._active():
            return
        rows, cols = self._dims(bottom)
        labels = self._labels(bottom, rows, cols)
        xp = array_module(labels)
        diff = self._rows(bottom[0].diff, rows, cols)
        if self.pw != 1:
            # The fork's backward reads the bottom value (the top's, in place).
            values = self._rows(bottom[0].data, rows, cols)[xp.arange(rows),
                                                             labels.astype(np.int64)]
            saved = xp.ascontiguousarray(values)
            flags = xp.zeros(rows, dtype=np.int32)
            _kernels(xp).family_backward(diff, labels, RESCALE, self._params(self.pw), saved,
                                         flags)
        nw = _f32(self.param.label_specific_rescale_param.negative_weight)
        if nw != 1:
            _kernels(xp).family_scale_others(diff, labels, nw)

    def get_state(self):
        return {"iteration": int(self.iteration)}

    def set_state(self, state):
        _set_counter(self, state)


def mean_shift(d, mu, rounds, window=0.1, tol=0.001):
    """happynear's MeanShift of the target-minus-LSE gaps ``d`` (a host array) from
    ``mu``: up to ``rounds`` rounds, ``mu`` = the mean of the ``d`` within ``window``
    (strict); an empty window restarts from the mean of all ``d`` without using up a
    round; stop once ``mu`` moves by less than ``tol``.

    Returns (mu, hung). The original loops forever when not one gap lies within the
    window of the mean of all gaps; here that case stops and returns (nan, True).
    """
    t = d.dtype.type
    mu = t(mu)
    done = 0
    while done < rounds:
        inside = d[np.abs(d - mu) < t(window)]
        if inside.size == 0:
            mean = t(d.sum(dtype=d.dtype) / t(d.size))
            if mu == mean or not (mean == mean):
                return t("nan"), True  # the original's endless loop
            mu = mean
            continue
        new = t(inside.sum(dtype=d.dtype) / t(inside.size))
        moved = abs(new - mu)
        mu = new
        done += 1
        if moved < t(tol):
            break
    return mu, False


@register
class GlobalLSEMargin(_LabelColumnLayer):
    """happynear's ``GlobalLSEMargin`` (AM-Softmax with an automatic margin; GPU-only in
    the fork, whose CPU code aborts: the GPU semantics on every device).

    Blobs: s (learned scale, ``scale_param.filler``, default 30; clamped into
    [min_value, max_value] at every forward) and m (the margin, not learned). Per row the
    gap ``d = x[y] - LSE_{j != y}(s x_j) / s`` (shifted by the largest non-target value,
    at least -1); m follows a mean shift of the gaps (20 rounds from their mean while m
    is 0, then ``m = 0.9 m + 0.1 shift(d, m, 1 round)``). ``top = s (x - m [j == y])``
    (the margin only if m > 0); a 3rd bottom gives per-row scales instead of s. Optional
    top 1: (s, mean target, mean LSE, mean max non-target, m).

    Backward: ``dx = s dy``; s's diff is OVERWRITTEN (not accumulated) by
    ``sum(dy top) / s``, as the fork. Hazards bounded: a TEST forward computes its
    output with the updated m and clamped s but leaves the (shared) blobs unchanged
    (the fork writes them, changing training from the test net); the mean shift's
    endless loop stops and keeps m (warning).
    """

    type = "GlobalLSEMargin"
    max_num_bottom = 3
    max_num_top = 2

    def layer_setup(self, bottom, top):
        sp = self.param.scale_param
        # The fork always creates both blobs (a caffemodel's weights are copied later).
        s = Blob((1,), dtype=self.dtype, label="param 0 (scale)")
        if sp.HasField("filler"):
            from ..fillers import fill
            try:
                s.data = fill(sp.filler, (1,), self.dtype, self.rng)
            except ValueError as exc:
                raise self.error("scale_param.filler: %s" % exc) from None
        else:
            s.data[...] = 30
        m = Blob((1,), dtype=self.dtype, label="param 1 (margin)")
        m.data[...] = 0
        self.blobs = [s, m]
        specs = self.param.param
        if len(specs) == 0:
            spec = specs.add()
            spec.lr_mult = 0 if len(bottom) == 3 else 1
            spec.decay_mult = 0
        if len(specs) == 1:
            spec = specs.add()
            spec.lr_mult = 0
            spec.decay_mult = 0
        self.low = _f32(sp.min_value) if sp.HasField("min_value") else 0.0
        self.high = _f32(sp.max_value) if sp.HasField("max_value") else float(
            np.finfo(np.float32).max)
        if self.low > self.high:
            raise self.error("scale_param min_value %g is above max_value %g"
                             % (self.low, self.high))

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if len(bottom) == 3 and bottom[2].count != bottom[0].shape[0]:
            raise self.error("the per-row scales (bottom 2) have %d values, expected %d"
                             % (bottom[2].count, bottom[0].shape[0]))
        if len(top) > 1:
            top[1].reshape((5,))

    def forward(self, bottom, top):
        rows, cols = self._dims(bottom)
        labels = self._labels(bottom, rows, cols)
        xp = array_module(labels)
        t = self.dtype.type
        train = self.phase == caffe_pb2.TRAIN
        s_blob, m_blob = self.blobs[0].data.reshape(-1), self.blobs[1].data.reshape(-1)
        s = min(max(t(float(s_blob[0])), t(self.low)), t(self.high))
        x = bottom[0].data.reshape(rows, cols)
        idx = labels.astype(np.int64)
        ar = xp.arange(rows)
        target = x[ar, idx]
        others = x.copy()
        others[ar, idx] = -xp.inf
        mn = xp.maximum(t(-1), others.max(axis=1)) if cols > 1 else xp.full(rows, t(-1))
        if len(bottom) == 3:
            scale = bottom[2].data.reshape(rows).astype(self.dtype)
        else:
            scale = xp.full(rows, s, dtype=self.dtype)
        sums = xp.exp(scale[:, None] * (others - mn[:, None])).sum(axis=1, dtype=self.dtype)
        lse = xp.log(sums) / scale + mn
        gaps = target - lse
        d = np.asarray(gaps.get() if xp is not np else gaps)
        m = t(float(m_blob[0]))
        if m == 0:
            b, hung = mean_shift(d, d.sum(dtype=self.dtype) / t(rows), 20)
            new_m = b if (b == b) else m
        else:
            b, hung = mean_shift(d, m, 1)
            new_m = t(t(0.9) * m + t(0.1) * b) if (b == b) else m
        if hung:
            log.warning('GlobalLSEMargin "%s": no gap lies within 0.1 of the mean gap (the '
                        'original would loop forever); the margin stays %g', self.name,
                        float(m))
        if train:  # the fork also writes these in TEST (bounded here, see the docstring)
            s_blob[0] = s
            m_blob[0] = new_m
        out = self._rows(top[0].data, rows, cols)
        if top[0] is not bottom[0]:
            out[...] = x
        if new_m > 0:
            out[ar, idx] = target - new_m
        out *= scale[:, None]
        self._scale = scale
        self._s = s
        if len(top) > 1:
            first = s if len(bottom) < 3 else t(float(scale.mean(dtype=self.dtype)))
            stats = [first, target.mean(dtype=self.dtype), lse.mean(dtype=self.dtype),
                     mn.mean(dtype=self.dtype), new_m]
            top[1].data[...] = xp.asarray([float(v) for v in stats], dtype=self.dtype)

    def backward(self, top, propagate_down, bottom):
        rows, cols = self._dims(bottom)
        dy = top[0].diff.reshape(rows, cols)
        y = top[0].data.reshape(rows, cols)
        products = (dy * y).sum(axis=1, dtype=self.dtype)
        if len(bottom) == 3:
            if propagate_down[2]:
                bottom[2].diff[...] = (products / self._scale).reshape(bottom[2].shape)
        else:  # overwrites the scale's diff, as the fork
            self.blobs[0].diff[...] = products.sum(dtype=self.dtype) / self._s
        if propagate_down[0]:
            bottom[0].diff[...] = (self._scale[:, None] * dy).reshape(bottom[0].shape)
