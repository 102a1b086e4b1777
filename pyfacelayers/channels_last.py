"""Which activations a TEST net may keep channels-last between oneDNN convolutions.

oneDNN's fastest kernels at batch 1 and 32 read and write NHWC. A blob written by a
convolution (or an Eltwise sum of such blobs) and read only by layers that take any
strides (Blob.raw_data) can stay in that layout from one convolution to the next, so
no reorder runs in between. This module only marks those blobs
(``Blob.prefers_channels_last``); their producers store the layout, and anyone else who
takes ``blob.data`` gets a C-contiguous array (docs/onednn.md, "The TEST path").
"""

import numpy as np

from . import backend
from .proto import caffe_pb2


def plan(net):
    """Mark the blobs a oneDNN convolution (or an Eltwise sum of such blobs) may store
    channels-last (Blob.raw_data), so that no reorder runs between two convolutions:
    4-D float32 CPU blobs, not outputs of the net, that only forward-only oneDNN
    convolutions, Eltwise sums and Splits (and the activation fused before them)
    read. This only plans: whoever else takes ``data`` gets a C-contiguous array."""
    if net.dtype != np.float32 or backend.xp() is not np:
        return
    from .cpu import onednn
    if not onednn.available()[0]:
        return
    readers = {}  # id(blob) -> indices of the layers reading it
    for i, bottoms in enumerate(net._bottoms):
        for blob in bottoms:
            readers.setdefault(id(blob), []).append(i)

    def takes_any_layout(i):
        layer = net.layers[i]
        if net._layer_need_backward[i]:
            return False
        if layer.type == "Convolution":
            try:  # (plain layouts: oneDNN has only reference kernels for NHWC there)
                wanted = (onednn.engine_wanted(layer.param.convolution_param.engine)
                          and onednn.layout() == "any")
            except (onednn.OnednnUnavailable, ValueError):
                return False  # the layer names the problem when it runs
            return wanted and layer.num_spatial_axes == 2
        if layer.type == "Eltwise":
            return layer.op == caffe_pb2.EltwiseParameter.SUM and all(
                c == 1 for c in layer.coeffs)
        return layer.type == "Split" or i in net._fusions.values()

    def read_only_by_aware_layers(blob):
        for i in readers.get(id(blob), []):
            if not takes_any_layout(i):
                return False
            if net.layers[i].type == "Split" and not all(
                    read_only_by_aware_layers(t) for t in net._tops[i]):
                return False
        return True

    split_source = {id(t): bottoms[0] for layer, bottoms, tops in zip(
        net.layers, net._bottoms, net._tops) if layer.type == "Split" for t in tops}

    def source(blob):  # a Split's top views its bottom's array
        while id(blob) in split_source:
            blob = split_source[id(blob)]
        return blob

    outputs = {id(net.blobs[name]) for name in net.outputs}
    chosen = {}  # id(blob) -> (blob, producing layer index)
    for i, (layer, bottoms, tops) in enumerate(zip(net.layers, net._bottoms, net._tops)):
        if layer.type not in ("Convolution", "Eltwise") or not takes_any_layout(i):
            continue
        for top in tops:
            if (len(top.shape) == 4 and id(top) not in outputs
                    and all(top is not b for b in bottoms)
                    and read_only_by_aware_layers(top)):
                chosen[id(top)] = (top, i)
    changed = True
    while changed:  # an Eltwise sum writes channels-last only from such bottoms
        changed = False
        for key, (top, i) in list(chosen.items()):
            if net.layers[i].type == "Eltwise" and not all(
                    id(source(b)) in chosen for b in net._bottoms[i]):
                del chosen[key]
                changed = True
    for top, _ in chosen.values():
        top.prefers_channels_last = True
