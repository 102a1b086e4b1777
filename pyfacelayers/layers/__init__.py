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
    """A Caffe type name is pycaffe's net_spec layer factory (``from pyfacelayers import
    layers as L; L.Convolution(...)``, see ``net_spec.py``), as is any other capitalised
    name, except the class name of one of our layers, which gives the class
    (``layers.ConvolutionLayer``)."""
    classes = {layer_class(t).__name__: layer_class(t) for t in registered_types()}
    if name in classes and name not in registered_types():
        return classes[name]
    if name[:1].isupper():
        from ..net_spec import layers as factory
        return getattr(factory, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
