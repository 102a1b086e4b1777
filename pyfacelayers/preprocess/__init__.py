"""SphereFace's preprocessing without MATLAB: MTCNN v1 face and landmark detection and
the 5-point similarity alignment to 112x96 (``preprocess/code/face_detect_demo.m`` and
``face_align_demo.m``), exact to the original code (see docs/preprocess.md).

``MTCNN`` (the detector, nets run by pyfacelayers on the CPU or GPU), ``align`` (the
warp of an image given its five landmarks), ``imresample`` (pdollar's resampler), and
``FaceAligner`` (detect + choose + align one image, as the two scripts together).
"""

from .alignment import REFERENCE_POINTS, Aligned, Similarity, align, similarity
from .mtcnn import MTCNN, Detections, Face, MTCNNNets, choose_face
from .pipeline import FaceAligner, read_rgb
from .resample import imresample

__all__ = ["MTCNN", "MTCNNNets", "Detections", "Face", "choose_face", "align", "similarity",
           "Aligned", "Similarity", "REFERENCE_POINTS", "imresample", "FaceAligner",
           "read_rgb"]
