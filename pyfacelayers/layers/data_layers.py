"""Caffe's data-input layers: Input, DummyData, MemoryData, ImageData, Data, HDF5Data.

They have no bottoms and no backward. As in Caffe, ``setup`` shapes the tops from the
first item (or the parameters), and every ``forward`` reshapes them to the batch it
produces. Items are read in the order Caffe reads them. Randomness (shuffles, rand_skip,
mirror, crop) comes from the layer's seeded generator. ImageData, Data and HDF5Data
prefetch as Caffe does (``_prefetch.py``): the main thread decides each batch, worker
threads decode and transform it, with the same order, draws and snapshots as inline.

In a data-parallel job of N ranks (pyfacelayers.parallel), the TRAIN-phase layers deal
the items out (test nets run on rank 0 alone and read everything):

- Data (LMDB) and HDF5Data: item k of the stream goes to rank k mod N (Caffe's Skip()
  rule). The stream is walked in rounds of N items, one per rank, so every rank ends
  each batch at the same position: the saved position suits any rank count.
- MemoryData: row k of the arrays to rank k mod N; every rank is given the same arrays
  (their length a multiple of N x batch_size), and a batch is N x batch_size rows.
- ImageData: with shuffle, each rank shuffles with its own seed (random_seed + rank, as
  Caffe); without, line k goes to rank k mod N (Caffe would feed every rank the same
  lines).
"""

import functools
import os
import re

import numpy as np

from .. import limits
from ..errors import LayerError
from ..parallel import world
from ..proto import caffe_pb2
from ..transform import DataTransformer
from ._prefetch import PrefetchMixin
from .base import Layer, register


class _DataLayer(Layer):
    """No bottoms, no gradient; tops are set by ``forward``."""

    exact_num_bottom = 0

    def reshape(self, bottom, top):
        pass  # Caffe's data layers shape their tops in setup and forward

    def backward(self, top, propagate_down, bottom):
        pass

    def _set_top(self, blob, values):
        values = np.asarray(values)
        blob.reshape(values.shape)
        if blob.xp is np:
            blob.data = values
            return
        # GPU: through pinned memory and a side stream, so the host does not wait for
        # the device's queued work (gpu/feed.py)
        if getattr(self, "_feeder", None) is None:
            from ..gpu.feed import DeviceFeeder
            self._feeder = DeviceFeeder()
        self._feeder.copy(id(blob), values, blob.data)

    def _transformer(self):
        # The error builder does not hold the layer: prefetch workers use the transformer,
        # and a layer dropped while they run must be freed (its LMDB closed) at once.
        return DataTransformer(self.param.transform_param, phase=self.phase, dtype=self.dtype,
                               rng=self.rng, error=self.detached_error())

    def detached_error(self):
        """self.error without a reference to the layer."""
        return functools.partial(LayerError, self.name, self.type)

    def _shard(self):
        """(this rank, rank count) for dealing items out: (0, 1) outside a data-parallel
        job and in the TEST phase (only rank 0 tests)."""
        if self.phase == caffe_pb2.TEST or world.size() == 1:
            return 0, 1
        return world.rank(), world.size()


def _round(offset, rank, count):
    """In the round of ``count`` items starting at stream position ``offset``, how many
    items this rank skips before its own (the one at a position = rank mod count) and
    after it, to the round's end."""
    before = (rank - offset) % count
    return before, count - before - 1


def _blob_shape(shape, layer):
    """A BlobShape as a tuple (its dims are int64; Blob.reshape refuses negative ones
    with a ShapeError naming the layer)."""
    return tuple(int(d) for d in shape.dim)


@register
class InputLayer(_DataLayer):
    """Tops whose data the user writes (``net.blobs['data'].data[...] = x``)."""

    type = "Input"
    min_num_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error("give input_param.shape once, once per top, or not at all: "
                             "%d tops vs. %d shapes" % (len(top), len(shapes)))
        for i, blob in enumerate(top):
            if shapes:
                blob.reshape(_blob_shape(shapes[0 if len(shapes) == 1 else i], self))

    def forward(self, bottom, top):
        pass


