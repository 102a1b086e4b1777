"""MTCNN detection and 112x96 alignment against the original MATLAB code's outputs
(../shared/fixtures/preprocess-ref, made with the unchanged MATLAB code and the original
Caffe), and on a photograph that ships with scikit-image."""

import hashlib
import os

import numpy as np
import pytest

from conftest import ROOT, assert_close, shared_path

from pyfacelayers.preprocess import MTCNN, align, imresample, similarity
from pyfacelayers.preprocess import alignment, boxes as bx, mtcnn as mt

CASES = ["test1", "test2", "sq250_test2", "gray_test1", "edge_test1"]
ALIGN_CASES = ["test1_face2_mtcnn", "test1_face1_mtcnn", "test1_face1_byeye", "test2_mtcnn",
               "sq250_test2_mtcnn", "gray_test1_face2_mtcnn", "edge_test1_border_face_mtcnn",
               "synth_exact_test1", "synth_mirror_test1", "synth_noisy_test2"]
SUFFIX = {"pinned": "", "mirror": "_mirror_variant"}


def fixture(case, name):
    return np.load(shared_path("fixtures", "preprocess-ref", "mtcnn", case, name + ".npz"))


@pytest.fixture(scope="module")
def detectors():
    return {version: MTCNN(version=version) for version in mt.VERSIONS}


class ReplayNets:
    """Returns the recorded outputs of the original Caffe, in call order, and keeps
    the inputs it was given."""

    def __init__(self, case):
        self.p, self.r, self.o = (fixture(case, n) for n in ("pnet", "rnet", "onet"))
        self.inputs = {}
        self.level = self.onet_calls = 0

    def pnet(self, blob):
        self.level += 1
        key = "level%02d_" % self.level
        self.inputs[key + "data"] = blob
        return [self.p[key + "conv4_2"], self.p[key + "prob1"]]

    def rnet(self, blob):
        self.inputs["rnet"] = blob
        return [self.r["conv5_2"], self.r["prob1"]]

    def onet(self, blob):
        prefix = "mirror_" if self.onet_calls else ""
        self.onet_calls += 1
        self.inputs[prefix + "onet"] = blob
        return [self.o[prefix + "conv6_2"], self.o[prefix + "conv6_3"], self.o[prefix + "prob1"]]


# -- the resampler and the net inputs: bit-exact ---------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_every_pyramid_level_is_bit_exact(case):
    stages, pnet = fixture(case, "stages"), fixture(case, "pnet")
    image = mt.as_detection_image(fixture(case, "detect")["image_as_read"])
    levels = mt.scales(*image.shape[:2])
    np.testing.assert_array_equal(levels, stages["scales"])
    for number, scale in enumerate(levels, 1):
        hs, ws = stages["s1_level%02d_hs_ws" % number]
        level = imresample(image, int(hs), int(ws))
        assert level.dtype == np.float32
        blob = mt.to_blob(mt.normalise(level)[None])
        np.testing.assert_array_equal(blob, pnet["level%02d_data" % number],
                                      err_msg="%s level %d" % (case, number))


@pytest.mark.parametrize("case", CASES)
def test_every_crop_is_bit_exact(case):
    stages = fixture(case, "stages")
    image = mt.as_detection_image(fixture(case, "detect")["image_as_read"])
    for boxes, size, key, net in (("s1_after_fix", 24, "s2_crops24_before_norm", "rnet"),
                                  ("s3_after_fix", 48, "s3_crops48_before_norm", "onet")):
        data, table = mt.crops(image, stages[boxes], size)
        np.testing.assert_array_equal(data, stages[key])
        np.testing.assert_array_equal(table, stages["s1_pad" if size == 24 else "s3_pad"])
        np.testing.assert_array_equal(mt.to_blob(mt.normalise(data)), fixture(case, net)["data"])


