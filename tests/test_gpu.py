"""The GPU backend (cupy + the CUDA module) against the CPU one: every layer type,
the MarginInnerProduct fixture set A, the B1_small net, a few solver iterations.

Skips cleanly without cupy, without a CUDA device, or without the CUDA module.
Tolerances: one layer 1e-5 (float32) / 1e-10 (float64) of the norm; whole nets 1e-4.
"""

import glob
import json
import os

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import require_gpu  # noqa: E402

cupy = require_gpu()

from caffe_ref import load, portable_labels, portable_values  # noqa: E402
from conftest import FIXTURES, assert_close, shared_path  # noqa: E402

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers import backend  # noqa: E402
from pyfacelayers.blob import Blob  # noqa: E402
from pyfacelayers.errors import LayerError  # noqa: E402
from pyfacelayers.gpu import cudnn as cudnn_binding  # noqa: E402
from pyfacelayers.layers import create_layer  # noqa: E402
from pyfacelayers.layers.margin_inner_product import MarginInnerProduct  # noqa: E402
from pyfacelayers.proto import caffe_pb2  # noqa: E402

CUDNN_OK, CUDNN_WHY = cudnn_binding.available()
needs_cudnn = pytest.mark.skipif(not CUDNN_OK, reason="cuDNN not available: " + CUDNN_WHY)
ENGINES = ["caffe", pytest.param("cudnn", marks=needs_cudnn)]

TOL = {np.float32: 1e-5, np.float64: 1e-10}
NET_TOL = 1e-4
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def cpu_mode_after():
    """Every test leaves the process in CPU mode, whatever it did."""
    yield
    backend.set_mode_cpu()


def _mode(xp):
    if xp is cupy:
        backend.set_mode_gpu()
    else:
        backend.set_mode_cpu()


def _host(a):
    return backend.to_numpy(a).copy()


# -- one layer, run on both backends -----------------------------------------------------
def run_layer(xp, text, bottoms, dtype, params=None, top_count=1, in_place=False,
              propagate=None, phase=caffe_pb2.TRAIN, seed=7, top_diff_seed=99):
    """Set up a layer from prototxt ``text`` on ``xp`` (numpy or cupy), run forward and
    backward once with fixed inputs and top diffs. Returns a dict of host arrays."""
    _mode(xp)
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = create_layer(lp, phase=phase, dtype=dtype, rng=np.random.default_rng(seed))
    bottom = []
    for a in bottoms:
        blob = Blob(a.shape, dtype=dtype, xp=xp)
        blob.data = a
        bottom.append(blob)
    top = [bottom[0]] if in_place else [Blob((), dtype=dtype, xp=xp) for _ in range(top_count)]
    layer.setup(bottom, top)
    if params is not None:
        for blob, value in zip(layer.blobs, params):
            blob.data = value
    initial = [_host(b.data) for b in layer.blobs]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    out = {"top": [_host(t.data) for t in top], "params_initial": initial}
    rng = np.random.default_rng(top_diff_seed)
    for t in top:
        if layer.is_loss:
            t.diff = np.ones(t.shape, dtype)
        else:
            t.diff = rng.standard_normal(t.shape).astype(dtype)
    for b in bottom:
        b.diff = np.full(b.shape, 123.0, dtype)  # poison: overwritten by backward
    for p in layer.blobs:
        p.diff = np.zeros(p.shape, dtype)
    layer.backward(top, propagate or [True] * len(bottom), bottom)
    out["bottom_diff"] = [_host(b.diff) for b in bottom]
    out["param_diff"] = [_host(p.diff) for p in layer.blobs]
    out["params_after"] = [_host(p.data) for p in layer.blobs]
    return out


