"""The LFW 10-fold verification protocol, as SphereFace's ``test/code/evaluation.m``.

For each fold ``k`` (held out) and the other folds (training):

1. ``mu`` = the mean of the training folds' features, left and right images of every
   pair counted (an image in several pairs counts each time);
2. every feature minus ``mu``, then scaled to unit length;
3. score of a pair = cosine similarity = dot product of its two unit features;
4. threshold = the point of the grid ``-1, -0.9999, ..., 1`` (``i / 10000`` for ``i`` in
   ``-10000..10000``) with the best accuracy on the training folds; where several grid
   points tie, their mean (so a plateau gives its midpoint), as the original's
   getThreshold;
5. accuracy on fold ``k``: a matched pair is right when ``score > threshold``, a
   mismatched pair when ``score < threshold`` (a score equal to the threshold is wrong
   either way, as the original's getAccuracy).

The reported figure is the mean of the ten fold accuracies.
"""

from collections import namedtuple

import numpy as np

GRID_STEPS = 10000

FoldResult = namedtuple("FoldResult", "fold accuracy threshold train_accuracy")


def threshold_grid(steps=GRID_STEPS):
    """``i / steps`` for ``i`` in ``-steps..steps`` (the original's thresholds)."""
    return np.arange(-steps, steps + 1, dtype=np.float64) / steps


def accuracy(scores, same, threshold):
    """Fraction right at ``threshold``: matched pairs above it, mismatched below it."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    if scores.size == 0:
        raise ValueError("no pairs to score")
    right = np.count_nonzero(scores[same] > threshold) + np.count_nonzero(scores[~same] < threshold)
    return right / scores.size


def grid_accuracies(scores, same, grid):
    """Accuracy at every threshold of ``grid`` (counted by sorting, not a loop)."""
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    matched, mismatched = np.sort(scores[same]), np.sort(scores[~same])
    above = matched.size - np.searchsorted(matched, grid, side="right")  # matched > t
    below = np.searchsorted(mismatched, grid, side="left")               # mismatched < t
    return (above + below) / scores.size


def best_threshold(scores, same, grid=None):
    """The mean of the grid thresholds of best accuracy on (scores, same)."""
    grid = threshold_grid() if grid is None else np.asarray(grid, np.float64)
    acc = grid_accuracies(scores, same, grid)
    return float(np.mean(grid[acc == acc.max()]))


def pair_scores(left, right, train):
    """Cosine scores of all pairs after subtracting the mean of the ``train`` pairs'
    left and right features (``train`` None: no subtraction)."""
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    if train is not None:
        mu = np.concatenate([left[train], right[train]]).mean(axis=0)
        left, right = left - mu, right - mu
    norms_l = np.linalg.norm(left, axis=1)
    norms_r = np.linalg.norm(right, axis=1)
    zero = np.flatnonzero((norms_l == 0) | (norms_r == 0))
    if zero.size:
        raise ValueError("pair %d: a feature equals the training mean (zero length after "
                         "subtracting it); its cosine is undefined" % (zero[0] + 1))
    return np.einsum("ij,ij->i", left, right) / (norms_l * norms_r)


class VerificationResult:
    """Per-fold results; ``scores`` holds each pair's score as seen in its own
    held-out fold (the mean of the other folds subtracted), for ROC curves."""

    def __init__(self, folds, scores, same):
        self.folds, self.scores, self.same = folds, scores, same

    @property
    def accuracies(self):
        return np.array([f.accuracy for f in self.folds])

    @property
    def mean_accuracy(self):
        return float(self.accuracies.mean())

    @property
    def std_accuracy(self):
        return float(self.accuracies.std())

    def table(self):
        """The per-fold table as evaluation.m prints it, plus each fold's threshold."""
        lines = ["fold\tACC\tthreshold", "-" * 25]
        lines += ["%d\t%2.2f%%\t%.5f" % (f.fold, f.accuracy * 100, f.threshold)
                  for f in self.folds]
        lines += ["-" * 25, "AVE\t%2.2f%%" % (self.mean_accuracy * 100)]
        return "\n".join(lines)

    def markdown(self):
        """The table in the layout of the SphereFace README (one row of accuracies)."""
        heads = [str(f.fold) for f in self.folds] + ["AVE"]
        cells = ["%2.2f%%" % (f.accuracy * 100) for f in self.folds]
        cells.append("%2.2f%%" % (self.mean_accuracy * 100))
        return "\n".join(["fold|" + "|".join(heads),
                          ":---:|" + "|".join([":---:"] * len(heads)),
                          "ACC|" + "|".join(cells)])


def evaluate(left, right, same, folds, grid=None, subtract_mean=True):
    """The k-fold protocol on per-pair features; ``folds`` gives each pair's fold id
    (0-based). Returns a :class:`VerificationResult`."""
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    same, folds = np.asarray(same, bool), np.asarray(folds)
    if left.ndim != 2 or left.shape != right.shape:
        raise ValueError("left and right features must be (pairs, width) arrays of one "
                         "shape, got %s and %s" % (left.shape, right.shape))
    if not (len(same) == len(folds) == len(left)):
        raise ValueError("%d pairs of features but %d flags and %d fold ids"
                         % (len(left), len(same), len(folds)))
    if not (np.isfinite(left).all() and np.isfinite(right).all()):
        raise ValueError("the features hold NaN or infinite values")
    fold_ids = np.unique(folds)
    if fold_ids.size < 2:
        raise ValueError("the protocol needs at least 2 folds, got %d" % fold_ids.size)
    grid = threshold_grid() if grid is None else np.asarray(grid, np.float64)
    results, held_out = [], np.zeros(len(left))
    for k in fold_ids:
        test = folds == k
        train = ~test
        scores = pair_scores(left, right, train if subtract_mean else None)
        threshold = best_threshold(scores[train], same[train], grid)
        results.append(FoldResult(int(k) + 1, accuracy(scores[test], same[test], threshold),
                                  threshold, accuracy(scores[train], same[train], threshold)))
        held_out[test] = scores[test]
    return VerificationResult(results, held_out, same)


def verify(pairs, features, grid=None, subtract_mean=True):
    """Run the protocol for a :class:`~.pairs.Pairs` list on a :class:`~.features.FeatureSet`."""
    source = str(getattr(pairs, "path", None) or "pairs")

    def row(pair, key):
        return features.features[features.row(key, "%s line %d" % (source, pair.line))]
    left = np.stack([row(p, p.left) for p in pairs])
    right = np.stack([row(p, p.right) for p in pairs])
    return evaluate(left, right, [p.same for p in pairs], [p.fold for p in pairs], grid,
                    subtract_mean)
