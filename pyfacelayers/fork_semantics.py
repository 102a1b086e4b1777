"""Which of a fork layer's two behaviours to run where its CPU and GPU code differ.

The SphereFace descendants (happynear's and xialuxi's Caffe forks) sometimes compute
different things in ``Forward_cpu`` and ``Forward_gpu`` (an epsilon, a phase gate, a
clamp; docs/family.md lists every case). The published models were trained with the
GPU code, so ``"gpu"`` is the default, on either of our backends; ``"cpu"`` gives the
CPU code's behaviour (what the family-ref fixtures were made with).

Chosen process-wide by the environment variable ``PYFACELAYERS_FORK_SEMANTICS``
(``gpu`` or ``cpu``), optionally followed by per-layer-type overrides:
``PYFACELAYERS_FORK_SEMANTICS=gpu,Normalize=cpu``. In Python, :func:`using` overrides
the environment for a block, and a layer's ``semantics`` attribute can be set after it
is built. A layer reads the setting when it is set up (:func:`for_layer`).
"""

import contextlib
import os

ENV_VAR = "PYFACELAYERS_FORK_SEMANTICS"
CHOICES = ("gpu", "cpu")
DEFAULT = "gpu"
_override = []  # stack of (default, {type: choice}) pushed by using()


def _check(value, where):
    value = value.strip().lower()
    if value not in CHOICES:
        raise ValueError("%s: fork semantics must be one of %s, got %r"
                         % (where, ", ".join(CHOICES), value))
    return value


def parse(text, where=ENV_VAR):
    """``"gpu,Normalize=cpu"`` -> ("gpu", {"Normalize": "cpu"}). Empty text: the default."""
    default, per_type = DEFAULT, {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        if "=" in item:
            type_name, choice = item.split("=", 1)
            per_type[type_name.strip()] = _check(choice, "%s (layer type %s)"
                                                 % (where, type_name.strip()))
        else:
            default = _check(item, where)
    return default, per_type


def current():
    """(default, {type: choice}) in force now: the innermost :func:`using`, else the
    environment."""
    if _override:
        return _override[-1]
    return parse(os.environ.get(ENV_VAR, ""))


def mode(layer_type=None):
    """"gpu" or "cpu" for layers of ``layer_type`` (the process default if None)."""
    default, per_type = current()
    return per_type.get(layer_type, default)


def for_layer(layer):
    """The semantics a layer runs with: its own ``semantics`` attribute if set, else
    :func:`mode` of its type. A bad attribute value raises the layer's error."""
    own = getattr(layer, "semantics", None)
    if own is None:
        return mode(layer.type)
    try:
        return _check(own, 'layer "%s" (%s)' % (layer.name, layer.type))
    except ValueError as exc:
        raise layer.error(str(exc)) from None


@contextlib.contextmanager
def using(setting):
    """Run a block with ``setting`` ("cpu", "gpu" or "gpu,Normalize=cpu") instead of the
    environment variable; layers set up inside the block keep it."""
    _override.append(parse(setting, "fork semantics %r" % setting))
    try:
        yield
    finally:
        _override.pop()
