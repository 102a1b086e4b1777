"""CPU (numpy) or GPU (cupy) mode, as pycaffe's set_mode_cpu / set_mode_gpu.

Layers never import cupy themselves: they take their array module from the arrays
they are given (:func:`array_module`), so one implementation serves both backends
where numpy and cupy agree.
"""

import numpy as np

_state = {"mode": "cpu", "device": 0}


def set_mode_cpu():
    _state["mode"] = "cpu"


def set_mode_gpu():
    cupy = import_cupy()
    cupy.cuda.Device(_state["device"]).use()
    _state["mode"] = "gpu"


def set_device(device_id):
    _state["device"] = int(device_id)
    if _state["mode"] == "gpu":
        import_cupy().cuda.Device(_state["device"]).use()


def mode():
    return _state["mode"]


def import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "GPU mode needs cupy (pip install 'pyfacelayers[gpu]'): %s" % exc) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver
        raise RuntimeError("GPU mode: no usable CUDA device (%s)" % exc) from None
    if count == 0:
        raise RuntimeError("GPU mode: no CUDA device found")
    return cupy


def xp():
    """The array module of the current mode."""
    return import_cupy() if _state["mode"] == "gpu" else np


def array_module(array):
    """numpy or cupy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def to_numpy(array):
    """A numpy array for a numpy or cupy array (copy from the device if needed)."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)
