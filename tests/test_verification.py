"""Feature extraction and the LFW 10-fold protocol (pyfacelayers.verification, the
``extract`` and ``verify`` commands).

References are independent of the code under test: accuracies and thresholds worked
out by hand for constructed scores, a loop-by-loop version of the protocol, a plain
numpy forward of a one-layer net, and the B4 ImageData batch of the original Caffe.
"""

import importlib.util
import io
import os
import sys

import numpy as np
import pytest

from conftest import shared_path
from pyfacelayers import cli
from pyfacelayers.errors import FormatError
from pyfacelayers.net import Net
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.verification import (FeatureExtractor, FeatureSet, Pair, accuracy, auc,
                                       best_threshold, evaluate, extract_features,
                                       image_keys, load_features, parse_pairs,
                                       read_pairs, roc_curve,
                                       save_features, threshold_grid, verify)
from pyfacelayers.verification.features import Progress, feature_key, read_image_list

try:
    from PIL import Image as PIL
except ImportError:
    PIL = None
needs_pillow = pytest.mark.skipif(PIL is None, reason="Pillow is not installed")
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


# -- pairs.txt -----------------------------------------------------------------------
HAND_PAIRS = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh  1   Giancarlo_Fisichella  12

Abdullah_Gul\t13\t14
Adam_Sandler 2 3
Abdul_Rahman 1 Portia_de_Rossi 1
Abdullah_al-Attiyah\t1\tDion_Glover\t1
"""


def test_pairs_parser_on_a_hand_made_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(HAND_PAIRS)
    pairs = read_pairs(str(path))
    assert (pairs.folds, pairs.per_set, len(pairs)) == (2, 2, 8)
    assert pairs[0] == Pair("Abel_Pacheco/Abel_Pacheco_0001", "Abel_Pacheco/Abel_Pacheco_0004",
                            True, 0, 2)
    assert pairs[3] == Pair("Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001",
                            "Giancarlo_Fisichella/Giancarlo_Fisichella_0012", False, 0, 5)
    # the blank line is skipped; line numbers stay those of the file
    assert pairs[4] == Pair("Abdullah_Gul/Abdullah_Gul_0013", "Abdullah_Gul/Abdullah_Gul_0014",
                            True, 1, 7)
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4
    assert pairs[7].right == "Dion_Glover/Dion_Glover_0001" and pairs[7].line == 10
    one_fold = parse_pairs("1\nA 1 2\nB 1 C 2\n")  # pairsDevTrain-style header
    assert (one_fold.folds, one_fold.per_set, len(one_fold)) == (1, 1, 2)
    assert image_keys(one_fold) == ["A/A_0001", "A/A_0002", "B/B_0001", "C/C_0002"]


@pytest.mark.parametrize("text, line, fragment", [
    ("", None, "empty pairs file"),
    ("ten 300\n", 1, "number of folds"),
    ("1 2 3\n", 1, "header must be"),
    ("1 1\nA 1 B 2\nB 1 C 2\n", 2, "matched pair"),
    ("1 1\nA 1 2\nB 1 2\n", 3, "mismatched pair"),
    ("1 1\nA 1 x\nB 1 C 2\n", 2, "image number"),
    ("1 1\nA 0 1\nB 1 C 2\n", 2, "image number"),
    ("1 2\nA 1 2\nA 1 3\nB 1 C 2\n", 4, "ends after 3"),
    ("1 1\nA 1 2\nB 1 C 2\nD 1 2\n", 4, "extra line"),
])
def test_malformed_pairs_files_name_the_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad_pairs.txt"
    path.write_text(text)
    with pytest.raises(FormatError) as err:
        read_pairs(str(path))
    where = str(path) + (":%d:" % line if line else ":")
    assert str(err.value).startswith(where) and fragment in str(err.value), str(err.value)


def test_missing_pairs_file():
    with pytest.raises(FormatError, match="no_such_pairs.txt: cannot read"):
        read_pairs("no_such_pairs.txt")


# -- the protocol --------------------------------------------------------------------
def test_grid_and_strict_comparisons():
    grid = threshold_grid()
    assert grid.size == 20001 and grid[0] == -1 and grid[-1] == 1 and grid[10000] == 0
    assert grid[15000] == 0.5 and np.all(np.diff(grid) > 0)
    # a score equal to the threshold is wrong for matched and mismatched pairs alike
    assert accuracy([0.5, 0.5], [True, False], 0.5) == 0
    assert accuracy([0.6, 0.4], [True, False], 0.5) == 1


def test_threshold_ties_give_the_mean_of_the_best_grid_points():
    # one plateau (-0.5, 0.5): its grid points average to 0
    assert best_threshold([0.5, -0.5], [True, False]) == pytest.approx(0, abs=1e-12)
    # two separate best intervals (by hand): (-0.3, 0.1) and (0.5, 0.9), 3 of 4 right;
    # on the grid of step 0.1 that is {-0.2, -0.1, 0.0, 0.6, 0.7, 0.8}, mean 0.3
    scores, same = [0.9, 0.1, 0.5, -0.3], [True, True, False, False]
    assert best_threshold(scores, same, threshold_grid(10)) == pytest.approx(0.3, abs=1e-12)


def pair_with_cosine(c, rng, dim):
    """Unit vectors (u, w) with cos(u, w) = c, in random directions."""
    q, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    u, v = q[:, 0], q[:, 1]
    return u, c * u + np.sqrt(1 - c * c) * v


def constructed_folds(wrong_matched, wrong_mismatched, per_set=300, dim=16, seed=0):
    """Pairs whose cosine scores are set by hand: matched 0.80005 (or 0.10005 for the
    ``wrong_matched[f]`` hard ones of fold f), mismatched 0.00005 (or 0.50005 for
    ``wrong_mismatched[f]``). Every pair comes with its negation, so each fold's mean
    feature is zero and the mean subtraction leaves the scores as built."""
    rng = np.random.default_rng(seed)
    left, right, same, folds = [], [], [], []
    for f in range(len(wrong_matched)):
        for is_same, hard, easy_c, hard_c in ((True, wrong_matched[f], 0.80005, 0.10005),
                                              (False, wrong_mismatched[f], 0.00005, 0.50005)):
            for i in range(per_set // 2):
                u, w = pair_with_cosine(hard_c if i < hard // 2 else easy_c, rng, dim)
                for sign in (1, -1):
                    left.append(sign * u)
                    right.append(sign * w)
                    same.append(is_same)
                    folds.append(f)
    return np.array(left), np.array(right), np.array(same), np.array(folds)


def test_constructed_scores_give_the_expected_accuracy_and_thresholds():
    # fold f: 2f matched pairs below every mismatched pair's score, 20 mismatched pairs
    # above the threshold region. On nine training folds at most 90 matched but 180
    # mismatched pairs are wrong in (0.10005, 0.50005), so the best thresholds are
    # (0.50005, 0.80005), grid points 0.5001..0.8000, mean 0.65005; fold f then has
    # exactly its 2f hard matched pairs wrong.
    wrong = [2 * f for f in range(10)]
    left, right, same, folds = constructed_folds(wrong, [20] * 10)
    result = evaluate(left, right, same, folds)
    expected = [1 - w / 600 for w in wrong]
    np.testing.assert_allclose(result.accuracies, expected, rtol=0, atol=1e-12)
    assert result.mean_accuracy == pytest.approx(1 - 9 / 600, abs=1e-12)
    for fold in result.folds:
        assert fold.threshold == pytest.approx(0.65005, abs=1e-9)
    assert "AVE\t98.50%" in result.table()
    assert result.table().splitlines()[2] == "1\t100.00%\t0.65005"
    md = result.markdown().splitlines()
    assert md[0] == "fold|1|2|3|4|5|6|7|8|9|10|AVE"
    assert md[2].startswith("ACC|100.00%|99.67%|") and md[2].endswith("|98.50%")


def test_separable_identities_give_full_accuracy():
    # 40 identities on orthogonal directions, images = direction + small noise:
    # every matched cosine is near 1, every mismatched one near 0.
    rng = np.random.default_rng(1)
    names, rows = [], []
    for person in range(40):
        for img in range(1, 6):
            names.append("P%02d/P%02d_%04d.jpg" % (person, person, img))
            rows.append(np.eye(64)[person] + rng.normal(scale=0.05, size=64))
    features = FeatureSet(names, np.array(rows))
    lines = ["10 30"]
    for _ in range(10):
        for _ in range(30):
            p, (a, b) = rng.integers(40), rng.choice(5, 2, replace=False) + 1
            lines.append("P%02d %d %d" % (p, a, b))
        for _ in range(30):
            p, q = rng.choice(40, 2, replace=False)
            lines.append("P%02d %d P%02d %d" % (p, rng.integers(1, 6), q, rng.integers(1, 6)))
    result = verify(parse_pairs("\n".join(lines)), features)
    assert result.accuracies.tolist() == [1.0] * 10


def reference_protocol(left, right, same, folds, steps):
    """The protocol written out with loops, as a second reading of evaluation.m."""
    grid = [i / steps for i in range(-steps, steps + 1)]
    accs, thresholds = [], []
    for k in sorted(set(folds.tolist())):
        train = [i for i in range(len(same)) if folds[i] != k]
        test = [i for i in range(len(same)) if folds[i] == k]
        mu = sum(left[i] + right[i] for i in train) / (2 * len(train))
        scores = []
        for a, b in zip(left, right):
            a, b = a - mu, b - mu
            scores.append(float(a @ b) / (np.sqrt(a @ a) * np.sqrt(b @ b)))

        def acc(idx, t):
            return sum((scores[i] > t) if same[i] else (scores[i] < t) for i in idx) / len(idx)
        train_acc = [acc(train, t) for t in grid]
        best = max(train_acc)
        t = sum(g for g, a in zip(grid, train_acc) if a == best) / train_acc.count(best)
        thresholds.append(t)
        accs.append(acc(test, t))
    return accs, thresholds


def test_protocol_matches_a_loop_reference():
    rng = np.random.default_rng(2)
    n = 4 * 12
    left = rng.normal(size=(n, 6)) + 0.5
    same = np.tile(np.repeat([True, False], 6), 4)
    right = np.where(same[:, None], left + rng.normal(scale=0.9, size=(n, 6)),
                     rng.normal(size=(n, 6)) + 0.5)
    folds = np.repeat(np.arange(4), 12)
    result = evaluate(left, right, same, folds, threshold_grid(200))
    accs, thresholds = reference_protocol(left, right, same, folds, 200)
    np.testing.assert_allclose(result.accuracies, accs, rtol=0, atol=1e-12)
    np.testing.assert_allclose([f.threshold for f in result.folds], thresholds, atol=1e-12)
    assert 0.5 < result.mean_accuracy < 1  # a case where thresholds matter


def test_thresholds_come_only_from_the_training_folds():
    rng = np.random.default_rng(3)
    left, right, same, folds = constructed_folds([4] * 10, [20] * 10, per_set=40, seed=3)
    left = left + rng.normal(scale=0.2, size=left.shape)  # not all ties any more
    before = evaluate(left, right, same, folds)
    # Rewrite held-out fold 4 completely: its matched pairs become dissimilar.
    test = folds == 3
    left2, right2 = left.copy(), right.copy()
    left2[test] = rng.normal(size=left2[test].shape) * 5
    right2[test & same] = -left2[test & same]
    after = evaluate(left2, right2, same, folds)
    assert after.folds[3].threshold == before.folds[3].threshold
    assert after.folds[3].train_accuracy == before.folds[3].train_accuracy
    assert after.folds[3].accuracy < before.folds[3].accuracy - 0.3
    # ... while every other fold sees fold 4 in its training set
    assert any(a.threshold != b.threshold for a, b in zip(after.folds, before.folds))


def test_protocol_input_errors():
    ok = np.ones((4, 3)) + np.arange(12).reshape(4, 3)
    same, folds = [True, False] * 2, [0, 0, 1, 1]
    with pytest.raises(ValueError, match="same shape|one shape"):
        evaluate(ok, ok[:, :2], same, folds)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.where(ok > 5, np.nan, ok), ok, same, folds)
    with pytest.raises(ValueError, match="at least 2 folds"):
        evaluate(ok, ok, same, [0] * 4)
    with pytest.raises(ValueError, match="4 pairs of features but 3 flags"):
        evaluate(ok, ok, same[:3], folds)


# -- ROC -----------------------------------------------------------------------------
def test_roc_curve_by_hand(tmp_path, monkeypatch):
    fpr, tpr, thr = roc_curve([0.9, 0.8, 0.7, 0.1, 0.7], [True, False, True, False, False])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thr[0] == np.inf and thr[1:].tolist() == [0.9, 0.8, 0.7, 0.1]
    # AUC = P(matched score > mismatched score) + half the ties: (3 + 1.5) / 6
    assert auc(fpr, tpr) == pytest.approx(0.75, abs=1e-12)
    with pytest.raises(ValueError, match="matched and mismatched"):
        roc_curve([0.1, 0.2], [True, True])
    from pyfacelayers.verification import roc
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    with pytest.raises(ImportError, match="pip install matplotlib"):
        roc.save_roc_png(str(tmp_path / "roc.png"), [0.9, 0.1], [True, False])


# -- feature files -------------------------------------------------------------------
def test_feature_keys_and_files(tmp_path):
    assert feature_key("lfw-112X96/Abel_Pacheco/Abel_Pacheco_0001.jpg") == \
        "Abel_Pacheco/Abel_Pacheco_0001"
    assert feature_key("C:\\lfw\\A_B\\A_B_0002.png") == "A_B/A_B_0002"
    names = ["x/A/A_0001.jpg", "x/A/A_0002.jpg", "x/B/B_0001.jpg"]
    feats = np.arange(6, dtype=np.float32).reshape(3, 2)
    save_features(str(tmp_path / "f.npz"), names, feats)
    save_features(str(tmp_path / "g.npy"), names, feats)
    assert (tmp_path / "g.names.txt").read_text().splitlines() == names
    for path in ("f.npz", "g.npy"):
        fs = load_features(str(tmp_path / path))
        assert fs.names == names and fs.dim == 2
        np.testing.assert_array_equal(fs.features[fs.row("B/B_0001")], [4, 5])
    (tmp_path / "list.txt").write_text("p/A/A_0001.png 0\np/A/A_0002.png 0\np/C d/C_0001.png\n")
    assert read_image_list(str(tmp_path / "list.txt"))[2] == ("p/C d/C_0001.png", 3)
    fs = load_features(str(tmp_path / "g.npy"), list_path=str(tmp_path / "list.txt"))
    assert fs.row("C d/C_0001") == 2


def test_feature_file_errors(tmp_path):
    names = ["A/A_0001.jpg", "A/A_0002.jpg"]
    save_features(str(tmp_path / "a.npz"), names, np.ones((2, 4)))
    save_features(str(tmp_path / "b.npz"), ["B/B_0001.jpg"], np.ones((1, 3)))
    with pytest.raises(FormatError, match="b.npz: features are 3 wide but .*a.npz has 4-wide"):
        load_features([str(tmp_path / "a.npz"), str(tmp_path / "b.npz")])
    with pytest.raises(FormatError, match="a.npz: features are 4 wide; expected 512"):
        load_features(str(tmp_path / "a.npz"), dim=512)
    np.save(str(tmp_path / "c.npy"), np.ones((2, 4)))
    with pytest.raises(FileNotFoundError, match="c.names.txt"):
        load_features(str(tmp_path / "c.npy"))
    (tmp_path / "c.names.txt").write_text("A/A_0001.jpg\n")
    with pytest.raises(FormatError, match="2 feature rows but 1 names"):
        load_features(str(tmp_path / "c.npy"))
    np.save(str(tmp_path / "d.npy"), np.ones(4))
    (tmp_path / "d.names.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(FormatError, match="2-D"):
        load_features(str(tmp_path / "d.npy"))
    np.savez(str(tmp_path / "e.npz"), features=np.ones((2, 2)))
    with pytest.raises(FormatError, match="missing names"):
        load_features(str(tmp_path / "e.npz"))
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(FormatError, match="junk.npy: not a .npy/.npz"):
        load_features(str(tmp_path / "junk.npy"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_features(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="must end in .npy or .npz"):
        save_features(str(tmp_path / "f.txt"), names, np.ones((2, 4)))
    # a pair naming an image without a feature; an ambiguous name
    pairs = parse_pairs("2 1\nA 1 2\nA 1 Z 1\nA 1 2\nA 2 B 1\n", path="p.txt")
    fs = load_features(str(tmp_path / "a.npz"))
    with pytest.raises(ValueError, match="p.txt line 3 names image Z/Z_0001, but no feature"):
        verify(pairs, fs)
    dup = FeatureSet(["x/A/A_0001.jpg", "y/A/A_0001.png"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="matches several features"):
        dup.row("A/A_0001")


def test_progress_lines():
    out = io.StringIO()
    progress = Progress(50, stream=out)
    for done in range(5, 51, 5):
        progress.update(done)
    assert out.getvalue().splitlines() == ["%d/50 images (%d%%)" % (d, 2 * d)
                                           for d in range(5, 51, 5)]
    quiet = io.StringIO()
    Progress(50, stream=quiet, enabled=False).update(50)
    assert quiet.getvalue() == ""


# -- extraction ----------------------------------------------------------------------
FLATTEN_NET = """name: "flat"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: %d dim: %d } } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
"""

FC_NET = """name: "tiny_face"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 20
input_dim: 16
layer { name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
        inner_product_param { num_output: 24
          weight_filler { type: "gaussian" std: 0.02 } bias_filler { type: "gaussian" std: 0.1 } } }
