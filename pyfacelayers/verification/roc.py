"""ROC curve of verification scores, and an optional PNG figure (needs matplotlib)."""

import numpy as np


def roc_curve(scores, same):
    """(false positive rate, true positive rate, thresholds), thresholds descending.

    A pair is accepted when its score is >= the threshold; the curve starts at (0, 0)
    (threshold +inf) and ends at (1, 1). Tied scores give one point.
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
    n_pos, n_neg = np.count_nonzero(same), np.count_nonzero(~same)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an ROC curve needs matched and mismatched pairs (got %d and %d)"
                         % (n_pos, n_neg))
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    return (np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, s[last_of_tie]])


def auc(fpr, tpr):
    """Area under a curve given by points sorted by fpr (trapezoids)."""
    fpr, tpr = np.asarray(fpr, np.float64), np.asarray(tpr, np.float64)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def save_roc_png(path, scores, same, title="LFW verification ROC", label=None):
    """Draw the ROC of (scores, same) into a PNG file; returns the AUC."""
    try:
        # A Figure on the Agg canvas: no display and no change to pyplot's backend.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the ROC figure needs matplotlib (pip install matplotlib); "
                          "the accuracies do not") from None
    fpr, tpr, _ = roc_curve(scores, same)
    area = auc(fpr, tpr)
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, lw=1.5, label="%s (AUC %.4f)" % (label or "ROC", area))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("false positive rate (mismatched pairs accepted)")
    ax.set_ylabel("true positive rate (matched pairs accepted)")
    ax.set_title(title)
    ax.grid(True, ls=":", lw=0.5)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(str(path), format="png")
    return area
