"""Export a deploy net and its weights to ONNX, so the model also runs in onnxruntime,
TensorRT, OpenVINO and the like.

    net = caffe.Net("sphereface_deploy.prototxt", "sphereface.caffemodel", caffe.TEST)
    pyfacelayers.onnx_export.export(net, "sphereface.onnx")

or ``pyfacelayers export --model M --weights W --out F.onnx``. Needs the ``onnx``
package (``pip install 'pyfacelayers[onnx]'``), which writes the file.

The net is read as built (TEST phase, weights loaded): every layer becomes ONNX
operators of opset 13 computing the same function, in float32. The inputs get a
symbolic batch size ``N`` unless ``dynamic_batch=False``. In-place layers rewrite a
blob; in ONNX each rewrite is a new value: the last one has the blob's name (so the
outputs are named as the net's), earlier ones ``<blob>@<layer>`` (as are all rewrites
of an input, whose name the graph input keeps). Layers that only
make sense in training (data layers other than Input, losses, Accuracy,
MarginInnerProduct, which needs labels) are refused with the layer named: export the
deploy net. The fork layers of the mirror deploy nets export too: Normalize (with the
epsilon of the semantics it runs, docs/family.md), NormL2 and Flip (a Slice of step -1);
their tops keep the legacy 4-D shape, and an InnerProduct with ``normalize: true``
exports its unit-norm rows. Caffe's pooling sizes (rounded up) are kept with explicit end padding.
"""

import numpy as np

from .errors import NetError

OPSET = 13
# Layers that only pass data on in a TEST net: their tops are their bottom.
ALIASES = ("Split", "Dropout")


class ExportError(NetError):
    """The net cannot be exported (a layer or setting ONNX cannot express here)."""


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package (pip install "
                          "'pyfacelayers[onnx]'): %s" % exc) from None
    return onnx


class _Graph:
    """The ONNX nodes, constants and value names while the net is walked."""

    def __init__(self, onnx, last_writer):
        self.onnx = onnx
        self.nodes, self.constants = [], []
        self.current = {}  # blob name -> the ONNX value holding it now
        self.last_writer = last_writer  # blob name -> the last layer writing it
        self.count = 0

    def value(self, blob):
        return self.current[blob]

    def new_value(self, blob, layer):
        """The name of a new value of ``blob``: the blob's own name for its last
        writer, ``blob@layer`` for the writes before."""
        name = blob if self.last_writer[blob] == layer else "%s@%s" % (blob, layer)
        self.current[blob] = name
        return name

    def constant(self, array, hint):
        self.count += 1
        name = "%s_%d" % (hint, self.count)
        self.constants.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                name))
        return name

    def node(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs


def _f32(array):
    return np.asarray(array, dtype=np.float32)


def _channel_shape(values, ndim):
    """A per-channel vector shaped to broadcast over (N, C, ...) of ``ndim`` axes."""
    return _f32(values).reshape((-1,) + (1,) * max(0, ndim - 2))


def export(net, path=None, dynamic_batch=True, opset=OPSET):
    """The ONNX ModelProto of ``net`` (a built pyfacelayers Net); written to ``path``
    when given. ExportError names any layer that cannot be exported."""
    onnx = _onnx()
    last_writer = {}
    for layer, name in zip(net.layers, net._layer_names):
        if layer.type == "Input":
            last_writer.update((top, None) for top in net.top_names[name])
        elif layer.type not in ALIASES:
            last_writer.update((top, name) for top in net.top_names[name]
                               if last_writer.get(top, "") is not None)
    graph = _Graph(onnx, last_writer)
    inputs = []
    for layer, name in zip(net.layers, net._layer_names):
        bottoms, tops = net.bottom_names[name], net.top_names[name]
        kind = layer.type
        if kind == "Input":
            for top in tops:
                shape = list(net.blobs[top].shape)
                if dynamic_batch and shape:
                    shape[0] = "N"
                graph.current[top] = top
                inputs.append(onnx.helper.make_tensor_value_info(
                    top, onnx.TensorProto.FLOAT, shape))
            continue
        if kind in ALIASES:
            for top in tops:
                graph.current[top] = graph.value(bottoms[0])
            continue
        if kind == "Silence":
            continue
        convert = _CONVERTERS.get(kind)
        if convert is None:
            raise ExportError('layer "%s" (%s) cannot be exported to ONNX%s' % (
                name, kind, "; export the deploy net (training-only layers are not part of "
                            "it)" if kind in _TRAINING_ONLY else ""))
        convert(graph, net, layer, name, [graph.value(b) for b in bottoms], tops)
    for blob in net.outputs:
        if graph.value(blob) != blob and last_writer.get(blob, "") is not None:
            # a Dropout/Split top: name the value as the blob
            graph.node("Identity", [graph.value(blob)], [blob], blob + "_output")
            graph.current[blob] = blob
    outputs = [onnx.helper.make_tensor_value_info(
        graph.value(blob), onnx.TensorProto.FLOAT,
        (["N"] if dynamic_batch else [net.blobs[blob].shape[0]])
        + list(net.blobs[blob].shape[1:])) for blob in net.outputs]
    model = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, net.name or "net", inputs, outputs,
                               graph.constants),
        opset_imports=[onnx.helper.make_opsetid("", opset)],
        producer_name="pyfacelayers")
    onnx.checker.check_model(model)
    if path is not None:
        from .fileio.atomic import atomic_write
        atomic_write(path, model.SerializeToString())
    return model


