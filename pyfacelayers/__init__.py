"""pyfacelayers: run and train legacy Caffe face-recognition nets without Caffe.

``import pyfacelayers as caffe`` gives pycaffe's API (``caffe.Net``, ``caffe.TRAIN``,
``caffe.SGDSolver``, ...); the SphereFace ``MarginInnerProduct`` layer runs in C++
(and CUDA when built with nvcc).
"""

__version__ = "0.1.0"
