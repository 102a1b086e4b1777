"""Vision layers (Convolution, Deconvolution, Pooling, InnerProduct, PReLU, BatchNorm,
Scale, Bias): each against a naive float64 reference written here, and by central
finite differences in float64 for bottom and parameter gradients."""

import math

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import assert_close
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


# -- harness ------------------------------------------------------------------------------
def layer_param(type_, text=""):
    return text_format.Parse('name: "lay" type: "%s" %s' % (type_, text),
                             caffe_pb2.LayerParameter())


def build(type_, text, bottom_data, dtype=np.float64, phase=TRAIN, n_top=1, in_place=False,
          seed=0):
    """A set-up layer with bottoms holding ``bottom_data`` (list of arrays)."""
    layer = create_layer(layer_param(type_, text), phase, dtype, np.random.default_rng(seed))
    bottom = []
    for x in bottom_data:
        b = Blob(x.shape, dtype=dtype)
        b.data[...] = x
        bottom.append(b)
    top = [bottom[0]] if in_place else [Blob((), dtype=dtype) for _ in range(n_top)]
    layer.setup(bottom, top)
    return layer, bottom, top


def randomize_params(layer, rng, scale=0.5):
    for blob in layer.blobs:
        blob.data[...] = rng.uniform(-scale, scale, blob.shape)


def run_backward(layer, bottom, top, top_diffs, propagate=None):
    """Backward with the given top diffs; bottom diffs poisoned first (they must be
    overwritten) and param diffs zeroed. Returns (bottom diffs, param diffs)."""
    for blob in layer.blobs:
        blob.diff[...] = 0
    for t, d in zip(top, top_diffs):
        t.diff[...] = d
    in_place = any(t is b for t in top for b in bottom)
    if not in_place:
        for b in bottom:
            b.diff[...] = 12345.0
    if propagate is None:
        propagate = [True] * len(bottom)
    layer.backward(top, propagate, bottom)
    return [b.diff.copy() for b in bottom], [p.diff.copy() for p in layer.blobs]


def gradient_check(layer, bottom, top, check_bottom=None, check_params=True, eps=1e-6,
                   tol=1e-6, seed=1):
    """Compare backward with central differences of L = sum_t <top_t, R_t>."""
    rng = np.random.default_rng(seed)
    x0 = [b.data.copy() for b in bottom]
    if check_bottom is None:
        check_bottom = list(range(len(bottom)))

    def forward():
        for b, x in zip(bottom, x0):
            b.data[...] = x
        layer.reshape(bottom, top)
        layer.forward(bottom, top)

    forward()
    weights = [rng.standard_normal(t.shape) for t in top]

    def loss():
        forward()
        return sum(float(np.sum(t.data * r)) for t, r in zip(top, weights))

    forward()
    bottom_diffs, param_diffs = run_backward(layer, bottom, top, weights,
                                             [i in check_bottom for i in range(len(bottom))])

    def numeric(array, restore=None):
        grad = np.zeros(array.shape)
        flat = array.reshape(-1)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + eps
            plus = loss()
            flat[j] = keep - eps
            minus = loss()
            flat[j] = keep
            grad.reshape(-1)[j] = (plus - minus) / (2 * eps)
        return grad

    for i in check_bottom:
        assert_close(bottom_diffs[i], numeric(x0[i]), tol, "bottom[%d] gradient" % i)
    if check_params:
        for k, blob in enumerate(layer.blobs):
            assert_close(param_diffs[k], numeric(blob.data), tol, "param %d gradient" % k)
    forward()
    return bottom_diffs, param_diffs


