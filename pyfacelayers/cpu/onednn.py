"""oneDNN convolution for the Convolution layer on the CPU (float32).

The library (``libdnnl.so.3``, oneDNN 3.x) is loaded at run time with ctypes, like
libcudnn on the GPU: nothing is needed at build time and the package runs where it is
absent (the layers then keep the im2col + BLAS path). ``pip install
'pyfacelayers[onednn]'`` installs Intel's ``onednn-cpu-gomp`` wheel, which puts the
library in ``<prefix>/lib``.

Where the library comes from, first match wins:
  1. ``PYFACELAYERS_ONEDNN_LIBRARY`` (a path; nothing else is tried when it is set);
  2. ``<sys.prefix>/lib`` and the user base's ``lib`` (where the wheel installs it);
  3. the system's ``libdnnl.so.3``.

What is computed is Caffe's convolution (cross-correlation, NCHW, groups, stride, pad,
dilation) in float32 with oneDNN's strict floating-point mode (no bf16/tf32 down-
conversion). The algorithm is ``direct`` (oneDNN's direct and GEMM-based kernels), so
results stay within the one-layer tolerance of im2col; ``PYFACELAYERS_ONEDNN_CONV_ALGO=auto``
lets oneDNN pick Winograd where it has one (an opt-in: its rounding differs more).

Tensors stay in the caller's plain NCHW / OIHW arrays. By default oneDNN picks the
layouts its fastest kernels want (blocked ones) and the binding reorders into buffers of
its own around each call: measured in CPU time on SphereFace shapes that is 1.2-1.7x
faster than the GEMM-based kernels oneDNN runs on plain layouts, reorders included.
``PYFACELAYERS_ONEDNN_LAYOUT=plain`` keeps the plain layouts (no reorders).
"""

import ctypes
import logging
import os
import site
import sys
import threading
import weakref

import numpy as np

from ..errors import PyFaceLayersError
from ..runtime_library import load_cached
from . import blas_threads

log = logging.getLogger("pyfacelayers")

# -- facts from oneapi/dnnl/dnnl_types.h and dnnl_common_types.h (oneDNN 3.x) --------
SUCCESS = 0
DATA_TYPE_UNDEF = 0
STATUS_NAMES = {1: "out_of_memory", 2: "invalid_arguments", 3: "unimplemented",
                4: "last_impl_reached", 5: "runtime_error", 6: "not_required"}
F32 = 3
TAG_ANY, TAG_A, TAG_AB, TAG_ABCD, TAG_ABCDE = 1, 2, 3, 5, 6
PLAIN_TAGS = {1: TAG_A, 2: TAG_AB, 4: TAG_ABCD, 5: TAG_ABCDE}
ENGINE_CPU = 1
STREAM_DEFAULT_FLAGS = 1
FORWARD_TRAINING, FORWARD_INFERENCE = 64, 96
CONV_DIRECT, CONV_AUTO = 0x1, 0x3
ELTWISE_RELU = 0x20
QUERY_IMPL_INFO_STR = 8
QUERY_EXEC_ARG_MD = 255
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS = 129, 145, 161
ARG_POST_OP_BASE = 1 << 15  # DNNL_ARG_ATTR_MULTIPLE_POST_OP(0): the first post-op
MEMORY_ALLOCATE = ctypes.c_void_p(2 ** 64 - 1)  # DNNL_MEMORY_ALLOCATE: library-owned
MAX_NDIMS = 12
MIN_MAJOR = 3  # the 3.x API (primitive descriptors created in one call)

ALGOS = {"direct": CONV_DIRECT, "auto": CONV_AUTO}
LAYOUTS = ("any", "plain")


class OnednnUnavailable(PyFaceLayersError, RuntimeError):
    """oneDNN could not be loaded (or is too old); the message lists what was tried."""


class OnednnError(PyFaceLayersError, RuntimeError):
    """A oneDNN call failed; the message names the call and the status."""


