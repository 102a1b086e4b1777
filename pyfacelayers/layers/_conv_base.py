"""What Convolution and Deconvolution share (Caffe's BaseConvolutionLayer).

Parameters are read as Caffe reads them (kernel_size / pad / stride / dilation given
once, once per spatial axis, or as the _h/_w fields). Any number of spatial axes from
1 to 8: two take the fast 2-D im2col (one is run as two with a height of 1), three or
more the N-D one.

The products go through the array module's BLAS (numpy, or cuBLAS through cupy): a
chunk of images is unrolled by im2col (C++ or CUDA) into a (C*kh*kw, n, OH*OW) column
buffer, so that one matmul per group covers the whole chunk. Chunks keep that buffer
under COL_BUFFER_ELEMENTS.

A 1-D or 2-D Convolution can run on an engine loaded at run time instead: cuDNN on the
GPU (``engine: CUDNN``, or PYFACELAYERS_CONV_ENGINE for DEFAULT; see ``gpu/cudnn.py``),
oneDNN on the CPU for float32 (by default when it loads; see ``cpu/onednn.py``). The
engines compute the same products; bias and its gradient stay here except where oneDNN
adds the bias in its forward pass.
"""

import math

import numpy as np

from .. import limits
from ..backend import array_module
from ._vision_kernels import col2im, conv_out_size, im2col
from ._vision_util import check_int_sizes, new_param_blob, wants_param_grad
from .base import Layer

# The C++ N-D kernels take at most this many spatial axes.
MAX_SPATIAL_AXES = 8
# Largest column buffer (in elements) built at once; bounds memory for big batches.
COL_BUFFER_ELEMENTS = 1 << 23
# On the GPU a larger buffer (1 GiB of float32) keeps the GEMMs big and the launches few
# (gpu helper).
COL_BUFFER_ELEMENTS_GPU = 1 << 28


def _matmul_nt(a, b):
    """a @ b^T per group, for the weight gradient (a long inner dimension).

    With numpy's OpenBLAS the NT product runs several times faster when the operand
    with more rows comes first (measured on SphereFace layer shapes), so the larger
    one leads: (b @ a^T)^T when b has more rows.
    """
    xp = array_module(a)
    if b.shape[1] >= a.shape[1]:
        return xp.matmul(b, a.transpose(0, 2, 1)).transpose(0, 2, 1)
    return xp.matmul(a, b.transpose(0, 2, 1))


