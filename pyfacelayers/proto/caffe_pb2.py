"""The Caffe message classes, built at import time from the compiled schema.

``from pyfacelayers.proto import caffe_pb2`` works like pycaffe's
``from caffe.proto import caffe_pb2``: every message is an attribute
(``caffe_pb2.NetParameter``), and so are the top-level enum values
(``caffe_pb2.TRAIN``). The classes come from the installed protobuf runtime and a
private descriptor pool, so they never clash with another copy of caffe.proto.
"""

import os

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

try:  # protobuf >= 4.22
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # pragma: no cover - older runtimes
    from google.protobuf import message_factory as _mf
    _message_class = _mf.MessageFactory().GetPrototype

_HERE = os.path.dirname(os.path.abspath(__file__))
_DESCRIPTOR_FILE = os.path.join(_HERE, "caffe.desc")


def _load_file_descriptor_proto():
    if os.path.exists(_DESCRIPTOR_FILE):
        with open(_DESCRIPTOR_FILE, "rb") as f:
            return descriptor_pb2.FileDescriptorProto.FromString(f.read())
    # Running from a source tree that was never built: compile the schema now.
    from .schema_compiler import compile_text
    source = os.path.join(_HERE, "..", "..", "proto", "caffe.proto")
    with open(source) as f:
        return compile_text(f.read(), source)


_pool = descriptor_pool.DescriptorPool()
_file_proto = _load_file_descriptor_proto()
_pool.Add(_file_proto)
DESCRIPTOR = _pool.FindFileByName(_file_proto.name)

for _name, _desc in DESCRIPTOR.message_types_by_name.items():
    globals()[_name] = _message_class(_desc)
for _name, _enum in DESCRIPTOR.enum_types_by_name.items():
    globals()[_name] = EnumTypeWrapper(_enum)  # Name()/Value(), as generated code has
    for _value in _enum.values:
        globals()[_value.name] = _value.number
del _name, _desc, _enum, _value
