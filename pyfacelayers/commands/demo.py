"""``pyfacelayers demo``: the SphereFace toy experiment on scikit-learn's digits, or on
MNIST's own IDX files (``--mnist DIR``)."""


def register(subparsers):
    p = subparsers.add_parser(
        "demo", help="train a small CNN on scikit-learn's digits (or MNIST: --mnist DIR) with softmax, modified "
                     "softmax and A-Softmax; print test accuracy, plot the 2-D/3-D features "
                     "(needs pip install 'pyfacelayers[demo]')")
    p.add_argument("--dim", type=int, choices=[2, 3], default=2,
                   help="feature dimension: 2 (points on the plane) or 3 (on the sphere)")
    p.add_argument("--iters", type=int, default=None, metavar="N",
                   help="training iterations per run (default: max_iter of the shipped "
                        "solver; the learning-rate steps scale with it)")
    p.add_argument("--out", default="pyfacelayers-demo", metavar="DIR",
                   help="folder for the figures, the table and the nets used "
                        "(default ./pyfacelayers-demo)")
    p.add_argument("--gpu", action="store_true",
                   help="train on the GPU when one is usable (needs cupy); otherwise the "
                        "demo says why and trains on the CPU")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the train/test split, the initial weights and the "
                        "order of the training items (default 0)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="BLAS threads on the CPU (default 1: the products are small, and "
                        "extra threads slow training down when the cores are busy; 0: the "
                        "BLAS library's default)")
    p.add_argument("--mnist", metavar="DIR",
                   help="train on MNIST (28x28) instead: DIR holds train-images-idx3-ubyte, "
                        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                        "t10k-labels-idx1-ubyte, each plain or .gz; a CNN sized for 28x28 "
                        "replaces the digits' body (default 4000 iterations per method)")
    p.add_argument("--methods", default="sphereface", metavar="LIST",
                   help="the losses to train side by side: sphereface (default: softmax, "
                        "modified softmax, A-Softmax), family (softmax, A-Softmax, "
                        "AM-Softmax, ArcFace), all, or method keys separated by commas "
                        "(softmax, modified, asoftmax, amsoftmax, arcface)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args):
    from ..demo import run_demo, select_methods

    try:
        run_demo(out_dir=args.out, dim=args.dim, iters=args.iters, gpu=args.gpu,
                 seed=args.seed, quiet=args.quiet, threads=args.threads or None,
                 mnist=args.mnist, methods=select_methods(args.methods))
    except RuntimeError as exc:  # missing extras: a message, not a traceback
        raise ValueError(str(exc)) from None
    return 0
