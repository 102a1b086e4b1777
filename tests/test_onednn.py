"""The oneDNN convolution engine (pyfacelayers/cpu/onednn.py) on the CPU.

1. Every geometry (groups, stride, pad, dilation, 1-D, rectangular kernels, outputs
   Caffe floors) through the Convolution layer with oneDNN against the same layer on
   im2col: forward (with and without bias), backward data, backward weights, bias
   gradient, within the one-layer tolerance; in both layouts (oneDNN's choice and plain).
2. The engine choice (PYFACELAYERS_CONV_ENGINE, the engine field, float64), loading
   (missing library, not oneDNN) and the errors, which name the layer.
3. Against the real headers when the devel wheel is installed: every function we call is
   called in C with our argument types and compiled with conversions as errors, and the
   enum values we use are compared.
Whole-net parity with oneDNN on is the rest of the suite (it runs oneDNN by default when
the library loads; PYFACELAYERS_CONV_ENGINE=caffe runs it on im2col).
"""

import ctypes
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import assert_close

from pyfacelayers.blob import Blob
from pyfacelayers.cpu import onednn
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

HAVE_ONEDNN, WHY = onednn.available()
needs_onednn = pytest.mark.skipif(not HAVE_ONEDNN, reason="oneDNN not installed "
                                  "(pip install 'pyfacelayers[onednn]'): %s" % WHY)
ENV_VARS = ("PYFACELAYERS_CONV_ENGINE", "PYFACELAYERS_ONEDNN_LIBRARY",
            "PYFACELAYERS_ONEDNN_CONV_ALGO", "PYFACELAYERS_ONEDNN_LAYOUT")

GEOMETRIES = {  # convolution_param text, bottom shape
    "3x3_pad": ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 7, 6)),
    "stride_dilation_group": ("num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 2 "
                              "pad_w: 1 dilation: 2 group: 3", (2, 6, 11, 9)),
    "1d": ("num_output: 3 kernel_size: 3 stride: 2", (3, 2, 10)),
    "1d_pad_dilation": ("num_output: 5 kernel_size: 2 pad: 3 dilation: 3", (2, 4, 9)),
    "1x1": ("num_output: 7 kernel_size: 1", (2, 5, 4, 3)),
    "1x1_stride": ("num_output: 3 kernel_size: 1 stride: 2", (1, 4, 7, 5)),
    "depthwise": ("num_output: 8 kernel_size: 3 pad: 1 group: 8", (2, 8, 6, 7)),
    "floored_output": ("num_output: 4 kernel_size: 2 stride: 3", (2, 3, 10, 8)),
    "big_pad": ("num_output: 2 kernel_size: 3 pad: 4 stride: 2", (1, 3, 5, 4)),
    "rect_stride": ("num_output: 6 kernel_h: 5 kernel_w: 1 stride_h: 1 stride_w: 2 "
                    "pad_h: 2 pad_w: 0", (2, 4, 9, 8)),
    "sphereface_block": ("num_output: 16 kernel_size: 3 stride: 2 pad: 1", (3, 8, 14, 12)),
    "batch1_wide": ("num_output: 32 kernel_size: 3 pad: 1 group: 2", (1, 16, 9, 8)),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(onednn, "_warned", set())


