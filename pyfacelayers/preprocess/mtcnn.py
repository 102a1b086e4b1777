"""MTCNN v1 face and 5-landmark detection, as SphereFace's ``face_detect_demo.m`` runs it.

The three Caffe nets of kpzhang93's MTCNNv1 (PNet ``det1``, RNet ``det2``, ONet
``det3``, shipped in ``pyfacelayers/data/mtcnn``) run through pyfacelayers' own
runtime, on the CPU or, after ``pyfacelayers.set_mode_gpu()``, on the GPU. Everything
around them follows the original MATLAB ``detect_face.m`` step by step (spec:
``shared/reference/preprocess-mtcnn-align.md``): the image pyramid resampled with
pdollar's ``imResample``, the transposed RGB input layout that matcaffe implies, float32
box arithmetic, greedy NMS, the ``fix`` truncations and the original's quirks (the
one-cell regression read, ``>=`` at stage 1 but ``>`` later, widths with and without +1).

Two versions of ``detect_face.m``: ``"pinned"`` (commit 47a629c, the one SphereFace's
submodule pins; the default) and ``"mirror"`` (HEAD, from 58e8adb on: ONet runs a second
time on the mirrored crops and the two landmark sets are averaged; boxes are unchanged).
"""

import os
from collections import namedtuple

import numpy as np

from . import boxes as bx
from .resample import imresample

F32 = np.float32
MEAN, SCALE = 127.5, 0.0078125
VERSIONS = ("pinned", "mirror")
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "data", "mtcnn")

# SphereFace's face_detect_demo.m settings (MTCNN's own demo.m: factor 0.709,
# thresholds 0.6 0.7 0.7).
MINSIZE, FACTOR, THRESHOLDS = 20, 0.85, (0.6, 0.7, 0.9)

Detections = namedtuple("Detections", "boxes points")
Detections.__doc__ = """``boxes`` (K, 5) float32 ``[x1 y1 x2 y2 score]`` after ONet's
regression (neither squared nor truncated; may extend past the image); ``points``
(10, K) float32, rows x1..x5, y1..y5 of the left eye, right eye, nose, left and right
mouth corners (image left/right), all in 1-based MATLAB pixel coordinates (the centre
of pixel row r, column c is x = c, y = r)."""

Face = namedtuple("Face", "index box points")
Face.__doc__ = """The face SphereFace keeps: ``index`` into the detections, ``box``
(5,) float32 ``[x1 y1 x2 y2 score]``, ``points`` (5, 2) float32 ``[x y]`` rows
(``facial5point``)."""


class MTCNNNets:
    """The three nets, run by pyfacelayers' Net in TEST phase (float32).

    ``model_dir`` holds det1..det3 .prototxt/.caffemodel (default: the package's copy).
    Each method takes a float32 NCHW blob in matcaffe's transposed layout and returns
    the net's outputs in Caffe's output order (sorted by blob name), as numpy arrays.
    """

    def __init__(self, model_dir=None):
        from ..net import Net
        from ..proto import caffe_pb2
        model_dir = model_dir or MODEL_DIR
        self.nets = []
        for k in (1, 2, 3):
            prototxt = os.path.join(model_dir, "det%d.prototxt" % k)
            weights = os.path.join(model_dir, "det%d.caffemodel" % k)
            for path in (prototxt, weights):
                if not os.path.isfile(path):
                    raise FileNotFoundError("MTCNN model file not found: %s (the folder must "
                                            "hold det1..det3 .prototxt and .caffemodel)" % path)
            self.nets.append(Net(prototxt, caffe_pb2.TEST, weights=weights))

    def _run(self, net, blob, names):
        from .. import backend
        data = net.blobs[net.inputs[0]]
        if tuple(data.shape) != blob.shape:
            data.reshape(*blob.shape)
            net.reshape()
        data.data = blob
        net.forward()
        return [backend.to_numpy(net.blobs[name].data).astype(F32) for name in names]

    def pnet(self, blob):
        return self._run(self.nets[0], blob, ("conv4-2", "prob1"))

    def rnet(self, blob):
        return self._run(self.nets[1], blob, ("conv5-2", "prob1"))

    def onet(self, blob):
        return self._run(self.nets[2], blob, ("conv6-2", "conv6-3", "prob1"))


def scales(height, width, minsize=MINSIZE, factor=FACTOR):
    """The pyramid scales: ``m * factor**k`` while ``min(h, w) * m * factor**k >= 12``
    (``m = 12 / minsize``), the length updated by repeated multiplication as the
    original's loop."""
    m = 12.0 / minsize
    length = min(height, width) * m
    out = []
    while length >= 12:
        out.append(m * factor ** len(out))
        length = length * factor
    return out


def normalise(values):
    """``(v - 127.5) * 0.0078125`` in the array's type."""
    t = values.dtype.type
    return (values - t(MEAN)) * t(SCALE)


