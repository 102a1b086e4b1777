"""Reading the IDX files MNIST ships in (``train-images-idx3-ubyte`` and its three
siblings), plain or gzip-compressed.

IDX layout (big-endian throughout): two zero bytes; a type code (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64); the number of dimensions; one
uint32 size per dimension; then the values in C order. The file must end right after
them: a shorter file is truncated, a longer one is something else.
"""

import gzip
import math
import os
import struct

import numpy as np

from ..errors import FormatError
from ..limits import check_array

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_idx(path):
    """The array stored in the IDX file ``path`` (``.gz`` read compressed), in the
    file's element type (native byte order). Raises FormatError naming the file for a
    wrong magic number, an unknown type, absurd sizes, a truncated file or trailing
    bytes."""
    path = os.fspath(path)
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) < 4:
                raise FormatError("truncated: %d byte(s), an IDX file starts with a 4-byte "
                                  "magic number" % len(header), path)
            zero, code, ndim = struct.unpack(">HBB", header)
            if zero != 0 or code not in IDX_TYPES or ndim == 0:
                raise FormatError(
                    "not an IDX file: magic number 0x%08x (expected 0x0000TTNN: type TT one "
                    "of %s, NN dimensions > 0; MNIST's are 0x00000803 for images and "
                    "0x00000801 for labels)" % (struct.unpack(">I", header)[0],
                                                ", ".join("%02x" % c for c in IDX_TYPES)),
                    path)
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise FormatError("truncated in the header: %d dimension sizes announced, "
                                  "%d byte(s) of them present" % (ndim, len(dims_raw)), path)
            shape = struct.unpack(">%dI" % ndim, dims_raw)
            dtype = np.dtype(IDX_TYPES[code])
            want = math.prod(shape) * dtype.itemsize
            if not path.endswith(".gz"):  # a plain file's size is known: no big read
                have = os.path.getsize(path) - 4 - 4 * ndim
                if have < want:
                    raise FormatError("truncated: sizes %s need %d byte(s) of data, the "
                                      "file has %d" % (list(shape), want, have), path)
            try:
                check_array(shape, dtype, what="IDX array of %s" % path)
            except (ValueError, MemoryError) as exc:
                raise FormatError("sizes %s: %s" % (list(shape), exc), path) from None
            body = f.read(want)
            if len(body) < want:
                raise FormatError("truncated: sizes %s need %d byte(s) of data, the file has "
                                  "%d" % (list(shape), want, len(body)), path)
            if f.read(1):
                raise FormatError("more bytes than sizes %s account for (%d byte(s) of "
                                  "data expected)" % (list(shape), want), path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FormatError("cannot read (%s)" % exc, path) from None
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write ``array`` as an IDX file (``.gz``: compressed); its dtype must be one IDX
    has. For tests and for making small MNIST-like sets."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX holds 1 to 255 dimensions of %s, got %s with shape %s" % (
            ", ".join(str(np.dtype(v).newbyteorder("=")) for v in IDX_TYPES.values()),
            array.dtype, array.shape))
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(
        ">%dI" % array.ndim, *array.shape)
    with (gzip.open if os.fspath(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header)
        f.write(array.astype(IDX_TYPES[code]).tobytes())
