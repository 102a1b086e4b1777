"""pyfacelayers: run and train legacy Caffe face-recognition nets without Caffe.

``import pyfacelayers as caffe`` gives pycaffe's API: ``caffe.Net``, ``caffe.TRAIN`` /
``caffe.TEST``, ``caffe.set_mode_cpu()`` / ``set_mode_gpu()`` / ``set_device(i)``,
``caffe.set_random_seed``, ``caffe.SGDSolver`` and the other solvers,
``caffe.get_solver``, ``caffe.io``, ``caffe.proto.caffe_pb2`` and net_spec's
``caffe.NetSpec`` / ``caffe.layers`` / ``caffe.params`` / ``caffe.to_proto``,
``caffe.Classifier``, ``caffe.Detector``, ``caffe.draw``, ``caffe.coord_map``, and the
process-level ``init_log``, ``log``, ``Timer``, ``has_nccl``, solver count/rank
functions and ``caffe.NCCL`` (data-parallel training on several GPUs, processes and
machines: docs/parallel.md).
``pyfacelayers.allow_python_layers(True)`` (or PYFACELAYERS_ALLOW_PYTHON_LAYERS=1) lets
unchanged pycaffe scripts build Caffe ``Python`` layers; they are refused by default. The SphereFace
``MarginInnerProduct`` layer runs in C++ (and CUDA when built with nvcc).
"""

__version__ = "0.1.0"

from . import proto  # noqa: E402
from .backend import set_device, set_mode_cpu, set_mode_gpu  # noqa: E402
from .blob import Blob  # noqa: E402
from .layers import Layer, registered_types  # noqa: E402
from .layers.python_layer import allow_python_layers  # noqa: E402
from .net import TEST, TRAIN, Net, set_random_seed  # noqa: E402
from .process import (NCCL, Timer, has_nccl, init_log, set_multiprocess,  # noqa: E402
                      set_solver_count, set_solver_rank, solver_count, solver_rank)
from .process import log_message as log  # noqa: E402


def layer_type_list():
    """The Caffe layer types this package implements (pycaffe's layer_type_list)."""
    return registered_types()


def __getattr__(name):
    # Heavier parts load on first use: caffe.io (images) and the solvers.
    import importlib
    if name == "io":
        return importlib.import_module(".io", __name__)
    if name in ("Classifier", "Detector"):
        return getattr(importlib.import_module("." + name.lower(), __name__), name)
    if name in ("draw", "coord_map"):
        return importlib.import_module("." + name, __name__)
    if name in ("NetSpec", "params", "to_proto", "net_spec"):
        module = importlib.import_module(".net_spec", __name__)
        return module if name == "net_spec" else getattr(module, name)
    if name in ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                "AdaDeltaSolver", "AdamSolver", "get_solver", "Solver"):
        return getattr(importlib.import_module(".solvers", __name__), name)
    raise AttributeError("module 'pyfacelayers' has no attribute %r" % name)
