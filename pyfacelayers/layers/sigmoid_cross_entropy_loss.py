"""SigmoidCrossEntropyLoss (the MNIST autoencoder's loss)."""

from ..backend import array_module
from ._helpers import loss_weight
from .base import Layer, register


@register
class SigmoidCrossEntropyLoss(Layer):
    """-sum(t log p + (1-t) log(1-p)) / num with p = sigmoid(x), computed in Caffe's
    overflow-free form; num is the first dimension (the Caffe of the SphereFace fork
    divides by the batch size). Gradient (p - t) * loss_weight / num."""

    type = "SigmoidCrossEntropyLoss"
    exact_num_bottom = 2
    exact_num_top = 1
    is_loss = True

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise self.error("input and target must have the same count: %s vs %s"
                             % (bottom[0].shape, bottom[1].shape))
        top[0].reshape(())

    def forward(self, bottom, top):
        x = bottom[0].data
        xp = array_module(x)
        t = bottom[1].data.reshape(x.shape)
        positive = (x >= 0).astype(x.dtype)
        losses = x * (t - positive) - xp.log1p(xp.exp(x - 2 * x * positive))
        top[0].data[...] = -losses.sum() / x.dtype.type(x.shape[0])

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the target input")
        if propagate_down[0]:
            x = bottom[0].data
            xp = array_module(x)
            p = 1 / (1 + xp.exp(-x))
            scale = x.dtype.type(loss_weight(top[0]) / x.shape[0])
            bottom[0].diff[...] = (p - bottom[1].data.reshape(x.shape)) * scale

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1