def compare(cpu, gpu, dtype, what, check_bottom=None):
    tol = TOL[dtype]
    for i, (c, g) in enumerate(zip(cpu["top"], gpu["top"])):
        assert_close(g, c, tol, "%s top %d" % (what, i))
    diffs = cpu["bottom_diff"] if check_bottom is None else \
        [d for d, keep in zip(cpu["bottom_diff"], check_bottom) if keep]
    gdiffs = gpu["bottom_diff"] if check_bottom is None else \
        [d for d, keep in zip(gpu["bottom_diff"], check_bottom) if keep]
    for i, (c, g) in enumerate(zip(diffs, gdiffs)):
        assert_close(g, c, tol, "%s bottom diff %d" % (what, i))
    for i, (c, g) in enumerate(zip(cpu["param_diff"], gpu["param_diff"])):
        assert_close(g, c, tol, "%s param diff %d" % (what, i))
    for i, (c, g) in enumerate(zip(cpu["params_after"], gpu["params_after"])):
        assert_close(g, c, tol, "%s param after %d" % (what, i))


def both(text, bottoms, dtype, check_bottom=None, **kwargs):
    cpu = run_layer(np, text, bottoms, dtype, **kwargs)
    kwargs["params"] = cpu["params_initial"]
    gpu = run_layer(cupy, text, bottoms, dtype, **kwargs)
    compare(cpu, gpu, dtype, text.split("\n")[0].strip(), check_bottom)
    return cpu, gpu


def rand(shape, seed, scale=1.0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def labels(m, n, seed=3):
    return np.random.default_rng(seed).integers(0, n, m).astype(np.float64)


IMG = (2, 3, 9, 8)

# (prototxt, bottoms (shapes or arrays), extra kwargs). Labels are arrays.
LAYER_CASES = {
    "conv3x3": ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
                'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" '
                'std: 0.1 } }', [IMG], {}),
    "conv_stride_dilation_group": (
        'type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 '
        'stride: 2 pad_h: 2 pad_w: 1 dilation: 2 group: 3 weight_filler { type: "gaussian" '
        'std: 0.3 } bias_term: false }', [(2, 6, 11, 9)], {}),
    "conv1d": ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 '
               'weight_filler { type: "gaussian" std: 0.3 } }', [(2, 2, 10)], {}),
    "deconv": ('type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 4 '
               'stride: 2 pad: 1 weight_filler { type: "gaussian" std: 0.3 } bias_filler { '
               'type: "gaussian" std: 0.1 } }', [IMG], {}),
    "pool_max_overlap": ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
                         [IMG], {}),
    "pool_max_pad_mask": ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 '
                          'pad: 1 }', [IMG], {"top_count": 2}),
    "pool_ave_pad": ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                     'pad: 1 }', [IMG], {}),
    "pool_global": ('type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
                    [IMG], {}),
    "prelu": ('type: "PReLU" prelu_param { filler { type: "uniform" min: 0 max: 0.5 } }',
              [IMG], {}),
    "prelu_in_place": ('type: "PReLU" prelu_param { filler { type: "uniform" min: 0 max: 0.5 } }',
                       [IMG], {"in_place": True}),
    "prelu_shared": ('type: "PReLU" prelu_param { channel_shared: true }', [IMG], {}),
    "inner_product": ('type: "InnerProduct" inner_product_param { num_output: 5 '
                      'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: '
                      '"gaussian" std: 0.1 } }', [IMG], {}),
    "inner_product_t": ('type: "InnerProduct" inner_product_param { num_output: 5 transpose: '
                        'true weight_filler { type: "gaussian" std: 0.3 } }', [(4, 7)], {}),
    "batch_norm": ('type: "BatchNorm"', [IMG], {}),
    "batch_norm_global": ('type: "BatchNorm" batch_norm_param { use_global_stats: true }',
                          [IMG], {"params": [np.arange(3.0), np.arange(3.0) + 1, [2.0]]}),
    "scale": ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" std: 1 } '
              'bias_filler { type: "gaussian" std: 1 } }', [IMG], {}),
    "bias": ('type: "Bias" bias_param { filler { type: "gaussian" std: 1 } }', [IMG], {}),
    "relu": ('type: "ReLU" relu_param { negative_slope: 0.1 }', [IMG], {}),
    "relu_in_place": ('type: "ReLU"', [IMG], {"in_place": True}),
    "sigmoid": ('type: "Sigmoid"', [IMG], {}),
    "tanh": ('type: "TanH"', [IMG], {}),
    "dropout": ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [IMG], {}),
    "lrn_across": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }', [IMG], {}),
    "lrn_within": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 '
                   'norm_region: WITHIN_CHANNEL }', [IMG], {}),
    "eltwise_sum": ('type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }',
                    [IMG, IMG], {}),
    "eltwise_prod": ('type: "Eltwise" eltwise_param { operation: PROD }', [IMG, IMG], {}),
    "eltwise_max": ('type: "Eltwise" eltwise_param { operation: MAX }', [IMG, IMG, IMG], {}),
    "concat": ('type: "Concat" concat_param { axis: 1 }', [IMG, (2, 2, 9, 8)], {}),
    "slice": ('type: "Slice" slice_param { axis: 1 slice_point: 1 }', [IMG],
              {"top_count": 2}),
    "split": ('type: "Split"', [IMG], {"top_count": 2}),
    "crop": ('type: "Crop" crop_param { axis: 2 offset: 1 offset: 2 }', [IMG, (2, 3, 6, 5)],
             {"check_bottom": [1, 0], "propagate": [True, False]}),
    "flatten": ('type: "Flatten"', [IMG], {}),
    "reshape": ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [IMG], {}),
    "softmax": ('type: "Softmax"', [(4, 7)], {}),
    "softmax_loss": ('type: "SoftmaxWithLoss"', [(6, 5), labels(6, 5)],
                     {"check_bottom": [1, 0], "propagate": [True, False]}),
    "euclidean_loss": ('type: "EuclideanLoss"', [(4, 7), (4, 7)], {}),
    "sigmoid_xent": ('type: "SigmoidCrossEntropyLoss"',
                     [(4, 7), (np.random.default_rng(5).random((4, 7)) > 0.5).astype(float)],
                     {"check_bottom": [1, 0], "propagate": [True, False]}),
    "accuracy": ('type: "Accuracy" accuracy_param { top_k: 2 }', [(6, 5), labels(6, 5)],
                 {"check_bottom": [0, 0], "propagate": [False, False]}),
}
for _name, _type in (("margin_single", "SINGLE"), ("margin_double", "DOUBLE"),
                     ("margin_triple", "TRIPLE"), ("margin_quadruple", "QUADRUPLE")):
    LAYER_CASES[_name] = (
        'type: "MarginInnerProduct" margin_inner_product_param { num_output: 12 type: %s '
        'base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 1600 weight_filler { '
        'type: "gaussian" std: 0.3 } }' % _type, [(16, 10), labels(16, 12)],
        {"top_count": 2, "check_bottom": [1, 0], "propagate": [True, False]})
