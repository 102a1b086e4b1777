"""Vision layers (Convolution, Deconvolution, Pooling, InnerProduct, PReLU, BatchNorm,
Scale, Bias): each against a naive float64 reference written here, and by central
finite differences in float64 for bottom and parameter gradients."""

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
    ("num_output: 2 kernel_size: 1", (2, 4), "1 to 8 spatial axes"),
    ("num_output: 2 kernel_h: 1 kernel_w: 1", (1, 2, 3, 3, 3), "only be used for 2-D"),
    ("num_output: 2 kernel_size: 1 stride_h: 2 stride_w: 2", (1, 2, 3, 3, 3),
     "only be used for 2-D"),
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


# -- Pooling ------------------------------------------------------------------------------
def ref_pool_size(size, k, p, s):
    out = -(-(size + 2 * p - k) // s) + 1          # integer ceil
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def ref_pool(x, method, k, s, p):
    """Caffe's pooling written out per window: (top, argmax) in float64."""
    n, c, h, w = x.shape
    oh, ow = ref_pool_size(h, k[0], p[0], s[0]), ref_pool_size(w, k[1], p[1], s[1])
    top = np.zeros((n, c, oh, ow))
    arg = np.full((n, c, oh, ow), -1)
    for i in range(n):
        for j in range(c):
            for y in range(oh):
                for z in range(ow):
                    y0, z0 = y * s[0] - p[0], z * s[1] - p[1]
                    if method == "MAX":
                        ys = range(max(y0, 0), min(y0 + k[0], h))
                        zs = range(max(z0, 0), min(z0 + k[1], w))
                        best, where = -np.finfo(np.float32).max, -1
                        for a in ys:
                            for b in zs:
                                if x[i, j, a, b] > best:
                                    best, where = x[i, j, a, b], a * w + b
                        top[i, j, y, z], arg[i, j, y, z] = best, where
                    else:
                        y1, z1 = min(y0 + k[0], h + p[0]), min(z0 + k[1], w + p[1])
                        size = (y1 - y0) * (z1 - z0)
                        window = x[i, j, max(y0, 0):min(y1, h), max(z0, 0):min(z1, w)]
                        top[i, j, y, z] = window.sum() / size
    return top, arg


def distinct_values(shape, seed):
    """Well separated values, so no finite-difference step changes an argmax."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1
            + rng.uniform(-0.01, 0.01, shape))


POOL_CASES = [
    # text, bottom shape, kernel, stride, pad
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 7, 7), (3, 3), (2, 2), (1, 1)),
    ("kernel_size: 2 stride: 2", (1, 3, 6, 5), (2, 2), (2, 2), (0, 0)),
    ("kernel_size: 3 stride: 2", (1, 2, 6, 6), (3, 3), (2, 2), (0, 0)),
    ("kernel_size: 3 stride: 3 pad: 2", (1, 1, 5, 5), (3, 3), (3, 3), (2, 2)),
    ("kernel_size: 2 stride: 3 pad: 1", (1, 1, 5, 6), (2, 2), (3, 3), (1, 1)),  # shrinks
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 1, 5, 4),
     (3, 2), (2, 1), (1, 0)),
]


def test_pooled_size_rounding():
    assert ref_pool_size(7, 3, 1, 2) == 4          # ceil(6/2)+1 = 4, last start 5 < 8
    assert ref_pool_size(5, 3, 2, 3) == 3          # ceil(6/3)+1 = 3, last start 6 < 7
    assert ref_pool_size(5, 2, 1, 3) == 2          # ceil(5/3)+1 = 3, last start 6 >= 6: 2
    assert ref_pool_size(6, 3, 0, 2) == 3          # ceil: windows may run past the edge
    from pyfacelayers.layers.pooling import pooled_size
    for h in range(3, 12):
        for k in range(1, 5):
            for s in range(1, 4):
                for p in range(0, k):
                    if h + 2 * p >= k:
                        assert pooled_size(h, k, p, s) == ref_pool_size(h, k, p, s)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text,shape,k,s,p", POOL_CASES)
def test_pooling_matches_reference(method, text, shape, k, s, p):
    x = np.random.default_rng(20).standard_normal(shape)
    for dtype, tol in ((np.float64, 1e-14), (np.float32, 1e-6)):
        n_top = 2 if method == "MAX" else 1
        layer, bottom, top = build("Pooling", "pooling_param { pool: %s %s }" % (method, text),
                                   [x.astype(dtype)], dtype, n_top=n_top)
        layer.forward(bottom, top)
        ref, arg = ref_pool(x.astype(dtype).astype(np.float64), method, k, s, p)
        assert top[0].shape == ref.shape
        assert_close(top[0].data, ref, tol, "pool forward")
        if method == "MAX":
            np.testing.assert_array_equal(top[1].data, arg)    # Caffe's float top mask


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("text,shape,k,s,p", POOL_CASES)
def test_pooling_gradients(method, text, shape, k, s, p):
    x = distinct_values(shape, 21)
    layer, bottom, top = build("Pooling", "pooling_param { pool: %s %s }" % (method, text), [x])
    gradient_check(layer, bottom, top, eps=1e-4)


def test_max_pooling_routes_to_first_maximum():
    # Ties: the first maximum in row-major scan order gets the whole gradient.
    x = np.array([[[[1.0, 3.0, 3.0], [3.0, 0.0, 3.0], [2.0, 3.0, 1.0]]]])
    layer, bottom, top = build("Pooling", "pooling_param { pool: MAX kernel_size: 3 }", [x],
                               n_top=2)
    layer.forward(bottom, top)
    assert top[0].data.ravel()[0] == 3.0 and top[1].data.ravel()[0] == 1
    diffs, _ = run_backward(layer, bottom, top, [np.full((1, 1, 1, 1), 2.0)])
    expected = np.zeros_like(x)
    expected[0, 0, 0, 1] = 2.0
    np.testing.assert_array_equal(diffs[0], expected)


def test_max_pooling_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0                                 # in all four 2x2 windows
    layer, bottom, top = build("Pooling", "pooling_param { pool: MAX kernel_size: 2 }", [x])
    layer.forward(bottom, top)
    diffs, _ = run_backward(layer, bottom, top, [np.array([[[[1.0, 2.0], [3.0, 4.0]]]])])
    assert diffs[0][0, 0, 1, 1] == 10.0 and np.sum(diffs[0]) == 10.0


def test_ave_pooling_divides_by_padded_window():
    # kernel 3, pad 1 on a 2x2 image of ones: the corner window (-1..1) lies inside the
    # padded image, so the divisor is 9 although only 4 pixels are summed.
    x = np.ones((1, 1, 2, 2))
    layer, bottom, top = build("Pooling", "pooling_param { pool: AVE kernel_size: 3 pad: 1 }",
                               [x])
    layer.forward(bottom, top)
    assert top[0].shape == (1, 1, 2, 2)
    np.testing.assert_allclose(top[0].data, np.full((1, 1, 2, 2), 4 / 9.0), rtol=1e-15)


def test_global_pooling():
    x = np.random.default_rng(22).standard_normal((2, 3, 4, 5))
    for method, expected in (("AVE", x.mean(axis=(2, 3))), ("MAX", x.max(axis=(2, 3)))):
        layer, bottom, top = build("Pooling", "pooling_param { pool: %s global_pooling: true }"
                                   % method, [x])
        layer.forward(bottom, top)
        assert top[0].shape == (2, 3, 1, 1)
        assert_close(top[0].data[:, :, 0, 0], expected, 1e-14)
        # The window follows the bottom's size on reshape.
        bottom[0].reshape(1, 3, 2, 2)
        layer.reshape(bottom, top)
        assert top[0].shape == (1, 3, 1, 1)


def test_max_pooling_empty_window_without_pad():
    # Caffe only shrinks the output when padding is used: H=5, k=1, s=3 gives 3 outputs,
    # the last window (row 6) is empty, MAX gives -FLT_MAX and backward ignores it.
    x = np.random.default_rng(23).standard_normal((1, 1, 5, 5))
    layer, bottom, top = build("Pooling", "pooling_param { pool: MAX kernel_size: 1 "
                               "stride: 3 }", [x])
    layer.forward(bottom, top)
    assert top[0].shape == (1, 1, 3, 3)
    assert top[0].data[0, 0, 2, 0] == -np.finfo(np.float32).max
    assert top[0].data[0, 0, 1, 1] == x[0, 0, 3, 3]
    diffs, _ = run_backward(layer, bottom, top, [np.ones((1, 1, 3, 3))])
    assert diffs[0].sum() == 4.0


@pytest.mark.parametrize("text,shape,match", [
    ("pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), "STOCHASTIC is not supported"),
    ("pool: MAX", (1, 1, 4, 4), "needs kernel_size"),
    ("kernel_size: 0", (1, 1, 4, 4), "kernel size must be >= 1"),
    ("kernel_size: 2 stride: 0", (1, 1, 4, 4), "stride must be >= 1"),
    ("kernel_size: 2 pad: 2", (1, 1, 4, 4), "smaller than the kernel"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4), "not both"),
    ("kernel_h: 2", (1, 1, 4, 4), "both kernel_h and kernel_w"),
    ("global_pooling: true kernel_size: 2", (1, 1, 4, 4), "cannot be given"),
    ("global_pooling: true stride: 2", (1, 1, 4, 4), "only pad 0 and stride 1"),
    ("kernel_size: 2", (1, 4, 4), "must have 4 axes"),
    ("kernel_size: 5", (1, 1, 4, 4), "larger than the padded input"),
])
def test_pooling_bad_parameters(text, shape, match):
    with pytest.raises(LayerError, match='"lay" \\(Pooling\\).*' + match):
        build("Pooling", "pooling_param { %s }" % text, [np.zeros(shape)])


def test_pooling_top_count():
    with pytest.raises(LayerError, match="at most 1 top"):
        build("Pooling", "pooling_param { pool: AVE kernel_size: 2 }", [np.zeros((1, 1, 4, 4))],
              n_top=2)


def test_pooling_kernels_reject_bad_arrays():
    from pyfacelayers import _C
    x = np.zeros((1, 1, 4, 4), np.float32)
    top = np.zeros((1, 1, 2, 2), np.float32)
    mask = np.zeros((1, 1, 2, 2), np.int64)
    with pytest.raises(TypeError, match="float32"):
        _C.max_pool_forward(x, top.astype(np.float64), mask, 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.ave_pool_forward(np.zeros((1, 1, 4, 8), np.float32)[..., ::2], top, 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="mask index"):
        _C.max_pool_backward(top, np.full((1, 1, 2, 2), 16, np.int64), x)
    with pytest.raises(ValueError, match="differ in num or channels"):
        _C.ave_pool_backward(top, np.zeros((1, 2, 4, 4), np.float32), 2, 2, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="column buffer must have shape"):
        _C.im2col(x, np.zeros((4, 1, 8), np.float32), 2, 2, 0, 0, 2, 2, 1, 1)
    with pytest.raises(ValueError, match="larger than the padded image"):
        _C.col2im(np.zeros((4, 1, 1), np.float32), x, 5, 5, 0, 0, 1, 1, 1, 1)


# -- InnerProduct ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,shape,out_shape", [
    ("num_output: 4", (3, 5), (3, 4)),
    ("num_output: 4", (2, 3, 2, 2), (2, 4)),
    ("num_output: 3 axis: 2", (2, 3, 4), (2, 3, 3)),
    ("num_output: 3 axis: -1", (2, 3, 4), (2, 3, 3)),
    ("num_output: 4 transpose: true", (3, 2, 3), (3, 4)),
    ("num_output: 2 bias_term: false", (3, 5), (3, 2)),
])
def test_inner_product(text, shape, out_shape):
    rng = np.random.default_rng(30)
    x = rng.standard_normal(shape)
    for dtype, tol in ((np.float64, 1e-13), (np.float32, 1e-6)):
        layer, bottom, top = build("InnerProduct", "inner_product_param { %s }" % text,
                                   [x.astype(dtype)], dtype)
        randomize_params(layer, np.random.default_rng(31))
        layer.forward(bottom, top)
        w = layer.blobs[0].data.astype(np.float64)
        if "transpose" in text:
            w = w.T
        k = w.shape[1]
        expected = x.astype(dtype).astype(np.float64).reshape(-1, k) @ w.T
        if len(layer.blobs) > 1:
            expected += layer.blobs[1].data
        assert top[0].shape == out_shape
        assert_close(top[0].data.reshape(-1, w.shape[0]), expected, tol, "inner product")
    layer, bottom, top = build("InnerProduct", "inner_product_param { %s }" % text, [x])
    randomize_params(layer, rng)
    gradient_check(layer, bottom, top)


def test_inner_product_shapes_fillers_and_errors():
    layer, bottom, top = build("InnerProduct", 'inner_product_param { num_output: 3 '
                               'weight_filler { type: "constant" value: 2 } bias_filler { '
                               'type: "constant" value: 1 } }', [np.ones((2, 4))])
    assert layer.blobs[0].shape == (3, 4) and layer.blobs[1].shape == (3,)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, np.full((2, 3), 9.0))
    layer, bottom, top = build("InnerProduct", "inner_product_param { num_output: 3 "
                               "transpose: true }", [np.ones((2, 4))])
    assert layer.blobs[0].shape == (4, 3)
    bottom[0].reshape(2, 5)
    with pytest.raises(LayerError, match='"lay" \\(InnerProduct\\).*incompatible'):
        layer.reshape(bottom, top)
    with pytest.raises(LayerError, match="num_output must be > 0"):
        build("InnerProduct", "inner_product_param { }", [np.ones((2, 4))])
    with pytest.raises(LayerError, match="axis 3 out of range"):
        build("InnerProduct", "inner_product_param { num_output: 2 axis: 3 }",
              [np.ones((2, 4))])
    with pytest.raises(LayerError, match='unknown filler type "foo"'):
        build("InnerProduct", 'inner_product_param { num_output: 2 weight_filler { '
              'type: "foo" } }', [np.ones((2, 4))])


# -- PReLU ------------------------------------------------------------------------------------
def ref_prelu(x, a, shared):
    slopes = np.full(x.shape[1], float(a)) if shared else a
    s = slopes.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.where(x > 0, x, s * x)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (4, 3)])
def test_prelu(shared, in_place, shape):
    rng = np.random.default_rng(40)
    x = rng.standard_normal(shape)
    x[np.abs(x) < 0.05] = 0.3      # keep finite differences away from the kink
    text = "prelu_param { channel_shared: %s }" % ("true" if shared else "false")
    layer, bottom, top = build("PReLU", text, [x], in_place=in_place)
    assert layer.blobs[0].shape == (() if shared else (shape[1],))
    assert np.all(layer.blobs[0].data == 0.25)          # Caffe's default filler
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    assert_close(top[0].data, ref_prelu(x, layer.blobs[0].data, shared), 1e-15)
    bottom[0].data[...] = x
    gradient_check(layer, bottom, top)


def test_prelu_in_place_backward_uses_the_input():
    # In place, top overwrote bottom; the slope gradient needs the original x.
    x = np.array([[-2.0, 3.0], [1.0, -4.0]])
    layer, bottom, top = build("PReLU", 'prelu_param { filler { type: "constant" value: 0.5 }'
                               ' }', [x], in_place=True)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[-1.0, 3.0], [1.0, -2.0]])
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(layer.blobs[0].diff, [-2.0, -4.0])
    np.testing.assert_array_equal(bottom[0].diff, [[0.5, 1.0], [1.0, 0.5]])


def test_prelu_special_values_follow_caffes_expressions():
    # Caffe: top = max(x, 0) + a * min(x, 0) (std::max/min: NaN stays NaN);
    # dx = dy * ((x > 0) + a * (x <= 0)) (NaN x gives 0); da += dy * x * (x <= 0).
    x = np.array([[[np.nan, np.inf, -np.inf, 0.0, -0.0, 2.0, -3.0, 1.5, -0.5, 4.0, -1.0]]],
                 dtype=np.float32)
    layer, bottom, top = build("PReLU", 'prelu_param { filler { type: "constant" value: 0.25 }'
                               ' }', [x.astype(np.float32)])
    layer.forward(bottom, top)
    a = np.float32(0.25)
    with np.errstate(invalid="ignore"):
        expected = np.where(np.isnan(x), np.nan, np.maximum(x, 0) + a * np.minimum(x, 0))
    np.testing.assert_array_equal(top[0].data, expected)
    top[0].diff[...] = np.arange(1, x.size + 1, dtype=np.float32).reshape(x.shape)
    layer.backward(top, [True], bottom)
    dy = top[0].diff
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(bottom[0].diff, dy * ((x > 0) + a * (x <= 0)))
        finite = np.isfinite(x)
        slope = np.sum((dy * x * (x <= 0))[finite], dtype=np.float64)
    assert np.isnan(layer.blobs[0].diff[0])  # -inf * dy * 1 and inf * dy * 0 = NaN, as in Caffe
    x2 = np.where(finite, x, 1.0).astype(np.float32)
    layer.blobs[0].diff[...] = 0
    bottom[0].data[...] = x2
    layer.forward(bottom, top)
    layer.backward(top, [True], bottom)
    assert layer.blobs[0].diff[0] == np.float32(slope)


def test_prelu_float32_long_channels_match_float64():
    # Inner sizes that are not multiples of the kernel's 8 partial sums, many images.
    rng = np.random.default_rng(41)
    x = rng.standard_normal((5, 3, 7, 13)).astype(np.float32)
    layer, bottom, top = build("PReLU", "", [x])
    layer.blobs[0].data[...] = [0.1, -0.3, 0.7]
    layer.forward(bottom, top)
    top[0].diff[...] = rng.standard_normal(x.shape).astype(np.float32)
    layer.backward(top, [True], bottom)
    x64, dy64 = x.astype(np.float64), top[0].diff.astype(np.float64)
    a64 = layer.blobs[0].data.astype(np.float64).reshape(1, 3, 1, 1)
    assert_close(top[0].data, np.maximum(x64, 0) + a64 * np.minimum(x64, 0), 1e-7)
    assert_close(layer.blobs[0].diff, (dy64 * x64 * (x64 <= 0)).sum(axis=(0, 2, 3)), 1e-6)
    assert_close(bottom[0].diff, dy64 * np.where(x64 > 0, 1.0, a64), 1e-7)


def test_prelu_kernel_rejects_bad_arrays():
    from pyfacelayers import _C
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="2 slopes for 3 channels"):
        _C.prelu_forward(x, np.zeros(2, np.float32), np.zeros_like(x), False)
    with pytest.raises(TypeError, match="float32"):
        _C.prelu_forward(x, np.zeros(3), np.zeros_like(x), False)
    with pytest.raises(ValueError, match="shape differs"):
        _C.prelu_forward(x, np.zeros(3, np.float32), np.zeros((2, 3, 5), np.float32), False)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.prelu_backward(x, np.zeros((2, 4, 3), np.float32).transpose(0, 2, 1),
                          np.zeros(3, np.float32), None, None, False)
    with pytest.raises(ValueError, match="axes"):
        _C.prelu_forward(x[0], np.zeros(3, np.float32), x[0].copy(), False)
    with pytest.raises(ValueError, match="save must not overlap the bottom or the top"):
        _C.prelu_forward(x, np.zeros(3, np.float32), x, False, save=x)
    with pytest.raises(ValueError, match="save: shape differs"):
        _C.prelu_forward(x, np.zeros(3, np.float32), x, False, save=np.zeros(24, np.float32))


def test_prelu_errors():
    with pytest.raises(LayerError, match='"lay" \\(PReLU\\).*at least 2 axes'):
        build("PReLU", "", [np.zeros(3)])
    layer, bottom, top = build("PReLU", "", [np.zeros((2, 3))])
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match="4 channels"):
        layer.reshape(bottom, top)


# -- BatchNorm --------------------------------------------------------------------------------
def test_batch_norm_train_normalises_and_updates_running_stats():
    rng = np.random.default_rng(50)
    shape = (4, 3, 2, 5)
    layer, bottom, top = build("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 "
                               "eps: 0.001 }", [np.zeros(shape)], phase=TRAIN)
    assert not layer.use_global_stats
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    maf, eps = float(np.float32(0.9)), float(np.float32(0.001))
    m = 4 * 2 * 5
    run_mean, run_var, factor = np.zeros(3), np.zeros(3), 0.0
    for step in range(3):
        x = rng.standard_normal(shape) * (step + 1) + step
        bottom[0].data[...] = x
        layer.forward(bottom, top)
        mean = x.mean(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        expected = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
        assert_close(top[0].data, expected, 1e-12, "BN TRAIN forward")
        factor = factor * maf + 1
        run_mean = maf * run_mean + mean
        run_var = maf * run_var + var * m / (m - 1)
        assert_close(layer.blobs[2].data, [factor], 1e-15)
        assert_close(layer.blobs[0].data, run_mean, 1e-13)
        assert_close(layer.blobs[1].data, run_var, 1e-13)


@pytest.mark.parametrize("phase,text", [(TEST, ""), (TRAIN, "use_global_stats: true")])
def test_batch_norm_global_stats(phase, text):
    rng = np.random.default_rng(51)
    x = rng.standard_normal((3, 2, 4))
    layer, bottom, top = build("BatchNorm", "batch_norm_param { %s }" % text, [x], phase=phase)
    assert layer.use_global_stats
    layer.blobs[0].data[...] = [1.0, -2.0]
    layer.blobs[1].data[...] = [4.0, 0.5]
    layer.blobs[2].data[...] = 2.0
    layer.forward(bottom, top)
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    eps = float(np.float32(1e-5))
    expected = (x - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    assert_close(top[0].data, expected, 1e-14, "BN global forward")
    np.testing.assert_array_equal(layer.blobs[2].data, [2.0])        # not updated
    gradient_check(layer, bottom, top, check_params=False)
    # A zero scale factor (never trained) means zero statistics.
    layer.blobs[2].data[...] = 0
    layer.forward(bottom, top)
    assert_close(top[0].data, x / np.sqrt(eps), 1e-14)


@pytest.mark.parametrize("shape", [(4, 3, 2, 2), (5, 2), (6,)])
@pytest.mark.parametrize("in_place", [False, True])
def test_batch_norm_train_gradients(shape, in_place):
    x = np.random.default_rng(52).standard_normal(shape)
    layer, bottom, top = build("BatchNorm", "", [x], phase=TRAIN, in_place=in_place)
    _, params = gradient_check(layer, bottom, top, check_params=False)
    assert all(np.all(p == 0) for p in params)      # statistics get no gradient


def test_batch_norm_errors():
    with pytest.raises(LayerError, match='"lay" \\(BatchNorm\\).*cannot be learned'):
        build("BatchNorm", "param { lr_mult: 1 }", [np.zeros((2, 3))])
    layer, bottom, top = build("BatchNorm", "param { lr_mult: 0 }", [np.zeros((2, 3))])
    assert len(layer.param.param) == 3
    bottom[0].reshape(2, 4)
    with pytest.raises(LayerError, match="4 channels"):
        layer.reshape(bottom, top)


# -- Scale and Bias ---------------------------------------------------------------------------
SCALE_CASES = [
    # text, bottom shape, parameter shape, axis of the parameter
    ("", (2, 3, 4), (3,), 1),
    ("axis: 0 num_axes: -1", (2, 3, 2), (2, 3, 2), 0),
    ("axis: 1 num_axes: 2", (2, 3, 2, 2), (3, 2), 1),
    ("num_axes: 0", (2, 3), (), 0),
    ("axis: -1", (2, 3, 4), (4,), 2),
]


def broadcast(p, shape, axis):
    return p.reshape((1,) * axis + p.shape + (1,) * (len(shape) - axis - p.ndim))


@pytest.mark.parametrize("text,shape,pshape,axis", SCALE_CASES)
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_learned(text, shape, pshape, axis, bias_term):
    rng = np.random.default_rng(60)
    x = rng.standard_normal(shape)
    layer, bottom, top = build("Scale", "scale_param { %s bias_term: %s }"
                               % (text, "true" if bias_term else "false"), [x])
    assert layer.blobs[0].shape == pshape and np.all(layer.blobs[0].data == 1)
    if bias_term:
        assert layer.blobs[1].shape == pshape and np.all(layer.blobs[1].data == 0)
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    expected = x * broadcast(layer.blobs[0].data, shape, axis)
    if bias_term:
        expected = expected + broadcast(layer.blobs[1].data, shape, axis)
    assert_close(top[0].data, expected, 1e-15)
    gradient_check(layer, bottom, top)


@pytest.mark.parametrize("in_place", [False, True])
def test_scale_in_place_and_second_bottom(in_place):
    rng = np.random.default_rng(61)
    x = rng.standard_normal((2, 3, 4))
    layer, bottom, top = build("Scale", "scale_param { bias_term: true }", [x],
                               in_place=in_place)
    randomize_params(layer, rng)
    gradient_check(layer, bottom, top)
    s = rng.standard_normal((3, 4))
    layer, bottom, top = build("Scale", "scale_param { bias_term: true }", [x, s],
                               in_place=in_place)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (3, 4)
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    assert_close(top[0].data, x * s[None] + layer.blobs[0].data[None], 1e-15)
    bottom[0].data[...] = x
    gradient_check(layer, bottom, top)


@pytest.mark.parametrize("text,shape,pshape,axis", SCALE_CASES)
def test_bias_learned(text, shape, pshape, axis):
    rng = np.random.default_rng(62)
    x = rng.standard_normal(shape)
    layer, bottom, top = build("Bias", "bias_param { %s }" % text, [x])
    assert layer.blobs[0].shape == pshape and np.all(layer.blobs[0].data == 0)
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    assert_close(top[0].data, x + broadcast(layer.blobs[0].data, shape, axis), 1e-15)
    gradient_check(layer, bottom, top)


@pytest.mark.parametrize("in_place", [False, True])
def test_bias_second_bottom(in_place):
    rng = np.random.default_rng(63)
    x, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((3,))
    layer, bottom, top = build("Bias", "", [x, b], in_place=in_place)
    assert layer.blobs == []
    layer.forward(bottom, top)
    assert_close(top[0].data, x + b[None, :, None], 1e-15)
    bottom[0].data[...] = x
    gradient_check(layer, bottom, top)


@pytest.mark.parametrize("type_", ["Scale", "Bias"])
def test_scale_bias_errors(type_):
    field = "scale_param" if type_ == "Scale" else "bias_param"
    where = '"lay" \\(%s\\).*' % type_
    with pytest.raises(LayerError, match=where + "extends past"):
        build(type_, "%s { axis: 1 num_axes: 3 }" % field, [np.zeros((2, 3, 4))])
    with pytest.raises(LayerError, match=where + "num_axes must be >= 0"):
        build(type_, "%s { num_axes: -2 }" % field, [np.zeros((2, 3))])
    with pytest.raises(LayerError, match=where + "does not match"):
        build(type_, "", [np.zeros((2, 3, 4)), np.zeros((4,))])
    with pytest.raises(LayerError, match=where + "at most 2 bottom"):
        build(type_, "", [np.zeros((2, 3))] * 3)


# -- parity with the original Caffe (SphereFace-20, small) --------------------------------------
def _caffe_net_parts():
    from conftest import shared_path
    from pyfacelayers.fileio.blobs import blob_to_array

    folder = shared_path("fixtures", "caffe-ref", "B1_small")
    import os
    with open(os.path.join(folder, "B1_small_train.prototxt")) as f:
        net = text_format.Parse(f.read(), caffe_pb2.NetParameter())
    model = caffe_pb2.NetParameter()
    with open(os.path.join(folder, "B1_small.caffemodel"), "rb") as f:
        model.ParseFromString(f.read())
    weights = {layer.name: [blob_to_array(b) for b in layer.blobs] for layer in model.layer}
    params = {layer.name: layer for layer in net.layer}
    return folder, params, weights


def _residual_block(params, weights, names, x, dtype):
    """conv/PReLU x3 with res = out_a + out_c, as the SphereFace net wires them.
    Returns a backward function: d(res) -> (d(x), dict of param diffs)."""
    layers = {}
    blobs = {"in": Blob(x.shape, dtype=dtype)}
    blobs["in"].data[...] = x
    prev = "in"
    for conv, relu in names:
        c = create_layer(params[conv], TRAIN, dtype)
        r = create_layer(params[relu], TRAIN, dtype)
        blobs[conv] = Blob((), dtype=dtype)
        c.setup([blobs[prev]], [blobs[conv]])
        r.setup([blobs[conv]], [blobs[conv]])                    # in place, as in the net
        for layer, name in ((c, conv), (r, relu)):
            for blob, value in zip(layer.blobs, weights[name]):
                blob.data[...] = value
        c.forward([blobs[prev]], [blobs[conv]])
        r.forward([blobs[conv]], [blobs[conv]])
        layers[conv], layers[relu] = c, r
        prev = conv
    (a, ra), (b, rb), (c_, rc) = names
    res = blobs[a].data + blobs[c_].data

    def backward(d_res):
        for layer in layers.values():
            for blob in layer.blobs:
                blob.diff[...] = 0
        blobs[c_].diff[...] = d_res
        order = [(c_, rc, b), (b, rb, a)]
        for conv, relu, below in order:
            layers[relu].backward([blobs[conv]], [True], [blobs[conv]])
            layers[conv].backward([blobs[conv]], [True], [blobs[below]])
        blobs[a].diff[...] += d_res                             # the residual branch
        layers[ra].backward([blobs[a]], [True], [blobs[a]])
        layers[a].backward([blobs[a]], [True], [blobs["in"]])
        diffs = {"%s__%d" % (n, i): blob.diff.copy()
                 for n, layer in layers.items() for i, blob in enumerate(layer.blobs)}
        return blobs["in"].diff.copy(), blobs[a].diff.copy(), diffs

    return blobs[a].data.copy(), res, backward


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_sphereface_blocks_match_caffe(dtype, tol):
    """Two residual stages of the original Caffe's SphereFace-20 (B1_small fixture):
    Convolution (pad 1, stride 1 and 2) and in-place PReLU, forward and backward."""
    import os
    folder, params, weights = _caffe_net_parts()
    ref = np.load(os.path.join(folder, "B1_small_%s.npz" % ("f64" if dtype == np.float64
                                                              else "f32")))
    stage1 = [("conv1_1", "relu1_1"), ("conv1_2", "relu1_2"), ("conv1_3", "relu1_3")]
    stage2 = [("conv2_1", "relu2_1"), ("conv2_2", "relu2_2"), ("conv2_3", "relu2_3")]
    first, res1, back1 = _residual_block(params, weights, stage1, ref["input_data"], dtype)
    assert_close(first, ref["blob__conv1_1"], tol, "conv1_1 (after PReLU)")
    assert_close(res1, ref["blob__res1_3"], tol, "res1_3")
    _, res2, back2 = _residual_block(params, weights, stage2, ref["blob__res1_3"], dtype)
    assert_close(res2, ref["blob__res2_3"], tol, "res2_3")

    d_res1, _, diffs2 = back2(ref["blobdiff__res2_3"])
    assert_close(d_res1, ref["blobdiff__res1_3"], tol * 10, "diff res1_3")
    d_data, d_conv1_1, diffs1 = back1(ref["blobdiff__res1_3"])
    assert_close(d_conv1_1, ref["blobdiff__conv1_1"], tol * 10, "diff conv1_1")
    assert_close(d_data, ref["data_diff"], tol * 10, "diff data")
    for key, value in list(diffs1.items()) + list(diffs2.items()):
        assert_close(value, ref["diff__" + key], tol * 10, "param diff " + key)


# -- the im2col kernels directly ---------------------------------------------------------------
def ref_im2col(x, k, p, s, d):
    n, c, h, w = x.shape
    oh = (h + 2 * p[0] - (d[0] * (k[0] - 1) + 1)) // s[0] + 1
    ow = (w + 2 * p[1] - (d[1] * (k[1] - 1) + 1)) // s[1] + 1
    xp = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]))
    xp[:, :, p[0]:p[0] + h, p[1]:p[1] + w] = x
    col = np.zeros((c, k[0], k[1], n, oh, ow))
    for a in range(k[0]):
        for b in range(k[1]):
            rows = xp[:, :, a * d[0]:a * d[0] + s[0] * (oh - 1) + 1:s[0],
                      b * d[1]:b * d[1] + s[1] * (ow - 1) + 1:s[1]]
            col[:, a, b] = rows.transpose(1, 0, 2, 3)
    return col.reshape(c * k[0] * k[1], n, oh * ow)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_col2im_random_geometries(dtype):
    from pyfacelayers.layers._vision_kernels import col2im, im2col
    rng = np.random.default_rng(70)
    for _ in range(60):
        k = tuple(rng.integers(1, 4, 2))
        d = tuple(rng.integers(1, 3, 2))
        s = tuple(rng.integers(1, 4, 2))
        p = tuple(rng.integers(0, 4, 2))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(1, 8)),
                 int(rng.integers(1, 8)))
        ext = [d[i] * (k[i] - 1) + 1 for i in range(2)]
        if any(shape[2 + i] + 2 * p[i] < ext[i] for i in range(2)):
            continue
        x = rng.standard_normal(shape).astype(dtype)
        expected = ref_im2col(x.astype(np.float64), k, p, s, d)
        col = np.full(expected.shape, np.nan, dtype)
        im2col(x, col, k, p, s, d)
        np.testing.assert_array_equal(col, expected.astype(dtype))
        # col2im is the adjoint of im2col: <im2col(x), c> = <x, col2im(c)>.
        c = rng.standard_normal(expected.shape).astype(dtype)
        back = np.full(shape, np.nan, dtype)
        col2im(c, back, k, p, s, d)
        lhs = float(np.sum(expected * c.astype(np.float64)))
        rhs = float(np.sum(x.astype(np.float64) * back.astype(np.float64)))
        assert abs(lhs - rhs) <= 1e-4 * (1 + abs(lhs)), (k, d, s, p, shape)


# -- N-D convolution (three spatial axes) ------------------------------------------------------
def ref_conv_nd(x, w, b, stride, pad, dilation, group):
    """Convolution over any number of spatial axes, one output position at a time."""
    n_sp = x.ndim - 2
    m, cg = w.shape[:2]
    k = w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(q, q) for q in pad])
    out_size = [(x.shape[2 + i] + 2 * pad[i] - (dilation[i] * (k[i] - 1) + 1)) // stride[i] + 1
                for i in range(n_sp)]
    out = np.zeros((x.shape[0], m) + tuple(out_size))
    mg = m // group
    for pos in np.ndindex(*out_size):
        window = tuple(slice(pos[i] * stride[i],
                             pos[i] * stride[i] + dilation[i] * (k[i] - 1) + 1, dilation[i])
                       for i in range(n_sp))
        patch = xp[(slice(None), slice(None)) + window]
        for o in range(m):
            g = o // mg
            value = np.sum(patch[:, g * cg:(g + 1) * cg] * w[o], axis=tuple(range(1, n_sp + 2)))
            out[(slice(None), o) + pos] = value + (b[o] if b is not None else 0.0)
    return out


ND_CASES = [
    ("num_output: 2 kernel_size: 2", (2, 2, 3, 4, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1),
    ("num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 2 pad: 1 stride: 2 "
     "stride: 1 stride: 2 dilation: 1 dilation: 2 dilation: 1 group: 2",
     (1, 4, 5, 5, 4), (2, 1, 2), (1, 1, 1), (1, 2, 1), 2),
]


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", ND_CASES)
def test_convolution_3d(text, shape, stride, pad, dilation, group):
    rng = np.random.default_rng(80)
    x = rng.standard_normal(shape)
    layer, bottom, top = build("Convolution", "convolution_param { %s }" % text, [x])
    randomize_params(layer, rng)
    layer.forward(bottom, top)
    expected = ref_conv_nd(x, layer.blobs[0].data, layer.blobs[1].data, stride, pad, dilation,
                           group)
    assert top[0].shape == expected.shape
    assert_close(top[0].data, expected, 1e-12, "3-D convolution")
    gradient_check(layer, bottom, top)


@pytest.mark.parametrize("text,shape,stride,pad,dilation,group", ND_CASES)
def test_deconvolution_3d_is_the_adjoint(text, shape, stride, pad, dilation, group):
    # Deconvolution with the same weights is the transpose of Convolution:
    # <conv(x), y> = <x, deconv(y)> (no bias).
    rng = np.random.default_rng(81)
    x = rng.standard_normal(shape)
    text_nb = text + " bias_term: false"
    conv, cb, ct = build("Convolution", "convolution_param { %s }" % text_nb, [x])
    randomize_params(conv, rng)
    conv.forward(cb, ct)
    # A Deconvolution from num_output channels back to the input channels.
    channels = shape[1]
    y = rng.standard_normal(ct[0].shape)
    deconv_text = text_nb.replace("num_output: %d" % ct[0].shape[1], "num_output: %d" % channels)
    deconv, db, dt = build("Deconvolution", "convolution_param { %s }" % deconv_text, [y])
    assert deconv.blobs[0].shape == conv.blobs[0].shape
    deconv.blobs[0].data[...] = conv.blobs[0].data
    deconv.forward(db, dt)
    assert dt[0].shape == x.shape
    lhs, rhs = np.sum(ct[0].data * y), np.sum(x * dt[0].data)
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1)
    gradient_check(deconv, db, dt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_nd_agrees_with_2d_and_reference(dtype):
    from pyfacelayers import _C
    rng = np.random.default_rng(82)
    for _ in range(30):
        k = tuple(int(v) for v in rng.integers(1, 4, 2))
        d = tuple(int(v) for v in rng.integers(1, 3, 2))
        s = tuple(int(v) for v in rng.integers(1, 4, 2))
        p = tuple(int(v) for v in rng.integers(0, 3, 2))
        shape = (2, 2, int(rng.integers(3, 8)), int(rng.integers(3, 8)))
        if any(shape[2 + i] + 2 * p[i] < d[i] * (k[i] - 1) + 1 for i in range(2)):
            continue
        x = rng.standard_normal(shape).astype(dtype)
        expected = ref_im2col(x.astype(np.float64), k, p, s, d).astype(dtype)
        col = np.full(expected.shape, np.nan, dtype)
        _C.im2col_nd(x, col, list(k), list(p), list(s), list(d))
        np.testing.assert_array_equal(col, expected)
        back2, backn = np.empty(shape, dtype), np.empty(shape, dtype)
        _C.col2im(col, back2, k[0], k[1], p[0], p[1], s[0], s[1], d[0], d[1])
        _C.col2im_nd(col, backn, list(k), list(p), list(s), list(d))
        np.testing.assert_array_equal(back2, backn)
    with pytest.raises(ValueError, match="one value per spatial axis"):
        _C.im2col_nd(np.zeros((1, 1, 3, 3, 3)), np.zeros((8, 1, 8)), [2, 2], [0, 0], [1, 1],
                     [1, 1])
    with pytest.raises(ValueError, match="column buffer must have shape"):
        _C.im2col_nd(np.zeros((1, 1, 3, 3, 3)), np.zeros((8, 1, 9)), [2, 2, 2], [0, 0, 0],
                     [1, 1, 1], [1, 1, 1])


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("carried", [0.0, 0.5])
def test_inner_product_weight_gradient_adds_to_the_diff(monkeypatch, transpose, carried):
    # Written straight into a zero diff, or added block by block (3 rows per block).
    import pyfacelayers.layers._products as products
    monkeypatch.setattr(products, "CHUNK_BYTES", 3 * 8 * (7 if transpose else 5))
    from pyfacelayers.layers import create_layer
    from pyfacelayers.proto import caffe_pb2
    from pyfacelayers.blob import Blob
    lp = caffe_pb2.LayerParameter(name="ip", type="InnerProduct")
    lp.inner_product_param.num_output = 7
    lp.inner_product_param.transpose = transpose
    lp.inner_product_param.weight_filler.type = "gaussian"
    layer = create_layer(lp, dtype=np.float64)
    rng = np.random.default_rng(5)
    bottom, top = [Blob((4, 5), np.float64)], [Blob((), np.float64)]
    bottom[0].data[...] = rng.normal(size=(4, 5))
    layer.setup(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = rng.normal(size=(4, 7))
    layer.blobs[0].diff[...] = carried
    layer.backward(top, [True], bottom)
    product = bottom[0].data.T @ top[0].diff if transpose else top[0].diff.T @ bottom[0].data
    np.testing.assert_allclose(layer.blobs[0].diff, carried + product, rtol=1e-13, atol=1e-13)
