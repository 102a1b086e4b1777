"""Caffe's DataTransformer: the ``transform_param`` of the data layers.

For one item (an image or a Datum, seen as channels x height x width) it computes
``(pixel - mean) * scale`` in the layer's dtype, with:

- ``crop_size``: a random square window in TRAIN, the centred one in TEST;
- ``mirror``: a horizontal flip decided at random for every item. As in Caffe's
  code, this draw happens in every phase (Caffe has no TEST check for mirror);
- ``mean_file`` (a .binaryproto of the full item shape, cropped at the same offset
  as the data) or ``mean_value`` (one per channel, or one for all channels);
- ``force_color`` / ``force_gray`` for encoded Datums.

Random draws come from the layer's generator, in Caffe's order: the mirror coin
first (only when ``mirror`` is set), then the row offset, then the column offset.
"""

import numpy as np

from . import images
from .errors import FormatError
from .fileio.blobs import blob_to_array
from .proto import caffe_pb2


def load_mean_file(path, dtype=np.float32):
    """The mean of a .binaryproto file as a (C, H, W) array."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise FormatError("cannot read mean file: %s" % exc.strerror, path=path) from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
        mean = blob_to_array(blob)
    except Exception as exc:
        raise FormatError("not a BlobProto mean file (%s)" % exc, path=path) from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise FormatError("mean blob must have shape (1, C, H, W) or (C, H, W), got %s"
                          % (mean.shape,), path=path)
    return mean.astype(dtype)


class DataTransformer:
    """Applies a TransformationParameter to items of a data layer.

    ``error`` builds the exception raised for bad input (a layer passes its
    ``self.error`` so that messages name the layer).
    """

    def __init__(self, param=None, phase=caffe_pb2.TRAIN, dtype=np.float32, rng=None,
                 error=ValueError):
        self.param = param if param is not None else caffe_pb2.TransformationParameter()
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self._error = error
        p = self.param
        if p.HasField("mean_file") and len(p.mean_value):
            raise error("transform_param: cannot specify mean_file and mean_value at the same time")
        if p.force_color and p.force_gray:
            raise error("transform_param: cannot set both force_color and force_gray")
        if p.crop_size < 0:
            raise error("transform_param: crop_size must be >= 0, got %d" % p.crop_size)
        self.mean = load_mean_file(p.mean_file, self.dtype) if p.HasField("mean_file") else None
        # Proto floats are float32 values; Caffe widens them to Dtype.
        self.mean_values = np.array(p.mean_value, dtype=np.float32).astype(self.dtype)
        self.scale = self.dtype.type(np.float32(p.scale))

    # -- shapes --------------------------------------------------------------
    def output_shape(self, item_shape):
        """(C, H, W) of a transformed item of shape ``item_shape`` = (C, H, W)."""
        c, h, w = item_shape
        crop = self.param.crop_size
        if crop:
            if h < crop or w < crop:
                raise self._error("crop_size %d is larger than the item (%d x %d)"
                                  % (crop, h, w))
            return (c, crop, crop)
        return (c, h, w)

    # -- items ---------------------------------------------------------------
    def datum_item(self, datum, where="datum"):
        """A Datum as a (C, H, W) array: uint8 pixels, float_data, or a decoded image."""
        if datum.encoded:
            color = None
            if self.param.force_color:
                color = True
            elif self.param.force_gray:
                color = False
            try:
                img = images.decode_image(datum.data, color=color, where=where)
            except ValueError as exc:
                raise self._error(str(exc)) from None
            return img.transpose(2, 0, 1)
        shape = (datum.channels, datum.height, datum.width)
        count = shape[0] * shape[1] * shape[2]
        if min(shape) <= 0:
            raise self._error("%s has shape %s; channels, height and width must be positive"
                              % (where, shape))
        if len(datum.data):
            values = np.frombuffer(datum.data, dtype=np.uint8)
        else:
            values = np.array(datum.float_data, dtype=np.float32)
        if values.size != count:
            raise self._error("%s holds %d values but channels x height x width = %d"
                              % (where, values.size, count))
        return values.reshape(shape)

    def transform_image(self, image):
        """Transform an HxWxC uint8 image (Caffe's cv::Mat layout) into (C, h, w)."""
        return self.transform(np.asarray(image).transpose(2, 0, 1))

    def transform_datum(self, datum, where="datum"):
        return self.transform(self.datum_item(datum, where))

    def transform(self, item):
        """Transform one (C, H, W) item (uint8 or float) into a (C, h, w) array of dtype."""
        return self.apply(item, self.draw(item.shape))

    # A transform is its random draws (made in order from the layer's generator, on the
    # thread that plans batches) and their application (pure work, any thread).
    def needs_item_shape(self):
        """Whether :meth:`draw` needs the item's shape (a random crop)."""
        return bool(self.param.crop_size) and self.phase == caffe_pb2.TRAIN

    def draw(self, item_shape=None, rng=None):
        """(mirror, row offset, column offset) for one item, drawn in Caffe's order from
        ``rng`` (default: the transformer's). ``item_shape`` (C, H, W) is needed only
        when :meth:`needs_item_shape`."""
        rng = self.rng if rng is None else rng
        p = self.param
        mirror = bool(p.mirror) and bool(rng.integers(2))
        offsets = None
        if self.needs_item_shape():
            _, h, w = item_shape
            _, out_h, out_w = self.output_shape(item_shape)
            offsets = (int(rng.integers(h - out_h + 1)), int(rng.integers(w - out_w + 1)))
        return mirror, offsets

    def apply(self, item, draws):
        """Transform one (C, H, W) item with the draws :meth:`draw` made for it."""
        mirror, offsets = draws
        c, h, w = item.shape
        out_c, out_h, out_w = self.output_shape(item.shape)
        p = self.param
        h_off = w_off = 0
        if p.crop_size:
            if offsets is not None:
                h_off, w_off = offsets
                if h_off > h - out_h or w_off > w - out_w:
                    raise self._error("the item is %d x %d, smaller than when its crop was "
                                      "drawn" % (h, w))
            else:
                h_off, w_off = (h - out_h) // 2, (w - out_w) // 2
        window = (slice(None), slice(h_off, h_off + out_h), slice(w_off, w_off + out_w))
        values = item[window].astype(self.dtype)
        if self.mean is not None:
            if self.mean.shape != item.shape:
                raise self._error("mean_file %s has shape %s but the item is %s"
                                  % (p.mean_file, self.mean.shape, item.shape))
            values = values - self.mean[window]
        elif self.mean_values.size:
            if self.mean_values.size not in (1, c):
                raise self._error("specify either 1 mean_value or as many as channels (%d), "
                                  "got %d" % (c, self.mean_values.size))
            means = np.broadcast_to(self.mean_values, (c,))
            values = values - means[:, None, None]
        values = values * self.scale
        if mirror:
            values = values[:, :, ::-1]
        return np.ascontiguousarray(values)