class ConvolutionBase(Layer):
    min_num_bottom = 1
    min_num_top = 1
    # Deconvolution swaps the roles of input and output (Caffe's reverse_dimensions).
    reverse_dimensions = False

    # -- setup ---------------------------------------------------------------------
    def check_blob_counts(self, bottom, top):
        super().check_blob_counts(bottom, top)
        if len(bottom) != len(top):
            raise self.error("needs as many tops as bottoms, got %d bottoms and %d tops"
                             % (len(bottom), len(top)))

    def layer_setup(self, bottom, top):
        cp = self.param.convolution_param
        shape = bottom[0].shape
        if not -len(shape) <= cp.axis < len(shape):
            raise self.error("axis %d out of range for a %d-D bottom %s"
                             % (cp.axis, len(shape), shape))
        self.channel_axis = cp.axis % len(shape)
        self.num_spatial_axes = len(shape) - self.channel_axis - 1
        if not 1 <= self.num_spatial_axes <= MAX_SPATIAL_AXES:
            raise self.error("supports 1 to %d spatial axes after the channel axis %d; "
                             "bottom %s has %d" % (MAX_SPATIAL_AXES, self.channel_axis, shape,
                                                   self.num_spatial_axes))
        check_int_sizes(self, "convolution_param",
                        ("kernel_size", "stride", "pad", "dilation", "kernel_h", "kernel_w",
                         "stride_h", "stride_w", "pad_h", "pad_w"))
        self.kernel = self._per_axis("kernel_size", list(cp.kernel_size), cp, "kernel_h",
                                     "kernel_w", None)
        self.stride = self._per_axis("stride", list(cp.stride), cp, "stride_h", "stride_w", 1)
        self.pad = self._per_axis("pad", list(cp.pad), cp, "pad_h", "pad_w", 0)
        self.dilation = self._per_axis("dilation", list(cp.dilation), None, None, None, 1)
        for name, values, low in (("kernel_size", self.kernel, 1), ("stride", self.stride, 1),
                                  ("dilation", self.dilation, 1)):
            if any(v < low for v in values):
                raise self.error("%s must be >= %d on every axis, got %s"
                                 % (name, low, values))

        self.channels = shape[self.channel_axis]
        self.num_output = cp.num_output
        self.group = cp.group
        if self.num_output < 1:
            raise self.error("num_output must be > 0, got %d" % self.num_output)
        if self.group < 1:
            raise self.error("group must be > 0, got %d" % self.group)
        if self.channels % self.group:
            raise self.error("input channels (%d) must be divisible by group (%d)"
                             % (self.channels, self.group))
        if self.num_output % self.group:
            raise self.error("num_output (%d) must be divisible by group (%d)"
                             % (self.num_output, self.group))
        if self.reverse_dimensions:
            out_ch, in_ch = self.channels, self.num_output
        else:
            out_ch, in_ch = self.num_output, self.channels
        weight_shape = (out_ch, in_ch // self.group) + tuple(self.kernel)
        self.bias_term = cp.bias_term
        self.blobs = [new_param_blob(self, weight_shape, cp.weight_filler, "weight_filler")]
        if self.bias_term:
            self.blobs.append(new_param_blob(self, (self.num_output,), cp.bias_filler,
                                             "bias_filler"))

    def _per_axis(self, name, values, cp, name_h, name_w, default):
        """Caffe's reading of a per-spatial-axis field and its _h/_w variant."""
        n = self.num_spatial_axes
        if cp is not None and (cp.HasField(name_h) or cp.HasField(name_w)):
            if n != 2:
                raise self.error("%s/%s can only be used for 2-D convolution" % (name_h, name_w))
            if values:
                raise self.error("give either %s or %s/%s, not both" % (name, name_h, name_w))
            if default is None and not (cp.HasField(name_h) and cp.HasField(name_w)):
                raise self.error("%s needs both %s and %s" % (name, name_h, name_w))
            return [int(getattr(cp, name_h)), int(getattr(cp, name_w))]
        if not values:
            if default is None:
                raise self.error("%s is required" % name)
            return [default] * n
        if len(values) not in (1, n):
            raise self.error("%s must be given once or once per spatial axis (%d), got %d "
                             "values" % (name, n, len(values)))
        return [int(values[0 if len(values) == 1 else i]) for i in range(n)]

    # -- shapes --------------------------------------------------------------------
    def reshape(self, bottom, top):
        first = bottom[0].shape
        # Caffe reshapes before every Forward; with the shapes of the last time, the
        # checks below have already passed (a batch-1 deploy pass is short enough for
        # them to count).
        done = getattr(self, "_reshaped", None)
        if done is not None and done[0] == [b.shape for b in bottom] \
                and all(t.shape == done[1] for t in top):
            return
        self._reshaped = None
        for b in bottom:
            if b.shape != first:
                raise self.error("all bottoms must have the same shape, got %s and %s"
                                 % (first, b.shape))
        if len(first) != self.channel_axis + 1 + self.num_spatial_axes:
            raise self.error("bottom must have %d axes (as at setup), got shape %s"
                             % (self.channel_axis + 1 + self.num_spatial_axes, first))
        if first[self.channel_axis] != self.channels:
            raise self.error("bottom has %d channels on axis %d, the weights expect %d"
                             % (first[self.channel_axis], self.channel_axis, self.channels))
        self.num = int(np.prod(first[:self.channel_axis], dtype=np.int64))
        in_spatial = list(first[self.channel_axis + 1:])
        out_spatial = [self._output_size(*args) for args in
                       zip(in_spatial, self.kernel, self.pad, self.stride, self.dilation)]
        if any(s < 1 for s in out_spatial) and self.reverse_dimensions:
            raise self.error("the output would be empty: stride * (input - 1) + dilated "
                             "kernel - 2 * pad < 1 (input %s, kernel %s, stride %s, pad %s, "
                             "dilation %s)" % (in_spatial, self.kernel, self.stride, self.pad,
                                               self.dilation))
        if any(s < 1 for s in out_spatial):
            raise self.error("the (dilated) kernel %s is larger than the padded input %s"
                             % (self.kernel, in_spatial))
        if self.reverse_dimensions and any(s < 1 for s in in_spatial):
            # No input grid to spread: the output size formula would still give >= 1.
            raise self.error("deconvolution input %s has an empty spatial axis" % (first,))
        self.in_spatial, self.out_spatial = in_spatial, out_spatial
        top_shape = tuple(first[:self.channel_axis]) + (self.num_output,) + tuple(out_spatial)
        for t in top:
            t.reshape(top_shape)
        self._check_column_buffer(top[0])
        # The view the kernels work on: (1, L) for one spatial axis, so that it takes
        # the fast 2-D kernel; as given for two or more.
        lead = max(0, 2 - self.num_spatial_axes)
        self.k2 = (1,) * lead + tuple(self.kernel)
        self.p2 = (0,) * lead + tuple(self.pad)
        self.s2 = (1,) * lead + tuple(self.stride)
        self.d2 = (1,) * lead + tuple(self.dilation)
        self._reshaped = ([b.shape for b in bottom], top_shape)

    def _check_column_buffer(self, blob):
        """Refuse (ResourceLimitError) a kernel whose im2col buffer for even one image
        would pass the memory limit: a huge kernel can do that with a small top."""
        grid_channels = self.num_output if self.reverse_dimensions else self.channels
        positions = math.prod(self.in_spatial if self.reverse_dimensions
                              else self.out_spatial)
        nbytes = grid_channels * math.prod(self.kernel) * positions * self.dtype.itemsize
        ledger = getattr(blob, "_ledger", None)
        limits.check_allocation(
            nbytes, "the im2col buffer of one image (%d x %d values, kernel %s)"
            % (grid_channels * math.prod(self.kernel), positions, self.kernel),
            total=ledger.total if ledger else 0, limit=ledger.limit if ledger else None,
            layer=(self.name, self.type))

    def _output_size(self, size, kernel, pad, stride, dilation):
        if self.reverse_dimensions:
            extent = dilation * (kernel - 1) + 1
            return stride * (size - 1) + extent - 2 * pad
        return conv_out_size(size, kernel, pad, stride, dilation)

    def _images(self, array, channels, spatial):
        """``array`` as (num, channels, *spatial); (num, channels, 1, L) for one axis."""
        return array.reshape((self.num, channels) + self._dims2(spatial))

    # -- the products shared by both directions ----------------------------------------
    # im2col always reads the larger grid (conv: bottom; deconv: top); its columns
    # index the positions of the smaller one.
    def _chunks(self, col_rows, col_positions):
        per_image = max(1, col_rows * col_positions)
        limit = COL_BUFFER_ELEMENTS if self.blobs[0].xp is np else COL_BUFFER_ELEMENTS_GPU
        step = max(1, limit // per_image)
        for start in range(0, self.num, step):
            yield start, min(self.num, start + step)

    def _weight_groups(self):
        """Weights as (group, rows, kernel_cols): rows are the weight's axis 0 per group."""
        w = self.blobs[0].data
        g = self.group
        return w.reshape(g, w.shape[0] // g, int(np.prod(w.shape[1:], dtype=np.int64)))

    def _unfold(self, images, positions):
        """im2col of (n, C, *spatial) images into a (group, C/group*prod(k), n*positions) array."""
        n, c = images.shape[0], images.shape[1]
        rows = c * int(np.prod(self.k2))
        col = array_module(images).empty((rows, n, positions), dtype=images.dtype)
        im2col(images, col, self.k2, self.p2, self.s2, self.d2)
        return col.reshape(self.group, rows // self.group, n * positions)

    def _fold(self, col, images):
        """col2im of (group, rows, n*positions) columns into (n, C, *spatial) images
        (overwritten)."""
        n = images.shape[0]
        rows = images.shape[1] * int(np.prod(self.k2))  # not -1: the buffer may be empty
        col = array_module(col).ascontiguousarray(col).reshape(rows, n, col.shape[-1] // n)
        col2im(col, images, self.k2, self.p2, self.s2, self.d2)

    @staticmethod
    def _to_groups(maps, group):
        """(n, C, P) -> (group, C/group, n*P), a contiguous copy."""
        n, c, p = maps.shape
        xp = array_module(maps)
        return xp.ascontiguousarray(maps.transpose(1, 0, 2)).reshape(group, c // group, n * p)

    @staticmethod
    def _from_groups(grouped, n):
        """(group, C/group, n*P) -> (n, C, P) view."""
        g, cg, np_ = grouped.shape
        return grouped.reshape(g * cg, n, np_ // n).transpose(1, 0, 2)

    def _add_bias(self, out):
        if self.bias_term:
            out += self.blobs[1].data[None, :, None]

    def _accumulate_bias_grad(self, top_diff):
        if self.bias_term and wants_param_grad(self, 1):
            self.blobs[1].diff[...] += top_diff.sum(axis=(0, 2))

    # -- engines (cuDNN on the GPU, oneDNN on the CPU) ----------------------------------
    def _engine_conv(self, data, top=None):
        """The engine's convolution for the current shapes when this layer runs on one
        (cuDNN or oneDNN), else None (the im2col path runs). ``top``: given in the
        forward pass, where oneDNN takes ``data`` as it is stored and may write the top
        channels-last (Blob.raw_data)."""
        if self.reverse_dimensions or self.num_spatial_axes > 2:
            return None
        if array_module(data) is np:
            return self._onednn(data, top)
        return self._cudnn(data)

    def _engine_shapes(self):
        x_shape = (self.num, self.channels) + self._dims2(self.in_spatial)
        y_shape = (self.num, self.num_output) + self._dims2(self.out_spatial)
        w_shape = (self.num_output, self.channels // self.group) + tuple(self.k2)
        return x_shape, w_shape, y_shape

    def _onednn(self, data, top=None):
        if self.dtype != np.float32:
            return None  # float64 stays on im2col (oneDNN computes float32 only)
        from ..cpu import onednn
        try:
            if not onednn.engine_wanted(self.param.convolution_param.engine):
                return None
            own_layouts = onednn.layout() == "any"  # (plain: NHWC has no fast kernel)
        except (onednn.OnednnUnavailable, ValueError) as exc:
            raise self.error(str(exc)) from None
        x_shape, w_shape, y_shape = self._engine_shapes()
        if min(x_shape + y_shape) < 1:
            return None  # empty batch: the im2col path handles it
        post_op = self._fused_post_op()
        x_strides = y_strides = None
        if top is not None and own_layouts:
            if not data.flags.c_contiguous:  # channels-last (the only other layout)
                x_strides = onednn.element_strides(data)
            if top.prefers_channels_last and len(top.shape) == 4:
                top.store_channels_last()
                y_strides = onednn.element_strides(top.raw_data())
        key = (x_shape, post_op and post_op.key(), x_strides, y_strides)
        cached = getattr(self, "_onednn_conv", None)
        if cached is None or cached[0] != key:
            try:
                conv = onednn.Convolution2d(x_shape, w_shape, y_shape, self.p2, self.s2,
                                            self.d2, self.group, bias=self.bias_term,
                                            post_op=post_op, x_strides=x_strides,
                                            y_strides=y_strides)
            except (onednn.OnednnUnavailable, onednn.OnednnError, ValueError) as exc:
                raise self.error("oneDNN: %s" % exc) from None
            self._onednn_conv = cached = (key, conv)
        return cached[1]

    # A net sets ``fusable_activation`` (the ReLU / PReLU layer after this one, see
    # Net._plan_fusions) and, per pass, ``fuse_activation``; ``activation_fused`` tells
    # it whether the activation was applied here (oneDNN) or must still run (im2col).
    fusable_activation = None
    fuse_activation = False
    activation_fused = False
    # Set by the net where this layer never runs backward: the engine may keep its own
    # copy of the weights (oneDNN's reordered layout) while Blob.data_version holds.
    weights_fixed = False
    _x_seen = None  # (id(bottom), its data_version) at the last oneDNN forward

    def _fused_post_op(self):
        """The oneDNN post-op for the activation fused into this pass, or None."""
        act = self.fusable_activation
        if act is None or not self.fuse_activation:
            return None
        from ..cpu import onednn
        kind = act.type.lower()
        if not onednn.fusion_pays(kind):
            return None
        if kind == "relu":
            return onednn.PostOp("relu", negative_slope=float(act.slope))
        return onednn.PostOp("prelu", channel_shared=act.channel_shared)

    def _post_op_arrays(self):
        act = self.fusable_activation
        conv = self._onednn_conv[1]
        if conv.post_op is None or conv.post_op.kind != "prelu":
            return {}
        return {"slopes": act.blobs[0].data.reshape(-1)}

    def _cudnn(self, data):
        from ..gpu import cudnn
        try:
            if not cudnn.engine_wanted(self.param.convolution_param.engine):
                return None
        except (cudnn.CudnnUnavailable, ValueError) as exc:
            raise self.error(str(exc)) from None
        x_shape, w_shape, y_shape = self._engine_shapes()
        if not cudnn.fits(x_shape, y_shape, w_shape):
            return None  # empty or over cuDNN's int sizes: the im2col path takes it
        key = (x_shape, self.dtype, cudnn.device_of(data))
        cached = getattr(self, "_cudnn_conv", None)
        if cached is None or cached[0] != key:
            try:
                conv = cudnn.Convolution2d(x_shape, w_shape, y_shape, self.p2, self.s2,
                                           self.d2, self.group, self.dtype)
            except (cudnn.CudnnUnavailable, cudnn.CudnnError, ValueError) as exc:
                raise self.error("cuDNN: %s" % exc) from None
            self._cudnn_conv = cached = (key, conv)
        return cached[1]

    @staticmethod
    def _dims2(spatial):
        """Spatial dims as the 2-D kernels see them: (1, L) for one axis."""
        return (1,) * (2 - len(spatial)) + tuple(spatial)

    def _engine_call(self, conv, what, *args, **kwargs):
        try:
            what(*args, **kwargs)
        except Exception as exc:  # the engine's error or a shape problem: name the layer
            raise self.error("%s: %s" % (getattr(conv, "engine_name", "cuDNN"), exc)) from None

    def _forward_engine(self, conv, b, t):
        if getattr(conv, "adds_bias", False):  # oneDNN: bias (and post-op) in its pass
            # channels-last arrays as they are where the plan says so (_onednn)
            x = self._images(b.raw_data() if conv.x_strides else b.data, self.channels,
                             self.in_spatial)
            y = self._images(t.raw_data() if conv.y_strides else t.data, self.num_output,
                             self.out_spatial)
            extra = {"bias": self.blobs[1].data} if self.bias_term else {}
            extra.update(self._post_op_arrays())
            if self.weights_fixed:
                weights, version = self.blobs[0].data_for_cache()
                w = weights.reshape(conv.w_shape)
                extra["w_key"] = None if version is None else (
                    id(self.blobs[0]), weights.ctypes.data, version)
            else:
                w = self.blobs[0].data.reshape(conv.w_shape)
            # x's contents, named for the backward pass (Blob.data_version: nobody has
            # taken the bottom's data since, so the reordered copy still holds); not in
            # place, where the pass itself overwrites x
            self._x_seen = extra["x_key"] = None if b is t else (id(b), b.data_version)
            self._engine_call(conv, conv.forward, x, w, y, **extra)
            self.activation_fused = conv.post_op is not None
            return
        x = self._images(b.data, self.channels, self.in_spatial)
        y = self._images(t.data, self.num_output, self.out_spatial)
        w = self.blobs[0].data.reshape(conv.w_shape)
        self._engine_call(conv, conv.forward, x, w, y)
        self._add_bias(t.data.reshape(self.num, self.num_output, -1))

    def _backward_engine(self, conv, t, need_w, down, b, x_unchanged=False):
        dy = self._images(t.diff, self.num_output, self.out_spatial)
        extra = {}
        if getattr(conv, "adds_bias", False):  # oneDNN: dy reordered once for both passes
            extra["dy_key"] = object()
        if need_w:
            keys = dict(extra, x_key=self._x_seen) if x_unchanged and extra else extra
            self._engine_call(conv, conv.backward_filter,
                              self._images(b.data, self.channels, self.in_spatial), dy,
                              self.blobs[0].diff.reshape(conv.w_shape), **keys)
        if down:
            self._engine_call(conv, conv.backward_data,
                              self.blobs[0].data.reshape(conv.w_shape), dy,
                              self._images(b.diff, self.channels, self.in_spatial), **extra)

    # -- forward / backward ------------------------------------------------------------
    def forward(self, bottom, top):
        self.activation_fused = False
        for b, t in zip(bottom, top):
            if self.reverse_dimensions:
                self._forward_deconv(b, t)
            else:
                self._forward_conv(b, t)

    def backward(self, top, propagate_down, bottom):
        for i, (b, t) in enumerate(zip(bottom, top)):
            down = bool(propagate_down[i]) if i < len(propagate_down) else False
            if self.reverse_dimensions:
                self._backward_deconv(t, down, b)
            else:
                self._backward_conv(t, down, b)

    # Convolution: top = W * im2col(bottom) + b
    def _forward_conv(self, b, t):
        conv = self._engine_conv(b.raw_data(), t)
        if conv is not None:
            return self._forward_engine(conv, b, t)
        x = self._images(b.data, self.channels, self.in_spatial)
        out_pos = int(np.prod(self.out_spatial))
        y = t.data.reshape(self.num, self.num_output, out_pos)
        w = self._weight_groups()
        for s, e in self._chunks(self.channels * int(np.prod(self.k2)), out_pos):
            col = self._unfold(x[s:e], out_pos)
            y[s:e] = self._from_groups(array_module(w).matmul(w, col), e - s)
            self._add_bias(y[s:e])

    def _backward_conv(self, t, down, b):
        out_pos = int(np.prod(self.out_spatial))
        dy = t.diff.reshape(self.num, self.num_output, out_pos)
        self._accumulate_bias_grad(dy)
        need_w = wants_param_grad(self, 0)
        if not (need_w or down):
            return
        x_unchanged = self._x_seen is not None and self._x_seen == (id(b), b.data_version)
        conv = self._engine_conv(b.data)
        if conv is not None:
            return self._backward_engine(conv, t, need_w, down, b, x_unchanged)
        x = self._images(b.data, self.channels, self.in_spatial)
        dx = self._images(b.diff, self.channels, self.in_spatial) if down else None
        w = self._weight_groups()
        w_diff = self.blobs[0].diff.reshape(w.shape)
        for s, e in self._chunks(self.channels * int(np.prod(self.k2)), out_pos):
            dy_g = self._to_groups(dy[s:e], self.group)
            if need_w:
                col = self._unfold(x[s:e], out_pos)
                w_diff += _matmul_nt(dy_g, col)
            if down:
                self._fold(array_module(w).matmul(w.transpose(0, 2, 1), dy_g), dx[s:e])

    # Deconvolution: top = col2im(W^T * bottom) + b
    def _forward_deconv(self, b, t):
        in_pos = int(np.prod(self.in_spatial))
        x = b.data.reshape(self.num, self.channels, in_pos)
        y = self._images(t.data, self.num_output, self.out_spatial)
        w = self._weight_groups()
        for s, e in self._chunks(self.num_output * int(np.prod(self.k2)), in_pos):
            x_g = self._to_groups(x[s:e], self.group)
            self._fold(array_module(w).matmul(w.transpose(0, 2, 1), x_g), y[s:e])
        if self.bias_term:
            y_flat = t.data.reshape(self.num, self.num_output, int(np.prod(self.out_spatial)))
            self._add_bias(y_flat)

    def _backward_deconv(self, t, down, b):
        in_pos = int(np.prod(self.in_spatial))
        dy_flat = t.diff.reshape(self.num, self.num_output, int(np.prod(self.out_spatial)))
        self._accumulate_bias_grad(dy_flat)
        need_w = wants_param_grad(self, 0)
        if not (need_w or down):
            return
        dy = self._images(t.diff, self.num_output, self.out_spatial)
        x = b.data.reshape(self.num, self.channels, in_pos)
        dx = b.diff.reshape(self.num, self.channels, in_pos) if down else None
        w = self._weight_groups()
        w_diff = self.blobs[0].diff.reshape(w.shape)
        for s, e in self._chunks(self.num_output * int(np.prod(self.k2)), in_pos):
            col = self._unfold(dy[s:e], in_pos)
            if need_w:
                x_g = self._to_groups(x[s:e], self.group)
                w_diff += _matmul_nt(x_g, col)
            if down:
                dx[s:e] = self._from_groups(array_module(w).matmul(w, col), e - s)