LAYER_CASES["margin_semihard_triplet"] = (
    'type: "MarginInnerProduct" margin_inner_product_param { num_output: 6 type: QUADRUPLE '
    'base: 1000 gamma: 0.12 power: 1 lambda_min: 5 iteration: 0 semihard: true triplet: true '
    'weight_filler { type: "gaussian" std: 0.3 } }', [(32, 10), labels(32, 6)],
    {"check_bottom": [1, 0], "propagate": [True, False]})
LAYER_CASES["margin_semihard_single"] = (
    'type: "MarginInnerProduct" margin_inner_product_param { num_output: 6 type: SINGLE '
    'semihard: true weight_filler { type: "gaussian" std: 0.3 } }', [(32, 10), labels(32, 6)],
    {"check_bottom": [1, 0], "propagate": [True, False]})


def _bottoms(specs, dtype):
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, tuple):
            out.append(rand(spec, 10 + i, dtype=dtype))
        else:
            out.append(np.asarray(spec, dtype=dtype))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_gpu_matches_cpu(case, dtype):
    text, specs, kwargs = LAYER_CASES[case]
    kwargs = dict(kwargs)
    if "params" in kwargs:
        kwargs["params"] = [np.asarray(p, dtype) for p in kwargs["params"]]
    text = 'name: "%s" %s' % (case, text)
    both(text, _bottoms(specs, dtype), dtype, **kwargs)