class Version(ctypes.Structure):
    """dnnl_version_t."""
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class ExecArg(ctypes.Structure):
    """dnnl_exec_arg_t."""
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


Dims = ctypes.c_int64 * MAX_NDIMS
_P = ctypes.c_void_p
_I = ctypes.c_int
_PP = ctypes.POINTER(ctypes.c_void_p)
_D = ctypes.POINTER(ctypes.c_int64)
# name: argument types; each returns a dnnl_status_t (the few that do not are typed in
# Library)
_SIGNATURES = {
    "dnnl_engine_create": [_PP, _I, ctypes.c_size_t],
    "dnnl_stream_create": [_PP, _P, ctypes.c_uint],
    "dnnl_stream_wait": [_P],
    "dnnl_memory_desc_create_with_tag": [_PP, _I, _D, _I, _I],
    "dnnl_memory_desc_create_with_strides": [_PP, _I, _D, _I, _D],
    "dnnl_memory_desc_destroy": [_P],
    "dnnl_memory_create": [_PP, _P, _P, _P],
    "dnnl_memory_set_data_handle": [_P, _P],
    "dnnl_memory_destroy": [_P],
    "dnnl_primitive_attr_create": [_PP],
    "dnnl_primitive_attr_destroy": [_P],
    "dnnl_primitive_attr_set_post_ops": [_P, _P],
    "dnnl_post_ops_create": [_PP],
    "dnnl_post_ops_destroy": [_P],
    "dnnl_post_ops_append_eltwise": [_P, _I, ctypes.c_float, ctypes.c_float],
    "dnnl_post_ops_append_prelu": [_P, _I],
    # (post_ops, scale, zero_point, data_type)
    "dnnl_post_ops_append_sum": [_P, ctypes.c_float, ctypes.c_int32, _I],
    # (pd, engine, prop, alg, src, weights, bias, dst, strides, dilates, pad_l, pad_r, attr)
    "dnnl_convolution_forward_primitive_desc_create": [_PP, _P, _I, _I, _P, _P, _P, _P, _D,
                                                       _D, _D, _D, _P],
    # (pd, engine, alg, diff_src, weights, diff_dst, strides, dilates, pad_l, pad_r,
    #  hint, attr)
    "dnnl_convolution_backward_data_primitive_desc_create": [_PP, _P, _I, _P, _P, _P, _D,
                                                             _D, _D, _D, _P, _P],
    # (pd, engine, alg, src, diff_weights, diff_bias, diff_dst, strides, dilates, pad_l,
    #  pad_r, hint, attr)
    "dnnl_convolution_backward_weights_primitive_desc_create": [_PP, _P, _I, _P, _P, _P, _P,
                                                                _D, _D, _D, _D, _P, _P],
    "dnnl_reorder_primitive_desc_create": [_PP, _P, _P, _P, _P, _P],
    # (pd, engine, src, weights, bias, dst, attr)
    "dnnl_matmul_primitive_desc_create": [_PP, _P, _P, _P, _P, _P, _P],
    "dnnl_primitive_desc_query": [_P, _I, _I, _P],
    "dnnl_primitive_desc_destroy": [_P],
    "dnnl_primitive_create": [_PP, _P],
    "dnnl_primitive_execute": [_P, _P, _I, ctypes.POINTER(ExecArg)],
    "dnnl_primitive_destroy": [_P],
}


# -- loading -------------------------------------------------------------------------
def candidate_paths():
    """Where the library is looked for, in order (see the module's docstring)."""
    explicit = os.environ.get("PYFACELAYERS_ONEDNN_LIBRARY")
    if explicit:
        return [explicit]
    found = []
    prefixes = [sys.prefix, getattr(site, "USER_BASE", None) or ""]
    for prefix in prefixes:
        path = os.path.join(prefix, "lib", "libdnnl.so.3")
        if prefix and os.path.exists(path) and path not in found:
            found.append(path)
    return found + ["libdnnl.so.3"]