def test_resampler_rules():
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert imresample(ramp, 3, 4) is ramp  # same size: returned unchanged, no 1/(1+1e-6)
    flat = np.full((5, 7, 3), 255, np.float64)
    for size in ((10, 14), (2, 3), (5, 14), (9, 7)):  # up, down, mixed
        out = imresample(flat, *size)
        np.testing.assert_allclose(out, 255 / (1 + 1e-6), rtol=1e-15)
        assert out.shape == size + (3,)
    # half-pixel-centre linear up-sampling with edge replication, then the factor
    row = imresample(np.array([[0.0, 8.0]]), 1, 4)
    np.testing.assert_allclose(row, [[0, 2, 6, 8]] / np.float64(1 + 1e-6), rtol=1e-15)
    # area average: 3 -> 2 covers 1.5 input pixels per output
    np.testing.assert_allclose(imresample(np.array([[3.0, 6.0, 9.0]]), 1, 2),
                               [[4, 8]] / np.float64(1 + 1e-6), rtol=1e-15)
    with pytest.raises(TypeError, match="float32 or float64"):
        imresample(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(ValueError, match="cannot resample"):
        imresample(np.zeros((4, 4)), 0, 2)


# -- the detector's logic: bit-exact given the recorded net outputs ---------------------

@pytest.mark.parametrize("version", mt.VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_stage_replays_bit_exact(case, version):
    stages, detect = fixture(case, "stages"), fixture(case, "detect")
    nets = ReplayNets(case)
    trace = {}
    found = MTCNN(version=version, nets=nets).detect(detect["image_as_read"], trace=trace)
    # every net input the original Caffe saw
    for key, blob in nets.inputs.items():
        source = nets.r if key == "rnet" else nets.o if key.endswith("onet") else nets.p
        name = {"rnet": "data", "onet": "data", "mirror_onet": "mirror_data"}.get(key, key)
        np.testing.assert_array_equal(blob, source[name], err_msg=key)
    assert nets.level == len(stages["scales"]) and nets.onet_calls == (2 if version == "mirror"
                                                                         else 1)
    if version == "pinned":  # the stage dumps are of the pinned code
        for key in stages.files:
            expected = stages[key]
            if expected.size == 0:  # MATLAB's empty levels are (0, 8)
                assert np.asarray(trace[key]).size == 0, key
                continue
            assert np.asarray(trace[key]).dtype == expected.dtype, key
            np.testing.assert_array_equal(trace[key], expected, err_msg=key)
    np.testing.assert_array_equal(found.boxes, detect["boxes" + SUFFIX[version]])
    np.testing.assert_array_equal(found.points, detect["landmarks" + SUFFIX[version]])
    face = mt.choose_face(found, detect["image_as_read"].shape)
    assert face.index + 1 == detect["picked_index_1based"]
    np.testing.assert_array_equal(face.points, detect["facial5point" + SUFFIX[version]])


def test_single_hit_quirk_is_exercised():
    # test1's levels 14 and 15 have exactly one candidate, read at the quirky offset
    stages, pnet = fixture("test1", "stages"), fixture("test1", "pnet")
    for number in (14, 15):
        rows = stages["s1_level%02d_boxes_raw" % number]
        assert len(rows) == 1
        prob = pnet["level%02d_prob1" % number][0, 1]
        reg = pnet["level%02d_conv4_2" % number][0]
        i, j = np.argwhere(prob >= 0.6)[0]
        assert not np.array_equal(rows[0, 5:], reg[:, i, j])  # not the plain read
        np.testing.assert_array_equal(bx.candidates(prob, reg, stages["scales"][number - 1],
                                                    0.6), rows)


def test_nms_order_and_methods():
    rows = np.array([[0, 0, 9, 9, 0.5], [1, 1, 10, 10, 0.9], [0, 0, 9, 9, 0.5],
                     [20, 20, 29, 29, 0.5], [0, 0, 4, 4, 0.7]], np.float32)
    # highest first; among equal scores the later row first (MATLAB's stable sort)
    assert bx.nms(rows, 0.5, "Union").tolist() == [1, 4, 3]
    # a 5x5 box inside a 10x10 one: IoU 0.25 but overlap over the smaller area 1.0
    assert bx.nms(rows[[0, 4]], 0.5, "Min").tolist() == [1]
    assert bx.nms(rows[[0, 4]], 0.5, "Union").tolist() == [1, 0]
    with pytest.raises(ValueError, match="Union"):
        bx.nms(rows, 0.5, "IoU")


# -- the nets run by pyfacelayers against the original Caffe ---------------------------

@pytest.mark.parametrize("case", CASES)
def test_nets_match_the_original_caffe(detectors, case):
    nets = detectors["pinned"].nets
    pnet = fixture(case, "pnet")
    number = 1
    # every pyramid level of two images (the end-to-end tests run the others' levels)
    while case in ("test1", "sq250_test2") and "level%02d_data" % number in pnet.files:
        key = "level%02d_" % number
        reg, prob = nets.pnet(pnet[key + "data"])
        assert_close(prob, pnet[key + "prob1"], 1e-4, key + "prob1")
        assert_close(reg, pnet[key + "conv4_2"], 1e-4, key + "conv4_2")
        number += 1
    rnet = fixture(case, "rnet")
    for got, name in zip(nets.rnet(rnet["data"]), ("conv5_2", "prob1")):
        assert_close(got, rnet[name], 1e-4, "rnet " + name)
    onet = fixture(case, "onet")
    for prefix in ("", "mirror_"):  # the mirror variant's second ONet call too
        for got, name in zip(nets.onet(onet[prefix + "data"]), ("conv6_2", "conv6_3", "prob1")):
            assert_close(got, onet[prefix + name], 1e-4, "onet " + prefix + name)


@pytest.mark.parametrize("version,case", [("pinned", c) for c in CASES]
                         + [("mirror", "test1"), ("mirror", "edge_test1")])
def test_end_to_end_with_our_nets(detectors, case, version):
    detect = fixture(case, "detect")
    found = detectors[version].detect(detect["image_as_read"])
    assert found.boxes.shape == detect["boxes"].shape
    np.testing.assert_allclose(found.boxes, detect["boxes" + SUFFIX[version]], atol=1e-3)
    face = mt.choose_face(found, detect["image_as_read"].shape)
    assert face.index + 1 == detect["picked_index_1based"]
    np.testing.assert_allclose(face.points, detect["facial5point" + SUFFIX[version]], atol=1e-3)


def test_astronaut_photograph(detectors):
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed")
    image = data.astronaut()  # 512x512 RGB, one face (Eileen Collins)
    found = detectors["pinned"].detect(image)
    assert len(found.boxes) == 1 and found.boxes[0, 4] > 0.99
    x1, y1, x2, y2 = found.boxes[0, :4]
    assert 160 < x1 < 200 and 40 < y1 < 80 and 250 < x2 < 290 and 150 < y2 < 200
    # where a person puts them (1-based pixel centres, read off the photograph)
    by_eye = np.array([[203, 101], [248, 103], [224, 127], [203, 142], [244, 143]])
    points = found.points.reshape(2, 5).T
    assert np.abs(points - by_eye).max() < 8, points
    aligned = align(image, points).image
    assert aligned.shape == (112, 96, 3)
    # the eyes land on the reference points: darker than the skin around them
    assert aligned[52, 30].mean() < aligned[62, 30].mean()


# -- alignment ------------------------------------------------------------------------

def _align_image(case):
    from PIL import Image
    if case.startswith("sq250") or case.startswith("gray") or case.startswith("edge"):
        name = case.split("_")[0] + "_test" + ("2" if case.startswith("sq250") else "1")
        path = shared_path("fixtures", "preprocess-ref", "mtcnn", "inputs", name + ".png")
    else:
        path = shared_path("models", "mtcnn", ("test2" if "test2" in case else "test1") + ".jpg")
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("case", ALIGN_CASES)
def test_alignment_matches_the_reference_exactly(case):
    ref = np.load(shared_path("fixtures", "preprocess-ref", "align", case + ".npz"))
    image = _align_image(case)
    result = align(image, ref["points_in"], ref["points_ref"])
    transform = result.transform
    assert transform.reflective == bool(ref["reflective"])
    np.testing.assert_allclose(transform.T, ref["T"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(transform.Tinv, ref["Tinv"], rtol=0, atol=1e-9)
    np.testing.assert_allclose([transform.norm_nonreflective, transform.norm_reflective],
                               [ref["norm_nonreflective"], ref["norm_reflective"]],
                               rtol=1e-9, atol=1e-9)
    uv = alignment.sample_positions(transform.Tinv)
    np.testing.assert_allclose(uv, ref["sample_uv"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(alignment.bilinear_fill(image, uv), ref["aligned_float"],
                               rtol=0, atol=1e-8)
    assert result.image.dtype == np.uint8 and result.image.shape == ref["aligned"].shape
    np.testing.assert_array_equal(result.image, ref["aligned"])


def test_cp2tform_matlab_check_value():
    # MATLAB's output for this example, quoted in face.evoLVe's matlab_cp2tform.py
    t = similarity([[0, 0], [6, 3], [-2, 5]], [[-1, -1], [0, -10], [4, 4]])
    np.testing.assert_allclose(t.T, [[-0.0764, -1.6190, 0], [1.6190, -0.0764, 0],
                                     [-3.2156, 0.0290, 1]], atol=1e-4)
    np.testing.assert_allclose(t.Tinv, [[-0.0291, 0.6163, 0], [-0.6163, -0.0291, 0],
                                        [-0.0756, 1.9826, 1]], atol=1e-4)


def test_rounding_is_half_away_from_zero():
    np.testing.assert_array_equal(alignment.round_uint8([0.5, 1.5, 2.5, 254.5, 255.7, -3]),
                                  [1, 2, 3, 255, 255, 0])


def test_bad_inputs_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match="version"):
        MTCNN(version="v2", nets=object())
    with pytest.raises(ValueError, match="three numbers"):
        MTCNN(thresholds=(0.6, 0.7), nets=object())
    with pytest.raises(ValueError, match="factor"):
        MTCNN(factor=1.5, nets=object())
    with pytest.raises(FileNotFoundError, match="det1.prototxt"):
        MTCNN(model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="RGB or"):
        MTCNN(nets=object()).detect(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError, match="2 distinct points"):
        similarity(np.ones((5, 2)))
    with pytest.raises(ValueError, match="NaN"):
        similarity(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        similarity(np.ones((4, 2)))


def test_no_face_in_a_blank_image(detectors):
    found = detectors["pinned"].detect(np.full((60, 80, 3), 128, np.uint8))
    assert found.boxes.shape == (0, 5) and found.points.shape == (10, 0)
    assert detectors["pinned"].face(np.full((60, 80), 128, np.uint8)) is None


def test_models_ship_in_the_package():
    folder = mt.MODEL_DIR  # pyfacelayers/data/mtcnn
    readme = open(shared_path("models", "mtcnn", "README.md"), encoding="utf-8").read()
    total = 0
    for k in (1, 2, 3):
        for ext in ("prototxt", "caffemodel"):
            path = os.path.join(folder, "det%d.%s" % (k, ext))
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            assert digest in readme, path  # byte-identical to the published files
            total += os.path.getsize(path)
    assert total < 3 * 2 ** 20
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    assert '"data/**/*"' in pyproject


def test_images_are_read_as_matlab_imread(tmp_path):
    pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    from pyfacelayers.preprocess import read_rgb
    for case, path in (("test1", ("models", "mtcnn", "test1.jpg")),
                       ("test2", ("models", "mtcnn", "test2.jpg")),
                       ("gray_test1", ("fixtures", "preprocess-ref", "mtcnn", "inputs",
                                       "gray_test1.png"))):
        # the pixels the reference run decoded (Octave's imread); grey stays 2-D
        np.testing.assert_array_equal(read_rgb(shared_path(*path)),
                                      fixture(case, "detect")["image_as_read"])
    data = open(shared_path("models", "mtcnn", "test1.jpg"), "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="could not decode image .*cut.jpg"):
        read_rgb(str(tmp_path / "cut.jpg"))