def run_conv(params, shape, dtype=np.float32, bias=True, down=True, seed=0):
    """The Convolution layer's forward and backward on the CPU, with whatever engine the
    environment picks; returns the layer and its arrays."""
    bias_text = 'bias_filler { type: "gaussian" std: 1 }' if bias else "bias_term: false"
    lp = text_format.Parse('name: "c" type: "Convolution" convolution_param { %s '
                           'weight_filler { type: "gaussian" std: 0.5 } %s }'
                           % (params, bias_text), caffe_pb2.LayerParameter())
    layer = create_layer(lp, phase=caffe_pb2.TRAIN, dtype=dtype,
                         rng=np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)
    bottom, top = [Blob(shape, dtype=dtype)], [Blob((), dtype=dtype)]
    bottom[0].data = rng.standard_normal(shape).astype(dtype)
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    top[0].data = np.full(top[0].shape, 9.0, dtype)  # forward overwrites
    layer.forward(bottom, top)
    top[0].diff = rng.standard_normal(top[0].shape).astype(dtype)
    bottom[0].diff = np.full(shape, 5.0, dtype)  # backward data overwrites
    for blob in layer.blobs:
        blob.diff = np.ones(blob.shape, dtype)  # parameter gradients add
    layer.backward(top, [down], bottom)
    out = dict(y=top[0].data.copy(), dx=bottom[0].diff.copy(),
               dw=layer.blobs[0].diff.copy())
    if bias:
        out["db"] = layer.blobs[1].diff.copy()
    return layer, out


def im2col_reference(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
        layer, out = run_conv(*args, **kwargs)
    assert getattr(layer, "_onednn_conv", None) is None
    return out


@needs_onednn
@pytest.mark.parametrize("layout", onednn.LAYOUTS)
@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_every_geometry_matches_im2col(monkeypatch, geometry, bias, layout):
    params, shape = GEOMETRIES[geometry]
    ref = im2col_reference(monkeypatch, params, shape, bias=bias)
    monkeypatch.setenv("PYFACELAYERS_ONEDNN_LAYOUT", layout)
    layer, out = run_conv(params, shape, bias=bias)
    assert layer._onednn_conv is not None  # oneDNN ran
    assert set(layer._onednn_conv[1].implementations()) == {
        "forward", "backward_data", "backward_filter"}
    for key in ref:
        assert_close(out[key], ref[key], 1e-5, key)


@needs_onednn
def test_without_propagate_down_the_bottom_diff_is_untouched(monkeypatch):
    params, shape = GEOMETRIES["stride_dilation_group"]
    ref = im2col_reference(monkeypatch, params, shape, down=False)
    layer, out = run_conv(params, shape, down=False)
    assert np.all(out["dx"] == 5.0)
    assert "backward_data" not in layer._onednn_conv[1].implementations()
    assert_close(out["dw"], ref["dw"], 1e-5, "dw")


@needs_onednn
def test_a_new_batch_size_builds_new_primitives(monkeypatch):
    params, shape = GEOMETRIES["3x3_pad"]
    layer, _ = run_conv(params, shape)
    first = layer._onednn_conv[1]
    bottom, top = [Blob((5,) + shape[1:])], [Blob(())]
    bottom[0].data = np.random.default_rng(3).standard_normal(bottom[0].shape)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert layer._onednn_conv[1] is not first and layer._onednn_conv[1].x_shape[0] == 5
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
    expected = Blob(top[0].shape)
    layer.forward(bottom, [expected])
    assert_close(top[0].data, expected.data, 1e-5, "batch of 5")


@needs_onednn
def test_winograd_is_an_opt_in(monkeypatch):
    """``auto`` lets oneDNN choose (Winograd where it has one); the default is direct."""
    params, shape = "num_output: 16 kernel_size: 3 pad: 1", (2, 16, 12, 12)
    ref = im2col_reference(monkeypatch, params, shape)
    layer, _ = run_conv(params, shape)
    assert layer._onednn_conv[1].algo == onednn.CONV_DIRECT
    monkeypatch.setenv("PYFACELAYERS_ONEDNN_CONV_ALGO", "auto")
    layer, out = run_conv(params, shape)
    assert layer._onednn_conv[1].algo == onednn.CONV_AUTO
    assert_close(out["y"], ref["y"], 1e-4, "forward (auto)")


# -- engine choice ------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("setting,engine,dtype,used", [
    (None, "", np.float32, True),
    ("auto", "", np.float32, True),
    ("onednn", "", np.float32, True),
    ("cudnn", "", np.float32, True),  # the GPU's engine: the CPU keeps its own choice
    ("caffe", "", np.float32, False),
    (None, "engine: CAFFE", np.float32, False),
    (None, "engine: CUDNN", np.float32, True),
    ("onednn", "", np.float64, False),  # float64 stays on im2col
])
def test_engine_choice(monkeypatch, setting, engine, dtype, used):
    if setting:
        monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", setting)
    params, shape = GEOMETRIES["3x3_pad"]
    layer, _ = run_conv(params + " " + engine, shape, dtype=dtype)
    assert (getattr(layer, "_onednn_conv", None) is not None) == used


