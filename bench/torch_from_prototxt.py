"""Build the same architecture as a Caffe prototxt in PyTorch, for speed comparisons.

Covers the layer types of the SphereFace nets: Input, Convolution, PReLU, ReLU, Eltwise
(SUM), Pooling (MAX), InnerProduct, MarginInnerProduct (normalised weights with the
label-column margin) and SoftmaxWithLoss. Weights are random: only time is compared.
"""

import math

import torch
import torch.nn.functional as F


class TorchNet(torch.nn.Module):
    def __init__(self, net_param, input_shapes):
        super().__init__()
        self.steps = []
        shapes = dict(input_shapes)
        for layer in net_param.layer:
            t = layer.type
            if t == "Input":
                continue
            name = layer.name.replace("/", "_")
            if t == "Convolution":
                p = layer.convolution_param
                cin = shapes[layer.bottom[0]][1]
                k = p.kernel_size[0] if len(p.kernel_size) else p.kernel_h
                s = p.stride[0] if len(p.stride) else 1
                pad = p.pad[0] if len(p.pad) else 0
                mod = torch.nn.Conv2d(cin, p.num_output, k, s, pad, bias=p.bias_term)
                n, _, h, w = shapes[layer.bottom[0]]
                shapes[layer.top[0]] = (n, p.num_output, (h + 2 * pad - k) // s + 1,
                                        (w + 2 * pad - k) // s + 1)
            elif t == "PReLU":
                mod = torch.nn.PReLU(shapes[layer.bottom[0]][1], 0.25)
                shapes[layer.top[0]] = shapes[layer.bottom[0]]
            elif t in ("InnerProduct", "MarginInnerProduct"):
                p = layer.inner_product_param if t == "InnerProduct" else \
                    layer.margin_inner_product_param
                k = int(math.prod(shapes[layer.bottom[0]][1:]))
                mod = torch.nn.Linear(k, p.num_output, bias=(t == "InnerProduct"))
                shapes[layer.top[0]] = (shapes[layer.bottom[0]][0], p.num_output)
            else:
                mod = None
                if layer.bottom:
                    shapes[layer.top[0]] = shapes[layer.bottom[0]]
            if mod is not None:
                self.add_module(name, mod)
            self.steps.append((layer, mod))

    def forward(self, data, label):
        blobs = {"data": data, "label": label}
        loss = None
        for layer, mod in self.steps:
            t = layer.type
            x = blobs[layer.bottom[0]] if layer.bottom else None
            if t in ("Convolution", "PReLU"):
                y = mod(x)
            elif t == "ReLU":
                y = F.relu(x)
            elif t == "Eltwise":
                y = blobs[layer.bottom[0]] + blobs[layer.bottom[1]]
            elif t == "Pooling":
                y = F.max_pool2d(x, layer.pooling_param.kernel_size, layer.pooling_param.stride)
            elif t == "InnerProduct":
                y = mod(x.flatten(1))
            elif t == "MarginInnerProduct":
                y = margin_logits(x.flatten(1), mod.weight, blobs["label"])
            elif t == "SoftmaxWithLoss":
                loss = F.cross_entropy(x, blobs[layer.bottom[1]].long())
                y = loss
            else:
                continue
            for top in layer.top[:1]:
                blobs[top] = y
        return loss


def margin_logits(x, weight, label, m=4, lam=5.0):
    """A-Softmax logits: plain products with normalised weights, the label column
    replaced by (|x| psi(theta) + lambda x.w) / (1 + lambda)."""
    w = F.normalize(weight, dim=1)
    logits = x @ w.t()
    norm = x.norm(dim=1).clamp_min(1e-12)
    idx = label.long().unsqueeze(1)
    target = logits.gather(1, idx).squeeze(1)
    cos = (target / norm).clamp(-1, 1)
    theta = torch.acos(cos)
    k = torch.floor(m * theta / math.pi)
    psi = (-1.0) ** k * torch.cos(m * theta) - 2 * k
    new = (norm * psi + lam * target) / (1 + lam)
    return logits.scatter(1, idx, new.unsqueeze(1))