class Library:
    """A loaded libdnnl with its functions typed, one CPU engine and one stream."""

    def __init__(self, cdll, path):
        self.path = path
        try:
            cdll.dnnl_version.restype = ctypes.POINTER(Version)
        except AttributeError:
            raise OnednnUnavailable("not a oneDNN library (no dnnl_version)") from None
        cdll.dnnl_version.argtypes = []
        v = cdll.dnnl_version().contents
        self.version = (v.major, v.minor, v.patch)
        if v.major < MIN_MAJOR:
            raise OnednnUnavailable("oneDNN %d.%d.%d; pyfacelayers needs 3.0 or newer"
                                    % self.version)
        self._functions = {}
        for name, argtypes in _SIGNATURES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                raise OnednnUnavailable("oneDNN %d.%d.%d has no function %s"
                                        % (self.version + (name,))) from None
            fn.restype = ctypes.c_int
            fn.argtypes = argtypes
            self._functions[name] = fn
        for name, restype, argtypes in (
                ("dnnl_primitive_desc_query_md", _P, [_P, _I, _I]),
                ("dnnl_memory_desc_equal", _I, [_P, _P]),
                ("dnnl_memory_desc_get_size", ctypes.c_size_t, [_P])):
            fn = getattr(cdll, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name[5:], fn)
        self._cdll = cdll
        self.engine = self.new("dnnl_engine_create", ENGINE_CPU, 0)
        self.stream = self.new("dnnl_stream_create", self.engine, STREAM_DEFAULT_FLAGS)
        # Plans are built and run by the thread running the net; prefetch workers
        # never call in, but a lock keeps a second net thread from interleaving the
        # rebinding of buffers with a run.
        self.lock = threading.Lock()

    def call(self, name, *args):
        status = self._functions[name](*args)
        if status != SUCCESS:
            raise OnednnError("%s failed: %s (status %d; oneDNN %d.%d.%d from %s)"
                              % ((name, STATUS_NAMES.get(status, "unknown"), status)
                                 + self.version + (self.path,)))

    def new(self, name, *args):
        """Call a creator whose first argument receives the new handle; return it."""
        handle = _P()
        self.call(name, ctypes.byref(handle), *args)
        return handle

    @property
    def description(self):
        return "oneDNN %d.%d.%d from %s" % (self.version + (self.path,))


_loaded = {}


def library():
    """The oneDNN library, or OnednnUnavailable listing what was tried (either answer is
    kept for the process: the layers ask on every pass)."""
    found = load_cached(_loaded, "PYFACELAYERS_ONEDNN_LIBRARY", candidate_paths, Library,
                        (OSError, OnednnUnavailable),
                        "oneDNN not found (pip install 'pyfacelayers[onednn]', or set "
                        "PYFACELAYERS_ONEDNN_LIBRARY to libdnnl.so.3)")
    if isinstance(found, str):
        raise OnednnUnavailable(found)
    return found


def available():
    """(True, description) when oneDNN loads, else (False, the reason)."""
    try:
        return True, library().description
    except OnednnUnavailable as exc:
        return False, str(exc)


def conv_algo():
    name = os.environ.get("PYFACELAYERS_ONEDNN_CONV_ALGO", "direct").strip().lower()
    if name not in ALGOS:
        raise ValueError("PYFACELAYERS_ONEDNN_CONV_ALGO must be one of %s, got %r"
                         % (", ".join(ALGOS), name))
    return ALGOS[name]


def layout():
    name = os.environ.get("PYFACELAYERS_ONEDNN_LAYOUT", "any").strip().lower()
    if name not in LAYOUTS:
        raise ValueError("PYFACELAYERS_ONEDNN_LAYOUT must be one of %s, got %r"
                         % (", ".join(LAYOUTS), name))
    return name


# ConvolutionParameter.engine values (as in gpu/cudnn.py)
ENGINE_DEFAULT, ENGINE_CAFFE, ENGINE_CUDNN = 0, 1, 2
_warned = set()


