"""Target: the layers built on the kernels, inside a one-layer net fed from Input
blobs: MarginInnerProduct (SINGLE..QUADRUPLE, triplet, semihard), Convolution,
Deconvolution, Pooling, PReLU, InnerProduct, Softmax/SoftmaxWithLoss, Eltwise, LRN,
BatchNorm, Scale, Accuracy, Crop; random parameters, shapes (0-size, 1, mismatched), float32
or float64, values with NaN/inf, labels valid or not; then Forward, Backward, a
reshape of an input and Forward again."""

import numpy as np

import pyfacelayers as caffe
from pyfacelayers.fileio import parse_text
from pyfacelayers.proto import caffe_pb2

from .decoder import Decoder
from .expected import LAYER_ERRORS

NAME = "layers"
DOCUMENTED = LAYER_ERRORS
TEXT = False
MAX_LEN = 256


def _dims(d, ndim):
    """Mostly 1..4, sometimes 0 or larger."""
    return [1 + d.byte() % 4 if d.byte() < 225 else d.choice([0, 0, 7, 9]) for _ in range(ndim)]


def _count(d):
    """A num_output: mostly 1..5, sometimes 0 or edge values."""
    return 1 + d.byte() % 5 if d.byte() < 235 else d.choice([0, 2 ** 31 - 1, 1000])


def _margin(d):
    m, k, n = d.int(0, 4), d.int(0, 4), _count(d)
    p = ('margin_inner_product_param { num_output: %d type: %s base: %r gamma: %r power: %r '
         'lambda_min: %r iteration: %d triplet: %s semihard: %s axis: %d '
         'weight_filler { type: "%s" } }'
         % (n, d.choice(["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"]),
            d.float(), d.float(), d.float(), d.float(), d.small_int(),
            d.choice(["false", "true"]), d.choice(["false", "true"]),
            d.choice([1, 1, 1, 1, 1, 0, 2, -1]),
            d.choice(["xavier", "gaussian", "constant"])))
    tops = ["out", "lambda"][:d.int(1, 2)]
    extra = _dims(d, d.int(0, 2)) if d.byte() < 60 else []
    return "MarginInnerProduct", p, [("x", [m, k] + extra), ("label", [m])], tops, n


def _conv(d, kind):
    nd = d.choice([4, 4, 4, 3, 5, 2])
    p = ('%s { num_output: %d kernel_size: %d pad: %d stride: %d dilation: %d group: %d '
         'bias_term: %s weight_filler { type: "gaussian" std: 0.1 } }'
         % ("convolution_param", _count(d), d.choice([1, 1, 2, 3, 0, 5]), d.small_int() % 3,
            d.choice([1, 1, 2, 3, 0, 2 ** 31 - 1, 2 ** 31]), d.choice([1, 1, 1, 2, 0]),
            d.choice([1, 1, 1, 2, 0, 3]), d.choice(["true", "false"])))
    return kind, p, [("x", _dims(d, nd))], ["out"], 0


def _pool(d):
    pool = d.choice(["MAX", "AVE", "MAX", "AVE", "STOCHASTIC"])
    p = ('pooling_param { pool: %s kernel_size: %d stride: %d pad: %d global_pooling: %s }'
         % (pool, d.choice([1, 2, 2, 3, 0, 9]), d.choice([1, 1, 2, 3, 0, 2 ** 31 - 1, 2 ** 31]),
            d.choice([0, 0, 1, 2]), d.choice(["false", "false", "true"])))
    tops = ["out", "mask"] if pool == "MAX" and d.bool() else ["out"]
    return "Pooling", p, [("x", _dims(d, d.choice([4, 4, 4, 3, 5])))], tops, 0


def _simple(d):
    kind = d.choice(["PReLU", "Softmax", "LRN", "BatchNorm", "Scale", "InnerProduct"])
    params = {
        "PReLU": "prelu_param { channel_shared: %s }" % d.choice(["false", "true"]),
        "Softmax": "softmax_param { axis: %d }" % d.choice([1, 0, -1, 3]),
        "LRN": "lrn_param { local_size: %d alpha: %r beta: %r norm_region: %s }"
               % (d.choice([5, 3, 1, 2, 0]), d.float(), d.float(),
                  d.choice(["ACROSS_CHANNELS", "WITHIN_CHANNEL"])),
        "BatchNorm": "batch_norm_param { use_global_stats: %s eps: %r }"
                     % (d.choice(["false", "true"]), d.float()),
        "Scale": "scale_param { axis: %d bias_term: %s }" % (d.choice([1, 0, 2]),
                                                             d.choice(["false", "true"])),
        "InnerProduct": "inner_product_param { num_output: %d axis: %d transpose: %s "
                        "weight_filler { type: \"xavier\" } }"
                        % (_count(d), d.choice([1, 1, 0, 2, -1]), d.choice(["false", "true"])),
    }
    return kind, params[kind], [("x", _dims(d, d.choice([4, 4, 2, 3, 1])))], ["out"], 0


