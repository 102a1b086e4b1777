"""Targets: the binary readers. ``caffemodel``: read (with the V1 upgrade) and copy the
weights into a net by layer name (shape checks); ``binaryproto``: a mean blob to an
array; ``solverstate``: restore a solver from it (history shapes, learned_net, and the
JSON side file when the input carries one after SIDE_MARK)."""

import os
import shutil

import numpy as np

import pyfacelayers as caffe
from pyfacelayers.fileio import read_binaryproto

from .common import CORPUS, read_files, scratch_dir, write_scratch
from .expected import FILE_ERRORS

DOCUMENTED = FILE_ERRORS
TEXT = False
MAX_LEN = 8192
SIDE_MARK = b"\n--pfl.json--\n"
_state = {}


def _nets():
    if "nets" not in _state:
        _state["nets"] = [caffe.Net(os.path.join(CORPUS, "tiny_net.prototxt"), caffe.TEST,
                                    seed=0),
                          caffe.Net(os.path.join(CORPUS, "tiny_v1.prototxt"), caffe.TEST,
                                    seed=0)]
    return _state["nets"]


def _solver():
    if "solver" not in _state:
        shutil.copy(os.path.join(CORPUS, "tiny_solver.caffemodel"), scratch_dir())
        with open(os.path.join(CORPUS, "tiny_solver.prototxt")) as f:
            text = f.read().replace('"tiny"', '"%s/tiny"' % scratch_dir())
        _state["solver"] = caffe.get_solver(text)
    return _state["solver"]


class Caffemodel:
    NAME = "caffemodel"

    @staticmethod
    def seeds():
        return read_files(["*.caffemodel", "shared/fixtures/caffe-ref/*/*.caffemodel"],
                          crop=4096)

    @staticmethod
    def one_input(data):
        path = write_scratch("input.caffemodel", data)
        for net in _nets():
            net.copy_from(path)


class Binaryproto:
    NAME = "binaryproto"

    @staticmethod
    def seeds():
        return read_files(["*.binaryproto"])

    @staticmethod
    def one_input(data):
        path = write_scratch("input.binaryproto", data)
        read_binaryproto(path)
        read_binaryproto(path, dtype=np.float64)


class Solverstate:
    NAME = "solverstate"

    @staticmethod
    def seeds():
        state = read_files(["tiny.solverstate"])
        side = read_files(["tiny.solverstate.pfl.json"])
        found = read_files(["shared/fixtures/caffe-ref/*/*.solverstate"], crop=4096)
        return state + [s + SIDE_MARK + j for s in state for j in side] + found

    @staticmethod
    def one_input(data):
        state, _, side = data.partition(SIDE_MARK)
        path = write_scratch("input.solverstate", state)
        side_path = path + ".pfl.json"
        if side:
            write_scratch("input.solverstate.pfl.json", side)
        elif os.path.exists(side_path):
            os.remove(side_path)
        _solver().restore(path)
