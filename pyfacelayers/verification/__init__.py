"""Face verification: deep features of aligned faces and the LFW 10-fold protocol.

``features``: run a deploy net over an image list (SphereFace preprocessing, optional
mirror features), save/load feature files. ``pairs``: read LFW's pairs.txt.
``lfw_protocol``: the 10-fold protocol of SphereFace's evaluation.m. ``roc``: ROC
curves and an optional PNG figure.
"""

from .features import (FeatureExtractor, FeatureSet, extract_features, feature_key,
                       load_features, preprocess, read_image_list, save_features)
from .lfw_protocol import (VerificationResult, accuracy, best_threshold, evaluate,
                           pair_scores, threshold_grid, verify)
from .pairs import Pair, Pairs, image_key, image_keys, parse_pairs, read_pairs
from .roc import auc, roc_curve, save_roc_png

__all__ = ["FeatureExtractor", "FeatureSet", "extract_features", "feature_key",
           "load_features", "preprocess", "read_image_list", "save_features",
           "VerificationResult", "accuracy", "best_threshold", "evaluate", "pair_scores",
           "threshold_grid", "verify", "Pair", "Pairs", "image_key", "image_keys", "parse_pairs",
           "read_pairs", "auc", "roc_curve", "save_roc_png"]
