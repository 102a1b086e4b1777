"""Blob: Caffe's N-d array pair (data and diff), with pycaffe's Python interface."""

import math

import numpy as np

from . import backend, limits
from .errors import BlobOnHostError


class Blob:
    """Data and diff arrays of one shape and dtype, on the CPU (numpy) or GPU (cupy).

    As in pycaffe, ``blob.data`` and ``blob.diff`` are the arrays themselves, so
    ``blob.data[...] = x`` writes into the blob; assigning ``blob.data = x`` copies
    ``x`` in (its shape must match).
    """

    def __init__(self, shape=(), dtype=np.float32, xp=None, name=None, label=None):
        self.dtype = np.dtype(dtype)
        self._xp = xp or backend.xp()
        self._shape = None
        self._data = self._diff = None
        # Bumped whenever the data array may have been written (see ``data``), so an
        # engine can keep a derived copy of it until then (``data_for_cache``).
        self.data_version = 0
        self._data_locked = False
        # Channels-last storage (TEST nets on oneDNN, see ``raw_data``): set by the net
        # where every layer that reads the blob takes that layout as it is.
        self.prefers_channels_last = False
        self._channels_last = False  # the array is an NCHW view of NHWC memory
        # Memory accounting (pyfacelayers.limits): the net being built, if any, and
        # the bytes this blob's own data and diff arrays hold.
        self.name = name
        self._label = label or ('blob "%s"' % name if name else "blob")  # for messages
        self._ledger = limits.active_ledger()
        self._held_data = self._held_diff = 0
        self.reshape(*tuple(shape))

    # -- shape ---------------------------------------------------------------
    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if shape != self._shape:
            shape = self._reserve(shape)
            self._shape = shape
            self._replace_data(self._xp.zeros(shape, dtype=self.dtype))
            # The diff is allocated (zeros) when first used: a net that never runs
            # backward never holds one. Its bytes are counted now all the same, so the
            # memory limit cannot be crossed later.
            self._diff = None

    def _reserve(self, shape):
        """Check ``shape`` and its memory (data + diff) before numpy allocates it."""
        what = self._label
        shape = limits.check_shape(shape, what, self._ledger and self._ledger.layer)
        one = limits.array_bytes(shape, self.dtype.itemsize)
        what = "%s of shape %s (data and diff, %s)" % (what, shape, self.dtype.name)
        if self._ledger is not None:
            self._ledger.charge(self._held_data + self._held_diff, 2 * one, what)
        else:
            limits.check_allocation(2 * one, what)
        self._held_data = self._held_diff = one
        return shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return math.prod(self._shape)  # (the shape's ints, checked by _reserve)

    def count_from(self, start, end=None):
        return math.prod(self._shape[start:end])

    def canonical_axis(self, axis):
        n = len(self._shape)
        if not -n <= axis < n:
            raise ValueError("axis %d out of range for a %d-D blob %s" % (axis, n, self._shape))
        return axis % n

    def _legacy_dim(self, i):
        # pycaffe's num/channels/height/width: 1 for missing axes of a <4-D blob.
        if len(self._shape) > 4:
            raise ValueError("num/channels/height/width need a blob of at most 4 axes")
        return self._shape[i] if i < len(self._shape) else 1

    num = property(lambda self: self._legacy_dim(0))
    channels = property(lambda self: self._legacy_dim(1))
    height = property(lambda self: self._legacy_dim(2))
    width = property(lambda self: self._legacy_dim(3))

    # -- arrays --------------------------------------------------------------
    @property
    def xp(self):
        return self._xp

    @property
    def data(self):
        # Whoever takes the array may write into it, as with pycaffe's mutable_cpu_data:
        # a copy an engine derived from it (oneDNN's reordered weights) is stale now.
        if self._channels_last:  # everyone but the layers that ask gets a C array
            self._replace_data(self._xp.ascontiguousarray(self._data))
        return self.raw_data()

    def raw_data(self):
        """The data array as it is stored, for the layers that take any strides: where
        the net lets a convolution write it channels-last (``store_channels_last``),
        an NCHW view of NHWC memory, the layout oneDNN's kernels read and write, so
        that no reorder runs between two such layers. Anyone else taking ``data``
        gets the same values in a C-contiguous array (copied then, once)."""
        self.data_version += 1
        if self._data_locked:
            self._data.flags.writeable = True
            self._data_locked = False
        return self._data

    @property
    def is_channels_last(self):
        return self._channels_last

    def store_channels_last(self):
        """Keep the (4-D) data as an NCHW view of NHWC memory from now on, until someone
        takes ``data`` or the shape changes. The values are not kept: the caller is
        about to overwrite them all."""
        if self._channels_last:
            return
        n, c, h, w = self._shape
        self._replace_data(self._xp.empty((n, h, w, c), self.dtype).transpose(0, 3, 1, 2))
        self._channels_last = True

    @data.setter
    def data(self, value):
        self.data[...] = self._checked(value, "data")

    def _replace_data(self, array, channels_last=False):
        if self._data_locked:  # the old array may live on in the caller's hands
            self._data.flags.writeable = True
        self._data, self._data_locked = array, False
        self._channels_last = channels_last
        self.data_version += 1

    def data_for_cache(self):
        """(array, version) for an engine that keeps a copy derived from the data until
        ``data_version`` changes, or (array, None) when that is not safe (a GPU array,
        or a view of another blob's memory). The array stays read-only until someone
        takes ``blob.data`` again, so writing through a reference taken before the
        pass raises instead of going unseen (Caffe's GPU mode has the same rule: take
        ``.data`` again after a Forward to write)."""
        array = self._data
        if not isinstance(array, np.ndarray) or array.base is not None:
            return array, None
        if array.flags.writeable:
            array.flags.writeable = False
            self._data_locked = True
        return array, self.data_version

    @property
    def diff(self):
        if self._diff is None:
            self._diff = self._xp.zeros(self._shape, dtype=self.dtype)
        return self._diff

    @property
    def has_diff(self):
        """Whether the diff array exists yet (it is made on first use)."""
        return self._diff is not None

    @diff.setter
    def diff(self, value):
        self.diff[...] = self._checked(value, "diff")

    def _checked(self, value, what):
        shape = tuple(getattr(value, "shape", np.shape(value)))
        if shape != self._shape and int(np.prod(shape, dtype=np.int64)) != self.count:
            raise ValueError("cannot assign an array of shape %s to blob %s of shape %s"
                             % (shape, what, self._shape))
        value = self._xp.asarray(value, dtype=self.dtype)
        return value.reshape(self._shape)

    # pycaffe's device pointers (Blob._gpu_data_ptr / _gpu_diff_ptr, integers), for
    # scripts that hand a blob's memory to other GPU code. Only in GPU mode: a blob on
    # the host has none (as in a CPU-only pycaffe, where the attributes do not exist).
    @property
    def _gpu_data_ptr(self):
        return self._device_pointer(self._data, "_gpu_data_ptr")

    @property
    def _gpu_diff_ptr(self):
        return self._device_pointer(self.diff, "_gpu_diff_ptr")  # made on first use

    def _device_pointer(self, array, what):
        if isinstance(array, np.ndarray):
            raise BlobOnHostError("%s: %s is on the host (CPU mode); device pointers "
                                  "exist in GPU mode (caffe.set_mode_gpu() before the "
                                  "net is built)" % (what, self._label))
        return int(array.data.ptr)

    def share_data(self, other, any_layout=False):
        """View ``other``'s data in this blob's shape (Caffe's ShareData; same count).
        ``any_layout``: a channels-last array is viewed as it is (same shape only)."""
        self._check_same_count(other)
        if any_layout and other.is_channels_last and other.shape == self._shape:
            self._replace_data(other.raw_data(), channels_last=True)
        else:
            self._replace_data(other.data.reshape(self._shape))
        self._release("_held_data")

    def share_diff(self, other):
        """View ``other``'s diff in this blob's shape (Caffe's ShareDiff; same count)."""
        self._check_same_count(other)
        self._diff = other.diff.reshape(self._shape)
        self._release("_held_diff")

    def _release(self, field):
        # The array this blob allocated is dropped for a view of another blob's.
        if self._ledger is not None:
            self._ledger.total -= getattr(self, field)
        setattr(self, field, 0)

    def _check_same_count(self, other):
        if other.count != self.count:
            raise ValueError("cannot share a blob of %d elements with one of %d"
                             % (other.count, self.count))

    def to(self, xp):
        """Move both arrays to another array module (numpy <-> cupy)."""
        if xp is self._xp:
            return
        if self._channels_last:
            self._replace_data(self._xp.ascontiguousarray(self._data))
        if xp is np:
            self._replace_data(backend.to_numpy(self._data))
            self._diff = None if self._diff is None else backend.to_numpy(self._diff)
        else:
            self._replace_data(xp.asarray(self._data))
            self._diff = None if self._diff is None else xp.asarray(self._diff)
        self._xp = xp

    def __repr__(self):
        return "Blob(shape=%s, dtype=%s)" % (self._shape, self.dtype.name)