"""


def write_net(tmp_path, text, name="deploy.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@needs_pillow
def test_extraction_preprocessing_matches_caffe_b4():
    # data[n,c,y,x] = (pixel[y,x,2-c] - 127.5) * 0.0078125 (fixture README, section B4)
    folder = shared_path("fixtures", "caffe-ref", "B4_imagedata")
    ref = np.load(os.path.join(folder, "B4_imagedata_f32.npz"))["data"]
    net = Net(FLATTEN_NET_PARAM(112, 96), caffe_pb2.TEST)
    for mirror in ("none", "concat", "sum"):
        names, feats = extract_features(net, os.path.join(folder, "list.txt"),
                                        root=os.path.join(folder, "images") + "/",
                                        mirror=mirror, batch_size=2)
        assert names == ["img%d.png" % i for i in range(4)] + ["img4.jpg"]
        plain = ref.reshape(5, -1).astype(np.float64)
        flipped = ref[:, :, :, ::-1].reshape(5, -1).astype(np.float64)
        expected = {"none": plain, "concat": np.hstack([plain, flipped]),
                    "sum": plain + flipped}[mirror]
        assert feats.dtype == np.float32 and feats.shape == expected.shape
        np.testing.assert_array_equal(feats[:4], expected[:4])  # the PNGs: exact
        levels = np.abs(feats[4] - expected[4]) / 0.0078125
        # the JPEG: decoders may differ by a level (two levels for a sum of two images)
        assert levels.max() <= (2.0 if mirror == "sum" else 1.0) + 1e-6


def FLATTEN_NET_PARAM(h, w):
    from google.protobuf import text_format
    return text_format.Parse(FLATTEN_NET % (h, w), caffe_pb2.NetParameter())


PEOPLE = ["Ann_Lee", "Bo_Chan", "Cy_Dorn", "Di_Eyre", "Ed_Finn", "Flo_Gray", "Gus_Hale",
          "Hal_Ives", "Ida_Jung", "Jo_Kerr"]
IMAGES_PER_PERSON = 4


def make_face_set(tmp_path, size=(20, 16)):
    """Face-like PNGs: each person a smooth random pattern, each image that pattern
    plus a little noise and a brightness change. Returns the list file (paths relative
    to tmp_path/faces/, with labels)."""
    rng = np.random.default_rng(7)
    root = tmp_path / "faces"
    lines = []
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    for label, person in enumerate(PEOPLE):
        (root / person).mkdir(parents=True)
        freq = rng.uniform(0.2, 0.8, size=(3, 2))
        phase = rng.uniform(0, 6.3, size=3)
        base = np.stack([np.sin(freq[c, 0] * ys + freq[c, 1] * xs + phase[c]) for c in range(3)],
                        axis=-1) * 100 + 128
        for n in range(1, IMAGES_PER_PERSON + 1):
            img = base + rng.normal(scale=6, size=base.shape) + rng.uniform(-10, 10)
            name = "%s/%s_%04d.png" % (person, person, n)
            PIL.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(root / name)
            lines.append("%s %d" % (name, label))
    (tmp_path / "images.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "images.txt"), str(root) + "/"


def make_pairs_file(tmp_path, folds=10, per_set=3):
    """A pairs.txt in the standard format over PEOPLE (tab separated)."""
    rng = np.random.default_rng(8)
    lines = ["%d\t%d" % (folds, per_set)]
    for _ in range(folds):
        for _ in range(per_set):
            person = PEOPLE[rng.integers(len(PEOPLE))]
            a, b = rng.choice(IMAGES_PER_PERSON, 2, replace=False) + 1
            lines.append("%s\t%d\t%d" % (person, a, b))
        for _ in range(per_set):
            p, q = rng.choice(len(PEOPLE), 2, replace=False)
            lines.append("%s\t%d\t%s\t%d" % (PEOPLE[p], rng.integers(1, IMAGES_PER_PERSON + 1),
                                             PEOPLE[q], rng.integers(1, IMAGES_PER_PERSON + 1)))
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "pairs.txt")


def make_weights(tmp_path, model):
    net = Net(model, caffe_pb2.TEST, seed=5)
    path = str(tmp_path / "tiny.caffemodel")
    net.save(path)
    return path, (np.array(net.params["fc5"][0].data, np.float64),
                  np.array(net.params["fc5"][1].data, np.float64))


@needs_pillow
def test_extract_and_verify_end_to_end(tmp_path, capsys):
    image_list, root = make_face_set(tmp_path)
    pairs = make_pairs_file(tmp_path)
    model = write_net(tmp_path, FC_NET)
    weights, (w, b) = make_weights(tmp_path, model)
    out = str(tmp_path / "features.npz")
    rc = cli.main(["extract", "--model", model, "--weights", weights, "--list", image_list,
                   "--root", root, "--out", out, "--mirror", "concat", "--batch-size", "7"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "40/40 images (100%)" in err and "wrote 40 x 48 features" in err
    data = np.load(out)
    names, feats = list(data["names"]), data["features"]
    assert names[0] == "Ann_Lee/Ann_Lee_0001.png" and feats.shape == (40, 48)
    # an independent forward: fc5 = W x + b on the preprocessed BGR pixels
    for row in (0, 13, 39):
        rgb = np.asarray(PIL.open(root + names[row]).convert("RGB"), np.float64)
        x = ((rgb[:, :, ::-1] - 127.5) / 128).transpose(2, 0, 1)
        expected = np.concatenate([w @ x.ravel() + b, w @ x[:, :, ::-1].ravel() + b])
        np.testing.assert_allclose(feats[row], expected, rtol=0, atol=1e-5)

    roc = str(tmp_path / "roc.png")
    draw = ["--roc", roc] if HAVE_MATPLOTLIB else []  # the figure is optional
    rc = cli.main(["verify", "--pairs", pairs, "--features", out, "--markdown"] + draw)
    assert rc == 0
    text = capsys.readouterr().out
    assert "60 pairs in 10 folds, 48-wide features" in text
    assert "AVE\t100.00%" in text and "ACC|100.00%|" in text
    assert len([l for l in text.splitlines() if l[:1].isdigit() and "\t" in l]) == 10
    if HAVE_MATPLOTLIB:
        assert "ROC (held-out scores, AUC 1.0000) written to" in text
        with open(roc, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    # the same through an .npy with its sidecar, and through --list
    out_npy = str(tmp_path / "plain.npy")
    assert cli.main(["extract", "--model", model, "--weights", weights, "--list", image_list,
                     "--root", root, "--out", out_npy, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert np.load(out_npy).shape == (40, 24)
    os.remove(str(tmp_path / "plain.names.txt"))
    assert cli.main(["verify", "--pairs", pairs, "--features", out_npy, "--list", image_list,
                     "--dim", "24"]) == 0
    assert "AVE\t100.00%" in capsys.readouterr().out


@needs_pillow
def test_extract_errors(tmp_path, capsys):
    image_list, root = make_face_set(tmp_path)
    model = write_net(tmp_path, FC_NET)
    weights, _ = make_weights(tmp_path, model)
    base = ["extract", "--model", model, "--weights", weights, "--root", root, "--quiet"]
    out = str(tmp_path / "f.npz")

    # an image of another size: refused, unless --resize
    PIL.fromarray(np.zeros((24, 18, 3), np.uint8)).save(root + "Ann_Lee/Ann_Lee_0002.png")
    assert cli.main(base + ["--list", image_list, "--out", out]) == 1
    err = capsys.readouterr().err
    assert "Ann_Lee_0002.png (line 2 of" in err and "24x18" in err and "--resize" in err
    assert not os.path.exists(out)
    assert cli.main(base + ["--list", image_list, "--out", out, "--resize"]) == 0
    assert np.load(out)["features"].shape == (40, 24)

    # a listed image that does not exist
    missing = tmp_path / "missing.txt"
    missing.write_text("Ann_Lee/Ann_Lee_0001.png 0\nNo_One/No_One_0001.png 1\n")
    assert cli.main(base + ["--list", str(missing), "--out", out]) == 1
    assert "No_One_0001.png (line 2 of" in capsys.readouterr().err

    assert cli.main(base + ["--list", image_list, "--out", str(tmp_path / "f.txt")]) == 1
    assert "must end in .npz or .npy" in capsys.readouterr().err

    # a net with two outputs needs --blob
    two = write_net(tmp_path, FC_NET + 'layer { name: "fc6" type: "InnerProduct" bottom: "data" '
                    'top: "fc6" inner_product_param { num_output: 2 } }\n', "two.prototxt")
    net = Net(two, caffe_pb2.TEST)
    with pytest.raises(ValueError, match="2 outputs \\(fc5, fc6\\); choose the feature blob"):
        FeatureExtractor(net)
    with pytest.raises(ValueError, match="no blob 'fc7'"):
        FeatureExtractor(net, blob="fc7")
    assert FeatureExtractor(net, blob="fc6").blob == "fc6"
    with pytest.raises(ValueError, match="mirror must be one of"):
        FeatureExtractor(net, blob="fc6", mirror="flip")


@needs_pillow
def test_verify_errors(tmp_path, capsys):
    pairs = make_pairs_file(tmp_path)
    names = ["%s/%s_%04d.png" % (p, p, n) for p in PEOPLE for n in range(1, 5)]
    rng = np.random.default_rng(9)
    good = str(tmp_path / "good.npz")
    save_features(good, names, rng.normal(size=(40, 8)))
    # a pair naming an image that has no feature
    partial = str(tmp_path / "partial.npz")
    save_features(partial, names[:-4], rng.normal(size=(36, 8)))
    assert cli.main(["verify", "--pairs", pairs, "--features", partial]) == 1
    err = capsys.readouterr().err
    assert "pyfacelayers verify: error: %s line" % pairs in err
    assert "Jo_Kerr/Jo_Kerr_000" in err and "no feature has that name" in err
    # a second feature file of another width
    other = str(tmp_path / "other.npz")
    save_features(other, ["Zed/Zed_0001.png"], np.ones((1, 9)))
    assert cli.main(["verify", "--pairs", pairs, "--features", good, other]) == 1
    assert "features are 9 wide but %s has 8-wide" % good in capsys.readouterr().err
    assert cli.main(["verify", "--pairs", pairs, "--features", good, "--dim", "512"]) == 1
    assert "features are 8 wide; expected 512" in capsys.readouterr().err
    # a malformed pairs file: the line is named
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text(open(pairs).read().replace("\t", " ", 3).replace("Ann_Lee", "Ann Lee"))
    lines = open(pairs).read().splitlines()
    bad.write_text("\n".join(lines[:5] + ["Ann_Lee\t1"] + lines[6:]) + "\n")
    assert cli.main(["verify", "--pairs", str(bad), "--features", good]) == 1
    assert "%s:6: pair 2 of fold 1 should be a mismatched pair" % bad in capsys.readouterr().err
    assert cli.main(["verify", "--pairs", pairs, "--features", good, "--steps", "0"]) == 1
    assert "--steps must be > 0" in capsys.readouterr().err