@register
class DummyDataLayer(_DataLayer):
    """Tops filled by fillers: constant ones once at setup, the others every forward."""

    type = "DummyData"
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n_top = len(top)
        if len(p.data_filler) not in (0, 1, n_top):
            raise self.error("give data_filler once, once per top, or not at all: "
                             "%d tops vs. %d fillers" % (n_top, len(p.data_filler)))
        legacy = {name: list(getattr(p, name)) for name in ("num", "channels", "height", "width")}
        has_legacy = any(legacy.values())
        if has_legacy and len(p.shape):
            raise self.error("both shape and legacy num/channels/height/width were given; "
                             "only one may be specified")
        if has_legacy:
            for name, values in legacy.items():
                if len(values) not in (1, n_top):
                    raise self.error("give %s once or once per top (%d tops), got %d"
                                     % (name, n_top, len(values)))
        elif len(p.shape) not in (1, n_top):
            raise self.error("give shape once or once per top (%d tops), got %d"
                             % (n_top, len(p.shape)))
        if len(p.data_filler):
            self._fillers = list(p.data_filler)
        else:
            self._fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        for i, blob in enumerate(top):
            if has_legacy:
                blob.reshape(tuple(v[0 if len(v) == 1 else i] for v in legacy.values()))
            else:
                blob.reshape(_blob_shape(p.shape[0 if len(p.shape) == 1 else i], self))
        # Constant tops never change: fill them now, and the others on every forward.
        self._fill(top, constant=True)

    def _filler_for(self, i):
        return self._fillers[i if len(self._fillers) > 1 else 0]

    def _fill(self, top, constant):
        for i, blob in enumerate(top):
            filler = self._filler_for(i)
            if (filler.type == "constant") != constant:
                continue
            if filler.type == "constant":
                values = np.full(blob.shape, np.float32(filler.value), dtype=self.dtype)
            else:
                from ..fillers import fill  # written separately; only needed here
                values = fill(filler, blob.shape, self.dtype, self.rng)
            blob.data = values

    def forward(self, bottom, top):
        self._fill(top, constant=False)


@register
class MemoryDataLayer(_DataLayer):
    """Serves batches of arrays given with ``set_input_arrays`` (pycaffe), cycling."""

    type = "MemoryData"
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size = p.batch_size
        self.channels, self.height, self.width = p.channels, p.height, p.width
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error("memory_data_param batch_size, channels, height and width must be "
                             "positive, got %d, %d, %d, %d" % (self.batch_size, self.channels,
                                                                self.height, self.width))
        self._data = self._labels = None
        self._n = self._pos = 0
        self._pending = None  # a restored position waiting for its arrays
        top[0].reshape(self.batch_size, self.channels, self.height, self.width)
        top[1].reshape(self.batch_size)

    def set_input_arrays(self, data, labels):
        """pycaffe's ``net.set_input_arrays``: data (N, C, H, W), labels (N,) or (N, 1, 1, 1).

        N must be a multiple of batch_size. The arrays are kept (not copied) when they
        already have the layer's dtype, as Caffe keeps pointers to them.
        """
        data = np.ascontiguousarray(data, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=self.dtype)
        want = (self.channels, self.height, self.width)
        if data.ndim != 4 or data.shape[1:] != want:
            raise self.error("data array must have shape (N, %d, %d, %d), got %s"
                             % (want + (data.shape,)))
        if labels.ndim == 4 and labels.shape[1:] == (1, 1, 1):
            labels = labels.reshape(-1)
        if labels.ndim != 1:
            raise self.error("labels array must have shape (N,) or (N, 1, 1, 1), got %s"
                             % (labels.shape,))
        if labels.shape[0] != data.shape[0]:
            raise self.error("data and labels must have the same first dimension, got %d and %d"
                             % (data.shape[0], labels.shape[0]))
        rank, count = self._shard()
        if data.shape[0] == 0 or data.shape[0] % (self.batch_size * count):
            raise self.error("the first dimension of the input arrays (%d) must be a positive "
                             "multiple of batch_size %d%s" % (
                                 data.shape[0], self.batch_size,
                                 " x %d ranks (every rank is given the same arrays and reads "
                                 "rows rank, rank + %d, ...)" % (count, count)
                                 if count > 1 else ""))
        self._data, self._labels = data, labels
        self._n, self._pos = data.shape[0], 0
        if self._pending is not None:
            self._apply(self._pending)

    reset = set_input_arrays

    # -- state (saved with solver snapshots) ---------------------------------------------
    def get_state(self):
        """The next item and how many items the arrays hold ({} before any arrays)."""
        return {"pos": int(self._pos), "count": int(self._n)} if self._data is not None else {}

    def set_state(self, state):
        """Restore :meth:`get_state`'s position: now when arrays of that many items are
        set, else when they are (a script may restore before set_input_arrays)."""
        if not isinstance(state, dict) or (state and set(state) != {"pos", "count"}):
            raise self.error("bad saved state %r: expected the keys pos and count" % (state,))
        if not state:
            return
        for key in ("pos", "count"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) \
                    or state[key] < 0:
                raise self.error("saved %s %r is not a count" % (key, state[key]))
        if self._data is None:
            self._pending = dict(state)
        else:
            self._apply(state)

    def _apply(self, state):
        self._pending = None
        if state["count"] != self._n or state["pos"] >= self._n \
                or state["pos"] % (self.batch_size * self._shard()[1]):
            raise self.error("the saved position (item %d of %d) does not fit the arrays given "
                             "(%d items, batch_size %d): were other arrays set since the "
                             "snapshot?" % (state["pos"], state["count"], self._n,
                                            self.batch_size))
        self._pos = state["pos"]

    def set_batch_size(self, batch_size):
        if batch_size <= 0:
            raise self.error("batch_size must be positive, got %d" % batch_size)
        if self._data is not None and self._n % batch_size:
            raise self.error("batch_size %d does not divide the %d items given"
                             % (batch_size, self._n))
        self.batch_size = batch_size

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error("no data: call set_input_arrays(data, labels) first")
        rank, count = self._shard()
        rows = slice(self._pos + rank, self._pos + self.batch_size * count, count)
        self._set_top(top[0], self._data[rows])
        # Caffe gives the labels the shape (batch, 1, 1, 1) from the first forward on.
        self._set_top(top[1], self._labels[rows].reshape(-1, 1, 1, 1))
        self._pos = (self._pos + self.batch_size * count) % self._n


