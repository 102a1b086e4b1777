"""The exception types each fuzz target may raise; anything else is a finding.

- File targets (prototxt text, nets built from it, caffemodel, binaryproto,
  solverstate): only ``PyFaceLayersError`` subclasses (FormatError, NetError,
  LayerError, SolverError, and ResourceLimitError for sizes over the memory limit).
  An ``OSError`` naming a file the input points at (a data source, a mean file) is
  documented too: the input named a file that is not there.
- Kernels called directly (``pyfacelayers._C``): ``ValueError`` and ``TypeError``, the
  types pybind11 and ``csrc/array_checks.h`` raise for a bad argument.
- Layers fed random blobs: ``PyFaceLayersError`` subclasses (a layer names itself).

Findings are every other exception (IndexError, KeyError, AttributeError,
RecursionError, UnicodeDecodeError, struct.error, a protobuf DecodeError leaking
unwrapped, a bare ValueError from numpy ...), a crash of the interpreter, or a hang.
``MemoryError`` (and numpy's "array is too big" ValueError, its twin for sizes past
the address space) is counted apart as "pending": absurd sizes are bounded by the
resource limits (PYFACELAYERS_MEMORY_LIMIT / ResourceLimitError), not by the parsers.
"""

from pyfacelayers.errors import PyFaceLayersError

FILE_ERRORS = (PyFaceLayersError,)
KERNEL_ERRORS = (ValueError, TypeError)
LAYER_ERRORS = (PyFaceLayersError,)

# numpy's refusals of an allocation larger than the address space.
_NUMPY_SIZE_MESSAGES = ("array is too big", "Maximum allowed dimension exceeded")

EXPECTED = "expected"
PENDING = "pending"
FINDING = "finding"


def classify(exc, documented):
    """(kind, name) for an exception a harness let through."""
    name = type(exc).__name__
    if isinstance(exc, documented):
        return EXPECTED, name
    if isinstance(exc, OSError) and documented is not KERNEL_ERRORS and exc.filename:
        return EXPECTED, name
    if isinstance(exc, MemoryError) or (type(exc) is ValueError and any(
            m in str(exc) for m in _NUMPY_SIZE_MESSAGES)):
        return PENDING, name
    return FINDING, name
