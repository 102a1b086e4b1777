"""Exceptions raised for bad files and bad inputs. Each names where the problem is."""


class PyFaceLayersError(Exception):
    """Base class of every error pyfacelayers raises on purpose."""


class FormatError(PyFaceLayersError, ValueError):
    """A file (prototxt, caffemodel, binaryproto, solverstate) could not be read.

    ``path``, ``line`` and ``column`` locate the problem when known.
    """

    def __init__(self, message, path=None, line=None, column=None):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += ":%d" % line
                if column is not None:
                    where += ":%d" % column
            where += ": "
        super().__init__(where + message)
        self.path, self.line, self.column = path, line, column
        self.reason = message  # the message without the location


class LayerError(PyFaceLayersError, ValueError):
    """A layer got an input or parameter it cannot work with (names the layer)."""

    def __init__(self, layer_name, layer_type, message):
        super().__init__('layer "%s" (%s): %s' % (layer_name, layer_type, message))
        self.layer_name, self.layer_type = layer_name, layer_type


class NetError(PyFaceLayersError, ValueError):
    """A net definition cannot be built (bad wiring, missing blob, shape mismatch)."""


class ResourceLimitError(PyFaceLayersError, MemoryError):
    """A net (or file) would need more memory than :func:`pyfacelayers.limits.memory_limit`
    allows, or declares a size that cannot exist (a negative or non-integer dimension).

    Raised before anything is allocated. It is also a :class:`MemoryError`, so code that
    already handles running out of memory handles this too. The message names the layer
    (name and type) and blob when known, the shape, the bytes asked for, the net's running
    total, the limit, and how to raise it. The numbers are kept as attributes.
    """

    def __init__(self, message, layer_name=None, layer_type=None, requested=None,
                 total=None, limit=None):
        super().__init__(message)
        self.layer_name, self.layer_type = layer_name, layer_type
        self.requested, self.total, self.limit = requested, total, limit


class ShapeError(PyFaceLayersError, ValueError):
    """A blob shape that cannot exist: a negative, fractional or non-numeric dimension."""


class BlobOnHostError(PyFaceLayersError, AttributeError):
    """A device pointer (``Blob._gpu_data_ptr``) was asked of a blob held in host memory.
    An AttributeError, as the missing attribute of a CPU-only pycaffe."""