_LIST_LINE = re.compile(r"^(.+?)[ \t]+(\S+)$")
_ATOI = re.compile(r"[+-]?\d+")


def _read_image_list(path, error):
    """(image path, label, line number) for each non-blank line of an ImageData list."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        raise error("cannot read image_data_param.source %s: %s" % (path, exc.strerror)) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip()
        if not line.strip():
            continue
        # Caffe splits at the last space (names may contain spaces) and reads the
        # label with atoi: leading digits count, so "3.0" is 3.
        match = _LIST_LINE.match(line)
        if not match:
            raise error("%s line %d: expected \"<image path> <integer label>\", got %r"
                        % (path, number, line))
        name, label = match.group(1), match.group(2)
        digits = _ATOI.match(label)
        if not digits:
            raise error("%s line %d: label %r is not an integer" % (path, number, label))
        label = int(digits.group(0))
        entries.append((name, label, number))
    if not entries:
        raise error("image list %s is empty" % path)
    return entries


@register
class ImageDataLayer(PrefetchMixin, _DataLayer):
    """Images listed in a text file of "path label" lines, decoded to BGR like OpenCV."""

    type = "ImageData"
    exact_num_top = 2

    def layer_setup(self, bottom, top):
        from .. import images
        self._images = images
        p = self.param.image_data_param
        self.batch_size = p.batch_size
        if self.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive, got %d"
                             % self.batch_size)
        if (p.new_height > 0) != (p.new_width > 0) or p.new_height < 0 or p.new_width < 0:
            raise self.error("new_height and new_width must be set together (both > 0), got "
                             "%d and %d" % (p.new_height, p.new_width))
        self.transformer = self._transformer()
        self.lines = _read_image_list(p.source, self.error)
        self._listed = self.lines
        self._order = None  # the shuffled order as list-file line numbers (a tuple)
        if p.shuffle:
            self._shuffle()
        self.line_id = 0
        self._offset = 0  # lines passed since the start (dealing lines out to ranks)
        if p.rand_skip:
            skip = int(self.rng.integers(p.rand_skip))
            if skip >= len(self.lines):
                raise self.error("rand_skip drew %d but the list has only %d images"
                                 % (skip, len(self.lines)))
            self.line_id = skip
        shape = self.transformer.output_shape(
            self._read(self.lines[self.line_id]).transpose(2, 0, 1).shape)
        top[0].reshape((self.batch_size,) + shape)
        top[1].reshape(self.batch_size)

    def _shuffle(self):
        order = self.draw_rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]
        self._order = tuple(line[2] for line in self.lines)

    # -- state (saved with solver snapshots, so a resumed run reads the same images) --
    def _position(self):
        """The next line to read and, when shuffling, the current order (list-file line
        numbers). The values are never changed in place, so the dict stays valid."""
        state = {"line_id": int(self.line_id)}
        if self._order is not None:
            state["order"] = self._order
        if world.size() > 1:  # where the rounds of the ranks' items start
            state["offset"] = int(self._offset)
        return state

    def _set_position(self, state):
        """Restore :meth:`get_state`'s dict; the list file must be the same."""
        if not isinstance(state, dict) or set(state) - {"line_id", "order", "offset"}:
            raise self.error("bad saved state %r: expected keys line_id, order and offset"
                             % (state,))
        offset = state.get("offset", 0)
        if not _is_int(offset) or offset < 0:
            raise self.error("saved offset %r is not a count" % (offset,))
        if "order" in state:
            order = state["order"]
            by_number = {line[2]: line for line in self._listed}
            if (not isinstance(order, (list, tuple)) or len(order) != len(by_number)
                    or set(order) != set(by_number)):
                raise self.error("the saved image order does not match the %d lines of %s "
                                 "(was the list edited since the snapshot?)"
                                 % (len(by_number), self.param.image_data_param.source))
            self.lines = [by_number[number] for number in order]
            self._order = tuple(order)
        line_id = state.get("line_id", self.line_id)
        if (isinstance(line_id, bool) or not isinstance(line_id, int)
                or not 0 <= line_id < len(self.lines)):
            raise self.error("saved line_id %r is not a line of %s (%d lines)"
                             % (line_id, self.param.image_data_param.source, len(self.lines)))
        self.line_id = line_id
        self._offset = offset

    def _read(self, entry):
        return _read_listed_image(self.param.image_data_param, entry, self.detached_error())

    def _item_shape(self, entry):
        """(C, H, W) of an entry's item before the transform, from the image header
        (only when a random crop needs it)."""
        p = self.param.image_data_param
        if p.new_height > 0:
            return (1, p.new_height, p.new_width)
        path, where = _listed_path(p, entry)
        try:
            return (1,) + self._images.image_size(path, where)
        except (OSError, ValueError) as exc:
            raise self.error(str(exc)) from None

    def _plan_batch(self):
        jobs = []
        rank, count = self._shard()
        if self.param.image_data_param.shuffle:
            rank, count = 0, 1  # each rank its own order (seeded random_seed + rank)
        for _ in range(self.batch_size):
            before, after = _round(self._offset, rank, count)
            self._advance_lines(before)
            entry = self.lines[self.line_id]
            shape = self._item_shape(entry) if self.transformer.needs_item_shape() else None
            jobs.append((entry, self.transformer.draw(shape, self.draw_rng)))
            self._advance_lines(1 + after)
        return functools.partial(_make_image_batch, self.param.image_data_param, jobs,
                                 self.transformer, self.detached_error())

    def forward(self, bottom, top):
        for blob, values in zip(top, self._take_batch()):
            self._set_top(blob, values)

    def _advance_lines(self, steps):
        for _ in range(steps):
            self.line_id += 1
            self._offset += 1
            if self.line_id >= len(self.lines):
                self.line_id = 0  # wrap around, reshuffling as Caffe does
                if self.param.image_data_param.shuffle:
                    self._shuffle()


