"""pycaffe's ``caffe.io``: blob/datum conversions, image loading and the input Transformer.

Same names and semantics as pycaffe, without scikit-image or scipy: images are read
with Pillow (an extra), and the resizes are written here in numpy.
"""

import numpy as np

from .fileio.blobs import blob_shape
from .proto import caffe_pb2

# -- BlobProto / Datum <-> ndarray ----------------------------------------------


def blobproto_to_array(blob, return_diff=False):
    """The data (or, with ``return_diff``, the diff) of a BlobProto as a float64 array.

    As pycaffe: the legacy num/channels/height/width shape wins when any of them is set,
    else ``shape.dim``. ``double_data`` / ``double_diff`` are read when the float
    fields are empty (a blob written by a Net<double>).
    """
    single, double = (blob.diff, blob.double_diff) if return_diff else (blob.data, blob.double_data)
    values = np.array(double if len(double) and not len(single) else single, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = blob_shape(blob)
    count = 1
    for d in shape:
        if d < 0:
            raise ValueError("blob shape %s has a negative dimension" % (tuple(shape),))
        count *= int(d)
    if values.size != count:
        raise ValueError("blob holds %d values but its shape %s needs %d"
                         % (values.size, tuple(shape), count))
    return values.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """A BlobProto with ``shape`` = arr.shape and the values in ``data`` (and ``diff``)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel().tolist())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector holding the arrays."""
    vector = caffe_pb2.BlobProtoVector()
    vector.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vector.SerializeToString()


def blobprotovector_str_to_arraylist(data):
    """The arrays of a serialized BlobProtoVector."""
    vector = caffe_pb2.BlobProtoVector()
    vector.ParseFromString(data)
    return [blobproto_to_array(b) for b in vector.blobs]


def array_to_datum(arr, label=None):
    """A Datum from a (C, H, W) array: uint8 -> ``data`` bytes, anything else -> ``float_data``."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("array_to_datum needs a (channels, height, width) array, got shape %s"
                         % (arr.shape,))
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """The (C, H, W) array of a Datum: uint8 for ``data``, float64 for ``float_data``.

    The label is not returned (it is ``datum.label``).
    """
    shape = (datum.channels, datum.height, datum.width)
    stored = len(datum.data) or len(datum.float_data)
    if stored != datum.channels * datum.height * datum.width:
        raise ValueError("Datum holds %d values in %s but its shape %s needs %d"
                         % (stored, "data" if len(datum.data) else "float_data", shape,
                            datum.channels * datum.height * datum.width))
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


def load_array(path):
    """An array file as a numpy array: a ``.npy`` (e.g. a mean saved with np.save, as
    pycaffe's classify.py reads with np.load) or a ``.binaryproto`` blob.

    Never unpickles: a ``.npy`` of Python objects is refused (FormatError), since
    unpickling a file can run any code. Nothing else is read from a ``.npy``.
    """
    import os

    from .errors import FormatError
    from .fileio.binary import read_binaryproto

    path = os.fspath(path)
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic != b"\x93NUMPY":
        return read_binaryproto(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise FormatError("the .npy file holds Python objects (a pickle); refused, "
                              "since unpickling can run code. Save plain numeric arrays "
                              "(np.save of a float array)", path) from None
        raise FormatError("not a readable .npy file (%s)" % exc, path) from None
    except (OSError, EOFError) as exc:
        raise FormatError("truncated or corrupt .npy file (%s)" % exc, path) from None
    return array


# -- images ------------------------------------------------------------------------


def load_image(filename, color=True):
    """An image file as float32 (H, W, 3) RGB in [0, 1], or (H, W, 1) intensity.

    As pycaffe (which used scikit-image): grey images are tiled to 3 channels when
    ``color`` is true; alpha is dropped; with ``color`` false, colour images become
    luminance 0.2125 R + 0.7154 G + 0.0721 B. 16-bit images are scaled by 1/65535.
    """
    from .images import _open
    img = _open(filename, filename)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.asarray(img, dtype=np.float64) / 65535.0
        rgb = None
    elif img.mode in ("L", "1", "LA") or (img.mode == "P" and _palette_is_grey(img)):
        grey = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        rgb = None
    else:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
        grey = None
    if color:
        if rgb is None:
            rgb = np.repeat(grey[:, :, None], 3, axis=2)
        return rgb.astype(np.float32)
    if grey is None:
        grey = rgb @ np.array([0.2125, 0.7154, 0.0721])
    return grey[:, :, None].astype(np.float32)


def _palette_is_grey(img):
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _interp_axis(array, axis, coords, outside_zero):
    """Linear interpolation of ``array`` along ``axis`` at real positions ``coords``.

    Samples outside the array count as 0 when ``outside_zero`` (scikit-image's
    mode='constant'), else the positions are clamped to the edges.
    """
    size = array.shape[axis]
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    high = low + 1

    def take(index):
        values = np.take(array, np.clip(index, 0, size - 1), axis=axis)
        if outside_zero:
            inside = ((index >= 0) & (index < size)).astype(array.dtype)
            shape = [1] * array.ndim
            shape[axis] = len(index)
            values = values * inside.reshape(shape)
        return values

    shape = [1] * array.ndim
    shape[axis] = len(coords)
    frac = frac.reshape(shape)
    return take(low) * (1 - frac) + take(high) * frac


def _resize_linear(im, new_dims, centre_aligned):
    out = im
    for axis, n_out in enumerate(new_dims):
        n_in = im.shape[axis]
        if centre_aligned:  # pixel centres map onto pixel centres (scikit-image)
            coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        else:  # corners map onto corners (scipy.ndimage.zoom)
            step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            coords = np.arange(n_out) * step
        out = _interp_axis(out, axis, coords, outside_zero=centre_aligned)
    return out


def _resize_nearest(im, new_dims, centre_aligned):
    out = im
    for axis, n_out in enumerate(new_dims):
        n_in = im.shape[axis]
        if centre_aligned:
            coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
            index = np.floor(coords + 0.5)  # round half up, as scikit-image's C round
        else:
            step = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            index = np.floor(np.arange(n_out) * step + 0.5)
        out = np.take(out, np.clip(index.astype(np.int64), 0, n_in - 1), axis=axis)
    return out


def _gaussian_axis(array, axis, sigma, truncate=4.0):
    """``array`` smoothed along ``axis`` by a Gaussian of ``sigma`` pixels, zero outside
    (scipy.ndimage.gaussian_filter1d with mode='constant', cval=0, truncate=4)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    size = array.shape[axis]
    pad = [(0, 0)] * array.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(array, pad)
    out = np.zeros_like(array)
    for k, w in zip(offsets, weights):
        out += w * np.take(padded, np.arange(size) + radius + k, axis=axis)
    return out


def anti_alias(unit, new_dims):
    """What newer scikit-image's ``resize`` does before interpolating when it shrinks
    (its ``anti_aliasing``, on by default in newer releases): a Gaussian blur of sigma
    ``(in / out - 1) / 2`` along each shrunk axis, zero outside."""
    out = unit
    for axis, n_out in enumerate(new_dims):
        sigma = (unit.shape[axis] / n_out - 1) / 2
        if sigma > 0:
            out = _gaussian_axis(out, axis, sigma)
    return out


def resize_image(im, new_dims, interp_order=1, anti_aliasing=False):
    """Resize an (H, W, K) image to ``new_dims`` = (height, width); returns float32.

    As pycaffe: images of 1 or 3 channels are scaled to [0, 1], resized as
    scikit-image's ``resize(order=interp_order, mode='constant')`` (pixel-centre
    mapping, zero outside the image) and scaled back; a constant image is returned as
    that constant. Other channel counts are resized as ``scipy.ndimage.zoom``
    (corner-aligned; scipy's habit of zeroing a last sample that rounding puts just
    past the edge is not copied). Orders 0 (nearest) and 1 (linear).

    Which scikit-image: pycaffe calls ``resize`` without ``anti_aliasing``, so what it
    computes depends on the installed scikit-image. By default this follows the
    releases pycaffe was written against (no anti-aliasing: each output pixel
    interpolates the nearest input pixels, even when shrinking a lot).
    ``anti_aliasing=True`` follows the newer releases, where ``resize`` blurs first
    when it shrinks (:func:`anti_alias`); 1- and 3-channel images only.
    """
    if interp_order not in (0, 1):
        raise ValueError("resize_image supports interp_order 0 (nearest) or 1 (linear), got %r"
                         % (interp_order,))
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError("resize_image needs an (H, W, K) array, got shape %s" % (im.shape,))
    new_dims = tuple(int(d) for d in new_dims)
    if len(new_dims) != 2 or min(new_dims) <= 0:
        raise ValueError("new_dims must be (height, width) > 0, got %s" % (new_dims,))
    resize = _resize_linear if interp_order == 1 else _resize_nearest
    if im.shape[-1] in (1, 3):
        low, high = im.min(), im.max()
        if high <= low:
            return np.full(new_dims + (im.shape[-1],), low, dtype=np.float32)
        unit = (im.astype(np.float64) - low) / (high - low)
        if anti_aliasing:
            unit = anti_alias(unit, new_dims)
        resized = resize(unit, new_dims, centre_aligned=True)
        resized = np.clip(resized, 0.0, 1.0) * (high - low) + low
    else:
        resized = resize(im.astype(np.float64), new_dims, centre_aligned=False)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The 4 corner crops, the centre crop and their mirrors of each (H, W, K) image.

    Returns a float32 array of shape (10 * N, crop_h, crop_w, K): for every image,
    top-left, top-right, bottom-left, bottom-right, centre, then the same five
    flipped left-right.
    """
    images = [np.asarray(im) for im in images]
    height, width, channels = images[0].shape
    ch, cw = (int(d) for d in crop_dims)
    if ch > height or cw > width:
        raise ValueError("crop %s is larger than the images (%d, %d)"
                         % ((ch, cw), height, width))
    centre_y = int(height / 2.0 - ch / 2.0)
    centre_x = int(width / 2.0 - cw / 2.0)
    corners = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw),
               (centre_y, centre_x)]
    crops = np.empty((10 * len(images), ch, cw, channels), dtype=np.float32)
    for n, im in enumerate(images):
        five = [im[y:y + ch, x:x + cw, :] for y, x in corners]
        crops[10 * n:10 * n + 5] = five
        crops[10 * n + 5:10 * n + 10] = np.stack(five)[:, :, ::-1, :]
    return crops


# -- the input Transformer ------------------------------------------------------------


class Transformer:
    """Prepare images for a net's inputs and undo it (pycaffe's ``caffe.io.Transformer``).

    ``inputs`` maps input blob names to their shapes (N, K, H, W). ``preprocess`` takes
    an (H', W', K) image and applies, in order: float32, resize to (H, W), transpose,
    channel swap, raw scale, mean subtraction, input scale.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose = {}
        self.channel_swap = {}
        self.raw_scale = {}
        self.mean = {}
        self.input_scale = {}

    def _check_input(self, in_):
        if in_ not in self.inputs:
            raise KeyError("%s is not one of the net inputs: %s" % (in_, sorted(self.inputs)))

    def preprocess(self, in_, data):
        self._check_input(in_)
        # A float32 copy (pycaffe may scale the caller's own array in place; not here).
        # The steps then run in place, so every one rounds to float32 as in pycaffe.
        out = np.array(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if out.shape[:2] != in_dims:
            out = resize_image(out, in_dims)
        if in_ in self.transpose:
            out = out.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            out = out[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            out *= self.raw_scale[in_]
        if in_ in self.mean:
            out -= self.mean[in_]
        if in_ in self.input_scale:
            out *= self.input_scale[in_]
        return out

    def deprocess(self, in_, data):
        """Undo ``preprocess`` (except the resize) on a (K, H, W) or (1, K, H, W) array."""
        self._check_input(in_)
        out = np.array(data).squeeze()
        if in_ in self.input_scale:
            out /= self.input_scale[in_]
        if in_ in self.mean:
            out += self.mean[in_]
        if in_ in self.raw_scale:
            out /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            out = out[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out

    def set_transpose(self, in_, order):
        """Axis order taking the input image (H, W, K) to the blob's (K, H, W), e.g. (2, 0, 1)."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise ValueError("transpose order needs %d axes (the input has %d), got %s"
                             % (len(self.inputs[in_]) - 1, len(self.inputs[in_]), tuple(order)))
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order):
        """Channel order after the transpose, e.g. (2, 1, 0) for RGB -> BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise ValueError("channel swap needs %d channels (the input's), got %s"
                             % (self.inputs[in_][1], tuple(order)))
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale):
        """Multiply the raw input, e.g. 255 to go from [0, 1] (load_image) to [0, 255]."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """Mean to subtract: one value per channel (K,), or an elementwise (K, H, W) / (H, W)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[in_][1]:
                raise ValueError("mean has %d channels but input %s has %d"
                                 % (mean.shape[0], in_, self.inputs[in_][1]))
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            shape = mean.shape if mean.ndim != 2 else (1,) + mean.shape
            if len(shape) != 3:
                raise ValueError("mean must have shape (K,), (H, W) or (K, H, W), got %s"
                                 % (mean.shape,))
            if shape != self.inputs[in_][1:]:
                raise ValueError("mean shape %s is incompatible with input %s of shape %s"
                                 % (mean.shape, in_, self.inputs[in_]))
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply after the mean subtraction, e.g. 0.0078125 for SphereFace."""
        self._check_input(in_)
        self.input_scale[in_] = scale
