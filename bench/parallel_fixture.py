"""The small SphereFace-style job that the data-parallel tests, bench/parallel.py and
bench/parallel_gpu_check.sh train: an LMDB of 9x9 grey images of 4 classes, a net with
Convolution, PReLU, InnerProduct, MarginInnerProduct (A-Softmax, m = 4, annealed
lambda) and SoftmaxWithLoss, and its solver.

    write_job(folder, name, batch, solver_type="SGD", iters=5, ...) -> (solver path,
                                                                       snapshot prefix)

The database goes to ``folder/../db`` (shared by the jobs of one parent folder) and
needs the lmdb package; ``source="dummy"`` uses DummyData instead (no lmdb: random
images of class 1, each rank its own draws).
"""

import os

import numpy as np

RECORDS = 48
CLASSES = 4

DATA_LMDB = """layer { name: "data" type: "Data" top: "data" top: "label"
  data_param { source: "%(db)s" batch_size: %(batch)d backend: LMDB }
  transform_param { scale: 0.0078125 mean_value: 127.5 } }"""

DATA_DUMMY = """layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: %(batch)d dim: 1 dim: %(side)d dim: %(side)d }
    shape { dim: %(batch)d } data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" value: 1 } } }"""

NET = """name: "tiny_sphereface"
%(data)s
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: %(channels)d kernel_size: 3 stride: 2
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc5" type: "InnerProduct" bottom: "conv1" top: "fc5"
  inner_product_param { num_output: %(features)d weight_filler { type: "xavier" } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "fc5" bottom: "label" top: "fc6"
  top: "lambda"
  margin_inner_product_param { num_output: %(classes)d type: QUADRUPLE
    weight_filler { type: "xavier" } base: 1000 gamma: 0.5 power: 1 lambda_min: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "loss" }
"""

SOLVER = """net: "%(net)s"
type: "%(type)s"
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
%(extra)s
weight_decay: 0.0005
max_iter: %(iters)d
display: %(display)d
snapshot: %(snapshot)d
snapshot_prefix: "%(prefix)s"
random_seed: 7
layer_wise_reduce: %(layer_wise)s
"""


def make_db(path, side=9, records=RECORDS):
    import lmdb
    from pyfacelayers.proto import caffe_pb2
    rng = np.random.default_rng(3)
    env = lmdb.open(str(path), map_size=max(1 << 24, records * side * side * 4))
    with env.begin(write=True) as txn:
        for i in range(records):
            label = i % CLASSES
            pixels = (rng.integers(0, 256, (1, side, side)) // 2 + 60 * label).astype(np.uint8)
            datum = caffe_pb2.Datum(channels=1, height=side, width=side, label=label,
                                    data=pixels.tobytes())
            txn.put(b"%08d" % i, datum.SerializeToString())
    env.close()


def write_job(folder, name, batch, solver_type="SGD", iters=5, snapshot=5, layer_wise=True,
              display=1, source="lmdb", side=9, channels=4, features=6, records=RECORDS):
    """Write ``folder/<name>_net.prototxt`` and ``..._solver.prototxt``; returns (solver
    path, snapshot prefix)."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    db = os.path.join(os.path.dirname(os.path.abspath(folder)), "db")
    if source == "lmdb":
        if not os.path.exists(db):
            make_db(db, side, records)
        data = DATA_LMDB % {"db": db, "batch": batch}
    else:
        data = DATA_DUMMY % {"batch": batch, "side": side}
    net = os.path.join(folder, name + "_net.prototxt")
    with open(net, "w") as f:
        f.write(NET % {"data": data, "classes": CLASSES, "channels": channels,
                       "features": features})
    solver = os.path.join(folder, name + "_solver.prototxt")
    extra = "momentum2: 0.999\ndelta: 1e-8" if solver_type == "Adam" else ""
    prefix = os.path.join(folder, name)
    with open(solver, "w") as f:
        f.write(SOLVER % {"net": net, "type": solver_type, "iters": iters, "display": display,
                          "snapshot": snapshot, "prefix": prefix, "extra": extra,
                          "layer_wise": "true" if layer_wise else "false"})
    return solver, prefix
