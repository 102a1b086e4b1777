"""``pyfacelayers info FILE``: what a net or solver prototxt, a caffemodel or HDF5
weights hold. Any other file is named for what it looks like (fileio.identify)."""

import os

import numpy as np

from ..errors import FormatError
from ..fileio import blob_shape, parse_text, read_caffemodel, read_net, read_solver
from ..fileio.binary import read_bytes
from ..fileio.hdf5_weights import is_hdf5_path, read_hdf5_weights
from ..fileio.identify import MAGIC, identify_binary, identify_text
from ..fileio.text import read_text_file
from ..proto import caffe_pb2

EXPECTED = ("info reads a net or solver .prototxt, a .caffemodel or a .caffemodel.h5")


def register(subparsers):
    p = subparsers.add_parser(
        "info", help="list the layers of a .prototxt (with blob shapes when known), the "
                     "layers and blob shapes of a .caffemodel, or describe a solver")
    p.add_argument("file", help="a net or solver .prototxt, a .caffemodel or a "
                                ".caffemodel.h5")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], default=None,
                   help="phase used to compute a net's blob shapes (default TEST; TRAIN "
                        "for the net a solver names)")
    from . import _common
    _common.add_python_layer_argument(p)
    p.set_defaults(func=run)


def _head(path):
    with open(path, "rb") as f:
        return f.read(4096)


def _is_binary(head):
    try:
        return "\x00" in head.decode("utf-8")
    except UnicodeDecodeError:
        return True


def run(args):
    path = args.file
    try:
        head = _head(path)
    except FileNotFoundError:
        raise FileNotFoundError("no such file: %s" % path) from None
    allow = getattr(args, "allow_python_layers", False) or None
    if is_hdf5_path(path) or head.startswith(MAGIC[0][0]):
        show_hdf5_weights(path)
    elif _is_binary(head):
        try:
            show_caffemodel(path)
        except FormatError:
            found = identify_binary(read_bytes(path, "file"))
            if found.kind == "caffemodel":
                raise
            raise FormatError("this is %s, not a caffemodel; %s" % (found.description,
                                                                   EXPECTED), path) from None
    else:
        text = read_text_file(path)
        found = identify_text(text)
        if found.kind == "net":
            show_prototxt(path, _phase(args.phase, "TEST"), allow)
            if "weights written as text" in found.description:
                print("note: this is %s; Caffe reads weights only from a binary "
                      ".caffemodel" % found.description)
        elif found.kind == "solver":
            show_solver(path, _phase(args.phase, "TRAIN"), allow)
        else:
            detail = ""
            if found.kind == "other":
                try:
                    parse_text(text, caffe_pb2.NetParameter(), path)
                except FormatError as exc:
                    detail = " (read as a net: %s)" % exc
            raise FormatError("this is %s; %s%s" % (found.description, EXPECTED, detail),
                              path)
    return 0


def _phase(name, default):
    return getattr(caffe_pb2, name or default)


def show_caffemodel(path):
    net = read_caffemodel(path)
    print('caffemodel %s: net "%s", %d layers' % (path, net.name, len(net.layer)))
    total = 0
    for layer in net.layer:
        shapes = [blob_shape(b) for b in layer.blobs]
        total += sum(int(np.prod(s)) for s in shapes)
        print("  %-28s %-20s %s" % (layer.name, layer.type,
                                    "  ".join("x".join(map(str, s)) for s in shapes)))
    print("parameters: %d" % total)


def show_hdf5_weights(path):
    layers = read_hdf5_weights(path)
    print("HDF5 weights %s: %d layers" % (path, len(layers)))
    total = 0
    for name, params in layers.items():
        shapes = [params[k].shape for k in sorted(params)]
        total += sum(int(np.prod(s)) for s in shapes)
        print("  %-28s %s" % (name, "  ".join("x".join(map(str, s)) for s in shapes)))
    print("parameters: %d" % total)


