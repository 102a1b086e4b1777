"""The fuzz targets by name: each has seeds(), one_input(data), the documented
exception types, whether text mutations apply, and a maximum input length."""

from collections import namedtuple

Target = namedtuple("Target", "name seeds one_input documented text max_len")


def _from_module(module, name=None):
    return Target(name or module.NAME, module.seeds, module.one_input, module.DOCUMENTED,
                  module.TEXT, module.MAX_LEN)


def load(name):
    """Import the harness of target ``name`` (lazily: atheris instruments on import)."""
    if name == "prototxt":
        from . import fuzz_prototxt as m
        return _from_module(m)
    if name == "net":
        from . import fuzz_net as m
        return _from_module(m)
    if name in ("caffemodel", "binaryproto", "solverstate"):
        from . import fuzz_binary as m
        cls = {"caffemodel": m.Caffemodel, "binaryproto": m.Binaryproto,
               "solverstate": m.Solverstate}[name]
        return Target(name, cls.seeds, cls.one_input, m.DOCUMENTED, m.TEXT, m.MAX_LEN)
    if name == "kernels":
        from . import fuzz_kernels as m
        return _from_module(m)
    if name == "layers":
        from . import fuzz_layers as m
        return _from_module(m)
    raise KeyError("unknown fuzz target %r (one of: %s)" % (name, ", ".join(NAMES)))


NAMES = ["prototxt", "net", "caffemodel", "binaryproto", "solverstate", "kernels", "layers"]
