"""Helpers shared by the train/test/time commands: device selection, arguments and
NetState stages. (Caffe-style log lines: ``pyfacelayers.process``.)"""

import logging

from .. import backend

log = logging.getLogger("pyfacelayers")


def add_device_arguments(parser, several=False):
    if several:  # train: Caffe's -gpu 0,1,2,3 / all (docs/parallel.md)
        parser.add_argument("--gpu", metavar="IDS",
                            help="run on GPU ID (needs cupy); a list such as 0,1,2,3 or "
                                 "\"all\" trains one rank per GPU over NCCL; under mpiexec, "
                                 "each rank takes the GPU at its local rank; default: the CPU")
        return
    parser.add_argument("--gpu", metavar="ID",
                        help="run on GPU ID (needs cupy); default: the CPU")


def add_python_layer_argument(parser):
    parser.add_argument("--allow-python-layers", action="store_true",
                        help="build Caffe Python layers (python_param): imports and runs "
                             "the module the prototxt names; only for files you trust")


def select_device(gpu, solver_param=None):
    """CPU or GPU mode from --gpu, else (for train) the solver's explicit solver_mode,
    as Caffe's tool does. Returns a description for the log."""
    from ..proto import caffe_pb2
    if gpu is None and solver_param is not None and solver_param.HasField("solver_mode") \
            and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU:
        try:
            backend.set_device(solver_param.device_id)
            backend.set_mode_gpu()
            return "GPU %d (solver_mode)" % solver_param.device_id
        except RuntimeError as exc:
            log.warning("solver_mode is GPU but no GPU can be used (%s); running on the CPU",
                        exc)
            backend.set_mode_cpu()
            return "CPU"
    if gpu is None:
        backend.set_mode_cpu()
        return "CPU"
    ids = [g for g in str(gpu).split(",") if g]
    if ids == ["all"]:
        ids = ["0"]
    if len(ids) != 1 or not ids[0].isdigit():
        raise ValueError("--gpu takes one device id here (several GPUs train with pyfacelayers "
                         "train --gpu 0,1,...), "
                         "got %r" % gpu)
    try:
        backend.set_device(int(ids[0]))
        backend.set_mode_gpu()
    except RuntimeError as exc:  # no cupy or no device: a clear message, not a traceback
        backend.set_mode_cpu()
        raise ValueError("--gpu %s: %s" % (gpu, exc)) from None
    return "GPU %s" % ids[0]


def synchronize():
    """Wait for queued GPU work (so timings measure it); nothing on the CPU."""
    if backend.mode() == "gpu":
        backend.import_cupy().cuda.Device().synchronize()


def layer_names(net):
    return [getattr(layer, "name", "layer%d" % i) for i, layer in enumerate(net.layers)]


def split_stages(values):
    stages = []
    for v in values or []:
        stages.extend(s for s in v.split(",") if s)
    return stages
