"""MTCNN on the GPU: the nets against the original Caffe, detection and the align
command (skipped without a CUDA device)."""

import numpy as np
import pytest

from conftest import require_gpu  # noqa: E402

cupy = require_gpu()

from conftest import assert_close, shared_path  # noqa: E402

from pyfacelayers import backend  # noqa: E402
from pyfacelayers.preprocess import MTCNN, mtcnn as mt  # noqa: E402


@pytest.fixture
def gpu_mode():
    backend.set_mode_gpu()
    yield
    backend.set_mode_cpu()


def fixture(case, name):
    return np.load(shared_path("fixtures", "preprocess-ref", "mtcnn", case, name + ".npz"))


def test_nets_on_the_gpu_match_the_original_caffe(gpu_mode):
    nets = mt.MTCNNNets()
    pnet, rnet, onet = (fixture("test1", n) for n in ("pnet", "rnet", "onet"))
    for number in range(1, 19):
        key = "level%02d_" % number
        reg, prob = nets.pnet(pnet[key + "data"])
        assert_close(prob, pnet[key + "prob1"], 1e-4, key + "prob1")
        assert_close(reg, pnet[key + "conv4_2"], 1e-4, key + "conv4_2")
    for got, name in zip(nets.rnet(rnet["data"]), ("conv5_2", "prob1")):
        assert_close(got, rnet[name], 1e-4, "rnet " + name)
    for got, name in zip(nets.onet(onet["data"]), ("conv6_2", "conv6_3", "prob1")):
        assert_close(got, onet[name], 1e-4, "onet " + name)


@pytest.mark.parametrize("version", mt.VERSIONS)
@pytest.mark.parametrize("case", ["test1", "sq250_test2", "edge_test1"])
def test_detection_on_the_gpu(gpu_mode, case, version):
    detect = fixture(case, "detect")
    suffix = "" if version == "pinned" else "_mirror_variant"
    found = MTCNN(version=version).detect(detect["image_as_read"])
    np.testing.assert_allclose(found.boxes, detect["boxes" + suffix], atol=1e-3)
    face = mt.choose_face(found, detect["image_as_read"].shape)
    assert face.index + 1 == detect["picked_index_1based"]
    np.testing.assert_allclose(face.points, detect["facial5point" + suffix], atol=1e-3)


def test_align_command_on_the_gpu(tmp_path, capsys):
    import shutil
    from pyfacelayers import cli
    from pyfacelayers.preprocess import dataset
    (tmp_path / "data" / "A").mkdir(parents=True)
    for k in range(4):
        shutil.copy(shared_path("fixtures", "preprocess-ref", "mtcnn", "inputs", "sq250_test2.png"),
                    str(tmp_path / "data" / "A" / ("A_%04d.png" % k)))
    for workers in ("1", "2"):
        out = tmp_path / ("out" + workers)
        assert cli.main(["align", "--root", str(tmp_path / "data"), "--out", str(out), "--gpu",
                         "0", "--workers", workers]) == 0
        assert "4 aligned" in capsys.readouterr().err
        records = dataset.parse_landmarks(str(out / "landmarks.tsv"))
        expected = fixture("sq250_test2", "detect")["facial5point"]
        for box, points in records.values():
            np.testing.assert_allclose(points, expected, atol=1e-3)
