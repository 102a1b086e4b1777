"""The Caffe protobuf schema (``caffe_pb2``), as in pycaffe's ``caffe.proto``."""


def is_repeated(field):
    """Whether a protobuf FieldDescriptor is repeated, on every protobuf version
    (5 and newer have ``is_repeated``; 7 dropped ``label``, which older ones only have)."""
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    from google.protobuf.descriptor import FieldDescriptor
    return field.label == FieldDescriptor.LABEL_REPEATED
