"""SphereFace-20 in PyTorch, the same architecture as sphereface_model.prototxt, for
bench/gpu_bench.py's images/s comparison (not part of the package).

Stages of (3x3 stride-2 conv + PReLU, then residual units of two 3x3 convs with
PReLU added to their input): 64 channels x 1 unit, 128 x 2, 256 x 4, 512 x 1, then
fc5 (512) and an A-Softmax margin layer (m = 4, Caffe's lambda schedule). Every
convolution has a bias, as in the prototxt. The margin layer is the usual PyTorch
port: weights normalised inside the forward (autograd through the normalisation,
where Caffe normalises the stored rows in place), psi(theta) from the Chebyshev
polynomial cos(4 theta) = 8c^4 - 8c^2 + 1 with k = floor(4 theta / pi) held constant.
Its cost is what matters here: one X.W^T product, O(M*K) extra work.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualUnit(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv_a = nn.Conv2d(channels, channels, 3, 1, 1)
        self.prelu_a = nn.PReLU(channels, 0.25)
        self.conv_b = nn.Conv2d(channels, channels, 3, 1, 1)
        self.prelu_b = nn.PReLU(channels, 0.25)

    def forward(self, x):
        return x + self.prelu_b(self.conv_b(self.prelu_a(self.conv_a(x))))


class Stage(nn.Module):
    def __init__(self, in_channels, out_channels, units):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.prelu = nn.PReLU(out_channels, 0.25)
        self.units = nn.Sequential(*[ResidualUnit(out_channels) for _ in range(units)])

    def forward(self, x):
        return self.units(self.prelu(self.conv(x)))


class MarginLinear(nn.Module):
    """A-Softmax (QUADRUPLE): the label column becomes (|x| psi + lambda x.w) / (1 + lambda)."""

    def __init__(self, in_features, out_features, base=1000.0, gamma=0.12, power=1.0,
                 lambda_min=5.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.01)
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.iteration = 0

    def forward(self, x, labels):
        self.iteration += 1
        lam = max(self.base * (1 + self.gamma * self.iteration) ** (-self.power),
                  self.lambda_min)
        w = F.normalize(self.weight, dim=1)
        logits = x.matmul(w.t())
        x_norm = x.norm(dim=1, keepdim=True)
        picked = logits.gather(1, labels[:, None])
        cos = (picked / x_norm).clamp(-1.0, 1.0)
        with torch.no_grad():
            k = torch.floor(4.0 * torch.acos(cos) / math.pi)
            sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        c2 = cos * cos
        psi = sign * (8.0 * c2 * c2 - 8.0 * c2 + 1.0) - 2.0 * k
        label_out = (x_norm * psi + lam * picked) / (1.0 + lam)
        return logits.scatter(1, labels[:, None], label_out)


class SphereFace20(nn.Module):
    def __init__(self, num_classes=10572, height=112, width=96):
        super().__init__()
        self.stages = nn.Sequential(Stage(3, 64, 1), Stage(64, 128, 2), Stage(128, 256, 4),
                                    Stage(256, 512, 1))
        h, w = height, width
        for _ in range(4):
            h, w = (h + 1) // 2, (w + 1) // 2
        self.fc5 = nn.Linear(512 * h * w, 512)
        self.fc6 = MarginLinear(512, num_classes)

    def forward(self, x, labels):
        features = self.fc5(torch.flatten(self.stages(x), 1))
        return self.fc6(features, labels)


def make_training_step(batch=256, num_classes=10572, device="cuda", seed=0):
    """A closure running one SGD training step (forward, loss, backward, update) on
    fixed random data, as Caffe's SGD: momentum 0.9, weight decay 0.0005."""
    torch.manual_seed(seed)
    model = SphereFace20(num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
    data = torch.randn(batch, 3, 112, 96, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(data, labels), labels)
        loss.backward()
        optimizer.step()
        return loss

    return step
