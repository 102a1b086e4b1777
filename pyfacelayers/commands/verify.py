"""``pyfacelayers verify``: the LFW 10-fold verification protocol.

Reads an LFW pairs file (header "10 300", then per fold 300 matched "name n1 n2" and
300 mismatched "name1 n1 name2 n2" lines) and the features written by extract, and
runs SphereFace's evaluation.m protocol: per fold, subtract the mean feature of the
other nine folds, cosine similarity, the threshold of best accuracy on those folds
(grid -1..1 in steps of 1/10000, ties -> their mean), accuracy on the held-out fold.
Prints the per-fold table and the mean."""

from ..verification import features as feats
from ..verification import lfw_protocol, pairs as pairs_mod


def register(subparsers):
    p = subparsers.add_parser("verify", help="LFW 10-fold verification accuracy of features",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--pairs", required=True, help="LFW pairs.txt (standard format)")
    p.add_argument("--features", required=True, nargs="+", metavar="FILE",
                   help="feature file(s) from extract (.npz, or .npy with its .names.txt "
                        "or --list); several files are stacked")
    p.add_argument("--list", help="image list giving the names of .npy feature rows")
    p.add_argument("--pattern", default=pairs_mod.DEFAULT_PATTERN,
                   help="key of image n of a person, matched against each feature's last two "
                        "path components without extension (default %(default)s)")
    p.add_argument("--dim", type=int, help="expected feature width (checked)")
    p.add_argument("--steps", type=int, default=lfw_protocol.GRID_STEPS,
                   help="threshold grid i/STEPS for i in -STEPS..STEPS (default %(default)s)")
    p.add_argument("--no-mean", action="store_true",
                   help="do not subtract the training folds' mean feature")
    p.add_argument("--markdown", action="store_true",
                   help="also print the table in the SphereFace README's layout")
    p.add_argument("--roc", metavar="PNG", help="write the ROC curve here (needs matplotlib)")
    p.set_defaults(func=run)


def run(args, out=print):
    if args.steps <= 0:
        raise ValueError("--steps must be > 0, got %d" % args.steps)
    pairs = pairs_mod.read_pairs(args.pairs, args.pattern)
    features = feats.load_features(args.features, args.list, args.dim)
    result = lfw_protocol.verify(pairs, features, lfw_protocol.threshold_grid(args.steps),
                                 subtract_mean=not args.no_mean)
    out("%d pairs in %d folds, %d-wide features" % (len(pairs), pairs.folds, features.dim))
    out(result.table())
    if args.markdown:
        out("")
        out(result.markdown())
    if args.roc:
        from ..verification.roc import save_roc_png
        area = save_roc_png(args.roc, result.scores, result.same)
        out("ROC (held-out scores, AUC %.4f) written to %s" % (area, args.roc))
    return 0
