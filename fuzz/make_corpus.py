"""Write the small binary seeds of fuzz/corpus/ (run once; the files are committed):
a caffemodel of tiny_net, its V1 (``layers``, legacy 4-D blob shapes) twin, two mean
binaryprotos and a solverstate with its side file. Small seeds keep mutations cheap."""

import os
import shutil
import tempfile

import numpy as np

import pyfacelayers as caffe
from pyfacelayers.fileio import array_to_blob, read_caffemodel, write_binary_proto
from pyfacelayers.fileio.upgrade import V1_LAYER_TYPES
from pyfacelayers.proto import caffe_pb2

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def main():
    net = caffe.Net(os.path.join(HERE, "tiny_net.prototxt"), caffe.TRAIN, seed=1)
    net.save(os.path.join(HERE, "tiny.caffemodel"))

    v1net = caffe.Net(os.path.join(HERE, "tiny_v1.prototxt"), caffe.TEST, seed=1)
    v1net.save(os.path.join(HERE, "tiny_v1_current.caffemodel"))
    current = read_caffemodel(os.path.join(HERE, "tiny_v1_current.caffemodel"))
    os.remove(os.path.join(HERE, "tiny_v1_current.caffemodel"))
    enums = {name: enum for enum, name in V1_LAYER_TYPES.items()}
    legacy = caffe_pb2.NetParameter(name="tiny_v1")
    for layer in current.layer:
        if layer.type == "Input":
            continue
        v1 = legacy.layers.add(name=layer.name, type=enums[layer.type])
        v1.bottom.extend(layer.bottom)
        v1.top.extend(layer.top)
        for blob in layer.blobs:
            values = np.array(blob.data, np.float32).reshape(tuple(blob.shape.dim))
            v1.blobs.add().CopyFrom(array_to_blob(values, legacy_shape=True))
        v1.blobs_lr.extend([1.0] * len(layer.blobs))
    write_binary_proto(os.path.join(HERE, "tiny_v1.caffemodel"), legacy)

    mean = np.arange(2 * 3 * 2, dtype=np.float32).reshape(1, 2, 3, 2)
    write_binary_proto(os.path.join(HERE, "mean_legacy.binaryproto"),
                       array_to_blob(mean, legacy_shape=True))
    write_binary_proto(os.path.join(HERE, "mean_shape.binaryproto"),
                       array_to_blob(mean[0].astype(np.float64)))

    work = tempfile.mkdtemp()
    try:
        text = open(os.path.join(HERE, "tiny_solver.prototxt")).read()
        text = text.replace('snapshot_prefix: "tiny"',
                            'snapshot_prefix: "%s/tiny"' % work)
        solver = caffe.get_solver(text)
        solver.net.blobs["data"].data[...] = np.linspace(-1, 1, 8).reshape(2, 4)
        solver.net.blobs["label"].data[...] = [0, 2]
        solver.step(2)
        solver.snapshot()
        shutil.copy(os.path.join(work, "tiny_iter_2.caffemodel"),
                    os.path.join(HERE, "tiny_solver.caffemodel"))
        # Name the weights relative to the solverstate, as the harness lays them out.
        state = caffe_pb2.SolverState()
        with open(os.path.join(work, "tiny_iter_2.solverstate"), "rb") as f:
            state.ParseFromString(f.read())
        state.learned_net = "tiny_solver.caffemodel"
        write_binary_proto(os.path.join(HERE, "tiny.solverstate"), state)
        shutil.copy(os.path.join(work, "tiny_iter_2.solverstate.pfl.json"),
                    os.path.join(HERE, "tiny.solverstate.pfl.json"))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
