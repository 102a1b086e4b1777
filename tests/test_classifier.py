"""pycaffe's caffe.Classifier: preprocessing, centre crop, ten-crop averaging."""

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers import io
from pyfacelayers.fileio import read_net

DEPLOY = """
name: "tiny_classifier"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 }
                            bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""
SETTINGS = dict(image_dims=(8, 7), mean=np.array([0.1, 0.2, 0.3]), raw_scale=255.0,
                channel_swap=(2, 1, 0), input_scale=0.5)


@pytest.fixture
def model(tmp_path):
    path, weights = tmp_path / "deploy.prototxt", tmp_path / "w.caffemodel"
    path.write_text(DEPLOY)
    caffe.Net(str(path), caffe.TEST, seed=1).save(str(weights))
    return str(path), str(weights)


def images(count=3, seed=0):
    return [np.random.default_rng(seed + i).random((10, 9, 3)).astype(np.float32)
            for i in range(count)]


def reference(model, crops_of_each):
    """Each image resized to (8, 7), its crops preprocessed as the settings say, run
    through a plain Net one crop at a time, the crops' probabilities averaged."""
    classifier = caffe.Classifier(*model, **SETTINGS)
    net = caffe.Net(read_net(model[0]), model[1], caffe.TEST)
    out = []
    for image in images():
        resized = io.resize_image(image, (8, 7))
        probs = []
        for crop in crops_of_each(resized):
            x = classifier.transformer.preprocess("data", crop)
            batch = np.repeat(x[None], 4, axis=0)
            probs.append(net.forward(data=batch)["prob"][0].copy())
        out.append(np.mean(probs, axis=0))
    return np.array(out)


def test_centre_crop(model):
    got = caffe.Classifier(*model, **SETTINGS).predict(images(), oversample=False)
    # centre of (8, 7) for a (6, 5) crop: int(4 - 3) = 1, int(3.5 - 2.5) = 1
    expected = reference(model, lambda im: [im[1:7, 1:6]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)


def test_ten_crops_averaged(model):
    got = caffe.Classifier(*model, **SETTINGS).predict(images())

    def ten(im):
        five = [im[y:y + 6, x:x + 5] for y, x in ((0, 0), (0, 2), (2, 0), (2, 2), (1, 1))]
        return five + [c[:, ::-1] for c in five]
    np.testing.assert_allclose(got, reference(model, ten), rtol=1e-5, atol=1e-7)
    assert got.shape == (3, 3)


def test_defaults_and_errors(model):
    classifier = caffe.Classifier(*model)
    assert list(classifier.image_dims) == [6, 5] and list(classifier.crop_dims) == [6, 5]
    assert classifier.predict(images(1), oversample=False).shape == (1, 3)
    with pytest.raises(ValueError, match="at least one image"):
        classifier.predict([])