# -- batch makers: run by prefetch workers; they hold no layer ---------------------------
def _listed_path(p, entry):
    name, _, number = entry
    # Caffe joins root_folder and the name by plain concatenation.
    path = p.root_folder + name
    return path, "%s (line %d of %s)" % (path, number, p.source)


def _read_listed_image(p, entry, error):
    from .. import images
    path, where = _listed_path(p, entry)
    try:
        img = images.read_image(path, color=p.is_color, where=where)
    except (OSError, ValueError) as exc:
        raise error(str(exc)) from None
    if p.new_height > 0:
        img = images.resize_linear(img, p.new_height, p.new_width)
    return img


def _make_image_batch(p, jobs, transformer, error):
    items = []
    for entry, draws in jobs:
        item = transformer.apply(_read_listed_image(p, entry, error).transpose(2, 0, 1), draws)
        if items and item.shape != items[0].shape:
            raise error("image %s (line %d) gives an item of shape %s, but this batch "
                        "started with %s (set new_height/new_width or crop_size)"
                        % (entry[0], entry[2], item.shape, items[0].shape))
        items.append(item)
    labels = np.array([entry[1] for entry, _ in jobs], dtype=transformer.dtype)
    return [np.stack(items), labels]


def _make_datum_batch(jobs, transformer, error):
    items = []
    for datum, where, draws in jobs:
        item = transformer.apply(transformer.datum_item(datum, where), draws)
        if items and item.shape != items[0].shape:
            raise error("%s gives an item of shape %s, but this batch started with %s"
                        % (where, item.shape, items[0].shape))
        items.append(item)
    labels = np.array([job[0].label for job in jobs], dtype=transformer.dtype)
    return [np.stack(items), labels]