# -- one function per Caffe layer type -----------------------------------------------
def _conv(graph, net, layer, name, x, tops):
    if layer.channel_axis != 1:
        raise ExportError('layer "%s": only channel axis 1 can be exported (got %d)'
                          % (name, layer.channel_axis))
    op = "ConvTranspose" if layer.reverse_dimensions else "Conv"
    args = x + [graph.constant(_f32(layer.blobs[0].data), name + "_w")]
    if layer.bias_term:
        args.append(graph.constant(_f32(layer.blobs[1].data), name + "_b"))
    graph.node(op, args, [graph.new_value(tops[0], name)], name,
               kernel_shape=list(layer.kernel), strides=list(layer.stride),
               pads=list(layer.pad) * 2, dilations=list(layer.dilation), group=layer.group)


def _prelu(graph, net, layer, name, x, tops):
    ndim = len(net.blobs[tops[0]].shape)
    slope = _f32(layer.blobs[0].data).reshape(1) if layer.channel_shared \
        else _channel_shape(layer.blobs[0].data, ndim)
    graph.node("PRelu", [x[0], graph.constant(slope, name + "_slope")],
               [graph.new_value(tops[0], name)], name)


def _relu(graph, net, layer, name, x, tops):
    slope = layer.param.relu_param.negative_slope
    if slope:
        graph.node("LeakyRelu", x, [graph.new_value(tops[0], name)], name, alpha=slope)
    else:
        graph.node("Relu", x, [graph.new_value(tops[0], name)], name)


def _simple(op):
    def convert(graph, net, layer, name, x, tops):
        graph.node(op, x, [graph.new_value(tops[0], name)], name)
    return convert


def _eltwise(graph, net, layer, name, x, tops):
    operation = layer.param.eltwise_param.operation
    out = [graph.new_value(tops[0], name)]
    if operation == 0:  # PROD
        graph.node("Mul", x[:2], out if len(x) == 2 else [name + "_p1"], name)
        for i in range(2, len(x)):
            graph.node("Mul", [name + "_p%d" % (i - 1), x[i]],
                       out if i == len(x) - 1 else [name + "_p%d" % i], "%s_%d" % (name, i))
    elif operation == 1:  # SUM, with coefficients
        terms = []
        for i, (value, c) in enumerate(zip(x, layer.coeffs)):
            if float(c) == 1.0:
                terms.append(value)
            else:
                terms.append(graph.node("Mul", [value, graph.constant(
                    _f32([c]), name + "_coeff")], ["%s_t%d" % (name, i)], "%s_t%d"
                    % (name, i))[0])
        graph.node("Sum", terms, out, name)
    else:  # MAX
        graph.node("Max", x, out, name)


