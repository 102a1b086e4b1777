"""``pyfacelayers lfw``: from the raw LFW images to the verification table in one command.

Runs the three steps SphereFace's recipe runs, each also a command of its own:
1. ``align`` of the images the pairs file uses (MTCNN + 112x96 alignment) into --out;
2. ``extract`` of their features through the deploy net, with the mirrored image's
   features concatenated (SphereFace's evaluation.m), into --out/features.npz;
3. ``verify``: the 10-fold protocol, printing the per-fold table and the mean."""

import argparse
import os
import sys

from . import _common
from . import align as align_cmd
from . import extract as extract_cmd
from . import verify as verify_cmd


def register(subparsers):
    p = subparsers.add_parser("lfw", help="LFW accuracy from the raw images: align + extract "
                                          "(mirror concat) + verify",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--lfw", required=True, help="the LFW folder (<name>/<name>_NNNN.jpg)")
    p.add_argument("--pairs", required=True, help="LFW pairs.txt")
    p.add_argument("--model", required=True, help="the deploy .prototxt (112x96 input)")
    p.add_argument("--weights", required=True, help="the trained .caffemodel")
    p.add_argument("--out", default="lfw-112X96",
                   help="working folder: aligned images, landmarks, features (default "
                        "%(default)s; a rerun reuses the aligned images)")
    p.add_argument("--no-face", choices=("skip", "center"), default="center",
                   help="pair images without a detected face: center (the centre 112x96 "
                        "window, so every pair is scored; default) or skip (then such a "
                        "pair is an error)")
    p.add_argument("--mtcnn", choices=("pinned", "mirror"), default="pinned",
                   help="detect_face.m version (default pinned, as SphereFace)")
    p.add_argument("--workers", type=int, default=1, help="alignment processes (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")
    p.add_argument("--blob", help="feature blob (default: the net's only output)")
    _common.add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args, out=print, stderr=None):
    from ..fileio.atomic import atomic_write
    from ..verification import pairs as pairs_mod
    from ..verification.features import feature_key
    stderr = stderr or sys.stderr
    pairs = pairs_mod.read_pairs(args.pairs)
    keys = pairs_mod.image_keys(pairs)
    names = [key + ".jpg" for key in keys]
    os.makedirs(args.out, exist_ok=True)
    image_list = os.path.join(args.out, "pairs_images.txt")
    atomic_write(image_list, "".join(name + "\n" for name in names))
    aligned = os.path.join(args.out, "aligned")
    align_cmd.run(argparse.Namespace(
        root=args.lfw, out=aligned, list=image_list, ext="jpg", no_face=args.no_face,
        mtcnn=args.mtcnn, workers=args.workers, gpu=args.gpu, quiet=args.quiet), stderr=stderr)
    missing = [n for n in names if not os.path.isfile(os.path.join(aligned, n))]
    if missing:
        raise ValueError("%d of the %d pair images have no aligned face (see no_face.txt and "
                         "unreadable.txt in %s), e.g. %s; rerun with --no-face center to "
                         "score them on the image centre"
                         % (len(missing), len(names), aligned,
                            ", ".join(feature_key(n) for n in missing[:3])))
    features = os.path.join(args.out, "features.npz")
    extract_cmd.run(argparse.Namespace(
        model=args.model, weights=args.weights, list=image_list, root=aligned + os.sep,
        out=features, blob=args.blob, mirror="concat", batch_size=args.batch_size,
        resize=False, gpu=args.gpu, quiet=args.quiet), stderr=stderr)
    return verify_cmd.run(argparse.Namespace(
        pairs=args.pairs, features=[features], list=None, pattern=pairs_mod.DEFAULT_PATTERN,
        dim=None, steps=verify_cmd.lfw_protocol.GRID_STEPS, no_mean=False, markdown=False,
        roc=None), out=out)