@register
class DataLayer(PrefetchMixin, _DataLayer):
    """Serialized Datums from an LMDB database (Caffe's ``Data`` layer, LMDB backend)."""

    type = "Data"
    min_num_top = 1
    max_num_top = 2

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("data_param.backend %s is not supported; only LMDB is (convert the "
                             "database, or set backend: LMDB)"
                             % caffe_pb2.DataParameter.DB.Name(p.backend))
        self.batch_size = p.batch_size
        if self.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive, got %d" % self.batch_size)
        self.transformer = self._transformer()
        self._offset = 0  # records passed since the start (Caffe's offset_, for Skip())
        self._open(p.source)
        if p.rand_skip:
            for _ in range(int(self.draw_rng.integers(p.rand_skip))):
                self._next()
        shape = self.transformer.output_shape(self._item().shape)
        top[0].reshape((self.batch_size,) + shape)
        if len(top) > 1:
            top[1].reshape(self.batch_size)

    def _open(self, source):
        try:
            import lmdb
        except ImportError:
            raise self.error("reading an LMDB database needs the lmdb package "
                             "(pip install lmdb)") from None
        if not os.path.exists(source):
            raise self.error("data_param.source %s does not exist" % source)
        try:
            self._env = lmdb.open(source, readonly=True, lock=False, readahead=False,
                                  subdir=os.path.isdir(source), max_readers=1)
        except lmdb.Error as exc:
            raise self.error("cannot open LMDB %s: %s" % (source, exc)) from None
        self._txn = self._env.begin(buffers=False)
        self._cursor = self._txn.cursor()
        if not self._cursor.first():
            raise self.error("LMDB %s is empty" % source)

    def _next(self):
        self._offset += 1
        if not self._cursor.next():
            self._cursor.first()  # wrap around to the start

    # -- state (saved with solver snapshots, so a resumed run reads the same records) --
    def _position(self):
        """The key of the next record (hex), and the stream position when it matters
        (dealing records out to ranks)."""
        state = {"key": self._cursor.key().hex()}
        if world.size() > 1:  # where the rounds of the ranks' items start
            state["offset"] = int(self._offset)
        return state

    def _set_position(self, state):
        """Move to :meth:`get_state`'s record; the database must still hold it."""
        if not isinstance(state, dict) or "key" not in state or set(state) - {"key", "offset"}:
            raise self.error("bad saved state %r: expected the keys \"key\" and "
                             "\"offset\"" % (state,))
        offset = state.get("offset", 0)
        if not _is_int(offset) or offset < 0:
            raise self.error("saved offset %r is not a count" % (offset,))
        try:
            key = bytes.fromhex(state["key"])
        except (TypeError, ValueError):
            raise self.error("saved key %r is not a hex string" % (state["key"],)) from None
        if not self._cursor.set_key(key):
            raise self.error("the saved record key %r is not in %s (was the database changed "
                             "since the snapshot?)" % (key, self.param.data_param.source))
        self._offset = offset

    def _datum(self):
        key, value = self._cursor.item()
        datum = caffe_pb2.Datum()
        where = "datum %r of %s" % (key, self.param.data_param.source)
        try:
            datum.ParseFromString(value)
        except Exception as exc:
            raise self.error("%s is not a serialized Datum (%s)" % (where, exc)) from None
        return datum, where

    def _item(self):
        datum, where = self._datum()
        return self.transformer.datum_item(datum, where)

    def _item_shape(self, datum, where):
        """(C, H, W) of a Datum's item before the transform (for a random crop)."""
        if not datum.encoded:
            return (datum.channels, datum.height, datum.width)
        from .. import images
        try:
            return (1,) + images.image_size(datum.data, where)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def _plan_batch(self):
        jobs = []
        rank, count = self._shard()
        for _ in range(self.batch_size):
            before, after = _round(self._offset, rank, count)
            for _ in range(before):
                self._next()
            datum, where = self._datum()
            shape = self._item_shape(datum, where) if self.transformer.needs_item_shape() \
                else None
            jobs.append((datum, where, self.transformer.draw(shape, self.draw_rng)))
            for _ in range(1 + after):
                self._next()
        return functools.partial(_make_datum_batch, jobs, self.transformer,
                                 self.detached_error())

    def forward(self, bottom, top):
        for blob, values in zip(top, self._take_batch()):  # a second top: the labels
            self._set_top(blob, values)

    def __del__(self):
        PrefetchMixin.__del__(self)
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()


