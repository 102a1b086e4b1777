"""Regression tests for what fuzzing (fuzz/) found: each input, reduced to a minimal
form, must now give a documented error (or a result), never another exception, a hang
or a crash."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers import _C
from pyfacelayers.errors import FormatError, LayerError, ShapeError
from pyfacelayers.fileio import parse_text, read_caffemodel
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.solvers.lr_policy import SolverError

from conftest import child_env


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- binary readers ----------------------------------------------------------------------

def test_caffemodel_v1_layer_name_not_utf8(tmp_path):
    # NetParameter { layers { bottom: "a" top: "a" name: "\xff" type: RELU } }: the
    # protobuf runtime parses the bad name as bytes; the V1 upgrade then failed with
    # UnicodeDecodeError.
    path = _write(tmp_path, "bad.caffemodel", b'\x12\x0b\x12\x01a\x1a\x01a"\x01\xff(\x12')
    with pytest.raises(FormatError, match=r"layers\[0\]\.name is not valid UTF-8"):
        read_caffemodel(path)


def test_solverstate_learned_net_not_utf8(tmp_path):
    # SolverState { iter: 1 learned_net: "\xff" }: os.path.join(str, bytes) TypeError.
    path = _write(tmp_path, "bad.solverstate", b"\x08\x01\x12\x01\xff")
    solver = caffe.get_solver(_solver_text(tmp_path))
    with pytest.raises(FormatError, match="learned_net is not valid UTF-8"):
        solver.restore(path)


def test_copy_from_blob_without_data(tmp_path):
    # layer { name: "fc" type: "InnerProduct" blobs { shape { dim: 3 dim: 4 } } }: the
    # shape matches the net but no values follow (a bare ValueError from blob_to_array).
    path = _write(tmp_path, "empty.caffemodel",
                  b"\xa2\x06\x1a\n\x02fc\x12\x0cInnerProduct:\x06:\x04\n\x02\x03\x04")
    net = caffe.Net(parse_text(
        'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }'
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
        'inner_product_param { num_output: 3 bias_term: false } }',
        caffe_pb2.NetParameter()), caffe.TEST)
    with pytest.raises(FormatError, match='"fc"'):
        net.copy_from(path)


# -- solverstate side file -------------------------------------------------------------

def _solver_text(tmp_path):
    return ('base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot_prefix: "%s/s" '
            'net_param { layer { name: "in" type: "DummyData" top: "x" top: "label" '
            'dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } } '
            'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
            'inner_product_param { num_output: 2 } } '
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" '
            'top: "loss" } }' % tmp_path)


@pytest.mark.parametrize("rng_state", [
    {"bit_generator": "PCG64"},                                  # KeyError 'state'
    {"bit_generator": "MT19937", "state": {"key": [], "pos": 0}},  # ValueError
    {"bit_generator": "PCG64", "state": {"state": 2 ** 200, "inc": 1},
     "has_uint32": 2 ** 70, "uinteger": 0},                       # OverflowError
    [1, 2],
])
def test_side_file_bad_rng_state_refused_before_restore(tmp_path, rng_state):
    solver = caffe.get_solver(_solver_text(tmp_path))
    solver.step(1)
    state_path = solver.snapshot()
    with open(state_path + ".pfl.json") as f:
        extra = json.load(f)
    extra["train_net_rng_states"]["in"] = rng_state
    with open(state_path + ".pfl.json", "w") as f:
        json.dump(extra, f)
    fresh = caffe.get_solver(_solver_text(tmp_path))
    before = fresh.net.params["fc"][0].data.copy()
    with pytest.raises(SolverError, match="corrupt side file"):
        fresh.restore(state_path)
    assert fresh.iter == 0  # nothing was applied
    np.testing.assert_array_equal(fresh.net.params["fc"][0].data, before)


def test_side_file_states_not_maps(tmp_path):
    solver = caffe.get_solver(_solver_text(tmp_path))
    state_path = solver.snapshot()
    with open(state_path + ".pfl.json") as f:
        extra = json.load(f)
    extra["train_net_layer_states"] = [1]
    with open(state_path + ".pfl.json", "w") as f:
        json.dump(extra, f)
    with pytest.raises(SolverError, match="corrupt side file"):
        caffe.get_solver(_solver_text(tmp_path)).restore(state_path)


def test_margin_state_counter_out_of_range():
    net = caffe.Net(parse_text(
        'layer { name: "in" type: "Input" top: "x" top: "label" '
        'input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }'
        'layer { name: "m" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y" '
        'margin_inner_product_param { num_output: 2 type: DOUBLE triplet: true '
        'weight_filler { type: "xavier" } } }', caffe_pb2.NetParameter()), caffe.TRAIN)
    with pytest.raises(LayerError, match="out of range"):
        net.layers[1].set_state({"triplet_draws": 2 ** 70})


# -- layers with empty blobs -------------------------------------------------------------

def _one_layer(input_shapes, layer, dtype=np.float32):
    tops = ["x", "label"][:len(input_shapes)]
    shapes = " ".join("shape { %s }" % " ".join("dim: %d" % d for d in s) for s in input_shapes)
    text = ('force_backward: true layer { name: "in" type: "Input" %s input_param { %s } } '
            'layer { name: "l" %s }' % (" ".join('top: "%s"' % t for t in tops), shapes, layer))
    return caffe.Net(parse_text(text, caffe_pb2.NetParameter()), caffe.TRAIN, dtype=dtype,
                     seed=0)


@pytest.mark.parametrize("layer, shape", [
    ('type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true }', (0, 0, 0, 0)),
    ('type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 0 }', (0, 0, 0, 0)),
    ('type: "BatchNorm" bottom: "x" top: "y"', (0, 0, 0, 0)),
    ('type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
     'kernel_size: 3 stride: 4 weight_filler { type: "gaussian" std: 0.1 } }', (0, 0, 1, 3)),
    ('type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
     'kernel_size: 3 stride: 4 weight_filler { type: "gaussian" std: 0.1 } }', (0, 2, 4)),
])
def test_zero_size_blobs_run(layer, shape):
    # Each raised ValueError (reshape(..., -1) of an empty array), ZeroDivisionError or
    # "zero-size array to reduction" before.
    import warnings
    net = _one_layer([shape], layer)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice
        net.forward()
        net.backward()
    assert net.blobs["y"].data.size == 0


@pytest.mark.parametrize("shapes, layer, message", [
    ([(1, 0), (1,)], 'type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "y" '
     'loss_param { ignore_label: -1 }', "no classes"),
    ([(1, 3, 0, 1)], 'type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
     'num_output: 4 kernel_size: 3 stride: 2 }', "empty spatial axis"),
    ([(0, 1, 4, 0), (0,)], 'type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y" '
     'margin_inner_product_param { num_output: 2 axis: -1 weight_filler { type: "xavier" } }',
     "weight_filler"),
])
def test_degenerate_layers_refused(shapes, layer, message):
    # IndexError (take_along_axis), col2im ValueError, bare filler ValueError before.
    with pytest.raises(LayerError, match=message):
        net = _one_layer(shapes, layer)
        net.blobs["label"].data[...] = -1 if "label" in net.blobs else 0
        net.forward()


@pytest.mark.parametrize("layer, field", [
    # The fuzzer's input (net target): a valid uint32 stride that built, then failed at
    # Forward with a bare ValueError from im2col.
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
     'kernel_size: 3 stride: 2147483648 }', "convolution_param.stride is 2147483648"),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
     'kernel_h: 3 kernel_w: 3 stride_h: 1 stride_w: 4294967295 }',
     "convolution_param.stride_w is 4294967295"),
    ('type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
     'kernel_size: 3 kernel_size: 2147483648 }', r"convolution_param.kernel_size\[1\] is 2147483648"),
    ('type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
     'kernel_size: 3 dilation: 2147483648 }', "convolution_param.dilation is 2147483648"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 '
     'stride: 2147483648 }', "pooling_param.stride is 2147483648"),
    ('type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 3 '
     'pad_h: 2147483648 pad_w: 0 }', "pooling_param.pad_h is 2147483648"),
])
def test_sizes_over_int32_refused_at_setup(layer, field):
    with pytest.raises(LayerError, match=r'layer "l" \((Convolution|Deconvolution|Pooling)'
                                         r'\): %s, over 2147483647' % field):
        _one_layer([(1, 2, 5, 5)], layer)  # at construction: no forward needed


# -- kernels -----------------------------------------------------------------------------
def test_normalize_rows_of_an_empty_tall_weight_allocates_nothing():
    # A (2^31, 0) weight holds no values, but the kernel sized a buffer by its rows:
    # std::bad_alloc (a bare MemoryError) under the fuzzer's address-space limit.
    with pytest.raises(ValueError, match="zero norm.*no columns"):
        _C.margin_normalize_rows(np.zeros((2 ** 31, 0), np.float32))
    _C.margin_normalize_rows(np.zeros((0, 4), np.float32))   # no rows: nothing to do



def test_im2col_huge_kernel_does_not_write_out_of_bounds():
    # kernel 2^32 x 2^32: channels * kh * kw wrapped to 0, so an empty column buffer
    # passed the shape check and the kernel wrote far past it (segfault). Run in a
    # child so that a regression fails this test instead of killing the suite.
    code = ("import numpy as np\nfrom pyfacelayers import _C\n"
            "im = np.ones((1, 1, 1, 1), np.float32); col = np.zeros((0, 1, 4), np.float32)\n"
            "try:\n    _C.im2col(im, col, 2**32, 2**32, 2**31, 2**31, 1, 1, 1, 1)\n"
            "except ValueError as e:\n    print('refused', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=child_env())
    assert out.returncode == 0, out.stderr
    assert "refused" in out.stdout


@pytest.mark.parametrize("call", [
    lambda: _C.im2col(np.zeros((0, 1, 3, 3), np.float32),
                      np.zeros((2 ** 33 + 1, 0, 9), np.float32), 2 ** 32 + 1, 1, 0, 0, 1, 1,
                      2 ** 32, 1),
    lambda: _C.im2col_nd(np.zeros((0, 1, 3), np.float32), np.zeros((0, 0, 3), np.float32),
                         [2 ** 40], [0], [1], [2 ** 40]),
    lambda: _C.max_pool_forward(np.zeros((1, 1, 3, 3), np.float32),
                                np.zeros((1, 1, 2, 2), np.float32),
                                np.zeros((1, 1, 2, 2), np.int64), 2 ** 40, 2, 1, 1, 0, 0),
    lambda: _C.ave_pool_forward(np.zeros((1, 1, 3, 3), np.float32),
                                np.zeros((1, 1, 2 ** 40, 0), np.float32), 2, 2,
                                2 ** 31 - 1, 1, 0, 0),
])
def test_kernel_window_parameters_bounded(call):
    with pytest.raises(ValueError):
        call()


def test_empty_buffers_return_at_once():
    # Zero-size arrays with huge axes: the window loops walked the axes for ages.
    _C.ave_pool_forward(np.zeros((1, 1, 3, 3), np.float32),
                        np.zeros((1, 1, 2 ** 40, 0), np.float32), 2, 2, 1, 1, 0, 0)
    _C.im2col(np.zeros((0, 1, 3, 3), np.float32), np.zeros((1, 0, 9), np.float32),
              1, 1, 0, 0, 1, 1, 1, 1)
    bottom_diff = np.ones((1, 1, 3, 3), np.float32)
    _C.ave_pool_backward(np.zeros((1, 1, 0, 2), np.float32), bottom_diff, 2, 2, 1, 1, 0, 0)
    assert not bottom_diff.any()


def test_gpu_window_parameters_bounded_alike():
    # The CUDA twins take the same 32-bit bound (checked in Python, no device needed).
    from pyfacelayers.gpu import vision
    vision._check_window("im2col", 3, 2 ** 31 - 1)
    with pytest.raises(ValueError, match="at most 2147483647"):
        vision._check_window("im2col", 3, 2 ** 32)


@pytest.mark.parametrize("layer", [
    'type: "Input" top: "x" input_param { shape { dim: 2 dim: -1 } }',
    'type: "DummyData" top: "x" dummy_data_param { shape { dim: 2 dim: -1 } }',
])
def test_negative_input_dimension(layer):
    # A bare ValueError from Blob.reshape before (input_dim: -1 in a prototxt).
    with pytest.raises(ShapeError, match=r'layer "in" .*invalid shape \(2, -1\)'):
        caffe.Net(parse_text('layer { name: "in" %s }' % layer, caffe_pb2.NetParameter()),
                  caffe.TEST)


def test_in_place_layer_changing_shape_refused():
    # InnerProduct computing in place ("pool" -> "pool") reshaped its own input: a bare
    # "cannot reshape array" ValueError at Forward before.
    from pyfacelayers.errors import NetError
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 6 } } }'
            'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "x" '
            'inner_product_param { num_output: 3 } }')
    with pytest.raises(NetError, match="in place"):
        caffe.Net(parse_text(text, caffe_pb2.NetParameter()), caffe.TEST)


def test_side_file_caffemodel_record_must_be_a_map(tmp_path):
    solver = caffe.get_solver(_solver_text(tmp_path))
    state_path = solver.snapshot()
    with open(state_path + ".pfl.json") as f:
        extra = json.load(f)
    extra["caffemodel"] = 5
    with open(state_path + ".pfl.json", "w") as f:
        json.dump(extra, f)
    with pytest.raises(SolverError, match="corrupt side file"):
        caffe.get_solver(_solver_text(tmp_path)).restore(state_path)