# -- the cuDNN engine ---------------------------------------------------------------------
@pytest.fixture
def cudnn_calls(monkeypatch):
    """The directions cuDNN ran in (to show a test really took the cuDNN path)."""
    calls = []
    run = cudnn_binding.Convolution2d._run

    def counting(self, direction, *args):
        calls.append(direction)
        return run(self, direction, *args)
    monkeypatch.setattr(cudnn_binding.Convolution2d, "_run", counting)
    return calls


CONV_CASES = ("conv3x3", "conv_stride_dilation_group", "conv1d")


def _cudnn_case(case):
    text, specs, kwargs = LAYER_CASES[case]
    text = text.replace("convolution_param {", "convolution_param { engine: CUDNN", 1)
    return 'name: "%s" %s' % (case, text), specs, kwargs


@needs_cudnn
@pytest.mark.parametrize("mode", cudnn_binding.ALGO_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_cudnn_convolution_matches_cpu(case, dtype, mode, monkeypatch, cudnn_calls):
    monkeypatch.setenv("PYFACELAYERS_CUDNN_ALGOS", mode)
    text, specs, kwargs = _cudnn_case(case)
    both(text, _bottoms(specs, dtype), dtype, **kwargs)
    assert sorted(set(cudnn_calls)) == ["backward_data", "backward_filter", "forward"]


@needs_cudnn
def test_cudnn_engine_leaves_an_empty_batch_to_im2col(cudnn_calls):
    text, _, kwargs = _cudnn_case("conv3x3")
    both(text, [np.zeros((0,) + IMG[1:])], np.float32, **kwargs)
    assert cudnn_calls == []


@needs_cudnn
def test_cudnn_reproducible_mode_gives_the_same_bits_twice(cudnn_calls):
    text, specs, kwargs = _cudnn_case("conv_stride_dilation_group")
    bottoms = _bottoms(specs, np.float32)
    first = run_layer(cupy, text, bottoms, np.float32, **kwargs)
    second = run_layer(cupy, text, bottoms, np.float32, **kwargs)
    for key in ("top", "bottom_diff", "param_diff"):
        for a, b in zip(first[key], second[key]):
            np.testing.assert_array_equal(a, b, err_msg=key)
    assert cudnn_calls


def test_every_computing_layer_type_is_covered():
    """A new layer type must get a GPU case here (data layers excepted)."""
    from pyfacelayers.layers.base import registered_types
    covered = {text_format.Parse(t, caffe_pb2.LayerParameter()).type
               for t, _, _ in LAYER_CASES.values()}
    data = {"Input", "Data", "DummyData", "ImageData", "MemoryData", "HDF5Data", "Silence",
            "WindowData", "HDF5Output"}
    data.add("Python")  # runs the user's code (tests/test_python_layer.py)
    missing = sorted(set(registered_types()) - covered - data)
    assert not missing, "layer types without a GPU-vs-CPU case: %s" % missing


def test_silence_and_blobs_stay_on_device():
    _mode(cupy)
    blob = Blob((2, 3))
    assert blob.xp is cupy and isinstance(blob.data, cupy.ndarray)
    lp = text_format.Parse('name: "s" type: "Silence"', caffe_pb2.LayerParameter())
    layer = create_layer(lp)
    layer.setup([blob], [])
    layer.forward([blob], [])
    blob.diff = np.ones((2, 3))
    layer.backward([], [True], [blob])
    assert float(abs(blob.diff).sum()) == 0.0


# -- kernels directly ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_im2col_col2im_match_cpu(dtype):
    from pyfacelayers import _C
    from pyfacelayers.gpu import vision
    rng = np.random.default_rng(1)
    for kh, kw, ph, pw, sh, sw, dh, dw in [(3, 3, 1, 1, 1, 1, 1, 1), (2, 3, 0, 2, 2, 1, 2, 3),
                                           (5, 1, 2, 0, 3, 2, 1, 1)]:
        im = rng.standard_normal((3, 4, 10, 9)).astype(dtype)
        oh = (10 + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        ow = (9 + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        col = np.empty((4 * kh * kw, 3, oh * ow), dtype)
        args = (kh, kw, ph, pw, sh, sw, dh, dw)
        _C.im2col(im, col, *args)
        gcol = cupy.empty(col.shape, dtype)
        vision.im2col(cupy.asarray(im), gcol, *args)
        np.testing.assert_array_equal(gcol.get(), col)
        back = np.empty_like(im)
        _C.col2im(col, back, *args)
        gback = cupy.empty(im.shape, dtype)
        vision.col2im(gcol, gback, *args)
        np.testing.assert_array_equal(gback.get(), back)  # same summation order


def test_gpu_kernel_doors_reject_bad_arrays():
    from pyfacelayers.gpu import margin, vision
    w = cupy.ones((4, 3), np.float32)
    with pytest.raises(TypeError):
        margin.margin_normalize_rows(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError):
        margin.margin_normalize_rows(cupy.ones((4, 6), np.float32)[:, ::2])
    w[2] = 0
    with pytest.raises(ValueError, match="row 2"):
        margin.margin_normalize_rows(w)
    assert float(w[0, 0]) == 1.0  # unchanged
    with pytest.raises(ValueError, match="column buffer|expected shape"):
        vision.im2col(cupy.ones((1, 1, 4, 4), np.float32), cupy.ones((9, 1, 3), np.float32),
                      3, 3, 1, 1, 1, 1, 1, 1)


def test_margin_layer_errors_on_gpu():
    _mode(cupy)
    layer = MarginInnerProduct.from_args(num_output=4, type="DOUBLE")
    bottom = [Blob((3, 5)), Blob((3,))]
    top = [Blob(())]
    layer.setup(bottom, top)
    layer.blobs[0].data = rand((4, 5), 1)
    bottom[0].data = rand((3, 5), 2)
    bottom[1].data = np.array([0, 4, 1.0])
    before = _host(layer.blobs[0].data)
    with pytest.raises(LayerError, match="label 1"):
        layer.forward(bottom, top)
    np.testing.assert_array_equal(_host(layer.blobs[0].data), before)  # nothing changed
    bottom[1].data = np.array([0, 3, 1.0])
    layer.blobs[0].data[2] = 0
    with pytest.raises(LayerError, match="weight row 2"):
        layer.forward(bottom, top)


def test_triplet_draws_identical_on_cpu_and_gpu():
    """The triplet replacement writes the same rows on both backends, for repeated labels."""
    text = ('name: "t" type: "MarginInnerProduct" margin_inner_product_param { num_output: 3 '
            'type: DOUBLE triplet: true weight_filler { type: "gaussian" std: 1 } }')
    lab = np.array([0, 1, 0, 2, 0, 1, 1, 2, 0, 0] * 3, dtype=np.float64)
    bottoms = [rand((30, 4), 4), lab]
    cpu, gpu = both(text, bottoms, np.float64, check_bottom=[1, 0], propagate=[True, False])
    # The weight was overwritten (with raw features) by at least one row.
    assert not np.allclose(cpu["params_after"][0], cpu["params_initial"][0])


# -- fixture set A on the GPU ----------------------------------------------------------------
def _fixture_files(subset):
    return sorted(os.path.relpath(p, FIXTURES)
                  for p in glob.glob(os.path.join(FIXTURES, subset, "f*", "*.npz")))


@pytest.mark.parametrize("subset", ["A", "A_accum", "A_edge"])
def test_margin_fixture_sets_on_gpu(subset):
    shared_path("fixtures", "caffe-ref", subset)
    files = _fixture_files(subset)
    assert files
    for relpath in files:
        _replay_margin_fixture(relpath)


def _replay_margin_fixture(relpath):
    z = np.load(os.path.join(FIXTURES, relpath))
    meta = json.loads(str(z["meta_json"]))
    dtype = np.float64 if "/f64/" in relpath else np.float32
    tol = TOL[dtype]
    _mode(cupy)
    layer = MarginInnerProduct.from_args(
        num_output=meta["N"], dtype=dtype, type=meta["margin_type"], axis=meta["axis"],
        base=meta["base"], gamma=meta["gamma"], power=meta["power"],
        lambda_min=meta["lambda_min"], iteration=meta["iteration"])
    shape = tuple(meta["bottom_shape"])
    m = int(np.prod(shape[:meta["axis"]]))
    bottom = [Blob(shape, dtype, xp=cupy), Blob((m,), dtype, xp=cupy)]
    top = [Blob((1,), dtype, xp=cupy), Blob((1,), dtype, xp=cupy)]
    layer.setup(bottom, top)
    assert layer.blobs[0].xp is cupy
    layer.blobs[0].data = z["weight_init"]
    step = 0
    while "step%d_top0" % step in z:
        key = lambda name: "step%d_%s" % (step, name)  # noqa: E731
        bottom[0].data = z[key("bottom")]
        bottom[1].data = z[key("label")]
        layer.blobs[0].diff = z[key("weight_diff_before_backward")]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        top[0].diff = z[key("top_diff")]
        bottom[0].diff = np.full(shape, 12345.0)
        layer.backward(top, [True, False], bottom)
        for name, actual in [("top0", top[0].data), ("top1_lambda", top[1].data),
                             ("weight_after_forward", layer.blobs[0].data),
                             ("bottom_diff", bottom[0].diff),
                             ("weight_diff", layer.blobs[0].diff)]:
            actual = _host(actual)
            expected = z[key(name)]
            nan = np.isnan(expected)
            np.testing.assert_array_equal(np.isnan(actual), nan, err_msg=relpath + key(name))
            assert_close(actual[~nan], expected[~nan], tol, "%s %s" % (relpath, key(name)))
        step += 1


# -- whole nets ---------------------------------------------------------------------------
def _b1_small(xp, dtype):
    folder = shared_path("fixtures", "caffe-ref", "B1_small")
    npz = "B1_small_f32.npz" if dtype == np.float32 else "B1_small_f64.npz"
    z, meta = load(os.path.join(folder, npz))
    _mode(xp)
    net = caffe.Net(os.path.join(folder, "B1_small_train.prototxt"), caffe.TRAIN, dtype=dtype,
                    seed=0, weights=os.path.join(folder, "B1_small.caffemodel"))
    recipe = meta["input_recipe"]
    shape = net.blobs["data"].shape
    net.blobs["data"].data = portable_values(shape, recipe["data"]["seed"],
                                             recipe["data"]["scale"])
    net.blobs["label"].data = portable_labels(shape[0], recipe["label"]["seed"],
                                              recipe["label"]["N"])
    net.clear_param_diffs()
    net.forward()
    net.backward()
    return z, net


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_b1_small_on_gpu_matches_caffe_and_cpu(dtype, engine, monkeypatch, cudnn_calls):
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", engine)
    z, gnet = _b1_small(cupy, dtype)
    assert bool(cudnn_calls) == (engine == "cudnn")
    assert gnet.blobs["data"].xp is cupy
    assert all(b.xp is cupy for b in gnet.learnable_params)
    tol = NET_TOL if dtype == np.float32 else 1e-9
    for name in ("fc5", "fc6", "lambda", "softmax_loss"):
        assert_close(_host(gnet.blobs[name].data), z["out__" + name].reshape(gnet.blobs[name].shape),
                     tol, name)
    assert_close(_host(gnet.blobs["data"].diff), z["data_diff"], tol, "data diff")
    checked = 0
    for key in z.files:
        parts = key.split("__")
        if key.startswith("diff__") and len(parts) == 3:
            assert_close(_host(gnet.params[parts[1]][int(parts[2])].diff), z[key], tol, key)
            checked += 1
    assert checked == len(gnet.learnable_params)
    _, cnet = _b1_small(np, dtype)
    for name in cnet.blobs:
        assert_close(_host(gnet.blobs[name].data), cnet.blobs[name].data, tol, name)
    for i, (c, g) in enumerate(zip(cnet.learnable_params, gnet.learnable_params)):
        assert_close(_host(g.diff), c.diff, tol, "param %d diff" % i)


def test_net_to_device_moves_everything():
    folder = shared_path("fixtures", "caffe-ref", "B1_small")
    net = caffe.Net(os.path.join(folder, "B1_small_train.prototxt"), caffe.TRAIN, seed=0)
    net.to_device(cupy)
    assert all(b.xp is cupy for b in net.blobs.values())
    assert all(b.xp is cupy for layer in net.layers for b in layer.blobs)


SOLVER = """
base_lr: 0.05 momentum: 0.9 weight_decay: 0.0005 lr_policy: "step" gamma: 0.5 stepsize: 2
max_iter: 4 display: 0 random_seed: 5 type: "%s"
net_param {
  name: "tiny"
  layer { name: "data" type: "Input" top: "data" top: "label"
          input_param { shape { dim: 8 dim: 2 dim: 10 dim: 8 } shape { dim: 8 } } }
  layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
          convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1
            weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
  layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
  layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
          pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
  layer { name: "fc5" type: "InnerProduct" bottom: "pool1" top: "fc5"
          inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
  layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
          top: "lambda" margin_inner_product_param { num_output: 5 type: QUADRUPLE
            weight_filler { type: "xavier" } base: 1000 gamma: 0.12 power: 1 lambda_min: 5 } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }
}
"""


def _solve(xp, solver_type, dtype):
    from pyfacelayers.solvers import get_solver
    _mode(xp)
    solver = get_solver(SOLVER % solver_type, dtype=dtype)
    net = solver.net
    rng = np.random.default_rng(0)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data = rng.integers(0, 5, 8).astype(float)
    losses = []
    solver.add_iteration_callback(lambda s, loss: losses.append(float(loss)))
    solver.step(4)
    return losses, [_host(p.data) for p in net.learnable_params], solver


@pytest.mark.parametrize("solver_type,engine", [("SGD", "caffe"), ("Adam", "caffe"),
                                                ("Nesterov", "caffe"),
                                                pytest.param("SGD", "cudnn", marks=needs_cudnn)])
def test_solver_iterations_gpu_match_cpu(solver_type, engine, monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", engine)
    dtype = np.float64
    cpu_losses, cpu_params, _ = _solve(np, solver_type, dtype)
    gpu_losses, gpu_params, solver = _solve(cupy, solver_type, dtype)
    assert all(p.xp is cupy for p in solver.net.learnable_params)
    assert all(isinstance(h, cupy.ndarray) for h in solver.history)
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-9)
    for i, (c, g) in enumerate(zip(cpu_params, gpu_params)):
        assert_close(g, c, 1e-9, "param %d after 4 iterations" % i)


# -- training without host waits (issue: no per-iteration synchronisation) --------------
def test_training_reads_label_checks_one_iteration_later(tmp_path):
    """In training the device-side label checks are read at the next forward (or the
    next snapshot/display): the error still names the layer, the label and the
    iteration, and no snapshot is written from the bad iteration."""
    from pyfacelayers.solvers import get_solver
    _mode(cupy)
    text = SOLVER % "SGD" + 'snapshot: 1 snapshot_prefix: "%s"' % (tmp_path / "s")
    solver = get_solver(text, dtype=np.float32)
    net = solver.net
    rng = np.random.default_rng(0)
    net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape)
    labels = rng.integers(0, 5, 8).astype(np.float32)
    labels[3] = 7
    net.blobs["label"].data = labels
    assert all(layer.defer_checks for layer in net.layers)
    with pytest.raises(LayerError, match=r"fc6.*label 3 is 7\.0.*iteration 1"):
        solver.step(2)
    assert not list(tmp_path.glob("s_iter_*"))  # the snapshot of iteration 1 was refused


def test_a_net_outside_training_checks_labels_at_once():
    _mode(cupy)
    layer = MarginInnerProduct.from_args(num_output=5, type="QUADRUPLE",
                                         weight_filler={"type": "xavier"})
    bottom = [Blob((4, 3)), Blob((4,))]
    bottom[0].data = np.ones((4, 3), np.float32)
    bottom[1].data = np.array([0, 1, 9, 2], np.float32)
    top = [Blob((1,))]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    with pytest.raises(LayerError, match=r"label 2 is 9\.0"):
        layer.forward(bottom, top)


def test_data_layer_batches_reach_the_gpu_through_pinned_memory(tmp_path):
    """HDF5Data on the GPU (copied through gpu/feed.py, nothing waited for) gives the
    CPU's batches, in order, over several forwards queued back to back."""
    h5py = pytest.importorskip("h5py")
    from pyfacelayers.net import Net
    path = tmp_path / "d.h5"
    values = np.arange(10 * 3 * 2 * 2, dtype=np.float32).reshape(10, 3, 2, 2)
    with h5py.File(path, "w") as f:
        f["data"] = values
        f["label"] = np.arange(10, dtype=np.float32)
    (tmp_path / "list.txt").write_text(str(path) + "\n")
    text = ('name: "h" layer { name: "d" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param { source: "%s" batch_size: 4 } }' % (tmp_path / "list.txt"))
    outputs = {}
    for xp in (np, cupy):
        _mode(xp)
        net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)
        got = []
        for _ in range(5):
            net.forward()
            got.append(xp.asarray(net.blobs["data"].data).copy())  # queued, not read
        outputs[xp.__name__] = [_host(g) for g in got]
    assert len(outputs["cupy"]) == 5
    for a, b in zip(outputs["numpy"], outputs["cupy"]):
        np.testing.assert_array_equal(a, b)


def test_blob_device_pointers_in_gpu_mode():
    """pycaffe's Blob._gpu_data_ptr / _gpu_diff_ptr: the device addresses of the arrays
    (a copy through them lands in the blob)."""
    backend.set_mode_gpu()
    blob = Blob((2, 3), dtype=np.float32)
    assert blob._gpu_data_ptr == blob.data.data.ptr != 0
    assert blob._gpu_diff_ptr == blob.diff.data.ptr != blob._gpu_data_ptr
    values = cupy.arange(6, dtype=cupy.float32)
    cupy.cuda.runtime.memcpy(blob._gpu_diff_ptr, values.data.ptr, values.nbytes,
                             cupy.cuda.runtime.memcpyDeviceToDevice)
    assert cupy.asnumpy(blob.diff).ravel().tolist() == list(range(6))


@pytest.mark.parametrize("engine", ENGINES)
def test_frozen_parameters_get_no_diff_on_gpu(engine, monkeypatch):
    """Caffe's param_propagate_down on the GPU paths (im2col, cuDNN, PReLU, inner
    product): lr_mult-0 parameters keep a zero diff, the others match the CPU."""
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", engine)
    frozen = 'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 0 decay_mult: 0 }'
    text = (SOLVER % "SGD").split("net_param {", 1)[1].rsplit("}", 1)[0]
    text = text.replace('top: "conv1"\n          convolution_param',
                        'top: "conv1" %s\n          convolution_param' % frozen)
    text = text.replace('top: "conv1" }', 'top: "conv1" param { lr_mult: 0 } }')
    text = text.replace('top: "fc5"\n', 'top: "fc5" %s\n' % frozen)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    diffs = {}
    for xp in (np, cupy):
        _mode(xp)
        net = caffe.Net(param, caffe.TRAIN, seed=2, dtype=np.float64)
        rng = np.random.default_rng(0)
        net.blobs["data"].data = rng.standard_normal(net.blobs["data"].shape)
        net.blobs["label"].data = rng.integers(0, 5, 8).astype(float)
        net.forward_backward()
        diffs[xp] = {(name, k): _host(blob.diff) for name, blobs in net.params.items()
                     for k, blob in enumerate(blobs)}
    for key, cpu in diffs[np].items():
        frozen_blob = key in (("conv1", 1), ("relu1", 0), ("fc5", 1))
        assert not cpu.any() if frozen_blob else cpu.any(), key
        assert_close(diffs[cupy][key], cpu, TOL[np.float64], "%s param %d" % key)