def _inner_product(graph, net, layer, name, x, tops):
    if layer.axis != 1:
        raise ExportError('layer "%s": InnerProduct with axis %d cannot be exported '
                          '(axis 1 only)' % (name, layer.axis))
    if getattr(layer, "weight_bottom", False):
        raise ExportError('layer "%s": an InnerProduct whose weight is a bottom cannot be '
                          'exported (its weight is not a constant)' % name)
    if getattr(layer, "normalize", False):
        layer._normalize_rows()  # what its next Forward would use (it renormalises in place)
    flat = graph.node("Flatten", x, [name + "_flat"], name + "_flatten", axis=1)
    args = flat + [graph.constant(_f32(layer.blobs[0].data), name + "_w")]
    if layer.bias_term:
        args.append(graph.constant(_f32(layer.blobs[1].data), name + "_b"))
    graph.node("Gemm", args, [graph.new_value(tops[0], name)], name,
               transB=0 if layer.transpose else 1)


def _pooling(graph, net, layer, name, x, tops):
    method = layer.method  # 0 MAX, 1 AVE, 2 STOCHASTIC
    out = [graph.new_value(tops[0], name)]
    if method not in (0, 1):
        raise ExportError('layer "%s": STOCHASTIC pooling cannot be exported' % name)
    if layer.global_pooling:
        graph.node("GlobalMaxPool" if method == 0 else "GlobalAveragePool", x, out, name)
        return
    size_in = net.blobs[net.bottom_names[name][0]].shape[2:]
    size_out = net.blobs[tops[0]].shape[2:]
    # Caffe rounds the output size up (then drops a last window that would start in the
    # padding); pad the end so that ONNX's rounding down gives the same windows.
    pad_end = [max(0, (o - 1) * s + k - i - p) for i, o, k, s, p in
               zip(size_in, size_out, layer.kernel, layer.stride, layer.pad)]
    onnx_out = [(i + p + e - k) // s + 1 for i, p, e, k, s in
                zip(size_in, layer.pad, pad_end, layer.kernel, layer.stride)]
    if onnx_out != list(size_out):
        raise ExportError('layer "%s": pooling output %s cannot be expressed with ONNX '
                          'padding' % (name, list(size_out)))
    if any(e >= k for e, k in zip(pad_end, layer.kernel)):
        # Caffe rounds up into a window wholly past the input (a stride larger than the
        # kernel): it outputs -FLT_MAX (MAX) there, which ONNX padding cannot give.
        raise ExportError('layer "%s": the last pooling window lies wholly outside the '
                          'input (stride %s > kernel %s); ONNX cannot express it'
                          % (name, list(layer.stride), list(layer.kernel)))
    if method == 1 and any(e > p for e, p in zip(pad_end, layer.pad)):
        # Caffe averages over the window clipped at the padded edge; past it ONNX would
        # still divide by the whole kernel.
        raise ExportError('layer "%s": AVE pooling whose last window overhangs the padded '
                          'input (Caffe rounds its size up) cannot be exported exactly'
                          % name)
    attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride),
                 pads=list(layer.pad) + list(pad_end))
    if method == 1:
        attrs["count_include_pad"] = 1  # Caffe's divisor counts the padding
    graph.node("MaxPool" if method == 0 else "AveragePool", x, out, name, **attrs)


def _softmax(graph, net, layer, name, x, tops):
    graph.node("Softmax", x, [graph.new_value(tops[0], name)], name, axis=layer.axis)


def _concat(graph, net, layer, name, x, tops):
    graph.node("Concat", x, [graph.new_value(tops[0], name)], name, axis=layer.axis)


