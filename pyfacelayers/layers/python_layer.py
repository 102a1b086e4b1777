"""Caffe's ``Python`` layer: a layer written in Python, named by the prototxt.

    layer { type: "Python" name: "loss" bottom: "a" bottom: "b" top: "loss"
            python_param { module: "my_layers" layer: "EuclideanLoss" param_str: "..." }
            loss_weight: 1 }

Building it imports ``module`` (from ``sys.path`` / ``PYTHONPATH``, as pycaffe does) and
runs its code, so a model file could run anything. It is therefore refused unless the
caller opted in: ``caffe.Net(..., allow_python_layers=True)``, the solvers'
``allow_python_layers=True``, the command line's ``--allow-python-layers``, or for the
whole process (unchanged pycaffe scripts) ``pyfacelayers.allow_python_layers(True)`` or
the environment variable ``PYFACELAYERS_ALLOW_PYTHON_LAYERS=1``. The default is off for
the reason ``torch.load`` defaults to weights only: opening a model file someone sent
you should not run their code.

When allowed it follows pycaffe's interface: the class is called with the
LayerParameter, gets ``param_str``, ``phase`` and ``blobs`` (a list with
``add_blob(*shape)``), then ``setup(bottom, top)`` and ``reshape(bottom, top)`` once,
``reshape`` + ``forward(bottom, top)`` per forward and ``backward(top, propagate_down,
bottom)`` per backward. Users subclass ``pyfacelayers.Layer`` (pycaffe's
``caffe.Layer``). As in Caffe, a Python loss layer needs an explicit ``loss_weight``.
In GPU mode the blobs' arrays are cupy arrays.
"""

import importlib
import os

from ..blob import Blob
from .base import Layer, register

ENV_VAR = "PYFACELAYERS_ALLOW_PYTHON_LAYERS"
_process_setting = {"allow": None}  # allow_python_layers(); None: the environment decides


def allow_python_layers(allow=True):
    """Let every net built afterwards in this process build Caffe ``Python`` layers (or,
    with False, refuse them again, whatever the environment says). A keyword given to
    ``Net``, a solver or the command line still wins for that net. None: back to the
    environment variable PYFACELAYERS_ALLOW_PYTHON_LAYERS (1, true, yes or on)."""
    _process_setting["allow"] = None if allow is None else bool(allow)


def python_layers_allowed(explicit=None):
    """Whether Python layers may be built: ``explicit`` when given (a caller's keyword),
    else the process setting, else the environment variable (off when unset)."""
    if explicit is not None:
        return bool(explicit)
    if _process_setting["allow"] is not None:
        return _process_setting["allow"]
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


class BlobVec(list):
    """pycaffe's ``layer.blobs`` for Python layers: a list that can grow a blob."""

    def __init__(self, dtype, items=()):
        super().__init__(items)
        self._dtype = dtype

    def add_blob(self, *shape):
        """Append a zero blob of ``shape`` (pycaffe's BlobVec.add_blob)."""
        self.append(Blob(shape, dtype=self._dtype))


@register
class PythonLayer(Layer):
    type = "Python"
    runs_user_code = True  # create_layer passes the caller's opt-in

    def __init__(self, param=None, phase=None, dtype=None, rng=None, allow=None):
        self.impl = None
        kwargs = {k: v for k, v in (("phase", phase), ("dtype", dtype), ("rng", rng))
                  if v is not None}
        super().__init__(param, **kwargs)
        pp = self.param.python_param
        where = 'python_param { module: "%s" layer: "%s" }' % (pp.module, pp.layer)
        if not python_layers_allowed(allow):
            raise self.error(
                "%s would import and run Python code named by the model file; refused. "
                "Allow it only for files you trust: caffe.Net(..., allow_python_layers="
                "True), get_solver(..., allow_python_layers=True), the command line's "
                "--allow-python-layers, or for the whole process pyfacelayers."
                "allow_python_layers(True) or the environment variable %s=1"
                % (where, ENV_VAR))
        if not pp.module or not pp.layer:
            raise self.error("%s: both module and layer are required" % where)
        try:
            module = importlib.import_module(pp.module)
        except ImportError as exc:
            raise self.error("%s: cannot import module \"%s\" (%s); it must be on "
                             "sys.path / PYTHONPATH" % (where, pp.module, exc)) from exc
        cls = getattr(module, pp.layer, None)
        if not isinstance(cls, type):
            raise self.error("%s: module \"%s\" (%s) has no class \"%s\""
                             % (where, pp.module, getattr(module, "__file__", "?"),
                                pp.layer))
        impl = cls(self.param)  # pycaffe passes the LayerParameter
        impl.param_str = pp.param_str
        impl.phase = self.phase
        existing = getattr(impl, "blobs", None)
        impl.blobs = BlobVec(self.dtype, existing if isinstance(existing, list) else ())
        if isinstance(impl, Layer):  # the net's dtype, for blobs the user makes
            impl.dtype = self.dtype
        for name, value in (("name", self.name), ("type", self.type)):
            if getattr(impl, name, None) is None:
                setattr(impl, name, value)
        self.impl = impl

    # The user's object holds the parameters, so the net sees them as this layer's.
    @property
    def blobs(self):
        return self.impl.blobs if self.impl is not None else self._early_blobs

    @blobs.setter
    def blobs(self, value):
        if self.impl is None:
            self._early_blobs = value
        else:
            self.impl.blobs = BlobVec(self.dtype, value)

    def setup(self, bottom, top):
        # Caffe's Layer::SetUp: LayerSetUp (the user's setup) then Reshape.
        self.impl.setup(bottom, top)
        self.impl.reshape(bottom, top)

    def reshape(self, bottom, top):
        self.impl.reshape(bottom, top)

    def forward(self, bottom, top):
        self.impl.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.impl.backward(top, list(propagate_down), bottom)

    def __getattr__(self, name):
        # Anything else (the user's own attributes and methods) comes from their object.
        impl = self.__dict__.get("impl")
        if impl is None:
            raise AttributeError(name)
        return getattr(impl, name)