def show_prototxt(source, phase, allow_python_layers=None, indent=""):
    """The layers of a net (a path or a NetParameter) and, when the net builds, its
    blob shapes in ``phase`` and its parameter count."""
    param = source if isinstance(source, caffe_pb2.NetParameter) else read_net(source)
    where = "" if isinstance(source, caffe_pb2.NetParameter) else " (%s)" % source
    print('%snet "%s"%s: %d layers' % (indent, param.name, where, len(param.layer)))
    print("%s  %-28s %-20s %-30s %s" % (indent, "name", "type", "bottoms", "tops"))
    for layer in param.layer:
        print("%s  %-28s %-20s %-30s %s" % (indent, layer.name, layer.type,
                                            ",".join(layer.bottom), ",".join(layer.top)))
    try:
        from ..net import Net
        net = Net(param, phase, allow_python_layers=allow_python_layers)
    except Exception as exc:  # shapes need every input's shape and every layer type
        print("%sblob shapes unknown (%s)" % (indent, exc))
        return
    print("%sblob shapes (%s):" % (indent, caffe_pb2.Phase.Name(phase)))
    for name, blob in net.blobs.items():
        print("%s  %-40s %s" % (indent, name, "x".join(map(str, blob.shape)) or "scalar"))
    count = sum(b.count for b in net.learnable_params)
    print("%sparameters: %d" % (indent, count))


# -- solvers ------------------------------------------------------------------------------

_SCHEDULES = {
    "fixed": "base_lr throughout",
    "step": "base_lr * gamma ^ floor(iter / stepsize)",
    "exp": "base_lr * gamma ^ iter",
    "inv": "base_lr * (1 + gamma * iter) ^ (-power)",
    "multistep": "base_lr * gamma ^ (number of stepvalues <= iter)",
    "poly": "base_lr * (1 - iter / max_iter) ^ power",
    "sigmoid": "base_lr / (1 + exp(-gamma * (iter - stepsize)))",
}
_POLICY_FIELDS = {"step": ("gamma", "stepsize"), "exp": ("gamma",), "inv": ("gamma", "power"),
                  "multistep": ("gamma", "stepvalue"), "poly": ("power",),
                  "sigmoid": ("gamma", "stepsize")}
_SOLVER_EXTRAS = {"SGD": ("momentum",), "Nesterov": ("momentum",), "AdaGrad": ("delta",),
                  "RMSProp": ("rms_decay", "delta"), "AdaDelta": ("momentum", "delta"),
                  "Adam": ("momentum", "momentum2", "delta")}


def _num(value):
    return "%g" % value


def show_solver(path, phase, allow_python_layers=None):
    """Describe a solver prototxt: its type, learning-rate schedule, length, snapshots
    and tests, then the summary of the training net it names."""
    p = read_solver(path)
    extras = ", ".join("%s %s" % (f, _num(getattr(p, f))) for f in _SOLVER_EXTRAS.get(p.type, ()))
    print("solver %s" % path)
    print("  type: %s%s" % (p.type, " (%s)" % extras if extras else ""))
    print("  learning rate: base_lr %s, lr_policy \"%s\"" % (_num(p.base_lr), p.lr_policy))
    for line in _schedule(p):
        print("    " + line)
    print("  max_iter: %d (display every %d, average_loss %d, iter_size %d)"
          % (p.max_iter, p.display, p.average_loss, p.iter_size))
    clip = "off" if p.clip_gradients < 0 else _num(p.clip_gradients)
    print("  weight_decay: %s (%s), clip_gradients %s" % (_num(p.weight_decay),
                                                         p.regularization_type, clip))
    print("  " + _snapshots(p))
    print("  " + _tests(p))
    mode = caffe_pb2.SolverParameter.SolverMode.Name(p.solver_mode)
    print("  solver_mode: %s (device_id %d), random_seed %d%s"
          % (mode, p.device_id, p.random_seed,
             " (fresh entropy)" if p.random_seed < 0 else ""))
    net, label = _solver_net(p, path)
    print("  training net: %s" % label)
    if net is not None:
        print()
        show_prototxt(net, phase, allow_python_layers)


