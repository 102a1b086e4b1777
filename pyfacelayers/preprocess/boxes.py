"""MTCNN's box bookkeeping, as its MATLAB files (``nms.m``, ``rerec.m``, ``bbreg.m``,
``pad.m``, ``generateBoundingBox.m``) compute it.

Boxes are float32 rows ``[x1 y1 x2 y2 score ...]`` in 1-based MATLAB pixel coordinates.
MATLAB does all arithmetic that involves a ``single`` in single precision, one
rounding per operation, so every function here works in float32 in the original's
order of operations (spec sections 5.2-7.1). Index arrays are 0-based.
"""

import numpy as np

F32 = np.float32
ONE, HALF = F32(1), F32(0.5)


def nms(boxes, threshold, method="Union"):
    """Greedy non-maximum suppression (``nms.m``): indices of the kept rows, in pick
    order (highest score first; among equal scores the later row first, as MATLAB's
    stable ascending sort). A row is dropped when its overlap with the pick is above
    ``threshold``; ``method`` "Union" (IoU) or "Min" (over the smaller area). Areas
    count pixels inclusively (+1)."""
    if method not in ("Union", "Min"):
        raise ValueError("nms method must be 'Union' or 'Min', got %r" % (method,))
    boxes = np.asarray(boxes, F32)
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2, score = (boxes[:, k] for k in range(5))
    area = (x2 - x1 + ONE) * (y2 - y1 + ONE)
    order = np.argsort(score, kind="stable")
    picks = []
    while order.size:
        i, rest = order[-1], order[:-1]
        picks.append(i)
        w = np.maximum(F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + ONE)
        h = np.maximum(F32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + ONE)
        inter = w * h
        if method == "Min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / ((area[i] + area[rest]) - inter)
        order = rest[overlap.astype(np.float64) <= threshold]
    return np.array(picks, np.int64)


def candidates(prob, reg, scale, threshold):
    """Stage-1 boxes of one pyramid level (``generateBoundingBox.m``).

    ``prob`` (Hc, Wc) and ``reg`` (4, Hc, Wc) are PNet's outputs in Caffe layout: the
    first map axis runs along image x. Cells with ``prob >= threshold`` are listed
    y-major (MATLAB's ``find``). Rows ``[x1 y1 x2 y2 score dx1 dy1 dx2 dy2]``, float32.
    When exactly one cell passes, the original reads the regression at flat offset
    ``i + Hc*j`` of the map instead of ``(i, j)`` (an extra transpose); reproduced.
    """
    hc = prob.shape[0]
    j, i = np.nonzero(prob.T.astype(np.float64) >= threshold)
    score = prob[i, j]
    if len(i) == 1:
        offsets = reg.reshape(4, -1)[:, i + hc * j]
    else:
        offsets = reg[:, i, j]
    corners = [np.trunc((2.0 * i + 1) / scale), np.trunc((2.0 * j + 1) / scale),
               np.trunc((2.0 * i + 12) / scale), np.trunc((2.0 * j + 12) / scale)]
    rows = np.empty((len(i), 9), F32)
    for k, column in enumerate(corners):
        rows[:, k] = column
    rows[:, 4] = score
    rows[:, 5:] = offsets.T
    return rows


def regress_stage1(rows):
    """The regression after PNet, widths ``x2 - x1`` (no +1): ``[x1 y1 x2 y2 score]``."""
    x1, y1, x2, y2 = (rows[:, k] for k in range(4))
    w, h = x2 - x1, y2 - y1
    out = np.empty((len(rows), 5), F32)
    out[:, 0] = x1 + rows[:, 5] * w
    out[:, 1] = y1 + rows[:, 6] * h
    out[:, 2] = x2 + rows[:, 7] * w
    out[:, 3] = y2 + rows[:, 8] * h
    out[:, 4] = rows[:, 4]
    return out


def bbreg(boxes, reg):
    """``bbreg.m``: RNet/ONet regression with inclusive widths ``x2 - x1 + 1``."""
    out = np.array(boxes, F32)
    w = (out[:, 2] - out[:, 0]) + ONE
    h = (out[:, 3] - out[:, 1]) + ONE
    reg = np.asarray(reg, F32)
    out[:, 0] = out[:, 0] + reg[:, 0] * w
    out[:, 1] = out[:, 1] + reg[:, 1] * h
    out[:, 2] = out[:, 2] + reg[:, 2] * w
    out[:, 3] = out[:, 3] + reg[:, 3] * h
    return out


def rerec(boxes):
    """``rerec.m``: squares of side ``max(w, h)`` on the same centre (w = x2 - x1)."""
    out = np.array(boxes, F32)
    h = out[:, 3] - out[:, 1]
    w = out[:, 2] - out[:, 0]
    side = np.maximum(w, h)
    out[:, 0] = (out[:, 0] + w * HALF) - side * HALF
    out[:, 1] = (out[:, 1] + h * HALF) - side * HALF
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def pad(boxes, width, height):
    """``pad.m`` for integer-valued boxes: a (n, 10) int64 array of columns
    ``dy edy dx edx y ey x ex tmpw tmph`` (1-based, inclusive), where the crop buffer
    is ``tmph x tmpw`` and its part ``[dy..edy, dx..edx]`` receives the image's
    ``[y..ey, x..ex]``."""
    b = np.asarray(boxes)[:, :4].astype(np.int64)
    x, y, ex, ey = b[:, 0].copy(), b[:, 1].copy(), b[:, 2].copy(), b[:, 3].copy()
    tmpw, tmph = ex - x + 1, ey - y + 1
    dx, dy = np.ones_like(x), np.ones_like(y)
    edx, edy = tmpw.copy(), tmph.copy()
    over = ex > width
    edx[over] = tmpw[over] - (ex[over] - width)
    ex[over] = width
    over = ey > height
    edy[over] = tmph[over] - (ey[over] - height)
    ey[over] = height
    under = x < 1
    dx[under] = 2 - x[under]
    x[under] = 1
    under = y < 1
    dy[under] = 2 - y[under]
    y[under] = 1
    return np.stack([dy, edy, dx, edx, y, ey, x, ex, tmpw, tmph], axis=1)