# -- Convolution / Deconvolution references --------------------------------------------------
def ref_conv(x, w, b, stride, pad, dilation, group):
    """Direct convolution loops in float64."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    out = np.zeros((n, m, oh, ow))
    mg = m // group
    for i in range(n):
        for o in range(m):
            g = o // mg
            for y in range(oh):
                for z in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for a in range(kh):
                            for q in range(kw):
                                acc += (xp[i, g * cg + ci, y * sh + a * dh, z * sw + q * dw]
                                        * w[o, ci, a, q])
                    out[i, o, y, z] = acc + (b[o] if b is not None else 0.0)
    return out


def ref_deconv(x, w, b, stride, pad, dilation, group):
    """Transposed convolution by scattering every input pixel, in float64."""
    n, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    m = mg * group
    cg = c // group
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (wd - 1) + dw * (kw - 1) + 1 - 2 * pw
    full = np.zeros((n, m, sh * (h - 1) + dh * (kh - 1) + 1, sw * (wd - 1) + dw * (kw - 1) + 1))
    for i in range(n):
        for ci in range(c):
            g = ci // cg
            for y in range(h):
                for z in range(wd):
                    for mo in range(mg):
                        for a in range(kh):
                            for q in range(kw):
                                full[i, g * mg + mo, y * sh + a * dh, z * sw + q * dw] += (
                                    x[i, ci, y, z] * w[ci, mo, a, q])
    out = full[:, :, ph:ph + oh, pw:pw + ow].copy()
    if b is not None:
        out += b[None, :, None, None]
    return out


CONV_CASES = [
    # (param text, bottom shape, stride, pad, dilation, group)
    ("num_output: 3 kernel_size: 3", (2, 2, 5, 6), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 pad: 1 stride: 2", (2, 3, 7, 6), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_size: 2 kernel_size: 3 pad: 1 pad: 0 stride: 1 stride: 2",
     (1, 2, 5, 7), (1, 2), (1, 0), (1, 1), 1),
    ("num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 1",
     (2, 2, 6, 4), (2, 1), (1, 2), (1, 1), 1),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2", (1, 2, 7, 7), (1, 1), (2, 2),
     (2, 2), 1),
    ("num_output: 2 kernel_size: 2 dilation: 2 dilation: 1", (1, 1, 6, 5), (1, 1), (0, 0),
     (2, 1), 1),
    ("num_output: 6 kernel_size: 3 pad: 1 group: 2", (2, 4, 5, 5), (1, 1), (1, 1), (1, 1), 2),
    ("num_output: 4 kernel_size: 1 group: 4", (2, 4, 3, 3), (1, 1), (0, 0), (1, 1), 4),
    ("num_output: 3 kernel_size: 3 bias_term: false", (2, 2, 4, 4), (1, 1), (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", CONV_CASES)
def test_convolution_matches_direct_loops(text, shape, stride, pad, dilation, group):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        layer, bottom, top = build("Convolution", "convolution_param { %s }" % text,
                                   [x.astype(dtype)], dtype)
        randomize_params(layer, np.random.default_rng(4))
        layer.forward(bottom, top)
        w = layer.blobs[0].data.astype(np.float64)
        b = layer.blobs[1].data.astype(np.float64) if len(layer.blobs) > 1 else None
        expected = ref_conv(x.astype(dtype).astype(np.float64), w, b, stride, pad, dilation,
                            group)
        assert top[0].shape == expected.shape
        assert top[0].data.dtype == dtype
        assert_close(top[0].data, expected, tol, "conv forward %s" % np.dtype(dtype).name)


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", CONV_CASES)
def test_convolution_gradients(text, shape, stride, pad, dilation, group):
    x = np.random.default_rng(5).standard_normal(shape)
    layer, bottom, top = build("Convolution", "convolution_param { %s }" % text, [x])
    randomize_params(layer, np.random.default_rng(6))
    gradient_check(layer, bottom, top)


DECONV_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 2, 3, 4), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (1, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 "
     "group: 2", (2, 2, 3, 3), (2, 1), (1, 0), (1, 1), 2),
    ("num_output: 2 kernel_size: 3 dilation: 2 stride: 2", (1, 2, 3, 2), (2, 2), (0, 0),
     (2, 2), 1),
]


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", DECONV_CASES)
def test_deconvolution_matches_scatter_reference(text, shape, stride, pad, dilation, group):
    x = np.random.default_rng(7).standard_normal(shape)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        layer, bottom, top = build("Deconvolution", "convolution_param { %s }" % text,
                                   [x.astype(dtype)], dtype)
        randomize_params(layer, np.random.default_rng(8))
        layer.forward(bottom, top)
        w = layer.blobs[0].data.astype(np.float64)
        b = layer.blobs[1].data.astype(np.float64)
        expected = ref_deconv(x.astype(dtype).astype(np.float64), w, b, stride, pad, dilation,
                              group)
        assert top[0].shape == expected.shape
        assert_close(top[0].data, expected, tol, "deconv forward")


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", DECONV_CASES)
def test_deconvolution_gradients(text, shape, stride, pad, dilation, group):
    x = np.random.default_rng(9).standard_normal(shape)
    layer, bottom, top = build("Deconvolution", "convolution_param { %s }" % text, [x])
    randomize_params(layer, np.random.default_rng(10))
    gradient_check(layer, bottom, top)


def test_deconvolution_bilinear_upsampling():
    # The classic use: bilinear weights, stride 2, kernel 4, pad 1, one group per channel.
    x = np.random.default_rng(11).standard_normal((1, 2, 3, 3))
    layer, bottom, top = build(
        "Deconvolution", 'convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 '
        'group: 2 bias_term: false weight_filler { type: "bilinear" } }', [x])
    layer.forward(bottom, top)
    assert top[0].shape == (1, 2, 6, 6)
    k = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    w = np.broadcast_to(k, (2, 1, 4, 4))
    assert_close(top[0].data, ref_deconv(x, w, None, (2, 2), (1, 1), (1, 1), 2), 1e-12)


def test_convolution_fillers_and_shapes():
    x = np.zeros((2, 4, 6, 6))
    layer, bottom, top = build(
        "Convolution", 'convolution_param { num_output: 6 kernel_size: 3 group: 2 '
        'weight_filler { type: "constant" value: 0.5 } bias_filler { type: "constant" '
        'value: -1 } }', [x])
    assert layer.blobs[0].shape == (6, 2, 3, 3) and layer.blobs[1].shape == (6,)
    assert np.all(layer.blobs[0].data == 0.5) and np.all(layer.blobs[1].data == -1)
    layer2, _, _ = build("Deconvolution", "convolution_param { num_output: 6 kernel_size: 3 "
                         "group: 2 }", [x])
    assert layer2.blobs[0].shape == (4, 3, 3, 3)
    # Default fillers are constant 0 (Caffe's FillerParameter default).
    assert np.all(layer2.blobs[0].data == 0) and np.all(layer2.blobs[1].data == 0)


def test_convolution_axis_and_multiple_bottoms_and_1d():
    rng = np.random.default_rng(12)
    # axis 2: the leading two axes are batch axes.
    x = rng.standard_normal((2, 3, 2, 5, 4))
    layer, bottom, top = build("Convolution",
                               "convolution_param { num_output: 3 kernel_size: 2 axis: 2 }",
                               [x])
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 3, 4, 3)
    expected = ref_conv(x.reshape(6, 2, 5, 4), layer.blobs[0].data, layer.blobs[1].data,
                        (1, 1), (0, 0), (1, 1), 1)
    assert_close(top[0].data.reshape(6, 3, 4, 3), expected, 1e-12)
    # Two bottoms share the weights.
    a, b = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((1, 2, 4, 4))
    layer, bottom, top = build("Convolution", "convolution_param { num_output: 2 "
                               "kernel_size: 3 }", [a, b], n_top=2)
    randomize_params(layer, rng)
    gradient_check(layer, bottom, top)
    # One spatial axis.
    x = rng.standard_normal((2, 3, 9))
    layer, bottom, top = build("Convolution", "convolution_param { num_output: 2 "
                               "kernel_size: 3 stride: 2 pad: 1 }", [x])
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    expected = ref_conv(x[:, :, None, :], layer.blobs[0].data[:, :, None, :],
                        layer.blobs[1].data, (1, 2), (0, 1), (1, 1), 1)
    assert top[0].shape == (2, 2, 5)
    assert_close(top[0].data, expected[:, :, 0, :], 1e-12)
    gradient_check(layer, bottom, top)


def test_convolution_batch_chunks(monkeypatch):
    # A tiny column budget forces one image per chunk; results must not change.
    from pyfacelayers.layers import _conv_base

    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 2, 5, 5))
    results = []
    for budget in (1 << 23, 1):
        monkeypatch.setattr(_conv_base, "COL_BUFFER_ELEMENTS", budget)
        for kind in ("Convolution", "Deconvolution"):
            layer, bottom, top = build(kind, "convolution_param { num_output: 4 "
                                       "kernel_size: 3 pad: 1 group: 2 }", [x])
            randomize_params(layer, np.random.default_rng(14))
            layer.forward(bottom, top)
            dy = np.random.default_rng(15).standard_normal(top[0].shape)
            bd, pd = run_backward(layer, bottom, top, [dy])
            results.append((top[0].data.copy(), bd[0], pd[0], pd[1]))
    for big, small in zip(results[:2], results[2:]):
        for u, v in zip(big, small):
            assert_close(v, u, 1e-13)


def test_convolution_propagate_down_false_keeps_bottom_diff():
    x = np.random.default_rng(16).standard_normal((1, 2, 4, 4))
    layer, bottom, top = build("Convolution", "convolution_param { num_output: 2 "
                               "kernel_size: 3 }", [x])
    randomize_params(layer, np.random.default_rng(17))
    layer.forward(bottom, top)
    _, params = run_backward(layer, bottom, top, [np.ones(top[0].shape)], [False])
    assert np.all(bottom[0].diff == 12345.0)
    assert np.any(params[0] != 0)
    # Param diffs accumulate.
    top[0].diff[...] = 1
    layer.backward(top, [False], bottom)
    assert_close(layer.blobs[0].diff, 2 * params[0], 1e-14)


@pytest.mark.parametrize("text,shape,match", [
    ("num_output: 2 kernel_size: 0", (1, 2, 4, 4), "kernel_size must be >= 1"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 2, 4, 4), "stride must be >= 1"),
    ("num_output: 2 kernel_size: 3 dilation: 0", (1, 2, 4, 4), "dilation must be >= 1"),
    ("num_output: 3 kernel_size: 1 group: 2", (1, 2, 4, 4), "num_output \\(3\\) must be "
     "divisible by group"),
    ("num_output: 2 kernel_size: 1 group: 2", (1, 3, 4, 4), "input channels \\(3\\)"),
    ("num_output: 0 kernel_size: 1", (1, 2, 4, 4), "num_output must be > 0"),
    ("num_output: 2", (1, 2, 4, 4), "kernel_size is required"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 4, 4), "not both"),
    ("num_output: 2 kernel_h: 3", (1, 2, 4, 4), "both kernel_h and kernel_w"),
    ("num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3", (1, 2, 4, 4),
     "once per spatial axis"),
    ("num_output: 2 kernel_size: 5", (1, 2, 4, 4), "larger than the padded input"),
    ("num_output: 2 kernel_size: 1", (2, 4), "1 or 2 spatial axes"),
    ("num_output: 2 kernel_size: 1", (1, 2, 3, 3, 3), "1 or 2 spatial axes"),
    ("num_output: 2 kernel_size: 1 axis: 4", (1, 2, 3, 3), "axis 4 out of range"),
])
def test_convolution_bad_parameters(text, shape, match):
    with pytest.raises(LayerError, match='"lay" \\(Convolution\\).*' + match):
        build("Convolution", "convolution_param { %s }" % text, [np.zeros(shape)])


def test_convolution_bottom_changes_rank_or_channels():
    layer, bottom, top = build("Convolution", "convolution_param { num_output: 2 "
                               "kernel_size: 1 }", [np.zeros((1, 2, 3, 3))])
    bottom[0].reshape(1, 3, 3, 3)
    with pytest.raises(LayerError, match="3 channels"):
        layer.reshape(bottom, top)
    bottom[0].reshape(1, 2, 3, 3, 1)
    with pytest.raises(LayerError, match="must have 4 axes"):
        layer.reshape(bottom, top)
