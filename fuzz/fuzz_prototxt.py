"""Target: the prototxt text parser with the legacy upgrades (V1 ``layers``, ``input:``
headers, data transformations, ``solver_type``), for nets and solvers, read from a file
as users do; then the graph filtering (include/exclude, NetState) and split insertion
that every Net construction runs first."""

from pyfacelayers.fileio import read_net, read_solver
from pyfacelayers.net_graph import filter_net, insert_splits
from pyfacelayers.proto import caffe_pb2

from .common import read_files, write_scratch
from .expected import FILE_ERRORS

NAME = "prototxt"
DOCUMENTED = FILE_ERRORS
TEXT = True
MAX_LEN = 40000


def seeds():
    return read_files(["*.prototxt", "shared/nets/*/*.prototxt",
                       "shared/fixtures/caffe-ref/*/*.prototxt"])


def one_input(data):
    path = write_scratch("input.prototxt", data)
    if b"base_lr" in data or b"net_param" in data or b"solver_type" in data:
        read_solver(path)
        return
    net = read_net(path)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        insert_splits(filter_net(net, caffe_pb2.NetState(phase=phase)))
