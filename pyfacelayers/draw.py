"""Net diagrams, as pycaffe's ``caffe.draw`` and Caffe's ``python/draw_net.py``.

Layers are boxes (coloured by kind, as Caffe draws them: convolution red, pooling
orange, inner products purple, in-place layers green, the rest blue), blobs are grey
octagons, and edges run bottom -> layer -> top. An in-place layer takes the blob it
rewrites and gives a new node of the same name, so the diagram stays acyclic and shows
the order of the rewrites (Caffe draws the same blob node as the layer's input and
output, a loop).

The graph is written in Graphviz's DOT language by this module (no pydot needed);
other formats (png, svg, pdf, ...) are rendered by Graphviz's ``dot`` program, which
must then be on the PATH.
"""

import os
import shutil
import subprocess

from .errors import PyFaceLayersError
from .fileio.atomic import atomic_write
from .net_graph import filter_net
from .proto import caffe_pb2

COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
           "InnerProduct": "#CC33FF", "MarginInnerProduct": "#CC33FF"}
LAYER_COLOUR, IN_PLACE_COLOUR, BLOB_COLOUR = "#6495ED", "#90EE90", "#E0E0E0"
RANKDIRS = ("LR", "TB", "BT", "RL")


class DrawError(PyFaceLayersError, RuntimeError):
    """The diagram could not be rendered (no Graphviz, or Graphviz failed)."""


def _quote(text):
    """A DOT string; line breaks become Graphviz's centred-line escape."""
    escaped = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"%s"' % escaped.replace("\n", "\\n")


def _window(p, name, default):
    """kernel / stride / pad of a convolution or pooling parameter as text ("3", "3x1"):
    the _h/_w fields when set, else the field itself (repeated in convolutions)."""
    if p.HasField(name + "_h") or p.HasField(name + "_w"):
        values = [getattr(p, name + "_h"), getattr(p, name + "_w")]
    else:
        value = getattr(p, "kernel_size" if name == "kernel" else name)
        values = list(value) if hasattr(value, "__len__") else [value]
    return "x".join(str(v) for v in values) if values else str(default)


def layer_details(layer):
    """The lines under a layer's name and type: the parameters that shape its output."""
    kind = layer.type
    if kind in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        lines = ["outputs: %d" % p.num_output,
                 "kernel %s, stride %s, pad %s" % (_window(p, "kernel", "?"),
                                                   _window(p, "stride", 1),
                                                   _window(p, "pad", 0))]
        if p.group > 1:
            lines.append("group %d" % p.group)
        return lines
    if kind == "Pooling":
        p = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(p.pool)
        if p.global_pooling:
            return ["%s, global" % method]
        return ["%s, kernel %s, stride %s, pad %s" % (method, _window(p, "kernel", "?"),
                                                       _window(p, "stride", 1),
                                                       _window(p, "pad", 0))]
    if kind == "InnerProduct":
        return ["outputs: %d" % layer.inner_product_param.num_output]
    if kind == "MarginInnerProduct":
        p = layer.margin_inner_product_param
        margin = caffe_pb2.MarginInnerProductParameter.MarginType.Name(p.type)
        return ["outputs: %d" % p.num_output, "margin %s" % margin]
    return []


# pycaffe's label and colour helpers, for scripts that build their own diagrams.
def get_pooling_types_dict():
    """{pooling method number: its name}, e.g. {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}."""
    methods = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name
    return {value.number: name for name, value in methods.items()}


def get_edge_label(layer):
    """pycaffe's edge label: the batch size of a Data layer, the output count of a
    convolution or inner product, else an empty DOT string ('""')."""
    if layer.type == "Data":
        return "Batch %d" % layer.data_param.batch_size
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_label(layer, rankdir):
    """pycaffe's node label, quoted for DOT: name and (type), plus kernel size, stride
    and pad (first values) of a convolution or pooling; words on one line for a
    vertical layout (TB, BT), one per line otherwise."""
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kind = "(%s)" % layer.type
        sizes = (p.kernel_size[0] if len(p.kernel_size) else 1,
                 p.stride[0] if len(p.stride) else 1, p.pad[0] if len(p.pad) else 0)
    elif layer.type == "Pooling":
        p = layer.pooling_param
        kind = "(%s %s)" % (get_pooling_types_dict()[p.pool], layer.type)
        sizes = (p.kernel_size, p.stride, p.pad)
    else:
        return '"%s%s(%s)"' % (layer.name, sep, layer.type)
    return '"%s%s%s%skernel size: %d%sstride: %d%spad: %d"' % (
        layer.name, sep, kind, sep, sizes[0], sep, sizes[1], sep, sizes[2])


