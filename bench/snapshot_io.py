"""Snapshot speed: write and read a net's weights as a .caffemodel, before and after the
packed-bytes blob encoder, against plain numpy (tofile/fromfile) as the floor.

    python bench/snapshot_io.py [--mb 100] [--repeat 2]

"before" is the previous BlobProto path (values through Python lists: ``extend(tolist())``
then CopyFrom), kept here as a reference; "after" is pyfacelayers' own path now
(``Net.save`` and ``Net.copy_from``, whose reading was not changed; the write includes
fsync and the atomic rename).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers.fileio import atomic_write  # noqa: E402
from pyfacelayers.proto import caffe_pb2  # noqa: E402


def list_array_to_blob(array):
    """The previous encoder: one Python float per value."""
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in array.shape)
    blob.data.extend(array.astype(np.float32, copy=False).ravel().tolist())
    return blob


def before_save(net, path):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net._param)
    for lp, layer in zip(out.layer, net.layers):
        lp.ClearField("blobs")
        for blob in layer.blobs:
            lp.blobs.add().CopyFrom(list_array_to_blob(blob.data))
    atomic_write(path, out.SerializeToString())


def make_net(folder, megabytes):
    side = int((megabytes * 1e6 / 4) ** 0.5)
    text = """input: "data" input_shape { dim: 1 dim: %d }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: %d weight_filler { type: "gaussian" std: 0.01 } } }
""" % (side, side)
    path = os.path.join(folder, "big.prototxt")
    with open(path, "w") as f:
        f.write(text)
    return caffe.Net(path, caffe.TEST), path


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pfl_snapshot_io_") as folder:
        net, _ = make_net(folder, args.mb)
        size = sum(b.data.nbytes for l in net.layers for b in l.blobs) / 1e6
        model = os.path.join(folder, "w.caffemodel")
        raw = os.path.join(folder, "w.raw")
        weights = [b.data for l in net.layers for b in l.blobs]

        def numpy_write():
            with open(raw, "wb") as f:
                for w in weights:
                    w.tofile(f)
                f.flush()
                os.fsync(f.fileno())

        def numpy_read():
            with open(raw, "rb") as f:
                for w in weights:
                    np.fromfile(f, np.float32, w.size)

        rows = [("numpy tofile/fromfile (floor)", best(numpy_write, args.repeat),
                 best(numpy_read, args.repeat))]
        rows.append(("before: lists (extend(tolist))", best(lambda: before_save(net, model),
                                                           args.repeat), None))
        w_after = best(lambda: net.save(model), args.repeat)
        r_after = best(lambda: net.copy_from(model), args.repeat)
        rows.append(("after: packed bytes (Net.save/copy_from)", w_after, r_after))
        print("caffemodel of %.0f MB (one InnerProduct, float32), best of %d"
              % (size, args.repeat))
        print("%-42s %10s %10s" % ("", "write s", "read s"))
        for name, w, r in rows:
            print("%-42s %10.3f %10s" % (name, w, "(same)" if r is None else "%.3f" % r))
        print("(reading is unchanged: protobuf parses packed floats in C and np.array(field) "
              "copies them at memory speed)")


if __name__ == "__main__":
    main()
