"""Target: net construction from mutated prototxt text: parse + upgrade, build the
Net in TRAIN and TEST (every layer's setup and reshape with the fuzzed parameters),
then one Forward/Backward when the blobs are small."""

import numpy as np

import pyfacelayers as caffe

from .common import read_files, write_scratch
from .expected import FILE_ERRORS

NAME = "net"
DOCUMENTED = FILE_ERRORS
TEXT = "structured"  # most inputs should parse, to reach the net building
MAX_LEN = 20000
# Forward only nets whose blobs hold at most this many values (time per input).
FORWARD_LIMIT = 200000


def seeds():
    return read_files(["tiny_net.prototxt", "tiny_v1.prototxt",
                       "shared/fixtures/caffe-ref/B1_small/*.prototxt",
                       "shared/fixtures/caffe-ref/legacy_v1/*.prototxt",
                       "shared/nets/caffe-v1/examples_mnist_lenet.prototxt",
                       "shared/nets/caffe-examples/examples_mnist_lenet.prototxt",
                       "shared/nets/caffe-examples/examples_cifar10_cifar10_quick.prototxt"])


def _small(net):
    return sum(b.data.size for b in net.blobs.values()) <= FORWARD_LIMIT


def one_input(data):
    path = write_scratch("net.prototxt", data)
    for phase in (caffe.TEST, caffe.TRAIN):
        net = caffe.Net(path, phase, seed=0)
        if not _small(net):
            continue
        rng = np.random.default_rng(0)
        for name in net.inputs:
            blob = net.blobs[name]
            blob.data[...] = rng.integers(0, 3, blob.data.shape) if "label" in name \
                else rng.standard_normal(blob.data.shape)
        net.forward()
        if phase == caffe.TRAIN:
            net.backward()
