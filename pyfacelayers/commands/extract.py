"""``pyfacelayers extract``: deep features of a list of aligned face images.

Runs a deploy net (TEST phase) over the images of --list, in batches, with the
SphereFace nets' preprocessing (BGR, (pixel - 127.5) / 128), and writes one feature row
per image, in list order: an .npz (arrays "names" and "features") or an .npy with the
names in a sidecar <stem>.names.txt. --mirror adds the features of the horizontally
flipped image (concat as SphereFace's evaluation.m, or sum)."""

import sys

from . import _common
from ..verification import features as feats


def register(subparsers):
    p = subparsers.add_parser("extract", help="extract deep features of face images "
                                              "(for verify)",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the deploy .prototxt")
    p.add_argument("--weights", required=True, help="the trained .caffemodel")
    p.add_argument("--list", required=True,
                   help="image list: one path per line, optionally followed by a label")
    p.add_argument("--root", default="",
                   help="prepended to every listed path (as ImageData's root_folder: plain "
                        "concatenation, so end a folder with /)")
    p.add_argument("--out", required=True, help="output file, .npz or .npy")
    p.add_argument("--blob", help="feature blob (default: the net's only output)")
    p.add_argument("--mirror", choices=feats.MIRROR_MODES, default="none",
                   help="add the flipped image's features: concat (SphereFace's evaluation, "
                        "doubles the width) or sum (AM-Softmax); default none")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")
    p.add_argument("--resize", action="store_true",
                   help="resize images of another size to the net's input (bilinear, as "
                        "OpenCV / ImageData new_height+new_width); default: refuse them")
    _common.add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args, stderr=None):
    from ..net import Net
    from ..proto import caffe_pb2
    stderr = stderr or sys.stderr
    if not (args.out.endswith(".npz") or args.out.endswith(".npy")):
        raise ValueError("--out %s: the name must end in .npz or .npy" % args.out)
    device = _common.select_device(args.gpu)
    names, paths, wheres = feats.list_paths(args.list, args.root)
    net = Net(args.model, caffe_pb2.TEST, weights=args.weights)
    extractor = feats.FeatureExtractor(net, args.blob, args.mirror, args.batch_size,
                                       args.resize)
    if not args.quiet:
        stderr.write("extract: %d images through %s (blob %s, input %dx%dx%d, mirror %s) on %s\n"
                     % (len(paths), args.model, extractor.blob, extractor.channels,
                        extractor.height, extractor.width, args.mirror, device))
    progress = feats.Progress(len(paths), stream=stderr, enabled=not args.quiet)
    features = extractor.extract(paths, wheres, progress)
    feats.save_features(args.out, names, features)
    if not args.quiet:
        stderr.write("extract: wrote %d x %d features to %s\n" % (features.shape + (args.out,)))
    return 0