def _loss(d):
    kind = d.choice(["SoftmaxWithLoss", "Accuracy"])
    m, n = d.int(0, 4), _count(d) % 6
    extra = _dims(d, d.choice([0, 0, 2]))
    p = ("loss_param { ignore_label: %d normalization: %s } accuracy_param { top_k: %d }"
         % (d.choice([-1, 0, 1, 255]), d.choice(["VALID", "BATCH_SIZE", "FULL", "NONE"]),
            d.choice([1, 1, 1, 2, 5, 0])))
    label = [m] + extra if extra and d.bool() else [m]
    return kind, p, [("x", [m, n] + extra), ("label", label)], ["out"], n


def _eltwise(d):
    shape = _dims(d, d.int(1, 4))
    other = shape if d.byte() < 200 else _dims(d, len(shape))
    op = d.choice(["SUM", "PROD", "MAX"])
    coeffs = d.choice([0, 2, 2, 1, 3]) if op == "SUM" else d.choice([0, 0, 0, 2])
    p = "eltwise_param { operation: %s %s }" % (op, " ".join("coeff: %r" % d.float()
                                                           for _ in range(coeffs)))
    return "Eltwise", p, [("x", shape), ("y", other)], ["out"], 0


def _crop(d):
    shape = _dims(d, d.int(1, 5))
    reference = shape if d.byte() < 60 else _dims(d, d.choice([len(shape)] * 4 + [1, 5]))
    offsets = " ".join("offset: %d" % d.choice([0, 0, 1, 2, 2 ** 32 - 1])
                       for _ in range(d.choice([0, 1, 1, 2, 3])))
    p = "crop_param { axis: %d %s }" % (d.choice([2, 2, 1, 0, -1, 4]), offsets)
    return "Crop", p, [("x", shape), ("y", reference)], ["out"], 0


FAMILIES = [_margin, _margin, lambda d: _conv(d, "Convolution"),
            lambda d: _conv(d, "Deconvolution"), _pool, _simple, _loss, _eltwise, _crop]


def _text(kind, param, bottoms, tops, classes=0):
    shapes = " ".join("shape { %s }" % " ".join("dim: %d" % v for v in shape)
                      for _, shape in bottoms)
    tops_text = " ".join('top: "%s"' % name for name, _ in bottoms)
    bottoms_text = " ".join('bottom: "%s"' % name for name, _ in bottoms)
    return ('force_backward: true\n'
            'layer { name: "in" type: "Input" %s input_param { %s } }\n'
            'layer { name: "l" type: "%s" %s %s %s }\n'
            % (tops_text, shapes, kind, bottoms_text,
               " ".join('top: "%s"' % t for t in tops), param))


def _fill(d, net, bottoms, classes):
    for name, _ in bottoms:
        blob = net.blobs[name]
        values = d.values(blob.data.size, blob.data.dtype) if blob.data.size else blob.data
        if name == "label" and blob.data.size:
            n = classes if classes and d.byte() < 230 else d.small_int() % 6
            values = np.abs(np.nan_to_num(values)).astype(np.int64) % max(n, 1)
            values = values.astype(blob.data.dtype)
            if d.byte() < 60:
                values[d.int(0, values.size - 1)] = d.choice([-1.0, 5.0, 0.5, np.nan, np.inf,
                                                              1e10, 255.0])
        blob.data[...] = np.reshape(values, blob.data.shape)


def build(data):
    """The decoder, prototxt text, bottoms, label range and dtype ``data`` decodes to."""
    d = Decoder(data)
    kind, param, bottoms, tops, classes = FAMILIES[d.int(0, len(FAMILIES) - 1)](d)
    return (d, _text(kind, param, bottoms, tops), bottoms, classes,
            d.choice([np.float32, np.float64]))


def seeds():
    return [bytes([f]) + bytes(range(i, i + 60)) for f in range(len(FAMILIES))
            for i in (0, 3, 11)]


def one_input(data):
    d, text, bottoms, classes, dtype = build(data)
    net_param = parse_text(text, caffe_pb2.NetParameter())
    with np.errstate(all="ignore"):
        net = caffe.Net(net_param, caffe.TRAIN, dtype=dtype, seed=0)
        _fill(d, net, bottoms, classes)
        net.forward()
        net.backward()
        if d.bool() and bottoms:
            name, shape = bottoms[d.int(0, len(bottoms) - 1)]
            net.blobs[name].reshape(*[max(0, v + d.int(-1, 1)) for v in shape])
            _fill(d, net, bottoms, classes)
            net.forward()
            net.backward()
