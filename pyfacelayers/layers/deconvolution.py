"""Deconvolution (Caffe's DeconvolutionLayer): the transpose of Convolution."""

from ._conv_base import ConvolutionBase
from .base import register


@register
class DeconvolutionLayer(ConvolutionBase):
    """Convolution's forward and backward swapped; weight (channels, num_output/group, kh, kw).

    Output size per axis: stride * (in - 1) + dilation * (kernel - 1) + 1 - 2 * pad.
    """

    type = "Deconvolution"
    reverse_dimensions = True
