"""pycaffe's ``caffe.Detector``: R-CNN style windowed detection with a TEST-phase net.

Each window (``ymin, xmin, ymax, xmax`` in pixels of an image loaded by
:func:`pyfacelayers.io.load_image`) is cut out, optionally with a border of context
(``context_pad``: that many pixels of the net's input are context around the warped
window, filled with the mean where the window runs off the image), warped to the net's
input size by the :class:`~pyfacelayers.io.Transformer`, and classified; the first
output is the prediction.

Differences from pycaffe 1.0, which fail there under Python 3 and current numpy: the
context box is rounded to whole pixels before it is used to slice the image (pycaffe
slices with floats), ``images_windows`` may be any iterable (pycaffe walks it twice,
so a ``zip`` gave no detections), and no windows at all is a ValueError.
"""

import os

import numpy as np

from . import io
from .classifier import input_transformer
from .net import TEST, Net


class Detector(Net):
    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """[{"window": w, "prediction": p, "filename": f}] for every window w of every
        (image filename f, windows) pair, in order."""
        images_windows = [(f, list(windows)) for f, windows in images_windows]
        crops = []
        for filename, windows in images_windows:
            image = io.load_image(filename).astype(np.float32)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            raise ValueError("detect_windows needs at least one window")
        name = self.inputs[0]
        batch = np.zeros((len(crops), crops[0].shape[2]) + self.blobs[name].data.shape[2:],
                         dtype=np.float32)
        for i, crop in enumerate(crops):
            batch[i] = self.transformer.preprocess(name, crop)
        predictions = self.forward_all(**{name: batch})[self.outputs[0]]
        pairs = ((f, w) for f, windows in images_windows for w in windows)
        return [{"window": window, "prediction": prediction, "filename": filename}
                for (filename, window), prediction in zip(pairs, predictions)]

    def detect_selective_search(self, image_fnames):
        """detect_windows over the Selective Search proposals of each image (needs the
        ``selective_search_ijcv_with_python`` module and MATLAB, as pycaffe)."""
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]  # for MATLAB
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """The window of ``im`` (H, W, K) to classify: the plain window, or with
        ``context_pad`` the padded square crop of the net's input size."""
        window = np.asarray(window)
        if not self.context_pad:
            ymin, xmin, ymax, xmax = (int(v) for v in window[:4])
            return im[ymin:ymax, xmin:xmax]
        size = self.blobs[self.inputs[0]].width  # the input is taken to be square
        # Grow the box so that after warping to ``size`` a border of context_pad pixels
        # surrounds the window.
        scale = size / (1.0 * size - 2 * self.context_pad)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = np.array((window[0] + half_h, window[1] + half_w))
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w,
                                                              half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        # Where the grown box runs off the image, the crop keeps the mean.
        pad_y = int(round(max(0, -box[0]) * scale_h))
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError("window %s lies outside the %dx%d image" % (window, im_h, im_w))
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        top, left, bottom, right = (int(v) for v in box)
        context = io.resize_image(im[top:bottom, left:right], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return crop

    def configure_crop(self, context_pad):
        """Set the crop size (the input's H, W, K) and the context border; with a
        border, the mean in the raw image's layout fills what lies off the image."""
        name = self.inputs[0]
        order = self.transformer.transpose[name]
        back = [order[t] for t in order]  # (K, H, W) -> (H, W, K) for (2, 0, 1)
        self.crop_dims = np.array(self.blobs[name].data.shape[1:])[back]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(name)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(back)
        swap = self.transformer.channel_swap.get(name)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        raw_scale = self.transformer.raw_scale.get(name)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
