"""The Caffe protobuf schema (``caffe_pb2``), as in pycaffe's ``caffe.proto``."""
