"""cuDNN convolution for the Convolution layer on the GPU (``engine: CUDNN``).

cupy 14 no longer wraps cuDNN, so the library is loaded at run time with ctypes and its
convolution API (cudnnConvolutionForward / BackwardData / BackwardFilter, present in
cuDNN 8 and 9) is called directly. Nothing is needed at build time, and the package
imports and runs where cuDNN is absent: :func:`library` then raises
:class:`CudnnUnavailable` saying where it looked.

Where the library comes from, first match wins:
  1. ``PYFACELAYERS_CUDNN_LIBRARY`` (a path; nothing else is tried when it is set);
  2. the ``nvidia-cudnn-cu12`` / ``-cu13`` wheel (under the ``nvidia`` package), which
     PyTorch installs too, or a copy inside ``torch/lib``;
  3. the system's ``libcudnn.so.9`` / ``.so.8``.

What is computed is Caffe's convolution (cross-correlation, NCHW, groups), in the
data's own precision: the math type is FMA, so float32 never drops to TF32 tensor cores.
The GEMM, direct and FFT algorithms are used (FFT's float32 error, measured on an H200 over
SphereFace-20's geometries, is 2e-7 to 4e-7 of the output's norm: below the GEMM
algorithms' own); Winograd is left out unless ``PYFACELAYERS_CUDNN_WINOGRAD=1`` (its
error reaches 2e-5, above the one-layer tolerance of 1e-5). Three ways to pick
algorithms (``PYFACELAYERS_CUDNN_ALGOS``):
  - ``deterministic`` (default): each deterministic algorithm is timed once per shape
    (cudnnFind, as PyTorch's ``cudnn.benchmark``) and the fastest kept; every call then
    gives the same bits for the same inputs;
  - ``reproducible``: cuDNN's heuristic choice among deterministic algorithms, nothing
    timed, so the choice (and the bits) are the same on every run of a given GPU model;
  - ``fastest``: as ``deterministic``, atomics-based (non-deterministic) backward
    algorithms allowed.

The functions take cupy arrays (numpy arrays also work, for testing the binding against
a host-memory stand-in library).
"""

import ctypes
import glob
import importlib.util
import logging
import os
import threading
import weakref

import numpy as np

from ..errors import PyFaceLayersError
from ..runtime_library import load_cached

log = logging.getLogger("pyfacelayers")

# -- facts from cudnn.h (cuDNN 8 and 9 agree on every value used here) -----------------
STATUS_SUCCESS = 0
DATA_TYPE = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
TENSOR_NCHW = 0
CROSS_CORRELATION = 1
FMA_MATH = 3
DETERMINISTIC = 1
# Algorithms kept (numbers of cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t): the GEMM,
# direct and FFT ones; Winograd only on request (PYFACELAYERS_CUDNN_WINOGRAD=1).
FWD_ALGOS = {0: "IMPLICIT_GEMM", 1: "IMPLICIT_PRECOMP_GEMM", 2: "GEMM", 3: "DIRECT",
             4: "FFT", 5: "FFT_TILING"}
BWD_DATA_ALGOS = {0: "ALGO_0", 1: "ALGO_1", 2: "FFT", 3: "FFT_TILING"}
BWD_FILTER_ALGOS = {0: "ALGO_0", 1: "ALGO_1", 2: "FFT", 3: "ALGO_3", 6: "FFT_TILING"}
FWD_WINOGRAD = {6: "WINOGRAD", 7: "WINOGRAD_NONFUSED"}
BWD_DATA_WINOGRAD = {4: "WINOGRAD", 5: "WINOGRAD_NONFUSED"}
BWD_FILTER_WINOGRAD = {5: "WINOGRAD_NONFUSED"}
ALGO_COUNT = 8  # at least every enum's COUNT: how many results to ask for
MIN_VERSION = 8000  # cudnnGetVersion(): 8.0.0 (group count, FMA math, the _v7 queries)
INT_MAX = 2 ** 31 - 1

ALGO_MODES = ("deterministic", "reproducible", "fastest")
# Workspace cap per call; more only speeds up a few algorithms.
DEFAULT_WORKSPACE_MB = 1024