@register
class HDF5DataLayer(PrefetchMixin, _DataLayer):
    """Rows of HDF5 datasets (one per top, named like the top) from listed .h5 files."""

    type = "HDF5Data"
    min_num_top = 1

    def layer_setup(self, bottom, top):
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data; remove transform_param")
        try:
            import h5py
        except ImportError:
            raise self.error("reading HDF5 files needs the h5py package (pip install h5py)") from None
        self._h5py = h5py
        p = self.param.hdf5_data_param
        self.batch_size = p.batch_size
        if self.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive, got %d"
                             % self.batch_size)
        if len(self.param.top) != len(top):
            raise self.error("needs the names of its %d tops (the dataset names) in the "
                             "layer's top fields" % len(top))
        try:
            with open(p.source) as handle:
                self.files = handle.read().split()
        except OSError as exc:
            raise self.error("cannot read hdf5_data_param.source %s: %s"
                             % (p.source, exc.strerror)) from None
        if not self.files:
            raise self.error("no HDF5 file is listed in %s" % p.source)
        # The orders are replaced, never shuffled in place (permutation draws exactly as
        # shuffle does), so get_state can hand out the tuples kept with them.
        self._set_file_order(np.arange(len(self.files)))
        if p.shuffle:
            self._set_file_order(self.draw_rng.permutation(self.file_order))
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.current_row = 0
        self._offset = 0  # rows passed since the start (Caffe's offset_, for Skip())
        for blob, array in zip(top, self.arrays):
            blob.reshape((self.batch_size,) + array.shape[1:])

    def _load(self, path):
        arrays = []
        try:
            handle = self._h5py.File(path, "r")
        except OSError as exc:
            raise self.error("cannot open HDF5 file %s (listed in %s): %s"
                             % (path, self.param.hdf5_data_param.source, exc)) from None
        with handle:
            for name in self.param.top:
                if name not in handle:
                    raise self.error("HDF5 file %s has no dataset \"%s\" (datasets are named "
                                     "by the tops)" % (path, name))
                dataset = handle[name]
                # Sized before reading: a dataset cannot ask for more than the limit.
                shape = tuple(getattr(dataset, "shape", None) or ())
                itemsize = getattr(getattr(dataset, "dtype", None), "itemsize", 0) or 0
                limits.check_allocation(
                    limits.array_bytes(shape, itemsize) + limits.array_bytes(
                        shape, self.dtype.itemsize),
                    'HDF5 dataset "%s" of %s, shape %s' % (name, path, shape),
                    layer=(self.name, self.type))
                array = np.asarray(dataset[()])
                if array.ndim < 1 or array.dtype.kind not in "fiub":
                    raise self.error("dataset \"%s\" of %s must be a numeric array of at least "
                                     "1 axis, got %s %s" % (name, path, array.dtype, array.shape))
                arrays.append(array.astype(self.dtype))
        rows = arrays[0].shape[0]
        for name, array in zip(self.param.top, arrays):
            if array.shape[0] != rows:
                raise self.error("datasets of %s differ in their number of rows: %s has %d, "
                                 "%s has %d" % (path, self.param.top[0], rows, name,
                                                array.shape[0]))
        if rows == 0:
            raise self.error("HDF5 file %s has no rows" % path)
        # The tops keep the row shapes of the first file (Caffe sizes them once).
        shapes = [a.shape[1:] for a in arrays]
        first = getattr(self, "row_shapes", shapes)
        for name, shape, want in zip(self.param.top, shapes, first):
            if shape != want:
                raise self.error("dataset \"%s\" of %s has rows of shape %s, but the first "
                                 "file's rows are %s" % (name, path, shape, want))
        self.row_shapes = first
        self.arrays = arrays
        self._set_row_order(np.arange(rows))
        if self.param.hdf5_data_param.shuffle:
            self._set_row_order(self.draw_rng.permutation(self.row_order))

    def _set_file_order(self, order):
        self.file_order = order
        if self.param.hdf5_data_param.shuffle:
            self._file_order_saved = tuple(int(i) for i in order)

    def _set_row_order(self, order):
        self.row_order = order
        if self.param.hdf5_data_param.shuffle:
            self._row_order_saved = tuple(int(i) for i in order)

    # -- state (saved with solver snapshots, so a resumed run reads the same rows) ----
    def _position(self):
        """The current file and row and, when shuffling, the file and row orders. The
        values are never changed in place, so the dict stays valid."""
        state = {"current_file": int(self.current_file), "current_row": int(self.current_row)}
        if self.param.hdf5_data_param.shuffle:
            state["file_order"] = self._file_order_saved
            state["row_order"] = self._row_order_saved
        if world.size() > 1:  # where the rounds of the ranks' items start
            state["offset"] = int(self._offset)
        return state

    def _set_position(self, state):
        """Restore :meth:`get_state`'s dict; the listed files must be the same."""
        keys = {"current_file", "current_row", "file_order", "row_order", "offset"}
        if not isinstance(state, dict) or set(state) - keys:
            raise self.error("bad saved state %r: expected keys %s" % (state, sorted(keys)))
        offset = state.get("offset", 0)
        if not _is_int(offset) or offset < 0:
            raise self.error("saved offset %r is not a count" % (offset,))
        file_order = state.get("file_order", list(range(len(self.files))))
        if sorted(_ints(file_order)) != list(range(len(self.files))):
            raise self.error("the saved file order does not match the %d files listed in %s"
                             % (len(self.files), self.param.hdf5_data_param.source))
        current_file = state.get("current_file", 0)
        if not _is_int(current_file) or not 0 <= current_file < len(self.files):
            raise self.error("saved current_file %r is not one of the %d files"
                             % (current_file, len(self.files)))
        self._set_file_order(np.array(file_order, dtype=np.int64))
        self.current_file = current_file
        self._load(self.files[self.file_order[current_file]])
        rows = self.arrays[0].shape[0]
        row_order = state.get("row_order", list(range(rows)))
        if sorted(_ints(row_order)) != list(range(rows)):
            raise self.error("the saved row order does not match the %d rows of %s"
                             % (rows, self.files[self.file_order[current_file]]))
        current_row = state.get("current_row", 0)
        if not _is_int(current_row) or not 0 <= current_row < rows:
            raise self.error("saved current_row %r is not one of the %d rows of %s"
                             % (current_row, rows, self.files[self.file_order[current_file]]))
        self._set_row_order(np.array(row_order, dtype=np.int64))
        self.current_row = current_row
        self._offset = int(offset)

    def _next(self):
        shuffle = self.param.hdf5_data_param.shuffle
        self._offset += 1
        self.current_row += 1
        if self.current_row == self.arrays[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if shuffle:
                        self._set_file_order(self.draw_rng.permutation(self.file_order))
                self._load(self.files[self.file_order[self.current_file]])
            self.current_row = 0
            if shuffle:
                self._set_row_order(self.draw_rng.permutation(self.row_order))

    def _plan_batch(self):
        rows = []  # (the file's arrays, row): a batch may span two files
        rank, count = self._shard()
        for _ in range(self.batch_size):
            before, after = _round(self._offset, rank, count)
            for _ in range(before):
                self._next()
            rows.append((self.arrays, self.row_order[self.current_row]))
            for _ in range(1 + after):
                self._next()
        return functools.partial(_stack_rows, rows, len(self.arrays))

    def forward(self, bottom, top):
        for blob, values in zip(top, self._take_batch()):
            self._set_top(blob, values)


def _stack_rows(rows, count):
    return [np.stack([arrays[k][row] for arrays, row in rows]) for k in range(count)]


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _ints(values):
    """``values`` when it is a list of integers, else an empty list (never matches)."""
    if not isinstance(values, (list, tuple)) or not all(_is_int(v) for v in values):
        return [None]
    return list(values)