def engine_wanted(engine):
    """Whether a float32 CPU Convolution whose ``engine`` field is ``engine`` runs on
    oneDNN.

    CAFFE: never (im2col + BLAS). DEFAULT (and CUDNN, a GPU engine, on the CPU): as
    ``PYFACELAYERS_CONV_ENGINE`` says: unset, ``auto`` or ``cudnn`` (which names the
    GPU's engine): oneDNN when it loads, im2col otherwise (one info line per process);
    ``onednn``: oneDNN, an error when it is absent; ``caffe``: im2col.
    """
    if engine == ENGINE_CAFFE:
        return False
    from ..gpu import cudnn  # the variable's one list of names
    choice = os.environ.get("PYFACELAYERS_CONV_ENGINE", "").strip().lower() or "auto"
    if choice not in cudnn.ENGINE_CHOICES:
        raise ValueError("PYFACELAYERS_CONV_ENGINE must be one of %s, got %r"
                         % (", ".join(cudnn.ENGINE_CHOICES), choice))
    if choice == "caffe":
        return False
    if choice == "onednn":
        library()  # asked for by name: OnednnUnavailable when it cannot load
        return True
    ok, why = available()
    if not ok and "auto" not in _warned:
        _warned.add("auto")
        log.info("CPU convolutions use im2col + BLAS: %s", why)
    return ok


# -- memory descriptors and primitives ---------------------------------------------------
class _Owned:
    """Handles created for one plan, destroyed with it (in reverse order)."""

    def __init__(self, lib, owner):
        self.lib = lib
        self.items = []
        weakref.finalize(owner, _destroy, lib, self.items)

    def keep(self, kind, handle):
        self.items.append((kind, handle))
        return handle

    def md(self, dims, tag):
        dims = [int(d) for d in dims]
        return self.keep("memory_desc", self.lib.new(
            "dnnl_memory_desc_create_with_tag", len(dims), Dims(*dims), F32, tag))

    def strided_md(self, dims, strides):
        """A plain descriptor with explicit strides (in elements)."""
        dims, strides = [int(d) for d in dims], [int(s) for s in strides]
        return self.keep("memory_desc", self.lib.new(
            "dnnl_memory_desc_create_with_strides", len(dims), Dims(*dims), F32,
            Dims(*strides)))

    def memory(self, md, handle=None):
        return self.keep("memory", self.lib.new("dnnl_memory_create", md, self.lib.engine,
                                                handle))

    def primitive(self, pd):
        return self.keep("primitive", self.lib.new("dnnl_primitive_create", pd))

    def pd(self, name, *args):
        return self.keep("primitive_desc", self.lib.new(name, self.lib.engine, *args))


def _destroy(lib, items):
    for kind, handle in reversed(items):
        try:
            lib.call("dnnl_%s_destroy" % kind, handle)
        except Exception:  # at interpreter exit the library may be half torn down
            pass


class _Buffer:
    """A buffer of oneDNN's own in the layout a primitive wants; ``holds`` is the
    caller's key of what was last reordered into it (None: nothing known)."""

    def __init__(self, owned, md):
        self.md = md
        self.memory = owned.memory(md, MEMORY_ALLOCATE)
        self.holds = None