def choose_color_by_layertype(layertype):
    """The fill colour of a layer node (MarginInnerProduct is drawn as InnerProduct)."""
    return COLOURS.get(layertype, LAYER_COLOUR)


def net_to_dot(net_param, rankdir="LR", phase=None, display_lrm=False):
    """The DOT text of a NetParameter. ``phase``: caffe_pb2.TRAIN or TEST keeps only that
    phase's layers (include/exclude rules); None draws every layer."""
    if rankdir not in RANKDIRS:
        raise ValueError("rankdir must be one of %s, got %r" % (", ".join(RANKDIRS), rankdir))
    if phase is not None:
        net_param = filter_net(net_param, caffe_pb2.NetState(phase=phase))
    lines = ["digraph %s {" % _quote(net_param.name or "net"),
             "  rankdir=%s;" % rankdir,
             "  node [style=filled];"]
    current = {}  # blob name -> its current node id
    versions = {}

    def blob_node(name):
        versions[name] = versions.get(name, 0) + 1
        node = "blob:%s:%d" % (name, versions[name])
        lines.append("  %s [shape=octagon, fillcolor=%s, label=%s];"
                     % (_quote(node), _quote(BLOB_COLOUR), _quote(name)))
        current[name] = node
        return node

    for index, layer in enumerate(net_param.layer):
        in_place = bool(layer.top) and list(layer.top) == list(layer.bottom)
        colour = IN_PLACE_COLOUR if in_place else COLOURS.get(layer.type, LAYER_COLOUR)
        label = [layer.name, "(%s)" % layer.type] + layer_details(layer)
        if display_lrm and len(layer.param):
            label.append("lr mult: %s" % ", ".join("%g" % p.lr_mult for p in layer.param))
        node = "layer:%d" % index
        lines.append("  %s [shape=box, fillcolor=%s, label=%s];"
                     % (_quote(node), _quote(colour), _quote("\n".join(label))))
        for bottom in layer.bottom:
            source = current.get(bottom) or blob_node(bottom)
            lines.append("  %s -> %s;" % (_quote(source), _quote(node)))
        for top in layer.top:
            lines.append("  %s -> %s;" % (_quote(node), _quote(blob_node(top))))
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_net(net_param, rankdir="LR", ext="png", phase=None, display_lrm=False):
    """The diagram as bytes in format ``ext`` (``dot`` is the DOT text itself)."""
    text = net_to_dot(net_param, rankdir, phase, display_lrm)
    ext = ext.lstrip(".").lower()
    if ext in ("dot", "gv"):
        return text.encode("utf-8")
    program = shutil.which("dot")
    if program is None:
        raise DrawError("writing .%s needs Graphviz's 'dot' program, which is not on the "
                        "PATH: install Graphviz, or write a .dot file" % ext)
    try:
        done = subprocess.run([program, "-T" + ext], input=text.encode("utf-8"),
                              capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise DrawError("Graphviz's dot took more than 300 s") from None
    if done.returncode != 0 or not done.stdout:
        raise DrawError("Graphviz's dot -T%s failed (exit %d): %s"
                        % (ext, done.returncode,
                           done.stderr.decode("utf-8", "replace").strip()[:500]))
    return done.stdout


def draw_net_to_file(net_param, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the diagram to ``filename`` (format from its extension), atomically."""
    ext = os.path.splitext(os.fspath(filename))[1]
    if not ext:
        raise ValueError("%s has no extension to tell the format (.png, .svg, .pdf, .dot)"
                         % filename)
    atomic_write(filename, draw_net(net_param, rankdir, ext, phase, display_lrm))
