"""The cuDNN binding (pyfacelayers/gpu/cudnn.py) without a GPU.

1. Against a host-memory stand-in library (tests/cudnn_standin.c, built here with the C
   compiler): argument order, alpha/beta (forward and data overwrite, filter adds),
   groups/stride/pad/dilation, float32/float64, the algorithm choice in both modes,
   the workspace cap, descriptor clean-up and every error path. Results are compared
   with the CPU Convolution layer (im2col), which the Caffe fixtures check.
2. Against the real libcudnn when one is installed (PFL_TEST_CUDNN_LIBRARY or the
   nvidia-cudnn wheel): the descriptor calls and cuDNN's own output-size computation,
   which need no GPU. Skipped otherwise.
3. Against the real cudnn.h when present (PFL_TEST_CUDNN_INCLUDE or the wheel): every
   declared signature is called in C with our argument types and compiled with
   conversions as errors; the AlgoPerf layout and enum values are compared. Skipped
   otherwise.
The GPU runs themselves are in test_gpu.py (engine: CUDNN cases).
"""

import ctypes
import gc
import glob
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import assert_close

from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.gpu import cudnn
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = {np.float32: 1e-5, np.float64: 1e-10}
ENV_VARS = ("PYFACELAYERS_CUDNN_LIBRARY", "PYFACELAYERS_CUDNN_ALGOS",
            "PYFACELAYERS_CUDNN_WINOGRAD", "PYFACELAYERS_CUDNN_WORKSPACE_MB", "PYFACELAYERS_CONV_ENGINE", "STANDIN_VERSION",
            "STANDIN_NO_DEVICE", "STANDIN_FIND_FAILS")


def _compiler():
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory):
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler to build the cuDNN stand-in")
    out = str(tmp_path_factory.mktemp("cudnn") / "libcudnn_standin.so")
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", out,
                    os.path.join(HERE, "cudnn_standin.c")], check=True)
    return out


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No test sees another's library choice, settings or cached library."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cudnn, "_loaded", {})
    monkeypatch.setattr(cudnn, "_warned", set())