def to_blob(images):
    """(N, H, W, 3) normalised images -> matcaffe's (N, 3, W, H) float32 blob."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 3, 2, 1), dtype=F32)


def crops(image, boxes, size):
    """The ``size x size`` float64 crops of integer-valued ``boxes`` (``pad`` + zero
    fill outside the image + imResample), before normalisation; and the pad table."""
    height, width = image.shape[:2]
    table = bx.pad(boxes, width, height)
    out = np.zeros((len(boxes), size, size, 3), np.float64)
    for k, (dy, edy, dx, edx, y, ey, x, ex, tmpw, tmph) in enumerate(table):
        if tmpw <= 0 or tmph <= 0 or ex < x or ey < y:
            continue  # undefined in the original (not seen in practice): an all-zero crop
        tmp = np.zeros((tmph, tmpw, 3), np.float64)
        tmp[dy - 1:edy, dx - 1:edx] = image[y - 1:ey, x - 1:ex]
        out[k] = imresample(tmp, size, size)
    return out, table


def as_detection_image(image):
    """uint8 (H, W, 3) RGB, or (H, W) grey replicated to 3 channels, as float32."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("detect takes an (H, W, 3) RGB or (H, W) grey image, got shape %s"
                         % (image.shape,))
    if min(image.shape[:2]) < 1:
        raise ValueError("detect: empty image of shape %s" % (image.shape,))
    return image.astype(F32)


class MTCNN:
    """The MTCNN v1 detector with SphereFace's settings by default.

    ``minsize`` (20), ``factor`` (0.85) and ``thresholds`` (0.6, 0.7, 0.9) as
    ``face_detect_demo.m``; ``version`` "pinned" (default) or "mirror" (see the module
    doc); ``nets``: an :class:`MTCNNNets` (or anything with its pnet/rnet/onet methods;
    default: the shipped models); ``model_dir``: another folder of det1..det3 files.
    """

    def __init__(self, minsize=MINSIZE, factor=FACTOR, thresholds=THRESHOLDS,
                 version="pinned", nets=None, model_dir=None):
        if version not in VERSIONS:
            raise ValueError("MTCNN version must be one of %s, got %r"
                             % (", ".join(VERSIONS), version))
        if not minsize > 0:
            raise ValueError("minsize must be > 0, got %r" % (minsize,))
        if not 0 < factor < 1:
            raise ValueError("factor must be in (0, 1), got %r" % (factor,))
        if len(thresholds) != 3:
            raise ValueError("thresholds must be three numbers (PNet, RNet, ONet), got %r"
                             % (thresholds,))
        self.minsize, self.factor = minsize, factor
        self.thresholds = tuple(float(t) for t in thresholds)
        self.version = version
        self.nets = nets if nets is not None else MTCNNNets(model_dir)

    def detect(self, image, trace=None):
        """All faces of an image (``detect_face.m``): :class:`Detections`.

        ``image``: uint8 (H, W, 3) RGB or (H, W) grey. ``trace``: a dict that receives
        every intermediate array under the names of the reference fixtures'
        ``stages.npz`` (indices 1-based there, as MATLAB's).
        """
        img = as_detection_image(image)
        trace = {} if trace is None else trace
        found = self._stage1(img, trace)
        if len(found):
            found = self._stage2(img, found, trace)
        if len(found):
            return self._stage3(img, found, trace)
        return Detections(np.zeros((0, 5), F32), np.zeros((10, 0), F32))

    def _stage1(self, img, trace):
        height, width = img.shape[:2]
        levels = scales(height, width, self.minsize, self.factor)
        trace["scales"] = np.array(levels)
        found = []
        for number, scale in enumerate(levels, 1):
            hs, ws = int(np.ceil(height * scale)), int(np.ceil(width * scale))
            level = normalise(imresample(img, hs, ws))
            reg, prob = self.nets.pnet(to_blob(level[None]))
            rows = bx.candidates(prob[0, 1], reg[0], scale, self.thresholds[0])
            pick = bx.nms(rows, 0.5, "Union")
            trace["s1_level%02d_hs_ws" % number] = np.array([hs, ws], np.float64)
            trace["s1_level%02d_boxes_raw" % number] = rows
            trace["s1_level%02d_pick" % number] = pick + 1
            found.append(rows[pick])
        total = np.concatenate(found) if found else np.zeros((0, 9), F32)
        trace["s1_total_before_nms"] = total
        if not len(total):
            return np.zeros((0, 5), F32)
        pick = bx.nms(total, 0.7, "Union")
        total = total[pick]
        trace["s1_nms_pick"], trace["s1_after_nms"] = pick + 1, total
        total = bx.regress_stage1(total)
        trace["s1_after_reg"] = total
        total = bx.rerec(total)
        trace["s1_after_rerec"] = total.copy()
        total[:, :4] = np.trunc(total[:, :4])
        trace["s1_after_fix"] = total
        return total

    def _stage2(self, img, found, trace):
        data, table = crops(img, found, 24)
        trace["s1_pad"] = table.astype(F32)
        trace["s2_crops24_before_norm"] = data
        reg, prob = self.nets.rnet(to_blob(normalise(data)))
        score = prob[:, 1]
        passed = np.flatnonzero(score.astype(np.float64) > self.thresholds[1])
        trace["s2_score"], trace["s2_pass"] = score, passed + 1
        rows = np.concatenate([found[passed, :4], score[passed, None]], axis=1).astype(F32)
        trace["s2_after_pass"] = rows
        if not len(rows):
            return rows
        pick = bx.nms(rows, 0.7, "Union")
        rows = rows[pick]
        trace["s2_nms_pick"], trace["s2_after_nms"] = pick + 1, rows
        rows = bx.bbreg(rows, reg[passed][pick])
        trace["s2_after_bbreg"] = rows
        rows = bx.rerec(rows)
        trace["s2_after_rerec"] = rows
        return rows

    def _stage3(self, img, found, trace):
        found = np.trunc(found)  # all five columns: the score becomes 0
        trace["s3_after_fix"] = found
        data, table = crops(img, found, 48)
        trace["s3_pad"] = table.astype(F32)
        trace["s3_crops48_before_norm"] = data
        blob = to_blob(normalise(data))
        reg, marks, prob = self.nets.onet(blob)
        score = prob[:, 1]
        passed = np.flatnonzero(score.astype(np.float64) > self.thresholds[2])
        trace["s3_score"], trace["s3_pass"] = score, passed + 1
        rows = np.concatenate([found[passed, :4], score[passed, None]], axis=1).astype(F32)
        trace["s3_after_pass"] = rows
        raw = marks[passed]
        trace["s3_points_raw_pass"] = raw.T
        trace["s3_points_scaled"] = scale_points(raw, rows).T
        if not len(rows):
            return Detections(np.zeros((0, 5), F32), np.zeros((10, 0), F32))
        moved = bx.bbreg(rows, reg[passed])
        trace["s3_after_bbreg"] = moved
        pick = bx.nms(moved, 0.7, "Min")
        trace["s3_nms_pick"] = pick + 1
        raw = raw[pick]
        if self.version == "mirror":
            mirrored = np.ascontiguousarray(blob[passed[pick]][:, :, ::-1, :])
            raw = (raw + unmirror(self.nets.onet(mirrored)[1])) / F32(2)
        points = scale_points(raw, rows[pick]).T
        final = Detections(moved[pick], points)
        trace["s3_final_boxes"], trace["s3_final_points"] = final
        return final

    def face(self, image, detections=None):
        """The face ``face_detect_demo.m`` keeps (:class:`Face`), or None."""
        if detections is None:
            detections = self.detect(image)
        return choose_face(detections, np.asarray(image).shape[:2])