def _slice(graph, net, layer, name, x, tops):
    sizes = graph.constant(np.asarray(layer.sizes, np.int64), name + "_sizes")
    graph.node("Split", x + [sizes], [graph.new_value(t, name) for t in tops], name,
               axis=layer.axis)


def _reshape(graph, net, layer, name, x, tops):
    """Flatten and Reshape: to the top's shape, keeping the batch axis free (0 copies
    the input's size there) when the layer keeps it."""
    bottom = net.blobs[net.bottom_names[name][0]].shape
    shape = list(net.blobs[tops[0]].shape)
    if shape and bottom and shape[0] == bottom[0]:
        shape[0] = 0
    graph.node("Reshape", x + [graph.constant(np.asarray(shape, np.int64), name + "_shape")],
               [graph.new_value(tops[0], name)], name)


def _affine(graph, name, x, tops, scale, shift, ndim):
    """x * scale + shift per channel (either may be None)."""
    value = x[0]
    if scale is not None:
        value = graph.node("Mul", [value, graph.constant(_channel_shape(scale, ndim),
                                                         name + "_scale")],
                           [name + "_scaled"] if shift is not None
                           else [graph.new_value(tops[0], name)], name + "_mul")[0]
    if shift is not None:
        graph.node("Add", [value, graph.constant(_channel_shape(shift, ndim), name + "_shift")],
                   [graph.new_value(tops[0], name)], name + "_add")


def _batch_norm(graph, net, layer, name, x, tops):
    if not layer.use_global_stats:
        raise ExportError('layer "%s": BatchNorm with use_global_stats false (batch '
                          'statistics) cannot be exported; export the TEST net' % name)
    factor = float(layer.blobs[2].data.reshape(-1)[0])
    factor = 1.0 / factor if factor != 0 else 0.0  # Caffe's scale factor
    mean = np.asarray(layer.blobs[0].data, np.float64) * factor
    var = np.asarray(layer.blobs[1].data, np.float64) * factor
    inv = 1.0 / np.sqrt(var + layer.eps)
    _affine(graph, name, x, tops, inv, -mean * inv, len(net.blobs[tops[0]].shape))


def _scale(graph, net, layer, name, x, tops):
    p = layer.param.scale_param
    if len(x) != 1 or p.axis != 1 or p.num_axes != 1:
        raise ExportError('layer "%s": only Scale with one bottom, axis 1 and num_axes 1 '
                          'can be exported' % name)
    shift = layer.blobs[layer.bias_index].data if layer.bias_index is not None else None
    _affine(graph, name, x, tops, layer.blobs[0].data, shift, len(net.blobs[tops[0]].shape))


def _bias(graph, net, layer, name, x, tops):
    p = layer.param.bias_param
    if len(x) != 1 or p.axis != 1 or p.num_axes != 1:
        raise ExportError('layer "%s": only Bias with one bottom, axis 1 and num_axes 1 '
                          'can be exported' % name)
    _affine(graph, name, x, tops, None, layer.blobs[0].data, len(net.blobs[tops[0]].shape))


def _lrn(graph, net, layer, name, x, tops):
    if layer.region != 0:
        raise ExportError('layer "%s": WITHIN_CHANNEL LRN cannot be exported' % name)
    graph.node("LRN", x, [graph.new_value(tops[0], name)], name, size=layer.size,
               alpha=layer.alpha, beta=layer.beta, bias=layer.k)


def _legacy_4d(graph, net, name, x, bottom):
    """The value as (N, C, H, W): the fork layers' legacy 4-D top for 2-D/3-D bottoms."""
    ndim = len(net.blobs[bottom].shape)
    if ndim >= 4:
        return x
    axes = graph.constant(np.arange(ndim, 4, dtype=np.int64), name + "_axes")
    return graph.node("Unsqueeze", [x, axes], [name + "_4d"], name + "_unsqueeze")[0]


