"""Layers that move data without arithmetic: Concat, Slice, Crop, Split, Flatten,
Reshape, Silence."""

from ..backend import array_module
from . import _array_ops as array_ops
from .base import Layer, register
from ._helpers import canonical_axis, legacy_or_axis


def _no_in_place(layer, bottom, top):
    for t in top:
        if any(t is b for b in bottom):
            raise layer.error("does not allow in-place computation (a top is a bottom)")


@register
class ConcatLayer(Layer):
    """Joins the bottoms along ``axis`` (or the legacy ``concat_dim``)."""

    type = "Concat"
    min_num_bottom = 1
    exact_num_top = 1

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        first = bottom[0].shape
        self.axis = legacy_or_axis(self, self.param.concat_param, "concat_dim", bottom[0])
        for i, b in enumerate(bottom[1:], 1):
            same = (len(b.shape) == len(first) and all(
                d == e for k, (d, e) in enumerate(zip(b.shape, first)) if k != self.axis))
            if not same:
                raise self.error("bottom %d has shape %s but bottom 0 has %s: all "
                                 "dimensions except axis %d must match"
                                 % (i, b.shape, first, self.axis))
        shape = list(first)
        shape[self.axis] = sum(b.shape[self.axis] for b in bottom)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        xp = array_module(bottom[0].data)
        top[0].data[...] = xp.concatenate([b.data for b in bottom], axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        start = 0
        for i, b in enumerate(bottom):
            size = b.shape[self.axis]
            if propagate_down[i]:
                index = (slice(None),) * self.axis + (slice(start, start + size),)
                b.diff[...] = top[0].diff[index]
            start += size


@register
class SliceLayer(Layer):
    """Cuts the bottom along ``axis`` (or ``slice_dim``) at ``slice_point``s, or into
    equal parts when none are given."""

    type = "Slice"
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        p = self.param.slice_param
        self.axis = legacy_or_axis(self, p, "slice_dim", bottom[0])
        dim = bottom[0].shape[self.axis]
        points = list(p.slice_point)
        if points:
            if len(points) != len(top) - 1:
                raise self.error("%d slice_point(s) given for %d tops: need %d"
                                 % (len(points), len(top), len(top) - 1))
            bounds = [0] + points + [dim]
            for a, b in zip(bounds, bounds[1:]):
                if b <= a:
                    raise self.error("slice_point must be strictly increasing and inside "
                                     "(0, %d) for axis %d of size %d; got %s"
                                     % (dim, self.axis, dim, points))
            self.sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        else:
            if dim % len(top):
                raise self.error("axis %d of size %d cannot be split equally into %d tops"
                                 % (self.axis, dim, len(top)))
            self.sizes = [dim // len(top)] * len(top)
        for t, size in zip(top, self.sizes):
            shape = list(bottom[0].shape)
            shape[self.axis] = size
            t.reshape(shape)

    def _parts(self, array):
        start = 0
        for size in self.sizes:
            yield array[(slice(None),) * self.axis + (slice(start, start + size),)]
            start += size

    def forward(self, bottom, top):
        for t, part in zip(top, self._parts(bottom[0].data)):
            t.data[...] = part

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            for t, part in zip(top, self._parts(bottom[0].diff)):
                part[...] = t.diff


@register
class CropLayer(Layer):
    """Caffe's Crop: bottom[0] cut to bottom[1]'s size on every axis from ``axis`` on
    (default 2, the spatial axes of N, C, H, W), starting at ``offset`` (one value for
    all those axes, or one per axis; default 0). FCN's nets align their score maps with
    it (``caffe.coord_map.crop`` computes the offsets)."""

    type = "Crop"
    exact_num_bottom = 2
    exact_num_top = 1

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        p = self.param.crop_param
        data, reference = bottom[0].shape, bottom[1].shape
        start = canonical_axis(self, bottom[0], p.axis)
        cropped = len(data) - start
        offsets = list(p.offset)
        if len(offsets) > 1 and len(offsets) != cropped:
            raise self.error("crop_param has %d offsets for the %d axes from axis %d of "
                             "bottom %s: give one, or one per axis"
                             % (len(offsets), cropped, start, data))
        if len(reference) < len(data):
            raise self.error("bottom[1] of shape %s has fewer axes than bottom[0] %s"
                             % (reference, data))
        shape, self.window = list(data), []
        for i in range(start, len(data)):
            offset = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets
                                                          else 0)
            size = reference[i]
            if offset + size > data[i]:
                raise self.error("the crop of axis %d (size %d at offset %d) runs past "
                                 "bottom[0]'s size %d" % (i, size, offset, data[i]))
            shape[i] = size
            self.window.append(slice(offset, offset + size))
        self.index = (slice(None),) * start + tuple(self.window)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data[self.index]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:  # bottom[1] only gives the size: it gets no gradient
            diff = bottom[0].diff
            diff[...] = 0
            diff[self.index] = top[0].diff


@register
class SplitLayer(Layer):
    """Every top views the bottom's data (Caffe's ShareData: no copy, so a write into
    one top is seen in the bottom and the other tops, as in Caffe); the bottom
    gradient is the sum of the top ones."""

    type = "Split"
    exact_num_bottom = 1
    min_num_top = 1

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        self.forward(bottom, top)

    def forward(self, bottom, top):
        for t in top:  # again at every pass, in case the bottom's array was replaced
            t.reshape(bottom[0].shape)
            t.share_data(bottom[0], any_layout=True)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        out = bottom[0].diff  # summed in top order, as Caffe, without temporaries
        if len(top) == 1:
            array_ops.copy(top[0].diff, out)
            return
        array_ops.add(top[0].diff, top[1].diff, out)
        for t in top[2:]:
            array_ops.add(out, t.diff, out)


class _View(Layer):
    """A top that views the bottom's data in another shape; the diff is copied back."""

    exact_num_bottom = 1
    exact_num_top = 1

    def top_shape(self, bottom):
        raise NotImplementedError

    def reshape(self, bottom, top):
        _no_in_place(self, bottom, top)
        top[0].reshape(self.top_shape(bottom[0]))
        top[0].share_data(bottom[0])

    def forward(self, bottom, top):
        top[0].share_data(bottom[0])  # again, in case the bottom's array was replaced

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register
class FlattenLayer(_View):
    """Merges axes ``axis`` .. ``end_axis`` (inclusive) into one."""

    type = "Flatten"

    def top_shape(self, b):
        p = self.param.flatten_param
        start = canonical_axis(self, b, p.axis)
        end = canonical_axis(self, b, p.end_axis, "end_axis")
        if end < start:
            raise self.error("end_axis %d comes before axis %d for a bottom of shape %s"
                             % (p.end_axis, p.axis, b.shape))
        return b.shape[:start] + (b.count_from(start, end + 1),) + b.shape[end + 1:]


@register
class ReshapeLayer(_View):
    """Replaces axes [axis, axis + num_axes) by ``shape``: 0 copies the bottom's
    dimension, -1 is inferred from the count."""

    type = "Reshape"

    def layer_setup(self, bottom, top):
        dims = list(self.param.reshape_param.shape.dim)
        if sum(d == -1 for d in dims) > 1:
            raise self.error("shape %s has more than one -1 (inferred) dimension" % dims)
        if any(d < -1 for d in dims):
            raise self.error("shape %s has a negative dimension other than -1" % dims)
        self.dims = dims

    def top_shape(self, b):
        p = self.param.reshape_param
        n = len(b.shape)
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            raise self.error("axis %d is out of range for a bottom of shape %s"
                             % (p.axis, b.shape))
        if p.num_axes < -1:
            raise self.error("num_axes must be >= -1, got %d" % p.num_axes)
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error("axis %d + num_axes %d exceeds the %d axes of bottom shape %s"
                             % (start, p.num_axes, n, b.shape))
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= n:
                    raise self.error("shape dim %d is 0 (copy) but the bottom %s has no "
                                     "axis %d" % (i, b.shape, start + i))
                new[i] = b.shape[start + i]
        if -1 in new:
            known = b.count_from(0, start) * b.count_from(end)
            for d in new:
                if d != -1:
                    known *= d
            if known == 0 or b.count % known:
                raise self.error("cannot infer the -1 dimension of %s: bottom %s has %d "
                                 "elements" % (self.dims, b.shape, b.count))
            new[new.index(-1)] = b.count // known
        shape = b.shape[:start] + tuple(new) + b.shape[end:]
        count = 1
        for d in shape:
            count *= d
        if count != b.count:
            raise self.error("shape %s gives %s (%d elements) but the bottom %s has %d"
                             % (self.dims, shape, count, b.shape, b.count))
        return shape


@register
class SilenceLayer(Layer):
    """Consumes bottoms without output; their gradient is zero."""

    type = "Silence"
    min_num_bottom = 1
    exact_num_top = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