def scale_points(raw, rows):
    """ONet's box-relative landmarks (K, 10) -> image coordinates (K, 10) with the
    pre-regression boxes: ``(w * p + x1) - 1``, ``w = x2 - x1 + 1``, in float32."""
    raw = np.asarray(raw, F32)
    w = (rows[:, 2] - rows[:, 0]) + F32(1)
    h = (rows[:, 3] - rows[:, 1]) + F32(1)
    out = np.empty_like(raw)
    out[:, :5] = (w[:, None] * raw[:, :5] + rows[:, 0, None]) - F32(1)
    out[:, 5:] = (h[:, None] * raw[:, 5:] + rows[:, 1, None]) - F32(1)
    return out


def unmirror(marks):
    """Landmarks of mirrored crops back to the original frame, left/right swapped."""
    marks = np.asarray(marks, F32)
    xs = F32(1) - marks[:, [1, 0, 2, 4, 3]]
    ys = marks[:, [6, 5, 7, 9, 8]]
    return np.concatenate([xs, ys], axis=1)


def choose_face(detections, shape):
    """``face_detect_demo.m``'s choice: the only face, or of several the first whose box
    centre is nearest the image centre (float32 squared distance); None if none."""
    boxes, points = detections
    if len(boxes) == 0:
        return None
    index = 0
    if len(boxes) > 1:
        height, width = shape[:2]
        my = (boxes[:, 1] + boxes[:, 3]) / F32(2)
        mx = (boxes[:, 0] + boxes[:, 2]) / F32(2)
        dy, dx = my - F32(height / 2), mx - F32(width / 2)
        index = int(np.argmin(dy * dy + dx * dx))
    return Face(index, boxes[index].copy(), points[:, index].reshape(2, 5).T.copy())
