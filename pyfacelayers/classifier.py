"""pycaffe's ``caffe.Classifier``: a TEST-phase net that takes raw images and returns
the class probabilities of its first output.

``predict`` resizes every (H, W, K) image to ``image_dims``, then either takes the
ten crops of :func:`pyfacelayers.io.oversample` (four corners, the centre, and their
mirrors) and averages the ten predictions, or takes the centre crop; each crop goes
through a :class:`pyfacelayers.io.Transformer` set up from the constructor's
arguments, and the net runs in batches of its input size (``forward_all``).
"""

import numpy as np

from . import io
from .net import TEST, Net

CROPS_PER_IMAGE = 10


def input_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """pycaffe's preprocessing for the net's first input (HxWxC images to CxHxW), with
    the settings that are given (Classifier's and Detector's common setup)."""
    name = net.inputs[0]
    transformer = io.Transformer({name: net.blobs[name].data.shape})
    transformer.set_transpose(name, (2, 0, 1))
    for setting, value in (("set_mean", mean), ("set_input_scale", input_scale),
                           ("set_raw_scale", raw_scale), ("set_channel_swap", channel_swap)):
        if value is not None:
            getattr(transformer, setting)(name, value)
    return transformer


class Classifier(Net):
    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        name = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale,
                                             channel_swap)
        self.crop_dims = np.array(self.blobs[name].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) \
            else np.array(image_dims)

    def predict(self, inputs, oversample=True):
        """Class probabilities (N, classes) of N images (H, W, K), each averaged over its
        ten crops when ``oversample``, else of its centre crop."""
        if not len(inputs):
            raise ValueError("predict needs at least one image")
        height, width = (int(d) for d in self.image_dims)
        resized = np.zeros((len(inputs), height, width, np.asarray(inputs[0]).shape[2]),
                           dtype=np.float32)
        for i, image in enumerate(inputs):
            resized[i] = io.resize_image(image, (height, width))
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            # pycaffe's centre: half the image size less half the crop, truncated.
            top, left = (int(c / 2.0 - k / 2.0) for c, k in zip((height, width),
                                                                 self.crop_dims))
            crops = resized[:, top:top + self.crop_dims[0], left:left + self.crop_dims[1], :]
        name = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(name, crop) for crop in crops])
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape(len(inputs), CROPS_PER_IMAGE, -1).mean(axis=1)
        return predictions
