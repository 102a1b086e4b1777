"""One image through both SphereFace scripts: read, detect, keep one face, align, write.

Reading follows MATLAB's ``imread``: RGB uint8 for colour files, a 2-D array for grey
ones (detection replicates grey to 3 channels; alignment keeps it 1-channel, so the
aligned file is grey too). Pillow decodes (libjpeg-turbo; it decodes the reference
photographs exactly as the reference run did). Alpha is dropped; CMYK, palette and
16-bit files are converted to 8-bit RGB / grey (MATLAB's script did not handle them).
"""

import io
from collections import namedtuple

import numpy as np

from . import alignment as al
from .mtcnn import MTCNN

JPEG_QUALITY = 75  # MATLAB imwrite's default, as face_align_demo.m writes


def read_rgb(path, where=None):
    """uint8 (H, W, 3) RGB, or (H, W) for a grey file, as MATLAB's imread. Raises
    FileNotFoundError or ValueError (naming ``where``, default ``path``)."""
    from ..images import read_image
    image = read_image(path, color=None, where=where)  # BGR, or H x W x 1 for grey files
    if image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    return np.ascontiguousarray(image[:, :, ::-1])


def encode(image, ext):
    """The bytes of a uint8 aligned image as JPEG (quality 75, Pillow's default 4:2:0
    chroma subsampling for colour, as MATLAB's imwrite defaults) or lossless PNG."""
    from PIL import Image
    buffer = io.BytesIO()
    picture = Image.fromarray(np.ascontiguousarray(image))
    if ext == "png":
        picture.save(buffer, format="PNG")
    elif ext == "jpg":
        picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError("output format must be jpg or png, got %r" % (ext,))
    return buffer.getvalue()


Result = namedtuple("Result", "face image shape")
Result.__doc__ = """``face``: the kept :class:`~.mtcnn.Face` (None: no face found, then
``image`` is None, as the MATLAB script writes nothing), ``image``: the aligned uint8
(112, 96[, 3]) array, ``shape``: the input image's shape."""


class FaceAligner:
    """Detect the faces of an image, keep the one SphereFace keeps and align it.

    ``detector``: an :class:`~.mtcnn.MTCNN` (default: SphereFace's settings, pinned
    version; ``version`` picks the other one). ``no_face``: ``"skip"`` (no image, as the
    MATLAB script) or ``"center"`` (the centre 112x96 window of the image, unscaled: a
    fallback for LFW-like images, whose face sits in the middle).
    """

    NO_FACE = ("skip", "center")

    def __init__(self, detector=None, version="pinned", no_face="skip"):
        if no_face not in self.NO_FACE:
            raise ValueError("no_face must be one of %s, got %r" % (", ".join(self.NO_FACE),
                                                                  no_face))
        self.detector = detector or MTCNN(version=version)
        self.no_face = no_face

    def __call__(self, image):
        image = np.asarray(image)
        face = self.detector.face(image)
        if face is not None:
            return Result(face, al.align(image, face.points).image, image.shape)
        if self.no_face == "center":
            return Result(None, center_window(image), image.shape)
        return Result(None, None, image.shape)

    def file(self, path, where=None):
        """:meth:`__call__` on an image file (see :func:`read_rgb`)."""
        return self(read_rgb(path, where))


def center_window(image, size=al.OUTPUT_SIZE):
    """The ``size`` window around the image centre, unscaled (zero outside)."""
    height, width = np.asarray(image).shape[:2]
    shift = np.eye(3)
    shift[2, 0] = (width + 1) / 2.0 - (size[1] + 1) / 2.0
    shift[2, 1] = (height + 1) / 2.0 - (size[0] + 1) / 2.0
    return al.round_uint8(al.bilinear_fill(image, al.sample_positions(shift, size)))