class CudnnUnavailable(PyFaceLayersError, RuntimeError):
    """cuDNN could not be loaded (or is too old); the message lists what was tried."""


class CudnnError(PyFaceLayersError, RuntimeError):
    """A cuDNN call failed; the message names the call and cuDNN's status."""


class AlgoPerf(ctypes.Structure):
    """cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t (one layout for the three)."""
    _fields_ = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int),
                ("math_type", ctypes.c_int), ("reserved", ctypes.c_int * 3)]


_P = ctypes.c_void_p
_I = ctypes.c_int
_PI = ctypes.POINTER(ctypes.c_int)
_PS = ctypes.POINTER(ctypes.c_size_t)
_PERF = ctypes.POINTER(AlgoPerf)
# name: argument types; each returns a cudnnStatus_t (cudnnGetVersion and
# cudnnGetErrorString, which do not, are typed in Library)
_SIGNATURES = {
    "cudnnCreate": [_P],
    "cudnnSetStream": [_P, _P],
    "cudnnCreateTensorDescriptor": [_P],
    "cudnnSetTensor4dDescriptor": [_P, _I, _I, _I, _I, _I, _I],
    "cudnnDestroyTensorDescriptor": [_P],
    "cudnnCreateFilterDescriptor": [_P],
    "cudnnSetFilter4dDescriptor": [_P, _I, _I, _I, _I, _I, _I],
    "cudnnDestroyFilterDescriptor": [_P],
    "cudnnCreateConvolutionDescriptor": [_P],
    "cudnnSetConvolution2dDescriptor": [_P, _I, _I, _I, _I, _I, _I, _I, _I],
    "cudnnSetConvolutionGroupCount": [_P, _I],
    "cudnnSetConvolutionMathType": [_P, _I],
    "cudnnDestroyConvolutionDescriptor": [_P],
    "cudnnGetConvolution2dForwardOutputDim": [_P, _P, _P, _PI, _PI, _PI, _PI],
    # (handle, first desc, second desc, conv, result desc, requested, *returned, perf)
    "cudnnGetConvolutionForwardAlgorithm_v7": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    "cudnnFindConvolutionForwardAlgorithm": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    "cudnnGetConvolutionBackwardDataAlgorithm_v7": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    "cudnnFindConvolutionBackwardDataAlgorithm": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    "cudnnFindConvolutionBackwardFilterAlgorithm": [_P, _P, _P, _P, _P, _I, _PI, _PERF],
    # (handle, first desc, second desc, conv, result desc, algo, *bytes)
    "cudnnGetConvolutionForwardWorkspaceSize": [_P, _P, _P, _P, _P, _I, _PS],
    "cudnnGetConvolutionBackwardDataWorkspaceSize": [_P, _P, _P, _P, _P, _I, _PS],
    "cudnnGetConvolutionBackwardFilterWorkspaceSize": [_P, _P, _P, _P, _P, _I, _PS],
    # (handle, alpha, desc a, a, desc b, b, conv, algo, workspace, bytes, beta, desc out, out)
    "cudnnConvolutionForward": [_P, _P, _P, _P, _P, _P, _P, _I, _P, ctypes.c_size_t, _P, _P, _P],
    "cudnnConvolutionBackwardData": [_P, _P, _P, _P, _P, _P, _P, _I, _P, ctypes.c_size_t, _P,
                                     _P, _P],
    "cudnnConvolutionBackwardFilter": [_P, _P, _P, _P, _P, _P, _P, _I, _P, ctypes.c_size_t,
                                       _P, _P, _P],
}


# -- loading -------------------------------------------------------------------------
def candidate_paths():
    """Where the library is looked for, in order (see the module's docstring)."""
    explicit = os.environ.get("PYFACELAYERS_CUDNN_LIBRARY")
    if explicit:
        return [explicit]
    found = []
    # NVIDIA's wheels: nvidia/cudnn/lib (cu12); searched recursively so that other
    # layouts of the namespace package are found too. Newest soname first.
    for folder in _package_folders("nvidia"):
        found += sorted(glob.glob(os.path.join(folder, "**", "libcudnn.so.[0-9]*"),
                                  recursive=True), reverse=True)
    for folder in _package_folders("torch"):  # builds that bundle it
        found += sorted(glob.glob(os.path.join(folder, "lib", "libcudnn.so.[0-9]*")),
                        reverse=True)
    return found + ["libcudnn.so.9", "libcudnn.so.8", "libcudnn.so"]


