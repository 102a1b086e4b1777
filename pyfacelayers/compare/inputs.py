"""The arrays a comparison feeds the net: from an .npz, an .npy or an image list."""

import os

import numpy as np

from .reference import CompareError

# -- inputs -----------------------------------------------------------------------------
def load_inputs(source, input_names, input_shapes=None, mean=127.5, scale=0.0078125,
                antialias=False):
    """Arrays for the net's input blobs from an .npz (one array per input blob, by
    name), an .npy (a net with one input) or an image list (text lines ``path
    [label]``: read as caffe.io.load_image, resized to the input's height and width as
    caffe.io.resize_image (``antialias``: as newer scikit-image, see
    :func:`pyfacelayers.io.resize_image`), BGR, ``(pixel - mean) * scale``; labels go
    to an input named ``label``). Returns {blob: array}."""
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError("input not found: %s" % path)
    if path.endswith((".npz", ".npy")):
        try:
            z = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise CompareError("%s: cannot read (%s)" % (path, exc)) from None
        if not hasattr(z, "files"):
            if len(input_names) != 1:
                raise CompareError("%s: a .npy fills one input blob but the net has %d (%s);"
                                   " give an .npz with one array per input"
                                   % (path, len(input_names), ", ".join(input_names)))
            return {input_names[0]: z}
        with z:
            arrays = {k: z[k] for k in z.files}
        unknown = sorted(set(arrays) - set(input_names))
        if unknown:
            raise CompareError("%s: %s not input blob(s) of the net (inputs: %s)" % (
                path, ", ".join(unknown), ", ".join(input_names)))
        return arrays
    return _load_image_list(path, input_names, input_shapes or {}, mean, scale, antialias)


def _load_image_list(path, input_names, input_shapes, mean, scale, antialias):
    from ..io import load_image, resize_image
    if not input_names:
        raise CompareError("%s: the net has no input blob to fill" % path)
    data_name = input_names[0]
    shape = input_shapes.get(data_name)
    if not shape or len(shape) != 4:
        raise CompareError("%s: an image list needs a 4-axis input blob, %s has shape %s"
                           % (path, data_name, shape))
    images, labels = [], []
    base = os.path.dirname(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise CompareError("%s:%d: expected 'path [label]', got %r"
                                   % (path, lineno, line.strip()))
            name = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            img = load_image(name, color=shape[1] == 3)
            img = resize_image(img, shape[2:], anti_aliasing=antialias)
            chw = (img * 255.0)[:, :, ::-1].transpose(2, 0, 1) if shape[1] == 3 else \
                (img * 255.0).transpose(2, 0, 1)
            images.append(((chw - mean) * scale).astype(np.float32))
            if len(fields) == 2:
                labels.append(float(fields[1]))
    if not images:
        raise CompareError("%s: no image in the list" % path)
    out = {data_name: np.stack(images)}
    if "label" in input_names and labels:
        if len(labels) != len(images):
            raise CompareError("%s: some lines have a label and some not" % path)
        out["label"] = np.array(labels, np.float32)
    return out
