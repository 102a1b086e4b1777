"""Reading and writing Caffe's files: prototxt nets and solvers, caffemodels,
binaryproto means, solverstates; legacy formats are upgraded on read, and every
write is atomic."""

from .atomic import atomic_write
from .binary import (read_binary_proto, read_binaryproto, read_caffemodel, read_solverstate,
                     write_binary_proto, write_binaryproto, write_caffemodel, write_solverstate)
from .blobs import array_to_blob, blob_shape, blob_to_array, legacy_shape_matches
from .text import message_to_text, parse_text, read_net, read_solver, write_prototxt
from .upgrade import upgrade_net, upgrade_solver

__all__ = [
    "array_to_blob", "atomic_write", "blob_shape", "blob_to_array", "legacy_shape_matches",
    "message_to_text", "parse_text", "read_binary_proto", "read_binaryproto",
    "read_caffemodel", "read_net", "read_solver", "read_solverstate", "upgrade_net",
    "upgrade_solver", "write_binary_proto", "write_binaryproto", "write_caffemodel",
    "write_prototxt", "write_solverstate",
]
