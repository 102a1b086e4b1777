"""``pyfacelayers compare``: check this package against a real Caffe, blob by blob.

Step 1, where pycaffe runs: ``python tools/dump_caffe_blobs.py --model M --weights W
--input I --out ref.npz [--backward]``. Step 2, here: ``pyfacelayers compare --model M
--weights W --reference ref.npz``. Prints every array in execution order with its max
absolute and norm-relative error and marks the first one over the tolerance with the
layer that produced it. Exit status: 0 all pass, 1 a difference, 2 the files cannot be
compared (bad reference, another net, missing input)."""

import json
import sys

from ..errors import PyFaceLayersError
from . import _common


def register(subparsers):
    p = subparsers.add_parser(
        "compare", help="compare every blob with a reference dumped from Caffe "
                        "(tools/dump_caffe_blobs.py)",
        description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the net .prototxt")
    p.add_argument("--weights", help="the .caffemodel the reference was made with")
    p.add_argument("--reference", required=True,
                   help="the .npz written by tools/dump_caffe_blobs.py")
    p.add_argument("--input", help="input: .npz (one array per input blob), .npy (one "
                   "input) or an image list ('path [label]' lines); default: the inputs "
                   "stored in the reference")
    p.add_argument("--backward", action="store_true",
                   help="also compare Backward (default: when the reference has diffs)")
    p.add_argument("--top-diff", metavar="FILE.npz",
                   help="diffs for the output blobs when the net has no loss")
    p.add_argument("--phase", choices=["TRAIN", "TEST"],
                   help="default: the reference's phase (another one is refused: exit 2)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest error relative to the reference's norm (default 1e-4)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="default: the reference's (float32 for pycaffe)")
    p.add_argument("--no-sync-iteration", action="store_true",
                   help="keep the prototxt's MarginInnerProduct iteration instead of "
                        "the reference's counter")
    p.add_argument("--mean", type=float, default=127.5, help="image list: mean (127.5)")
    p.add_argument("--scale", type=float, default=0.0078125,
                   help="image list: scale after the mean (1/128)")
    p.add_argument("--image-resize", choices=["auto", "plain", "antialias"],
                   default="auto",
                   help="image list: 'plain' resizes as pycaffe with the scikit-image it "
                        "was written for (no anti-aliasing), 'antialias' as newer "
                        "scikit-image (Gaussian blur before shrinking); 'auto' (default): "
                        "what the reference's dump recorded, else plain")
    p.add_argument("--all", action="store_true",
                   help="also list the net's arrays the reference does not hold")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common.add_device_arguments(p)
    p.set_defaults(func=run)


def run(args, out=print):
    from ..compare import compare_net
    try:
        if args.tolerance <= 0:
            raise ValueError("--tolerance must be > 0, got %g" % args.tolerance)
        report = compare_net(
            args.model, args.weights, args.reference, inputs=args.input,
            backward=True if args.backward else None, top_diff=args.top_diff,
            phase=args.phase, tolerance=args.tolerance, dtype=args.dtype, gpu=args.gpu,
            sync_iteration=not args.no_sync_iteration, mean=args.mean, scale=args.scale,
            antialias={"auto": None, "plain": False, "antialias": True}[args.image_resize])
    except (PyFaceLayersError, OSError, ValueError) as exc:
        if args.json:
            out(json.dumps({"passed": False, "error": str(exc)}))
        else:
            print("pyfacelayers compare: error: %s" % exc, file=sys.stderr)
        return 2
    out(json.dumps(report.to_dict(), indent=1) if args.json
        else report.format_table(show_absent=args.all))
    return report.exit_code
