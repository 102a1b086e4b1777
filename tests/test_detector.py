"""pycaffe's caffe.Detector: windows cut out, warped by the Transformer and classified;
the context border filled with the mean where it runs off the image."""

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers import io
from pyfacelayers.fileio import read_net

Image = pytest.importorskip("PIL.Image")

DEPLOY = """
name: "tiny_detector"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
SETTINGS = dict(mean=np.array([0.1, 0.2, 0.3]), raw_scale=255.0, channel_swap=(2, 1, 0),
                input_scale=0.5)


@pytest.fixture
def files(tmp_path):
    path, weights = tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel"
    path.write_text(DEPLOY)
    caffe.Net(str(path), caffe.TEST, seed=3).save(str(weights))
    pixels = (np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)
    image = tmp_path / "image.png"
    Image.fromarray(pixels).save(image)
    return str(path), str(weights), str(image)


def test_detect_windows_classifies_each_warped_window(files):
    model, weights, image = files
    detector = caffe.Detector(model, weights, **SETTINGS)
    windows = [np.array([1, 2, 7, 8]), np.array([0, 0, 12, 10]), np.array([3, 3, 9, 6])]
    found = detector.detect_windows(zip([image], [windows]))  # a one-pass iterable
    net = caffe.Net(read_net(model), weights, caffe.TEST)
    loaded = io.load_image(image)
    assert [d["filename"] for d in found] == [image] * 3
    for detection, window in zip(found, windows):
        assert detection["window"] is window
        crop = loaded[window[0]:window[2], window[1]:window[3]]
        x = detector.transformer.preprocess("data", crop)  # warped to 6 x 6
        want = net.forward(data=np.stack([x, x]))["prob"][0]
        np.testing.assert_allclose(detection["prediction"], want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="at least one window"):
        detector.detect_windows([(image, [])])


def test_context_pad_fills_the_border_off_the_image_with_the_mean(files):
    model, weights, image = files
    detector = caffe.Detector(model, weights, context_pad=1, **SETTINGS)
    assert detector.crop_dims.tolist() == [6, 6, 3]
    loaded = io.load_image(image)
    # A 3x3 window at the corner grows to rows/columns -1..5: row and column 0 of the
    # crop lie off the image and hold the mean, in the raw image's layout.
    crop = detector.crop(loaded, np.array([0, 0, 3, 3]))
    assert crop.shape == (6, 6, 3)
    x = detector.transformer.preprocess("data", crop)
    np.testing.assert_allclose(x[:, 0, :], 0, atol=1e-6)
    np.testing.assert_allclose(x[:, :, 0], 0, atol=1e-6)
    np.testing.assert_allclose(crop[1:, 1:], io.resize_image(loaded[0:5, 0:5], (5, 5)),
                               rtol=1e-6)
    # Without context the window is cut out as given.
    plain = caffe.Detector(model, weights)
    assert plain.crop(loaded, [2, 1, 5, 9]).shape == (3, 8, 3)
