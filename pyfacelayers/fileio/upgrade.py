"""Upgrade legacy Caffe definitions to the current form, as Caffe's upgrade_proto does.

- V1 nets (``layers {}`` with enum types, ``blobs_lr``/``weight_decay``) become
  ``layer {}`` with string types and ``param { lr_mult decay_mult }``.
- Data-layer transformation fields (scale, mean_file, crop_size, mirror) move from the
  data parameters to ``transform_param``.
- A net-level ``input:`` with ``input_dim``/``input_shape`` becomes an ``Input`` layer
  named "input" (an ``input`` without dims, as old caffemodels have, is just dropped).
- BatchNorm layers declaring three params get lr_mult = decay_mult = 0 on them.
- A solver's ``solver_type`` enum becomes the ``type`` string.
V0 nets (the ``layer`` field inside ``layers``) are older than any file this project
targets and are refused with a clear message.
"""

from ..errors import FormatError
from ..proto import caffe_pb2

_V1 = caffe_pb2.V1LayerParameter
V1_LAYER_TYPES = {
    _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy", _V1.ARGMAX: "ArgMax", _V1.BNLL: "BNLL",
    _V1.CONCAT: "Concat", _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution", _V1.DECONVOLUTION: "Deconvolution", _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData", _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise", _V1.EXP: "Exp", _V1.FLATTEN: "Flatten", _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss", _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData", _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct", _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", _V1.MVN: "MVN",
    _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU", _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax", _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split",
    _V1.SLICE: "Slice", _V1.TANH: "TanH", _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# Sub-messages a V1 layer shares with LayerParameter under the same name.
_V1_COPIED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param", "center_param", "normalize_param",
)

SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


def upgrade_net(net, path=None):
    """Upgrade a NetParameter in place to the current format; returns it."""
    if any(v1.HasField("layer") for v1 in net.layers):
        raise FormatError("V0 layer definitions (a 'layer' inside 'layers') are too old to "
                          "read; upgrade the file with an old Caffe first", path)
    _upgrade_data_transformation(net)
    if len(net.layers):
        if len(net.layer):
            raise FormatError("the net mixes 'layer' and legacy 'layers' definitions", path)
        for v1 in net.layers:
            _upgrade_v1_layer(v1, net.layer.add(), path)
        net.ClearField("layers")
    _upgrade_input(net, path)
    _upgrade_batch_norm(net)
    return net


def _upgrade_v1_layer(v1, layer, path):
    if v1.HasField("name"):
        layer.name = v1.name
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        if v1.type not in V1_LAYER_TYPES:
            raise FormatError('V1 layer "%s" has type %s, which has no current equivalent'
                              % (v1.name, _V1.LayerType.Name(v1.type)), path)
        layer.type = V1_LAYER_TYPES[v1.type]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    def param(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param(i).share_mode = mode  # STRICT/PERMISSIVE have the same values in both enums
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in _V1_COPIED_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))


def _upgrade_data_transformation(net):
    moved = ("scale", "mean_file", "crop_size", "mirror")
    for v1 in net.layers:
        for field in ("data_param", "image_data_param", "window_data_param"):
            if not v1.HasField(field):
                continue
            source = getattr(v1, field)
            for name in moved:
                if source.HasField(name):
                    setattr(v1.transform_param, name, getattr(source, name))
                    source.ClearField(name)


def _upgrade_input(net, path=None):
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape and len(net.input_shape) != len(net.input):
        raise FormatError("%d 'input' names but %d 'input_shape's"
                          % (len(net.input), len(net.input_shape)), path)
    if has_dim and not has_shape and len(net.input_dim) != 4 * len(net.input):
        raise FormatError("%d 'input' names need %d 'input_dim' values (4 each), got %d"
                          % (len(net.input), 4 * len(net.input), len(net.input_dim)), path)
    if has_shape or has_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = [layer] + [caffe_pb2.LayerParameter.FromString(l.SerializeToString())
                            for l in net.layer]
        net.ClearField("layer")
        for l in layers:
            net.layer.add().CopyFrom(l)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _upgrade_batch_norm(net):
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0
                spec.decay_mult = 0


def upgrade_solver(solver, path=None):
    """Turn the legacy ``solver_type`` enum into the ``type`` string, and upgrade the
    nets the solver holds inline (``net_param`` etc.), in place."""
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net(getattr(solver, field), path)
    for net in solver.test_net_param:
        upgrade_net(net, path)
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise FormatError("the solver sets both the legacy 'solver_type' and 'type'; "
                              "keep only 'type'", path)
        solver.type = SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
    return solver
