"""``pyfacelayers align`` and ``pyfacelayers lfw`` on small data sets made from the
reference photographs."""

import io
import os
import shutil

import numpy as np
import pytest

from conftest import shared_path

PIL = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

from pyfacelayers import cli  # noqa: E402
from pyfacelayers.preprocess import FaceAligner, align, dataset, read_rgb  # noqa: E402
from pyfacelayers.preprocess.pipeline import encode  # noqa: E402


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


def make_dataset(root):
    """Two identities: test1 (two faces), a grey crop of it, the 250x250 LFW-like test2,
    a blank image (no face) and a corrupt file."""
    models = shared_path("models", "mtcnn")
    inputs = shared_path("fixtures", "preprocess-ref", "mtcnn", "inputs")
    (root / "Ann").mkdir(parents=True)
    (root / "Bob").mkdir()
    shutil.copy(os.path.join(models, "test1.jpg"), str(root / "Ann" / "Ann_0001.jpg"))
    grey = np.asarray(PIL.open(os.path.join(inputs, "gray_test1.png")))[60:260, 230:430]
    PIL.fromarray(np.ascontiguousarray(grey)).save(str(root / "Ann" / "Ann_0002.png"))
    shutil.copy(os.path.join(inputs, "sq250_test2.png"), str(root / "Bob" / "Bob_0001.png"))
    PIL.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(str(root / "Bob" / "Bob_0002.png"))
    (root / "Bob" / "Bob_0003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "Bob" / "notes.txt").write_text("not an image")
    return ["Ann/Ann_0001.jpg", "Ann/Ann_0002.png", "Bob/Bob_0001.png", "Bob/Bob_0002.png",
            "Bob/Bob_0003.jpg"]


def test_align_writes_images_landmarks_and_records(tmp_path, capsys, aligner):
    root, out = tmp_path / "data", tmp_path / "aligned"
    images = make_dataset(root)
    assert dataset.walk(str(root)) == images
    assert cli.main(["align", "--root", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "align: 5 images under" in err and "5/5 images (100%)" in err
    assert "skipped Bob/Bob_0003.jpg: could not decode image" in err
    assert "3 aligned, 1 without a face, 1 unreadable, 0 already done" in err
    assert sorted(os.listdir(str(out / "Ann"))) == ["Ann_0001.jpg", "Ann_0002.jpg"]
    assert sorted(os.listdir(str(out / "Bob"))) == ["Bob_0001.jpg"]
    assert (out / "no_face.txt").read_text() == "Bob/Bob_0002.png\n"
    assert (out / "unreadable.txt").read_text() == "Bob/Bob_0003.jpg\n"
    lines = (out / "landmarks.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:7] == ["# path", "x1", "y1", "x2", "y2", "score", "p1_x"]
    assert [l.split("\t")[0] for l in lines[1:]] == images[:3]
    records = dataset.parse_landmarks(str(out / "landmarks.tsv"))
    face = aligner.file(str(root / images[1])).face
    box, points = records[images[1]]
    np.testing.assert_array_equal(box, face.box)  # exact float32 round trip
    np.testing.assert_array_equal(points, face.points)
    for name in images[:3]:
        image = align(read_rgb(str(root / name)), records[name][1]).image
        written = out / dataset.output_name(name, "jpg")
        # the JPEG is Pillow's quality-75 encoding of the aligned image
        assert written.read_bytes() == encode(image, "jpg")
        decoded = np.asarray(PIL.open(str(written)))
        assert decoded.shape == image.shape  # the grey image stays grey
        assert decoded.shape[:2] == (112, 96)
        assert np.abs(decoded.astype(int) - image).mean() < 8  # lossy, 4:2:0
    quality = PIL.open(str(out / "Bob" / "Bob_0001.jpg")).quantization
    reference = PIL.open(io.BytesIO(encode(np.zeros((112, 96, 3), np.uint8), "jpg")))
    assert quality == reference.quantization  # IJG tables scaled for quality 75
    # the kept face of test1 is the right man (nearest the centre), as the fixture says
    detect = np.load(shared_path("fixtures", "preprocess-ref", "mtcnn", "test1", "detect.npz"))
    np.testing.assert_allclose(records["Ann/Ann_0001.jpg"][1], detect["facial5point"],
                               atol=1e-3)


def test_align_resumes_and_repairs(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "aligned"
    make_dataset(root)
    args = ["align", "--root", str(root), "--out", str(out), "--ext", "png"]
    assert cli.main(args) == 0
    capsys.readouterr()
    first = (out / "landmarks.tsv").read_text()
    # an interrupted run: a half-written last record and a lost image
    (out / "landmarks.tsv").write_text(first + "Bob/Bob_0009.jpg\t1.5\t2")
    os.remove(str(out / "Ann" / "Ann_0002.png"))
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "1 aligned, 0 without a face, 1 unreadable, 3 already done" in err
    assert "2/2 images (100%)" in err  # only the lost image and the unreadable one
    text = (out / "landmarks.tsv").read_text()
    assert sorted(text.splitlines()) == sorted(first.splitlines())
    assert os.path.isfile(str(out / "Ann" / "Ann_0002.png"))
    # lossless PNGs: exactly the aligned array
    aligned = np.asarray(PIL.open(str(out / "Bob" / "Bob_0001.png")))
    points = dataset.parse_landmarks(str(out / "landmarks.tsv"))["Bob/Bob_0001.png"][1]
    expected = align(read_rgb(str(root / "Bob" / "Bob_0001.png")), points).image
    np.testing.assert_array_equal(aligned, expected)


def test_align_list_workers_and_no_face_center(tmp_path, capsys):
    root, out = tmp_path / "data", tmp_path / "aligned"
    make_dataset(root)
    listing = tmp_path / "list.txt"
    listing.write_text("Bob/Bob_0002.png 0\nAnn/Ann_0002.png 1\n")
    assert cli.main(["align", "--root", str(root), "--out", str(out), "--list", str(listing),
                     "--workers", "2", "--no-face", "center", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert (out / "no_face.txt").read_text() == "Bob/Bob_0002.png\n"
    centre = np.asarray(PIL.open(str(out / "Bob" / "Bob_0002.jpg")))
    assert centre.shape == (112, 96, 3)
    # the 80x60 grey-128 image sits in the middle of the window, zeros around it
    assert abs(int(centre[56, 48, 0]) - 128) <= 2 and centre[2, 2].max() <= 2
    records = dataset.parse_landmarks(str(out / "landmarks.tsv"))
    assert list(records) == ["Ann/Ann_0002.png"]


def test_align_errors(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    assert cli.main(["align", "--root", missing, "--out", str(tmp_path / "o")]) == 1
    assert "data set folder not found: " + missing in capsys.readouterr().err
    (tmp_path / "empty" / "x").mkdir(parents=True)
    assert cli.main(["align", "--root", str(tmp_path / "empty"), "--out",
                     str(tmp_path / "o")]) == 1
    assert "no images under" in capsys.readouterr().err
    assert cli.main(["align", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--workers", "0"]) == 1
    assert "--workers must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no_face"):
        FaceAligner(no_face="crop")
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_rgb(str(tmp_path / "none.jpg"))


DEPLOY = """name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 112 input_dim: 96
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: AVE kernel_size: 8 stride: 8 } }
layer { name: "fc5" type: "InnerProduct" bottom: "pool" top: "fc5"
        inner_product_param { num_output: 16
          weight_filler { type: "gaussian" std: 0.1 } } }
"""


def make_lfw(tmp_path):
    """Three people cut from the two photographs (each face three times, shifted), and
    a pairs file of 2 folds."""
    lfw = tmp_path / "lfw"
    people = {"Left_Man": ("test1.jpg", (0, 40)), "Right_Man": ("test1.jpg", (60, 250)),
              "Woman": ("test2.jpg", (40, 150))}
    for name, (photo, (top, left)) in people.items():
        (lfw / name).mkdir(parents=True)
        image = read_rgb(shared_path("models", "mtcnn", photo))
        size = 230 if name == "Woman" else 150
        for n, (dy, dx) in enumerate([(0, 0), (6, -5), (-4, 7)], 1):
            crop = image[top + dy + 10:top + dy + 10 + size, left + dx + 10:left + dx + 10 + size]
            PIL.fromarray(np.ascontiguousarray(crop)).save(
                str(lfw / name / ("%s_%04d.jpg" % (name, n))), quality=95)
    pairs = ["2\t2", "Left_Man\t1\t2", "Woman\t1\t3", "Left_Man\t3\tWoman\t2",
             "Right_Man\t1\tWoman\t1", "Right_Man\t2\t3", "Woman\t2\t3",
             "Left_Man\t1\tRight_Man\t3", "Right_Man\t2\tLeft_Man\t2"]
    (tmp_path / "pairs.txt").write_text("\n".join(pairs) + "\n")
    return str(lfw), str(tmp_path / "pairs.txt")


def test_lfw_from_raw_images_to_the_table(tmp_path, capsys):
    from pyfacelayers.net import Net
    from pyfacelayers.proto import caffe_pb2
    lfw, pairs = make_lfw(tmp_path)
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    weights = str(tmp_path / "tiny.caffemodel")
    Net(str(model), caffe_pb2.TEST, seed=3).save(weights)
    work = tmp_path / "work"
    assert cli.main(["lfw", "--lfw", lfw, "--pairs", pairs, "--model", str(model),
                     "--weights", weights, "--out", str(work)]) == 0
    out, err = capsys.readouterr()
    assert "align: 9 aligned, 0 without a face, 0 unreadable, 0 already done" in err
    assert "extract: wrote 9 x 32 features" in err
    assert "8 pairs in 2 folds, 32-wide features" in out
    assert "fold\tACC\tthreshold" in out and "\nAVE\t" in out
    features = np.load(str(work / "features.npz"))
    assert list(features["names"])[0] == "Left_Man/Left_Man_0001.jpg"
    # the features are those of extract run on the aligned images (mirror concat)
    assert cli.main(["extract", "--model", str(model), "--weights", weights, "--list",
                     str(work / "pairs_images.txt"), "--root", str(work / "aligned") + "/",
                     "--out", str(tmp_path / "again.npz"), "--mirror", "concat",
                     "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(str(tmp_path / "again.npz"))["features"],
                                  features["features"])
    assert cli.main(["verify", "--pairs", pairs, "--features", str(work / "features.npz")]) == 0
    lines = capsys.readouterr().out
    assert lines.strip() == out.strip()
    # a rerun reuses the aligned images
    assert cli.main(["lfw", "--lfw", lfw, "--pairs", pairs, "--model", str(model),
                     "--weights", weights, "--out", str(work), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == out.strip()


def test_lfw_refuses_pairs_without_faces_under_skip(tmp_path, capsys):
    lfw = tmp_path / "lfw"
    for name in ("Ann", "Bob"):
        (lfw / name).mkdir(parents=True)
        for n in (1, 2):
            PIL.fromarray(np.full((40, 40, 3), 90 * n, np.uint8)).save(
                str(lfw / name / ("%s_%04d.jpg" % (name, n))))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\nBob\t1\t2\nBob\t2\tAnn\t2\n")
    model = tmp_path / "deploy.prototxt"
    model.write_text(DEPLOY)
    rc = cli.main(["lfw", "--lfw", str(lfw), "--pairs", str(pairs), "--model", str(model),
                   "--weights", "unused.caffemodel", "--out", str(tmp_path / "work"),
                   "--no-face", "skip", "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "4 of the 4 pair images have no aligned face" in err
    assert "e.g. Ann/Ann_0001, Ann/Ann_0002, Bob/Bob_0001" in err and "--no-face center" in err
    assert (tmp_path / "work" / "aligned" / "no_face.txt").read_text().count("\n") == 4