def _schedule(p):
    """Lines describing the rate over the run."""
    if p.lr_policy not in _SCHEDULES:
        return ["(unknown policy: Caffe refuses it; expected one of %s)"
                % ", ".join(sorted(_SCHEDULES))]
    fields = []
    for name in _POLICY_FIELDS.get(p.lr_policy, ()):
        value = getattr(p, name)
        fields.append("%s %s" % (name, ", ".join(map(_num, value)) if name == "stepvalue"
                                 else _num(value)))
    lines = ["%s%s" % (_SCHEDULES[p.lr_policy], " (%s)" % ", ".join(fields) if fields else "")]
    if p.lr_policy == "multistep":
        steps = [0] + [v for v in p.stepvalue if v <= p.max_iter]
        lines.append("; ".join("%s from iteration %d" % (_num(p.base_lr * p.gamma ** k), it)
                               for k, it in enumerate(steps)))
    elif p.lr_policy == "step" and p.stepsize > 0:
        marks = list(range(0, max(p.max_iter, 1), p.stepsize))[:6]
        lines.append("; ".join("%s from iteration %d" % (_num(p.base_lr * p.gamma ** k), it)
                               for k, it in enumerate(marks)))
    elif p.lr_policy != "fixed" and p.max_iter > 0:
        from ..solvers.lr_policy import learning_rate
        marks = sorted({0, p.max_iter // 4, p.max_iter // 2, 3 * p.max_iter // 4, p.max_iter})
        lines.append("; ".join("%s at iteration %d" % (_num(learning_rate(p, it, 0)[0]), it)
                               for it in marks))
    return lines


def _snapshots(p):
    suffix = ".h5" if p.snapshot_format == caffe_pb2.SolverParameter.HDF5 else ""
    fmt = caffe_pb2.SolverParameter.SnapshotFormat.Name(p.snapshot_format)
    names = '"%s_iter_N.caffemodel%s" and ".solverstate%s" (%s)' % (
        p.snapshot_prefix or "<snapshot_prefix unset>", suffix, suffix, fmt)
    when = "every %d iterations" % p.snapshot if p.snapshot > 0 else "no periodic snapshots"
    after = "after training too" if p.snapshot_after_train else "none after training"
    return "snapshots: %s, %s; files %s" % (when, after, names)


def _tests(p):
    count = len(p.test_iter)
    if not count:
        return "tests: none (no test_iter)"
    return ("tests: %d test net(s), test_iter %s, every %d iterations%s"
            % (count, ", ".join(map(str, p.test_iter)), p.test_interval,
               "" if p.test_initialization else " (not at iteration 0)"))


def _solver_net(p, path):
    """(the training net as a NetParameter or None, a line naming where it comes from)."""
    for field in ("train_net_param", "net_param"):
        if p.HasField(field):
            net = caffe_pb2.NetParameter()
            net.CopyFrom(getattr(p, field))
            return net, "%s (given inline)" % field
    for field in ("train_net", "net"):
        if p.HasField(field):
            return _net_file(getattr(p, field), field, path)
    return None, "none named (a solver needs net, net_param, train_net or train_net_param)"


def _net_file(name, field, solver_path):
    """Caffe opens the net file relative to the working directory; the solver's folder
    is tried next, then (only here, to help) the file's name in the solver's folder."""
    folder = os.path.dirname(os.path.abspath(solver_path))
    tries = [(name, "")] if os.path.isabs(name) else [
        (name, ""), (os.path.join(folder, name), " (next to the solver)"),
        (os.path.join(folder, os.path.basename(name)),
         " (found by its name next to the solver; Caffe would look in the working "
         "directory)")]
    for candidate, how in tries:
        if os.path.isfile(candidate):
            return read_net(candidate), '%s: "%s" -> %s%s' % (field, name, candidate, how)
    return None, ('%s: "%s" not found (relative to the working directory %s or to the '
                  "solver's folder)" % (field, name, os.getcwd()))