def test_missing_library(monkeypatch, tmp_path, caplog):
    missing = str(tmp_path / "libdnnl.so.3")
    monkeypatch.setenv("PYFACELAYERS_ONEDNN_LIBRARY", missing)
    assert onednn.candidate_paths() == [missing]
    ok, why = onednn.available()
    assert not ok and "oneDNN not found" in why and missing in why
    params, shape = GEOMETRIES["3x3_pad"]
    with caplog.at_level(logging.INFO, logger="pyfacelayers"):
        layer, _ = run_conv(params, shape)  # auto: im2col, said once
        run_conv(params, shape)
    assert getattr(layer, "_onednn_conv", None) is None
    assert len([r for r in caplog.records if "im2col" in r.getMessage()]) == 1
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "onednn")
    with pytest.raises(LayerError, match=r'layer "c" \(Convolution\): oneDNN not found.*'
                                         'tried: %s' % missing):
        run_conv(params, shape)


def test_a_library_that_is_not_onednn_is_refused(monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_ONEDNN_LIBRARY", "libm.so.6")
    with pytest.raises(onednn.OnednnUnavailable, match="libm.so.6: not a oneDNN library"):
        onednn.library()


def test_wheel_location_is_searched(monkeypatch, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libdnnl.so.3").write_bytes(b"")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert onednn.candidate_paths()[0] == str(tmp_path / "lib" / "libdnnl.so.3")
    assert onednn.candidate_paths()[-1] == "libdnnl.so.3"


@pytest.mark.parametrize("name,value", [("PYFACELAYERS_CONV_ENGINE", "fast"),
                                        ("PYFACELAYERS_ONEDNN_CONV_ALGO", "winograd"),
                                        ("PYFACELAYERS_ONEDNN_LAYOUT", "blocked")])
def test_bad_settings_name_the_variable_and_the_layer(monkeypatch, name, value):
    if name != "PYFACELAYERS_CONV_ENGINE" and not HAVE_ONEDNN:
        pytest.skip(WHY)
    monkeypatch.setenv(name, value)
    with pytest.raises(LayerError, match=r'layer "c" \(Convolution\).*%s' % name):
        run_conv(*GEOMETRIES["3x3_pad"])


@needs_onednn
def test_wrong_arrays_are_refused_before_onednn_runs():
    conv = onednn.Convolution2d((2, 3, 7, 6), (4, 3, 3, 3), (2, 4, 7, 6), (1, 1), (1, 1),
                                (1, 1), 1)
    x, w, y = (np.zeros(s, np.float32) for s in (conv.x_shape, conv.w_shape, conv.y_shape))
    with pytest.raises(ValueError, match="x must be a C-contiguous float32 array, got float64"):
        conv.forward(x.astype(np.float64), w, y)
    with pytest.raises(ValueError, match=r"y must be a C-contiguous float32 array, got "
                                         r"float32 with strides \(168, 42, 1, 7\)"):
        conv.forward(x, w, np.zeros((2, 4, 6, 7), np.float32).transpose(0, 1, 3, 2))
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 7, 5\), expected"):
        conv.backward_data(w, np.zeros((2, 4, 7, 5), np.float32), x)
    with pytest.raises(ValueError, match="must be non-empty"):
        onednn.Convolution2d((0, 3, 7, 6), (4, 3, 3, 3), (0, 4, 7, 6), (1, 1), (1, 1),
                             (1, 1), 1)


@needs_onednn
def test_an_output_size_caffe_would_not_give_is_refused():
    with pytest.raises(ValueError, match=r"input \(1, 3, 7, 6\) with weight \(4, 3, 3, 3\) "
                                         r"gives an output of \(5, 4\), not \(9, 9\)"):
        onednn.Convolution2d((1, 3, 7, 6), (4, 3, 3, 3), (1, 4, 9, 9), (0, 0), (1, 1),
                             (1, 1), 1)


@needs_onednn
def test_a_failing_call_names_the_function_and_status():
    lib = onednn.library()
    with pytest.raises(onednn.OnednnError, match=r"dnnl_memory_desc_create_with_tag failed: "
                                                 r"invalid_arguments \(status 2; oneDNN 3"):
        lib.new("dnnl_memory_desc_create_with_tag", 13, onednn.Dims(), onednn.F32,
                onednn.TAG_ABCD)


# -- the real headers ------------------------------------------------------------------
def _include():
    for prefix in (sys.prefix, os.path.dirname(os.path.dirname(onednn.candidate_paths()[0]))):
        path = os.path.join(prefix, "include")
        if os.path.exists(os.path.join(path, "oneapi", "dnnl", "dnnl.h")):
            return path
    return None


C_TYPES = {ctypes.c_void_p: "(void *)0", ctypes.c_int: "i", ctypes.c_uint: "u",
           ctypes.c_size_t: "z", ctypes.c_float: "f"}


@pytest.mark.skipif(_include() is None or shutil.which("cc") is None,
                    reason="no oneDNN headers (pip install onednn-devel-cpu-gomp) or no "
                           "C compiler")
def test_declarations_match_the_real_headers(tmp_path):
    calls = []
    for name, argtypes in onednn._SIGNATURES.items():
        args = []
        for t in argtypes:
            if t in C_TYPES:
                args.append(C_TYPES[t])
            elif t is onednn._D:
                args.append("d")
            else:  # pointers to handles and to dnnl_exec_arg_t
                args.append("(void *)0")
        calls.append("    s = %s(%s);" % (name, ", ".join(args)))
    constants = {
        "dnnl_success": onednn.SUCCESS, "dnnl_f32": onednn.F32,
        "dnnl_data_type_undef": onednn.DATA_TYPE_UNDEF,
        "dnnl_format_tag_any": onednn.TAG_ANY, "dnnl_a": onednn.TAG_A,
        "dnnl_ab": onednn.TAG_AB, "dnnl_abcd": onednn.TAG_ABCD,
        "dnnl_abcde": onednn.TAG_ABCDE, "dnnl_cpu": onednn.ENGINE_CPU,
        "dnnl_stream_default_flags": onednn.STREAM_DEFAULT_FLAGS,
        "dnnl_forward_training": onednn.FORWARD_TRAINING,
        "dnnl_forward_inference": onednn.FORWARD_INFERENCE,
        "dnnl_convolution_direct": onednn.CONV_DIRECT,
        "dnnl_convolution_auto": onednn.CONV_AUTO, "dnnl_eltwise_relu": onednn.ELTWISE_RELU,
        "dnnl_query_impl_info_str": onednn.QUERY_IMPL_INFO_STR,
        "dnnl_query_exec_arg_md": onednn.QUERY_EXEC_ARG_MD,
        "DNNL_ARG_SRC": onednn.ARG_SRC, "DNNL_ARG_DST": onednn.ARG_DST,
        "DNNL_ARG_WEIGHTS": onednn.ARG_WEIGHTS, "DNNL_ARG_BIAS": onednn.ARG_BIAS,
        "DNNL_ARG_DIFF_SRC": onednn.ARG_DIFF_SRC, "DNNL_ARG_DIFF_DST": onednn.ARG_DIFF_DST,
        "DNNL_ARG_DIFF_WEIGHTS": onednn.ARG_DIFF_WEIGHTS,
        "DNNL_ARG_ATTR_MULTIPLE_POST_OP(0)": onednn.ARG_POST_OP_BASE,
        "DNNL_MAX_NDIMS": onednn.MAX_NDIMS, "sizeof(dnnl_exec_arg_t)":
            ctypes.sizeof(onednn.ExecArg), "sizeof(dnnl_version_t)":
            ctypes.sizeof(onednn.Version)}
    constants.update({"dnnl_%s" % v: k for k, v in onednn.STATUS_NAMES.items()})
    checks = ["    _Static_assert((%s) == %d, \"%s\");" % (c, v, c) for c, v in constants.items()]
    source = tmp_path / "check.c"
    source.write_text("#include <stdint.h>\n#include <stddef.h>\n"
                      "#include \"oneapi/dnnl/dnnl.h\"\n"
                      "void check(int i, unsigned u, size_t z, float f, int64_t *d) {\n"
                      "    dnnl_status_t s;\n%s\n%s\n    (void)s;\n}\n"
                      % ("\n".join(calls), "\n".join(checks)))
    result = subprocess.run(["cc", "-std=c11", "-c", "-Wall", "-Wconversion", "-Werror",
                             "-I", _include(), str(source), "-o", str(tmp_path / "check.o")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_documented_check_runs():
    """docs/onednn.md: the one-liner that says whether oneDNN loads, and from where."""
    out = subprocess.run([sys.executable, "-c", "from pyfacelayers.cpu import onednn; "
                          "print(onednn.available())"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         check=True).stdout
    if HAVE_ONEDNN:
        assert out.startswith("(True, 'oneDNN 3.") and "libdnnl.so" in out
    else:
        assert out.startswith("(False, 'oneDNN not found")


@needs_onednn
def test_backward_reuses_the_forward_reorder_of_x_only_while_x_is_unchanged(monkeypatch):
    """The weight gradient reads x as oneDNN's forward reordered it, unless someone took
    the bottom's data in between (Blob.data_version): then x is reordered again."""
    params, shape = "num_output: 32 kernel_size: 3 pad: 1", (2, 16, 9, 8)

    def passes(change_x, count=None):
        lp = text_format.Parse('name: "c" type: "Convolution" convolution_param { %s '
                               'weight_filler { type: "gaussian" std: 0.5 } }' % params,
                               caffe_pb2.LayerParameter())
        layer = create_layer(lp, phase=caffe_pb2.TRAIN, dtype=np.float32,
                             rng=np.random.default_rng(0))
        rng = np.random.default_rng(1)
        bottom, top = [Blob(shape, dtype=np.float32)], [Blob((), dtype=np.float32)]
        bottom[0].data = rng.standard_normal(shape).astype(np.float32)
        layer.setup(bottom, top)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        if change_x:
            bottom[0].data[...] *= -2  # taken through .data: a new version
        top[0].diff = rng.standard_normal(top[0].shape).astype(np.float32)
        if count is not None:
            count.clear()
        layer.backward(top, [True], bottom)
        passes.layer = layer
        return layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy(), bottom[0].diff.copy()

    lib = onednn.library()
    executed = []
    real_call = type(lib).call

    def call(self, name, *args):
        if name == "dnnl_primitive_execute":
            executed.append(name)
        return real_call(self, name, *args)
    for change_x in (False, True):
        with monkeypatch.context() as patch:
            patch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
            expected = passes(change_x)
        monkeypatch.setattr(type(lib), "call", call)
        got = passes(change_x, executed)
        monkeypatch.setattr(type(lib), "call", real_call)
        for what, a, b in zip(("dw", "db", "dx"), got, expected):
            assert_close(a, b, 1e-5, "%s (x changed: %s)" % (what, change_x))
        if change_x:
            assert len(executed) == kept + 1  # x reordered again
        else:
            kept = len(executed)
    # dy is reordered once for both backward passes where they want the same layout
    steps = passes.layer._onednn_conv[1]._steps
    dy_buffers = {id(buffer) for direction in ("backward_filter", "backward_data")
                  for arg, _, _, buffer in steps[direction].before
                  if arg == onednn.ARG_DIFF_DST}
    assert len(dy_buffers) == 1
