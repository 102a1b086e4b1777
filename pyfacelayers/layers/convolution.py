"""Convolution (Caffe's ConvolutionLayer): im2col + one GEMM per group."""

from ._conv_base import ConvolutionBase
from .base import register


@register
class ConvolutionLayer(ConvolutionBase):
    """top = W * bottom + b; weight (num_output, channels/group, kh, kw), bias (num_output,)."""

    type = "Convolution"
    reverse_dimensions = False
