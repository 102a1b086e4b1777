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


class LayerError(PyFaceLayersError, ValueError):
    """A layer got an input or parameter it cannot work with (names the layer)."""

    def __init__(self, layer_name, layer_type, message):
        super().__init__('layer "%s" (%s): %s' % (layer_name, layer_type, message))
        self.layer_name, self.layer_type = layer_name, layer_type


class NetError(PyFaceLayersError, ValueError):
    """A net definition cannot be built (bad wiring, missing blob, shape mismatch)."""
