"""``pyfacelayers align``: SphereFace's preprocessing of a face data set, without MATLAB.

For each image of ROOT/<identity>/<image> (CASIA-WebFace and LFW layouts) or of
--list: MTCNN v1 detection with SphereFace's settings (minsize 20, factor 0.85,
thresholds 0.6 0.7 0.9), the face nearest the image centre, the similarity transform of
its five landmarks onto SphereFace's reference points and the 112x96 warp, exactly as
face_detect_demo.m and face_align_demo.m. Writes OUT/<identity>/<image>.jpg (JPEG
quality 75, Pillow) or .png, and OUT/landmarks.tsv (path, box x1 y1 x2 y2 score,
landmarks x1 y1 ... x5 y5, 1-based pixel coordinates). Images without a face are listed
in OUT/no_face.txt; unreadable ones are reported and skipped. Resumable."""

import os
import sys
import time

from . import _common


def register(subparsers):
    p = subparsers.add_parser("align", help="detect (MTCNN) and align faces to 112x96 as "
                                            "SphereFace's MATLAB preprocessing",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--root", required=True, help="the data set folder (<identity>/<image>)")
    p.add_argument("--out", required=True, help="output folder for the aligned images")
    p.add_argument("--list", help="align only these images (paths relative to --root, one "
                                  "per line, optionally followed by a label)")
    p.add_argument("--ext", choices=("jpg", "png"), default="jpg",
                   help="jpg: JPEG quality 75 as MATLAB's imwrite (default); png: lossless")
    p.add_argument("--no-face", choices=("skip", "center"), default="skip",
                   help="images without a face: skip (no output, as the MATLAB script; "
                        "default) or center (the centre 112x96 window, unscaled); either "
                        "way they are listed in OUT/no_face.txt")
    p.add_argument("--mtcnn", choices=("pinned", "mirror"), default="pinned",
                   help="detect_face.m version: pinned (SphereFace's submodule, default) or "
                        "mirror (MTCNN's later code: landmarks averaged with the mirrored "
                        "face)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    _common.add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args, stderr=None):
    from .. import backend
    from ..preprocess import dataset
    from ..verification.features import Progress
    stderr = stderr or sys.stderr
    if args.workers < 1:
        raise ValueError("--workers must be >= 1, got %d" % args.workers)
    device = _common.select_device(args.gpu)
    backend.set_mode_cpu()  # checked; the nets are put on the device where they run
    images = dataset.read_list(args.list) if args.list else dataset.walk(args.root)
    say = (lambda text: None) if args.quiet else stderr.write
    say("align: %d images under %s -> %s (%s, MTCNN %s) on %s with %d worker%s\n"
        % (len(images), args.root, args.out, args.ext, args.mtcnn, device, args.workers,
           "" if args.workers == 1 else "s"))
    bar = []

    def progress(done, todo):
        if not bar:
            bar.append(Progress(todo, stream=stderr, enabled=not args.quiet))
        bar[0].update(done)

    start = time.time()
    summary = dataset.align_dataset(
        args.root, args.out, images, ext=args.ext, no_face=args.no_face, version=args.mtcnn,
        workers=args.workers, gpu=args.gpu, stderr=stderr,
        progress=progress)
    elapsed = time.time() - start
    new = summary.aligned + summary.no_face + summary.unreadable
    say("align: %d aligned, %d without a face, %d unreadable, %d already done; %.1f s "
        "(%.1f images/s); landmarks in %s\n"
        % (summary.aligned, summary.no_face, summary.unreadable, summary.skipped, elapsed,
           new / elapsed if elapsed > 0 else 0.0, os.path.join(args.out, dataset.LANDMARKS)))
    return 0