def _normalize(graph, net, layer, name, x, tops):
    """happynear's Normalize: x / norm over the channel axis (norm with the epsilon of
    the semantics the layer runs: docs/family.md)."""
    value = _legacy_4d(graph, net, name, x[0], net.bottom_names[name][0])
    axes = graph.constant(np.asarray([1], np.int64), name + "_channel")
    if layer.l1:
        total = graph.node("Abs", [value], [name + "_abs"], name + "_abs")
        epsilon = 1e-6
    else:
        total = graph.node("Mul", [value, value], [name + "_sq"], name + "_sq")
        epsilon = 1e-6 if layer.semantics == "cpu" else 1e-12
    total = graph.node("ReduceSum", total + [axes], [name + "_sum"], name + "_sum",
                       keepdims=1)
    norm_out = graph.new_value(tops[1], name) if len(tops) > 1 else name + "_norm"
    shifted = graph.node("Add", total + [graph.constant(_f32([epsilon]), name + "_eps")],
                         [name + "_shifted"] if not layer.l1 else [norm_out], name + "_eps")
    if not layer.l1:
        # CPU: sqrt(fl(S + 1e-6)); GPU: sqrt(S + 1e-12): both a float32 add, then a root
        graph.node("Sqrt", shifted, [norm_out], name + "_sqrt")
    graph.node("Div", [value, norm_out], [graph.new_value(tops[0], name)], name)


def _norm_l2(graph, net, layer, name, x, tops):
    """xialuxi's NormL2: every sample scaled to unit norm (epsilon 1e-7)."""
    value = _legacy_4d(graph, net, name, x[0], net.bottom_names[name][0])
    squares = graph.node("Mul", [value, value], [name + "_sq"], name + "_sq")
    total = graph.node("ReduceSum", squares + [graph.constant(np.asarray([1, 2, 3], np.int64),
                                                              name + "_axes")],
                       [name + "_sum"], name + "_sum", keepdims=1)
    shifted = graph.node("Add", total + [graph.constant(_f32([1e-7]), name + "_eps")],
                         [name + "_shifted"], name + "_eps")
    norm = graph.node("Sqrt", shifted, [name + "_norm"], name + "_sqrt")
    graph.node("Div", [value] + norm, [graph.new_value(tops[0], name)], name)


def _flip(graph, net, layer, name, x, tops):
    """happynear's Flip: reversed W (and/or H) by a Slice of step -1."""
    value = _legacy_4d(graph, net, name, x[0], net.bottom_names[name][0])
    axes = list(layer.axes)
    out = [graph.new_value(tops[0], name)]
    if not axes:
        graph.node("Identity", [value], out, name)
        return
    big = np.iinfo(np.int64).max
    graph.node("Slice", [value,
                         graph.constant(np.full(len(axes), -1, np.int64), name + "_starts"),
                         graph.constant(np.full(len(axes), -big, np.int64), name + "_ends"),
                         graph.constant(np.asarray(axes, np.int64), name + "_axes"),
                         graph.constant(np.full(len(axes), -1, np.int64), name + "_steps")],
               out, name)


_CONVERTERS = {
    "Convolution": _conv, "Deconvolution": _conv, "PReLU": _prelu, "ReLU": _relu,
    "Sigmoid": _simple("Sigmoid"), "TanH": _simple("Tanh"), "Eltwise": _eltwise,
    "InnerProduct": _inner_product, "Pooling": _pooling, "Softmax": _softmax,
    "Concat": _concat, "Slice": _slice, "Flatten": _reshape, "Reshape": _reshape,
    "BatchNorm": _batch_norm, "Scale": _scale, "Bias": _bias, "LRN": _lrn,
    "Normalize": _normalize, "NormL2": _norm_l2, "Flip": _flip,
}
_TRAINING_ONLY = ("MarginInnerProduct", "SoftmaxWithLoss", "EuclideanLoss",
                  "SigmoidCrossEntropyLoss", "Accuracy", "ImageData", "Data", "HDF5Data",
                  "MemoryData", "DummyData", "Python")
