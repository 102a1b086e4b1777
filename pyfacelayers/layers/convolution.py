"""Convolution (Caffe's ConvolutionLayer): im2col + one GEMM per group."""

from ._conv_base import ConvolutionBase
from .base import register


@register
class ConvolutionLayer(ConvolutionBase):
    """top = W * bottom + b; weight (num_output, channels/group, kh, kw), bias (num_output,)."""

    type = "Convolution"
    reverse_dimensions = False


@register
class DepthwiseConvolution(ConvolutionLayer):
    """xialuxi's (MobileNet) ``DepthwiseConvolution``: a Convolution with one group per
    input channel, whatever ``group`` says (the published net leaves it at 1), so the
    weight is (num_output, 1, kh, kw). Same output as ``Convolution`` with
    ``group = channels``; ``group`` may only be left at 1 or set to the channel count."""

    type = "DepthwiseConvolution"

    def layer_setup(self, bottom, top):
        from ..proto import caffe_pb2

        cp = self.param.convolution_param
        shape = bottom[0].shape
        if not -len(shape) <= cp.axis < len(shape):
            raise self.error("axis %d out of range for a %d-D bottom %s"
                             % (cp.axis, len(shape), shape))
        channels = shape[cp.axis % len(shape)]
        if cp.group not in (1, channels):
            raise self.error("group %d: a depthwise convolution has one group per input "
                             "channel (%d); leave group at 1 or set it to %d"
                             % (cp.group, channels, channels))
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(self.param)
        param.convolution_param.group = channels
        self.param = param
        super().layer_setup(bottom, top)