class _Step:
    """One primitive run on the caller's plain arrays: each named argument is bound to
    an array per call; where the primitive wants another layout, it reads (or writes)
    a buffer of its own, reordered from (or to) the plain array around the run.

    ``shared``: arg -> buffers, a pool the steps of one plan share for their inputs,
    so that one reorder serves two steps (a gradient read by the backward data and
    weights passes). ``accumulate``: outputs added into the caller's array (``+=``, as
    Caffe's parameter diffs) by the reorder out of the primitive's buffer."""

    def __init__(self, owned, pd, plain, outputs, shared=None, accumulate=()):
        lib = owned.lib
        self.lib = lib
        self.user = {}  # arg -> memory bound to the caller's array
        self.before, self.after = [], []  # (arg, reorder primitive, args, _Buffer)
        args = []
        for arg, md in plain.items():
            user = owned.memory(md)
            self.user[arg] = user
            wanted = lib.primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, arg)
            if arg not in accumulate and (not wanted or lib.memory_desc_equal(wanted, md)):
                args.append((arg, user))
                continue
            wanted = wanted or md
            if arg in outputs:
                inner = _Buffer(owned, wanted)
                self.after.append((arg,) + _reorder(owned, wanted, md, inner.memory, user,
                                                    add=arg in accumulate) + (inner,))
            else:
                pool = {} if shared is None else shared
                inner = self._input_buffer(owned, wanted, pool.setdefault(arg, []))
                self.before.append((arg,) + _reorder(owned, md, wanted, user, inner.memory)
                                   + (inner,))
            args.append((arg, inner.memory))
        self.primitive = owned.primitive(pd)
        self.args = _exec_args(args)
        self.impl = _impl_name(lib, pd)

    def _input_buffer(self, owned, md, pool):
        for buffer in pool:
            if self.lib.memory_desc_equal(buffer.md, md):
                return buffer
        pool.append(_Buffer(owned, md))
        return pool[-1]

    def run(self, arrays, keys=None):
        """``arrays``: arg -> numpy float32 array in the layout of its descriptor
        (checked by the caller).
        ``keys``: arg -> a key naming the array's current contents (None: unknown); an
        input whose buffer already holds that key is not reordered again: a TEST net's
        weights are reordered once, not at every pass."""
        lib = self.lib
        keys = keys or {}
        with lib.lock:
            for arg, array in arrays.items():
                lib.call("dnnl_memory_set_data_handle", self.user[arg], array.ctypes.data)
            for arg, primitive, args, buffer in self.before:
                key = keys.get(arg)
                if key is not None and buffer.holds == key:
                    continue
                buffer.holds = None
                lib.call("dnnl_primitive_execute", primitive, lib.stream, 2, args)
                buffer.holds = key
            lib.call("dnnl_primitive_execute", self.primitive, lib.stream, len(self.args),
                     self.args)
            for _, primitive, args, _ in self.after:
                lib.call("dnnl_primitive_execute", primitive, lib.stream, 2, args)
            lib.call("dnnl_stream_wait", lib.stream)


def _exec_args(pairs):
    array = (ExecArg * len(pairs))()
    for i, (arg, memory) in enumerate(pairs):
        array[i].arg, array[i].memory = arg, memory
    return array


def _reorder(owned, src_md, dst_md, src, dst, add=False):
    """A reorder src -> dst; ``add``: dst += src (a sum post-op: one pass, the same
    float additions as ``dst += src``)."""
    pd = owned.keep("primitive_desc", owned.lib.new(
        "dnnl_reorder_primitive_desc_create", src_md, owned.lib.engine, dst_md,
        owned.lib.engine, _sum_attr(owned) if add else None))
    return owned.primitive(pd), _exec_args([(ARG_SRC, src), (ARG_DST, dst)])


def _sum_attr(owned):
    """Attributes whose post-op adds the result to what the destination holds."""
    lib = owned.lib
    attr = owned.keep("primitive_attr", lib.new("dnnl_primitive_attr_create"))
    ops = owned.keep("post_ops", lib.new("dnnl_post_ops_create"))
    lib.call("dnnl_post_ops_append_sum", ops, 1.0, 0, DATA_TYPE_UNDEF)  # undef: dst's
    lib.call("dnnl_primitive_attr_set_post_ops", attr, ops)
    return attr


