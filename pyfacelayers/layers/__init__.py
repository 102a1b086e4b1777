"""Caffe layers: one class per Caffe layer type, registered by its type string.

Every module of this package is imported here, so a new layer module only needs
``@register`` on its class to be available to the net runtime.
"""

import importlib
import pkgutil

from .base import Layer, create_layer, layer_class, register, registered_types

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module("%s.%s" % (__name__, _module.name))

__all__ = ["Layer", "create_layer", "layer_class", "register", "registered_types"]


def __getattr__(name):
    """``layers.Convolution(...)`` and any other Caffe type name: pycaffe's net_spec
    layer factory (``from pyfacelayers import layers as L``), see ``net_spec.py``."""
    if name[:1].isupper():
        from ..net_spec import layers as factory
        return getattr(factory, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
