"""The layer contract (Caffe's Layer<Dtype>) and the registry of layer types."""

import numpy as np

from ..errors import LayerError
from ..proto import caffe_pb2

_REGISTRY = {}


def register(cls):
    """Class decorator: make ``cls`` the implementation of Caffe type ``cls.type``."""
    if not cls.type:
        raise TypeError("%s has no Caffe type string" % cls.__name__)
    _REGISTRY[cls.type] = cls
    return cls


def registered_types():
    return sorted(_REGISTRY)


def layer_class(type_name, layer_name="?"):
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise LayerError(layer_name, type_name,
                         'unknown layer type "%s" (supported: %s)'
                         % (type_name, ", ".join(registered_types()))) from None


def create_layer(param, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None,
                 allow_python=None):
    """Build the layer described by a LayerParameter. ``allow_python``: the caller
    opted in to (True) or out of (False) Caffe ``Python`` layers, which import and run
    user code; None: the process-wide setting (layers/python_layer.py)."""
    cls = layer_class(param.type, param.name)
    if getattr(cls, "runs_user_code", False):
        return cls(param, phase=phase, dtype=dtype, rng=rng, allow=allow_python)
    return cls(param, phase=phase, dtype=dtype, rng=rng)


class Layer:
    """Caffe's layer contract over :class:`~pyfacelayers.blob.Blob` objects.

    ``setup`` runs once (``layer_setup`` then ``reshape``); ``forward`` and
    ``backward`` run per batch. ``self.blobs`` holds the learnable parameters, in
    Caffe's order. Subclasses set ``type`` (the Caffe type string) and may set the
    bottom/top count limits below, which ``setup`` checks.

    Exported as ``pyfacelayers.Layer``: also the base class of user-written Caffe
    ``Python`` layers, as pycaffe's ``caffe.Layer`` (see layers/python_layer.py).
    """

    type = None
    exact_num_bottom = None
    min_num_bottom = None
    max_num_bottom = None
    exact_num_top = None
    min_num_top = None
    max_num_top = None
    # Loss layers get loss_weight 1 on top[0] by default (Caffe's LossLayer).
    is_loss = False

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None):
        if param is None:
            param = caffe_pb2.LayerParameter(name=self.type or "layer", type=self.type or "")
        self.param = param
        self.name = param.name
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.blobs = []

    # -- the contract ----------------------------------------------------------
    def setup(self, bottom, top):
        self.check_blob_counts(bottom, top)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)

    def layer_setup(self, bottom, top):
        """Read parameters, create ``self.blobs``. Called once."""

    def reshape(self, bottom, top):
        """Shape the tops from the bottoms. Called before every forward."""
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        """Write bottom diffs (where propagate_down) and accumulate param diffs."""

    # -- helpers -----------------------------------------------------------------
    # Checks that need the device's answer (e.g. a label out of range, found by a GPU
    # kernel) may be left pending, when the solver sets defer_checks, so that the host
    # need not wait for the device inside a training iteration; settle_checks() raises
    # what a pending one found. The layer itself settles the previous one at its next
    # forward.
    defer_checks = False

    def defer_check(self, check):
        """Keep ``check()`` (which raises this layer's error) for settle_checks()."""
        self.__dict__.setdefault("_pending_checks", []).append(check)

    def settle_checks(self):
        pending = self.__dict__.pop("_pending_checks", None)
        for check in pending or ():
            check()

    def error(self, message):
        return LayerError(self.name, self.type, message)

    def check_blob_counts(self, bottom, top):
        def check(kind, n, exact, low, high):
            if exact is not None and n != exact:
                raise self.error("takes %d %s blob(s), got %d" % (exact, kind, n))
            if low is not None and n < low:
                raise self.error("takes at least %d %s blob(s), got %d" % (low, kind, n))
            if high is not None and n > high:
                raise self.error("takes at most %d %s blob(s), got %d" % (high, kind, n))

        check("bottom", len(bottom), self.exact_num_bottom, self.min_num_bottom,
              self.max_num_bottom)
        check("top", len(top), self.exact_num_top, self.min_num_top, self.max_num_top)

    def allow_force_backward(self, bottom_index):
        """False for inputs that never get a gradient (e.g. labels)."""
        return True

    def __repr__(self):
        return '<%s layer "%s">' % (self.type, self.name)