def _impl_name(lib, pd):
    name = ctypes.c_char_p()
    try:
        lib.call("dnnl_primitive_desc_query", pd, QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
    except OnednnError:
        return "?"
    return (name.value or b"?").decode("ascii", "replace")


def element_strides(array):
    """An array's strides in elements."""
    return tuple(s // array.itemsize for s in array.strides)


# -- one convolution geometry ---------------------------------------------------------
def fusion_pays(kind):
    """Whether fusing this activation speeds the convolution up: always with oneDNN's
    layouts; on plain ones only ReLU (oneDNN's GEMM-based convolution applies a PReLU
    post-op 2-5x slower than the separate layer)."""
    return layout() == "any" or kind == "relu"


class PostOp:
    """An activation fused into a forward convolution (TEST nets): ``relu`` with a
    negative slope, or ``prelu`` with per-channel (or one shared) slopes."""

    def __init__(self, kind, negative_slope=0.0, channel_shared=False):
        if kind not in ("relu", "prelu"):
            raise ValueError("post-op must be relu or prelu, got %r" % (kind,))
        self.kind, self.negative_slope = kind, float(negative_slope)
        self.channel_shared = bool(channel_shared)

    def key(self):
        return (self.kind, self.negative_slope, self.channel_shared)


class Convolution2d:
    """Primitives for one geometry: images x (N, C, H, W), weight (K, C/group, kh, kw),
    output y (N, K, OH, OW), float32.

    forward: y = conv(x, w) (+ bias) (then the post-op)   (overwrites y)
    backward_data: dx = conv^T(dy, w)                      (overwrites dx)
    backward_filter: dw += corr(x, dy)                     (adds, as Caffe's diffs)
    Each direction is built on first use.
    """

    engine_name = "oneDNN"
    adds_bias = True  # the bias given at construction is added by the forward primitive

    def __init__(self, x_shape, w_shape, y_shape, pad, stride, dilation, group,
                 bias=False, post_op=None, lib=None, algo=None, layout_name=None,
                 x_strides=None, y_strides=None):
        self.lib = lib or library()
        blas_threads.share_cores_with_onednn()
        self.x_shape, self.w_shape, self.y_shape = (tuple(int(v) for v in s) for s in
                                                    (x_shape, w_shape, y_shape))
        if min(self.x_shape + self.w_shape + self.y_shape) < 1:
            raise ValueError("oneDNN convolution: tensors %s, %s, %s must be non-empty"
                             % (self.x_shape, self.w_shape, self.y_shape))
        self.group = int(group)
        self.bias, self.post_op = bool(bias), post_op
        self.algo = conv_algo() if algo is None else algo
        self.layout = layout() if layout_name is None else layout_name
        self.owned = _Owned(self.lib, self)
        self.strides = Dims(*[int(s) for s in stride])
        self.dilates = Dims(*[int(d) - 1 for d in dilation])  # oneDNN counts the gaps
        self.pad_l = Dims(*[int(p) for p in pad])
        geometry = list(zip(self.x_shape[2:], self.w_shape[2:], pad, stride, dilation))
        caffe_out = tuple((i + 2 * p - (k - 1) * d - 1) // s + 1 for i, k, p, s, d in geometry)
        if caffe_out != self.y_shape[2:]:
            raise ValueError("oneDNN convolution: input %s with weight %s gives an output "
                             "of %s, not %s" % (self.x_shape, self.w_shape, caffe_out,
                                                self.y_shape[2:]))
        # Caffe floors the output size; the right padding that makes oneDNN's size
        # formula give the same output (it can be below the left one, even negative).
        self.pad_r = Dims(*[(o - 1) * s + (k - 1) * d + 1 - i - p for o, (i, k, p, s, d)
                            in zip(caffe_out, geometry)])
        o = self.owned
        # x and y: C-contiguous, or (forward only) the strides given, in elements: an
        # NCHW view of NHWC memory (Blob.store_channels_last)
        self.x_strides = x_strides and tuple(int(v) for v in x_strides)
        self.y_strides = y_strides and tuple(int(v) for v in y_strides)
        self.x_md, self.y_md = (o.strided_md(shape, strides) if strides else o.md(shape, TAG_ABCD)
                                for shape, strides in ((self.x_shape, self.x_strides),
                                                       (self.y_shape, self.y_strides)))
        self.w_md = o.md(self._grouped_w_shape(), PLAIN_TAGS[len(self._grouped_w_shape())])
        self.b_md = o.md((self.y_shape[1],), TAG_A) if self.bias else None
        self._steps = {}
        self._shared = {}  # input buffers the directions share (_Step)
        self._hint = None

    def _grouped_w_shape(self):
        if self.group == 1:
            return self.w_shape
        k, c = self.w_shape[:2]
        return (self.group, k // self.group, c) + self.w_shape[2:]

    def _layouts(self):
        """(x, w, y) descriptors the primitives are created with: oneDNN's choice of
        layout (``any``), or the plain ones."""
        if self.layout == "plain":
            return self.x_md, self.w_md, self.y_md
        o = self.owned
        return (o.md(self.x_shape, TAG_ANY), o.md(self._grouped_w_shape(), TAG_ANY),
                o.md(self.y_shape, TAG_ANY))

    def _forward_pd(self, prop, with_post_op):
        x, w, y = self._layouts()
        return self.owned.pd(
            "dnnl_convolution_forward_primitive_desc_create", prop, self.algo, x, w,
            self.b_md, y, self.strides, self.dilates, self.pad_l, self.pad_r,
            self._attr() if with_post_op else None)

    def _attr(self):
        if self.post_op is None:
            return None
        attr = self.owned.keep("primitive_attr", self.lib.new("dnnl_primitive_attr_create"))
        ops = self.owned.keep("post_ops", self.lib.new("dnnl_post_ops_create"))
        if self.post_op.kind == "relu":
            self.lib.call("dnnl_post_ops_append_eltwise", ops, ELTWISE_RELU,
                          self.post_op.negative_slope, 0.0)
        else:
            self.lib.call("dnnl_post_ops_append_prelu", ops,
                          0 if self.post_op.channel_shared else 1 << 1)
        self.lib.call("dnnl_primitive_attr_set_post_ops", attr, ops)
        return attr

    def _hint_pd(self):
        if self._hint is None:
            self._hint = self._forward_pd(FORWARD_TRAINING, False)
        return self._hint

    def _step(self, direction):
        step = self._steps.get(direction)
        if step is not None:
            return step
        if direction != "forward" and (self.x_strides or self.y_strides):
            raise ValueError("oneDNN convolution: a plan for channels-last arrays runs "
                             "forward only; the gradients are C-contiguous")
        o = self.owned
        x, w, y = self._layouts()
        try:
            if direction == "forward":
                pd = self._forward_pd(FORWARD_INFERENCE if self.post_op else FORWARD_TRAINING,
                                      True)
                plain = {ARG_SRC: self.x_md, ARG_WEIGHTS: self.w_md, ARG_DST: self.y_md}
                if self.bias:
                    plain[ARG_BIAS] = self.b_md
                if self.post_op is not None and self.post_op.kind == "prelu":
                    arg = ARG_POST_OP_BASE | ARG_WEIGHTS
                    slope_md = self.lib.primitive_desc_query_md(pd, QUERY_EXEC_ARG_MD, arg)
                    plain[arg] = slope_md
                step = _Step(o, pd, plain, {ARG_DST}, self._shared)
            elif direction == "backward_data":
                pd = o.pd("dnnl_convolution_backward_data_primitive_desc_create", self.algo,
                          x, w, y, self.strides, self.dilates, self.pad_l, self.pad_r,
                          self._hint_pd(), None)
                step = _Step(o, pd, {ARG_DIFF_DST: self.y_md, ARG_WEIGHTS: self.w_md,
                                     ARG_DIFF_SRC: self.x_md}, {ARG_DIFF_SRC}, self._shared)
            else:
                pd = o.pd("dnnl_convolution_backward_weights_primitive_desc_create",
                          self.algo, x, w, None, y, self.strides, self.dilates, self.pad_l,
                          self.pad_r, self._hint_pd(), None)
                step = _Step(o, pd, {ARG_SRC: self.x_md, ARG_DIFF_DST: self.y_md,
                                     ARG_DIFF_WEIGHTS: self.w_md}, {ARG_DIFF_WEIGHTS},
                             self._shared, accumulate={ARG_DIFF_WEIGHTS})
        except OnednnError as exc:
            raise OnednnError("oneDNN has no %s convolution for input %s, weight %s, "
                              "stride %s, pad %s, dilation %s, group %d: %s"
                              % (direction.replace("_", " "), self.x_shape, self.w_shape,
                                 list(self.strides[:2]), list(self.pad_l[:2]),
                                 [d + 1 for d in self.dilates[:2]], self.group, exc)) from None
        self._steps[direction] = step
        return step

    def implementations(self):
        """{direction: oneDNN's implementation name} of those built so far."""
        return {d: s.impl for d, s in self._steps.items()}

    # -- the three directions ---------------------------------------------------------
    def _check(self, array, shape, what, strides=None):
        """``array`` if it is float32 of ``shape``, C-contiguous or with ``strides`` (in
        elements) where given; else a ValueError."""
        laid_out = (element_strides(array) == strides if strides
                    else array.flags.c_contiguous)
        if array.dtype != np.float32 or not laid_out:
            wanted = ("float32 array with strides %s" % (strides,) if strides
                      else "C-contiguous float32 array")
            raise ValueError("oneDNN convolution: %s must be a %s, got %s with strides %s"
                             % (what, wanted, array.dtype, element_strides(array)))
        if tuple(array.shape) != tuple(shape):
            raise ValueError("oneDNN convolution: %s has shape %s, expected %s"
                             % (what, tuple(array.shape), tuple(shape)))
        return array

    def forward(self, x, w, y, bias=None, slopes=None, w_key=None, x_key=None):
        """``w_key``: names the weights' contents (unchanged key: unchanged weights, whose
        reordered copy is then reused); None: reorder them at every call. ``x_key``: the
        same for x, whose reordered copy backward_filter may then reuse."""
        arrays = {ARG_SRC: self._check(x, self.x_shape, "x", self.x_strides),
                  ARG_WEIGHTS: self._check(w, self.w_shape, "w"),
                  ARG_DST: self._check(y, self.y_shape, "y", self.y_strides)}
        if self.bias:
            if bias is None:
                raise ValueError("oneDNN convolution: built with a bias, none given")
            arrays[ARG_BIAS] = self._check(bias, (self.y_shape[1],), "bias")
        if self.post_op is not None and self.post_op.kind == "prelu":
            shape = (1,) if self.post_op.channel_shared else (self.y_shape[1],)
            arrays[ARG_POST_OP_BASE | ARG_WEIGHTS] = self._check(slopes, shape, "slopes")
        self._step("forward").run(arrays, {ARG_WEIGHTS: w_key, ARG_SRC: x_key})

    def backward_data(self, w, dy, dx, dy_key=None):
        """``dy_key``: as in backward_filter (a gradient reordered once for both)."""
        self._step("backward_data").run({
            ARG_WEIGHTS: self._check(w, self.w_shape, "w"),
            ARG_DIFF_DST: self._check(dy, self.y_shape, "dy"),
            ARG_DIFF_SRC: self._check(dx, self.x_shape, "dx")}, {ARG_DIFF_DST: dy_key})

    def backward_filter(self, x, dy, dw, dy_key=None, x_key=None):
        """``dy_key``: names dy's contents; given the same to backward_data while dy is
        unchanged, the second call reuses the first's reordered copy. ``x_key``: the
        forward's, while x is unchanged (its reordered copy is reused)."""
        self._step("backward_filter").run({
            ARG_SRC: self._check(x, self.x_shape, "x"),
            ARG_DIFF_DST: self._check(dy, self.y_shape, "dy"),
            ARG_DIFF_WEIGHTS: self._check(dw, self.w_shape, "dw")},
            {ARG_DIFF_DST: dy_key, ARG_SRC: x_key})
