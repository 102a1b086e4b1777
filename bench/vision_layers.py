"""Time the vision layers on SphereFace-20 layer shapes (CPU; not a test).

    PYTHONPATH=. python bench/vision_layers.py [batch]

Prints the best of three forward and backward times per layer.
"""

import sys
import time

import numpy as np
from google.protobuf import text_format

from pyfacelayers.blob import Blob
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

CASES = [
    ("Convolution", (3, 112, 96), 'convolution_param { num_output: 64 kernel_size: 3 '
     'stride: 2 pad: 1 weight_filler { type: "xavier" } }'),
    ("Convolution", (64, 56, 48), 'convolution_param { num_output: 64 kernel_size: 3 '
     'pad: 1 weight_filler { type: "gaussian" std: 0.01 } }'),
    ("Convolution", (256, 14, 12), 'convolution_param { num_output: 512 kernel_size: 3 '
     'stride: 2 pad: 1 weight_filler { type: "xavier" } }'),
    ("PReLU", (64, 56, 48), ""),
    ("Pooling", (64, 56, 48), "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
    ("Pooling", (64, 56, 48), "pooling_param { pool: AVE kernel_size: 3 stride: 2 }"),
    ("InnerProduct", (512, 7, 6), 'inner_product_param { num_output: 512 '
     'weight_filler { type: "xavier" } }'),
]


def main(batch):
    rng = np.random.default_rng(0)
    for kind, shape, text in CASES:
        param = text_format.Parse('name: "b" type: "%s" %s' % (kind, text),
                                  caffe_pb2.LayerParameter())
        layer = create_layer(param, caffe_pb2.TRAIN, np.float32, rng)
        bottom, top = Blob((batch,) + shape), Blob(())
        bottom.data[...] = rng.standard_normal(bottom.shape)
        layer.setup([bottom], [top])
        top.diff[...] = 1
        fwd = bwd = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            layer.forward([bottom], [top])
            t1 = time.perf_counter()
            layer.backward([top], [True], [bottom])
            t2 = time.perf_counter()
            fwd, bwd = min(fwd, t1 - t0), min(bwd, t2 - t1)
        print("%-13s %-16s -> %-16s fwd %8.2f ms  bwd %8.2f ms"
              % (kind, (batch,) + shape, top.shape, fwd * 1e3, bwd * 1e3))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