def _package_folders(name):
    """The folders of an installed package, without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec else []


class Library:
    """A loaded libcudnn with its functions typed; ``call`` raises CudnnError on failure."""

    def __init__(self, cdll, path):
        self.path = path
        self._cdll = cdll
        try:
            cdll.cudnnGetVersion.restype = ctypes.c_size_t
            cdll.cudnnGetErrorString.restype = ctypes.c_char_p
        except AttributeError:
            raise CudnnUnavailable("not a cuDNN library (no cudnnGetVersion)") from None
        cdll.cudnnGetVersion.argtypes = []
        cdll.cudnnGetErrorString.argtypes = [ctypes.c_int]
        self.version = int(cdll.cudnnGetVersion())
        if self.version < MIN_VERSION:
            raise CudnnUnavailable("cuDNN version %d; pyfacelayers needs %d or newer"
                                   % (self.version, MIN_VERSION))
        self._functions = {}
        for name, argtypes in _SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                raise CudnnUnavailable("cuDNN %d has no function %s"
                                       % (self.version, name)) from None
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
            self._functions[name] = fn
        self.handles = {}  # device id -> cudnnHandle_t
        self.lock = threading.Lock()

    def status_name(self, status):
        return self._cdll.cudnnGetErrorString(status).decode("ascii", "replace")

    def call(self, name, *args):
        status = self._functions[name](*args)
        if status != STATUS_SUCCESS:
            raise CudnnError("%s failed: %s (status %d; cuDNN %d from %s)"
                             % (name, self.status_name(status), status, self.version,
                                self.path))

    def handle(self, device):
        """The cudnnHandle_t of a device (created on first use, kept for the process)."""
        with self.lock:
            if device not in self.handles:
                handle = _P()
                self.call("cudnnCreate", ctypes.byref(handle))
                self.handles[device] = handle
            return self.handles[device]


_loaded = {}


def library():
    """The cuDNN library, or CudnnUnavailable listing what was tried (either answer is
    kept for the process: the layers ask on every pass)."""
    found = load_cached(_loaded, "PYFACELAYERS_CUDNN_LIBRARY", candidate_paths, Library,
                        (OSError, CudnnUnavailable),
                        "cuDNN not found (install nvidia-cudnn-cu12 or -cu13, or set "
                        "PYFACELAYERS_CUDNN_LIBRARY to libcudnn.so)")
    if isinstance(found, str):
        raise CudnnUnavailable(found)
    return found


def available():
    """(True, description) when cuDNN loads, else (False, the reason)."""
    try:
        lib = library()
    except CudnnUnavailable as exc:
        return False, str(exc)
    return True, "cuDNN %d from %s" % (lib.version, lib.path)


# ConvolutionParameter.engine values
ENGINE_DEFAULT, ENGINE_CAFFE, ENGINE_CUDNN = 0, 1, 2
# "onednn" names the CPU's engine (cpu/onednn.py); on the GPU it means im2col + cuBLAS.
ENGINE_CHOICES = ("caffe", "cudnn", "onednn", "auto")
_warned = set()


def engine_wanted(engine):
    """Whether a GPU Convolution whose ``engine`` field is ``engine`` runs on cuDNN.

    CAFFE: never (im2col + cuBLAS). CUDNN: yes when cuDNN loads; otherwise the im2col path
    runs, with one warning per process (Caffe would refuse the layer; running it is more
    useful). DEFAULT: as ``PYFACELAYERS_CONV_ENGINE`` says: ``auto`` (the default: cuDNN
    when it loads), ``caffe``, ``cudnn`` (an error when cuDNN is absent); ``onednn``
    names the CPU engine (here: im2col + cuBLAS).
    """
    if engine == ENGINE_CAFFE:
        return False
    if engine == ENGINE_CUDNN:
        ok, why = available()
        if not ok and "engine" not in _warned:
            _warned.add("engine")
            log.warning("engine: CUDNN asked for but cuDNN is not available; those "
                        "convolutions use im2col + cuBLAS (%s)", why)
        return ok
    choice = os.environ.get("PYFACELAYERS_CONV_ENGINE", "auto").strip().lower()
    if choice not in ENGINE_CHOICES:
        raise ValueError("PYFACELAYERS_CONV_ENGINE must be one of %s, got %r"
                         % (", ".join(ENGINE_CHOICES), choice))
    if choice in ("caffe", "onednn"):
        return False
    if choice == "auto":
        return available()[0]
    library()  # cudnn asked for by name: CudnnUnavailable when it cannot load
    return True


def algo_mode():
    mode = os.environ.get("PYFACELAYERS_CUDNN_ALGOS", "deterministic").strip().lower()
    if mode not in ALGO_MODES:
        raise ValueError("PYFACELAYERS_CUDNN_ALGOS must be one of %s, got %r"
                         % (", ".join(ALGO_MODES), mode))
    return mode


def winograd_allowed():
    text = os.environ.get("PYFACELAYERS_CUDNN_WINOGRAD", "0").strip()
    if text not in ("0", "1"):
        raise ValueError("PYFACELAYERS_CUDNN_WINOGRAD must be 0 or 1, got %r" % text)
    return text == "1"


def workspace_limit():
    text = os.environ.get("PYFACELAYERS_CUDNN_WORKSPACE_MB", str(DEFAULT_WORKSPACE_MB))
    try:
        mb = int(text)
    except ValueError:
        raise ValueError("PYFACELAYERS_CUDNN_WORKSPACE_MB must be a whole number of MiB, "
                         "got %r" % text) from None
    if mb < 0:
        raise ValueError("PYFACELAYERS_CUDNN_WORKSPACE_MB must be >= 0, got %d" % mb)
    return mb << 20


# -- arrays --------------------------------------------------------------------------
def _is_cupy(array):
    return type(array).__module__.startswith("cupy")


def _address(array):
    return array.data.ptr if _is_cupy(array) else array.ctypes.data


def _xp(array):
    if _is_cupy(array):
        import cupy
        return cupy
    return np


def device_of(array):
    """The CUDA device of a cupy array; -1 for host arrays (the test stand-in)."""
    return array.device.id if _is_cupy(array) else -1


def _device_and_stream(array):
    """(device id, stream pointer) the call runs on: cupy's current stream for cupy
    arrays; (-1, None) for host arrays."""
    if _is_cupy(array):
        import cupy
        return array.device.id, cupy.cuda.get_current_stream().ptr
    return -1, None


def fits(*shapes):
    """Whether cuDNN can take these tensors: its descriptors want dimensions of at least
    1 and int sizes, so every tensor must be non-empty and under 2^31 elements."""
    return all(min(s) >= 1 and int(np.prod(s, dtype=np.int64)) <= INT_MAX for s in shapes)


# -- one convolution geometry ---------------------------------------------------------
class Convolution2d:
    """Descriptors and chosen algorithms for one geometry: images x (N, C, H, W), weight
    (K, C/group, kh, kw), output y (N, K, OH, OW), in one dtype.

    forward: y = conv(x, w)       (overwrites y)
    backward_data: dx = conv^T(dy, w)  (overwrites dx, as Caffe's bottom diff)
    backward_filter: dw += corr(x, dy) (adds, as Caffe's parameter diffs)
    """

    def __init__(self, x_shape, w_shape, y_shape, pad, stride, dilation, group, dtype,
                 lib=None, mode=None):
        self.lib = lib or library()
        self.dtype = np.dtype(dtype)
        if self.dtype not in DATA_TYPE:
            raise ValueError("cuDNN convolution: dtype must be float32 or float64, got %s"
                             % self.dtype)
        if not fits(x_shape, w_shape, y_shape):
            raise ValueError("cuDNN convolution: tensors %s, %s, %s must be non-empty and "
                             "under 2^31 elements" % (x_shape, w_shape, y_shape))
        self.mode = mode or algo_mode()
        self.x_shape, self.w_shape, self.y_shape = (tuple(int(v) for v in s) for s in
                                                    (x_shape, w_shape, y_shape))
        data_type = DATA_TYPE[self.dtype]
        self.scalar = ctypes.c_float if self.dtype == np.float32 else ctypes.c_double
        self._descriptors = []
        weakref.finalize(self, _destroy, self.lib, self._descriptors)
        self.x_desc = self._tensor(self.x_shape, data_type)
        self.y_desc = self._tensor(self.y_shape, data_type)
        self.w_desc = self._new("Filter")
        self.lib.call("cudnnSetFilter4dDescriptor", self.w_desc, data_type, TENSOR_NCHW,
                      *self.w_shape)
        self.conv_desc = self._new("Convolution")
        self.lib.call("cudnnSetConvolution2dDescriptor", self.conv_desc, int(pad[0]),
                      int(pad[1]), int(stride[0]), int(stride[1]), int(dilation[0]),
                      int(dilation[1]), CROSS_CORRELATION, data_type)
        self.lib.call("cudnnSetConvolutionGroupCount", self.conv_desc, int(group))
        self.lib.call("cudnnSetConvolutionMathType", self.conv_desc, FMA_MATH)
        out = [ctypes.c_int() for _ in range(4)]
        self.lib.call("cudnnGetConvolution2dForwardOutputDim", self.conv_desc, self.x_desc,
                      self.w_desc, *[ctypes.byref(v) for v in out])
        if tuple(v.value for v in out) != self.y_shape:
            raise CudnnError("cuDNN computes an output of %s for input %s and weight %s, "
                             "the layer expects %s" % (tuple(v.value for v in out),
                                                       self.x_shape, self.w_shape,
                                                       self.y_shape))
        self.algos = {}  # direction -> (algo, workspace bytes), chosen on first use
        self._directions = self._build_directions()

    def _new(self, kind):
        desc = _P()
        self.lib.call("cudnnCreate%sDescriptor" % kind, ctypes.byref(desc))
        self._descriptors.append((kind, desc))
        return desc

    def _tensor(self, shape, data_type):
        desc = self._new("Tensor")
        self.lib.call("cudnnSetTensor4dDescriptor", desc, TENSOR_NCHW, data_type, *shape)
        return desc

    # The three directions share one shape of call: (query name, run name, allowed
    # algorithms, descriptors in cuDNN's order). Built once; every call looks it up.
    def _build_directions(self):
        winograd = winograd_allowed()

        def algos(kept, extra):
            return {**kept, **extra} if winograd else kept

        return {
            "forward": ("ForwardAlgorithm", "Forward", algos(FWD_ALGOS, FWD_WINOGRAD),
                        (self.x_desc, self.w_desc, self.conv_desc, self.y_desc)),
            "backward_data": ("BackwardDataAlgorithm", "BackwardData",
                              algos(BWD_DATA_ALGOS, BWD_DATA_WINOGRAD),
                              (self.w_desc, self.y_desc, self.conv_desc, self.x_desc)),
            "backward_filter": ("BackwardFilterAlgorithm", "BackwardFilter",
                                algos(BWD_FILTER_ALGOS, BWD_FILTER_WINOGRAD),
                                (self.x_desc, self.y_desc, self.conv_desc, self.w_desc)),
        }

    def choose(self, direction, handle):
        """The algorithm and workspace size for a direction (cached)."""
        if direction in self.algos:
            return self.algos[direction]
        query, run, allowed, descs = self._directions[direction]
        limit = workspace_limit()
        perf = (AlgoPerf * ALGO_COUNT)()
        count = ctypes.c_int()
        ranked = []
        if self.mode != "reproducible":
            try:  # times every algorithm in buffers of its own
                self.lib.call("cudnnFind" + "Convolution" + query, handle, *descs, ALGO_COUNT,
                              ctypes.byref(count), perf)
                ranked = list(perf[:count.value])
            except CudnnError:  # e.g. out of memory for its buffers: use the heuristic
                ranked = []
        if not ranked:
            self.lib.call("cudnnGet" + "Convolution" + query + "_v7", handle, *descs,
                          ALGO_COUNT, ctypes.byref(count), perf)
            ranked = list(perf[:count.value])
        deterministic_only = self.mode != "fastest"
        for p in ranked:  # best first, as cuDNN ranks them
            if p.status != STATUS_SUCCESS or p.algo not in allowed:
                continue
            if p.math_type != FMA_MATH and p.math_type != 0:
                continue  # tensor-op math: not the data's precision
            if deterministic_only and p.determinism != DETERMINISTIC:
                continue
            size = ctypes.c_size_t()
            try:
                self.lib.call("cudnnGet" + "Convolution" + run + "WorkspaceSize", handle,
                              *descs, p.algo, ctypes.byref(size))
            except CudnnError:
                continue
            if size.value <= limit:
                self.algos[direction] = (p.algo, size.value)
                return self.algos[direction]
        raise CudnnError(
            "no usable cuDNN %s algorithm for input %s, weight %s (%s mode, workspace "
            "limit %d MiB; cuDNN offered %s)"
            % (direction.replace("_", " "), self.x_shape, self.w_shape, self.mode,
               limit >> 20, [(p.algo, self.lib.status_name(p.status)) for p in ranked]))

    def algorithm_names(self):
        """{direction: algorithm name} of those chosen so far (for logs and benchmarks)."""
        names = {}
        for direction, (algo, size) in self.algos.items():
            table = self._directions[direction][2]
            names[direction] = "%s (%d KiB workspace)" % (table[algo], size >> 10)
        return names

    def _run(self, direction, first, second, out, beta):
        for array, what in ((first, "first input"), (second, "second input"),
                            (out, "output")):
            if array.dtype != self.dtype or not array.flags.c_contiguous:
                raise ValueError("cuDNN %s: the %s must be a C-contiguous %s array, got %s "
                                 "(%s)" % (direction, what, self.dtype, array.dtype,
                                           "contiguous" if array.flags.c_contiguous
                                           else "not contiguous"))
        device, stream = _device_and_stream(out)
        handle = self.lib.handle(device)
        if stream is not None:
            self.lib.call("cudnnSetStream", handle, stream)
        algo, size = self.choose(direction, handle)
        workspace = _xp(out).empty(max(size, 1), dtype=np.uint8)
        _, run, _, descs = self._directions[direction]
        alpha, beta_ = self.scalar(1.0), self.scalar(beta)
        self.lib.call("cudnnConvolution" + run, handle, ctypes.byref(alpha), descs[0],
                      _address(first), descs[1], _address(second), descs[2], algo,
                      _address(workspace), size, ctypes.byref(beta_), descs[3],
                      _address(out))

    def _check(self, array, shape, what):
        if tuple(array.shape) != shape:
            raise ValueError("cuDNN convolution: %s has shape %s, expected %s"
                             % (what, tuple(array.shape), shape))

    def forward(self, x, w, y):
        self._check(x, self.x_shape, "x")
        self._check(w, self.w_shape, "w")
        self._check(y, self.y_shape, "y")
        self._run("forward", x, w, y, 0.0)

    def backward_data(self, w, dy, dx):
        self._check(w, self.w_shape, "w")
        self._check(dy, self.y_shape, "dy")
        self._check(dx, self.x_shape, "dx")
        self._run("backward_data", w, dy, dx, 0.0)

    def backward_filter(self, x, dy, dw):
        self._check(x, self.x_shape, "x")
        self._check(dy, self.y_shape, "dy")
        self._check(dw, self.w_shape, "dw")
        self._run("backward_filter", x, dy, dw, 1.0)


def _destroy(lib, descriptors):
    for kind, desc in descriptors:
        try:
            lib.call("cudnnDestroy%sDescriptor" % kind, desc)
        except Exception:  # at interpreter exit the library may be half torn down
            pass
