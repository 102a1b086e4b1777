"""SphereFace-20 and SphereFace-64 written in Python with net_spec (pycaffe's NetSpec).

    python examples/sphereface_netspec.py [--depth 20|64] [--deploy] [--classes N]

prints the net as prototxt. The output is the same net as the SphereFace repository's
``sphereface_model.prototxt`` / ``sphereface_64_model.prototxt`` (and, with --deploy,
the ``*_deploy.prototxt``): tests/test_net_spec.py checks it field by field. Change the
depth, the widths or the margin here to make variants.
"""

import argparse

import pyfacelayers as caffe
from pyfacelayers import layers as L
from pyfacelayers import params as P

# Residual units per stage, and the stage widths, of the published nets. The published
# SphereFace-64 has 7 units in stage 2 (62 convolutions, 64 weight layers with fc5/fc6).
UNITS = {20: (1, 2, 4, 1), 64: (3, 7, 16, 3)}
WIDTHS = (64, 128, 256, 512)
WEIGHT_BIAS = [dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]


def conv3x3(bottom, width, first_of_stage):
    """The first convolution of a stage halves the size, has Xavier weights and a
    learned bias; the others keep the size, have Gaussian(0.01) weights and a frozen
    bias (lr_mult 0), as in the published nets."""
    if first_of_stage:
        return L.Convolution(bottom, num_output=width, kernel_size=3, stride=2, pad=1,
                             param=WEIGHT_BIAS, weight_filler=dict(type="xavier"),
                             bias_filler=dict(type="constant", value=0))
    return L.Convolution(bottom, num_output=width, kernel_size=3, stride=1, pad=1,
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=0, decay_mult=0)],
                         weight_filler=dict(type="gaussian", std=0.01),
                         bias_filler=dict(type="constant", value=0))


def sphereface(depth=20, deploy=False, num_classes=10572,
               source="data/CASIA-WebFace-112X96.txt", batch_size=256):
    """The NetParameter of SphereFace-``depth`` (train net, or the deploy net up to fc5)."""
    n = caffe.NetSpec()
    if deploy:
        n.data = L.Input(input_param=dict(shape=dict(dim=[1, 3, 112, 96])))
    else:
        n.data, n.label = L.ImageData(
            ntop=2, transform_param=dict(mean_value=[127.5] * 3, scale=0.0078125, mirror=True),
            image_data_param=dict(source=source, batch_size=batch_size, shuffle=True))
    x = n.data
    for stage, (width, units) in enumerate(zip(WIDTHS, UNITS[depth]), 1):
        def conv_prelu(bottom, index, first=False):
            n["conv%d_%d" % (stage, index)] = conv3x3(bottom, width, first)
            n["relu%d_%d" % (stage, index)] = L.PReLU(n["conv%d_%d" % (stage, index)],
                                                      in_place=True)
            return n["relu%d_%d" % (stage, index)]
        x = conv_prelu(x, 1, first=True)
        for unit in range(units):
            branch = conv_prelu(conv_prelu(x, 2 * unit + 2), 2 * unit + 3)
            n["res%d_%d" % (stage, 2 * unit + 3)] = L.Eltwise(x, branch,
                                                              operation=P.Eltwise.SUM)
            x = n["res%d_%d" % (stage, 2 * unit + 3)]
    n.fc5 = L.InnerProduct(x, num_output=512, param=WEIGHT_BIAS,
                           weight_filler=dict(type="xavier"),
                           bias_filler=dict(type="constant", value=0))
    if not deploy:
        # A-Softmax with m = 4 and the annealed lambda of the paper's training.
        n.fc6, n["lambda"] = L.MarginInnerProduct(
            n.fc5, n.label, ntop=2, param=dict(lr_mult=1, decay_mult=1),
            num_output=num_classes, type=P.MarginInnerProduct.QUADRUPLE,
            weight_filler=dict(type="xavier"), base=1000, gamma=0.12, power=1,
            lambda_min=5, iteration=0)
        n.softmax_loss = L.SoftmaxWithLoss(n.fc6, n.label)
    net = n.to_proto()
    net.name = "SpherefaceNet-%d" % depth
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, choices=sorted(UNITS), default=20)
    parser.add_argument("--deploy", action="store_true", help="the deploy net (up to fc5)")
    parser.add_argument("--classes", type=int, default=10572,
                        help="identities of the training set (CASIA-WebFace: 10572)")
    args = parser.parse_args()
    print(sphereface(args.depth, args.deploy, args.classes), end="")


if __name__ == "__main__":
    main()