@pytest.fixture
def standin(standin_path, monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", standin_path)
    lib = cudnn.library()
    probe = ctypes.CDLL(standin_path)  # the same loaded object: its counters
    for name in ("standin_live_descriptors", "standin_last_algo", "standin_runs"):
        getattr(probe, name).restype = ctypes.c_int
    return lib, probe


# -- the CPU layer as the reference ------------------------------------------------------
GEOMETRIES = {
    "3x3_pad": ("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 7, 6)),
    "stride_dilation_group": ("num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 2 "
                              "pad_w: 1 dilation: 2 group: 3", (2, 6, 11, 9)),
    "1d": ("num_output: 3 kernel_size: 3 stride: 2", (3, 2, 10)),
}


def cpu_conv(params, shape, dtype, seed=0, bias=False):
    """The layer's forward and backward (on the CPU, im2col): x, w, y, dy, dx, dw."""
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
    layer.forward(bottom, top)
    top[0].diff = rng.standard_normal(top[0].shape).astype(dtype)
    layer.blobs[0].diff = np.zeros(layer.blobs[0].shape, dtype)
    layer.backward(top, [True], bottom)
    return layer, dict(x=bottom[0].data.copy(), w=layer.blobs[0].data.copy(),
                       y=top[0].data.copy(), dy=top[0].diff.copy(),
                       dx=bottom[0].diff.copy(), dw=layer.blobs[0].diff.copy())


def as4d(a):
    return a.reshape(a.shape[:2] + (1,) * (4 - a.ndim) + a.shape[2:])


def plan_for(layer, ref, dtype, **kwargs):
    x4, w4, y4 = as4d(ref["x"]), as4d(ref["w"]), as4d(ref["y"])
    return cudnn.Convolution2d(x4.shape, w4.shape, y4.shape, layer.p2, layer.s2, layer.d2,
                               layer.group, dtype, **kwargs), x4, w4, y4


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_standin_matches_the_cpu_layer(standin, geometry, dtype):
    layer, ref = cpu_conv(*GEOMETRIES[geometry], dtype)
    conv, x4, w4, y4 = plan_for(layer, ref, dtype)
    y = np.full(y4.shape, 7.0, dtype)  # forward overwrites
    conv.forward(x4, w4, y)
    assert_close(y, y4, TOL[dtype], "forward")
    dx = np.full(x4.shape, 7.0, dtype)  # backward data overwrites (Caffe's bottom diff)
    conv.backward_data(w4, as4d(ref["dy"]), dx)
    assert_close(dx, as4d(ref["dx"]), TOL[dtype], "backward data")
    dw = np.ones(w4.shape, dtype)  # backward filter adds (Caffe's parameter diff)
    conv.backward_filter(x4, as4d(ref["dy"]), dw)
    assert_close(dw - 1, as4d(ref["dw"]), TOL[dtype], "backward filter")


CHOICES = {  # mode, Find fails, Winograd allowed -> what the stand-in's offers must give
    ("deterministic", False, False): {"forward": 3, "backward_data": 1, "backward_filter": 6},
    ("deterministic", True, False): {"forward": 1, "backward_data": 1, "backward_filter": 2},
    ("deterministic", False, True): {"forward": 7, "backward_data": 4, "backward_filter": 6},
    ("reproducible", False, False): {"forward": 1, "backward_data": 1, "backward_filter": 2},
    ("reproducible", False, True): {"forward": 6, "backward_data": 5, "backward_filter": 2},
    ("fastest", False, False): {"forward": 3, "backward_data": 0, "backward_filter": 6},
    ("fastest", True, False): {"forward": 1, "backward_data": 0, "backward_filter": 3},
}


@pytest.mark.parametrize("mode,find_fails,winograd", sorted(CHOICES))
def test_algorithm_choice_skips_what_would_change_the_numbers(standin, monkeypatch, mode,
                                                               find_fails, winograd):
    """Winograd (unless asked for), tensor-op math, failed entries and over-cap
    workspaces are skipped; FFT is kept; deterministic and reproducible modes take
    deterministic algorithms only (timed, or cuDNN's heuristic); a failing Find falls
    back to the heuristic."""
    monkeypatch.setenv("PYFACELAYERS_CUDNN_ALGOS", mode)
    monkeypatch.setenv("PYFACELAYERS_CUDNN_WINOGRAD", "1" if winograd else "0")
    if find_fails:
        monkeypatch.setenv("STANDIN_FIND_FAILS", "1")
    _, probe = standin
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    conv, x4, w4, y4 = plan_for(layer, ref, np.float32)
    conv.forward(x4, w4, np.empty_like(y4))
    conv.backward_data(w4, as4d(ref["dy"]), np.empty_like(x4))
    conv.backward_filter(x4, as4d(ref["dy"]), np.zeros_like(w4))
    expected = CHOICES[(mode, find_fails, winograd)]
    for index, direction in enumerate(("forward", "backward_data", "backward_filter")):
        assert probe.standin_last_algo(index) == expected[direction], direction
        assert conv.algos[direction][0] == expected[direction]
    names = conv.algorithm_names()
    assert set(names) == set(expected) and "KiB workspace" in names["forward"]


def test_workspace_cap_with_nothing_under_it_is_a_clear_error(standin, monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_CUDNN_WORKSPACE_MB", "0")
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    conv, x4, w4, y4 = plan_for(layer, ref, np.float32)
    with pytest.raises(cudnn.CudnnError, match=r"no usable cuDNN forward algorithm.*"
                                                 r"\(2, 3, 7, 6\).*limit 0 MiB"):
        conv.forward(x4, w4, np.empty_like(y4))


@pytest.mark.parametrize("name,value", [("PYFACELAYERS_CUDNN_ALGOS", "quick"),
                                        ("PYFACELAYERS_CUDNN_WINOGRAD", "yes"),
                                        ("PYFACELAYERS_CUDNN_WORKSPACE_MB", "lots"),
                                        ("PYFACELAYERS_CUDNN_WORKSPACE_MB", "-1"),
                                        ("PYFACELAYERS_CONV_ENGINE", "fast")])
def test_bad_settings_are_refused(standin, monkeypatch, name, value):
    if name != "PYFACELAYERS_CONV_ENGINE":
        layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        if name == "PYFACELAYERS_CONV_ENGINE":
            cudnn.engine_wanted(cudnn.ENGINE_DEFAULT)
        else:
            conv, x4, w4, y4 = plan_for(layer, ref, np.float32)
            conv.forward(x4, w4, np.empty_like(y4))


def test_descriptors_are_destroyed_with_the_plan(standin):
    _, probe = standin
    before = probe.standin_live_descriptors()
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float64)
    conv = plan_for(layer, ref, np.float64)[0]
    assert probe.standin_live_descriptors() == before + 4  # x, y, filter, convolution
    del conv
    gc.collect()
    assert probe.standin_live_descriptors() == before


def test_wrong_arrays_are_refused_before_cudnn_runs(standin):
    _, probe = standin
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    conv, x4, w4, y4 = plan_for(layer, ref, np.float32)
    runs = probe.standin_runs(0)
    with pytest.raises(ValueError, match=r"x has shape \(2, 3, 7, 5\), expected \(2, 3, 7, 6\)"):
        conv.forward(x4[..., :5].copy(), w4, np.empty_like(y4))
    with pytest.raises(ValueError, match="C-contiguous float32 array, got float64"):
        conv.forward(x4.astype(np.float64), w4, np.empty_like(y4))
    with pytest.raises(ValueError, match="not contiguous"):
        conv.forward(x4, w4, np.empty(y4.shape[::-1], np.float32).T)
    assert probe.standin_runs(0) == runs
    with pytest.raises(ValueError, match="float32 or float64"):
        cudnn.Convolution2d(x4.shape, w4.shape, y4.shape, (1, 1), (1, 1), (1, 1), 1, np.int32)
    assert cudnn.fits((2, 3, 7, 6), (4, 3, 3, 3))
    assert not cudnn.fits((0, 3, 7, 6))  # an empty batch: the layer keeps im2col
    assert not cudnn.fits((2 ** 16, 2 ** 15, 1, 1))
    with pytest.raises(ValueError, match="non-empty and under 2\\^31 elements"):
        cudnn.Convolution2d((2 ** 16, 2 ** 16, 1, 1), (1, 2 ** 16, 1, 1), (2 ** 16, 1, 1, 1),
                            (0, 0), (1, 1), (1, 1), 1, np.float32)


def test_an_output_size_cudnn_disagrees_with_is_refused(standin):
    with pytest.raises(cudnn.CudnnError, match=r"cuDNN computes an output of \(2, 4, 7, 6\)"):
        cudnn.Convolution2d((2, 3, 7, 6), (4, 3, 3, 3), (2, 4, 8, 6), (1, 1), (1, 1), (1, 1),
                            1, np.float32)


def test_a_failing_call_names_the_function_and_status(standin, monkeypatch):
    lib, _ = standin
    monkeypatch.setattr(lib, "handles", {})
    monkeypatch.setenv("STANDIN_NO_DEVICE", "1")
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    conv, x4, w4, y4 = plan_for(layer, ref, np.float32)
    with pytest.raises(cudnn.CudnnError, match="cudnnCreate failed: "
                                                "CUDNN_STATUS_NOT_INITIALIZED \\(status 1001"):
        conv.forward(x4, w4, np.empty_like(y4))
    with pytest.raises(cudnn.CudnnError, match="cudnnSetConvolutionGroupCount failed: "
                                                "CUDNN_STATUS_BAD_PARAM"):
        cudnn.Convolution2d((2, 3, 7, 6), (4, 3, 3, 3), (2, 4, 7, 6), (1, 1), (1, 1), (1, 1),
                            0, np.float32)


# -- the layers' cuDNN path, run on host arrays through the stand-in --------------------
@pytest.fixture
def layers_on_standin(standin, monkeypatch):
    """Convolution layers take their cuDNN path for host arrays, with the stand-in as
    the library: the code the GPU runs, without the GPU."""
    from pyfacelayers.layers import _conv_base
    monkeypatch.setattr(_conv_base, "array_module", lambda array: None)  # "not numpy"
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "cudnn")
    return standin[1]


@pytest.mark.parametrize("bias", [False, True], ids=["", "bias"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_layer_cudnn_path_matches_im2col(geometry, dtype, bias, monkeypatch, standin):
    params, shape = GEOMETRIES[geometry]
    _, im2col = cpu_conv(params, shape, dtype, bias=bias)
    probe = standin[1]
    before = [probe.standin_runs(i) for i in range(3)]
    with monkeypatch.context() as patch:
        from pyfacelayers.layers import _conv_base
        patch.setattr(_conv_base, "array_module", lambda array: None)
        patch.setenv("PYFACELAYERS_CONV_ENGINE", "cudnn")
        layer, through_cudnn = cpu_conv(params, shape, dtype, bias=bias)
    assert [probe.standin_runs(i) - b for i, b in enumerate(before)] == [1, 1, 1]
    for key in ("y", "dx", "dw"):
        assert_close(through_cudnn[key], im2col[key], TOL[dtype], key)
    if bias:  # the bias and its gradient stay numpy/cupy work, beside cuDNN
        assert_close(layer.blobs[1].diff, im2col["dy"].sum(
            axis=(0,) + tuple(range(2, im2col["dy"].ndim))), TOL[dtype], "bias diff")
    assert layer._cudnn_conv[1].x_shape[:2] == shape[:2]


def test_layer_cudnn_path_without_propagate_down(layers_on_standin):
    layer, ref = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    bottom, top = [Blob(ref["x"].shape, np.float32)], [Blob(ref["y"].shape, np.float32)]
    bottom[0].data = ref["x"]
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    top[0].diff = ref["dy"]
    bottom[0].diff = np.full(ref["x"].shape, 5.0, np.float32)
    layer.blobs[0].diff = np.zeros(ref["w"].shape, np.float32)
    runs = layers_on_standin.standin_runs(1)
    layer.backward(top, [False], bottom)
    assert layers_on_standin.standin_runs(1) == runs  # no backward-data call
    assert np.all(bottom[0].diff == 5.0)
    assert_close(layer.blobs[0].diff, ref["dw"], TOL[np.float32], "dw")


@pytest.mark.parametrize("dtype,npz,tol", [(np.float32, "B1_small_f32.npz", 1e-4),
                                           (np.float64, "B1_small_f64.npz", 1e-9)])
def test_b1_small_through_the_cudnn_path_matches_caffe(layers_on_standin, dtype, npz, tol):
    """The SphereFace-20 small net of fixture B1_small, every convolution through the
    layers' cuDNN path, against the original Caffe's outputs and gradients."""
    from test_net_parity import test_b1_small_matches_caffe as b1_small_matches_caffe
    runs = [layers_on_standin.standin_runs(i) for i in range(3)]
    b1_small_matches_caffe(dtype, npz, tol)
    assert all(layers_on_standin.standin_runs(i) > runs[i] for i in range(3))


# -- loading and engine choice -------------------------------------------------------
def test_missing_library_lists_what_was_tried(monkeypatch, tmp_path):
    missing = str(tmp_path / "libcudnn.so.9")
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", missing)
    with pytest.raises(cudnn.CudnnUnavailable, match="cuDNN not found.*tried: %s" % missing):
        cudnn.library()
    ok, why = cudnn.available()
    assert not ok and missing in why


def test_a_library_that_is_not_cudnn_is_refused(monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", "libm.so.6")
    with pytest.raises(cudnn.CudnnUnavailable, match="libm.so.6: not a cuDNN library"):
        cudnn.library()


def test_an_old_cudnn_is_refused(standin_path, monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", standin_path)
    monkeypatch.setenv("STANDIN_VERSION", "7605")
    with pytest.raises(cudnn.CudnnUnavailable, match="cuDNN version 7605; pyfacelayers "
                                                     "needs 8000 or newer"):
        cudnn.library()


def test_wheel_and_system_locations_are_searched(monkeypatch, tmp_path):
    paths = cudnn.candidate_paths()
    assert paths[-3:] == ["libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"]
    # an nvidia namespace package (as the wheels install it), in two layouts
    for folder in ("nvidia/cudnn/lib", "nvidia/cu13/lib"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("nvidia/cudnn/lib/libcudnn.so.9", "nvidia/cudnn/lib/libcudnn_cnn.so.9",
                 "nvidia/cu13/lib/libcudnn.so.9"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [p for p in cudnn.candidate_paths() if p.startswith(str(tmp_path))]
    assert sorted(found) == sorted(str(tmp_path / p) for p in (
        "nvidia/cudnn/lib/libcudnn.so.9", "nvidia/cu13/lib/libcudnn.so.9"))
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", "/opt/x/libcudnn.so.9")
    assert cudnn.candidate_paths() == ["/opt/x/libcudnn.so.9"]


def test_engine_choice(standin_path, monkeypatch, tmp_path, caplog):
    assert cudnn.engine_wanted(cudnn.ENGINE_CAFFE) is False
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", str(tmp_path / "absent.so"))
    monkeypatch.delenv("PYFACELAYERS_CONV_ENGINE", raising=False)
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is False  # auto, and cuDNN is absent
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is False
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "auto")
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is False
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "cudnn")
    with pytest.raises(cudnn.CudnnUnavailable):
        cudnn.engine_wanted(cudnn.ENGINE_DEFAULT)
    with caplog.at_level(logging.WARNING, logger="pyfacelayers"):
        assert cudnn.engine_wanted(cudnn.ENGINE_CUDNN) is False
        assert cudnn.engine_wanted(cudnn.ENGINE_CUDNN) is False
    assert len([r for r in caplog.records if "engine: CUDNN" in r.getMessage()]) == 1
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", standin_path)
    assert cudnn.engine_wanted(cudnn.ENGINE_CUDNN) is True
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "auto")
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is True
    monkeypatch.delenv("PYFACELAYERS_CONV_ENGINE")
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is True  # auto is the default
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "caffe")
    assert cudnn.engine_wanted(cudnn.ENGINE_DEFAULT) is False


@pytest.mark.parametrize("engine", ["CAFFE", "CUDNN"])
def test_engine_field_on_the_cpu_is_the_im2col_layer(engine, standin_path, monkeypatch):
    """On the CPU, as in Caffe, every engine runs the same im2col convolution."""
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", standin_path)
    params, shape = GEOMETRIES["stride_dilation_group"]
    _, plain = cpu_conv(params, shape, np.float64)
    _, with_engine = cpu_conv(params + " engine: %s" % engine, shape, np.float64)
    for key in plain:
        np.testing.assert_array_equal(with_engine[key], plain[key])


def test_engine_errors_name_the_layer(monkeypatch, tmp_path):
    """cuDNN asked for by PYFACELAYERS_CONV_ENGINE=cudnn and absent: the layer's error."""
    from pyfacelayers.layers import _conv_base
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", str(tmp_path / "absent.so"))
    monkeypatch.setenv("PYFACELAYERS_CONV_ENGINE", "cudnn")
    layer, _ = cpu_conv(*GEOMETRIES["3x3_pad"], np.float32)
    monkeypatch.setattr(_conv_base, "array_module", lambda a: None)  # past the CPU check
    with pytest.raises(LayerError, match='layer "c" \\(Convolution\\): cuDNN not found'):
        layer._cudnn(np.zeros(3))


# -- the real library, where installed ------------------------------------------------
def _real_library():
    path = os.environ.get("PFL_TEST_CUDNN_LIBRARY")
    if path:
        return path
    for candidate in cudnn.candidate_paths():
        if os.path.isabs(candidate) and os.path.exists(candidate):
            return candidate
    return None


def _real_include():
    path = os.environ.get("PFL_TEST_CUDNN_INCLUDE")
    if path:
        return path
    lib = _real_library()
    if lib:
        include = os.path.join(os.path.dirname(os.path.dirname(lib)), "include")
        if glob.glob(os.path.join(include, "cudnn*.h")):
            return include
    return None


needs_real = pytest.mark.skipif(_real_library() is None, reason="no libcudnn installed "
                                "(set PFL_TEST_CUDNN_LIBRARY or install nvidia-cudnn-cu12)")


@needs_real
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_real_cudnn_agrees_on_descriptors_and_output_size(monkeypatch, geometry, dtype):
    """No GPU needed: descriptor calls and cuDNN's output-size check run on the host."""
    monkeypatch.setenv("PYFACELAYERS_CUDNN_LIBRARY", _real_library())
    lib = cudnn.library()
    assert lib.version >= cudnn.MIN_VERSION
    layer, ref = cpu_conv(*GEOMETRIES[geometry], dtype)
    conv = plan_for(layer, ref, dtype)[0]
    assert conv.y_shape == as4d(ref["y"]).shape
    with pytest.raises(cudnn.CudnnError, match="cuDNN computes an output"):
        cudnn.Convolution2d(conv.x_shape, conv.w_shape, conv.y_shape[:3] + (99,), layer.p2,
                            layer.s2, layer.d2, layer.group, dtype)


# The C type our ctypes argument stands for, as a value a C call can take; a mismatch
# with the header's parameter is a compile error under the flags below.
C_ARGUMENT = {cudnn._P: "(void *)0", cudnn._I: "int_arg", cudnn._PI: "(int *)0",
              cudnn._PS: "(size_t *)0", cudnn._PERF: "(void *)0",
              ctypes.c_size_t: "size_arg"}


def _cuda_include():
    """cudnn.h includes cuda_runtime_api.h: the CUDA toolkit's include folder."""
    nvcc = shutil.which("nvcc")
    for root in ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) \
            + ["/usr/local/cuda"]:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime_api.h")):
            return os.path.join(root, "include")
    return None


@pytest.mark.skipif(None in (_real_include(), _real_library(), _cuda_include(), _compiler()),
                    reason="needs cudnn.h (PFL_TEST_CUDNN_INCLUDE), libcudnn, the CUDA "
                           "headers and a C compiler")
def test_declarations_match_the_real_header(tmp_path):
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <cudnn.h>",
             "int main(int argc, char **argv) {", "  int int_arg = argc; size_t size_arg = 1;",
             "  (void)argv; (void)size_arg;", "  if (argc > 99) {"]
    for name, argtypes in cudnn._SIGNATURES.items():
        args = ", ".join(C_ARGUMENT[t] for t in argtypes)
        lines.append("    cudnnStatus_t s_%s = %s(%s); (void)s_%s;" % (name, name, args, name))
    lines.append("  }")
    checks = {
        "sizeof(cudnnConvolutionFwdAlgoPerf_t)": ctypes.sizeof(cudnn.AlgoPerf),
        "sizeof(cudnnConvolutionBwdDataAlgoPerf_t)": ctypes.sizeof(cudnn.AlgoPerf),
        "sizeof(cudnnConvolutionBwdFilterAlgoPerf_t)": ctypes.sizeof(cudnn.AlgoPerf),
        "CUDNN_STATUS_SUCCESS": cudnn.STATUS_SUCCESS, "CUDNN_DATA_FLOAT": 0,
        "CUDNN_DATA_DOUBLE": 1, "CUDNN_TENSOR_NCHW": cudnn.TENSOR_NCHW,
        "CUDNN_CROSS_CORRELATION": cudnn.CROSS_CORRELATION, "CUDNN_FMA_MATH": cudnn.FMA_MATH,
        "CUDNN_DETERMINISTIC": cudnn.DETERMINISTIC,
        "CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM": 0,
        "CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM": 1,
        "CUDNN_CONVOLUTION_FWD_ALGO_GEMM": 2, "CUDNN_CONVOLUTION_FWD_ALGO_DIRECT": 3,
        "CUDNN_CONVOLUTION_BWD_DATA_ALGO_0": 0, "CUDNN_CONVOLUTION_BWD_DATA_ALGO_1": 1,
        "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0": 0, "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1": 1,
        "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3": 3,
        "CUDNN_CONVOLUTION_FWD_ALGO_COUNT <= %d" % cudnn.ALGO_COUNT: 1,
        "CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT <= %d" % cudnn.ALGO_COUNT: 1,
        "CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT <= %d" % cudnn.ALGO_COUNT: 1,
    }
    for field, _ in cudnn.AlgoPerf._fields_:
        c_field = {"math_type": "mathType"}.get(field, field)
        checks["offsetof(cudnnConvolutionFwdAlgoPerf_t, %s)" % c_field] = \
            getattr(cudnn.AlgoPerf, field).offset
    for expr in checks:
        lines.append('  printf("%%s\\t%%ld\\n", "%s", (long)(%s));' % (expr, expr))
    lines.append("  return 0;\n}")
    source = tmp_path / "check.c"
    source.write_text("\n".join(lines) + "\n")
    binary = tmp_path / "check"
    flags = ["-Werror=int-conversion", "-Werror=incompatible-pointer-types",
             "-Werror=implicit-function-declaration", "-Wno-deprecated-declarations"]
    library = _real_library()
    built = subprocess.run([_compiler(), *flags, "-isystem", _real_include(), "-isystem",
                            _cuda_include(), str(source), library,
                            "-Wl,-rpath," + os.path.dirname(library), "-o", str(binary)],
                           capture_output=True, text=True)
    assert built.returncode == 0, "our declarations disagree with cudnn.h:\n" + built.stderr
    printed = dict(line.split("\t") for line in
                   subprocess.run([str(binary)], check=True, capture_output=True,
                                  text=True).stdout.split("\n") if line)
    for expr, expected in checks.items():
        assert int(printed[expr]) == expected, expr
