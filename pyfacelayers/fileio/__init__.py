"""Reading and writing Caffe's files: prototxt nets and solvers, caffemodels,
binaryproto means, solverstates; legacy formats are upgraded on read."""

from .blobs import array_to_blob, blob_shape, blob_to_array
